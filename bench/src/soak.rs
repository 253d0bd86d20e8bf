//! Scenario `soak`: many sockets of one team held for a long time under steady activity, with
//! churn, checking every socket's stream and sampling the servers' memory every minute.
//!
//! `soak --setup --team-file F` registers the users, makes the team and writes F (team id and
//! tokens), then exits; `soak --team-file F` runs. Several generator processes can share one
//! team (one process holds at most about 20,000 sockets): each opens `--sockets`, and only those
//! given `--rate` write.
//!
//! Each socket is its own task. It subscribes to the team, and every minute a `--churn-percent`
//! share of the sockets (a different tenth each minute at 10 %) closes and reconnects with
//! `since` = the last seq it received, as a client that lost its connection would. A server-side
//! close (1001, 4008, ...) is resumed the same way and counted. Every activity of the team goes
//! to every socket, so a socket's seqs must be exactly consecutive: a seq at or below the last one
//! is a duplicate, one that skips ahead is a loss. At the end the writers stop, the team's final
//! seq is read over HTTP, and every socket must reach it within `--drain-timeout`; what is short
//! is lost too. Per minute: the RSS and CPU of each `--server-pid`, deliveries, reconnects.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::Request;
use hyper::header::{AUTHORIZATION, HOST, HeaderValue};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::fanout::{Scan, Scanner, Ws, setup_team};
use crate::http_writes::{Client, Target, parse_url, post_json};
use crate::procfs::{self, Proc};

#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// Base URLs of the instances (repeat or comma-separate); socket i and writer w go to
    /// instance i mod n / w mod n; the setup goes through the first
    #[arg(long = "url", required = true, value_delimiter = ',')]
    pub urls: Vec<String>,
    /// PIDs of the instances, in the order of the URLs: their RSS and CPU are sampled every minute
    #[arg(long = "server-pid", value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// The team: written by `--setup`, read otherwise
    #[arg(long)]
    pub team_file: String,
    /// Only register the users, make the team and write `--team-file`
    #[arg(long)]
    pub setup: bool,
    /// Users of the team whose tokens the sockets use (with --setup)
    #[arg(long, default_value_t = 20)]
    pub users: usize,
    /// Sockets this process holds
    #[arg(long, default_value_t = 1000)]
    pub sockets: usize,
    /// Task creations per second from this process (0: this process only reads)
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Writers (keep-alive HTTP/1.1 connections) sharing `--rate`
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Length of the steady load, minutes
    #[arg(long, default_value_t = 20.0)]
    pub minutes: f64,
    /// Minutes at the start left out of the RSS flatness figure
    #[arg(long, default_value_t = 2.0)]
    pub warmup_minutes: f64,
    /// Share of the sockets that reconnect with resume each minute
    #[arg(long, default_value_t = 10)]
    pub churn_percent: u32,
    /// Local source addresses 127.0.0.K ..= 127.0.0.(K+N-1) for the sockets: `--source-first` K
    #[arg(long, default_value_t = 1)]
    pub source_first: u8,
    /// ... and `--source-addrs` N
    #[arg(long, default_value_t = 8)]
    pub source_addrs: u8,
    /// Sockets being opened at the same time at the start
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Seconds every socket has to reach the team's final seq after the writers stop
    #[arg(long, default_value_t = 60.0)]
    pub drain_timeout: f64,
    /// Free-form label copied into the report
    #[arg(long)]
    pub label: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TeamFile {
    team_id: String,
    owner_token: String,
    tokens: Vec<String>,
}

/// One minute of the run.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct MinuteSample {
    pub minute: u32,
    /// RSS of each instance, KiB (null where it could not be read)
    pub rss_kib: Vec<Option<u64>>,
    /// CPU seconds of each instance during the minute
    pub cpu_secs: Vec<Option<f64>>,
    /// Anonymous and file-backed RSS and threads of each instance
    #[serde(default)]
    pub memory: Vec<Option<procfs::MemoryParts>>,
    pub deliveries: u64,
    pub reconnects: u64,
    pub connected: u64,
    pub created: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct SoakReport {
    pub scenario: String,
    pub label: Option<String>,
    pub urls: Vec<String>,
    pub sockets: usize,
    pub minutes: f64,
    pub rate: f64,
    pub churn_percent: u32,
    /// Tasks this process created (2xx)
    pub created: u64,
    pub write_failures: BTreeMap<String, u64>,
    /// The team's seq when the writers had stopped
    pub final_seq: u64,
    /// Activity frames received (duplicates included)
    pub deliveries: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// Reconnects done on purpose (churn) and after the server closed or the connection failed
    pub churn_reconnects: u64,
    pub other_reconnects: u64,
    /// Activities replayed to resuming sockets (received before their `subscribed`)
    pub replayed: u64,
    /// Server closes and connection failures, by close code or error
    pub closes: BTreeMap<String, u64>,
    /// Sockets that reached the final seq
    pub sockets_complete: u64,
    pub per_minute: Vec<MinuteSample>,
    /// Per instance, after the warm-up: (max RSS - min RSS) / min RSS, percent
    pub rss_spread_after_warmup_pct: Vec<Option<f64>>,
    pub generator_cpu_secs: f64,
}

/// What every socket task shares.
struct Shared {
    team_id: String,
    servers: Vec<(SocketAddr, String)>,
    tokens: Vec<String>,
    sources: Vec<Option<IpAddr>>,
    started: Instant,
    churn_every: Option<Duration>,
    /// Set when the writers have stopped: no more churn.
    calm: AtomicBool,
    /// Set at the very end: tasks return.
    stop: AtomicBool,
    last: Vec<AtomicU64>,
    deliveries: AtomicU64,
    lost: AtomicU64,
    duplicates: AtomicU64,
    replayed: AtomicU64,
    churn_reconnects: AtomicU64,
    other_reconnects: AtomicU64,
    connected: AtomicU64,
    closes: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    fn close(&self, why: String) {
        *self
            .closes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(why)
            .or_default() += 1;
    }
}

const CONFIG_READ_BUFFER: usize = 8192;

/// `last` of a socket that has not been subscribed yet.
const NEVER: u64 = u64::MAX;

/// Connects socket `i` and subscribes (with `since` once it has seen a seq). Activities that
/// arrive before `subscribed` (the resume's replay) are checked like live ones.
async fn connect(shared: &Shared, i: usize, scanner: &Scanner) -> Result<Ws> {
    let (server, ws_base) = &shared.servers[i % shared.servers.len()];
    let sock = TcpSocket::new_v4()?;
    sock.set_reuseaddr(true)?;
    if let Some(ip) = shared.sources[i % shared.sources.len()] {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = sock.connect(*server).await.context("connect")?;
    stream.set_nodelay(true)?;
    let url = format!("{ws_base}{}", shared.tokens[i % shared.tokens.len()]);
    let config = WebSocketConfig::default().read_buffer_size(CONFIG_READ_BUFFER);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .context("handshake")?;
    let last = shared.last[i].load(Ordering::Relaxed);
    let subscribe = if last == NEVER {
        format!(r#"{{"type":"subscribe","teamId":"{}"}}"#, shared.team_id)
    } else {
        format!(
            r#"{{"type":"subscribe","teamId":"{}","since":{last}}}"#,
            shared.team_id
        )
    };
    ws.send(Message::text(subscribe))
        .await
        .context("subscribe")?;
    while let Some(msg) = ws.next().await {
        match msg.context("reading the subscribe answer")? {
            Message::Text(t) => match scanner.scan(t.as_bytes()) {
                Scan::Activity { seq, .. } => {
                    shared.replayed.fetch_add(1, Ordering::Relaxed);
                    observe(shared, i, seq);
                }
                Scan::Other => {
                    let v: serde_json::Value = serde_json::from_str(t.as_str())?;
                    match v["type"].as_str() {
                        Some("subscribed") => {
                            let seq = v["seq"].as_u64().ok_or_else(|| anyhow!("no seq: {v}"))?;
                            let before = shared.last[i].load(Ordering::Relaxed);
                            if before == NEVER {
                                shared.last[i].store(seq, Ordering::Relaxed);
                            } else if seq > before {
                                // The replay should have brought everything up to `seq`.
                                shared.lost.fetch_add(seq - before, Ordering::Relaxed);
                                shared.last[i].store(seq, Ordering::Relaxed);
                            }
                            return Ok(ws);
                        }
                        Some("error") => bail!("subscribe answered {v}"),
                        _ => {}
                    }
                }
            },
            Message::Close(f) => bail!("closed during subscribe: {f:?}"),
            _ => {}
        }
    }
    bail!("ended before `subscribed`")
}

/// Checks one received seq against the socket's last one.
fn observe(shared: &Shared, i: usize, seq: Option<u64>) {
    shared.deliveries.fetch_add(1, Ordering::Relaxed);
    let Some(seq) = seq else {
        return;
    };
    let last = shared.last[i].load(Ordering::Relaxed);
    if last == NEVER {
        shared.last[i].store(seq, Ordering::Relaxed);
    } else if seq <= last {
        shared.duplicates.fetch_add(1, Ordering::Relaxed);
    } else {
        if seq > last + 1 {
            shared.lost.fetch_add(seq - last - 1, Ordering::Relaxed);
        }
        shared.last[i].store(seq, Ordering::Relaxed);
    }
}

/// One socket for the whole run: read, churn on its schedule, resume after any close.
async fn socket_task(shared: Arc<Shared>, i: usize) {
    let scanner = Scanner::new();
    // Socket i churns in the minutes m with m % slots == i % slots, at its own offset in the minute.
    let next_churn = |from: Instant| -> Option<Instant> {
        let every = shared.churn_every?;
        let slots = (every.as_secs_f64() / 60.0).round().max(1.0) as u64;
        let minute = Duration::from_secs(60);
        let offset = minute.mul_f64((i as f64 * 0.618_034).fract());
        let elapsed = from.saturating_duration_since(shared.started);
        let mut m = elapsed.as_secs() / 60;
        loop {
            let at = shared.started + minute * (m as u32) + offset;
            if (m % slots) == (i as u64 % slots) && at > from {
                return Some(at);
            }
            m += 1;
        }
    };
    let mut backoff = Duration::from_millis(100);
    while !shared.stop.load(Ordering::Relaxed) {
        let mut ws = match connect(&shared, i, &scanner).await {
            Ok(ws) => ws,
            Err(e) => {
                shared.close(format!("connect: {}", e.root_cause()));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        shared.connected.fetch_add(1, Ordering::Relaxed);
        let churn_at = next_churn(Instant::now());
        let why = loop {
            let sleep = async {
                match churn_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        if let Scan::Activity { seq, .. } = scanner.scan(t.as_bytes()) {
                            observe(&shared, i, seq);
                        }
                    }
                    Some(Ok(Message::Close(f))) => {
                        break Some(f.map_or("close".into(), |f| format!("close {}", u16::from(f.code))));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break Some(format!("error: {e}")),
                    None => break Some("eof".into()),
                },
                () = sleep, if !shared.calm.load(Ordering::Relaxed) => break None,
                () = tokio::time::sleep(Duration::from_millis(500)), if shared.stop.load(Ordering::Relaxed) => break None,
            }
            if shared.stop.load(Ordering::Relaxed) {
                break None;
            }
        };
        shared.connected.fetch_sub(1, Ordering::Relaxed);
        let _ = ws.close(None).await;
        match why {
            None if shared.stop.load(Ordering::Relaxed) => return,
            None => {
                shared.churn_reconnects.fetch_add(1, Ordering::Relaxed);
            }
            Some(why) => {
                shared.close(why);
                shared.other_reconnects.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The team's latest seq, from the `X-TaskForge-Seq` of a task list.
async fn team_seq(
    client: &mut Client,
    target: &Target,
    team: &str,
    bearer: &HeaderValue,
) -> Result<u64> {
    let req = Request::get(format!(
        "{}/api/v1/teams/{team}/tasks?limit=1",
        target.prefix
    ))
    .header(HOST, target.host_header.clone())
    .header(AUTHORIZATION, bearer.clone())
    .body(Full::new(Bytes::new()))?;
    let sender = client.ready().await.map_err(|e| anyhow!("{e}"))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .context("timed out")??;
    ensure!(
        resp.status().is_success(),
        "GET tasks answered {}",
        resp.status()
    );
    resp.headers()
        .get("x-taskforge-seq")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no X-TaskForge-Seq"))
}

pub async fn run(args: &SoakArgs) -> Result<Option<SoakReport>> {
    ensure!(!args.urls.is_empty(), "--url is required");
    let targets: Vec<Arc<Target>> = args
        .urls
        .iter()
        .map(|u| parse_url(u).map(Arc::new))
        .collect::<Result<_>>()?;
    if args.setup {
        let team = setup_team(&targets[0], args.users.max(1), Duration::from_secs(10)).await?;
        let owner = team
            .owner_bearer
            .to_str()?
            .trim_start_matches("Bearer ")
            .to_owned();
        let file = TeamFile {
            team_id: team.team_id,
            owner_token: owner,
            tokens: team.tokens,
        };
        std::fs::write(&args.team_file, serde_json::to_vec(&file)?)
            .with_context(|| format!("writing {}", args.team_file))?;
        eprintln!("soak: team {} written to {}", file.team_id, args.team_file);
        return Ok(None);
    }
    ensure!(args.sockets >= 1, "--sockets must be at least 1");
    ensure!(
        args.minutes > 0.0 && args.minutes.is_finite(),
        "--minutes must be positive"
    );
    ensure!(
        args.rate >= 0.0 && args.rate.is_finite(),
        "--rate must not be negative"
    );
    ensure!(args.churn_percent <= 100, "--churn-percent is at most 100");
    let team: TeamFile = serde_json::from_slice(
        &std::fs::read(&args.team_file).with_context(|| format!("reading {}", args.team_file))?,
    )?;
    let bearer = HeaderValue::from_str(&format!("Bearer {}", team.owner_token))?;
    let mut servers = Vec::new();
    for t in &targets {
        let addr: SocketAddr = tokio::net::lookup_host(t.addr.as_str())
            .await?
            .next()
            .ok_or_else(|| anyhow!("{} resolves to nothing", t.addr))?;
        ensure!(
            addr.ip().is_loopback(),
            "the soak only talks to loopback servers"
        );
        servers.push((addr, format!("ws://{}{}/realtime?token=", t.addr, t.prefix)));
    }
    let sources = (0..args.source_addrs.max(1))
        .map(|k| {
            Some(IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                0,
                args.source_first.saturating_add(k),
            )))
        })
        .collect();
    let churn_every = (args.churn_percent > 0)
        .then(|| Duration::from_secs(60).mul_f64(100.0 / f64::from(args.churn_percent)));
    let shared = Arc::new(Shared {
        team_id: team.team_id.clone(),
        servers,
        tokens: team.tokens.clone(),
        sources,
        started: Instant::now(),
        churn_every,
        calm: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        last: (0..args.sockets).map(|_| AtomicU64::new(NEVER)).collect(),
        deliveries: AtomicU64::new(0),
        lost: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        replayed: AtomicU64::new(0),
        churn_reconnects: AtomicU64::new(0),
        other_reconnects: AtomicU64::new(0),
        connected: AtomicU64::new(0),
        closes: Mutex::new(BTreeMap::new()),
    });

    // Open the sockets a few at a time (each task then lives on its own).
    eprintln!("soak: opening {} sockets", args.sockets);
    let mut tasks = Vec::with_capacity(args.sockets);
    for i in 0..args.sockets {
        tasks.push(tokio::spawn(socket_task(shared.clone(), i)));
        if i % args.connect_concurrency.max(1) == 0 {
            while (shared.connected.load(Ordering::Relaxed) as usize) + args.connect_concurrency < i
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    let open_deadline = Instant::now() + Duration::from_secs(300);
    while (shared.connected.load(Ordering::Relaxed) as usize) < args.sockets
        && Instant::now() < open_deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "soak: {} sockets subscribed",
        shared.connected.load(Ordering::Relaxed)
    );

    // Writers: open loop, task k at start + k / rate, spread over the writers and instances.
    let created = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let load_start = Instant::now();
    let load_end = load_start + Duration::from_secs_f64(args.minutes * 60.0);
    let mut writers = Vec::new();
    if args.rate > 0.0 {
        let n = args.writers.max(1);
        for w in 0..n {
            let target = targets[w % targets.len()].clone();
            let uri: hyper::Uri =
                format!("{}/api/v1/teams/{}/tasks", target.prefix, team.team_id).parse()?;
            let (bearer, created, failures) = (bearer.clone(), created.clone(), failures.clone());
            let per_writer = args.rate / n as f64;
            writers.push(tokio::spawn(async move {
                let mut client = Client::new(target.addr.as_str().into());
                let mut k = 0u64;
                loop {
                    let due = load_start
                        + Duration::from_secs_f64((k as f64 + w as f64 / n as f64) / per_writer);
                    if due >= load_end {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                    let body = Bytes::from(format!(r#"{{"title":"soak {w}-{k}"}}"#));
                    match client
                        .exchange(
                            post_json(&target, uri.clone(), Some(&bearer), body),
                            Duration::from_secs(10),
                            false,
                        )
                        .await
                    {
                        Ok((s, _)) if s.is_success() => {
                            created.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((s, _)) => {
                            *failures
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .entry(s.as_u16().to_string())
                                .or_default() += 1
                        }
                        Err(e) => {
                            *failures
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .entry(e.to_string())
                                .or_default() += 1
                        }
                    }
                    k += 1;
                }
            }));
        }
    }

    // Every minute: memory and CPU of each instance, and the counters.
    let pids = args.server_pids.clone();
    let cpu = |pids: &[u32]| -> Vec<Option<f64>> {
        pids.iter()
            .map(|p| procfs::cpu_seconds(Proc::Pid(*p)).ok())
            .collect()
    };
    let gen_cpu0 = procfs::cpu_seconds(Proc::Current).unwrap_or(0.0);
    let mut per_minute = Vec::new();
    let mut cpu_before = cpu(&pids);
    let (mut deliveries_before, mut reconnects_before) = (0u64, 0u64);
    let mut minute = 0u32;
    while Instant::now() < load_end {
        let next = load_start + Duration::from_secs(60 * u64::from(minute + 1));
        tokio::time::sleep_until(next.min(load_end).into()).await;
        if Instant::now() < next && Instant::now() >= load_end {
            break;
        }
        minute += 1;
        let cpu_now = cpu(&pids);
        let deliveries = shared.deliveries.load(Ordering::Relaxed);
        let reconnects = shared.churn_reconnects.load(Ordering::Relaxed)
            + shared.other_reconnects.load(Ordering::Relaxed);
        let sample = MinuteSample {
            minute,
            rss_kib: pids
                .iter()
                .map(|p| procfs::rss_kib(Proc::Pid(*p)).ok().map(|r| r.0))
                .collect(),
            cpu_secs: cpu_now
                .iter()
                .zip(&cpu_before)
                .map(|(a, b)| Some((*a)? - (*b)?))
                .collect(),
            memory: pids
                .iter()
                .map(|p| procfs::memory_parts(Proc::Pid(*p)).ok())
                .collect(),
            deliveries: deliveries - deliveries_before,
            reconnects: reconnects - reconnects_before,
            connected: shared.connected.load(Ordering::Relaxed),
            created: created.load(Ordering::Relaxed),
        };
        eprintln!(
            "soak: minute {minute}: rss MiB {:?} (anon/file MiB, threads {:?}), cpu s {:?}, {} deliveries, {} reconnects, {} connected, lost {}, dup {}",
            sample
                .rss_kib
                .iter()
                .map(|r| r.map(|k| k / 1024))
                .collect::<Vec<_>>(),
            sample
                .memory
                .iter()
                .map(|m| m.map(|m| (m.rss_anon_kib / 1024, m.rss_file_kib / 1024, m.threads)))
                .collect::<Vec<_>>(),
            sample
                .cpu_secs
                .iter()
                .map(|c| c.map(|c| (c * 10.0).round() / 10.0))
                .collect::<Vec<_>>(),
            sample.deliveries,
            sample.reconnects,
            sample.connected,
            shared.lost.load(Ordering::Relaxed),
            shared.duplicates.load(Ordering::Relaxed),
        );
        per_minute.push(sample);
        cpu_before = cpu_now;
        deliveries_before = deliveries;
        reconnects_before = reconnects;
    }
    for w in writers {
        w.await.context("writer panicked")?;
    }
    shared.calm.store(true, Ordering::Relaxed);

    // The end: every socket must reach the team's final seq.
    let mut client = Client::new(targets[0].addr.as_str().into());
    // Another generator's writers may still be finishing their last request.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let final_seq = team_seq(&mut client, &targets[0], &team.team_id, &bearer).await?;
    let drain_end = Instant::now() + Duration::from_secs_f64(args.drain_timeout);
    let complete = || {
        shared
            .last
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .filter(|l| *l != NEVER && *l >= final_seq)
            .count()
    };
    while complete() < args.sockets && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sockets_complete = complete() as u64;
    let short: u64 = shared
        .last
        .iter()
        .map(|l| match l.load(Ordering::Relaxed) {
            NEVER => final_seq,
            l => final_seq.saturating_sub(l),
        })
        .sum();
    shared.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }

    let warm = args.warmup_minutes;
    let spread = (0..pids.len())
        .map(|k| {
            let xs: Vec<u64> = per_minute
                .iter()
                .filter(|m| f64::from(m.minute) > warm)
                .filter_map(|m| m.rss_kib.get(k).copied().flatten())
                .collect();
            let (lo, hi) = (xs.iter().min()?, xs.iter().max()?);
            Some((*hi - *lo) as f64 * 100.0 / *lo as f64)
        })
        .collect();
    let closes = shared
        .closes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Ok(Some(SoakReport {
        scenario: "soak".into(),
        label: args.label.clone(),
        urls: args.urls.clone(),
        sockets: args.sockets,
        minutes: args.minutes,
        rate: args.rate,
        churn_percent: args.churn_percent,
        created: created.load(Ordering::Relaxed),
        write_failures: failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone(),
        final_seq,
        deliveries: shared.deliveries.load(Ordering::Relaxed),
        lost: shared.lost.load(Ordering::Relaxed) + short,
        duplicates: shared.duplicates.load(Ordering::Relaxed),
        churn_reconnects: shared.churn_reconnects.load(Ordering::Relaxed),
        other_reconnects: shared.other_reconnects.load(Ordering::Relaxed),
        replayed: shared.replayed.load(Ordering::Relaxed),
        closes,
        sockets_complete,
        per_minute,
        rss_spread_after_warmup_pct: spread,
        generator_cpu_secs: procfs::cpu_seconds(Proc::Current).unwrap_or(0.0) - gen_cpu0,
    }))
}
