//! Tasks and comments.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{PageOf, PageQuery, SEQ_HEADER, WithSeq};
use crate::domain::rules::{NewTask, TaskPatch};
use crate::domain::{BoardId, Comment, CommentId, Task, TaskId, TaskStatus, TeamId, UserId};
use crate::http::AppState;
use crate::http::error::{ApiResult, Problem};
use crate::http::extract::{Caller, Json, Path, Query};
use crate::store::TaskFilter;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_task, list_tasks))
        .routes(routes!(get_task, patch_task, delete_task))
        .routes(routes!(create_comment, list_comments))
        .routes(routes!(patch_comment, delete_comment))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct TaskQuery {
    #[param(value_type = Option<Uuid>)]
    pub board_id: Option<BoardId>,
    pub status: Option<TaskStatus>,
    #[param(value_type = Option<Uuid>)]
    pub assignee_user_id: Option<UserId>,
    #[param(minimum = 1)]
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CommentBody {
    #[schema(min_length = 1, max_length = 10000)]
    pub body: String,
}

/// A task with its version as `ETag` (and the team's seq when read).
struct TaskResponse {
    task: Task,
    seq: Option<i64>,
    /// Whether the caller follows it (on a read).
    following: Option<bool>,
    status: StatusCode,
}

/// `GET /tasks/{taskId}`: the task and whether the caller follows it.
#[derive(Serialize, ToSchema)]
pub struct TaskView {
    #[serde(flatten)]
    pub task: Task,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub following: Option<bool>,
}

impl IntoResponse for TaskResponse {
    fn into_response(self) -> Response {
        let etag = HeaderValue::from_str(&format!("\"{}\"", self.task.version)).ok();
        let view = TaskView {
            task: self.task,
            following: self.following,
        };
        let mut res = (self.status, axum::Json(view)).into_response();
        if let Some(etag) = etag {
            res.headers_mut().insert(header::ETAG, etag);
        }
        if let Some(seq) = self.seq {
            res.headers_mut().insert(SEQ_HEADER, HeaderValue::from(seq));
        }
        res
    }
}

/// Creates a task (not viewers); emits `task.created`, and `task.assigned` with an assignee.
#[utoipa::path(post, path = "/teams/{teamId}/tasks", tag = "tasks", params(("teamId" = Uuid, Path)), request_body = NewTask,
    responses((status = 201, body = Task, headers(("ETag" = String)))))]
async fn create_task(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(team): Path<TeamId>,
    Json(b): Json<NewTask>,
) -> ApiResult<TaskResponse> {
    let task = s.services.create_task(user, team, b).await?;
    Ok(TaskResponse {
        task,
        seq: None,
        following: None,
        status: StatusCode::CREATED,
    })
}

/// A team's tasks, oldest first, optionally filtered.
#[utoipa::path(get, path = "/teams/{teamId}/tasks", tag = "tasks", params(("teamId" = Uuid, Path), TaskQuery),
    responses((status = 200, body = PageOf<Task>, headers(("X-TaskForge-Seq" = i64)))))]
async fn list_tasks(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(team): Path<TeamId>,
    Query(q): Query<TaskQuery>,
) -> ApiResult<WithSeq<PageOf<Task>>> {
    let filter = TaskFilter {
        board_id: q.board_id,
        status: q.status,
        assignee_user_id: q.assignee_user_id,
    };
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    }
    .into();
    let r = s.services.tasks(user, team, &filter, &page).await?;
    Ok(WithSeq(r.seq, r.data.into()))
}

#[utoipa::path(get, path = "/tasks/{taskId}", tag = "tasks", params(("taskId" = Uuid, Path)),
    responses((status = 200, body = TaskView, headers(("ETag" = String), ("X-TaskForge-Seq" = i64)))))]
async fn get_task(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<TaskId>,
) -> ApiResult<TaskResponse> {
    let r = s.services.task(user, id).await?;
    let (task, following) = r.data;
    Ok(TaskResponse {
        task,
        seq: Some(r.seq),
        following: Some(following),
        status: StatusCode::OK,
    })
}

/// Changes a task; with `If-Match: "<version>"` only if it is still at that version.
/// Emits `task.updated` with the changed fields, and `task.assigned` when the assignee changed.
#[utoipa::path(patch, path = "/tasks/{taskId}", tag = "tasks",
    params(("taskId" = Uuid, Path), ("If-Match" = Option<String>, Header, description = "the version the change is based on")),
    request_body = TaskPatch,
    responses((status = 200, body = Task, headers(("ETag" = String))),
        (status = 412, description = "stale If-Match; carries currentVersion", body = Problem, content_type = "application/problem+json")))]
async fn patch_task(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<TaskId>,
    headers: HeaderMap,
    Json(b): Json<TaskPatch>,
) -> ApiResult<TaskResponse> {
    let if_match = headers
        .get(header::IF_MATCH)
        .map(|v| v.to_str().unwrap_or(""));
    let task = s.services.update_task(user, id, b, if_match).await?;
    Ok(TaskResponse {
        task,
        seq: None,
        following: None,
        status: StatusCode::OK,
    })
}

/// Deletes a task and its comments (not viewers); emits `task.deleted`.
#[utoipa::path(delete, path = "/tasks/{taskId}", tag = "tasks", params(("taskId" = Uuid, Path)),
    responses((status = 204, description = "deleted")))]
async fn delete_task(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<TaskId>,
) -> ApiResult<StatusCode> {
    s.services.delete_task(user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Comments on a task (not viewers); emits `comment.created`.
#[utoipa::path(post, path = "/tasks/{taskId}/comments", tag = "comments", params(("taskId" = Uuid, Path)), request_body = CommentBody,
    responses((status = 201, body = Comment)))]
async fn create_comment(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(task): Path<TaskId>,
    Json(b): Json<CommentBody>,
) -> ApiResult<(StatusCode, axum::Json<Comment>)> {
    Ok((
        StatusCode::CREATED,
        axum::Json(s.services.create_comment(user, task, &b.body).await?),
    ))
}

/// A task's comments, oldest first.
#[utoipa::path(get, path = "/tasks/{taskId}/comments", tag = "comments", params(("taskId" = Uuid, Path), PageQuery),
    responses((status = 200, body = PageOf<Comment>, headers(("X-TaskForge-Seq" = i64)))))]
async fn list_comments(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(task): Path<TaskId>,
    Query(q): Query<PageQuery>,
) -> ApiResult<WithSeq<PageOf<Comment>>> {
    let r = s.services.comments(user, task, &q.into()).await?;
    Ok(WithSeq(r.seq, r.data.into()))
}

/// Edits a comment (its author only); emits `comment.updated`.
#[utoipa::path(patch, path = "/comments/{commentId}", tag = "comments", params(("commentId" = Uuid, Path)), request_body = CommentBody,
    responses((status = 200, body = Comment)))]
async fn patch_comment(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<CommentId>,
    Json(b): Json<CommentBody>,
) -> ApiResult<axum::Json<Comment>> {
    Ok(axum::Json(
        s.services.edit_comment(user, id, &b.body).await?,
    ))
}

/// Deletes a comment (its author, or a team owner/admin); emits `comment.deleted`.
#[utoipa::path(delete, path = "/comments/{commentId}", tag = "comments", params(("commentId" = Uuid, Path)),
    responses((status = 204, description = "deleted")))]
async fn delete_comment(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<CommentId>,
) -> ApiResult<StatusCode> {
    s.services.delete_comment(user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
