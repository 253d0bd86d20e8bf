//! TaskForge: a team task tracker whose realtime layer never misses an event.
//!
//! Layers, each depending only on those listed before it:
//! - `domain`: entities, rules, activities and routing; pure, no I/O.
//! - `store`: durable state (SQLite or PostgreSQL) behind the `Store` trait.
//! - `bus`: the outbox relay and the transport of committed activities between instances.
//! - `service`: the use cases; one store transaction each, activities appended in it.
//! - `http`: the axum edge, problem+json errors, OpenAPI.
//! - `realtime`: the `/realtime` socket and the `Hub` that fans activities out to rooms.
//! - `app`: wiring them together from a `Config`.
//!
//! `telemetry` (metric names and the Prometheus recorder) is a leaf every layer may record to;
//! `limits` (per-key rate limits) one the edges use; `supervisor` (the background tasks' owner)
//! one the layers that run loops (bus, realtime, telemetry) spawn through.

#![forbid(unsafe_code)]

pub mod app;
pub mod bus;
pub mod config;
pub mod domain;
pub mod http;
pub mod limits;
pub mod realtime;
pub mod service;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod webhook;
