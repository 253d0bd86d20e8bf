//! Cross-team isolation: every id-bearing endpoint used with another team's ids answers 404
//! (never 403), even for the owner of a different team, and nothing changes on the other side.

use crate::common::*;
use serde_json::json;

both_backends!(other_teams_ids_are_404, other_teams_ids_in_bodies_are_422);

async fn other_teams_ids_are_404(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    // Team B with a full set of resources.
    let bo = api.new_user("B owner").await;
    let team_b = api.create_team(bo.token(), "B").await;
    let bm = api
        .member(bo.token(), team_b.id, "B member", "member")
        .await;
    let board_b = api.create_board(bo.token(), team_b.id, "B board").await;
    let task_b = api.task(bo.token(), team_b.id, "B task").await;
    let comment_b = api.comment(bo.token(), task_b.id, "B comment").await;
    let seq_b = api.team_seq(bo.token(), team_b.id).await;

    // Attacker: owner of their own team A.
    let a = api.new_user("A owner").await;
    let team_a = api.create_team(a.token(), "A").await;
    api.task(a.token(), team_a.id, "A task").await;
    let tok = a.token();

    let tb = team_b.id;
    let cases: Vec<(&str, String, Option<serde_json::Value>)> = vec![
        ("GET", format!("/api/v1/teams/{tb}"), None),
        (
            "PATCH",
            format!("/api/v1/teams/{tb}"),
            Some(json!({"name": "pwn"})),
        ),
        ("GET", format!("/api/v1/teams/{tb}/members"), None),
        (
            "POST",
            format!("/api/v1/teams/{tb}/members"),
            Some(json!({"email": a.user.email, "role": "admin"})),
        ),
        (
            "POST",
            format!("/api/v1/teams/{tb}/members"),
            Some(json!({"userId": a.user.id, "role": "admin"})),
        ),
        (
            "PATCH",
            format!("/api/v1/teams/{tb}/members/{}", bm.user.id),
            Some(json!({"role": "viewer"})),
        ),
        (
            "DELETE",
            format!("/api/v1/teams/{tb}/members/{}", bm.user.id),
            None,
        ),
        (
            "DELETE",
            format!("/api/v1/teams/{tb}/members/{}", bo.user.id),
            None,
        ),
        ("GET", format!("/api/v1/teams/{tb}/boards"), None),
        (
            "POST",
            format!("/api/v1/teams/{tb}/boards"),
            Some(json!({"name": "x"})),
        ),
        (
            "PATCH",
            format!("/api/v1/boards/{}", board_b.id),
            Some(json!({"name": "x"})),
        ),
        ("DELETE", format!("/api/v1/boards/{}", board_b.id), None),
        (
            "DELETE",
            format!("/api/v1/boards/{}", team_b.default_board_id),
            None,
        ),
        ("GET", format!("/api/v1/teams/{tb}/tasks"), None),
        (
            "POST",
            format!("/api/v1/teams/{tb}/tasks"),
            Some(json!({"title": "x"})),
        ),
        ("GET", format!("/api/v1/tasks/{}", task_b.id), None),
        (
            "PATCH",
            format!("/api/v1/tasks/{}", task_b.id),
            Some(json!({"title": "x"})),
        ),
        ("DELETE", format!("/api/v1/tasks/{}", task_b.id), None),
        ("GET", format!("/api/v1/tasks/{}/comments", task_b.id), None),
        (
            "POST",
            format!("/api/v1/tasks/{}/comments", task_b.id),
            Some(json!({"body": "x"})),
        ),
        (
            "PATCH",
            format!("/api/v1/comments/{}", comment_b.id),
            Some(json!({"body": "x"})),
        ),
        ("DELETE", format!("/api/v1/comments/{}", comment_b.id), None),
        ("GET", format!("/api/v1/teams/{tb}/activity"), None),
        ("GET", format!("/api/v1/teams/{tb}/activity?since=0"), None),
        // Mixing ids: team A's path with team B's member.
        (
            "PATCH",
            format!("/api/v1/teams/{}/members/{}", team_a.id, bm.user.id),
            Some(json!({"role": "viewer"})),
        ),
        (
            "DELETE",
            format!("/api/v1/teams/{}/members/{}", team_a.id, bm.user.id),
            None,
        ),
    ];
    for (method, path, body) in &cases {
        let r = api.send(method, path, Some(tok), body.as_ref(), &[]).await;
        assert_eq!(
            r.status, 404,
            "{method} {path} with another team's ids: expected 404, got {}: {}",
            r.status, r.text
        );
        r.problem(404, "not_found");
    }
    // A task of B with If-Match is still 404, not 412.
    let r = api
        .send(
            "PATCH",
            &format!("/api/v1/tasks/{}", task_b.id),
            Some(tok),
            Some(&json!({"title": "x"})),
            &[("if-match", "\"99\"")],
        )
        .await;
    r.problem(404, "not_found");

    // Nothing happened in team B, and its resources are intact.
    assert_eq!(api.team_seq(bo.token(), team_b.id).await, seq_b);
    let t: Task = api.get_task(bm.token(), task_b.id).await.parse(200);
    assert_eq!(t.title, "B task");
    assert_eq!(t.version, 1);
    let comments = api
        .all_pages(bm.token(), &format!("/api/v1/tasks/{}/comments", task_b.id))
        .await;
    assert_eq!(comments.len(), 1);
    assert_eq!(comments[0]["body"], "B comment");
    let members = api
        .all_pages(bo.token(), &format!("/api/v1/teams/{tb}/members"))
        .await;
    assert_eq!(members.len(), 2);
    // A's lists never show B's data.
    let teams = api.all_pages(tok, "/api/v1/teams").await;
    assert_eq!(teams.len(), 1);
    assert_eq!(teams[0]["id"], team_a.id.to_string());
    let tasks = api
        .all_pages(tok, &format!("/api/v1/teams/{}/tasks", team_a.id))
        .await;
    assert_eq!(tasks.len(), 1);
    assert!(
        api.activity(tok, team_a.id)
            .await
            .iter()
            .all(|x| x.team_id == team_a.id)
    );
}

async fn other_teams_ids_in_bodies_are_422(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let bo = api.new_user("B owner").await;
    let team_b = api.create_team(bo.token(), "B").await;
    let board_b = api.create_board(bo.token(), team_b.id, "B board").await;
    let a = api.new_user("A owner").await;
    let team_a = api.create_team(a.token(), "A").await;
    let tok = a.token();
    let t = api.task(tok, team_a.id, "t").await;

    let tasks = format!("/api/v1/teams/{}/tasks", team_a.id);
    api.post(&tasks, tok, json!({"title": "x", "boardId": board_b.id}))
        .await
        .invalid("boardId");
    api.post(
        &tasks,
        tok,
        json!({"title": "x", "boardId": team_b.default_board_id}),
    )
    .await
    .invalid("boardId");
    api.post(
        &tasks,
        tok,
        json!({"title": "x", "assigneeUserId": bo.user.id}),
    )
    .await
    .invalid("assigneeUserId");
    api.patch_task(tok, t.id, json!({"boardId": board_b.id}))
        .await
        .invalid("boardId");
    api.patch_task(tok, t.id, json!({"assigneeUserId": bo.user.id}))
        .await
        .invalid("assigneeUserId");
    let got: Task = api.get_task(tok, t.id).await.parse(200);
    assert_eq!(got.board_id, team_a.default_board_id);
    assert_eq!(got.version, 1);
    assert_eq!(api.team_seq(tok, team_a.id).await, 1);
    assert_eq!(api.team_seq(bo.token(), team_b.id).await, 1);
}
