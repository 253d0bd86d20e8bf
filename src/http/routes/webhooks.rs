//! A team's outgoing webhooks (owners and admins).

use crate::http::idempotency::NotKept;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{PageOf, PageQuery};
use crate::domain::webhook::{Delivery, Webhook};
use crate::domain::{TeamId, WebhookId};
use crate::http::AppState;
use crate::http::error::{ApiResult, Problem};
use crate::http::extract::{Caller, Json, Path, Query};
use crate::service::webhooks::{NewWebhook, WebhookPatch, WithSecret};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_webhooks, create_webhook))
        .routes(routes!(get_webhook, update_webhook, delete_webhook))
        .routes(routes!(rotate_secret))
        .routes(routes!(test_webhook))
        .routes(routes!(list_deliveries))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookBody {
    /// `https://` (plain `http://` and private addresses only where the server allows them).
    pub url: String,
    /// Activity type patterns: `task.created`, `task.*` or `*` (the default).
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhookBody {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    /// `true` resumes delivery from the cursor; `false` pauses it.
    pub enabled: Option<bool>,
}

/// A webhook with its signing secret, shown only when it is made. No `Debug`: nothing may print
/// the secret.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookWithSecret {
    #[serde(flatten)]
    pub webhook: Webhook,
    /// `whsec_<base64>`, as the Standard Webhooks libraries take it.
    pub secret: String,
}

impl From<WithSecret> for WebhookWithSecret {
    fn from(w: WithSecret) -> Self {
        Self {
            webhook: w.webhook,
            secret: w.secret,
        }
    }
}

/// The team's webhooks (never their secrets).
#[utoipa::path(get, path = "/teams/{teamId}/webhooks", tag = "webhooks",
    params(("teamId" = Uuid, Path)),
    responses((status = 200, body = PageOf<Webhook>),
        (status = 403, description = "not an owner or admin", body = Problem, content_type = "application/problem+json")))]
async fn list_webhooks(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(team): Path<TeamId>,
) -> ApiResult<axum::Json<PageOf<Webhook>>> {
    Ok(axum::Json(
        s.services.team_webhooks(user, team).await?.into(),
    ))
}

/// Creates a webhook; delivery starts with the team's next activity. The secret is in this
/// answer only.
#[utoipa::path(post, path = "/teams/{teamId}/webhooks", tag = "webhooks",
    params(("teamId" = Uuid, Path)), request_body = CreateWebhookBody,
    responses((status = 201, body = WebhookWithSecret),
        (status = 409, description = "the team has as many webhooks as it may have", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "a refused url, events or description", body = Problem, content_type = "application/problem+json")))]
async fn create_webhook(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(team): Path<TeamId>,
    Json(b): Json<CreateWebhookBody>,
) -> ApiResult<(
    StatusCode,
    axum::Extension<NotKept>,
    axum::Json<WebhookWithSecret>,
)> {
    let new = NewWebhook {
        url: b.url,
        events: b.events,
        description: b.description,
    };
    let created = s.services.create_webhook(user, team, new).await?;
    // The secret is shown once and kept sealed: never in an idempotency record.
    Ok((
        StatusCode::CREATED,
        axum::Extension(NotKept),
        axum::Json(created.into()),
    ))
}

#[utoipa::path(get, path = "/webhooks/{webhookId}", tag = "webhooks",
    params(("webhookId" = Uuid, Path)), responses((status = 200, body = Webhook)))]
async fn get_webhook(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<WebhookId>,
) -> ApiResult<axum::Json<Webhook>> {
    Ok(axum::Json(s.services.webhook(user, id).await?))
}

/// Changes a webhook. `enabled: true` on a disabled one resumes delivery from its cursor.
#[utoipa::path(patch, path = "/webhooks/{webhookId}", tag = "webhooks",
    params(("webhookId" = Uuid, Path)), request_body = UpdateWebhookBody,
    responses((status = 200, body = Webhook),
        (status = 422, description = "a refused url, events or description", body = Problem, content_type = "application/problem+json")))]
async fn update_webhook(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<WebhookId>,
    Json(b): Json<UpdateWebhookBody>,
) -> ApiResult<axum::Json<Webhook>> {
    let patch = WebhookPatch {
        url: b.url,
        events: b.events,
        description: b.description,
        enabled: b.enabled,
    };
    Ok(axum::Json(
        s.services.update_webhook(user, id, patch).await?,
    ))
}

#[utoipa::path(delete, path = "/webhooks/{webhookId}", tag = "webhooks",
    params(("webhookId" = Uuid, Path)), responses((status = 204, description = "deleted")))]
async fn delete_webhook(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<WebhookId>,
) -> ApiResult<StatusCode> {
    s.services.delete_webhook(user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new secret, in this answer only; the previous one keeps signing beside it for 24 hours.
#[utoipa::path(post, path = "/webhooks/{webhookId}/rotate-secret", tag = "webhooks",
    params(("webhookId" = Uuid, Path)), responses((status = 200, body = WebhookWithSecret)))]
async fn rotate_secret(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<WebhookId>,
) -> ApiResult<(axum::Extension<NotKept>, axum::Json<WebhookWithSecret>)> {
    Ok((
        axum::Extension(NotKept),
        axum::Json(s.services.rotate_webhook_secret(user, id).await?.into()),
    ))
}

/// Sends a signed `webhook.ping` now and answers how it went (also listed in the deliveries).
#[utoipa::path(post, path = "/webhooks/{webhookId}/test", tag = "webhooks",
    params(("webhookId" = Uuid, Path)), responses((status = 200, body = Delivery)))]
async fn test_webhook(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<WebhookId>,
) -> ApiResult<axum::Json<Delivery>> {
    Ok(axum::Json(s.services.ping_webhook(user, id).await?))
}

/// The webhook's recent attempts, newest first.
#[utoipa::path(get, path = "/webhooks/{webhookId}/deliveries", tag = "webhooks",
    params(("webhookId" = Uuid, Path), PageQuery),
    responses((status = 200, body = PageOf<Delivery>)))]
async fn list_deliveries(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<WebhookId>,
    Query(q): Query<PageQuery>,
) -> ApiResult<axum::Json<PageOf<Delivery>>> {
    Ok(axum::Json(
        s.services
            .webhook_deliveries(user, id, &q.into())
            .await?
            .into(),
    ))
}
