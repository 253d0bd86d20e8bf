//! Scenario `resume`: one socket comes back after missing `--missed` activities and resumes with
//! `since`.
//!
//! Setup (not measured): register an owner and one member, make a team; the member opens a socket,
//! subscribes to the team without `since`, reads `subscribed.seq` S0 and closes it (the socket that
//! goes away). The owner then creates `--missed` K tasks titled `r<i>` over `--writers`
//! keep-alive HTTP/1.1 connections (any non-2xx answer fails the scenario); their `task.created`
//! activities have the seqs S0+1 ..= S0+K.
//!
//! Each of `--runs` runs: open a new socket for the member (connect and handshake not measured),
//! send `{"type":"subscribe","teamId":...,"since":S0}` and time, from just before that send,
//! (a) the first replayed activity, (b) the `subscribed` reply (which the contract puts after the
//! replay) and (c) the activity with seq S0+K. Per frame the reader only looks for the last
//! `"seq":` of an activity frame (no JSON parse; other frames are parsed) and marks it in a bitset:
//! every seq of S0+1 ..= S0+K must arrive exactly once, in order, before `subscribed`, whose seq
//! must be at least S0+K. The socket is closed after each run. Server CPU (`/proc`, with
//! `--server-pid`), this generator's CPU and the bytes received are taken per run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::Uri;
use hyper::header::HeaderValue;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::fanout::{Scan, Scanner, Ws, bump, setup_team};
use crate::http_writes::{Client, Target, parse_url, post_json};
use crate::procfs::{self, Proc};
use crate::stats::{LatencyHistogram, LatencySummary, median};

#[derive(clap::Args, Debug, Clone)]
pub struct ResumeArgs {
    /// Base URL of the server, plain HTTP (e.g. http://127.0.0.1:8080)
    #[arg(long)]
    pub url: String,
    /// Activities the socket misses while it is away (tasks created), replayed on each run
    #[arg(long, default_value_t = 10_000)]
    pub missed: u64,
    /// Resumes measured, each on a new socket
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Keep-alive HTTP/1.1 connections creating the missed tasks
    #[arg(long, default_value_t = 8)]
    pub writers: usize,
    /// Seconds a run may take, from the subscribe to the last frame expected
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// Timeout of each setup step, task creation and socket handshake, in seconds
    #[arg(long, default_value_t = 10.0)]
    pub request_timeout: f64,
    /// Seconds of quiet after the tasks are created, before the first run
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,
    /// PID of the server process, to report its CPU time per run
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Free-form label copied into the report
    #[arg(long)]
    pub label: Option<String>,
    /// Print one JSON object line instead of the human-readable report
    #[arg(long)]
    pub json: bool,
    /// Also append the JSON line to this file (whatever `--json` says)
    #[arg(long)]
    pub json_out: Option<std::path::PathBuf>,
}

/// One resume (one element of `perRun`).
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResumeRun {
    /// TCP connect and WebSocket handshake (not part of the figures below), ms
    pub connect_ms: f64,
    /// (a) subscribe sent to the first `activity` frame, ms
    pub first_activity_ms: Option<f64>,
    /// (b) subscribe sent to the `subscribed` reply, ms
    pub subscribed_ms: Option<f64>,
    /// (c) subscribe sent to the activity with seq since + missed (the replay time), ms
    pub last_activity_ms: Option<f64>,
    /// `subscribed.seq`
    pub subscribed_seq: Option<u64>,
    /// `activity` frames received
    pub activities: u64,
    /// Seqs of since+1 ..= since+missed that never came
    pub lost: u64,
    /// Seqs that came more than once
    pub duplicates: u64,
    /// Seqs that came after a higher one
    pub out_of_order: u64,
    /// Activities outside since+1 ..= since+missed, or without a seq
    pub unexpected: u64,
    /// Replayed activities that came after `subscribed` (the contract puts the replay before it)
    pub after_subscribed: u64,
    /// Text and binary frames received
    pub frames: u64,
    /// Their payload bytes (WebSocket and TCP framing not counted)
    pub bytes: u64,
    /// `error` frames, by code
    pub error_frames: BTreeMap<String, u64>,
    /// Other frames besides activities and `subscribed`, by type
    pub other_frames: BTreeMap<String, u64>,
    /// How the server ended the socket before the run was over (close code or error), if it did
    pub closed: Option<String>,
    /// The run hit `--timeout`
    pub timed_out: bool,
    /// CPU seconds of this generator from the subscribe to the last frame expected
    pub generator_cpu_secs: f64,
    /// CPU seconds of the server over the same span (with --server-pid; 10 ms ticks)
    pub server_cpu_secs: Option<f64>,
    pub server_cpu_us_per_activity: Option<f64>,
}

impl ResumeRun {
    /// Anything that breaks "every missed activity exactly once, in order, before `subscribed`".
    pub fn problems(&self, last_seq: u64) -> bool {
        self.lost > 0
            || self.duplicates > 0
            || self.out_of_order > 0
            || self.unexpected > 0
            || self.after_subscribed > 0
            || self.subscribed_seq.is_none_or(|s| s < last_seq)
            || !self.error_frames.is_empty()
            || self.closed.is_some()
            || self.timed_out
    }
}

/// The result of a `resume` scenario (the `--json` line).
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct ResumeReport {
    pub scenario: String,
    pub label: Option<String>,
    pub url: String,
    pub threads: usize,
    /// K: activities missed and replayed on each run
    pub missed: u64,
    /// Runs asked
    pub runs: usize,
    /// S0: `since` of every resume
    pub since_seq: u64,
    /// S0 + K
    pub last_seq: u64,
    /// Registering the users and making the team, seconds
    pub setup_secs: f64,
    /// Connections that created the K tasks
    pub writers: usize,
    /// Creating the K tasks, seconds
    pub create_secs: f64,
    pub create_per_sec: f64,
    pub create_latency: LatencySummary,
    pub create_generator_cpu_secs: f64,
    pub create_server_cpu_secs: Option<f64>,
    /// Every run, in order
    pub per_run: Vec<ResumeRun>,
    /// Runs with lost, duplicate, misordered, unexpected or late activities, errors, a close by
    /// the server, a timeout or a `subscribed.seq` below S0 + K
    pub failed_runs: usize,
    /// Over the runs: the median and max of (c), the replay time, ms
    pub replay_ms_median: Option<f64>,
    pub replay_ms_max: Option<f64>,
    /// The median of (a) and (b), ms
    pub first_activity_ms_median: Option<f64>,
    pub subscribed_ms_median: Option<f64>,
    /// K / median replay time
    pub replay_activities_per_sec: Option<f64>,
    /// Median payload MB (10^6 bytes) received per run
    pub mb_per_run: f64,
    /// Median server CPU per run, ms, and per replayed activity, µs
    pub server_cpu_ms_per_run: Option<f64>,
    pub server_cpu_us_per_activity: Option<f64>,
    /// Median generator CPU per run, ms
    pub generator_cpu_ms_per_run: f64,
}

impl ResumeReport {
    pub fn delivery_problems(&self) -> bool {
        self.failed_runs > 0 || self.per_run.len() < self.runs
    }
}

// ---------------------------------------------------------------- frame scanning (hot path)

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// An `activity` frame and its seq, when one was found.
    Activity(Option<u64>),
    Other,
}

/// The seq of an `activity` frame, found without parsing it (by fanout's scanner).
pub(crate) fn scan(scanner: &Scanner, b: &[u8]) -> Frame {
    match scanner.scan(b) {
        Scan::Activity { seq, .. } => Frame::Activity(seq),
        Scan::Other => Frame::Other,
    }
}

/// The seqs one resume must deliver: since+1 ..= since+k, each once, in order.
#[derive(Debug, Clone)]
pub(crate) struct SeqCheck {
    since: u64,
    k: u64,
    /// Bit `seq - since - 1` is set once that seq came.
    seen: Vec<u64>,
    distinct: u64,
    max_seen: u64,
    duplicates: u64,
    out_of_order: u64,
    unexpected: u64,
}

impl SeqCheck {
    pub(crate) fn new(since: u64, k: u64) -> Self {
        Self {
            since,
            k,
            seen: vec![0; k.div_ceil(64) as usize],
            distinct: 0,
            max_seen: since,
            duplicates: 0,
            out_of_order: 0,
            unexpected: 0,
        }
    }

    pub(crate) fn last_seq(&self) -> u64 {
        self.since + self.k
    }

    /// Whether `seq` is one of the expected ones.
    pub(crate) fn expected(&self, seq: u64) -> bool {
        seq > self.since && seq <= self.last_seq()
    }

    /// Records an activity's seq (`None`: it had none); true on the first arrival of an expected one.
    pub(crate) fn record(&mut self, seq: Option<u64>) -> bool {
        let Some(seq) = seq.filter(|&s| self.expected(s)) else {
            self.unexpected += 1;
            return false;
        };
        let off = seq - self.since - 1;
        let (w, bit) = ((off / 64) as usize, 1u64 << (off % 64));
        if self.seen[w] & bit != 0 {
            self.duplicates += 1;
            return false;
        }
        self.seen[w] |= bit;
        self.distinct += 1;
        if seq < self.max_seen {
            self.out_of_order += 1;
        }
        self.max_seen = self.max_seen.max(seq);
        true
    }

    pub(crate) fn complete(&self) -> bool {
        self.distinct == self.k
    }

    pub(crate) fn lost(&self) -> u64 {
        self.k - self.distinct
    }
}

// ---------------------------------------------------------------- sockets

async fn connect(server: SocketAddr, url: &str) -> Result<Ws> {
    let stream = TcpStream::connect(server).await.context("connect")?;
    stream.set_nodelay(true)?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, None)
        .await
        .context("WebSocket handshake")?;
    Ok(ws)
}

/// Sends a close and reads until the server's close (at most `timeout`).
async fn close(mut ws: Ws, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// Subscribes without `since` and returns `subscribed.seq`.
async fn subscribe_plain(ws: &mut Ws, team_id: &str) -> Result<u64> {
    let msg = format!(r#"{{"type":"subscribe","teamId":"{team_id}"}}"#);
    ws.send(Message::text(msg)).await.context("subscribe")?;
    while let Some(msg) = ws.next().await {
        match msg.context("reading the subscribe answer")? {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str())
                    .with_context(|| format!("frame is not JSON: {}", t.as_str()))?;
                match v["type"].as_str() {
                    Some("subscribed") => {
                        return v["seq"]
                            .as_u64()
                            .ok_or_else(|| anyhow!("subscribed without a seq: {v}"));
                    }
                    Some("error") => bail!("subscribe answered {v}"),
                    _ => {}
                }
            }
            Message::Close(f) => bail!("closed by the server during setup: {f:?}"),
            _ => {}
        }
    }
    bail!("connection ended before `subscribed`")
}

/// How long to wait for missing activities once `subscribed` is in.
const GRACE: Duration = Duration::from_secs(1);

/// One resume on a new socket.
async fn one_run(
    server: SocketAddr,
    url: &str,
    subscribe: &str,
    since: u64,
    k: u64,
    args: &ResumeArgs,
) -> Result<ResumeRun> {
    let request_timeout = Duration::from_secs_f64(args.request_timeout);
    let t = Instant::now();
    let mut ws = tokio::time::timeout(request_timeout, connect(server, url))
        .await
        .map_err(|_| anyhow!("connect and handshake timed out"))??;
    let mut run = ResumeRun {
        connect_ms: t.elapsed().as_secs_f64() * 1000.0,
        ..ResumeRun::default()
    };
    let scanner = Scanner::new();
    let mut check = SeqCheck::new(since, k);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let gen_cpu0 = procfs::cpu_seconds(Proc::Current).unwrap_or(0.0);
    let srv_cpu0 = args
        .server_pid
        .and_then(|p| procfs::cpu_seconds(Proc::Pid(p)).ok());

    let start = Instant::now();
    ws.send(Message::text(subscribe))
        .await
        .context("sending the subscribe")?;
    let deadline = start + Duration::from_secs_f64(args.timeout);
    let sleep = tokio::time::sleep_until(deadline.into());
    tokio::pin!(sleep);
    let mut subscribed = false;
    loop {
        let msg = tokio::select! {
            biased;
            m = ws.next() => m,
            _ = &mut sleep => {
                // After `subscribed`, the grace ran out: what is missing counts as lost.
                run.timed_out = !subscribed;
                break;
            }
        };
        match msg {
            Some(Ok(Message::Text(text))) => {
                run.frames += 1;
                run.bytes += text.len() as u64;
                match scan(&scanner, text.as_bytes()) {
                    Frame::Activity(seq) => {
                        run.activities += 1;
                        if run.first_activity_ms.is_none() {
                            run.first_activity_ms = Some(ms(start.elapsed()));
                        }
                        if subscribed && seq.is_some_and(|s| check.expected(s)) {
                            run.after_subscribed += 1;
                        }
                        if check.record(seq) && seq == Some(check.last_seq()) {
                            run.last_activity_ms = Some(ms(start.elapsed()));
                        }
                    }
                    Frame::Other => {
                        let v: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
                        match v["type"].as_str() {
                            Some("subscribed") if !subscribed => {
                                run.subscribed_ms = Some(ms(start.elapsed()));
                                run.subscribed_seq = v["seq"].as_u64();
                                subscribed = true;
                                if !check.complete() {
                                    let until = (Instant::now() + GRACE).min(deadline);
                                    sleep.as_mut().reset(until.into());
                                }
                            }
                            Some("error") => {
                                bump(&mut run.error_frames, v["code"].as_str().unwrap_or("?"));
                                break;
                            }
                            Some(other) => bump(&mut run.other_frames, other),
                            None => bump(&mut run.other_frames, "invalid-json"),
                        }
                    }
                }
            }
            Some(Ok(Message::Binary(b))) => {
                run.frames += 1;
                run.bytes += b.len() as u64;
                bump(&mut run.other_frames, "binary");
            }
            Some(Ok(Message::Close(frame))) => {
                run.closed =
                    Some(frame.map_or("close".into(), |f| format!("close {}", u16::from(f.code))));
                break;
            }
            Some(Ok(_)) => {} // ping, pong: tungstenite answers pings itself
            Some(Err(e)) => {
                run.closed = Some(format!("error: {e}"));
                break;
            }
            None => {
                run.closed = Some("eof".into());
                break;
            }
        }
        if subscribed && check.complete() {
            break;
        }
    }
    run.generator_cpu_secs = procfs::cpu_seconds(Proc::Current).unwrap_or(0.0) - gen_cpu0;
    run.server_cpu_secs = srv_cpu0
        .zip(
            args.server_pid
                .and_then(|p| procfs::cpu_seconds(Proc::Pid(p)).ok()),
        )
        .map(|(a, b)| b - a);
    run.server_cpu_us_per_activity = run
        .server_cpu_secs
        .filter(|_| k > 0)
        .map(|s| s * 1e6 / k as f64);
    run.lost = check.lost();
    run.duplicates = check.duplicates;
    run.out_of_order = check.out_of_order;
    run.unexpected = check.unexpected;
    if run.closed.is_none() {
        close(ws, Duration::from_secs(5)).await;
    }
    Ok(run)
}

// ---------------------------------------------------------------- creating the missed tasks

struct CreateJob {
    target: Arc<Target>,
    uri: Uri,
    bearer: HeaderValue,
    k: u64,
    next: AtomicU64,
    failed: AtomicBool,
    timeout: Duration,
}

#[derive(Default)]
struct CreateOut {
    latency: LatencyHistogram,
    ok: u64,
    failure: Option<String>,
}

async fn create_worker(job: Arc<CreateJob>, mut client: Client) -> CreateOut {
    let mut out = CreateOut::default();
    while !job.failed.load(Ordering::Relaxed) {
        let i = job.next.fetch_add(1, Ordering::Relaxed);
        if i >= job.k {
            break;
        }
        let body = Bytes::from(format!("{{\"title\":\"r{i}\"}}"));
        let req = post_json(&job.target, job.uri.clone(), Some(&job.bearer), body);
        let sent = Instant::now();
        let outcome = client.exchange(req, job.timeout, true).await;
        out.latency.record(sent.elapsed());
        let why = match outcome {
            Ok((s, _)) if s.is_success() => {
                out.ok += 1;
                continue;
            }
            Ok((s, body)) => format!("HTTP {s}: {}", String::from_utf8_lossy(&body)),
            Err(e) => format!("{e} error"),
        };
        out.failure = Some(format!("creating task r{i}: {why}"));
        job.failed.store(true, Ordering::Relaxed);
        break;
    }
    out
}

// ---------------------------------------------------------------- the scenario

pub async fn run(args: &ResumeArgs, threads: usize) -> Result<ResumeReport> {
    ensure!(args.missed >= 1, "--missed must be at least 1");
    ensure!(args.runs >= 1, "--runs must be at least 1");
    ensure!(args.writers >= 1, "--writers must be at least 1");
    ensure!(
        args.timeout > 0.0 && args.timeout.is_finite(),
        "--timeout must be positive"
    );
    ensure!(
        args.request_timeout > 0.0 && args.request_timeout.is_finite(),
        "--request-timeout must be positive"
    );
    ensure!(
        args.settle >= 0.0 && args.settle.is_finite(),
        "--settle must not be negative"
    );
    let k = args.missed;
    let request_timeout = Duration::from_secs_f64(args.request_timeout);
    let target = Arc::new(parse_url(&args.url)?);
    let server: SocketAddr = tokio::net::lookup_host(target.addr.as_str())
        .await
        .with_context(|| format!("resolving {}", target.addr))?
        .next()
        .ok_or_else(|| anyhow!("{} resolves to no address", target.addr))?;

    // Setup: an owner and one member in a team; the member's socket that goes away.
    let setup_start = Instant::now();
    eprintln!("resume: registering 2 users and making the team");
    let team = setup_team(&target, 1, request_timeout)
        .await
        .context("setup failed")?;
    let token = team
        .tokens
        .first()
        .ok_or_else(|| anyhow!("setup made no member"))?;
    let ws_url = format!(
        "ws://{}{}/realtime?token={token}",
        target.addr, target.prefix
    );
    let since = tokio::time::timeout(request_timeout, async {
        let mut ws = connect(server, &ws_url).await?;
        let seq = subscribe_plain(&mut ws, &team.team_id).await?;
        close(ws, Duration::from_secs(5)).await;
        Ok::<_, anyhow::Error>(seq)
    })
    .await
    .map_err(|_| anyhow!("the first socket timed out"))?
    .context("the first socket")?;
    let setup_secs = setup_start.elapsed().as_secs_f64();

    // The missed activities.
    eprintln!(
        "resume: the socket left at seq {since}; creating {k} tasks with {} connection(s)",
        args.writers
    );
    let mut clients = Vec::with_capacity(args.writers);
    for _ in 0..args.writers {
        let mut c = Client::new(target.addr.as_str().into());
        c.ready()
            .await
            .map_err(|e| anyhow!("opening a connection to {}: {e} error", target.addr))?;
        clients.push(c);
    }
    let job = Arc::new(CreateJob {
        uri: format!("{}/api/v1/teams/{}/tasks", target.prefix, team.team_id).parse()?,
        target: target.clone(),
        bearer: team.owner_bearer.clone(),
        k,
        next: AtomicU64::new(0),
        failed: AtomicBool::new(false),
        timeout: request_timeout,
    });
    let gen_cpu0 = procfs::cpu_seconds(Proc::Current).unwrap_or(0.0);
    let srv_cpu0 = args
        .server_pid
        .and_then(|p| procfs::cpu_seconds(Proc::Pid(p)).ok());
    let create_start = Instant::now();
    let workers: Vec<_> = clients
        .into_iter()
        .map(|c| tokio::spawn(create_worker(job.clone(), c)))
        .collect();
    let mut latency = LatencyHistogram::new();
    let mut created = 0;
    let mut failure = None;
    for w in workers {
        let o = w.await.context("writer panicked")?;
        latency.merge(&o.latency);
        created += o.ok;
        failure = failure.or(o.failure);
    }
    let create_secs = create_start.elapsed().as_secs_f64();
    let create_generator_cpu_secs = procfs::cpu_seconds(Proc::Current).unwrap_or(0.0) - gen_cpu0;
    let create_server_cpu_secs = srv_cpu0
        .zip(
            args.server_pid
                .and_then(|p| procfs::cpu_seconds(Proc::Pid(p)).ok()),
        )
        .map(|(a, b)| b - a);
    if let Some(why) = failure {
        bail!("{why} ({created} of {k} tasks created)");
    }
    ensure!(created == k, "{created} of {k} tasks created");
    eprintln!(
        "resume: {k} tasks created in {create_secs:.2} s ({:.0}/s)",
        k as f64 / create_secs
    );
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;

    // The resumes.
    let subscribe = format!(
        r#"{{"type":"subscribe","teamId":"{}","since":{since}}}"#,
        team.team_id
    );
    let mut per_run = Vec::with_capacity(args.runs);
    for r in 1..=args.runs {
        let run = one_run(server, &ws_url, &subscribe, since, k, args)
            .await
            .with_context(|| format!("run {r}"))?;
        eprintln!(
            "resume: run {r}/{}: first activity {} ms, subscribed {} ms, last activity {} ms{}",
            args.runs,
            fmt_ms(run.first_activity_ms),
            fmt_ms(run.subscribed_ms),
            fmt_ms(run.last_activity_ms),
            if run.problems(since + k) {
                " (PROBLEMS)"
            } else {
                ""
            }
        );
        per_run.push(run);
        // Let the server finish the close (the team is no longer followed) before the next one.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    Ok(summarize(
        args,
        threads,
        since,
        setup_secs,
        Created {
            secs: create_secs,
            latency: latency.summary(),
            generator_cpu_secs: create_generator_cpu_secs,
            server_cpu_secs: create_server_cpu_secs,
        },
        per_run,
    ))
}

struct Created {
    secs: f64,
    latency: LatencySummary,
    generator_cpu_secs: f64,
    server_cpu_secs: Option<f64>,
}

fn opt_median(xs: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = xs.into_iter().flatten().collect();
    median(&v)
}

/// The report's figures over the runs.
fn summarize(
    args: &ResumeArgs,
    threads: usize,
    since: u64,
    setup_secs: f64,
    created: Created,
    per_run: Vec<ResumeRun>,
) -> ResumeReport {
    let k = args.missed;
    let last_seq = since + k;
    let replay_ms_median = opt_median(per_run.iter().map(|r| r.last_activity_ms));
    ResumeReport {
        scenario: "ws_resume".into(),
        label: args.label.clone(),
        url: args.url.clone(),
        threads,
        missed: k,
        runs: args.runs,
        since_seq: since,
        last_seq,
        setup_secs,
        writers: args.writers,
        create_secs: created.secs,
        create_per_sec: if created.secs > 0.0 {
            k as f64 / created.secs
        } else {
            0.0
        },
        create_latency: created.latency,
        create_generator_cpu_secs: created.generator_cpu_secs,
        create_server_cpu_secs: created.server_cpu_secs,
        failed_runs: per_run.iter().filter(|r| r.problems(last_seq)).count(),
        replay_ms_median,
        replay_ms_max: per_run
            .iter()
            .filter_map(|r| r.last_activity_ms)
            .max_by(f64::total_cmp),
        first_activity_ms_median: opt_median(per_run.iter().map(|r| r.first_activity_ms)),
        subscribed_ms_median: opt_median(per_run.iter().map(|r| r.subscribed_ms)),
        replay_activities_per_sec: replay_ms_median
            .filter(|&m| m > 0.0)
            .map(|m| k as f64 * 1000.0 / m),
        mb_per_run: opt_median(per_run.iter().map(|r| Some(r.bytes as f64 / 1e6))).unwrap_or(0.0),
        server_cpu_ms_per_run: opt_median(
            per_run
                .iter()
                .map(|r| r.server_cpu_secs.map(|s| s * 1000.0)),
        ),
        server_cpu_us_per_activity: opt_median(
            per_run.iter().map(|r| r.server_cpu_us_per_activity),
        ),
        generator_cpu_ms_per_run: opt_median(
            per_run.iter().map(|r| Some(r.generator_cpu_secs * 1000.0)),
        )
        .unwrap_or(0.0),
        per_run,
    }
}

fn fmt_ms(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{x:.1}"))
}

fn counts(m: &BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints the report (`--json`: one JSON line) and appends the JSON line to `--json-out`.
pub fn output(args: &ResumeArgs, r: &ResumeReport) -> Result<()> {
    let line = serde_json::to_string(r).context("serializing the report")?;
    if args.json {
        println!("{line}");
    } else {
        print_human(r);
    }
    if let Some(path) = &args.json_out {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(f, "{line}").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

pub fn print_human(r: &ResumeReport) {
    let opt = |x: Option<f64>, digits: usize| x.map_or("-".into(), |x| format!("{x:.digits$}"));
    println!("WebSocket resume  {}", r.label.as_deref().unwrap_or(""));
    println!("  server            {}", r.url);
    println!(
        "  missed            {} activities (seqs {} ..= {}, resumed with since={}); setup {:.2} s",
        r.missed,
        r.since_seq + 1,
        r.last_seq,
        r.since_seq,
        r.setup_secs
    );
    println!(
        "  created in        {:.2} s by {} connection(s): {:.0} tasks/s; latency ms {}",
        r.create_secs,
        r.writers,
        r.create_per_sec,
        r.create_latency.one_line()
    );
    println!(
        "                    generator CPU {:.2} s, server CPU {} s",
        r.create_generator_cpu_secs,
        opt(r.create_server_cpu_secs, 2)
    );
    println!(
        "  run  connect ms  (a) first ms  (b) subscribed ms  (c) last ms      MB  srv CPU ms  srv µs/act  gen CPU ms  check"
    );
    for (i, x) in r.per_run.iter().enumerate() {
        let mut check = if x.problems(r.last_seq) {
            format!(
                "lost {} dup {} order {} unexpected {} late {} subscribed.seq {}",
                x.lost,
                x.duplicates,
                x.out_of_order,
                x.unexpected,
                x.after_subscribed,
                x.subscribed_seq.map_or("-".into(), |s| s.to_string())
            )
        } else {
            "ok".to_string()
        };
        if !x.error_frames.is_empty() {
            check.push_str(&format!("; errors {}", counts(&x.error_frames)));
        }
        if let Some(c) = &x.closed {
            check.push_str(&format!("; closed: {c}"));
        }
        if x.timed_out {
            check.push_str("; timed out");
        }
        if !x.other_frames.is_empty() {
            check.push_str(&format!("; other frames {}", counts(&x.other_frames)));
        }
        println!(
            "  {:>3}  {:>10.1}  {:>12}  {:>17}  {:>11}  {:>6.2}  {:>10}  {:>10}  {:>10.0}  {check}",
            i + 1,
            x.connect_ms,
            fmt_ms(x.first_activity_ms),
            fmt_ms(x.subscribed_ms),
            fmt_ms(x.last_activity_ms),
            x.bytes as f64 / 1e6,
            opt(x.server_cpu_secs.map(|s| s * 1000.0), 0),
            opt(x.server_cpu_us_per_activity, 2),
            x.generator_cpu_secs * 1000.0,
        );
    }
    println!(
        "  replay time       median {} ms, max {} ms (subscribe sent to the last missed activity)",
        opt(r.replay_ms_median, 1),
        opt(r.replay_ms_max, 1)
    );
    println!(
        "  first / subscribed median {} ms / {} ms",
        opt(r.first_activity_ms_median, 1),
        opt(r.subscribed_ms_median, 1)
    );
    println!(
        "  replay rate       {} activities/s (missed / median replay time)",
        opt(r.replay_activities_per_sec, 0)
    );
    println!(
        "  received          {:.2} MB per run (frame payloads)",
        r.mb_per_run
    );
    println!(
        "  server CPU        {} ms per run, {} µs per replayed activity (medians)",
        opt(r.server_cpu_ms_per_run, 0),
        opt(r.server_cpu_us_per_activity, 2)
    );
    println!(
        "  generator CPU     {:.0} ms per run (median)",
        r.generator_cpu_ms_per_run
    );
    println!(
        "  check             {} of {} run(s) failed",
        r.failed_runs, r.runs
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_only_the_seq_of_activity_frames() {
        let s = Scanner::new();
        let real = br#"{"type":"activity","activity":{"id":"01a2","v":1,"type":"task.created","data":{"task":{"id":"01a3","title":"r3","description":"","version":1}},"teamId":"t","ts":"2026-11-26T03:00:07.772Z","seq":10002,"boardId":"b","taskId":"01a3"}}"#;
        assert_eq!(scan(&s, real), Frame::Activity(Some(10002)));
        // A "seq": inside the data (a title) does not win over the activity's own, which is last.
        let tricky =
            br#"{"type":"activity","activity":{"data":{"task":{"title":"\"seq\":9"}},"seq":7}}"#;
        assert_eq!(scan(&s, tricky), Frame::Activity(Some(7)));
        assert_eq!(
            scan(&s, br#"{"type":"activity","activity":{"seq":"x"}}"#),
            Frame::Activity(None)
        );
        assert_eq!(
            scan(
                &s,
                br#"{"type":"activity","activity":{"seq":99999999999999999999999}}"#
            ),
            Frame::Activity(None)
        );
        assert_eq!(
            scan(&s, br#"{"type":"subscribed","teamId":"t","seq":3}"#),
            Frame::Other
        );
    }

    #[test]
    fn a_clean_replay_passes() {
        let mut c = SeqCheck::new(2, 100);
        for seq in 3..=102 {
            let first = c.record(Some(seq));
            assert!(first);
        }
        assert!(c.complete());
        assert_eq!(
            (c.lost(), c.duplicates, c.out_of_order, c.unexpected),
            (0, 0, 0, 0)
        );
        assert_eq!(c.last_seq(), 102);
    }

    #[test]
    fn losses_duplicates_disorder_and_strays_are_counted() {
        let mut c = SeqCheck::new(10, 5); // expects 11 ..= 15
        assert!(c.record(Some(11)));
        assert!(c.record(Some(13)));
        assert!(c.record(Some(12))); // late: out of order
        assert!(!c.record(Some(13))); // duplicate
        assert!(!c.record(Some(10))); // at since: unexpected
        assert!(!c.record(Some(16))); // past the last: unexpected
        assert!(!c.record(None));
        assert!(!c.complete());
        assert_eq!(c.lost(), 2);
        assert_eq!(c.duplicates, 1);
        assert_eq!(c.out_of_order, 1);
        assert_eq!(c.unexpected, 3);
        assert!(c.expected(15) && !c.expected(10) && !c.expected(16));
    }

    #[test]
    fn a_run_fails_on_any_problem() {
        let ok = ResumeRun {
            subscribed_seq: Some(12),
            ..ResumeRun::default()
        };
        assert!(!ok.problems(12));
        assert!(ok.problems(13)); // subscribed.seq below the last missed seq
        assert!(ResumeRun::default().problems(12)); // no `subscribed` at all
        let late = ResumeRun {
            after_subscribed: 1,
            ..ok.clone()
        };
        assert!(late.problems(12));
        let cut = ResumeRun {
            closed: Some("close 4008".into()),
            ..ok
        };
        assert!(cut.problems(12));
    }

    #[test]
    fn summary_figures() {
        let args = ResumeArgs {
            url: "http://127.0.0.1:1".into(),
            missed: 1000,
            runs: 3,
            writers: 8,
            timeout: 60.0,
            request_timeout: 10.0,
            settle: 1.0,
            server_pid: Some(1),
            label: None,
            json: true,
            json_out: None,
        };
        let run = |last: f64, cpu: f64| ResumeRun {
            last_activity_ms: Some(last),
            subscribed_seq: Some(1002),
            bytes: 600_000,
            server_cpu_secs: Some(cpu),
            server_cpu_us_per_activity: Some(cpu * 1e6 / 1000.0),
            ..ResumeRun::default()
        };
        let created = Created {
            secs: 2.0,
            latency: LatencySummary::default(),
            generator_cpu_secs: 0.5,
            server_cpu_secs: None,
        };
        let r = summarize(
            &args,
            1,
            2,
            0.1,
            created,
            vec![run(40.0, 0.03), run(50.0, 0.05), run(90.0, 0.04)],
        );
        assert_eq!(r.last_seq, 1002);
        assert_eq!(r.failed_runs, 0);
        assert!(!r.delivery_problems());
        assert_eq!(r.replay_ms_median, Some(50.0));
        assert_eq!(r.replay_ms_max, Some(90.0));
        assert_eq!(r.replay_activities_per_sec, Some(20_000.0));
        assert_eq!(r.create_per_sec, 500.0);
        assert!((r.mb_per_run - 0.6).abs() < 1e-9);
        assert!((r.server_cpu_ms_per_run.unwrap() - 40.0).abs() < 1e-9);
        assert!((r.server_cpu_us_per_activity.unwrap() - 40.0).abs() < 1e-9);
    }
}
