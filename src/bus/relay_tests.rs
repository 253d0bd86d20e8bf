//! Unit tests of the relay against the in-process bus and a real SQLite store (a temp file), on a
//! clock that only the test moves: scans, watermark write-backs and pruning happen when a test
//! advances time, never because it slept. The test reads the bus as the hub would.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestCaseError, TestRunner};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::*;
use crate::bus::{BusEvent, InProcessBus};
use crate::domain::activity::{ActivityData, ActivityDraft, LogEntry};
use crate::domain::{Team, User, UserId};
use crate::store::Tx;

/// Every id these tests make is made here (ids becoming types is a change of this line).
fn new_id<T: From<Uuid>>() -> T {
    T::from(Uuid::now_v7())
}

const SCAN: Duration = Duration::from_secs(1);
const PERSIST: Duration = Duration::from_millis(100);

fn settings() -> RelaySettings {
    RelaySettings {
        scan_every: SCAN,
        persist_every: PERSIST,
        prune_every: Duration::from_secs(3600),
        // Commits are written by the wall clock and the tests move tokio's: any unpublished
        // commit counts as left behind.
        repair_after: Duration::ZERO,
        ..RelaySettings::default()
    }
}

/// Keeps a paused clock from auto-advancing: only `tokio::time::advance` moves it. The store
/// answers from its own threads, and auto-advance would jump to the next timer (a scan, or the
/// pool's acquire timeout) whenever the runtime waits for it. A blocking task in flight inhibits
/// auto-advance (documented under `tokio::time::pause`); this one runs until the guard drops.
struct ManualClock {
    _hold: std::sync::mpsc::Sender<()>,
}

impl ManualClock {
    /// In a current-thread runtime started paused.
    fn hold() -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        drop(tokio::task::spawn_blocking(move || {
            let _ = rx.recv();
        }));
        Self { _hold: tx }
    }
}

/// A moment of real time for the relay and the store's threads (the paused clock stays put).
async fn settle() {
    tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(2)))
        .await
        .expect("settle");
}

/// Waits (in real time, at most 10 s) until `cond` holds.
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        settle().await;
    }
}

/// A store with one user (the actor of every activity).
struct Rig {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    actor: UserId,
}

impl Rig {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let url = format!("sqlite://{}", dir.path().join("relay.db").display());
        Self::on(&url, dir).await
    }

    /// A rig on the database at `url` (SQLite or PostgreSQL).
    async fn on(url: &str, dir: tempfile::TempDir) -> Self {
        let store = crate::store::connect(url, 2).await.expect("a store");
        let actor = User {
            id: new_id(),
            email: "relay@example.com".into(),
            display_name: "Relay".into(),
            created_at: OffsetDateTime::now_utc(),
        };
        let mut tx = store.write().await.expect("write");
        tx.insert_user(&actor, "not a hash").await.expect("user");
        tx.commit().await.expect("commit");
        Self {
            _dir: dir,
            store,
            actor: actor.id,
        }
    }

    async fn team(&self) -> TeamId {
        let team = Team {
            id: new_id(),
            name: "relay".into(),
            created_at: OffsetDateTime::now_utc(),
            default_board_id: new_id(),
        };
        let mut tx = self.store.write().await.expect("write");
        tx.insert_team(&team).await.expect("team");
        tx.commit().await.expect("commit");
        team.id
    }

    /// Appends one activity per timestamp in an open transaction (the caller commits or not).
    async fn open(&self, team: TeamId, ts: &[OffsetDateTime]) -> (Box<dyn Tx>, Vec<LogEntry>) {
        let drafts = ts
            .iter()
            .map(|at| {
                let data = ActivityData::TeamUpdated {
                    team: Team {
                        id: team,
                        name: "renamed".into(),
                        created_at: *at,
                        default_board_id: new_id(),
                    },
                };
                ActivityDraft::new(data, self.actor, *at)
            })
            .collect();
        let mut tx = self.store.write().await.expect("write");
        let entries = tx.append(team, drafts).await.expect("append");
        (tx, entries)
    }

    /// Commits `n` activities of `team` (nothing is handed to a relay).
    async fn commit(&self, team: TeamId, n: usize) -> Vec<LogEntry> {
        self.commit_at(team, &vec![OffsetDateTime::now_utc(); n])
            .await
    }

    async fn commit_at(&self, team: TeamId, ts: &[OffsetDateTime]) -> Vec<LogEntry> {
        let (tx, entries) = self.open(team, ts).await;
        tx.commit().await.expect("commit");
        entries
    }

    async fn watermark(&self, team: TeamId) -> i64 {
        let mut tx = self.store.read().await.expect("read");
        let seqs = tx.published_seqs(&[team]).await.expect("published seq");
        assert_eq!(seqs.len(), 1);
        seqs[0].1
    }

    async fn unpublished(&self) -> Vec<(TeamId, i64)> {
        let mut tx = self.store.read().await.expect("read");
        tx.unpublished_teams(100, time::OffsetDateTime::now_utc())
            .await
            .expect("unpublished teams")
    }

    /// The seqs the log holds for `team`.
    async fn logged(&self, team: TeamId) -> Vec<i64> {
        let mut tx = self.store.read().await.expect("read");
        let entries = tx.activities(team, 0, i64::MAX, 10_000).await.expect("log");
        entries.iter().map(|e| e.seq).collect()
    }
}

/// A relay running over its own in-process bus, whose events the test reads.
struct Running {
    relay: Relay,
    tasks: Supervisor,
    events: mpsc::Receiver<BusEvent>,
}

fn start(store: &Arc<dyn Store>, capacity: usize) -> Running {
    let bus = Arc::new(InProcessBus::new(capacity));
    let events = bus.take_events().expect("the bus's events");
    let tasks = Supervisor::new();
    let relay = Relay::start(store.clone(), bus, settings(), &tasks);
    Running {
        relay,
        tasks,
        events,
    }
}

impl Running {
    /// What the bus carried since the last call: (team, seq) in order.
    fn drain(&mut self) -> Vec<(TeamId, i64)> {
        let mut out = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            if let BusEvent::Activities(entries) = event {
                out.extend(entries.iter().map(|e| (e.team_id(), e.seq)));
            }
        }
        out
    }

    /// Reads the bus into `seen` until `team`'s seq `upto` went by.
    async fn wait_for(&mut self, seen: &mut Vec<(TeamId, i64)>, team: TeamId, upto: i64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !seen.contains(&(team, upto)) {
            assert!(
                std::time::Instant::now() < deadline,
                "seq {upto} was not published; the bus carried {seen:?}"
            );
            settle().await;
            seen.extend(self.drain());
        }
    }

    /// Stops the relay's task (a process exit), returning what its bus still held.
    async fn stop(mut self) -> Vec<(TeamId, i64)> {
        self.tasks.shutdown().await;
        self.drain()
    }
}

fn seqs_of(seen: &[(TeamId, i64)], team: TeamId) -> Vec<i64> {
    seen.iter()
        .filter(|(t, _)| *t == team)
        .map(|(_, s)| *s)
        .collect()
}

/// What the service hands over is published once, in order (a later commit handed over first
/// makes the relay read the earlier one from the log); the stored watermark is written back at
/// once the first time, then at most every `persist_every`, and never past what the bus carried.
#[tokio::test(start_paused = true)]
async fn handed_entries_are_published_once_in_order_and_the_watermark_follows() {
    let _clock = ManualClock::hold();
    let rig = Rig::new().await;
    let team = rig.team().await;
    let mut relay = start(&rig.store, 1024);
    let mut seen = Vec::new();

    relay.relay.committed(rig.commit(team, 3).await);
    relay.wait_for(&mut seen, team, 3).await;
    assert_eq!(seqs_of(&seen, team), [1, 2, 3]);
    eventually("the first write-back", || async {
        rig.watermark(team).await == 3
    })
    .await;

    // Handed over in two pieces, the later one first: the relay reads the gap from the log,
    // and the earlier piece, arriving after, is not published again.
    let entries = rig.commit(team, 4).await;
    relay.relay.committed(entries[2..].to_vec());
    relay.wait_for(&mut seen, team, 7).await;
    relay.relay.committed(entries[..2].to_vec());
    assert_eq!(seqs_of(&seen, team), (1..=7).collect::<Vec<_>>());

    // The clock has not moved: the relay may not write the watermark back yet.
    for _ in 0..20 {
        settle().await;
    }
    assert_eq!(
        rig.watermark(team).await,
        3,
        "written back every persist_every"
    );
    tokio::time::advance(PERSIST).await;
    eventually("the next write-back", || async {
        rig.watermark(team).await == 7
    })
    .await;
    assert!(
        rig.unpublished().await.is_empty(),
        "the team's unpublished record goes with the write-back"
    );
    for _ in 0..5 {
        settle().await;
    }
    assert!(relay.drain().is_empty(), "nothing published twice");
}

/// An entry handed over before its predecessor can be read (here: the predecessor's transaction
/// has not committed) is not published, and the watermark stays below the gap. Once the row is
/// committed, the next scan publishes both, in order, and only then moves the watermark.
#[tokio::test(start_paused = true)]
async fn a_gap_the_log_cannot_fill_yet_holds_the_watermark_until_the_scan() {
    let _clock = ManualClock::hold();
    let rig = Rig::new().await;
    let (late, marker) = (rig.team().await, rig.team().await);
    let mut relay = start(&rig.store, 1024);
    let mut seen = Vec::new();
    relay.relay.committed(rig.commit(late, 3).await);
    relay.wait_for(&mut seen, late, 3).await;
    eventually("watermark 3", || async { rig.watermark(late).await == 3 }).await;
    // Committed, never handed over, and the scan is not due: unpublished for now.
    let marker_entries = rig.commit(marker, 1).await;

    let (tx, entries) = rig
        .open(
            late,
            &[OffsetDateTime::now_utc(), OffsetDateTime::now_utc()],
        )
        .await;
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
    relay.relay.committed(vec![entries[1].clone()]);
    eventually("the relay took seq 5", || async {
        relay.relay.inner.pending.lock().is_empty()
    })
    .await;
    // The relay handles one hand-over at a time: once the marker is out, seq 5 was handled.
    relay.relay.committed(marker_entries);
    relay.wait_for(&mut seen, marker, 1).await;
    assert_eq!(seqs_of(&seen, late), [1, 2, 3], "seq 5 waits for seq 4");
    tx.commit().await.expect("commit 4 and 5");

    for _ in 0..20 {
        settle().await;
    }
    seen.extend(relay.drain());
    assert_eq!(seqs_of(&seen, late), [1, 2, 3], "nothing before the scan");
    assert_eq!(
        rig.watermark(late).await,
        3,
        "the watermark stays below the gap"
    );
    assert!(
        rig.unpublished().await.contains(&(late, 3)),
        "the scan will find the team"
    );

    tokio::time::advance(SCAN).await;
    relay.wait_for(&mut seen, late, 5).await;
    assert_eq!(seqs_of(&seen, late), [1, 2, 3, 4, 5]);
    eventually("watermark 5", || async { rig.watermark(late).await == 5 }).await;
    assert!(rig.unpublished().await.is_empty());
}

/// Hand-overs of one team may come with a hole between them (the commit of seq 7 handed over
/// before that of seq 6): the bus is given contiguous runs only, the hole is read from the log,
/// and every seq is published once, in order.
#[tokio::test(start_paused = true)]
async fn hand_overs_with_a_hole_between_them_are_published_without_one() {
    let _clock = ManualClock::hold();
    let rig = Rig::new().await;
    let team = rig.team().await;
    let mut relay = start(&rig.store, 1024);
    let mut seen = Vec::new();
    relay.relay.committed(rig.commit(team, 4).await);
    relay.wait_for(&mut seen, team, 4).await;

    let entries = rig.commit(team, 3).await; // 5, 6, 7
    // Taken by the relay together: nothing runs between these two calls.
    relay.relay.committed(vec![entries[0].clone()]);
    relay.relay.committed(vec![entries[2].clone()]);
    relay.wait_for(&mut seen, team, 7).await;
    relay.relay.committed(vec![entries[1].clone()]); // 6, late
    for _ in 0..20 {
        settle().await;
    }
    seen.extend(relay.drain());
    assert_eq!(seqs_of(&seen, team), (1..=7).collect::<Vec<_>>());
    tokio::time::advance(PERSIST).await;
    eventually("watermark 7", || async { rig.watermark(team).await == 7 }).await;
}

/// A crash between commit and publish: what was committed but never handed over is published by
/// the next relay over the same store, from the watermark the first one saved (so nothing it had
/// saved is published again).
#[tokio::test(start_paused = true)]
async fn a_new_relay_publishes_what_a_crash_left_from_the_saved_watermark() {
    let _clock = ManualClock::hold();
    let rig = Rig::new().await;
    let team = rig.team().await;
    let mut first = start(&rig.store, 1024);
    let mut seen = Vec::new();
    first.relay.committed(rig.commit(team, 3).await);
    first.wait_for(&mut seen, team, 3).await;
    eventually("watermark 3", || async { rig.watermark(team).await == 3 }).await;
    rig.commit(team, 3).await; // 4..=6, never handed over
    seen.extend(first.stop().await);
    assert_eq!(seqs_of(&seen, team), [1, 2, 3]);
    assert_eq!(rig.watermark(team).await, 3, "the saved watermark survives");

    let mut second = start(&rig.store, 1024);
    let mut again = Vec::new();
    second.wait_for(&mut again, team, 6).await;
    assert_eq!(
        seqs_of(&again, team),
        [4, 5, 6],
        "from the saved watermark, once each"
    );
    eventually("watermark 6", || async { rig.watermark(team).await == 6 }).await;
    assert!(rig.unpublished().await.is_empty());
}

/// Published but not yet written back when the process stopped: the next relay starts from the
/// saved watermark and publishes those again (at least once; the hubs drop what they have).
#[tokio::test(start_paused = true)]
async fn what_was_published_but_not_saved_is_published_again_after_a_restart() {
    let _clock = ManualClock::hold();
    let rig = Rig::new().await;
    let team = rig.team().await;
    let mut first = start(&rig.store, 1024);
    let mut seen = Vec::new();
    first.relay.committed(rig.commit(team, 2).await);
    first.wait_for(&mut seen, team, 2).await;
    eventually("watermark 2", || async { rig.watermark(team).await == 2 }).await;
    first.relay.committed(rig.commit(team, 2).await);
    first.wait_for(&mut seen, team, 4).await;
    seen.extend(first.stop().await);
    assert_eq!(seqs_of(&seen, team), [1, 2, 3, 4]);
    assert_eq!(rig.watermark(team).await, 2, "stopped within persist_every");

    let mut second = start(&rig.store, 1024);
    let mut again = Vec::new();
    second.wait_for(&mut again, team, 4).await;
    assert_eq!(seqs_of(&again, team), [3, 4]);
    eventually("watermark 4", || async { rig.watermark(team).await == 4 }).await;
}

/// Housekeeping runs one scan interval after start: it removes the published activities older
/// than the retention that lie below every kept one, and nothing else.
#[tokio::test(start_paused = true)]
async fn pruning_runs_on_schedule_and_removes_only_the_old_published_prefix() {
    let _clock = ManualClock::hold();
    let rig = Rig::new().await;
    let team = rig.team().await;
    let now = OffsetDateTime::now_utc();
    let old = now - time::Duration::hours(2);
    // Clocks differ between instances: seq 5 carries an older ts than seq 4.
    rig.commit_at(team, &[old, old, old, now, old]).await;
    let bus = Arc::new(InProcessBus::new(1024));
    let mut events = bus.take_events().expect("events");
    let tasks = Supervisor::new();
    let _relay = Relay::start(
        rig.store.clone(),
        bus,
        RelaySettings {
            retention: Duration::from_secs(3600),
            ..settings()
        },
        &tasks,
    );
    eventually("published and saved", || async {
        rig.watermark(team).await == 5
    })
    .await;
    assert_eq!(
        rig.logged(team).await,
        [1, 2, 3, 4, 5],
        "not pruned before its time"
    );

    tokio::time::advance(SCAN).await;
    eventually("pruned", || async { rig.logged(team).await.len() < 5 }).await;
    assert_eq!(
        rig.logged(team).await,
        [4, 5],
        "seq 5 is old but above the recent seq 4: the log stays gapless"
    );
    let mut tx = rig.store.read().await.expect("read");
    let bounds = tx.log_bounds(team).await.expect("bounds").expect("a team");
    assert_eq!(
        bounds.oldest_since, 3,
        "resuming from 3 is still served in full"
    );
    drop(tx);
    let mut carried = 0;
    while let Ok(BusEvent::Activities(e)) = events.try_recv() {
        carried += e.len();
    }
    assert_eq!(carried, 5, "each published once");
}

/// The SQL housekeeping runs, on SQLite and PostgreSQL: only a prefix of a team's seqs goes (old,
/// published, below every kept one), in chunks of any size; the teams to visit are found among
/// the oldest activities.
#[tokio::test]
async fn pruning_takes_a_prefix_of_each_team_in_chunks() {
    pruning_takes_a_prefix(&Rig::new().await).await;
    if let Some(pg) = crate::store::scratch_tests::ScratchPg::create().await {
        let rig = Rig::on(&pg.url, tempfile::tempdir().expect("a temp dir")).await;
        pruning_takes_a_prefix(&rig).await;
        drop(rig);
        pg.drop_database().await;
    }
}

async fn pruning_takes_a_prefix(rig: &Rig) {
    let team = rig.team().await;
    let other = rig.team().await;
    let quiet = rig.team().await;
    let now = OffsetDateTime::now_utc();
    let old = now - time::Duration::hours(2);
    let before = now - time::Duration::hours(1);
    rig.commit_at(team, &[old, old, old, now, old, old]).await;
    rig.commit_at(other, &[old; 7]).await;
    rig.commit_at(quiet, &[now, now]).await;
    let prune = |team: TeamId, watermark: i64, chunk: i64| {
        let store = rig.store.clone();
        async move {
            let mut tx = store.write().await.expect("write");
            tx.set_published_seqs(&[(team, watermark)])
                .await
                .expect("watermark");
            let n = tx.prune_team_log(team, before, chunk).await.expect("prune");
            tx.commit().await.expect("commit");
            n
        }
    };
    let overdue = || {
        let store = rig.store.clone();
        async move {
            let mut tx = store.read().await.expect("read");
            let (mut teams, _) = tx
                .teams_with_old_activities(before, None, 100)
                .await
                .expect("teams");
            teams.sort();
            teams
        }
    };
    let mut both = vec![team, other];
    both.sort();
    assert_eq!(overdue().await, both, "the quiet team has nothing old");

    assert_eq!(prune(team, 2, 10).await, 2);
    assert_eq!(
        rig.logged(team).await,
        [3, 4, 5, 6],
        "seq 3 is old but unpublished"
    );
    assert_eq!(prune(team, 6, 10).await, 1);
    assert_eq!(rig.logged(team).await, [4, 5, 6]);
    assert_eq!(
        prune(team, 6, 10).await,
        0,
        "nothing else is old enough and below every kept seq"
    );
    // Seven old published activities in chunks of three: 3, 3, 1, then none.
    for (want, left) in [
        (3, vec![4, 5, 6, 7]),
        (3, vec![7]),
        (1, vec![]),
        (0, vec![]),
    ] {
        assert_eq!(prune(other, 7, 3).await, want);
        assert_eq!(rig.logged(other).await, left);
    }
    assert_eq!(
        overdue().await,
        [team],
        "seqs 5 and 6 are old, above a kept one"
    );
    assert_eq!(rig.logged(quiet).await, [1, 2]);

    // Windows of the oldest activities: each after the newest `ts` of the one before.
    let far = now - time::Duration::hours(5);
    let late = rig.team().await;
    rig.commit_at(late, &[far, far]).await;
    let mut tx = rig.store.read().await.expect("read");
    let (first, last) = tx
        .teams_with_old_activities(before, None, 2)
        .await
        .expect("teams");
    assert_eq!(first, [late], "the most overdue first");
    let (next, _) = tx
        .teams_with_old_activities(before, last, 100)
        .await
        .expect("teams");
    assert_eq!(next, [team], "the window after the first");
}

/// The housekeeping lease: one holder at a time, renewed by its holder, taken by another once it
/// expired; on SQLite and PostgreSQL.
#[tokio::test]
async fn one_holder_at_a_time_takes_the_lease_until_it_expires() {
    lease_rules(&Rig::new().await).await;
    if let Some(pg) = crate::store::scratch_tests::ScratchPg::create().await {
        let rig = Rig::on(&pg.url, tempfile::tempdir().expect("a temp dir")).await;
        lease_rules(&rig).await;
        drop(rig);
        pg.drop_database().await;
    }
}

async fn lease_rules(rig: &Rig) {
    let t0 = crate::domain::model::timestamp::truncate(OffsetDateTime::now_utc());
    let s = time::Duration::seconds;
    let take = |holder: &'static str, now: OffsetDateTime, until: OffsetDateTime| {
        let store = rig.store.clone();
        async move {
            let mut tx = store.write().await.expect("write");
            let held = tx
                .take_lease("housekeeping", holder, now, until)
                .await
                .expect("lease");
            tx.commit().await.expect("commit");
            held
        }
    };
    assert!(take("a", t0, t0 + s(10)).await, "free: a takes it");
    assert!(!take("b", t0 + s(1), t0 + s(11)).await, "a holds it");
    assert!(take("a", t0 + s(5), t0 + s(15)).await, "a renews it");
    assert!(!take("b", t0 + s(12), t0 + s(22)).await, "renewed until 15");
    assert!(
        take("b", t0 + s(16), t0 + s(26)).await,
        "expired: b takes it"
    );
    assert!(!take("a", t0 + s(17), t0 + s(27)).await, "now b holds it");
}

/// The relay's store calls, on SQLite and PostgreSQL: the scan finds a team only once its first
/// unpublished activity is older than the cut (a live relay publishes and saves its own sooner),
/// and watermarks of many teams are raised in one call, never lowered.
#[tokio::test]
async fn the_scan_finds_only_teams_left_behind_and_watermarks_move_together() {
    scan_and_watermarks(&Rig::new().await).await;
    if let Some(pg) = crate::store::scratch_tests::ScratchPg::create().await {
        let rig = Rig::on(&pg.url, tempfile::tempdir().expect("a temp dir")).await;
        scan_and_watermarks(&rig).await;
        drop(rig);
        pg.drop_database().await;
    }
}

async fn scan_and_watermarks(rig: &Rig) {
    let now = OffsetDateTime::now_utc();
    let old = now - time::Duration::seconds(30);
    let (stale, fresh, done) = (rig.team().await, rig.team().await, rig.team().await);
    // stale: its first unpublished commit is old, a later one new; fresh: only new ones.
    rig.commit_at(stale, &[old, now]).await;
    rig.commit_at(fresh, &[now, now]).await;
    rig.commit_at(done, &[old]).await;
    let behind = |cut: OffsetDateTime| {
        let store = rig.store.clone();
        async move {
            let mut tx = store.read().await.expect("read");
            let mut teams = tx.unpublished_teams(100, cut).await.expect("scan");
            teams.sort_unstable();
            teams
        }
    };
    let set = |marks: Vec<(TeamId, i64)>| {
        let store = rig.store.clone();
        async move {
            let mut tx = store.write().await.expect("write");
            tx.set_published_seqs(&marks).await.expect("watermarks");
            let teams: Vec<TeamId> = marks.iter().map(|(t, _)| *t).collect();
            tx.clear_unpublished(&teams).await.expect("clear");
            tx.commit().await.expect("commit");
        }
    };
    set(vec![(done, 1)]).await;
    let cut = now - time::Duration::seconds(10);
    let mut want = vec![(stale, 0)];
    assert_eq!(behind(cut).await, want, "only the team left behind");
    want.push((fresh, 0));
    want.sort_unstable();
    assert_eq!(
        behind(now + time::Duration::seconds(1)).await,
        want,
        "every unpublished team once the cut passes its commits"
    );
    // Past the old commit the stale team's first unpublished one is new: not behind any more.
    set(vec![(stale, 1), (fresh, 1), (done, 0)]).await;
    assert_eq!(behind(cut).await, vec![]);
    assert_eq!(
        [
            rig.watermark(stale).await,
            rig.watermark(fresh).await,
            rig.watermark(done).await
        ],
        [1, 1, 1],
        "raised together, never lowered"
    );
    // A few hundred teams in one call (more than one statement's worth).
    let mut many = Vec::new();
    for _ in 0..300 {
        let team = rig.team().await;
        rig.commit(team, 2).await;
        many.push((team, 2));
    }
    set(many.clone()).await;
    for (team, seq) in [many[0], many[299]] {
        assert_eq!(rig.watermark(team).await, seq);
    }
    // Read back in one call: 600 ids (two statements), and a team without a row reads 0.
    let nobody = TeamId::from(Uuid::now_v7());
    let mut ids: Vec<TeamId> = many.iter().chain(&many).map(|&(t, _)| t).collect();
    ids.push(nobody);
    let mut tx = rig.store.read().await.expect("read");
    let seqs = tx.published_seqs(&ids).await.expect("watermarks");
    drop(tx);
    assert_eq!(seqs.len(), 601);
    assert!(
        seqs[..600]
            .iter()
            .zip(&ids)
            .all(|(&(t, s), &id)| t == id && s == 2),
        "every team at 2, in the order asked"
    );
    assert_eq!(seqs[600], (nobody, 0));
    assert_eq!(
        behind(now + time::Duration::hours(1)).await,
        want.iter().map(|&(t, _)| (t, 1)).collect::<Vec<_>>(),
        "stale and fresh, each at 1 of 2; the many teams are done"
    );
}

/// The in-process bus is bounded and never drops: with room for one message and a consumer that
/// reads only at the end, the relay waits, the writers do not, and everything arrives once, in
/// order per team.
#[tokio::test]
async fn a_full_bus_queue_makes_the_relay_wait_and_loses_nothing() {
    let rig = Rig::new().await;
    let teams = [rig.team().await, rig.team().await, rig.team().await];
    let mut relay = start(&rig.store, 1);
    let rounds = 20;
    for _ in 0..rounds {
        for team in teams {
            relay.relay.committed(rig.commit(team, 1).await);
        }
    }
    let mut seen = Vec::new();
    for team in teams {
        relay.wait_for(&mut seen, team, rounds).await;
    }
    for team in teams {
        assert_eq!(seqs_of(&seen, team), (1..=rounds).collect::<Vec<_>>());
    }
}

// ---------------------------------------------------------------------------------------------
// Any hand-over order, crash and restart
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Hand {
    Now,
    /// Held back and handed over later, in any order.
    Later,
    /// Never handed over: the process died between commit and publish.
    Never,
}

#[derive(Debug, Clone)]
enum Op {
    Commit {
        team: usize,
        n: usize,
        hand: Hand,
    },
    /// Hands over held commits one after the other (the newest or the oldest each time); the
    /// relay takes them together.
    HandHeld {
        newest: Vec<bool>,
    },
    /// A scan interval passes (and with it the watermark write-back).
    Tick,
    /// The process restarts: a new relay over the same store, a new bus; held hand-overs are lost.
    Restart,
    /// The relay gets to run (until then, hand-overs pile up and it takes them together).
    Settle,
}

fn op() -> impl Strategy<Value = Op> {
    let hand = prop_oneof![Just(Hand::Now), Just(Hand::Later), Just(Hand::Never)];
    prop_oneof![
        4 => (prop_oneof![3 => Just(0usize), 1 => Just(1usize)], 1..=3usize, hand).prop_map(|(team, n, hand)| Op::Commit { team, n, hand }),
        2 => proptest::collection::vec(any::<bool>(), 1..=3).prop_map(|newest| Op::HandHeld { newest }),
        1 => Just(Op::Tick),
        1 => Just(Op::Restart),
        2 => Just(Op::Settle),
    ]
}

/// Runs `ops` and checks, per team: each relay publishes consecutive seqs (no gap, no repeat),
/// a restarted one continues from at most one past what was published before (a repeat is
/// allowed, a gap is not), the stored watermark never passes what a bus carried, and after one
/// more scan every committed seq is published and saved.
async fn relay_case(ops: &[Op]) -> Result<(), TestCaseError> {
    let _clock = ManualClock::hold();
    let rig = Rig::new().await;
    let teams = [rig.team().await, rig.team().await];
    let mut relay = start(&rig.store, 1024);
    let mut held: VecDeque<Vec<LogEntry>> = VecDeque::new();
    let mut runs: Vec<Vec<(TeamId, i64)>> = vec![Vec::new()];
    let mut last = [0i64; 2];
    let max_published = |runs: &[Vec<(TeamId, i64)>], team: TeamId| {
        runs.iter()
            .flat_map(|r| seqs_of(r, team))
            .max()
            .unwrap_or(0)
    };
    for op in ops {
        match *op {
            Op::Commit { team, n, hand } => {
                let entries = rig.commit(teams[team], n).await;
                last[team] += n as i64;
                match hand {
                    Hand::Now => relay.relay.committed(entries),
                    Hand::Later => held.push_back(entries),
                    Hand::Never => {}
                }
            }
            Op::HandHeld { ref newest } => {
                for newest in newest {
                    let next = if *newest {
                        held.pop_back()
                    } else {
                        held.pop_front()
                    };
                    if let Some(entries) = next {
                        relay.relay.committed(entries);
                    }
                }
            }
            Op::Tick => tokio::time::advance(SCAN).await,
            Op::Restart => {
                let rest = relay.stop().await;
                runs.last_mut().expect("a run").extend(rest);
                runs.push(Vec::new());
                held.clear();
                relay = start(&rig.store, 1024);
            }
            Op::Settle => settle().await,
        }
        if !matches!(op, Op::Settle) {
            continue;
        }
        for team in teams {
            // Read first: whatever a saved watermark covers was on the bus before it was saved.
            let saved = rig.watermark(team).await;
            let carried = relay.drain();
            runs.last_mut().expect("a run").extend(carried);
            let published = max_published(&runs, team);
            prop_assert!(
                saved <= published,
                "watermark {saved} past the published {published}"
            );
        }
    }
    // One more scan publishes whatever was never handed over.
    tokio::time::advance(SCAN).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        runs.last_mut().expect("a run").extend(relay.drain());
        let done = (0..2).all(|i| max_published(&runs, teams[i]) == last[i]);
        if done {
            break;
        }
        prop_assert!(
            std::time::Instant::now() < deadline,
            "not everything was published: committed {last:?}, carried {runs:?}"
        );
        settle().await;
    }
    tokio::time::advance(PERSIST).await;
    for (i, team) in teams.into_iter().enumerate() {
        eventually("the final write-back", || async {
            rig.watermark(team).await == last[i]
        })
        .await;
    }
    runs.last_mut().expect("a run").extend(relay.drain());
    for team in teams {
        let mut before = 0;
        for run in &runs {
            let seqs = seqs_of(run, team);
            if let Some(first) = seqs.first() {
                prop_assert!(
                    *first <= before + 1,
                    "a restarted relay skipped from {before} to {first}"
                );
            }
            for pair in seqs.windows(2) {
                prop_assert_eq!(pair[1], pair[0] + 1, "one relay's seqs: {:?}", seqs);
            }
            before = before.max(seqs.last().copied().unwrap_or(0));
        }
    }
    Ok(())
}

#[test]
fn any_hand_over_order_crash_or_restart_publishes_every_seq_in_order() {
    let config = PropConfig {
        cases: 96,
        failure_persistence: None,
        ..PropConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let outcome = runner.run(&proptest::collection::vec(op(), 1..20), |ops| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a runtime");
        rt.block_on(relay_case(&ops))
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
}

/// A publish step is cut into bus calls bounded in teams and in entries; a team's run is never
/// split, so a run longer than the bound goes alone.
#[test]
fn a_step_is_cut_into_bounded_calls() {
    let sizes = |step: &[(usize, usize)]| -> Vec<Vec<usize>> {
        calls_of(step)
            .iter()
            .map(|c| c.iter().map(|&(_, run)| run).collect())
            .collect()
    };
    let many: Vec<(usize, usize)> = (0..300).map(|i| (i, 1)).collect();
    let calls = calls_of(&many);
    assert_eq!(calls.iter().map(|c| c.len()).collect::<Vec<_>>(), [256, 44]);
    assert_eq!(calls.concat(), many, "every team once, in order");
    assert_eq!(
        sizes(&[(0, 5_000), (1, 10), (2, 4_090), (3, 6), (4, 1)]),
        vec![vec![5_000], vec![10], vec![4_090, 6], vec![1]]
    );
    assert!(calls_of(&[]).is_empty());
}
