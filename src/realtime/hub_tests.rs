//! Unit tests of the hub's core rules against the real store (SQLite in a temp file), the relay and
//! the in-process bus: gap repair, revocation order, the user-copy rules, the slow-consumer cut and
//! the per-socket bounds. The tests play the bus consumer (the loop `Realtime::start` runs), so
//! they can lose, reorder or repeat what the bus delivered. The fixture at the top is shared with
//! the subscribe tests of `connection` (`hub_join_tests.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestCaseError, TestRunner};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::*;
use crate::bus::{BusEvent, InProcessBus, Relay, RelaySettings};
use crate::domain::{Role, Task, Team, User};
use crate::realtime::outbox::Limits;
use crate::service::{MemberRef, Services, TokenService};
use crate::supervisor::Supervisor;

// ---------------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------------

/// Every id these tests make is made here (ids becoming types is a change of this line).
pub(in crate::realtime) fn new_id<T: From<Uuid>>() -> T {
    T::from(Uuid::now_v7())
}

/// Keeps a paused clock from auto-advancing: only `tokio::time::advance` moves it. The store
/// answers from its own threads, and auto-advance would jump to the next timer (a relay scan, the
/// pool's acquire timeout) whenever the runtime waits for it. A blocking task in flight inhibits
/// auto-advance (documented under `tokio::time::pause`); this one runs until the guard drops.
pub(in crate::realtime) struct ManualClock {
    _hold: std::sync::mpsc::Sender<()>,
}

impl ManualClock {
    /// In a current-thread runtime started paused.
    pub(in crate::realtime) fn hold() -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        drop(tokio::task::spawn_blocking(move || {
            let _ = rx.recv();
        }));
        Self { _hold: tx }
    }
}

/// A moment of real time for the other tasks and the store's threads (a paused clock stays put).
pub(in crate::realtime) async fn settle() {
    tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(2)))
        .await
        .expect("settle");
}

/// Waits (in real time, at most 20 s) until `cond` holds.
pub(in crate::realtime) async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !cond().await {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        settle().await;
    }
}

pub(in crate::realtime) fn tokens() -> TokenService {
    TokenService::new(
        b"0123456789abcdef0123456789abcdef",
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    )
}

pub(in crate::realtime) fn limits(frames: usize) -> Limits {
    Limits {
        frames,
        bytes: 16 << 20,
        replay_frames: 4,
        replay_bytes: 1 << 20,
        stall: Duration::from_secs(5),
    }
}

pub(in crate::realtime) fn outbox(frames: usize) -> Arc<Outbox> {
    Arc::new(Outbox::new(limits(frames)))
}

/// A SQLite store in a temp dir, the in-process bus, the relay and the services over them.
pub(in crate::realtime) struct World {
    _dir: tempfile::TempDir,
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub services: Services,
    pub tasks: Supervisor,
}

impl World {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let url = format!("sqlite://{}", dir.path().join("core.db").display());
        let store = crate::store::connect(&url, 1)
            .await
            .expect("a sqlite store");
        let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new(4096));
        let tasks = Supervisor::new();
        let relay = Relay::start(store.clone(), bus.clone(), RelaySettings::default(), &tasks);
        let services = Services {
            store: store.clone(),
            relay,
            tokens: Arc::new(tokens()),
            hashing: Arc::new(crate::service::PasswordHashing::for_this_machine()),
            webhooks: Arc::new(crate::service::webhooks::WebhookPolicy::for_tests()),
        };
        Self {
            _dir: dir,
            store,
            bus,
            services,
            tasks,
        }
    }

    pub fn hub(&self, max_rooms: usize) -> Hub {
        Hub::new(self.store.clone(), self.bus.clone(), max_rooms)
    }

    /// The bus's events (take them before the commits to be seen: until then nothing is sent).
    pub fn events(&self) -> mpsc::Receiver<BusEvent> {
        self.bus.take_events().expect("the bus's events")
    }

    pub async fn user(&self, name: &str) -> PresenceUser {
        let user = User {
            id: new_id(),
            email: format!("{}@example.com", Uuid::now_v7().simple()),
            display_name: name.to_owned(),
            created_at: time::OffsetDateTime::now_utc(),
        };
        let mut tx = self.store.write().await.expect("write");
        tx.insert_user(&user, "not a hash").await.expect("user");
        tx.commit().await.expect("commit");
        PresenceUser {
            user_id: user.id,
            display_name: user.display_name,
        }
    }

    /// A team (creating it emits nothing: its seq starts at 0).
    pub async fn team(&self, owner: &PresenceUser) -> Team {
        self.services
            .create_team(owner.user_id, "core")
            .await
            .expect("team")
    }

    pub async fn add(&self, owner: &PresenceUser, team: &Team, who: &PresenceUser) {
        self.services
            .add_member(
                owner.user_id,
                team.id,
                MemberRef::Id(who.user_id),
                Role::Member,
            )
            .await
            .expect("add member");
    }

    pub async fn remove(&self, owner: &PresenceUser, team: &Team, who: &PresenceUser) {
        self.services
            .remove_member(owner.user_id, team.id, who.user_id)
            .await
            .expect("remove member");
    }

    pub async fn set_role(&self, owner: &PresenceUser, team: &Team, who: &PresenceUser, r: Role) {
        self.services
            .set_member_role(owner.user_id, team.id, who.user_id, r)
            .await
            .expect("set role");
    }

    pub async fn rename(&self, owner: &PresenceUser, team: &Team) {
        self.services
            .rename_team(owner.user_id, team.id, "renamed")
            .await
            .expect("rename team");
    }

    pub async fn task(
        &self,
        actor: &PresenceUser,
        team: &Team,
        assignee: Option<&PresenceUser>,
    ) -> Task {
        self.task_with(
            actor,
            team,
            json!({ "assigneeUserId": assignee.map(|u| u.user_id) }),
        )
        .await
    }

    /// A task from `fields` (a `NewTask` body; a title is added).
    pub async fn task_with(&self, actor: &PresenceUser, team: &Team, mut fields: Value) -> Task {
        fields["title"] = json!("a task");
        let input = serde_json::from_value(fields).expect("a new task");
        self.services
            .create_task(actor.user_id, team.id, input)
            .await
            .expect("create task")
    }

    pub async fn patch(&self, actor: &PresenceUser, task: &Task, patch: Value) -> Task {
        let patch = serde_json::from_value(patch).expect("a task patch");
        self.services
            .update_task(actor.user_id, task.id, patch, None)
            .await
            .expect("update task")
    }

    pub async fn comment(&self, actor: &PresenceUser, task: &Task) {
        self.services
            .create_comment(actor.user_id, task.id, "a comment")
            .await
            .expect("comment");
    }

    pub async fn last_seq(&self, team: TeamId) -> i64 {
        let mut tx = self.store.read().await.expect("read");
        tx.last_seq(team).await.expect("last seq").unwrap_or(0)
    }

    /// The team's log, `(after, upto]`.
    pub async fn log(&self, team: TeamId, after: i64, upto: i64) -> Vec<LogEntry> {
        let mut tx = self.store.read().await.expect("read");
        tx.activities(team, after, upto, 10_000).await.expect("log")
    }
}

/// Reads the bus until every `(team, seq)` of `want` came on its team's channel and every user
/// copy of what came did too. Returns the events in arrival order.
pub(in crate::realtime) async fn receive(
    events: &mut mpsc::Receiver<BusEvent>,
    want: &[(TeamId, i64)],
) -> Vec<BusEvent> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    loop {
        while let Ok(event) = events.try_recv() {
            got.push(event);
        }
        let published: BTreeSet<(TeamId, i64)> = team_batches(&got)
            .flatten()
            .map(|e| (e.team_id(), e.seq))
            .collect();
        let copies_owed = team_batches(&got)
            .flatten()
            .filter(|e| e.route.recipient().is_some())
            .count();
        let copies = got
            .iter()
            .filter(|e| matches!(e, BusEvent::UserActivity(_)))
            .count();
        if want.iter().all(|w| published.contains(w)) && copies == copies_owed {
            return got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the bus did not bring {want:?}: got {published:?}"
        );
        settle().await;
    }
}

fn team_batches(events: &[BusEvent]) -> impl Iterator<Item = &Vec<LogEntry>> {
    events.iter().filter_map(|e| match e {
        BusEvent::Activities(batch) => Some(batch),
        _ => None,
    })
}

/// The entries of `team` that came on its channel, by seq.
fn team_entries(events: &[BusEvent], team: TeamId) -> BTreeMap<i64, LogEntry> {
    team_batches(events)
        .flatten()
        .filter(|e| e.team_id() == team)
        .map(|e| (e.seq, e.clone()))
        .collect()
}

/// The user-channel copy of `team`'s `seq`.
fn copy_of(events: &[BusEvent], team: TeamId, seq: i64) -> LogEntry {
    events
        .iter()
        .find_map(|e| match e {
            BusEvent::UserActivity(e) if e.team_id() == team && e.seq == seq => Some(e.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no user copy of seq {seq}"))
}

/// Hands the hub what the bus delivered, as `Realtime::start`'s dispatch loop does.
pub(in crate::realtime) async fn feed(hub: &Hub, events: &[BusEvent]) {
    for event in events.iter().cloned() {
        match event {
            BusEvent::Activities(entries) => hub.dispatch(entries).await,
            BusEvent::UserActivity(entry) => hub.deliver_user_copy(entry),
            BusEvent::Presence(ev) => hub.on_presence(&ev),
            BusEvent::Resync => hub.check().await.expect("check"),
            // The inbox feed is not the hub's.
            BusEvent::Inbox(..) | BusEvent::StreamMessage { .. } => {}
        }
    }
}

/// A server frame, as much of it as these tests look at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(in crate::realtime) enum Msg {
    Activity {
        team: TeamId,
        seq: i64,
        kind: String,
    },
    Presence {
        kind: String,
        user: UserId,
    },
    Subscribed {
        id: Uuid,
        seq: i64,
    },
    Unsubscribed {
        id: Uuid,
        reason: Option<String>,
    },
    Error {
        code: String,
    },
    Other(String),
}

impl Msg {
    pub fn activity(team: TeamId, seq: i64, kind: &str) -> Self {
        Msg::Activity {
            team,
            seq,
            kind: kind.to_owned(),
        }
    }

    pub fn revoked(id: impl Into<Uuid>) -> Self {
        Msg::Unsubscribed {
            id: id.into(),
            reason: Some("membership_revoked".to_owned()),
        }
    }
}

fn uuid_at(v: &Value) -> Option<Uuid> {
    v.as_str().and_then(|s| s.parse().ok())
}

fn scope_id(v: &Value) -> Option<Uuid> {
    ["teamId", "boardId", "taskId"]
        .iter()
        .find_map(|k| uuid_at(&v[*k]))
}

fn parse_frame(frame: &Frame) -> Msg {
    let Some(text) = frame.text() else {
        return Msg::Other(format!("{frame:?}"));
    };
    let v: Value = serde_json::from_str(text.as_str()).expect("frames are JSON");
    let parsed = match v["type"].as_str() {
        Some("activity") => {
            let a = &v["activity"];
            let kind = a["type"].as_str().unwrap_or_default().to_owned();
            match (a["seq"].as_i64(), uuid_at(&a["teamId"])) {
                (Some(seq), Some(team)) => Some(Msg::Activity {
                    team: team.into(),
                    seq,
                    kind,
                }),
                (None, _) => uuid_at(&a["data"]["userId"]).map(|user| Msg::Presence {
                    kind,
                    user: user.into(),
                }),
                _ => None,
            }
        }
        Some("subscribed") => scope_id(&v)
            .zip(v["seq"].as_i64())
            .map(|(id, seq)| Msg::Subscribed { id, seq }),
        Some("unsubscribed") => scope_id(&v).map(|id| Msg::Unsubscribed {
            id,
            reason: v["reason"].as_str().map(str::to_owned),
        }),
        Some("error") => v["code"]
            .as_str()
            .map(|c| Msg::Error { code: c.to_owned() }),
        _ => None,
    };
    parsed.unwrap_or_else(|| Msg::Other(text.to_string()))
}

pub(in crate::realtime) fn parse_frames(frames: &[Frame]) -> Vec<Msg> {
    frames.iter().map(parse_frame).collect()
}

/// Everything queued in `outbox` now (nothing if it is empty).
pub(in crate::realtime) fn drain(outbox: &Outbox) -> Vec<Msg> {
    let mut batch = Vec::new();
    let _ = outbox.next_batch(&mut batch).now_or_never();
    parse_frames(&batch)
}

/// The seqs of `team`'s activities among `msgs`, in order.
pub(in crate::realtime) fn seqs(msgs: &[Msg], team: TeamId) -> Vec<i64> {
    msgs.iter()
        .filter_map(|m| match m {
            Msg::Activity { team: t, seq, .. } if *t == team => Some(*seq),
            _ => None,
        })
        .collect()
}

/// Joins `conn` to `scope` as a subscribe does (without its access check): at a point of the
/// team's dispatch that a fresh snapshot vouches for.
async fn join(w: &World, hub: &Hub, conn: ConnId, scope: Scope, team: TeamId) -> i64 {
    join_seeing(w, hub, conn, scope, team, &[]).await
}

/// `join` with `elsewhere` as the other instances' viewers read before it.
async fn join_seeing(
    w: &World,
    hub: &Hub,
    conn: ConnId,
    scope: Scope,
    team: TeamId,
    elsewhere: &[PresenceView],
) -> i64 {
    let _pin = hub.follow(team).await.expect("follow");
    for _ in 0..64 {
        let snapshot = w.last_seq(team).await;
        match hub.join(conn, scope, team, snapshot, None, elsewhere) {
            Join::Joined(seq) => return seq,
            Join::Behind => hub.catch_up(team, snapshot).await.expect("catch up"),
            Join::Stale => tokio::task::yield_now().await,
            other => panic!("join {scope:?}: {other:?}"),
        }
    }
    panic!("join {scope:?}: the dispatch never settled");
}

// ---------------------------------------------------------------------------------------------
// Gap repair
// ---------------------------------------------------------------------------------------------

/// The bus loses and reorders: a seq that skips ahead (also inside a batch) makes the hub read what
/// it skipped from the log first; what arrives late is dropped; a batch out of order is sorted.
#[tokio::test]
async fn a_gap_left_by_the_bus_is_filled_from_the_log_in_order() {
    let w = World::new().await;
    let mut events = w.events();
    let owner = w.user("Owner").await;
    let team = w.team(&owner).await;
    let hub = w.hub(16);
    let out = outbox(64);
    let conn = hub.register(owner.clone(), out.clone());
    assert_eq!(join(&w, &hub, conn, Scope::Team(team.id), team.id).await, 0);
    drain(&out);
    for _ in 0..12 {
        w.task(&owner, &team, None).await;
    }
    let bus = team_entries(&receive(&mut events, &[(team.id, 12)]).await, team.id);
    let one = |seq: i64| vec![bus[&seq].clone()];

    hub.dispatch(one(2)).await; // 1 lost on the way (so far)
    assert_eq!(seqs(&drain(&out), team.id), [1, 2], "1 read from the log");
    hub.dispatch(one(1)).await; // ... and arriving late after all
    hub.dispatch(one(5)).await; // 3 and 4 lost
    hub.dispatch(one(4)).await;
    hub.dispatch(one(6)).await;
    hub.dispatch(vec![bus[&9].clone(), bus[&7].clone(), bus[&8].clone()])
        .await;
    assert_eq!(seqs(&drain(&out), team.id), [3, 4, 5, 6, 7, 8, 9]);
    // A hole inside one message is a skip ahead too.
    hub.dispatch(vec![bus[&10].clone(), bus[&12].clone()]).await;
    assert_eq!(seqs(&drain(&out), team.id), [10, 11, 12]);
    assert_eq!(hub.dispatched(team.id), Some(12));
}

/// The periodic check reads from the log only what was already committed at the previous
/// check and has still not arrived: what the bus brings in between is not read twice, and what
/// it lost arrives at the second check.
#[tokio::test]
async fn the_periodic_check_reads_only_what_stayed_missing_for_a_whole_interval() {
    let w = World::new().await;
    let mut events = w.events();
    let owner = w.user("Owner").await;
    let team = w.team(&owner).await;
    let hub = w.hub(16);
    let out = outbox(64);
    let conn = hub.register(owner.clone(), out.clone());
    assert_eq!(join(&w, &hub, conn, Scope::Team(team.id), team.id).await, 0);
    drain(&out);
    for _ in 0..3 {
        w.task(&owner, &team, None).await;
    }
    let bus = team_entries(&receive(&mut events, &[(team.id, 3)]).await, team.id);

    // 1 and 2 lost by the bus, 3 not yet arrived: the first check only notes the log's seq.
    hub.check_settled().await.expect("check");
    assert!(drain(&out).is_empty(), "nothing is read at the first look");
    // 3 arrives between the checks, and brings 1 and 2 from the log with it (a gap).
    hub.dispatch(vec![bus[&3].clone()]).await;
    assert_eq!(seqs(&drain(&out), team.id), [1, 2, 3]);

    // 4 is committed and never arrives; 5 is committed just before a check and arrives after.
    w.task(&owner, &team, None).await;
    hub.check_settled().await.expect("check");
    assert!(
        drain(&out).is_empty(),
        "4 was committed after the previous check"
    );
    w.task(&owner, &team, None).await;
    let bus = team_entries(&receive(&mut events, &[(team.id, 5)]).await, team.id);
    hub.check_settled().await.expect("check");
    assert_eq!(
        seqs(&drain(&out), team.id),
        [4],
        "4 stayed missing a whole interval; 5 is left to the bus"
    );
    hub.dispatch(vec![bus[&5].clone()]).await;
    assert_eq!(seqs(&drain(&out), team.id), [5]);
    hub.check_settled().await.expect("check");
    assert!(drain(&out).is_empty(), "nothing is delivered twice");
    assert_eq!(hub.dispatched(team.id), Some(5));
}

#[derive(Debug, Clone)]
enum Delivery {
    /// A bus message carrying these seqs (any order, repeats allowed).
    Batch(Vec<i64>),
    /// The periodic check (or a bus `Resync`).
    Check,
}

const GAP_LOG: i64 = 8;

/// One case: the hub follows a fresh team whose log holds `GAP_LOG` activities, and the bus
/// delivers `deliveries`. After each, the socket holds exactly 1..=k, where k is the highest seq
/// that arrived (all of it after a check); after a final check, the whole log.
async fn gap_case(
    w: &World,
    owner: &PresenceUser,
    deliveries: &[Delivery],
) -> Result<(), TestCaseError> {
    let team = w.team(owner).await;
    let hub = w.hub(16);
    let out = outbox(256);
    let conn = hub.register(owner.clone(), out.clone());
    join(w, &hub, conn, Scope::Team(team.id), team.id).await;
    drain(&out);
    for _ in 0..GAP_LOG {
        w.task(owner, &team, None).await;
    }
    let log = w.log(team.id, 0, GAP_LOG).await;
    prop_assert_eq!(log.len() as i64, GAP_LOG);
    let mut delivered = Vec::new();
    let mut upto = 0;
    for d in deliveries {
        match d {
            Delivery::Batch(batch) => {
                let entries = batch.iter().map(|s| log[(*s - 1) as usize].clone());
                hub.dispatch(entries.collect()).await;
                upto = batch.iter().copied().fold(upto, i64::max);
            }
            Delivery::Check => {
                hub.check().await.expect("check");
                upto = GAP_LOG;
            }
        }
        delivered.extend(seqs(&drain(&out), team.id));
        prop_assert_eq!(&delivered, &(1..=upto).collect::<Vec<_>>(), "after {:?}", d);
    }
    hub.check().await.expect("check");
    delivered.extend(seqs(&drain(&out), team.id));
    prop_assert_eq!(&delivered, &(1..=GAP_LOG).collect::<Vec<_>>());
    hub.unregister(conn);
    Ok(())
}

/// Any loss, reordering or repetition by the bus: each seq reaches the socket once, in order;
/// everything up to the highest seq that arrived at once, the rest at the next check.
#[test]
fn any_loss_reorder_or_repeat_on_the_bus_delivers_each_seq_once_in_order() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let (w, owner) = rt.block_on(async {
        let w = World::new().await;
        let owner = w.user("Owner").await;
        (w, owner)
    });
    let delivery = prop_oneof![
        6 => proptest::collection::vec(1..=GAP_LOG, 1..=3).prop_map(Delivery::Batch),
        1 => Just(Delivery::Check),
    ];
    let mut runner = TestRunner::new(PropConfig {
        cases: 64,
        failure_persistence: None,
        ..PropConfig::default()
    });
    let outcome = runner.run(&proptest::collection::vec(delivery, 0..12), |d| {
        rt.block_on(gap_case(&w, &owner, &d))
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Revocation
// ---------------------------------------------------------------------------------------------

/// The contract's order: the removed user's sockets get `member.removed` (seq N), then one
/// `unsubscribed` (`membership_revoked`) per room of that team, then nothing of that team above N;
/// their other teams' rooms stay; the task room's others see them leave.
#[tokio::test]
async fn a_removed_member_gets_member_removed_then_unsubscribed_and_nothing_after() {
    let w = World::new().await;
    let mut events = w.events();
    let (owner, member) = (w.user("Owner").await, w.user("Member").await);
    let (team, other) = (w.team(&owner).await, w.team(&owner).await);
    w.add(&owner, &team, &member).await;
    w.add(&owner, &other, &member).await;
    let task = w.task(&owner, &team, None).await;
    let setup = w.last_seq(team.id).await;
    receive(&mut events, &[(team.id, setup), (other.id, 1)]).await;

    let hub = w.hub(16);
    let (mine, idle, theirs) = (outbox(64), outbox(64), outbox(64));
    let m = hub.register(member.clone(), mine.clone());
    hub.register(member.clone(), idle.clone()); // in no room but the user's own
    let o = hub.register(owner.clone(), theirs.clone());
    let board = team.default_board_id;
    for scope in [
        Scope::Team(team.id),
        Scope::Board(board),
        Scope::Task(task.id),
    ] {
        join(&w, &hub, m, scope, team.id).await;
    }
    join(&w, &hub, m, Scope::Team(other.id), other.id).await;
    join(&w, &hub, o, Scope::Team(team.id), team.id).await;
    join(&w, &hub, o, Scope::Task(task.id), team.id).await;
    for out in [&mine, &idle, &theirs] {
        drain(out);
    }

    w.task(&owner, &team, None).await; // team and board rooms
    w.remove(&owner, &team, &member).await;
    let removed = setup + 2;
    w.task(&owner, &team, None).await; // team and board rooms
    w.patch(&owner, &task, json!({ "title": "renamed" })).await; // board and task rooms
    w.rename(&owner, &other).await;
    let got = receive(&mut events, &[(team.id, removed + 2), (other.id, 2)]).await;
    feed(&hub, &got).await;

    let msgs = drain(&mine);
    assert_eq!(
        msgs[..2],
        [
            Msg::activity(team.id, setup + 1, "task.created"),
            Msg::activity(team.id, removed, "member.removed"),
        ],
        "{msgs:#?}"
    );
    let unsubscribed: BTreeSet<Msg> = msgs[2..5].iter().cloned().collect();
    let want: BTreeSet<Msg> = [
        Msg::revoked(team.id),
        Msg::revoked(board),
        Msg::revoked(task.id),
    ]
    .into();
    assert_eq!(unsubscribed, want, "{msgs:#?}");
    assert_eq!(
        msgs[5..],
        [Msg::activity(other.id, 2, "team.updated")],
        "nothing of the team after member.removed; the other team's room stays"
    );
    assert_eq!(
        drain(&idle),
        [Msg::activity(team.id, removed, "member.removed")],
        "a socket in no room of the team hears of it too, through the user's own room"
    );
    assert_eq!(
        drain(&theirs),
        [
            Msg::activity(team.id, setup + 1, "task.created"),
            Msg::activity(team.id, removed, "member.removed"),
            Msg::Presence {
                kind: "presence.left".into(),
                user: member.user_id
            },
            Msg::activity(team.id, removed + 1, "task.created"),
            Msg::activity(team.id, removed + 2, "task.updated"),
        ]
    );
    assert_eq!(hub.counted_subscriptions(), hub.state.lock().subscriptions);
    assert!(!hub.leave(m, Room::Team(team.id)), "revoked");
    assert!(hub.leave(m, Room::Team(other.id)), "kept");
}

/// A join checked in a snapshot taken before the removal committed is accepted only at that
/// snapshot's point of the dispatch, so the removal is dispatched after it and revokes it; once
/// the removal is dispatched, the same snapshot no longer vouches for a join.
#[tokio::test]
async fn a_join_vouched_before_a_removal_is_revoked_by_it_and_a_later_one_is_refused() {
    let w = World::new().await;
    let mut events = w.events();
    let (owner, member) = (w.user("Owner").await, w.user("Member").await);
    let team = w.team(&owner).await;
    w.add(&owner, &team, &member).await;
    receive(&mut events, &[(team.id, 1)]).await;
    let hub = w.hub(16);
    let o = hub.register(owner.clone(), outbox(64));
    join(&w, &hub, o, Scope::Team(team.id), team.id).await;

    let vouched = w.last_seq(team.id).await; // the member's access was checked here
    w.remove(&owner, &team, &member).await;
    let got = receive(&mut events, &[(team.id, 2)]).await;
    let (early, late) = (outbox(64), outbox(64));
    let m1 = hub.register(member.clone(), early.clone());
    let room = Scope::Team(team.id);
    assert_eq!(
        hub.join(m1, room, team.id, vouched, None, &[]),
        Join::Joined(1)
    );
    feed(&hub, &got).await;
    assert_eq!(
        drain(&early),
        [
            Msg::Subscribed {
                id: team.id.into(),
                seq: 1
            },
            Msg::activity(team.id, 2, "member.removed"),
            Msg::revoked(team.id),
        ]
    );

    let m2 = hub.register(member.clone(), late.clone());
    assert_eq!(
        hub.join(m2, room, team.id, vouched, None, &[]),
        Join::Stale,
        "the dispatch passed the snapshot: the caller must check again"
    );
    let mut tx = w.store.read().await.expect("read");
    assert_eq!(tx.role(team.id, member.user_id).await.expect("role"), None);
    drop(tx);
    assert!(!hub.leave(m1, Room::Team(team.id)));
    assert!(!hub.leave(m2, Room::Team(team.id)));
    assert_eq!(
        seqs(&drain(&late), team.id),
        Vec::<i64>::new(),
        "the late socket connected after the removal's dispatch"
    );
}

// ---------------------------------------------------------------------------------------------
// A user's own sockets
// ---------------------------------------------------------------------------------------------

/// With the team followed, a user's sockets get what is routed to their own room (assigned to
/// them, their membership) whatever rooms they are in, each once (also when a room and their own
/// room both route it, and when the bus brings the user-channel copy as well), and nothing else.
#[tokio::test]
async fn a_users_own_sockets_get_exactly_what_is_routed_to_them_once() {
    let w = World::new().await;
    let mut events = w.events();
    let (owner, user) = (w.user("Owner").await, w.user("User").await);
    let team = w.team(&owner).await;
    w.add(&owner, &team, &user).await; // 1
    receive(&mut events, &[(team.id, 1)]).await;
    let hub = w.hub(16);
    let (alone, in_board, owners) = (outbox(64), outbox(64), outbox(64));
    hub.register(user.clone(), alone.clone());
    let b = hub.register(user.clone(), in_board.clone());
    let o = hub.register(owner.clone(), owners.clone());
    join(&w, &hub, b, Scope::Board(team.default_board_id), team.id).await;
    join(&w, &hub, o, Scope::Team(team.id), team.id).await;
    drain(&in_board);
    drain(&owners);

    let task = w.task(&owner, &team, Some(&user)).await; // 2 created, 3 assigned to the user
    w.task(&owner, &team, Some(&owner)).await; // 4 created, 5 assigned to the owner
    w.comment(&owner, &task).await; // 6: the task room only
    w.set_role(&owner, &team, &user, Role::Admin).await; // 7: team, the user
    w.rename(&owner, &team).await; // 8: team
    w.patch(&owner, &task, json!({ "assigneeUserId": null }))
        .await; // 9 updated, 10 unassigned
    let got = receive(&mut events, &[(team.id, 10)]).await;
    assert_eq!(
        got.iter()
            .filter(|e| matches!(e, BusEvent::UserActivity(_)))
            .count(),
        3,
        "the bus brings copies of 3, 5 and 7 too"
    );
    feed(&hub, &got).await;

    assert_eq!(seqs(&drain(&alone), team.id), [3, 7]);
    assert_eq!(seqs(&drain(&in_board), team.id), [2, 3, 4, 5, 7, 9, 10]);
    assert_eq!(seqs(&drain(&owners), team.id), [2, 4, 5, 7, 8]);
}

/// Where no socket follows the team, its batches are not for this instance; the user-channel
/// copies reach the users' own sockets, each once.
#[tokio::test]
async fn a_team_not_followed_reaches_its_users_through_their_copies_only() {
    let w = World::new().await;
    let mut events = w.events();
    let (owner, user) = (w.user("Owner").await, w.user("User").await);
    let team = w.team(&owner).await;
    let hub = w.hub(16);
    let alone = outbox(64);
    hub.register(user.clone(), alone.clone());
    w.add(&owner, &team, &user).await; // 1 member.added
    let task = w.task(&owner, &team, Some(&user)).await; // 2, 3 assigned
    w.comment(&owner, &task).await; // 4
    w.set_role(&owner, &team, &user, Role::Admin).await; // 5 member.updated
    feed(&hub, &receive(&mut events, &[(team.id, 5)]).await).await;
    assert_eq!(
        drain(&alone),
        [
            Msg::activity(team.id, 1, "member.added"),
            Msg::activity(team.id, 3, "task.assigned"),
            Msg::activity(team.id, 5, "member.updated"),
        ]
    );
    assert_eq!(hub.dispatched(team.id), None, "not followed");
}

/// The hub delivers a user-channel copy only where the team's channel does not bring the
/// activity: published before the hub started following (and not delivered by an earlier
/// following), or while it does not follow the team. It remembers for 30 s how far it dispatched
/// a team it stopped following.
#[tokio::test(start_paused = true)]
async fn a_user_copy_is_delivered_only_when_the_team_channel_does_not_bring_it() {
    let _clock = ManualClock::hold();
    let w = World::new().await;
    let mut events = w.events();
    let (owner, user) = (w.user("Owner").await, w.user("User").await);
    let team = w.team(&owner).await;
    let hub = w.hub(16);
    let alone = outbox(64);
    hub.register(user.clone(), alone.clone());
    let o = hub.register(owner.clone(), outbox(64));
    let room = Scope::Team(team.id);
    let copies = |got: &[BusEvent], seqs: &[i64]| {
        seqs.iter()
            .map(|s| BusEvent::UserActivity(copy_of(got, team.id, *s)))
            .collect::<Vec<_>>()
    };

    // Published before the hub followed the team: its channel will not bring them.
    w.add(&owner, &team, &user).await; // 1
    w.task(&owner, &team, Some(&user)).await; // 2, 3 assigned
    let early = receive(&mut events, &[(team.id, 3)]).await;
    assert_eq!(join(&w, &hub, o, room, team.id).await, 3);
    let late_batches: Vec<BusEvent> = early
        .iter()
        .filter(|e| matches!(e, BusEvent::Activities(_)))
        .cloned()
        .collect();
    feed(&hub, &late_batches).await;
    feed(&hub, &copies(&early, &[1, 3])).await;
    assert_eq!(seqs(&drain(&alone), team.id), [1, 3], "owed, once each");

    // Followed: the team's channel brings them, whichever channel arrives first.
    w.set_role(&owner, &team, &user, Role::Admin).await; // 4
    w.set_role(&owner, &team, &user, Role::Member).await; // 5
    let got = receive(&mut events, &[(team.id, 5)]).await;
    let batch = |s: i64| BusEvent::Activities(vec![team_entries(&got, team.id)[&s].clone()]);
    feed(&hub, &[batch(4)]).await;
    feed(&hub, &copies(&got, &[4, 5])).await;
    feed(&hub, &[batch(5)]).await;
    assert_eq!(seqs(&drain(&alone), team.id), [4, 5]);
    let copy5 = copies(&got, &[5]);

    // Not followed: a copy above where the hub stopped is owed, one at or below it is not.
    assert!(hub.leave(o, Room::Team(team.id)));
    assert_eq!(hub.dispatched(team.id), None);
    w.set_role(&owner, &team, &user, Role::Admin).await; // 6
    let got = receive(&mut events, &[(team.id, 6)]).await;
    feed(&hub, &copy5).await;
    feed(&hub, &got).await;
    assert_eq!(seqs(&drain(&alone), team.id), [6]);

    // Followed again: what the first following delivered stays delivered; a copy published
    // before this start and after that one is owed.
    w.set_role(&owner, &team, &user, Role::Member).await; // 7
    let got = receive(&mut events, &[(team.id, 7)]).await;
    assert_eq!(join(&w, &hub, o, room, team.id).await, 7);
    feed(&hub, &copy5).await;
    feed(&hub, &got).await;
    assert_eq!(seqs(&drain(&alone), team.id), [7]);
    let copy7 = copies(&got, &[7]);

    // Stopped again: remembered for 30 s (the periodic check forgets older teams).
    assert!(hub.leave(o, Room::Team(team.id)));
    tokio::time::advance(Duration::from_secs(29)).await;
    hub.check().await.expect("check");
    feed(&hub, &copy7).await;
    assert_eq!(seqs(&drain(&alone), team.id), Vec::<i64>::new());
    tokio::time::advance(Duration::from_secs(2)).await;
    hub.check().await.expect("check");
    feed(&hub, &copy7).await;
    assert_eq!(
        seqs(&drain(&alone), team.id),
        [7],
        "forgotten: a copy that late is delivered again (at least once)"
    );
}

/// Holds every connection of the store's read pool, so that the next read waits for one.
async fn exhaust_reads(store: &Arc<dyn Store>) -> Vec<Box<dyn crate::store::Tx>> {
    let mut held = Vec::new();
    while let Ok(tx) = tokio::time::timeout(Duration::from_millis(500), store.read()).await {
        held.push(tx.expect("a read"));
        assert!(held.len() <= 64, "the read pool never runs out");
    }
    held
}

/// While the hub starts following a team (between watching its channel and reading its seq),
/// what arrives is held; at the start, what is not newer than the start reaches only the users'
/// own sockets, and only the user-channel copies of it, once each.
#[tokio::test]
async fn what_arrives_while_following_starts_is_held_then_released_once() {
    let w = World::new().await;
    let mut events = w.events();
    let (owner, user) = (w.user("Owner").await, w.user("User").await);
    let team = w.team(&owner).await;
    w.add(&owner, &team, &user).await; // 1
    w.task(&owner, &team, Some(&user)).await; // 2, 3 assigned
    let got = receive(&mut events, &[(team.id, 3)]).await;
    let hub = w.hub(16);
    let alone = outbox(64);
    hub.register(user.clone(), alone.clone());

    // Every read connection taken: following stops at its read of the team's seq.
    let reads = exhaust_reads(&w.store).await;
    let mut following = Box::pin(hub.follow(team.id));
    assert!(
        futures_util::future::poll_immediate(&mut following)
            .await
            .is_none(),
        "following waits for the team's seq"
    );
    assert_eq!(hub.dispatched(team.id), None, "starting");
    feed(&hub, &got).await;
    assert_eq!(drain(&alone), Vec::<Msg>::new(), "held");
    drop(reads);
    let pin = following.await.expect("followed");
    assert_eq!(hub.dispatched(team.id), Some(3));
    assert_eq!(seqs(&drain(&alone), team.id), [1, 3]);
    drop(pin);
}

// ---------------------------------------------------------------------------------------------
// Bounds
// ---------------------------------------------------------------------------------------------

/// Dispatch never waits on a socket: one that lets more frames (or bytes) queue than its limits
/// is cut as a slow consumer, what it had queued is dropped, and the others get everything.
#[tokio::test]
async fn a_socket_that_falls_behind_is_cut_and_the_others_get_everything() {
    let w = World::new().await;
    let mut events = w.events();
    let owner = w.user("Owner").await;
    let team = w.team(&owner).await;
    let hub = w.hub(16);
    let few = outbox(4);
    let small = Arc::new(Outbox::new(Limits {
        bytes: 4096,
        ..limits(64)
    }));
    let fast = outbox(64);
    let mut ids = Vec::new();
    for out in [&few, &small, &fast] {
        let id = hub.register(owner.clone(), out.clone());
        join(&w, &hub, id, Scope::Team(team.id), team.id).await;
        drain(out);
        ids.push(id);
    }
    for _ in 0..3 {
        w.task(&owner, &team, None).await;
    }
    let long = "x".repeat(6000);
    w.task_with(&owner, &team, json!({ "description": long }))
        .await; // 4: past 4 KiB alone
    for _ in 0..6 {
        w.task(&owner, &team, None).await;
    }
    feed(&hub, &receive(&mut events, &[(team.id, 10)]).await).await;

    for (name, out) in [("frames", &few), ("bytes", &small)] {
        let mut batch = Vec::new();
        assert_eq!(
            out.next_batch(&mut batch).await,
            Some(CloseReason::SlowConsumer),
            "cut by its {name} limit"
        );
        assert!(batch.is_empty(), "what it had queued is dropped");
    }
    assert_eq!(seqs(&drain(&fast), team.id), (1..=10).collect::<Vec<_>>());
    assert_eq!(hub.dispatched(team.id), Some(10));
    hub.unregister(ids[0]);
    hub.unregister(ids[1]);
    assert_eq!(hub.counted_subscriptions(), [1, 0, 0]);
    assert_eq!(hub.state.lock().subscriptions, [1, 0, 0]);
}

/// A socket holds at most `max_rooms` rooms; joining one it is in already is not one more.
#[tokio::test]
async fn a_socket_is_refused_rooms_past_its_limit() {
    let w = World::new().await;
    let owner = w.user("Owner").await;
    let team = w.team(&owner).await;
    let task = w.task(&owner, &team, None).await;
    let hub = w.hub(2);
    let out = outbox(64);
    let conn = hub.register(owner.clone(), out.clone());
    join(&w, &hub, conn, Scope::Team(team.id), team.id).await;
    join(&w, &hub, conn, Scope::Board(team.default_board_id), team.id).await;
    let _pin = hub.follow(team.id).await.expect("follow");
    let seq = w.last_seq(team.id).await;
    assert_eq!(
        hub.join(conn, Scope::Task(task.id), team.id, seq, None, &[]),
        Join::TooMany
    );
    assert_eq!(
        hub.join(conn, Scope::Team(team.id), team.id, seq, None, &[]),
        Join::Joined(seq)
    );
    assert_eq!(hub.counted_subscriptions(), [1, 1, 0]);
    assert_eq!(hub.state.lock().subscriptions, [1, 1, 0]);
}

/// A subscribe dropped while it starts following its team (its client went away: an SSE body
/// dropped with its connection) must not leave the team starting for ever: the next subscribe
/// to it would wait on it, and everything dispatched meanwhile would be held.
#[tokio::test]
async fn a_follow_dropped_while_starting_leaves_the_team_free() {
    let w = World::new().await;
    let owner = w.user("o").await;
    let team = w.team(&owner).await;
    let hub = w.hub(8);
    // The start waits on its read of the team's seq, done on the SQLite driver's own thread: a
    // first poll finds it pending unless that thread answered meanwhile. Polled once and dropped
    // until it was dropped pending (a start that finished is released by its pin as usual).
    let held = w.store.write().await.expect("hold the writer");
    let mut dropped_pending = false;
    for _ in 0..1_000 {
        let mut starting = Box::pin(hub.follow(team.id));
        if futures_util::poll!(starting.as_mut()).is_pending() {
            dropped_pending = true;
            break;
        }
    }
    assert!(dropped_pending, "a follow's start was never pending");
    drop(held);
    let again = tokio::time::timeout(Duration::from_secs(3), hub.follow(team.id)).await;
    assert!(
        again.is_ok(),
        "the next follow waited on the abandoned start"
    );
    assert_eq!(hub.dispatched(team.id), Some(0));
}

// ---------------------------------------------------------------------------------------------
// Shared presence
// ---------------------------------------------------------------------------------------------

/// The presence frames among `frames`: (type, user, state), in order.
fn presence_of(frames: &[Frame]) -> Vec<(String, UserId, String)> {
    frames
        .iter()
        .filter_map(|f| {
            let v: Value = serde_json::from_str(f.text()?.as_str()).ok()?;
            let a = &v["activity"];
            let kind = a["type"].as_str()?.strip_prefix("presence.")?.to_owned();
            let user = uuid_at(&a["data"]["userId"])?.into();
            let state = a["data"]["state"].as_str().unwrap_or_default().to_owned();
            Some((kind, user, state))
        })
        .collect()
}

fn queued(outbox: &Outbox) -> Vec<Frame> {
    let mut batch = Vec::new();
    let _ = outbox.next_batch(&mut batch).now_or_never();
    batch
}

/// Across instances a socket's snapshot and the bus events cross: an event can be in the
/// snapshot and still on its way, or come between the snapshot read and the join. Each socket is
/// told each change once: what its snapshot (or an earlier event) already told it is dropped, a
/// change it missed comes from the check after the join, and that check leaves alone the users a
/// bus event stated since the join (the team's channel is ordered: such an event is at least as
/// new as the check's read). Each socket has its own view of the room.
#[tokio::test]
async fn shared_presence_tells_each_socket_each_change_once() {
    use crate::domain::presence::{PresenceField, PresenceState, Stamped};
    let w = World::new().await;
    let hub = w.hub(16).with_shared_presence();
    let owner = w.user("owner").await;
    let team = w.team(&owner).await;
    let task = w.task(&owner, &team, None).await;
    let mut people = Vec::new();
    for name in ["x", "y", "z", "q", "v", "w", "b"] {
        people.push(w.user(name).await);
    }
    let [x, y, z, q, v, wu, b] = <[PresenceUser; 7]>::try_from(people).expect("seven");
    let editing =
        PresenceStatus::new(PresenceState::Editing, Some(PresenceField::Title)).expect("a status");
    let viewing = PresenceStatus::VIEWING;
    let view = |u: &PresenceUser, status| PresenceView {
        user: u.clone(),
        stamped: Stamped::new(status, 1),
    };
    let event = |kind, u: &PresenceUser, status| {
        hub.on_presence(&PresenceEvent {
            kind,
            team_id: team.id,
            task_id: task.id,
            user: u.clone(),
            status,
        });
    };
    let told =
        |kind: &str, u: &PresenceUser, state: &str| (kind.to_owned(), u.user_id, state.to_owned());
    let out = outbox(64);
    let conn = hub.register(owner.clone(), out.clone());
    // The snapshot shows x editing, y and v viewing; their announcements are still on the bus.
    join_seeing(
        &w,
        &hub,
        conn,
        Scope::Task(task.id),
        team.id,
        &[view(&x, editing), view(&y, viewing), view(&v, viewing)],
    )
    .await;
    assert_eq!(queued(&out).len(), 1, "subscribed");

    event(PresenceKind::Updated, &x, editing);
    event(PresenceKind::Joined, &y, viewing);
    event(PresenceKind::Left, &q, viewing);
    assert_eq!(
        presence_of(&queued(&out)),
        vec![],
        "in the snapshot already"
    );

    // New: y edits, z comes (once).
    event(PresenceKind::Updated, &y, editing);
    event(PresenceKind::Joined, &z, viewing);
    event(PresenceKind::Joined, &z, viewing);
    assert_eq!(
        presence_of(&queued(&out)),
        vec![told("updated", &y, "editing"), told("joined", &z, "")]
    );

    // The check after the join read before those events (y viewing, q editing, no z) and shows
    // that v left and w came meanwhile: it tells of v and w, and leaves x, y, q and z as the bus
    // stated them.
    hub.reconcile_presence(
        conn,
        team.id,
        task.id,
        Some(&[view(&y, viewing), view(&q, editing), view(&wu, editing)]),
    );
    assert_eq!(
        presence_of(&queued(&out)),
        vec![
            told("joined", &wu, ""),
            told("updated", &wu, "editing"),
            told("left", &v, ""),
        ]
    );

    // A second socket (user b) joins seeing no one elsewhere: its snapshot lists the owner, who
    // views here. Its arrival reaches the owner through the bus, not from the hub.
    let out_b = outbox(64);
    let conn_b = hub.register(b.clone(), out_b.clone());
    join_seeing(&w, &hub, conn_b, Scope::Task(task.id), team.id, &[]).await;
    hub.reconcile_presence(conn_b, team.id, task.id, Some(&[]));
    assert_eq!(queued(&out_b).len(), 1, "subscribed");
    assert_eq!(presence_of(&queued(&out)), vec![]);

    // From then on each event counts once, for each socket by what it was told; a user's own
    // are not for them. x joining while the owner's socket lists them editing (they left and
    // came back, the leave missed) is x viewing.
    event(PresenceKind::Joined, &b, viewing);
    event(PresenceKind::Updated, &wu, editing);
    event(PresenceKind::Updated, &wu, viewing);
    event(PresenceKind::Left, &z, viewing);
    event(PresenceKind::Left, &z, viewing);
    event(PresenceKind::Joined, &owner, viewing);
    event(PresenceKind::Joined, &x, viewing);
    assert_eq!(
        presence_of(&queued(&out)),
        vec![
            told("joined", &b, ""),
            told("updated", &wu, "viewing"),
            told("left", &z, ""),
            told("updated", &x, "viewing"),
        ]
    );
    assert_eq!(
        presence_of(&queued(&out_b)),
        vec![
            told("joined", &wu, ""),
            told("updated", &wu, "editing"),
            told("updated", &wu, "viewing"),
            told("joined", &x, ""),
        ]
    );
}
