//! What only the SSE transport does: the response's headers and first event, refusals as
//! problem+json, one event id that resumes several teams (and the inbox) at once and a team's
//! scopes together, the heartbeat comment, token expiry and renewal, the client messages POSTed
//! to a stream (from any instance), a client that stops reading, and a shutdown.
//!
//! Routing, resume and revocation over SSE are the socket's tests run over both transports
//! (`every_transport!` in realtime_rooms.rs and realtime_resume.rs).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::*;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

both_backends!(
    headers_hello_and_event_ids,
    refusals_are_problems,
    one_event_id_resumes_every_team_and_the_inbox,
    a_teams_scopes_resume_together_without_loss_or_repeat,
    client_messages_are_posted,
    shutdown_ends_the_stream_without_an_error,
    a_stalled_reader_is_cut,
);
// These open SSE streams themselves (the deployment's transport is not used).
every_topology!(
    a_stream_resumes_on_another_instance,
    a_stream_is_reached_through_another_instance,
    presence_states_are_posted_to_a_stream,
);

const T: Duration = Duration::from_secs(10);
const CUTS: &str = "taskforge_slow_consumer_disconnects_total";
const STALLED: &str = "taskforge_stalled_socket_cuts_total";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Logged activities of `frames` as (teamId, seq).
fn team_seqs(frames: &[Value]) -> Vec<(Uuid, i64)> {
    logged_activities(frames)
        .iter()
        .map(|a| {
            (
                a["teamId"].as_str().unwrap().parse().unwrap(),
                a["seq"].as_i64().unwrap(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The response
// ---------------------------------------------------------------------------------------------

/// 200 `text/event-stream`, `Cache-Control: no-store`, `X-Accel-Buffering: no`, never compressed
/// (even when the request accepts gzip); `retry:` and the `stream` hello first; the token also in
/// the header; ids only on events that move the position, each naming the team with its seq.
async fn headers_hello_and_event_ids(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let u = api.new_user("Headers").await;
    let team = api.create_team(u.token(), "H").await;
    for header_auth in [false, true] {
        let latest = api.team_seq(u.token(), team.id).await;
        let mut req = SseRequest::new(u.token())
            .scopes(&[Scope::Team(team.id)])
            .header("accept-encoding", "gzip, deflate, br");
        req.token_in_header = header_auth;
        let mut sse = srv
            .sse_open(&req)
            .await
            .unwrap_or_else(|r| panic!("refused: {} {}", r.status, r.text));
        let h = |name: &str| {
            sse.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        assert!(
            h("content-type").is_some_and(|v| v.starts_with("text/event-stream")),
            "{:?}",
            sse.headers
        );
        assert_eq!(h("cache-control").as_deref(), Some("no-store"));
        assert_eq!(h("x-accel-buffering").as_deref(), Some("no"));
        assert_eq!(
            h("content-encoding"),
            None,
            "an event stream must not be compressed: {:?}",
            sse.headers
        );
        assert_eq!(sse.retry, Some(1000));
        assert_eq!(sse.hello["userId"], json!(u.id()), "{}", sse.hello);
        assert_eq!(sse.hello["heartbeatMs"], 30_000, "{}", sse.hello);
        let (sub, _) = sse
            .wait_for("subscribed", T, |f| f["type"] == "subscribed")
            .await;
        assert_eq!(
            sub,
            json!({"type": "subscribed", "teamId": team.id, "seq": latest})
        );
        assert_eq!(
            sse.events.last().and_then(|e| e.id.clone()),
            Some(format!("{}:{latest}", team.id)),
            "the subscribed event carries the id"
        );
        // An activity moves the id; a pong does not carry one.
        api.task(u.token(), team.id, "moves").await;
        let got = sse.activities(1, T).await;
        let seq = got[0]["seq"].as_i64().unwrap();
        assert_eq!(
            sse.last_event_id,
            Some(format!("{}:{seq}", team.id)),
            "{:?}",
            sse.events
        );
        sse.expect_pong().await;
        assert_eq!(sse.events.last().unwrap().data["type"], "pong");
        assert_eq!(sse.events.last().unwrap().id, None);
    }
    // A heartbeat comment every ping interval while nothing else is sent.
    let srv = TestServer::start_with(b, &[("TASKFORGE_WS_PING_INTERVAL", "200ms")]).await;
    let api = srv.client();
    let u = api.new_user("Beat").await;
    let mut sse = srv.sse(u.token(), &[]).await.labeled("heartbeat");
    assert_eq!(sse.hello["heartbeatMs"], 200, "{}", sse.hello);
    let deadline = Instant::now() + T;
    while sse.heartbeats < 3 {
        assert!(
            Instant::now() < deadline,
            "{} heartbeats in {T:?}",
            sse.heartbeats
        );
        match sse.recv_timeout(Duration::from_secs(2)).await {
            Some(Frame::Ping(text)) => assert_eq!(text, b"keepalive"),
            Some(Frame::Json(v)) => {
                assert!(v["type"] == "subscribed" && v["inbox"] == true, "{v}")
            }
            other => panic!("{other:?}"),
        }
    }
}

/// 401 without a token or with a bad one, 403 when every scope is forbidden, 400 for malformed
/// parameters, for more scopes than a socket's room limit and for `since` with scopes of two
/// teams; a forbidden scope beside an allowed one is an `error` on the stream.
async fn refusals_are_problems(b: Backend) {
    let srv = TestServer::start_with(b, &[("TASKFORGE_WS_MAX_SUBSCRIPTIONS", "3")]).await;
    let api = srv.client();
    let u = api.new_user("Refused").await;
    let stranger = api.new_user("Stranger").await;
    let team = api.create_team(u.token(), "Mine").await;
    let other = api.create_team(u.token(), "Also mine").await;
    let task = api.task(u.token(), team.id, "t").await;
    let scope = [Scope::Team(team.id)];
    let refused = |r: Result<SseClient, Resp>| match r {
        Ok(_) => panic!("the stream was opened"),
        Err(r) => r,
    };

    let mut none = SseRequest::new("").scopes(&scope);
    none.token = None;
    let mut claims = claims_of(u.token());
    claims["exp"] = json!(now() - 60);
    claims["iat"] = json!(now() - 120);
    let expired = sign(Algorithm::HS256, &claims, &srv.jwt_secret);
    let forged = sign(
        Algorithm::HS256,
        &claims_of(u.token()),
        "another-secret-another-secret-another",
    );
    for (what, req) in [
        ("no token", none),
        ("garbage", SseRequest::new("garbage").scopes(&scope)),
        ("forged", SseRequest::new(&forged).scopes(&scope)),
        ("expired", SseRequest::new(&expired).scopes(&scope)),
        (
            "expired in the header",
            SseRequest::new(&expired).scopes(&scope).token_in_header(),
        ),
    ] {
        let r = refused(srv.sse_open(&req).await);
        r.problem(401, "unauthorized");
        assert!(r.json["detail"].is_string(), "{what}: {}", r.text);
    }

    // Every scope forbidden (not a member, or no such id): 403.
    for scopes in [
        vec![Scope::Team(team.id)],
        vec![Scope::Board(team.default_board_id), Scope::Task(task.id)],
        vec![Scope::Team(Uuid::new_v4()), Scope::Task(Uuid::new_v4())],
    ] {
        let r = refused(
            srv.sse_open(&SseRequest::new(stranger.token()).scopes(&scopes))
                .await,
        );
        r.problem(403, "forbidden");
    }

    // Malformed: 400.
    let t = team.id.to_string();
    for (what, req) in [
        (
            "a bad UUID",
            SseRequest::new(u.token()).query("teamId", "nope"),
        ),
        (
            "a bad board UUID beside a good scope",
            SseRequest::new(u.token())
                .scopes(&scope)
                .query("boardId", &format!("{t}x")),
        ),
        ("no scope", SseRequest::new(u.token())),
        (
            "more scopes than the room limit",
            SseRequest::new(u.token()).scopes(&[
                Scope::Team(team.id),
                Scope::Team(other.id),
                Scope::Board(team.default_board_id),
                Scope::Task(task.id),
            ]),
        ),
        (
            "a negative since",
            SseRequest::new(u.token())
                .scopes(&scope)
                .query("since", "-1"),
        ),
        (
            "since with scopes of two teams",
            SseRequest::new(u.token())
                .scopes(&[Scope::Team(team.id), Scope::Team(other.id)])
                .since(0),
        ),
        (
            "since with a team and a task of another team",
            SseRequest::new(u.token())
                .scopes(&[Scope::Task(task.id), Scope::Team(other.id)])
                .since(0),
        ),
        (
            "a Last-Event-ID this server did not write",
            SseRequest::new(u.token())
                .scopes(&scope)
                .last_event_id("not an id"),
        ),
        (
            "a lastEventId this server did not write",
            SseRequest::new(u.token())
                .scopes(&scope)
                .last_event_id_query(&format!("{t}:-4")),
        ),
    ] {
        let r = refused(srv.sse_open(&req).await);
        assert_eq!(r.status, 400, "{what}: {} {}", r.status, r.text);
        r.problem(400, "bad_request");
    }

    // A forbidden scope beside an allowed one: an error for it, the other joined.
    let unknown = Scope::Task(Uuid::new_v4());
    let mut sse = srv
        .sse_open(
            &SseRequest::new(stranger.token())
                .scopes(&[Scope::Team(team.id), unknown])
                .inbox(),
        )
        .await
        .unwrap_or_else(|r| panic!("the inbox is allowed: {} {}", r.status, r.text));
    let mut errors = Vec::new();
    let (_, before) = sse
        .wait_for("the inbox's subscribed", T, |f| {
            f["type"] == "subscribed" && f["inbox"] == true
        })
        .await;
    errors.extend(before.into_iter().filter(|f| f["type"] == "error"));
    assert_eq!(errors.len(), 2, "{errors:?}");
    for (e, s) in errors.iter().zip([Scope::Team(team.id), unknown]) {
        assert_eq!(e["code"], "forbidden", "{e}");
        assert_eq!(e[s.key()], json!(s.id()), "{e}");
    }
    assert_eq!(
        errors[0]["message"], errors[1]["message"],
        "a non-member and an unknown id are told the same"
    );
    let mut mine = srv
        .sse(u.token(), &[Scope::Team(team.id), unknown])
        .await
        .labeled("member");
    let (e, _) = mine.wait_for("error", T, |f| f["type"] == "error").await;
    assert_eq!(e[unknown.key()], json!(unknown.id()), "{e}");
    mine.wait_for("subscribed", T, |f| f["type"] == "subscribed")
        .await;
    // Nothing of the team reaches the stranger's stream.
    api.task(u.token(), team.id, "private").await;
    mine.activities(1, T).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let leaked = sse.barrier().await;
    assert!(leaked.is_empty(), "{leaked:?}");
}

// ---------------------------------------------------------------------------------------------
// Resume with one event id
// ---------------------------------------------------------------------------------------------

/// A stream of two teams and the inbox: its event id covers all three. Activities in both teams
/// and a notification while it is away: the reconnect (Last-Event-ID) gets each exactly once, in
/// per-team order, then goes live. The id reopens a stream of other scopes too (`lastEventId`):
/// a team it names resumes, a team it does not name starts fresh.
async fn one_event_id_resumes_every_team_and_the_inbox(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let u = api.new_user("Two teams").await;
    let o = api.new_user("Other owner").await;
    let a = api.create_team(u.token(), "A").await;
    let bt = api.create_team(o.token(), "B").await;
    let c = api.create_team(u.token(), "C").await;
    api.add_member(o.token(), bt.id, &u.user.email, "member")
        .await;
    let mention = format!("@[{}](user:{})", u.user.display_name, u.id());
    let in_b = api.task(o.token(), bt.id, "mentions here").await;
    let scopes = [Scope::Team(a.id), Scope::Team(bt.id)];

    let mut first = srv
        .sse_open(&SseRequest::new(u.token()).scopes(&scopes).inbox())
        .await
        .unwrap_or_else(|r| panic!("{} {}", r.status, r.text))
        .labeled("first");
    first.joined(3).await;
    for (team, token) in [(a.id, u.token()), (bt.id, o.token())] {
        api.task(token, team, "seen").await;
    }
    api.comment(o.token(), in_b.id, &format!("seen {mention}"))
        .await;
    // The comment reaches the task's room only (not these scopes), and the inbox.
    first.activities(2, T).await;
    first.inbox_frames(1, T).await;
    assert!(logged_activities(&first.barrier().await).is_empty());
    let id = first.last_event_id.clone().expect("an event id");
    let parts: Vec<&str> = id.split(',').collect();
    assert_eq!(parts.len(), 3, "two teams and the inbox: {id}");
    let at: HashMap<Uuid, i64> = [a.id, bt.id]
        .into_iter()
        .map(|t| (t, first.last_seq_of(t).expect("the team in the id")))
        .collect();
    let inbox_at = seq_in_event_id(&id, "inbox").expect("the inbox in the id");
    assert_eq!(at[&a.id], api.team_seq(u.token(), a.id).await, "{id}");
    drop(first);

    // Away: activities in both teams (team-room kinds only, so each reaches the stream), a
    // mention in B.
    for i in 0..3 {
        api.task(u.token(), a.id, &format!("missed a{i}")).await;
        api.task(o.token(), bt.id, &format!("missed b{i}")).await;
    }
    api.create_board(u.token(), a.id, "missed board").await;
    api.comment(o.token(), in_b.id, &format!("missed {mention}"))
        .await;
    let mut want: Vec<(Uuid, i64)> = Vec::new();
    for t in [a.id, bt.id] {
        for act in api.activity_since(u.token(), t, at[&t]).await {
            if act.kind != "comment.created" {
                want.push((t, act.seq));
            }
        }
    }
    assert_eq!(want.len(), 7, "{want:?}");

    let mut again = srv
        .sse_open(
            &SseRequest::new(u.token())
                .scopes(&scopes)
                .inbox()
                .last_event_id(&id),
        )
        .await
        .unwrap_or_else(|r| panic!("{} {}", r.status, r.text))
        .labeled("resumed");
    let replay = again.activities(want.len(), T).await;
    let inbox = again.inbox_frames(1, T).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let extra = again.barrier().await;
    let mut got: Vec<(Uuid, i64)> = team_seqs(
        &replay
            .iter()
            .map(|a| json!({"type": "activity", "activity": a}))
            .collect::<Vec<_>>(),
    );
    got.extend(team_seqs(&extra));
    let mut sorted = got.clone();
    sorted.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(
        sorted, want_sorted,
        "each missed activity of both teams exactly once"
    );
    for t in [a.id, bt.id] {
        let per_team: Vec<i64> = got
            .iter()
            .filter(|(x, _)| *x == t)
            .map(|(_, s)| *s)
            .collect();
        assert!(per_team.windows(2).all(|w| w[0] < w[1]), "{per_team:?}");
    }
    assert_eq!(inbox[0]["type"], "notification.created", "{inbox:?}");
    assert!(
        inbox[0]["seq"].as_i64().unwrap() > inbox_at,
        "the inbox resumed after {inbox_at}: {inbox:?}"
    );
    let subs: Vec<&Value> = again
        .frames
        .iter()
        .filter(|f| f["type"] == "subscribed")
        .collect();
    assert_eq!(subs.len(), 3, "{subs:?}");
    assert!(
        !extra.iter().any(|f| f["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("notification."))),
        "the notification twice: {extra:?}"
    );
    // Live after the resume, in both teams.
    api.task(o.token(), bt.id, "live").await;
    let live = again.activities(1, T).await;
    assert_eq!(live[0]["teamId"], json!(bt.id));
    let last = again.last_event_id.clone().unwrap();

    // Reopened with other scopes and `lastEventId`: A resumes, C (not in the id) starts fresh.
    api.task(u.token(), a.id, "after").await;
    api.task(u.token(), c.id, "before c was followed").await;
    let mut other = srv
        .sse_open(
            &SseRequest::new(u.token())
                .scopes(&[Scope::Team(c.id), Scope::Team(a.id)])
                .last_event_id_query(&last),
        )
        .await
        .unwrap_or_else(|r| panic!("{} {}", r.status, r.text))
        .labeled("other scopes");
    let mut seen = Vec::new();
    let mut subscribed = Vec::new();
    while subscribed.len() < 2 {
        let f = other.next_json().await;
        match f["type"].as_str() {
            Some("subscribed") => subscribed.push(f),
            Some("activity") => seen.push(f),
            _ => panic!("{f}"),
        }
    }
    let seqs = team_seqs(&seen);
    assert_eq!(
        seqs,
        vec![(a.id, api.team_seq(u.token(), a.id).await)],
        "only A's activity after the id is replayed, C starts fresh: {seen:?}"
    );
    let ids = other.last_event_id.clone().unwrap();
    assert!(
        !ids.contains(&bt.id.to_string()),
        "B is not in this stream: {ids}"
    );
    assert!(ids.contains(&c.id.to_string()), "{ids}");

    // The inbox alone, from `inboxSince=0`: both notifications replayed before its subscribed.
    let mut req = SseRequest::new(u.token()).inbox();
    req.inbox_since = Some(0);
    let mut inbox_only = srv
        .sse_open(&req)
        .await
        .unwrap_or_else(|r| panic!("{} {}", r.status, r.text));
    let (sub, replayed) = inbox_only
        .wait_for("the inbox's subscribed", T, |f| {
            f["type"] == "subscribed" && f["inbox"] == true
        })
        .await;
    let seqs: Vec<i64> = replayed
        .iter()
        .filter(|f| f["type"] == "notification.created")
        .map(|f| f["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 2, "{replayed:?}");
    assert_eq!(sub["seq"].as_i64(), seqs.last().copied(), "{sub}");
    assert_eq!(
        inbox_only.last_event_id,
        Some(format!("inbox:{}", seqs[1])),
        "{:?}",
        inbox_only.events
    );
}

/// A team scope, a board scope and a task scope of one team: their activities reach the stream
/// once each even where the rooms overlap, and a reconnect with the event id gets exactly what
/// was missed (replayed together, in seq order), then live: nothing lost, nothing repeated.
async fn a_teams_scopes_resume_together_without_loss_or_repeat(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let u = api.new_user("Scopes").await;
    let tok = u.token();
    let team = api.create_team(tok, "Scopes").await;
    let b1 = team.default_board_id;
    let b2 = api.create_board(tok, team.id, "B2").await.id;
    let x = api
        .create_task(tok, team.id, json!({"title": "x", "boardId": b1}))
        .await;
    let y = api
        .create_task(tok, team.id, json!({"title": "y", "boardId": b1}))
        .await;
    let scopes = [Scope::Team(team.id), Scope::Board(b1), Scope::Task(x.id)];
    let (x, y) = (x.id, y.id);

    // Each step: (what it does, whether it reaches team, b1 or x).
    let step = |i: usize| {
        let api = api.clone();
        let tok = tok.to_owned();
        let team = team.id;
        async move {
            let reaches = match i % 8 {
                0 => {
                    api.create_task(&tok, team, json!({"title": format!("n{i}"), "boardId": b1}))
                        .await;
                    true // team, b1
                }
                1 => {
                    api.patch_task(&tok, x, json!({"title": format!("x{i}")}))
                        .await
                        .ok(200);
                    true // b1 or b2, x
                }
                2 => {
                    api.comment(&tok, y, "on y").await;
                    false // task y only
                }
                3 => {
                    api.comment(&tok, x, "on x").await;
                    true // x
                }
                4 => {
                    api.create_task(&tok, team, json!({"title": format!("m{i}"), "boardId": b2}))
                        .await;
                    true // team (and b2)
                }
                5 => {
                    api.patch_task(
                        &tok,
                        y,
                        json!({"boardId": if i % 16 == 5 { b2 } else { b1 }}),
                    )
                    .await
                    .ok(200);
                    true // b1 (from or to), b2, y
                }
                6 => {
                    api.patch_task(&tok, y, json!({"title": format!("y{i}")}))
                        .await
                        .ok(200);
                    i % 16 != 6 // b1 while y is there, else b2 and y only
                }
                _ => {
                    api.create_board(&tok, team, &format!("board {i}")).await;
                    true // team
                }
            };
            let seq = api.team_seq(&tok, team).await;
            (seq, reaches)
        }
    };
    let mut want = Vec::new();
    let mut sse = srv.sse(tok, &scopes).await.labeled("first");
    sse.joined(3).await;
    for i in 0..16 {
        let (seq, reaches) = step(i).await;
        if reaches {
            want.push(seq);
        }
    }
    // Read some of it, then go away mid-stream.
    let n = want.len() / 2;
    let mut got: Vec<i64> = sse
        .activities(n, T)
        .await
        .iter()
        .map(|a| a["seq"].as_i64().unwrap())
        .collect();
    let resume = sse.last_event_id.clone().expect("an id");
    assert_eq!(
        seq_in_event_id(&resume, &team.id.to_string()),
        got.last().copied(),
        "the id is the last activity received"
    );
    drop(sse);
    for i in 16..32 {
        let (seq, reaches) = step(i).await;
        if reaches {
            want.push(seq);
        }
    }
    let mut sse = srv
        .sse_open(&SseRequest::new(tok).scopes(&scopes).last_event_id(&resume))
        .await
        .unwrap_or_else(|r| panic!("{} {}", r.status, r.text))
        .labeled("resumed");
    let (_, replayed) = sse
        .wait_for("subscribed", T, |f| f["type"] == "subscribed")
        .await;
    for _ in 0..2 {
        let (f, more) = sse
            .wait_for("subscribed", T, |f| f["type"] == "subscribed")
            .await;
        assert!(
            logged_activities(&more).is_empty(),
            "the scopes of a team are joined together, after one replay: {more:?} before {f}"
        );
    }
    let replayed: Vec<i64> = logged_activities(&replayed)
        .iter()
        .map(|a| a["seq"].as_i64().unwrap())
        .collect();
    assert!(
        replayed.windows(2).all(|w| w[0] < w[1]),
        "the replay in seq order, once each: {replayed:?}"
    );
    got.extend(&replayed);
    for i in 32..40 {
        let (seq, reaches) = step(i).await;
        if reaches {
            want.push(seq);
        }
    }
    let live_wanted = want.len() - got.len();
    got.extend(
        sse.activities(live_wanted, T)
            .await
            .iter()
            .map(|a| a["seq"].as_i64().unwrap()),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let extra = logged_activities(&sse.barrier().await);
    assert!(extra.is_empty(), "repeated or stray: {extra:?}");
    assert_eq!(
        got, want,
        "team + board + task of one team, resumed with the event id: every activity of the \
         three rooms once, in seq order"
    );
}

// ---------------------------------------------------------------------------------------------
// Client messages
// ---------------------------------------------------------------------------------------------

/// `POST /realtime/sse/{streamId}`: ping (a pong on the stream), auth (renews; `authenticated`
/// on the stream); refused: subscribe and unsubscribe, malformed JSON (400), no or a bad token
/// (401), another user's stream (403), over the size limit (413), an unknown stream (404), too
/// many (429). Refusals put nothing on the stream.
async fn client_messages_are_posted(b: Backend) {
    let srv = TestServer::start_with(
        b,
        &[
            ("TASKFORGE_WS_MAX_MESSAGE_BYTES", "4096"),
            ("TASKFORGE_WS_RATE", "5"),
            ("TASKFORGE_WS_BURST", "40"),
        ],
    )
    .await;
    let api = srv.client();
    let u = api.new_user("Poster").await;
    let other = api.new_user("Other").await;
    let team = api.create_team(u.token(), "P").await;
    let mut sse = srv.sse(u.token(), &[Scope::Team(team.id)]).await;
    sse.joined(1).await;

    let r = sse.post(json!({"type": "ping"})).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let pong = sse.next_json().await;
    assert_eq!(pong, json!({"type": "pong"}));

    let fresh: AuthResponse = api.login(&u.user.email, PASSWORD).await.parse(200);
    let r = sse
        .post(json!({"type": "auth", "token": fresh.token()}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let ok = sse.next_json().await;
    assert_eq!(ok["type"], "authenticated", "{ok}");
    assert_eq!(ok["userId"], json!(u.id()), "{ok}");

    let stream = sse.stream_id.clone();
    let t = Some(u.token());
    let s = team.id.to_string();
    for (what, token, body, status, code) in [
        (
            "subscribe",
            t,
            json!({"type": "subscribe", "teamId": s}).to_string(),
            400,
            "bad_request",
        ),
        (
            "unsubscribe",
            t,
            json!({"type": "unsubscribe", "teamId": s}).to_string(),
            400,
            "bad_request",
        ),
        ("not JSON", t, "{".to_owned(), 400, "bad_request"),
        (
            "an unknown type",
            t,
            json!({"type": "launch"}).to_string(),
            400,
            "bad_request",
        ),
        (
            "no token",
            None,
            json!({"type": "ping"}).to_string(),
            401,
            "unauthorized",
        ),
        (
            "a bad token",
            Some("garbage"),
            json!({"type": "ping"}).to_string(),
            401,
            "unauthorized",
        ),
        (
            "another user's stream",
            Some(other.token()),
            json!({"type": "ping"}).to_string(),
            403,
            "forbidden",
        ),
        (
            "over the size limit",
            t,
            json!({"type": "auth", "token": "x".repeat(5000)}).to_string(),
            413,
            "payload_too_large",
        ),
    ] {
        let r = post_to_stream(&api, &stream, token, body.into_bytes()).await;
        assert_eq!(r.status, status, "{what}: {}", r.text);
        r.problem(status, code);
    }
    let r = post_to_stream(
        &api,
        "0123456789abcdef0123456789abcdef",
        t,
        br#"{"type":"ping"}"#.to_vec(),
    )
    .await;
    r.problem(404, "not_found");
    sse.expect_pong().await;

    // Faster than the rate: some are refused (429 with Retry-After), the others answered.
    let mut accepted = 0;
    let mut limited = 0;
    for _ in 0..80 {
        let r = sse.post(json!({"type": "ping"})).await;
        match r.status {
            202 => accepted += 1,
            429 => {
                r.retry_after();
                limited += 1;
            }
            other => panic!("{other}: {}", r.text),
        }
    }
    assert!(
        limited > 0 && accepted > 0,
        "{accepted} accepted, {limited} limited"
    );
    for _ in 0..accepted {
        let f = sse.next_json().await;
        assert_eq!(f["type"], "pong", "{f}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rest = sse.pump().await;
    assert!(rest.is_empty(), "{rest:?}");

    // A token of another user in an auth message (once the rate allows a message again): the
    // stream ends with `unauthorized`.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = sse
        .post(json!({"type": "auth", "token": other.token()}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let (seen, end) = sse.expect_end(T).await;
    assert_eq!(end, Frame::Dropped(SSE_ENDED.into()));
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["code"], "unauthorized", "{seen:?}");
    // The stream is gone: 404.
    let r = post_to_stream(&api, &stream, t, br#"{"type":"ping"}"#.to_vec()).await;
    r.problem(404, "not_found");
}

/// The access token expires: `error token_expired`, then the stream ends. A stream renewed by a
/// POSTed `auth` lives past the old expiry (and receives), then ends at the new one.
async fn token_expiry_and_renewal(b: Backend) {
    let srv = TestServer::start_with(b, &[("TASKFORGE_ACCESS_TOKEN_TTL", "4s")]).await;
    let api = srv.client();
    let u = api.new_user("Expiring").await;
    let team = api.create_team(u.token(), "E").await;
    let login: AuthResponse = api.login(&u.user.email, PASSWORD).await.parse(200);
    let old_exp = claims_of(login.token())["exp"].as_i64().unwrap();
    let scope = [Scope::Team(team.id)];
    let mut plain = srv.sse(login.token(), &scope).await.labeled("plain");
    let mut renewed = srv.sse(login.token(), &scope).await.labeled("renewed");

    let wait = (old_exp * 1000 - 2000) - now_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
    let fresh: AuthResponse = api.refresh(&login.refresh_token).await.parse(200);
    let new_exp = claims_of(fresh.token())["exp"].as_i64().unwrap();
    assert!(new_exp > old_exp);
    let r = renewed
        .post(json!({"type": "auth", "token": fresh.token()}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let (ok, _) = renewed
        .wait_for("authenticated", T, |f| f["type"] == "authenticated")
        .await;
    assert_eq!(ok["userId"], json!(u.id()), "{ok}");

    let (seen, end) = plain.expect_end(Duration::from_secs(8)).await;
    let ended_at = now_ms();
    assert!(
        ended_at >= old_exp * 1000 - 1000,
        "ended at {ended_at} ms, before exp {old_exp} s"
    );
    assert_eq!(end, Frame::Dropped(SSE_ENDED.into()), "a clean end");
    let last = seen.last().expect("an error before the end");
    assert_eq!(last["type"], "error", "{seen:?}");
    assert_eq!(last["code"], "token_expired", "{seen:?}");

    let wait = (old_exp * 1000 + 700) - now_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
    // The POST needs a valid token of the user: the fresh one.
    renewed.token = fresh.token().to_owned();
    renewed.expect_pong().await;
    let t = api
        .task(fresh.token(), team.id, "after the old expiry")
        .await;
    let got = renewed.activities(1, T).await;
    assert_eq!(got[0]["taskId"], json!(t.id));
    let (seen, end) = renewed.expect_end(Duration::from_secs(8)).await;
    let ended_at = now_ms();
    assert!(
        ended_at >= new_exp * 1000 - 1000,
        "ended at {ended_at} ms, well before the new exp {new_exp} s"
    );
    assert_eq!(end, Frame::Dropped(SSE_ENDED.into()));
    let errors: Vec<&Value> = seen.iter().filter(|f| f["type"] == "error").collect();
    assert_eq!(errors.len(), 1, "{seen:?}");
    assert_eq!(errors[0]["code"], "token_expired", "{seen:?}");
}

// ---------------------------------------------------------------------------------------------
// Ends
// ---------------------------------------------------------------------------------------------

/// SIGTERM: the stream ends without an error (the browser reconnects and resumes); after the
/// restart the reconnect with the last event id gets what was written meanwhile.
async fn shutdown_ends_the_stream_without_an_error(b: Backend) {
    let mut srv = TestServer::process(b).await;
    let api = srv.client();
    let u = api.new_user("Shutdown").await;
    let team = api.create_team(u.token(), "S").await;
    let scope = [Scope::Team(team.id)];
    let mut sse = srv.sse(u.token(), &scope).await.labeled("stream");
    sse.joined(1).await;
    api.task(u.token(), team.id, "before").await;
    sse.activities(1, T).await;
    let id = sse.last_event_id.clone().expect("an id");
    srv.sigterm();
    let (seen, end) = sse.expect_end(T).await;
    assert_eq!(end, Frame::Dropped(SSE_ENDED.into()), "{seen:?}");
    assert!(
        !seen.iter().any(|f| f["type"] == "error"),
        "no error on a shutdown: {seen:?}"
    );
    let status = srv
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("the server did not exit within 20 s of SIGTERM");
    assert!(status.success(), "{status:?}");

    srv.restart().await;
    let api = srv.client();
    let missed = api.task(u.token(), team.id, "while away").await;
    let mut again = srv
        .sse_open(&SseRequest::new(u.token()).scopes(&scope).last_event_id(&id))
        .await
        .unwrap_or_else(|r| panic!("{} {}", r.status, r.text));
    let got = again.activities(1, T).await;
    assert_eq!(got[0]["taskId"], json!(missed.id));
    assert!(logged_activities(&again.barrier().await).is_empty());
}

/// A client that stops reading fills the connection and then its queue: the stream is cut as a
/// slow consumer and let go (the server holds no stream for it), and its connection is cut after
/// the write timeout, whether or not the body could hand its last event to hyper (a body that
/// ended on a kept-alive connection would otherwise leave it open until the next request's header
/// timeout, set long here). Over raw TCP with a small receive buffer; the server is a process for
/// its metrics.
async fn a_stalled_reader_is_cut(b: Backend) {
    const DESCRIPTION: usize = 8 * 1024;
    let srv = TestServer::process_with(
        b,
        &[
            ("TASKFORGE_WS_QUEUE_BYTES", "65536"),
            ("TASKFORGE_WS_WRITE_TIMEOUT", "2s"),
            ("TASKFORGE_HEADER_TIMEOUT", "300s"),
        ],
    )
    .await;
    let api = srv.client();
    let u = api.new_user("Stalled").await;
    let team = api.create_team(u.token(), "Big").await;
    let connections = |m: &Metrics| m.get("taskforge_ws_connections", &[]);
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut tcp = sock.connect(srv.addr()).await.expect("connect");
    let path = SseRequest::new(u.token())
        .scopes(&[Scope::Team(team.id)])
        .path();
    tcp.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
            srv.addr()
        )
        .as_bytes(),
    )
    .await
    .expect("send the request");
    let deadline = Instant::now() + T;
    while connections(&api.metrics().await) < 1.0 {
        assert!(Instant::now() < deadline, "the stream did not open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Never read: live activities of 8 KiB each, until the stream is cut (bounded).
    let description = "d".repeat(DESCRIPTION);
    let started = Instant::now();
    let mut written = 0;
    while api.metrics().await.get(CUTS, &[]) < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{written} activities of 8 KiB in 120 s and the stream is not cut"
        );
        let mut writes = Vec::new();
        for i in 0..50 {
            let (api, tok, d) = (api.clone(), u.token().to_owned(), description.clone());
            let team = team.id;
            writes.push(tokio::spawn(async move {
                api.create_task(
                    &tok,
                    team,
                    json!({"title": format!("big {i}"), "description": d}),
                )
                .await;
            }));
        }
        for w in writes {
            w.await.expect("a writer");
        }
        written += 50;
    }
    eprintln!(
        "the stream was cut after {written} activities ({:?})",
        started.elapsed()
    );
    let deadline = Instant::now() + T;
    while connections(&api.metrics().await) > 0.0 {
        assert!(
            Instant::now() < deadline,
            "the server still holds the stream {T:?} after cutting it"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connection is cut within the write timeout (and a second).
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.metrics().await.get(STALLED, &[]) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the connection of the cut stream was not cut within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Reading now: what the kernel held, then the end.
    match read_until_end(&mut tcp, Duration::from_secs(60)).await {
        RawEnd::Closed(got) | RawEnd::Failed(got, _) => {
            let text = String::from_utf8_lossy(&got);
            assert!(
                text.starts_with("HTTP/1.1 200"),
                "{}",
                &text[..text.len().min(200)]
            );
            eprintln!(
                "read {} bytes, then the end; the error event arrived: {}",
                got.len(),
                text.contains("slow_consumer"),
            );
            if let Some(at) = text.find(r#""code":"slow_consumer""#) {
                assert!(
                    !text[at..].contains(r#"data: {"type":"activity""#),
                    "an activity after the slow_consumer error"
                );
            }
        }
        RawEnd::Open(got) => panic!(
            "the connection is still open 60 s after the stream was cut ({} bytes read)",
            got.len()
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Three instances
// ---------------------------------------------------------------------------------------------

/// A stream on B resumes on C with its event id (which overrides `since`) after activities written
/// on A while it was away (on one instance, all the same server).
async fn a_stream_resumes_on_another_instance(d: Deployment) {
    let api = d.client(0);
    let u = api.new_user("Roaming").await;
    let team = api.create_team(u.token(), "Roam").await;
    let task = api.task(u.token(), team.id, "t").await;
    let scopes = [Scope::Board(team.default_board_id), Scope::Task(task.id)];
    let mut sse = d
        .node(1)
        .sse(u.token(), &scopes)
        .await
        .labeled(&format!("stream@{}", d.name(1)));
    sse.joined(2).await;
    api.patch_task(u.token(), task.id, json!({"title": "seen"}))
        .await
        .ok(200);
    let seen = sse.activities(1, T).await;
    let id = sse.last_event_id.clone().expect("an id");
    assert_eq!(
        seq_in_event_id(&id, &team.id.to_string()),
        seen[0]["seq"].as_i64()
    );
    drop(sse);
    let mut want = Vec::new();
    api.comment(u.token(), task.id, "missed").await;
    want.push(api.team_seq(u.token(), team.id).await);
    api.task(u.token(), team.id, "missed on the board").await;
    want.push(api.team_seq(u.token(), team.id).await);
    api.create_board(u.token(), team.id, "not for these rooms")
        .await;

    // The event id overrides `since` (here one that would replay the whole log).
    let mut again = d
        .node(2)
        .sse_open(
            &SseRequest::new(u.token())
                .scopes(&scopes)
                .since(0)
                .last_event_id(&id),
        )
        .await
        .unwrap_or_else(|r| panic!("{d}: {} {}", r.status, r.text))
        .labeled(&format!("resumed@{}", d.name(2)));
    let got: Vec<i64> = again
        .activities(2, T)
        .await
        .iter()
        .map(|a| a["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(
        got, want,
        "{d}: the missed activities of the two rooms, once each"
    );
    api.patch_task(u.token(), task.id, json!({"title": "live"}))
        .await
        .ok(200);
    let live = again.activities(1, T).await;
    assert_eq!(live[0]["type"], "task.updated");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let extra = logged_activities(&again.barrier().await);
    assert!(extra.is_empty(), "{d}: {extra:?}");
}

/// A stream on B is reached by the messages POSTed to A and C (ping, auth): delivered to the
/// stream wherever it runs, over the bus when scaled. Another user's messages never reach it:
/// refused where the stream is known (403), elsewhere accepted (the instance cannot tell) and
/// forwarded to that user's streams only.
async fn a_stream_is_reached_through_another_instance(d: Deployment) {
    let api = d.client(0);
    let u = api.new_user("Reached").await;
    let team = api.create_team(u.token(), "Reach").await;
    let mut sse = d
        .node(1)
        .sse(u.token(), &[Scope::Team(team.id)])
        .await
        .labeled(&format!("stream@{}", d.name(1)));
    sse.joined(1).await;
    // Client messages through another instance reach the stream (over the bus when scaled).
    let r = sse
        .post_via(&api, Some(u.token()), br#"{"type":"ping"}"#.to_vec())
        .await;
    assert_eq!(r.status, 202, "{d}: {}", r.text);
    let (pong, before) = sse.wait_for("pong", T, |f| f["type"] == "pong").await;
    assert!(before.is_empty(), "{d}: {before:?} before {pong}");
    let fresh: AuthResponse = api.login(&u.user.email, PASSWORD).await.parse(200);
    let body = json!({"type": "auth", "token": fresh.token()}).to_string();
    let r = sse
        .post_via(&d.client(2), Some(u.token()), body.into_bytes())
        .await;
    assert_eq!(r.status, 202, "{d}: {}", r.text);
    let (ok, _) = sse
        .wait_for("authenticated", T, |f| f["type"] == "authenticated")
        .await;
    assert_eq!(ok["userId"], json!(u.id()));

    // Another user (with a connection of their own) posts an auth of theirs to this stream: had it
    // reached the stream, the stream would end (`unauthorized`).
    let other = api.new_user("Other").await;
    let mut theirs = d.node(2).sse(other.token(), &[]).await.labeled("other");
    theirs.joined(1).await;
    let body = json!({"type": "auth", "token": other.token()}).to_string();
    let r = sse
        .post_via(&api, Some(other.token()), body.into_bytes())
        .await;
    if d.len() == 1 {
        r.problem(403, "forbidden");
    } else {
        assert_eq!(r.status, 202, "{d}: {}", r.text);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    sse.expect_pong().await;
    theirs.expect_pong().await;
}

/// A stream's user says what they do in a task by POST (through another instance when scaled):
/// a socket in the room sees it as `presence.updated`, and sees them leave when the stream ends.
async fn presence_states_are_posted_to_a_stream(d: Deployment) {
    let api = d.client(0);
    let ann = api.new_user("Ann").await;
    let team = api.create_team(ann.token(), "Presence").await;
    let bea = api.member(ann.token(), team.id, "Bea", "member").await;
    let task = api.task(ann.token(), team.id, "Edited").await;
    let mut ws = d.node(2).ws(bea.token()).await.labeled("bea");
    ws.subscribe_task(task.id, None).await;
    let mut sse = d
        .node(1)
        .sse(ann.token(), &[Scope::Task(task.id)])
        .await
        .labeled("ann");
    sse.joined(1).await;
    let is_about = |kind: &'static str| {
        move |f: &Value| f["type"] == "activity" && f["activity"]["type"] == kind
    };
    let (joined, _) = ws
        .wait_for("ann joins", T, is_about("presence.joined"))
        .await;
    assert_eq!(joined["activity"]["data"]["userId"], json!(ann.id()), "{d}");

    let msg =
        json!({"type": "presence", "taskId": task.id, "state": "editing", "field": "description"});
    let r = sse
        .post_via(&api, Some(ann.token()), msg.to_string().into_bytes())
        .await;
    assert_eq!(r.status, 202, "{d}: {}", r.text);
    let (updated, _) = ws
        .wait_for("ann edits", T, is_about("presence.updated"))
        .await;
    let data = &updated["activity"]["data"];
    assert_eq!(data["userId"], json!(ann.id()), "{d}: {updated}");
    assert_eq!(data["state"], "editing", "{d}: {updated}");
    assert_eq!(data["field"], "description", "{d}: {updated}");

    // A malformed state is refused on the stream, not by the POST (the message is well formed).
    let bad = json!({"type": "presence", "taskId": task.id, "state": "dancing"});
    let r = sse
        .post_via(
            &d.client(2),
            Some(ann.token()),
            bad.to_string().into_bytes(),
        )
        .await;
    assert_eq!(r.status, 202, "{d}: {}", r.text);
    let (err, _) = sse
        .wait_for("bad_request", T, |f| f["type"] == "error")
        .await;
    assert_eq!(err["code"], "bad_request", "{d}: {err}");
    assert_eq!(err["taskId"], json!(task.id), "{d}: {err}");

    drop(sse);
    let (left, _) = ws
        .wait_for("ann leaves", T, is_about("presence.left"))
        .await;
    assert_eq!(left["activity"]["data"]["userId"], json!(ann.id()), "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_and_renewal_sqlite() {
    token_expiry_and_renewal(Backend::Sqlite).await
}
