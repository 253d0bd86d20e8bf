//! Tasks and comments.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{PageOf, PageQuery, SEQ_HEADER, WithSeq};
use crate::domain::error::Checks;
use crate::domain::import::{ImportedTask, TaskBatch};
use crate::domain::rules::{NewTask, TaskPatch};
use crate::domain::search::{self, AssigneeFilter, SearchHit, TaskFilter, TaskSort};
use crate::domain::{BoardId, Comment, CommentId, Task, TaskId, TaskStatus, TeamId, UserId};
use crate::domain::{DomainError, LabelId, Priority};
use crate::http::AppState;
use crate::http::error::{ApiResult, Problem};
use crate::http::extract::{Caller, Json, Path, Query};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_task, list_tasks))
        .routes(routes!(import_tasks))
        .routes(routes!(search_tasks))
        .routes(routes!(get_task, patch_task, delete_task))
        .routes(routes!(create_comment, list_comments))
        .routes(routes!(patch_comment, delete_comment))
}

/// The filters, sort and page of a task list. Parameters marked repeatable may be given several
/// times (`status=todo&status=done`), so the query string is read pair by pair rather than by
/// `serde_urlencoded`, which keeps one value per name.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct TaskQuery {
    #[param(value_type = Option<Uuid>)]
    pub board_id: Option<BoardId>,
    /// Repeatable: any of them.
    #[param(explode = true)]
    pub status: Vec<TaskStatus>,
    /// Repeatable: any of them.
    #[param(explode = true)]
    pub priority: Vec<Priority>,
    /// A member's id, or `none` for unassigned tasks.
    #[param(value_type = Option<String>)]
    pub assignee_user_id: Option<AssigneeFilter>,
    /// Repeatable (at most 20): tasks that carry all of them.
    #[param(value_type = Vec<Uuid>, explode = true)]
    pub label_id: Vec<LabelId>,
    /// Due on or after this day (`YYYY-MM-DD`).
    #[param(value_type = Option<String>, format = Date)]
    pub due_after: Option<time::Date>,
    /// Due on or before this day (`YYYY-MM-DD`).
    #[param(value_type = Option<String>, format = Date)]
    pub due_before: Option<time::Date>,
    /// Words (1 to 200 characters): each must begin a word of the title or the description.
    pub q: Option<String>,
    /// `createdAt` (default), `updatedAt`, `dueDate`, `priority` or `position`; `-` before it
    /// reverses.
    pub sort: Option<String>,
    /// Page size: default 50, larger values are clamped to 200.
    #[param(minimum = 1)]
    pub limit: Option<i64>,
    /// The `nextCursor` of the previous page (of the same sort).
    pub cursor: Option<String>,
}

impl TaskQuery {
    /// Reads the query string; every malformed parameter is named in one 422.
    fn parse(raw: Option<&str>) -> Result<Self, DomainError> {
        let mut q = TaskQuery::default();
        let mut c = Checks::default();
        let pairs = url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes());
        for (name, value) in pairs {
            let value = value.as_ref();
            let uuid = || value.parse::<uuid::Uuid>().ok();
            let date = || crate::domain::model::date::parse(value);
            let mut once = |field: &str, set: bool, ok: bool, why: &str| {
                c.check(!set, field, "may be given once");
                c.check(ok, field, why);
            };
            match name.as_ref() {
                "boardId" => {
                    once(
                        "boardId",
                        q.board_id.is_some(),
                        uuid().is_some(),
                        "must be a UUID",
                    );
                    q.board_id = uuid().map(BoardId::from);
                }
                "status" => match TaskStatus::parse(value) {
                    Some(s) => q.status.push(s),
                    None => c.check(
                        false,
                        "status",
                        "must be todo, in_progress, done or canceled",
                    ),
                },
                "priority" => match Priority::parse(value) {
                    Some(p) => q.priority.push(p),
                    None => c.check(
                        false,
                        "priority",
                        "must be none, low, medium, high or urgent",
                    ),
                },
                "assigneeUserId" => {
                    let a = if value == "none" {
                        Some(AssigneeFilter::Nobody)
                    } else {
                        uuid().map(|u| AssigneeFilter::User(UserId::from(u)))
                    };
                    once(
                        "assigneeUserId",
                        q.assignee_user_id.is_some(),
                        a.is_some(),
                        "must be a UUID or none",
                    );
                    q.assignee_user_id = a;
                }
                "labelId" => match uuid() {
                    Some(l) => q.label_id.push(LabelId::from(l)),
                    None => c.check(false, "labelId", "must be a UUID"),
                },
                "dueAfter" => {
                    once(
                        "dueAfter",
                        q.due_after.is_some(),
                        date().is_some(),
                        "must be YYYY-MM-DD",
                    );
                    q.due_after = date();
                }
                "dueBefore" => {
                    once(
                        "dueBefore",
                        q.due_before.is_some(),
                        date().is_some(),
                        "must be YYYY-MM-DD",
                    );
                    q.due_before = date();
                }
                "q" => {
                    once("q", q.q.is_some(), true, "");
                    q.q = Some(value.to_owned());
                }
                "sort" => {
                    once("sort", q.sort.is_some(), true, "");
                    q.sort = Some(value.to_owned());
                }
                "limit" => {
                    let n = value.parse::<i64>().ok();
                    once(
                        "limit",
                        q.limit.is_some(),
                        n.is_some(),
                        "must be an integer",
                    );
                    q.limit = n;
                }
                "cursor" => {
                    once("cursor", q.cursor.is_some(), true, "");
                    q.cursor = Some(value.to_owned());
                }
                // Unknown parameters are ignored, as on every other endpoint.
                _ => {}
            }
        }
        c.finish()?;
        Ok(q)
    }

    fn filter(&self) -> Result<(TaskFilter, TaskSort), DomainError> {
        let words = match &self.q {
            Some(q) => search::words(q)?,
            None => Vec::new(),
        };
        let sort = match &self.sort {
            Some(s) => TaskSort::parse(s)?,
            None => TaskSort::default(),
        };
        let filter = TaskFilter {
            board_id: self.board_id,
            statuses: self.status.clone(),
            priorities: self.priority.clone(),
            assignee: self.assignee_user_id,
            label_ids: self.label_id.clone(),
            due_after: self.due_after,
            due_before: self.due_before,
            words,
        };
        Ok((filter, sort))
    }
}

/// `GET /teams/{teamId}/search`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Words (1 to 200 characters): each must begin a word of the title or the description.
    pub q: String,
    /// 1 to 50, default 20.
    #[param(minimum = 1, maximum = 50)]
    pub limit: Option<i64>,
}

/// The answer of a search: the best matches first.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResults {
    pub items: Vec<SearchHit>,
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

/// Searches the team's task titles and descriptions: the best matches first, each with the
/// excerpt that matched (comments are not searched).
#[utoipa::path(get, path = "/teams/{teamId}/search", tag = "tasks", params(("teamId" = Uuid, Path), SearchQuery),
    responses((status = 200, body = SearchResults)))]
async fn search_tasks(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(team): Path<TeamId>,
    Query(q): Query<SearchQuery>,
) -> ApiResult<axum::Json<SearchResults>> {
    let items = s.services.search_tasks(user, team, &q.q, q.limit).await?;
    Ok(axum::Json(SearchResults { items }))
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

/// The answer of a batch: every task of the batch, in its order.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportedTasks {
    pub items: Vec<ImportedTask>,
}

/// Creates up to 1,000 tasks on one board, with their comments, in one transaction (not
/// viewers), and emits one `task.imported` for them. Every task is checked first: one invalid
/// field refuses the whole batch (422 naming each, as `tasks[3].title`). A task whose `importKey`
/// was imported into the team before is answered as it is now, with `created: false`, and not
/// written again: a batch can be sent again after an interruption. 201 when the batch created a
/// task, 200 when every task was imported before.
#[utoipa::path(post, path = "/teams/{teamId}/tasks:batch", tag = "tasks", params(("teamId" = Uuid, Path)), request_body = TaskBatch,
    responses((status = 201, body = ImportedTasks), (status = 200, body = ImportedTasks)))]
async fn import_tasks(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(team): Path<TeamId>,
    Json(b): Json<TaskBatch>,
) -> ApiResult<(StatusCode, axum::Json<ImportedTasks>)> {
    let items = s.services.import_tasks(user, team, b).await?;
    let status = if items.iter().any(|i| i.created) {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(ImportedTasks { items })))
}

/// A team's tasks, filtered and sorted (oldest first by default); see the parameters.
#[utoipa::path(get, path = "/teams/{teamId}/tasks", tag = "tasks", params(("teamId" = Uuid, Path), TaskQuery),
    responses((status = 200, body = PageOf<Task>, headers(("X-TaskForge-Seq" = i64)))))]
async fn list_tasks(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(team): Path<TeamId>,
    RawQuery(raw): RawQuery,
) -> ApiResult<WithSeq<PageOf<Task>>> {
    let q = TaskQuery::parse(raw.as_deref())?;
    let (filter, sort) = q.filter()?;
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    }
    .into();
    let r = s.services.tasks(user, team, &filter, sort, &page).await?;
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
