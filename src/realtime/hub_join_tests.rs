//! The subscribe path of a connection (access check in a store snapshot, replay, join at a point
//! of the hub's dispatch) against the real hub, relay, in-process bus and SQLite store: the hand-off
//! from replay to live, joins racing a removal, and a replay to a socket that stops reading. No
//! socket: a `Session` is driven directly and its outbox read as the writer would.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestCaseError, TestRunner};
use serde_json::json;
use tokio::task::JoinHandle;

use super::*;
use crate::domain::{Room, Team};
use crate::realtime::hub::core_tests::{
    ManualClock, Msg, World, drain, eventually, limits, parse_frames, seqs, settle, tokens,
};
use crate::realtime::outbox::Limits;
use crate::realtime::{Realtime, Settings};

fn settings(outbox: Limits) -> Settings {
    Settings {
        auth_timeout: Duration::from_secs(10),
        outbox,
        max_subscriptions: 100,
        rate: 1_000,
        burst: 1_000,
        ping_interval: Duration::from_secs(30),
        max_message_bytes: 64 * 1024,
        check_interval: Duration::from_secs(1),
        presence_ttl: Duration::from_secs(30),
        presence_sweep_interval: Duration::from_secs(10),
        presence_state_ttl: Duration::from_secs(5),
        connect_per_minute: 0,
        trust_forwarded: false,
    }
}

/// The realtime layer over the world's store and bus; it takes the bus's events (unless the test
/// took them first) and dispatches them to its hub.
fn realtime(w: &World, outbox: Limits) -> Arc<Realtime> {
    Realtime::start(
        w.store.clone(),
        &w.bus,
        Arc::new(tokens()),
        settings(outbox),
        &w.tasks,
    )
}

fn session(rt: &Arc<Realtime>, user: &PresenceUser, outbox: Arc<Outbox>) -> Session {
    let id = rt.hub.register(user.clone(), outbox.clone());
    Session {
        rt: rt.clone(),
        id,
        user: user.user_id,
        outbox,
    }
}

/// A `subscribe` as a client sends it: `scope` is `teamId`, `boardId` or `taskId`.
fn subscribe(scope: &str, id: impl Into<uuid::Uuid>, since: Option<i64>) -> ScopeFields {
    let mut msg = json!({ "type": "subscribe", scope: id.into() });
    if let Some(since) = since {
        msg["since"] = json!(since);
    }
    match parse(&msg.to_string()) {
        Ok(ClientMessage::Subscribe(fields)) => fields,
        other => panic!("{msg} parsed as {other:?}"),
    }
}

/// Reads the outbox as the writer task would, into a list, until it closes.
fn collect(outbox: Arc<Outbox>) -> (Arc<Mutex<Vec<Msg>>>, JoinHandle<()>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let task = tokio::spawn(async move {
        let mut batch = Vec::new();
        while outbox.next_batch(&mut batch).await.is_none() {
            sink.lock().extend(parse_frames(&batch));
            batch.clear();
        }
    });
    (got, task)
}

/// Checks one subscriber's frames for `team`: with `since`, the replay of `(since, S]`, then
/// `subscribed` with S; without, `subscribed` with S first; then everything in `(S, last]` live.
/// Every seq once, in order, no gap. Returns S.
fn check_hand_off(
    msgs: &[Msg],
    team: TeamId,
    since: Option<i64>,
    last: i64,
) -> Result<i64, String> {
    let subscribed: Vec<(usize, i64)> = msgs
        .iter()
        .enumerate()
        .filter_map(|(i, m)| match m {
            Msg::Subscribed { seq, .. } => Some((i, *seq)),
            _ => None,
        })
        .collect();
    let [(at, s)] = subscribed[..] else {
        return Err(format!("not one subscribed: {msgs:?}"));
    };
    let replayed = seqs(&msgs[..at], team);
    let live = seqs(&msgs[at + 1..], team);
    let want_replayed: Vec<i64> = match since {
        Some(since) => (since + 1..=s).collect(),
        None => Vec::new(),
    };
    if since.is_some_and(|since| s < since) || s > last {
        return Err(format!("subscribed at {s}, since {since:?}, last {last}"));
    }
    if replayed != want_replayed {
        return Err(format!(
            "replayed {replayed:?}, want {want_replayed:?} (S = {s})"
        ));
    }
    let want_live: Vec<i64> = (s + 1..=last).collect();
    if live != want_live {
        return Err(format!("live {live:?}, want {want_live:?} (S = {s})"));
    }
    Ok(s)
}

/// Whether a subscriber has seen everything up to `last` (its `subscribed`, and `last` itself
/// unless it joined at `last`).
fn caught_up(msgs: &[Msg], team: TeamId, last: i64) -> bool {
    msgs.iter().any(|m| match m {
        Msg::Subscribed { seq, .. } => *seq == last,
        Msg::Activity { team: t, seq, .. } => *t == team && *seq == last,
        _ => false,
    }) && msgs.iter().any(|m| matches!(m, Msg::Subscribed { .. }))
}

struct Subscriber {
    since: Option<i64>,
    got: Arc<Mutex<Vec<Msg>>>,
    reader: JoinHandle<()>,
    subscribing: JoinHandle<()>,
    outbox: Arc<Outbox>,
}

/// Starts a subscribe (to the team's room or its default board's: both get every task.created)
/// beside a reader of its outbox.
fn start_subscriber(
    rt: &Arc<Realtime>,
    user: &PresenceUser,
    team: &Team,
    board: bool,
    since: Option<i64>,
    outbox: Limits,
) -> Subscriber {
    let outbox = Arc::new(Outbox::new(outbox));
    let (got, reader) = collect(outbox.clone());
    let s = session(rt, user, outbox.clone());
    let fields = if board {
        subscribe("boardId", team.default_board_id, since)
    } else {
        subscribe("teamId", team.id, since)
    };
    let subscribing = tokio::spawn(async move { s.subscribe(&fields).await });
    Subscriber {
        since,
        got,
        reader,
        subscribing,
        outbox,
    }
}

impl Subscriber {
    /// Waits for the subscribe and for everything up to `last`, stops the reader, and checks the
    /// hand-off.
    async fn finish(self, team: TeamId, last: i64) -> Result<i64, String> {
        self.subscribing.await.expect("the subscribe");
        let got = self.got.clone();
        eventually("the subscriber caught up", || {
            let done = caught_up(&got.lock(), team, last);
            async move { done }
        })
        .await;
        self.outbox.close(CloseReason::GoingAway);
        self.reader.await.expect("the reader");
        let msgs = self.got.lock().clone();
        check_hand_off(&msgs, team, self.since, last)
    }
}

/// Subscribes (plain and resuming, to the team's room and a board's) while activities are being
/// committed and dispatched, on two worker threads: every subscriber gets its replay, then
/// `subscribed`, then live, each seq exactly once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_while_activities_flow_hands_off_from_replay_to_live_without_gap_or_repeat() {
    const WRITES: i64 = 150;
    let w = World::new().await;
    let rt = realtime(&w, limits(100_000));
    let owner = w.user("Owner").await;
    let team = w.team(&owner).await;
    let writer = {
        let services = w.services.clone();
        let (actor, team) = (owner.user_id, team.id);
        tokio::spawn(async move {
            for i in 0..WRITES {
                let input = serde_json::from_value(json!({ "title": format!("t{i}") }))
                    .expect("a new task");
                services
                    .create_task(actor, team, input)
                    .await
                    .expect("create task");
            }
        })
    };
    let mut subscribers = Vec::new();
    for i in 0..12i64 {
        let w = &w;
        eventually("more commits", || async move {
            w.last_seq(team.id).await >= i * 12
        })
        .await;
        let now = w.last_seq(team.id).await;
        let since = match i % 3 {
            0 => None,
            1 => Some((now - 10).max(0)),
            _ => Some(0),
        };
        subscribers.push(start_subscriber(
            &rt,
            &owner,
            &team,
            i % 2 == 1,
            since,
            limits(100_000),
        ));
    }
    writer.await.expect("the writer");
    let last = w.last_seq(team.id).await;
    assert_eq!(last, WRITES);
    let mut joined_at = Vec::new();
    for s in subscribers {
        let since = s.since;
        match s.finish(team.id, last).await {
            Ok(at) => joined_at.push((since, at)),
            Err(e) => panic!("since {since:?}: {e}"),
        }
    }
    eprintln!("(since, subscribed seq) of each subscriber: {joined_at:?}");
    assert!(
        joined_at.iter().any(|(_, at)| *at < last),
        "some subscribers joined while the writes went on"
    );
}

#[derive(Debug, Clone)]
enum Step {
    Commit(usize),
    /// A subscribe, to the board's room or the team's, resuming from a share (in %) of the team's
    /// seq at that moment.
    Subscribe {
        board: bool,
        since: Option<u8>,
    },
    Yield(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (1..=3usize).prop_map(Step::Commit),
        2 => (any::<bool>(), proptest::option::of(0..=100u8))
            .prop_map(|(board, since)| Step::Subscribe { board, since }),
        1 => (1..=20u8).prop_map(Step::Yield),
    ]
}

/// One interleaving: the steps run in order, but each subscribe goes on beside the steps after it.
async fn hand_off_case(steps: &[Step]) -> Result<(), TestCaseError> {
    let w = World::new().await;
    let rt = realtime(&w, limits(100_000));
    let owner = w.user("Owner").await;
    let team = w.team(&owner).await;
    let mut subscribers = Vec::new();
    for step in steps {
        match *step {
            Step::Commit(n) => {
                for _ in 0..n {
                    w.task(&owner, &team, None).await;
                }
            }
            Step::Subscribe { board, since } => {
                let now = w.last_seq(team.id).await;
                let since = since.map(|share| now * i64::from(share) / 100);
                // A window of two: long replays wait for the reader.
                let window = Limits {
                    replay_frames: 2,
                    ..limits(100_000)
                };
                subscribers.push(start_subscriber(&rt, &owner, &team, board, since, window));
            }
            Step::Yield(n) => {
                for _ in 0..n {
                    tokio::task::yield_now().await;
                }
            }
        }
    }
    let last = w.last_seq(team.id).await;
    for s in subscribers {
        let since = s.since;
        if let Err(e) = s.finish(team.id, last).await {
            prop_assert!(false, "since {:?}: {}", since, e);
        }
    }
    w.tasks.shutdown().await;
    Ok(())
}

/// Any interleaving of commits and subscribes (plain or resuming, from anywhere in the log) gives
/// each subscriber a gap-free, repeat-free, increasing sequence across its replay and live parts.
#[test]
fn any_interleaving_of_commits_and_subscribes_hands_off_gap_free() {
    let mut runner = TestRunner::new(PropConfig {
        cases: 32,
        failure_persistence: None,
        ..PropConfig::default()
    });
    let outcome = runner.run(&proptest::collection::vec(step(), 1..12), |steps| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(hand_off_case(&steps))
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
}

/// A member subscribes while being removed, on two worker threads. Whichever wins, the socket does
/// not stay in the room: either the subscribe is refused, or it joined before the removal and the
/// removal revokes it (`member.removed`, then `unsubscribed`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_racing_the_members_removal_never_outlives_it() {
    const ROUNDS: usize = 20;
    let w = World::new().await;
    let rt = realtime(&w, limits(1_000));
    let (owner, member) = (w.user("Owner").await, w.user("Member").await);
    let team = w.team(&owner).await;
    // The owner's socket keeps the team followed throughout.
    let o = session(
        &rt,
        &owner,
        crate::realtime::hub::core_tests::outbox(100_000),
    );
    o.subscribe(&subscribe("teamId", team.id, None)).await;
    let (mut joined, mut refused) = (0, 0);
    for _ in 0..ROUNDS {
        w.add(&owner, &team, &member).await;
        let out = crate::realtime::hub::core_tests::outbox(1_000);
        let s = session(&rt, &member, out.clone());
        let id = s.id;
        let fields = subscribe("teamId", team.id, None);
        let subscribing = tokio::spawn(async move { s.subscribe(&fields).await });
        w.remove(&owner, &team, &member).await;
        subscribing.await.expect("the subscribe");
        let removed = w.last_seq(team.id).await;
        eventually("the removal dispatched", || async {
            rt.hub.dispatched(team.id).is_some_and(|d| d >= removed)
        })
        .await;
        let msgs = drain(&out);
        assert!(
            !rt.hub.leave(id, Room::Team(team.id)),
            "still in the room after the removal: {msgs:?}"
        );
        let at = |want: &Msg| msgs.iter().position(|m| m == want);
        let removal = Msg::activity(team.id, removed, "member.removed");
        match msgs
            .iter()
            .position(|m| matches!(m, Msg::Subscribed { .. }))
        {
            Some(sub) => {
                joined += 1;
                let rm = at(&removal).expect("member.removed");
                let revoked = at(&Msg::revoked(team.id)).expect("revoked");
                assert!(sub < rm && rm < revoked, "{msgs:?}");
            }
            None => {
                refused += 1;
                assert!(
                    msgs.contains(&Msg::Error {
                        code: "forbidden".into()
                    }),
                    "{msgs:?}"
                );
            }
        }
        rt.hub.unregister(id);
    }
    eprintln!("{joined} subscribes joined and were revoked, {refused} were refused");
    drop(o);
}

/// A resume whose snapshot is ahead of the hub (the bus has not brought the latest commits yet)
/// has the hub catch up from the log first, then replays up to that point: nothing is missed or
/// repeated between replay and live.
#[tokio::test(start_paused = true)]
async fn a_resume_ahead_of_the_hub_catches_it_up_then_replays_the_difference() {
    let _clock = ManualClock::hold();
    let w = World::new().await;
    // Nobody dispatches what the bus brings: the hub learns of commits only from the log.
    let _events = w.events();
    let rt = realtime(&w, limits(64));
    let owner = w.user("Owner").await;
    let team = w.team(&owner).await;
    let first = crate::realtime::hub::core_tests::outbox(64);
    let a = session(&rt, &owner, first.clone());
    a.subscribe(&subscribe("teamId", team.id, None)).await;
    assert_eq!(
        drain(&first),
        [Msg::Subscribed {
            id: team.id.into(),
            seq: 0
        }]
    );
    for _ in 0..3 {
        w.task(&owner, &team, None).await;
    }
    assert_eq!(rt.hub.dispatched(team.id), Some(0), "the hub is behind");

    let second = crate::realtime::hub::core_tests::outbox(64);
    let b = session(&rt, &owner, second.clone());
    b.subscribe(&subscribe("teamId", team.id, Some(0))).await;
    let msgs = drain(&second);
    assert_eq!(
        check_hand_off(&msgs, team.id, Some(0), 3),
        Ok(3),
        "{msgs:?}"
    );
    assert_eq!(
        seqs(&drain(&first), team.id),
        [1, 2, 3],
        "live on the first socket"
    );

    for _ in 0..2 {
        w.task(&owner, &team, None).await;
    }
    rt.hub.check().await.expect("check");
    assert_eq!(seqs(&drain(&first), team.id), [4, 5]);
    assert_eq!(seqs(&drain(&second), team.id), [4, 5]);
}

/// A replay waits for the writer while its window is full; when the socket takes nothing for the
/// stall time, it is cut as a slow consumer and never joins the room.
#[tokio::test(start_paused = true)]
async fn a_replay_to_a_socket_that_stops_reading_is_cut_after_the_stall_and_never_joins() {
    let _clock = ManualClock::hold();
    let w = World::new().await;
    let window = Limits {
        replay_frames: 2,
        stall: Duration::from_secs(5),
        ..limits(64)
    };
    let rt = realtime(&w, window);
    let owner = w.user("Owner").await;
    let team = w.team(&owner).await;
    for _ in 0..10 {
        w.task(&owner, &team, None).await;
    }
    let out = Arc::new(Outbox::new(window));
    let s = session(&rt, &owner, out.clone());
    let id = s.id;
    let started = tokio::time::Instant::now();
    let fields = subscribe("teamId", team.id, Some(0));
    let subscribing = tokio::spawn(async move { s.subscribe(&fields).await });
    // The clock moves only once the replay waits (its stall timer started): on a loaded machine
    // the store's threads may take a while to get there.
    eventually("the replay waits for the writer", || async {
        out.replay_waits() > 0
    })
    .await;
    assert!(!subscribing.is_finished());
    tokio::time::advance(Duration::from_secs(4)).await;
    for _ in 0..20 {
        settle().await;
    }
    assert!(!out.is_closed(), "not cut before the stall time");
    tokio::time::advance(Duration::from_secs(1)).await;
    eventually("the cut", || async { out.is_closed() }).await;
    subscribing.await.expect("the subscribe");
    assert!(started.elapsed() >= Duration::from_secs(5));
    let mut batch = Vec::new();
    assert_eq!(
        out.next_batch(&mut batch).await,
        Some(CloseReason::SlowConsumer)
    );
    assert!(!rt.hub.leave(id, Room::Team(team.id)), "never joined");
}
