//! Randomized no-leakage test (seeded; `TASKFORGE_TEST_SEED` replays), on every topology:
//! several teams, users with overlapping memberships and roles, two sockets per user (on
//! consecutive instances) subscribed to random parts of what the user may see; random HTTP
//! actions (tasks, moves, assignments, comments, boards, members) through random instances; a
//! model of who is entitled to what, ordered by seq. Each socket must receive exactly the
//! activities routed to its rooms while it was entitled to them, and its own deliveries, each
//! once, in seq order per team, and nothing else.
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
    comments: Vec<(Uuid, usize)>, // (comment, author)
}

struct TeamState {
    id: Uuid,
    owner: usize,
    default_board: Uuid,
    boards: Vec<Uuid>,
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

    fn random_assignee(&mut self, t: usize) -> Option<Uuid> {
        let members: Vec<usize> = self.teams[t].members.keys().copied().collect();
        if self.rng.chance(30) {
            None
        } else {
            Some(self.users[*self.rng.pick(&members)].id())
        }
    }

    async fn act(&mut self, i: usize) {
        let t = self.rng.below(TEAMS);
        let team_id = self.teams[t].id;
        let owner = self.teams[t].owner;
        let writers = self.writers(t);
        let actor = *self.rng.pick(&writers);
        let tok = self.tok(actor);
        let tasks = self.team_tasks(t);
        let api = self.api();
        let roll = self.rng.below(100);
        match roll {
            // create a task (maybe assigned); some members' sockets join its room
            0..=19 => {
                let board = *self.rng.pick(&self.teams[t].boards.clone());
                let assignee = self.random_assignee(t);
                let task = api
                    .create_task(
                        &tok,
                        team_id,
                        json!({"title": format!("task {i}"), "boardId": board, "assigneeUserId": assignee}),
                    )
                    .await;
                self.tasks.insert(
                    task.id,
                    TaskState {
                        team: t,
                        board,
                        assignee,
                        comments: Vec::new(),
                    },
                );
                let members: Vec<usize> = self.teams[t].members.keys().copied().collect();
                for m in members {
                    self.subscribe(m, t, Scope::Task(task.id), 30).await;
                }
                self.bump("task create");
            }
            // update fields
            20..=31 if !tasks.is_empty() => {
                let id = *self.rng.pick(&tasks);
                let status = *self.rng.pick(&["todo", "in_progress", "done", "canceled"]);
                api.patch_task(
                    &tok,
                    id,
                    json!({"title": format!("upd {i}"), "status": status}),
                )
                .await
                .ok(200);
                self.bump("task update");
            }
            // move (sometimes with an assignment change)
            32..=41 if !tasks.is_empty() => {
                let id = *self.rng.pick(&tasks);
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
                    assignee = self.random_assignee(t);
                    body["assigneeUserId"] = json!(assignee);
                }
                let task: Task = api.patch_task(&tok, id, body).await.parse(200);
                self.moves.insert((id, task.version), old);
                let st = self.tasks.get_mut(&id).unwrap();
                st.board = new;
                st.assignee = assignee;
                self.bump("task move");
            }
            // assign / unassign
            42..=51 if !tasks.is_empty() => {
                let id = *self.rng.pick(&tasks);
                let assignee = self.random_assignee(t);
                api.patch_task(&tok, id, json!({"assigneeUserId": assignee}))
                    .await
                    .ok(200);
                self.tasks.get_mut(&id).unwrap().assignee = assignee;
                self.bump("task assign");
            }
            // delete a task
            52..=56 if !tasks.is_empty() => {
                let id = *self.rng.pick(&tasks);
                api.delete(&format!("/api/v1/tasks/{id}"), &tok)
                    .await
                    .ok(204);
                self.tasks.remove(&id);
                self.bump("task delete");
            }
            // comments
            57..=69 if !tasks.is_empty() => {
                let id = *self.rng.pick(&tasks);
                let editable: Vec<(Uuid, usize)> = self.tasks[&id]
                    .comments
                    .iter()
                    .copied()
                    .filter(|(_, a)| writers.contains(a))
                    .collect();
                if editable.is_empty() || self.rng.chance(50) {
                    let c = api.comment(&tok, id, &format!("comment {i}")).await;
                    self.tasks
                        .get_mut(&id)
                        .unwrap()
                        .comments
                        .push((c.id, actor));
                    self.bump("comment create");
                } else if self.rng.chance(50) {
                    let (cid, author) = *self.rng.pick(&editable);
                    api.patch(
                        &format!("/api/v1/comments/{cid}"),
                        &self.tok(author),
                        json!({"body": format!("edit {i}")}),
                    )
                    .await
                    .ok(200);
                    self.bump("comment update");
                } else {
                    let (cid, _) = *self.rng.pick(&editable);
                    api.delete(&format!("/api/v1/comments/{cid}"), &self.tok(owner))
                        .await
                        .ok(204);
                    self.tasks
                        .get_mut(&id)
                        .unwrap()
                        .comments
                        .retain(|(c, _)| *c != cid);
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
        "team.updated" | "board.created" | "board.updated" | "board.deleted" => {
            r.insert(Room::Team(team));
        }
        other => panic!("unknown activity type {other}: {a}"),
    }
    r
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
            members,
        });
    }
    let n_socks = socks.len();
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
    // Let every socket catch up (bounded), then a barrier to catch extras.
    wait_all(&mut w.socks, &expected, Duration::from_secs(15)).await;
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
    assert!(
        totals.0 > ACTIONS,
        "suspiciously few activities received ({}): is the scenario doing anything?",
        totals.0
    );
    assert!(
        per_node.iter().all(|n| *n > 0),
        "every instance must have delivered something: {per_node:?}"
    );
    assert!(
        problems.is_empty(),
        "seed {seed} ({d}): sockets did not receive exactly their activities:\n{}",
        problems.join("\n")
    );
}
