//! The saved session on one server, and the HTTP calls `tail` and `import` make with it: a
//! session whose access token expired is refreshed once and saved again.

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
            // Of the paths read here, only a team's (or its boards' and tasks') answer these.
            if status == reqwest::StatusCode::FORBIDDEN || status == reqwest::StatusCode::NOT_FOUND
            {
                let detail = problem["detail"].as_str().unwrap_or("no detail");
                bail!("not a member of that team, or no such team ({status}: {detail})");
            }
            return Err(failure(&format!("GET {url}"), status, &problem));
        }
    }

    /// `POST /api/v1{path}` with a JSON body and an `Idempotency-Key`, as the saved user. A lost
    /// answer, a timeout, a 5xx, a 429 or a 409 `idempotency_key_in_use` (the first attempt still
    /// running) is retried with the same body and key, so it is applied once; with
    /// `retry_conflict`, any 409 too (a racing import of the same row), but never
    /// `idempotency_answer_lost` (the first attempt was applied; its answer is gone for good).
    pub async fn post_keyed(
        &mut self,
        path: &str,
        body: Vec<u8>,
        key: &str,
        retry_conflict: bool,
    ) -> anyhow::Result<Value> {
        const ATTEMPTS: u32 = 6;
        let url = format!("{}/api/v1{path}", self.url);
        let mut renewed = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = self
                .http
                .post(&url)
                .bearer_auth(&self.session.access_token)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("Idempotency-Key", key)
                .body(body.clone())
                .send()
                .await;
            let resp = match sent {
                Ok(resp) => resp,
                Err(e) if attempt < ATTEMPTS => {
                    eprintln!("\nPOST {url}: {e}; retrying");
                    backoff(attempt).await;
                    continue;
                }
                Err(e) => return Err(e).with_context(|| format!("POST {url}")),
            };
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
                    .with_context(|| format!("reading the answer of POST {url}"));
            }
            let problem: Value = resp.json().await.unwrap_or_default();
            let passing = status.is_server_error()
                || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                || (status == reqwest::StatusCode::CONFLICT
                    && problem["code"] != "idempotency_answer_lost"
                    && (retry_conflict || problem["code"] == "idempotency_key_in_use"));
            if passing && attempt < ATTEMPTS {
                backoff(attempt).await;
                continue;
            }
            return Err(failure(&format!("POST {url}"), status, &problem));
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

/// 0.25 s, 0.5 s, 1 s... up to 8 s before attempt `n + 1`.
async fn backoff(n: u32) {
    let ms = 250u64 << n.saturating_sub(1).min(5);
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
}

/// A refused request as one message: the problem's detail, and each invalid field on a line.
fn failure(request: &str, status: reqwest::StatusCode, problem: &Value) -> anyhow::Error {
    let detail = problem["detail"].as_str().unwrap_or("no detail");
    let mut message = format!("{request} failed: {status}: {detail}");
    for e in problem["errors"].as_array().into_iter().flatten() {
        let field = e["field"].as_str().unwrap_or("?");
        let why = e["message"].as_str().unwrap_or("?");
        message.push_str(&format!("\n  {field}: {why}"));
    }
    anyhow::anyhow!(message)
}
