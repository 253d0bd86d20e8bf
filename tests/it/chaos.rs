//! Chaos, counted: 30 clients spread over 3 instances (one PostgreSQL database, one Redis), each
//! in one room (team, board or task); a writer creating activities through every live instance.
//! Mid-stream: `kill -9` of instance 0 (its clients reconnect elsewhere and resume with `since`),
//! a Redis restart, SIGTERM of instance 1 (its clients get close 1001 and resume elsewhere). Then
//! the writer stops and the last activity must still reach everyone. Every client must end with
//! exactly the ordered sequence of its room, derived from the writer's 2xx responses and the
//! team's activity log: 0 lost, 0 duplicated, 0 out of order. The test prints those counts.
//!
//! Clients do not de-duplicate: they record every activity frame they get, and resume with
//! `since` = the highest seq they have of their room (or the last `subscribed.seq`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

const NODES: usize = 3;
const CLIENTS: usize = 30;
const WRITES: usize = 600;
/// Pause between two writes (the writer is sequential: its responses come in seq order).
const WRITE_PAUSE: Duration = Duration::from_millis(8);
/// How long the clients get, once the writer stopped, to receive their room's last activity.
const SETTLE: Duration = Duration::from_secs(15);

type Ws = WebSocketStream<TcpStream>;

/// What the test and its tasks share: the instances' addresses, which of them are up (a hint
/// for the writer and reconnecting clients; the test clears it before it kills one), and the
/// stop flag of the clients.
struct Shared {
    bases: Vec<String>,
    alive: Vec<AtomicBool>,
    stop: AtomicBool,
    started: Instant,
    /// The writer's request in flight: `op * NODES + instance + 1` (0: none).
    in_flight: AtomicUsize,
}

impl Shared {
    fn alive_nodes(&self) -> Vec<usize> {
        (0..self.bases.len())
            .filter(|&i| self.alive[i].load(Ordering::SeqCst))
            .collect()
    }

    fn at(&self) -> String {
        format!("{:>6.2}s", self.started.elapsed().as_secs_f64())
    }
}

// ---------------------------------------------------------------------------------------------
// Routing (CONTRACT.md, "delivered to rooms")
// ---------------------------------------------------------------------------------------------

/// Whether a logged activity is routed to `room`.
fn routed(a: &Value, room: Scope) -> bool {
    let kind = a["type"].as_str().unwrap_or("");
    let is = |key: &str, id: Uuid| a[key].as_str() == Some(id.to_string().as_str());
    // A move names the new board in `boardId` and the old one in the changes.
    let from_board = |id: Uuid| {
        a["data"]["changes"]["boardId"]["from"].as_str() == Some(id.to_string().as_str())
    };
    match room {
        Scope::Team(t) => {
            is("teamId", t)
                && matches!(
                    kind,
                    "task.created"
                        | "task.deleted"
                        | "member.added"
                        | "member.updated"
                        | "member.removed"
                        | "team.updated"
                        | "board.created"
                        | "board.updated"
                        | "board.deleted"
                        | "label.created"
                        | "label.updated"
                        | "label.deleted"
                )
        }
        Scope::Board(b) => {
            matches!(
                kind,
                "task.created" | "task.updated" | "task.deleted" | "task.assigned"
            ) && (is("boardId", b)
                || (matches!(kind, "task.updated" | "task.assigned") && from_board(b)))
        }
        Scope::Task(t) => {
            is("taskId", t)
                && matches!(
                    kind,
                    "task.updated"
                        | "task.deleted"
                        | "task.assigned"
                        | "comment.created"
                        | "comment.updated"
                        | "comment.deleted"
                )
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// Everything one client saw, shared with the test while it runs.
#[derive(Default)]
struct ClientLog {
    /// The seq of every activity frame of its room, in arrival order (duplicates included).
    arrivals: Vec<i64>,
    /// Distinct seqs received.
    got: HashSet<i64>,
    /// Activity frames that its room should not have received.
    unexpected: Vec<String>,
    /// `subscribed.seq` of the first subscription: the room's stream starts after it.
    first_seq: Option<i64>,
    /// The resume point: the highest seq it has of its room (or the last `subscribed.seq`).
    since: Option<i64>,
    connections: usize,
    /// Per connection: (instance, connected at, how it ended).
    sessions: Vec<(usize, String, String)>,
    /// Handshake failures (instance down, ...): retried elsewhere.
    connect_failures: usize,
    /// `error` frames received (except `unavailable`, which is retried).
    errors: Vec<String>,
    retried_subscribes: usize,
}

async fn connect(base: &str, token: &str) -> Result<Ws, String> {
    let addr = base.trim_start_matches("http://").to_string();
    let url = format!("ws://{addr}/realtime?token={}", urlencode(token));
    let stream = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(&addr))
        .await
        .map_err(|_| "TCP connect timed out".to_string())?
        .map_err(|e| format!("TCP connect: {e}"))?;
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::client_async(url, stream),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| format!("handshake: {e}"))?;
    Ok(ws)
}

fn subscribe_msg(room: Scope, since: Option<i64>) -> Message {
    let mut m = json!({"type": "subscribe"});
    m[room.key()] = json!(room.id());
    if let Some(s) = since {
        m["since"] = json!(s);
    }
    Message::text(m.to_string())
}

/// One client: keeps a socket in `room`, reconnects to a live instance whenever it ends and
/// resumes with `since`. Runs until `stop`.
async fn run_client(
    id: usize,
    room: Scope,
    token: String,
    home: usize,
    sh: Arc<Shared>,
    log: Arc<Mutex<ClientLog>>,
) {
    let mut failures: usize = 0;
    let mut turn = id;
    while !sh.stop.load(Ordering::SeqCst) {
        let alive = sh.alive_nodes();
        if alive.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let node = if failures == 0 && alive.contains(&home) {
            home
        } else {
            // Spread over the others (clients of one instance do not all move to the same one).
            alive[(id / NODES + turn) % alive.len()]
        };
        let ws = match connect(&sh.bases[node], &token).await {
            Ok(ws) => ws,
            Err(_) => {
                log.lock().unwrap().connect_failures += 1;
                failures += 1;
                turn += 1;
                // Bounded backoff: 25 ms, 50, 100, ... up to 800 ms.
                let ms = 25u64 << failures.min(5);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                continue;
            }
        };
        failures = 0;
        let since = {
            let mut l = log.lock().unwrap();
            l.connections += 1;
            l.since
        };
        let at = sh.at();
        let end = session(ws, room, since, &sh, &log).await;
        log.lock().unwrap().sessions.push((node, at, end));
        turn += 1;
    }
}

/// One connection: subscribes (resuming with `since`) and records activity frames until the
/// socket ends or the test stops; returns how it ended.
async fn session(
    mut ws: Ws,
    room: Scope,
    since: Option<i64>,
    sh: &Shared,
    log: &Mutex<ClientLog>,
) -> String {
    let mut since = since;
    if let Err(e) = ws.send(subscribe_msg(room, since)).await {
        return format!("send failed: {e}");
    }
    loop {
        if sh.stop.load(Ordering::SeqCst) {
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
            return "stopped by the test".into();
        }
        let msg = match tokio::time::timeout(Duration::from_millis(100), ws.next()).await {
            Err(_) => continue,
            Ok(None) => return "stream ended (no close frame)".into(),
            Ok(Some(Err(e))) => return format!("dropped: {e}"),
            Ok(Some(Ok(m))) => m,
        };
        let text = match msg {
            Message::Text(t) => t.as_str().to_string(),
            Message::Close(Some(cf)) => return format!("close {}", u16::from(cf.code)),
            Message::Close(None) => return "close (no code)".into(),
            _ => continue,
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            log.lock()
                .unwrap()
                .errors
                .push(format!("non-JSON frame: {text}"));
            continue;
        };
        match v["type"].as_str().unwrap_or("") {
            "activity" => {
                let a = &v["activity"];
                let Some(seq) = a["seq"].as_i64() else {
                    continue; // presence: ephemeral, no seq
                };
                let mut l = log.lock().unwrap();
                if routed(a, room) {
                    l.arrivals.push(seq);
                    l.got.insert(seq);
                    l.since = Some(l.since.map_or(seq, |s| s.max(seq)));
                } else {
                    l.unexpected.push(a.to_string());
                }
            }
            "subscribed" if room.named_by(&v) => {
                let Some(s) = v["seq"].as_i64() else {
                    log.lock()
                        .unwrap()
                        .errors
                        .push(format!("subscribed without seq: {v}"));
                    continue;
                };
                let mut l = log.lock().unwrap();
                if l.first_seq.is_none() {
                    l.first_seq = Some(s);
                }
                l.since = Some(l.since.map_or(s, |x| x.max(s)));
            }
            "error" => {
                let code = v["code"].as_str().unwrap_or("").to_string();
                if code == "unavailable" {
                    // The instance asks to retry the subscribe.
                    log.lock().unwrap().retried_subscribes += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    since = log.lock().unwrap().since.or(since);
                    if let Err(e) = ws.send(subscribe_msg(room, since)).await {
                        return format!("send failed: {e}");
                    }
                } else {
                    log.lock().unwrap().errors.push(v.to_string());
                    if code == "resume_unavailable" {
                        // Not joined: the contract says subscribe without `since`. Counted as an
                        // error (the log is retained): whatever it misses counts as lost.
                        if let Err(e) = ws.send(subscribe_msg(room, None)).await {
                            return format!("send failed: {e}");
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Op {
    Create(Uuid),
    Comment,
    UpdateT0,
    UpdateLatest,
}

/// One HTTP attempt of the writer. Its label (task title or comment body) is unique, so the
/// activity it produced (if any) can be found in the log.
#[derive(Debug, Clone)]
struct Attempt {
    op: usize,
    label: String,
    kind: &'static str,
    node: usize,
    status: Option<u16>,
    body: Value,
    error: Option<String>,
}

impl Attempt {
    fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

struct WriterSetup {
    token: String,
    team: Uuid,
    boards: [Uuid; 2],
    t0: Uuid,
}

async fn run_writer(sh: Arc<Shared>, w: WriterSetup, progress: Arc<AtomicUsize>) -> Vec<Attempt> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client");
    let mut attempts = Vec::new();
    let mut latest: Option<Uuid> = None;
    for i in 0..WRITES {
        let op = match i % 10 {
            0 | 2 | 4 | 6 => Op::Create(w.boards[(i / 2) % 2]),
            1 | 5 | 8 => Op::Comment,
            3 | 7 => Op::UpdateT0,
            _ if latest.is_some() => Op::UpdateLatest,
            _ => Op::Comment,
        };
        for k in 0..6 {
            let alive = sh.alive_nodes();
            if alive.is_empty() {
                break;
            }
            let node = alive[(i + k) % alive.len()];
            let base = &sh.bases[node];
            let label = format!("w{i:04}a{k}");
            let (kind, req) = match op {
                Op::Create(board) => (
                    "task.created",
                    http.post(format!("{base}/api/v1/teams/{}/tasks", w.team))
                        .json(&json!({"title": label, "boardId": board})),
                ),
                Op::Comment => (
                    "comment.created",
                    http.post(format!("{base}/api/v1/tasks/{}/comments", w.t0))
                        .json(&json!({"body": label})),
                ),
                Op::UpdateT0 => (
                    "task.updated",
                    http.patch(format!("{base}/api/v1/tasks/{}", w.t0))
                        .json(&json!({"title": label})),
                ),
                Op::UpdateLatest => (
                    "task.updated",
                    http.patch(format!("{base}/api/v1/tasks/{}", latest.unwrap()))
                        .json(&json!({"title": label})),
                ),
            };
            let mut at = Attempt {
                op: i,
                label,
                kind,
                node,
                status: None,
                body: Value::Null,
                error: None,
            };
            sh.in_flight.store(i * NODES + node + 1, Ordering::SeqCst);
            let result = async {
                let r = req.bearer_auth(&w.token).send().await?;
                let status = r.status().as_u16();
                let text = r.text().await?;
                Ok::<_, reqwest::Error>((status, text))
            }
            .await;
            sh.in_flight.store(0, Ordering::SeqCst);
            match result {
                Ok((status, text)) => {
                    at.status = Some(status);
                    at.body = serde_json::from_str(&text).unwrap_or(Value::String(text));
                    if at.ok()
                        && matches!(op, Op::Create(_))
                        && let Some(id) = at.body["id"].as_str().and_then(|s| s.parse().ok())
                    {
                        latest = Some(id);
                    }
                    attempts.push(at);
                    break;
                }
                Err(e) => {
                    // No response: it may or may not have committed (the log decides). The
                    // operation is retried on another instance, as a new attempt.
                    at.error = Some(error_chain(&e));
                    attempts.push(at);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        progress.store(i + 1, Ordering::SeqCst);
        tokio::time::sleep(WRITE_PAUSE).await;
    }
    attempts
}

// ---------------------------------------------------------------------------------------------
// Counting
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    expected: usize,
    received: usize,
    lost: usize,
    duplicated: usize,
    out_of_order: usize,
    unexpected: usize,
    reconnects: usize,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.expected += o.expected;
        self.received += o.received;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
        self.unexpected += o.unexpected;
        self.reconnects += o.reconnects;
    }
    fn bad(&self) -> bool {
        self.lost + self.duplicated + self.out_of_order + self.unexpected > 0
    }
}

/// Compares what a client received (arrival order) with its room's expected seqs (ascending).
fn tally(expected: &[i64], log: &ClientLog) -> Tally {
    let want: HashSet<i64> = expected.iter().copied().collect();
    let mut t = Tally {
        expected: expected.len(),
        received: log.arrivals.len(),
        unexpected: log.unexpected.len(),
        reconnects: log.connections.saturating_sub(1),
        ..Tally::default()
    };
    let mut seen = HashSet::new();
    let mut max: Option<i64> = None;
    for &s in &log.arrivals {
        if !want.contains(&s) {
            t.unexpected += 1;
            continue;
        }
        if !seen.insert(s) {
            t.duplicated += 1;
            continue;
        }
        if max.is_some_and(|m| s < m) {
            t.out_of_order += 1;
        }
        max = Some(max.map_or(s, |m| m.max(s)));
    }
    t.lost = expected.iter().filter(|s| !seen.contains(s)).count();
    t
}

/// The label (task title or comment body) a writer activity carries.
fn label_of(a: &Value) -> Option<&str> {
    match a["type"].as_str()? {
        "task.created" | "task.updated" => a["data"]["task"]["title"].as_str(),
        "comment.created" => a["data"]["comment"]["body"].as_str(),
        _ => None,
    }
}

/// Server log lines worth showing on failure: warnings, errors, and the last lines.
fn server_logs(cluster: &Cluster) -> String {
    let mut out = String::new();
    for (i, n) in cluster.nodes.iter().enumerate() {
        let lines = n.stderr_lines();
        let notable: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("panic"))
            .collect();
        out.push_str(&format!(
            "\n--- instance {i}: {} lines, {} warnings/errors (last 40 shown) ---\n",
            lines.len(),
            notable.len()
        ));
        for l in notable.iter().rev().take(40).rev() {
            out.push_str(l);
            out.push('\n');
        }
        out.push_str(&format!("--- instance {i}: last 15 lines ---\n"));
        for l in lines.iter().rev().take(15).rev() {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// Waits (at most 2 s) until the writer has a request in flight to `node`; returns that write.
async fn wait_in_flight(sh: &Shared, node: usize) -> Option<usize> {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match sh.in_flight.load(Ordering::SeqCst) {
            0 => {}
            v if (v - 1) % NODES == node => return Some((v - 1) / NODES),
            _ => {}
        }
        tokio::task::yield_now().await;
    }
    None
}

fn in_flight_text(op: Option<usize>) -> String {
    match op {
        Some(op) => format!("write {op} to it in flight"),
        None => "no write to it in flight".into(),
    }
}

/// An error with its causes (reqwest's own text says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Per instance: how many warnings/errors it logged, and their distinct messages (timestamps and
/// fields stripped), for the summary.
fn warning_summary(cluster: &Cluster) -> Vec<String> {
    cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let lines = n.stderr_lines();
            let notable: Vec<&String> = lines
                .iter()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .collect();
            let mut kinds: Vec<String> = Vec::new();
            for l in &notable {
                // `2026-..Z  WARN target: message key=value ...`: keep the message.
                let msg = l.split_once(": ").map_or(l.as_str(), |(_, m)| m);
                let msg = msg.split(" error=").next().unwrap_or(msg);
                let msg = msg.split(" team=").next().unwrap_or(msg).to_string();
                if !kinds.contains(&msg) {
                    kinds.push(msg);
                }
            }
            format!(
                "instance {i}: {} warnings/errors {:?}",
                notable.len(),
                kinds
            )
        })
        .collect()
}

async fn wait_progress(progress: &AtomicUsize, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress.load(Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline,
            "the writer did not reach {n} writes ({what}) within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "slow set: cargo test -- --ignored"]
async fn chaos_counted_kill_redis_restart_sigterm() {
    let Some(mut cluster) = Cluster::start(NODES, &[("TASKFORGE_DRAIN_TIMEOUT", "5s")]).await
    else {
        return;
    };
    let t_start = Instant::now();

    // ---- setup: a team, two boards, a task, 30 members --------------------------------------
    let api = cluster.node(0).client();
    let owner = api.new_user("Chaos owner").await;
    let token = owner.token().to_string();
    let team = api.create_team(&token, "Chaos").await;
    let b1 = team.default_board_id;
    let b2 = api.create_board(&token, team.id, "B2").await.id;
    let t0 = api
        .create_task(&token, team.id, json!({"title": "the task", "boardId": b1}))
        .await
        .id;
    let mut regs = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let a = cluster.node(i).client();
        regs.spawn(async move { (i, a.new_user(&format!("client{i}")).await) });
    }
    let mut users: Vec<Option<AuthResponse>> = vec![None; CLIENTS];
    while let Some(r) = regs.join_next().await {
        let (i, u) = r.expect("register task");
        users[i] = Some(u);
    }
    let users: Vec<AuthResponse> = users.into_iter().map(Option::unwrap).collect();
    for u in &users {
        api.add_member(&token, team.id, &u.user.email, "member")
            .await;
    }
    let baseline = api.team_seq(&token, team.id).await;

    // Rooms: by groups of three clients (one per instance): team, board 1, board 2, task.
    let rooms: Vec<Scope> = (0..CLIENTS)
        .map(|i| match (i / NODES) % 4 {
            0 => Scope::Team(team.id),
            1 => Scope::Board(b1),
            2 => Scope::Board(b2),
            _ => Scope::Task(t0),
        })
        .collect();
    let homes: Vec<usize> = (0..CLIENTS).map(|i| i % NODES).collect();

    let sh = Arc::new(Shared {
        bases: cluster.nodes.iter().map(|n| n.base.clone()).collect(),
        alive: (0..NODES).map(|_| AtomicBool::new(true)).collect(),
        stop: AtomicBool::new(false),
        started: Instant::now(),
        in_flight: AtomicUsize::new(0),
    });
    let logs: Vec<Arc<Mutex<ClientLog>>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        clients.push(tokio::spawn(run_client(
            i,
            rooms[i],
            users[i].token().to_string(),
            homes[i],
            sh.clone(),
            logs[i].clone(),
        )));
    }
    // Everyone subscribed before the writer starts.
    let deadline = Instant::now() + Duration::from_secs(20);
    while logs.iter().any(|l| l.lock().unwrap().first_seq.is_none()) {
        assert!(
            Instant::now() < deadline,
            "not every client subscribed within 20 s{}",
            server_logs(&cluster)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let setup_time = t_start.elapsed();
    eprintln!(
        "chaos: setup done in {setup_time:?}: team seq {baseline}, {CLIENTS} clients subscribed"
    );

    // ---- the writer, and the chaos timeline -------------------------------------------------
    let progress = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn(run_writer(
        sh.clone(),
        WriterSetup {
            token: token.clone(),
            team: team.id,
            boards: [b1, b2],
            t0,
        },
        progress.clone(),
    ));
    let t_writer = Instant::now();
    let mut timeline = Vec::new();

    // The instance dies while a write to it is in flight (if that happens within 2 s); the
    // writer and the clients learn it is gone by failing, the hint follows 300 ms later.
    wait_progress(&progress, WRITES / 4, "kill -9").await;
    let killed_during = wait_in_flight(&sh, 0).await;
    cluster.nodes[0].stop().await;
    timeline.push(format!(
        "{} kill -9 instance 0 ({})",
        sh.at(),
        in_flight_text(killed_during)
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    sh.alive[0].store(false, Ordering::SeqCst);

    wait_progress(&progress, WRITES / 2, "Redis restart").await;
    cluster.redis.stop().await;
    timeline.push(format!("{} Redis stopped", sh.at()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.redis.start_again().await;
    timeline.push(format!("{} Redis started again (empty)", sh.at()));

    wait_progress(&progress, WRITES * 3 / 4, "SIGTERM").await;
    let termed_during = wait_in_flight(&sh, 1).await;
    timeline.push(format!(
        "{} SIGTERM instance 1 ({})",
        sh.at(),
        in_flight_text(termed_during)
    ));
    let (exit, ()) = tokio::join!(cluster.nodes[1].terminate(), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        sh.alive[1].store(false, Ordering::SeqCst);
    });
    timeline.push(format!("{} instance 1 exited: {exit:?}", sh.at()));

    let attempts = tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("the writer did not finish within 60 s")
        .expect("writer task");
    let writer_time = t_writer.elapsed();
    let t_writer_done = Instant::now();
    timeline.push(format!("{} writer stopped", sh.at()));

    // ---- ground truth: the activity log, checked against the writer's responses -------------
    let log: Vec<Value> = cluster
        .node(2)
        .client()
        .all_pages(
            &token,
            &format!("/api/v1/teams/{}/activity?limit=200", team.id),
        )
        .await;
    let mut problems: Vec<String> = Vec::new();
    let seqs: Vec<i64> = log.iter().map(|a| a["seq"].as_i64().unwrap()).collect();
    if let Some(w) = seqs.windows(2).find(|w| w[1] != w[0] + 1) {
        problems.push(format!(
            "the activity log is not gapless: {} then {}",
            w[0], w[1]
        ));
    }
    let by_label: HashMap<&str, &Attempt> =
        attempts.iter().map(|a| (a.label.as_str(), a)).collect();
    let mut in_log: HashMap<&str, &Value> = HashMap::new();
    for a in log.iter().filter(|a| a["seq"].as_i64() > Some(baseline)) {
        let Some(label) = label_of(a) else {
            problems.push(format!(
                "activity in the log that the writer did not cause: {a}"
            ));
            continue;
        };
        match by_label.get(label) {
            None => problems.push(format!("activity with an unknown label in the log: {a}")),
            Some(at) if at.kind != a["type"].as_str().unwrap_or("") => {
                problems.push(format!("attempt {label} ({}) logged as: {a}", at.kind))
            }
            Some(_) => {
                if in_log.insert(label, a).is_some() {
                    problems.push(format!("attempt {label} logged twice: {a}"));
                }
            }
        }
    }
    let mut last_ok_seq = baseline;
    let (mut ok, mut no_response, mut no_response_committed, mut refused) = (0, 0, 0, 0);
    for at in &attempts {
        let logged = in_log.get(at.label.as_str());
        if at.ok() {
            ok += 1;
            let Some(a) = logged else {
                problems.push(format!("2xx write not in the log: {at:?}"));
                continue;
            };
            let seq = a["seq"].as_i64().unwrap();
            if seq <= last_ok_seq {
                problems.push(format!(
                    "2xx writes out of seq order: {} has seq {seq} after {last_ok_seq}",
                    at.label
                ));
            }
            last_ok_seq = seq;
            let matches = match at.kind {
                "comment.created" => a["data"]["comment"]["id"] == at.body["id"],
                "task.created" => a["taskId"] == at.body["id"],
                _ => {
                    a["taskId"] == at.body["id"]
                        && a["data"]["task"]["version"] == at.body["version"]
                }
            };
            if !matches {
                problems.push(format!(
                    "logged activity does not match the response: {at:?} vs {a}"
                ));
            }
        } else if at.status.is_some() {
            refused += 1;
            problems.push(format!("write answered non-2xx: {at:?}"));
        } else {
            no_response += 1;
            if logged.is_some() {
                no_response_committed += 1;
            }
        }
    }

    // ---- every client must reach its room's last activity ------------------------------------
    let expected: Vec<Vec<i64>> = (0..CLIENTS)
        .map(|i| {
            let from = logs[i].lock().unwrap().first_seq.unwrap();
            log.iter()
                .filter(|a| a["seq"].as_i64().unwrap() > from && routed(a, rooms[i]))
                .map(|a| a["seq"].as_i64().unwrap())
                .collect()
        })
        .collect();
    let deadline = Instant::now() + SETTLE;
    let all_reached = loop {
        let pending: Vec<usize> = (0..CLIENTS)
            .filter(|&i| {
                expected[i]
                    .last()
                    .is_some_and(|s| !logs[i].lock().unwrap().got.contains(s))
            })
            .collect();
        if pending.is_empty() {
            break true;
        }
        if Instant::now() >= deadline {
            problems.push(format!(
                "clients {pending:?} did not receive their room's last activity within {SETTLE:?} \
                 after the writer stopped"
            ));
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // From the writer's last response to the last client holding its room's last activity.
    let settle_time = t_writer_done.elapsed();
    // A little longer: a duplicate or a stray frame would show up now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sh.stop.store(true, Ordering::SeqCst);
    for c in clients {
        let _ = tokio::time::timeout(Duration::from_secs(5), c).await;
    }

    // ---- counts ------------------------------------------------------------------------------
    let mut total = Tally::default();
    let mut details = Vec::new();
    let (mut closes_1001, mut connect_failures, mut retried_subscribes) = (0, 0, 0);
    for i in 0..CLIENTS {
        let l = logs[i].lock().unwrap();
        let t = tally(&expected[i], &l);
        total.add(&t);
        connect_failures += l.connect_failures;
        retried_subscribes += l.retried_subscribes;
        for (node, at, end) in &l.sessions {
            match node {
                1 if end == "close 1001" => closes_1001 += 1,
                1 => problems.push(format!(
                    "client {i}: its socket on instance 1 (from {at}) ended with {end:?}, \
                     not close 1001"
                )),
                // Nothing but the test ends a socket on the surviving instance (the Redis
                // restart must not).
                2 if end != "stopped by the test" => problems.push(format!(
                    "client {i}: its socket on instance 2 (from {at}) ended with {end:?}"
                )),
                _ => {}
            }
        }
        if homes[i] != 2 && t.reconnects == 0 {
            problems.push(format!(
                "client {i} (home instance {}) never reconnected",
                homes[i]
            ));
        }
        if !l.errors.is_empty() {
            problems.push(format!(
                "client {i} ({:?}): error frames {:?}",
                rooms[i], l.errors
            ));
        }
        if t.bad() {
            let missing: Vec<i64> = expected[i]
                .iter()
                .copied()
                .filter(|s| !l.got.contains(s))
                .collect();
            details.push(format!(
                "client {i} ({:?}, home {}): {t:?}\n    missing seqs: {missing:?}\n    \
                 unexpected: {:?}\n    sessions: {:?}",
                rooms[i],
                homes[i],
                l.unexpected.iter().take(3).collect::<Vec<_>>(),
                l.sessions
            ));
        }
    }
    for t in &timeline {
        eprintln!("chaos: {t}");
    }
    eprintln!(
        "chaos: writer: {} operations, {} attempts in {writer_time:?}: {ok} 2xx, {refused} non-2xx, \
         {no_response} without response ({no_response_committed} of them committed); log seq \
         {baseline} -> {}",
        WRITES,
        attempts.len(),
        seqs.last().copied().unwrap_or(0)
    );
    eprintln!(
        "chaos: {CLIENTS} clients: expected deliveries {}, received {}, lost {}, duplicated {}, \
         out of order {}, unexpected {}, reconnects {} ({} sockets closed 1001 by the SIGTERM, \
         {connect_failures} failed handshakes, {retried_subscribes} subscribes retried); \
         last activity reached everyone: {all_reached} ({settle_time:?} after the writer's \
         last response, log read included); test time {:?}",
        total.expected,
        total.received,
        total.lost,
        total.duplicated,
        total.out_of_order,
        total.unexpected,
        total.reconnects,
        closes_1001,
        t_start.elapsed()
    );
    for (what, node, op) in [("kill -9", 0, killed_during), ("SIGTERM", 1, termed_during)] {
        if let Some(at) = op.and_then(|op| attempts.iter().find(|a| a.op == op && a.node == node)) {
            eprintln!(
                "chaos: the write in flight at the {what} of instance {node}: {}",
                match at.status {
                    Some(s) => format!("answered {s}"),
                    None => "no response".into(),
                }
            );
        }
    }
    for at in attempts.iter().filter(|a| a.status.is_none()) {
        eprintln!(
            "chaos: write {} ({}) on instance {}: no response ({}), {}",
            at.op,
            at.kind,
            at.node,
            at.error.as_deref().unwrap_or(""),
            if in_log.contains_key(at.label.as_str()) {
                "committed"
            } else {
                "not committed"
            }
        );
    }
    for d in &details {
        eprintln!("chaos: {d}");
    }
    for w in warning_summary(&cluster) {
        eprintln!("chaos: server log: {w}");
    }
    let failed = total.bad() || !problems.is_empty();
    assert!(
        !failed,
        "chaos: lost {}, duplicated {}, out of order {}, unexpected {}\nproblems:\n  {}\n\
         clients:\n  {}\nserver logs:{}",
        total.lost,
        total.duplicated,
        total.out_of_order,
        total.unexpected,
        problems.join("\n  "),
        details.join("\n  "),
        server_logs(&cluster)
    );
    assert!(
        closes_1001 > 0,
        "no socket was closed with 1001 by the SIGTERM"
    );
}
