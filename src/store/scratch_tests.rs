//! Test support: a fresh PostgreSQL database per test, migrated by the store, dropped after.

use sqlx::Connection;
use uuid::Uuid;

pub struct ScratchPg {
    pub url: String,
    name: String,
    admin: sqlx::PgConnection,
}

impl ScratchPg {
    /// None (with a visible message) without `TASKFORGE_TEST_DATABASE_URL`, a failure under
    /// `CI=true`.
    pub async fn create() -> Option<ScratchPg> {
        let Ok(base) = std::env::var("TASKFORGE_TEST_DATABASE_URL") else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but TASKFORGE_TEST_DATABASE_URL is not set"
            );
            eprintln!("skipping PostgreSQL: TASKFORGE_TEST_DATABASE_URL not set");
            return None;
        };
        let name = format!("taskforge_store_{}", Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&base).await.expect("connects");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("creates a database");
        let url = match base.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => panic!("no database in {base}"),
        };
        Some(ScratchPg { url, name, admin })
    }

    pub async fn drop_database(mut self) {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut self.admin)
        .await
        .ok();
    }
}
