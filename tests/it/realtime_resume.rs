//! Resume: replay before `subscribed`, then live without gap or duplicate; bounds
//! (`resume_unavailable`, `bad_request`); retention; and a concurrent writer with 20 clients
//! reconnecting at random moments.
//!
//! Over both transports (`every_transport!`): a socket resumes with `since` per room, an SSE
//! stream with its last event id (as the browser's reconnect does) or `since=`. Where they differ
//! a test says so: outside the retained log a socket's subscribe is refused, while a stream says
//! `resume_unavailable` and then subscribes afresh; a malformed `since` is an error on a socket
//! and a 400 for a stream.
//!
//! On every topology: written through instance A, the first subscription on B, the resume on C
//! (or the next instance at each reconnection); on one instance they are the same server.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};
use uuid::Uuid;

every_transport!(
    resume_replays_then_goes_live,
    resume_board_and_task_rooms_replay_only_their_activities,
    resume_on_a_socket_with_several_rooms,
    resume_bounds,
);
every_transport!(slow: resume_under_concurrent_writes_with_20_clients);
every_transport!(with &[("TASKFORGE_LOG_RETENTION", "1s")] => resume_unavailable_after_retention);

const T: Duration = Duration::from_secs(10);

fn seqs(acts: &[Value]) -> Vec<i64> {
    acts.iter().map(|a| a["seq"].as_i64().unwrap()).collect()
}

async fn resume_replays_then_goes_live(d: Deployment) {
    let api = d.client(0);
    let u = api.new_user("Resumer").await;
    let team = api.create_team(u.token(), "Resume").await;
    let tok = u.token();

    let room = Scope::Team(team.id);
    let mut ws = d.open(1, tok, "first", &[room]).await;
    let s0 = ws.subscribed(room).seq;
    for i in 0..3 {
        api.task(tok, team.id, &format!("seen {i}")).await;
    }
    let seen = ws.activities(3, T).await;
    let last = *seqs(&seen).last().unwrap();
    assert_eq!(seqs(&seen), vec![s0 + 1, s0 + 2, s0 + 3]);
    let from = ws.resume_point();
    assert_eq!(
        from.since_of(room, team.id),
        Some(last),
        "{d}: the client stopped after the last activity it received"
    );
    ws.close().await;

    // Missed while disconnected: creations, an update (board+task only: not the team room),
    // a comment (task only), a board (team).
    let mut missed = Vec::new();
    for i in 0..3 {
        missed.push(api.task(tok, team.id, &format!("missed {i}")).await.id);
    }
    api.patch_task(tok, missed[0], json!({"title": "upd"}))
        .await
        .ok(200);
    api.comment(tok, missed[1], "c").await;
    api.create_board(tok, team.id, "nb").await;
    let latest = api.team_seq(tok, team.id).await;

    let mut ws = d.resume(2, &from, "resumed").await;
    let s = ws.subscribed(room).clone();
    assert_eq!(s.seq, latest, "{d}: {}", s.frame);
    let kinds: Vec<&str> = s
        .before
        .iter()
        .map(|a| a["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "task.created",
            "task.created",
            "task.created",
            "board.created"
        ],
        "{d}: the replay (before subscribed) holds exactly the team room's missed activities: {:?}",
        s.before
    );
    let replay_seqs = seqs(&s.before);
    assert!(
        replay_seqs.windows(2).all(|w| w[0] < w[1]),
        "{replay_seqs:?}"
    );
    assert!(replay_seqs[0] > last && *replay_seqs.last().unwrap() <= s.seq);
    let ids: Vec<Value> = s.before[..3].iter().map(|a| a["taskId"].clone()).collect();
    assert_eq!(ids, missed.iter().map(|i| json!(i)).collect::<Vec<_>>());

    // Live after the reply: the next one, no gap, no duplicate.
    let t = api.task(tok, team.id, "live").await;
    let live = ws.activities(1, T).await;
    assert_eq!(live[0]["taskId"], json!(t.id));
    assert_eq!(live[0]["seq"], json!(latest + 1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let extra = ws.barrier().await;
    assert!(extra.is_empty(), "{d}: after the live activity: {extra:?}");

    // since = latest: empty replay.
    let ws2 = d
        .open_since(1, tok, "up to date", &[room], latest + 1)
        .await;
    let s = ws2.subscribed(room);
    assert!(s.before.is_empty(), "{:?}", s.before);
    assert_eq!(s.seq, latest + 1);
}

async fn resume_board_and_task_rooms_replay_only_their_activities(d: Deployment) {
    let api = d.client(0);
    let u = api.new_user("Rooms").await;
    let tok = u.token();
    let team = api.create_team(tok, "Resume rooms").await;
    let b1 = team.default_board_id;
    let b2 = api.create_board(tok, team.id, "B2").await.id;
    let x = api
        .create_task(tok, team.id, json!({"title": "x", "boardId": b1}))
        .await;
    let since = api.team_seq(tok, team.id).await;

    let on_b2 = api
        .create_task(tok, team.id, json!({"title": "y", "boardId": b2}))
        .await;
    api.patch_task(tok, x.id, json!({"title": "x2"}))
        .await
        .ok(200); // b1, task x
    api.comment(tok, x.id, "on x").await; // task x
    api.patch_task(tok, x.id, json!({"boardId": b2}))
        .await
        .ok(200); // b1, b2, task x
    api.create_board(tok, team.id, "B3").await; // team
    api.patch_task(tok, on_b2.id, json!({"status": "done"}))
        .await
        .ok(200); // b2, task y
    let latest = api.team_seq(tok, team.id).await;

    // A socket subscribes to each room in turn (each replays only its own room); a stream's
    // scopes are fixed, so over SSE each room is a stream of its own.
    let mut socket = match d.transport {
        Transport::WebSocket => Some(d.open(1, tok, "resumed", &[]).await),
        Transport::Sse => None,
    };
    let cases: Vec<(Scope, Vec<&str>)> = vec![
        (Scope::Board(b1), vec!["task.updated", "task.updated"]),
        (
            Scope::Board(b2),
            vec!["task.created", "task.updated", "task.updated"],
        ),
        (
            Scope::Task(x.id),
            vec!["task.updated", "comment.created", "task.updated"],
        ),
    ];
    for (scope, want) in cases {
        let s = match socket.as_mut() {
            Some(ws) => ws.ws().subscribe(scope, Some(since)).await,
            None => d
                .open_since(1, tok, "resumed", &[scope], since)
                .await
                .subscribed(scope)
                .clone(),
        };
        let kinds: Vec<&str> = s
            .before
            .iter()
            .map(|a| a["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, want, "{d}: replay of {scope:?}: {:?}", s.before);
        assert_eq!(s.seq, latest, "{}", s.frame);
        assert!(seqs(&s.before).iter().all(|q| *q > since && *q <= latest));
    }
}

/// One client in the team room and a board room, resuming both: on a socket the replays may
/// overlap (clients de-duplicate by (teamId, seq)); a stream replays the team's scopes together,
/// each activity once. Live frames arrive once.
async fn resume_on_a_socket_with_several_rooms(d: Deployment) {
    let api = d.client(0);
    let u = api.new_user("Multi").await;
    let tok = u.token();
    let team = api.create_team(tok, "Multi").await;
    let b1 = team.default_board_id;
    let since = api.team_seq(tok, team.id).await;
    let t1 = api.task(tok, team.id, "one").await; // team + b1
    api.patch_task(tok, t1.id, json!({"title": "one!"}))
        .await
        .ok(200); // b1
    api.create_board(tok, team.id, "other").await; // team
    let latest = api.team_seq(tok, team.id).await;

    let rooms = [Scope::Team(team.id), Scope::Board(b1)];
    let mut ws = d.open_since(1, tok, "resumed", &rooms, since).await;
    let (st, sb) = (
        ws.subscribed(rooms[0]).clone(),
        ws.subscribed(rooms[1]).clone(),
    );
    assert_eq!(st.seq, latest);
    assert_eq!(sb.seq, latest);
    let mut union: Vec<i64> = seqs(&st.before);
    union.extend(seqs(&sb.before));
    let set: HashSet<i64> = union.iter().copied().collect();
    if d.transport == Transport::Sse {
        assert_eq!(
            union.len(),
            set.len(),
            "{d}: a stream replays its team's scopes together, each activity once: {union:?}"
        );
    }
    assert_eq!(
        set,
        (since + 1..=latest).collect::<HashSet<_>>(),
        "team + board replays together cover every activity: team {:?} board {:?}",
        st.before,
        sb.before
    );
    // Live: an activity in both rooms arrives once.
    api.task(tok, team.id, "two").await;
    let live = ws.activities(1, T).await;
    assert_eq!(live[0]["seq"], json!(latest + 1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let extra = logged_activities(&ws.barrier().await);
    assert!(
        extra.is_empty(),
        "{d}: a live activity of two rooms arrived twice: {extra:?}"
    );
}

/// `since` beyond the log is `resume_unavailable` (a socket is then not in the room; a stream
/// says so, then subscribes afresh), a negative one is malformed, and `since = 0` replays the
/// whole log.
async fn resume_bounds(d: Deployment) {
    let api = d.client(0);
    let u = api.new_user("Bounds").await;
    let tok = u.token();
    let team = api.create_team(tok, "Bounds").await;
    api.task(tok, team.id, "one").await;
    let latest = api.team_seq(tok, team.id).await;
    let mut clients = Vec::new();
    for scope in [Scope::Team(team.id), Scope::Board(team.default_board_id)] {
        let scopes = [scope];
        let mut c = d
            .try_open(
                1,
                Opening {
                    start: Start::Since(latest + 1),
                    ..Opening::new(tok, "bounds", &scopes)
                },
            )
            .await
            .unwrap_or_else(|r| panic!("{d}: {} {}", r.status, r.text));
        assert_eq!(c.errors.len(), 1, "{d}: since > latest: {:?}", c.errors);
        let e = &c.errors[0];
        assert_eq!(e["code"], "resume_unavailable", "{d}: {e}");
        assert_eq!(e[scope.key()], json!(scope.id()), "{e}");
        match d.transport {
            Transport::WebSocket => {
                assert!(c.subscribed.is_empty(), "since > latest must not join");
                let e = c
                    .ws()
                    .try_subscribe(scope, Some(-1))
                    .await
                    .expect_err("negative since");
                assert_eq!(e["code"], "bad_request", "{e}");
            }
            Transport::Sse => {
                let s = c.subscribed(scope);
                assert_eq!(s.seq, latest, "{d}: subscribed afresh: {}", s.frame);
                assert!(s.before.is_empty(), "{d}: no replay: {:?}", s.before);
                let r = d
                    .try_open(
                        1,
                        Opening {
                            start: Start::Since(-1),
                            ..Opening::new(tok, "negative", &scopes)
                        },
                    )
                    .await;
                match r {
                    Err(r) => {
                        r.problem(400, "bad_request");
                    }
                    Ok(_) => panic!("{d}: a stream with since=-1 opened"),
                }
            }
        }
        clients.push(c);
    }
    // The next activity: a socket was not joined by the failed attempts, and nothing arrives; a
    // stream subscribed afresh gets it.
    let two = api.task(tok, team.id, "two").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for c in clients.iter_mut() {
        let got = logged_activities(&c.barrier().await);
        match d.transport {
            Transport::WebSocket => assert!(got.is_empty(), "{got:?}"),
            Transport::Sse => {
                assert_eq!(got.len(), 1, "{}: {got:?}", c.label());
                assert_eq!(got[0]["taskId"], json!(two.id), "{got:?}");
            }
        }
    }
    // since = 0 replays from the start (nothing pruned with the default retention); on a socket,
    // the one that failed before.
    let room = Scope::Team(team.id);
    let s = match d.transport {
        Transport::WebSocket => clients[0].ws().subscribe(room, Some(0)).await,
        Transport::Sse => d
            .open_since(1, tok, "from 0", &[room], 0)
            .await
            .subscribed(room)
            .clone(),
    };
    assert_eq!(seqs(&s.before), (1..=s.seq).collect::<Vec<_>>());
}

/// Once the retention pruned the log, `since = 0` is `resume_unavailable` (a stream then
/// subscribes afresh), as the HTTP log's 410 says; `since = latest` is still fine.
async fn resume_unavailable_after_retention(d: Deployment) {
    let api = d.client(0);
    let u = api.new_user("Retain").await;
    let tok = u.token();
    let team = api.create_team(tok, "Retention").await;
    api.task(tok, team.id, "old 1").await;
    api.task(tok, team.id, "old 2").await;
    let room = Scope::Team(team.id);
    // Publish activities now and then (pruning runs on published activities) until `since=0`
    // is refused; bounded to 15 s.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (refused, client) = loop {
        tokio::time::sleep(Duration::from_millis(700)).await;
        api.task(tok, team.id, "tick").await;
        let scopes = [room];
        let c = d
            .try_open(
                1,
                Opening {
                    start: Start::Since(0),
                    ..Opening::new(tok, "resumer", &scopes)
                },
            )
            .await
            .unwrap_or_else(|r| panic!("{d}: {} {}", r.status, r.text));
        if let Some(e) = c.errors.first() {
            break (e.clone(), c);
        }
        c.close().await;
        assert!(
            Instant::now() < deadline,
            "{d}: since=0 still replays 15 s after activities older than the 1 s retention"
        );
    };
    assert_eq!(refused["code"], "resume_unavailable", "{refused}");
    assert_eq!(refused["teamId"], json!(team.id), "{refused}");
    assert_eq!(client.errors.len(), 1, "{:?}", client.errors);
    match d.transport {
        Transport::WebSocket => assert!(client.subscribed.is_empty()),
        Transport::Sse => assert!(
            client.subscribed(room).before.is_empty(),
            "{d}: subscribed afresh, without a replay"
        ),
    }
    // The HTTP log agrees (on another instance too).
    d.client(2)
        .get(&format!("/api/v1/teams/{}/activity?since=0", team.id), tok)
        .await
        .problem(410, "resume_unavailable");
    // since = latest is still fine, on yet another client.
    let latest = api.team_seq(tok, team.id).await;
    let ws = d.open_since(2, tok, "up to date", &[room], latest).await;
    assert!(ws.subscribed(room).before.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Concurrent writer, 20 clients reconnecting at random moments
// ---------------------------------------------------------------------------------------------

/// What the writer's 2xx responses say each room must receive, in order: (type, taskId, version).
type Event = (String, Uuid, i64);

#[derive(Default)]
struct Expected {
    team: Vec<Event>,
    boards: HashMap<Uuid, Vec<Event>>,
    done: bool,
    /// When the writer finished.
    done_at: Option<Instant>,
}

impl Expected {
    /// When a client started at `started` stops waiting: 60 s after the writer finished (how
    /// fast the writer goes on a loaded machine is not what this test checks), and never later
    /// than 5 minutes after it started.
    fn give_up_at(&self, started: Instant) -> Instant {
        let cap = started + Duration::from_secs(300);
        self.done_at
            .map_or(cap, |done| (done + Duration::from_secs(60)).min(cap))
    }
}

fn event_of(a: &Value) -> Event {
    (
        a["type"].as_str().unwrap().to_string(),
        a["taskId"].as_str().unwrap().parse().unwrap(),
        a["data"]["task"]["version"].as_i64().unwrap_or(-1),
    )
}

/// Whether the activity is routed to `room` (no moves, no assignments in this scenario).
fn routed(a: &Value, room: Scope) -> bool {
    let kind = a["type"].as_str().unwrap();
    match room {
        Scope::Team(_) => kind == "task.created",
        Scope::Board(bid) => {
            (kind == "task.created" || kind == "task.updated") && a["boardId"] == json!(bid)
        }
        Scope::Task(_) => false,
    }
}

#[derive(Debug, Default, Clone)]
struct Tally {
    connections: usize,
    received: usize,
    lost: usize,
    duplicated: usize,
    out_of_order: usize,
    unexpected: usize,
}

/// Client `me` connects to instance `me`, then to the next instance at each reconnection, each
/// time resuming where the previous connection stopped.
async fn resume_client(
    d: Arc<Deployment>,
    me: usize,
    token: String,
    room: Scope,
    seed: u64,
    expected: Arc<Mutex<Expected>>,
    ready: Arc<tokio::sync::Barrier>,
) -> (Vec<Event>, usize) {
    let mut rng = Rng::new(seed);
    let mut from: Option<Resume> = None;
    let mut got: Vec<Event> = Vec::new();
    let mut connections = 0;
    let started = Instant::now();
    loop {
        let deadline = expected.lock().unwrap().give_up_at(started);
        assert!(
            Instant::now() < deadline,
            "client {room:?}: gave up (60 s after the writer finished)"
        );
        let node = me + connections;
        let mut ws = match &from {
            None => d.open(node, &token, "client", &[room]).await,
            Some(r) => d.resume(node, r, "client").await,
        };
        connections += 1;
        for a in &ws.subscribed(room).before {
            assert!(
                routed(a, room),
                "{room:?}: replayed an activity not routed here: {a}"
            );
            got.push(event_of(a));
        }
        if connections == 1 {
            // Everyone is in before the writer starts: the first subscription predates it all.
            ready.wait().await;
        }
        // Stay connected for a random while (or, once the writer is done, until complete).
        let stay = Duration::from_millis(30 + rng.below(600) as u64);
        let until = Instant::now() + stay;
        loop {
            let (done, want, deadline) = {
                let e = expected.lock().unwrap();
                let want = match room {
                    Scope::Team(_) => e.team.len(),
                    Scope::Board(bid) => e.boards.get(&bid).map_or(0, Vec::len),
                    Scope::Task(_) => 0,
                };
                (e.done, want, e.give_up_at(started))
            };
            if done && got.len() >= want {
                // Make sure nothing else (a duplicate) is pending.
                for a in logged_activities(&ws.barrier().await) {
                    got.push(event_of(&a));
                }
                ws.close().await;
                return (got, connections);
            }
            if !done && Instant::now() >= until {
                break;
            }
            if Instant::now() >= deadline {
                return (got, connections);
            }
            match ws.recv_timeout(Duration::from_millis(50)).await {
                Some(Frame::Json(v)) if is_logged_activity(&v) => {
                    let a = &v["activity"];
                    assert!(
                        routed(a, room),
                        "{room:?}: live activity not routed here: {a}"
                    );
                    got.push(event_of(a));
                }
                Some(f) if f.is_end() => panic!("{room:?}: server ended the connection: {f:?}"),
                _ => {}
            }
        }
        from = Some(ws.resume_point());
        if rng.chance(50) {
            ws.close().await;
        } else {
            drop(ws); // abrupt: no close handshake
        }
    }
}

/// A client in the team room AND board b1, resuming both rooms where it stopped. On a socket the
/// replays may overlap (clients de-duplicate by seq); a stream replays and joins them together,
/// so over SSE any activity twice in one connection is a duplicate no rule allows. Returns
/// (distinct events received, duplicates that no contract rule allows, connections).
async fn combo_client(
    d: Arc<Deployment>,
    me: usize,
    token: String,
    rooms: [Scope; 2],
    seed: u64,
    expected: Arc<Mutex<Expected>>,
    ready: Arc<tokio::sync::Barrier>,
) -> (Vec<Event>, usize, usize) {
    let mut rng = Rng::new(seed);
    let team = rooms[0].id();
    let exact = d.transport == Transport::Sse;
    let mut from: Option<Resume> = None;
    let mut got: Vec<Event> = Vec::new();
    let mut all_seqs: HashSet<i64> = HashSet::new();
    let mut bad_dups = 0;
    let mut connections = 0;
    let started = Instant::now();
    let routed_rooms =
        |a: &Value| -> Vec<usize> { (0..2).filter(|&i| routed(a, rooms[i])).collect() };
    loop {
        let deadline = expected.lock().unwrap().give_up_at(started);
        assert!(
            Instant::now() < deadline,
            "combo client: gave up (60 s after the writer finished)"
        );
        let node = me + connections;
        let mut ws = match &from {
            None => d.open(node, &token, "combo", &rooms).await,
            Some(r) => d.resume(node, r, "combo").await,
        };
        connections += 1;
        let at_start: [Option<i64>; 2] = match &from {
            None => [None, None],
            Some(r) => [r.since_of(rooms[0], team), r.since_of(rooms[1], team)],
        };
        let mut in_connection: HashSet<i64> = HashSet::new();
        let mut record = |a: &Value, live: bool, got: &mut Vec<Event>, bad: &mut usize| {
            let seq = a["seq"].as_i64().unwrap();
            let mine = routed_rooms(a);
            assert!(
                !mine.is_empty(),
                "combo: activity routed to none of its rooms: {a}"
            );
            if mine.iter().all(|&r| at_start[r].is_some_and(|s| seq <= s)) {
                *bad += 1; // replayed although every room it belongs to was resumed past it
            }
            if !in_connection.insert(seq) && (live || exact) {
                *bad += 1; // a live activity twice on one connection (any, on a stream)
            }
            if all_seqs.insert(seq) {
                got.push(event_of(a));
            }
        };
        for (_, s) in &ws.subscribed {
            for a in &s.before {
                record(a, false, &mut got, &mut bad_dups);
            }
        }
        if connections == 1 {
            ready.wait().await;
        }
        let until = Instant::now() + Duration::from_millis(30 + rng.below(600) as u64);
        loop {
            let (done, want, deadline) = {
                let e = expected.lock().unwrap();
                let mut want: HashSet<&Event> = e.team.iter().collect();
                if let Scope::Board(bid) = rooms[1] {
                    want.extend(e.boards.get(&bid).into_iter().flatten());
                }
                (e.done, want.len(), e.give_up_at(started))
            };
            if done && got.len() >= want {
                for a in logged_activities(&ws.barrier().await) {
                    record(&a, true, &mut got, &mut bad_dups);
                }
                ws.close().await;
                return (got, bad_dups, connections);
            }
            if (!done && Instant::now() >= until) || Instant::now() >= deadline {
                break;
            }
            match ws.recv_timeout(Duration::from_millis(50)).await {
                Some(Frame::Json(v)) if is_logged_activity(&v) => {
                    record(&v["activity"], true, &mut got, &mut bad_dups);
                }
                Some(f) if f.is_end() => panic!("combo: server ended the connection: {f:?}"),
                _ => {}
            }
        }
        from = Some(ws.resume_point());
        if rng.chance(50) {
            ws.close().await;
        } else {
            drop(ws);
        }
    }
}

fn tally(expected: &[Event], got: &[Event]) -> Tally {
    let mut t = Tally {
        received: got.len(),
        ..Tally::default()
    };
    let index: HashMap<&Event, usize> = expected.iter().enumerate().map(|(i, e)| (e, i)).collect();
    let mut seen: HashSet<&Event> = HashSet::new();
    let mut last_index: Option<usize> = None;
    for e in got {
        match index.get(e) {
            None => t.unexpected += 1,
            Some(&i) => {
                if !seen.insert(e) {
                    t.duplicated += 1;
                    continue;
                }
                if last_index.is_some_and(|l| i < l) {
                    t.out_of_order += 1;
                }
                last_index = Some(i);
            }
        }
    }
    t.lost = expected.iter().filter(|e| !seen.contains(e)).count();
    t
}

async fn resume_under_concurrent_writes_with_20_clients(d: Deployment) {
    let api = d.client(0);
    let owner = api.new_user("Writer").await;
    let tok = owner.token().to_string();
    let team = api.create_team(&tok, "Busy").await;
    let b1 = team.default_board_id;
    let b2 = api.create_board(&tok, team.id, "B2").await.id;
    let seed = Rng::seed_from_env();
    eprintln!("resume_under_concurrent_writes ({d}) seed = {seed} (TASKFORGE_TEST_SEED to replay)");
    let mut rng = Rng::new(seed);

    let handle = Arc::new(d);
    let expected = Arc::new(Mutex::new(Expected::default()));
    let mut rooms: Vec<Scope> = Vec::new();
    for i in 0..20 {
        rooms.push(Scope::Team(team.id));
        if i % 2 == 0 {
            rooms.push(Scope::Board(b1));
        }
        if i % 3 == 0 {
            rooms.push(Scope::Board(b2));
        }
    }
    let combos = 8;
    let ready = Arc::new(tokio::sync::Barrier::new(rooms.len() + combos + 1));
    let mut combo_clients = Vec::new();
    for i in 0..combos {
        let (h, e, t, r) = (handle.clone(), expected.clone(), tok.clone(), ready.clone());
        let s = seed.wrapping_add(1_000_003 * (i as u64 + 1));
        let pair = [Scope::Team(team.id), Scope::Board(b1)];
        combo_clients.push(tokio::spawn(async move {
            combo_client(h, i, t, pair, s, e, r).await
        }));
    }
    let mut clients = Vec::new();
    for (i, room) in rooms.iter().enumerate() {
        let h = handle.clone();
        let e = expected.clone();
        let t = tok.clone();
        let room = *room;
        let s = seed.wrapping_add(i as u64 * 7919);
        let r = ready.clone();
        clients.push(tokio::spawn(async move {
            resume_client(h, i, t, room, s, e, r).await
        }));
    }
    tokio::time::timeout(Duration::from_secs(30), ready.wait())
        .await
        .expect("clients did not all subscribe within 30 s");

    // The writer: sequential, so its responses are in commit (seq) order.
    let mut tasks: Vec<(Uuid, Uuid)> = Vec::new(); // (task, board)
    let ops = 300;
    let started = Instant::now();
    for i in 0..ops {
        let roll = rng.below(100);
        if tasks.is_empty() || roll < 40 {
            let board = if rng.chance(50) { b1 } else { b2 };
            let t = api
                .create_task(
                    &tok,
                    team.id,
                    json!({"title": format!("t{i}"), "boardId": board}),
                )
                .await;
            let ev: Event = ("task.created".into(), t.id, t.version);
            let mut e = expected.lock().unwrap();
            e.team.push(ev.clone());
            e.boards.entry(board).or_default().push(ev);
            drop(e);
            tasks.push((t.id, board));
        } else if roll < 80 {
            let (id, board) = *rng.pick(&tasks);
            let r = api
                .patch_task(&tok, id, json!({"title": format!("u{i}")}))
                .await;
            let t: Task = r.parse(200);
            assert_eq!(t.board_id, board);
            expected
                .lock()
                .unwrap()
                .boards
                .entry(board)
                .or_default()
                .push(("task.updated".into(), id, t.version));
        } else {
            let (id, _) = *rng.pick(&tasks);
            api.comment(&tok, id, &format!("c{i}")).await; // task room only: in no client room
        }
        // About 10 s of writing in all, so that reconnections happen while it goes on.
        tokio::time::sleep(Duration::from_millis(rng.below(60) as u64)).await;
    }
    {
        let mut e = expected.lock().unwrap();
        e.done = true;
        e.done_at = Some(Instant::now());
    }
    eprintln!("writer: {ops} operations in {:?}", started.elapsed());

    let mut totals = Tally::default();
    let mut problems = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        let (got, connections) = c
            .await
            .unwrap_or_else(|e| panic!("client {i} panicked: {e}"));
        let e = expected.lock().unwrap();
        let want: &[Event] = match rooms[i] {
            Scope::Team(_) => &e.team,
            Scope::Board(bid) => e.boards.get(&bid).map_or(&[], Vec::as_slice),
            Scope::Task(_) => &[],
        };
        let mut t = tally(want, &got);
        t.connections = connections;
        if t.lost + t.duplicated + t.out_of_order + t.unexpected > 0 {
            problems.push(format!("client {i} ({:?}): {t:?}", rooms[i]));
        }
        totals.connections += t.connections;
        totals.received += t.received;
        totals.lost += t.lost;
        totals.duplicated += t.duplicated;
        totals.out_of_order += t.out_of_order;
        totals.unexpected += t.unexpected;
    }
    eprintln!(
        "{} sockets, {} connections, {} activities received: lost {}, duplicated {}, \
         out of order {}, unexpected {}",
        rooms.len(),
        totals.connections,
        totals.received,
        totals.lost,
        totals.duplicated,
        totals.out_of_order,
        totals.unexpected
    );
    // The sockets in two rooms: the union of what they received is exactly team + b1.
    let mut combo_problems = Vec::new();
    for (i, c) in combo_clients.into_iter().enumerate() {
        let (got, bad_dups, connections) = c
            .await
            .unwrap_or_else(|e| panic!("combo client {i} panicked: {e}"));
        let e = expected.lock().unwrap();
        let mut want: HashSet<Event> = e.team.iter().cloned().collect();
        want.extend(e.boards.get(&b1).into_iter().flatten().cloned());
        let got_set: HashSet<Event> = got.iter().cloned().collect();
        let lost = want.difference(&got_set).count();
        let unexpected = got_set.difference(&want).count();
        eprintln!(
            "combo socket {i} (team + b1): {connections} connections, {} distinct activities, \
             lost {lost}, unexpected {unexpected}, disallowed duplicates {bad_dups}",
            got.len()
        );
        if lost + unexpected + bad_dups > 0 {
            combo_problems.push(format!(
                "combo socket {i}: lost {lost}, unexpected {unexpected}, disallowed duplicates {bad_dups}"
            ));
        }
    }
    problems.extend(combo_problems);
    assert!(
        totals.connections >= rooms.len() * 3,
        "clients did not reconnect enough to exercise resume: {}",
        totals.connections
    );
    assert!(
        problems.is_empty(),
        "seed {seed} ({handle}): resume lost/duplicated/reordered activities:\n{}",
        problems.join("\n")
    );
}
