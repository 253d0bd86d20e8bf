//! Randomized no-leakage test (seeded; `TASKFORGE_TEST_SEED` replays): several teams, users with
//! overlapping memberships and roles, one socket per user subscribed to everything the user may
//! see; random HTTP actions (tasks, moves, assignments, comments, boards, members); a model of who
//! is entitled to what, ordered by seq. Each socket must receive exactly the activities routed to
//! its rooms while it was entitled to them, each once, in seq order per team, and nothing else.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};
use uuid::Uuid;

both_backends!(random_actions_no_leakage);

const USERS: usize = 8;
const TEAMS: usize = 3;
const ACTIONS: usize = 300;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
enum Room {
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

/// One subscription of a user's socket: activities of `team` with `from < seq <= until`.
#[derive(Debug, Clone)]
struct Sub {
    user: usize,
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
    api: Api,
    users: Vec<AuthResponse>,
    teams: Vec<TeamState>,
    tasks: BTreeMap<Uuid, TaskState>,
    socks: Vec<WsClient>,
    subs: Vec<Sub>,
    removals: HashMap<(usize, usize), usize>, // (user, team) -> removals so far
    /// Patches that moved a task: (task, resulting version) -> old board.
    moves: HashMap<(Uuid, i64), Uuid>,
    task_rooms: Vec<HashSet<Uuid>>, // per user: task rooms ever joined
    rng: Rng,
    counts: BTreeMap<&'static str, usize>,
}

impl World {
    fn tok(&self, u: usize) -> String {
        self.users[u].access_token.clone()
    }

    fn writers(&self, t: usize) -> Vec<usize> {
        self.teams[t]
            .members
            .iter()
            .filter(|(_, r)| r.as_str() != "viewer")
            .map(|(u, _)| *u)
            .collect()
    }

    async fn subscribe(&mut self, u: usize, t: usize, scope: Scope) {
        let s = self.socks[u].subscribe(scope, None).await;
        if let Scope::Task(id) = scope {
            self.task_rooms[u].insert(id);
        }
        self.subs.push(Sub {
            user: u,
            team: t,
            room: room_of(scope),
            from: s.seq,
            revoked_by: None,
        });
    }

    /// Subscribes a (new) member to the team, its boards, and some of its tasks.
    async fn join_everything(&mut self, u: usize, t: usize) {
        self.subscribe(u, t, Scope::Team(self.teams[t].id)).await;
        for b in self.teams[t].boards.clone() {
            self.subscribe(u, t, Scope::Board(b)).await;
        }
        let tasks: Vec<Uuid> = self
            .tasks
            .iter()
            .filter(|(_, s)| s.team == t)
            .map(|(id, _)| *id)
            .collect();
        for id in tasks {
            if self.rng.chance(40) {
                self.subscribe(u, t, Scope::Task(id)).await;
            }
        }
    }

    fn bump(&mut self, what: &'static str) {
        *self.counts.entry(what).or_default() += 1;
    }

    fn pick_team(&mut self) -> usize {
        self.rng.below(TEAMS)
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
        let t = self.pick_team();
        let team_id = self.teams[t].id;
        let owner = self.teams[t].owner;
        let writers = self.writers(t);
        let actor = *self.rng.pick(&writers);
        let tok = self.tok(actor);
        let tasks = self.team_tasks(t);
        let roll = self.rng.below(100);
        match roll {
            // create a task (maybe assigned); some members join its room
            0..=19 => {
                let board = *self.rng.pick(&self.teams[t].boards.clone());
                let assignee = self.random_assignee(t);
                let task = self
                    .api
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
                    if self.rng.chance(40) {
                        self.subscribe(m, t, Scope::Task(task.id)).await;
                    }
                }
                self.bump("task create");
            }
            // update fields
            20..=31 if !tasks.is_empty() => {
                let id = *self.rng.pick(&tasks);
                let status = *self.rng.pick(&["todo", "in_progress", "done", "canceled"]);
                self.api
                    .patch_task(
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
                let task: Task = self.api.patch_task(&tok, id, body).await.parse(200);
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
                self.api
                    .patch_task(&tok, id, json!({"assigneeUserId": assignee}))
                    .await
                    .ok(200);
                self.tasks.get_mut(&id).unwrap().assignee = assignee;
                self.bump("task assign");
            }
            // delete a task
            52..=56 if !tasks.is_empty() => {
                let id = *self.rng.pick(&tasks);
                self.api
                    .delete(&format!("/api/v1/tasks/{id}"), &tok)
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
                    let c = self.api.comment(&tok, id, &format!("comment {i}")).await;
                    self.tasks
                        .get_mut(&id)
                        .unwrap()
                        .comments
                        .push((c.id, actor));
                    self.bump("comment create");
                } else if self.rng.chance(50) {
                    let (cid, author) = *self.rng.pick(&editable);
                    self.api
                        .patch(
                            &format!("/api/v1/comments/{cid}"),
                            &self.tok(author),
                            json!({"body": format!("edit {i}")}),
                        )
                        .await
                        .ok(200);
                    self.bump("comment update");
                } else {
                    let (cid, _) = *self.rng.pick(&editable);
                    self.api
                        .delete(&format!("/api/v1/comments/{cid}"), &self.tok(owner))
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
                    let b = self
                        .api
                        .create_board(&tok, team_id, &format!("board {i}"))
                        .await;
                    self.teams[t].boards.push(b.id);
                    let members: Vec<usize> = self.teams[t].members.keys().copied().collect();
                    for m in members {
                        self.subscribe(m, t, Scope::Board(b.id)).await;
                    }
                    self.bump("board create");
                } else if r == 1 {
                    let b = *self.rng.pick(&self.teams[t].boards.clone());
                    self.api
                        .patch(
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
                        self.api
                            .delete(&format!("/api/v1/boards/{b}"), &self.tok(owner))
                            .await
                            .ok(204);
                        self.teams[t].boards.retain(|x| x != b);
                        self.bump("board delete");
                    }
                }
            }
            // add a member (who joins everything)
            78..=85 => {
                let outside: Vec<usize> = (0..USERS)
                    .filter(|u| !self.teams[t].members.contains_key(u))
                    .collect();
                if outside.is_empty() {
                    return;
                }
                let u = *self.rng.pick(&outside);
                let role = *self.rng.pick(&["admin", "member", "viewer"]);
                self.api
                    .add_member(&self.tok(owner), team_id, &self.users[u].user.email, role)
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
                self.api
                    .delete(
                        &format!("/api/v1/teams/{team_id}/members/{uid}"),
                        &self.tok(owner),
                    )
                    .await
                    .ok(204);
                self.teams[t].members.remove(&u);
                let k = self.removals.entry((u, t)).or_default();
                let idx = *k;
                *k += 1;
                for s in self.subs.iter_mut() {
                    if s.user == u && s.team == t && s.revoked_by.is_none() {
                        s.revoked_by = Some(idx);
                    }
                }
                // Tasks stay assigned to the former member.
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
                self.api
                    .patch(
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
                self.api
                    .patch(
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

fn uuid_at(v: &Value) -> Option<Uuid> {
    v.as_str().and_then(|s| s.parse().ok())
}

/// The rooms an activity is routed to, per the contract's table.
fn routes(a: &Value, moves: &HashMap<(Uuid, i64), Uuid>) -> BTreeSet<Room> {
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

async fn random_actions_no_leakage(b: Backend) {
    let seed = Rng::seed_from_env();
    eprintln!("random_actions_no_leakage seed = {seed} (set TASKFORGE_TEST_SEED={seed} to replay)");
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let mut rng = Rng::new(seed);

    let mut users = Vec::new();
    for i in 0..USERS {
        users.push(api.new_user(&format!("User{i}")).await);
    }
    // One socket per user, connected before any membership exists.
    let mut socks = Vec::new();
    for (i, u) in users.iter().enumerate() {
        socks.push(srv.ws(u.token()).await.labeled(&format!("user{i}")));
    }
    let mut teams = Vec::new();
    for t in 0..TEAMS {
        let team = api
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
    let mut w = World {
        api: api.clone(),
        users,
        teams,
        tasks: BTreeMap::new(),
        socks,
        subs: Vec::new(),
        removals: HashMap::new(),
        moves: HashMap::new(),
        task_rooms: vec![HashSet::new(); USERS],
        rng: Rng::new(rng.next_u64()),
        counts: BTreeMap::new(),
    };
    // Overlapping initial memberships.
    for t in 0..TEAMS {
        for u in 0..USERS {
            if u != t && rng.chance(50) {
                let role = *rng.pick(&["admin", "member", "member", "viewer"]);
                let owner_tok = w.tok(t);
                api.add_member(&owner_tok, w.teams[t].id, &w.users[u].user.email, role)
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
        "{ACTIONS} actions in {:?}: {:?}",
        started.elapsed(),
        w.counts
    );

    // The authoritative log of every team (read by its owner, who is never removed).
    let mut log: Vec<Value> = Vec::new();
    let mut team_index: HashMap<Uuid, usize> = HashMap::new();
    for (t, team) in w.teams.iter().enumerate() {
        team_index.insert(team.id, t);
        let acts = api
            .all_pages(
                w.users[team.owner].token(),
                &format!("/api/v1/teams/{}/activity?limit=200", team.id),
            )
            .await;
        log.extend(acts);
    }
    // member.removed seqs per (user, team), in order.
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
    // Expected per user: (teamId, seq).
    let mut expected: Vec<BTreeSet<(Uuid, i64)>> = vec![BTreeSet::new(); USERS];
    for a in &log {
        let team = uuid_at(&a["teamId"]).unwrap();
        let t = team_index[&team];
        let seq = a["seq"].as_i64().unwrap();
        let rooms = routes(a, &w.moves);
        for (u, exp) in expected.iter_mut().enumerate() {
            let own = rooms.contains(&Room::User(w.users[u].id()));
            let via_room = w.subs.iter().any(|s| {
                s.user == u
                    && s.team == t
                    && rooms.contains(&s.room)
                    && seq > s.from
                    && s.revoked_by.is_none_or(|k| {
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

    // Let every socket catch up (bounded), then a barrier to catch extras.
    let ever_teams: Vec<HashSet<Uuid>> = (0..USERS)
        .map(|u| {
            w.subs
                .iter()
                .filter(|s| s.user == u)
                .map(|s| w.teams[s.team].id)
                .collect()
        })
        .collect();
    let mut problems = Vec::new();
    let mut totals = (0usize, 0usize, 0usize, 0usize, 0usize);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut complete = true;
        for u in 0..USERS {
            w.socks[u].pump().await;
            let have: HashSet<(Uuid, i64)> = logged_activities(&w.socks[u].frames)
                .iter()
                .map(|a| (uuid_at(&a["teamId"]).unwrap(), a["seq"].as_i64().unwrap()))
                .collect();
            complete &= expected[u].iter().all(|k| have.contains(k));
        }
        if complete || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for u in 0..USERS {
        let want = &expected[u];
        if let Some(end) = &w.socks[u].ended {
            problems.push(format!("user{u}: the socket ended: {end:?}"));
        } else {
            w.socks[u].barrier().await;
        }
        let acts = logged_activities(&w.socks[u].frames);
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
            .filter(|(team, _)| !ever_teams[u].contains(team))
            .copied()
            .collect();
        // Presence frames only for task rooms this socket joined.
        let bad_presence: Vec<Value> = w.socks[u]
            .frames
            .iter()
            .filter(|f| is_presence(f))
            .filter(|f| {
                let a = &f["activity"];
                !uuid_at(&a["taskId"]).is_some_and(|id| w.task_rooms[u].contains(&id))
                    || !uuid_at(&a["teamId"]).is_some_and(|id| ever_teams[u].contains(&id))
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
                "user{u}: received {}, expected {}; lost {} {:?}; duplicated {} {:?}; \
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
        "seed {seed}: {} activities received over {USERS} sockets; lost {}, duplicated {}, \
         unexpected {}, out of order {}",
        totals.0, totals.1, totals.2, totals.3, totals.4
    );
    assert!(
        totals.0 > ACTIONS,
        "suspiciously few activities received ({}): is the scenario doing anything?",
        totals.0
    );
    assert!(
        problems.is_empty(),
        "seed {seed}: sockets did not receive exactly their activities:\n{}",
        problems.join("\n")
    );
}
