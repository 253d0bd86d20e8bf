//! `/realtime` rooms: subscribe/unsubscribe replies, `forbidden`, the routing table (one test per
//! group of rows), the user's own deliveries, exactly-once delivery across rooms, per-team seq
//! order, presence and revocation.
//!
//! The routing table, own deliveries and revocation run over both transports (a socket, an SSE
//! stream) on every topology (`every_transport!`): written through instance A, observed on B and
//! C, which on one instance are the same server.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};
use uuid::Uuid;

both_backends!(
    subscribe_and_unsubscribe_replies,
    forbidden_for_non_members_and_unknown_ids_alike,
    live_order_gapless_under_concurrent_writers,
    presence_snapshot_joined_left,
);
every_transport!(backends: self_removal_revokes_too);

every_transport!(
    route_task_created,
    route_task_imported,
    route_task_updated,
    route_task_deleted,
    route_task_assigned,
    route_comments,
    route_members,
    route_team_and_board_activities,
    route_labels,
    own_deliveries_need_no_subscription,
    own_delivery_survives_the_instance_starting_to_follow_the_team,
    revocation_unsubscribes_and_stops_delivery,
);

const T: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Subscribe / unsubscribe
// ---------------------------------------------------------------------------------------------

async fn subscribe_and_unsubscribe_replies(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let team = api.create_team(owner.token(), "Rooms").await;
    let board = team.default_board_id;
    let task = api.task(owner.token(), team.id, "room task").await;
    let latest = api.team_seq(owner.token(), team.id).await;
    assert!(latest >= 1);

    let mut ws = srv.ws(owner.token()).await.labeled("owner");
    let mut watch = srv.ws(owner.token()).await.labeled("watch");
    for scope in [
        Scope::Team(team.id),
        Scope::Board(board),
        Scope::Task(task.id),
    ] {
        watch.subscribe(scope, None).await;
        let s = ws.subscribe(scope, None).await;
        assert_eq!(s.seq, latest, "subscribed.seq without since: {}", s.frame);
        assert_eq!(s.frame["type"], "subscribed");
        assert_eq!(s.frame[scope.key()], json!(scope.id()), "{}", s.frame);
        for other in ["teamId", "boardId", "taskId"] {
            if other != scope.key() {
                assert!(s.frame.get(other).is_none(), "{}", s.frame);
            }
        }
        match scope {
            Scope::Task(_) => {
                let p = s.frame["presence"]
                    .as_array()
                    .expect("task rooms carry presence");
                assert_eq!(
                    p,
                    &vec![
                        json!({"userId": owner.id(), "displayName": "Owner", "state": "viewing"})
                    ],
                    "presence snapshot must hold the caller (once, though two of its sockets are in): {}",
                    s.frame
                );
            }
            _ => assert!(s.frame.get("presence").is_none(), "{}", s.frame),
        }
        // Subscribing again answers subscribed again.
        let again = ws.subscribe(scope, None).await;
        assert_eq!(again.seq, latest, "{}", again.frame);
    }
    assert!(ws.barrier().await.is_empty());

    // Unsubscribe each: the reply names the room, has no reason.
    for scope in [
        Scope::Team(team.id),
        Scope::Board(board),
        Scope::Task(task.id),
    ] {
        let u = ws.unsubscribe(scope).await;
        assert_eq!(u["type"], "unsubscribed");
        assert!(u.get("reason").is_none(), "{u}");
    }
    // A room never joined: unsubscribed as well.
    let never = Scope::Task(Uuid::new_v4());
    let u = ws.unsubscribe(never).await;
    assert_eq!(u[never.key()], json!(never.id()));

    // After unsubscribing, nothing of those rooms arrives (the watcher proves it was sent).
    api.patch_task(owner.token(), task.id, json!({"title": "renamed"}))
        .await
        .ok(200);
    api.task(owner.token(), team.id, "second").await;
    api.comment(owner.token(), task.id, "hello").await;
    let got = watch.activities(3, T).await;
    let kinds: Vec<&str> = got.iter().map(|a| a["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["task.updated", "task.created", "comment.created"]);
    let leaked = ws.barrier().await;
    assert!(
        leaked.is_empty(),
        "frames after unsubscribing every room: {leaked:?}"
    );
}

fn without_ids(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("teamId");
        o.remove("boardId");
        o.remove("taskId");
    }
    v
}

async fn forbidden_for_non_members_and_unknown_ids_alike(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let stranger = api.new_user("Stranger").await;
    let team = api.create_team(owner.token(), "Private").await;
    let task = api.task(owner.token(), team.id, "secret").await;
    let mut ws = srv.ws(stranger.token()).await.labeled("stranger");
    let mut first: Option<Value> = None;
    for (real, unknown) in [
        (Scope::Team(team.id), Scope::Team(Uuid::new_v4())),
        (
            Scope::Board(team.default_board_id),
            Scope::Board(Uuid::new_v4()),
        ),
        (Scope::Task(task.id), Scope::Task(Uuid::new_v4())),
    ] {
        for since in [None, Some(0)] {
            let e1 = ws
                .try_subscribe(real, since)
                .await
                .expect_err("a non-member must not join");
            let e2 = ws
                .try_subscribe(unknown, since)
                .await
                .expect_err("an unknown id must not be joined");
            for (e, s) in [(&e1, real), (&e2, unknown)] {
                assert_eq!(e["type"], "error", "{e}");
                assert_eq!(e["code"], "forbidden", "{e}");
                assert_eq!(e[s.key()], json!(s.id()), "the error echoes the scope: {e}");
                assert!(e["message"].is_string(), "{e}");
            }
            assert_eq!(
                without_ids(&e1),
                without_ids(&e2),
                "forbidden for a non-member and for an unknown id must be identical"
            );
            if let Some(f) = &first {
                assert_eq!(f["message"], e1["message"]);
            }
            first = Some(e1);
        }
    }
    // Deleted task and board: the same answer as an unknown id, also for a member.
    let gone_task = api.task(owner.token(), team.id, "to delete").await;
    api.delete(&format!("/api/v1/tasks/{}", gone_task.id), owner.token())
        .await
        .ok(204);
    let gone_board = api.create_board(owner.token(), team.id, "to delete").await;
    api.delete(&format!("/api/v1/boards/{}", gone_board.id), owner.token())
        .await
        .ok(204);
    let mut mine = srv.ws(owner.token()).await.labeled("owner");
    for scope in [Scope::Task(gone_task.id), Scope::Board(gone_board.id)] {
        let e = mine
            .try_subscribe(scope, None)
            .await
            .expect_err("a deleted room must not be joined");
        assert_eq!(e["code"], "forbidden", "{scope:?}: {e}");
        assert_eq!(
            without_ids(&e),
            without_ids(first.as_ref().unwrap()),
            "deleted {scope:?}: not the same answer as an unknown id"
        );
    }

    // Still open and answering; nothing of the team leaked.
    api.task(owner.token(), team.id, "after").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let leaked = ws.barrier().await;
    assert!(leaked.is_empty(), "{leaked:?}");
}

// ---------------------------------------------------------------------------------------------
// Routing table (on every topology: written through A, observed on B and C)
// ---------------------------------------------------------------------------------------------

struct Fx {
    d: Deployment,
    /// HTTP on instance A: every write of the routing tests goes there.
    api: Api,
    owner: AuthResponse,
    watcher: AuthResponse,
    assignee: AuthResponse,
    newbie: AuthResponse,
    team: Team,
    b1: Uuid,
    b2: Uuid,
    x: Task,
    /// (role, instance, client): each role has one client on B and one on C.
    socks: Vec<(&'static str, usize, RtClient)>,
    /// Roles whose SSE streams may end (a revocation ends them).
    ending: Vec<&'static str>,
}

/// Roles (all the watcher's clients unless said): `team`, `b1`, `b2`, `taskX`, `taskY`,
/// `multi` (team + b1 + taskX: over SSE one stream of three scopes), `assignee` (the
/// assignee's, no room: over SSE a stream of the inbox only), `assigneeRooms` (the assignee's, in
/// b1 and taskX: own deliveries and rooms overlap), `newbie` (a not-yet member's, no room),
/// `otherTeam` (the watcher's, in another team's team and board rooms). Each role has a client on
/// B and one on C (two clients of one user on one instance); the data is written over HTTP on A.
async fn fixture(d: Deployment) -> Fx {
    let api = d.client(0);
    let owner = api.new_user("Owner").await;
    let team = api.create_team(owner.token(), "Routing").await;
    let watcher = api
        .member(owner.token(), team.id, "Watcher", "member")
        .await;
    let assignee = api
        .member(owner.token(), team.id, "Assignee", "member")
        .await;
    let newbie = api.new_user("Newbie").await;
    let b1 = team.default_board_id;
    let b2 = api.create_board(owner.token(), team.id, "Second").await.id;
    let x = api
        .create_task(owner.token(), team.id, json!({"title": "X", "boardId": b1}))
        .await;
    let y = api
        .create_task(owner.token(), team.id, json!({"title": "Y", "boardId": b1}))
        .await;
    let other = api.create_team(owner.token(), "Other").await;
    api.add_member(owner.token(), other.id, &watcher.user.email, "member")
        .await;
    let latest: HashMap<Uuid, i64> = HashMap::from([
        (team.id, api.team_seq(owner.token(), team.id).await),
        (other.id, api.team_seq(owner.token(), other.id).await),
    ]);

    let w = watcher.token();
    // (role, token, [(room, its team)])
    type Spec<'a> = (&'static str, &'a str, Vec<(Scope, Uuid)>);
    let specs: Vec<Spec> = vec![
        ("team", w, vec![(Scope::Team(team.id), team.id)]),
        ("b1", w, vec![(Scope::Board(b1), team.id)]),
        ("b2", w, vec![(Scope::Board(b2), team.id)]),
        ("taskX", w, vec![(Scope::Task(x.id), team.id)]),
        ("taskY", w, vec![(Scope::Task(y.id), team.id)]),
        (
            "multi",
            w,
            vec![
                (Scope::Team(team.id), team.id),
                (Scope::Board(b1), team.id),
                (Scope::Task(x.id), team.id),
            ],
        ),
        ("assignee", assignee.token(), vec![]),
        (
            "assigneeRooms",
            assignee.token(),
            vec![(Scope::Board(b1), team.id), (Scope::Task(x.id), team.id)],
        ),
        ("newbie", newbie.token(), vec![]),
        (
            "otherTeam",
            w,
            vec![
                (Scope::Team(other.id), other.id),
                (Scope::Board(other.default_board_id), other.id),
            ],
        ),
    ];
    let mut socks: Vec<(&'static str, usize, RtClient)> = Vec::new();
    for (name, token, scopes) in specs {
        let rooms: Vec<Scope> = scopes.iter().map(|(s, _)| *s).collect();
        for node in [1, 2] {
            let ws = d.open(node, token, name, &rooms).await;
            for (s, t) in &scopes {
                let sub = ws.subscribed(*s);
                assert_eq!(
                    sub.seq,
                    latest[t],
                    "{} ({d}): subscribed.seq without since must be the team's latest seq \
                     (written on A): {}",
                    ws.label(),
                    sub.frame
                );
            }
            socks.push((name, node, ws));
        }
    }
    // Settle: nothing is pending on any client.
    for (_, _, ws) in socks.iter_mut() {
        ws.barrier().await;
        ws.clear_frames();
    }
    Fx {
        d,
        api,
        owner,
        watcher,
        assignee,
        newbie,
        team,
        b1,
        b2,
        x,
        socks,
        ending: Vec::new(),
    }
}

impl Fx {
    fn sockets(&mut self, role: &str) -> impl Iterator<Item = &mut RtClient> {
        self.socks
            .iter_mut()
            .filter(move |(r, _, _)| *r == role)
            .map(|(_, _, ws)| ws)
    }

    /// Replaces the clients of `role` (on B and C) by new ones in `scopes`.
    async fn reopen(&mut self, role: &'static str, token: &str, scopes: &[Scope]) {
        for (r, node, ws) in self.socks.iter_mut() {
            if *r == role {
                *ws = self.d.open(*node, token, role, scopes).await;
            }
        }
    }

    /// For the last action, each socket (on B and on C) received exactly the activity types
    /// listed for its role (each once) and nothing else. Returns what each role's socket on B got.
    async fn expect(
        &mut self,
        what: &str,
        routes: &[(&str, &[&str])],
    ) -> HashMap<String, Vec<Value>> {
        let mut want: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (role, _, _) in &self.socks {
            want.insert(role, Vec::new());
        }
        for (kind, roles) in routes {
            for r in *roles {
                want.get_mut(r)
                    .unwrap_or_else(|| panic!("no role {r}"))
                    .push(kind);
            }
        }
        let mut got: Vec<Vec<Value>> = Vec::new();
        // Receivers first (so the activities are dispatched), then a barrier on every socket.
        for (role, _, ws) in self.socks.iter_mut() {
            let n = want[role].len();
            got.push(if n > 0 {
                ws.activities(n, T).await
            } else {
                Vec::new()
            });
        }
        // The routing must not depend on timing: give a stray activity time to show up.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for (i, (role, _, ws)) in self.socks.iter_mut().enumerate() {
            let (frames, open) = ws.settle().await;
            assert!(
                open || self.ending.contains(role),
                "{} ({}): the connection ended: {:?}",
                ws.label(),
                self.d,
                ws.frames()
            );
            got[i].extend(logged_activities(&frames));
        }
        let mut problems = Vec::new();
        let mut by_role = HashMap::new();
        for (i, (role, _, ws)) in self.socks.iter().enumerate() {
            let acts = &got[i];
            let mut kinds: Vec<&str> = acts.iter().map(|a| a["type"].as_str().unwrap()).collect();
            kinds.sort();
            let mut expected = want[role].clone();
            expected.sort();
            if kinds != expected {
                problems.push(format!(
                    "  client {}: expected {expected:?}, got {kinds:?}: {acts:?}",
                    ws.label()
                ));
            }
            let mut seqs: Vec<i64> = acts.iter().map(|a| a["seq"].as_i64().unwrap()).collect();
            let n = seqs.len();
            seqs.dedup();
            if seqs.len() != n {
                problems.push(format!("  client {}: duplicate seq: {acts:?}", ws.label()));
            }
            by_role.entry(role.to_string()).or_insert(acts.clone());
        }
        assert!(
            problems.is_empty(),
            "routing of {what} ({}: written on A, clients on B and C):\n{}",
            self.d,
            problems.join("\n")
        );
        by_role
    }

    /// Every client saw its activities in strictly increasing seq per team, each once.
    fn assert_order(&self) {
        for (_, _, ws) in &self.socks {
            let mut last: HashMap<String, i64> = HashMap::new();
            for a in logged_activities(ws.frames()) {
                let team = a["teamId"].as_str().unwrap().to_string();
                let seq = a["seq"].as_i64().unwrap();
                let prev = last.insert(team.clone(), seq).unwrap_or(0);
                assert!(
                    seq > prev,
                    "client {}: seq {seq} after {prev} in team {team}",
                    ws.label()
                );
            }
        }
    }
}

async fn route_task_created(d: Deployment) {
    let mut fx = fixture(d).await;
    let t = fx
        .api
        .create_task(fx.owner.token(), fx.team.id, json!({"title": "on b1"}))
        .await;
    let got = fx
        .expect(
            "task.created on b1",
            &[("task.created", &["team", "b1", "multi", "assigneeRooms"])],
        )
        .await;
    let a = &got["team"][0];
    assert_eq!(a["taskId"], json!(t.id));
    assert_eq!(a["boardId"], json!(fx.b1));
    assert_eq!(a["data"]["task"]["id"], json!(t.id));
    assert_eq!(a["data"]["task"]["version"], 1);
    fx.api
        .create_task(
            fx.owner.token(),
            fx.team.id,
            json!({"title": "on b2", "boardId": fx.b2}),
        )
        .await;
    fx.expect(
        "task.created on b2",
        &[("task.created", &["team", "b2", "multi"])],
    )
    .await;
    fx.assert_order();
}

/// A bulk import reaches the team and its board's rooms, as a creation does.
async fn route_task_imported(d: Deployment) {
    let mut fx = fixture(d).await;
    let path = format!("/api/v1/teams/{}/tasks:batch", fx.team.id);
    let batch =
        |board: Uuid| json!({"boardId": board, "tasks": [{"title": "i1"}, {"title": "i2"}]});
    fx.api
        .post(&path, fx.owner.token(), batch(fx.b1))
        .await
        .ok(201);
    let got = fx
        .expect(
            "task.imported on b1",
            &[("task.imported", &["team", "b1", "multi", "assigneeRooms"])],
        )
        .await;
    let a = &got["b1"][0];
    assert_eq!(a["boardId"], json!(fx.b1));
    assert_eq!(
        a["data"]["taskIds"].as_array().map(Vec::len),
        Some(2),
        "{a}"
    );
    fx.api
        .post(&path, fx.owner.token(), batch(fx.b2))
        .await
        .ok(201);
    fx.expect(
        "task.imported on b2",
        &[("task.imported", &["team", "b2", "multi"])],
    )
    .await;
    fx.assert_order();
}

async fn route_task_updated(d: Deployment) {
    let mut fx = fixture(d).await;
    fx.api
        .patch_task(fx.owner.token(), fx.x.id, json!({"title": "X2"}))
        .await
        .ok(200);
    let got = fx
        .expect(
            "task.updated",
            &[("task.updated", &["b1", "taskX", "multi", "assigneeRooms"])],
        )
        .await;
    let a = &got["taskX"][0];
    assert_eq!(
        a["data"]["changes"]["title"],
        json!({"from": "X", "to": "X2"}),
        "{a}"
    );
    // A move reaches both boards; the activity names the new board.
    fx.api
        .patch_task(fx.owner.token(), fx.x.id, json!({"boardId": fx.b2}))
        .await
        .ok(200);
    let got = fx
        .expect(
            "task.updated (move b1 -> b2)",
            &[(
                "task.updated",
                &["b1", "b2", "taskX", "multi", "assigneeRooms"],
            )],
        )
        .await;
    let a = &got["b1"][0];
    assert_eq!(a["boardId"], json!(fx.b2), "boardId is the new board: {a}");
    assert_eq!(
        a["data"]["changes"]["boardId"],
        json!({"from": fx.b1, "to": fx.b2}),
        "{a}"
    );
    // Now on b2 only.
    fx.api
        .patch_task(fx.owner.token(), fx.x.id, json!({"priority": "high"}))
        .await
        .ok(200);
    fx.expect(
        "task.updated on b2",
        &[("task.updated", &["b2", "taskX", "multi", "assigneeRooms"])],
    )
    .await;
    // And back to b1.
    fx.api
        .patch_task(fx.owner.token(), fx.x.id, json!({"boardId": fx.b1}))
        .await
        .ok(200);
    fx.expect(
        "task.updated (move b2 -> b1)",
        &[(
            "task.updated",
            &["b1", "b2", "taskX", "multi", "assigneeRooms"],
        )],
    )
    .await;
    fx.assert_order();
}

async fn route_task_deleted(d: Deployment) {
    let mut fx = fixture(d).await;
    fx.api
        .delete(&format!("/api/v1/tasks/{}", fx.x.id), fx.owner.token())
        .await
        .ok(204);
    let got = fx
        .expect(
            "task.deleted",
            &[(
                "task.deleted",
                &["team", "b1", "taskX", "multi", "assigneeRooms"],
            )],
        )
        .await;
    let a = &got["taskX"][0];
    assert_eq!(a["taskId"], json!(fx.x.id));
    assert_eq!(a["data"]["taskId"], json!(fx.x.id), "{a}");
    assert_eq!(a["data"]["boardId"], json!(fx.b1), "{a}");
    fx.assert_order();
}

async fn route_task_assigned(d: Deployment) {
    let mut fx = fixture(d).await;
    let owner = fx.owner.token().to_string();
    fx.api
        .patch_task(&owner, fx.x.id, json!({"assigneeUserId": fx.assignee.id()}))
        .await
        .ok(200);
    let got = fx
        .expect(
            "assign X to the assignee",
            &[
                ("task.updated", &["b1", "taskX", "multi", "assigneeRooms"]),
                (
                    "task.assigned",
                    &["b1", "taskX", "multi", "assignee", "assigneeRooms"],
                ),
            ],
        )
        .await;
    let a = &got["assignee"][0];
    assert_eq!(a["type"], "task.assigned");
    assert_eq!(a["data"]["assigneeUserId"], json!(fx.assignee.id()), "{a}");
    assert!(a["data"]["previousAssigneeUserId"].is_null(), "{a}");
    assert_eq!(a["data"]["task"]["id"], json!(fx.x.id), "{a}");

    // Reassign to the owner (no sockets) while moving to b2: both boards; not the old assignee.
    fx.api
        .patch_task(
            &owner,
            fx.x.id,
            json!({"assigneeUserId": fx.owner.id(), "boardId": fx.b2}),
        )
        .await
        .ok(200);
    let got = fx
        .expect(
            "reassign + move",
            &[
                (
                    "task.updated",
                    &["b1", "b2", "taskX", "multi", "assigneeRooms"],
                ),
                (
                    "task.assigned",
                    &["b1", "b2", "taskX", "multi", "assigneeRooms"],
                ),
            ],
        )
        .await;
    let a = got["b1"]
        .iter()
        .find(|a| a["type"] == "task.assigned")
        .unwrap();
    assert_eq!(
        a["data"]["previousAssigneeUserId"],
        json!(fx.assignee.id()),
        "{a}"
    );
    assert_eq!(a["boardId"], json!(fx.b2), "{a}");

    // Unassign: task.assigned with null reaches the rooms only.
    fx.api
        .patch_task(&owner, fx.x.id, json!({"assigneeUserId": null}))
        .await
        .ok(200);
    let got = fx
        .expect(
            "unassign",
            &[
                ("task.updated", &["b2", "taskX", "multi", "assigneeRooms"]),
                ("task.assigned", &["b2", "taskX", "multi", "assigneeRooms"]),
            ],
        )
        .await;
    let a = got["b2"]
        .iter()
        .find(|a| a["type"] == "task.assigned")
        .unwrap();
    assert!(a["data"]["assigneeUserId"].is_null(), "{a}");

    // Created with an assignee: task.created + task.assigned (to the assignee's own sockets too).
    fx.api
        .create_task(
            &owner,
            fx.team.id,
            json!({"title": "born assigned", "assigneeUserId": fx.assignee.id()}),
        )
        .await;
    fx.expect(
        "create with assignee",
        &[
            ("task.created", &["team", "b1", "multi", "assigneeRooms"]),
            (
                "task.assigned",
                &["b1", "multi", "assignee", "assigneeRooms"],
            ),
        ],
    )
    .await;
    // The watcher (sockets in rooms, none in b2's task) is assigned a task on b2.
    fx.api
        .create_task(
            &owner,
            fx.team.id,
            json!({"title": "for the watcher", "boardId": fx.b2,
                   "assigneeUserId": fx.watcher.id()}),
        )
        .await;
    fx.expect(
        "create on b2 assigned to the watcher",
        &[
            ("task.created", &["team", "b2", "multi"]),
            (
                "task.assigned",
                // Every socket of the watcher: the ones in b2 by room, the others as its own.
                &["b2", "team", "b1", "taskX", "taskY", "multi", "otherTeam"],
            ),
        ],
    )
    .await;
    fx.assert_order();
}

async fn route_comments(d: Deployment) {
    let mut fx = fixture(d).await;
    let w = fx.watcher.token().to_string();
    let c = fx.api.comment(&w, fx.x.id, "first").await;
    let got = fx
        .expect(
            "comment.created",
            &[("comment.created", &["taskX", "multi", "assigneeRooms"])],
        )
        .await;
    let a = &got["taskX"][0];
    assert_eq!(a["taskId"], json!(fx.x.id), "{a}");
    assert_eq!(a["data"]["comment"]["id"], json!(c.id), "{a}");
    fx.api
        .patch(
            &format!("/api/v1/comments/{}", c.id),
            &w,
            json!({"body": "edited"}),
        )
        .await
        .ok(200);
    fx.expect(
        "comment.updated",
        &[("comment.updated", &["taskX", "multi", "assigneeRooms"])],
    )
    .await;
    fx.api
        .delete(&format!("/api/v1/comments/{}", c.id), &w)
        .await
        .ok(204);
    let got = fx
        .expect(
            "comment.deleted",
            &[("comment.deleted", &["taskX", "multi", "assigneeRooms"])],
        )
        .await;
    let a = &got["multi"][0];
    assert_eq!(a["data"]["commentId"], json!(c.id), "{a}");
    assert_eq!(a["data"]["taskId"], json!(fx.x.id), "{a}");
    fx.assert_order();
}

async fn route_members(d: Deployment) {
    let mut fx = fixture(d).await;
    let owner = fx.owner.token().to_string();
    let team = fx.team.id;
    fx.api
        .add_member(&owner, team, &fx.newbie.user.email, "viewer")
        .await;
    let got = fx
        .expect(
            "member.added",
            &[("member.added", &["team", "multi", "newbie"])],
        )
        .await;
    let a = &got["newbie"][0];
    assert_eq!(
        a["data"]["member"]["user"]["id"],
        json!(fx.newbie.id()),
        "{a}"
    );
    assert_eq!(a["data"]["member"]["role"], "viewer", "{a}");
    // The newbie now also watches the team room (on B and C): its own deliveries arrive once.
    // A socket subscribes; an SSE stream's scopes are fixed, so it is reopened with the team.
    match fx.d.transport {
        Transport::WebSocket => {
            for ws in fx.sockets("newbie") {
                ws.ws().subscribe(Scope::Team(team), None).await;
            }
        }
        Transport::Sse => {
            let newbie = fx.newbie.token().to_owned();
            fx.reopen("newbie", &newbie, &[Scope::Team(team)]).await;
        }
    }
    fx.api
        .patch(
            &format!("/api/v1/teams/{team}/members/{}", fx.newbie.id()),
            &owner,
            json!({"role": "admin"}),
        )
        .await
        .ok(200);
    fx.expect(
        "member.updated",
        &[("member.updated", &["team", "multi", "newbie"])],
    )
    .await;
    fx.api
        .delete(
            &format!("/api/v1/teams/{team}/members/{}", fx.newbie.id()),
            &owner,
        )
        .await
        .ok(204);
    // Over SSE the revocation ends the newbie's streams.
    fx.ending.push("newbie");
    let got = fx
        .expect(
            "member.removed",
            &[("member.removed", &["team", "multi", "newbie"])],
        )
        .await;
    assert_eq!(got["team"][0]["data"]["userId"], json!(fx.newbie.id()));
    // The newbie's team room was revoked on both clients; a stream then ends with `forbidden`.
    for ws in fx.sockets("newbie") {
        let revoked: Vec<&Value> = ws
            .frames()
            .iter()
            .filter(|f| f["type"] == "unsubscribed")
            .collect();
        assert_eq!(revoked.len(), 1, "{}: {revoked:?}", ws.label());
        assert_eq!(revoked[0]["teamId"], json!(team), "{}", revoked[0]);
        assert_eq!(revoked[0]["reason"], "membership_revoked", "{}", revoked[0]);
        if ws.transport() == Transport::Sse {
            expect_revoked_end(ws, team).await;
        }
    }
    // The assignee's role change: member.updated reaches its own sockets too.
    fx.api
        .patch(
            &format!("/api/v1/teams/{team}/members/{}", fx.assignee.id()),
            &owner,
            json!({"role": "viewer"}),
        )
        .await
        .ok(200);
    fx.expect(
        "member.updated (assignee)",
        &[(
            "member.updated",
            &["team", "multi", "assignee", "assigneeRooms"],
        )],
    )
    .await;
    fx.assert_order();
}

async fn route_team_and_board_activities(d: Deployment) {
    let mut fx = fixture(d).await;
    let owner = fx.owner.token().to_string();
    let team = fx.team.id;
    fx.api
        .patch(
            &format!("/api/v1/teams/{team}"),
            &owner,
            json!({"name": "Renamed"}),
        )
        .await
        .ok(200);
    let got = fx
        .expect("team.updated", &[("team.updated", &["team", "multi"])])
        .await;
    assert_eq!(got["team"][0]["data"]["team"]["name"], "Renamed");
    let nb = fx.api.create_board(&owner, team, "Third").await;
    let got = fx
        .expect("board.created", &[("board.created", &["team", "multi"])])
        .await;
    assert_eq!(got["team"][0]["boardId"], json!(nb.id));
    fx.api
        .patch(
            &format!("/api/v1/boards/{}", fx.b1),
            &owner,
            json!({"name": "B1 renamed"}),
        )
        .await
        .ok(200);
    fx.expect(
        "board.updated (b1)",
        &[("board.updated", &["team", "multi"])],
    )
    .await;
    fx.api
        .delete(&format!("/api/v1/boards/{}", nb.id), &owner)
        .await
        .ok(204);
    let got = fx
        .expect("board.deleted", &[("board.deleted", &["team", "multi"])])
        .await;
    assert_eq!(got["multi"][0]["data"]["boardId"], json!(nb.id));
    fx.assert_order();
    // Every instance still answers readiness.
    for i in 0..fx.d.len() {
        fx.d.client(i)
            .send("GET", "/readyz", None, None, &[])
            .await
            .ok(200);
    }
}

/// `label.*` reach the team room only (not another team's rooms); a task's new labels are a
/// `task.updated` routed as every task edit; deleting a label emits `label.deleted` alone (no
/// `task.updated` for the tasks it is taken off).
async fn route_labels(d: Deployment) {
    let mut fx = fixture(d).await;
    let owner = fx.owner.token().to_string();
    let team = fx.team.id;
    let l: Value = fx
        .api
        .post(
            &format!("/api/v1/teams/{team}/labels"),
            &owner,
            json!({"name": "Urgent", "color": "#FF0000"}),
        )
        .await
        .ok(201)
        .clone();
    let got = fx
        .expect("label.created", &[("label.created", &["team", "multi"])])
        .await;
    assert_eq!(got["team"][0]["data"]["label"], l);
    assert!(got["team"][0]["boardId"].is_null(), "{}", got["team"][0]);
    let label = l["id"].as_str().unwrap().to_owned();
    fx.api
        .patch(
            &format!("/api/v1/labels/{label}"),
            &owner,
            json!({"name": "Very urgent"}),
        )
        .await
        .ok(200);
    let got = fx
        .expect("label.updated", &[("label.updated", &["team", "multi"])])
        .await;
    assert_eq!(got["multi"][0]["data"]["label"]["name"], "Very urgent");
    fx.api
        .patch_task(&owner, fx.x.id, json!({"labelIds": [label]}))
        .await
        .ok(200);
    let got = fx
        .expect(
            "task.updated (labelIds)",
            &[("task.updated", &["b1", "taskX", "multi", "assigneeRooms"])],
        )
        .await;
    assert_eq!(
        got["taskX"][0]["data"]["changes"]["labelIds"],
        json!({"from": [], "to": [label]}),
        "{}",
        got["taskX"][0]
    );
    fx.api
        .delete(&format!("/api/v1/labels/{label}"), &owner)
        .await
        .ok(204);
    let got = fx
        .expect("label.deleted", &[("label.deleted", &["team", "multi"])])
        .await;
    assert_eq!(got["team"][0]["data"], json!({"labelId": label}));
    fx.assert_order();
}

// ---------------------------------------------------------------------------------------------
// Own deliveries (on every topology)
// ---------------------------------------------------------------------------------------------

/// The user's own deliveries (member.*, task.assigned) reach their clients on B and on C even
/// when no client at all is subscribed to anything of that team (across instances: when no
/// instance follows the team, through the user's channel). Over SSE the clients in no room are
/// streams of the inbox.
async fn own_deliveries_need_no_subscription(d: Deployment) {
    let api = d.client(0);
    let owner = api.new_user("Owner").await;
    let newbie = api.new_user("Newbie").await;
    let bystander = api.new_user("Bystander").await;
    let mut socks = Vec::new();
    for node in [1, 2] {
        let mut ws = d.open(node, newbie.token(), "newbie", &[]).await;
        ws.expect_pong().await;
        socks.push(ws);
    }
    let mut by = d.open(1, bystander.token(), "bystander", &[]).await;
    by.expect_pong().await;
    let team = api.create_team(owner.token(), "Unwatched").await;
    api.add_member(owner.token(), team.id, &newbie.user.email, "member")
        .await;
    let t = api
        .create_task(
            owner.token(),
            team.id,
            json!({"title": "for newbie", "assigneeUserId": newbie.id()}),
        )
        .await;
    api.patch(
        &format!("/api/v1/teams/{}/members/{}", team.id, newbie.id()),
        owner.token(),
        json!({"role": "admin"}),
    )
    .await
    .ok(200);
    api.delete(
        &format!("/api/v1/teams/{}/members/{}", team.id, newbie.id()),
        owner.token(),
    )
    .await
    .ok(204);
    let log = api.activity(owner.token(), team.id).await;
    let want: Vec<(String, i64)> = log
        .iter()
        .filter(|a| a.kind != "task.created")
        .map(|a| (a.kind.clone(), a.seq))
        .collect();
    assert_eq!(want.len(), 4, "{log:?}");
    for ws in socks.iter_mut() {
        let deadline = Instant::now() + T;
        let mut got: Vec<(String, i64)> = Vec::new();
        while got.len() < want.len() && Instant::now() < deadline {
            match ws.recv_timeout(Duration::from_millis(200)).await {
                Some(Frame::Json(v)) if is_logged_activity(&v) => {
                    let a = &v["activity"];
                    got.push((
                        a["type"].as_str().unwrap().to_string(),
                        a["seq"].as_i64().unwrap(),
                    ));
                }
                Some(f) if f.is_end() => panic!(
                    "{}: the connection ended ({f:?}) after receiving {got:?}",
                    ws.label()
                ),
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        got.extend(logged_activities(&ws.barrier().await).iter().map(|a| {
            (
                a["type"].as_str().unwrap().to_string(),
                a["seq"].as_i64().unwrap(),
            )
        }));
        assert_eq!(
            got,
            want,
            "{} ({d}): the member's own client (no subscriptions; nobody follows the team; \
             written on A) must receive member.added, task.assigned (task {}), member.updated, \
             member.removed, once each, in order",
            ws.label(),
            t.id
        );
    }
    let leaked = by.barrier().await;
    assert!(leaked.is_empty(), "bystander got {leaked:?}");
}

/// A user's own delivery must not be lost when the instance holding the user's client starts
/// following the team just after the activity committed (here: another client on that instance
/// joins the team right after the write returned: a socket subscribes, a new stream opens).
/// Repeated, as it is a race between the user's own copy and the instance's start of following
/// the team.
async fn own_delivery_survives_the_instance_starting_to_follow_the_team(d: Deployment) {
    const ROUNDS: usize = 30;
    let api = d.client(0);
    let owner = api.new_user("Owner").await;
    let u = api.new_user("Joiner").await;
    // The joiner's client on B is in no room: member.added reaches it as its own delivery.
    let mut own = d.open(1, u.token(), "joiner", &[]).await;
    own.expect_pong().await;
    // The owner's client on B joins each new team right after the member was added.
    let mut watchers: Vec<RtClient> = Vec::new();
    let mut want = Vec::new();
    for i in 0..ROUNDS {
        let team = api.create_team(owner.token(), &format!("join {i}")).await;
        api.add_member(owner.token(), team.id, &u.user.email, "member")
            .await;
        match d.transport {
            Transport::WebSocket => {
                if watchers.is_empty() {
                    watchers.push(d.open(1, owner.token(), "owner", &[]).await);
                }
                watchers[0].ws().subscribe_team(team.id, None).await;
            }
            Transport::Sse => {
                let scope = [Scope::Team(team.id)];
                watchers.push(d.open(1, owner.token(), "owner", &scope).await);
            }
        }
        want.push(team.id);
    }
    let mut got: Vec<Uuid> = Vec::new();
    let deadline = Instant::now() + T;
    while got.len() < ROUNDS && Instant::now() < deadline {
        if let Some(Frame::Json(v)) = own.recv_timeout(Duration::from_millis(200)).await
            && v["type"] == "activity"
            && v["activity"]["type"] == "member.added"
        {
            got.push(uuid_at(&v["activity"]["teamId"]).unwrap());
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for a in logged_activities(&own.barrier().await) {
        got.push(uuid_at(&a["teamId"]).unwrap());
    }
    let lost: Vec<usize> = (0..ROUNDS).filter(|i| !got.contains(&want[*i])).collect();
    let mut dup = got.clone();
    dup.sort();
    dup.dedup();
    assert_eq!(
        dup.len(),
        got.len(),
        "member.added delivered twice to the joiner's client ({d})"
    );
    assert!(
        lost.is_empty(),
        "the joiner's own client on B (no rooms; {d}) lost member.added in {} of {ROUNDS} rounds \
         (rounds {lost:?}): each time, another client on B joined the new team right after the \
         member was added on A",
        lost.len()
    );
}

fn uuid_at(v: &Value) -> Option<Uuid> {
    v.as_str().and_then(|s| s.parse().ok())
}

// ---------------------------------------------------------------------------------------------
// Order under concurrent writers
// ---------------------------------------------------------------------------------------------

/// Four writers at once in one team; one socket in every room of the team sees every activity
/// exactly once, with gapless increasing seqs.
async fn live_order_gapless_under_concurrent_writers(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let team = api.create_team(owner.token(), "Busy").await;
    let b2 = api.create_board(owner.token(), team.id, "B2").await.id;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let board = if i % 2 == 0 {
            team.default_board_id
        } else {
            b2
        };
        tasks.push(
            api.create_task(
                owner.token(),
                team.id,
                json!({"title": format!("t{i}"), "boardId": board}),
            )
            .await
            .id,
        );
    }
    let mut ws = srv.ws(owner.token()).await.labeled("everything");
    let start = ws.subscribe_team(team.id, None).await;
    ws.subscribe_board(team.default_board_id, None).await;
    ws.subscribe_board(b2, None).await;
    for t in &tasks {
        ws.subscribe_task(*t, None).await;
    }
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let api = api.clone();
        let tok = owner.token().to_string();
        let tasks = tasks.clone();
        let team_id = team.id;
        writers.push(tokio::spawn(async move {
            let mut rng = Rng::new(w + 1);
            for i in 0..40 {
                let t = *rng.pick(&tasks);
                match rng.below(3) {
                    0 => {
                        api.patch_task(&tok, t, json!({"title": format!("w{w} {i}")}))
                            .await
                            .ok(200);
                    }
                    1 => {
                        api.comment(&tok, t, &format!("w{w} {i}")).await;
                    }
                    _ => {
                        api.task(&tok, team_id, &format!("w{w} new {i}")).await;
                    }
                }
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    let end = api.team_seq(owner.token(), team.id).await;
    let n = usize::try_from(end - start).unwrap();
    assert_eq!(n, 160);
    let got = ws.activities(n, Duration::from_secs(30)).await;
    let extra = logged_activities(&ws.barrier().await);
    let seqs: Vec<i64> = got.iter().map(|a| a["seq"].as_i64().unwrap()).collect();
    assert_eq!(
        seqs,
        (start + 1..=end).collect::<Vec<_>>(),
        "live activities must arrive once each, gapless, in seq order"
    );
    assert!(extra.is_empty(), "extra (duplicate) activities: {extra:?}");
}

// ---------------------------------------------------------------------------------------------
// Presence
// ---------------------------------------------------------------------------------------------

pub(crate) fn presence_of(frames: &[Value]) -> Vec<(String, String)> {
    frames
        .iter()
        .filter(|f| is_presence(f))
        .map(|f| {
            let a = &f["activity"];
            (
                a["type"].as_str().unwrap().to_string(),
                a["data"]["userId"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

pub(crate) fn check_presence_shape(f: &Value, team: Uuid, task: Uuid, user: &AuthResponse) {
    let a = &f["activity"];
    assert_eq!(a["v"], 1, "{f}");
    assert_eq!(a["teamId"], json!(team), "{f}");
    assert_eq!(a["taskId"], json!(task), "{f}");
    assert_eq!(a["actorUserId"], json!(user.id()), "{f}");
    assert!(a.get("seq").is_none(), "presence has no seq: {f}");
    assert_eq!(
        a["data"],
        json!({"taskId": task, "userId": user.id(), "displayName": user.user.display_name}),
        "{f}"
    );
    assert_ts_millis(a["ts"].as_str().unwrap());
}

async fn presence_snapshot_joined_left(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Alice").await;
    let team = api.create_team(owner.token(), "Presence").await;
    let bob = api.member(owner.token(), team.id, "Bob", "member").await;
    let carol = api.member(owner.token(), team.id, "Carol", "viewer").await;
    let task = api.task(owner.token(), team.id, "pair").await;
    let room = Scope::Task(task.id);
    let entry = |u: &AuthResponse| json!({"userId": u.id(), "displayName": u.user.display_name, "state": "viewing"});
    let sorted = |mut v: Vec<&AuthResponse>| {
        v.sort_by_key(|u| u.id().to_string());
        Value::Array(v.into_iter().map(entry).collect())
    };

    let mut a = srv.ws(owner.token()).await.labeled("alice");
    let s = a.subscribe(room, None).await;
    assert_eq!(s.frame["presence"], sorted(vec![&owner]), "{}", s.frame);

    let mut b1 = srv.ws(bob.token()).await.labeled("bob-1");
    let s = b1.subscribe(room, None).await;
    assert_eq!(
        s.frame["presence"],
        sorted(vec![&owner, &bob]),
        "{}",
        s.frame
    );
    let (f, _) = a.wait_for("presence.joined bob", T, is_presence).await;
    assert_eq!(f["activity"]["type"], "presence.joined", "{f}");
    check_presence_shape(&f, team.id, task.id, &bob);
    let own = presence_of(&b1.barrier().await);
    assert!(
        own.is_empty(),
        "the joiner got presence about itself/others: {own:?}"
    );

    // Bob's second socket: still one presence; Alice hears nothing.
    let mut b2 = srv.ws(bob.token()).await.labeled("bob-2");
    let s = b2.subscribe(room, None).await;
    assert_eq!(
        s.frame["presence"],
        sorted(vec![&owner, &bob]),
        "one entry per user: {}",
        s.frame
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let extra = presence_of(&a.barrier().await);
    assert!(
        extra.is_empty(),
        "a second socket of Bob announced presence again: {extra:?}"
    );

    // Bob's first socket leaves: Bob is still there through the second.
    b1.unsubscribe(room).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let extra = presence_of(&a.barrier().await);
    assert!(
        extra.is_empty(),
        "presence.left while Bob still has a socket there: {extra:?}"
    );

    // Bob's last socket disconnects: presence.left.
    b2.close().await;
    let (f, _) = a.wait_for("presence.left bob", T, is_presence).await;
    assert_eq!(f["activity"]["type"], "presence.left", "{f}");
    check_presence_shape(&f, team.id, task.id, &bob);

    // Carol joins then unsubscribes: joined then left.
    let mut c = srv.ws(carol.token()).await.labeled("carol");
    let s = c.subscribe(room, None).await;
    assert_eq!(
        s.frame["presence"],
        sorted(vec![&owner, &carol]),
        "{}",
        s.frame
    );
    let (f, _) = a.wait_for("presence.joined carol", T, is_presence).await;
    assert_eq!(f["activity"]["type"], "presence.joined");
    check_presence_shape(&f, team.id, task.id, &carol);
    c.unsubscribe(room).await;
    let (f, _) = a.wait_for("presence.left carol", T, is_presence).await;
    assert_eq!(f["activity"]["type"], "presence.left");
    check_presence_shape(&f, team.id, task.id, &carol);
    // Carol again, this time dropping the TCP connection without a close handshake.
    let mut c2 = srv.ws(carol.token()).await.labeled("carol-2");
    c2.subscribe(room, None).await;
    let (f, _) = a.wait_for("presence.joined carol", T, is_presence).await;
    assert_eq!(f["activity"]["type"], "presence.joined");
    drop(c2);
    let (f, _) = a
        .wait_for("presence.left carol (dropped)", T, is_presence)
        .await;
    assert_eq!(f["activity"]["type"], "presence.left");
    check_presence_shape(&f, team.id, task.id, &carol);
    // Carol, no longer in the room, hears nothing about Alice leaving.
    a.unsubscribe(room).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let extra = presence_of(&c.barrier().await);
    assert!(extra.is_empty(), "{extra:?}");
    // Nothing duplicated overall on Alice's socket: exactly these four presence events.
    let all = presence_of(&a.frames);
    let kinds: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "presence.joined",
            "presence.left",
            "presence.joined",
            "presence.left",
            "presence.joined",
            "presence.left"
        ],
        "{all:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Revocation
// ---------------------------------------------------------------------------------------------

/// Over SSE, after the `unsubscribed` of a revoked team's scopes: `error forbidden` naming the
/// team and nothing else, then the stream ends.
async fn expect_revoked_end(ws: &mut RtClient, team: Uuid) {
    let (_, end) = ws.expect_end(T).await;
    assert_eq!(end, Frame::Dropped(SSE_ENDED.into()), "{}", ws.label());
    let frames = ws.frames();
    let last_unsubscribed = frames
        .iter()
        .rposition(|f| f["type"] == "unsubscribed")
        .unwrap_or_else(|| panic!("{}: no unsubscribed: {frames:?}", ws.label()));
    let after = &frames[last_unsubscribed + 1..];
    assert_eq!(
        after.len(),
        1,
        "{}: after the unsubscribed, one error then the end: {after:?}",
        ws.label()
    );
    assert_eq!(after[0]["type"], "error", "{}: {after:?}", ws.label());
    assert_eq!(after[0]["code"], "forbidden", "{}: {after:?}", ws.label());
    assert_eq!(after[0]["teamId"], json!(team), "{}: {after:?}", ws.label());
}

/// A member removed on A: their clients on B and C get `member.removed`, then one
/// `unsubscribed` (membership_revoked) per room of that team, and nothing of the team after it
/// (written on A and on C); the kept team still flows; joining again is forbidden on the old
/// clients and on a fresh one, with and without `since`.
///
/// A socket stays open and only leaves the team's rooms; an SSE stream (whose scopes are fixed)
/// ends with `error forbidden` after the `unsubscribed`, and its reconnect gets `forbidden` for
/// the team's scopes (403 when no other scope is left) and resumes the others.
async fn revocation_unsubscribes_and_stops_delivery(d: Deployment) {
    let api = d.client(0);
    let api_c = d.client(2);
    let owner = api.new_user("Owner").await;
    let team = api.create_team(owner.token(), "Revoke").await;
    let keep = api.create_team(owner.token(), "Keep").await;
    let m = api
        .member(owner.token(), team.id, "Mallory", "member")
        .await;
    api.add_member(owner.token(), keep.id, &m.user.email, "member")
        .await;
    let task = api.task(owner.token(), team.id, "watched").await;
    let board = team.default_board_id;
    let revoked = [
        Scope::Team(team.id),
        Scope::Board(board),
        Scope::Task(task.id),
    ];

    // Mallory on B (token in the query): team, board, task of the team, and the kept team.
    let mut m1 = d
        .open(
            1,
            m.token(),
            "m1",
            &[revoked[0], revoked[1], revoked[2], Scope::Team(keep.id)],
        )
        .await;
    // Mallory on C (token in the header): the task room.
    let task_only = [Scope::Task(task.id)];
    let mut m2 = d
        .try_open(
            2,
            Opening {
                header_auth: true,
                ..Opening::new(m.token(), "m2", &task_only)
            },
        )
        .await
        .unwrap_or_else(|r| panic!("{d}: m2 refused: {} {}", r.status, r.text));
    // The owner watches from C (task and team rooms).
    let mut o = d
        .open(
            2,
            owner.token(),
            "owner",
            &[Scope::Task(task.id), Scope::Team(team.id)],
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    m1.barrier().await;
    m2.barrier().await;
    o.barrier().await;
    let m1_start = m1.frames().len();
    let m2_start = m2.frames().len();

    api.delete(
        &format!("/api/v1/teams/{}/members/{}", team.id, m.id()),
        owner.token(),
    )
    .await
    .ok(204);

    let expected_rooms: Vec<(&str, Uuid)> =
        vec![("teamId", team.id), ("boardId", board), ("taskId", task.id)];
    let mut removed_seq = 0;
    for (ws, rooms) in [
        (&mut m1, expected_rooms.clone()),
        (&mut m2, vec![("taskId", task.id)]),
    ] {
        let (removed, before) = ws
            .wait_for("member.removed", T, |f| {
                f["type"] == "activity" && f["activity"]["type"] == "member.removed"
            })
            .await;
        assert!(
            logged_activities(&before).is_empty(),
            "{}: activities before member.removed: {before:?}",
            ws.label()
        );
        let a = &removed["activity"];
        assert_eq!(a["data"]["userId"], json!(m.id()));
        assert_eq!(a["teamId"], json!(team.id));
        removed_seq = a["seq"].as_i64().unwrap();
        // Then one unsubscribed (membership_revoked) per room of that team.
        let mut got = Vec::new();
        for _ in 0..rooms.len() {
            let f = ws.next_json().await;
            assert_eq!(
                f["type"],
                "unsubscribed",
                "{}: after member.removed expected unsubscribed frames, got {f}",
                ws.label()
            );
            assert_eq!(f["reason"], "membership_revoked", "{f}");
            let (k, id) = ["teamId", "boardId", "taskId"]
                .iter()
                .find_map(|k| f[*k].as_str().map(|id| (*k, id.to_string())))
                .unwrap();
            got.push((k, id));
        }
        got.sort();
        let mut want: Vec<(&str, String)> =
            rooms.iter().map(|(k, id)| (*k, id.to_string())).collect();
        want.sort();
        assert_eq!(got, want, "{} ({d}): rooms revoked", ws.label());
        if ws.transport() == Transport::Sse {
            expect_revoked_end(ws, team.id).await;
        }
    }
    // Others in the task room (the owner, on C): presence.left for Mallory.
    let (f, _) = o
        .wait_for("presence.left", T, |f| {
            is_presence(f) && f["activity"]["type"] == "presence.left"
        })
        .await;
    check_presence_shape(&f, team.id, task.id, &m);

    // More activity in the team (every room kind), written on A and on C, and in the kept team.
    api.task(owner.token(), team.id, "after removal").await;
    api_c
        .patch_task(owner.token(), task.id, json!({"title": "after"}))
        .await
        .ok(200);
    api.comment(owner.token(), task.id, "after").await;
    api_c
        .patch(
            &format!("/api/v1/teams/{}", team.id),
            owner.token(),
            json!({"name": "R2"}),
        )
        .await
        .ok(200);
    let kt = api.task(owner.token(), keep.id, "kept team").await;
    // The owner's team room proves the team's activities were dispatched.
    o.wait_for("team.updated", T, |f| {
        f["activity"]["type"] == "team.updated"
    })
    .await;
    // The kept team still flows: on the socket; over SSE on the stream's reconnect (with its
    // last event id, as the browser does), where the revoked team's scopes are forbidden and
    // the kept team resumes (its replay, before its `subscribed`, holds the new task).
    let mut m1_old = None;
    if m1.transport() == Transport::WebSocket {
        let (f, _) = m1
            .wait_for("the kept team's task.created", T, |f| {
                f["activity"]["type"] == "task.created"
            })
            .await;
        assert_eq!(f["activity"]["taskId"], json!(kt.id), "{f}");
    } else {
        let again = d
            .try_resume(1, &m1.resume_point(), "m1 reconnected")
            .await
            .unwrap_or_else(|r| panic!("{d}: m1's reconnect: {} {}", r.status, r.text));
        assert_eq!(
            again.subscribed.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![Scope::Team(keep.id)],
            "{d}: only the kept team is joined"
        );
        let mut refused: Vec<String> = again
            .errors
            .iter()
            .map(|e| {
                assert_eq!(e["code"], "forbidden", "{e}");
                e.to_string()
            })
            .collect();
        refused.sort();
        assert_eq!(
            refused.len(),
            3,
            "{d}: the revoked team's scopes: {refused:?}"
        );
        for s in revoked {
            assert!(
                again.errors.iter().any(|e| s.named_by(e)),
                "{d}: no forbidden for {s:?}: {refused:?}"
            );
        }
        let replay = &again.subscribed(Scope::Team(keep.id)).before;
        let kinds: Vec<(&Value, &Value)> =
            replay.iter().map(|a| (&a["type"], &a["taskId"])).collect();
        assert_eq!(
            kinds,
            vec![(&json!("task.created"), &json!(kt.id))],
            "{d}: the kept team's replay"
        );
        m1_old = Some(std::mem::replace(&mut m1, again));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    m1.barrier().await;
    if m2.transport() == Transport::WebSocket {
        m2.barrier().await;
    }
    let mut seen: Vec<(String, &[Value])> = vec![
        (m1.label().to_owned(), m1.frames()),
        (m2.label().to_owned(), &m2.frames()[m2_start..]),
    ];
    if let Some(old) = &m1_old {
        seen.push((old.label().to_owned(), &old.frames()[m1_start..]));
    } else {
        seen[0].1 = &m1.frames()[m1_start..];
    }
    for (label, frames) in seen {
        for f in frames {
            if f["type"] == "activity" && f["activity"]["teamId"] == json!(team.id) {
                let seq = f["activity"]["seq"].as_i64();
                assert!(
                    seq.is_some_and(|s| s <= removed_seq),
                    "{label}: received {f} of the team after member.removed (seq {removed_seq})"
                );
            }
        }
    }
    // Joining again is forbidden: on both old clients, and on a fresh one on C; with and
    // without since.
    let mut open: Vec<RtClient> = vec![m1];
    match d.transport {
        Transport::WebSocket => {
            let m3 = d.open(2, m.token(), "m3 (fresh)", &[]).await;
            open.push(m2);
            open.push(m3);
            for s in revoked {
                for ws in open.iter_mut() {
                    let e = ws
                        .ws()
                        .try_subscribe(s, None)
                        .await
                        .expect_err("revoked member resubscribed");
                    assert_eq!(e["code"], "forbidden", "{}: {e}", ws.label());
                    let e = ws
                        .ws()
                        .try_subscribe(s, Some(removed_seq - 1))
                        .await
                        .expect_err("revoked member resumed");
                    assert_eq!(e["code"], "forbidden", "{}: {e}", ws.label());
                }
            }
        }
        Transport::Sse => {
            // m2's reconnect: its only scope is forbidden, so the stream is refused.
            match d.try_resume(2, &m2.resume_point(), "m2 reconnected").await {
                Err(r) => {
                    r.problem(403, "forbidden");
                }
                Ok(_) => panic!("{d}: m2's stream of a revoked scope reopened"),
            }
            // A fresh stream, on C, with and without since: refused alone, an error each
            // beside the kept team.
            for start in [Start::Now, Start::Since(removed_seq - 1)] {
                for s in revoked {
                    let alone = [s];
                    let r = d
                        .try_open(
                            2,
                            Opening {
                                start,
                                ..Opening::new(m.token(), "m3 (fresh)", &alone)
                            },
                        )
                        .await;
                    match r {
                        Err(r) => {
                            r.problem(403, "forbidden");
                        }
                        Ok(_) => panic!("{d}: a fresh stream of {s:?} ({start:?}) opened"),
                    }
                }
            }
            let beside = [revoked[0], revoked[1], revoked[2], Scope::Team(keep.id)];
            let fresh = d
                .try_open(2, Opening::new(m.token(), "m3 (fresh)", &beside))
                .await
                .unwrap_or_else(|r| panic!("{d}: {} {}", r.status, r.text));
            assert_eq!(fresh.errors.len(), 3, "{d}: {:?}", fresh.errors);
            assert!(fresh.errors.iter().all(|e| e["code"] == "forbidden"));
            open.push(fresh);
        }
    }
    api.task(owner.token(), team.id, "after the refusals").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for ws in open.iter_mut() {
        let late: Vec<Value> = logged_activities(&ws.barrier().await)
            .into_iter()
            .filter(|a| a["teamId"] == json!(team.id))
            .collect();
        assert!(late.is_empty(), "{}: {late:?}", ws.label());
    }
}

/// A member leaving the team themself is revoked like a removal.
async fn self_removal_revokes_too(d: Deployment) {
    let api = d.client(0);
    let owner = api.new_user("Owner").await;
    let team = api.create_team(owner.token(), "Leave").await;
    let m = api.member(owner.token(), team.id, "Leaver", "member").await;
    let task = api.task(owner.token(), team.id, "t").await;
    let mut ws = d
        .open(
            0,
            m.token(),
            "leaver",
            &[Scope::Team(team.id), Scope::Task(task.id)],
        )
        .await;
    api.delete(
        &format!("/api/v1/teams/{}/members/{}", team.id, m.id()),
        m.token(),
    )
    .await
    .ok(204);
    let (removed, _) = ws
        .wait_for("member.removed", T, |f| {
            f["activity"]["type"] == "member.removed"
        })
        .await;
    let n = removed["activity"]["seq"].as_i64().unwrap();
    let mut revoked = Vec::new();
    for _ in 0..2 {
        let f = ws.next_json().await;
        assert_eq!(f["type"], "unsubscribed", "{f}");
        assert_eq!(f["reason"], "membership_revoked", "{f}");
        revoked.push(f);
    }
    if ws.transport() == Transport::Sse {
        expect_revoked_end(&mut ws, team.id).await;
        return;
    }
    api.comment(owner.token(), task.id, "after").await;
    api.task(owner.token(), team.id, "after").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = logged_activities(&ws.barrier().await);
    assert!(
        later.iter().all(|a| a["seq"].as_i64().unwrap() <= n),
        "activities after member.removed (seq {n}): {later:?}"
    );
}
