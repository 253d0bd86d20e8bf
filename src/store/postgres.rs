//! PostgreSQL, for many instances sharing one database.
//!
//! Writes run at READ COMMITTED. A write of one team (`write_team`) goes through the team's lane
//! (`group_commit`): the writes of a team that queue on this instance while one runs are committed
//! together, and each batch locks the team row first, before any member touches another row; a
//! member that locks rows shared with other teams' writers (inbox rows, webhook rows) ends its
//! batch (`group_commit`). Teams write in parallel. Writes outside a team (`write`) lock the team row, if they
//! append, in `append`, as late as possible.
//! Reads run in a REPEATABLE READ, READ ONLY transaction: one snapshot for the data and its seq.
//!
//! A new task's insert is held until the transaction's next statement (`PgTx::hold_task`): a
//! creation's task goes out inside its activities' statement, one round trip fewer on the lane.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, StreamExt};
use sqlx::postgres::{
    PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgQueryResult, PgRow, PgStatement,
    PgTypeInfo,
};
use sqlx::{Either, Execute, Executor, Postgres};

use super::group_commit::{Lane, WriteTx};

/// A transaction on a PostgreSQL connection.
type PgTransaction = sqlx::Transaction<'static, Postgres>;
use super::sql::{self, HeldTask, HeldWrites};
use super::{PgOptions, Pooler, Result, Store, StoreError, Tx};
use crate::domain::{TeamId, UserId};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

pub struct PgStore {
    pool: PgPool,
    /// Statements may be named and kept on the connection (not behind a transaction pooler).
    keep: bool,
    /// The lanes of the teams written lately (idle ones are forgotten past `LANES_KEPT`).
    lanes: parking_lot::Mutex<HashMap<TeamId, Arc<Lane<PgTransaction>>>>,
    write_batch: usize,
}

/// Lanes kept before the idle ones are dropped.
const LANES_KEPT: usize = 1024;

/// The most members of one PostgreSQL batch, whatever `TASKFORGE_WRITE_BATCH` says: a batch's
/// members after the first each run in a savepoint, a subtransaction with an id of its own once
/// it writes, and a backend keeps at most 64 of those ids in shared memory. Past them its
/// transaction is "suboverflowed": every snapshot taken on the server while it runs must look
/// transactions up in `pg_subtrans` (the SLRU contention of busy servers with many savepoints).
/// 65 members use 64 savepoints at most (a member rolled back frees its id).
pub(super) const MAX_BATCH: usize = 65;

pub struct PgTx {
    tx: WriteTx<PgTransaction>,
    keep: bool,
    /// A task's insert not sent yet: whatever the transaction sends next sends it first (its
    /// `append` inside the activities' statement), and a transaction dropped before drops it.
    held: Option<HeldTask>,
    /// A write transaction (not READ ONLY): its `COMMIT` may carry a keyed request's mark.
    writes: bool,
    /// The keyed request's mark went out with an `append` (see `HeldWrites::take_key_mark`).
    key_marked: bool,
}

impl PgStore {
    /// Connects and migrates (or checks the schema, behind a transaction pooler); at most
    /// `write_batch` write transactions of a team are committed together (and never more than
    /// `MAX_BATCH`).
    pub async fn open(url: &str, options: &PgOptions, write_batch: usize) -> Result<Self> {
        let pooled = options.pooler == Pooler::Transaction;
        let mut connect = PgConnectOptions::from_str(url)?;
        if pooled {
            connect = connect.statement_cache_capacity(0);
        }
        let pool = PgPoolOptions::new()
            .max_connections(options.pool_size.max(2))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(connect)
            .await?;
        match (&options.migration_url, pooled) {
            (Some(direct), _) => {
                let direct = PgPoolOptions::new()
                    .max_connections(1)
                    .connect(direct)
                    .await?;
                MIGRATOR.run(&direct).await?;
                direct.close().await;
            }
            // The migrator's lock is a session's advisory lock: not through a transaction pooler.
            (None, false) => MIGRATOR.run(&pool).await?,
            (None, true) => check_schema(&pool).await?,
        }
        Ok(Self {
            pool,
            keep: !pooled,
            lanes: parking_lot::Mutex::new(HashMap::new()),
            write_batch: write_batch.min(MAX_BATCH),
        })
    }

    fn lane(&self, team: TeamId) -> Arc<Lane<PgTransaction>> {
        let mut lanes = self.lanes.lock();
        if lanes.len() >= LANES_KEPT {
            // A lane some request holds (about to queue on it, or a member) is not forgotten.
            lanes.retain(|_, lane| Arc::strong_count(lane) > 1 || !lane.is_idle());
        }
        lanes
            .entry(team)
            .or_insert_with(|| Arc::new(Lane::new(self.write_batch)))
            .clone()
    }
}

/// Behind a transaction pooler without a direct URL: the schema must already be this build's,
/// checked as the migrator would (every migration applied with its checksum, none unknown).
async fn check_schema(pool: &PgPool) -> Result<()> {
    let mut tx = pool.begin().await?;
    let applied: std::result::Result<Vec<(i64, Vec<u8>)>, sqlx::Error> =
        sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations ORDER BY version")
            .persistent(false)
            .fetch_all(&mut *tx)
            .await;
    tx.rollback().await?;
    let applied = match applied {
        Ok(rows) => rows,
        // No migration table: nothing applied yet.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let known: std::collections::HashMap<i64, &[u8]> = MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| (m.version, &*m.checksum))
        .collect();
    for (version, checksum) in &applied {
        match known.get(version) {
            None => {
                return Err(StoreError::SchemaMismatch(format!(
                    "migration {version} is applied but unknown to this build"
                )));
            }
            Some(c) if *c != checksum.as_slice() => {
                return Err(StoreError::SchemaMismatch(format!(
                    "migration {version} was applied with another checksum"
                )));
            }
            Some(_) => {}
        }
    }
    let mut missing: Vec<i64> = known
        .keys()
        .filter(|v| !applied.iter().any(|(a, _)| a == *v))
        .copied()
        .collect();
    missing.sort_unstable();
    if let Some(first) = missing.first() {
        return Err(StoreError::SchemaMismatch(format!(
            "{} migrations to apply, from {first}",
            missing.len()
        )));
    }
    Ok(())
}

impl PgTx {
    /// The transaction's connection, as every statement of the store runs on it.
    fn exec(&mut self) -> PgExec<'_> {
        PgExec {
            conn: self.tx.conn(),
            keep: self.keep,
            held: Some(&mut self.held),
        }
    }

    /// The transaction has locked rows other teams' writers lock too (users' inbox rows, webhook
    /// rows): a batch commits right after this member instead of running more members while it
    /// holds them, so batches of different teams never wait on each other in a cycle.
    fn holds_shared_rows(&mut self) {
        self.tx.holds_shared_rows();
    }

    /// Whether the transaction may write (`before_commit` marks a keyed request's key only then).
    fn writes(&self) -> bool {
        self.writes
    }

    /// SQLite only: PostgreSQL makes a task's words from its row (the generated `search`).
    async fn index_words(&mut self, _t: &crate::domain::Task, _new: bool) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl HeldWrites for PgTx {
    fn hold_task(&mut self, t: &crate::domain::Task, follower: Option<UserId>) -> bool {
        // One at a time: a second insert goes out at once, sending the first before it.
        if self.held.is_some() {
            return false;
        }
        self.held = Some(HeldTask {
            task: t.clone(),
            follower,
        });
        true
    }

    fn take_held_task(&mut self) -> Option<HeldTask> {
        self.held.take()
    }

    async fn send_held_task(&mut self) -> Result<()> {
        if let Some(held) = &self.held {
            send_held(self.tx.conn(), self.keep, held).await?;
            self.held = None;
        }
        Ok(())
    }

    fn take_key_mark(&mut self) -> Option<super::ApplyingKey> {
        if !self.writes || self.key_marked {
            return None;
        }
        let key = super::applying_key()?;
        self.key_marked = true;
        Some(key)
    }

    fn key_marked(&self) -> bool {
        self.key_marked
    }
}

/// Inserts a held task on its own.
async fn send_held(
    conn: &mut PgConnection,
    keep: bool,
    held: &HeldTask,
) -> std::result::Result<(), sqlx::Error> {
    let query = sql::bind_task!(
        sqlx::query(sqlx::AssertSqlSafe(sql::pg_task_insert())),
        &held.task,
        held.follower
    );
    conn.execute(Kept { inner: query, keep }).await?;
    Ok(())
}

/// A connection whose statements are prepared unnamed unless `keep` (see `Pooler::Transaction`).
/// Unnamed, a statement must not bind or return a type sqlx has to look up (an enum, a domain,
/// `tsvector`): the lookup runs between its parse and its execution and ends the unnamed
/// statement. The store's statements use built-in types only.
///
/// `held`: the transaction's held task, sent before the statement (see `PgTx::held`).
#[derive(Debug)]
pub(super) struct PgExec<'c> {
    conn: &'c mut PgConnection,
    keep: bool,
    held: Option<&'c mut Option<HeldTask>>,
}

/// A statement that is kept only if both it and its connection allow it.
struct Kept<E> {
    inner: E,
    keep: bool,
}

impl<'q, E: Execute<'q, Postgres>> Execute<'q, Postgres> for Kept<E> {
    fn sql(self) -> sqlx::SqlStr {
        self.inner.sql()
    }

    fn statement(&self) -> Option<&PgStatement> {
        self.inner.statement()
    }

    fn take_arguments(
        &mut self,
    ) -> std::result::Result<Option<sqlx::postgres::PgArguments>, sqlx::error::BoxDynError> {
        self.inner.take_arguments()
    }

    fn persistent(&self) -> bool {
        self.keep && self.inner.persistent()
    }
}

impl<'c> Executor<'c> for PgExec<'c> {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, std::result::Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let keep = self.keep;
        let conn = self.conn;
        let Some(held) = self.held.filter(|h| h.is_some()) else {
            return conn.fetch_many(Kept { inner: query, keep });
        };
        // Let go only once sent: a statement never started, or cut short, leaves it held.
        Box::pin(
            futures_util::stream::once(async move {
                if let Some(task) = held.as_ref() {
                    if let Err(e) = send_held(&mut *conn, keep, task).await {
                        return futures_util::stream::once(async move { Err(e) }).boxed();
                    }
                    *held = None;
                }
                conn.fetch_many(Kept { inner: query, keep })
            })
            .flatten(),
        )
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, std::result::Result<Option<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let keep = self.keep;
        let conn = self.conn;
        let Some(held) = self.held.filter(|h| h.is_some()) else {
            return conn.fetch_optional(Kept { inner: query, keep });
        };
        Box::pin(async move {
            if let Some(task) = held.as_ref() {
                send_held(&mut *conn, keep, task).await?;
                *held = None;
            }
            conn.fetch_optional(Kept { inner: query, keep }).await
        })
    }

    // sqlx names an explicitly prepared statement whatever the cache: refused when statements are
    // not kept (nothing in the store prepares explicitly).
    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, std::result::Result<PgStatement, sqlx::Error>>
    where
        'c: 'e,
    {
        if !self.keep {
            return Box::pin(async { Err(unnamed_only()) });
        }
        self.conn.prepare_with(sql, parameters)
    }

    fn describe<'e>(
        self,
        sql: sqlx::SqlStr,
    ) -> BoxFuture<'e, std::result::Result<sqlx::Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        if !self.keep {
            return Box::pin(async { Err(unnamed_only()) });
        }
        self.conn.describe(sql)
    }
}

fn unnamed_only() -> sqlx::Error {
    sqlx::Error::Protocol("behind a transaction pooler statements are not prepared apart".into())
}

impl PgStore {
    /// Begins a transaction where the caller's cancellation cannot interrupt it. sqlx's
    /// `Pool::begin` is not cancel-safe on PostgreSQL (transact-rs/sqlx#4393, reproduced on the
    /// 0.9.0 we use): a caller dropped during the `BEGIN` round trip (a socket that closes while
    /// its subscribe reads, an HTTP client that goes away) returns the connection to the pool
    /// inside a transaction nothing ends, and the next borrower's writes fail. Run in a task of
    /// its own, the `BEGIN` always completes; a transaction nobody awaits any more is then dropped
    /// there, which rolls it back properly.
    ///
    /// `setting`, if any, runs in the same task as a statement of its own (not in the `BEGIN`'s
    /// text: should it fail, the transaction sqlx tracks is dropped and rolled back, where an
    /// error inside the `BEGIN`'s own round trip would leave an aborted transaction untracked).
    async fn begin(&self, statement: &'static str, setting: Option<&'static str>) -> Result<PgTx> {
        Ok(PgTx {
            tx: WriteTx::Alone(begin_tx(self.pool.clone(), statement, setting).await?),
            keep: self.keep,
            held: None,
            writes: !statement.contains("READ ONLY"),
            key_marked: false,
        })
    }
}

async fn begin_tx(
    pool: PgPool,
    statement: &'static str,
    setting: Option<&'static str>,
) -> Result<PgTransaction> {
    let begun = tokio::spawn(async move {
        let mut tx = pool.begin_with(statement).await?;
        if let Some(setting) = setting {
            // The simple protocol: nothing prepared, nothing kept on the connection.
            sqlx::raw_sql(sqlx::AssertSqlSafe(setting))
                .execute(&mut *tx)
                .await?;
        }
        Ok::<_, sqlx::Error>(tx)
    })
    .await
    .map_err(|e| sqlx::Error::Protocol(format!("the BEGIN task failed: {e}")))??;
    Ok(begun)
}

#[async_trait]
impl Store for PgStore {
    async fn read(&self) -> Result<Box<dyn Tx>> {
        // The planner's costs for reads (`task_query::PG_READ_SETTING`), set per transaction
        // so that nothing depends on the session (a pooler in transaction mode hands out server
        // connections per transaction).
        Ok(Box::new(
            self.begin(
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
                Some(super::task_query::PG_READ_SETTING),
            )
            .await?,
        ))
    }

    async fn write(&self) -> Result<Box<dyn Tx>> {
        Ok(Box::new(self.begin("BEGIN", None).await?))
    }

    async fn write_team(&self, team: TeamId) -> Result<Box<dyn Tx>> {
        let keep = self.keep;
        let pool = self.pool.clone();
        let member = self
            .lane(team)
            .join(move || async move {
                let mut tx = begin_tx(pool, "BEGIN", None).await?;
                // The team row first (see the module's doc), and its last seq: the batch's first
                // append need not read it (`WriteTx::last_seq_known`).
                let last_seq: Option<(i64,)> =
                    sqlx::query_as("SELECT last_seq FROM teams WHERE id = $1 FOR NO KEY UPDATE")
                        .bind(team)
                        .fetch_optional(PgExec {
                            conn: &mut tx,
                            keep,
                            held: None,
                        })
                        .await?;
                Ok((tx, last_seq.map(|(seq,)| (team, seq))))
            })
            .await?;
        Ok(Box::new(PgTx {
            tx: WriteTx::Batched(member),
            keep,
            held: None,
            writes: true,
            key_marked: false,
        }))
    }

    fn lanes_by_team(&self) -> bool {
        true
    }

    #[cfg(test)]
    fn queued_writes(&self, team: TeamId) -> usize {
        self.lanes.lock().get(&team).map_or(0, |l| l.queued())
    }

    async fn ping(&self) -> Result<()> {
        // The simple protocol: one round trip, nothing prepared.
        sqlx::raw_sql(sqlx::AssertSqlSafe("SELECT 1"))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn webhook_now(
        &self,
        id: crate::domain::WebhookId,
    ) -> Result<Option<super::WebhookRecord>> {
        if self.keep {
            return super::webhooks::webhook_now!(&self.pool, id);
        }
        // In a transaction of its own: a statement's two round trips on one server connection
        // behind a transaction pooler.
        let mut tx = self.begin("BEGIN", None).await?;
        let row = super::webhooks::webhook_now!(tx.exec(), id);
        tx.tx.commit(None).await?;
        row
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}

// A delete-strength row lock: it waits for writers holding a key-share lock on the row.
super::sql::impl_tx!(
    PgTx,
    super::task_query::Dialect::Postgres,
    " FOR UPDATE",
    " FOR KEY SHARE",
    sql::sqlx_api
);
super::webhooks::impl_webhook_tx!(PgTx, " FOR UPDATE", sql::sqlx_api);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::scratch_tests::ScratchPg;

    /// Behind a transaction pooler the migrations run over the direct URL when one is given;
    /// without it the store migrates nothing and refuses a schema older than its own, saying
    /// which. The pooled store then runs (statements unnamed) on the migrated schema.
    #[tokio::test]
    async fn behind_a_transaction_pooler_the_schema_is_migrated_directly_or_must_be_current() {
        let Some(pg) = ScratchPg::create().await else {
            return;
        };
        let pooled = |migration_url: Option<String>| PgOptions {
            pool_size: 2,
            pooler: Pooler::Transaction,
            migration_url,
        };
        match PgStore::open(&pg.url, &pooled(None), 64).await {
            Err(StoreError::SchemaMismatch(why)) => {
                let first = MIGRATOR.iter().map(|m| m.version).min().unwrap_or(0);
                assert!(why.contains(&format!("from {first}")), "{why}");
            }
            Err(e) => panic!("expected SchemaMismatch, got {e}"),
            Ok(_) => panic!("a pooled store opened an unmigrated database"),
        }
        let store = PgStore::open(&pg.url, &pooled(Some(pg.url.clone())), 64)
            .await
            .expect("migrated over the direct URL");
        store.ping().await.expect("ping");
        drop(store);
        let store = PgStore::open(&pg.url, &pooled(None), 64)
            .await
            .expect("a current schema opens without migrating");
        assert!(
            !store.keep,
            "statements are not kept behind a transaction pooler"
        );
        let mut tx = store.read().await.expect("read");
        assert_eq!(
            tx.last_seq(crate::domain::TeamId::from(uuid::Uuid::nil()))
                .await
                .expect("query"),
            None
        );
        drop(tx);
        // A schema a later build migrated is not this build's either.
        let direct = PgPool::connect(&pg.url).await.expect("direct");
        sqlx::raw_sql(sqlx::AssertSqlSafe(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99990101000000, 'later', TRUE, '\\x00', 0)",
        ))
        .execute(&direct)
        .await
        .expect("a later migration");
        direct.close().await;
        match PgStore::open(&pg.url, &pooled(None), 64).await {
            Err(StoreError::SchemaMismatch(why)) => assert!(why.contains("unknown"), "{why}"),
            Err(e) => panic!("expected SchemaMismatch, got {e}"),
            Ok(_) => panic!("a pooled store opened a later schema"),
        }
        drop(store);
        pg.drop_database().await;
    }
}
