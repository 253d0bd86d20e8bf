//! SQLite, the embedded default: one file in WAL mode, one writer connection and a few readers.
//!
//! All writes go through the single writer connection (`sqlite_writer`: driven synchronously, no
//! hand-off per statement) and begin with `BEGIN IMMEDIATE`, so a write transaction holds the
//! write lock from its first statement and can never fail with SQLITE_BUSY on a read-then-write;
//! writers queue for that connection instead (`group_commit`). Reads run on sqlx's readers, on
//! their own threads: a long read never holds an async worker. Readers never block in WAL.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Sqlite;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::group_commit::{Lane, WriteTx};
use super::sqlite_writer::{Writer, WriterTx};
use super::task_query::indexed_text;
use super::{Result, Store, Tx};
use crate::domain::Task;

pub struct SqliteStore {
    writer: Writer,
    /// How the checkpointer connects (`upkeep`).
    options: SqliteConnectOptions,
    readers: SqlitePool,
    /// Every write transaction goes through this one lane: those that queue while one runs are
    /// committed together (`group_commit`).
    lane: Arc<Lane<WriterTx>>,
}

/// A read transaction, on one of sqlx's reader connections.
pub struct SqliteReadTx {
    tx: WriteTx<sqlx::Transaction<'static, Sqlite>>,
}

/// A write transaction, a member of the writer's batch.
pub struct SqliteTx {
    tx: WriteTx<WriterTx>,
}

impl SqliteReadTx {
    /// The transaction's connection, as every statement of the store runs on it.
    fn exec(&mut self) -> &mut sqlx::SqliteConnection {
        self.tx.conn()
    }

    /// Reads lock nothing (see `PgTx`).
    fn holds_shared_rows(&mut self) {}

    /// A read transaction: nothing to mark before its end (see `PgTx::writes`).
    fn writes(&self) -> bool {
        false
    }

    /// A read transaction writes no task, so it has no words to index: refused, as the
    /// read-only connection refuses every write.
    async fn index_words(&mut self, _t: &Task, _new: bool) -> Result<()> {
        Err(sqlx::Error::Protocol("a read transaction does not index words".into()).into())
    }
}

impl SqliteTx {
    /// The writer's connection, as every statement of the store runs on it.
    fn exec(&mut self) -> &mut rusqlite::Connection {
        self.tx.conn()
    }

    /// One writer: no row locks, no lock cycles, nothing to do (see `PgTx`).
    fn holds_shared_rows(&mut self) {}

    /// Every transaction on the writer writes (see `PgTx::writes`).
    fn writes(&self) -> bool {
        true
    }

    /// The task's words go to the search index when the transaction commits, under the search
    /// key the task has then, after the members' statements (see `WriterTx`); `new`: the task
    /// is created in this transaction.
    async fn index_words(&mut self, t: &Task, new: bool) -> Result<()> {
        self.tx.db_tx().index_words_at_commit(
            t.id,
            indexed_text(t.team_id, &t.title),
            indexed_text(t.team_id, &t.description),
            new,
        );
        Ok(())
    }
}

impl super::sql::HeldWrites for SqliteReadTx {}
impl super::sql::HeldWrites for SqliteTx {}

impl SqliteStore {
    /// Opens (creating it if missing) and migrates the database; at most `max_batch` write
    /// transactions are committed together.
    pub async fn open(url: &str, max_batch: usize) -> Result<Self> {
        // The writer and the readers are separate connections: in memory, each would have a
        // database of its own.
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(sqlx::Error::Configuration(
                format!("SQLite needs a database file, not an in-memory database ({url:?})").into(),
            )
            .into());
        }
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            // The writer's temporary files (the statement journals of the batch members'
            // savepoints, which serve only a rollback of this transaction) in memory. Not the
            // readers': a large sort may still spill to disk there.
            .connect_with(options.clone().pragma("temp_store", "memory"))
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&writer).await?;
        // Statistics for the planner (which index serves a filtered, sorted list), gathered on a
        // bounded sample; SQLite's advice for a long-lived connection. It re-analyzes only a
        // table that grew or shrank tenfold since its last analysis, but then counts every entry
        // of every index of it (this build of SQLite has STAT4): about 0.6 s for `tasks` at
        // 700,000 rows. Done here, before the server serves, and never while it does: run by
        // the writer after a `COMMIT`, that count held every write for as long.
        sqlx::query("PRAGMA analysis_limit = 1000")
            .execute(&writer)
            .await?;
        sqlx::query("PRAGMA optimize = 0x10002")
            .execute(&writer)
            .await?;
        // FTS5's own tables keep no statistics. FTS5 reaches them only by key, which is what the
        // planner does without statistics; with the count taken when the search index was
        // small (2 rows at a first start), it plans FTS5's delete of a merged segment's pages
        // (`DELETE FROM task_words_data WHERE id >= ? AND id <= ?`) as a scan of the whole
        // index, at every merge (measured: one team's creations fell from 10,400/s to 4,250/s
        // over its first 600,000 tasks, and a 1,000,000-task import took 124 s instead of 43).
        let analyzed: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM sqlite_schema WHERE name = 'sqlite_stat1'")
                .fetch_optional(&writer)
                .await?;
        if analyzed.is_some() {
            sqlx::query("DELETE FROM sqlite_stat1 WHERE tbl GLOB 'task_words_*'")
                .execute(&writer)
                .await?;
        }
        index_pending_words(&writer).await?;
        // From here on the writer is driven synchronously (`sqlite_writer`).
        writer.close().await;
        let writer = Writer::open(options.get_filename())?;
        let checkpointer = options.clone();
        let readers = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self {
            writer,
            options: checkpointer,
            readers,
            lane: Arc::new(Lane::new(max_batch)),
        })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn read(&self) -> Result<Box<dyn Tx>> {
        Ok(Box::new(SqliteReadTx {
            tx: WriteTx::Alone(self.readers.begin().await?),
        }))
    }

    async fn write(&self) -> Result<Box<dyn Tx>> {
        let writer = self.writer.clone();
        let member = self
            .lane
            .join(move || async move { Ok((writer.begin().await?, None)) })
            .await?;
        Ok(Box::new(SqliteTx {
            tx: WriteTx::Batched(member),
        }))
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        Ok(())
    }

    async fn webhook_now(
        &self,
        id: crate::domain::WebhookId,
    ) -> Result<Option<super::WebhookRecord>> {
        super::webhooks::webhook_now!(&self.readers, id)
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn upkeep(&self) -> Option<futures_util::future::BoxFuture<'static, ()>> {
        Some(Box::pin(checkpoints(self.options.clone())))
    }

    #[cfg(test)]
    fn queued_writes(&self, _team: crate::domain::TeamId) -> usize {
        self.lane.queued()
    }
}

// The single writer connection already excludes every other writer: no row locks.
super::sql::impl_tx!(
    SqliteReadTx,
    super::task_query::Dialect::Sqlite,
    "",
    "",
    sql::sqlx_api
);
super::webhooks::impl_webhook_tx!(SqliteReadTx, "", sql::sqlx_api);
super::sql::impl_tx!(
    SqliteTx,
    super::task_query::Dialect::Sqlite,
    "",
    "",
    sqlite_writer::api
);
super::webhooks::impl_webhook_tx!(SqliteTx, "", sqlite_writer::api);

/// How often the checkpointer moves what the WAL holds into the database file. Often and small:
/// while a checkpoint syncs the database file the writer's appends to the WAL stall, for longer
/// the more the checkpoint copied (one team paced at 4,500 creations/s: p99 16 and 124 ms every
/// 100 ms, 54 and 75 ms every second, 6.8 and 5.9 ms every 25 ms).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(25);

/// Checkpoints the WAL every `CHECKPOINT_EVERY` from a connection of its own (on sqlx's thread),
/// so that the writer's `COMMIT` seldom has to: a checkpoint copies pages and syncs the file, and
/// in a `COMMIT` it would hold the write lane, every queued write waiting behind it. `PASSIVE`:
/// it never waits for the writer or the readers; whatever it cannot copy now, it copies next
/// time. The writer still checkpoints by itself should the WAL outgrow
/// `sqlite_writer::WAL_BACKSTOP` pages (which restarts the WAL from its start).
async fn checkpoints(options: SqliteConnectOptions) {
    use sqlx::Connection;
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<sqlx::SqliteConnection> = None;
    loop {
        tick.tick().await;
        if conn.is_none() {
            match sqlx::SqliteConnection::connect_with(&options).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "the WAL checkpointer cannot connect; retrying in 5 s");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            }
        }
        if let Some(c) = conn.as_mut()
            && let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&mut *c)
                .await
        {
            tracing::warn!(error = %e, "a WAL checkpoint failed");
            conn = None;
        }
    }
}

/// Puts the words of tasks that have no search key yet into the search index (every task once
/// after the migration that introduced the per-team index; rows written by other means later), a
/// batch per transaction.
async fn index_pending_words(writer: &SqlitePool) -> Result<()> {
    const BATCH: i64 = 2_000;
    let mut indexed = 0u64;
    loop {
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
        let rows: Vec<(i64, crate::domain::TeamId, String, String)> = sqlx::query_as(
            "SELECT rowid, team_id, title, description FROM tasks WHERE search_key IS NULL LIMIT $1",
        )
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            break;
        }
        let (max,): (Option<i64>,) = sqlx::query_as("SELECT MAX(search_key) FROM tasks")
            .fetch_one(&mut *tx)
            .await?;
        let mut key = max.unwrap_or(0);
        for (rowid, team, title, description) in rows {
            key += 1;
            sqlx::query("UPDATE tasks SET search_key = $1 WHERE rowid = $2")
                .bind(key)
                .bind(rowid)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT OR REPLACE INTO task_words (rowid, title, description) VALUES ($1, $2, $3)",
            )
            .bind(key)
            .bind(super::task_query::indexed_text(team, &title))
            .bind(super::task_query::indexed_text(team, &description))
            .execute(&mut *tx)
            .await?;
            indexed += 1;
        }
        tx.commit().await?;
    }
    if indexed > 0 {
        tracing::info!(tasks = indexed, "search index: indexed the words of tasks");
    }
    Ok(())
}
