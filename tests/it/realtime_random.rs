//! Randomized no-leakage test (seeded; `TASKFORGE_TEST_SEED` replays), on every topology:
//! several teams, users with overlapping memberships and roles, two sockets per user (on
//! consecutive instances) subscribed to random parts of what the user may see; random HTTP
//! actions (tasks, moves, assignments, comments, boards, labels, members) through random
//! instances; a model of who is entitled to what, ordered by seq. Each socket must receive
//! exactly the activities routed to its rooms while it was entitled to them, and its own
//! deliveries, each once, in seq order per team, and nothing else.
//!
//! Inboxes too: every socket follows its user's inbox; comments, edits and descriptions mention
//! random users (members or not), users follow, unfollow and mark read. A model of the
//! notification rules ([`World::notify`]) says what each user is owed; at the end each user's
//! `GET /me/notifications` must be exactly that (for the teams they are in), and each inbox
//! socket must have received it once, in seq order, with every mark-read, and nothing of
//! another user or of a team the user never joined. Now and then a new socket resumes a user's
//! inbox from some seq: its replay must be what the inbox serves after that seq.
//!
//! The routing model ([`Room`], [`routes`]) and [`wait_all`] serve the outage tests of
//! `cluster.rs` too.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};
use uuid::Uuid;

every_topology!(random_actions_no_leakage);

pub(crate) fn uuid_at(v: &Value) -> Option<Uuid> {
    v.as_str().and_then(|s| s.parse().ok())
}

/// Reads until every socket holds the activities `want` (team, seq) or `timeout` passes.
pub(crate) async fn wait_all(
    socks: &mut [WsClient],
    want: &[BTreeSet<(Uuid, i64)>],
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let mut complete = true;
        for (i, ws) in socks.iter_mut().enumerate() {
            ws.pump().await;
            let have: HashSet<(Uuid, i64)> = logged_activities(&ws.frames)
                .iter()
                .map(|a| (uuid_at(&a["teamId"]).unwrap(), a["seq"].as_i64().unwrap()))
                .collect();
            complete &= want[i].iter().all(|k| have.contains(k));
        }
        if complete || Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const USERS: usize = 8;
const TEAMS: usize = 3;
const ACTIONS: usize = 300;
/// Sockets per user, on consecutive instances (two sockets of one user on one instance).
const SOCKS_PER_USER: usize = 2;

/// A room of the routing model: the contract's three rooms, and a user's own deliveries.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub(crate) enum Room {
    Team(Uuid),
    Board(Uuid),
    Task(Uuid),
    User(Uuid),
}

fn room_of(s: Scope) -> Room {
    match s {
        Scope::Team(id) => Room::Team(id),
        Scope::Board(id) => Room::Board(id),
        Scope::Task(id) => Room::Task(id),
    }
}

/// One subscription of a socket: activities of `team` with `from < seq` (up to the revoking
/// `member.removed` when there is one).
#[derive(Debug, Clone)]
struct Sub {
    sock: usize,
    team: usize,
    room: Room,
    from: i64,
    /// Set when the user is removed from the team: the index of that removal among the user's
    /// removals from that team (resolved to the `member.removed` seq afterwards).
    revoked_by: Option<usize>,
}

#[derive(Debug, Clone)]
struct TaskState {
    team: usize,
    board: Uuid,
    assignee: Option<Uuid>,
    comments: Vec<CommentState>,
    status: &'static str,
    /// The users the description mentions.
    mentions: Vec<usize>,
    /// user -> following (false: an explicit unfollow, kept against being involved).
    followers: BTreeMap<usize, bool>,
}

#[derive(Debug, Clone)]
struct CommentState {
    id: Uuid,
    author: usize,
    /// The users its body mentions.
    mentions: Vec<usize>,
}

/// One notification the model says a user is owed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Owed {
    team: usize,
    task: Uuid,
    kind: String,
    /// Sorted.
    reasons: Vec<String>,
    actor: usize,
    comment: Option<Uuid>,
}

impl std::fmt::Display for Owed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The end of a UUIDv7 (its start is the time, alike in one run).
        let task = self.task.to_string();
        write!(
            f,
            "team{} task …{} {} {:?} by user{}",
            self.team,
            &task[28..],
            self.kind,
            self.reasons,
            self.actor
        )?;
        if let Some(c) = self.comment {
            write!(f, " comment …{}", &c.to_string()[28..])?;
        }
        Ok(())
    }
}

/// A change as the notification rules see it (what the service hands to `notify`).
struct Change {
    team: usize,
    task: Uuid,
    actor: usize,
    kind: &'static str,
    assigned: Option<usize>,
    /// Users the change newly mentions (any user: the rules keep the members).
    mentioned: Vec<usize>,
    /// The reason every follower is given, if any.
    to_followers: Option<&'static str>,
    /// Whether the actor did something that makes them follow (created, commented).
    acted: bool,
    comment: Option<Uuid>,
}

/// A mark-read as sent: what it may cover, and the teams its user was in then.
struct MarkSent {
    teams: BTreeSet<usize>,
    ids: HashSet<String>,
    upto: Option<i64>,
}

/// A mark-read that changed something: the `notification.read` every inbox socket of its user
/// is owed.
#[derive(Debug)]
struct ReadOwed {
    seq: i64,
    ids: Option<BTreeSet<String>>,
    upto: Option<i64>,
    unread: i64,
}

/// The inbox side of the model, per user.
struct Inboxes {
    owed: Vec<Vec<Owed>>,
    marks: Vec<Vec<MarkSent>>,
    reads: Vec<Vec<ReadOwed>>,
    /// (user, team) -> the user's inbox seq at each removal from the team.
    left_at: HashMap<(usize, usize), Vec<i64>>,
    /// Teams each user was ever a member of.
    ever: Vec<BTreeSet<usize>>,
    /// Notification ids seen, with their user: marking another user's must change nothing.
    seen_ids: Vec<(usize, String)>,
    /// What the server answered against the model during the actions.
    problems: Vec<String>,
}

struct TeamState {
    id: Uuid,
    owner: usize,
    default_board: Uuid,
    boards: Vec<Uuid>,
    /// The team's labels (tasks' label sets are the server's business: deletes untag them).
    labels: Vec<Uuid>,
    members: BTreeMap<usize, String>, // user -> role
}

struct World {
    /// One HTTP client per instance.
    apis: Vec<Api>,
    users: Vec<AuthResponse>,
    teams: Vec<TeamState>,
    tasks: BTreeMap<Uuid, TaskState>,
    socks: Vec<WsClient>,
    /// Per socket: its user and its instance.
    sock_user: Vec<usize>,
    sock_node: Vec<usize>,
    subs: Vec<Sub>,
    removals: HashMap<(usize, usize), usize>, // (user, team) -> removals so far
    /// Patches that moved a task: (task, resulting version) -> old board.
    moves: HashMap<(Uuid, i64), Uuid>,
    task_rooms: Vec<HashSet<Uuid>>, // per socket: task rooms ever joined
    rng: Rng,
    counts: BTreeMap<&'static str, usize>,
    writes_per_node: Vec<usize>,
    user_ix: HashMap<Uuid, usize>,
    /// Tasks touched lately, oldest first.
    recent: Vec<Uuid>,
    inbox: Inboxes,
}

impl World {
    fn tok(&self, u: usize) -> String {
        self.users[u].access_token.clone()
    }

    /// The HTTP client of a random instance.
    fn api(&mut self) -> Api {
        let n = self.rng.below(self.apis.len());
        self.writes_per_node[n] += 1;
        self.apis[n].clone()
    }

    fn writers(&self, t: usize) -> Vec<usize> {
        self.teams[t]
            .members
            .iter()
            .filter(|(_, r)| r.as_str() != "viewer")
            .map(|(u, _)| *u)
            .collect()
    }

    fn socks_of(&self, u: usize) -> Vec<usize> {
        (0..self.socks.len())
            .filter(|i| self.sock_user[*i] == u)
            .collect()
    }

    async fn subscribe_sock(&mut self, s: usize, t: usize, scope: Scope) {
        let sub = self.socks[s].subscribe(scope, None).await;
        if let Scope::Task(id) = scope {
            self.task_rooms[s].insert(id);
        }
        self.subs.push(Sub {
            sock: s,
            team: t,
            room: room_of(scope),
            from: sub.seq,
            revoked_by: None,
        });
    }

    /// Some of the user's sockets (on different instances) join the room.
    async fn subscribe(&mut self, u: usize, t: usize, scope: Scope, percent: u64) {
        for s in self.socks_of(u) {
            if self.rng.chance(percent) {
                self.subscribe_sock(s, t, scope).await;
            }
        }
    }

    /// Subscribes a (new) member's sockets to the team, its boards, and some of its tasks.
    async fn join_everything(&mut self, u: usize, t: usize) {
        self.subscribe(u, t, Scope::Team(self.teams[t].id), 70)
            .await;
        for b in self.teams[t].boards.clone() {
            self.subscribe(u, t, Scope::Board(b), 70).await;
        }
        for id in self.team_tasks(t) {
            self.subscribe(u, t, Scope::Task(id), 30).await;
        }
    }

    fn bump(&mut self, what: &'static str) {
        *self.counts.entry(what).or_default() += 1;
    }

    fn team_tasks(&self, t: usize) -> Vec<Uuid> {
        self.tasks
            .iter()
            .filter(|(_, s)| s.team == t)
            .map(|(id, _)| *id)
            .collect()
    }

    /// A member or nobody; for a task, often someone who unfollowed it.
    fn random_assignee(&mut self, t: usize, task: Option<Uuid>) -> Option<Uuid> {
        let members: Vec<usize> = self.teams[t].members.keys().copied().collect();
        let unfollowed: Vec<usize> = self
            .unfollowed(task)
            .into_iter()
            .filter(|u| members.contains(u))
            .collect();
        if self.rng.chance(30) {
            None
        } else if !unfollowed.is_empty() && self.rng.chance(40) {
            Some(self.users[*self.rng.pick(&unfollowed)].id())
        } else {
            Some(self.users[*self.rng.pick(&members)].id())
        }
    }

    /// The users who unfollowed `task` explicitly: being assigned or mentioned must notify them
    /// without making them follow again.
    fn unfollowed(&self, task: Option<Uuid>) -> Vec<usize> {
        task.and_then(|id| self.tasks.get(&id))
            .map(|st| {
                st.followers
                    .iter()
                    .filter(|(_, f)| !**f)
                    .map(|(u, _)| *u)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A patch that changed the assignee (`assigned`: to whom, `None` when unassigned or
    /// unchanged) and not the status: `task.assigned` when it assigned someone.
    fn notify_assigned(&mut self, t: usize, id: Uuid, actor: usize, assigned: Option<Uuid>) {
        let assigned = assigned.map(|a| self.user_ix[&a]);
        self.notify(Change {
            team: t,
            task: id,
            actor,
            kind: if assigned.is_some() {
                "task.assigned"
            } else {
                "task.updated"
            },
            assigned,
            mentioned: Vec::new(),
            to_followers: None,
            acted: false,
            comment: None,
        });
    }

    /// A task of `tasks`, often one touched lately: follows, unfollows, mentions, assignments
    /// and comments then meet on the same tasks.
    fn pick_task(&mut self, tasks: &[Uuid]) -> Uuid {
        let recent: Vec<Uuid> = self
            .recent
            .iter()
            .copied()
            .filter(|id| tasks.contains(id))
            .collect();
        let id = if !recent.is_empty() && self.rng.chance(50) {
            *self.rng.pick(&recent)
        } else {
            *self.rng.pick(tasks)
        };
        self.touch(id);
        id
    }

    fn touch(&mut self, id: Uuid) {
        self.recent.retain(|r| *r != id);
        self.recent.push(id);
        if self.recent.len() > 6 {
            self.recent.remove(0);
        }
    }

    fn member_teams(&self, u: usize) -> BTreeSet<usize> {
        (0..self.teams.len())
            .filter(|t| self.teams[*t].members.contains_key(&u))
            .collect()
    }

    /// A text that mentions a few random users, members or not (some twice, some under another
    /// name; for a task, often one who unfollowed it), sometimes someone who is no user,
    /// sometimes a look-alike that is not a mention; and the users it mentions.
    fn mention_text(&mut self, prefix: &str, task: Option<Uuid>) -> (String, Vec<usize>) {
        let mut text = prefix.to_owned();
        let mut mentioned = Vec::new();
        let unfollowed = self.unfollowed(task);
        for _ in 0..self.rng.below(4) {
            let u = if !unfollowed.is_empty() && self.rng.chance(40) {
                *self.rng.pick(&unfollowed)
            } else {
                self.rng.below(USERS)
            };
            let name = if self.rng.chance(20) {
                "Old name".to_owned()
            } else {
                self.users[u].user.display_name.clone()
            };
            text.push_str(&format!(" @[{name}](user:{})", self.users[u].id()));
            if !mentioned.contains(&u) {
                mentioned.push(u);
            }
        }
        if self.rng.chance(20) {
            let nobody = Uuid::from_u128(
                (u128::from(self.rng.next_u64()) << 64) | u128::from(self.rng.next_u64()),
            );
            text.push_str(&format!(" @[Nobody](user:{nobody})"));
        }
        if self.rng.chance(15) {
            // No `@`: text, not a mention.
            let u = self.rng.below(USERS);
            text.push_str(&format!(" [User{u}](user:{})", self.users[u].id()));
        }
        (text, mentioned)
    }

    /// The notification rules (the contract's section on inboxes, and `notify` of the service):
    /// records what `c` owes whom, and the follows it makes. Call it after the change succeeded
    /// and before the model forgets a deleted task.
    fn notify(&mut self, c: Change) {
        let members = &self.teams[c.team].members;
        let is_member = |u: &usize| *u == c.actor || members.contains_key(u);
        let Some(st) = self.tasks.get_mut(&c.task) else {
            panic!("notify: task {} is not in the model", c.task);
        };
        // The followers as they were before the change, and only members.
        let followers: Vec<usize> = match c.to_followers {
            Some(_) => st
                .followers
                .iter()
                .filter(|(u, f)| **f && is_member(u))
                .map(|(u, _)| *u)
                .collect(),
            None => Vec::new(),
        };
        let assigned = c.assigned.filter(is_member);
        let mentioned: Vec<usize> = c.mentioned.into_iter().filter(is_member).collect();
        if c.kind != "task.deleted" {
            // Being involved follows unless the user decided otherwise; acting always follows.
            for u in assigned.iter().chain(&mentioned) {
                st.followers.entry(*u).or_insert(true);
            }
            if c.acted {
                st.followers.insert(c.actor, true);
            }
        }
        let mut owed: BTreeMap<usize, BTreeSet<&str>> = BTreeMap::new();
        if let Some(u) = assigned {
            owed.entry(u).or_default().insert("assigned");
        }
        for u in &mentioned {
            owed.entry(*u).or_default().insert("mentioned");
        }
        if let Some(reason) = c.to_followers {
            for u in &followers {
                owed.entry(*u).or_default().insert(reason);
            }
        }
        owed.remove(&c.actor);
        for (u, reasons) in owed {
            self.inbox.owed[u].push(Owed {
                team: c.team,
                task: c.task,
                kind: c.kind.to_owned(),
                reasons: reasons.into_iter().map(str::to_owned).collect(),
                actor: c.actor,
                comment: c.comment,
            });
        }
    }

    /// Marks some of a random user's notifications read (by ids, some unknown or another
    /// user's, or up to a seq) and checks the answer against the inbox read just before.
    async fn mark_read(&mut self, i: usize) {
        let u = self.rng.below(USERS);
        let tok = self.tok(u);
        let api = self.api();
        let limit = *self.rng.pick(&[5, 50, 200]);
        let (items, seq, unread) = inbox_now(&api, &tok, limit).await;
        let unread_items: HashMap<String, i64> = items
            .iter()
            .filter(|n| n["readAt"].is_null())
            .map(|n| (id_of(n), n["seq"].as_i64().unwrap_or(-1)))
            .collect();
        if unread_items.len() as i64 != unread {
            self.inbox.problems.push(format!(
                "action {i}: user{u}'s inbox says unreadCount {unread} but serves {} unread",
                unread_items.len()
            ));
        }
        let mut ids: HashSet<String> = HashSet::new();
        let mut upto = None;
        if self.rng.chance(50) {
            for _ in 0..self.rng.below(4) {
                if !items.is_empty() {
                    ids.insert(id_of(self.rng.pick(&items)));
                }
            }
            if ids.is_empty() || self.rng.chance(20) {
                let unknown = Uuid::from_u128(
                    (u128::from(self.rng.next_u64()) << 64) | u128::from(self.rng.next_u64()),
                );
                ids.insert(unknown.to_string());
            }
            let others: Vec<String> = self
                .inbox
                .seen_ids
                .iter()
                .filter(|(owner, _)| *owner != u)
                .map(|(_, id)| id.clone())
                .collect();
            if !others.is_empty() && self.rng.chance(30) {
                ids.insert(self.rng.pick(&others).clone());
            }
        } else {
            upto = Some(if !items.is_empty() && self.rng.chance(70) {
                self.rng.pick(&items)["seq"].as_i64().unwrap_or(0)
            } else {
                seq
            });
        }
        let body = match upto {
            Some(n) => json!({"upto": n}),
            None => json!({"ids": ids.iter().collect::<Vec<_>>()}),
        };
        let got = api.mark_read(&tok, body.clone()).await;
        let covered: BTreeSet<String> = unread_items
            .iter()
            .filter(|(id, s)| ids.contains(*id) || upto.is_some_and(|n| **s <= n))
            .map(|(id, _)| id.clone())
            .collect();
        let want = if covered.is_empty() {
            json!({"seq": seq, "unreadCount": unread})
        } else {
            json!({"seq": seq + 1, "unreadCount": unread - covered.len() as i64})
        };
        if got != want {
            self.inbox.problems.push(format!(
                "action {i}: user{u} marked {body} read over an inbox at seq {seq} with {unread} \
                 unread ({} covered): got {got}, expected {want}",
                covered.len()
            ));
        }
        if !covered.is_empty() {
            self.inbox.reads[u].push(ReadOwed {
                seq: got["seq"].as_i64().unwrap_or(-1),
                ids: upto.is_none().then(|| covered.clone()),
                upto,
                unread: got["unreadCount"].as_i64().unwrap_or(-1),
            });
        }
        let teams = self.member_teams(u);
        self.inbox.marks[u].push(MarkSent { teams, ids, upto });
        for _ in 0..2 {
            if !items.is_empty() {
                let id = id_of(self.rng.pick(&items));
                self.inbox.seen_ids.push((u, id));
            }
        }
        self.bump(if upto.is_some() {
            "mark read upto"
        } else {
            "mark read ids"
        });
    }

    /// A new socket of a random user resumes the inbox from some seq: what it replays before
    /// `subscribed` must be what the inbox serves after that seq (as it stands now: read or
    /// not), with the user's mark-reads after it, in seq order; `subscribed` at the stream's seq.
    async fn resume(&mut self, d: &Deployment, i: usize) {
        // Often a user with notifications of a team they left: the replay must leave them out.
        let hiding: Vec<usize> = (0..USERS)
            .filter(|u| {
                let now = self.member_teams(*u);
                self.inbox.owed[*u].iter().any(|o| !now.contains(&o.team))
            })
            .collect();
        let u = if !hiding.is_empty() && self.rng.chance(60) {
            *self.rng.pick(&hiding)
        } else {
            self.rng.below(USERS)
        };
        let node = self.rng.below(self.apis.len());
        let tok = self.tok(u);
        let limit = *self.rng.pick(&[5, 50, 200]);
        let (items, seq, unread) = inbox_now(&self.apis[node], &tok, limit).await;
        let since = match self.rng.below(4) {
            0 | 1 => 0,
            2 if !items.is_empty() => self.rng.pick(&items)["seq"].as_i64().unwrap_or(0),
            _ => seq,
        };
        let mut ws = d.ws_labeled(node, &tok, &format!("user{u}-resume")).await;
        let (sub, replayed) = ws.subscribe_inbox(Some(since)).await;
        ws.close().await;
        let mut want: Vec<Value> = items
            .iter()
            .rev()
            .filter(|n| n["seq"].as_i64().is_some_and(|s| s > since))
            .map(|n| json!({"type": "notification.created", "seq": n["seq"], "notification": n}))
            .collect();
        for r in self.inbox.reads[u].iter().filter(|r| r.seq > since) {
            want.push(json!({
                "type": "notification.read",
                "seq": r.seq,
                "ids": r.ids,
                "upto": r.upto,
                "unreadCount": r.unread,
            }));
        }
        want.sort_by_key(|f| f["seq"].as_i64());
        // The ids of a mark are a set: compare them sorted.
        let sorted_ids = |f: &Value| {
            let mut f = f.clone();
            if let Some(ids) = f["ids"].as_array_mut() {
                ids.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
            f
        };
        let got: Vec<Value> = replayed.iter().map(sorted_ids).collect();
        let want: Vec<Value> = want.iter().map(sorted_ids).collect();
        let state = (sub["seq"].as_i64(), sub["unreadCount"].as_i64());
        if got != want || state != (Some(seq), Some(unread)) {
            let brief = |fs: &[Value]| -> Vec<String> {
                fs.iter()
                    .map(|f| format!("#{} {}", f["seq"], f["type"]))
                    .collect()
            };
            self.inbox.problems.push(format!(
                "after action {i}: user{u} resumed the inbox from {since} at instance {node}: \
                 replayed {:?}, expected {:?}; subscribed at {state:?}, expected seq {seq} \
                 unread {unread}{}",
                brief(&got),
                brief(&want),
                got.iter()
                    .zip(&want)
                    .find(|(g, w)| g != w)
                    .map(|(g, w)| format!("; first difference: {g} vs {w}"))
                    .unwrap_or_default()
            ));
        }
        self.bump("inbox resume");
    }

    /// A member follows or unfollows a task explicitly (a non-member is refused); then the
    /// server's `following` of a random member must agree with the model.
    async fn follow(&mut self, i: usize, t: usize, tasks: &[Uuid]) {
        let id = self.pick_task(tasks);
        let api = self.api();
        let outside: Vec<usize> = (0..USERS)
            .filter(|u| !self.teams[t].members.contains_key(u))
            .collect();
        if !outside.is_empty() && self.rng.chance(15) {
            let u = *self.rng.pick(&outside);
            let path = format!("/api/v1/tasks/{id}/follow");
            let r = if self.rng.chance(50) {
                api.put(&path, &self.tok(u)).await
            } else {
                api.delete(&path, &self.tok(u)).await
            };
            r.problem(404, "not_found");
            self.bump("follow refused");
            return;
        }
        let members: Vec<usize> = self.teams[t].members.keys().copied().collect();
        let u = *self.rng.pick(&members);
        let on = self.rng.chance(50);
        api.follow(&self.tok(u), id, on).await;
        if let Some(st) = self.tasks.get_mut(&id) {
            st.followers.insert(u, on);
        }
        let m = *self.rng.pick(&members);
        let model = self.tasks[&id].followers.get(&m) == Some(&true);
        let server = api.get_task(&self.tok(m), id).await.ok(200)["following"].clone();
        if server != json!(model) {
            self.inbox.problems.push(format!(
                "action {i}: user{m} following task {id}: server says {server}, the model {model}"
            ));
        }
        self.bump(if on { "follow" } else { "unfollow" });
    }

    /// Creates, renames or deletes a label of team `t`, or gives a task a new set of them.
    async fn label_action(&mut self, i: usize, t: usize, tok: &str, tasks: &[Uuid]) {
        let api = self.api();
        let team_id = self.teams[t].id;
        let labels = self.teams[t].labels.clone();
        match self.rng.below(4) {
            r if r == 0 || labels.is_empty() => {
                let l: Value = api
                    .post(
                        &format!("/api/v1/teams/{team_id}/labels"),
                        tok,
                        json!({"name": format!("label {i}"), "color": "#A0B0C0"}),
                    )
                    .await
                    .ok(201)
                    .clone();
                self.teams[t].labels.push(uuid_at(&l["id"]).unwrap());
                self.bump("label create");
            }
            1 => {
                let l = *self.rng.pick(&labels);
                api.patch(
                    &format!("/api/v1/labels/{l}"),
                    tok,
                    json!({"name": format!("relabeled {i}")}),
                )
                .await
                .ok(200);
                self.bump("label rename");
            }
            2 => {
                let l = *self.rng.pick(&labels);
                api.delete(&format!("/api/v1/labels/{l}"), tok)
                    .await
                    .ok(204);
                self.teams[t].labels.retain(|x| *x != l);
                self.bump("label delete");
            }
            _ if !tasks.is_empty() => {
                let id = self.pick_task(tasks);
                let set: Vec<Uuid> = labels
                    .iter()
                    .copied()
                    .filter(|_| self.rng.chance(40))
                    .collect();
                api.patch_task(tok, id, json!({"labelIds": set}))
                    .await
                    .ok(200);
                self.bump("task labels");
            }
            _ => {}
        }
    }

    async fn act(&mut self, i: usize) {
        // Often the team of a task touched lately, so that actions meet on the same tasks.
        let latest = self.recent.iter().rev().find_map(|id| self.tasks.get(id));
        let t = match latest {
            Some(st) if self.rng.chance(40) => st.team,
            _ => self.rng.below(TEAMS),
        };
        let team_id = self.teams[t].id;
        let owner = self.teams[t].owner;
        let writers = self.writers(t);
        let actor = *self.rng.pick(&writers);
        let tok = self.tok(actor);
        let tasks = self.team_tasks(t);
        let api = self.api();
        let roll = self.rng.below(132);
        match roll {
            // create a task (maybe assigned, maybe mentioning); some members' sockets join its room
            0..=19 => {
                let board = *self.rng.pick(&self.teams[t].boards.clone());
                let assignee = self.random_assignee(t, None);
                let mut body = json!({"title": format!("task {i}"), "boardId": board, "assigneeUserId": assignee});
                let mut mentioned = Vec::new();
                if self.rng.chance(50) {
                    let (text, m) = self.mention_text(&format!("description {i}"), None);
                    body["description"] = json!(text);
                    mentioned = m;
                }
                let task = api.create_task(&tok, team_id, body).await;
                self.touch(task.id);
                self.tasks.insert(
                    task.id,
                    TaskState {
                        team: t,
                        board,
                        assignee,
                        comments: Vec::new(),
                        status: "todo",
                        mentions: mentioned.clone(),
                        followers: BTreeMap::new(),
                    },
                );
                self.notify(Change {
                    team: t,
                    task: task.id,
                    actor,
                    kind: "task.created",
                    assigned: assignee.map(|a| self.user_ix[&a]),
                    mentioned,
                    to_followers: None,
                    acted: true,
                    comment: None,
                });
                let members: Vec<usize> = self.teams[t].members.keys().copied().collect();
                for m in members {
                    self.subscribe(m, t, Scope::Task(task.id), 30).await;
                }
                self.bump("task create");
            }
            // update fields (the status maybe, the description sometimes)
            20..=31 if !tasks.is_empty() => {
                let id = self.pick_task(&tasks);
                let status = *self.rng.pick(&["todo", "in_progress", "done", "canceled"]);
                let mut body = json!({"title": format!("upd {i}"), "status": status});
                let mut described = None;
                if self.rng.chance(30) {
                    let (mut text, mut m) = self.mention_text(&format!("described {i}"), Some(id));
                    if self.rng.chance(50) {
                        // Keeping earlier mentions: only the new ones notify.
                        for u in self.tasks[&id].mentions.clone() {
                            text.push_str(&format!(" @[User{u}](user:{})", self.users[u].id()));
                            if !m.contains(&u) {
                                m.push(u);
                            }
                        }
                    }
                    body["description"] = json!(text);
                    described = Some(m);
                }
                // Sometimes a reassignment too: one notification with every reason.
                let mut assignee = self.tasks[&id].assignee;
                if self.rng.chance(25) {
                    assignee = self.random_assignee(t, Some(id));
                    body["assigneeUserId"] = json!(assignee);
                }
                api.patch_task(&tok, id, body).await.ok(200);
                let st = self.tasks.get_mut(&id).unwrap();
                let status_changed = st.status != status;
                st.status = status;
                let assigned = assignee.filter(|_| assignee != st.assignee);
                st.assignee = assignee;
                // Only users the description did not mention before.
                let mentioned = match described {
                    Some(m) => {
                        let new = m
                            .iter()
                            .filter(|u| !st.mentions.contains(u))
                            .copied()
                            .collect();
                        st.mentions = m;
                        new
                    }
                    None => Vec::new(),
                };
                let assigned = assigned.map(|a| self.user_ix[&a]);
                self.notify(Change {
                    team: t,
                    task: id,
                    actor,
                    // `task.assigned` only for a change that assigned someone and left the status.
                    kind: if assigned.is_some() && !status_changed {
                        "task.assigned"
                    } else {
                        "task.updated"
                    },
                    assigned,
                    mentioned,
                    to_followers: status_changed.then_some("status_changed"),
                    acted: false,
                    comment: None,
                });
                self.bump("task update");
            }
            // move (sometimes with an assignment change)
            32..=41 if !tasks.is_empty() => {
                let id = self.pick_task(&tasks);
                let old = self.tasks[&id].board;
                let others: Vec<Uuid> = self.teams[t]
                    .boards
                    .iter()
                    .copied()
                    .filter(|b| *b != old)
                    .collect();
                if others.is_empty() {
                    return;
                }
                let new = *self.rng.pick(&others);
                let mut body = json!({"boardId": new});
                let mut assignee = self.tasks[&id].assignee;
                if self.rng.chance(40) {
                    assignee = self.random_assignee(t, Some(id));
                    body["assigneeUserId"] = json!(assignee);
                }
                let task: Task = api.patch_task(&tok, id, body).await.parse(200);
                self.moves.insert((id, task.version), old);
                let st = self.tasks.get_mut(&id).unwrap();
                st.board = new;
                let assigned = assignee.filter(|_| assignee != st.assignee);
                st.assignee = assignee;
                self.notify_assigned(t, id, actor, assigned);
                self.bump("task move");
            }
            // assign / unassign
            42..=51 if !tasks.is_empty() => {
                let id = self.pick_task(&tasks);
                let assignee = self.random_assignee(t, Some(id));
                api.patch_task(&tok, id, json!({"assigneeUserId": assignee}))
                    .await
                    .ok(200);
                let st = self.tasks.get_mut(&id).unwrap();
                let assigned = assignee.filter(|_| assignee != st.assignee);
                st.assignee = assignee;
                self.notify_assigned(t, id, actor, assigned);
                self.bump("task assign");
            }
            // delete a task
            52..=56 if !tasks.is_empty() => {
                let id = self.pick_task(&tasks);
                api.delete(&format!("/api/v1/tasks/{id}"), &tok)
                    .await
                    .ok(204);
                self.notify(Change {
                    team: t,
                    task: id,
                    actor,
                    kind: "task.deleted",
                    assigned: None,
                    mentioned: Vec::new(),
                    to_followers: Some("task_deleted"),
                    acted: false,
                    comment: None,
                });
                self.tasks.remove(&id);
                self.bump("task delete");
            }
            // comments (some mentioning)
            57..=69 if !tasks.is_empty() => {
                let id = self.pick_task(&tasks);
                let editable: Vec<CommentState> = self.tasks[&id]
                    .comments
                    .iter()
                    .filter(|c| writers.contains(&c.author))
                    .cloned()
                    .collect();
                let roll = self.rng.below(100);
                if editable.is_empty() || roll < 40 {
                    let (body, mentioned) = if self.rng.chance(50) {
                        self.mention_text(&format!("comment {i}"), Some(id))
                    } else {
                        (format!("comment {i}"), Vec::new())
                    };
                    let c = api.comment(&tok, id, &body).await;
                    self.tasks
                        .get_mut(&id)
                        .unwrap()
                        .comments
                        .push(CommentState {
                            id: c.id,
                            author: actor,
                            mentions: mentioned.clone(),
                        });
                    self.notify(Change {
                        team: t,
                        task: id,
                        actor,
                        kind: "comment.created",
                        assigned: None,
                        mentioned,
                        to_followers: Some("commented"),
                        acted: true,
                        comment: Some(c.id),
                    });
                    self.bump("comment create");
                } else if roll < 80 {
                    let c = self.rng.pick(&editable).clone();
                    let (mut body, mut mentions) =
                        self.mention_text(&format!("edit {i}"), Some(id));
                    if self.rng.chance(50) {
                        // Keeping earlier mentions: only the new ones notify.
                        for u in &c.mentions {
                            body.push_str(&format!(" @[User{u}](user:{})", self.users[*u].id()));
                            if !mentions.contains(u) {
                                mentions.push(*u);
                            }
                        }
                    }
                    api.patch(
                        &format!("/api/v1/comments/{}", c.id),
                        &self.tok(c.author),
                        json!({"body": body}),
                    )
                    .await
                    .ok(200);
                    let new: Vec<usize> = mentions
                        .iter()
                        .filter(|u| !c.mentions.contains(u))
                        .copied()
                        .collect();
                    if let Some(kept) = self
                        .tasks
                        .get_mut(&id)
                        .unwrap()
                        .comments
                        .iter_mut()
                        .find(|k| k.id == c.id)
                    {
                        kept.mentions = mentions;
                    }
                    self.notify(Change {
                        team: t,
                        task: id,
                        actor: c.author,
                        kind: "comment.updated",
                        assigned: None,
                        mentioned: new,
                        to_followers: None,
                        acted: false,
                        comment: Some(c.id),
                    });
                    self.bump("comment update");
                } else {
                    let cid = self.rng.pick(&editable).id;
                    api.delete(&format!("/api/v1/comments/{cid}"), &self.tok(owner))
                        .await
                        .ok(204);
                    self.tasks
                        .get_mut(&id)
                        .unwrap()
                        .comments
                        .retain(|c| c.id != cid);
                    self.bump("comment delete");
                }
            }
            // boards
            70..=77 => {
                let r = self.rng.below(3);
                if r == 0 || self.teams[t].boards.len() < 2 {
                    let b = api.create_board(&tok, team_id, &format!("board {i}")).await;
                    self.teams[t].boards.push(b.id);
                    let members: Vec<usize> = self.teams[t].members.keys().copied().collect();
                    for m in members {
                        self.subscribe(m, t, Scope::Board(b.id), 70).await;
                    }
                    self.bump("board create");
                } else if r == 1 {
                    let b = *self.rng.pick(&self.teams[t].boards.clone());
                    api.patch(
                        &format!("/api/v1/boards/{b}"),
                        &tok,
                        json!({"name": format!("renamed {i}")}),
                    )
                    .await
                    .ok(200);
                    self.bump("board rename");
                } else {
                    let empty: Vec<Uuid> = self.teams[t]
                        .boards
                        .iter()
                        .copied()
                        .filter(|b| {
                            *b != self.teams[t].default_board
                                && !self.tasks.values().any(|s| s.board == *b)
                        })
                        .collect();
                    if let Some(b) = empty.first() {
                        api.delete(&format!("/api/v1/boards/{b}"), &self.tok(owner))
                            .await
                            .ok(204);
                        self.teams[t].boards.retain(|x| x != b);
                        self.bump("board delete");
                    }
                }
            }
            // add a member (whose sockets join rooms)
            78..=85 => {
                let outside: Vec<usize> = (0..USERS)
                    .filter(|u| !self.teams[t].members.contains_key(u))
                    .collect();
                if outside.is_empty() {
                    return;
                }
                let u = *self.rng.pick(&outside);
                let role = *self.rng.pick(&["admin", "member", "viewer"]);
                api.add_member(&self.tok(owner), team_id, &self.users[u].user.email, role)
                    .await;
                self.teams[t].members.insert(u, role.to_string());
                self.inbox.ever[u].insert(t);
                self.join_everything(u, t).await;
                self.bump("member add");
            }
            // remove a member
            86..=92 => {
                let removable: Vec<usize> = self.teams[t]
                    .members
                    .keys()
                    .copied()
                    .filter(|u| *u != owner)
                    .collect();
                if removable.is_empty() {
                    return;
                }
                let u = *self.rng.pick(&removable);
                let uid = self.users[u].id();
                api.delete(
                    &format!("/api/v1/teams/{team_id}/members/{uid}"),
                    &self.tok(owner),
                )
                .await
                .ok(204);
                self.teams[t].members.remove(&u);
                // Where the user's inbox stood: what came before may be left out of a delivery.
                let me = api.get("/api/v1/me", &self.tok(u)).await.ok(200)["inboxSeq"].clone();
                let at = me
                    .as_i64()
                    .unwrap_or_else(|| panic!("GET /me without inboxSeq: {me}"));
                self.inbox.left_at.entry((u, t)).or_default().push(at);
                let k = self.removals.entry((u, t)).or_default();
                let idx = *k;
                *k += 1;
                let mine = self.socks_of(u);
                for s in self.subs.iter_mut() {
                    if mine.contains(&s.sock) && s.team == t && s.revoked_by.is_none() {
                        s.revoked_by = Some(idx);
                    }
                }
                self.bump("member remove");
            }
            // role change
            93..=96 => {
                let changeable: Vec<usize> = self.teams[t]
                    .members
                    .keys()
                    .copied()
                    .filter(|u| *u != owner)
                    .collect();
                if changeable.is_empty() {
                    return;
                }
                let u = *self.rng.pick(&changeable);
                let role = *self.rng.pick(&["admin", "member", "viewer"]);
                let uid = self.users[u].id();
                api.patch(
                    &format!("/api/v1/teams/{team_id}/members/{uid}"),
                    &self.tok(owner),
                    json!({"role": role}),
                )
                .await
                .ok(200);
                self.teams[t].members.insert(u, role.to_string());
                self.bump("member role");
            }
            // mark notifications read
            100..=107 => self.mark_read(i).await,
            // follow or unfollow a task
            108..=119 if !tasks.is_empty() => self.follow(i, t, &tasks).await,
            // labels: team-room activities, and task.updated for a task's new set
            120..=131 => self.label_action(i, t, &tok, &tasks).await,
            // rename the team
            _ => {
                api.patch(
                    &format!("/api/v1/teams/{team_id}"),
                    &self.tok(owner),
                    json!({"name": format!("team {i}")}),
                )
                .await
                .ok(200);
                self.bump("team rename");
            }
        }
    }
}

/// The rooms an activity is routed to, per the contract's table.
pub(crate) fn routes(a: &Value, moves: &HashMap<(Uuid, i64), Uuid>) -> BTreeSet<Room> {
    let mut r = BTreeSet::new();
    let team = uuid_at(&a["teamId"]).unwrap();
    let board = uuid_at(&a["boardId"]);
    let task = uuid_at(&a["taskId"]);
    let kind = a["type"].as_str().unwrap();
    let d = &a["data"];
    match kind {
        "task.created" => {
            r.insert(Room::Team(team));
            r.insert(Room::Board(board.unwrap()));
        }
        "task.updated" => {
            r.insert(Room::Board(board.unwrap()));
            r.insert(Room::Task(task.unwrap()));
            if let Some(from) = uuid_at(&d["changes"]["boardId"]["from"]) {
                r.insert(Room::Board(from));
            }
        }
        "task.deleted" => {
            r.insert(Room::Team(team));
            r.insert(Room::Board(uuid_at(&d["boardId"]).or(board).unwrap()));
            r.insert(Room::Task(task.unwrap()));
        }
        "task.assigned" => {
            r.insert(Room::Board(board.unwrap()));
            r.insert(Room::Task(task.unwrap()));
            let version = d["task"]["version"].as_i64().unwrap();
            if let Some(old) = moves.get(&(task.unwrap(), version)) {
                r.insert(Room::Board(*old));
            }
            if let Some(u) = uuid_at(&d["assigneeUserId"]) {
                r.insert(Room::User(u));
            }
        }
        "comment.created" | "comment.updated" | "comment.deleted" => {
            r.insert(Room::Task(task.or(uuid_at(&d["taskId"])).unwrap()));
        }
        "member.added" | "member.updated" => {
            r.insert(Room::Team(team));
            r.insert(Room::User(uuid_at(&d["member"]["user"]["id"]).unwrap()));
        }
        "member.removed" => {
            r.insert(Room::Team(team));
            r.insert(Room::User(uuid_at(&d["userId"]).unwrap()));
        }
        "team.updated" | "board.created" | "board.updated" | "board.deleted" | "label.created"
        | "label.updated" | "label.deleted" => {
            r.insert(Room::Team(team));
        }
        other => panic!("unknown activity type {other}: {a}"),
    }
    r
}

fn id_of(n: &Value) -> String {
    n["id"].as_str().unwrap_or_default().to_owned()
}

fn is_inbox_frame(f: &Value) -> bool {
    f["type"]
        .as_str()
        .is_some_and(|t| t.starts_with("notification."))
}

/// A user's whole inbox as served now (all pages of `limit`, newest first), its seq and unread
/// count.
async fn inbox_now(api: &Api, tok: &str, limit: usize) -> (Vec<Value>, i64, i64) {
    let first = api.inbox(tok, &format!("?limit={limit}")).await;
    let mut items: Vec<Value> = first["items"].as_array().cloned().unwrap_or_default();
    let mut next = first["nextCursor"].as_str().map(str::to_owned);
    for _ in 0..1000 {
        let Some(c) = next.take() else { break };
        let page = api
            .inbox(tok, &format!("?limit={limit}&cursor={}", urlencode(&c)))
            .await;
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
        next = page["nextCursor"].as_str().map(str::to_owned);
    }
    let seq = first["seq"].as_i64().unwrap_or(-1);
    let unread = first["unreadCount"].as_i64().unwrap_or(-1);
    (items, seq, unread)
}

/// A served notification as the model describes one; `None` when it names a team or an actor
/// the scenario does not know.
fn owed_of(n: &Value, teams: &HashMap<Uuid, usize>, users: &HashMap<Uuid, usize>) -> Option<Owed> {
    let mut reasons: Vec<String> = n["reasons"]
        .as_array()?
        .iter()
        .map(|r| r.as_str().map(str::to_owned))
        .collect::<Option<_>>()?;
    reasons.sort();
    Some(Owed {
        team: *teams.get(&uuid_at(&n["teamId"])?)?,
        task: uuid_at(&n["taskId"])?,
        kind: n["activityType"].as_str()?.to_owned(),
        reasons,
        actor: *users.get(&uuid_at(&n["actorUserId"])?)?,
        comment: uuid_at(&n["commentId"]),
    })
}

/// Takes one `o` out of the multiset `bag`; false when it holds none.
fn take(bag: &mut BTreeMap<Owed, usize>, o: &Owed) -> bool {
    match bag.get_mut(o) {
        Some(k) if *k > 0 => {
            *k -= 1;
            true
        }
        _ => false,
    }
}

/// The inbox check, once the scenario is over: what each user is served against the model, and
/// what each inbox socket received against what is served.
struct InboxCheck {
    /// Per user: every notification served (newest first) and the unread count.
    served: Vec<(Vec<Value>, i64)>,
    teams: HashMap<Uuid, usize>,
}

impl InboxCheck {
    async fn read(w: &World) -> InboxCheck {
        let mut served = Vec::new();
        for u in 0..USERS {
            let api = &w.apis[(u + 1) % w.apis.len()];
            // Small pages: the cursor walks past hidden teams' notifications too.
            let (items, _, unread) = inbox_now(api, &w.tok(u), 7).await;
            served.push((items, unread));
        }
        let teams = w.teams.iter().enumerate().map(|(t, s)| (s.id, t)).collect();
        InboxCheck { served, teams }
    }

    /// Whether a served notification of `u` may be missing from a socket: its user was removed
    /// from its team after it was written, and the feed may have read it only then.
    fn excused(&self, w: &World, u: usize, n: &Value) -> bool {
        let seq = n["seq"].as_i64().unwrap_or(i64::MAX);
        let team = uuid_at(&n["teamId"]).and_then(|t| self.teams.get(&t).copied());
        team.and_then(|t| w.inbox.left_at.get(&(u, t)))
            .is_some_and(|at| at.iter().any(|r| seq <= *r))
    }

    /// The inbox seqs each socket must hold: the served notifications (less the excused) and
    /// the user's mark-reads.
    fn owed_seqs(&self, w: &World) -> Vec<BTreeSet<i64>> {
        (0..w.socks.len())
            .map(|s| {
                let u = w.sock_user[s];
                let mut seqs: BTreeSet<i64> = self.served[u]
                    .0
                    .iter()
                    .filter(|n| !self.excused(w, u, n))
                    .filter_map(|n| n["seq"].as_i64())
                    .collect();
                seqs.extend(w.inbox.reads[u].iter().map(|r| r.seq));
                seqs
            })
            .collect()
    }

    /// Each user's served notifications against the model: the same multiset (for the teams
    /// the user is in at the end), newest first, read exactly when a mark of theirs covered
    /// them, and the unread count theirs.
    fn check_served(&self, w: &World, problems: &mut Vec<String>) -> usize {
        let mut total = 0;
        for u in 0..USERS {
            let (items, unread) = &self.served[u];
            total += items.len();
            let now = w.member_teams(u);
            let mut want: BTreeMap<Owed, usize> = BTreeMap::new();
            for o in w.inbox.owed[u].iter().filter(|o| now.contains(&o.team)) {
                *want.entry(o.clone()).or_default() += 1;
            }
            let mut unexpected = Vec::new();
            let mut wrong_read = Vec::new();
            for n in items {
                match owed_of(n, &self.teams, &w.user_ix) {
                    Some(o) if take(&mut want, &o) => {}
                    Some(o) => unexpected.push(o.to_string()),
                    None => unexpected.push(n.to_string()),
                }
                let id = id_of(n);
                let seq = n["seq"].as_i64().unwrap_or(-1);
                let team = uuid_at(&n["teamId"]).and_then(|t| self.teams.get(&t).copied());
                let read = w.inbox.marks[u].iter().any(|m| {
                    team.is_some_and(|t| m.teams.contains(&t))
                        && (m.ids.contains(&id) || m.upto.is_some_and(|x| seq <= x))
                });
                if read == n["readAt"].is_null() {
                    wrong_read.push(format!(
                        "#{seq} readAt {} (model: read {read})",
                        n["readAt"]
                    ));
                }
            }
            let missing: Vec<String> = want
                .iter()
                .filter(|(_, k)| **k > 0)
                .map(|(o, k)| format!("{o} x{k}"))
                .collect();
            let seqs: Vec<i64> = items.iter().filter_map(|n| n["seq"].as_i64()).collect();
            let newest_first = seqs.windows(2).all(|p| p[0] > p[1]);
            let unread_served = items.iter().filter(|n| n["readAt"].is_null()).count() as i64;
            if !(missing.is_empty()
                && unexpected.is_empty()
                && wrong_read.is_empty()
                && newest_first
                && unread_served == *unread)
            {
                problems.push(format!(
                    "user{u}'s inbox (teams {now:?}): serves {}; missing {} {:?}; unexpected {} \
                     {:?}; read state off {} {:?}; newest first: {newest_first}; unreadCount \
                     {unread} for {unread_served} unread served",
                    items.len(),
                    missing.len(),
                    &missing[..missing.len().min(8)],
                    unexpected.len(),
                    &unexpected[..unexpected.len().min(8)],
                    wrong_read.len(),
                    &wrong_read[..wrong_read.len().min(8)],
                ));
            }
        }
        total
    }

    /// One inbox socket: notifications once each, mark-reads once each, in strictly increasing
    /// seq; every served notification (less the excused) as served; anything else only one the
    /// model owed its user in a team the user has left, written before they left.
    /// Returns the notifications received, the excused ones missing, and those received that
    /// are no longer served.
    fn check_socket(
        &self,
        w: &World,
        s: usize,
        problems: &mut Vec<String>,
    ) -> (usize, usize, usize) {
        let u = w.sock_user[s];
        let label = &w.socks[s].label;
        let frames: Vec<&Value> = w.socks[s]
            .frames
            .iter()
            .filter(|f| is_inbox_frame(f))
            .collect();
        let mut out_of_order = Vec::new();
        let mut last = 0;
        let mut created: HashMap<String, &Value> = HashMap::new();
        let mut reads: BTreeMap<i64, &Value> = BTreeMap::new();
        let mut dup = Vec::new();
        for f in &frames {
            let seq = f["seq"].as_i64().unwrap_or(-1);
            if seq <= last {
                out_of_order.push(seq);
            }
            last = last.max(seq);
            if f["type"] == "notification.created" {
                let n = &f["notification"];
                if n["seq"] != f["seq"] || created.insert(id_of(n), n).is_some() {
                    dup.push(seq);
                }
            } else if reads.insert(seq, f).is_some() {
                dup.push(seq);
            }
        }
        let strip = |n: &Value| {
            let mut n = n.clone();
            if let Some(o) = n.as_object_mut() {
                o.remove("readAt");
            }
            n
        };
        // Every served notification, as served (but for readAt, which may change after).
        let (items, _) = &self.served[u];
        let served_ids: HashSet<String> = items.iter().map(id_of).collect();
        let (mut lost, mut differs, mut excused) = (Vec::new(), Vec::new(), 0);
        for n in items {
            match created.get(&id_of(n)) {
                Some(got) if strip(got) == strip(n) => {}
                Some(got) => differs.push(format!("{got} vs served {n}")),
                None if self.excused(w, u, n) => excused += 1,
                None => lost.push(
                    owed_of(n, &self.teams, &w.user_ix)
                        .map_or_else(|| n.to_string(), |o| format!("#{} {o}", n["seq"])),
                ),
            }
        }
        // Anything else: owed to this user by the model in a team they left, before they left.
        let now = w.member_teams(u);
        let mut left: BTreeMap<Owed, usize> = BTreeMap::new();
        for o in w.inbox.owed[u].iter().filter(|o| !now.contains(&o.team)) {
            *left.entry(o.clone()).or_default() += 1;
        }
        let mut foreign = Vec::new();
        let mut extras = 0;
        for (id, n) in created.iter().filter(|(id, _)| !served_ids.contains(*id)) {
            extras += 1;
            let seq = n["seq"].as_i64().unwrap_or(-1);
            let other = (0..USERS).find(|v| self.served[*v].0.iter().any(|m| id_of(m) == *id));
            let fits = owed_of(n, &self.teams, &w.user_ix).is_some_and(|o| {
                w.inbox.ever[u].contains(&o.team)
                    && w.inbox
                        .left_at
                        .get(&(u, o.team))
                        .is_some_and(|at| at.iter().any(|r| seq <= *r))
                    && take(&mut left, &o)
            });
            if other.is_some() || !fits {
                foreign.push(format!(
                    "#{seq} {}{}",
                    owed_of(n, &self.teams, &w.user_ix)
                        .map_or_else(|| n.to_string(), |o| o.to_string()),
                    other.map(|v| format!(" (user{v}'s)")).unwrap_or_default()
                ));
            }
        }
        // Every mark-read of the user, as it was answered, and no other.
        let mut bad_reads = Vec::new();
        for r in &w.inbox.reads[u] {
            let Some(f) = reads.remove(&r.seq) else {
                bad_reads.push(format!("missing #{} {r:?}", r.seq));
                continue;
            };
            let ids: Option<BTreeSet<String>> = f["ids"].as_array().map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            });
            if ids != r.ids || f["upto"].as_i64() != r.upto || f["unreadCount"] != json!(r.unread) {
                bad_reads.push(format!("{f} for {r:?}"));
            }
        }
        bad_reads.extend(reads.values().map(|f| format!("unexpected {f}")));
        if !(out_of_order.is_empty()
            && dup.is_empty()
            && lost.is_empty()
            && differs.is_empty()
            && foreign.is_empty()
            && bad_reads.is_empty())
        {
            problems.push(format!(
                "{label} inbox: received {} notifications ({} served to user{u}); lost {} {:?}; \
                 not as served {} {:?}; not this user's to see {} {:?}; duplicated {dup:?}; \
                 out of order {out_of_order:?}; mark-reads {:?}",
                created.len(),
                items.len(),
                lost.len(),
                &lost[..lost.len().min(8)],
                differs.len(),
                &differs[..differs.len().min(3)],
                foreign.len(),
                &foreign[..foreign.len().min(8)],
                &bad_reads[..bad_reads.len().min(8)],
            ));
        }
        (created.len(), excused, extras)
    }
}

/// Reads until every socket holds the inbox seqs `want` or `timeout` passes.
async fn wait_inboxes(socks: &mut [WsClient], want: &[BTreeSet<i64>], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let mut complete = true;
        for (i, ws) in socks.iter_mut().enumerate() {
            ws.pump().await;
            let have: HashSet<i64> = ws
                .frames
                .iter()
                .filter(|f| is_inbox_frame(f))
                .filter_map(|f| f["seq"].as_i64())
                .collect();
            complete &= want[i].iter().all(|k| have.contains(k));
        }
        if complete || Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn random_actions_no_leakage(d: Deployment) {
    let seed = Rng::seed_from_env();
    eprintln!(
        "random_actions_no_leakage ({d}) seed = {seed} (set TASKFORGE_TEST_SEED={seed} to replay)"
    );
    let n = d.len();
    let apis: Vec<Api> = (0..n).map(|i| d.client(i)).collect();
    let mut rng = Rng::new(seed);

    let mut users = Vec::new();
    for i in 0..USERS {
        users.push(apis[i % n].new_user(&format!("User{i}")).await);
    }
    // SOCKS_PER_USER sockets per user on consecutive instances, connected before any membership.
    let (mut socks, mut sock_user, mut sock_node) = (Vec::new(), Vec::new(), Vec::new());
    for (i, u) in users.iter().enumerate() {
        for k in 0..SOCKS_PER_USER {
            let node = (i + k) % 3;
            let mut ws = d.ws_labeled(node, u.token(), &format!("user{i}")).await;
            // The socket joins its user's room after the upgrade, and user rooms are live only:
            // the pong says it is in, before the first membership of the user is added.
            ws.expect_pong().await;
            // Every socket follows its user's inbox from the start (nothing to replay yet).
            let (sub, replayed) = ws.subscribe_inbox(None).await;
            assert_eq!(
                (sub["seq"].clone(), sub["unreadCount"].clone()),
                (json!(0), json!(0)),
                "user{i}: a new user's inbox: {sub}"
            );
            assert!(replayed.is_empty(), "user{i}: replayed {replayed:?}");
            socks.push(ws);
            sock_user.push(i);
            sock_node.push(node);
        }
    }
    let mut teams = Vec::new();
    for t in 0..TEAMS {
        let team = apis[t % n]
            .create_team(users[t].token(), &format!("Team {t}"))
            .await;
        let mut members = BTreeMap::new();
        members.insert(t, "owner".to_string());
        teams.push(TeamState {
            id: team.id,
            owner: t,
            default_board: team.default_board_id,
            boards: vec![team.default_board_id],
            labels: Vec::new(),
            members,
        });
    }
    let n_socks = socks.len();
    let user_ix = users.iter().enumerate().map(|(i, u)| (u.id(), i)).collect();
    let mut w = World {
        apis: apis.clone(),
        users,
        teams,
        tasks: BTreeMap::new(),
        socks,
        sock_user,
        sock_node,
        subs: Vec::new(),
        removals: HashMap::new(),
        moves: HashMap::new(),
        task_rooms: vec![HashSet::new(); n_socks],
        rng: Rng::new(rng.next_u64()),
        counts: BTreeMap::new(),
        writes_per_node: vec![0; n],
        user_ix,
        recent: Vec::new(),
        inbox: Inboxes {
            owed: vec![Vec::new(); USERS],
            marks: (0..USERS).map(|_| Vec::new()).collect(),
            reads: (0..USERS).map(|_| Vec::new()).collect(),
            left_at: HashMap::new(),
            ever: (0..USERS)
                .map(|u| (0..TEAMS).filter(|t| *t == u).collect())
                .collect(),
            seen_ids: Vec::new(),
            problems: Vec::new(),
        },
    };
    // Overlapping initial memberships.
    for t in 0..TEAMS {
        for u in 0..USERS {
            if u != t && rng.chance(50) {
                let role = *rng.pick(&["admin", "member", "member", "viewer"]);
                let owner_tok = w.tok(t);
                apis[u % n]
                    .add_member(&owner_tok, w.teams[t].id, &w.users[u].user.email, role)
                    .await;
                w.teams[t].members.insert(u, role.to_string());
                w.inbox.ever[u].insert(t);
            }
        }
    }
    for t in 0..TEAMS {
        let members: Vec<usize> = w.teams[t].members.keys().copied().collect();
        for u in members {
            w.join_everything(u, t).await;
        }
    }

    let started = Instant::now();
    for i in 0..ACTIONS {
        w.act(i).await;
        if i % 25 == 24 {
            w.resume(&d, i).await;
        }
        if i % 20 == 19 {
            for s in w.socks.iter_mut() {
                s.pump().await;
            }
        }
    }
    eprintln!(
        "{ACTIONS} actions in {:?} (writes per instance: {:?}): {:?}",
        started.elapsed(),
        w.writes_per_node,
        w.counts
    );

    // The authoritative log of every team (read by its owner, who is never removed).
    let mut log: Vec<Value> = Vec::new();
    let mut team_index: HashMap<Uuid, usize> = HashMap::new();
    for (t, team) in w.teams.iter().enumerate() {
        team_index.insert(team.id, t);
        let acts = apis[(t + 1) % n]
            .all_pages(
                w.users[team.owner].token(),
                &format!("/api/v1/teams/{}/activity?limit=200", team.id),
            )
            .await;
        log.extend(acts);
    }
    let mut removed_seqs: HashMap<(usize, usize), Vec<i64>> = HashMap::new();
    let user_index: HashMap<Uuid, usize> = w
        .users
        .iter()
        .enumerate()
        .map(|(i, u)| (u.id(), i))
        .collect();
    for a in &log {
        if a["type"] == "member.removed" {
            let u = user_index[&uuid_at(&a["data"]["userId"]).unwrap()];
            let t = team_index[&uuid_at(&a["teamId"]).unwrap()];
            removed_seqs
                .entry((u, t))
                .or_default()
                .push(a["seq"].as_i64().unwrap());
        }
    }
    for v in removed_seqs.values_mut() {
        v.sort();
    }
    // Expected per socket: (teamId, seq).
    let mut expected: Vec<BTreeSet<(Uuid, i64)>> = vec![BTreeSet::new(); n_socks];
    for a in &log {
        let team = uuid_at(&a["teamId"]).unwrap();
        let t = team_index[&team];
        let seq = a["seq"].as_i64().unwrap();
        let rooms = routes(a, &w.moves);
        for (s, exp) in expected.iter_mut().enumerate() {
            let u = w.sock_user[s];
            let own = rooms.contains(&Room::User(w.users[u].id()));
            let via_room = w.subs.iter().any(|sub| {
                sub.sock == s
                    && sub.team == t
                    && rooms.contains(&sub.room)
                    && seq > sub.from
                    && sub.revoked_by.is_none_or(|k| {
                        let n = removed_seqs
                            .get(&(u, t))
                            .and_then(|v| v.get(k))
                            .copied()
                            .unwrap_or_else(|| {
                                panic!("no member.removed #{k} of user{u} in team {t}")
                            });
                        seq <= n
                    })
            });
            if own || via_room {
                exp.insert((team, seq));
            }
        }
    }

    let ever_teams: Vec<HashSet<Uuid>> = (0..n_socks)
        .map(|s| {
            let u = w.sock_user[s];
            // Teams the user was ever a member of: through subscriptions, or own deliveries.
            let mut set: HashSet<Uuid> = w
                .subs
                .iter()
                .filter(|sub| sub.sock == s)
                .map(|sub| w.teams[sub.team].id)
                .collect();
            for a in &log {
                if routes(a, &w.moves).contains(&Room::User(w.users[u].id())) {
                    set.insert(uuid_at(&a["teamId"]).unwrap());
                }
            }
            set
        })
        .collect();
    let inboxes = InboxCheck::read(&w).await;
    let inbox_want = inboxes.owed_seqs(&w);
    // Let every socket catch up (bounded), then a barrier to catch extras.
    wait_all(&mut w.socks, &expected, Duration::from_secs(15)).await;
    wait_inboxes(&mut w.socks, &inbox_want, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut problems = Vec::new();
    let mut totals = (0usize, 0usize, 0usize, 0usize, 0usize);
    let mut per_node = vec![0usize; n];
    for s in 0..n_socks {
        let want = &expected[s];
        let label = w.socks[s].label.clone();
        if let Some(end) = &w.socks[s].ended {
            problems.push(format!("{label}: the socket ended: {end:?}"));
        } else {
            w.socks[s].barrier().await;
        }
        let acts = logged_activities(&w.socks[s].frames);
        per_node[w.sock_node[s] % n] += acts.len();
        let mut counts: BTreeMap<(Uuid, i64), usize> = BTreeMap::new();
        let mut last: HashMap<Uuid, i64> = HashMap::new();
        let mut out_of_order = 0;
        for a in &acts {
            let key = (uuid_at(&a["teamId"]).unwrap(), a["seq"].as_i64().unwrap());
            *counts.entry(key).or_default() += 1;
            let prev = last.insert(key.0, key.1).unwrap_or(0);
            if key.1 <= prev {
                out_of_order += 1;
            }
        }
        let dup: Vec<_> = counts
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, _)| *k)
            .collect();
        let lost: Vec<_> = want
            .iter()
            .filter(|k| !counts.contains_key(k))
            .copied()
            .collect();
        let extra: Vec<_> = counts
            .keys()
            .filter(|k| !want.contains(k))
            .copied()
            .collect();
        let foreign: Vec<_> = extra
            .iter()
            .filter(|(team, _)| !ever_teams[s].contains(team))
            .copied()
            .collect();
        // Presence frames only for task rooms this socket joined, of teams it was in.
        let bad_presence: Vec<Value> = w.socks[s]
            .frames
            .iter()
            .filter(|f| is_presence(f))
            .filter(|f| {
                let a = &f["activity"];
                !uuid_at(&a["taskId"]).is_some_and(|id| w.task_rooms[s].contains(&id))
                    || !uuid_at(&a["teamId"]).is_some_and(|id| ever_teams[s].contains(&id))
            })
            .cloned()
            .collect();
        totals.0 += acts.len();
        totals.1 += lost.len();
        totals.2 += dup.len();
        totals.3 += extra.len();
        totals.4 += out_of_order;
        if !(lost.is_empty()
            && dup.is_empty()
            && extra.is_empty()
            && out_of_order == 0
            && bad_presence.is_empty())
        {
            let describe = |keys: &[(Uuid, i64)]| -> Vec<String> {
                keys.iter()
                    .take(8)
                    .map(|(team, seq)| {
                        let a = log
                            .iter()
                            .find(|a| a["teamId"] == json!(team) && a["seq"] == json!(seq));
                        format!(
                            "team{}#{seq} {}",
                            team_index[team],
                            a.map(|a| format!("{} {}", a["type"], a["data"]))
                                .unwrap_or_default()
                        )
                    })
                    .collect()
            };
            problems.push(format!(
                "{label}: received {}, expected {}; lost {} {:?}; duplicated {} {:?}; \
                 unexpected {} (other teams: {}) {:?}; out of order {out_of_order}; \
                 bad presence {:?}",
                acts.len(),
                want.len(),
                lost.len(),
                describe(&lost),
                dup.len(),
                describe(&dup),
                extra.len(),
                foreign.len(),
                describe(&extra),
                bad_presence.iter().take(3).collect::<Vec<_>>()
            ));
        }
    }
    eprintln!(
        "seed {seed} ({d}): {} activities received over {n_socks} sockets (per instance: \
         {per_node:?}); lost {}, duplicated {}, unexpected {}, out of order {}",
        totals.0, totals.1, totals.2, totals.3, totals.4
    );
    // The inboxes: served against the model, each socket against what is served.
    problems.append(&mut w.inbox.problems);
    let served = inboxes.check_served(&w, &mut problems);
    let (mut received, mut excused, mut extras) = (0, 0, 0);
    for s in 0..n_socks {
        let (r, e, x) = inboxes.check_socket(&w, s, &mut problems);
        received += r;
        excused += e;
        extras += x;
    }
    let owed: usize = w.inbox.owed.iter().map(Vec::len).sum();
    let mut why: BTreeMap<String, usize> = BTreeMap::new();
    for o in w.inbox.owed.iter().flatten() {
        *why.entry(format!("{} {}", o.kind, o.reasons.join("+")))
            .or_default() += 1;
    }
    let marks: usize = w.inbox.reads.iter().map(Vec::len).sum();
    eprintln!(
        "seed {seed} ({d}): inboxes: {owed} notifications owed by the model, {served} served at \
         the end, {marks} mark-reads that changed something; {received} notifications received \
         over {n_socks} sockets ({extras} of teams left since, {excused} excused as written \
         before a removal); owed by kind and reasons: {why:?}"
    );
    assert!(
        totals.0 > ACTIONS,
        "suspiciously few activities received ({}): is the scenario doing anything?",
        totals.0
    );
    assert!(
        served > USERS && marks > 0,
        "suspiciously quiet inboxes ({served} served, {marks} marks): is the scenario doing anything?"
    );
    assert!(
        per_node.iter().all(|n| *n > 0),
        "every instance must have delivered something: {per_node:?}"
    );
    assert!(
        problems.is_empty(),
        "seed {seed} ({d}): sockets did not receive exactly their activities and notifications, \
         or inboxes are not what the model owes:\n{}",
        problems.join("\n")
    );
}
