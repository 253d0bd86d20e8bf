//! The outbox: an activity is durable before it is published, and a crash between commit and
//! publish loses nothing. The server is killed by its test-only fault switch right after a commit;
//! on restart the relay must publish what was left and advance the published watermark.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::json;
use uuid::Uuid;

both_backends!(
    a_crash_between_commit_and_publish_is_republished_on_restart,
    a_crash_after_a_group_commit_republishes_every_member,
);

/// (published watermark, latest seq) of a team, read straight from the database.
async fn watermark(srv: &TestServer, team: Uuid) -> (i64, i64) {
    const SQL: &str = "SELECT o.published_seq, t.last_seq FROM team_outbox o JOIN teams t ON t.id = o.team_id \
                       WHERE t.id = $1";
    match srv.backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&srv.db_url)
                .await
                .expect("open sqlite");
            let row: (i64, i64) = sqlx::query_as(SQL)
                .bind(team)
                .fetch_one(&pool)
                .await
                .expect("read watermark");
            pool.close().await;
            row
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&srv.db_url)
                .await
                .expect("open postgres");
            let row: (i64, i64) = sqlx::query_as(SQL)
                .bind(team)
                .fetch_one(&pool)
                .await
                .expect("read watermark");
            pool.close().await;
            row
        }
    }
}

/// The seq up to which the team is recorded as unpublished (the relay's scan reads only these).
async fn unpublished_upto(srv: &TestServer, team: Uuid) -> Option<i64> {
    const SQL: &str = "SELECT upto_seq FROM team_unpublished WHERE team_id = $1";
    let row: Option<(i64,)> = match srv.backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&srv.db_url)
                .await
                .expect("open sqlite");
            let row = sqlx::query_as(SQL).bind(team).fetch_optional(&pool).await;
            pool.close().await;
            row
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&srv.db_url)
                .await
                .expect("open postgres");
            let row = sqlx::query_as(SQL).bind(team).fetch_optional(&pool).await;
            pool.close().await;
            row
        }
    }
    .expect("read team_unpublished");
    row.map(|(s,)| s)
}

async fn wait_unpublished_gone(srv: &TestServer, team: Uuid) -> Option<i64> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let upto = unpublished_upto(srv, team).await;
        if upto.is_none() || Instant::now() > deadline {
            return upto;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_published(srv: &TestServer, team: Uuid, seq: i64) -> (i64, i64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let w = watermark(srv, team).await;
        if w.0 >= seq || Instant::now() > deadline {
            return w;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_crash_between_commit_and_publish_is_republished_on_restart(b: Backend) {
    let mut srv = TestServer::process(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let team = api.create_team(owner.token(), "Outbox").await;
    let first = api.task(owner.token(), team.id, "before the crash").await;
    assert_eq!(
        wait_published(&srv, team.id, 1).await,
        (1, 1),
        "seq 1 is published normally"
    );
    assert_eq!(
        wait_unpublished_gone(&srv, team.id).await,
        None,
        "a published team leaves the relay's list of unpublished teams"
    );

    // Restart with the fault switch: the next commit aborts the process before publishing.
    srv.set_env("TASKFORGE_FAULT", Some("crash-after-commit"));
    srv.restart().await;
    let api = srv.client();
    let login = api.login(&owner.user.email, PASSWORD).await;
    let token = login.ok(200)["accessToken"]
        .as_str()
        .expect("token")
        .to_owned();
    let url = format!("{}/api/v1/teams/{}/tasks", srv.base, team.id);
    let crashed = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&token)
        .json(&json!({"title": "committed, never published"}))
        .send()
        .await;
    assert!(
        crashed.is_err(),
        "the process must die before answering: {crashed:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        watermark(&srv, team.id).await,
        (1, 2),
        "seq 2 committed but not published"
    );
    assert_eq!(
        unpublished_upto(&srv, team.id).await,
        Some(2),
        "the commit recorded the team as unpublished up to seq 2"
    );

    // A normal restart republishes it.
    srv.set_env("TASKFORGE_FAULT", None);
    srv.restart().await;
    assert_eq!(
        wait_published(&srv, team.id, 2).await,
        (2, 2),
        "the relay republished seq 2 on start"
    );
    assert_eq!(
        wait_unpublished_gone(&srv, team.id).await,
        None,
        "republished, the team leaves the list"
    );

    // And the activity is in the log, after the one before the crash.
    let api = srv.client();
    let log = api.activity(&token, team.id).await;
    let seqs: Vec<i64> = log.iter().map(|a| a.seq).collect();
    assert_eq!(seqs, vec![1, 2]);
    assert_eq!(log[0].task_id, Some(first.id));
    assert_eq!(log[1].kind, "task.created");
}

/// Concurrent creations with batches as large as the queue: the process dies right after the
/// first `COMMIT` (which may carry several of them); on restart every activity it committed is
/// published, seqs 1..=N, one `task.created` each.
async fn a_crash_after_a_group_commit_republishes_every_member(b: Backend) {
    let mut srv = TestServer::process_with(b, &[("TASKFORGE_WRITE_BATCH", "1000")]).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let team = api.create_team(owner.token(), "Batch crash").await;
    srv.set_env("TASKFORGE_FAULT", Some("crash-after-commit"));
    srv.restart().await;
    let api = srv.client();
    let login = api.login(&owner.user.email, PASSWORD).await;
    let token = login.ok(200)["accessToken"]
        .as_str()
        .expect("token")
        .to_owned();
    let url = format!("{}/api/v1/teams/{}/tasks", srv.base, team.id);
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(12));
    let mut sent = Vec::new();
    for i in 0..12 {
        let (url, token, barrier) = (url.clone(), token.clone(), barrier.clone());
        sent.push(tokio::spawn(async move {
            barrier.wait().await;
            reqwest::Client::new()
                .post(&url)
                .bearer_auth(&token)
                .json(&json!({"title": format!("batched {i}")}))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    for s in sent {
        if let Ok(Ok(status)) = s.await {
            assert!(
                status >= 500,
                "nothing is answered before the process dies: {status}"
            );
        }
    }
    let exit = srv.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(
        exit.and_then(|s| s.code()),
        Some(86),
        "the fault switch ended the process"
    );
    let (published, committed) = watermark(&srv, team.id).await;
    assert_eq!(published, 0, "nothing was published before the crash");
    assert!(committed >= 1, "the first batch committed before the crash");
    eprintln!("{b:?}: the batch that crashed carried {committed} creations");

    srv.set_env("TASKFORGE_FAULT", None);
    srv.restart().await;
    assert_eq!(
        wait_published(&srv, team.id, committed).await,
        (committed, committed),
        "the relay republished the whole batch on start"
    );
    let api = srv.client();
    let log = api.activity(&token, team.id).await;
    let seqs: Vec<i64> = log.iter().map(|a| a.seq).collect();
    assert_eq!(seqs, (1..=committed).collect::<Vec<_>>());
    assert!(log.iter().all(|a| a.kind == "task.created"));
}
