//! Scenario `writes`: throughput and latency of `POST /api/v1/teams/{teamId}/tasks`, with
//! `--write comment` of `POST /api/v1/tasks/{taskId}/comments`, or with `--write update` of
//! `PATCH /api/v1/tasks/{taskId}`.
//!
//! Setup (over HTTP, not measured): register one fresh user, who creates `--teams` teams.
//! Then `--concurrency` workers, each a tokio task with its own keep-alive HTTP/1.1 connection,
//! create tasks, spreading them over the teams round-robin (request `n` goes to team `n % teams`).
//!
//! With `--write comment` the setup is one team of an owner and `--members` members; the owner
//! creates one task, `--followers` of the members follow it (`PUT /tasks/{id}/follow`), and every
//! request is the owner commenting on that task, so each comment owes one notification per
//! follower. After the run each follower's inbox seq is read back: it must equal the comments
//! created (one notification each, no mark-read), which shows the measured path notified them.
//!
//! With `--write update` the setup creates `UPDATED_TASKS` tasks spread over the teams, and request
//! `n` changes the priority of task `n % UPDATED_TASKS` (to another value on each visit): an edit
//! that keeps the task's words, as a script closing tasks or a drag across columns makes.
//!
//! Two modes:
//! - closed loop (no `--rate`): every worker sends its next request as soon as the previous one is
//!   answered; latency is measured from the send. This finds the maximum throughput.
//! - open loop (`--rate R`): a pacer thread issues tickets on a fixed timetable (ticket `i` is due at
//!   `start + i / R`); a free worker takes the next ticket and sends it at once. Latency is measured
//!   from the ticket's *scheduled* time, so time spent waiting for a free connection when the server
//!   falls behind counts (no coordinated omission). `serviceTime` is measured from the actual send.
//!
//! With `--watch URL` (tasks only, repeatable) one WebSocket per team and URL subscribes to the
//! team before the load and reads until 5 s after it (`team_watch`): the servers' hubs then follow
//! the written teams as they would with users on them, and the report's `watch` says what arrived.
//!
//! Only requests whose send (closed loop) or scheduled time (open loop) falls inside the measured
//! window, after `--warmup`, are counted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};

use crate::procfs::{self, Proc};
use crate::stats::{LatencyHistogram, LatencySummary};
use crate::team_watch::{TeamWatchers, WatchReport};

/// With --watch: how long the sockets keep reading after the last answer (the relays' tail).
const WATCH_TAIL: Duration = Duration::from_secs(5);

/// What each request of `writes` creates.
#[derive(clap::ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WriteKind {
    /// A task in one of the teams
    #[default]
    Task,
    /// A comment on one task, by the owner of its team
    Comment,
    /// A new priority for one of the tasks made in the setup (its words unchanged)
    Update,
}

/// `--write update`: the tasks the requests edit, round-robin.
const UPDATED_TASKS: usize = 256;
/// The priorities an update cycles through: each visit of a task changes it.
const PRIORITIES: [&str; 4] = ["low", "medium", "high", "urgent"];

#[derive(clap::Args, Debug, Clone)]
pub struct WritesArgs {
    /// Base URL of the server, plain HTTP (e.g. http://127.0.0.1:8080)
    #[arg(long)]
    pub url: String,
    /// What each request creates
    #[arg(long, value_enum, default_value_t = WriteKind::Task)]
    pub write: WriteKind,
    /// Number of teams to create; requests go to them round-robin (comments: 1)
    #[arg(long, default_value_t = 1)]
    pub teams: usize,
    /// Comments: members of the team besides its owner, the commenter
    #[arg(long, default_value_t = 0)]
    pub members: usize,
    /// Comments: how many of the members follow the task (at most --members)
    #[arg(long, default_value_t = 0)]
    pub followers: usize,
    /// Concurrent workers, each with its own keep-alive HTTP/1.1 connection
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Length of the measured window, in seconds
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Total request rate (req/s), paced on a fixed timetable (open loop); without it, as fast as possible
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of load before the measured window (not counted)
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// PID of the server process, to report its CPU time during the window and its memory
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Per-request timeout, in seconds (a timed-out request counts as an error)
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Free-form label copied into the report (used by `summarize` to group runs)
    #[arg(long)]
    pub label: Option<String>,
    /// Round number copied into the report: `ratios` pairs the runs of one round
    #[arg(long)]
    pub round: Option<u32>,
    /// Print one JSON object line instead of the human-readable table
    #[arg(long)]
    pub json: bool,
    /// Tasks: before the load, open one WebSocket per team on this server (base URL; repeat for
    /// several servers) subscribed to the team, and report what they receive (`watch`)
    #[arg(long = "watch")]
    pub watch: Vec<String>,
}

/// The result of one `writes` run (the `--json` line).
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct WritesReport {
    pub scenario: String,
    pub label: Option<String>,
    #[serde(default)]
    pub round: Option<u32>,
    pub url: String,
    #[serde(default)]
    pub write: WriteKind,
    pub teams: usize,
    /// Comments: members besides the owner, and how many of them follow the task
    #[serde(default)]
    pub members: usize,
    #[serde(default)]
    pub followers: usize,
    pub concurrency: usize,
    /// `--rate`, or null for closed loop (max rate)
    pub target_rate: Option<f64>,
    pub threads: usize,
    pub warmup_secs: f64,
    pub duration_secs: f64,
    /// Requests sent (closed loop) or scheduled (open loop) in the measured window that got a
    /// response or failed: the population of `latency`
    pub requests: u64,
    /// 2xx responses among them (tasks created)
    pub ok: u64,
    /// Other responses, by HTTP status
    pub non_2xx: BTreeMap<String, u64>,
    /// Requests without a response: `connect`, `send` (connection error), `timeout`
    pub errors: BTreeMap<String, u64>,
    /// Open loop only: tickets of the window never sent because the run's drain deadline passed
    pub unsent: u64,
    /// 2xx responses completed inside the window, per second (task creations per second)
    pub throughput: f64,
    /// Responses and failures (any outcome) completed inside the window, per second
    pub request_rate: f64,
    /// Latency of every request in the window; from the scheduled time in open loop
    pub latency: LatencySummary,
    /// From the actual send to the end of the response (equals `latency` in closed loop)
    pub service_time: LatencySummary,
    /// Connection attempts after the first one of each worker (after an error or a close by the server)
    pub reconnects: u64,
    /// CPU seconds (user + system) of this load generator during the window
    pub generator_cpu_secs: f64,
    /// CPU seconds of the server process during the window (with --server-pid)
    pub server_cpu_secs: Option<f64>,
    /// Server CPU microseconds per 2xx response completed in the window
    #[serde(default)]
    pub server_cpu_us_per_write: Option<f64>,
    /// 2xx responses of the whole run, warmup and drain included
    #[serde(default)]
    pub created: u64,
    /// Comments with followers: the followers' inbox seqs read back after the run
    #[serde(default)]
    pub inbox: Option<InboxCheck>,
    /// Server resident memory at the end of the window, KiB
    pub server_rss_kib: Option<u64>,
    /// Server peak resident memory (VmHWM), KiB
    pub server_peak_rss_kib: Option<u64>,
    /// Time spent registering the user and creating the teams, seconds
    pub setup_secs: f64,
    /// With --watch: what the teams' sockets received
    #[serde(default)]
    pub watch: Option<WatchReport>,
}

/// The followers' inbox seqs after a comment run: with one notification per comment and no
/// mark-read, each equals `expected` (the comments created). A request that timed out may still
/// have committed, so a seq above it can be right; one below it is a notification missing.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InboxCheck {
    pub followers: usize,
    pub expected: u64,
    pub min_seq: i64,
    pub max_seq: i64,
    /// Every follower's seq equals `expected`
    pub ok: bool,
}

impl InboxCheck {
    fn of(expected: u64, seqs: &[i64]) -> Option<Self> {
        let min_seq = *seqs.iter().min()?;
        let max_seq = *seqs.iter().max()?;
        Some(Self {
            followers: seqs.len(),
            expected,
            min_seq,
            max_seq,
            ok: seqs
                .iter()
                .all(|s| u64::try_from(*s).ok() == Some(expected)),
        })
    }
    /// Some follower has fewer notifications than comments were answered 2xx.
    pub fn missing(&self) -> bool {
        u64::try_from(self.min_seq).map_or(true, |s| s < self.expected)
    }
}

pub(crate) struct Target {
    /// `host:port` to connect to
    pub(crate) addr: String,
    pub(crate) host_header: HeaderValue,
    /// Path prefix of the base URL, without a trailing slash (usually empty)
    pub(crate) prefix: String,
}

pub(crate) fn parse_url(url: &str) -> Result<Target> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("invalid --url {url:?}"))?;
    ensure!(
        uri.scheme_str() == Some("http"),
        "--url must be plain http:// (got {url:?})"
    );
    let auth = uri
        .authority()
        .ok_or_else(|| anyhow!("--url needs a host: {url:?}"))?;
    let port = auth.port_u16().unwrap_or(80);
    let host = auth.host();
    let addr = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok(Target {
        addr,
        host_header: HeaderValue::from_str(auth.as_str())?,
        prefix: uri.path().trim_end_matches('/').to_string(),
    })
}

type Sender = SendRequest<Full<Bytes>>;

/// Status and (optionally kept) body of a response, or the kind of failure.
pub(crate) type Outcome = Result<(StatusCode, Bytes), &'static str>;

/// One keep-alive HTTP/1.1 connection, re-opened when it breaks.
pub(crate) struct Client {
    addr: Arc<str>,
    sender: Option<Sender>,
    connects: u64,
    pub(crate) reconnects: u64,
}

impl Client {
    pub(crate) fn new(addr: Arc<str>) -> Self {
        Self {
            addr,
            sender: None,
            connects: 0,
            reconnects: 0,
        }
    }

    async fn connect(addr: &str) -> std::io::Result<Sender> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// A sender ready for the next request, connecting (again) when needed.
    pub(crate) async fn ready(&mut self) -> Result<&mut Sender, &'static str> {
        let alive = match self.sender.as_mut() {
            Some(s) => s.ready().await.is_ok(),
            None => false,
        };
        if !alive {
            self.sender = None;
            if self.connects > 0 {
                self.reconnects += 1;
            }
            self.connects += 1;
            let mut s = Self::connect(&self.addr).await.map_err(|_| "connect")?;
            s.ready().await.map_err(|_| "connect")?;
            self.sender = Some(s);
        }
        Ok(self.sender.as_mut().expect("connected above"))
    }

    /// Sends one request and reads the whole response. The body is returned only with `keep_body`.
    pub(crate) async fn exchange(
        &mut self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
        keep_body: bool,
    ) -> Outcome {
        let result = tokio::time::timeout(timeout, async {
            let sender = self.ready().await?;
            let resp = sender.send_request(req).await.map_err(|_| "send")?;
            let status = resp.status();
            let mut body = resp.into_body();
            let mut kept = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|_| "send")?;
                if keep_body && let Some(data) = frame.data_ref() {
                    kept.extend_from_slice(data);
                }
            }
            Ok((status, Bytes::from(kept)))
        })
        .await
        .unwrap_or(Err("timeout"));
        if result.is_err() {
            // The connection's state is unknown: drop it and start over on the next request.
            self.sender = None;
        }
        result
    }
}

pub(crate) fn post_json(
    target: &Target,
    uri: Uri,
    token: Option<&HeaderValue>,
    body: Bytes,
) -> Request<Full<Bytes>> {
    json_request(Method::POST, target, uri, token, body)
}

fn json_request(
    method: Method,
    target: &Target,
    uri: Uri,
    token: Option<&HeaderValue>,
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header(HOST, target.host_header.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(t) = token {
        b = b.header(AUTHORIZATION, t.clone());
    }
    b.body(Full::new(body)).expect("request parts are valid")
}

/// POSTs `body` as JSON to `path` (below the URL's path prefix) and returns the JSON answer;
/// anything but a 2xx JSON answer is an error.
pub(crate) async fn post_api(
    client: &mut Client,
    target: &Target,
    path: &str,
    token: Option<&HeaderValue>,
    body: Value,
    timeout: Duration,
) -> Result<Value> {
    let uri: Uri = format!("{}{path}", target.prefix).parse()?;
    let req = post_json(target, uri, token, Bytes::from(body.to_string()));
    let (status, body) = client.exchange(req, timeout, true).await.map_err(|e| {
        anyhow!(
            "POST {path}: {e} error (is the server at {} up?)",
            target.addr
        )
    })?;
    let text = String::from_utf8_lossy(&body);
    ensure!(status.is_success(), "POST {path}: HTTP {status}: {text}");
    serde_json::from_slice(&body)
        .with_context(|| format!("POST {path}: response is not JSON: {text}"))
}

/// Sends `method` to `path` (below the URL's path prefix) with an optional JSON body; anything
/// but a 2xx answer is an error. Returns the answer's body.
pub(crate) async fn call_api(
    client: &mut Client,
    target: &Target,
    method: Method,
    path: &str,
    token: &HeaderValue,
    body: Option<Value>,
    timeout: Duration,
) -> Result<Bytes> {
    let uri: Uri = format!("{}{path}", target.prefix).parse()?;
    let mut b = Request::builder()
        .method(method.clone())
        .uri(uri)
        .header(HOST, target.host_header.clone())
        .header(AUTHORIZATION, token.clone());
    if body.is_some() {
        b = b.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    let req = b.body(Full::new(Bytes::from(
        body.map(|v| v.to_string()).unwrap_or_default(),
    )))?;
    let (status, body) = client.exchange(req, timeout, true).await.map_err(|e| {
        anyhow!(
            "{method} {path}: {e} error (is the server at {} up?)",
            target.addr
        )
    })?;
    ensure!(
        status.is_success(),
        "{method} {path}: HTTP {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(body)
}

/// What the comment workers need: the owner's bearer, the comments URI of the task, and the
/// followers' bearers (to read their inboxes afterwards).
struct CommentSetup {
    bearer: HeaderValue,
    comments_uri: Uri,
    followers: Vec<HeaderValue>,
}

/// A team of an owner and `members` members, one task of the owner's, followed by `followers`
/// of the members.
async fn setup_comments(
    target: &Target,
    members: usize,
    followers: usize,
    timeout: Duration,
) -> Result<CommentSetup> {
    let team = crate::fanout::setup_team(target, members, timeout).await?;
    let mut client = Client::new(target.addr.as_str().into());
    let task = post_api(
        &mut client,
        target,
        &format!("/api/v1/teams/{}/tasks", team.team_id),
        Some(&team.owner_bearer),
        json!({"title": "bench comments"}),
        timeout,
    )
    .await?;
    let task_id = task["id"]
        .as_str()
        .ok_or_else(|| anyhow!("task response has no id: {task}"))?;
    let mut bearers = Vec::with_capacity(followers);
    for token in team.tokens.iter().take(followers) {
        let bearer = HeaderValue::from_str(&format!("Bearer {token}"))?;
        call_api(
            &mut client,
            target,
            Method::PUT,
            &format!("/api/v1/tasks/{task_id}/follow"),
            &bearer,
            None,
            timeout,
        )
        .await?;
        bearers.push(bearer);
    }
    Ok(CommentSetup {
        bearer: team.owner_bearer,
        comments_uri: format!("{}/api/v1/tasks/{task_id}/comments", target.prefix).parse()?,
        followers: bearers,
    })
}

/// Each follower's inbox seq (`GET /me/notifications`).
async fn inbox_seqs(
    target: &Target,
    followers: &[HeaderValue],
    timeout: Duration,
) -> Result<Vec<i64>> {
    let mut client = Client::new(target.addr.as_str().into());
    let mut seqs = Vec::with_capacity(followers.len());
    for bearer in followers {
        let body = call_api(
            &mut client,
            target,
            Method::GET,
            "/api/v1/me/notifications?limit=1",
            bearer,
            None,
            timeout,
        )
        .await?;
        let page: Value = serde_json::from_slice(&body).context("inbox page is not JSON")?;
        seqs.push(
            page["seq"]
                .as_i64()
                .ok_or_else(|| anyhow!("inbox page has no seq: {page}"))?,
        );
    }
    Ok(seqs)
}

/// Registers a fresh user and creates `teams` teams; returns the bearer header and the team ids.
async fn setup(
    target: &Target,
    teams: usize,
    timeout: Duration,
) -> Result<(HeaderValue, Vec<String>)> {
    let mut client = Client::new(target.addr.as_str().into());
    let unique = format!(
        "{}-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
        std::process::id()
    );
    let mut call = async |path: &str, token: Option<&HeaderValue>, body: Value| -> Result<Value> {
        post_api(&mut client, target, path, token, body, timeout).await
    };

    let auth = call(
        "/api/v1/auth/register",
        None,
        json!({"email": format!("bench-{unique}@example.com"), "password": "bench-password-1", "displayName": "Bench"}),
    )
    .await?;
    let token = auth["accessToken"]
        .as_str()
        .ok_or_else(|| anyhow!("register response has no accessToken: {auth}"))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}"))?;

    let mut ids = Vec::with_capacity(teams);
    for k in 0..teams {
        let team = call(
            "/api/v1/teams",
            Some(&bearer),
            json!({"name": format!("bench {unique} #{k}")}),
        )
        .await?;
        let id = team["id"]
            .as_str()
            .ok_or_else(|| anyhow!("team response has no id: {team}"))?;
        ids.push(id.to_string());
    }
    Ok((bearer, ids))
}

/// `--write update`: `UPDATED_TASKS` tasks over the teams, round-robin; their URIs.
async fn setup_updated_tasks(
    target: &Target,
    bearer: &HeaderValue,
    team_ids: &[String],
    timeout: Duration,
) -> Result<Vec<Uri>> {
    let mut client = Client::new(target.addr.as_str().into());
    let mut uris = Vec::with_capacity(UPDATED_TASKS);
    for k in 0..UPDATED_TASKS {
        let team = &team_ids[k % team_ids.len()];
        let task = post_api(
            &mut client,
            target,
            &format!("/api/v1/teams/{team}/tasks"),
            Some(bearer),
            json!({"title": format!("bench update {k}"), "description": "words that stay"}),
            timeout,
        )
        .await?;
        let id = task["id"]
            .as_str()
            .ok_or_else(|| anyhow!("task response has no id: {task}"))?;
        uris.push(format!("{}/api/v1/tasks/{id}", target.prefix).parse()?);
    }
    Ok(uris)
}

struct Shared {
    target: Target,
    bearer: HeaderValue,
    write: WriteKind,
    /// Where request `n` goes: `uris[n % len]`
    uris: Vec<Uri>,
    next: AtomicU64,
    measure_start: Instant,
    end: Instant,
    /// Open loop: tickets taken after this are not sent any more (counted as `unsent`)
    drain_deadline: Instant,
    timeout: Duration,
}

impl Shared {
    fn request(&self, n: u64) -> Request<Full<Bytes>> {
        let len = self.uris.len() as u64;
        let uri = self.uris[(n % len) as usize].clone();
        let (method, body) = match self.write {
            WriteKind::Task => (Method::POST, format!("{{\"title\":\"bench {n}\"}}")),
            WriteKind::Comment => (Method::POST, format!("{{\"body\":\"bench comment {n}\"}}")),
            WriteKind::Update => {
                let priority = PRIORITIES[((n / len) % PRIORITIES.len() as u64) as usize];
                (Method::PATCH, format!("{{\"priority\":\"{priority}\"}}"))
            }
        };
        json_request(
            method,
            &self.target,
            uri,
            Some(&self.bearer),
            Bytes::from(body),
        )
    }
}

#[derive(Default)]
struct WorkerStats {
    latency: LatencyHistogram,
    service: LatencyHistogram,
    ok: u64,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<&'static str, u64>,
    unsent: u64,
    reconnects: u64,
    /// 2xx responses whenever they were sent (warmup and drain included)
    ok_total: u64,
    /// Requests of any outcome, and 2xx responses, that completed inside the window
    done_in_window: u64,
    ok_in_window: u64,
}

impl WorkerStats {
    /// Counts a request that completed at `done` toward the window's throughput.
    fn completed(&mut self, shared: &Shared, done: Instant, outcome: &Outcome) {
        self.ok_total += u64::from(matches!(outcome, Ok((s, _)) if s.is_success()));
        if done >= shared.measure_start && done < shared.end {
            self.done_in_window += 1;
            self.ok_in_window += u64::from(matches!(outcome, Ok((s, _)) if s.is_success()));
        }
    }

    fn record(&mut self, outcome: &Outcome, latency: Duration, service: Duration) {
        self.latency.record(latency);
        self.service.record(service);
        match outcome {
            Ok((s, _)) if s.is_success() => self.ok += 1,
            Ok((s, _)) => *self.statuses.entry(s.as_u16()).or_default() += 1,
            Err(e) => *self.errors.entry(e).or_default() += 1,
        }
    }

    fn merge(&mut self, o: WorkerStats) {
        self.latency.merge(&o.latency);
        self.service.merge(&o.service);
        self.ok += o.ok;
        for (k, v) in o.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.unsent += o.unsent;
        self.reconnects += o.reconnects;
        self.ok_total += o.ok_total;
        self.done_in_window += o.done_in_window;
        self.ok_in_window += o.ok_in_window;
    }
}

async fn closed_loop_worker(shared: Arc<Shared>, mut client: Client) -> WorkerStats {
    let mut st = WorkerStats::default();
    loop {
        let start = Instant::now();
        if start >= shared.end {
            break;
        }
        let n = shared.next.fetch_add(1, Ordering::Relaxed);
        let outcome = client
            .exchange(shared.request(n), shared.timeout, false)
            .await;
        let done = Instant::now();
        let took = done - start;
        st.completed(&shared, done, &outcome);
        if start >= shared.measure_start {
            st.record(&outcome, took, took);
        }
        if matches!(outcome, Err("connect")) {
            // The server is not accepting connections: do not spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    st.reconnects = client.reconnects;
    st
}

#[derive(Clone, Copy)]
struct Ticket {
    n: u64,
    due: Instant,
}

type Tickets = Arc<Mutex<mpsc::UnboundedReceiver<Ticket>>>;

async fn open_loop_worker(
    shared: Arc<Shared>,
    mut client: Client,
    tickets: Tickets,
) -> WorkerStats {
    let mut st = WorkerStats::default();
    loop {
        let ticket = { tickets.lock().await.recv().await };
        let Some(t) = ticket else { break };
        let measured = t.due >= shared.measure_start;
        let sent = Instant::now();
        if sent >= shared.drain_deadline {
            st.unsent += u64::from(measured);
            continue;
        }
        let outcome = client
            .exchange(shared.request(t.n), shared.timeout, false)
            .await;
        let done = Instant::now();
        st.completed(&shared, done, &outcome);
        if measured {
            st.record(&outcome, done - t.due, done - sent);
        }
    }
    st.reconnects = client.reconnects;
    st
}

/// Issues tickets on a fixed timetable from a plain thread (finer sleeps than tokio's 1 ms timer).
fn spawn_pacer(
    rate: f64,
    start: Instant,
    end: Instant,
    tx: mpsc::UnboundedSender<Ticket>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || {
            // Ask for 1 µs timer slack (default 50 µs) so the timetable is kept closely.
            // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
            unsafe {
                libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
            }
            let interval = 1.0 / rate;
            for n in 0u64.. {
                let due = start + Duration::from_secs_f64(n as f64 * interval);
                if due >= end {
                    break;
                }
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if tx.send(Ticket { n, due }).is_err() {
                    break;
                }
            }
        })
        .expect("spawning the pacer thread")
}

struct CpuWindow {
    generator: f64,
    server: Option<f64>,
    rss: Option<(u64, u64)>,
}

async fn sample_cpu(measure_start: Instant, end: Instant, server: Option<u32>) -> CpuWindow {
    tokio::time::sleep_until(measure_start.into()).await;
    let g0 = procfs::cpu_seconds(Proc::Current).unwrap_or(0.0);
    let s0 = server.and_then(|p| procfs::cpu_seconds(Proc::Pid(p)).ok());
    tokio::time::sleep_until(end.into()).await;
    let g1 = procfs::cpu_seconds(Proc::Current).unwrap_or(0.0);
    let s1 = server.and_then(|p| procfs::cpu_seconds(Proc::Pid(p)).ok());
    CpuWindow {
        generator: g1 - g0,
        server: s0.zip(s1).map(|(a, b)| b - a),
        rss: server.and_then(|p| procfs::rss_kib(Proc::Pid(p)).ok()),
    }
}

pub async fn run(args: &WritesArgs, threads: usize) -> Result<WritesReport> {
    ensure!(args.teams >= 1, "--teams must be at least 1");
    match args.write {
        WriteKind::Task | WriteKind::Update => {
            ensure!(
                args.members == 0 && args.followers == 0,
                "--members and --followers go with --write comment"
            );
            ensure!(
                args.write == WriteKind::Task || args.watch.is_empty(),
                "--watch goes with --write task"
            );
        }
        WriteKind::Comment => {
            ensure!(args.watch.is_empty(), "--watch goes with --write task");
            ensure!(args.teams == 1, "--write comment uses one team");
            ensure!(
                args.followers <= args.members,
                "--followers must not exceed --members"
            );
        }
    }
    ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    ensure!(
        args.duration > 0.0 && args.duration.is_finite(),
        "--duration must be positive"
    );
    ensure!(
        args.warmup >= 0.0 && args.warmup.is_finite(),
        "--warmup must not be negative"
    );
    ensure!(
        args.timeout > 0.0 && args.timeout.is_finite(),
        "--timeout must be positive"
    );
    if let Some(r) = args.rate {
        ensure!(r > 0.0 && r.is_finite(), "--rate must be positive");
    }
    if args.warmup + args.duration > 600.0 {
        eprintln!(
            "warning: runs longer than ~15 minutes outlive the default access-token lifetime"
        );
    }
    let target = parse_url(&args.url)?;
    let timeout = Duration::from_secs_f64(args.timeout);

    let setup_start = Instant::now();
    let mut watchers = None;
    let (bearer, uris, followers) = match args.write {
        WriteKind::Task => {
            let (bearer, team_ids) = setup(&target, args.teams, timeout)
                .await
                .context("setup failed")?;
            if !args.watch.is_empty() {
                let token = bearer
                    .to_str()
                    .ok()
                    .and_then(|b| b.strip_prefix("Bearer "))
                    .ok_or_else(|| anyhow!("the bearer header is not `Bearer <token>`"))?;
                watchers = Some(
                    TeamWatchers::start(&args.watch, token, &team_ids)
                        .await
                        .context("opening the watchers")?,
                );
            }
            let uris = team_ids
                .iter()
                .map(|id| format!("{}/api/v1/teams/{id}/tasks", target.prefix).parse::<Uri>())
                .collect::<Result<Vec<_>, _>>()?;
            (bearer, uris, Vec::new())
        }
        WriteKind::Update => {
            let (bearer, team_ids) = setup(&target, args.teams, timeout)
                .await
                .context("setup failed")?;
            let uris = setup_updated_tasks(&target, &bearer, &team_ids, timeout)
                .await
                .context("setup failed")?;
            (bearer, uris, Vec::new())
        }
        WriteKind::Comment => {
            let s = setup_comments(&target, args.members, args.followers, timeout)
                .await
                .context("setup failed")?;
            (s.bearer, vec![s.comments_uri], s.followers)
        }
    };
    let setup_secs = setup_start.elapsed().as_secs_f64();

    let addr: Arc<str> = target.addr.as_str().into();
    let mut clients = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        let mut c = Client::new(addr.clone());
        c.ready()
            .await
            .map_err(|e| anyhow!("opening connection to {addr}: {e} error"))?;
        clients.push(c);
    }

    let start = Instant::now();
    let measure_start = start + Duration::from_secs_f64(args.warmup);
    let end = measure_start + Duration::from_secs_f64(args.duration);
    let shared = Arc::new(Shared {
        target,
        bearer,
        write: args.write,
        uris,
        next: AtomicU64::new(0),
        measure_start,
        end,
        drain_deadline: end + timeout,
        timeout,
    });

    let sampler = tokio::spawn(sample_cpu(measure_start, end, args.server_pid));
    let mut pacer = None;
    let workers: Vec<_> = match args.rate {
        None => clients
            .into_iter()
            .map(|c| tokio::spawn(closed_loop_worker(shared.clone(), c)))
            .collect(),
        Some(rate) => {
            let (tx, rx) = mpsc::unbounded_channel();
            let tickets: Tickets = Arc::new(Mutex::new(rx));
            let ws = clients
                .into_iter()
                .map(|c| tokio::spawn(open_loop_worker(shared.clone(), c, tickets.clone())))
                .collect();
            pacer = Some(spawn_pacer(rate, start, end, tx));
            ws
        }
    };

    let mut total = WorkerStats::default();
    for w in workers {
        total.merge(w.await.context("worker panicked")?);
    }
    if let Some(p) = pacer {
        p.join().map_err(|_| anyhow!("pacer thread panicked"))?;
    }
    let cpu = sampler.await.context("sampler panicked")?;
    // What the relays still publish after the last answer.
    let watch = match watchers {
        Some(w) => Some(w.finish(WATCH_TAIL).await),
        None => None,
    };

    // Read after every worker is done, so every answered comment has committed.
    let inbox = if followers.is_empty() {
        None
    } else {
        let seqs = inbox_seqs(&shared.target, &followers, timeout)
            .await
            .context("reading the followers' inboxes")?;
        InboxCheck::of(total.ok_total, &seqs)
    };

    let requests = total.latency.len();
    Ok(WritesReport {
        scenario: "http_writes".into(),
        label: args.label.clone(),
        round: args.round,
        url: args.url.clone(),
        write: args.write,
        teams: args.teams,
        members: args.members,
        followers: args.followers,
        concurrency: args.concurrency,
        target_rate: args.rate,
        threads,
        warmup_secs: args.warmup,
        duration_secs: args.duration,
        requests,
        ok: total.ok,
        non_2xx: total
            .statuses
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        errors: total
            .errors
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        unsent: total.unsent,
        throughput: total.ok_in_window as f64 / args.duration,
        request_rate: total.done_in_window as f64 / args.duration,
        latency: total.latency.summary(),
        service_time: total.service.summary(),
        reconnects: total.reconnects,
        generator_cpu_secs: cpu.generator,
        server_cpu_secs: cpu.server,
        server_cpu_us_per_write: cpu
            .server
            .filter(|_| total.ok_in_window > 0)
            .map(|s| s * 1e6 / total.ok_in_window as f64),
        created: total.ok_total,
        inbox,
        server_rss_kib: cpu.rss.map(|r| r.0),
        server_peak_rss_kib: cpu.rss.map(|r| r.1),
        setup_secs,
        watch,
    })
}

fn counts(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn print_human(r: &WritesReport) {
    let pct = |secs: f64| 100.0 * secs / r.duration_secs;
    let rate = r.target_rate.map_or("max (closed loop)".to_string(), |x| {
        format!("{x:.0} req/s (open loop)")
    });
    let non_2xx: u64 = r.non_2xx.values().sum();
    let errors: u64 = r.errors.values().sum();
    let (what, method, path) = match r.write {
        WriteKind::Task => ("tasks", "POST", "/api/v1/teams/{teamId}/tasks"),
        WriteKind::Comment => ("comments", "POST", "/api/v1/tasks/{taskId}/comments"),
        WriteKind::Update => ("updates", "PATCH", "/api/v1/tasks/{taskId}"),
    };
    println!("{method} {path}  {}", r.label.as_deref().unwrap_or(""));
    println!("  server            {}", r.url);
    match r.write {
        WriteKind::Task => println!("  teams             {}", r.teams),
        WriteKind::Update => println!(
            "  teams             {} ({UPDATED_TASKS} tasks, each request a new priority)",
            r.teams
        ),
        WriteKind::Comment => println!(
            "  team              owner + {} members, {} following the task",
            r.members, r.followers
        ),
    }
    println!(
        "  concurrency       {} connections, {} generator thread(s)",
        r.concurrency, r.threads
    );
    println!("  rate              {rate}");
    println!(
        "  window            {:.1} s after {:.1} s warmup (setup {:.2} s)",
        r.duration_secs, r.warmup_secs, r.setup_secs
    );
    println!(
        "  requests          {} (2xx {}, non-2xx {non_2xx}, errors {errors})",
        r.requests, r.ok
    );
    println!(
        "  throughput        {:.1} {what} created/s ({:.1} requests/s)",
        r.throughput, r.request_rate
    );
    println!("  latency ms        {}", r.latency.one_line());
    if r.target_rate.is_some() {
        println!("  service time ms   {}", r.service_time.one_line());
    }
    if non_2xx > 0 {
        println!("  non-2xx           {}", counts(&r.non_2xx));
    }
    if errors > 0 {
        println!("  errors            {}", counts(&r.errors));
    }
    if r.unsent > 0 {
        println!(
            "  unsent            {} (the server fell too far behind the timetable)",
            r.unsent
        );
    }
    if r.reconnects > 0 {
        println!("  reconnects        {}", r.reconnects);
    }
    println!(
        "  generator CPU     {:.2} s ({:.0}% of one core)",
        r.generator_cpu_secs,
        pct(r.generator_cpu_secs)
    );
    if let Some(s) = r.server_cpu_secs {
        println!("  server CPU        {s:.2} s ({:.0}% of one core)", pct(s));
    }
    if let Some(us) = r.server_cpu_us_per_write {
        println!("  server CPU/write  {us:.0} µs");
    }
    if let Some(w) = &r.watch {
        let closes = w.closes.values().sum::<u64>();
        println!(
            "  watchers          {} sockets, {} activities, {} skipped, {} repeated, {closes} closes",
            w.sockets, w.deliveries, w.skipped, w.repeated
        );
    }
    if let Some(i) = &r.inbox {
        println!(
            "  inbox seqs        {}..={} over {} followers, {} comments created: {}",
            i.min_seq,
            i.max_seq,
            i.followers,
            i.expected,
            if i.ok {
                "one notification each"
            } else {
                "MISMATCH"
            }
        );
    }
    if let (Some(rss), Some(peak)) = (r.server_rss_kib, r.server_peak_rss_kib) {
        println!(
            "  server RSS        {:.1} MiB (peak {:.1} MiB)",
            rss as f64 / 1024.0,
            peak as f64 / 1024.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = parse_url("http://127.0.0.1:8080").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080");
        assert_eq!(t.host_header, "127.0.0.1:8080");
        assert_eq!(t.prefix, "");
        let t = parse_url("http://localhost/base/").unwrap();
        assert_eq!(t.addr, "localhost:80");
        assert_eq!(t.prefix, "/base");
        let t = parse_url("http://[::1]:9000").unwrap();
        assert_eq!(t.addr, "[::1]:9000");
        assert!(parse_url("https://127.0.0.1:1").is_err());
        assert!(parse_url("127.0.0.1:1").is_err());
    }

    #[test]
    fn inbox_check_wants_every_seq_equal_to_the_comments() {
        let c = InboxCheck::of(5, &[5, 5, 5]).unwrap();
        assert!(c.ok);
        assert_eq!((c.followers, c.min_seq, c.max_seq), (3, 5, 5));
        assert!(!c.missing());
        let short = InboxCheck::of(5, &[5, 4]).unwrap();
        assert!(!short.ok && short.missing());
        // A timed-out request may have committed: one more is a mismatch, not a loss.
        let over = InboxCheck::of(5, &[6]).unwrap();
        assert!(!over.ok && !over.missing());
        assert!(InboxCheck::of(5, &[]).is_none());
    }
}
