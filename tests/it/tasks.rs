//! Tasks: CRUD, defaults, validation limits, ETag / If-Match, filters, pagination, roles.

use crate::common::*;
use serde_json::{Value, json};
use uuid::Uuid;

both_backends!(
    create_task_defaults_and_etag,
    create_task_full_and_assigned_activity,
    create_task_validation,
    positions_increase_per_column,
    patch_task_versions_changes_and_nulls,
    if_match_preconditions,
    delete_task,
    task_roles,
    task_filters,
    task_pagination,
    task_limit_defaults_and_clamp,
);

struct Ctx {
    /// Keeps the server process alive for the test's duration.
    _srv: TestServer,
    api: Api,
    owner: AuthResponse,
    team: Team,
}

async fn setup(b: Backend) -> Ctx {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let team = api.create_team(owner.token(), "Tasks").await;
    Ctx {
        _srv: srv,
        api,
        owner,
        team,
    }
}

fn tasks_path(team: Uuid) -> String {
    format!("/api/v1/teams/{team}/tasks")
}

async fn create_task_defaults_and_etag(b: Backend) {
    let Ctx {
        _srv,
        api,
        owner,
        team,
    } = setup(b).await;
    let r = api
        .post(
            &tasks_path(team.id),
            owner.token(),
            json!({"title": "First"}),
        )
        .await;
    let t: Task = r.parse(201);
    assert_eq!(t.title, "First");
    assert_eq!(t.team_id, team.id);
    assert_eq!(
        t.board_id, team.default_board_id,
        "defaults to the default board"
    );
    assert_eq!(t.status, "todo");
    assert_eq!(t.priority, "none");
    assert_eq!(t.assignee_user_id, None);
    assert_eq!(t.due_date, None);
    assert!(t.description.as_deref().unwrap_or("").is_empty());
    assert_eq!(t.created_by, owner.user.id);
    assert_eq!(t.version, 1);
    assert_ts_millis(&t.created_at);
    assert_ts_millis(&t.updated_at);

    let r = api.get_task(owner.token(), t.id).await;
    let got: Task = r.parse(200);
    assert_eq!(got.id, t.id);
    assert_eq!(got.version, 1);
    assert_eq!(r.header("etag"), Some("\"1\""));
    assert_eq!(r.seq(), 1);

    let acts = api.activity(owner.token(), team.id).await;
    assert_eq!(acts.len(), 1);
    let a = &acts[0];
    assert_eq!(a.kind, "task.created");
    assert_eq!(a.seq, 1);
    assert_eq!(a.task_id, Some(t.id));
    assert_eq!(a.board_id, Some(team.default_board_id));
    assert_eq!(a.actor_user_id, owner.user.id);
    assert_eq!(a.data["task"]["id"], t.id.to_string());
    assert_eq!(a.data["task"]["version"], 1);

    api.get_task(owner.token(), Uuid::new_v4())
        .await
        .problem(404, "not_found");
    api.get("/api/v1/tasks/xyz", owner.token())
        .await
        .problem(400, "bad_request");
}

async fn create_task_full_and_assigned_activity(b: Backend) {
    let Ctx {
        _srv,
        api,
        owner,
        team,
    } = setup(b).await;
    let m = api.member(owner.token(), team.id, "M", "member").await;
    let board = api.create_board(owner.token(), team.id, "B").await;
    let body = json!({
        "title": "Full",
        "description": "All the fields",
        "boardId": board.id,
        "status": "in_progress",
        "priority": "urgent",
        "assigneeUserId": m.user.id,
        "dueDate": "2026-12-31",
        "position": 42.5,
    });
    let t = api.create_task(m.token(), team.id, body).await;
    assert_eq!(t.description.as_deref(), Some("All the fields"));
    assert_eq!(t.board_id, board.id);
    assert_eq!(t.status, "in_progress");
    assert_eq!(t.priority, "urgent");
    assert_eq!(t.assignee_user_id, Some(m.user.id));
    assert_eq!(t.due_date.as_deref(), Some("2026-12-31"));
    assert_eq!(t.position, 42.5);
    assert_eq!(t.created_by, m.user.id);

    let acts = api.activity_since(owner.token(), team.id, 2).await;
    let kinds: Vec<(&str, i64)> = acts.iter().map(|a| (a.kind.as_str(), a.seq)).collect();
    assert_eq!(kinds, [("task.created", 3), ("task.assigned", 4)]);
    let assigned = &acts[1];
    assert_eq!(assigned.task_id, Some(t.id));
    assert_eq!(assigned.board_id, Some(board.id));
    assert_eq!(assigned.data["assigneeUserId"], m.user.id.to_string());
    assert!(assigned.data["previousAssigneeUserId"].is_null());
    assert_eq!(assigned.data["task"]["id"], t.id.to_string());
    assert_eq!(acts[0].data["task"]["dueDate"], "2026-12-31");

    // All statuses and priorities of the contract are accepted.
    for s in ["todo", "in_progress", "done", "canceled"] {
        for p in ["none", "low", "medium", "high", "urgent"] {
            let t = api
                .create_task(
                    owner.token(),
                    team.id,
                    json!({"title": format!("{s}/{p}"), "status": s, "priority": p}),
                )
                .await;
            assert_eq!((t.status.as_str(), t.priority.as_str()), (s, p));
        }
    }
    // Explicit nulls for the nullable fields are fine.
    let t = api
        .create_task(
            owner.token(),
            team.id,
            json!({"title": "nulls", "assigneeUserId": null, "dueDate": null}),
        )
        .await;
    assert_eq!(t.assignee_user_id, None);
    assert_eq!(t.due_date, None);
}

async fn create_task_validation(b: Backend) {
    let Ctx {
        _srv,
        api,
        owner,
        team,
    } = setup(b).await;
    let tok = owner.token();
    let path = tasks_path(team.id);
    let outsider = api.new_user("Out").await;
    let other_team = api.create_team(outsider.token(), "Other").await;

    let post = |body: Value| {
        let api = api.clone();
        let path = path.clone();
        let tok = tok.to_string();
        async move { api.post(&path, &tok, body).await }
    };
    post(json!({"title": ""})).await.invalid("title");
    post(json!({})).await.problem(422, "validation_failed");
    post(json!({"title": 5}))
        .await
        .problem(422, "validation_failed");
    post(json!({"title": "😀".repeat(201)}))
        .await
        .invalid("title");
    post(json!({"title": "a".repeat(201)}))
        .await
        .invalid("title");
    let t: Task = post(json!({"title": "😀".repeat(200)})).await.parse(201);
    assert_eq!(t.title.chars().count(), 200);
    post(json!({"title": "d", "description": "é".repeat(20_001)}))
        .await
        .invalid("description");
    let t: Task = post(json!({"title": "d", "description": "é".repeat(20_000)}))
        .await
        .parse(201);
    assert_eq!(t.description.unwrap().chars().count(), 20_000);
    post(json!({"title": "s", "status": "blocked"}))
        .await
        .invalid("status");
    post(json!({"title": "s", "status": "TODO"}))
        .await
        .invalid("status");
    post(json!({"title": "p", "priority": "critical"}))
        .await
        .invalid("priority");
    for bad in [
        "2026-13-01",
        "2026-02-30",
        "tomorrow",
        "2026-1-1",
        "2026-01-01T00:00:00Z",
    ] {
        post(json!({"title": "d", "dueDate": bad}))
            .await
            .invalid("dueDate");
    }
    post(json!({"title": "a", "assigneeUserId": outsider.user.id}))
        .await
        .invalid("assigneeUserId");
    post(json!({"title": "a", "assigneeUserId": Uuid::new_v4()}))
        .await
        .invalid("assigneeUserId");
    post(json!({"title": "b", "boardId": other_team.default_board_id}))
        .await
        .invalid("boardId");
    post(json!({"title": "b", "boardId": Uuid::new_v4()}))
        .await
        .invalid("boardId");
    post(json!({"title": "b", "boardId": "not-a-uuid"}))
        .await
        .problem(422, "validation_failed");
    post(json!({"title": "p", "position": "first"}))
        .await
        .problem(422, "validation_failed");

    // Only the two successful creations were logged.
    let acts = api.activity(tok, team.id).await;
    assert_eq!(acts.len(), 2);
    assert!(acts.iter().all(|a| a.kind == "task.created"));
    assert_eq!(api.activity(outsider.token(), other_team.id).await.len(), 0);
}

async fn positions_increase_per_column(b: Backend) {
    let Ctx {
        _srv,
        api,
        owner,
        team,
    } = setup(b).await;
    let tok = owner.token();
    let mut todo = Vec::new();
    let mut done = Vec::new();
    for i in 0..4 {
        todo.push(api.task(tok, team.id, &format!("todo {i}")).await.position);
        let d = api
            .create_task(
                tok,
                team.id,
                json!({"title": format!("done {i}"), "status": "done"}),
            )
            .await;
        done.push(d.position);
    }
    assert!(
        todo.windows(2).all(|w| w[0] < w[1]),
        "default positions increase: {todo:?}"
    );
    assert!(done.windows(2).all(|w| w[0] < w[1]), "{done:?}");
    // An explicit position far ahead; the next default goes after it.
    let far = api
        .create_task(tok, team.id, json!({"title": "far", "position": 1.0e6}))
        .await;
    assert_eq!(far.position, 1.0e6);
    let next = api.task(tok, team.id, "next").await;
    assert!(
        next.position > far.position,
        "{} <= {}",
        next.position,
        far.position
    );
}

async fn patch_task_versions_changes_and_nulls(b: Backend) {
    let Ctx {
        _srv,
        api,
        owner,
        team,
    } = setup(b).await;
    let tok = owner.token();
    let m = api.member(tok, team.id, "M", "member").await;
    let board2 = api.create_board(tok, team.id, "B2").await;
    let t = api
        .create_task(
            tok,
            team.id,
            json!({"title": "orig", "dueDate": "2026-01-15", "priority": "low"}),
        )
        .await;
    let seq0 = api.team_seq(tok, team.id).await;

    // Change title only; same priority sent again is not a change.
    let r = api
        .patch_task(tok, t.id, json!({"title": "renamed", "priority": "low"}))
        .await;
    let v2: Task = r.parse(200);
    assert_eq!(r.header("etag"), Some("\"2\""));
    assert_eq!(v2.version, 2);
    assert_eq!(v2.title, "renamed");
    assert_eq!(v2.priority, "low");
    assert_eq!(v2.due_date.as_deref(), Some("2026-01-15"), "absent keeps");
    assert_eq!(v2.created_at, t.created_at);

    // Assign: task.updated + task.assigned.
    let v3: Task = api
        .patch_task(tok, t.id, json!({"assigneeUserId": m.user.id}))
        .await
        .parse(200);
    assert_eq!(v3.version, 3);
    assert_eq!(v3.assignee_user_id, Some(m.user.id));
    assert_eq!(v3.due_date.as_deref(), Some("2026-01-15"));

    // Null clears dueDate, absent assignee stays.
    let v4: Task = api
        .patch_task(tok, t.id, json!({"dueDate": null, "status": "done"}))
        .await
        .parse(200);
    assert_eq!(v4.version, 4);
    assert_eq!(v4.due_date, None);
    assert_eq!(v4.status, "done");
    assert_eq!(v4.assignee_user_id, Some(m.user.id));

    // Unassign (null) and move board.
    let v5: Task = api
        .patch_task(
            m.token(),
            t.id,
            json!({"assigneeUserId": null, "boardId": board2.id}),
        )
        .await
        .parse(200);
    assert_eq!(v5.version, 5);
    assert_eq!(v5.assignee_user_id, None);
    assert_eq!(v5.board_id, board2.id);

    // Description, position.
    let v6: Task = api
        .patch_task(tok, t.id, json!({"description": "words", "position": 7.0}))
        .await
        .parse(200);
    assert_eq!(v6.version, 6);
    assert_eq!(v6.description.as_deref(), Some("words"));
    assert_eq!(v6.position, 7.0);

    let r = api.get_task(m.token(), t.id).await;
    assert_eq!(r.header("etag"), Some("\"6\""));
    let got: Task = r.parse(200);
    assert_eq!(got.version, 6);
    assert_eq!(got.title, "renamed");
    assert_eq!(got.board_id, board2.id);

    let acts = api.activity_since(tok, team.id, seq0).await;
    let kinds: Vec<&str> = acts.iter().map(|a| a.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "task.updated",
            "task.updated",
            "task.assigned",
            "task.updated",
            "task.updated",
            "task.assigned",
            "task.updated"
        ]
    );
    let changes = |i: usize| acts[i].data["changes"].clone();
    assert_eq!(
        changes(0),
        json!({"title": {"from": "orig", "to": "renamed"}}),
        "only changed fields"
    );
    assert_eq!(acts[0].data["task"]["version"], 2);
    assert_eq!(
        changes(1),
        json!({"assigneeUserId": {"from": null, "to": m.user.id}})
    );
    assert_eq!(acts[2].data["assigneeUserId"], m.user.id.to_string());
    assert!(acts[2].data["previousAssigneeUserId"].is_null());
    assert_eq!(
        changes(3),
        json!({"dueDate": {"from": "2026-01-15", "to": null}, "status": {"from": "todo", "to": "done"}})
    );
    assert_eq!(
        changes(4),
        json!({
            "assigneeUserId": {"from": m.user.id, "to": null},
            "boardId": {"from": team.default_board_id, "to": board2.id},
        })
    );
    assert_eq!(
        acts[4].board_id,
        Some(board2.id),
        "a move carries the new board"
    );
    assert_eq!(acts[4].actor_user_id, m.user.id);
    assert!(
        acts[5].data["assigneeUserId"].is_null(),
        "unassign emits task.assigned to null"
    );
    assert_eq!(
        acts[5].data["previousAssigneeUserId"],
        m.user.id.to_string()
    );
    assert_eq!(acts[5].task_id, Some(t.id));
    let c6 = changes(6);
    let mut keys: Vec<&String> = c6.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["description", "position"], "{c6}");
    assert!(
        c6["description"]["from"].is_null() || c6["description"]["from"] == "",
        "{c6}"
    );
    assert_eq!(c6["description"]["to"], "words");
    assert_eq!(c6["position"]["from"].as_f64(), Some(t.position), "{c6}");
    assert_eq!(c6["position"]["to"].as_f64(), Some(7.0), "{c6}");

    // Validation on PATCH.
    let outsider = api.new_user("Out").await;
    let other = api.create_team(outsider.token(), "O").await;
    api.patch_task(tok, t.id, json!({"boardId": other.default_board_id}))
        .await
        .invalid("boardId");
    api.patch_task(tok, t.id, json!({"assigneeUserId": outsider.user.id}))
        .await
        .invalid("assigneeUserId");
    api.patch_task(tok, t.id, json!({"title": ""}))
        .await
        .invalid("title");
    api.patch_task(tok, t.id, json!({"title": null}))
        .await
        .problem(422, "validation_failed");
    api.patch_task(tok, t.id, json!({"title": "ü".repeat(201)}))
        .await
        .invalid("title");
    api.patch_task(tok, t.id, json!({"status": "later"}))
        .await
        .invalid("status");
    api.patch_task(tok, t.id, json!({"priority": "meh"}))
        .await
        .invalid("priority");
    api.patch_task(tok, t.id, json!({"dueDate": "31/12/2026"}))
        .await
        .invalid("dueDate");
    api.patch_task(tok, t.id, json!({"description": "x".repeat(20_001)}))
        .await
        .invalid("description");
    let after: Task = api.get_task(tok, t.id).await.parse(200);
    assert_eq!(after.version, 6, "failed PATCHes change nothing");
    assert_eq!(
        api.team_seq(tok, team.id).await,
        seq0 + 7,
        "failed PATCHes emit nothing"
    );
}

async fn if_match_preconditions(b: Backend) {
    let Ctx {
        _srv,
        api,
        owner,
        team,
    } = setup(b).await;
    let tok = owner.token();
    let t = api.task(tok, team.id, "etag").await;
    let path = format!("/api/v1/tasks/{}", t.id);
    let patch = |body: Value, etag: &'static str| {
        let api = api.clone();
        let path = path.clone();
        let tok = tok.to_string();
        async move {
            api.send(
                "PATCH",
                &path,
                Some(&tok),
                Some(&body),
                &[("if-match", etag)],
            )
            .await
        }
    };

    let r = patch(json!({"title": "v2"}), "\"1\"").await;
    assert_eq!(r.parse::<Task>(200).version, 2);
    assert_eq!(r.header("etag"), Some("\"2\""));

    let r = patch(json!({"title": "stale"}), "\"1\"").await;
    let p = r.problem(412, "precondition_failed");
    assert_eq!(p["currentVersion"], 2, "{}", r.text);

    let r = patch(json!({"title": "future"}), "\"9\"").await;
    r.problem(412, "precondition_failed");

    let r = patch(json!({"title": "v3"}), "\"2\"").await;
    let v3: Task = r.parse(200);
    assert_eq!(v3.version, 3);
    assert_eq!(v3.title, "v3");

    let got: Task = api.get_task(tok, t.id).await.parse(200);
    assert_eq!(got.title, "v3");
    // Without If-Match the PATCH is unconditional.
    let v4: Task = api
        .patch_task(tok, t.id, json!({"title": "v4"}))
        .await
        .parse(200);
    assert_eq!(v4.version, 4);
    let acts = api.activity(tok, team.id).await;
    assert_eq!(
        acts.iter().filter(|a| a.kind == "task.updated").count(),
        3,
        "412s emit nothing"
    );
}

async fn delete_task(b: Backend) {
    let Ctx {
        _srv,
        api,
        owner,
        team,
    } = setup(b).await;
    let tok = owner.token();
    let m = api.member(tok, team.id, "M", "member").await;
    let t = api.task(tok, team.id, "doomed").await;
    let path = format!("/api/v1/tasks/{}", t.id);
    // Members may delete anyone's task.
    let r = api.delete(&path, m.token()).await;
    r.ok(204);
    assert!(r.text.is_empty());
    api.get(&path, tok).await.problem(404, "not_found");
    api.patch(&path, tok, json!({"title": "x"}))
        .await
        .problem(404, "not_found");
    api.delete(&path, tok).await.problem(404, "not_found");
    api.get(&format!("{path}/comments"), tok)
        .await
        .problem(404, "not_found");
    api.post(&format!("{path}/comments"), tok, json!({"body": "x"}))
        .await
        .problem(404, "not_found");
    assert!(api.all_pages(tok, &tasks_path(team.id)).await.is_empty());
    let acts = api.activity(tok, team.id).await;
    let last = acts.last().unwrap();
    assert_eq!(last.kind, "task.deleted");
    assert_eq!(last.actor_user_id, m.user.id);
    assert_eq!(last.task_id, Some(t.id));
    assert_eq!(last.data["taskId"], t.id.to_string());
    assert_eq!(last.data["boardId"], team.default_board_id.to_string());
    api.delete(&format!("/api/v1/tasks/{}", Uuid::new_v4()), tok)
        .await
        .problem(404, "not_found");
}

async fn task_roles(b: Backend) {
    let Ctx {
        _srv,
        api,
        owner,
        team,
    } = setup(b).await;
    let tok = owner.token();
    let admin = api.member(tok, team.id, "A", "admin").await;
    let member = api.member(tok, team.id, "M", "member").await;
    let viewer = api.member(tok, team.id, "V", "viewer").await;
    let t = api.task(tok, team.id, "owned by owner").await;
    let path = format!("/api/v1/tasks/{}", t.id);
    let seq = api.team_seq(tok, team.id).await;

    api.post(&tasks_path(team.id), viewer.token(), json!({"title": "v"}))
        .await
        .problem(403, "forbidden");
    api.patch(&path, viewer.token(), json!({"title": "v"}))
        .await
        .problem(403, "forbidden");
    api.delete(&path, viewer.token())
        .await
        .problem(403, "forbidden");
    assert_eq!(api.team_seq(tok, team.id).await, seq);
    // Viewers read.
    api.get(&path, viewer.token()).await.ok(200);
    assert_eq!(
        api.all_pages(viewer.token(), &tasks_path(team.id))
            .await
            .len(),
        1
    );

    for (who, title) in [(&member, "by member"), (&admin, "by admin")] {
        let r: Task = api
            .patch(&path, who.token(), json!({"title": title}))
            .await
            .parse(200);
        assert_eq!(r.title, title);
        let own = api.task(who.token(), team.id, title).await;
        assert_eq!(own.created_by, who.user.id);
    }
    let by_member = api.task(member.token(), team.id, "mine").await;
    api.delete(&format!("/api/v1/tasks/{}", by_member.id), admin.token())
        .await
        .ok(204);
    api.delete(&path, member.token()).await.ok(204);
}

/// (task id, board id, status, assignee)
type Expect = (Uuid, Uuid, &'static str, Option<Uuid>);

async fn task_filters(b: Backend) {
    let Ctx {
        _srv,
        api,
        owner,
        team,
    } = setup(b).await;
    let tok = owner.token();
    let m = api.member(tok, team.id, "M", "member").await;
    let b2 = api.create_board(tok, team.id, "B2").await;
    let mut expect: Vec<Expect> = Vec::new();
    let combos = [
        (team.default_board_id, "todo", None),
        (team.default_board_id, "done", Some(m.user.id)),
        (b2.id, "todo", Some(m.user.id)),
        (b2.id, "in_progress", None),
        (b2.id, "todo", None),
        (team.default_board_id, "todo", Some(owner.user.id)),
    ];
    for (i, (board, status, assignee)) in combos.into_iter().enumerate() {
        let t = api
            .create_task(
                tok,
                team.id,
                json!({"title": format!("t{i}"), "boardId": board, "status": status, "assigneeUserId": assignee}),
            )
            .await;
        expect.push((t.id, board, status, assignee));
    }
    let query = |q: String| {
        let api = api.clone();
        let tok = tok.to_string();
        let path = format!("{}?{q}", tasks_path(team.id));
        async move {
            api.all_pages(&tok, &path)
                .await
                .iter()
                .map(|t| t["id"].as_str().unwrap().parse::<Uuid>().unwrap())
                .collect::<Vec<_>>()
        }
    };
    let want = |f: &dyn Fn(&Expect) -> bool| {
        expect
            .iter()
            .filter(|e| f(e))
            .map(|e| e.0)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        query(format!("boardId={}", b2.id)).await,
        want(&|e| e.1 == b2.id)
    );
    assert_eq!(query("status=todo".into()).await, want(&|e| e.2 == "todo"));
    assert_eq!(
        query(format!("assigneeUserId={}", m.user.id)).await,
        want(&|e| e.3 == Some(m.user.id))
    );
    assert_eq!(
        query(format!("boardId={}&status=todo", b2.id)).await,
        want(&|e| e.1 == b2.id && e.2 == "todo")
    );
    assert_eq!(
        query(format!(
            "boardId={}&status=done&assigneeUserId={}",
            team.default_board_id, m.user.id
        ))
        .await,
        want(&|e| e.1 == team.default_board_id && e.2 == "done" && e.3 == Some(m.user.id))
    );
    assert!(query("status=canceled".into()).await.is_empty());
    assert_eq!(
        query("limit=2".into()).await,
        want(&|_| true),
        "oldest first"
    );

    let r = api
        .get(&format!("{}?status=bogus", tasks_path(team.id)), tok)
        .await;
    r.problem(422, "validation_failed");
    let r = api
        .get(&format!("{}?boardId=nope", tasks_path(team.id)), tok)
        .await;
    assert!(
        r.status == 400 || r.status == 422,
        "malformed boardId filter: {} {}",
        r.status,
        r.text
    );
}

async fn task_pagination(b: Backend) {
    let Ctx {
        _srv,
        api,
        owner,
        team,
    } = setup(b).await;
    let tok = owner.token();
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(api.task(tok, team.id, &format!("p{i}")).await.id);
    }
    let path = tasks_path(team.id);
    let r = api.get(&format!("{path}?limit=3"), tok).await;
    assert_eq!(r.seq(), 7);
    let p1 = r.ok(200).clone();
    assert_eq!(p1["items"].as_array().unwrap().len(), 3);
    let c1 = p1["nextCursor"].as_str().expect("nextCursor on page 1");
    let p2 = api
        .get(&format!("{path}?limit=3&cursor={}", urlencode(c1)), tok)
        .await
        .ok(200)
        .clone();
    assert_eq!(p2["items"].as_array().unwrap().len(), 3);
    let c2 = p2["nextCursor"].as_str().expect("nextCursor on page 2");
    let p3 = api
        .get(&format!("{path}?limit=3&cursor={}", urlencode(c2)), tok)
        .await
        .ok(200)
        .clone();
    assert_eq!(p3["items"].as_array().unwrap().len(), 1);
    assert!(p3["nextCursor"].is_null(), "last page has nextCursor null");
    let got: Vec<Uuid> = [&p1, &p2, &p3]
        .iter()
        .flat_map(|p| p["items"].as_array().unwrap().clone())
        .map(|t| t["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(got, ids, "every task exactly once, oldest first");

    // Exactly-full last page.
    let all = api.all_pages(tok, &format!("{path}?limit=7")).await;
    assert_eq!(all.len(), 7);

    for bad in [
        "limit=0",
        "limit=-1",
        "limit=abc",
        "limit=1.5",
        "cursor=garbage!!",
        "cursor=AAAA",
    ] {
        api.get(&format!("{path}?{bad}"), tok)
            .await
            .problem(422, "validation_failed");
    }
}

async fn task_limit_defaults_and_clamp(b: Backend) {
    let Ctx {
        _srv,
        api,
        owner,
        team,
    } = setup(b).await;
    let tok = owner.token();
    // 205 tasks, created by 8 concurrent writers.
    let mut handles = Vec::new();
    for w in 0..8 {
        let api = api.clone();
        let tok = tok.to_string();
        let team = team.id;
        handles.push(tokio::spawn(async move {
            for i in (w..205).step_by(8) {
                api.task(&tok, team, &format!("bulk {i}")).await;
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let path = tasks_path(team.id);
    let r = api.get(&path, tok).await;
    assert_eq!(
        r.ok(200)["items"].as_array().unwrap().len(),
        50,
        "default limit 50"
    );
    assert!(r.json["nextCursor"].is_string());
    let r = api.get(&format!("{path}?limit=1000"), tok).await;
    assert_eq!(
        r.ok(200)["items"].as_array().unwrap().len(),
        200,
        "limit clamped to 200"
    );
    let c = r.json["nextCursor"].as_str().expect("more after 200");
    let r = api
        .get(&format!("{path}?limit=1000&cursor={}", urlencode(c)), tok)
        .await;
    assert_eq!(r.ok(200)["items"].as_array().unwrap().len(), 5);
    assert!(r.json["nextCursor"].is_null());
    let mut all: Vec<String> = api
        .all_pages(tok, &format!("{path}?limit=200"))
        .await
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(all.len(), 205);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 205, "no duplicates across pages");
    assert_eq!(api.activity(tok, team.id).await.len(), 205);
}
