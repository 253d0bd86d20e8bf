//! Liveness, readiness and metrics.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::http::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// `ok`, `ready` or `unavailable`.
    pub status: &'static str,
    /// `up` or `down` (readiness only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bus: Option<&'static str>,
    /// `up`, or `down` when a background task (relay, dispatch, log check, presence, Redis
    /// loops) ended before shutdown (readiness only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks: Option<&'static str>,
    /// The background tasks that ended, when `tasks` is `down`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_tasks: Vec<&'static str>,
}

fn up(ok: bool) -> &'static str {
    if ok { "up" } else { "down" }
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", security(()), responses((status = 200, body = Health)))]
async fn healthz() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok",
        database: None,
        bus: None,
        tasks: None,
        failed_tasks: Vec::new(),
    })
}

/// How long `/readyz` waits for the database's answer.
const READY_DB_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The database and the bus are reachable, and every background task runs.
#[utoipa::path(get, path = "/readyz", tag = "health", security(()),
    responses((status = 200, body = Health), (status = 503, body = Health)))]
async fn readyz(State(s): State<AppState>) -> (StatusCode, axum::Json<Health>) {
    // Bounded: a database that hangs (behind a pooler still trying to log in to it) is down for
    // a probe, which must answer within its own timeout.
    let db = tokio::time::timeout(READY_DB_WAIT, s.services.store.ping())
        .await
        .is_ok_and(|r| r.is_ok());
    let bus = s.bus.is_up();
    let failed_tasks = s.tasks.failed();
    let ready = db && bus && failed_tasks.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let label = if ready { "ready" } else { "unavailable" };
    (
        status,
        axum::Json(Health {
            status: label,
            database: Some(up(db)),
            bus: Some(up(bus)),
            tasks: Some(up(failed_tasks.is_empty())),
            failed_tasks,
        }),
    )
}

/// Metrics in the Prometheus text format (see `telemetry` for what each one counts).
#[utoipa::path(get, path = "/metrics", tag = "health", security(()),
    responses((status = 200, description = "Prometheus text exposition format 0.0.4", content_type = "text/plain", body = String)))]
async fn metrics(State(s): State<AppState>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        s.telemetry.render(),
    )
}
