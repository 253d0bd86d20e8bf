//! The saved session on one server, and the HTTP reads `tail` makes with it: a session whose
//! access token expired is refreshed once and saved again.

use anyhow::{Context, bail};
use serde_json::Value;

use super::credentials::{self, Session};

/// Page size of the HTTP lists.
const PAGE: u32 = 200;

pub struct Remote {
    /// The server's base URL, without a trailing slash.
    pub url: String,
    pub session: Session,
    http: reqwest::Client,
}

impl Remote {
    /// The session saved for `url`, or without it the one of the most recent login.
    pub fn open(url: Option<&str>) -> anyhow::Result<Remote> {
        let (url, session) = match url {
            Some(url) => {
                let url = credentials::key(url);
                let session = credentials::load(&url)?.with_context(|| {
                    format!(
                        "not logged in to {url}: run `taskforge login --url {url} --email ...` first"
                    )
                })?;
                (url, session)
            }
            None => credentials::latest()?.context(
                "not logged in: run `taskforge login --url <server> --email ...` first (or pass --url)",
            )?,
        };
        Ok(Remote {
            url,
            session,
            http: super::http()?,
        })
    }

    pub async fn renew(&mut self) -> anyhow::Result<()> {
        let fresh = super::refresh(&self.url, &self.session.refresh_token)
            .await
            .context(
                "the session expired and could not be refreshed: run `taskforge login` again",
            )?;
        let renewed = Session {
            email: self.session.email.clone(),
            access_token: fresh.access_token,
            refresh_token: fresh.refresh_token,
        };
        credentials::store_refreshed(&self.url, renewed.clone())?;
        self.session = renewed;
        Ok(())
    }

    /// `GET /api/v1{path}` as the saved user, refreshing the session once if it expired.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}/api/v1{path}", self.url);
        let mut renewed = false;
        loop {
            let resp = self
                .http
                .get(&url)
                .bearer_auth(&self.session.access_token)
                .send()
                .await
                .with_context(|| format!("GET {url}"))?;
            let status = resp.status();
            if status == reqwest::StatusCode::UNAUTHORIZED && !renewed {
                self.renew().await?;
                renewed = true;
                continue;
            }
            if status.is_success() {
                return resp
                    .json()
                    .await
                    .with_context(|| format!("reading the answer of GET {url}"));
            }
            let problem: Value = resp.json().await.unwrap_or_default();
            let detail = problem["detail"].as_str().unwrap_or("no detail");
            // Of the paths read here, only a team's (or its boards' and tasks') answer these.
            if status == reqwest::StatusCode::FORBIDDEN || status == reqwest::StatusCode::NOT_FOUND
            {
                bail!("not a member of that team, or no such team ({status}: {detail})");
            }
            bail!("GET {url} failed: {status}: {detail}");
        }
    }

    /// Every item of a paged list (`items` and `nextCursor`).
    pub async fn get_all(&mut self, path: &str) -> anyhow::Result<Vec<Value>> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page_path = match &cursor {
                // Cursors are base64url: nothing to escape.
                Some(c) => format!("{path}{sep}limit={PAGE}&cursor={c}"),
                None => format!("{path}{sep}limit={PAGE}"),
            };
            let mut page = self.get(&page_path).await?;
            if let Value::Array(more) = page["items"].take() {
                items.extend(more);
            }
            match page["nextCursor"].as_str() {
                Some(c) if !c.is_empty() => cursor = Some(c.to_owned()),
                _ => return Ok(items),
            }
        }
    }
}
