//! Teams, members and boards.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{PageOf, PageQuery, WithSeq};
use crate::domain::{Board, BoardId, FieldError, Member, Role, Team, TeamId, UserId};
use crate::http::AppState;
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::extract::{Caller, ClientIp, Json, Path, Query};
use crate::service::MemberRef;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_team, list_teams))
        .routes(routes!(get_team, patch_team))
        .routes(routes!(list_members, add_member))
        .routes(routes!(patch_member, remove_member))
        .routes(routes!(create_board, list_boards))
        .routes(routes!(patch_board, delete_board))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct NameBody {
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
}

/// Add a member by `email` or by `userId` (exactly one).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddMemberBody {
    pub email: Option<String>,
    #[schema(value_type = Option<Uuid>)]
    pub user_id: Option<UserId>,
    /// `admin`, `member` or `viewer`.
    pub role: Role,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RoleBody {
    /// `admin`, `member` or `viewer`.
    pub role: Role,
}

/// Creates a team; the caller becomes its owner and a default board "General" is created.
#[utoipa::path(post, path = "/teams", tag = "teams", request_body = NameBody, responses((status = 201, body = Team)))]
async fn create_team(
    State(s): State<AppState>,
    Caller(user): Caller,
    Json(b): Json<NameBody>,
) -> ApiResult<(StatusCode, axum::Json<Team>)> {
    Ok((
        StatusCode::CREATED,
        axum::Json(s.services.create_team(user, &b.name).await?),
    ))
}

/// The teams the caller belongs to.
#[utoipa::path(get, path = "/teams", tag = "teams", params(PageQuery), responses((status = 200, body = PageOf<Team>)))]
async fn list_teams(
    State(s): State<AppState>,
    Caller(user): Caller,
    Query(q): Query<PageQuery>,
) -> ApiResult<axum::Json<PageOf<Team>>> {
    Ok(axum::Json(s.services.teams(user, &q.into()).await?.into()))
}

#[utoipa::path(get, path = "/teams/{teamId}", tag = "teams", params(("teamId" = Uuid, Path)),
    responses((status = 200, body = Team, headers(("X-TaskForge-Seq" = i64)))))]
async fn get_team(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(team): Path<TeamId>,
) -> ApiResult<WithSeq<Team>> {
    let r = s.services.team(user, team).await?;
    Ok(WithSeq(r.seq, r.data))
}

/// Renames a team (owner/admin); emits `team.updated`.
#[utoipa::path(patch, path = "/teams/{teamId}", tag = "teams", params(("teamId" = Uuid, Path)), request_body = NameBody,
    responses((status = 200, body = Team)))]
async fn patch_team(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(team): Path<TeamId>,
    Json(b): Json<NameBody>,
) -> ApiResult<axum::Json<Team>> {
    Ok(axum::Json(
        s.services.rename_team(user, team, &b.name).await?,
    ))
}

#[utoipa::path(get, path = "/teams/{teamId}/members", tag = "teams", params(("teamId" = Uuid, Path), PageQuery),
    responses((status = 200, body = PageOf<Member>, headers(("X-TaskForge-Seq" = i64)))))]
async fn list_members(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(team): Path<TeamId>,
    Query(q): Query<PageQuery>,
) -> ApiResult<WithSeq<PageOf<Member>>> {
    let r = s.services.members(user, team, &q.into()).await?;
    Ok(WithSeq(r.seq, r.data.into()))
}

/// Adds a member (owner/admin); emits `member.added`.
#[utoipa::path(post, path = "/teams/{teamId}/members", tag = "teams", params(("teamId" = Uuid, Path)), request_body = AddMemberBody,
    responses((status = 201, body = Member), (status = 409, description = "already a member", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "by email: too many look-ups by this caller or from this address (`rate_limited`, `Retry-After`)", body = Problem, content_type = "application/problem+json")))]
async fn add_member(
    State(s): State<AppState>,
    Caller(user): Caller,
    ClientIp(ip): ClientIp,
    Path(team): Path<TeamId>,
    Json(b): Json<AddMemberBody>,
) -> ApiResult<(StatusCode, axum::Json<Member>)> {
    let who = match (b.email, b.user_id) {
        // Whether an email has an account is what log-in protects: looking one up is charged
        // like a log-in attempt.
        (Some(email), None) => {
            s.limits.check_member_by_email(ip, user)?;
            MemberRef::Email(email)
        }
        (None, Some(id)) => MemberRef::Id(id),
        _ => {
            return Err(ApiError::validation(vec![FieldError::new(
                "email",
                "give exactly one of email and userId",
            )]));
        }
    };
    Ok((
        StatusCode::CREATED,
        axum::Json(s.services.add_member(user, team, who, b.role).await?),
    ))
}

/// Changes a member's role (owner/admin); emits `member.updated`.
#[utoipa::path(patch, path = "/teams/{teamId}/members/{userId}", tag = "teams",
    params(("teamId" = Uuid, Path), ("userId" = Uuid, Path)), request_body = RoleBody,
    responses((status = 200, body = Member), (status = 409, description = "the owner's membership", body = Problem, content_type = "application/problem+json")))]
async fn patch_member(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path((team, member)): Path<(TeamId, UserId)>,
    Json(b): Json<RoleBody>,
) -> ApiResult<axum::Json<Member>> {
    Ok(axum::Json(
        s.services
            .set_member_role(user, team, member, b.role)
            .await?,
    ))
}

/// Removes a member (owner/admin, or the member themself); emits `member.removed`.
#[utoipa::path(delete, path = "/teams/{teamId}/members/{userId}", tag = "teams",
    params(("teamId" = Uuid, Path), ("userId" = Uuid, Path)),
    responses((status = 204, description = "removed"), (status = 409, description = "the owner's membership", body = Problem, content_type = "application/problem+json")))]
async fn remove_member(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path((team, member)): Path<(TeamId, UserId)>,
) -> ApiResult<StatusCode> {
    s.services.remove_member(user, team, member).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Creates a board (not viewers); emits `board.created`.
#[utoipa::path(post, path = "/teams/{teamId}/boards", tag = "boards", params(("teamId" = Uuid, Path)), request_body = NameBody,
    responses((status = 201, body = Board)))]
async fn create_board(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(team): Path<TeamId>,
    Json(b): Json<NameBody>,
) -> ApiResult<(StatusCode, axum::Json<Board>)> {
    Ok((
        StatusCode::CREATED,
        axum::Json(s.services.create_board(user, team, &b.name).await?),
    ))
}

#[utoipa::path(get, path = "/teams/{teamId}/boards", tag = "boards", params(("teamId" = Uuid, Path), PageQuery),
    responses((status = 200, body = PageOf<Board>, headers(("X-TaskForge-Seq" = i64)))))]
async fn list_boards(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(team): Path<TeamId>,
    Query(q): Query<PageQuery>,
) -> ApiResult<WithSeq<PageOf<Board>>> {
    let r = s.services.boards(user, team, &q.into()).await?;
    Ok(WithSeq(r.seq, r.data.into()))
}

/// Renames a board (not viewers); emits `board.updated`.
#[utoipa::path(patch, path = "/boards/{boardId}", tag = "boards", params(("boardId" = Uuid, Path)), request_body = NameBody,
    responses((status = 200, body = Board)))]
async fn patch_board(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(board): Path<BoardId>,
    Json(b): Json<NameBody>,
) -> ApiResult<axum::Json<Board>> {
    Ok(axum::Json(
        s.services.rename_board(user, board, &b.name).await?,
    ))
}

/// Deletes an empty board that is not the default one (owner/admin); emits `board.deleted`.
#[utoipa::path(delete, path = "/boards/{boardId}", tag = "boards", params(("boardId" = Uuid, Path)),
    responses((status = 204, description = "deleted"), (status = 409, description = "default or not empty", body = Problem, content_type = "application/problem+json")))]
async fn delete_board(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(board): Path<BoardId>,
) -> ApiResult<StatusCode> {
    s.services.delete_board(user, board).await?;
    Ok(StatusCode::NO_CONTENT)
}
