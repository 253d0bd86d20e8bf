//! The attacks. Each runs until its window ends (or the run is aborted), then checks what the
//! server did to its sockets and closes them. All traffic goes to the loopback server, from
//! attacker addresses 127.0.0.2 ..= 127.0.0.250.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::Request;
use hyper::header::HeaderValue;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::net::{self, Api, Conn, Failure, Reply, attack_source};
use crate::fanout::Ws;
use crate::stats::{LatencyHistogram, LatencySummary, median};

/// The attacks, in the order they run.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    clap::ValueEnum,
    Serialize,
    Deserialize,
)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum Attack {
    StalledReplay,
    SilentReaders,
    HugeLoginFields,
    LoginStorm,
    SlowHeads,
    PasswordGuessing,
    MetricsFlood,
    RefreshFlood,
}

impl Attack {
    pub const ALL: [Attack; 8] = [
        Attack::StalledReplay,
        Attack::SilentReaders,
        Attack::HugeLoginFields,
        Attack::LoginStorm,
        Attack::SlowHeads,
        Attack::PasswordGuessing,
        Attack::MetricsFlood,
        Attack::RefreshFlood,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Attack::StalledReplay => "stalled-replay",
            Attack::SilentReaders => "silent-readers",
            Attack::HugeLoginFields => "huge-login-fields",
            Attack::LoginStorm => "login-storm",
            Attack::SlowHeads => "slow-heads",
            Attack::PasswordGuessing => "password-guessing",
            Attack::MetricsFlood => "metrics-flood",
            Attack::RefreshFlood => "refresh-flood",
        }
    }
}

/// The knobs of the attacks (from the command line).
#[derive(Debug, Clone)]
pub struct Knobs {
    pub request_timeout: Duration,
    pub stalled_sockets: usize,
    pub silent_sockets: usize,
    pub silent_ping_every: Duration,
    pub busy_rate: f64,
    pub busy_writers: usize,
    pub busy_description_bytes: usize,
    pub recv_buffer: u32,
    pub huge_concurrency: usize,
    pub huge_total: u64,
    pub huge_field_bytes: usize,
    pub storm_concurrency: usize,
    pub storm_total: u64,
    pub slow_heads: usize,
    pub guess_rate: f64,
    pub guess_addrs: usize,
    pub flood_clients: usize,
    /// How long after the window the attacking sockets are read to see whether the server ended them
    pub drain: Duration,
}

/// What an attack needs to know about the server and the accounts.
pub struct Ctx {
    pub api: Api,
    pub knobs: Knobs,
    pub team_id: String,
    pub normal_email: String,
    /// A member of the team who attacks (stalled-replay, silent-readers)
    pub attacker_token: Option<String>,
    pub attacker_bearer: Option<HeaderValue>,
    /// Registered accounts and their passwords (login-storm)
    pub accounts: Vec<(String, String)>,
    pub until: Instant,
    pub abort: Arc<AtomicBool>,
}

impl Ctx {
    pub fn over(&self) -> bool {
        self.abort.load(Ordering::Relaxed) || Instant::now() >= self.until
    }

    /// Returns once the window is over (checked every 100 ms at most).
    pub async fn wait_over(&self) {
        while !self.over() {
            let left = self.until.saturating_duration_since(Instant::now());
            tokio::time::sleep(left.min(Duration::from_millis(100))).await;
        }
    }
}

/// What the attack did and what the server did to it.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
#[serde(rename_all = "camelCase")]
pub struct AttackTraffic {
    /// Attacking requests that got an answer or failed
    pub requests: u64,
    /// Their answers by status
    pub statuses: BTreeMap<String, u64>,
    /// Requests without an answer: connect, send, body, timeout
    pub errors: BTreeMap<String, u64>,
    /// Time of the attacking requests
    pub latency: LatencySummary,
    /// Attacking connections opened again after the server closed one (or a request failed)
    pub reconnects: u64,
    /// Sockets or connections the attack held open (WebSocket and slow-head attacks)
    pub held: Option<u64>,
    /// Of those, how many the server ended, by the end of the check after the attack
    pub cut: Option<u64>,
    /// When the first and the median of the cuts seen during the attack came, s after the start
    pub first_cut_secs: Option<f64>,
    pub median_cut_secs: Option<f64>,
    /// How they ended: close code, eof, reset, error
    pub cut_how: BTreeMap<String, u64>,
    /// slow-heads: connections still open 45 s after their half head (null: window shorter)
    pub open_after_45s: Option<u64>,
    /// Payload bytes the attacking sockets read in the check after the attack
    pub drained_bytes: Option<u64>,
    pub notes: Vec<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Outcomes of attacking requests, per worker, merged at the end.
#[derive(Default, Clone)]
struct Tally {
    requests: u64,
    statuses: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    hist: LatencyHistogram,
    reconnects: u64,
}

impl Tally {
    fn record(&mut self, took: Duration, outcome: &Result<Reply, Failure>) {
        self.requests += 1;
        self.hist.record(took);
        match outcome {
            Ok(r) => *self.statuses.entry(r.status.to_string()).or_default() += 1,
            Err(e) => *self.errors.entry((*e).to_owned()).or_default() += 1,
        }
    }

    fn merge(&mut self, o: &Tally) {
        self.requests += o.requests;
        for (k, v) in &o.statuses {
            *self.statuses.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.hist.merge(&o.hist);
        self.reconnects += o.reconnects;
    }

    fn into_traffic(self) -> AttackTraffic {
        AttackTraffic {
            requests: self.requests,
            statuses: self.statuses,
            errors: self.errors,
            latency: self.hist.summary(),
            reconnects: self.reconnects,
            ..AttackTraffic::default()
        }
    }
}

type MakeRequest = Arc<dyn Fn(usize, u64) -> Request<Full<Bytes>> + Send + Sync>;

/// `workers` keep-alive connections, worker `w` from `attack_source(w)`, each sending its next
/// request as soon as the previous one is answered, until the window ends or `cap` requests
/// have been sent in all. A request still running when the window ends is abandoned.
async fn closed_loop(ctx: &Arc<Ctx>, workers: usize, cap: Option<u64>, make: MakeRequest) -> Tally {
    let next = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let (ctx, next, make) = (ctx.clone(), next.clone(), make.clone());
            tokio::spawn(async move {
                let mut conn = Conn::new(ctx.api.server, attack_source(w));
                let mut tally = Tally::default();
                while !ctx.over() {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if cap.is_some_and(|c| n >= c) {
                        break;
                    }
                    let req = make(w, n);
                    let t = Instant::now();
                    let outcome = tokio::select! {
                        o = conn.exchange(req, ctx.knobs.request_timeout, false) => o,
                        () = ctx.wait_over() => break,
                    };
                    tally.record(t.elapsed(), &outcome);
                }
                tally.reconnects = conn.reconnects;
                tally
            })
        })
        .collect();
    gather(handles).await
}

/// Attempts at `rate` per second on a fixed timetable (open loop), attempt `i` on a new
/// connection from `source(i)`; at most `max_in_flight` at once (the rest are skipped and counted).
async fn open_loop(
    ctx: &Arc<Ctx>,
    rate: f64,
    max_in_flight: usize,
    source: impl Fn(u64) -> IpAddr,
    make: MakeRequest,
) -> (Tally, u64) {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(max_in_flight));
    let mut skipped = 0;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0u64.. {
        let due = start + Duration::from_secs_f64(i as f64 / rate.max(0.001));
        if due >= ctx.until {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep_until(due.into()) => {}
            () = ctx.wait_over() => break,
        }
        if ctx.over() {
            break;
        }
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            skipped += 1;
            continue;
        };
        let (ctx, tally, make, src) = (ctx.clone(), tally.clone(), make.clone(), source(i));
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let mut conn = Conn::new(ctx.api.server, src);
            let req = make(0, i);
            let t = Instant::now();
            let outcome = tokio::select! {
                o = conn.exchange(req, ctx.knobs.request_timeout, false) => o,
                () = ctx.wait_over() => return,
            };
            lock(&tally).record(t.elapsed(), &outcome);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let t = lock(&tally).clone();
    (t, skipped)
}

pub async fn run(attack: Attack, ctx: Arc<Ctx>) -> AttackTraffic {
    match attack {
        Attack::StalledReplay => held_sockets(&ctx, false).await,
        Attack::SilentReaders => held_sockets(&ctx, true).await,
        Attack::HugeLoginFields => huge_login_fields(&ctx).await,
        Attack::LoginStorm => login_storm(&ctx).await,
        Attack::SlowHeads => slow_heads(&ctx).await,
        Attack::PasswordGuessing => password_guessing(&ctx).await,
        Attack::MetricsFlood => metrics_flood(&ctx).await,
        Attack::RefreshFlood => refresh_flood(&ctx).await,
    }
}

// ---------------------------------------------------------------- login attacks

/// A log-in body whose email (even `n`) or password (odd `n`) is `field_bytes` long; every email
/// is new, so that nothing the server keys by email is reused.
pub fn huge_login_body(n: u64, field_bytes: usize) -> Bytes {
    let (email, password) = if n.is_multiple_of(2) {
        (
            format!("huge-{n}-{}@example.com", "a".repeat(field_bytes)),
            "not-the-password".to_owned(),
        )
    } else {
        (format!("huge-{n}@example.com"), "p".repeat(field_bytes))
    };
    Bytes::from(json!({ "email": email, "password": password }).to_string())
}

async fn huge_login_fields(ctx: &Arc<Ctx>) -> AttackTraffic {
    let (api, bytes) = (ctx.api.clone(), ctx.knobs.huge_field_bytes);
    let make: MakeRequest =
        Arc::new(move |_, n| api.post("/api/v1/auth/login", None, huge_login_body(n, bytes)));
    let tally = closed_loop(
        ctx,
        ctx.knobs.huge_concurrency,
        Some(ctx.knobs.huge_total),
        make,
    )
    .await;
    let mut t = tally.into_traffic();
    t.notes.push(format!(
        "{} log-ins of {} KB fields from {} addresses",
        t.requests,
        bytes / 1000,
        ctx.knobs.huge_concurrency.min(249)
    ));
    t
}

/// Log-in `n` of the storm: a valid one, a wrong password for a real account, or an unknown email.
pub fn storm_login(n: u64, accounts: &[(String, String)]) -> (String, String) {
    let pick = |k: u64| &accounts[(k as usize) % accounts.len().max(1)];
    match (n % 3, accounts.is_empty()) {
        (0, false) => pick(n / 3).clone(),
        (1, false) => (pick(n / 3).0.clone(), format!("wrong-password-{n}")),
        _ => (
            format!("nobody-{n}@example.com"),
            format!("any-password-{n}"),
        ),
    }
}

async fn login_storm(ctx: &Arc<Ctx>) -> AttackTraffic {
    let (api, accounts) = (ctx.api.clone(), Arc::new(ctx.accounts.clone()));
    let make: MakeRequest = Arc::new(move |_, n| {
        let (email, password) = storm_login(n, &accounts);
        let body = json!({ "email": email, "password": password }).to_string();
        api.post("/api/v1/auth/login", None, body)
    });
    let tally = closed_loop(
        ctx,
        ctx.knobs.storm_concurrency,
        Some(ctx.knobs.storm_total),
        make,
    )
    .await;
    let mut t = tally.into_traffic();
    t.notes.push(format!(
        "{} log-ins (1/3 valid) by {} concurrent clients",
        t.requests, ctx.knobs.storm_concurrency
    ));
    t
}

async fn password_guessing(ctx: &Arc<Ctx>) -> AttackTraffic {
    let (api, email) = (ctx.api.clone(), ctx.normal_email.clone());
    let make: MakeRequest = Arc::new(move |_, n| {
        let body = json!({ "email": email, "password": format!("guess-{n}") }).to_string();
        api.post("/api/v1/auth/login", None, body)
    });
    let addrs = ctx.knobs.guess_addrs.max(1) as u64;
    let (tally, skipped) = open_loop(
        ctx,
        ctx.knobs.guess_rate,
        256,
        move |i| attack_source((i % addrs) as usize),
        make,
    )
    .await;
    let mut t = tally.into_traffic();
    t.notes.push(format!(
        "{} wrong passwords for the user's email from {addrs} addresses",
        t.requests
    ));
    if skipped > 0 {
        t.notes
            .push(format!("{skipped} attempts skipped (256 in flight)"));
    }
    t
}

// ---------------------------------------------------------------- floods

async fn metrics_flood(ctx: &Arc<Ctx>) -> AttackTraffic {
    let api = ctx.api.clone();
    let make: MakeRequest = Arc::new(move |_, _| api.get("/metrics", None));
    let t = closed_loop(ctx, ctx.knobs.flood_clients, None, make).await;
    t.into_traffic()
}

async fn refresh_flood(ctx: &Arc<Ctx>) -> AttackTraffic {
    let api = ctx.api.clone();
    let make: MakeRequest = Arc::new(move |_, _| {
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            &uuid::Uuid::new_v4().simple().to_string()[..11]
        );
        api.post(
            "/api/v1/auth/refresh",
            None,
            json!({ "refreshToken": token }).to_string(),
        )
    });
    let t = closed_loop(ctx, ctx.knobs.flood_clients, None, make).await;
    t.into_traffic()
}

// ---------------------------------------------------------------- held WebSockets

/// An attacking socket that is never read.
struct Held {
    ws: Ws,
    fd: RawFd,
    /// When the server was seen ending it (during the window), and how
    cut: Option<(Instant, String)>,
}

/// stalled-replay (`silent` false): sockets subscribe with `since=0` to the seeded team and are
/// never read. silent-readers (`silent` true): sockets subscribe to the team, which a writer
/// keeps busy, and send `{"type":"ping"}` within the rate limit, never reading. Both have a small
/// receive buffer. A stalled socket also pings every 5 s: a socket the server has closed then
/// answers with a reset, which shows at once in the kernel's TCP state.
async fn held_sockets(ctx: &Arc<Ctx>, silent: bool) -> AttackTraffic {
    let mut t = AttackTraffic::default();
    let (Some(token), Some(bearer)) = (ctx.attacker_token.clone(), ctx.attacker_bearer.clone())
    else {
        t.notes.push("no attacker account".into());
        return t;
    };
    let start = Instant::now();
    let count = if silent {
        ctx.knobs.silent_sockets
    } else {
        ctx.knobs.stalled_sockets
    };
    let mut held = Vec::with_capacity(count);
    let mut open_errors: BTreeMap<String, u64> = BTreeMap::new();
    for k in 0..count {
        if ctx.over() {
            break;
        }
        let opened = async {
            let mut ws = net::ws_connect(
                &ctx.api,
                attack_source(k),
                &token,
                Some(ctx.knobs.recv_buffer),
                ctx.knobs.request_timeout,
            )
            .await?;
            if silent {
                net::send_subscribe(&mut ws, &ctx.team_id, None).await?;
                net::await_subscribed(&mut ws, ctx.knobs.request_timeout, |_| {}).await?;
            } else {
                net::send_subscribe(&mut ws, &ctx.team_id, Some(0)).await?;
            }
            Ok::<_, anyhow::Error>(ws)
        }
        .await;
        match opened {
            Ok(ws) => {
                let fd = net::ws_fd(&ws);
                held.push(Held { ws, fd, cut: None });
            }
            Err(e) => *open_errors.entry(e.root_cause().to_string()).or_default() += 1,
        }
    }
    t.held = Some(held.len() as u64);
    if !open_errors.is_empty() {
        t.notes.push(format!("sockets not opened: {open_errors:?}"));
    }

    // silent-readers: the busy writer.
    let writer = silent.then(|| {
        let ctx = ctx.clone();
        tokio::spawn(async move { busy_writer(&ctx, bearer).await })
    });

    let ping_every = if silent {
        ctx.knobs.silent_ping_every
    } else {
        Duration::from_secs(5)
    };
    let mut next_ping = Instant::now() + ping_every;
    let (mut pings, mut ping_stalls) = (0u64, 0u64);
    let ping = Message::text(r#"{"type":"ping"}"#);
    while !ctx.over() {
        let now = Instant::now();
        for h in held.iter_mut().filter(|h| h.cut.is_none()) {
            if net::peer_gone(h.fd) {
                h.cut = Some((now, "reset or fin (tcp state)".into()));
            }
        }
        if now >= next_ping {
            next_ping = now + ping_every;
            for h in held.iter_mut().filter(|h| h.cut.is_none()) {
                match tokio::time::timeout(Duration::from_millis(200), h.ws.send(ping.clone()))
                    .await
                {
                    Ok(Ok(())) => pings += 1,
                    Ok(Err(e)) => h.cut = Some((Instant::now(), format!("send: {e}"))),
                    Err(_) => ping_stalls += 1,
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(w) = writer
        && let Ok(tally) = w.await
    {
        let busy = tally.requests;
        let merged = tally.into_traffic();
        t.requests = merged.requests;
        t.statuses = merged.statuses;
        t.errors = merged.errors;
        t.latency = merged.latency;
        t.reconnects = merged.reconnects;
        t.notes.push(format!(
            "busy writer: {busy} task creations ({:.0}/s asked)",
            ctx.knobs.busy_rate
        ));
    }
    t.notes.push(format!(
        "{pings} pings sent{}",
        if ping_stalls > 0 {
            format!(", {ping_stalls} stalled")
        } else {
            String::new()
        }
    ));

    // After the window: read each socket for a while to see whether the server ended it.
    let cut_times: Vec<f64> = held
        .iter()
        .filter_map(|h| h.cut.as_ref())
        .map(|(at, _)| at.saturating_duration_since(start).as_secs_f64())
        .collect();
    let drain = ctx.knobs.drain;
    let checks =
        futures_util::future::join_all(held.into_iter().map(|h| drain_check(h, drain))).await;
    let mut drained = 0;
    let mut cut = 0;
    for (how, bytes) in checks {
        drained += bytes;
        if let Some(how) = how {
            cut += 1;
            *t.cut_how.entry(how).or_default() += 1;
        }
    }
    t.cut = Some(cut);
    t.drained_bytes = Some(drained);
    t.first_cut_secs = cut_times.iter().copied().min_by(f64::total_cmp);
    t.median_cut_secs = median(&cut_times);
    t
}

/// How the server ended a held socket (`None`: still open after reading it for `limit`), and
/// the payload bytes read meanwhile. A cut seen during the window is kept.
async fn drain_check(mut h: Held, limit: Duration) -> (Option<String>, u64) {
    if let Some((_, how)) = h.cut.take() {
        return (Some(how), 0);
    }
    let mut bytes = 0u64;
    let how = tokio::time::timeout(limit, async {
        loop {
            match h.ws.next().await {
                Some(Ok(Message::Close(f))) => return net::close_reason(f.as_ref()),
                Some(Ok(m)) => bytes += m.len() as u64,
                Some(Err(e)) => return format!("error: {e}"),
                None => return "eof".to_owned(),
            }
        }
    })
    .await
    .ok();
    (how, bytes)
}

/// silent-readers' busy writer: tasks with `busy_description_bytes` descriptions at `busy_rate`
/// per second (a fixed timetable shared by `busy_writers` connections), by the attacker member.
async fn busy_writer(ctx: &Arc<Ctx>, bearer: HeaderValue) -> Tally {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let path = format!("/api/v1/teams/{}/tasks", ctx.team_id);
    let description = "d".repeat(ctx.knobs.busy_description_bytes);
    let handles: Vec<_> = (0..ctx.knobs.busy_writers.max(1))
        .map(|_| {
            let (ctx, next, path, bearer, description) = (
                ctx.clone(),
                next.clone(),
                path.clone(),
                bearer.clone(),
                description.clone(),
            );
            tokio::spawn(async move {
                let mut conn = Conn::new(ctx.api.server, attack_source(0));
                let mut tally = Tally::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let due =
                        start + Duration::from_secs_f64(i as f64 / ctx.knobs.busy_rate.max(0.001));
                    if due >= ctx.until {
                        break;
                    }
                    tokio::select! {
                        () = tokio::time::sleep_until(due.into()) => {}
                        () = ctx.wait_over() => break,
                    }
                    let body = json!({ "title": format!("busy-{i}"), "description": description })
                        .to_string();
                    let req = ctx.api.post(&path, Some(&bearer), body);
                    let t = Instant::now();
                    let outcome = tokio::select! {
                        o = conn.exchange(req, ctx.knobs.request_timeout, false) => o,
                        () = ctx.wait_over() => break,
                    };
                    tally.record(t.elapsed(), &outcome);
                }
                tally.reconnects = conn.reconnects;
                tally
            })
        })
        .collect();
    gather(handles).await
}

// ---------------------------------------------------------------- slow heads

/// What one slow-head connection saw.
struct SlowHead {
    sent: Instant,
    /// When the server ended it, and how
    ended: Option<(Instant, String)>,
}

/// The first line of what the server sent, e.g. `HTTP/1.1 408 Request Timeout`.
pub fn first_line(b: &[u8]) -> String {
    let line = b.split(|&c| c == b'\r' || c == b'\n').next().unwrap_or(b"");
    String::from_utf8_lossy(&line[..line.len().min(60)]).into_owned()
}

async fn one_slow_head(ctx: Arc<Ctx>, k: usize) -> Result<SlowHead, String> {
    let stream = net::tcp_from(ctx.api.server, attack_source(k), None)
        .await
        .map_err(|e| e.root_cause().to_string())?;
    // Half a request head: no blank line ever comes.
    let head = format!(
        "POST /api/v1/auth/login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/js",
        ctx.api.server
    );
    let mut off = 0;
    let head = head.as_bytes();
    while off < head.len() {
        stream.writable().await.map_err(|e| e.to_string())?;
        match stream.try_write(&head[off..]) {
            Ok(n) => off += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    let sent = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let ended = loop {
        tokio::select! {
            r = stream.readable() => {
                if r.is_err() {
                    break Some("error".to_owned());
                }
            }
            () = ctx.wait_over() => break None,
        }
        match stream.try_read(&mut buf) {
            Ok(0) => {
                break Some(if answer.is_empty() {
                    "eof".to_owned()
                } else {
                    format!("{} then eof", first_line(&answer))
                });
            }
            Ok(n) => {
                if answer.len() < 256 {
                    answer.extend_from_slice(&buf[..n]);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                break Some("reset".to_owned());
            }
            Err(e) => break Some(format!("error: {}", e.kind())),
        }
    };
    Ok(SlowHead {
        sent,
        ended: ended.map(|how| (Instant::now(), how)),
    })
}

/// How many slow heads were still open `after` their send (`None` when the window ended before
/// every connection had been open that long).
pub fn open_after(
    heads: &[(Instant, Option<Instant>)],
    after: Duration,
    end: Instant,
) -> Option<u64> {
    if heads.iter().any(|(sent, _)| *sent + after > end) {
        return None;
    }
    Some(
        heads
            .iter()
            .filter(|(sent, ended)| ended.is_none_or(|e| e > *sent + after))
            .count() as u64,
    )
}

async fn slow_heads(ctx: &Arc<Ctx>) -> AttackTraffic {
    let start = Instant::now();
    let handles: Vec<_> = (0..ctx.knobs.slow_heads)
        .map(|k| tokio::spawn(one_slow_head(ctx.clone(), k)))
        .collect();
    let mut heads = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for h in handles {
        match h.await {
            Ok(Ok(s)) => heads.push(s),
            Ok(Err(e)) => *errors.entry(e).or_default() += 1,
            Err(_) => *errors.entry("task failed".into()).or_default() += 1,
        }
    }
    let end = Instant::now();
    let mut t = AttackTraffic {
        held: Some(heads.len() as u64),
        errors,
        ..AttackTraffic::default()
    };
    let mut cut_times = Vec::new();
    for h in &heads {
        if let Some((at, how)) = &h.ended {
            cut_times.push(at.saturating_duration_since(start).as_secs_f64());
            *t.cut_how.entry(how.clone()).or_default() += 1;
        }
    }
    t.cut = Some(cut_times.len() as u64);
    t.first_cut_secs = cut_times.iter().copied().min_by(f64::total_cmp);
    t.median_cut_secs = median(&cut_times);
    let pairs: Vec<_> = heads
        .iter()
        .map(|h| (h.sent, h.ended.as_ref().map(|(at, _)| *at)))
        .collect();
    t.open_after_45s = open_after(&pairs, Duration::from_secs(45), end);
    t
}

/// The workers' tallies, merged (a worker that panicked contributes nothing).
async fn gather(handles: Vec<tokio::task::JoinHandle<Tally>>) -> Tally {
    let mut all = Tally::default();
    for h in handles {
        if let Ok(t) = h.await {
            all.merge(&t);
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attack_names_parse_back() {
        use clap::ValueEnum;
        for a in Attack::ALL {
            assert_eq!(Attack::from_str(a.name(), false), Ok(a));
            let json = serde_json::to_string(&a).expect("json");
            assert_eq!(json, format!("\"{}\"", a.name()));
        }
    }

    #[test]
    fn huge_bodies_fit_the_default_body_limit_and_are_unique() {
        let a = huge_login_body(0, 900_000);
        let b = huge_login_body(1, 900_000);
        let c = huge_login_body(2, 900_000);
        for body in [&a, &b, &c] {
            assert!(
                body.len() > 900_000 && body.len() < 1_048_576,
                "{}",
                body.len()
            );
            let v: serde_json::Value = serde_json::from_slice(body).expect("json");
            assert!(v["email"].is_string() && v["password"].is_string());
        }
        let email = |b: &Bytes| {
            serde_json::from_slice::<serde_json::Value>(b).expect("json")["email"]
                .as_str()
                .map(str::len)
        };
        assert!(email(&a).expect("email") > 900_000);
        assert!(email(&b).expect("email") < 100);
        assert_ne!(a, c);
    }

    #[test]
    fn storm_mixes_valid_wrong_and_unknown() {
        let accounts = vec![
            ("a@example.com".to_owned(), "pa".to_owned()),
            ("b@example.com".to_owned(), "pb".to_owned()),
        ];
        assert_eq!(storm_login(0, &accounts), accounts[0]);
        assert_eq!(storm_login(3, &accounts), accounts[1]);
        let (e, p) = storm_login(1, &accounts);
        assert_eq!(e, "a@example.com");
        assert_ne!(p, "pa");
        assert!(storm_login(2, &accounts).0.starts_with("nobody-"));
        assert!(storm_login(0, &[]).0.starts_with("nobody-"));
    }

    #[test]
    fn first_line_of_an_answer() {
        assert_eq!(
            first_line(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n"),
            "HTTP/1.1 408 Request Timeout"
        );
        assert_eq!(first_line(b""), "");
    }

    #[test]
    fn slow_heads_open_after() {
        let base = Instant::now();
        let s = |ms: u64| base + Duration::from_millis(ms);
        let heads = vec![
            (s(0), None),              // never closed
            (s(0), Some(s(30_000))),   // closed at 30 s
            (s(100), Some(s(50_000))), // closed after 45 s
        ];
        assert_eq!(
            open_after(&heads, Duration::from_secs(45), s(60_000)),
            Some(2)
        );
        // The window ended before the last one had been open 45 s.
        assert_eq!(open_after(&heads, Duration::from_secs(45), s(45_050)), None);
    }
}
