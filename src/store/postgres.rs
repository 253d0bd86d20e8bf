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

#[async_trait]
impl Store for PgStore {
    async fn read(&self) -> Result<Box<dyn Tx>> {
        let tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
        Ok(Box::new(PgTx { tx }))
    }

    async fn write(&self) -> Result<Box<dyn Tx>> {
        Ok(Box::new(PgTx {
            tx: self.pool.begin().await?,
        }))
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}

// A delete-strength row lock: it waits for writers holding a key-share lock on the row.
super::sql::impl_tx!(PgTx, " FOR UPDATE");
