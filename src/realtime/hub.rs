//! The fanout hub: rooms of local connections, per-team dispatch in seq order, resume joins,
//! revocation and presence (who is in each task room and what they do there: `viewers`).
//!
//! All state sits behind one mutex that is never held across an await or a socket write: dispatch
//! only queues shared frames into each connection's bounded outbox. A team's activities are
//! dispatched in seq order exactly once per instance (`dispatched` per team); a join happens at a
//! precise point of that order, which is what makes `subscribed.seq` exact and keeps a subscribe
//! from slipping in after a revocation.
//!
//! The hub follows a team (listens to its bus channel) only while a local socket is in one of its
//! rooms or is subscribing to one. The bus may lose messages: a seq that skips ahead, a bus
//! `Resync` and the periodic `check` all repair from the log.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tungstenite::Utf8Bytes;
// Tokio's clock (std's own unless a test pauses it), so that tests can move it.
use tokio::time::Instant;

use super::outbox::{Arrival, CloseReason, Frame, Outbox, Stream};
use super::protocol::{
    ErrorCode, PresenceEntry, PresenceFields, PresenceUser, Scope, ServerMessage, activity_frame,
    presence_frame, presence_updated_frame,
};
use super::viewers::{Change, Clock, Effect, Viewers};
use crate::bus::{Bus, PresenceEvent, Topic};
use crate::domain::activity::{ActivityKind, LogEntry};
use crate::domain::presence::{PresenceKind, PresenceStatus, PresenceView};
use crate::domain::{Role, Room, TaskId, TeamId, UserId};
use crate::store::{Store, StoreError};
use crate::telemetry;

pub type ConnId = u64;

/// Most activities read from the log in one repair step.
const REPAIR_BATCH: i64 = 1_000;
/// Most gap repairs one dispatch makes; what is left after them waits for the periodic check.
const REPAIR_ROUNDS: usize = 64;
/// How long the hub remembers how far it dispatched a team it stopped following (a user-channel
/// copy of an activity it already delivered may still be on its way).
const FORGET_AFTER: Duration = Duration::from_secs(30);
/// How long editing and typing hold without a repeat, unless configured.
const PRESENCE_STATE_TTL: Duration = Duration::from_secs(5);

/// What the hub keeps of a connection in its rooms.
struct Member {
    outbox: Arc<Outbox>,
    /// The id of the last dispatch that reached this connection: one delivery per activity even
    /// when several of its rooms match.
    stamp: AtomicU64,
}

struct Conn {
    user: PresenceUser,
    member: Arc<Member>,
    /// The rooms this connection joined, with their team.
    subs: HashMap<Room, TeamId>,
    /// With shared presence: per task room, who this socket was told is there (other users) and
    /// what they do. Bus events cross a socket's snapshot on the way (a change can be both in
    /// the snapshot and still in flight), so each event is checked against this and only what
    /// changes the socket's view is sent.
    told: HashMap<TaskId, Told>,
}

/// What a socket was told of a task room's other viewers (shared presence).
#[derive(Default)]
struct Told {
    users: HashMap<UserId, (PresenceUser, PresenceStatus)>,
    /// Until the check after the join: the users a bus event stated since the join, whom the
    /// check leaves as the event said (its read may be older than the event).
    since_join: Option<HashSet<UserId>>,
}

/// A presence event as a statement of where a user stands: each bus event states the user's
/// whole presence (a join carries what they are shown doing), so the latest one is the truth.
#[derive(Clone, Copy)]
enum Seen {
    /// The user is there, doing this.
    Now(PresenceStatus),
    Left,
}

enum Phase {
    /// Listening has started but the starting seq is not known yet: hold what arrives.
    Starting {
        held: Vec<Held>,
    },
    Ready {
        dispatched: i64,
    },
}

struct Held {
    entry: LogEntry,
    /// Arrived on the user's channel (not the team's).
    user_copy: bool,
}

struct TeamState {
    phase: Phase,
    /// The team's seq when the hub started following it: the team's channel brings only what
    /// comes after it, so a user-channel copy at or below it is still owed to its user.
    started_at: i64,
    /// How far an earlier following of the team dispatched (its user copies are delivered).
    dispatched_before: i64,
    /// Rooms joined by local connections, plus subscribes in progress: the team is followed
    /// while this is above zero.
    refs: usize,
}

struct State {
    conns: HashMap<ConnId, Conn>,
    rooms: HashMap<Room, HashMap<ConnId, Arc<Member>>>,
    teams: HashMap<TeamId, TeamState>,
    /// Teams no longer followed: how far they were dispatched, and since when.
    left: HashMap<TeamId, (i64, Instant)>,
    /// Teams whose bus channel is to be released once the lock is dropped.
    unwatch: Vec<TeamId>,
    /// Who is in each task room here, and what they do there.
    viewers: Viewers,
    /// With shared presence: tasks whose local viewers changed, their team, and whether to
    /// announce the change.
    presence_dirty: HashMap<TaskId, (TeamId, bool)>,
    shared_presence: bool,
    next_stamp: u64,
    /// Subscriptions by scope (team, board, task), kept as they change so that a metrics scrape
    /// reads three numbers instead of walking every room under the lock.
    subscriptions: [usize; 3],
    /// Set by `close_all`: a connection registered after it is closed at once.
    closing: Option<CloseReason>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            conns: HashMap::new(),
            rooms: HashMap::new(),
            teams: HashMap::new(),
            left: HashMap::new(),
            unwatch: Vec::new(),
            viewers: Viewers::new(PRESENCE_STATE_TTL),
            presence_dirty: HashMap::new(),
            shared_presence: false,
            next_stamp: 0,
            subscriptions: [0; 3],
            closing: None,
        }
    }
}

/// The `subscriptions` slot of a room's scope; user rooms are not subscriptions.
fn scope_slot(room: Room) -> Option<usize> {
    match room {
        Room::Team(_) => Some(0),
        Room::Board(_) => Some(1),
        Room::Task(_) => Some(2),
        Room::User(_) | Room::Admins(_) => None,
    }
}

/// A task's local viewers and what this instance shows of each, to be recorded in the shared
/// presence.
pub(super) struct PresenceChange {
    pub team: TeamId,
    pub task: TaskId,
    pub viewers: Vec<PresenceView>,
    pub announce: bool,
}

/// How a join ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Join {
    /// Joined; `subscribed` with this seq is queued.
    Joined(i64),
    /// The team's dispatch moved past the caller's snapshot: check again with a fresh one.
    Stale,
    /// The team's dispatch is behind the caller's snapshot: `catch_up`, then check again.
    Behind,
    TooMany,
    /// The connection is gone.
    Gone,
}

pub struct Hub {
    state: Mutex<State>,
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    team_started: Notify,
    /// Wakes the presence worker (shared presence only).
    pub(super) presence_changed: Notify,
    next_conn: AtomicU64,
    max_rooms: usize,
    /// The log's last seq of each followed team at the previous periodic check (`check_settled`).
    seen_at_last_check: parking_lot::Mutex<HashMap<TeamId, i64>>,
}

/// Keeps a team followed while a subscribe is in progress; dropping it releases the team.
pub struct TeamPin<'a> {
    hub: &'a Hub,
    team: TeamId,
}

/// Undoes a team's start if its follow is dropped halfway (see `Hub::follow`).
struct StartGuard<'a> {
    hub: &'a Hub,
    team: TeamId,
    done: bool,
}

impl Drop for StartGuard<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let team = self.team;
        self.hub.with_state(|s| {
            if let Some(TeamState {
                phase: Phase::Starting { .. },
                ..
            }) = s.teams.get(&team)
            {
                // What was held is dropped with it: the next start reads the seq afresh. The
                // watch may not have been counted yet; an unwatch of a channel not watched is
                // ignored by the bus.
                s.teams.remove(&team);
                s.unwatch.push(team);
            }
        });
        self.hub.team_started.notify_waiters();
    }
}

impl Drop for TeamPin<'_> {
    fn drop(&mut self) {
        self.hub.with_state(|s| s.release_team(self.team));
    }
}

impl Hub {
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn Bus>, max_rooms: usize) -> Self {
        let state = State {
            shared_presence: bus.shared_presence().is_some(),
            ..State::default()
        };
        Self {
            state: Mutex::new(state),
            store,
            bus,
            team_started: Notify::new(),
            presence_changed: Notify::new(),
            next_conn: AtomicU64::new(1),
            max_rooms,
            seen_at_last_check: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// A hub that announces presence through a shared registry (as over Redis), for tests of
    /// the hub's side of it without one.
    #[cfg(test)]
    pub fn with_shared_presence(self) -> Self {
        self.state.lock().shared_presence = true;
        self
    }

    /// Editing and typing fall back to viewing after `ttl` without a repeat.
    pub fn with_presence_state_ttl(self, ttl: Duration) -> Self {
        self.state.lock().viewers.set_ttl(ttl);
        self
    }

    /// Runs `f` on the state, then (lock released) releases the bus channels of teams it stopped
    /// following and wakes the presence worker if presence changed.
    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut s = self.state.lock();
        let r = f(&mut s);
        let unwatch = std::mem::take(&mut s.unwatch);
        let presence_changed = !s.presence_dirty.is_empty();
        drop(s);
        for team in unwatch {
            self.bus.unwatch(Topic::Team(team));
        }
        if presence_changed {
            self.presence_changed.notify_one();
        }
        r
    }

    /// Adds a connection and joins it to its user's own room.
    pub fn register(&self, user: PresenceUser, outbox: Arc<Outbox>) -> ConnId {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let member = Arc::new(Member {
            outbox,
            stamp: AtomicU64::new(0),
        });
        let mut s = self.state.lock();
        if let Some(reason) = s.closing {
            // Upgraded while the server was shutting down: close it like the others.
            member.outbox.close(reason);
        }
        s.rooms
            .entry(Room::User(user.user_id))
            .or_default()
            .insert(id, member.clone());
        s.conns.insert(
            id,
            Conn {
                user,
                member,
                subs: HashMap::new(),
                told: HashMap::new(),
            },
        );
        id
    }

    /// Removes a connection from every room (its task rooms see it leave).
    pub fn unregister(&self, id: ConnId) {
        self.with_state(|s| {
            let Some(conn) = s.conns.remove(&id) else {
                return;
            };
            for (room, team) in &conn.subs {
                s.leave_room(id, *room, *team, conn.user.user_id);
            }
            s.remove_from_room(Room::User(conn.user.user_id), id);
        });
    }

    /// The seq up to which `team` has been dispatched here, if the hub follows it.
    pub fn dispatched(&self, team: TeamId) -> Option<i64> {
        match self.state.lock().teams.get(&team) {
            Some(TeamState {
                phase: Phase::Ready { dispatched },
                ..
            }) => Some(*dispatched),
            _ => None,
        }
    }

    /// Makes sure the hub follows `team` while the returned pin lives: the first caller
    /// subscribes to the team's channel, reads the team's seq once the bus confirmed it, and
    /// releases what arrived meanwhile; others wait for it.
    pub async fn follow(&self, team: TeamId) -> Result<TeamPin<'_>, StoreError> {
        loop {
            let started = self.team_started.notified();
            {
                let mut s = self.state.lock();
                match s.teams.get_mut(&team) {
                    Some(t) if matches!(t.phase, Phase::Ready { .. }) => {
                        t.refs += 1;
                        return Ok(TeamPin { hub: self, team });
                    }
                    Some(_) => {}
                    None => {
                        let dispatched_before = s.left.remove(&team).map_or(0, |(d, _)| d);
                        s.teams.insert(
                            team,
                            TeamState {
                                phase: Phase::Starting { held: Vec::new() },
                                started_at: 0,
                                dispatched_before,
                                refs: 1,
                            },
                        );
                        break;
                    }
                }
            }
            started.await;
        }
        // Dropped before the start is done (the subscriber's connection went away), the guard
        // takes the team out: left `Starting`, every later follow would wait on it for ever.
        let mut start = StartGuard {
            hub: self,
            team,
            done: false,
        };
        if let Err(e) = self.bus.watch(Topic::Team(team)).await {
            // Still wanted: subscribed when the bus is back; until then `check` delivers.
            tracing::debug!(error = %e, %team, "following a team without the bus");
        }
        let seq = async { self.store.read().await?.last_seq(team).await }.await;
        start.done = true;
        let result = self.with_state(|s| match seq {
            Ok(seq) => {
                s.start(team, seq.unwrap_or(0));
                Ok(())
            }
            Err(e) => {
                s.teams.remove(&team);
                s.unwatch.push(team);
                Err(e)
            }
        });
        self.team_started.notify_waiters();
        result.map(|()| TeamPin { hub: self, team })
    }

    /// Every followed team and how far it was dispatched.
    fn followed(&self) -> Vec<(TeamId, i64)> {
        let mut s = self.state.lock();
        s.left.retain(|_, (_, at)| at.elapsed() < FORGET_AFTER);
        s.teams
            .iter()
            .filter_map(|(id, t)| match t.phase {
                Phase::Ready { dispatched } => Some((*id, dispatched)),
                Phase::Starting { .. } => None,
            })
            .collect()
    }

    /// Compares every followed team with the log and delivers, from the log, whatever the bus
    /// has not brought yet. Run on a bus resync (the bus lost messages: no waiting).
    pub async fn check(&self) -> Result<(), StoreError> {
        self.check_log(false).await
    }

    /// The periodic check: delivers from the log only what was committed before the previous
    /// periodic check and has still not arrived, so the last activity before a quiet spell is
    /// never stranded (it arrives within two check intervals) while an activity the bus is
    /// about to bring is not read from the log too (under load, a check would otherwise find
    /// every team with a write in flight behind and read it).
    pub async fn check_settled(&self) -> Result<(), StoreError> {
        self.check_log(true).await
    }

    async fn check_log(&self, settled: bool) -> Result<(), StoreError> {
        let followed = self.followed();
        if followed.is_empty() {
            self.seen_at_last_check.lock().clear();
            return Ok(());
        }
        let ids: Vec<TeamId> = followed.iter().map(|(t, _)| *t).collect();
        let latest: HashMap<TeamId, i64> = self
            .store
            .read()
            .await?
            .last_seqs(&ids)
            .await?
            .into_iter()
            .collect();
        let previous = if settled {
            std::mem::replace(&mut *self.seen_at_last_check.lock(), latest.clone())
        } else {
            HashMap::new()
        };
        for (team, dispatched) in followed {
            let Some(&last) = latest.get(&team) else {
                continue;
            };
            let upto = if settled {
                match previous.get(&team) {
                    Some(&before) => before.min(last),
                    // Followed since the last check: its subscribe read the log.
                    None => continue,
                }
            } else {
                last
            };
            if upto > dispatched {
                tracing::debug!(%team, dispatched, upto, "catching up from the log");
                let missing = self.read_log(team, dispatched, upto).await?;
                self.dispatch(missing).await;
            }
        }
        Ok(())
    }

    /// A `presence` message of connection `id`: what its user does in a task room it is in.
    /// Returns the error to answer when the message is malformed or the connection is not in
    /// that room. Shared by every transport.
    pub fn presence_message(&self, id: ConnId, msg: &PresenceFields) -> Option<ServerMessage> {
        let scope = Scope::Task(msg.task_id);
        let status = match msg.status() {
            Ok(s) => s,
            Err(why) => {
                return Some(ServerMessage::scoped_error(
                    ErrorCode::BadRequest,
                    why,
                    scope,
                ));
            }
        };
        let clock = Clock::now();
        let set = self.with_state(|s| {
            let user = s
                .conns
                .get(&id)
                .filter(|c| c.subs.contains_key(&Room::Task(msg.task_id)))?
                .user
                .user_id;
            if let Some(effect) = s.viewers.set(id, msg.task_id, user, status, clock) {
                s.presence_effect(effect);
            }
            Some(())
        });
        set.is_none().then(|| {
            ServerMessage::scoped_error(
                ErrorCode::BadRequest,
                "subscribe to the task before sending its presence",
                scope,
            )
        })
    }

    /// Applies presence changes whose throttle window passed and expires unrefreshed states;
    /// run every `viewers::TICK`.
    pub fn presence_tick(&self) {
        let clock = Clock::now();
        self.with_state(|s| {
            for effect in s.viewers.tick(clock) {
                s.presence_effect(effect);
            }
        });
    }

    /// Dispatches `team` from the log up to `upto` (a seq the caller saw committed).
    pub async fn catch_up(&self, team: TeamId, upto: i64) -> Result<(), StoreError> {
        let Some(dispatched) = self.dispatched(team) else {
            return Ok(());
        };
        if dispatched < upto {
            let missing = self.read_log(team, dispatched, upto).await?;
            self.dispatch(missing).await;
        }
        Ok(())
    }

    /// An activity from a user's channel: for the user's own sockets, unless the team's channel
    /// brings (or brought) it.
    pub fn deliver_user_copy(&self, entry: LogEntry) {
        self.with_state(|s| {
            let team = entry.team_id();
            let owed = match s.teams.get_mut(&team) {
                Some(TeamState {
                    phase: Phase::Starting { held },
                    ..
                }) => {
                    held.push(Held {
                        entry,
                        user_copy: true,
                    });
                    return;
                }
                // The team's channel brings what is newer than the start.
                Some(t) => entry.seq <= t.started_at && entry.seq > t.dispatched_before,
                None => s.left.get(&team).is_none_or(|(d, _)| entry.seq > *d),
            };
            if owed {
                s.deliver_to_users(std::slice::from_ref(&entry));
            }
        });
    }

    /// A presence change from the bus (shared presence): the task's local sockets hear of it,
    /// except the user's own, each only if it changes what that socket was told.
    pub fn on_presence(&self, ev: &PresenceEvent) {
        let seen = match ev.kind {
            PresenceKind::Joined | PresenceKind::Updated => Seen::Now(ev.status),
            PresenceKind::Left => Seen::Left,
        };
        self.state
            .lock()
            .tell_presence(ev.team_id, ev.task_id, &ev.user, seen, None);
    }

    /// Shared presence, once after socket `id` joined `task`'s room: brings what it was told of
    /// the room's other viewers up to this instance's viewers merged with `elsewhere` (the other
    /// instances', read after the join; None when that read failed: the socket keeps its
    /// snapshot). A change announced between the snapshot read and the join reached the room
    /// before the socket was in it. Users a bus event stated since the join are left as it said:
    /// the team's channel is ordered, so that event is at least as new as anything missed.
    pub fn reconcile_presence(
        &self,
        id: ConnId,
        team: TeamId,
        task: TaskId,
        elsewhere: Option<&[PresenceView]>,
    ) {
        self.with_state(|s| {
            let Some(conn) = s.conns.get_mut(&id) else {
                return;
            };
            let me = conn.user.user_id;
            let Some(told) = conn.told.get_mut(&task) else {
                return;
            };
            let settled = told.since_join.take().unwrap_or_default();
            let Some(elsewhere) = elsewhere else {
                return;
            };
            let open = |u: UserId| u != me && !settled.contains(&u);
            let now = s.viewers.snapshot(task, elsewhere);
            let gone: Vec<PresenceUser> = told
                .users
                .values()
                .filter(|(u, _)| {
                    open(u.user_id) && !now.iter().any(|v| v.user.user_id == u.user_id)
                })
                .map(|(u, _)| u.clone())
                .collect();
            for v in now.iter().filter(|v| open(v.user.user_id)) {
                s.tell_presence(team, task, &v.user, Seen::Now(v.stamped.status), Some(id));
            }
            for u in &gone {
                s.tell_presence(team, task, u, Seen::Left, Some(id));
            }
        });
    }

    /// Tasks whose local viewers changed since the last call, with those viewers, their team and
    /// whether to announce the change (shared presence).
    pub(super) fn take_presence_changes(&self) -> Vec<PresenceChange> {
        let mut s = self.state.lock();
        let dirty = std::mem::take(&mut s.presence_dirty);
        dirty
            .into_iter()
            .map(|(task, (team, announce))| PresenceChange {
                team,
                task,
                viewers: s.viewers.local(task),
                announce,
            })
            .collect()
    }

    /// Puts back changes the presence worker could not record (Redis unreachable) so that it
    /// records them later. The viewers are read again when they are taken, so a task marked
    /// again meanwhile loses nothing by the merge; an announced mark stays announced, so a join or
    /// a leave not yet published still is. Does not wake the worker: it retries on its heartbeat.
    pub(super) fn requeue_presence_changes(&self, changes: Vec<PresenceChange>) {
        let mut s = self.state.lock();
        for c in changes {
            s.presence_dirty
                .entry(c.task)
                .and_modify(|(_, announce)| *announce |= c.announce)
                .or_insert((c.team, c.announce));
        }
    }

    /// Marks every task with local viewers for a quiet re-registration (after the bus came back:
    /// Redis may have restarted empty).
    pub(super) fn presence_resync(&self) {
        self.with_state(|s| {
            for (task, team) in s.viewers.tasks() {
                s.presence_dirty.entry(task).or_insert((team, false));
            }
        });
    }

    /// Joins `room` (of `team`) at the current point of the team's dispatch, if that point is not
    /// past `snapshot_seq` (the seq of the store snapshot the access check was read in) and, for a
    /// resume, equals `replayed` (what the caller replayed up to). Queues `subscribed`; for a task
    /// room its presence lists the local viewers and `elsewhere` (other instances' viewers), each
    /// with what they do there.
    ///
    /// A team scope joined by an owner or admin (`admin`) also reaches the team's `admins` room.
    #[allow(clippy::too_many_arguments)]
    pub fn join_as(
        &self,
        id: ConnId,
        scope: Scope,
        team: TeamId,
        admin: bool,
        snapshot_seq: i64,
        replayed: Option<i64>,
        elsewhere: &[PresenceView],
    ) -> Join {
        self.join_group(
            id,
            &[(scope, elsewhere)],
            team,
            admin,
            snapshot_seq,
            replayed,
        )
    }

    /// `join_as` for several scopes of one team at once: all are joined at the same point of the
    /// team's dispatch, under one lock, or none is (an SSE stream's scopes of a team share one
    /// resume position, which is exact only if they never stand at different points).
    pub fn join_group(
        &self,
        id: ConnId,
        scopes: &[(Scope, &[PresenceView])],
        team: TeamId,
        admin: bool,
        snapshot_seq: i64,
        replayed: Option<i64>,
    ) -> Join {
        let clock = Clock::now();
        self.with_state(|s| {
            let Some(TeamState {
                phase: Phase::Ready { dispatched },
                ..
            }) = s.teams.get(&team)
            else {
                return Join::Stale;
            };
            let dispatched = *dispatched;
            if dispatched > snapshot_seq || replayed.is_some_and(|r| r != dispatched) {
                return Join::Stale;
            }
            // Joining below the snapshot would let an older activity (a removal the snapshot
            // already saw undone) act on this subscription: catch up first.
            if dispatched < snapshot_seq {
                return Join::Behind;
            }
            let Some(conn) = s.conns.get_mut(&id) else {
                return Join::Gone;
            };
            let mut rooms: Vec<Room> = scopes.iter().map(|(scope, _)| scope.room()).collect();
            rooms.sort_unstable();
            rooms.dedup();
            let fresh = rooms.iter().filter(|r| !conn.subs.contains_key(r)).count();
            if fresh > 0 && conn.subs.len() + fresh > self.max_rooms {
                return Join::TooMany;
            }
            let member = conn.member.clone();
            let user = conn.user.clone();
            for &(scope, elsewhere) in scopes {
                let room = scope.room();
                let fresh = s
                    .conns
                    .get_mut(&id)
                    .is_some_and(|c| c.subs.insert(room, team).is_none());
                s.rooms.entry(room).or_default().insert(id, member.clone());
                if admin && room == Room::Team(team) {
                    s.rooms
                        .entry(Room::Admins(team))
                        .or_default()
                        .insert(id, member.clone());
                }
                if fresh {
                    if let Some(t) = s.teams.get_mut(&team) {
                        t.refs += 1;
                    }
                    if let Some(k) = scope_slot(room) {
                        s.subscriptions[k] += 1;
                    }
                }
                let presence = match scope {
                    Scope::Task(task) => {
                        if fresh && let Some(effect) = s.viewers.enter(id, team, task, &user, clock)
                        {
                            s.presence_effect(effect);
                        }
                        let snapshot = s.viewers.snapshot(task, elsewhere);
                        if s.shared_presence
                            && let Some(c) = s.conns.get_mut(&id)
                        {
                            let users = snapshot
                                .iter()
                                .filter(|v| v.user.user_id != user.user_id)
                                .map(|v| (v.user.user_id, (v.user.clone(), v.stamped.status)))
                                .collect();
                            c.told.insert(
                                task,
                                Told {
                                    users,
                                    since_join: Some(HashSet::new()),
                                },
                            );
                        }
                        Some(snapshot.iter().map(PresenceEntry::from).collect())
                    }
                    _ => None,
                };
                let subscribed = ServerMessage::Subscribed {
                    scope,
                    seq: dispatched,
                    presence,
                };
                member.outbox.push(Frame::positioned(
                    subscribed.frame(),
                    Stream::Team(team),
                    dispatched,
                    Arrival::Joined,
                ));
            }
            Join::Joined(dispatched)
        })
    }

    /// `join_as` a member who is not an admin.
    #[cfg(test)]
    pub fn join(
        &self,
        id: ConnId,
        scope: Scope,
        team: TeamId,
        snapshot_seq: i64,
        replayed: Option<i64>,
        elsewhere: &[PresenceView],
    ) -> Join {
        self.join_as(id, scope, team, false, snapshot_seq, replayed, elsewhere)
    }

    /// Leaves a room; false if the connection was not in it.
    pub fn leave(&self, id: ConnId, room: Room) -> bool {
        self.with_state(|s| {
            let Some(conn) = s.conns.get_mut(&id) else {
                return false;
            };
            let Some(team) = conn.subs.remove(&room) else {
                return false;
            };
            let user = conn.user.user_id;
            s.leave_room(id, room, team, user);
            true
        })
    }

    /// Dispatches activities of one team (in seq order), repairing from the log first when they
    /// skip ahead of what was dispatched. Activities of a team the hub does not follow are not
    /// for this instance (a user's own sockets get theirs through `deliver_user_copy`).
    pub async fn dispatch(&self, entries: Vec<LogEntry>) {
        self.dispatch_within(entries, REPAIR_ROUNDS).await;
    }

    /// `dispatch` with at most `rounds` gap repairs.
    async fn dispatch_within(&self, mut entries: Vec<LogEntry>, rounds: usize) {
        let Some(team) = entries.first().map(LogEntry::team_id) else {
            return;
        };
        entries.sort_by_key(|e| e.seq);
        for _ in 0..rounds {
            let gap = self.with_state(|s| {
                let t = s.teams.get_mut(&team)?;
                let dispatched = match &mut t.phase {
                    Phase::Starting { held } => {
                        held.extend(entries.drain(..).map(|entry| Held {
                            entry,
                            user_copy: false,
                        }));
                        return None;
                    }
                    Phase::Ready { dispatched } => *dispatched,
                };
                match entries.iter().find(|e| e.seq > dispatched) {
                    None => None,
                    Some(first) if first.seq == dispatched + 1 => {
                        s.deliver(team, &entries);
                        // A hole inside the batch is a skip ahead too: repair what lies beyond
                        // it now rather than leave it to the periodic check.
                        let Some(TeamState {
                            phase: Phase::Ready { dispatched },
                            ..
                        }) = s.teams.get(&team)
                        else {
                            return None;
                        };
                        let dispatched = *dispatched;
                        entries
                            .iter()
                            .find(|e| e.seq > dispatched)
                            .map(|next| (dispatched, next.seq - 1))
                    }
                    Some(first) => Some((dispatched, first.seq - 1)),
                }
            });
            let Some(gap) = gap else {
                return;
            };
            // Something was lost on the way: read it from the log, then deliver in order.
            match self.read_log(team, gap.0, gap.1).await {
                Ok(missing) if !missing.is_empty() => {
                    tracing::debug!(%team, from = gap.0, to = gap.1, n = missing.len(), "repaired a gap");
                    let mut all = missing;
                    all.extend(entries);
                    entries = all;
                }
                Ok(_) => {
                    tracing::warn!(%team, from = gap.0, to = gap.1, "gap not in the log; skipping ahead");
                    self.with_state(|s| s.skip_to(team, gap.1));
                }
                Err(e) => {
                    tracing::warn!(error = %e, %team, "could not repair a gap; the periodic check retries");
                    return;
                }
            }
        }
        // Every round found another gap (the log changed under the repair, or answered out of
        // order). The entries are dropped, not lost: the periodic check compares the team with
        // the log again and delivers from it.
        let dispatched = self.dispatched(team);
        tracing::warn!(%team, rounds, ?dispatched, "gap repair gave up; the periodic check continues it");
        metrics::counter!(telemetry::GAP_REPAIRS_ABANDONED).increment(1);
    }

    async fn read_log(
        &self,
        team: TeamId,
        after: i64,
        upto: i64,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let mut tx = self.store.read().await?;
        let mut out = Vec::new();
        let mut from = after;
        while from < upto {
            let batch = tx.activities(team, from, upto, REPAIR_BATCH).await?;
            let Some(last) = batch.last().map(|e| e.seq) else {
                break;
            };
            from = last;
            out.extend(batch);
        }
        if !out.is_empty() {
            metrics::counter!(telemetry::GAP_REPAIRS).increment(1);
            metrics::counter!(telemetry::GAP_REPAIRED_ACTIVITIES).increment(out.len() as u64);
        }
        Ok(out)
    }

    /// Closes every connection, and every one registered from now on (server shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        let mut s = self.state.lock();
        s.closing = Some(reason);
        for conn in s.conns.values() {
            conn.member.outbox.close(reason);
        }
    }

    pub fn connections(&self) -> usize {
        self.state.lock().conns.len()
    }

    /// Sets the connection and subscription gauges from the live state (at a scrape): a few
    /// numbers read under the lock, whatever the number of rooms.
    pub fn record_gauges(&self) {
        let (conns, per_kind) = {
            let s = self.state.lock();
            (s.conns.len(), s.subscriptions)
        };
        metrics::gauge!(telemetry::WS_CONNECTIONS).set(conns as f64);
        for (k, scope) in ["team", "board", "task"].into_iter().enumerate() {
            metrics::gauge!(telemetry::WS_SUBSCRIPTIONS, "scope" => scope).set(per_kind[k] as f64);
        }
    }

    /// Subscriptions by scope, counted by walking the rooms (tests compare it with the kept
    /// counts).
    #[cfg(test)]
    fn counted_subscriptions(&self) -> [usize; 3] {
        let s = self.state.lock();
        let mut per_kind = [0usize; 3];
        for (room, members) in &s.rooms {
            if let Some(k) = scope_slot(*room) {
                per_kind[k] += members.len();
            }
        }
        per_kind
    }
}

impl State {
    /// A followed team's starting seq is known: release what was held meanwhile. Nobody has
    /// joined the team's rooms yet, so what is not newer than `seq` is only owed to its users'
    /// own sockets, and only if it came on their channel; what is newer is dispatched as usual.
    fn start(&mut self, team: TeamId, seq: i64) {
        let Some(t) = self.teams.get_mut(&team) else {
            return;
        };
        t.started_at = seq;
        let before = t.dispatched_before;
        let Phase::Starting { held } =
            std::mem::replace(&mut t.phase, Phase::Ready { dispatched: seq })
        else {
            return;
        };
        let mut held = held;
        held.sort_by_key(|h| (h.entry.seq, !h.user_copy));
        held.dedup_by_key(|h| h.entry.seq);
        let (old, new): (Vec<Held>, Vec<Held>) = held.into_iter().partition(|h| h.entry.seq <= seq);
        let old: Vec<LogEntry> = old
            .into_iter()
            .filter(|h| h.user_copy && h.entry.seq > before)
            .map(|h| h.entry)
            .collect();
        let new: Vec<LogEntry> = new.into_iter().map(|h| h.entry).collect();
        self.deliver_to_users(&old);
        self.deliver(team, &new);
    }

    /// Drops one reference to a followed team; the last one stops following it.
    fn release_team(&mut self, team: TeamId) {
        let Some(t) = self.teams.get_mut(&team) else {
            return;
        };
        t.refs = t.refs.saturating_sub(1);
        if t.refs > 0 {
            return;
        }
        if let Some(TeamState {
            phase: Phase::Ready { dispatched },
            ..
        }) = self.teams.remove(&team)
        {
            self.left.insert(team, (dispatched, Instant::now()));
        }
        self.unwatch.push(team);
    }

    /// Delivers entries (sorted) that continue the team's dispatched seq. A connection whose
    /// outbox overflows is closed by it (slow consumer); its task then unregisters it.
    fn deliver(&mut self, team: TeamId, entries: &[LogEntry]) {
        for e in entries {
            let Some(TeamState {
                phase: Phase::Ready { dispatched },
                ..
            }) = self.teams.get_mut(&team)
            else {
                return;
            };
            if e.seq <= *dispatched {
                continue;
            }
            if e.seq != *dispatched + 1 {
                break;
            }
            *dispatched = e.seq;
            self.next_stamp += 1;
            let stamp = self.next_stamp;
            let frame =
                Frame::positioned(activity_frame(e), Stream::Team(team), e.seq, Arrival::Live);
            let mut queued = 0u64;
            for room in e.route.rooms() {
                let Some(members) = self.rooms.get(&room) else {
                    continue;
                };
                for m in members.values() {
                    if m.stamp.swap(stamp, Ordering::Relaxed) != stamp {
                        queued += u64::from(m.outbox.push_live(frame.clone()));
                    }
                }
            }
            metrics::counter!(telemetry::ACTIVITIES_DISPATCHED).increment(1);
            metrics::counter!(telemetry::DELIVERIES).increment(queued);
            if queued > 0
                && let Some(age) = telemetry::since_commit(&e.json)
            {
                metrics::histogram!(telemetry::DELIVERY_LATENCY).record(age);
            }
            match (e.route.kind, e.route.user_id) {
                (ActivityKind::MemberRemoved, Some(user)) => self.revoke(team, user),
                (ActivityKind::MemberUpdated, Some(user)) => {
                    self.follow_role(team, user, role_of_member(&e.json));
                }
                _ => {}
            }
        }
    }

    /// Delivers to the user rooms an activity routes to (live only: user rooms have no resume).
    fn deliver_to_users(&mut self, entries: &[LogEntry]) {
        for e in entries {
            let Some(user) = e.route.user_id else {
                continue;
            };
            if !e.route.reaches(Room::User(user)) {
                continue;
            }
            let Some(members) = self.rooms.get(&Room::User(user)) else {
                continue;
            };
            let frame = Frame::positioned(
                activity_frame(e),
                Stream::Team(e.team_id()),
                e.seq,
                Arrival::Live,
            );
            let mut queued = 0u64;
            for m in members.values() {
                queued += u64::from(m.outbox.push_live(frame.clone()));
            }
            metrics::counter!(telemetry::DELIVERIES).increment(queued);
        }
    }

    fn skip_to(&mut self, team: TeamId, seq: i64) {
        if let Some(TeamState {
            phase: Phase::Ready { dispatched },
            ..
        }) = self.teams.get_mut(&team)
        {
            *dispatched = (*dispatched).max(seq);
        }
    }

    /// Moves the user's connections in the team room into or out of the team's admins room as
    /// their new role says (a role that cannot be read takes them out).
    fn follow_role(&mut self, team: TeamId, user: UserId, role: Option<Role>) {
        let admin = role.is_some_and(|r| r >= Role::Admin);
        let ids: Vec<ConnId> = self
            .rooms
            .get(&Room::User(user))
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default();
        for id in ids {
            let in_team = self
                .rooms
                .get(&Room::Team(team))
                .and_then(|m| m.get(&id))
                .cloned();
            match in_team {
                Some(member) if admin => {
                    self.rooms
                        .entry(Room::Admins(team))
                        .or_default()
                        .insert(id, member);
                }
                _ => self.remove_from_room(Room::Admins(team), id),
            }
        }
    }

    /// Drops every room of `team` from the user's connections, telling each why.
    fn revoke(&mut self, team: TeamId, user: UserId) {
        let ids: Vec<ConnId> = self
            .rooms
            .get(&Room::User(user))
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default();
        for id in ids {
            let Some(conn) = self.conns.get_mut(&id) else {
                continue;
            };
            let rooms: Vec<Room> = conn
                .subs
                .iter()
                .filter(|(_, t)| **t == team)
                .map(|(r, _)| *r)
                .collect();
            let user = conn.user.user_id;
            let outbox = conn.member.outbox.clone();
            let had_rooms = !rooms.is_empty();
            for room in rooms {
                if let Some(conn) = self.conns.get_mut(&id) {
                    conn.subs.remove(&room);
                }
                self.leave_room(id, room, team, user);
                if let Some(scope) = Scope::of_room(room) {
                    let msg = ServerMessage::Unsubscribed {
                        scope,
                        reason: Some("membership_revoked"),
                    };
                    outbox.push(Frame::Text(msg.frame()));
                }
            }
            if had_rooms {
                outbox.revoked(team);
            }
        }
    }

    fn remove_from_room(&mut self, room: Room, id: ConnId) {
        if let Some(members) = self.rooms.get_mut(&room) {
            members.remove(&id);
            if members.is_empty() {
                self.rooms.remove(&room);
            }
        }
    }

    /// Takes a connection out of a room it was subscribed to (subs already updated by the caller).
    fn leave_room(&mut self, id: ConnId, room: Room, team: TeamId, user: UserId) {
        self.remove_from_room(room, id);
        if room == Room::Team(team) {
            self.remove_from_room(Room::Admins(team), id);
        }
        if let Some(k) = scope_slot(room) {
            self.subscriptions[k] = self.subscriptions[k].saturating_sub(1);
        }
        if let Room::Task(task) = room {
            if let Some(c) = self.conns.get_mut(&id) {
                c.told.remove(&task);
            }
            if let Some(effect) = self.viewers.leave(id, task, user) {
                self.presence_effect(effect);
            }
        }
        self.release_team(team);
    }

    /// A change of who is in a task room here, or of what they do there. Alone, the hub tells
    /// the room; with shared presence, the registry decides what changed across instances and
    /// the bus brings the event (the time of a state counts there too: it breaks ties).
    fn presence_effect(&mut self, e: Effect) {
        if self.shared_presence {
            self.presence_dirty.insert(e.task, (e.team, true));
            return;
        }
        let frame = match e.change {
            Change::Joined(_) | Change::Left => Frame::Text(presence_frame(
                matches!(e.change, Change::Joined(_)),
                e.team,
                e.task,
                &e.user,
            )),
            Change::Updated(status) => {
                Frame::Text(presence_updated_frame(e.team, e.task, &e.user, status))
            }
            Change::Retimed => return,
        };
        match e.change {
            // The joining socket has its snapshot; a leaving one is out of the room already.
            Change::Joined(conn) => self.broadcast(Room::Task(e.task), &frame, Some(conn)),
            Change::Left => self.broadcast(Room::Task(e.task), &frame, None),
            _ => self.broadcast_to_others(e.task, &frame, e.user.user_id),
        }
    }

    /// Shared presence: tells the sockets in `task`'s room (only `only`, when given), except
    /// `user`'s own, what `seen` says of `user`, each socket only what changes what it was told.
    fn tell_presence(
        &mut self,
        team: TeamId,
        task: TaskId,
        user: &PresenceUser,
        seen: Seen,
        only: Option<ConnId>,
    ) {
        let State { rooms, conns, .. } = self;
        let Some(members) = rooms.get(&Room::Task(task)) else {
            return;
        };
        // Each frame serialized once for the whole room.
        let (mut joined, mut left, mut updated) = (None, None, None);
        for (id, m) in members {
            if only.is_some_and(|o| o != *id) {
                continue;
            }
            let Some(conn) = conns.get_mut(id) else {
                continue;
            };
            if conn.user.user_id == user.user_id {
                continue;
            }
            let told = conn.told.entry(task).or_default();
            if only.is_none()
                && let Some(since) = told.since_join.as_mut()
            {
                // Even when it repeats what the socket was told: see `reconcile_presence`.
                since.insert(user.user_id);
            }
            let before = told.users.get_mut(&user.user_id);
            let push = |slot: &mut Option<Frame>, make: &dyn Fn() -> Utf8Bytes| {
                m.outbox
                    .push_live(slot.get_or_insert_with(|| Frame::Text(make())).clone());
            };
            match (seen, before) {
                (Seen::Left, None) => {}
                (Seen::Left, Some(_)) => {
                    push(&mut left, &|| presence_frame(false, team, task, user));
                    told.users.remove(&user.user_id);
                }
                (Seen::Now(now), Some((_, was))) => {
                    if *was != now {
                        *was = now;
                        // One status per event: one frame serves every socket it changes.
                        push(&mut updated, &|| {
                            presence_updated_frame(team, task, user, now)
                        });
                    }
                }
                (Seen::Now(now), None) => {
                    push(&mut joined, &|| presence_frame(true, team, task, user));
                    if now != PresenceStatus::VIEWING {
                        push(&mut updated, &|| {
                            presence_updated_frame(team, task, user, now)
                        });
                    }
                    told.users.insert(user.user_id, (user.clone(), now));
                }
            }
        }
    }

    /// Queues `frame` for the sockets in `task`'s room that are not `user`'s.
    fn broadcast_to_others(&self, task: TaskId, frame: &Frame, user: UserId) {
        let Some(members) = self.rooms.get(&Room::Task(task)) else {
            return;
        };
        for (id, m) in members {
            let own = self.conns.get(id).is_some_and(|c| c.user.user_id == user);
            if !own {
                m.outbox.push_live(frame.clone());
            }
        }
    }

    fn broadcast(&self, room: Room, frame: &Frame, except: Option<ConnId>) {
        let Some(members) = self.rooms.get(&room) else {
            return;
        };
        for (id, m) in members {
            if Some(*id) != except {
                m.outbox.push_live(frame.clone());
            }
        }
    }
}

/// The role a `member.updated` activity gives its member (read from its JSON: the route does not
/// carry it, and such changes are rare).
fn role_of_member(json: &str) -> Option<Role> {
    #[derive(serde::Deserialize)]
    struct Activity {
        data: Data,
    }
    #[derive(serde::Deserialize)]
    struct Data {
        member: MemberRole,
    }
    #[derive(serde::Deserialize)]
    struct MemberRole {
        role: Role,
    }
    serde_json::from_str::<Activity>(json)
        .ok()
        .map(|a| a.data.member.role)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{InProcessBus, Relay, RelaySettings};
    use crate::domain::BoardId;
    use crate::realtime::outbox::Limits;
    use crate::service::{Services, TokenService};
    use uuid::Uuid;

    async fn hub() -> (Hub, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("a temp dir");
        let url = format!("sqlite://{}", dir.path().join("hub.db").display());
        let store = crate::store::connect(&url, 2).await.expect("a store");
        let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new(64));
        (Hub::new(store, bus, 10), dir)
    }

    fn outbox() -> Arc<Outbox> {
        Arc::new(Outbox::new(Limits {
            frames: 64,
            bytes: 1 << 20,
            replay_frames: 8,
            replay_bytes: 1 << 20,
            stall: Duration::from_secs(5),
        }))
    }

    fn user() -> PresenceUser {
        PresenceUser {
            user_id: UserId::from(Uuid::now_v7()),
            display_name: "Ann".to_owned(),
        }
    }

    /// The subscription gauges come from counts kept on join and leave; they must always agree
    /// with a walk over the rooms, through joins, leaves, repeats and unregisters.
    #[tokio::test]
    async fn kept_subscription_counts_match_the_rooms() {
        let (hub, _dir) = hub().await;
        let team = TeamId::from(Uuid::now_v7());
        let pin = hub.follow(team).await.expect("followed");
        let a = hub.register(user(), outbox());
        let b = hub.register(user(), outbox());
        let task = TaskId::from(Uuid::now_v7());
        let scopes = [
            Scope::Team(team),
            Scope::Board(BoardId::from(Uuid::now_v7())),
            Scope::Task(task),
        ];
        for id in [a, b] {
            for scope in scopes {
                assert_eq!(hub.join(id, scope, team, 0, None, &[]), Join::Joined(0));
            }
        }
        // Joining a room twice is one subscription.
        assert_eq!(hub.join(a, scopes[0], team, 0, None, &[]), Join::Joined(0));
        assert_eq!(hub.state.lock().subscriptions, [2, 2, 2]);
        assert_eq!(hub.counted_subscriptions(), [2, 2, 2]);
        assert!(hub.leave(a, Room::Task(task)));
        assert!(!hub.leave(a, Room::Task(task)));
        let kept = hub.state.lock().subscriptions;
        assert_eq!(kept, hub.counted_subscriptions());
        hub.unregister(b);
        assert_eq!(hub.state.lock().subscriptions, [1, 1, 0]);
        assert_eq!(hub.counted_subscriptions(), [1, 1, 0]);
        drop(pin);
    }

    /// A connection that registers after the shutdown began is closed at once with the same
    /// reason, instead of being left open while the process exits.
    #[tokio::test]
    async fn a_connection_registered_after_close_all_is_closed() {
        let (hub, _dir) = hub().await;
        let early = outbox();
        hub.register(user(), early.clone());
        hub.close_all(CloseReason::GoingAway);
        assert!(early.is_closed());
        let late = outbox();
        hub.register(user(), late.clone());
        assert!(late.is_closed());
        let mut batch = Vec::new();
        assert_eq!(
            late.next_batch(&mut batch).await,
            Some(CloseReason::GoingAway)
        );
    }

    fn counter(text: &str, name: &str) -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Changes put back after a failed write merge with marks made meanwhile; announcing wins.
    #[tokio::test]
    async fn requeued_presence_changes_merge_with_newer_marks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("hub.db").display());
        let store = crate::store::connect(&url, 1).await.expect("sqlite store");
        let hub = Hub::new(store, Arc::new(InProcessBus::new(16)), 16);
        let team = TeamId::from(Uuid::now_v7());
        let (left, quiet) = (TaskId::from(Uuid::now_v7()), TaskId::from(Uuid::now_v7()));
        let change = |task, announce| PresenceChange {
            team,
            task,
            viewers: Vec::new(),
            announce,
        };
        // Marked again meanwhile, quietly (a re-registration after the bus came back).
        hub.state.lock().presence_dirty.insert(left, (team, false));
        hub.requeue_presence_changes(vec![change(left, true), change(quiet, false)]);
        // A failed quiet change does not silence an announced mark.
        hub.requeue_presence_changes(vec![change(left, false)]);
        let mut taken: Vec<(TaskId, bool)> = hub
            .take_presence_changes()
            .into_iter()
            .map(|c| (c.task, c.announce))
            .collect();
        taken.sort();
        let mut want = vec![(left, true), (quiet, false)];
        want.sort();
        assert_eq!(taken, want);
        assert!(hub.take_presence_changes().is_empty());
    }

    /// A dispatch that runs out of repair rounds says so (a warning and a counter) and leaves the
    /// team where it was; the periodic check then delivers everything from the log, in order.
    #[tokio::test]
    async fn a_gap_left_after_the_last_repair_round_is_counted_and_the_check_repairs_it() {
        let telemetry = telemetry::Telemetry::install().expect("metrics recorder");
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("hub.db").display());
        let store = crate::store::connect(&url, 1).await.expect("sqlite store");
        // Nobody takes the bus's events: only what the test dispatches reaches the hub.
        let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new(16));
        let services = Services {
            store: store.clone(),
            relay: Relay::start(
                store.clone(),
                bus.clone(),
                RelaySettings::default(),
                &crate::supervisor::Supervisor::new(),
            ),
            tokens: Arc::new(TokenService::new(
                b"0123456789abcdef0123456789abcdef",
                Duration::from_secs(60),
                Duration::from_secs(60),
            )),
            hashing: Arc::new(crate::service::PasswordHashing::for_this_machine()),
            webhooks: Arc::new(crate::service::webhooks::WebhookPolicy::for_tests()),
        };
        let me = services
            .register("hub@example.com", "correct horse battery", "Hub")
            .await
            .expect("register");
        let team = services
            .create_team(me.user.id, "gaps")
            .await
            .expect("team")
            .id;

        let hub = Hub::new(store.clone(), bus, 16);
        let _pin = hub.follow(team).await.expect("follow");
        let start = hub.dispatched(team).expect("followed");
        let user = PresenceUser {
            user_id: me.user.id,
            display_name: "Hub".into(),
        };
        let outbox = outbox();
        let conn = hub.register(user, outbox.clone());
        let joined = hub.join(conn, Scope::Team(team), team, start, None, &[]);
        assert_eq!(joined, Join::Joined(start));

        for i in 0..5 {
            let input = serde_json::from_value(serde_json::json!({ "title": format!("t{i}") }))
                .expect("new task");
            services
                .create_task(me.user.id, team, input)
                .await
                .expect("task");
        }
        let last = start + 5;
        let mut tx = store.read().await.expect("read");
        let newest = tx.activities(team, last - 1, last, 10).await.expect("log");
        drop(tx);
        assert_eq!(newest.len(), 1);

        // Only the newest arrives: one round reads the four before it, and there are no more.
        let before = counter(&telemetry.render(), telemetry::GAP_REPAIRS_ABANDONED);
        hub.dispatch_within(newest, 1).await;
        assert_eq!(hub.dispatched(team), Some(start), "nothing delivered yet");
        let after = counter(&telemetry.render(), telemetry::GAP_REPAIRS_ABANDONED);
        assert_eq!(after, before + 1, "the abandoned repair is counted");

        hub.check().await.expect("check");
        assert_eq!(
            hub.dispatched(team),
            Some(last),
            "the check delivered the rest"
        );
        let mut batch = Vec::new();
        assert_eq!(outbox.next_batch(&mut batch).await, None);
        let seqs: Vec<i64> = batch
            .iter()
            .filter_map(|f| serde_json::from_str::<serde_json::Value>(f.text()?).ok())
            .filter(|v| v["type"] == "activity")
            .filter_map(|v| v["activity"]["seq"].as_i64())
            .collect();
        assert_eq!(seqs, (start + 1..=last).collect::<Vec<i64>>());
    }
}

#[cfg(test)]
#[path = "hub_tests.rs"]
pub(super) mod core_tests;
