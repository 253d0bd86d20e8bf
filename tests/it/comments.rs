//! Comments: create, list (paginated, oldest first), edit (author only), delete (author or
//! owner/admin), limits and activities.

use crate::common::*;
use serde_json::json;
use uuid::Uuid;

both_backends!(
    comment_lifecycle,
    comment_permissions,
    comment_validation_and_pagination
);

async fn comment_lifecycle(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let team = api.create_team(owner.token(), "T").await;
    let m = api.member(owner.token(), team.id, "M", "member").await;
    let task = api.task(owner.token(), team.id, "discuss").await;
    let list = format!("/api/v1/tasks/{}/comments", task.id);

    let c: Comment = api
        .post(&list, m.token(), json!({"body": "hello"}))
        .await
        .parse(201);
    assert_eq!(c.task_id, task.id);
    assert_eq!(c.team_id, team.id);
    assert_eq!(c.author_user_id, m.user.id);
    assert_eq!(c.body, "hello");
    assert_eq!(c.edited_at, None);
    assert_ts_millis(&c.created_at);

    let r = api.get(&list, owner.token()).await;
    assert_eq!(r.seq(), 3);
    let items = r.ok(200)["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], c.id.to_string());
    assert!(items[0]["editedAt"].is_null());

    let path = format!("/api/v1/comments/{}", c.id);
    let e: Comment = api
        .patch(&path, m.token(), json!({"body": "hello, edited"}))
        .await
        .parse(200);
    assert_eq!(e.body, "hello, edited");
    assert_eq!(e.id, c.id);
    assert_eq!(e.created_at, c.created_at);
    let edited = e.edited_at.expect("editedAt set after an edit");
    assert_ts_millis(&edited);

    let r = api.delete(&path, m.token()).await;
    r.ok(204);
    assert!(r.text.is_empty());
    api.patch(&path, m.token(), json!({"body": "again"}))
        .await
        .problem(404, "not_found");
    api.delete(&path, m.token()).await.problem(404, "not_found");
    assert!(api.all_pages(owner.token(), &list).await.is_empty());

    let acts = api.activity_since(owner.token(), team.id, 2).await;
    let kinds: Vec<&str> = acts.iter().map(|a| a.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["comment.created", "comment.updated", "comment.deleted"]
    );
    for a in &acts {
        assert_eq!(a.task_id, Some(task.id), "{:?}", a);
        assert_eq!(a.actor_user_id, m.user.id);
    }
    assert_eq!(acts[0].data["comment"]["id"], c.id.to_string());
    assert_eq!(acts[0].data["comment"]["body"], "hello");
    assert_eq!(acts[1].data["comment"]["body"], "hello, edited");
    assert!(acts[1].data["comment"]["editedAt"].is_string());
    assert_eq!(acts[2].data["commentId"], c.id.to_string());
    assert_eq!(acts[2].data["taskId"], task.id.to_string());

    api.get(
        &format!("/api/v1/tasks/{}/comments", Uuid::new_v4()),
        owner.token(),
    )
    .await
    .problem(404, "not_found");
    api.patch(
        &format!("/api/v1/comments/{}", Uuid::new_v4()),
        owner.token(),
        json!({"body": "x"}),
    )
    .await
    .problem(404, "not_found");
    api.delete("/api/v1/comments/zzz", owner.token())
        .await
        .problem(400, "bad_request");
}

async fn comment_permissions(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let team = api.create_team(owner.token(), "T").await;
    let admin = api.member(owner.token(), team.id, "A", "admin").await;
    let m1 = api.member(owner.token(), team.id, "M1", "member").await;
    let m2 = api.member(owner.token(), team.id, "M2", "member").await;
    let viewer = api.member(owner.token(), team.id, "V", "viewer").await;
    let task = api.task(m1.token(), team.id, "t").await;
    let list = format!("/api/v1/tasks/{}/comments", task.id);

    api.post(&list, viewer.token(), json!({"body": "no"}))
        .await
        .problem(403, "forbidden");
    let r = api.get(&list, viewer.token()).await;
    r.ok(200);

    let c1 = api.comment(m1.token(), task.id, "by m1").await;
    let c2 = api.comment(m1.token(), task.id, "by m1 again").await;
    let c3 = api.comment(owner.token(), task.id, "by owner").await;
    let p = |c: &Comment| format!("/api/v1/comments/{}", c.id);
    let seq = api.team_seq(owner.token(), team.id).await;

    // Edit: author only, even owner/admin get 403.
    for who in [&m2, &admin, &owner, &viewer] {
        api.patch(&p(&c1), who.token(), json!({"body": "hijack"}))
            .await
            .problem(403, "forbidden");
    }
    api.patch(&p(&c3), m1.token(), json!({"body": "hijack"}))
        .await
        .problem(403, "forbidden");
    // Delete: other members and viewers get 403.
    api.delete(&p(&c1), m2.token())
        .await
        .problem(403, "forbidden");
    api.delete(&p(&c1), viewer.token())
        .await
        .problem(403, "forbidden");
    api.delete(&p(&c3), m1.token())
        .await
        .problem(403, "forbidden");
    assert_eq!(api.team_seq(owner.token(), team.id).await, seq);

    // Owner and admin may delete other people's comments.
    api.delete(&p(&c1), admin.token()).await.ok(204);
    api.delete(&p(&c2), owner.token()).await.ok(204);
    // The author edits their own.
    let e: Comment = api
        .patch(&p(&c3), owner.token(), json!({"body": "by owner, edited"}))
        .await
        .parse(200);
    assert_eq!(e.body, "by owner, edited");
    let left = api.all_pages(viewer.token(), &list).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["body"], "by owner, edited");

    let acts = api.activity_since(owner.token(), team.id, seq).await;
    let got: Vec<(&str, Uuid)> = acts
        .iter()
        .map(|a| (a.kind.as_str(), a.actor_user_id))
        .collect();
    assert_eq!(
        got,
        [
            ("comment.deleted", admin.user.id),
            ("comment.deleted", owner.user.id),
            ("comment.updated", owner.user.id)
        ]
    );
}

async fn comment_validation_and_pagination(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let tok = owner.token();
    let team = api.create_team(tok, "T").await;
    let task = api.task(tok, team.id, "t").await;
    let list = format!("/api/v1/tasks/{}/comments", task.id);

    api.post(&list, tok, json!({"body": ""}))
        .await
        .invalid("body");
    api.post(&list, tok, json!({}))
        .await
        .problem(422, "validation_failed");
    api.post(&list, tok, json!({"body": 1}))
        .await
        .problem(422, "validation_failed");
    api.post(&list, tok, json!({"body": "💬".repeat(10_001)}))
        .await
        .invalid("body");
    let long = "💬".repeat(10_000);
    let c = api.comment(tok, task.id, &long).await;
    assert_eq!(c.body, long);
    let cp = format!("/api/v1/comments/{}", c.id);
    api.patch(&cp, tok, json!({"body": ""}))
        .await
        .invalid("body");
    api.patch(&cp, tok, json!({"body": "x".repeat(10_001)}))
        .await
        .invalid("body");

    let mut ids = vec![c.id];
    for i in 0..6 {
        ids.push(api.comment(tok, task.id, &format!("c{i}")).await.id);
    }
    let r = api.get(&format!("{list}?limit=4"), tok).await;
    assert_eq!(r.ok(200)["items"].as_array().unwrap().len(), 4);
    assert!(r.json["nextCursor"].is_string());
    let got: Vec<Uuid> = api
        .all_pages(tok, &format!("{list}?limit=2"))
        .await
        .iter()
        .map(|c| c["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(got, ids, "every comment once, oldest first");
    api.get(&format!("{list}?limit=0"), tok)
        .await
        .problem(422, "validation_failed");
    api.get(&format!("{list}?cursor=%%%"), tok)
        .await
        .status_in(&[400, 422]);
    api.get(&format!("{list}?cursor=bogus"), tok)
        .await
        .problem(422, "validation_failed");
    // Only the successful creations were logged: 1 task + 7 comments.
    assert_eq!(api.team_seq(tok, team.id).await, 8);
}

trait StatusIn {
    fn status_in(&self, s: &[u16]);
}
impl StatusIn for Resp {
    #[track_caller]
    fn status_in(&self, s: &[u16]) {
        assert!(
            s.contains(&self.status),
            "{} {}: expected one of {s:?}, got {}: {}",
            self.method,
            self.path,
            self.status,
            self.text
        );
    }
}
