//! The HTTP edge of `Idempotency-Key` (rules in `domain::idempotency`): a POST carrying the
//! header from an authenticated user is claimed before it runs; a retry gets the stored answer
//! (with `Idempotent-Replayed: true`), a key reused with another request 422, a key whose first
//! request is still running 409. Requests without the header, or without a valid access token
//! (the handler answers those), pass through untouched. A keyed request runs to its end in a task
//! of its own; only a process that dies mid-request leaves its key claimed until it is stale. The
//! request's changes mark the key applied as they commit (`Services::run_keyed`): a stale claim
//! whose change committed is answered 409 `idempotency_answer_lost`, never run again.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use super::extract::bearer_in;
use crate::domain::UserId;
use crate::domain::idempotency::{fingerprint, valid_key};
use crate::store::{KeyClaim, StoredAnswer};

pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
pub const REPLAYED: &str = "idempotent-replayed";

/// The response headers a replay repeats: what a client reads besides the body.
const KEPT_HEADERS: [HeaderName; 3] = [header::CONTENT_TYPE, header::ETAG, header::LOCATION];

/// The largest answer kept (the API's answers to a POST are one resource, far smaller).
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Set on a response (as an extension) whose body must never be kept: answers that carry a
/// secret (a webhook's signing secret). The key is then freed, as if the request had none.
#[derive(Debug, Clone, Copy)]
pub struct NotKept;

/// The middleware (`axum::middleware::from_fn_with_state`), for bodies up to `max_body` bytes.
pub async fn idempotency(
    State((state, max_body)): State<(AppState, usize)>,
    req: Request,
    next: Next,
) -> Response {
    // The public routes (register, login, refresh, logout) answer with sessions: never kept.
    if req.method() != Method::POST
        || !req.headers().contains_key(IDEMPOTENCY_KEY)
        || req.uri().path().starts_with("/api/v1/auth/")
    {
        return next.run(req).await;
    }
    // The caller first: without a valid token the handler answers, as without the header.
    let user: Option<UserId> = bearer_in(req.headers())
        .and_then(|t| state.services.tokens.verify(t).ok())
        .map(|p| p.user_id);
    let Some(user) = user else {
        return next.run(req).await;
    };
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
    let bytes = match axum::body::to_bytes(body, max_body).await {
        Ok(b) => b,
        Err(e) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            return if too_large {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("the body is larger than {max_body} bytes"),
                )
                .into_response()
            } else {
                ApiError::bad_request("the body could not be read").into_response()
            };
        }
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let print = fingerprint(parts.method.as_str(), &path, content_type, &bytes);
    let claimed_at = match state
        .services
        .claim_idempotency_key(user, &key, &print)
        .await
    {
        Err(e) => return ApiError::from(e).into_response(),
        Ok((KeyClaim::Mismatch, _)) => {
            return ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used with another request",
            )
            .into_response();
        }
        Ok((KeyClaim::InProgress, _)) => {
            return ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_in_use",
                "the first request with this Idempotency-Key has not answered yet",
            )
            .into_response();
        }
        Ok((KeyClaim::AnswerLost, _)) => {
            return ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_answer_lost",
                "the first request with this Idempotency-Key was applied, but the server \
                 stopped before its answer was kept: read the resource instead of retrying",
            )
            .into_response();
        }
        Ok((KeyClaim::Answered(answer), _)) => return replay(answer),
        Ok((KeyClaim::Claimed, at)) => at,
    };
    // The request and the keeping of its answer run in a task of their own: a client that goes
    // away, or the server's timeout, must not cut the request between its commit and the keeping
    // of its answer (the retry would then run it again). Bounded by the handler's own work.
    let req = Request::from_parts(parts, Body::from(bytes));
    let claim = Claim {
        state,
        user,
        key,
        fingerprint: print,
        at: claimed_at,
    };
    match tokio::spawn(run_and_keep(claim, next, req)).await {
        Ok(response) => response,
        Err(e) => {
            tracing::error!(error = %e, "an idempotent request's task failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the request failed",
            )
            .into_response()
        }
    }
}

/// The key a request holds while it runs.
struct Claim {
    state: AppState,
    user: UserId,
    key: String,
    fingerprint: Vec<u8>,
    at: time::OffsetDateTime,
}

/// Runs the request and keeps its answer (or frees the key when there is none to keep).
async fn run_and_keep(claim: Claim, next: Next, req: Request) -> Response {
    let response = claim
        .state
        .services
        .run_keyed(claim.user, claim.key.clone(), claim.at, next.run(req))
        .await;
    let secret = response.extensions().get::<NotKept>().is_some();
    let keep = !secret
        && axum::body::HttpBody::size_hint(response.body())
            .upper()
            .is_some_and(|n| n <= MAX_ANSWER_BYTES as u64);
    if !keep {
        release(&claim, secret).await;
        return response;
    }
    let (head, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_ANSWER_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            release(&claim, false).await;
            tracing::warn!(error = %e, "an idempotent answer could not be read");
            return ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the answer could not be read",
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
    // Should this fail, the key stays claimed until it is stale (`domain::idempotency`).
    if let Err(e) = claim
        .state
        .services
        .finish_idempotency_key(
            claim.user,
            &claim.key,
            &claim.fingerprint,
            claim.at,
            &answer,
        )
        .await
    {
        tracing::warn!(error = %e, "keeping an idempotent answer failed");
    }
    Response::from_parts(head, Body::from(bytes))
}

/// Frees the key of a request whose answer is not kept (see `Services::release_idempotency_key`).
async fn release(claim: &Claim, secret: bool) {
    if let Err(e) = claim
        .state
        .services
        .release_idempotency_key(claim.user, &claim.key, &claim.fingerprint, claim.at, secret)
        .await
    {
        tracing::warn!(error = %e, "freeing an idempotency key failed");
    }
}

fn replay(answer: StoredAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    // Only the kept headers: no content type the first answer did not have.
    let mut response = Response::new(Body::from(answer.body));
    *response.status_mut() = status;
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
