//! A webhook receiver in the test process: an HTTP/1.1 server on 127.0.0.1 that checks every
//! request with the Standard Webhooks project's own library (`standardwebhooks`), so the
//! server's signing is proven against an implementation that is not ours, and records what it
//! got and what it answered.
//!
//! What it answers is set at run time: the secrets it accepts (any of a list), a fixed status
//! ("down": 503, "gone": 410), a redirect, or seeded faults (500 on some percent of requests, a
//! hang longer than the server's timeout on some percent). Otherwise a request that verifies is
//! answered 200 and one that does not 401.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::audit::Rng;

/// What the receiver answered to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A plain status (2xx is a success).
    Status(u16),
    /// A redirect to this location (a failure for the server: it must not follow it).
    Redirect(u16, String),
    /// No answer for this long (then 200, long after the server should have given up).
    Hang(Duration),
}

impl Answer {
    pub fn is_success(&self) -> bool {
        matches!(self, Answer::Status(s) if (200..300).contains(s))
    }
}

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    /// Its place in arrival order (0, 1, ...).
    pub index: usize,
    /// When it arrived.
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub content_type: Option<String>,
    /// The `webhook-id`, `webhook-timestamp` and `webhook-signature` headers.
    pub webhook_id: Option<String>,
    pub timestamp: Option<String>,
    pub signature: Option<String>,
    /// The body as sent, and parsed (Null when it is not JSON).
    pub raw: Vec<u8>,
    pub body: Value,
    /// The activity's `seq`, `id` and `type` (a ping has no seq).
    pub seq: Option<i64>,
    pub id: Option<String>,
    pub kind: Option<String>,
    /// Whether it verified with one of the accepted secrets, and which.
    pub verified: bool,
    pub secret_index: Option<usize>,
    /// Why it did not verify.
    pub verify_error: Option<String>,
    pub answer: Answer,
}

impl Received {
    /// Whether the answer was a failure for the server (non-2xx, redirect or hang).
    pub fn failed_or_hung(&self) -> bool {
        !self.answer.is_success()
    }

    /// Checks it again with `secret` (whatever the receiver accepted when it arrived).
    pub fn verify_with(&self, secret: &str) -> Result<(), String> {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("webhook-id", &self.webhook_id),
            ("webhook-timestamp", &self.timestamp),
            ("webhook-signature", &self.signature),
        ] {
            if let Some(v) = value {
                headers.insert(name, v.parse().map_err(|e| format!("{name}: {e}"))?);
            }
        }
        verify(&[secret.to_owned()], &self.raw, &headers).map(|_| ())
    }

    /// The `v1,` signatures of the `webhook-signature` header.
    pub fn signatures(&self) -> Vec<String> {
        self.signature
            .as_deref()
            .unwrap_or("")
            .split(' ')
            .filter(|s| s.starts_with("v1,"))
            .map(str::to_owned)
            .collect()
    }
}

/// Seeded faults: out of every 100 requests about `fail_percent` answer 500 and about
/// `hang_percent` hang for `hang_for`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    pub fail_percent: u64,
    pub hang_percent: u64,
    pub hang_for: Duration,
}

struct Inner {
    secrets: Vec<String>,
    faults: Faults,
    fixed: Option<u16>,
    redirect: Option<String>,
    rng: Rng,
    requests: Vec<Received>,
    /// Marks set by the test (e.g. a kill): (label, how many requests had arrived then).
    marks: Vec<(String, usize)>,
}

pub struct Receiver {
    addr: SocketAddr,
    started: Instant,
    inner: Arc<Mutex<Inner>>,
    stop: CancellationToken,
    pub seed: u64,
}

impl Receiver {
    /// A receiver accepting `secrets` (none yet is fine: set them once the webhook exists),
    /// faults seeded from `TASKFORGE_TEST_SEED` or the clock (printed).
    pub async fn start(secrets: &[&str]) -> Receiver {
        let seed = Rng::seed_from_env();
        Self::start_seeded(secrets, seed).await
    }

    pub async fn start_seeded(secrets: &[&str], seed: u64) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        let started = Instant::now();
        let inner = Arc::new(Mutex::new(Inner {
            secrets: secrets.iter().map(|s| (*s).to_owned()).collect(),
            faults: Faults::default(),
            fixed: None,
            redirect: None,
            rng: Rng::new(seed),
            requests: Vec::new(),
            marks: Vec::new(),
        }));
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let stop = CancellationToken::new();
        tokio::spawn({
            let stop = stop.clone();
            async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
            }
        });
        eprintln!("webhook receiver on {addr}, fault seed {seed} (TASKFORGE_TEST_SEED={seed})");
        Receiver {
            addr,
            started,
            inner,
            stop,
            seed,
        }
    }

    /// The URL to register: `http://127.0.0.1:PORT/hook`.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Accepts any of `secrets` from now on.
    pub fn set_secrets(&self, secrets: &[&str]) {
        self.inner.lock().unwrap().secrets = secrets.iter().map(|s| (*s).to_owned()).collect();
    }

    pub fn set_faults(&self, faults: Faults) {
        self.inner.lock().unwrap().faults = faults;
    }

    /// Answers every request with `status` (`None`: back to normal).
    pub fn set_status(&self, status: Option<u16>) {
        self.inner.lock().unwrap().fixed = status;
    }

    /// Answers every request with a 302 to `location` (`None`: back to normal).
    pub fn set_redirect(&self, location: Option<&str>) {
        self.inner.lock().unwrap().redirect = location.map(str::to_owned);
    }

    /// Marks the current point of the request stream (e.g. "kill -9").
    pub fn mark(&self, label: &str) {
        let mut g = self.inner.lock().unwrap();
        let n = g.requests.len();
        g.marks.push((label.to_owned(), n));
    }

    pub fn marks(&self) -> Vec<(String, usize)> {
        self.inner.lock().unwrap().marks.clone()
    }

    /// For each mark, its label and the seq of the last request carrying one that had arrived
    /// by then (what a server killed at that mark may have been delivering).
    pub fn last_seq_at_marks(&self) -> Vec<(String, Option<i64>)> {
        let g = self.inner.lock().unwrap();
        g.marks
            .iter()
            .map(|(label, n)| {
                let last = g.requests[..*n].iter().rev().find_map(|r| r.seq);
                (label.clone(), last)
            })
            .collect()
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Received> {
        self.inner.lock().unwrap().requests.clone()
    }

    pub fn count(&self) -> usize {
        self.inner.lock().unwrap().requests.len()
    }

    /// Requests carrying an activity (a seq), in arrival order.
    pub fn deliveries(&self) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| r.seq.is_some())
            .collect()
    }

    /// Requests without a seq (pings), in arrival order.
    pub fn pings(&self) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| r.seq.is_none())
            .collect()
    }

    /// The seqs in the order of their first arrival (each once).
    pub fn first_delivery_order(&self) -> Vec<i64> {
        let mut seen = std::collections::HashSet::new();
        self.deliveries()
            .iter()
            .filter_map(|r| r.seq)
            .filter(|s| seen.insert(*s))
            .collect()
    }

    /// The seqs that arrived more than once, with how many times each arrived.
    pub fn duplicates(&self) -> Vec<(i64, usize)> {
        let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
        for r in self.deliveries() {
            *counts.entry(r.seq.unwrap_or_default()).or_default() += 1;
        }
        counts.into_iter().filter(|(_, n)| *n > 1).collect()
    }

    /// The seq of each request that was answered with a failure or hung (one entry per
    /// request: a seq failed twice is listed twice).
    pub fn failed_or_hung_responses(&self) -> Vec<i64> {
        self.deliveries()
            .iter()
            .filter(|r| r.failed_or_hung())
            .filter_map(|r| r.seq)
            .collect()
    }

    /// The seqs in `from..=upto` that no request with a 2xx answer carried.
    pub fn missing(&self, from: i64, upto: i64) -> Vec<i64> {
        let accepted: std::collections::HashSet<i64> = self
            .deliveries()
            .iter()
            .filter(|r| r.answer.is_success())
            .filter_map(|r| r.seq)
            .collect();
        (from..=upto).filter(|s| !accepted.contains(s)).collect()
    }

    /// Waits (polling, bounded by `timeout`) until a request carrying seq `upto` has been
    /// answered with a 2xx; whether it was.
    pub async fn wait_for_seqs(&self, upto: i64, timeout: Duration) -> bool {
        self.wait_until(timeout, |reqs| {
            reqs.iter()
                .any(|r| r.seq == Some(upto) && r.answer.is_success())
        })
        .await
    }

    /// Waits (polling, bounded by `timeout`) until `pred` holds of the requests so far.
    pub async fn wait_until(&self, timeout: Duration, pred: impl Fn(&[Received]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.inner.lock().unwrap().requests) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A short account of the requests (for failure messages): the last `n`.
    pub fn summary(&self, n: usize) -> String {
        let reqs = self.requests();
        let from = reqs.len().saturating_sub(n);
        let mut out = format!(
            "{} requests in {:?}; the last {}:",
            reqs.len(),
            self.started.elapsed(),
            reqs.len() - from
        );
        for r in &reqs[from..] {
            out.push_str(&format!(
                "\n  #{} +{:?} seq {:?} {:?} id {:?} verified {} {:?} -> {:?}",
                r.index,
                r.at.saturating_duration_since(self.started),
                r.seq,
                r.kind,
                r.webhook_id,
                r.verified,
                r.verify_error,
                r.answer
            ));
        }
        out
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

type Shared = Arc<Mutex<Inner>>;

/// Tries each accepted secret with the Standard Webhooks library; the index of the one that
/// verified, or why none did.
fn verify(secrets: &[String], body: &[u8], headers: &HeaderMap) -> Result<usize, String> {
    if secrets.is_empty() {
        return Err("the receiver accepts no secret yet".into());
    }
    let mut why = Vec::new();
    for (i, s) in secrets.iter().enumerate() {
        match standardwebhooks::Webhook::new(s) {
            Ok(wh) => match wh.verify(body, headers) {
                Ok(()) => return Ok(i),
                Err(e) => why.push(format!("secret {i}: {e}")),
            },
            Err(e) => why.push(format!("secret {i} is not a secret: {e}")),
        }
    }
    Err(why.join("; "))
}

async fn handle(
    State(inner): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let answer = {
        let mut g = inner.lock().unwrap();
        let verdict = verify(&g.secrets, &body, &headers);
        let faults = g.faults;
        let answer = if let Some(status) = g.fixed {
            Answer::Status(status)
        } else if let Some(to) = &g.redirect {
            Answer::Redirect(302, to.clone())
        } else if verdict.is_err() {
            Answer::Status(401)
        } else if g.rng.chance(faults.hang_percent) {
            Answer::Hang(faults.hang_for)
        } else if g.rng.chance(faults.fail_percent) {
            Answer::Status(500)
        } else {
            Answer::Status(200)
        };
        let index = g.requests.len();
        g.requests.push(Received {
            index,
            at: Instant::now(),
            method: method.to_string(),
            path: uri.path().to_owned(),
            content_type: text("content-type"),
            webhook_id: text("webhook-id"),
            timestamp: text("webhook-timestamp"),
            signature: text("webhook-signature"),
            raw: body.to_vec(),
            seq: parsed["seq"].as_i64(),
            id: parsed["id"].as_str().map(str::to_owned),
            kind: parsed["type"].as_str().map(str::to_owned),
            body: parsed,
            verified: verdict.is_ok(),
            secret_index: verdict.as_ref().ok().copied(),
            verify_error: verdict.err(),
            answer: answer.clone(),
        });
        answer
    };
    match answer {
        Answer::Status(s) => StatusCode::from_u16(s)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response(),
        Answer::Redirect(s, to) => (
            StatusCode::from_u16(s).unwrap_or(StatusCode::FOUND),
            [(header::LOCATION, to)],
        )
            .into_response(),
        Answer::Hang(d) => {
            // The server drops the connection at its timeout, which cancels this.
            tokio::time::sleep(d).await;
            StatusCode::OK.into_response()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Signing by hand (for the receiver's own test): HMAC-SHA256 per RFC 2104 on `sha2`
// ---------------------------------------------------------------------------------------------

pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>` for a `whsec_` secret.
pub fn sign_by_hand(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .expect("a whsec_ secret is base64");
    let mut msg = format!("{id}.{timestamp}.").into_bytes();
    msg.extend_from_slice(body);
    format!("v1,{}", b64.encode(hmac_sha256(&key, &msg)))
}
