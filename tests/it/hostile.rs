//! Hostile clients, over real HTTP and WebSockets: replays that stall must not hold the
//! database or outlive the write timeout, token expiry runs during a replay, replies count
//! against a socket's queue, errors do not echo input, huge credentials are refused before any
//! work, guesses from other addresses do not lock an owner out, slow request heads are closed,
//! member look-ups by email are rate-limited, and a shutdown is bounded by its drain time.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use uuid::Uuid;

both_backends!(slow: stalled_replays_do_not_hold_the_database);
both_backends!(
    huge_credentials_are_refused,
    guessing_from_other_addresses_does_not_lock_the_owner_out,
    adding_members_by_email_is_rate_limited,
);

const T: Duration = Duration::from_secs(10);
/// A log no socket's buffers can hold: 1,500 activities of about 8 KiB, 12 MB in all (the
/// kernel lets a loopback sender queue up to 4 MB whatever the receiver's window).
const BIG_LOG_TASKS: usize = 1_500;
const BIG_DESCRIPTION: usize = 8 * 1024;
const CUTS: &str = "taskforge_slow_consumer_disconnects_total";

/// Creates `n` tasks with descriptions of `chars` characters in `team`, from several concurrent
/// writers; returns the team's seq afterwards (the size of its log).
async fn seed_log(api: &Api, token: &str, team: Uuid, n: usize, chars: usize) -> i64 {
    const WRITERS: usize = 4;
    let next = Arc::new(AtomicUsize::new(0));
    let description: Arc<str> = "d".repeat(chars).into();
    let started = Instant::now();
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let (api, token, next, description) = (
            api.clone(),
            token.to_owned(),
            next.clone(),
            description.clone(),
        );
        writers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                api.create_task(
                    &token,
                    team,
                    json!({"title": format!("seed {i}"), "description": &*description}),
                )
                .await;
            }
        }));
    }
    for w in writers {
        w.await.expect("a seeding writer");
    }
    let seq = api.team_seq(token, team).await;
    eprintln!(
        "seeded {n} tasks of {chars} characters in {:?}; the log holds {seq} activities",
        started.elapsed()
    );
    seq
}

/// Polls `/metrics` (bounded by `timeout`) until the slow-consumer cuts reach `at_least`;
/// returns the last value seen.
async fn wait_for_cuts(api: &Api, at_least: f64, timeout: Duration) -> f64 {
    let deadline = Instant::now() + timeout;
    loop {
        let cuts = api.metrics().await.get(CUTS, &[]);
        if cuts >= at_least || Instant::now() >= deadline {
            return cuts;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn subscribe_since_0(team: Uuid) -> Value {
    json!({"type": "subscribe", "teamId": team, "since": 0})
}

// ---------------------------------------------------------------------------------------------
// 1. Stalled replays
// ---------------------------------------------------------------------------------------------

/// Twelve sockets replay a log far larger than their buffers and never read. Other users'
/// requests are served meanwhile (a replay waiting on its socket holds no database connection),
/// and the write timeout cuts every stalled socket.
async fn stalled_replays_do_not_hold_the_database(b: Backend) {
    const SOCKETS: usize = 12;
    let srv = TestServer::process_with(b, &[("TASKFORGE_WS_WRITE_TIMEOUT", "2s")]).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let team = api.create_team(owner.token(), "Big log").await;
    let member = api
        .member(owner.token(), team.id, "Stalled", "member")
        .await;
    let other = api.new_user("Other").await;
    seed_log(&api, owner.token(), team.id, BIG_LOG_TASKS, BIG_DESCRIPTION).await;

    let mut stalled = Vec::new();
    for i in 0..SOCKETS {
        let mut ws = srv
            .ws_small_buffer(member.token(), 4096)
            .await
            .labeled(&format!("stalled {i}"));
        ws.send_json(subscribe_since_0(team.id)).await;
        stalled.push(ws);
    }
    // A pause for the replays to start and fill what the sockets can hold (not an assertion).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cuts_before = api.metrics().await.get(CUTS, &[]);

    // Requests that need the database, with a client that gives up instead of waiting for ever.
    let quick = srv.client_with_timeout(T);
    let tasks_path = format!("/api/v1/teams/{}/tasks", team.id);
    let (login, list, created) = tokio::join!(
        quick.login(&other.user.email, PASSWORD),
        quick.get(&tasks_path, owner.token()),
        quick.post(
            &tasks_path,
            owner.token(),
            json!({"title": "created while the replays are stalled"})
        ),
    );
    login.ok(200);
    list.ok(200);
    created.ok(201);
    eprintln!("slow-consumer cuts when the requests started: {cuts_before}");

    let cuts = wait_for_cuts(&api, SOCKETS as f64, Duration::from_secs(60)).await;
    assert_eq!(
        cuts, SOCKETS as f64,
        "the {SOCKETS} stalled sockets were not all cut by the 2 s write timeout within 60 s"
    );
    // And each of them ends once what the kernel buffered is read.
    for ws in &mut stalled {
        let (_, end) = ws.expect_end(Duration::from_secs(30)).await;
        assert!(
            matches!(end, Frame::Close(4008, _) | Frame::Dropped(_)),
            "{}: {end:?}",
            ws.label
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Token expiry during a replay
// ---------------------------------------------------------------------------------------------

/// A replay read slowly lasts much longer than the access token: the token still expires on
/// time (`token_expired`, close 4001), before the replay is complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow set: cargo test -- --ignored"]
async fn token_expiry_is_enforced_during_a_replay() {
    let srv =
        TestServer::start_with(Backend::Sqlite, &[("TASKFORGE_ACCESS_TOKEN_TTL", "2s")]).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    // Seeding takes longer than the TTL: it uses a token of the same user that lives an hour.
    let mut claims = claims_of(owner.token());
    claims["exp"] = json!(now() + 3600);
    let seeder = sign(jsonwebtoken::Algorithm::HS256, &claims, &srv.jwt_secret);
    let team = api.create_team(&seeder, "Big log").await;
    let last = seed_log(&api, &seeder, team.id, BIG_LOG_TASKS, BIG_DESCRIPTION).await;

    // A fresh two-second token for the socket.
    let session: AuthResponse = api.login(&owner.user.email, PASSWORD).await.parse(200);
    let mut ws = srv
        .ws_small_buffer(session.token(), 4096)
        .await
        .labeled("slow reader");
    ws.send_json(subscribe_since_0(team.id)).await;

    // A few milliseconds per activity: the whole replay would take 5 s or more.
    let started = Instant::now();
    let mut seqs: Vec<i64> = Vec::new();
    let mut others: Vec<Value> = Vec::new();
    let end = loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the socket is still open after 120 s and {} activities",
            seqs.len()
        );
        match ws.recv_timeout(T).await {
            Some(Frame::Json(v)) if is_logged_activity(&v) => {
                seqs.push(v["activity"]["seq"].as_i64().expect("a seq"));
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            Some(Frame::Json(v)) => others.push(v),
            Some(f) if f.is_end() => break f,
            Some(_) => {}
            None => panic!(
                "no frame within {T:?} after {} activities; other frames: {others:?}",
                seqs.len()
            ),
        }
    };
    eprintln!(
        "{} of {last} activities replayed, then {others:?} and {end:?} after {:?}",
        seqs.len(),
        started.elapsed()
    );
    assert!(
        matches!(end, Frame::Close(4001, _)),
        "expected close 4001 after token_expired; got {end:?} after {} activities; other \
         frames: {others:?}",
        seqs.len()
    );
    assert!(
        others
            .iter()
            .any(|f| f["type"] == "error" && f["code"] == "token_expired"),
        "no token_expired error before the close: {others:?}"
    );
    assert!(
        !seqs.is_empty(),
        "the token expired before the replay began: nothing shows it ran during one"
    );
    assert!(
        (seqs.len() as i64) < last,
        "all {last} activities were replayed before the token expired: the expiry waited for \
         the replay (other frames: {others:?})"
    );
    assert!(
        !others.iter().any(|f| f["type"] == "subscribed"),
        "the subscribe completed: {others:?}"
    );
    let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
    assert_eq!(
        seqs, expected,
        "the replayed part is the log's prefix, in order"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Replies count against the socket's queue
// ---------------------------------------------------------------------------------------------

/// A socket that sends invalid messages (each answered by an `error`) within the rate limit and
/// never reads is cut as a slow consumer, and what was queued for it is dropped.
///
/// A loopback sender's kernel queues up to 4 MB whatever the reader's window, and an error reply
/// is about 250 bytes: the rate limit is raised so that a client within it can make the replies
/// outgrow the kernel's buffers and the 64 KiB queue in seconds, not minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_count_against_the_socket_queue() {
    let srv = TestServer::process_with(
        Backend::Sqlite,
        &[
            ("TASKFORGE_WS_QUEUE_BYTES", "65536"),
            ("TASKFORGE_WS_WRITE_TIMEOUT", "2s"),
            ("TASKFORGE_WS_RATE", "2000"),
            ("TASKFORGE_WS_BURST", "2000"),
        ],
    )
    .await;
    let api = srv.client();
    let u = api.new_user("Sender").await;
    let mut ws = srv.ws_small_buffer(u.token(), 4096).await.labeled("sender");
    // An unknown type: answered by a bad_request error that quotes (a prefix of) it.
    let bad = json!({"type": "x".repeat(150)}).to_string();
    let started = Instant::now();
    let mut sent = 0usize;
    let mut send_failed = false;
    // 1,000 messages per half second at most (within 2,000 a second), 60,000 at most.
    'sending: for _ in 0..60 {
        let round = Instant::now();
        for _ in 0..1_000 {
            if !ws.try_send_text(&bad).await {
                send_failed = true;
                break 'sending;
            }
            sent += 1;
        }
        if api.metrics().await.get(CUTS, &[]) >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500).saturating_sub(round.elapsed())).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cuts = wait_for_cuts(&api, 1.0, Duration::from_secs(15)).await;
    eprintln!(
        "sent {sent} invalid messages in {:?} (a send failed: {send_failed}); cuts: {cuts}",
        started.elapsed()
    );
    assert_eq!(
        cuts, 1.0,
        "a socket that sent {sent} messages without reading their replies was not cut"
    );
    let (seen, end) = ws.expect_end(Duration::from_secs(60)).await;
    eprintln!("then read {} frames and {end:?}", seen.len());
    assert!(
        matches!(end, Frame::Close(4008, _) | Frame::Dropped(_)),
        "{end:?}"
    );
    assert!(
        seen.iter().all(|f| f["type"] == "error"),
        "only errors were sent to it: {:?}",
        seen.iter().find(|f| f["type"] != "error")
    );
    assert!(
        seen.len() < sent,
        "all {sent} replies were delivered: none was dropped with the cut"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Error messages do not echo input
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_messages_do_not_echo_input() {
    let srv = TestServer::start(Backend::Sqlite).await;
    let api = srv.client();
    let u = api.new_user("Echo").await;
    let mut ws = srv.ws(u.token()).await;
    let long = "x".repeat(60_000);
    for text in [
        format!(r#"{{"type":"{long}"}}"#),
        format!(r#"{{"type":"subscribe","teamId":"{long}"}}"#),
    ] {
        ws.send_text(&text).await;
        let f = ws.next_json().await;
        assert_eq!(f["type"], "error", "{}", short(&f));
        assert_eq!(f["code"], "bad_request", "{}", short(&f));
        let message = f["message"].as_str().expect("a message");
        let n = message.chars().count();
        assert!(
            n <= 200,
            "the error message has {n} characters: {}…",
            message.chars().take(200).collect::<String>()
        );
        // The socket stays usable.
        ws.expect_pong().await;
    }
}

/// A frame as text, cut to 300 characters for a failure message.
fn short(v: &Value) -> String {
    v.to_string().chars().take(300).collect()
}

// ---------------------------------------------------------------------------------------------
// 5. Huge credentials
// ---------------------------------------------------------------------------------------------

async fn huge_credentials_are_refused(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let u = api.new_user("Real").await;
    let huge_email = format!("{}@example.com", "a".repeat(900_000));
    api.login(&huge_email, PASSWORD).await.invalid("email");
    api.login(&u.user.email, &"p".repeat(900_000))
        .await
        .invalid("password");
    api.login(&u.user.email, PASSWORD).await.ok(200);
}

// ---------------------------------------------------------------------------------------------
// 6. Guessing from other addresses
// ---------------------------------------------------------------------------------------------

async fn guessing_from_other_addresses_does_not_lock_the_owner_out(b: Backend) {
    // The defaults, which the harness turns off.
    let srv = TestServer::start_with(
        b,
        &[
            ("TASKFORGE_AUTH_LIMIT_PER_IP", "60"),
            ("TASKFORGE_AUTH_LIMIT_PER_EMAIL", "10"),
        ],
    )
    .await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let email = owner.user.email.clone();
    let mut tally = Vec::new();
    for last in 2..=6u8 {
        let from = IpAddr::from([127, 0, 0, last]);
        let guesser = srv.client_from(from, Duration::from_secs(30));
        let (mut wrong, mut limited) = (0, 0);
        for k in 0..30 {
            let r = guesser.login(&email, &format!("wrong guess {k}")).await;
            match r.status {
                401 => {
                    r.problem(401, "unauthorized");
                    wrong += 1;
                }
                429 => {
                    r.retry_after();
                    limited += 1;
                }
                s => panic!("guess {k} from {from}: unexpected {s}: {}", r.text),
            }
        }
        tally.push(format!("{from}: {wrong} x 401, {limited} x 429"));
        assert!(
            limited > 0,
            "30 guesses for one email from {from}: none was limited ({tally:?})"
        );
    }
    let r = api.login(&email, PASSWORD).await;
    assert_eq!(
        r.status, 200,
        "the owner's own log-in after guesses from other addresses ({tally:?}): {}",
        r.text
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Slow request heads
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_closed() {
    let srv = TestServer::start_with(Backend::Sqlite, &[("TASKFORGE_HEADER_TIMEOUT", "1s")]).await;
    let mut half = srv.tcp().await;
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("half a request head sent");
    let mut silent = srv.tcp().await;
    let wait = Duration::from_secs(15);
    let (half_end, silent_end) = tokio::join!(
        read_until_end(&mut half, wait),
        read_until_end(&mut silent, wait)
    );
    eprintln!("half a head: {half_end:?}; nothing sent: {silent_end:?}");
    assert!(
        !matches!(half_end, RawEnd::Open(_)),
        "a connection with half a request head is still open after {wait:?}"
    );
    assert!(
        !matches!(silent_end, RawEnd::Open(_)),
        "a connection that sent nothing is still open after {wait:?}"
    );
    // A whole request is still answered.
    let mut whole = srv.tcp().await;
    whole
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("request sent");
    match read_until_end(&mut whole, T).await {
        RawEnd::Closed(bytes) => assert!(
            bytes.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&bytes)
        ),
        other => panic!("GET /healthz: {other:?}"),
    }
    srv.client()
        .send("GET", "/healthz", None, None, &[])
        .await
        .ok(200);
}

// ---------------------------------------------------------------------------------------------
// 8. Adding members by email
// ---------------------------------------------------------------------------------------------

async fn adding_members_by_email_is_rate_limited(b: Backend) {
    let srv = TestServer::start_with(b, &[("TASKFORGE_MEMBER_EMAIL_LIMIT_PER_USER", "3")]).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let team = api.create_team(owner.token(), "Team").await;
    let mut users = Vec::new();
    for i in 0..5 {
        users.push(api.new_user(&format!("User{i}")).await);
    }
    let path = format!("/api/v1/teams/{}/members", team.id);
    for u in &users[..3] {
        api.add_member(owner.token(), team.id, &u.user.email, "member")
            .await;
    }
    let r = api
        .post(
            &path,
            owner.token(),
            json!({"email": users[3].user.email, "role": "member"}),
        )
        .await;
    assert_ne!(
        r.status, 201,
        "a fourth member added by email within a minute"
    );
    r.retry_after();
    // By id, nothing is revealed: not limited (and the refused one was not added).
    for u in &users[3..] {
        api.post(
            &path,
            owner.token(),
            json!({"userId": u.id(), "role": "member"}),
        )
        .await
        .ok(201);
    }
}

// ---------------------------------------------------------------------------------------------
// 9. Shutdown
// ---------------------------------------------------------------------------------------------

/// Reads an HTTP response head (and nothing past it) from a raw connection.
async fn read_head(tcp: &mut TcpStream, timeout: Duration) -> (String, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < 1 << 20 {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = got.split_off(i + 4);
            return (String::from_utf8_lossy(&got).into_owned(), rest);
        }
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => panic!(
                "no response head within {timeout:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0)) => panic!(
                "the connection closed before a response head; got {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => panic!(
                "the connection failed ({e}) before a response head; got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    panic!("a response head over 1 MiB");
}

/// The close code of the first close frame in `bytes` (unmasked server frames), if any.
fn close_code(bytes: &[u8]) -> Option<u16> {
    let mut at = 0;
    while at + 2 <= bytes.len() {
        let opcode = bytes[at] & 0x0f;
        let (len, header) = match bytes[at + 1] & 0x7f {
            126 if at + 4 <= bytes.len() => (
                usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]])),
                4,
            ),
            127 if at + 10 <= bytes.len() => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&bytes[at + 2..at + 10]);
                (usize::try_from(u64::from_be_bytes(n)).ok()?, 10)
            }
            126 | 127 => return None,
            n => (usize::from(n), 2),
        };
        let payload = bytes.get(at + header..at + header + len)?;
        if opcode == 8 {
            return Some(match payload {
                [a, b, ..] => u16::from_be_bytes([*a, *b]),
                _ => 1005,
            });
        }
        at += header + len;
    }
    None
}

/// SIGTERM with a replay that never reads and an idle keep-alive connection: the process exits
/// within its drain time, and an upgrade asked for while it drains is refused (503) or closed
/// (1001), never reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow set: cargo test -- --ignored"]
async fn shutdown_is_bounded_and_refuses_upgrades() {
    const DRAIN: Duration = Duration::from_secs(3);
    let mut srv =
        TestServer::process_with(Backend::Sqlite, &[("TASKFORGE_DRAIN_TIMEOUT", "3s")]).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let team = api.create_team(owner.token(), "Big log").await;
    seed_log(&api, owner.token(), team.id, BIG_LOG_TASKS, BIG_DESCRIPTION).await;

    let mut stalled = srv
        .ws_small_buffer(owner.token(), 4096)
        .await
        .labeled("stalled");
    stalled.send_json(subscribe_since_0(team.id)).await;

    // An idle keep-alive connection: one request answered, then nothing.
    let mut idle = srv.tcp().await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request sent");
    let (head, _) = read_head(&mut idle, T).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // A connection accepted now whose upgrade request is completed once the server drains.
    let mut late = srv.tcp().await;
    let upgrade = format!(
        "GET /realtime?token={} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        owner.token()
    );
    late.write_all(upgrade.as_bytes())
        .await
        .expect("most of an upgrade request sent");
    // A pause for the replay to stall and the connections to be accepted (not an assertion).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let signalled = Instant::now();
    srv.sigterm();
    assert!(
        srv.wait_for_log(|l| l.contains("shutting down"), T).await,
        "the server did not log its shutdown"
    );
    late.write_all(b"\r\n")
        .await
        .expect("the upgrade request completed");
    let (head, mut rest) = read_head(&mut late, T).await;
    eprintln!("upgrade while draining: {head:?}");
    if head.starts_with("HTTP/1.1 503") {
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/problem+json"),
            "{head}"
        );
    } else {
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "an upgrade while draining: neither 503 nor 101: {head}"
        );
        let end = read_until_end(&mut late, Duration::from_secs(20)).await;
        let (more, how) = match end {
            RawEnd::Closed(b) => (b, "closed".to_owned()),
            RawEnd::Failed(b, kind) => (b, format!("failed: {kind:?}")),
            RawEnd::Open(b) => (b, "still open".to_owned()),
        };
        rest.extend_from_slice(&more);
        assert_eq!(
            close_code(&rest),
            Some(1001),
            "a socket upgraded while draining was not closed with 1001 (connection {how}, \
             {} bytes after the head)",
            rest.len()
        );
    }

    let exit = srv.wait_exit(Duration::from_secs(30)).await;
    let took = signalled.elapsed();
    eprintln!("exited {exit:?} {took:?} after SIGTERM");
    assert!(
        exit.is_some(),
        "the server did not exit within 30 s of SIGTERM"
    );
    assert!(
        took < DRAIN + Duration::from_secs(5),
        "the server took {took:?} to exit after SIGTERM with a drain time of {DRAIN:?}"
    );
    drop((stalled, idle));
}
