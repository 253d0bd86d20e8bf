//! `/realtime` protection: oversized messages (1009), malformed input (`bad_request`, socket
//! stays open), subscription cap, rate limiting (4008), keepalive pings and silent peers, slow
//! consumers (4008 or dropped) without hurting the other sockets.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};
use uuid::Uuid;

both_backends!(
    oversized_message_closes_1009,
    malformed_messages_answer_bad_request_and_keep_the_socket,
    too_many_subscriptions,
    revoked_rooms_free_subscription_slots,
    rate_limit_rejects_then_closes_4008,
    replies_keep_the_order_of_the_messages,
    rate_limit_flood_without_reading_still_sees_4008,
    keepalive_pings_and_silent_peer_dropped,
    slow_consumer_is_cut_others_get_everything,
    the_wire_answers_pings_closes_and_plain_requests,
);

const T: Duration = Duration::from_secs(10);

async fn oversized_message_closes_1009(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let u = api.new_user("Big").await;
    let team = api.create_team(u.token(), "Big").await;
    // Just under the limit: a valid (if silly) subscribe with padding is served.
    let mut ws = srv.ws(u.token()).await;
    let pad = "x".repeat(60 * 1024);
    ws.send_json(json!({"type": "subscribe", "teamId": team.id, "pad": pad}))
        .await;
    let r = ws.expect_type("subscribed").await;
    assert_eq!(r["teamId"], json!(team.id));
    // Over 64 KiB: close 1009.
    let pad = "x".repeat(65 * 1024);
    ws.send_json(json!({"type": "ping", "pad": pad})).await;
    let seen = ws.expect_close(1009, T).await;
    assert!(
        !seen.iter().any(|f| f["type"] == "pong"),
        "the oversized ping was answered: {seen:?}"
    );
    // A binary frame over the limit as well.
    let mut ws = srv.ws(u.token()).await;
    ws.send_binary(&vec![0u8; 70 * 1024]).await;
    ws.expect_close(1009, T).await;
}

async fn malformed_messages_answer_bad_request_and_keep_the_socket(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let u = api.new_user("Malformed").await;
    let team = api.create_team(u.token(), "M").await;
    let task = api.task(u.token(), team.id, "t").await;
    let mut ws = srv.ws(u.token()).await;
    let id = team.id.to_string();
    let cases: Vec<(&str, String)> = vec![
        ("invalid JSON", "{".into()),
        ("not an object", "[1,2]".into()),
        ("no type", json!({"teamId": id}).to_string()),
        ("unknown type", json!({"type": "launch"}).to_string()),
        ("type not a string", json!({"type": 7}).to_string()),
        (
            "subscribe without scope",
            json!({"type": "subscribe"}).to_string(),
        ),
        (
            "subscribe with two scopes",
            json!({"type": "subscribe", "teamId": id, "taskId": task.id}).to_string(),
        ),
        (
            "subscribe non-UUID",
            json!({"type": "subscribe", "teamId": "not-a-uuid"}).to_string(),
        ),
        (
            "subscribe uppercase garbage id",
            json!({"type": "subscribe", "boardId": 42}).to_string(),
        ),
        (
            "negative since",
            json!({"type": "subscribe", "teamId": id, "since": -5}).to_string(),
        ),
        (
            "since not a number",
            json!({"type": "subscribe", "teamId": id, "since": "3"}).to_string(),
        ),
        (
            "unsubscribe without scope",
            json!({"type": "unsubscribe"}).to_string(),
        ),
        (
            "unsubscribe non-UUID",
            json!({"type": "unsubscribe", "taskId": "nope"}).to_string(),
        ),
        ("auth without token", json!({"type": "auth"}).to_string()),
    ];
    for (what, text) in &cases {
        ws.send_text(text).await;
        let f = ws.next_json().await;
        assert_eq!(f["type"], "error", "{what}: {text} -> {f}");
        assert_eq!(f["code"], "bad_request", "{what}: {text} -> {f}");
        assert!(
            f["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {f}"
        );
        ws.expect_pong().await;
    }
    ws.send_binary(br#"{"type":"ping"}"#).await;
    let f = ws.next_json().await;
    assert_eq!(f["code"], "bad_request", "binary frame -> {f}");
    ws.expect_pong().await;
    // Unknown fields are ignored.
    ws.send_json(json!({"type": "ping", "extra": {"a": 1}}))
        .await;
    ws.expect_type("pong").await;
    // And the socket still works for real.
    let s = ws.subscribe(Scope::Team(team.id), None).await;
    api.task(u.token(), team.id, "after").await;
    let got = ws.activities(1, T).await;
    assert_eq!(got[0]["seq"], json!(s.seq + 1));
}

async fn too_many_subscriptions(b: Backend) {
    let srv = TestServer::start_with(b, &[("TASKFORGE_WS_MAX_SUBSCRIPTIONS", "3")]).await;
    let api = srv.client();
    let u = api.new_user("Many").await;
    let tok = u.token();
    let team = api.create_team(tok, "Many").await;
    let t1 = api.task(tok, team.id, "1").await;
    let t2 = api.task(tok, team.id, "2").await;
    let mut ws = srv.ws(tok).await;
    ws.subscribe(Scope::Team(team.id), None).await;
    ws.subscribe(Scope::Board(team.default_board_id), None)
        .await;
    ws.subscribe(Scope::Task(t1.id), None).await;
    let e = ws
        .try_subscribe(Scope::Task(t2.id), None)
        .await
        .expect_err("a 4th room must be refused");
    assert_eq!(e["code"], "too_many_subscriptions", "{e}");
    assert_eq!(e["taskId"], json!(t2.id), "{e}");
    // A room already joined is not a new one.
    ws.subscribe(Scope::Task(t1.id), None).await;
    // Not joined: no comment of t2 arrives (t1's does).
    api.comment(tok, t2.id, "not for you").await;
    api.comment(tok, t1.id, "for you").await;
    let got = ws.activities(1, T).await;
    assert_eq!(got[0]["taskId"], json!(t1.id), "{got:?}");
    assert!(logged_activities(&ws.barrier().await).is_empty());
    // Leaving one makes room.
    ws.unsubscribe(Scope::Task(t1.id)).await;
    ws.subscribe(Scope::Task(t2.id), None).await;
    // Another socket has its own budget.
    let mut other = srv.ws(tok).await;
    other.subscribe(Scope::Task(t1.id), None).await;
}

/// Rooms removed by a revocation no longer count against the socket's subscription limit.
async fn revoked_rooms_free_subscription_slots(b: Backend) {
    let srv = TestServer::start_with(b, &[("TASKFORGE_WS_MAX_SUBSCRIPTIONS", "3")]).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let a = api.create_team(owner.token(), "A").await;
    let bt = api.create_team(owner.token(), "B").await;
    let m = api.member(owner.token(), a.id, "M", "member").await;
    api.add_member(owner.token(), bt.id, &m.user.email, "member")
        .await;
    let ta = api.task(owner.token(), a.id, "a").await;
    let tb = api.task(owner.token(), bt.id, "b").await;
    let mut ws = srv.ws(m.token()).await;
    for s in [
        Scope::Team(a.id),
        Scope::Board(a.default_board_id),
        Scope::Task(ta.id),
    ] {
        ws.subscribe(s, None).await;
    }
    api.delete(
        &format!("/api/v1/teams/{}/members/{}", a.id, m.id()),
        owner.token(),
    )
    .await
    .ok(204);
    for _ in 0..3 {
        ws.wait_for("unsubscribed (revoked)", T, |f| {
            f["type"] == "unsubscribed" && f["reason"] == "membership_revoked"
        })
        .await;
    }
    for s in [
        Scope::Team(bt.id),
        Scope::Board(bt.default_board_id),
        Scope::Task(tb.id),
    ] {
        let r = ws.try_subscribe(s, None).await;
        assert!(
            r.is_ok(),
            "after the revocation of 3 rooms, joining {s:?} was refused: {:?}",
            r.err()
        );
    }
}

async fn rate_limit_rejects_then_closes_4008(b: Backend) {
    let srv = TestServer::start_with(
        b,
        &[("TASKFORGE_WS_RATE", "5"), ("TASKFORGE_WS_BURST", "10")],
    )
    .await;
    let api = srv.client();
    let u = api.new_user("Flood").await;
    let mut ws = srv.ws(u.token()).await;
    // 30 pings at once: about the burst is served, the rest is rate_limited.
    for _ in 0..30 {
        ws.send_json(json!({"type": "ping"})).await;
    }
    let mut pongs = 0;
    let mut limited = 0;
    for _ in 0..30 {
        let f = ws.next_json().await;
        match (f["type"].as_str(), f["code"].as_str()) {
            (Some("pong"), _) => pongs += 1,
            (Some("error"), Some("rate_limited")) => limited += 1,
            _ => panic!("unexpected frame {f}"),
        }
    }
    assert!(
        (10..=13).contains(&pongs),
        "burst 10: expected about 10 pongs, got {pongs} (and {limited} rate_limited)"
    );
    assert_eq!(pongs + limited, 30);
    // Tokens refill at 5/s.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    ws.expect_pong().await;
    // A sustained flood (about 300 messages/s against a rate of 5/s), read while sending:
    // error rate_limited, then close 4008. (Pacing keeps the client's own unread messages from
    // turning the server's close into a TCP reset.)
    let t0 = Instant::now();
    let mut sent = 0;
    let mut seen: Vec<Value> = Vec::new();
    let mut end = None;
    for _ in 0..400 {
        if !ws.try_send_text(&json!({"type": "ping"}).to_string()).await {
            break;
        }
        sent += 1;
        match ws.recv_timeout(Duration::from_millis(3)).await {
            Some(Frame::Json(v)) => seen.push(v),
            Some(f) if f.is_end() => {
                end = Some(f);
                break;
            }
            _ => {}
        }
    }
    let end = match end {
        Some(e) => e,
        None => {
            let (more, e) = ws.expect_end(T).await;
            seen.extend(more);
            e
        }
    };
    assert!(
        matches!(end, Frame::Close(4008, _)),
        "a flooding socket must be closed with 4008; got {end:?} after sending {sent} in {:?}",
        t0.elapsed()
    );
    let limited = seen
        .iter()
        .filter(|f| f["type"] == "error" && f["code"] == "rate_limited")
        .count();
    assert!(
        (45..=60).contains(&limited),
        "expected about 50 rate_limited errors before 4008 (after 50 rejected in a row), got {limited}"
    );
    let last = seen.last().expect("frames before the close");
    assert_eq!(last["type"], "error", "{last}");
    assert_eq!(last["code"], "rate_limited", "{last}");
    // Other sockets of the user are unaffected.
    let mut ok = srv.ws(u.token()).await;
    ok.expect_pong().await;
}

async fn keepalive_pings_and_silent_peer_dropped(b: Backend) {
    let srv = TestServer::start_with(b, &[("TASKFORGE_WS_PING_INTERVAL", "1s")]).await;
    let api = srv.client();
    let u = api.new_user("Alive").await;
    let mut alive = srv.ws(u.token()).await.labeled("reader");
    let mut silent = srv.ws(u.token()).await.labeled("silent");
    silent.expect_pong().await;
    alive.expect_pong().await;
    // The reader reads (and so answers pings) for 4.5 s; the silent one is not polled at all.
    let t0 = Instant::now();
    let mut pings = 0;
    while t0.elapsed() < Duration::from_millis(4500) {
        match alive.recv_timeout(Duration::from_millis(200)).await {
            Some(Frame::Ping(_)) => pings += 1,
            Some(f) if f.is_end() => panic!("the reading socket was closed: {f:?}"),
            _ => {}
        }
    }
    assert!(
        (3..=6).contains(&pings),
        "expected a ping about every second over 4.5 s, got {pings}"
    );
    alive.expect_pong().await;
    // The silent peer: the server must have given up on it (close frame or dropped connection).
    let (_, end) = silent.expect_end(Duration::from_secs(5)).await;
    assert!(
        matches!(end, Frame::Close(..) | Frame::Dropped(_)),
        "silent peer: {end:?}"
    );
    // And it is really gone server-side: a frame sent now gets no answer.
    let answered = silent.try_send_text(r#"{"type":"ping"}"#).await
        && matches!(
            silent.recv_timeout(Duration::from_millis(500)).await,
            Some(Frame::Json(_))
        );
    assert!(!answered, "the silent peer is still served");
    assert!(
        silent.pings >= 1,
        "the silent peer was pinged before being dropped"
    );
}

async fn slow_consumer_is_cut_others_get_everything(b: Backend) {
    // 64 frames of 15 KB: a socket that never reads is cut long before the 600th, while one that
    // reads (and checks every frame against the schema, in a debug build on a busy machine) is not.
    let srv = TestServer::process_with(b, &[("TASKFORGE_WS_QUEUE_LIMIT", "64")]).await;
    let api = srv.client();
    let u = api.new_user("Producer").await;
    let tok = u.token().to_string();
    let team = api.create_team(&tok, "Firehose").await;
    let mut slow = srv.ws_small_buffer(&tok, 4096).await.labeled("slow");
    slow.subscribe(Scope::Team(team.id), None).await;
    let mut normal = srv.ws(&tok).await.labeled("normal");
    normal.subscribe(Scope::Team(team.id), None).await;

    let total = 600;
    let reader = tokio::spawn(async move {
        let mut ids = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while ids.len() < total {
            assert!(
                Instant::now() < deadline,
                "normal socket: only {} of {total} task.created within 120 s",
                ids.len()
            );
            match normal.recv_timeout(Duration::from_secs(1)).await {
                Some(Frame::Json(v)) if is_logged_activity(&v) => {
                    assert_eq!(v["activity"]["type"], "task.created");
                    ids.push(v["activity"]["taskId"].as_str().unwrap().to_string());
                }
                Some(f) if f.is_end() => panic!(
                    "the normal socket was closed after {} activities: {f:?}",
                    ids.len()
                ),
                _ => {}
            }
        }
        let extra = logged_activities(&normal.barrier().await);
        (ids, extra)
    });

    let description = "d".repeat(15_000);
    let mut created = Vec::new();
    let t0 = Instant::now();
    for i in 0..total {
        let t = api
            .create_task(
                &tok,
                team.id,
                json!({"title": format!("t{i}"), "description": description}),
            )
            .await;
        created.push(t.id.to_string());
    }
    eprintln!("created {total} large tasks in {:?}", t0.elapsed());
    let (ids, extra) = reader.await.expect("normal reader");
    assert_eq!(
        ids, created,
        "the normal socket got every activity, in order"
    );
    assert!(
        extra.is_empty(),
        "duplicates on the normal socket: {}",
        extra.len()
    );

    // Now read the slow socket: it must have been cut (4008 after slow_consumer, or dropped).
    let t1 = Instant::now();
    let mut got = 0;
    let mut frames: Vec<Value> = Vec::new();
    let end = loop {
        assert!(
            t1.elapsed() < Duration::from_secs(30),
            "slow socket still open after reading {got} activities for 30 s"
        );
        match slow.recv_timeout(Duration::from_secs(5)).await {
            Some(Frame::Json(v)) => {
                if is_logged_activity(&v) {
                    got += 1;
                } else {
                    frames.push(v);
                }
            }
            Some(f) if f.is_end() => break f,
            Some(_) => {}
            None => panic!(
                "the slow socket was neither closed nor dropped: it delivered {got} of {total} \
                 activities and then stayed silent for 5 s"
            ),
        }
    };
    eprintln!("slow socket: {got} activities, then {end:?}; other frames: {frames:?}");
    assert!(
        got < total,
        "the slow socket received every activity: never cut"
    );
    match &end {
        Frame::Close(code, _) => {
            assert_eq!(*code, 4008, "slow consumer close code; frames: {frames:?}");
            assert!(
                frames
                    .iter()
                    .any(|f| f["type"] == "error" && f["code"] == "slow_consumer"),
                "close 4008 without the slow_consumer error frame: {frames:?}"
            );
        }
        Frame::Dropped(_) => {}
        other => panic!("unexpected end {other:?}"),
    }
    // The cut shows in the metrics, with the frames it discarded.
    let m = srv.client().metrics().await;
    assert_eq!(m.get("taskforge_slow_consumer_disconnects_total", &[]), 1.0);
    assert!(m.get("taskforge_frames_dropped_total", &[]) >= 1.0);
    let _ = Uuid::nil();
}

/// A client that floods without reading (300 messages at once, rate 5/s, burst 10) must still
/// be able to read the `rate_limited` error and the 4008 close afterwards: the server's close
/// must not turn into a TCP reset that discards them.
async fn rate_limit_flood_without_reading_still_sees_4008(b: Backend) {
    let srv = TestServer::start_with(
        b,
        &[("TASKFORGE_WS_RATE", "5"), ("TASKFORGE_WS_BURST", "10")],
    )
    .await;
    let api = srv.client();
    let u = api.new_user("Flood").await;
    let mut ws = srv.ws(u.token()).await;
    ws.expect_pong().await;
    let mut sent = 0;
    for _ in 0..300 {
        if !ws.try_send_text(r#"{"type":"ping"}"#).await {
            break;
        }
        sent += 1;
    }
    let (seen, end) = ws.expect_end(T).await;
    let pongs = seen.iter().filter(|f| f["type"] == "pong").count();
    let limited = seen
        .iter()
        .filter(|f| f["type"] == "error" && f["code"] == "rate_limited")
        .count();
    assert!(
        matches!(end, Frame::Close(4008, _)),
        "sent {sent} pings without reading; then read {pongs} pongs and {limited} rate_limited \
         errors and the connection ended with {end:?} instead of close 4008"
    );
}

/// What the socket layer answers by itself: a WebSocket ping gets its payload back, a client's
/// close gets a close, and a request that is not an upgrade gets problem+json.
async fn the_wire_answers_pings_closes_and_plain_requests(b: Backend) {
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;

    let srv = TestServer::start(b).await;
    let api = srv.client();
    let u = api.new_user("Wire").await;
    let mut ws = srv.ws(u.token()).await;
    ws.expect_pong().await;
    for payload in [&b"are you there"[..], b"", &[0xff; 125]] {
        ws.try_send_message(WsMessage::Ping(payload.to_vec().into()))
            .await
            .expect("ping sent");
        match ws.recv_timeout(T).await {
            Some(Frame::Pong(back)) => {
                assert_eq!(back, payload, "the pong carries the ping's payload")
            }
            other => panic!("expected a pong, got {other:?}"),
        }
    }
    // Frames still flow after the pongs, and the close is answered.
    ws.expect_pong().await;
    ws.try_send_message(WsMessage::Close(Some(CloseFrame {
        code: 1000.into(),
        reason: "bye".into(),
    })))
    .await
    .expect("close sent");
    let (_, end) = ws.expect_end(T).await;
    assert!(
        matches!(end, Frame::Close(1000, _)),
        "the close was answered with {end:?}"
    );

    // Protocol violations fail the connection as RFC 6455 says: 1007 for a text frame that is
    // not UTF-8, 1002 for a reserved opcode.
    use tokio_tungstenite::tungstenite::protocol::frame::Frame as RawFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    for (opcode, payload, code) in [
        (OpCode::Data(Data::Text), &b"{\"type\":\xff}"[..], 1007),
        (OpCode::Data(Data::Reserved(3)), b"{}", 1002),
    ] {
        let mut ws = srv.ws(u.token()).await;
        ws.expect_pong().await;
        let frame = RawFrame::message(payload.to_vec(), opcode, true);
        ws.try_send_message(WsMessage::Frame(frame))
            .await
            .expect("frame sent");
        ws.expect_close(code, T).await;
    }

    let http = reqwest::Client::new();
    let url = format!("{}/realtime", srv.base);
    for (method, status) in [(reqwest::Method::GET, 426), (reqwest::Method::POST, 405)] {
        let r = http
            .request(method.clone(), &url)
            .header("Connection", "Upgrade")
            .header(
                "Upgrade",
                if method == reqwest::Method::GET {
                    "h2c"
                } else {
                    "websocket"
                },
            )
            .send()
            .await
            .expect("request");
        assert_eq!(r.status().as_u16(), status, "{method} /realtime");
        let ct = r.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .to_owned();
        assert!(ct.starts_with("application/problem+json"), "{method}: {ct}");
        let body: Value = r.json().await.expect("problem body");
        assert_eq!(body["status"], json!(status), "{body}");
    }
    // A well-formed upgrade without a key is refused, and nothing is upgraded.
    let r = http
        .get(&url)
        .header("Connection", "keep-alive, Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 400);
}

/// Every message is answered once and in order, also when subscribes (which run beside the
/// reader loop) are followed by messages the rate limit refuses: a client matches each
/// `rate_limited` to the message it refused by that order.
async fn replies_keep_the_order_of_the_messages(b: Backend) {
    let srv = TestServer::start_with(
        b,
        &[("TASKFORGE_WS_RATE", "1"), ("TASKFORGE_WS_BURST", "5")],
    )
    .await;
    let api = srv.client();
    let u = api.new_user("Order").await;
    let team = api.create_team(u.token(), "Ordered").await;
    let mut tasks = Vec::new();
    for i in 0..10 {
        tasks.push(api.task(u.token(), team.id, &format!("t{i}")).await.id);
    }
    let mut ws = srv.ws(u.token()).await;
    // Ten subscribes at once, each with a replay: the first five fit the burst.
    for t in &tasks {
        ws.send_json(json!({"type": "subscribe", "taskId": t, "since": 0}))
            .await;
    }
    let mut answers = Vec::new();
    while answers.len() < tasks.len() {
        let f = ws.next_json().await;
        match f["type"].as_str() {
            Some("subscribed") => answers.push(format!("subscribed {}", f["taskId"])),
            Some("error") => answers.push(format!("error {}", f["code"])),
            // Replayed activities and presence come with the subscribes.
            _ => {}
        }
    }
    let mut expected: Vec<String> = tasks[..5]
        .iter()
        .map(|t| format!("subscribed {}", json!(t)))
        .collect();
    expected.extend((0..5).map(|_| "error \"rate_limited\"".to_owned()));
    assert_eq!(answers, expected);
}
