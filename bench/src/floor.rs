//! Subcommand `floor`: a bare server that does only what the kernel has to do for a fanout.
//!
//! It speaks just enough of TaskForge's contract for the `fanout` scenario's traffic: WebSocket
//! upgrades on `/realtime` (answered with the `subscribed` frame in the same write as the 101),
//! and `POST /api/v1/teams/{teamId}/tasks`, which builds ONE text frame shaped exactly like
//! TaskForge's `task.created` activity and writes it to every subscribed socket, one `write()`
//! per socket. Plain threads and blocking sockets, no async runtime on the write path: what a run
//! against the floor costs is close to the cost of the syscalls and of loopback TCP themselves,
//! the figure against which the server's own figures are read.
//!
//! Deliberately left out: authentication, users, teams and storage (every upgrade joins the one
//! team, every POST to a team's tasks is accepted); reading client frames after the handshake
//! (the `subscribe` a client sends, pings and closes are never read); a per-socket queue (a full
//! socket blocks the broadcaster, up to a write timeout after which it is dropped); and any
//! concurrency on the broadcast: the subscribers' lock is held across the writes on purpose,
//! since one broadcaster at a time is all the floor has to measure, and it keeps the seqs of the
//! frames in the order they are written.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use memchr::memmem;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

#[derive(clap::Args, Debug, Clone)]
pub struct FloorArgs {
    /// Address to listen on (port 0: any free port; the chosen one is printed)
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Exit after this many seconds (SIGTERM or SIGINT end it earlier)
    #[arg(long, default_value_t = 3600)]
    pub max_secs: u64,
}

/// Largest request head read.
const HEAD_CAP: usize = 16 * 1024;
/// Largest request body accepted (413 beyond).
const BODY_CAP: usize = 64 * 1024;
/// Time a new connection has to send its request head, so that a slow client does not hold
/// the acceptor.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A subscriber whose socket stays full this long is dropped (the broadcaster waits meanwhile).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The subscribers and the counters, all behind one mutex.
#[derive(Default)]
struct Hub {
    seq: u64,
    sockets: Vec<TcpStream>,
    subscribed: u64,
    frames: u64,
    writes: u64,
    write_failures: u64,
}

/// A running floor: the one team, its actor and board, and the hub.
pub struct Floor {
    team_id: String,
    board_id: String,
    actor_id: String,
    hub: Mutex<Hub>,
}

impl Floor {
    fn lock(&self) -> MutexGuard<'_, Hub> {
        self.hub.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One line of counters, for the end of a run.
    pub fn summary(&self) -> String {
        let hub = self.lock();
        format!(
            "floor: subscribers {} ({} connected at exit), frames broadcast {}, socket writes {}, write failures {}",
            hub.subscribed,
            hub.sockets.len(),
            hub.frames,
            hub.writes,
            hub.write_failures
        )
    }

    /// Takes the next seq, builds the `task.created` frame of a task titled `title` (already
    /// JSON-escaped) and writes it to every subscriber; returns the seq.
    fn broadcast(&self, title: &str) -> u64 {
        let (id, task_id, ts) = (uuid(), uuid(), timestamp());
        let mut hub = self.lock();
        hub.seq += 1;
        let seq = hub.seq;
        let payload = format!(
            concat!(
                r#"{{"type":"activity","activity":{{"id":"{id}","v":1,"type":"task.created","#,
                r#""data":{{"task":{{"id":"{task}","teamId":"{team}","boardId":"{board}","#,
                r#""title":"{title}","description":"","status":"todo","priority":"medium","#,
                r#""assigneeUserId":null,"dueDate":null,"position":1024.0,"createdBy":"{actor}","#,
                r#""createdAt":"{ts}","updatedAt":"{ts}","version":1}}}},"teamId":"{team}","#,
                r#""actorUserId":"{actor}","ts":"{ts}","seq":{seq},"boardId":"{board}","#,
                r#""taskId":"{task}"}}}}"#
            ),
            id = id,
            task = task_id,
            team = self.team_id,
            board = self.board_id,
            title = title,
            actor = self.actor_id,
            ts = ts,
            seq = seq,
        );
        let mut frame = Vec::with_capacity(payload.len() + 10);
        push_text_frame(&mut frame, payload.as_bytes());
        let Hub {
            sockets,
            frames,
            writes,
            write_failures,
            ..
        } = &mut *hub;
        *frames += 1;
        sockets.retain_mut(|s| {
            *writes += 1;
            let ok = s.write_all(&frame).is_ok();
            *write_failures += u64::from(!ok);
            ok
        });
        seq
    }
}

/// Binds `listen` and starts the acceptor thread; returns the bound address and the floor.
pub fn start(listen: SocketAddr) -> Result<(SocketAddr, Arc<Floor>)> {
    let listener = TcpListener::bind(listen).with_context(|| format!("cannot bind {listen}"))?;
    let addr = listener.local_addr()?;
    let floor = Arc::new(Floor {
        team_id: uuid(),
        board_id: uuid(),
        actor_id: uuid(),
        hub: Mutex::new(Hub::default()),
    });
    let acceptor = floor.clone();
    thread::Builder::new()
        .name("floor-accept".into())
        .spawn(move || accept_loop(listener, &acceptor))?;
    Ok((addr, floor))
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// `taskforge-bench floor`: serves until SIGTERM / SIGINT or `--max-secs`, then prints the
/// counters on stderr.
pub fn run(args: &FloorArgs) -> Result<()> {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
    }
    let (addr, floor) = start(args.listen)?;
    let mut out = io::stdout().lock();
    writeln!(out, "floor listening on http://{addr}")?;
    out.flush()?;
    drop(out);
    let deadline = Instant::now().checked_add(Duration::from_secs(args.max_secs));
    while !STOP.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        thread::sleep(Duration::from_millis(100));
    }
    eprintln!("{}", floor.summary());
    Ok(())
}

fn accept_loop(listener: TcpListener, floor: &Arc<Floor>) {
    for conn in listener.incoming() {
        match conn {
            // A client that fails its handshake is only dropped.
            Ok(stream) => {
                let _ = handshake(stream, floor);
            }
            // Out of descriptors and the like: let some connections go before trying again.
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// What the first request of a connection asks for.
enum Route {
    Subscribe(String),
    Healthz,
    Http,
    BadUpgrade,
    NotFound,
}

/// Reads the first request head of a new connection (within `HANDSHAKE_TIMEOUT`) and answers it:
/// subscribes WebSocket upgrades, hands POSTs to a thread of their own.
fn handshake(stream: TcpStream, floor: &Arc<Floor>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::new();
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let Some(head_len) = read_head(&stream, &mut buf, Some(deadline))? else {
        return Ok(());
    };
    let route = match parse_head(&buf[..head_len]) {
        None => Route::BadUpgrade,
        Some(req) if req.method == "POST" => Route::Http,
        Some(req) if req.method != "GET" => Route::NotFound,
        Some(req) => match req.path() {
            "/healthz" => Route::Healthz,
            "/realtime" => match req.header("sec-websocket-key") {
                Some(key)
                    if req
                        .header("upgrade")
                        .is_some_and(|u| u.eq_ignore_ascii_case("websocket")) =>
                {
                    Route::Subscribe(key.to_owned())
                }
                _ => Route::BadUpgrade,
            },
            _ => Route::NotFound,
        },
    };
    match route {
        Route::Subscribe(key) => subscribe(stream, &key, floor),
        Route::Healthz => respond(&stream, "200 OK", "ok", true),
        Route::BadUpgrade => respond(&stream, "400 Bad Request", "bad request", true),
        Route::NotFound => respond(&stream, "404 Not Found", "not found", true),
        Route::Http => {
            stream.set_read_timeout(None)?;
            let floor = floor.clone();
            thread::Builder::new()
                .name("floor-http".into())
                .spawn(move || {
                    let _ = serve_http(stream, buf, &floor);
                })?;
            Ok(())
        }
    }
}

/// Answers the upgrade with the 101 and the `subscribed` frame in one write, and adds the socket
/// to the subscribers; both under the lock, so that no broadcast falls between the seq it reports
/// and the socket's first activity.
fn subscribe(stream: TcpStream, key: &str, floor: &Floor) -> io::Result<()> {
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    )
    .into_bytes();
    let mut hub = floor.lock();
    let subscribed = format!(
        r#"{{"type":"subscribed","teamId":"{}","seq":{}}}"#,
        floor.team_id, hub.seq
    );
    push_text_frame(&mut out, subscribed.as_bytes());
    (&stream).write_all(&out)?;
    hub.sockets.push(stream);
    hub.subscribed += 1;
    Ok(())
}

/// Serves keep-alive HTTP/1.1 requests on one connection; `buf` holds what was read of it already
/// (at least the first request head).
fn serve_http(stream: TcpStream, mut buf: Vec<u8>, floor: &Floor) -> io::Result<()> {
    loop {
        let Some(head_len) = read_head(&stream, &mut buf, None)? else {
            return Ok(());
        };
        let Some(req) = parse_head(&buf[..head_len]) else {
            return refuse(stream, "400 Bad Request", "bad request");
        };
        let close = req
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"))
            || req.version != "HTTP/1.1";
        if req.header("transfer-encoding").is_some() {
            return refuse(stream, "411 Length Required", "length required");
        }
        let length = match req.header("content-length").map(str::parse::<usize>) {
            None => 0,
            Some(Ok(n)) if n <= BODY_CAP => n,
            Some(Ok(_)) => return refuse(stream, "413 Payload Too Large", "too large"),
            Some(Err(_)) => return refuse(stream, "400 Bad Request", "bad length"),
        };
        let is_create = req.method == "POST" && is_tasks_path(req.path());
        let is_health = req.method == "GET" && req.path() == "/healthz";
        let end = head_len + length;
        while buf.len() < end {
            if read_more(&stream, &mut buf)? == 0 {
                return Ok(());
            }
        }
        let body = &buf[head_len..end];
        let (status, answer) = match (is_create, is_health) {
            (true, _) => match scan_title(body) {
                Some(title) => (
                    "201 Created",
                    format!(r#"{{"seq":{}}}"#, floor.broadcast(title)),
                ),
                None => ("400 Bad Request", r#"{"error":"no title"}"#.to_owned()),
            },
            (false, true) => ("200 OK", "ok".to_owned()),
            (false, false) => ("404 Not Found", "not found".to_owned()),
        };
        respond(&stream, status, &answer, close)?;
        if close {
            return linger_close(stream);
        }
        buf.drain(..end);
    }
}

/// `/api/v1/teams/{anything}/tasks`
fn is_tasks_path(path: &str) -> bool {
    path.strip_prefix("/api/v1/teams/")
        .and_then(|p| p.strip_suffix("/tasks"))
        .is_some_and(|team| !team.is_empty() && !team.contains('/'))
}

/// Closes after an answer that leaves part of the request unread: shuts the writing side, then
/// reads (briefly) what the client still sends, so that the answer is not lost to a reset.
fn linger_close(stream: TcpStream) -> io::Result<()> {
    stream.shutdown(Shutdown::Write)?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut sink = [0u8; 16 * 1024];
    let mut left = 4 * BODY_CAP;
    while left > 0 {
        match (&stream).read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
    Ok(())
}

/// Answers with a closing answer, then closes (see `linger_close`).
fn refuse(stream: TcpStream, status: &str, body: &str) -> io::Result<()> {
    respond(&stream, status, body, true)?;
    linger_close(stream)
}

/// Writes one answer; the body is JSON if it starts with `{`, plain text otherwise.
fn respond(mut stream: &TcpStream, status: &str, body: &str, close: bool) -> io::Result<()> {
    let content_type = if body.starts_with('{') {
        "application/json"
    } else {
        "text/plain"
    };
    let connection = if close { "connection: close\r\n" } else { "" };
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n{connection}\r\n{body}",
        body.len()
    );
    stream.write_all(answer.as_bytes())
}

/// Reads into `buf` until it holds a whole request head; returns the head's length (with its
/// blank line), or `None` if the connection ended cleanly before a new request.
fn read_head(
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    deadline: Option<Instant>,
) -> io::Result<Option<usize>> {
    loop {
        if let Some(i) = memmem::find(buf, b"\r\n\r\n") {
            return Ok(Some(i + 4));
        }
        if buf.len() >= HEAD_CAP {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            stream.set_read_timeout(Some(left))?;
        }
        if read_more(stream, buf)? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
    }
}

fn read_more(mut stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk)?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// A request head: request line and headers, borrowed from the read buffer.
struct Head<'a> {
    method: &'a str,
    target: &'a str,
    version: &'a str,
    headers: Vec<(&'a str, &'a str)>,
}

impl Head<'_> {
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|&(_, v)| v)
    }
}

fn parse_head(head: &[u8]) -> Option<Head<'_>> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
    let mut parts = lines.next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let headers = lines
        .map(|l| l.split_once(':').map(|(n, v)| (n, v.trim())))
        .collect::<Option<Vec<_>>>()?;
    Some(Head {
        method,
        target,
        version,
        headers,
    })
}

/// The `title` string of a JSON body as serde_json writes it (`"title":"…"`), still escaped,
/// so that it can be pasted into the frame as is. `None` if missing or not a valid JSON string.
fn scan_title(body: &[u8]) -> Option<&str> {
    let start = memmem::find(body, br#""title":""#)? + br#""title":""#.len();
    let rest = &body[start..];
    let mut i = 0;
    while let Some(&c) = rest.get(i) {
        match c {
            b'"' => return std::str::from_utf8(&rest[..i]).ok(),
            b'\\' => match rest.get(i + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                b'u' if rest.get(i + 2..i + 6)?.iter().all(u8::is_ascii_hexdigit) => i += 6,
                _ => return None,
            },
            0..0x20 => return None,
            _ => i += 1,
        }
    }
    None
}

/// Appends a server (unmasked) final text frame.
fn push_text_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.push(0x81);
    match payload.len() {
        n @ 0..126 => out.push(n as u8),
        n @ 126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// splitmix64 over a shared counter: unique enough for ids of a benchmark run.
fn random_u64() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    static SEEDED: std::sync::Once = std::sync::Once::new();
    SEEDED.call_once(|| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let seed = (now.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32);
        STATE.store(seed, Ordering::Relaxed);
    });
    let mut z = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A UUIDv7 string (Unix milliseconds, then random bits), as TaskForge's ids are.
fn uuid() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let rand = (u128::from(random_u64()) << 64) | u128::from(random_u64());
    let mut x = (ms << 80) | (rand & ((1 << 80) - 1));
    x = (x & !(0xF << 76)) | (0x7 << 76);
    x = (x & !(0x3 << 62)) | (0x2 << 62);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        x >> 96,
        (x >> 80) & 0xFFFF,
        (x >> 64) & 0xFFFF,
        (x >> 48) & 0xFFFF,
        x & 0xFFFF_FFFF_FFFF
    )
}

/// The current UTC time as TaskForge writes timestamps: `2026-11-26T12:00:00.123Z`.
fn timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format_timestamp(now.as_secs() as i64, now.subsec_millis())
}

fn format_timestamp(secs: i64, millis: u32) -> String {
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (proleptic Gregorian; H. Hinnant's algorithm).
    let z = days + 719_468;
    let (era, doe) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use tokio_tungstenite::tungstenite::{self, Message};

    type Ws = tungstenite::WebSocket<TcpStream>;

    fn connect_ws(addr: SocketAddr) -> (Ws, Value) {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let (mut ws, resp) =
            tungstenite::client(format!("ws://{addr}/realtime?token=t"), stream).unwrap();
        assert_eq!(resp.status(), 101);
        ws.send(Message::text(r#"{"type":"subscribe","teamId":"x"}"#))
            .unwrap();
        let first = next_json(&mut ws);
        (ws, first)
    }

    fn next_json(ws: &mut Ws) -> Value {
        match ws.read().unwrap() {
            Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
            other => panic!("not a text frame: {other:?}"),
        }
    }

    /// Sends one request on `stream` and reads its answer: status line and body.
    fn exchange(stream: &mut TcpStream, request: &[u8]) -> (String, String) {
        stream.write_all(request).unwrap();
        let mut buf = Vec::new();
        let head_len = read_head(stream, &mut buf, None).unwrap().unwrap();
        let head = std::str::from_utf8(&buf[..head_len]).unwrap().to_owned();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().strip_prefix("HTTP/1.1 ").unwrap();
        let length: usize = lines
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        while buf.len() < head_len + length {
            assert!(read_more(stream, &mut buf).unwrap() > 0, "answer cut");
        }
        let body = String::from_utf8(buf[head_len..head_len + length].to_vec()).unwrap();
        (status.to_owned(), body)
    }

    fn post_task(title: &str) -> Vec<u8> {
        let body = format!(r#"{{"title":"{title}","description":"d"}}"#);
        format!(
            "POST /api/v1/teams/t1/tasks HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn floor_broadcasts_activities_to_every_subscriber() {
        let (addr, floor) = start("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut clients = [connect_ws(addr), connect_ws(addr)];
        for (_, subscribed) in &clients {
            assert_eq!(subscribed["type"], "subscribed");
            assert_eq!(subscribed["seq"], 0);
            assert_eq!(subscribed["teamId"], floor.team_id.as_str());
        }
        let mut http = TcpStream::connect(addr).unwrap();
        http.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for (i, title) in ["b1", "b2"].iter().enumerate() {
            let (status, body) = exchange(&mut http, &post_task(title));
            assert_eq!(status, "201 Created");
            assert_eq!(body, format!(r#"{{"seq":{}}}"#, i + 1));
        }
        for (ws, _) in &mut clients {
            for (seq, title) in [(1, "b1"), (2, "b2")] {
                let frame = next_json(ws);
                assert_eq!(frame["type"], "activity");
                let activity = &frame["activity"];
                assert_eq!(activity["type"], "task.created");
                assert_eq!(activity["seq"], seq);
                assert_eq!(activity["teamId"], floor.team_id.as_str());
                assert_eq!(activity["data"]["task"]["title"], title);
                assert_eq!(activity["data"]["task"]["id"], activity["taskId"]);
                assert_eq!(activity["data"]["task"]["position"], 1024.0);
            }
        }
        let (status, body) = exchange(
            &mut http,
            b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        );
        assert_eq!((status.as_str(), body.as_str()), ("200 OK", "ok"));
        let summary = floor.summary();
        assert!(
            summary.contains("subscribers 2 ") && summary.contains("socket writes 4,"),
            "{summary}"
        );
    }

    #[test]
    fn floor_refuses_oversized_bodies() {
        let (addr, _floor) = start("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut http = TcpStream::connect(addr).unwrap();
        http.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let title = "x".repeat(BODY_CAP);
        let (status, _) = exchange(&mut http, &post_task(&title));
        assert_eq!(status, "413 Payload Too Large");
    }

    #[test]
    fn frames_titles_and_timestamps() {
        let mut f = Vec::new();
        push_text_frame(&mut f, b"hi");
        assert_eq!(f, b"\x81\x02hi");
        f.clear();
        push_text_frame(&mut f, &[b'a'; 300]);
        assert_eq!(&f[..4], &[0x81, 126, 1, 44]);
        f.clear();
        push_text_frame(&mut f, &vec![b'a'; 70_000]);
        assert_eq!(&f[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);

        assert_eq!(scan_title(br#"{"title":"b12"}"#), Some("b12"));
        assert_eq!(
            scan_title(br#"{"title":"a\"b\u00e9"}"#),
            Some(r#"a\"b\u00e9"#)
        );
        assert_eq!(scan_title(br#"{"title":"a\q"}"#), None);
        assert_eq!(scan_title(b"{\"title\":\"a\nb\"}"), None);
        assert_eq!(scan_title(br#"{"title":"open"#), None);
        assert_eq!(scan_title(b"{\"title\":\"\xff\"}"), None);

        assert_eq!(format_timestamp(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_timestamp(1_795_694_400, 123),
            "2026-11-26T12:00:00.123Z"
        );
        assert_eq!(
            format_timestamp(951_868_799, 999),
            "2000-02-29T23:59:59.999Z"
        );
        assert_eq!(format_timestamp(-86_400, 0), "1969-12-31T00:00:00.000Z");

        let id = uuid();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "7");
        assert_ne!(uuid(), id);
    }
}
