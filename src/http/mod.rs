//! The HTTP edge: the axum router, extractors, problem+json errors and the OpenAPI document.
//!
//! Handlers stay thin (extract, call a service, map the result). This module must never hold
//! business rules or SQL; it depends on `service` and `domain`, and nothing depends on it.

pub mod error;
pub mod extract;
pub mod idempotency;
mod openapi;
pub mod routes;
pub mod serve;
pub mod web;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, Request, header};
use axum::response::IntoResponse;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa_axum::router::OpenApiRouter;

use crate::bus::Bus;
use crate::limits::{AuthLimits, Key, KeyedLimiter, RateLimited};
use crate::service::Services;
use crate::telemetry::{self, Telemetry};
use error::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub services: Services,
    pub bus: Arc<dyn Bus>,
    pub telemetry: Telemetry,
    pub limits: Arc<EdgeLimits>,
    /// The background tasks: readiness fails when one died.
    pub tasks: crate::supervisor::Supervisor,
}

/// The rate limits the HTTP edge applies (the counting is `limits`'s).
pub struct EdgeLimits {
    pub auth: AuthLimits,
    /// Adding a member by email answers whether the address has an account: charged per caller.
    pub member_by_email: Option<KeyedLimiter>,
    /// Whether the client address comes from `X-Forwarded-For` (see `limits::client_ip`).
    pub trust_forwarded: bool,
}

impl EdgeLimits {
    /// One look-up of an account by email on behalf of `user`, from `ip`: charged to the user and
    /// to the address's sign-up/log-in allowance.
    pub fn check_member_by_email(
        &self,
        ip: Option<std::net::IpAddr>,
        user: crate::domain::UserId,
    ) -> Result<(), RateLimited> {
        if let (Some(l), Some(ip)) = (&self.auth.per_ip, ip) {
            l.check(Key::ip(ip)).map_err(|wait| RateLimited {
                wait,
                detail: "too many attempts from this address; retry later",
            })?;
        }
        if let Some(l) = &self.member_by_email {
            l.check(Key::of(user.as_bytes()))
                .map_err(|wait| RateLimited {
                    wait,
                    detail: "too many members added by email; retry later, or add them by userId",
                })?;
        }
        Ok(())
    }
}

impl From<RateLimited> for ApiError {
    fn from(r: RateLimited) -> Self {
        ApiError::rate_limited(r.wait, r.detail)
    }
}

/// The OpenAPI document of every route, as built from the handlers' annotations.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_router().split_for_parts().1
}

fn api_router() -> OpenApiRouter<AppState> {
    let v1 = OpenApiRouter::new()
        .merge(routes::auth::router())
        .merge(routes::teams::router())
        .merge(routes::labels::router())
        .merge(routes::tasks::router())
        .merge(routes::inbox::router())
        .merge(routes::webhooks::router())
        .merge(routes::activity::router());
    OpenApiRouter::with_openapi(openapi::base())
        .nest("/api/v1", v1)
        .merge(routes::health::router())
}

/// The whole HTTP surface; `extra` (the realtime endpoint) shares the layers.
pub fn router(state: AppState, max_body_bytes: usize, extra: Router) -> Router {
    let (router, mut api) = api_router().split_for_parts();
    openapi::finish(&mut api);
    let doc: Arc<str> = Arc::from(api.to_json().unwrap_or_else(|_| "{}".to_owned()));
    router
        // The API's routes only (added above): an `Idempotency-Key` on a POST is honoured there.
        .layer(axum::middleware::from_fn_with_state(
            (state.clone(), max_body_bytes),
            idempotency::idempotency,
        ))
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], doc.to_string()) }
            }),
        )
        .merge(web::router())
        .with_state(state)
        .merge(extra)
        // After the merge: the fallback for a wrong method applies to the routes registered so far.
        .fallback(|| async { ApiError::not_found().into_response() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(axum::http::StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "that method is not allowed here")
        })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn(count_request))
        .layer(
            // One line per request; the span names the path only: query strings can carry tokens.
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<Body>| {
                    let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
                    tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
                })
                .on_request(())
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(30),
        ))
}

/// Counts every request by method, route template (not the path: ids would make every task its
/// own series) and status, and times it.
async fn count_request(
    req: Request<Body>,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method: &'static str = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(telemetry::HTTP_REQUESTS, "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(telemetry::HTTP_DURATION, "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}
