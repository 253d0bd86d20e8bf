//! The test harness, split by concern:
//! - [`server`]: the server under test, in the test process or as a child process, on a fresh
//!   SQLite file or PostgreSQL database;
//! - [`cluster`]: a Redis of the test's own and clusters of server processes;
//! - [`http`]: the HTTP client, typed shapes, problem+json assertions;
//! - [`socket`]: the WebSocket client and raw TCP;
//! - [`sse`]: the SSE client;
//! - [`reader`]: what every realtime client offers (reading frames, barriers, waits);
//! - [`realtime`]: a client over either transport, for tests written once for both;
//! - [`spec`]: the OpenAPI and AsyncAPI documents as oracles for every response and frame;
//! - [`audit`]: reading streams of frames, and a seeded RNG;
//! - [`receiver`]: a webhook receiver that checks Standard Webhooks signatures and injects faults;
//! - [`tokens`]: forged and decoded JWTs;
//! - [`topology`]: deployments (one instance per backend, three instances) that the realtime
//!   tests run over, the transports, `every_topology!` and `every_transport!`.

pub mod audit;
pub mod cluster;
pub mod http;
pub mod reader;
pub mod realtime;
pub mod receiver;
pub mod server;
pub mod socket;
pub mod spec;
pub mod sse;
pub mod tokens;
#[macro_use]
pub mod topology;

pub use audit::*;
pub use cluster::*;
pub use http::*;
pub use reader::*;
pub use realtime::*;
pub use receiver::*;
pub use server::*;
pub use socket::*;
pub use spec::*;
pub use sse::*;
pub use tokens::*;
pub use topology::*;

pub const API: &str = "/api/v1";

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Whether PostgreSQL-backed tests can run. Panics under `CI=true` when no database is configured.
pub fn postgres_enabled() -> bool {
    if std::env::var("TASKFORGE_TEST_DATABASE_URL").is_ok_and(|v| !v.is_empty()) {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but TASKFORGE_TEST_DATABASE_URL is not set: PostgreSQL tests cannot run");
    }
    eprintln!("skipping PostgreSQL: TASKFORGE_TEST_DATABASE_URL not set");
    false
}

/// Generates `mod <name> { sqlite, postgres }` tests for each `async fn <name>(Backend)`;
/// `both_backends!(slow: ...)` puts them in the slow set (ignored by a plain `cargo test`).
#[macro_export]
macro_rules! both_backends {
    (slow: $($name:ident),* $(,)?) => {
        $(
            $crate::both_backends!(@one [#[ignore = "slow set: cargo test -- --ignored"]] $name);
        )*
    };
    (@one [$(#[$attr:meta])*] $name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn postgres() {
                if !$crate::common::postgres_enabled() {
                    return;
                }
                super::$name($crate::common::Backend::Postgres).await
            }
        }
    };
    ($($name:ident),* $(,)?) => {
        $(
            $crate::both_backends!(@one [] $name);
        )*
    };
}
