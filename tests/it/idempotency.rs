//! `Idempotency-Key` on POST (docs/contract-extensions.md): a retry with the same key and request
//! gets the first answer and changes nothing; the same key with another request is 422; keys are
//! per user; racing retries create once; answers that come and go (409) are not kept; a change
//! committed by a process that died before keeping its answer is never run again.

use crate::common::*;
use futures_util::future::join_all;
use serde_json::{Value, json};
use uuid::Uuid;

both_backends!(
    a_retry_gets_the_first_answer_and_changes_nothing,
    a_key_is_one_request_of_one_user,
    racing_retries_create_once,
    answers_that_come_and_go_are_not_kept,
    secrets_are_never_kept,
    a_change_whose_answer_was_lost_is_not_run_again,
);

async fn post_keyed(api: &Api, tok: &str, path: &str, key: &str, body: &Value) -> Resp {
    api.send(
        "POST",
        path,
        Some(tok),
        Some(body),
        &[("Idempotency-Key", key)],
    )
    .await
}

async fn task_count(api: &Api, tok: &str, team: Uuid) -> usize {
    api.get(&format!("/api/v1/teams/{team}/tasks?limit=200"), tok)
        .await
        .ok(200)["items"]
        .as_array()
        .map_or(0, Vec::len)
}

async fn a_retry_gets_the_first_answer_and_changes_nothing(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let tok = owner.token();
    let team = api.create_team(tok, "Keys").await;
    let path = format!("/api/v1/teams/{}/tasks", team.id);
    let body = json!({"title": "once only"});
    let key = Uuid::new_v4().to_string();

    let first = post_keyed(&api, tok, &path, &key, &body).await;
    let created = first.ok(201).clone();
    assert_eq!(first.header("idempotent-replayed"), None);
    let seq_after_first = api
        .get(&format!("/api/v1/teams/{}/activity", team.id), tok)
        .await
        .ok(200)["items"]
        .as_array()
        .map_or(0, Vec::len);
    for _ in 0..3 {
        let again = post_keyed(&api, tok, &path, &key, &body).await;
        assert_eq!(again.status, 201, "{}", again.text);
        assert_eq!(again.text, first.text, "the very same answer");
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        assert_eq!(again.header("etag"), first.header("etag"));
        assert_eq!(again.header("content-type"), first.header("content-type"));
    }
    assert_eq!(task_count(&api, tok, team.id).await, 1, "created once");
    let activities = api
        .get(&format!("/api/v1/teams/{}/activity", team.id), tok)
        .await
        .ok(200)["items"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(activities, seq_after_first, "no activity for a replay");
    assert_eq!(created["title"], "once only");

    // A refused request is an answer too: kept and replayed.
    let bad_key = Uuid::new_v4().to_string();
    let refused = post_keyed(&api, tok, &path, &bad_key, &json!({"title": ""})).await;
    refused.problem(422, "validation_failed");
    let again = post_keyed(&api, tok, &path, &bad_key, &json!({"title": ""})).await;
    assert_eq!(again.status, 422);
    assert_eq!(again.text, refused.text);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));

    // Without the header nothing changes: two posts, two tasks.
    api.post(&path, tok, body.clone()).await.ok(201);
    api.post(&path, tok, body.clone()).await.ok(201);
    assert_eq!(task_count(&api, tok, team.id).await, 3);
}

async fn a_key_is_one_request_of_one_user(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let tok = owner.token();
    let team = api.create_team(tok, "Keys").await;
    let other = api.member(tok, team.id, "Member", "member").await;
    let path = format!("/api/v1/teams/{}/tasks", team.id);
    let key = "the-same-key";

    post_keyed(&api, tok, &path, key, &json!({"title": "a"}))
        .await
        .ok(201);
    // The same key with another body, or at another path: refused, nothing written.
    post_keyed(&api, tok, &path, key, &json!({"title": "b"}))
        .await
        .problem(422, "idempotency_key_reused");
    let label_path = format!("/api/v1/teams/{}/labels", team.id);
    post_keyed(&api, tok, &label_path, key, &json!({"title": "a"}))
        .await
        .problem(422, "idempotency_key_reused");
    assert_eq!(task_count(&api, tok, team.id).await, 1);
    // Another user's key of the same text is theirs.
    let theirs = post_keyed(&api, other.token(), &path, key, &json!({"title": "a"})).await;
    theirs.ok(201);
    assert_eq!(theirs.header("idempotent-replayed"), None);
    assert_eq!(task_count(&api, tok, team.id).await, 2);

    // Malformed keys are refused before anything runs.
    for bad in ["has space", &"k".repeat(256)] {
        post_keyed(&api, tok, &path, bad, &json!({"title": "c"}))
            .await
            .problem(400, "bad_request");
    }
    assert_eq!(task_count(&api, tok, team.id).await, 2);
    // Without a valid token the handler answers as always (and nothing is kept).
    let r = api
        .send(
            "POST",
            &path,
            None,
            Some(&json!({"title": "c"})),
            &[("Idempotency-Key", "k2")],
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.text);
}

async fn racing_retries_create_once(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let tok = owner.token();
    let team = api.create_team(tok, "Race").await;
    let path = format!("/api/v1/teams/{}/tasks", team.id);
    let body = json!({"title": "raced"});
    for round in 0..3 {
        let key = format!("race-{round}");
        let answers = join_all((0..8).map(|_| post_keyed(&api, tok, &path, &key, &body))).await;
        let mut ids = Vec::new();
        for a in &answers {
            match a.status {
                201 => ids.push(a.json["id"].clone()),
                409 => {
                    a.problem(409, "idempotency_key_in_use");
                }
                s => panic!("unexpected {s}: {}", a.text),
            }
        }
        assert!(!ids.is_empty(), "at least the first answers 201");
        assert!(ids.iter().all(|i| *i == ids[0]), "one task: {ids:?}");
        // After the race, a retry gets the answer.
        let after = post_keyed(&api, tok, &path, &key, &body).await;
        assert_eq!(after.json["id"], ids[0]);
    }
    assert_eq!(task_count(&api, tok, team.id).await, 3, "one task per key");
}

async fn answers_that_come_and_go_are_not_kept(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let tok = owner.token();
    let team = api.create_team(tok, "Labels").await;
    let taken = api.create_label(tok, team.id, "bug", "#ff0000").await;
    let path = format!("/api/v1/teams/{}/labels", team.id);
    let body = json!({"name": "bug", "color": "#00ff00"});
    // 409: the name is taken now; not kept, so the same request may succeed later.
    post_keyed(&api, tok, &path, "label-1", &body)
        .await
        .problem(409, "conflict");
    api.delete(&format!("/api/v1/labels/{}", taken.id), tok)
        .await
        .ok(204);
    let created = post_keyed(&api, tok, &path, "label-1", &body).await;
    created.ok(201);
    assert_eq!(created.header("idempotent-replayed"), None);
    let again = post_keyed(&api, tok, &path, "label-1", &body).await;
    assert_eq!(again.text, created.text);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
}

/// Answers carrying secrets are never kept: a webhook's signing secret (created or rotated) and
/// the sessions of the public auth routes. Such a request with a key runs as without it.
async fn secrets_are_never_kept(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let tok = owner.token();
    let team = api.create_team(tok, "Secrets").await;
    let path = format!("/api/v1/teams/{}/webhooks", team.id);
    let body = json!({"url": "https://hooks.example.com/taskforge", "events": ["task.created"]});
    let first = post_keyed(&api, tok, &path, "hook-1", &body).await;
    let hook = first.ok(201).clone();
    let again = post_keyed(&api, tok, &path, "hook-1", &body).await;
    let second = again.ok(201).clone();
    assert_eq!(again.header("idempotent-replayed"), None, "not replayed");
    assert_ne!(
        second["id"], hook["id"],
        "ran again: the answer was not kept"
    );
    let rotate = format!(
        "/api/v1/webhooks/{}/rotate-secret",
        hook["id"].as_str().unwrap()
    );
    let r1 = post_keyed(&api, tok, &rotate, "rot-1", &json!({})).await;
    let r2 = post_keyed(&api, tok, &rotate, "rot-1", &json!({})).await;
    assert_eq!(r2.header("idempotent-replayed"), None);
    assert_ne!(r1.ok(200)["secret"], r2.ok(200)["secret"]);

    // Login with a bearer token and a key: a fresh session each time, never a replay.
    let login = json!({"email": owner.user.email, "password": PASSWORD});
    let l1 = post_keyed(&api, tok, "/api/v1/auth/login", "login-1", &login).await;
    let l2 = post_keyed(&api, tok, "/api/v1/auth/login", "login-1", &login).await;
    assert_eq!(l2.header("idempotent-replayed"), None);
    assert_ne!(l1.ok(200)["refreshToken"], l2.ok(200)["refreshToken"]);
}

/// A fresh access token from the (restarted) server.
async fn login(srv: &TestServer, user: &AuthResponse) -> String {
    srv.client().login(&user.user.email, PASSWORD).await.ok(200)["accessToken"]
        .as_str()
        .expect("token")
        .to_owned()
}

/// Moves every claim of the database `minutes` back in time, as if they had waited that long.
async fn age_claims(srv: &TestServer, minutes: i64) {
    let at = time::OffsetDateTime::now_utc() - time::Duration::minutes(minutes);
    match srv.backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&srv.db_url)
                .await
                .expect("open sqlite");
            sqlx::query("UPDATE idempotency_keys SET created_at = $1")
                .bind(taskforge::domain::model::timestamp::format(&at))
                .execute(&pool)
                .await
                .expect("ages the claims");
            pool.close().await;
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&srv.db_url)
                .await
                .expect("open postgres");
            sqlx::query("UPDATE idempotency_keys SET created_at = $1")
                .bind(at)
                .execute(&pool)
                .await
                .expect("ages the claims");
            pool.close().await;
        }
    }
}

/// The process dies right after a keyed creation commits (the test-only fault switch), before
/// its answer is kept. The retry is told the first request is still running, and once the
/// claim is stale (aged here instead of waited for) that the change was applied and its answer
/// lost: never a second task.
async fn a_change_whose_answer_was_lost_is_not_run_again(b: Backend) {
    let mut srv = TestServer::process(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let team = api.create_team(owner.token(), "Crash").await;
    let path = format!("/api/v1/teams/{}/tasks", team.id);
    let body = json!({"title": "applied once"});
    let key = Uuid::new_v4().to_string();

    srv.set_env("TASKFORGE_FAULT", Some("crash-after-commit"));
    srv.restart().await;
    let token = login(&srv, &owner).await;
    let crashed = reqwest::Client::new()
        .post(format!("{}{}", srv.base, path))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .header("idempotency-key", &key)
        .body(serde_json::to_vec(&body).expect("json"))
        .send()
        .await;
    assert!(
        crashed.is_err(),
        "the process must die before answering: {crashed:?}"
    );
    srv.set_env("TASKFORGE_FAULT", None);
    srv.restart().await;
    let api = srv.client();
    let token = login(&srv, &owner).await;
    let tok = &token;
    assert_eq!(
        task_count(&api, tok, team.id).await,
        1,
        "the change committed"
    );

    post_keyed(&api, tok, &path, &key, &body)
        .await
        .problem(409, "idempotency_key_in_use");
    age_claims(&srv, 5).await;
    post_keyed(&api, tok, &path, &key, &body)
        .await
        .problem(409, "idempotency_answer_lost");
    assert_eq!(
        task_count(&api, tok, team.id).await,
        1,
        "never a second task"
    );
}
