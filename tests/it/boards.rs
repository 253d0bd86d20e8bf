//! Boards: create, list, rename, delete, with role rules and activities.

use crate::common::*;
use serde_json::json;
use uuid::Uuid;

both_backends!(board_lifecycle, board_roles_and_validation);

async fn board_lifecycle(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let team = api.create_team(owner.token(), "T").await;
    let member = api.member(owner.token(), team.id, "M", "member").await;
    let boards = format!("/api/v1/teams/{}/boards", team.id);

    let board: Board = api
        .post(&boards, member.token(), json!({"name": "Sprint 1"}))
        .await
        .parse(201);
    assert_eq!(board.team_id, team.id);
    assert_eq!(board.name, "Sprint 1");
    assert_ts_millis(&board.created_at);
    assert_ne!(board.id, team.default_board_id);

    let r = api.get(&boards, member.token()).await;
    assert_eq!(r.seq(), 2);
    let ids: Vec<&str> = r.ok(200)["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&board.id.to_string().as_str()));
    assert!(ids.contains(&team.default_board_id.to_string().as_str()));
    assert_eq!(
        api.all_pages(owner.token(), &format!("{boards}?limit=1"))
            .await
            .len(),
        2
    );

    let renamed: Board = api
        .patch(
            &format!("/api/v1/boards/{}", board.id),
            member.token(),
            json!({"name": "Sprint 2"}),
        )
        .await
        .parse(200);
    assert_eq!(renamed.name, "Sprint 2");
    assert_eq!(renamed.id, board.id);
    let default_renamed: Board = api
        .patch(
            &format!("/api/v1/boards/{}", team.default_board_id),
            owner.token(),
            json!({"name": "Inbox"}),
        )
        .await
        .parse(200);
    assert_eq!(default_renamed.name, "Inbox");

    // The default board cannot be deleted; a board with tasks cannot be deleted.
    api.delete(
        &format!("/api/v1/boards/{}", team.default_board_id),
        owner.token(),
    )
    .await
    .problem(409, "conflict");
    let busy = api.create_board(owner.token(), team.id, "Busy").await;
    let task = api
        .create_task(
            owner.token(),
            team.id,
            json!({"title": "t", "boardId": busy.id}),
        )
        .await;
    assert_eq!(task.board_id, busy.id);
    api.delete(&format!("/api/v1/boards/{}", busy.id), owner.token())
        .await
        .problem(409, "conflict");
    // Once empty it can go.
    api.delete(&format!("/api/v1/tasks/{}", task.id), owner.token())
        .await
        .ok(204);
    api.delete(&format!("/api/v1/boards/{}", busy.id), owner.token())
        .await
        .ok(204);

    let r = api
        .delete(&format!("/api/v1/boards/{}", board.id), owner.token())
        .await;
    r.ok(204);
    assert!(r.text.is_empty());
    api.delete(&format!("/api/v1/boards/{}", board.id), owner.token())
        .await
        .problem(404, "not_found");
    api.patch(
        &format!("/api/v1/boards/{}", board.id),
        owner.token(),
        json!({"name": "zombie"}),
    )
    .await
    .problem(404, "not_found");
    api.create_task(owner.token(), team.id, json!({"title": "x"}))
        .await;
    api.post(
        &format!("/api/v1/teams/{}/tasks", team.id),
        owner.token(),
        json!({"title": "x", "boardId": board.id}),
    )
    .await
    .invalid("boardId");

    let left = api.all_pages(owner.token(), &boards).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["id"], team.default_board_id.to_string());

    let acts = api.activity(owner.token(), team.id).await;
    let kinds: Vec<&str> = acts.iter().map(|a| a.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "member.added",
            "board.created",
            "board.updated",
            "board.updated",
            "board.created",
            "task.created",
            "task.deleted",
            "board.deleted",
            "board.deleted",
            "task.created",
        ]
    );
    assert_eq!(acts[1].board_id, Some(board.id));
    assert_eq!(acts[1].data["board"]["name"], "Sprint 1");
    assert_eq!(acts[1].actor_user_id, member.user.id);
    assert_eq!(acts[2].data["board"]["name"], "Sprint 2");
    assert_eq!(acts[2].board_id, Some(board.id));
    assert_eq!(acts[3].board_id, Some(team.default_board_id));
    assert_eq!(acts[7].board_id, Some(busy.id));
    assert_eq!(acts[7].data["boardId"], busy.id.to_string());
    assert_eq!(acts[8].data["boardId"], board.id.to_string());
}

async fn board_roles_and_validation(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let team = api.create_team(owner.token(), "T").await;
    let admin = api.member(owner.token(), team.id, "A", "admin").await;
    let member = api.member(owner.token(), team.id, "M", "member").await;
    let viewer = api.member(owner.token(), team.id, "V", "viewer").await;
    let boards = format!("/api/v1/teams/{}/boards", team.id);
    let board = api.create_board(owner.token(), team.id, "B").await;
    let bp = format!("/api/v1/boards/{}", board.id);
    let seq = api.team_seq(owner.token(), team.id).await;

    api.post(&boards, viewer.token(), json!({"name": "no"}))
        .await
        .problem(403, "forbidden");
    api.patch(&bp, viewer.token(), json!({"name": "no"}))
        .await
        .problem(403, "forbidden");
    api.delete(&bp, viewer.token())
        .await
        .problem(403, "forbidden");
    api.delete(&bp, member.token())
        .await
        .problem(403, "forbidden");
    // Viewers read.
    api.get(&boards, viewer.token()).await.ok(200);

    api.post(&boards, owner.token(), json!({"name": ""}))
        .await
        .invalid("name");
    api.post(&boards, owner.token(), json!({"name": "b".repeat(101)}))
        .await
        .invalid("name");
    api.post(&boards, owner.token(), json!({}))
        .await
        .problem(422, "validation_failed");
    api.patch(&bp, owner.token(), json!({"name": ""}))
        .await
        .invalid("name");
    api.patch(&bp, owner.token(), json!({"name": "ж".repeat(101)}))
        .await
        .invalid("name");
    assert_eq!(api.team_seq(owner.token(), team.id).await, seq);

    let name = "ж".repeat(100);
    let b2 = api.create_board(member.token(), team.id, &name).await;
    assert_eq!(b2.name, name);
    api.patch(&bp, admin.token(), json!({"name": "renamed"}))
        .await
        .ok(200);
    api.delete(&bp, admin.token()).await.ok(204);

    // Unknown and malformed ids.
    api.patch(
        &format!("/api/v1/boards/{}", Uuid::new_v4()),
        owner.token(),
        json!({"name": "x"}),
    )
    .await
    .problem(404, "not_found");
    api.delete(&format!("/api/v1/boards/{}", Uuid::new_v4()), owner.token())
        .await
        .problem(404, "not_found");
    api.delete("/api/v1/boards/123", owner.token())
        .await
        .problem(400, "bad_request");
    assert_eq!(api.team_seq(owner.token(), team.id).await, seq + 3);
}
