//! Sending one signed request to a receiver, safely: https only (unless private targets are
//! allowed), no proxy, no redirect followed, bounded time, at most a few KiB of the answer read,
//! and never to a loopback, private, link-local or metadata address. Names are checked on the
//! addresses they resolve to at connect time (the resolver below is the connector's), so a name
//! that resolves to a public address when the webhook is saved and to a private one later (DNS
//! rebinding) is refused all the same.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::secret::{Secret, signature};
use crate::domain::webhook;

/// The most of a receiver's answer that is read (the rest is dropped with the connection).
const RESPONSE_READ_MAX: usize = 4 * 1024;

#[derive(Debug, Clone)]
pub struct SenderSettings {
    pub allow_private: bool,
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

/// What one attempt came to.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The receiver's status; None when no answer came.
    pub status: Option<u16>,
    pub latency: Duration,
    pub error: Option<String>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

pub struct Sender {
    client: reqwest::Client,
    allow_private: bool,
}

impl Sender {
    pub fn new(settings: &SenderSettings) -> Result<Self, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .connect_timeout(settings.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("TaskForge-Webhooks/", env!("CARGO_PKG_VERSION")))
            .http1_only();
        if !settings.allow_private {
            builder = builder.dns_resolver(Arc::new(PublicOnly));
        }
        Ok(Self {
            client: builder.build()?,
            allow_private: settings.allow_private,
        })
    }

    /// POSTs `body` to `url`, signed with `secrets` under message id `msg_id`.
    pub async fn send(&self, url: &str, msg_id: &str, body: Bytes, secrets: &[Secret]) -> Outcome {
        let started = Instant::now();
        // Checked again at each send: a setting may have changed since the webhook was saved.
        if let Err(e) = webhook::check_url(url, self.allow_private) {
            return Outcome {
                status: None,
                latency: started.elapsed(),
                error: Some(format!("the URL is refused: {e:?}")),
            };
        }
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let signed = signature(secrets, msg_id, timestamp, &body);
        let sent = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", msg_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signed)
            .body(body)
            .send()
            .await;
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => {
                return Outcome {
                    status: None,
                    latency: started.elapsed(),
                    error: Some(describe(&e)),
                };
            }
        };
        let status = response.status().as_u16();
        // Read a little of the answer (a receiver's error text helps its owner), within the
        // request's own time limit; the rest is never read.
        let mut read = 0usize;
        let mut text = Vec::new();
        while read < RESPONSE_READ_MAX {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    read += chunk.len();
                    let room = RESPONSE_READ_MAX.saturating_sub(text.len());
                    text.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let error = (!(200..300).contains(&status)).then(|| {
            let body = String::from_utf8_lossy(&text);
            let body: String = body.chars().take(200).collect();
            if body.trim().is_empty() {
                format!("the receiver answered {status}")
            } else {
                format!("the receiver answered {status}: {}", body.trim())
            }
        });
        Outcome {
            status: Some(status),
            latency: started.elapsed(),
            error,
        }
    }
}

/// A short, token-free account of a failed request (reqwest's own text may quote the URL, which
/// the owner gave, so it is not secret; but the chain is long).
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_redirect() {
        "redirect"
    } else {
        "request failed"
    };
    let mut cause = String::new();
    let mut source = e.source();
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if cause.is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {}", cause.chars().take(200).collect::<String>())
    }
}

/// Resolves names with the system resolver and keeps only public addresses.
struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = all
                .into_iter()
                .filter(|a| webhook::is_public(a.ip()))
                .collect();
            if public.is_empty() {
                return Err(format!(
                    "{host} resolves to no public address (loopback, private, link-local and \
                     metadata addresses are refused)"
                )
                .into());
            }
            let addrs: Addrs = Box::new(public.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_at_connect() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let sender = Sender::new(&SenderSettings {
            allow_private: false,
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
        })
        .expect("client");
        let out = sender
            .send(
                &format!("https://localhost:{port}/hook"),
                "msg_1",
                Bytes::from_static(b"{}"),
                &[],
            )
            .await;
        assert_eq!(out.status, None);
        let error = out.error.expect("an error");
        assert!(error.contains("no public address"), "{error}");
    }
}
