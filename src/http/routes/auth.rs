//! Accounts and sessions.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::domain::User;
use crate::domain::rules::{check_credential_sizes, normalize_email};
use crate::http::AppState;
use crate::http::error::ApiResult;
use crate::http::extract::{Caller, ClientIp, Json};
use crate::service::Session;
use crate::service::auth::Me;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(me, patch_me))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisterBody {
    #[schema(max_length = 254)]
    pub email: String,
    #[schema(min_length = 8, max_length = 1024)]
    pub password: String,
    #[schema(min_length = 1, max_length = 100)]
    pub display_name: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginBody {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefreshBody {
    pub refresh_token: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PatchMeBody {
    #[schema(min_length = 1, max_length = 100)]
    pub display_name: String,
}

/// Creates an account and signs it in.
#[utoipa::path(post, path = "/auth/register", tag = "auth", security(()), request_body = RegisterBody,
    responses((status = 201, body = Session), (status = 409, description = "email taken", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "too many attempts from this address, for this email from this address, or for this email (`rate_limited`, `Retry-After`)", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "no core free and no place in the short hashing queue (`unavailable`, `Retry-After`)", body = crate::http::error::Problem, content_type = "application/problem+json")))]
async fn register(
    State(s): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(b): Json<RegisterBody>,
) -> ApiResult<(StatusCode, axum::Json<Session>)> {
    let email = normalize_email(&b.email);
    check_credential_sizes(&email, &b.password)?;
    s.limits.auth.check(ip, &email)?;
    let session = s
        .services
        .register(&b.email, &b.password, &b.display_name)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(session)))
}

/// Signs in; a wrong email and a wrong password get the same answer.
#[utoipa::path(post, path = "/auth/login", tag = "auth", security(()), request_body = LoginBody,
    responses((status = 200, body = Session),
        (status = 422, description = "an email or password longer than any account can have", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "too many attempts from this address, for this email from this address, or for this email (`rate_limited`, `Retry-After`)", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "no core free and no place in the short hashing queue (`unavailable`, `Retry-After`)", body = crate::http::error::Problem, content_type = "application/problem+json")))]
async fn login(
    State(s): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(b): Json<LoginBody>,
) -> ApiResult<axum::Json<Session>> {
    let email = normalize_email(&b.email);
    check_credential_sizes(&email, &b.password)?;
    s.limits.auth.check(ip, &email)?;
    Ok(axum::Json(s.services.login(&email, &b.password).await?))
}

/// Rotates a refresh token. Reusing a rotated one revokes its whole family.
#[utoipa::path(post, path = "/auth/refresh", tag = "auth", security(()), request_body = RefreshBody,
    responses((status = 200, body = Session)))]
async fn refresh(
    State(s): State<AppState>,
    Json(b): Json<RefreshBody>,
) -> ApiResult<axum::Json<Session>> {
    Ok(axum::Json(s.services.refresh(&b.refresh_token).await?))
}

/// Revokes the refresh token's family.
#[utoipa::path(post, path = "/auth/logout", tag = "auth", security(()), request_body = RefreshBody,
    responses((status = 204, description = "signed out")))]
async fn logout(State(s): State<AppState>, Json(b): Json<RefreshBody>) -> ApiResult<StatusCode> {
    s.services.logout(&b.refresh_token).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller and the teams they belong to, with their role in each.
#[utoipa::path(get, path = "/me", tag = "auth", responses((status = 200, body = Me)))]
async fn me(State(s): State<AppState>, Caller(user): Caller) -> ApiResult<axum::Json<Me>> {
    Ok(axum::Json(s.services.me(user).await?))
}

/// Changes the caller's display name.
#[utoipa::path(patch, path = "/me", tag = "auth", request_body = PatchMeBody, responses((status = 200, body = User)))]
async fn patch_me(
    State(s): State<AppState>,
    Caller(user): Caller,
    Json(b): Json<PatchMeBody>,
) -> ApiResult<axum::Json<User>> {
    Ok(axum::Json(
        s.services.set_display_name(user, &b.display_name).await?,
    ))
}
