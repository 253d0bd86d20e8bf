//! The client commands of the `taskforge` binary: `login` stores a session, `tail` streams a
//! team's activities (or, with `--inbox`, the user's notifications), `import` brings tasks in
//! from a file. They speak only the public contract (HTTP + `/realtime`), like any client.

pub mod credentials;
pub mod import;
mod inbox;
mod remote;
pub mod tail;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::json;

/// The server's answer to login and refresh.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthResponse {
    pub access_token: String,
    pub refresh_token: String,
}

/// Makes ring the process's rustls provider. tokio-tungstenite's wss:// connector uses the process
/// default, which rustls picks by itself only while exactly one provider is compiled in; set it
/// here so that another crate enabling a second one cannot make `tail` panic. (reqwest names its
/// provider itself.)
pub fn install_tls_provider() {
    // Err only means a provider is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub(crate) fn http() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .context("building the HTTP client")
}

/// `POST /api/v1/auth/{what}` with a JSON body; a problem+json answer becomes its `detail`.
async fn auth_call(
    base: &str,
    what: &str,
    body: serde_json::Value,
) -> anyhow::Result<AuthResponse> {
    let url = format!("{}/api/v1/auth/{what}", base.trim_end_matches('/'));
    let resp = http()?
        .post(&url)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    if status.is_success() {
        return resp.json().await.context("reading the login answer");
    }
    let problem: serde_json::Value = resp.json().await.unwrap_or_default();
    let detail = problem["detail"].as_str().unwrap_or("no detail");
    bail!("{what} failed: {status}: {detail}")
}

pub async fn login(base: &str, email: &str, password: &str) -> anyhow::Result<AuthResponse> {
    // A credentials file that cannot take the session fails the login before the server opens one.
    credentials::check()?;
    auth_call(
        base,
        "login",
        json!({ "email": email, "password": password }),
    )
    .await
}

pub async fn refresh(base: &str, refresh_token: &str) -> anyhow::Result<AuthResponse> {
    auth_call(base, "refresh", json!({ "refreshToken": refresh_token })).await
}
