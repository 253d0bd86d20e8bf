//! The team's activity log over HTTP.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{PageOf, SEQ_HEADER};
use crate::domain::activity::LogEntry;
use crate::domain::{Activity, TeamId};
use crate::http::AppState;
use crate::http::error::{ApiResult, Problem};
use crate::http::extract::{Caller, Path, Query};
use crate::service::{Page, PageRequest};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_activity))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ActivityQuery {
    /// A seq: only activities after it (exclusive). Default 0.
    #[param(minimum = 0)]
    pub since: Option<i64>,
    #[param(minimum = 1)]
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// A page of logged activities, written from their stored JSON without re-serializing.
struct ActivityPage {
    seq: i64,
    page: Page<LogEntry>,
}

impl IntoResponse for ActivityPage {
    fn into_response(self) -> Response {
        let mut body = String::with_capacity(
            64 + self
                .page
                .items
                .iter()
                .map(|e| e.json.len() + 1)
                .sum::<usize>(),
        );
        body.push_str("{\"items\":[");
        for (i, e) in self.page.items.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&e.json);
        }
        body.push_str("],\"nextCursor\":");
        match &self.page.next_cursor {
            // Cursors are base64url: nothing to escape.
            Some(c) => {
                body.push('"');
                body.push_str(c);
                body.push('"');
            }
            None => body.push_str("null"),
        }
        body.push('}');
        let mut res = (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        res.headers_mut()
            .insert(SEQ_HEADER, HeaderValue::from(self.seq));
        res
    }
}

/// The activities the socket delivers, from the durable log, oldest first.
#[utoipa::path(get, path = "/teams/{teamId}/activity", tag = "activity", params(("teamId" = Uuid, Path), ActivityQuery),
    responses((status = 200, body = PageOf<Activity>, headers(("X-TaskForge-Seq" = i64))),
        (status = 410, description = "since is outside the retained log", body = Problem, content_type = "application/problem+json")))]
async fn list_activity(
    State(s): State<AppState>,
    Caller(user): Caller,
    Path(team): Path<TeamId>,
    Query(q): Query<ActivityQuery>,
) -> ApiResult<ActivityPage> {
    let req = PageRequest {
        limit: q.limit,
        cursor: q.cursor,
    };
    let r = s.services.activity(user, team, q.since, &req).await?;
    Ok(ActivityPage {
        seq: r.seq,
        page: r.data,
    })
}
