//! Scenario `fanout`: delivery of `task.created` activities to many WebSocket subscribers, or
//! (`--transport sse`) to many `/realtime/sse` streams.
//!
//! Setup (not measured): register one owner and `--users` users, create one team, add the users as
//! members; open `--sockets` WebSocket connections to `/realtime?token=...`, spread round-robin over
//! the users and over local source addresses 127.0.0.1 ..= 127.0.0.K (so that more than one
//! address's ephemeral ports are available), each subscribing to the team and waiting for its
//! `subscribed` reply.
//!
//! Several instances of one deployment (`--url` given more than once): the setup goes through the
//! first; socket `i` and writer `w` go to instance `i mod n` / `w mod n`; the CPU and RSS of the
//! `--server-pid`s are summed and reported per instance. With `--redis`, a PSUBSCRIBE tap counts
//! the messages published on `team:*` / `user:*` during the window, and INFO the commands and CPU
//! of Redis (see `redis_tap`).
//!
//! Load: `--writers` keep-alive HTTP/1.1 connections create `--events` tasks titled `b<i>`, as fast
//! as they go, paced (`--rate`: task `i` is sent at `start + i / rate`, open loop) or closed loop
//! (`--window W`: a task is sent only while fewer than W created tasks are still short of a
//! socket); the instant of each send is recorded. A few driver tasks (`--drivers`, default one per generator thread)
//! each own a share of the sockets and read them; per frame they only scan the text for `"seq":`
//! and `"title":"b` (no JSON parse), mark the seq in the socket's bitset (lost, duplicates,
//! order) and record receipt minus send instant of task `i` in the driver's own histogram.
//!
//! Over SSE each connection is `GET /realtime/sse?teamId=…&token=…` on its own TCP connection
//! (the same users, source addresses and concurrency), ready at its `subscribed` event; each
//! event's data is the socket's frame and goes through the same scan (see `sse`).
//!
//! End: when every socket has every created task's activity, or `--timeout` after the last send.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use futures_util::stream::{SelectAll, Stream};
use futures_util::{SinkExt, StreamExt};
use hyper::Uri;
use hyper::header::HeaderValue;
use memchr::memmem;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::arrival::StampedTcp;
use crate::http_writes::{Client, Target, parse_url, post_api, post_json};
use crate::procfs::{self, Proc};
use crate::redis_tap::{Commands, InfoSnapshot, Tap, TapCounts, calls_between, parse_redis_addr};
use crate::sse::{self, SseConn, SseTarget};
use crate::stats::{LatencyHistogram, LatencySummary};

#[derive(clap::Args, Debug, Clone)]
pub struct FanoutArgs {
    /// Base URL of the server, plain HTTP (e.g. http://127.0.0.1:8080). Several instances of one
    /// deployment: repeat it or separate the URLs with commas; the setup goes through the first,
    /// sockets and writers are spread over them round-robin
    #[arg(long = "url", required = true, value_delimiter = ',')]
    pub urls: Vec<String>,
    /// WebSocket connections, all subscribed to the one team
    #[arg(long, default_value_t = 1000)]
    pub sockets: usize,
    /// Tasks to create; each one's task.created activity goes to every socket. 0: only open the
    /// sockets and hold them (`--hold`), for the server's memory per idle socket
    #[arg(long, default_value_t = 1000)]
    pub events: usize,
    /// Seconds to hold the subscribed sockets idle before the server's RSS is read (lets
    /// connection-time buffers be freed and the allocator settle)
    #[arg(long, default_value_t = 0.0)]
    pub hold: f64,
    /// Task creations per second, paced on a fixed timetable (open loop); without it, as fast as
    /// the writers go
    #[arg(long)]
    pub rate: Option<f64>,
    /// Closed loop: a writer sends its next task only while fewer than this many created tasks
    /// are still short of a socket (at most WINDOW x sockets deliveries in flight). Bounds the
    /// backlog of a max-rate run, so that it measures a rate the deployment and this generator
    /// sustain instead of a queue that grows until sockets time out. Not with --rate
    #[arg(long, conflicts_with = "rate")]
    pub window: Option<u64>,
    /// Teams (scenario `rooms`): socket i subscribes to team i mod TEAMS, and each task goes to a
    /// team drawn at random (seeded: the same draw in every run), so a task reaches only its
    /// team's sockets. Needs --rate; not with the floor, which has one team
    #[arg(long, default_value_t = 1)]
    pub teams: usize,
    /// Concurrent HTTP writers, each with its own keep-alive HTTP/1.1 connection
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Users the sockets are spread over round-robin (the owner, who writes, has no socket)
    #[arg(long, default_value_t = 20)]
    pub users: usize,
    /// Local source addresses 127.0.0.1 ..= 127.0.0.K the sockets are spread over (loopback servers)
    #[arg(long, default_value_t = 8)]
    pub source_addrs: u8,
    /// Sockets being opened at the same time during setup
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Tasks reading the sockets, each owning a share of them (default: one per generator thread)
    #[arg(long)]
    pub drivers: Option<usize>,
    /// Read buffer of each socket, in bytes
    #[arg(long, default_value_t = 8192)]
    pub read_buffer: usize,
    /// Do not ask the kernel for arrival stamps (no `arrival` figures). Once any socket asks,
    /// the kernel stamps every packet on the machine, the server's included
    #[arg(long)]
    pub no_arrival: bool,
    /// Seconds to wait for outstanding deliveries after the last send
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// Timeout of each setup step and of each task creation, in seconds
    #[arg(long, default_value_t = 10.0)]
    pub request_timeout: f64,
    /// PID of the server process, to report its CPU time and memory. Several instances: repeat it
    /// or separate the PIDs with commas, in the order of the URLs; their CPU and RSS are summed and
    /// reported per instance too
    #[arg(long = "server-pid", value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// Redis of a scaled deployment (redis://HOST:PORT): during the load, count the messages
    /// published on `team:*` and `user:*` (a PSUBSCRIBE tap) and the commands Redis ran (INFO)
    #[arg(long)]
    pub redis: Option<String>,
    /// PID of redis-server, for its CPU time from /proc besides INFO's, and its memory
    #[arg(long)]
    pub redis_pid: Option<u32>,
    /// Free-form label copied into the report (used by `summarize` to group runs)
    #[arg(long)]
    pub label: Option<String>,
    /// Print one JSON object line instead of the human-readable report
    #[arg(long)]
    pub json: bool,
    /// What the `--url`s are: TaskForge itself, the Socket.IO peer (bench/socketio-peer) or the
    /// bare-write floor (`taskforge-bench floor`)
    #[arg(long, value_enum, default_value_t = ServerKind::Taskforge)]
    pub server_kind: ServerKind,
    /// The peer's JWT secret (`socketio`): the generator mints the users' tokens itself, since the
    /// peer has no sign-up
    #[arg(long, env = "TASKFORGE_BENCH_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// How each connection receives (TaskForge only for `sse`): a WebSocket on `/realtime`
    /// subscribing to the team, or an SSE stream `GET /realtime/sse?teamId=…&token=…` (the
    /// same JSON as each event's data)
    #[arg(long, value_enum, default_value_t = Transport::Websocket)]
    pub transport: Transport,
}

/// What a connection of the fanout is.
#[derive(clap::ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// A WebSocket (`/realtime`, or the peer's Engine.IO socket)
    #[default]
    Websocket,
    /// A Server-Sent Events stream over HTTP/1.1 (`/realtime/sse`), read by `sse::SseConn`
    Sse,
}

/// The server a run measures. All three get the same task creations and send the same
/// `task.created` activity to every subscribed socket; only the framing differs.
#[derive(clap::ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ServerKind {
    /// TaskForge: `/realtime`, the contract's JSON frames
    #[default]
    Taskforge,
    /// The Node.js Socket.IO 4.8 peer: Engine.IO v4 / Socket.IO v5 framing over a WebSocket
    Socketio,
    /// The bare-write floor: TaskForge's frames, one write per frame and socket, nothing else
    Floor,
}

/// The result of one `fanout` run (the `--json` line).
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct FanoutReport {
    pub scenario: String,
    /// `--server-kind`
    #[serde(default)]
    pub server_kind: ServerKind,
    /// `--transport`
    #[serde(default)]
    pub transport: Transport,
    pub label: Option<String>,
    /// The first `--url` (the one of the setup)
    pub url: String,
    /// Every `--url`, in order
    #[serde(default)]
    pub urls: Vec<String>,
    pub sockets: usize,
    pub users: usize,
    /// `--teams`
    #[serde(default = "one")]
    pub teams: usize,
    /// `--events`: tasks the writers were asked to create
    pub events: usize,
    /// `--rate`, or null for max rate
    pub target_rate: Option<f64>,
    /// `--window`: tasks allowed short of a socket at once (closed loop), or null
    #[serde(default)]
    pub window: Option<u64>,
    /// Closed loop: total time writers waited for the window to open, seconds
    #[serde(default)]
    pub window_wait_secs: Option<f64>,
    pub writers: usize,
    pub threads: usize,
    pub drivers: usize,
    pub source_addrs: usize,
    /// Tasks created (2xx answers)
    pub created: u64,
    /// Task creations that failed, by HTTP status or error kind
    pub write_failures: BTreeMap<String, u64>,
    /// Latency of the task creations (HTTP request to response)
    pub write_latency: LatencySummary,
    /// Paced runs: the largest delay of an actual send behind its scheduled time, ms
    pub max_send_lag_ms: Option<f64>,
    /// From the first send to the last send, seconds
    pub send_secs: f64,
    /// sockets x created
    pub deliveries_expected: u64,
    /// `activity` frames received (duplicates and unexpected ones included)
    pub deliveries_received: u64,
    /// Expected deliveries that did not arrive before the end
    pub lost: u64,
    /// Activities a socket received more than once (same seq)
    pub duplicates: u64,
    /// Activities received with a seq not above the socket's previous one
    pub out_of_order: u64,
    /// Activities with a seq outside (subscribed.seq, subscribed.seq + events]
    pub unexpected: u64,
    /// Activities without a `"title":"b<i>"` of this run (no latency recorded)
    pub untitled: u64,
    /// Sockets that got every created task's activity
    pub sockets_complete: u64,
    /// Sockets that the server closed or that failed during the load, by close code / error
    pub sockets_closed: BTreeMap<String, u64>,
    /// `error` frames received during the load, by code
    pub error_frames: BTreeMap<String, u64>,
    /// Other non-activity frames received during the load, by type
    pub other_frames: BTreeMap<String, u64>,
    /// The run ended on `--timeout` rather than with every delivery in
    pub timed_out: bool,
    /// From the first send to the last receipt, seconds
    pub window_secs: f64,
    /// From the last send to the last receipt, ms
    pub drain_ms: f64,
    /// deliveries received / window
    pub deliveries_per_sec: f64,
    /// Receipt (the generator's read) minus send instant of the task creation, for each first
    /// delivery
    pub latency: LatencySummary,
    /// Arrival (the kernel's receive stamp on the client socket) minus send instant, for each
    /// first delivery: the same deliveries without the generator's own read queue (null with
    /// `--no-arrival`)
    #[serde(default)]
    pub arrival: Option<LatencySummary>,
    /// First deliveries without a usable arrival stamp (not in `arrival`)
    #[serde(default)]
    pub unstamped: u64,
    /// CPU seconds (user + system) of this generator from the first send to the end
    pub generator_cpu_secs: f64,
    /// CPU seconds of the server from the first send to the end (with --server-pid; several
    /// instances: summed)
    pub server_cpu_secs: Option<f64>,
    pub server_cpu_us_per_delivery: Option<f64>,
    /// Server RSS after the team setup, before any socket, KiB (several instances: summed, as the
    /// other RSS figures)
    pub server_rss_baseline_kib: Option<u64>,
    /// Server RSS with every socket subscribed, before the load, KiB
    pub server_rss_connected_kib: Option<u64>,
    /// (connected - baseline) / sockets, KiB
    pub server_rss_per_socket_kib: Option<f64>,
    /// Server RSS at the end, KiB
    pub server_rss_end_kib: Option<u64>,
    /// Server peak RSS (VmHWM) at the end, KiB (several instances: the sum of their peaks)
    pub server_peak_rss_kib: Option<u64>,
    /// Per instance: each `--url` with the `--server-pid` at the same position
    #[serde(default)]
    pub instances: Vec<InstanceReport>,
    /// With `--redis`: messages and commands of Redis during the window (first send to the end)
    #[serde(default)]
    pub redis: Option<RedisReport>,
    /// Registering the users and making the team, seconds
    pub setup_secs: f64,
    /// Opening and subscribing every socket, seconds
    pub connect_secs: f64,
    /// Server CPU while the sockets were opened and subscribed, per socket, µs (several instances:
    /// summed)
    #[serde(default)]
    pub connect_cpu_us_per_socket: Option<f64>,
    /// `--hold`, seconds
    #[serde(default)]
    pub hold_secs: f64,
}

fn one() -> usize {
    1
}

/// The team of task `i` among `teams`: a fixed pseudo-random draw (splitmix64), the same in
/// every run and for every server kind.
fn team_of_task(i: usize, teams: usize) -> usize {
    let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) % teams as u64) as usize
}

/// One server instance of a `fanout` run.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
#[serde(rename_all = "camelCase")]
pub struct InstanceReport {
    pub url: Option<String>,
    pub pid: Option<u32>,
    /// Sockets opened on this instance
    pub sockets: usize,
    /// Writers sending to this instance
    pub writers: usize,
    /// Tasks created through this instance
    pub created: u64,
    /// Deliveries lost on this instance's sockets
    pub lost: u64,
    pub sockets_complete: u64,
    /// CPU seconds from the first send to the end
    pub cpu_secs: Option<f64>,
    pub cpu_us_per_delivery: Option<f64>,
    pub rss_baseline_kib: Option<u64>,
    pub rss_connected_kib: Option<u64>,
    pub rss_end_kib: Option<u64>,
    pub peak_rss_kib: Option<u64>,
}

/// Redis during the window of a `fanout` run (`--redis`).
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
#[serde(rename_all = "camelCase")]
pub struct RedisReport {
    /// `host:port`
    pub addr: String,
    /// Messages published on `team:{id}` channels, as seen by the PSUBSCRIBE tap
    pub team_messages: Option<u64>,
    /// Messages published on `user:{id}` channels
    pub user_messages: Option<u64>,
    pub team_bytes: Option<u64>,
    pub user_bytes: Option<u64>,
    /// Messages carrying an activity (`A...`) / a presence change (`P...`), both channel kinds
    pub activity_messages: Option<u64>,
    pub presence_messages: Option<u64>,
    /// Messages per task created
    pub team_messages_per_activity: Option<f64>,
    pub user_messages_per_activity: Option<f64>,
    /// Why the tap's figures are missing
    pub tap_error: Option<String>,
    /// Calls per command during the window (INFO commandstats; this generator's INFO and PING
    /// excluded; commands run by scripts included)
    pub commands: BTreeMap<String, u64>,
    /// Sum of `commands` per task created
    pub commands_per_activity: Option<f64>,
    /// CPU seconds of redis-server (all its threads) during the window: `used_cpu_user +
    /// used_cpu_sys` of INFO (getrusage, µs resolution), else from /proc of `--redis-pid`
    pub cpu_secs: Option<f64>,
    /// `info` or `proc`
    pub cpu_source: Option<String>,
    /// The same from /proc/PID/stat of `--redis-pid` (clock ticks: 10 ms resolution)
    pub proc_cpu_secs: Option<f64>,
    pub cpu_us_per_activity: Option<f64>,
    /// Resident memory of redis-server at the end, KiB (with --redis-pid)
    pub rss_end_kib: Option<u64>,
}

pub(crate) type Ws = WebSocketStream<TcpStream>;
/// A measured socket: its reads keep the kernel's arrival stamp (see `arrival`).
type Sock = WebSocketStream<StampedTcp>;

/// What the drivers and writers share during the load.
struct Load {
    /// Reference instant of `sent_ns`.
    base: Instant,
    /// Nanoseconds after `base` (+1) at which task `i` was sent; 0 = not yet sent.
    sent_ns: Vec<AtomicU64>,
    events: usize,
    /// The sockets asked for arrival stamps (not `--no-arrival`)
    stamps: bool,
}

// ---------------------------------------------------------------- frame scanning (hot path)

const ACTIVITY_PREFIX: &[u8] = br#"{"type":"activity""#;
/// A Socket.IO `activity` event: Engine.IO message (4), Socket.IO event (2), then the array.
const SOCKETIO_ACTIVITY_PREFIX: &[u8] = br#"42["activity","#;
const SEQ_MARKER: &[u8] = br#""seq":"#;
const TITLE_MARKER: &[u8] = br#""title":"b"#;

pub(crate) struct Scanner {
    prefix: &'static [u8],
    seq: memmem::FinderRev<'static>,
    title: memmem::Finder<'static>,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Scan {
    /// An `activity` frame: its seq and the `i` of its `"title":"b<i>"`, when found.
    Activity {
        seq: Option<u64>,
        title: Option<u64>,
    },
    Other,
}

/// The decimal number at the start of `b`, and how many bytes it took.
fn leading_number(b: &[u8]) -> Option<(u64, usize)> {
    let mut n: u64 = 0;
    let mut len = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            break;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        len += 1;
    }
    (len > 0).then_some((n, len))
}

impl Scanner {
    pub(crate) fn new() -> Self {
        Self::for_kind(ServerKind::Taskforge)
    }

    pub(crate) fn for_kind(kind: ServerKind) -> Self {
        Self {
            prefix: match kind {
                ServerKind::Taskforge | ServerKind::Floor => ACTIVITY_PREFIX,
                ServerKind::Socketio => SOCKETIO_ACTIVITY_PREFIX,
            },
            seq: memmem::FinderRev::new(SEQ_MARKER),
            title: memmem::Finder::new(TITLE_MARKER),
        }
    }

    /// The server writes the activity's fields in no promised order (today `data` comes before
    /// `seq`); the task inside has no `seq` field, so the last `"seq":` is the activity's (searched
    /// from the end, where it is), and the first `"title":"b` is the task's.
    pub(crate) fn scan(&self, b: &[u8]) -> Scan {
        let Some(body) = b.strip_prefix(self.prefix) else {
            return Scan::Other;
        };
        let seq = self
            .seq
            .rfind(body)
            .and_then(|p| leading_number(&body[p + SEQ_MARKER.len()..]))
            .map(|(n, _)| n);
        let title = self.title.find(body).and_then(|p| {
            let start = p + TITLE_MARKER.len();
            let (n, len) = leading_number(&body[start..])?;
            (body.get(start + len) == Some(&b'"')).then_some(n)
        });
        Scan::Activity { seq, title }
    }
}

// ---------------------------------------------------------------- drivers

/// A measured connection: a WebSocket, or an SSE stream on its own HTTP/1.1 connection.
#[expect(
    clippy::large_enum_variant,
    reason = "one per connection, held in place by its driver's SelectAll: a box would only add a pointer chase to every poll"
)]
pub(crate) enum Conn {
    Ws(Sock),
    Sse(SseConn),
}

/// What a connection yielded to its driver.
pub(crate) enum Got {
    /// A text frame, or an SSE event's data: the same JSON either way.
    Text(Bytes),
    /// A WebSocket close frame, as `close <code>`.
    Close(String),
    Binary,
    /// A WebSocket ping or pong: nothing to count (tungstenite answers pings itself).
    Control,
    /// The connection failed or ended (its last item).
    End(String),
}

/// One connection in a driver's `SelectAll`: yields `(k, got, receipt)` until, once,
/// `(k, Got::End(_), None)`. On an Engine.IO socket it answers the server's pings (`2`) with a
/// pong (`3`) itself.
struct Tagged {
    k: usize,
    conn: Option<Conn>,
    engine_io: bool,
    pong_due: bool,
}

impl Tagged {
    /// Sends a due pong as far as the socket lets it now; false when the socket failed.
    fn send_pong(&mut self, cx: &mut TaskContext<'_>) -> bool {
        let Some(Conn::Ws(ws)) = self.conn.as_mut() else {
            return true;
        };
        if self.pong_due {
            match ws.poll_ready_unpin(cx) {
                Poll::Pending => return true,
                Poll::Ready(Err(_)) => return false,
                Poll::Ready(Ok(())) => {
                    if ws.start_send_unpin(Message::text("3")).is_err() {
                        return false;
                    }
                    self.pong_due = false;
                }
            }
        }
        !matches!(ws.poll_flush_unpin(cx), Poll::Ready(Err(_)))
    }

    fn poll_ws(&mut self, cx: &mut TaskContext<'_>) -> Poll<TaggedItem> {
        let k = self.k;
        let Some(Conn::Ws(ws)) = self.conn.as_mut() else {
            return Poll::Pending;
        };
        match ws.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(Message::Text(t)))) if self.engine_io && t.as_str() == "2" => {
                self.pong_due = true;
                self.send_pong(cx);
                // Not an item: poll again soon for what follows the ping.
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Ready(Some(Ok(m))) => {
                let read = Instant::now();
                let arrived = ws.get_ref().arrived_at(read);
                let got = match m {
                    Message::Text(t) => Got::Text(Bytes::from(t)),
                    Message::Close(frame) => Got::Close(
                        frame.map_or("close".into(), |f| format!("close {}", u16::from(f.code))),
                    ),
                    Message::Binary(_) => Got::Binary,
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Got::Control,
                };
                Poll::Ready((k, got, Some((read, arrived))))
            }
            Poll::Ready(Some(Err(e))) => {
                self.conn = None;
                Poll::Ready((k, Got::End(format!("error: {e}")), None))
            }
            Poll::Ready(None) => {
                self.conn = None;
                Poll::Ready((k, Got::End("eof".into()), None))
            }
        }
    }

    fn poll_sse(&mut self, cx: &mut TaskContext<'_>) -> Poll<TaggedItem> {
        let k = self.k;
        let Some(Conn::Sse(sse)) = self.conn.as_mut() else {
            return Poll::Pending;
        };
        match sse.poll_data(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Ok(data))) => {
                let read = Instant::now();
                let arrived = sse.arrived_at(read);
                Poll::Ready((k, Got::Text(data), Some((read, arrived))))
            }
            Poll::Ready(Ok(Err(end))) => {
                self.conn = None;
                Poll::Ready((k, Got::End(end.as_str().into()), None))
            }
            Poll::Ready(Err(e)) => {
                self.conn = None;
                Poll::Ready((k, Got::End(format!("error: {e}")), None))
            }
        }
    }
}

/// The connection's index, what it yielded, and for a message: when it was read, and when its
/// bytes arrived (kernel stamp).
type TaggedItem = (usize, Got, Option<(Instant, Option<Instant>)>);

impl Stream for Tagged {
    type Item = TaggedItem;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.engine_io && !this.send_pong(cx) {
            this.pong_due = false;
        }
        match this.conn {
            None => Poll::Ready(None),
            Some(Conn::Ws(_)) => this.poll_ws(cx).map(Some),
            Some(Conn::Sse(_)) => this.poll_sse(cx).map(Some),
        }
    }
}

/// Per-socket bookkeeping of a driver.
struct SockState {
    /// Index of the instance (`--url`) the socket is on (read at the end only)
    inst: usize,
    /// Index of its team (`--teams`)
    team: usize,
    sub_seq: u64,
    /// Bit `seq - sub_seq - 1` is set once that seq arrived.
    seen: Vec<u64>,
    distinct: u64,
    duplicates: u64,
    out_of_order: u64,
    unexpected: u64,
    last_seq: u64,
    /// Set when the server closed the socket or it failed.
    closed: Option<String>,
}

#[derive(Default)]
struct DriverOut {
    latency: LatencyHistogram,
    arrival: LatencyHistogram,
    /// Activities read without a usable kernel arrival stamp
    unstamped: u64,
    socks: Vec<SockState>,
    received: u64,
    untitled: u64,
    last_receipt: Option<Instant>,
    error_frames: BTreeMap<String, u64>,
    other_frames: BTreeMap<String, u64>,
}

pub(crate) fn bump(m: &mut BTreeMap<String, u64>, key: impl Into<String>) {
    *m.entry(key.into()).or_default() += 1;
}

/// `type` (and `code` of errors) of a non-activity frame; off the hot path, so a full parse.
/// Socket.IO frames: the event name of an event, else the Engine.IO/Socket.IO packet type.
fn classify(text: &str) -> (bool, String) {
    if let Some(event) = text.strip_prefix("42") {
        let name = serde_json::from_str::<Value>(event)
            .ok()
            .and_then(|v| v[0].as_str().map(str::to_owned));
        return match name {
            Some(n) if n == "failed" => (true, n),
            Some(n) => (false, n),
            None => (false, "invalid-socketio-event".into()),
        };
    }
    if text.starts_with(|c: char| c.is_ascii_digit()) {
        let packet: String = text.chars().take(2).collect();
        return (false, format!("engine.io {packet}"));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(v) => {
            let ty = v["type"].as_str().unwrap_or("?").to_string();
            if ty == "error" {
                (true, v["code"].as_str().unwrap_or("?").to_string())
            } else {
                (false, ty)
            }
        }
        Err(_) => (false, "invalid-json".into()),
    }
}

/// Frames a driver reads before it lets the other tasks of its thread run.
const DRIVER_ITEMS_PER_YIELD: u32 = 256;

/// A subscribed connection: the stream, its `subscribed` seq, its instance and its team.
type Opened = (Conn, u64, usize, usize);

async fn drive(
    kind: ServerKind,
    sockets: Vec<Opened>,
    load: Arc<Load>,
    progress: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> DriverOut {
    let words = load.events.div_ceil(64);
    let mut out = DriverOut::default();
    let mut socks = Vec::with_capacity(sockets.len());
    let mut sel = SelectAll::new();
    for (k, (conn, sub_seq, inst, team)) in sockets.into_iter().enumerate() {
        socks.push(SockState {
            inst,
            team,
            sub_seq,
            seen: vec![0; words],
            distinct: 0,
            duplicates: 0,
            out_of_order: 0,
            unexpected: 0,
            last_seq: sub_seq,
            closed: None,
        });
        sel.push(Tagged {
            k,
            conn: Some(conn),
            engine_io: kind == ServerKind::Socketio,
            pong_due: false,
        });
    }
    let scanner = Scanner::for_kind(kind);
    let events = load.events as u64;
    let mut since_yield = 0u32;
    loop {
        // Unconstrained (see `run`): give the writers and the timers their turn now and then.
        since_yield += 1;
        if since_yield == DRIVER_ITEMS_PER_YIELD {
            since_yield = 0;
            tokio::task::yield_now().await;
        }
        let item = tokio::select! {
            biased;
            _ = stop.changed() => break,
            item = sel.next() => item,
        };
        let Some((k, got, receipt)) = item else {
            // Every socket has ended: nothing more to read.
            let _ = stop.changed().await;
            break;
        };
        let st: &mut SockState = &mut socks[k];
        match got {
            Got::Text(text) => {
                let (now, arrived) = receipt.unwrap_or_else(|| (Instant::now(), None));
                match scanner.scan(&text) {
                    Scan::Activity { seq, title } => {
                        out.received += 1;
                        out.last_receipt = Some(now);
                        let Some(seq) = seq else {
                            st.unexpected += 1;
                            continue;
                        };
                        if seq <= st.last_seq {
                            st.out_of_order += 1;
                        } else {
                            st.last_seq = seq;
                        }
                        let off = seq.wrapping_sub(st.sub_seq + 1);
                        if seq <= st.sub_seq || off >= events {
                            st.unexpected += 1;
                            continue;
                        }
                        let (w, bit) = ((off / 64) as usize, 1u64 << (off % 64));
                        if st.seen[w] & bit != 0 {
                            st.duplicates += 1;
                            continue;
                        }
                        st.seen[w] |= bit;
                        st.distinct += 1;
                        progress.fetch_add(1, Ordering::Relaxed);
                        let sent = title
                            .and_then(|i| load.sent_ns.get(i as usize))
                            .map_or(0, |s| s.load(Ordering::Acquire));
                        if sent == 0 {
                            out.untitled += 1;
                        } else {
                            let since_base =
                                |t: Instant| t.duration_since(load.base).as_nanos() as u64;
                            let sent = sent - 1;
                            out.latency
                                .record(Duration::from_nanos(since_base(now).saturating_sub(sent)));
                            match arrived {
                                Some(a) => out.arrival.record(Duration::from_nanos(
                                    since_base(a).saturating_sub(sent),
                                )),
                                None if load.stamps => out.unstamped += 1,
                                None => {}
                            }
                        }
                    }
                    Scan::Other => {
                        let (is_error, kind) = classify(&String::from_utf8_lossy(&text));
                        bump(
                            if is_error {
                                &mut out.error_frames
                            } else {
                                &mut out.other_frames
                            },
                            kind,
                        );
                    }
                }
            }
            Got::Close(code) => st.closed = Some(code),
            Got::Binary => bump(&mut out.other_frames, "binary"),
            Got::Control => {}
            Got::End(why) => {
                if st.closed.is_none() {
                    st.closed = Some(why);
                }
            }
        }
    }
    out.socks = socks;
    out
}

// ---------------------------------------------------------------- writers

#[derive(Default)]
struct WriterOut {
    latency: LatencyHistogram,
    ok: u64,
    /// Tasks created per team
    ok_per_team: Vec<u64>,
    failures: BTreeMap<String, u64>,
    first_send: Option<Instant>,
    last_send: Option<Instant>,
    max_lag: Duration,
    reconnects: u64,
    window_wait: Duration,
}

/// The closed loop of `--window`: created tasks against deliveries made, over every driver.
struct Window {
    size: u64,
    sockets: u64,
    created: AtomicU64,
    delivered: Vec<Arc<AtomicU64>>,
    /// Longest wait for the window before a writer gives up (sockets gone, server stuck)
    stall: Duration,
}

impl Window {
    fn open(&self) -> bool {
        let delivered: u64 = self
            .delivered
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .sum();
        let created = self.created.load(Ordering::Relaxed);
        delivered + self.size * self.sockets >= created.saturating_add(1) * self.sockets
    }
}

struct WriteJob {
    load: Arc<Load>,
    /// Per team: its owner's `Authorization`
    bearers: Vec<HeaderValue>,
    next: AtomicU64,
    rate: Option<f64>,
    window: Option<Window>,
    start: Instant,
    timeout: Duration,
}

/// One writer: its connection to one instance, and that instance's task creation URI per team.
async fn writer(
    job: Arc<WriteJob>,
    target: Arc<Target>,
    uris: Vec<Uri>,
    mut client: Client,
) -> WriterOut {
    let mut out = WriterOut {
        ok_per_team: vec![0; uris.len()],
        ..WriterOut::default()
    };
    loop {
        let i = job.next.fetch_add(1, Ordering::Relaxed) as usize;
        if i >= job.load.events {
            break;
        }
        if let Some(rate) = job.rate {
            let due = job.start + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            out.max_lag = out
                .max_lag
                .max(Instant::now().saturating_duration_since(due));
        }
        if let Some(win) = &job.window {
            let waited = Instant::now();
            while !win.open() {
                if waited.elapsed() > win.stall {
                    bump(&mut out.failures, "window stalled");
                    out.reconnects = client.reconnects;
                    return out;
                }
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
            out.window_wait += waited.elapsed();
        }
        let body = Bytes::from(format!("{{\"title\":\"b{i}\"}}"));
        let team = team_of_task(i, uris.len());
        let req = post_json(&target, uris[team].clone(), Some(&job.bearers[team]), body);
        let sent = Instant::now();
        let ns = sent.duration_since(job.load.base).as_nanos() as u64 + 1;
        job.load.sent_ns[i].store(ns, Ordering::Release);
        out.first_send.get_or_insert(sent);
        out.last_send = Some(sent);
        let outcome = client.exchange(req, job.timeout, false).await;
        out.latency.record(sent.elapsed());
        match outcome {
            Ok((s, _)) if s.is_success() => {
                out.ok += 1;
                out.ok_per_team[team] += 1;
                if let Some(win) = &job.window {
                    win.created.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok((s, _)) => bump(&mut out.failures, s.as_u16().to_string()),
            Err(e) => bump(&mut out.failures, e),
        }
    }
    out.reconnects = client.reconnects;
    out
}

// ---------------------------------------------------------------- setup

pub(crate) struct Team {
    pub(crate) owner_bearer: HeaderValue,
    pub(crate) team_id: String,
    /// Access tokens of the users whose sockets subscribe
    pub(crate) tokens: Vec<String>,
}

pub(crate) async fn setup_team(target: &Target, users: usize, timeout: Duration) -> Result<Team> {
    let mut client = Client::new(target.addr.as_str().into());
    let unique = format!(
        "{}-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
        std::process::id()
    );
    let mut register = async |who: &str| -> Result<(String, String)> {
        let email = format!("fanout-{unique}-{who}@example.com");
        let body = json!({"email": email, "password": "bench-password-1", "displayName": format!("Fanout {who}")});
        let auth = post_api(
            &mut client,
            target,
            "/api/v1/auth/register",
            None,
            body,
            timeout,
        )
        .await?;
        let token = auth["accessToken"]
            .as_str()
            .ok_or_else(|| anyhow!("register response has no accessToken: {auth}"))?;
        Ok((email, token.to_string()))
    };
    let (_, owner_token) = register("owner").await?;
    let mut members = Vec::with_capacity(users);
    for u in 0..users {
        members.push(register(&format!("u{u}")).await?);
    }
    let owner_bearer = HeaderValue::from_str(&format!("Bearer {owner_token}"))?;
    let team = post_api(
        &mut client,
        target,
        "/api/v1/teams",
        Some(&owner_bearer),
        json!({"name": format!("fanout {unique}")}),
        timeout,
    )
    .await?;
    let team_id = team["id"]
        .as_str()
        .ok_or_else(|| anyhow!("team response has no id: {team}"))?
        .to_string();
    let path = format!("/api/v1/teams/{team_id}/members");
    for (email, _) in &members {
        post_api(
            &mut client,
            target,
            &path,
            Some(&owner_bearer),
            json!({"email": email, "role": "member"}),
            timeout,
        )
        .await?;
    }
    Ok(Team {
        owner_bearer,
        team_id,
        tokens: members.into_iter().map(|(_, t)| t).collect(),
    })
}

/// A TCP connection to `server` from `source` (if any), without Nagle.
pub(crate) async fn connect_tcp(server: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream> {
    let sock = if server.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    if let Some(ip) = source {
        sock.bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("bind {ip}:0"))?;
    }
    let stream = sock.connect(server).await.context("connect")?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Opens one socket from `source` (if any), subscribes it to the team and waits for `subscribed`.
async fn open_socket(
    server: SocketAddr,
    source: Option<IpAddr>,
    url: String,
    subscribe: &str,
    config: WebSocketConfig,
    stamps: bool,
) -> Result<(Sock, u64)> {
    let stream = StampedTcp::new(connect_tcp(server, source).await?, stamps)?;
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .context("WebSocket handshake")?;
    ws.send(Message::text(subscribe))
        .await
        .context("subscribe")?;
    while let Some(msg) = ws.next().await {
        match msg.context("reading the subscribe answer")? {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str())
                    .with_context(|| format!("frame is not JSON: {}", t.as_str()))?;
                match v["type"].as_str() {
                    Some("subscribed") => {
                        let seq = v["seq"]
                            .as_u64()
                            .ok_or_else(|| anyhow!("subscribed without a seq: {v}"))?;
                        return Ok((ws, seq));
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

/// Opens one Socket.IO socket (Engine.IO v4 over a WebSocket, no polling): reads the open packet,
/// connects to the main namespace with the token, emits `subscribe` and waits for `subscribed`.
async fn open_socketio(
    server: SocketAddr,
    source: Option<IpAddr>,
    url: String,
    token: &str,
    team_id: &str,
    config: WebSocketConfig,
    stamps: bool,
) -> Result<(Sock, u64)> {
    let stream = StampedTcp::new(connect_tcp(server, source).await?, stamps)?;
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .context("WebSocket handshake")?;
    #[derive(PartialEq)]
    enum Step {
        Open,
        Connect,
        Subscribe,
    }
    let mut step = Step::Open;
    while let Some(msg) = ws.next().await {
        let t = match msg.context("reading the Socket.IO handshake")? {
            Message::Text(t) => t,
            Message::Close(f) => bail!("closed by the server during setup: {f:?}"),
            _ => continue,
        };
        let t = t.as_str();
        if t == "2" {
            ws.send(Message::text("3")).await.context("pong")?;
            continue;
        }
        match step {
            Step::Open if t.starts_with('0') => {
                let connect = json!({ "token": token });
                ws.send(Message::text(format!("40{connect}")))
                    .await
                    .context("connect")?;
                step = Step::Connect;
            }
            Step::Connect if t.starts_with("40") => {
                let subscribe = json!(["subscribe", { "teamId": team_id }]);
                ws.send(Message::text(format!("42{subscribe}")))
                    .await
                    .context("subscribe")?;
                step = Step::Subscribe;
            }
            Step::Connect if t.starts_with("44") => bail!("connection refused: {t}"),
            Step::Subscribe if t.starts_with(r#"42["subscribed","#) => {
                let v: Value = serde_json::from_str(&t[2..])
                    .with_context(|| format!("event is not JSON: {t}"))?;
                let seq = v[1]["seq"]
                    .as_u64()
                    .ok_or_else(|| anyhow!("subscribed without a seq: {t}"))?;
                return Ok((ws, seq));
            }
            Step::Subscribe if t.starts_with(r#"42["failed","#) => bail!("subscribe answered {t}"),
            _ => {}
        }
    }
    bail!("connection ended before `subscribed`")
}

/// A team of a server without sign-up (the Socket.IO peer, the floor): a fresh team id and tokens
/// minted with the peer's secret for fresh user ids. The floor reads no token; it gets
/// placeholders when no secret is given.
fn minted_team(users: usize, secret: Option<&str>) -> Result<Team> {
    let mint = |user: uuid::Uuid| -> Result<String> {
        let Some(secret) = secret else {
            return Ok(format!("unsigned-{user}"));
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
        let claims = json!({
            "sub": user.to_string(), "iss": "taskforge", "iat": now, "nbf": now, "exp": now + 6 * 3600,
        });
        Ok(jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )?)
    };
    let owner = mint(uuid::Uuid::new_v4())?;
    let tokens = (0..users)
        .map(|_| mint(uuid::Uuid::new_v4()))
        .collect::<Result<Vec<_>>>()?;
    Ok(Team {
        owner_bearer: HeaderValue::from_str(&format!("Bearer {owner}"))?,
        team_id: uuid::Uuid::new_v4().to_string(),
        tokens,
    })
}

/// Raises the soft limit of open files to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> std::io::Result<libc::rlim_t> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(lim.rlim_cur)
}

/// RSS and peak RSS of each pid, KiB.
fn rss_of(pids: &[u32]) -> Vec<Option<(u64, u64)>> {
    pids.iter()
        .map(|&p| procfs::rss_kib(Proc::Pid(p)).ok())
        .collect()
}

/// CPU seconds of each pid.
fn cpu_of(pids: &[u32]) -> Vec<Option<f64>> {
    pids.iter()
        .map(|&p| procfs::cpu_seconds(Proc::Pid(p)).ok())
        .collect()
}

/// The sum over every instance, or None when there is none or one of them is unknown.
fn sum_all<T: std::iter::Sum<T> + Copy>(xs: impl IntoIterator<Item = Option<T>>) -> Option<T> {
    let v: Option<Vec<T>> = xs.into_iter().collect();
    v.filter(|v| !v.is_empty()).map(|v| v.into_iter().sum())
}

/// Per-pid CPU seconds between two snapshots.
fn cpu_between(before: &[Option<f64>], after: &[Option<f64>]) -> Vec<Option<f64>> {
    before
        .iter()
        .zip(after)
        .map(|(a, b)| a.zip(*b).map(|(a, b)| b - a))
        .collect()
}

fn per_activity(n: Option<u64>, created: u64) -> Option<f64> {
    n.filter(|_| created > 0).map(|n| n as f64 / created as f64)
}

/// Redis's counters at one instant of the run.
struct RedisMark {
    tap: Result<TapCounts, String>,
    info: Result<InfoSnapshot, String>,
    proc_cpu: Option<f64>,
}

/// The Redis side of a run: the tap and a command connection.
struct RedisProbe {
    addr: String,
    pid: Option<u32>,
    tap: Tap,
    commands: Commands,
    timeout: Duration,
}

impl RedisProbe {
    async fn start(url: &str, pid: Option<u32>, timeout: Duration) -> Result<RedisProbe> {
        let addr = parse_redis_addr(url)?;
        let tap = Tap::start(&addr, timeout).await?;
        let commands = Commands::connect(&addr, timeout).await?;
        Ok(RedisProbe {
            addr,
            pid,
            tap,
            commands,
            timeout,
        })
    }

    /// The tap's PING first, then INFO (see `calls_between`).
    async fn mark(&mut self) -> RedisMark {
        let tap = self
            .tap
            .snapshot(self.timeout)
            .await
            .map_err(|e| format!("{e:#}"));
        let info = self.commands.info().await.map_err(|e| format!("{e:#}"));
        let proc_cpu = self
            .pid
            .and_then(|p| procfs::cpu_seconds(Proc::Pid(p)).ok());
        RedisMark {
            tap,
            info,
            proc_cpu,
        }
    }

    fn report(&self, before: &RedisMark, after: &RedisMark, created: u64) -> RedisReport {
        let tap = match (&before.tap, &after.tap) {
            (Ok(b), Ok(a)) => Ok(a.since(*b)),
            (Err(e), _) | (_, Err(e)) => Err(e.clone()),
        };
        let t = tap.as_ref().ok();
        let (commands, info_cpu) = match (&before.info, &after.info) {
            (Ok(b), Ok(a)) => (
                calls_between(b, a),
                b.cpu_secs.zip(a.cpu_secs).map(|(b, a)| a - b),
            ),
            _ => (BTreeMap::new(), None),
        };
        let commands_total =
            (before.info.is_ok() && after.info.is_ok()).then(|| commands.values().sum::<u64>());
        let proc_cpu = before.proc_cpu.zip(after.proc_cpu).map(|(b, a)| a - b);
        let (cpu_secs, cpu_source) = match (info_cpu, proc_cpu) {
            (Some(c), _) => (Some(c), Some("info".to_string())),
            (None, Some(c)) => (Some(c), Some("proc".to_string())),
            (None, None) => (None, None),
        };
        RedisReport {
            addr: self.addr.clone(),
            team_messages: t.map(|t| t.team),
            user_messages: t.map(|t| t.user),
            team_bytes: t.map(|t| t.team_bytes),
            user_bytes: t.map(|t| t.user_bytes),
            activity_messages: t.map(|t| t.activities),
            presence_messages: t.map(|t| t.presence),
            team_messages_per_activity: per_activity(t.map(|t| t.team), created),
            user_messages_per_activity: per_activity(t.map(|t| t.user), created),
            tap_error: tap.err(),
            commands,
            commands_per_activity: per_activity(commands_total, created),
            cpu_secs,
            cpu_source,
            proc_cpu_secs: proc_cpu,
            cpu_us_per_activity: cpu_secs
                .filter(|_| created > 0)
                .map(|c| c * 1e6 / created as f64),
            rss_end_kib: self
                .pid
                .and_then(|p| procfs::rss_kib(Proc::Pid(p)).ok())
                .map(|r| r.0),
        }
    }
}

/// One `--url`: where its sockets connect and its writers send.
struct Instance {
    target: Arc<Target>,
    server: SocketAddr,
    ws_base: String,
    /// Task creation URI per team
    task_uris: Vec<Uri>,
}

pub async fn run(args: &FanoutArgs, threads: usize) -> Result<FanoutReport> {
    ensure!(!args.urls.is_empty(), "--url is required");
    ensure!(args.sockets >= 1, "--sockets must be at least 1");
    ensure!(
        args.hold >= 0.0 && args.hold.is_finite(),
        "--hold must not be negative"
    );
    ensure!(args.writers >= 1, "--writers must be at least 1");
    ensure!(args.users >= 1, "--users must be at least 1");
    ensure!(args.teams >= 1, "--teams must be at least 1");
    ensure!(
        args.teams == 1 || args.rate.is_some(),
        "--teams above 1 needs --rate (the closed loop counts deliveries to every socket)"
    );
    ensure!(
        args.teams == 1 || args.server_kind != ServerKind::Floor,
        "the floor has one team"
    );
    ensure!(
        args.sockets >= args.teams,
        "--sockets must be at least --teams"
    );
    ensure!(
        args.connect_concurrency >= 1,
        "--connect-concurrency must be at least 1"
    );
    ensure!(
        args.timeout >= 0.0 && args.timeout.is_finite(),
        "--timeout must not be negative"
    );
    ensure!(
        args.request_timeout > 0.0 && args.request_timeout.is_finite(),
        "--request-timeout must be positive"
    );
    ensure!(args.window != Some(0), "--window must be at least 1");
    ensure!(
        args.transport == Transport::Websocket || args.server_kind == ServerKind::Taskforge,
        "--transport sse needs --server-kind taskforge (the peer and the floor only speak WebSocket)"
    );
    if let Some(r) = args.rate {
        ensure!(r > 0.0 && r.is_finite(), "--rate must be positive");
    }
    let drivers = args.drivers.unwrap_or(threads).clamp(1, args.sockets);
    let request_timeout = Duration::from_secs_f64(args.request_timeout);
    let pids = args.server_pids.as_slice();
    let mut targets = Vec::with_capacity(args.urls.len());
    for url in &args.urls {
        let target = Arc::new(parse_url(url)?);
        let server: SocketAddr = tokio::net::lookup_host(target.addr.as_str())
            .await
            .with_context(|| format!("resolving {}", target.addr))?
            .next()
            .ok_or_else(|| anyhow!("{} resolves to no address", target.addr))?;
        let ws_base = match args.server_kind {
            ServerKind::Socketio => format!(
                "ws://{}{}/socket.io/?EIO=4&transport=websocket",
                target.addr, target.prefix
            ),
            ServerKind::Taskforge | ServerKind::Floor => {
                format!("ws://{}{}/realtime?token=", target.addr, target.prefix)
            }
        };
        targets.push(Instance {
            ws_base,
            task_uris: Vec::new(), // set once the teams exist
            target,
            server,
        });
    }
    let n_inst = targets.len();
    // Several loopback source addresses only make sense towards loopback IPv4 servers.
    let all_loopback_v4 = targets
        .iter()
        .all(|t| matches!(t.server.ip(), IpAddr::V4(ip) if ip.is_loopback()));
    let sources: Vec<Option<IpAddr>> = if all_loopback_v4 && args.source_addrs > 0 {
        (1..=args.source_addrs)
            .map(|k| Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, k))))
            .collect()
    } else {
        vec![None]
    };
    let mut redis = match &args.redis {
        Some(url) => Some(
            RedisProbe::start(url, args.redis_pid, request_timeout)
                .await
                .context("connecting to Redis")?,
        ),
        None => None,
    };

    // Setup: users, team, members, through the first instance.
    let setup_start = Instant::now();
    eprintln!(
        "fanout: {} {} users in {} team(s)",
        if args.server_kind == ServerKind::Taskforge {
            "registering"
        } else {
            "minting tokens for"
        },
        (args.users + 1) * args.teams,
        args.teams
    );
    let mut teams = Vec::with_capacity(args.teams);
    for _ in 0..args.teams {
        teams.push(match args.server_kind {
            ServerKind::Taskforge => setup_team(&targets[0].target, args.users, request_timeout)
                .await
                .context("setup failed")?,
            ServerKind::Socketio => {
                let secret = args.jwt_secret.as_deref().ok_or_else(|| {
                    anyhow!("--server-kind socketio needs --jwt-secret (the peer's JWT_SECRET)")
                })?;
                minted_team(args.users, Some(secret))?
            }
            ServerKind::Floor => minted_team(args.users, None)?,
        });
    }
    for t in &mut targets {
        t.task_uris = teams
            .iter()
            .map(|team| format!("{}/api/v1/teams/{}/tasks", t.target.prefix, team.team_id).parse())
            .collect::<Result<_, _>>()?;
    }
    let setup_secs = setup_start.elapsed().as_secs_f64();
    let rss_baseline = rss_of(pids);

    // Sockets: socket i on instance i mod instances.
    eprintln!(
        "fanout: opening {} {} on {} instance(s) from {} source address(es)",
        args.sockets,
        match args.transport {
            Transport::Websocket => "sockets",
            Transport::Sse => "SSE streams",
        },
        n_inst,
        sources.len()
    );
    let connect_start = Instant::now();
    let connect_cpu0 = cpu_of(pids);
    let config = WebSocketConfig::default().read_buffer_size(args.read_buffer);
    let subscribes: Vec<String> = teams
        .iter()
        .map(|team| format!(r#"{{"type":"subscribe","teamId":"{}"}}"#, team.team_id))
        .collect();
    let opened: Vec<(usize, Result<Opened>)> = futures_util::stream::iter(0..args.sockets)
        .map(|i| {
            let inst = i % n_inst;
            let t = &targets[inst];
            let team_k = i % teams.len();
            let team = &teams[team_k];
            let token = team.tokens[(i / teams.len()) % team.tokens.len()].as_str();
            let source = sources[i % sources.len()];
            let subscribe = subscribes[team_k].as_str();
            let server = t.server;
            let ws_base = t.ws_base.as_str();
            let team_id = team.team_id.as_str();
            let stamps = !args.no_arrival;
            let target = &t.target;
            async move {
                let open = async {
                    match (args.transport, args.server_kind) {
                        (Transport::Sse, _) => {
                            let path = format!(
                                "{}/realtime/sse?teamId={team_id}&token={token}",
                                target.prefix
                            );
                            let (conn, seq) = sse::open(SseTarget {
                                server,
                                source,
                                host: &target.addr,
                                path: &path,
                                stamps,
                                read_size: args.read_buffer,
                            })
                            .await?;
                            Ok((Conn::Sse(conn), seq))
                        }
                        (Transport::Websocket, ServerKind::Socketio) => {
                            let url = ws_base.to_string();
                            open_socketio(server, source, url, token, team_id, config, stamps)
                                .await
                                .map(|(ws, seq)| (Conn::Ws(ws), seq))
                        }
                        (Transport::Websocket, ServerKind::Taskforge | ServerKind::Floor) => {
                            let url = format!("{ws_base}{token}");
                            open_socket(server, source, url, subscribe, config, stamps)
                                .await
                                .map(|(ws, seq)| (Conn::Ws(ws), seq))
                        }
                    }
                };
                let r = tokio::time::timeout(request_timeout, open)
                    .await
                    .unwrap_or_else(|_| Err(anyhow!("timed out")))
                    .map(|(conn, seq)| (conn, seq, inst, team_k))
                    .map_err(|e| {
                        if n_inst > 1 {
                            e.context(format!("instance {inst}"))
                        } else {
                            e
                        }
                    });
                (i, r)
            }
        })
        .buffer_unordered(args.connect_concurrency)
        .collect()
        .await;
    let mut per_driver: Vec<Vec<Opened>> = (0..drivers).map(|_| Vec::new()).collect();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut sub_seqs = (u64::MAX, 0u64);
    for (i, r) in opened {
        match r {
            Ok(o) => {
                sub_seqs = (sub_seqs.0.min(o.1), sub_seqs.1.max(o.1));
                per_driver[i % drivers].push(o);
            }
            Err(e) => bump(&mut failures, format!("{e:#}")),
        }
    }
    if !failures.is_empty() {
        let n: u64 = failures.values().sum();
        let mut why: Vec<String> = failures.iter().map(|(e, c)| format!("{c} x {e}")).collect();
        why.truncate(5);
        bail!(
            "{n} of {} sockets could not be opened and subscribed: {}",
            args.sockets,
            why.join("; ")
        );
    }
    if sub_seqs.0 != sub_seqs.1 {
        eprintln!(
            "fanout: warning: the sockets were subscribed at different seqs ({}..{}) although the team was quiet",
            sub_seqs.0, sub_seqs.1
        );
    }
    let connect_secs = connect_start.elapsed().as_secs_f64();
    let connect_cpu = sum_all(cpu_between(&connect_cpu0, &cpu_of(pids)));
    if args.hold > 0.0 {
        eprintln!("fanout: holding the sockets idle for {} s", args.hold);
        tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    }
    let rss_connected = rss_of(pids);

    // Writers' connections, opened before the load: writer w on instance w mod instances.
    let mut clients = Vec::with_capacity(args.writers);
    for w in 0..args.writers {
        let t = &targets[w % n_inst];
        let addr: Arc<str> = t.target.addr.as_str().into();
        let mut c = Client::new(addr.clone());
        c.ready()
            .await
            .map_err(|e| anyhow!("opening connection to {addr}: {e} error"))?;
        clients.push(c);
    }

    // Drivers.
    let load = Arc::new(Load {
        base: Instant::now(),
        sent_ns: (0..args.events).map(|_| AtomicU64::new(0)).collect(),
        events: args.events,
        stamps: !args.no_arrival,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut progress = Vec::with_capacity(drivers);
    let mut driver_tasks = Vec::with_capacity(drivers);
    for socks in per_driver {
        let p = Arc::new(AtomicU64::new(0));
        progress.push(p.clone());
        // Outside tokio's cooperative budget: with it, once a poll's budget is spent every other
        // ready socket of the `SelectAll` is polled for nothing and re-woken, on each of the
        // following polls too, which made the reading cost grow with N². `drive` yields itself.
        driver_tasks.push(tokio::spawn(tokio::task::unconstrained(drive(
            args.server_kind,
            socks,
            load.clone(),
            p,
            stop_rx.clone(),
        ))));
    }
    // Let the drivers start polling their sockets before the first send.
    tokio::time::sleep(Duration::from_millis(50)).await;

    // Load.
    eprintln!(
        "fanout: creating {} tasks with {} writer(s){}",
        args.events,
        args.writers,
        args.rate
            .map_or(String::new(), |r| format!(" at {r} per second"))
    );
    let redis_before = match redis.as_mut() {
        Some(r) => Some(r.mark().await),
        None => None,
    };
    let gen_cpu0 = procfs::cpu_seconds(Proc::Current).unwrap_or(0.0);
    let srv_cpu0 = cpu_of(pids);
    let job = Arc::new(WriteJob {
        load: load.clone(),
        bearers: teams.iter().map(|t| t.owner_bearer.clone()).collect(),
        next: AtomicU64::new(0),
        rate: args.rate,
        window: args.window.map(|size| Window {
            size,
            sockets: args.sockets as u64,
            created: AtomicU64::new(0),
            delivered: progress.clone(),
            stall: Duration::from_secs_f64(args.timeout),
        }),
        start: Instant::now(),
        timeout: request_timeout,
    });
    let writer_tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(w, c)| {
            let t = &targets[w % n_inst];
            tokio::spawn(writer(
                job.clone(),
                t.target.clone(),
                t.task_uris.clone(),
                c,
            ))
        })
        .collect();
    let mut w = WriterOut {
        ok_per_team: vec![0; teams.len()],
        ..WriterOut::default()
    };
    let mut created_per_inst = vec![0u64; n_inst];
    for (k, t) in writer_tasks.into_iter().enumerate() {
        let o = t.await.context("writer panicked")?;
        created_per_inst[k % n_inst] += o.ok;
        w.latency.merge(&o.latency);
        w.ok += o.ok;
        for (team, n) in o.ok_per_team.iter().enumerate() {
            w.ok_per_team[team] += n;
        }
        for (k, v) in o.failures {
            *w.failures.entry(k).or_default() += v;
        }
        w.first_send = match (w.first_send, o.first_send) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        w.last_send = w.last_send.max(o.last_send);
        w.max_lag = w.max_lag.max(o.max_lag);
        w.reconnects += o.reconnects;
        w.window_wait += o.window_wait;
    }
    let first_send = w.first_send.unwrap_or(job.start);
    let last_send = w.last_send.unwrap_or(job.start);

    // Wait for the deliveries.
    // Socket i is in team i mod teams.
    let sockets_in_team = |k: usize| (args.sockets + teams.len() - 1 - k) / teams.len();
    let expected: u64 = (0..teams.len())
        .map(|k| sockets_in_team(k) as u64 * w.ok_per_team[k])
        .sum();
    let deadline = last_send + Duration::from_secs_f64(args.timeout);
    let mut timed_out = false;
    loop {
        let got: u64 = progress.iter().map(|p| p.load(Ordering::Relaxed)).sum();
        if got >= expected {
            break;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let gen_cpu = procfs::cpu_seconds(Proc::Current).unwrap_or(0.0) - gen_cpu0;
    let srv_cpu_each = cpu_between(&srv_cpu0, &cpu_of(pids));
    let srv_cpu = sum_all(srv_cpu_each.iter().copied());
    let rss_end = rss_of(pids);
    let redis_after = match redis.as_mut() {
        Some(r) => Some(r.mark().await),
        None => None,
    };
    let _ = stop_tx.send(true);

    let mut latency = LatencyHistogram::new();
    let mut arrival = LatencyHistogram::new();
    let mut unstamped = 0;
    let mut received = 0;
    let mut untitled = 0;
    let mut last_receipt: Option<Instant> = None;
    let (mut lost, mut duplicates, mut out_of_order, mut unexpected, mut complete) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut inst_lost = vec![0u64; n_inst];
    let mut inst_expected = vec![0u64; n_inst];
    let mut inst_complete = vec![0u64; n_inst];
    let mut closed = BTreeMap::new();
    let mut error_frames = BTreeMap::new();
    let mut other_frames = BTreeMap::new();
    for t in driver_tasks {
        let d = t.await.context("driver panicked")?;
        latency.merge(&d.latency);
        arrival.merge(&d.arrival);
        unstamped += d.unstamped;
        received += d.received;
        untitled += d.untitled;
        last_receipt = last_receipt.max(d.last_receipt);
        for s in &d.socks {
            let due = w.ok_per_team[s.team];
            let l = due.saturating_sub(s.distinct);
            lost += l;
            inst_lost[s.inst] += l;
            inst_expected[s.inst] += due;
            complete += u64::from(s.distinct >= due);
            inst_complete[s.inst] += u64::from(s.distinct >= due);
            duplicates += s.duplicates;
            out_of_order += s.out_of_order;
            unexpected += s.unexpected;
            if let Some(c) = &s.closed {
                bump(&mut closed, c.clone());
            }
        }
        for (k, v) in d.error_frames {
            *error_frames.entry(k).or_default() += v;
        }
        for (k, v) in d.other_frames {
            *other_frames.entry(k).or_default() += v;
        }
    }
    let end = last_receipt.unwrap_or(last_send).max(first_send);
    let window = end.duration_since(first_send).as_secs_f64();
    let mut write_failures = w.failures;
    if w.reconnects > 0 {
        write_failures.insert("reconnects".into(), w.reconnects);
    }
    let per_delivery = |cpu: Option<f64>, deliveries: u64| {
        cpu.filter(|_| deliveries > 0)
            .map(|s| s * 1e6 / deliveries as f64)
    };
    let instances: Vec<InstanceReport> = (0..n_inst.max(pids.len()))
        .map(|k| {
            let on_url = k < n_inst;
            let sockets = if on_url {
                (args.sockets + n_inst - 1 - k) / n_inst
            } else {
                0
            };
            let cpu = srv_cpu_each.get(k).copied().flatten();
            InstanceReport {
                url: args.urls.get(k).cloned(),
                pid: pids.get(k).copied(),
                sockets,
                writers: if on_url {
                    (args.writers + n_inst - 1 - k) / n_inst
                } else {
                    0
                },
                created: created_per_inst.get(k).copied().unwrap_or(0),
                lost: inst_lost.get(k).copied().unwrap_or(0),
                sockets_complete: inst_complete.get(k).copied().unwrap_or(0),
                cpu_secs: cpu,
                // Each instance's CPU per delivery made on its own sockets.
                cpu_us_per_delivery: per_delivery(cpu, inst_expected.get(k).copied().unwrap_or(0)),
                rss_baseline_kib: rss_baseline.get(k).copied().flatten().map(|r| r.0),
                rss_connected_kib: rss_connected.get(k).copied().flatten().map(|r| r.0),
                rss_end_kib: rss_end.get(k).copied().flatten().map(|r| r.0),
                peak_rss_kib: rss_end.get(k).copied().flatten().map(|r| r.1),
            }
        })
        .collect();
    let rss_baseline_sum = sum_all(rss_baseline.iter().map(|r| r.map(|r| r.0)));
    let rss_connected_sum = sum_all(rss_connected.iter().map(|r| r.map(|r| r.0)));
    let redis_report = match (&redis, &redis_before, &redis_after) {
        (Some(r), Some(b), Some(a)) => Some(r.report(b, a, w.ok)),
        _ => None,
    };
    Ok(FanoutReport {
        scenario: match (args.transport, args.events) {
            (Transport::Websocket, 0) => "ws_connect".into(),
            (Transport::Websocket, _) => "ws_fanout".into(),
            (Transport::Sse, 0) => "sse_connect".into(),
            (Transport::Sse, _) => "sse_fanout".into(),
        },
        server_kind: args.server_kind,
        transport: args.transport,
        label: args.label.clone(),
        url: args.urls[0].clone(),
        urls: args.urls.clone(),
        sockets: args.sockets,
        users: args.users,
        teams: args.teams,
        events: args.events,
        target_rate: args.rate,
        window: args.window,
        window_wait_secs: args.window.map(|_| w.window_wait.as_secs_f64()),
        writers: args.writers,
        threads,
        drivers,
        source_addrs: sources.len(),
        created: w.ok,
        write_failures,
        write_latency: w.latency.summary(),
        max_send_lag_ms: args.rate.map(|_| w.max_lag.as_secs_f64() * 1000.0),
        send_secs: last_send.duration_since(first_send).as_secs_f64(),
        deliveries_expected: expected,
        deliveries_received: received,
        lost,
        duplicates,
        out_of_order,
        unexpected,
        untitled,
        sockets_complete: complete,
        sockets_closed: closed,
        error_frames,
        other_frames,
        timed_out,
        window_secs: window,
        drain_ms: end.saturating_duration_since(last_send).as_secs_f64() * 1000.0,
        deliveries_per_sec: if window > 0.0 {
            received as f64 / window
        } else {
            0.0
        },
        latency: latency.summary(),
        arrival: (!args.no_arrival).then(|| arrival.summary()),
        unstamped,
        generator_cpu_secs: gen_cpu,
        server_cpu_secs: srv_cpu,
        server_cpu_us_per_delivery: per_delivery(srv_cpu, received),
        server_rss_baseline_kib: rss_baseline_sum,
        server_rss_connected_kib: rss_connected_sum,
        server_rss_per_socket_kib: rss_baseline_sum
            .zip(rss_connected_sum)
            .map(|(b, c)| (c as f64 - b as f64) / args.sockets as f64),
        server_rss_end_kib: sum_all(rss_end.iter().map(|r| r.map(|r| r.0))),
        server_peak_rss_kib: sum_all(rss_end.iter().map(|r| r.map(|r| r.1))),
        instances,
        redis: redis_report,
        setup_secs,
        connect_secs,
        connect_cpu_us_per_socket: connect_cpu.map(|c| c * 1e6 / args.sockets as f64),
        hold_secs: args.hold,
    })
}

impl FanoutReport {
    /// Anything that breaks "every socket sees every task.created exactly once".
    pub fn delivery_problems(&self) -> bool {
        self.lost > 0
            || self.duplicates > 0
            || self.out_of_order > 0
            || self.unexpected > 0
            || !self.sockets_closed.is_empty()
            || !self.error_frames.is_empty()
    }
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

pub fn print_human(r: &FanoutReport) {
    let rate = match (r.target_rate, r.window) {
        (Some(x), _) => format!("{x} events/s (open loop)"),
        (None, Some(w)) => format!(
            "max with a window of {w} (closed loop, writers waited {:.2} s)",
            r.window_wait_secs.unwrap_or(0.0)
        ),
        (None, None) => "max".to_string(),
    };
    println!(
        "{} {}  {} ({:?})",
        match r.transport {
            Transport::Websocket => "WebSocket",
            Transport::Sse => "SSE",
        },
        if r.events == 0 { "connect" } else { "fanout" },
        r.label.as_deref().unwrap_or(""),
        r.server_kind
    );
    if r.urls.len() > 1 {
        println!(
            "  servers           {} (setup through the first)",
            r.urls.join(", ")
        );
    } else {
        println!("  server            {}", r.url);
    }
    println!(
        "  sockets           {} over {} users and {} source address(es); {} generator thread(s), {} driver(s)",
        r.sockets, r.users, r.source_addrs, r.threads, r.drivers
    );
    println!(
        "  setup             {:.2} s users/team, {:.2} s sockets ({} µs server CPU per socket), held {} s",
        r.setup_secs,
        r.connect_secs,
        r.connect_cpu_us_per_socket
            .map_or("-".into(), |c| format!("{c:.0}")),
        r.hold_secs
    );
    println!(
        "  events            {} asked, {} created by {} writer(s) at {rate} in {:.2} s",
        r.events, r.created, r.writers, r.send_secs
    );
    if !r.write_failures.is_empty() {
        println!("  write failures    {}", counts(&r.write_failures));
    }
    println!("  write latency ms  {}", r.write_latency.one_line());
    if let Some(lag) = r.max_send_lag_ms {
        println!("  max send lag      {lag:.2} ms behind the timetable");
    }
    println!(
        "  deliveries        expected {}, received {}, lost {}, duplicates {}, out of order {}, unexpected {}",
        r.deliveries_expected,
        r.deliveries_received,
        r.lost,
        r.duplicates,
        r.out_of_order,
        r.unexpected
    );
    println!(
        "  sockets complete  {} of {}{}",
        r.sockets_complete,
        r.sockets,
        if r.timed_out { " (timed out)" } else { "" }
    );
    if !r.sockets_closed.is_empty() {
        println!("  sockets closed    {}", counts(&r.sockets_closed));
    }
    if !r.error_frames.is_empty() {
        println!("  error frames      {}", counts(&r.error_frames));
    }
    if !r.other_frames.is_empty() {
        println!("  other frames      {}", counts(&r.other_frames));
    }
    println!(
        "  throughput        {:.0} deliveries/s over {:.2} s (first send to last receipt; drain {:.0} ms after the last send)",
        r.deliveries_per_sec, r.window_secs, r.drain_ms
    );
    println!("  latency ms        {}", r.latency.one_line());
    if let Some(arrival) = &r.arrival {
        println!(
            "  arrival ms        {}{}",
            arrival.one_line(),
            if r.unstamped > 0 {
                format!(" ({} without a kernel stamp)", r.unstamped)
            } else {
                String::new()
            }
        );
    }
    let pct = |s: f64| {
        if r.window_secs > 0.0 {
            100.0 * s / r.window_secs
        } else {
            0.0
        }
    };
    println!(
        "  generator CPU     {:.2} s ({:.0}% of one core)",
        r.generator_cpu_secs,
        pct(r.generator_cpu_secs)
    );
    if let Some(s) = r.server_cpu_secs {
        println!(
            "  server CPU        {s:.2} s ({:.0}% of one core), {:.2} µs per delivery",
            pct(s),
            r.server_cpu_us_per_delivery.unwrap_or(0.0)
        );
    }
    if let (Some(b), Some(c)) = (r.server_rss_baseline_kib, r.server_rss_connected_kib) {
        println!(
            "  server RSS        {:.1} MiB before the sockets, {:.1} MiB with them: {:.1} KiB per socket",
            b as f64 / 1024.0,
            c as f64 / 1024.0,
            r.server_rss_per_socket_kib.unwrap_or(0.0)
        );
    }
    if let (Some(e), Some(p)) = (r.server_rss_end_kib, r.server_peak_rss_kib) {
        println!(
            "                    {:.1} MiB at the end (peak {:.1} MiB)",
            e as f64 / 1024.0,
            p as f64 / 1024.0
        );
    }
    if r.instances.len() > 1 {
        for (k, i) in r.instances.iter().enumerate() {
            let mib =
                |x: Option<u64>| x.map_or("-".into(), |x| format!("{:.1}", x as f64 / 1024.0));
            println!(
                "  instance {k}        {} pid {}: {} sockets ({} complete, {} lost), {} writer(s), {} created; CPU {} s ({} µs per delivery on its sockets); RSS MiB {} / {} / {} (peak {})",
                i.url.as_deref().unwrap_or("-"),
                i.pid.map_or("-".into(), |p| p.to_string()),
                i.sockets,
                i.sockets_complete,
                i.lost,
                i.writers,
                i.created,
                i.cpu_secs.map_or("-".into(), |c| format!("{c:.2}")),
                i.cpu_us_per_delivery
                    .map_or("-".into(), |c| format!("{c:.2}")),
                mib(i.rss_baseline_kib),
                mib(i.rss_connected_kib),
                mib(i.rss_end_kib),
                mib(i.peak_rss_kib),
            );
        }
    }
    if let Some(x) = &r.redis {
        let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
        let n = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
        println!(
            "  redis             {}: team: {} messages ({} per activity, {} bytes), user: {} ({} per activity, {} bytes); {} activity / {} presence payloads",
            x.addr,
            n(x.team_messages),
            f(x.team_messages_per_activity),
            n(x.team_bytes),
            n(x.user_messages),
            f(x.user_messages_per_activity),
            n(x.user_bytes),
            n(x.activity_messages),
            n(x.presence_messages),
        );
        if let Some(e) = &x.tap_error {
            println!("  redis tap failed  {e}");
        }
        println!(
            "  redis commands    {} per activity: {}",
            f(x.commands_per_activity),
            counts(&x.commands)
        );
        println!(
            "  redis CPU         {} s ({}; /proc: {} s), {} µs per activity",
            f(x.cpu_secs),
            x.cpu_source.as_deref().unwrap_or("-"),
            f(x.proc_cpu_secs),
            f(x.cpu_us_per_activity)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_activity_frames() {
        let s = Scanner::new();
        let frame = br#"{"type":"activity","activity":{"id":"x","v":1,"type":"task.created","teamId":"t","seq":42,"boardId":"b","data":{"task":{"id":"y","title":"b17","description":"","version":1}}}}"#;
        assert_eq!(
            s.scan(frame),
            Scan::Activity {
                seq: Some(42),
                title: Some(17)
            }
        );
        let real = br#"{"type":"activity","activity":{"id":"01a2","v":1,"type":"task.created","data":{"task":{"id":"01a3","title":"b3","description":"","version":1}},"teamId":"t","ts":"2026-11-26T03:00:07.772Z","seq":1,"boardId":"b","taskId":"01a3"}}"#;
        assert_eq!(
            s.scan(real),
            Scan::Activity {
                seq: Some(1),
                title: Some(3)
            }
        );
        let other_title =
            br#"{"type":"activity","activity":{"seq":7,"data":{"task":{"title":"b17x"}}}}"#;
        assert_eq!(
            s.scan(other_title),
            Scan::Activity {
                seq: Some(7),
                title: None
            }
        );
        assert_eq!(
            s.scan(br#"{"type":"subscribed","teamId":"t","seq":3}"#),
            Scan::Other
        );
        assert_eq!(
            s.scan(br#"{"type":"error","code":"slow_consumer"}"#),
            Scan::Other
        );
    }

    #[test]
    fn leading_numbers() {
        assert_eq!(leading_number(b"123,"), Some((123, 3)));
        assert_eq!(leading_number(b"x"), None);
        assert_eq!(leading_number(b"99999999999999999999999"), None);
    }

    #[test]
    fn classifies_other_frames() {
        assert_eq!(
            classify(r#"{"type":"error","code":"slow_consumer","message":"m"}"#),
            (true, "slow_consumer".to_string())
        );
        assert_eq!(classify(r#"{"type":"pong"}"#), (false, "pong".to_string()));
        assert_eq!(classify("nope"), (false, "invalid-json".to_string()));
    }
}
