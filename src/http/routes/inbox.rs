//! The caller's inbox and following tasks.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::domain::notify::{MarkRead, Notification};
use crate::domain::{NotificationId, TaskId};
use crate::http::AppState;
use crate::http::error::{ApiResult, Problem};
use crate::http::extract::{Caller, Json, Path, Query};
use crate::service::PageRequest;
use crate::service::inbox::InboxFilter;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_notifications))
        .routes(routes!(mark_read))
        .routes(routes!(follow, unfollow))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InboxQuery {
    /// Only notifications with a greater seq.
    #[param(minimum = 0)]
    pub since: Option<i64>,
    /// Only unread notifications.
    pub unread: Option<bool>,
    /// Page size: default 50, larger values are clamped to 200.
    #[param(minimum = 1)]
    pub limit: Option<i64>,
    /// The `nextCursor` of the previous page (older notifications).
    pub cursor: Option<String>,
}

/// A page of the inbox, newest first, with where its stream stands.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InboxPage {
    pub items: Vec<Notification>,
    pub next_cursor: Option<String>,
    /// The stream's latest seq: subscribe with `since` set to it to miss nothing.
    pub seq: i64,
    pub unread_count: i64,
}

/// Exactly one of `ids` and `upto`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkReadBody {
    /// Notifications to mark read (at most 200).
    #[schema(value_type = Option<Vec<Uuid>>)]
    pub ids: Option<Vec<NotificationId>>,
    /// Marks every notification with a seq up to this one.
    #[schema(minimum = 0)]
    pub upto: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InboxState {
    pub seq: i64,
    pub unread_count: i64,
}

/// The caller's notifications, newest first, of the teams they are a member of.
#[utoipa::path(get, path = "/me/notifications", tag = "inbox", params(InboxQuery),
    responses((status = 200, body = InboxPage)))]
async fn list_notifications(
    State(s): State<AppState>,
    Caller(user): Caller,
    Query(q): Query<InboxQuery>,
) -> ApiResult<axum::Json<InboxPage>> {
    let filter = InboxFilter {
        since: q.since,
        unread_only: q.unread.unwrap_or(false),
    };
    let page = PageRequest {
        limit: q.limit,
        cursor: q.cursor,
    };
    let p = s.services.notifications(user, &filter, &page).await?;
    Ok(axum::Json(InboxPage {
        items: p.items,
        next_cursor: p.next_cursor,
        seq: p.seq,
        unread_count: p.unread_count,
    }))
}

/// Marks notifications read, by ids or up to a seq; `notification.read` tells every inbox socket.
#[utoipa::path(post, path = "/me/notifications/read", tag = "inbox", request_body = MarkReadBody,
    responses((status = 200, body = InboxState),
        (status = 422, description = "neither or both of ids and upto, or too many ids", body = Problem, content_type = "application/problem+json")))]
async fn mark_read(
    State(s): State<AppState>,
    Caller(user): Caller,
    Json(b): Json<MarkReadBody>,
) -> ApiResult<axum::Json<InboxState>> {
    let mark = match (b.ids, b.upto) {
        (Some(ids), None) => MarkRead::Ids(ids),
        (None, Some(upto)) => MarkRead::Upto(upto),
        _ => {
            return Err(crate::domain::DomainError::invalid(
                "ids",
                "name exactly one of ids and upto",
            )
            .into());
        }
    };
    let (seq, unread_count) = s.services.mark_read(user, mark).await?;
    Ok(axum::Json(InboxState { seq, unread_count }))
}

/// Follows a task: its comments, status changes and deletion notify the caller.
#[utoipa::path(put, path = "/tasks/{taskId}/follow", tag = "inbox", params(("taskId" = Uuid, Path)),
    responses((status = 204, description = "following")))]
async fn follow(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(task): Path<TaskId>,
) -> ApiResult<StatusCode> {
    s.services.set_following(user, task, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Stops following a task (until the caller comments on it).
#[utoipa::path(delete, path = "/tasks/{taskId}/follow", tag = "inbox", params(("taskId" = Uuid, Path)),
    responses((status = 204, description = "not following")))]
async fn unfollow(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(task): Path<TaskId>,
) -> ApiResult<StatusCode> {
    s.services.set_following(user, task, false).await?;
    Ok(StatusCode::NO_CONTENT)
}
