//! Extractors that turn requests into typed input, answering problem+json when they cannot.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;
use crate::domain::{FieldError, UserId};
use crate::service::AuthError;

/// The authenticated caller, from `Authorization: Bearer <accessToken>`.
#[derive(Debug, Clone, Copy)]
pub struct Caller(pub UserId);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token =
            bearer(parts).ok_or_else(|| ApiError::unauthorized("an access token is required"))?;
        match state.services.tokens.verify(token) {
            Ok(p) => Ok(Caller(p.user_id)),
            Err(AuthError::Expired) => Err(ApiError::unauthorized("the access token has expired")),
            Err(AuthError::Invalid) => Err(ApiError::unauthorized("the access token is invalid")),
        }
    }
}

/// The token of an `Authorization: Bearer` header, if any.
pub fn bearer(parts: &Parts) -> Option<&str> {
    bearer_in(&parts.headers)
}

/// The token of an `Authorization: Bearer` header among `headers`, if any.
pub fn bearer_in(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// A JSON body, with problem+json rejections that name the offending field.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<mime::Mime>().ok())
            .is_some_and(|m| {
                m.type_() == "application"
                    && (m.subtype() == "json" || m.suffix().is_some_and(|s| s == "json"))
            });
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the request body is too large",
                )
            } else {
                ApiError::bad_request("the request body could not be read")
            }
        })?;
        // Syntax first, on its own: serde_json reports some shape errors (a number where an enum's
        // string belongs) as syntax errors, and those must be 422 like any other wrong shape.
        // JSON text is UTF-8 (RFC 8259); serde_json checks it only in the strings it keeps.
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| ApiError::bad_request("the body is not valid UTF-8"))?;
        serde_json::from_str::<serde::de::IgnoredAny>(text)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
        // Every body of the API is an object; serde would also read a struct from an array.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::validation(vec![FieldError::new(
                "body",
                "must be a JSON object",
            )]));
        }
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|e| body_error(&e))?;
        Ok(Json(value))
    }
}

/// Well-formed JSON of the wrong shape (the syntax was checked before): 422 naming the field.
fn body_error(e: &serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let inner = e.inner();
    let message = if inner.is_syntax() {
        // e.g. "expected value" for a number where an enum's string belongs
        format!("has the wrong type ({inner})")
    } else {
        inner.to_string()
    };
    let path = e.path().to_string();
    let field = if path.is_empty() || path == "." {
        // `missing field `title`` has no path: the name is in the message.
        message
            .split('`')
            .nth(1)
            .filter(|_| message.starts_with("missing field"))
            .unwrap_or("body")
            .to_owned()
    } else {
        path
    };
    // serde appends " at line L column C": position is noise for a client naming fields.
    let message = message
        .split(" at line ")
        .next()
        .unwrap_or(&message)
        .to_owned();
    ApiError::validation(vec![FieldError::new(&field, message)])
}

/// `axum::extract::Path` with problem+json rejections.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(v) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Path(v))
    }
}

/// `axum::extract::Query` with problem+json rejections.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(v) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(v))
    }
}

/// The client's address (see `limits::client_ip`); `None` when the server runs without connection
/// info (then no per-address limit applies).
pub struct ClientIp(pub Option<std::net::IpAddr>);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(crate::limits::client_ip(
            parts,
            state.limits.trust_forwarded,
        )))
    }
}
