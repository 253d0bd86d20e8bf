//! The fanout hub: rooms of local connections, per-team dispatch in seq order, resume joins,
//! revocation and presence.
//!
//! All state sits behind one mutex that is never held across an await or a socket write: dispatch
//! only queues shared frames into each connection's bounded outbox. A team's activities are
//! dispatched in seq order exactly once per instance (`dispatched` per team); a join happens at a
//! precise point of that order, which is what makes `subscribed.seq` exact and keeps a subscribe
//! from slipping in after a revocation.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::ws::Message;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::outbox::{CloseReason, Outbox};
use super::protocol::{PresenceUser, Scope, ServerMessage, activity_frame, presence_frame};
use crate::domain::activity::{ActivityKind, LogEntry};
use crate::domain::{Room, TaskId, TeamId, UserId};
use crate::store::{Store, StoreError};

pub type ConnId = u64;

/// Most activities read from the log in one repair step.
const REPAIR_BATCH: i64 = 1_000;

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
}

enum TeamState {
    /// Listening has started but the starting seq is not known yet: hold what arrives.
    Starting {
        held: Vec<LogEntry>,
    },
    Ready {
        dispatched: i64,
    },
}

#[derive(Default)]
struct TaskPresence {
    /// Per user: how many of their sockets are in the room, and who they are.
    users: HashMap<UserId, (usize, PresenceUser)>,
}

#[derive(Default)]
struct State {
    conns: HashMap<ConnId, Conn>,
    rooms: HashMap<Room, HashMap<ConnId, Arc<Member>>>,
    teams: HashMap<TeamId, TeamState>,
    presence: HashMap<TaskId, TaskPresence>,
    next_stamp: u64,
}

/// How a join ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Join {
    /// Joined; `subscribed` with this seq is queued.
    Joined(i64),
    /// The team's dispatch moved past the caller's snapshot: check again with a fresh one.
    Stale,
    TooMany,
    /// The connection is gone.
    Gone,
}

pub struct Hub {
    state: Mutex<State>,
    store: Arc<dyn Store>,
    team_started: Notify,
    next_conn: AtomicU64,
    max_rooms: usize,
}

impl Hub {
    pub fn new(store: Arc<dyn Store>, max_rooms: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            store,
            team_started: Notify::new(),
            next_conn: AtomicU64::new(1),
            max_rooms,
        }
    }

    /// Adds a connection and joins it to its user's own room.
    pub fn register(&self, user: PresenceUser, outbox: Arc<Outbox>) -> ConnId {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let member = Arc::new(Member {
            outbox,
            stamp: AtomicU64::new(0),
        });
        let mut s = self.state.lock();
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
            },
        );
        id
    }

    /// Removes a connection from every room (its task rooms see it leave).
    pub fn unregister(&self, id: ConnId) {
        let mut s = self.state.lock();
        let Some(conn) = s.conns.remove(&id) else {
            return;
        };
        for (room, team) in &conn.subs {
            s.leave_room(id, *room, *team, &conn.user);
        }
        s.remove_from_room(Room::User(conn.user.user_id), id);
    }

    /// The seq up to which `team` has been dispatched here, if the hub listens to it.
    pub fn dispatched(&self, team: TeamId) -> Option<i64> {
        match self.state.lock().teams.get(&team) {
            Some(TeamState::Ready { dispatched }) => Some(*dispatched),
            _ => None,
        }
    }

    /// Makes sure the hub follows `team`: the first caller reads the team's seq (after the bus
    /// listens) and releases what arrived meanwhile; others wait for it.
    pub async fn follow(&self, team: TeamId) -> Result<(), StoreError> {
        loop {
            let started = self.team_started.notified();
            {
                let mut s = self.state.lock();
                match s.teams.get(&team) {
                    Some(TeamState::Ready { .. }) => return Ok(()),
                    Some(TeamState::Starting { .. }) => {}
                    None => {
                        s.teams
                            .insert(team, TeamState::Starting { held: Vec::new() });
                        break;
                    }
                }
            }
            started.await;
        }
        let seq = async { self.store.read().await?.last_seq(team).await }.await;
        let mut s = self.state.lock();
        let result = match seq {
            Ok(seq) => {
                let seq = seq.unwrap_or(0);
                let held = match s.teams.insert(team, TeamState::Ready { dispatched: seq }) {
                    Some(TeamState::Starting { held }) => held,
                    _ => Vec::new(),
                };
                // Nobody has joined the team's rooms yet. What was held up to `seq` is older than
                // the start and is only owed to its users' own sockets; what is newer is
                // dispatched as usual.
                let mut held = held;
                held.sort_by_key(|e| e.seq);
                let (old, new): (Vec<LogEntry>, Vec<LogEntry>) =
                    held.into_iter().partition(|e| e.seq <= seq);
                s.deliver_to_users(&old);
                s.deliver(team, &new);
                Ok(())
            }
            Err(e) => {
                s.teams.remove(&team);
                Err(e)
            }
        };
        drop(s);
        self.team_started.notify_waiters();
        result
    }

    /// Joins `room` (of `team`) at the current point of the team's dispatch, if that point is not
    /// past `snapshot_seq` (the seq of the store snapshot the access check was read in) and, for a
    /// resume, equals `replayed` (what the caller replayed up to). Queues `subscribed`.
    pub fn join(
        &self,
        id: ConnId,
        scope: Scope,
        team: TeamId,
        snapshot_seq: i64,
        replayed: Option<i64>,
    ) -> Join {
        let room = scope.room();
        let mut guard = self.state.lock();
        let s = &mut *guard;
        let Some(TeamState::Ready { dispatched }) = s.teams.get(&team) else {
            return Join::Stale;
        };
        let dispatched = *dispatched;
        if dispatched > snapshot_seq || replayed.is_some_and(|r| r != dispatched) {
            return Join::Stale;
        }
        let Some(conn) = s.conns.get_mut(&id) else {
            return Join::Gone;
        };
        let fresh = !conn.subs.contains_key(&room);
        if fresh && conn.subs.len() >= self.max_rooms {
            return Join::TooMany;
        }
        conn.subs.insert(room, team);
        let member = conn.member.clone();
        let user = conn.user.clone();
        s.rooms.entry(room).or_default().insert(id, member.clone());
        let presence = match scope {
            Scope::Task(task) => {
                if fresh {
                    s.enter_presence(id, team, task, &user);
                }
                Some(s.presence_snapshot(task))
            }
            _ => None,
        };
        member.outbox.push(Message::Text(
            ServerMessage::Subscribed {
                scope,
                seq: dispatched,
                presence,
            }
            .frame(),
        ));
        Join::Joined(dispatched)
    }

    /// Leaves a room; false if the connection was not in it.
    pub fn leave(&self, id: ConnId, room: Room) -> bool {
        let mut s = self.state.lock();
        let Some(conn) = s.conns.get_mut(&id) else {
            return false;
        };
        let Some(team) = conn.subs.remove(&room) else {
            return false;
        };
        let user = conn.user.clone();
        s.leave_room(id, room, team, &user);
        true
    }

    /// Dispatches activities of one team (in seq order), repairing from the log first when they
    /// skip ahead of what was dispatched.
    pub async fn dispatch(&self, mut entries: Vec<LogEntry>) {
        let Some(team) = entries.first().map(LogEntry::team_id) else {
            return;
        };
        entries.sort_by_key(|e| e.seq);
        for _ in 0..64 {
            let gap = {
                let mut s = self.state.lock();
                match s.teams.get_mut(&team) {
                    // Nobody here follows the team: only its members' own sockets may need it.
                    None => {
                        s.deliver_to_users(&entries);
                        return;
                    }
                    Some(TeamState::Starting { held }) => {
                        held.extend(entries);
                        return;
                    }
                    Some(TeamState::Ready { dispatched }) => {
                        let dispatched = *dispatched;
                        match entries.iter().find(|e| e.seq > dispatched) {
                            None => return,
                            Some(first) if first.seq == dispatched + 1 => {
                                s.deliver(team, &entries);
                                return;
                            }
                            Some(first) => (dispatched, first.seq - 1),
                        }
                    }
                }
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
                    let mut s = self.state.lock();
                    s.skip_to(team, gap.1);
                }
                Err(e) => {
                    tracing::warn!(error = %e, %team, "could not repair a gap; waiting for the next activity");
                    return;
                }
            }
        }
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
        Ok(out)
    }

    /// Closes every connection (server shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        let s = self.state.lock();
        for conn in s.conns.values() {
            conn.member.outbox.close(reason);
        }
    }

    pub fn connections(&self) -> usize {
        self.state.lock().conns.len()
    }
}

impl State {
    /// Delivers entries (sorted) that continue the team's dispatched seq. A connection whose
    /// outbox overflows is closed by it (slow consumer); its task then unregisters it.
    fn deliver(&mut self, team: TeamId, entries: &[LogEntry]) {
        for e in entries {
            let Some(TeamState::Ready { dispatched }) = self.teams.get_mut(&team) else {
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
            let frame = Message::Text(activity_frame(e));
            for room in e.route.rooms() {
                let Some(members) = self.rooms.get(&room) else {
                    continue;
                };
                for m in members.values() {
                    if m.stamp.swap(stamp, Ordering::Relaxed) != stamp {
                        m.outbox.push_live(frame.clone());
                    }
                }
            }
            if let (ActivityKind::MemberRemoved, Some(user)) = (e.route.kind, e.route.user_id) {
                self.revoke(team, user);
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
            let frame = Message::Text(activity_frame(e));
            for m in members.values() {
                m.outbox.push_live(frame.clone());
            }
        }
    }

    fn skip_to(&mut self, team: TeamId, seq: i64) {
        if let Some(TeamState::Ready { dispatched }) = self.teams.get_mut(&team) {
            *dispatched = (*dispatched).max(seq);
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
            let user = conn.user.clone();
            let outbox = conn.member.outbox.clone();
            for room in rooms {
                if let Some(conn) = self.conns.get_mut(&id) {
                    conn.subs.remove(&room);
                }
                self.leave_room(id, room, team, &user);
                if let Some(scope) = Scope::of_room(room) {
                    let msg = ServerMessage::Unsubscribed {
                        scope,
                        reason: Some("membership_revoked"),
                    };
                    outbox.push(Message::Text(msg.frame()));
                }
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
    fn leave_room(&mut self, id: ConnId, room: Room, team: TeamId, user: &PresenceUser) {
        self.remove_from_room(room, id);
        if let Room::Task(task) = room {
            self.leave_presence(team, task, user);
        }
    }

    fn enter_presence(&mut self, id: ConnId, team: TeamId, task: TaskId, user: &PresenceUser) {
        let p = self.presence.entry(task).or_default();
        let entry = p
            .users
            .entry(user.user_id)
            .or_insert_with(|| (0, user.clone()));
        entry.0 += 1;
        if entry.0 == 1 {
            let frame = Message::Text(presence_frame(true, team, task, user));
            self.broadcast(Room::Task(task), &frame, Some(id));
        }
    }

    fn leave_presence(&mut self, team: TeamId, task: TaskId, user: &PresenceUser) {
        let Some(p) = self.presence.get_mut(&task) else {
            return;
        };
        let Some(entry) = p.users.get_mut(&user.user_id) else {
            return;
        };
        entry.0 -= 1;
        if entry.0 > 0 {
            return;
        }
        p.users.remove(&user.user_id);
        if p.users.is_empty() {
            self.presence.remove(&task);
        }
        let frame = Message::Text(presence_frame(false, team, task, user));
        self.broadcast(Room::Task(task), &frame, None);
    }

    fn presence_snapshot(&self, task: TaskId) -> Vec<PresenceUser> {
        let mut users: Vec<PresenceUser> = self
            .presence
            .get(&task)
            .map(|p| p.users.values().map(|(_, u)| u.clone()).collect())
            .unwrap_or_default();
        users.sort_by_key(|u| u.user_id);
        users
    }

    fn broadcast(&self, room: Room, frame: &Message, except: Option<ConnId>) {
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
