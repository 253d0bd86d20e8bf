//! A team's labels.

use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{PageOf, PageQuery, WithSeq};
use crate::domain::rules::{LabelPatch, NewLabel};
use crate::domain::{Label, LabelId, TeamId};
use crate::http::AppState;
use crate::http::error::{ApiResult, Problem};
use crate::http::extract::{Caller, Json, Path, Query};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_label, list_labels))
        .routes(routes!(patch_label, delete_label))
}

/// Creates a label (not viewers); emits `label.created`. 409 when the team has a label of that
/// name in any case, or has 200 labels.
#[utoipa::path(post, path = "/teams/{teamId}/labels", tag = "labels", params(("teamId" = Uuid, Path)), request_body = NewLabel,
    responses((status = 201, body = Label), (status = 409, description = "name taken, or too many labels", body = Problem, content_type = "application/problem+json")))]
async fn create_label(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(team): Path<TeamId>,
    Json(b): Json<NewLabel>,
) -> ApiResult<(StatusCode, axum::Json<Label>)> {
    Ok((
        StatusCode::CREATED,
        axum::Json(s.services.create_label(user, team, b).await?),
    ))
}

/// The team's labels, oldest first (a team has at most 200: one page of 200 holds them all).
#[utoipa::path(get, path = "/teams/{teamId}/labels", tag = "labels", params(("teamId" = Uuid, Path), PageQuery),
    responses((status = 200, body = PageOf<Label>, headers(("X-TaskForge-Seq" = i64)))))]
async fn list_labels(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(team): Path<TeamId>,
    Query(q): Query<PageQuery>,
) -> ApiResult<WithSeq<PageOf<Label>>> {
    let r = s.services.labels(user, team, &q.into()).await?;
    Ok(WithSeq(r.seq, r.data.into()))
}

/// Renames or recolors a label (not viewers); emits `label.updated` if anything changed.
#[utoipa::path(patch, path = "/labels/{labelId}", tag = "labels", params(("labelId" = Uuid, Path)), request_body = LabelPatch,
    responses((status = 200, body = Label), (status = 409, description = "name taken", body = Problem, content_type = "application/problem+json")))]
async fn patch_label(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(label): Path<LabelId>,
    Json(b): Json<LabelPatch>,
) -> ApiResult<axum::Json<Label>> {
    Ok(axum::Json(s.services.update_label(user, label, b).await?))
}

/// Deletes a label and takes it off every task in the same transaction (not viewers); emits
/// `label.deleted` (no `task.updated` per task: clients drop the id from their tasks).
#[utoipa::path(delete, path = "/labels/{labelId}", tag = "labels", params(("labelId" = Uuid, Path)),
    responses((status = 204, description = "deleted")))]
async fn delete_label(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(label): Path<LabelId>,
) -> ApiResult<StatusCode> {
    s.services.delete_label(user, label).await?;
    Ok(StatusCode::NO_CONTENT)
}
