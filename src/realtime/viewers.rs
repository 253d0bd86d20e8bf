//! Who views each task room on this instance and what they do there: the state of each
//! (task, connection) with its throttle and expiry, and for each (task, user) what this instance
//! shows of them, the most active of their connections (`domain::presence::most_active`).
//!
//! Plain bookkeeping kept under the hub's lock: each change returns the [`Effect`] it has on what
//! the room is told, and the hub decides how that travels (straight to the room when the instance
//! is alone, through the shared presence when there are several). Times come from the caller.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use time::OffsetDateTime;
// Tokio's clock, so that tests can move it.
use tokio::time::Instant;

use super::hub::ConnId;
use crate::domain::activity::PresenceUser;
use crate::domain::presence::{PresenceState, PresenceStatus, PresenceView, Stamped, most_active};
use crate::domain::{TaskId, TeamId, UserId};

/// The shortest time between two changes of a connection's state in a room that take effect (at
/// most 5 a second); a change that comes sooner waits for the tick, replaced by any later one.
pub(super) const CHANGE_EVERY: Duration = Duration::from_millis(200);
/// How often waiting changes are applied and unrefreshed states expire.
pub(super) const TICK: Duration = Duration::from_millis(100);

/// The two clocks a change needs: the monotonic one for throttle and expiry, the wall clock (Unix
/// milliseconds) for the time a state took effect, which instances compare.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    pub now: Instant,
    pub wall_ms: i64,
}

impl Clock {
    pub fn now() -> Clock {
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
        Clock {
            now: Instant::now(),
            wall_ms: i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX),
        }
    }
}

/// What a change does to the room's view of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Effect {
    pub team: TeamId,
    pub task: TaskId,
    pub user: PresenceUser,
    pub change: Change,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    /// The user's first connection here entered the room (this one).
    Joined(ConnId),
    /// The user's last connection here left it.
    Left,
    /// What this instance shows of the user changed to this status.
    Updated(PresenceStatus),
    /// Only the time of the shown state changed (another connection became the latest of equally
    /// active ones): nothing to tell the room, but the shared presence breaks ties between
    /// instances by that time.
    Retimed,
}

#[derive(Debug)]
struct ConnState {
    current: Stamped,
    /// When `current` was last set or repeated: editing and typing expire without repeats.
    refreshed: Instant,
    /// The earliest the next change may take effect.
    next_change: Instant,
    /// A change that came too soon, applied by the tick.
    pending: Option<PresenceStatus>,
}

impl ConnState {
    /// Whether the tick has something to do for this connection.
    fn timed(&self) -> bool {
        self.pending.is_some() || self.current.status.state() != PresenceState::Viewing
    }

    fn apply(&mut self, status: PresenceStatus, clock: Clock) {
        self.current = Stamped::new(status, clock.wall_ms);
        self.refreshed = clock.now;
        self.next_change = clock.now + CHANGE_EVERY;
        self.pending = None;
    }
}

struct UserViewing {
    user: PresenceUser,
    /// Ordered, so that a tie of equal keys always resolves the same way.
    conns: BTreeMap<ConnId, ConnState>,
    /// The most active of `conns`, as last reported.
    shown: Stamped,
}

struct TaskViewers {
    team: TeamId,
    users: HashMap<UserId, UserViewing>,
}

pub(super) struct Viewers {
    tasks: HashMap<TaskId, TaskViewers>,
    /// The (task, user) pairs with a connection whose change waits or whose state can expire:
    /// all the tick visits.
    timed: HashSet<(TaskId, UserId)>,
    /// How long editing and typing hold without a repeat.
    ttl: Duration,
}

impl Viewers {
    pub fn new(ttl: Duration) -> Self {
        Self {
            tasks: HashMap::new(),
            timed: HashSet::new(),
            ttl,
        }
    }

    pub fn set_ttl(&mut self, ttl: Duration) {
        self.ttl = ttl;
    }

    /// A connection entered a task room (viewing).
    pub fn enter(
        &mut self,
        conn: ConnId,
        team: TeamId,
        task: TaskId,
        user: &PresenceUser,
        clock: Clock,
    ) -> Option<Effect> {
        let t = self.tasks.entry(task).or_insert_with(|| TaskViewers {
            team,
            users: HashMap::new(),
        });
        let u = t.users.entry(user.user_id).or_insert_with(|| UserViewing {
            user: user.clone(),
            conns: BTreeMap::new(),
            shown: Stamped::VIEWING,
        });
        u.conns.insert(
            conn,
            ConnState {
                current: Stamped::VIEWING,
                refreshed: clock.now,
                next_change: clock.now,
                pending: None,
            },
        );
        if u.conns.len() == 1 {
            return Some(Effect {
                team,
                task,
                user: user.clone(),
                change: Change::Joined(conn),
            });
        }
        // A viewing connection never outranks the others: nothing changes.
        None
    }

    /// A connection left a task room (or closed).
    pub fn leave(&mut self, conn: ConnId, task: TaskId, user: UserId) -> Option<Effect> {
        let t = self.tasks.get_mut(&task)?;
        let u = t.users.get_mut(&user)?;
        u.conns.remove(&conn)?;
        if !u.conns.is_empty() {
            return reaggregate(t.team, task, u);
        }
        let gone = t.users.remove(&user)?;
        let team = t.team;
        if t.users.is_empty() {
            self.tasks.remove(&task);
        }
        self.timed.remove(&(task, user));
        Some(Effect {
            team,
            task,
            user: gone.user,
            change: Change::Left,
        })
    }

    /// A connection in the room says what its user does now. A repeat of its state only
    /// refreshes it; a change takes effect now, or at the tick when the last one was too recent.
    /// `None` (no effect) also when the connection is not in the room: the caller checks that.
    pub fn set(
        &mut self,
        conn: ConnId,
        task: TaskId,
        user: UserId,
        status: PresenceStatus,
        clock: Clock,
    ) -> Option<Effect> {
        let t = self.tasks.get_mut(&task)?;
        let u = t.users.get_mut(&user)?;
        let c = u.conns.get_mut(&conn)?;
        if status == c.current.status {
            // A repeat, or a return to the current state before a waiting change took effect
            // (the last message wins).
            c.pending = None;
            c.refreshed = clock.now;
            return None;
        }
        if clock.now < c.next_change {
            c.pending = Some(status);
            self.timed.insert((task, user));
            return None;
        }
        c.apply(status, clock);
        if c.timed() {
            self.timed.insert((task, user));
        }
        reaggregate(t.team, task, u)
    }

    /// Applies the changes whose time came and expires unrefreshed states.
    pub fn tick(&mut self, clock: Clock) -> Vec<Effect> {
        let mut effects = Vec::new();
        let ttl = self.ttl;
        let tasks = &mut self.tasks;
        self.timed.retain(|&(task, user)| {
            let Some(t) = tasks.get_mut(&task) else {
                return false;
            };
            let Some(u) = t.users.get_mut(&user) else {
                return false;
            };
            let mut timed = false;
            for c in u.conns.values_mut() {
                if let Some(status) = c.pending
                    && clock.now >= c.next_change
                {
                    c.apply(status, clock);
                }
                if c.current.status.state() != PresenceState::Viewing
                    && clock.now.saturating_duration_since(c.refreshed) >= ttl
                {
                    c.current = Stamped::VIEWING;
                }
                timed |= c.timed();
            }
            effects.extend(reaggregate(t.team, task, u));
            timed
        });
        effects
    }

    /// What this instance shows of each user in `task`'s room.
    pub fn local(&self, task: TaskId) -> Vec<PresenceView> {
        self.tasks
            .get(&task)
            .map(|t| {
                t.users
                    .values()
                    .map(|u| PresenceView {
                        user: u.user.clone(),
                        stamped: u.shown,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Who is in `task`'s room here or `elsewhere` (other instances), each user once with the
    /// most active of both, sorted by user id.
    pub fn snapshot(&self, task: TaskId, elsewhere: &[PresenceView]) -> Vec<PresenceView> {
        let mut users: HashMap<UserId, PresenceView> = elsewhere
            .iter()
            .map(|v| (v.user.user_id, v.clone()))
            .collect();
        for here in self.local(task) {
            match users.get_mut(&here.user.user_id) {
                Some(there) => {
                    there.stamped =
                        most_active([here.stamped, there.stamped]).unwrap_or(Stamped::VIEWING);
                    // The name as this instance loaded it is as good as any.
                    there.user = here.user;
                }
                None => {
                    users.insert(here.user.user_id, here);
                }
            }
        }
        let mut users: Vec<PresenceView> = users.into_values().collect();
        users.sort_by_key(|v| v.user.user_id);
        users
    }

    /// Every task with viewers here, and its team.
    pub fn tasks(&self) -> Vec<(TaskId, TeamId)> {
        self.tasks.iter().map(|(k, t)| (*k, t.team)).collect()
    }
}

/// Recomputes what is shown of a user after one of their connections changed; the effect when
/// that changed.
fn reaggregate(team: TeamId, task: TaskId, u: &mut UserViewing) -> Option<Effect> {
    let best = most_active(u.conns.values().map(|c| c.current)).unwrap_or(Stamped::VIEWING);
    if best == u.shown {
        return None;
    }
    let change = if best.status == u.shown.status {
        Change::Retimed
    } else {
        Change::Updated(best.status)
    };
    u.shown = best;
    Some(Effect {
        team,
        task,
        user: u.user.clone(),
        change,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::presence::PresenceField;
    use uuid::Uuid;

    const TTL: Duration = Duration::from_secs(5);

    fn user(name: &str) -> PresenceUser {
        PresenceUser {
            user_id: UserId::from(Uuid::now_v7()),
            display_name: name.into(),
        }
    }

    fn status(state: PresenceState, field: PresenceField) -> PresenceStatus {
        PresenceStatus::new(state, Some(field)).expect("a valid status")
    }

    /// A clock that the test moves by hand, both halves together.
    struct Time(Clock);

    impl Time {
        fn new() -> Self {
            Time(Clock {
                now: Instant::now(),
                wall_ms: 1_000_000,
            })
        }
        fn at(&self) -> Clock {
            self.0
        }
        fn pass(&mut self, d: Duration) -> Clock {
            self.0.now += d;
            self.0.wall_ms += i64::try_from(d.as_millis()).expect("a short time");
            self.0
        }
    }

    struct Room {
        v: Viewers,
        team: TeamId,
        task: TaskId,
    }

    impl Room {
        fn new() -> Self {
            Room {
                v: Viewers::new(TTL),
                team: TeamId::from(Uuid::now_v7()),
                task: TaskId::from(Uuid::now_v7()),
            }
        }
        fn enter(&mut self, conn: ConnId, u: &PresenceUser, c: Clock) -> Option<Change> {
            self.v
                .enter(conn, self.team, self.task, u, c)
                .map(|e| e.change)
        }
        fn set(
            &mut self,
            conn: ConnId,
            u: &PresenceUser,
            s: PresenceStatus,
            c: Clock,
        ) -> Option<Change> {
            self.v
                .set(conn, self.task, u.user_id, s, c)
                .map(|e| e.change)
        }
        fn tick(&mut self, c: Clock) -> Vec<Change> {
            self.v.tick(c).into_iter().map(|e| e.change).collect()
        }
        fn shown(&self, u: &PresenceUser) -> PresenceStatus {
            self.v
                .local(self.task)
                .into_iter()
                .find(|v| v.user.user_id == u.user_id)
                .expect("present")
                .stamped
                .status
        }
    }

    use PresenceField::*;
    use PresenceState::*;

    #[test]
    fn two_connections_show_the_most_active_and_only_changes_count() {
        let mut r = Room::new();
        let mut t = Time::new();
        let ann = user("Ann");
        assert_eq!(r.enter(1, &ann, t.at()), Some(Change::Joined(1)));
        assert_eq!(r.enter(2, &ann, t.at()), None, "a second tab joins quietly");

        let editing = status(Editing, Title);
        let typing = status(Typing, Comment);
        assert_eq!(
            r.set(1, &ann, editing, t.pass(Duration::from_secs(1))),
            Some(Change::Updated(editing))
        );
        assert_eq!(
            r.set(2, &ann, typing, t.pass(Duration::from_secs(1))),
            Some(Change::Updated(typing))
        );
        // The typing tab goes back to viewing: the other one is still editing.
        assert_eq!(
            r.set(
                2,
                &ann,
                PresenceStatus::VIEWING,
                t.pass(Duration::from_secs(1))
            ),
            Some(Change::Updated(editing))
        );
        // Repeats change nothing.
        assert_eq!(
            r.set(1, &ann, editing, t.pass(Duration::from_secs(1))),
            None
        );
        // Equally active: the latest wins.
        let description = status(Editing, Description);
        assert_eq!(
            r.set(2, &ann, description, t.pass(Duration::from_secs(1))),
            Some(Change::Updated(description))
        );
        // The first tab changes field: still editing, now the latest.
        let comment = status(Editing, Comment);
        assert_eq!(
            r.set(1, &ann, comment, t.pass(Duration::from_secs(1))),
            Some(Change::Updated(comment))
        );
        // It goes back to the title: a change of field, announced.
        assert_eq!(
            r.set(1, &ann, editing, t.pass(Duration::from_secs(1))),
            Some(Change::Updated(editing))
        );
        // Leaving: the other tab's state shows; the last one out leaves.
        assert_eq!(
            r.v.leave(1, r.task, ann.user_id).map(|e| e.change),
            Some(Change::Updated(description))
        );
        assert_eq!(
            r.v.leave(2, r.task, ann.user_id).map(|e| e.change),
            Some(Change::Left)
        );
        assert!(r.v.tasks().is_empty(), "nothing kept for an empty room");
        assert!(r.v.timed.is_empty());
    }

    #[test]
    fn only_the_time_changing_is_a_retime() {
        let mut r = Room::new();
        let mut t = Time::new();
        let ann = user("Ann");
        r.enter(1, &ann, t.at());
        r.enter(2, &ann, t.at());
        let editing = status(Editing, Title);
        r.set(1, &ann, editing, t.pass(Duration::from_secs(1)));
        // The same status from the other tab, later: nothing to announce, a new time.
        assert_eq!(
            r.set(2, &ann, editing, t.pass(Duration::from_secs(1))),
            Some(Change::Retimed)
        );
        let shown = r.v.local(r.task)[0].stamped;
        assert_eq!(shown.at, t.at().wall_ms);
    }

    #[test]
    fn a_burst_is_throttled_and_the_last_change_wins() {
        let mut r = Room::new();
        let mut t = Time::new();
        let ann = user("Ann");
        r.enter(1, &ann, t.at());
        let states = [
            status(Editing, Title),
            status(Typing, Title),
            status(Editing, Description),
            status(Typing, Comment),
        ];
        // The first change takes effect; those within the window wait, the last one kept.
        assert_eq!(
            r.set(1, &ann, states[0], t.at()),
            Some(Change::Updated(states[0]))
        );
        for s in &states[1..] {
            assert_eq!(r.set(1, &ann, *s, t.pass(Duration::from_millis(10))), None);
        }
        assert_eq!(r.shown(&ann), states[0]);
        assert!(
            r.tick(t.pass(Duration::from_millis(50))).is_empty(),
            "too soon"
        );
        assert_eq!(
            r.tick(t.pass(Duration::from_millis(150))),
            vec![Change::Updated(states[3])],
            "the tick applies the last one"
        );
        // Right after a change, a return to the current state cancels a waiting one.
        assert_eq!(
            r.set(1, &ann, states[0], t.pass(Duration::from_millis(10))),
            None
        );
        assert_eq!(
            r.set(1, &ann, states[3], t.pass(Duration::from_millis(10))),
            None
        );
        assert!(r.tick(t.pass(Duration::from_millis(300))).is_empty());
        assert_eq!(r.shown(&ann), states[3]);
        // Changes spaced by the window all take effect at once.
        for s in states {
            assert_eq!(
                r.set(1, &ann, s, t.pass(CHANGE_EVERY)),
                Some(Change::Updated(s))
            );
        }
    }

    #[test]
    fn editing_and_typing_expire_without_a_repeat() {
        let mut r = Room::new();
        let mut t = Time::new();
        let ann = user("Ann");
        let bob = user("Bob");
        r.enter(1, &ann, t.at());
        r.enter(2, &bob, t.at());
        let editing = status(Editing, Title);
        r.set(1, &ann, editing, t.at());
        r.set(2, &bob, editing, t.at());
        // Ann repeats her state; Bob does not.
        for _ in 0..4 {
            t.pass(TTL / 4);
            assert_eq!(r.set(1, &ann, editing, t.at()), None);
            let changes = r.v.tick(t.at());
            assert!(
                changes.iter().all(|e| e.user.user_id == bob.user_id),
                "{changes:?}"
            );
        }
        assert_eq!(r.shown(&ann), editing, "refreshed: still editing");
        assert_eq!(r.shown(&bob), PresenceStatus::VIEWING, "expired");
        assert_eq!(r.v.timed.len(), 1, "only Ann's state can still expire");
        assert_eq!(
            r.tick(t.pass(TTL)),
            vec![Change::Updated(PresenceStatus::VIEWING)]
        );
        assert!(r.v.timed.is_empty());
    }

    #[test]
    fn the_snapshot_merges_other_instances() {
        let mut r = Room::new();
        let t = Time::new();
        let (ann, bob) = (user("Ann"), user("Bob"));
        r.enter(1, &ann, t.at());
        r.set(1, &ann, status(Editing, Title), t.at());
        let elsewhere = [
            PresenceView {
                user: ann.clone(),
                stamped: Stamped::new(status(Typing, Comment), 1),
            },
            PresenceView {
                user: bob.clone(),
                stamped: Stamped::VIEWING,
            },
        ];
        let snap = r.v.snapshot(r.task, &elsewhere);
        assert_eq!(snap.len(), 2);
        let of = |u: &PresenceUser| {
            snap.iter()
                .find(|v| v.user.user_id == u.user_id)
                .map(|v| v.stamped.status)
        };
        assert_eq!(of(&ann), Some(status(Typing, Comment)), "more active there");
        assert_eq!(of(&bob), Some(PresenceStatus::VIEWING));
    }
}
