//! The HTTP edge: the axum router, extractors, problem+json errors and the OpenAPI document.
//!
//! Handlers stay thin (extract, call a service, map the result). This module must never hold
//! business rules or SQL; it depends on `service` and `domain`, and nothing depends on it.

pub mod error;
pub mod extract;
mod openapi;
pub mod routes;
pub mod web;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Request, header};
use axum::response::IntoResponse;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa_axum::router::OpenApiRouter;

use crate::bus::Bus;
use crate::service::Services;
use error::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub services: Services,
    pub bus: Arc<dyn Bus>,
}

/// The OpenAPI document of every route, as built from the handlers' annotations.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_router().split_for_parts().1
}

fn api_router() -> OpenApiRouter<AppState> {
    let v1 = OpenApiRouter::new()
        .merge(routes::auth::router())
        .merge(routes::teams::router())
        .merge(routes::tasks::router())
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
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], doc.to_string()) }
            }),
        )
        .merge(web::router())
        .fallback(|| async { ApiError::not_found().into_response() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(axum::http::StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "that method is not allowed here")
        })
        .with_state(state)
        .merge(extra)
        .layer(DefaultBodyLimit::max(max_body_bytes))
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
