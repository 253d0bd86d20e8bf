//! The HTTP edge of `Idempotency-Key` (rules in `domain::idempotency`): a POST carrying the
//! header from an authenticated user is claimed before it runs; a retry gets the stored answer
//! (with `Idempotent-Replayed: true`), a key reused with another request 422, a key whose first
//! request is still running 409. Requests without the header, or without a valid access token
//! (the handler answers those), pass through untouched. A request that never answers (cancelled,
//! or the process died) leaves its key claimed until it is stale (`domain::idempotency`).

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use super::extract::bearer;
use crate::domain::UserId;
use crate::domain::idempotency::{fingerprint, valid_key};
use crate::store::{KeyClaim, StoredAnswer};

pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
pub const REPLAYED: &str = "idempotent-replayed";

/// The response headers a replay repeats: what a client reads besides the body.
const KEPT_HEADERS: [HeaderName; 3] = [header::CONTENT_TYPE, header::ETAG, header::LOCATION];

/// The largest answer kept (the API's answers to a POST are one resource, far smaller).
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// The middleware (`axum::middleware::from_fn_with_state`), for bodies up to `max_body` bytes.
pub async fn idempotency(
    State((state, max_body)): State<(AppState, usize)>,
    req: Request,
    next: Next,
) -> Response {
    if req.method() != Method::POST || !req.headers().contains_key(IDEMPOTENCY_KEY) {
        return next.run(req).await;
    }
    let key = match req.headers().get(IDEMPOTENCY_KEY).map(HeaderValue::to_str) {
        Some(Ok(k)) if valid_key(k) => k.to_owned(),
        _ => {
            return ApiError::bad_request(
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            )
            .into_response();
        }
    };
    let (parts, body) = req.into_parts();
    let user: Option<UserId> = bearer(&parts)
        .and_then(|t| state.services.tokens.verify(t).ok())
        .map(|p| p.user_id);
    let Some(user) = user else {
        return next.run(Request::from_parts(parts, body)).await;
    };
    let bytes = match axum::body::to_bytes(body, max_body).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than {max_body} bytes"),
            )
            .into_response();
        }
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    let print = fingerprint(parts.method.as_str(), &path, &bytes);
    match state
        .services
        .claim_idempotency_key(user, &key, &print)
        .await
    {
        Err(e) => ApiError::from(e).into_response(),
        Ok(KeyClaim::Mismatch) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used with another request",
        )
        .into_response(),
        Ok(KeyClaim::InProgress) => ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_key_in_use",
            "the first request with this Idempotency-Key has not answered yet",
        )
        .into_response(),
        Ok(KeyClaim::Answered(answer)) => replay(answer),
        Ok(KeyClaim::Claimed) => {
            let response = next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await;
            let (head, body) = response.into_parts();
            let bytes = match axum::body::to_bytes(body, MAX_ANSWER_BYTES).await {
                Ok(b) => b,
                // Not a POST's answer of this API; nothing to keep, nothing to send either.
                Err(_) => {
                    return ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "the answer could not be kept",
                    )
                    .into_response();
                }
            };
            let headers: Vec<[String; 2]> = KEPT_HEADERS
                .iter()
                .filter_map(|n| {
                    let v = head.headers.get(n)?.to_str().ok()?;
                    Some([n.as_str().to_owned(), v.to_owned()])
                })
                .collect();
            let answer = StoredAnswer {
                status: head.status.as_u16(),
                headers: serde_json::to_string(&headers).unwrap_or_else(|_| "[]".to_owned()),
                body: bytes.to_vec(),
            };
            // Should this fail, the key stays claimed until it is stale (see `KeyClaim`).
            if let Err(e) = state
                .services
                .finish_idempotency_key(user, &key, &answer)
                .await
            {
                tracing::warn!(error = %e, "keeping an idempotent answer failed");
            }
            Response::from_parts(head, Body::from(bytes))
        }
    }
}

fn replay(answer: StoredAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Bytes::from(answer.body)).into_response();
    let headers: Vec<[String; 2]> = serde_json::from_str(&answer.headers).unwrap_or_default();
    for [name, value] in headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            response.headers_mut().insert(n, v);
        }
    }
    response
        .headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    response
}
