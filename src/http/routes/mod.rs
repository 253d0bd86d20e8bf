//! Handlers: extract, call the service, map the result. No rule lives here.

pub mod activity;
pub mod auth;
pub mod health;
pub mod inbox;
pub mod labels;
pub mod tasks;
pub mod teams;
pub mod webhooks;

use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::service::{Page, PageRequest};

pub const SEQ_HEADER: &str = "x-taskforge-seq";

/// `?limit=&cursor=` of every list endpoint.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size: default 50, larger values are clamped to 200.
    #[param(minimum = 1)]
    pub limit: Option<i64>,
    /// The `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

impl From<PageQuery> for PageRequest {
    fn from(q: PageQuery) -> Self {
        PageRequest {
            limit: q.limit,
            cursor: q.cursor,
        }
    }
}

/// The shape of every list response.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PageOf<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> From<Page<T>> for PageOf<T> {
    fn from(p: Page<T>) -> Self {
        PageOf {
            items: p.items,
            next_cursor: p.next_cursor,
        }
    }
}

/// A JSON body with the team's seq at read time in `X-TaskForge-Seq`.
pub struct WithSeq<T>(pub i64, pub T);

impl<T: Serialize> IntoResponse for WithSeq<T> {
    fn into_response(self) -> Response {
        let mut res = axum::Json(self.1).into_response();
        res.headers_mut()
            .insert(SEQ_HEADER, HeaderValue::from(self.0));
        res
    }
}
