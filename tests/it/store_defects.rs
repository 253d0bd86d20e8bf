//! Store and relay correctness: a delete racing a move names the board the task was last on, log
//! pruning removes only a prefix of each team's seqs, the relay's record of unpublished teams
//! empties once they are published, expired refresh sessions are purged, and refresh / logout of
//! tokens that cannot succeed never wait for SQLite's single writer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::*;
use futures_util::future::join_all;
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

both_backends!(
    a_delete_racing_a_move_names_the_board_the_task_was_on,
    pruning_keeps_the_log_gapless_when_timestamps_run_backwards,
    unpublished_team_rows_go_away_once_published,
    expired_refresh_sessions_are_purged,
    unknown_tokens_and_reuse_detection,
);

/// A connection to the server's database, for what the API does not show.
enum Db {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// Runs `$body` with `$p` bound to whichever pool `$db` holds (each arm type-checks on its own).
macro_rules! on_pool {
    ($db:expr, $p:ident => $body:expr) => {
        match $db {
            Db::Sqlite($p) => $body,
            Db::Postgres($p) => $body,
        }
    };
}

async fn db(srv: &TestServer) -> Db {
    match srv.backend {
        Backend::Sqlite => Db::Sqlite(
            sqlx::SqlitePool::connect(&srv.db_url)
                .await
                .expect("open sqlite"),
        ),
        Backend::Postgres => Db::Postgres(
            sqlx::PgPool::connect(&srv.db_url)
                .await
                .expect("open postgres"),
        ),
    }
}

impl Db {
    /// `SELECT COUNT(*) ... WHERE <column> = $1`-style counts with one id bound.
    async fn count(&self, sql: &str, id: Uuid) -> i64 {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        let (n,): (i64,) = on_pool!(self, p => sqlx::query_as(sql).bind(id).fetch_one(p).await)
            .unwrap_or_else(|e| panic!("count failed: {e}"));
        n
    }

    /// The seqs a team's log holds, ascending.
    async fn seqs(&self, team: Uuid) -> Vec<i64> {
        const SQL: &str = "SELECT seq FROM activities WHERE team_id = $1 ORDER BY seq";
        let rows: Vec<(i64,)> =
            on_pool!(self, p => sqlx::query_as(SQL).bind(team).fetch_all(p).await)
                .expect("read seqs");
        rows.into_iter().map(|(s,)| s).collect()
    }

    /// (published watermark, latest seq) of a team.
    async fn watermark(&self, team: Uuid) -> (i64, i64) {
        const SQL: &str = "SELECT o.published_seq, t.last_seq FROM team_outbox o \
                           JOIN teams t ON t.id = o.team_id WHERE t.id = $1";
        on_pool!(self, p => sqlx::query_as(SQL).bind(team).fetch_one(p).await)
            .expect("read watermark")
    }

    async fn set_ts(&self, team: Uuid, seq: i64, ts: OffsetDateTime) {
        const SQL: &str = "UPDATE activities SET ts = $3 WHERE team_id = $1 AND seq = $2";
        let done = on_pool!(self, p => sqlx::query(SQL).bind(team).bind(seq).bind(ts).execute(p).await.map(|d| d.rows_affected()))
            .expect("set ts");
        assert_eq!(done, 1, "activity {seq} exists");
    }

    async fn close(self) {
        on_pool!(self, p => p.close().await)
    }
}

/// Polls `probe` until it returns true, at most `limit`; returns its last answer.
async fn eventually<F, Fut>(limit: Duration, mut probe: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if probe().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 1. A DELETE racing a move of the same task
// ---------------------------------------------------------------------------------------------

/// Rounds of tasks created on the default board, each then moved to another board and deleted
/// at the same moment. Whatever order the two commit in, the `task.deleted` must name the board
/// the task was on at its last `task.created` / `task.updated`, or the room of the board it
/// really left never hears of the delete. On PostgreSQL (READ COMMITTED) the delete used to read
/// the task, wait on the move's row lock and log the board it had read.
async fn a_delete_racing_a_move_names_the_board_the_task_was_on(b: Backend) {
    const PAIRS: usize = 8;
    const ROUNDS: usize = 40;
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Racer").await;
    let tok = owner.token();
    let team = api.create_team(tok, "Race").await;
    let from = team.default_board_id;
    let to = api.create_board(tok, team.id, "Elsewhere").await.id;

    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut rounds, mut both_succeeded) = (0, 0);
    while rounds < ROUNDS && Instant::now() < deadline {
        rounds += 1;
        let tasks =
            join_all((0..PAIRS).map(|i| {
                api.create_task(tok, team.id, json!({"title": format!("r{rounds} t{i}")}))
            }))
            .await;
        let outcomes = join_all(tasks.iter().map(|t| {
            let api = api.clone();
            let path = format!("/api/v1/tasks/{}", t.id);
            async move {
                let (moved, deleted) = tokio::join!(
                    api.patch(&path, tok, json!({"boardId": to})),
                    api.delete(&path, tok)
                );
                (moved.status, deleted.status)
            }
        }))
        .await;
        for (moved, deleted) in outcomes {
            assert_eq!(deleted, 204, "the delete always succeeds");
            assert!(
                moved == 200 || moved == 404,
                "the move succeeds or finds the task gone: {moved}"
            );
            if moved == 200 {
                both_succeeded += 1;
            }
        }
    }
    eprintln!("{rounds} rounds of {PAIRS}; {both_succeeded} moves committed before their delete");

    let mut board_of: HashMap<Uuid, Uuid> = HashMap::new();
    let mut wrong = Vec::new();
    let mut deletes = 0;
    for a in api.activity(tok, team.id).await {
        let Some(task) = a.task_id else { continue };
        match a.kind.as_str() {
            "task.created" | "task.updated" => {
                let board: Uuid = a.data["task"]["boardId"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .expect("task.boardId");
                board_of.insert(task, board);
            }
            "task.deleted" => {
                deletes += 1;
                let logged: Uuid = a.data["boardId"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .expect("data.boardId");
                assert_eq!(a.board_id, Some(logged), "routing board and data agree");
                let last = board_of
                    .get(&task)
                    .copied()
                    .expect("created before deleted");
                assert!(last == from || last == to);
                if logged != last {
                    wrong.push((a.seq, task, logged, last));
                }
            }
            _ => {}
        }
    }
    assert_eq!(deletes, rounds * PAIRS, "one task.deleted per task");
    assert!(
        wrong.is_empty(),
        "{} of {deletes} task.deleted name a board the task had left; the first (seq, task, logged, last): {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Pruning by timestamp
// ---------------------------------------------------------------------------------------------

/// Timestamps come from each instance's clock, so a later seq can carry an earlier `ts`. Seqs 1-3
/// and 5 are made older than the retention, 4 is recent: pruning may remove 1-3 only, and the log
/// stays gapless from its oldest seq, which is where resuming stops being possible.
async fn pruning_keeps_the_log_gapless_when_timestamps_run_backwards(b: Backend) {
    let mut srv = TestServer::start_with(b, &[("TASKFORGE_LOG_RETENTION", "1h")]).await;
    let api = srv.client();
    let owner = api.new_user("Pruner").await;
    let team = api.create_team(owner.token(), "Prune").await;
    for i in 0..8 {
        api.task(owner.token(), team.id, &format!("t{i}")).await;
    }
    let last = api.team_seq(owner.token(), team.id).await;
    assert!(last >= 8, "at least 8 activities: {last}");

    let db = db(&srv).await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            db.watermark(team.id).await.0 == last
        })
        .await,
        "the relay publishes the log (pruning only touches published activities)"
    );
    let old = OffsetDateTime::now_utc() - time::Duration::hours(2);
    for seq in [1, 2, 3, 5] {
        db.set_ts(team.id, seq, old).await;
    }
    // The log is pruned shortly after start (and then every prune interval).
    srv.restart().await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            db.seqs(team.id).await.first() != Some(&1)
        })
        .await,
        "the log was pruned"
    );
    let seqs = db.seqs(team.id).await;
    assert_eq!(
        seqs,
        (4..=last).collect::<Vec<_>>(),
        "only the prefix below the first recent seq (4) is pruned; the log stays gapless"
    );
    db.close().await;

    let api = srv.client();
    let login: AuthResponse = api.login(&owner.user.email, PASSWORD).await.parse(200);
    let tok = login.token();
    let resumed = api.activity_since(tok, team.id, 3).await;
    assert_eq!(
        resumed.iter().map(|a| a.seq).collect::<Vec<_>>(),
        (4..=last).collect::<Vec<_>>(),
        "since = oldest kept - 1 is served in full"
    );
    let path = format!("/api/v1/teams/{}/activity?since=", team.id);
    api.get(&format!("{path}4"), tok).await.ok(200);
    api.get(&format!("{path}2"), tok)
        .await
        .problem(410, "resume_unavailable");
    api.get(&format!("{path}0"), tok)
        .await
        .problem(410, "resume_unavailable");
}

// ---------------------------------------------------------------------------------------------
// 3. The relay's record of teams with unpublished activities
// ---------------------------------------------------------------------------------------------

/// The relay's scan reads only teams that have a row in `team_unpublished` (written by the same
/// transaction as the activities); once a team is published the row must go, or the scan
/// degrades back into a read of every team.
async fn unpublished_team_rows_go_away_once_published(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Pub").await;
    let mut teams = Vec::new();
    for i in 0..3 {
        let team = api.create_team(owner.token(), &format!("Pub {i}")).await;
        for j in 0..4 {
            api.task(owner.token(), team.id, &format!("t{j}")).await;
        }
        teams.push((team.id, api.team_seq(owner.token(), team.id).await));
    }
    let db = db(&srv).await;
    for (team, last) in teams {
        let done = eventually(Duration::from_secs(15), || async {
            db.watermark(team).await.0 == last
                && db
                    .count(
                        "SELECT COUNT(*) FROM team_unpublished WHERE team_id = $1",
                        team,
                    )
                    .await
                    == 0
        })
        .await;
        assert!(
            done,
            "team {team}: watermark {:?} (want {last}) and no unpublished row left ({} left)",
            db.watermark(team).await,
            db.count(
                "SELECT COUNT(*) FROM team_unpublished WHERE team_id = $1",
                team
            )
            .await
        );
    }
    db.close().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Purging expired refresh tokens and families
// ---------------------------------------------------------------------------------------------

/// With a one-second refresh lifetime, a user's tokens and families disappear from the database
/// (expired, or revoked by a logout), a session that is still valid stays, and the old token is
/// refused like any unknown one.
async fn expired_refresh_sessions_are_purged(b: Backend) {
    let srv = TestServer::start_with(
        b,
        &[
            ("TASKFORGE_REFRESH_TOKEN_TTL", "1s"),
            ("TASKFORGE_PRUNE_INTERVAL", "200ms"),
        ],
    )
    .await;
    let api = srv.client();
    let u = api.new_user("Purge").await;
    let other: AuthResponse = api.login(&u.user.email, PASSWORD).await.parse(200);
    api.logout(&other.refresh_token).await.ok(204);

    // A session that is still valid (written directly: every session the server issues lives
    // for one second here) must survive the purge; one that expired a day ago must not. The
    // server's two (registration, login: expired within a second, or revoked) go too.
    let db = db(&srv).await;
    let keep = Uuid::now_v7();
    let expired = Uuid::now_v7();
    let day = time::Duration::days(1);
    for (family, expires_at) in [
        (keep, OffsetDateTime::now_utc() + day),
        (expired, OffsetDateTime::now_utc() - day),
    ] {
        on_pool!(&db, p => {
            sqlx::query("INSERT INTO refresh_families (id, user_id, created_at) VALUES ($1, $2, $3)")
                .bind(family)
                .bind(u.user.id)
                .bind(OffsetDateTime::now_utc() - day)
                .execute(p)
                .await
                .expect("insert family");
            sqlx::query("INSERT INTO refresh_tokens (token_hash, family_id, expires_at) VALUES ($1, $2, $3)")
                .bind(family.as_bytes().to_vec())
                .bind(family)
                .bind(expires_at)
                .execute(p)
                .await
                .expect("insert token");
        });
    }

    let tokens = "SELECT COUNT(*) FROM refresh_tokens t JOIN refresh_families f ON f.id = t.family_id \
                  WHERE f.user_id = $1";
    let families = "SELECT COUNT(*) FROM refresh_families WHERE user_id = $1";
    let purged = eventually(Duration::from_secs(20), || async {
        db.count(tokens, u.user.id).await == 1 && db.count(families, u.user.id).await == 1
    })
    .await;
    assert!(
        purged,
        "expired and revoked sessions are purged: {} tokens, {} families left (want 1 and 1)",
        db.count(tokens, u.user.id).await,
        db.count(families, u.user.id).await
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM refresh_families WHERE id = $1", keep)
            .await,
        1,
        "the valid session is kept"
    );
    db.close().await;
    api.refresh(&u.refresh_token)
        .await
        .problem(401, "unauthorized");
    api.refresh(&other.refresh_token)
        .await
        .problem(401, "unauthorized");
    api.logout(&u.refresh_token).await.ok(204);
}

// ---------------------------------------------------------------------------------------------
// 5. Refresh and logout of tokens that cannot succeed
// ---------------------------------------------------------------------------------------------

/// Unknown tokens answer 401 / 204, and a rotated token presented again still revokes its family.
async fn unknown_tokens_and_reuse_detection(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    api.refresh("never-issued")
        .await
        .problem(401, "unauthorized");
    api.logout("never-issued").await.ok(204);

    let u = api.new_user("Reuse").await;
    let second: AuthResponse = api.refresh(&u.refresh_token).await.parse(200);
    api.refresh(&u.refresh_token)
        .await
        .problem(401, "unauthorized");
    api.refresh(&second.refresh_token)
        .await
        .problem(401, "unauthorized");
}

/// Holds SQLite's write lock from outside the server (`BEGIN IMMEDIATE` on the database file).
struct WriteLock(sqlx::pool::PoolConnection<sqlx::Sqlite>, sqlx::SqlitePool);

impl WriteLock {
    async fn take(srv: &TestServer) -> WriteLock {
        let pool = sqlx::SqlitePool::connect(&srv.db_url)
            .await
            .expect("open sqlite");
        let mut conn = pool.acquire().await.expect("connection");
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *conn)
            .await
            .expect("take the write lock");
        WriteLock(conn, pool)
    }

    async fn release(mut self) {
        sqlx::query("ROLLBACK")
            .execute(&mut *self.0)
            .await
            .expect("release the write lock");
        drop(self.0);
        self.1.close().await;
    }
}

/// While another connection holds SQLite's write lock, refresh and logout of unknown and revoked
/// tokens still answer 401 / 204: they are decided from a read snapshot. (Before, they waited for
/// the writer until its busy timeout and failed with 500.) Reuse detection still writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_tokens_do_not_wait_for_the_sqlite_writer() {
    let srv = TestServer::start(Backend::Sqlite).await;
    let api = srv.client();
    let u = api.new_user("Busy").await;
    let rotated: AuthResponse = api.refresh(&u.refresh_token).await.parse(200);
    let out: AuthResponse = api.login(&u.user.email, PASSWORD).await.parse(200);
    api.logout(&out.refresh_token).await.ok(204);

    let lock = WriteLock::take(&srv).await;
    api.refresh("never-issued")
        .await
        .problem(401, "unauthorized");
    api.logout("never-issued").await.ok(204);
    api.refresh(&out.refresh_token)
        .await
        .problem(401, "unauthorized");
    api.logout(&out.refresh_token).await.ok(204);
    lock.release().await;

    // A rotated token presented again revokes its family, the token it was rotated into too.
    api.refresh(&u.refresh_token)
        .await
        .problem(401, "unauthorized");
    api.refresh(&rotated.refresh_token)
        .await
        .problem(401, "unauthorized");
}

/// The same for an expired token (one-second lifetime): refused from the read snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_do_not_wait_for_the_sqlite_writer() {
    let srv =
        TestServer::start_with(Backend::Sqlite, &[("TASKFORGE_REFRESH_TOKEN_TTL", "1s")]).await;
    let api = srv.client();
    let u = api.new_user("Late").await;
    // Expiry is absolute: after two seconds the token is past it, however slow the machine.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lock = WriteLock::take(&srv).await;
    api.refresh(&u.refresh_token)
        .await
        .problem(401, "unauthorized");
    api.logout(&u.refresh_token).await.ok(204);
    lock.release().await;
    api.refresh(&u.refresh_token)
        .await
        .problem(401, "unauthorized");
}
