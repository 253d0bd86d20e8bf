//! PostgreSQL, for many instances sharing one database.
//!
//! Writes run at READ COMMITTED; the team row is locked by `append`, the last statement before
//! COMMIT, so one team's writes serialize only for that short tail and teams write in parallel.
//! Reads run in a REPEATABLE READ, READ ONLY transaction: one snapshot for the data and its seq.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::Postgres;
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::{Result, Store, Tx};

pub struct PgStore {
    pool: PgPool,
}

pub struct PgTx {
    tx: sqlx::Transaction<'static, Postgres>,
}

impl PgStore {
    pub async fn open(url: &str, pool_size: u32) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(2))
            .acquire_timeout(Duration::from_secs(30))
            .connect(url)
            .await?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        Ok(Self { pool })
    }
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
        let pool = self.pool.clone();
        let begun = tokio::spawn(async move {
            let mut tx = pool.begin_with(statement).await?;
            if let Some(setting) = setting {
                sqlx::query(setting).execute(&mut *tx).await?;
            }
            Ok::<_, sqlx::Error>(tx)
        })
        .await
        .map_err(|e| sqlx::Error::Protocol(format!("the BEGIN task failed: {e}")))??;
        Ok(PgTx { tx: begun })
    }
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

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn webhook_now(
        &self,
        id: crate::domain::WebhookId,
    ) -> Result<Option<super::WebhookRecord>> {
        super::webhooks::webhook_now!(&self.pool, id)
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
    " FOR KEY SHARE"
);
super::webhooks::impl_webhook_tx!(PgTx, " FOR UPDATE");
