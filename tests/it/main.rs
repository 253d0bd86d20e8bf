//! The integration tests: one binary, a module per concern. `common` is the harness: servers
//! (in the test process, or as processes where one must die), clients, spec checks.
#![allow(clippy::needless_range_loop)]
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

mod activity;
mod auth;
mod boards;
mod chaos;
mod cli;
mod client_artifacts;
mod cluster;
mod comments;
mod concurrency;
mod hostile;
mod http;
mod idempotency;
mod idor;
mod import;
mod inbox;
mod isolation;
mod jwt;
mod labels;
mod limits;
mod members;
mod metrics;
mod outbox;
mod presence_recovery;
mod presence_state;
mod protocol_props;
mod realtime_auth;
mod realtime_fuzz_frames;
mod realtime_protection;
mod realtime_random;
mod realtime_resume;
mod realtime_rooms;
mod realtime_sse;
mod search;
mod sharded_bus;
mod store_defects;
mod task_filters;
mod tasks;
mod teams;
mod webhooks;
