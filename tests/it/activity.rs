//! The activity log: shape, types, order, `since`, pagination, 410, and `X-TaskForge-Seq`.

use std::collections::HashSet;

use crate::common::*;
use serde_json::json;
use uuid::Uuid;

both_backends!(
    activity_log_types_shape_and_order,
    activity_since_and_pagination,
    seq_header_tracks_latest_seq,
);

async fn activity_log_types_shape_and_order(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let tok = owner.token();
    let team = api.create_team(tok, "Log").await;
    let m = api.member(tok, team.id, "M", "member").await;
    api.patch(
        &format!("/api/v1/teams/{}/members/{}", team.id, m.user.id),
        tok,
        json!({"role": "admin"}),
    )
    .await
    .ok(200);
    api.patch(
        &format!("/api/v1/teams/{}", team.id),
        tok,
        json!({"name": "Log2"}),
    )
    .await
    .ok(200);
    let board = api.create_board(tok, team.id, "B").await;
    api.patch(
        &format!("/api/v1/boards/{}", board.id),
        tok,
        json!({"name": "B2"}),
    )
    .await
    .ok(200);
    let t = api
        .create_task(
            m.token(),
            team.id,
            json!({"title": "t", "boardId": board.id, "assigneeUserId": owner.user.id}),
        )
        .await;
    api.patch_task(tok, t.id, json!({"status": "done"}))
        .await
        .ok(200);
    let c = api.comment(tok, t.id, "c").await;
    api.patch(
        &format!("/api/v1/comments/{}", c.id),
        tok,
        json!({"body": "c2"}),
    )
    .await
    .ok(200);
    api.delete(&format!("/api/v1/comments/{}", c.id), tok)
        .await
        .ok(204);
    api.delete(&format!("/api/v1/tasks/{}", t.id), tok)
        .await
        .ok(204);
    api.delete(&format!("/api/v1/boards/{}", board.id), tok)
        .await
        .ok(204);
    api.delete(
        &format!("/api/v1/teams/{}/members/{}", team.id, m.user.id),
        tok,
    )
    .await
    .ok(204);

    let r = api
        .get(&format!("/api/v1/teams/{}/activity", team.id), tok)
        .await;
    let items = r.ok(200)["items"].as_array().unwrap().clone();
    assert!(r.json["nextCursor"].is_null());
    let expected = [
        ("member.added", None, None),
        ("member.updated", None, None),
        ("team.updated", None, None),
        ("board.created", Some(board.id), None),
        ("board.updated", Some(board.id), None),
        ("task.created", Some(board.id), Some(t.id)),
        ("task.assigned", Some(board.id), Some(t.id)),
        ("task.updated", Some(board.id), Some(t.id)),
        ("comment.created", None, Some(t.id)),
        ("comment.updated", None, Some(t.id)),
        ("comment.deleted", None, Some(t.id)),
        ("task.deleted", Some(board.id), Some(t.id)),
        ("board.deleted", Some(board.id), None),
        ("member.removed", None, None),
    ];
    assert_eq!(items.len(), expected.len(), "{}", r.text);
    let mut ids = HashSet::new();
    for (i, (raw, (kind, board_id, task_id))) in items.iter().zip(expected).enumerate() {
        let a: Activity = serde_json::from_value(raw.clone()).unwrap();
        assert_eq!(a.kind, kind, "activity #{i}: {raw}");
        assert_eq!(a.seq, i as i64 + 1, "seqs 1..N in order: {raw}");
        assert_eq!(a.v, 1);
        assert_eq!(a.team_id, team.id);
        assert!(ids.insert(a.id), "duplicate activity id {}", a.id);
        assert_ts_millis(&a.ts);
        if let Some(bid) = board_id {
            assert_eq!(a.board_id, Some(bid), "boardId of {kind}: {raw}");
        }
        if let Some(tid) = task_id {
            assert_eq!(a.task_id, Some(tid), "taskId of {kind}: {raw}");
        }
        assert!(a.data.is_object(), "data is an object: {raw}");
        let actor = if matches!(kind, "task.created" | "task.assigned") {
            m.user.id
        } else {
            owner.user.id
        };
        assert_eq!(a.actor_user_id, actor, "actor of {kind}");
    }
    // Timestamps never go backwards.
    let ts: Vec<&str> = items.iter().map(|a| a["ts"].as_str().unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{ts:?}");
    assert_eq!(items[2]["data"]["team"]["name"], "Log2");
    assert_eq!(items[4]["data"]["board"]["name"], "B2");
    assert_eq!(items[5]["data"]["task"]["id"], t.id.to_string());
    assert_eq!(
        items[7]["data"]["changes"],
        json!({"status": {"from": "todo", "to": "done"}})
    );
    assert_eq!(items[7]["data"]["task"]["status"], "done");
    assert_eq!(items[7]["data"]["task"]["version"], 2);
    assert_eq!(items[11]["data"]["taskId"], t.id.to_string());
    assert_eq!(items[11]["data"]["boardId"], board.id.to_string());
    assert_eq!(items[12]["data"]["boardId"], board.id.to_string());
    assert_eq!(items[13]["data"]["userId"], m.user.id.to_string());

    // Removed members no longer read the log; outsiders never did.
    api.get(&format!("/api/v1/teams/{}/activity", team.id), m.token())
        .await
        .problem(404, "not_found");
    api.get(&format!("/api/v1/teams/{}/activity", Uuid::new_v4()), tok)
        .await
        .problem(404, "not_found");
}

async fn activity_since_and_pagination(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let tok = owner.token();
    let team = api.create_team(tok, "T").await;
    let base = format!("/api/v1/teams/{}/activity", team.id);

    // An empty log: since=0 is fine, anything above is 410.
    let r = api.get(&format!("{base}?since=0"), tok).await;
    assert_eq!(r.ok(200)["items"], json!([]));
    assert_eq!(r.seq(), 0);
    api.get(&format!("{base}?since=1"), tok)
        .await
        .problem(410, "resume_unavailable");

    for i in 0..9 {
        api.task(tok, team.id, &format!("t{i}")).await;
    }
    let seqs = |v: &[Activity]| v.iter().map(|a| a.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(&api.activity(tok, team.id).await),
        (1..=9).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(&api.activity_since(tok, team.id, 4).await),
        (5..=9).collect::<Vec<_>>(),
        "since is exclusive"
    );
    assert!(api.activity_since(tok, team.id, 9).await.is_empty());
    api.get(&format!("{base}?since=10"), tok)
        .await
        .problem(410, "resume_unavailable");
    api.get(&format!("{base}?since=1000000"), tok)
        .await
        .problem(410, "resume_unavailable");
    api.get(&format!("{base}?since=-1"), tok)
        .await
        .problem(422, "validation_failed");
    api.get(&format!("{base}?since=abc"), tok)
        .await
        .problem(422, "validation_failed");

    // Pages of 2 from since=2: 3,4 | 5,6 | 7,8 | 9.
    let r = api.get(&format!("{base}?since=2&limit=2"), tok).await;
    let page = r.ok(200);
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["items"][0]["seq"], 3);
    let all = api.all_pages(tok, &format!("{base}?since=2&limit=2")).await;
    let got: Vec<i64> = all.iter().map(|a| a["seq"].as_i64().unwrap()).collect();
    assert_eq!(got, (3..=9).collect::<Vec<_>>());
    let all = api.all_pages(tok, &format!("{base}?limit=3")).await;
    assert_eq!(
        all.len(),
        9,
        "an exactly-full last page ends with nextCursor null"
    );

    api.get(&format!("{base}?limit=0"), tok)
        .await
        .problem(422, "validation_failed");
    api.get(&format!("{base}?cursor=nonsense"), tok)
        .await
        .problem(422, "validation_failed");
    let r = api.get(&format!("{base}?limit=999"), tok).await;
    assert_eq!(r.ok(200)["items"].as_array().unwrap().len(), 9);
}

async fn seq_header_tracks_latest_seq(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let tok = owner.token();
    let team = api.create_team(tok, "T").await;
    let other = api.create_team(tok, "Other").await;
    let t = api.task(tok, team.id, "t").await;
    api.comment(tok, t.id, "c").await;
    api.member(tok, team.id, "M", "viewer").await;
    // Activity in another team does not move this team's seq.
    api.task(tok, other.id, "elsewhere").await;
    api.task(tok, other.id, "elsewhere 2").await;

    let paths = [
        format!("/api/v1/teams/{}", team.id),
        format!("/api/v1/teams/{}/members", team.id),
        format!("/api/v1/teams/{}/boards", team.id),
        format!("/api/v1/teams/{}/tasks", team.id),
        format!("/api/v1/teams/{}/activity", team.id),
        format!("/api/v1/tasks/{}", t.id),
        format!("/api/v1/tasks/{}/comments", t.id),
    ];
    for p in &paths {
        let r = api.get(p, tok).await;
        r.ok(200);
        assert_eq!(r.seq(), 3, "X-TaskForge-Seq of GET {p}");
    }
    api.patch_task(tok, t.id, json!({"title": "t2"}))
        .await
        .ok(200);
    for p in &paths {
        assert_eq!(api.get(p, tok).await.seq(), 4, "X-TaskForge-Seq of GET {p}");
    }
    assert_eq!(api.team_seq(tok, other.id).await, 2);
}
