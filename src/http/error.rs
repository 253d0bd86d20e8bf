//! RFC 9457 problem+json errors: the one error type of the HTTP edge.
//!
//! Every failure becomes `{type, title, status, detail, code}` with a stable `code`. Internal
//! causes are logged here and never shown to the client.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::{DomainError, FieldError};
use crate::service::ServiceError;
use crate::store::StoreError;

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// A URI naming the kind of problem: `urn:taskforge:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable machine-readable code, e.g. `validation_failed`, `not_found`, `forbidden`.
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
    /// With `precondition_failed`: the task's current version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_version: Option<i64>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub problem: Problem,
    /// With `rate_limited`: whole seconds until a retry can succeed (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        let title = status.canonical_reason().unwrap_or("Error").to_owned();
        Self {
            status,
            problem: Problem {
                kind: format!("urn:taskforge:problem:{code}"),
                title,
                status: status.as_u16(),
                detail: detail.into(),
                code: code.to_owned(),
                errors: None,
                current_version: None,
            },
            retry_after: None,
        }
    }

    /// 429 `rate_limited`, with `Retry-After` rounded up to whole seconds.
    pub fn rate_limited(wait: std::time::Duration, detail: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", detail);
        e.retry_after = Some(wait.as_secs() + u64::from(wait.subsec_nanos() > 0));
        e
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
    }

    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            detail,
        );
        e.problem.errors = Some(errors);
        e
    }

    fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "something went wrong on our side",
        )
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::Validation(errors) => Self::validation(errors),
            DomainError::NotFound => Self::not_found(),
            DomainError::Forbidden(why) => Self::new(StatusCode::FORBIDDEN, "forbidden", why),
            DomainError::Conflict(why) => Self::new(StatusCode::CONFLICT, "conflict", why),
            DomainError::PreconditionFailed { current_version } => {
                let mut e = Self::new(
                    StatusCode::PRECONDITION_FAILED,
                    "precondition_failed",
                    format!("the task is at version {current_version}"),
                );
                e.problem.current_version = Some(current_version);
                e
            }
            DomainError::Unauthorized(why) => Self::unauthorized(why),
            DomainError::ResumeUnavailable => Self::new(
                StatusCode::GONE,
                "resume_unavailable",
                "that seq is outside the retained activity log; refetch instead",
            ),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Domain(d) => d.into(),
            ServiceError::Store(StoreError::Stale) => Self::new(
                StatusCode::CONFLICT,
                "conflict",
                "the resource changed concurrently; retry",
            ),
            ServiceError::Busy(why, retry) => {
                let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why);
                e.retry_after = Some(retry.as_secs().max(1));
                e
            }
            other => Self::internal(&other),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(_: PathRejection) -> Self {
        Self::bad_request("an id in the path is not a UUID")
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::validation(vec![FieldError::new("query", r.body_text())])
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        let mut res = (status, axum::Json(&self.problem)).into_response();
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if let Some(v) = self.problem.current_version
            && let Ok(etag) = HeaderValue::from_str(&format!("\"{v}\""))
        {
            headers.insert(header::ETAG, etag);
        }
        res
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
