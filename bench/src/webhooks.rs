//! Scenario `webhooks`: how fast a webhook is delivered, how late, and how it catches up after its
//! receiver was down.
//!
//! The generator runs its own receiver: an HTTP/1.1 server on 127.0.0.1 (a free port) that
//! answers every request at once, with 200 or, while "down", 503, and records each request's
//! arrival (monotonic and wall clock), the activity's `seq`, `type` and `ts`, and what it
//! answered; with `--verify` it also checks the `webhook-signature` (HMAC-SHA256, Standard
//! Webhooks) and counts the requests that do not verify.
//!
//! Setup (not measured): register an owner, make a team, and create a webhook to the receiver
//! with `events: ["task.created"]` (the server must run with `TASKFORGE_WEBHOOK_ALLOW_PRIVATE=true`
//! to accept an `http://127.0.0.1` URL). Only the tasks this scenario creates are delivered; the
//! `webhook.*` activities of the setup are skipped by the filter.
//!
//! Modes:
//! - `drain`: the webhook is disabled (`PATCH enabled: false`), `--tasks` N tasks are created by
//!   `--writers` connections as fast as they go, then the webhook is enabled and the time until the
//!   receiver has all N is taken: **deliveries/s** = N / (enable → last arrival). The pickup (enable
//!   → first arrival) and the rate from the first arrival are reported apart. Server CPU over the
//!   same span, per delivery.
//! - `lag`: the webhook is live (one warm-up task is created and delivered first); tasks are
//!   created at `--rate` for `--duration` s (open loop: task `i` is sent at `start + i/rate` by the
//!   next free writer). The **lag** of a delivery is its arrival time at the receiver minus the
//!   activity's `ts` (the server's clock when the creating transaction ran, ms precision, truncated;
//!   the same machine's clock as the receiver's), taken on the first successful delivery of each seq.
//! - `outage`: the webhook is live (a warm-up task first); the receiver answers 503 for `--down` s
//!   while tasks are created at `--rate`, then 200. `/metrics` is read every `--metrics-every` s
//!   (`taskforge_webhook_backlog{webhook=…}`) beside the tasks created and delivered so far.
//!   Reported: the backlog at recovery (tasks whose `ts` is before the recovery and not delivered by
//!   then), the wait from the recovery to the first successful delivery (the retry backoff: the
//!   server tries again only when its next scheduled retry comes), the gap between the last
//!   failed attempt and that retry, and the time from the recovery until the backlog is delivered.
//!   The writers stop once it is; every task must then be delivered.
//!
//! Every mode checks that each task's `task.created` came (`lost`), counts seqs answered 2xx more
//! than once (`duplicates`, allowed: at least once) and seqs delivered after a higher one
//! (`outOfOrder`). Every wait is bounded (`--wait`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;

use crate::fanout::bump;
use crate::http_writes::{Client, Target, call_api, parse_url, post_api, post_json};
use crate::procfs::{self, Proc};
use crate::stats::{LatencyHistogram, LatencySummary};

#[derive(clap::ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// N activities written while the webhook is disabled, then delivered: deliveries/s, CPU
    Drain,
    /// Tasks at a steady rate: lag from commit to arrival
    Lag,
    /// The receiver answers 503 for a while under a steady rate: backlog and catch-up
    Outage,
}

#[derive(clap::Args, Debug, Clone)]
pub struct WebhooksArgs {
    /// Base URL of the server, plain HTTP (e.g. http://127.0.0.1:8080)
    #[arg(long)]
    pub url: String,
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// drain: tasks created while the webhook is disabled
    #[arg(long, default_value_t = 5000)]
    pub tasks: u64,
    /// Keep-alive HTTP/1.1 connections creating tasks
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// lag, outage: tasks created per second (open loop)
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// lag: seconds of paced writes
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// outage: seconds the receiver answers 503
    #[arg(long, default_value_t = 60.0)]
    pub down: f64,
    /// outage: seconds between two reads of /metrics
    #[arg(long, default_value_t = 5.0)]
    pub metrics_every: f64,
    /// Seconds to wait for the deliveries after the writes (drain, lag) or after the recovery
    /// (outage)
    #[arg(long, default_value_t = 120.0)]
    pub wait: f64,
    /// Timeout of each request to the server, seconds
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Check every request's `webhook-signature` with the webhook's secret
    #[arg(long)]
    pub verify: bool,
    /// PID of the server process, for its CPU time
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Free-form label copied into the report
    #[arg(long)]
    pub label: Option<String>,
    /// Round number copied into the report
    #[arg(long)]
    pub round: Option<u32>,
    /// Print one JSON object line instead of the human-readable report
    #[arg(long)]
    pub json: bool,
}

/// One read of `/metrics` during an outage (times from the start of the outage).
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct BacklogSample {
    pub t_secs: f64,
    /// `taskforge_webhook_backlog{webhook="<id>"}`, if the server showed it
    pub backlog_metric: Option<f64>,
    /// Tasks created (answered 2xx) since the outage began
    pub created: u64,
    /// Of them, delivered (answered 200 by the receiver)
    pub delivered: u64,
}

/// The result of one `webhooks` run (the `--json` line). Fields of other modes are null.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
#[serde(rename_all = "camelCase")]
pub struct WebhooksReport {
    pub scenario: String,
    pub mode: Option<Mode>,
    pub label: Option<String>,
    pub round: Option<u32>,
    pub url: String,
    pub threads: usize,
    pub writers: usize,
    pub webhook_id: String,
    /// Registering, making the team and the webhook (and the warm-up delivery), seconds
    pub setup_secs: f64,
    /// Tasks created (2xx) by the measured writes
    pub created: u64,
    /// Creations answered otherwise, by status or error
    pub write_failures: BTreeMap<String, u64>,
    /// Creation latency (closed loop: from the send; open loop: from the scheduled time)
    pub write_latency: LatencySummary,
    /// Requests the receiver got during the measurement (retries included)
    pub received: u64,
    /// Distinct task seqs answered 2xx
    pub delivered: u64,
    /// Tasks created whose activity never came within the wait
    pub lost: u64,
    /// Seqs answered 2xx more than once
    pub duplicates: u64,
    /// Seqs first delivered after a higher one
    pub out_of_order: u64,
    /// Requests that were not a `task.created` with a seq
    pub unexpected: u64,
    /// Requests answered non-2xx by the receiver (the outage)
    pub failed_answers: u64,
    /// With --verify: requests whose signature did not verify
    pub bad_signatures: Option<u64>,
    /// The wait ran out before every delivery came
    pub timed_out: bool,
    pub generator_cpu_secs: f64,
    pub server_cpu_secs: Option<f64>,

    // drain
    /// Creating the N tasks with the webhook disabled, seconds, and tasks/s
    pub write_secs: Option<f64>,
    pub write_per_sec: Option<f64>,
    /// Enable sent → first arrival, ms
    pub pickup_ms: Option<f64>,
    /// Enable sent → last arrival, seconds
    pub drain_secs: Option<f64>,
    /// delivered / drain_secs
    pub deliveries_per_sec: Option<f64>,
    /// (delivered - 1) / (last arrival - first arrival)
    pub deliveries_per_sec_from_first: Option<f64>,
    /// Server CPU from the enable to the last arrival, per delivery
    pub server_cpu_us_per_delivery: Option<f64>,

    // lag and outage
    pub target_rate: Option<f64>,
    /// lag: seconds of paced writes
    pub duration_secs: Option<f64>,
    /// lag: arrival − `ts` of each seq's first successful delivery
    pub lag: Option<LatencySummary>,
    /// lag: arrivals earlier than their `ts` (clock trouble; counted as 0 in `lag`)
    pub negative_lag: Option<u64>,
    /// lag: server CPU over the window (writes and deliveries) per task
    pub server_cpu_us_per_task: Option<f64>,

    // outage
    pub down_secs: Option<f64>,
    pub backlog_samples: Option<Vec<BacklogSample>>,
    /// Tasks committed (`ts`) before the recovery and not delivered by then
    pub backlog_at_recovery: Option<u64>,
    /// The metric read just before the recovery, and its highest reading during the outage
    pub backlog_metric_at_recovery: Option<f64>,
    pub backlog_metric_max: Option<f64>,
    /// Attempts answered 503
    pub failed_attempts: Option<u64>,
    /// Recovery → first successful delivery, ms: the rest of the retry backoff
    pub retry_wait_ms: Option<f64>,
    /// Last failed attempt → first successful one, ms: the backoff interval the server chose
    pub retry_gap_ms: Option<f64>,
    /// Recovery → the whole backlog delivered, ms
    pub catch_up_ms: Option<f64>,
    /// First successful delivery → the whole backlog delivered, ms
    pub backlog_drain_ms: Option<f64>,
    /// backlog / backlog_drain_ms, per second
    pub backlog_per_sec: Option<f64>,
}

impl WebhooksReport {
    pub fn delivery_problems(&self) -> bool {
        self.lost > 0 || self.timed_out || self.bad_signatures.is_some_and(|n| n > 0)
    }
}

// ---------------------------------------------------------------- the receiver

/// One request the receiver got.
#[derive(Clone, Copy, Debug)]
struct Arrival {
    at: Instant,
    /// Wall clock at arrival, ms since the epoch
    unix_ms: f64,
    seq: Option<i64>,
    /// The activity's `ts`, ms since the epoch
    ts_ms: Option<i64>,
    task_created: bool,
    status: u16,
    signature_ok: Option<bool>,
}

impl Arrival {
    fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

#[derive(Default)]
struct Log {
    arrivals: Vec<Arrival>,
    accepted: HashSet<i64>,
}

struct Receiver {
    addr: SocketAddr,
    /// The status every request is answered with.
    answer: AtomicU16,
    secret: Mutex<Option<Vec<u8>>>,
    verify: bool,
    log: Mutex<Log>,
    /// Distinct `task.created` seqs answered 2xx.
    accepted: AtomicU64,
}

#[derive(Deserialize)]
struct Activity {
    seq: Option<i64>,
    ts: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unix_ms_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

impl Receiver {
    async fn start(verify: bool) -> Result<Arc<Receiver>> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the receiver")?;
        let rx = Arc::new(Receiver {
            addr: listener.local_addr()?,
            answer: AtomicU16::new(200),
            secret: Mutex::new(None),
            verify,
            log: Mutex::new(Log::default()),
            accepted: AtomicU64::new(0),
        });
        let r = rx.clone();
        tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((s, _)) => s,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let r = r.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let r = r.clone();
                        async move { Ok::<_, Infallible>(r.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(rx)
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let at = Instant::now();
        let unix_ms = unix_ms_now();
        let status = self.answer.load(Ordering::Relaxed);
        let activity: Option<Activity> = serde_json::from_slice(&body).ok();
        let signature_ok = if self.verify {
            let secret = lock(&self.secret).clone();
            Some(secret.is_some_and(|s| verify_signature(&s, &parts.headers, &body)))
        } else {
            None
        };
        let seq = activity.as_ref().and_then(|a| a.seq);
        let arrival = Arrival {
            at,
            unix_ms,
            seq,
            ts_ms: activity
                .as_ref()
                .and_then(|a| a.ts.as_deref())
                .and_then(parse_ts_ms),
            task_created: activity
                .as_ref()
                .is_some_and(|a| a.kind.as_deref() == Some("task.created")),
            status,
            signature_ok,
        };
        {
            let mut log = lock(&self.log);
            if arrival.accepted()
                && arrival.task_created
                && let Some(s) = seq
                && log.accepted.insert(s)
            {
                self.accepted.fetch_add(1, Ordering::Relaxed);
            }
            log.arrivals.push(arrival);
        }
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        resp
    }

    fn set_answer(&self, status: u16) {
        self.answer.store(status, Ordering::Relaxed);
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    fn arrivals_len(&self) -> usize {
        lock(&self.log).arrivals.len()
    }

    fn arrivals_from(&self, from: usize) -> Vec<Arrival> {
        lock(&self.log).arrivals[from..].to_vec()
    }

    /// Waits until `n` distinct task seqs were answered 2xx, or `deadline`; true if they were.
    async fn wait_for(&self, n: u64, deadline: Instant) -> bool {
        loop {
            if self.accepted() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Standard Webhooks: `v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>`, one of the
/// space-separated signatures.
fn verify_signature(secret: &[u8], headers: &HeaderMap, body: &[u8]) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(ts), Some(sig)) = (
        get("webhook-id"),
        get("webhook-timestamp"),
        get("webhook-signature"),
    ) else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(ts.as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let expected = STANDARD.encode(ctx.sign().as_ref());
    sig.split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|s| s == expected)
}

/// Milliseconds since the epoch of an RFC 3339 UTC timestamp as the server writes them
/// (`2026-11-25T19:03:04.123Z`; other fraction lengths are read too).
fn parse_ts_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let rest = s.get(19..)?;
    let frac_ms = match rest.strip_prefix('.') {
        Some(f) => {
            let digits = f.strip_suffix('Z')?;
            if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let mut ms: i64 = 0;
            for (i, c) in digits.bytes().take(3).enumerate() {
                ms += i64::from(c - b'0') * [100, 10, 1][i];
            }
            ms
        }
        None if rest == "Z" => 0,
        None => return None,
    };
    // Days from the civil date (H. Hinnant's algorithm).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + sec * 1000 + frac_ms)
}

// ---------------------------------------------------------------- writers

struct Writes {
    target: Target,
    uri: Uri,
    bearer: HeaderValue,
    timeout: Duration,
    /// Next ticket; tickets at or above `total` are not sent.
    next: AtomicU64,
    total: u64,
    /// Open loop: ticket `i` is due at `start + i / rate`.
    rate: Option<f64>,
    start: Instant,
    stop: AtomicBool,
    /// Tasks answered 2xx so far.
    created: AtomicU64,
}

#[derive(Default)]
struct WriterOut {
    ok: u64,
    failures: BTreeMap<String, u64>,
    latency: LatencyHistogram,
}

async fn writer(w: Arc<Writes>) -> WriterOut {
    let mut client = Client::new(w.target.addr.as_str().into());
    let mut out = WriterOut::default();
    loop {
        if w.stop.load(Ordering::Relaxed) {
            break;
        }
        let i = w.next.fetch_add(1, Ordering::Relaxed);
        if i >= w.total {
            break;
        }
        let from = match w.rate {
            Some(r) => {
                let due = w.start + Duration::from_secs_f64(i as f64 / r);
                tokio::time::sleep_until(due.into()).await;
                if w.stop.load(Ordering::Relaxed) {
                    break;
                }
                due
            }
            None => Instant::now(),
        };
        let req = post_json(
            &w.target,
            w.uri.clone(),
            Some(&w.bearer),
            Bytes::from(format!(r#"{{"title":"webhook bench {i}"}}"#)),
        );
        let outcome = client.exchange(req, w.timeout, false).await;
        out.latency.record(from.elapsed());
        match outcome {
            Ok((s, _)) if s.is_success() => {
                out.ok += 1;
                w.created.fetch_add(1, Ordering::Relaxed);
            }
            Ok((s, _)) => bump(&mut out.failures, s.as_u16().to_string()),
            Err(e) => {
                bump(&mut out.failures, e);
                if e == "connect" {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    out
}

fn spawn_writers(w: &Arc<Writes>, n: usize) -> Vec<tokio::task::JoinHandle<WriterOut>> {
    (0..n.max(1))
        .map(|_| tokio::spawn(writer(w.clone())))
        .collect()
}

async fn join_writers(handles: Vec<tokio::task::JoinHandle<WriterOut>>) -> Result<WriterOut> {
    let mut all = WriterOut::default();
    for h in handles {
        let o = h.await.map_err(|e| anyhow!("a writer failed: {e}"))?;
        all.ok += o.ok;
        for (k, v) in o.failures {
            *all.failures.entry(k).or_default() += v;
        }
        all.latency.merge(&o.latency);
    }
    Ok(all)
}

// ---------------------------------------------------------------- setup

struct Setup {
    target: Target,
    client: Client,
    bearer: HeaderValue,
    team_id: String,
    webhook_id: String,
}

impl Setup {
    async fn new(args: &WebhooksArgs, rx: &Receiver) -> Result<Setup> {
        let target = parse_url(&args.url)?;
        let timeout = Duration::from_secs_f64(args.timeout);
        let team = crate::fanout::setup_team(&target, 0, timeout).await?;
        let mut client = Client::new(target.addr.as_str().into());
        let hook = post_api(
            &mut client,
            &target,
            &format!("/api/v1/teams/{}/webhooks", team.team_id),
            Some(&team.owner_bearer),
            json!({
                "url": format!("http://{}/hook", rx.addr),
                "events": ["task.created"],
                "description": "taskforge-bench webhooks",
            }),
            timeout,
        )
        .await
        .context(
            "creating the webhook (the server needs TASKFORGE_WEBHOOK_ALLOW_PRIVATE=true for a \
             loopback receiver)",
        )?;
        let webhook_id = hook["id"]
            .as_str()
            .ok_or_else(|| anyhow!("webhook response has no id: {hook}"))?
            .to_owned();
        let secret = hook["secret"]
            .as_str()
            .and_then(|s| s.strip_prefix("whsec_"))
            .ok_or_else(|| anyhow!("webhook response has no whsec_ secret"))?;
        *lock(&rx.secret) = Some(
            STANDARD
                .decode(secret)
                .context("the webhook secret is not base64")?,
        );
        Ok(Setup {
            target,
            client,
            bearer: team.owner_bearer,
            team_id: team.team_id,
            webhook_id,
        })
    }

    async fn set_enabled(&mut self, on: bool, timeout: Duration) -> Result<()> {
        call_api(
            &mut self.client,
            &self.target,
            Method::PATCH,
            &format!("/api/v1/webhooks/{}", self.webhook_id),
            &self.bearer,
            Some(json!({ "enabled": on })),
            timeout,
        )
        .await?;
        Ok(())
    }

    /// Creates one task and waits until it is delivered (the webhook's worker is running).
    async fn warm_up(&mut self, rx: &Receiver, timeout: Duration) -> Result<()> {
        let before = rx.accepted();
        post_api(
            &mut self.client,
            &self.target,
            &format!("/api/v1/teams/{}/tasks", self.team_id),
            Some(&self.bearer),
            json!({"title": "webhook bench warm-up"}),
            timeout,
        )
        .await?;
        // The deliverer claims new webhooks every third of its lease (10 s by default).
        let deadline = Instant::now() + Duration::from_secs(30);
        ensure!(
            rx.wait_for(before + 1, deadline).await,
            "the warm-up task was not delivered within 30 s"
        );
        Ok(())
    }

    fn writes(&self, total: u64, rate: Option<f64>, start: Instant, timeout: Duration) -> Writes {
        Writes {
            target: Target {
                addr: self.target.addr.clone(),
                host_header: self.target.host_header.clone(),
                prefix: self.target.prefix.clone(),
            },
            uri: format!("{}/api/v1/teams/{}/tasks", self.target.prefix, self.team_id)
                .parse()
                .expect("a valid path"),
            bearer: self.bearer.clone(),
            timeout,
            next: AtomicU64::new(0),
            total,
            rate,
            start,
            stop: AtomicBool::new(false),
            created: AtomicU64::new(0),
        }
    }

    /// `taskforge_webhook_backlog{webhook="<id>"}` from /metrics, if it is there.
    async fn backlog_metric(&mut self, timeout: Duration) -> Option<f64> {
        let body = call_api(
            &mut self.client,
            &self.target,
            Method::GET,
            "/metrics",
            &self.bearer,
            None,
            timeout,
        )
        .await
        .ok()?;
        backlog_of(&String::from_utf8_lossy(&body), &self.webhook_id)
    }
}

/// The value of `taskforge_webhook_backlog` for `webhook` in a Prometheus text exposition.
fn backlog_of(text: &str, webhook: &str) -> Option<f64> {
    let label = format!("webhook=\"{webhook}\"");
    text.lines()
        .filter(|l| l.starts_with("taskforge_webhook_backlog{") && l.contains(&label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

// ---------------------------------------------------------------- analysis

/// What the arrivals of a measurement say.
#[derive(Default)]
struct Seen {
    received: u64,
    /// seq → its first successful arrival
    first_ok: HashMap<i64, Arrival>,
    duplicates: u64,
    out_of_order: u64,
    unexpected: u64,
    failed: u64,
    bad_signatures: u64,
}

fn analyze(arrivals: &[Arrival]) -> Seen {
    let mut s = Seen::default();
    let mut max_seq = i64::MIN;
    for a in arrivals {
        s.received += 1;
        if a.signature_ok == Some(false) {
            s.bad_signatures += 1;
        }
        let Some(seq) = a.seq.filter(|_| a.task_created) else {
            s.unexpected += 1;
            continue;
        };
        if !a.accepted() {
            s.failed += 1;
            continue;
        }
        if s.first_ok.contains_key(&seq) {
            s.duplicates += 1;
            continue;
        }
        if seq < max_seq {
            s.out_of_order += 1;
        }
        max_seq = max_seq.max(seq);
        s.first_ok.insert(seq, *a);
    }
    s
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn since_ms(later: Instant, earlier: Instant) -> f64 {
    if later >= earlier {
        ms(later - earlier)
    } else {
        -ms(earlier - later)
    }
}

fn server_cpu(pid: Option<u32>) -> Option<f64> {
    pid.and_then(|p| procfs::cpu_seconds(Proc::Pid(p)).ok())
}

fn gen_cpu() -> f64 {
    procfs::cpu_seconds(Proc::Current).unwrap_or(0.0)
}

// ---------------------------------------------------------------- modes

pub async fn run(args: &WebhooksArgs, threads: usize) -> Result<WebhooksReport> {
    ensure!(args.writers >= 1, "--writers must be at least 1");
    ensure!(
        args.rate > 0.0 && args.rate.is_finite(),
        "--rate must be positive"
    );
    ensure!(args.wait > 0.0, "--wait must be positive");
    let rx = Receiver::start(args.verify).await?;
    let t = Instant::now();
    let mut setup = Setup::new(args, &rx).await?;
    let mut report = WebhooksReport {
        scenario: "webhooks".into(),
        mode: Some(args.mode),
        label: args.label.clone(),
        round: args.round,
        url: args.url.clone(),
        threads,
        writers: args.writers,
        webhook_id: setup.webhook_id.clone(),
        ..WebhooksReport::default()
    };
    match args.mode {
        Mode::Drain => drain(args, &rx, &mut setup, &mut report, t).await?,
        Mode::Lag => lag(args, &rx, &mut setup, &mut report, t).await?,
        Mode::Outage => outage(args, &rx, &mut setup, &mut report, t).await?,
    }
    Ok(report)
}

/// Fills the fields every mode has from the writes and the arrivals.
fn common(report: &mut WebhooksReport, verify: bool, out: &WriterOut, seen: &Seen, expected: u64) {
    report.created = out.ok;
    report.write_failures = out.failures.clone();
    report.write_latency = out.latency.summary();
    report.received = seen.received;
    report.delivered = seen.first_ok.len() as u64;
    report.lost = expected.saturating_sub(report.delivered);
    report.duplicates = seen.duplicates;
    report.out_of_order = seen.out_of_order;
    report.unexpected = seen.unexpected;
    report.failed_answers = seen.failed;
    report.bad_signatures = verify.then_some(seen.bad_signatures);
}

async fn drain(
    args: &WebhooksArgs,
    rx: &Receiver,
    setup: &mut Setup,
    report: &mut WebhooksReport,
    t: Instant,
) -> Result<()> {
    let timeout = Duration::from_secs_f64(args.timeout);
    setup.set_enabled(false, timeout).await?;
    report.setup_secs = t.elapsed().as_secs_f64();
    let mark = rx.arrivals_len();
    let accepted0 = rx.accepted();

    let start = Instant::now();
    let writes = Arc::new(setup.writes(args.tasks, None, start, timeout));
    let out = join_writers(spawn_writers(&writes, args.writers)).await?;
    let write_secs = start.elapsed().as_secs_f64();
    if out.ok == 0 {
        bail!("no task was created: {:?}", out.failures);
    }
    report.write_secs = Some(write_secs);
    report.write_per_sec = Some(out.ok as f64 / write_secs);
    // Let the writes' aftermath (WAL checkpoints, relay) settle before the measured drain.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let g0 = gen_cpu();
    let s0 = server_cpu(args.server_pid);
    let t0 = Instant::now();
    setup.set_enabled(true, timeout).await?;
    let done = rx
        .wait_for(accepted0 + out.ok, t0 + Duration::from_secs_f64(args.wait))
        .await;
    let s1 = server_cpu(args.server_pid);
    report.generator_cpu_secs = gen_cpu() - g0;
    report.server_cpu_secs = s0.zip(s1).map(|(a, b)| b - a);
    report.timed_out = !done;

    let seen = analyze(&rx.arrivals_from(mark));
    common(report, args.verify, &out, &seen, out.ok);
    let first = seen.first_ok.values().map(|a| a.at).min();
    let last = seen.first_ok.values().map(|a| a.at).max();
    if let (Some(first), Some(last)) = (first, last) {
        let n = seen.first_ok.len() as f64;
        let drain_secs = since_ms(last, t0) / 1000.0;
        report.pickup_ms = Some(since_ms(first, t0));
        report.drain_secs = Some(drain_secs);
        report.deliveries_per_sec = Some(n / drain_secs);
        let from_first = (last - first).as_secs_f64();
        report.deliveries_per_sec_from_first = (from_first > 0.0).then(|| (n - 1.0) / from_first);
        report.server_cpu_us_per_delivery = report.server_cpu_secs.map(|c| c * 1e6 / n);
    }
    Ok(())
}

async fn lag(
    args: &WebhooksArgs,
    rx: &Receiver,
    setup: &mut Setup,
    report: &mut WebhooksReport,
    t: Instant,
) -> Result<()> {
    let timeout = Duration::from_secs_f64(args.timeout);
    setup.warm_up(rx, timeout).await?;
    report.setup_secs = t.elapsed().as_secs_f64();
    let mark = rx.arrivals_len();
    let accepted0 = rx.accepted();

    let total = (args.rate * args.duration).round().max(1.0) as u64;
    let start = Instant::now() + Duration::from_millis(20);
    let writes = Arc::new(setup.writes(total, Some(args.rate), start, timeout));
    let g0 = gen_cpu();
    let s0 = server_cpu(args.server_pid);
    let out = join_writers(spawn_writers(&writes, args.writers)).await?;
    let done = rx
        .wait_for(
            accepted0 + out.ok,
            Instant::now() + Duration::from_secs_f64(args.wait),
        )
        .await;
    let s1 = server_cpu(args.server_pid);
    report.generator_cpu_secs = gen_cpu() - g0;
    report.server_cpu_secs = s0.zip(s1).map(|(a, b)| b - a);
    report.timed_out = !done;

    let seen = analyze(&rx.arrivals_from(mark));
    common(report, args.verify, &out, &seen, out.ok);
    let mut hist = LatencyHistogram::new();
    let mut negative = 0u64;
    for a in seen.first_ok.values() {
        let Some(ts) = a.ts_ms else { continue };
        let lag_ms = a.unix_ms - ts as f64;
        if lag_ms < 0.0 {
            negative += 1;
        }
        hist.record(Duration::from_secs_f64(lag_ms.max(0.0) / 1000.0));
    }
    report.target_rate = Some(args.rate);
    report.duration_secs = Some(args.duration);
    report.lag = Some(hist.summary());
    report.negative_lag = Some(negative);
    report.server_cpu_us_per_task = report
        .server_cpu_secs
        .filter(|_| out.ok > 0)
        .map(|c| c * 1e6 / out.ok as f64);
    Ok(())
}

async fn outage(
    args: &WebhooksArgs,
    rx: &Receiver,
    setup: &mut Setup,
    report: &mut WebhooksReport,
    t: Instant,
) -> Result<()> {
    let timeout = Duration::from_secs_f64(args.timeout);
    ensure!(args.down > 0.0, "--down must be positive");
    ensure!(args.metrics_every > 0.0, "--metrics-every must be positive");
    setup.warm_up(rx, timeout).await?;
    report.setup_secs = t.elapsed().as_secs_f64();
    let mark = rx.arrivals_len();
    let accepted0 = rx.accepted();
    let every = Duration::from_secs_f64(args.metrics_every);
    let wait = Duration::from_secs_f64(args.wait);

    rx.set_answer(503);
    let t_down = Instant::now();
    let t_rec = t_down + Duration::from_secs_f64(args.down);
    let total = (args.rate * (args.down + args.wait)).ceil() as u64;
    let writes = Arc::new(setup.writes(total, Some(args.rate), t_down, timeout));
    let handles = spawn_writers(&writes, args.writers);
    let g0 = gen_cpu();
    let s0 = server_cpu(args.server_pid);

    let mut samples = Vec::new();
    let sample = async |setup: &mut Setup, samples: &mut Vec<BacklogSample>| {
        let metric = setup.backlog_metric(timeout).await;
        samples.push(BacklogSample {
            t_secs: t_down.elapsed().as_secs_f64(),
            backlog_metric: metric,
            created: writes.created.load(Ordering::Relaxed),
            delivered: rx.accepted() - accepted0,
        });
        metric
    };
    // During the outage: a sample every `every`, and one just before the recovery.
    let mut next = t_down;
    loop {
        let now = Instant::now();
        if now + Duration::from_millis(200) >= t_rec {
            break;
        }
        if now >= next {
            sample(setup, &mut samples).await;
            next += every;
        }
        tokio::time::sleep_until(next.min(t_rec - Duration::from_millis(200)).into()).await;
    }
    let metric_at_rec = sample(setup, &mut samples).await;
    tokio::time::sleep_until(t_rec.into()).await;
    rx.set_answer(200);
    let t_rec = Instant::now();
    let rec_unix_ms = unix_ms_now();
    let created_at_rec = writes.created.load(Ordering::Relaxed);

    // Until the backlog is delivered (counted by the tasks answered before the recovery; the
    // exact figures come from the activities' `ts` below), sampling on.
    let deadline = t_rec + wait;
    let mut next = t_rec + every;
    let mut done = false;
    while Instant::now() < deadline {
        if rx.accepted() >= accepted0 + created_at_rec {
            done = true;
            break;
        }
        if Instant::now() >= next {
            sample(setup, &mut samples).await;
            next += every;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    writes.stop.store(true, Ordering::Relaxed);
    let out = join_writers(handles).await?;
    let all = rx
        .wait_for(accepted0 + out.ok, deadline.max(Instant::now()))
        .await;
    let s1 = server_cpu(args.server_pid);
    report.generator_cpu_secs = gen_cpu() - g0;
    report.server_cpu_secs = s0.zip(s1).map(|(a, b)| b - a);
    report.timed_out = !(done && all);

    let arrivals = rx.arrivals_from(mark);
    let seen = analyze(&arrivals);
    common(report, args.verify, &out, &seen, out.ok);
    report.target_rate = Some(args.rate);
    report.down_secs = Some(args.down);
    // The tasks committed before the recovery: their `ts` is before it.
    let before: Vec<&Arrival> = seen
        .first_ok
        .values()
        .filter(|a| a.ts_ms.is_some_and(|ts| (ts as f64) < rec_unix_ms))
        .collect();
    let delivered_before = before.iter().filter(|a| a.at < t_rec).count();
    let backlog = (before.len() - delivered_before) as u64;
    report.backlog_at_recovery = Some(backlog);
    report.backlog_metric_at_recovery = metric_at_rec;
    report.backlog_metric_max = samples
        .iter()
        .filter(|s| s.t_secs <= args.down)
        .filter_map(|s| s.backlog_metric)
        .reduce(f64::max);
    report.backlog_samples = Some(samples);
    report.failed_attempts = Some(seen.failed);
    let first_ok_after = arrivals
        .iter()
        .filter(|a| a.accepted() && a.at >= t_rec)
        .map(|a| a.at)
        .min();
    let last_failed = arrivals
        .iter()
        .filter(|a| !a.accepted())
        .map(|a| a.at)
        .max();
    let backlog_done = before.iter().map(|a| a.at).max();
    report.retry_wait_ms = first_ok_after.map(|f| since_ms(f, t_rec));
    report.retry_gap_ms = first_ok_after.zip(last_failed).map(|(f, l)| since_ms(f, l));
    if let Some(done_at) = backlog_done.filter(|_| backlog > 0) {
        report.catch_up_ms = Some(since_ms(done_at, t_rec));
        if let Some(f) = first_ok_after {
            let d = since_ms(done_at, f);
            report.backlog_drain_ms = Some(d);
            report.backlog_per_sec = (d > 0.0).then(|| backlog as f64 * 1000.0 / d);
        }
    }
    Ok(())
}

pub fn print_human(r: &WebhooksReport) {
    let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.1}"));
    println!(
        "webhooks {:?} ({}): created {} (failed {:?}), delivered {}, lost {}, duplicates {}, out of order {}, unexpected {}, 503s {}{}",
        r.mode,
        r.label.as_deref().unwrap_or("-"),
        r.created,
        r.write_failures,
        r.delivered,
        r.lost,
        r.duplicates,
        r.out_of_order,
        r.unexpected,
        r.failed_answers,
        if r.timed_out { ", TIMED OUT" } else { "" }
    );
    match r.mode {
        Some(Mode::Drain) => println!(
            "  writes {} s ({}/s); enable → first {} ms, → last {} s: {} deliveries/s ({} /s from the first); server {} µs CPU per delivery",
            f(r.write_secs),
            f(r.write_per_sec),
            f(r.pickup_ms),
            f(r.drain_secs),
            f(r.deliveries_per_sec),
            f(r.deliveries_per_sec_from_first),
            f(r.server_cpu_us_per_delivery)
        ),
        Some(Mode::Lag) => {
            println!(
                "  {} tasks/s for {} s; write latency {}",
                f(r.target_rate),
                f(r.duration_secs),
                r.write_latency.one_line()
            );
            if let Some(l) = &r.lag {
                println!(
                    "  lag (arrival − ts) {}; server {} µs CPU per task",
                    l.one_line(),
                    f(r.server_cpu_us_per_task)
                );
            }
        }
        Some(Mode::Outage) => {
            for s in r.backlog_samples.iter().flatten() {
                println!(
                    "  t {:6.1} s  backlog metric {:>7}  created {:>6}  delivered {:>6}",
                    s.t_secs,
                    f(s.backlog_metric),
                    s.created,
                    s.delivered
                );
            }
            println!(
                "  down {} s at {} tasks/s: backlog at recovery {} (metric {}), {} failed attempts; recovery → first success {} ms (gap since the last failure {} ms), → backlog delivered {} ms ({} ms after the first success, {} /s)",
                f(r.down_secs),
                f(r.target_rate),
                r.backlog_at_recovery.unwrap_or(0),
                f(r.backlog_metric_at_recovery),
                r.failed_attempts.unwrap_or(0),
                f(r.retry_wait_ms),
                f(r.retry_gap_ms),
                f(r.catch_up_ms),
                f(r.backlog_drain_ms),
                f(r.backlog_per_sec)
            );
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_to_epoch_ms() {
        // date -u -d 2026-11-25T19:03:04Z +%s → 1795633384
        assert_eq!(
            parse_ts_ms("2026-11-25T19:03:04.123Z"),
            Some(1_795_633_384_123)
        );
        assert_eq!(parse_ts_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_ts_ms("2000-03-01T00:00:00.5Z"), Some(951_868_800_500));
        assert_eq!(parse_ts_ms("2026-11-25 19:03:04Z"), None);
        assert_eq!(parse_ts_ms("2026-11-25T19:03:04.12+01:00"), None);
    }

    #[test]
    fn signatures_verify() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        let body = br#"{"seq":1}"#;
        let tag = ring::hmac::sign(&key, br#"msg_1.1700000000.{"seq":1}"#);
        let mut h = HeaderMap::new();
        h.insert("webhook-id", HeaderValue::from_static("msg_1"));
        h.insert("webhook-timestamp", HeaderValue::from_static("1700000000"));
        let sig = format!("v1,bm90IGl0 v1,{}", STANDARD.encode(tag.as_ref()));
        h.insert("webhook-signature", HeaderValue::from_str(&sig).unwrap());
        assert!(verify_signature(secret, &h, body));
        assert!(!verify_signature(secret, &h, br#"{"seq":2}"#));
        assert!(!verify_signature(b"another secret", &h, body));
    }

    #[test]
    fn backlog_metric_is_found_by_webhook() {
        let text = "# TYPE taskforge_webhook_backlog gauge\n\
                    taskforge_webhook_backlog{webhook=\"a\"} 3\n\
                    taskforge_webhook_backlog{webhook=\"b\"} 42\n";
        assert_eq!(backlog_of(text, "b"), Some(42.0));
        assert_eq!(backlog_of(text, "c"), None);
    }

    fn arrival(at: Instant, seq: i64, status: u16) -> Arrival {
        Arrival {
            at,
            unix_ms: 0.0,
            seq: Some(seq),
            ts_ms: Some(0),
            task_created: true,
            status,
            signature_ok: None,
        }
    }

    #[test]
    fn analysis_counts_retries_duplicates_and_order() {
        let t = Instant::now();
        let seen = analyze(&[
            arrival(t, 5, 503),
            arrival(t, 5, 200),
            arrival(t, 6, 200),
            arrival(t, 6, 200),
            arrival(t, 4, 200),
            Arrival {
                task_created: false,
                ..arrival(t, 9, 200)
            },
        ]);
        assert_eq!(seen.received, 6);
        assert_eq!(seen.failed, 1);
        assert_eq!(seen.first_ok.len(), 3);
        assert_eq!(seen.duplicates, 1);
        assert_eq!(seen.out_of_order, 1);
        assert_eq!(seen.unexpected, 1);
    }
}
