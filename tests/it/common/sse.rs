//! The SSE client of the tests ([`SseClient`]) for `GET /realtime/sse`: it reads the response
//! body as a browser's `EventSource` would (events of `id:`, `data:` and `retry:` fields ended by
//! a blank line, `:` comments), validates every message against `ServerFrame` of the server's
//! `/asyncapi.json`, keeps the last event id, and POSTs client messages to
//! `/realtime/sse/{streamId}`.
//!
//! It also checks what holds for every event of every stream: the first is the `stream` hello
//! after a `retry:`, no event has an `event:` field (so `onmessage` sees them all), and an event
//! with an `id:` carries a message that moves the stream's position (a logged activity, a
//! `subscribed`, an inbox event), with an id of `<teamId>:<seq>` and `inbox:<seq>` entries.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use uuid::Uuid;

use super::*;

/// What `GET /realtime/sse` is asked for (built with the methods below).
#[derive(Clone, Debug, Default)]
pub struct SseRequest {
    pub token: Option<String>,
    /// The token in `Authorization: Bearer` instead of `?token=`.
    pub token_in_header: bool,
    pub scopes: Vec<Scope>,
    pub inbox: bool,
    pub since: Option<i64>,
    pub inbox_since: Option<i64>,
    /// The `Last-Event-ID` header (what the browser's reconnect sends).
    pub last_event_id: Option<String>,
    /// `?lastEventId=` (what a client that reopens the stream itself sends).
    pub last_event_id_query: Option<String>,
    /// More query pairs, sent as given (malformed values included).
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
}

impl SseRequest {
    pub fn new(token: &str) -> SseRequest {
        SseRequest {
            token: Some(token.to_owned()),
            ..SseRequest::default()
        }
    }
    pub fn scopes(mut self, scopes: &[Scope]) -> SseRequest {
        self.scopes.extend_from_slice(scopes);
        self
    }
    pub fn inbox(mut self) -> SseRequest {
        self.inbox = true;
        self
    }
    pub fn since(mut self, since: i64) -> SseRequest {
        self.since = Some(since);
        self
    }
    pub fn last_event_id(mut self, id: &str) -> SseRequest {
        self.last_event_id = Some(id.to_owned());
        self
    }
    pub fn last_event_id_query(mut self, id: &str) -> SseRequest {
        self.last_event_id_query = Some(id.to_owned());
        self
    }
    pub fn token_in_header(mut self) -> SseRequest {
        self.token_in_header = true;
        self
    }
    pub fn query(mut self, key: &str, value: &str) -> SseRequest {
        self.query.push((key.to_owned(), value.to_owned()));
        self
    }
    pub fn header(mut self, name: &str, value: &str) -> SseRequest {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The path and query of the request.
    pub fn path(&self) -> String {
        let mut pairs: Vec<(String, String)> = self
            .scopes
            .iter()
            .map(|s| (s.key().to_owned(), s.id().to_string()))
            .collect();
        if self.inbox {
            pairs.push(("inbox".into(), "true".into()));
        }
        if let Some(s) = self.since {
            pairs.push(("since".into(), s.to_string()));
        }
        if let Some(s) = self.inbox_since {
            pairs.push(("inboxSince".into(), s.to_string()));
        }
        if let Some(id) = &self.last_event_id_query {
            pairs.push(("lastEventId".into(), id.clone()));
        }
        if let (Some(t), false) = (&self.token, self.token_in_header) {
            pairs.push(("token".into(), t.clone()));
        }
        pairs.extend(self.query.iter().cloned());
        let query: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
            .collect();
        format!("/realtime/sse?{}", query.join("&"))
    }
}

/// One event of the stream: its `id:` field, if it had one, and its message.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    pub data: Value,
}

pub struct SseClient {
    resp: reqwest::Response,
    /// Bytes of a line not yet complete.
    line: Vec<u8>,
    /// The fields of the event being read.
    data: Vec<String>,
    id: Option<String>,
    /// Events and comments read from the body, not yet returned by `recv_timeout`.
    pending: VecDeque<(Frame, Option<String>)>,
    schema: Arc<FrameSchema>,
    /// The instance the stream is on, for the POSTs.
    pub api: Api,
    pub token: String,
    pub headers: HeaderMap,
    /// The first event: `{"type":"stream","streamId","userId","heartbeatMs"}`.
    pub hello: Value,
    pub stream_id: String,
    /// The last `retry:` field.
    pub retry: Option<u64>,
    /// Every JSON message received after the hello, in order.
    pub frames: Vec<Value>,
    /// The same messages with their event ids.
    pub events: Vec<SseEvent>,
    /// The last event id received (or, before any, the one the stream was opened with), as
    /// `EventSource.lastEventId`: what its reconnect sends.
    pub last_event_id: Option<String>,
    /// `: keepalive` comments received.
    pub heartbeats: usize,
    pub label: String,
    /// Set once the body ended: `Dropped("stream ended")` when it ended cleanly,
    /// `Dropped("stream failed: …")` when the connection failed.
    pub ended: Option<Frame>,
}

/// The description of a stream whose body ended cleanly.
pub const SSE_ENDED: &str = "stream ended";

impl TestServer {
    /// Opens `GET /realtime/sse`; `Err(response)` when the server answers anything but 200.
    pub async fn sse_open(&self, req: &SseRequest) -> Result<SseClient, Resp> {
        let path = req.path();
        let http = self.sse_http.get_or_init(|| {
            reqwest::Client::builder()
                .no_proxy()
                .connect_timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(64)
                .build()
                .expect("reqwest client")
        });
        let mut get = http.get(format!("{}{path}", self.base));
        if let (Some(t), true) = (&req.token, req.token_in_header) {
            get = get.bearer_auth(t);
        }
        if let Some(id) = &req.last_event_id {
            get = get.header("last-event-id", id);
        }
        for (k, v) in &req.headers {
            get = get.header(k, v);
        }
        let resp = tokio::time::timeout(WS_RECV_TIMEOUT, get.send())
            .await
            .unwrap_or_else(|_| panic!("GET {path}: no response within {WS_RECV_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("GET {path}: request failed: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        if status != 200 {
            let text = resp.text().await.unwrap_or_default();
            return Err(Resp {
                method: "GET".into(),
                path,
                status,
                headers,
                json: serde_json::from_str(&text).unwrap_or(Value::Null),
                text,
            });
        }
        let ct = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(
            ct.starts_with("text/event-stream"),
            "GET {path}: 200 with content-type {ct:?}"
        );
        let mut sse = SseClient {
            resp,
            line: Vec::new(),
            data: Vec::new(),
            id: None,
            pending: VecDeque::new(),
            schema: self.frames.clone().expect("frame schema loaded"),
            api: Api::new(
                &self.base,
                self.spec.clone().expect("spec loaded"),
                http.clone(),
            ),
            token: req.token.clone().unwrap_or_default(),
            headers,
            hello: Value::Null,
            stream_id: String::new(),
            retry: None,
            frames: Vec::new(),
            events: Vec::new(),
            // As an `EventSource` keeps its last event id across its reconnects: a stream that
            // resumed and received no event with an id yet still stands where it resumed from.
            last_event_id: req
                .last_event_id
                .clone()
                .or_else(|| req.last_event_id_query.clone()),
            heartbeats: 0,
            label: String::from("sse"),
            ended: None,
        };
        sse.read_hello().await;
        Ok(sse)
    }

    /// Opens a stream of `scopes` (the inbox when there are none) with `?token=`; panics unless
    /// the server answers 200.
    pub async fn sse(&self, token: &str, scopes: &[Scope]) -> SseClient {
        let mut req = SseRequest::new(token).scopes(scopes);
        req.inbox = scopes.is_empty();
        self.sse_open(&req)
            .await
            .unwrap_or_else(|r| panic!("GET {} refused: {} {}", r.path, r.status, r.text))
    }
}

impl SseClient {
    pub fn labeled(mut self, label: &str) -> SseClient {
        self.label = label.to_string();
        self
    }

    async fn read_hello(&mut self) {
        let first = match self.next_raw(WS_RECV_TIMEOUT).await {
            Some((Frame::Ping(_), _)) => {
                panic!("{}: a comment before the stream's hello", self.label)
            }
            Some(next) => next,
            None => panic!("{}: no hello within {WS_RECV_TIMEOUT:?}", self.label),
        };
        let hello = match first {
            (Frame::Json(v), None) => v,
            other => panic!(
                "{}: the first event is not the hello: {other:?}",
                self.label
            ),
        };
        assert_eq!(
            hello["type"], "stream",
            "{}: first event {hello}",
            self.label
        );
        assert!(
            self.retry.is_some(),
            "{}: no retry: field before the hello",
            self.label
        );
        self.stream_id = hello["streamId"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| panic!("{}: hello without a streamId: {hello}", self.label))
            .to_owned();
        assert!(hello["userId"].is_string(), "{hello}");
        assert!(hello["heartbeatMs"].as_u64().is_some(), "{hello}");
        self.hello = hello;
    }

    /// The next event or comment, read from the body as needed; `None` after `timeout` or once
    /// the body ended (then `ended` is set).
    async fn next_raw(&mut self, timeout: Duration) -> Option<(Frame, Option<String>)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(next) = self.pending.pop_front() {
                return Some(next);
            }
            if self.ended.is_some() {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Err(_) => return None,
                Ok(Ok(Some(bytes))) => self.parse(&bytes),
                // An event not ended by a blank line is not dispatched (as in a browser).
                Ok(Ok(None)) => self.ended = Some(Frame::Dropped(SSE_ENDED.into())),
                Ok(Err(e)) => self.ended = Some(Frame::Dropped(format!("stream failed: {e}"))),
            }
        }
    }

    fn parse(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b != b'\n' {
                self.line.push(b);
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8(line)
                .unwrap_or_else(|e| panic!("{}: a line that is not UTF-8: {e}", self.label));
            self.field(&line);
        }
    }

    fn field(&mut self, line: &str) {
        if line.is_empty() {
            let id = self.id.take();
            if self.data.is_empty() {
                assert!(
                    id.is_none(),
                    "{}: an event with an id ({id:?}) and no data",
                    self.label
                );
                return;
            }
            let text = std::mem::take(&mut self.data).join("\n");
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: data that is not JSON ({e}): {text}", self.label));
            self.schema.check(&v);
            if let Some(id) = &id {
                check_event_id(&self.label, id, &v);
            }
            self.pending.push_back((Frame::Json(v), id));
            return;
        }
        if let Some(comment) = line.strip_prefix(':') {
            self.pending
                .push_back((Frame::Ping(comment.trim().as_bytes().to_vec()), None));
            return;
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match name {
            "data" => self.data.push(value.to_owned()),
            "id" => self.id = Some(value.to_owned()),
            "retry" => {
                self.retry =
                    Some(value.parse().unwrap_or_else(|_| {
                        panic!("{}: retry: {value:?} is not a number", self.label)
                    }))
            }
            // The contract: no `event:` field, so that `EventSource.onmessage` sees everything.
            other => panic!("{}: unexpected field {other:?} in {line:?}", self.label),
        }
    }

    /// Reads until `n` `subscribed` events arrived (a stream joins its scopes after it opened);
    /// returns them.
    pub async fn joined(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        while out.len() < n {
            let label = self.label.clone();
            let (f, _) = self
                .wait_for("subscribed", WS_RECV_TIMEOUT, |f| {
                    assert!(f["type"] != "error", "{label}: {f}");
                    f["type"] == "subscribed"
                })
                .await;
            out.push(f);
        }
        out
    }

    /// POSTs `msg` to the stream with its own token; returns the response.
    pub async fn post(&self, msg: Value) -> Resp {
        self.post_via(&self.api, Some(&self.token), msg.to_string().into_bytes())
            .await
    }

    /// POSTs raw `body` to the stream through `api` (another instance, say) with `token`.
    pub async fn post_via(&self, api: &Api, token: Option<&str>, body: Vec<u8>) -> Resp {
        post_to_stream(api, &self.stream_id, token, body).await
    }

    /// The seq of `team` in the last event id (`None` without one, or when it does not name it).
    pub fn last_seq_of(&self, team: Uuid) -> Option<i64> {
        self.last_event_id
            .as_deref()
            .and_then(|id| seq_in_event_id(id, &team.to_string()))
    }
}

/// `POST /realtime/sse/{streamId}` with `body` as a client message.
pub async fn post_to_stream(api: &Api, stream: &str, token: Option<&str>, body: Vec<u8>) -> Resp {
    api.send_raw(
        "POST",
        &format!("/realtime/sse/{stream}"),
        token,
        Some(body),
        Some("application/json"),
        &[],
    )
    .await
}

/// The seq an event id gives `stream` (a hyphenated team id, or `inbox`).
pub fn seq_in_event_id(id: &str, stream: &str) -> Option<i64> {
    id.split(',').find_map(|part| {
        let (s, seq) = part.rsplit_once(':')?;
        (s == stream).then(|| seq.parse().ok()).flatten()
    })
}

/// An event id names streams (`<teamId>` or `inbox`) with their seqs, and comes only with a
/// message that moves the position.
fn check_event_id(label: &str, id: &str, v: &Value) {
    for part in id.split(',') {
        let ok = part.rsplit_once(':').is_some_and(|(s, seq)| {
            (s == "inbox" || Uuid::parse_str(s).is_ok_and(|u| u.to_string() == s))
                && seq.parse::<u64>().is_ok()
        });
        assert!(ok, "{label}: malformed event id {id:?} (with {v})");
    }
    let kind = v["type"].as_str().unwrap_or("");
    let positioned = (kind == "activity" && v["activity"]["seq"].is_i64())
        || kind == "subscribed"
        || kind.starts_with("notification.");
    assert!(
        positioned,
        "{label}: an event id ({id}) on a message that does not move the position: {v}"
    );
}

impl FrameReader for SseClient {
    fn label(&self) -> &str {
        &self.label
    }

    fn frames(&self) -> &[Value] {
        &self.frames
    }

    /// Events as `Frame::Json`, comments as `Frame::Ping` (their text), the end as
    /// `Frame::Dropped`.
    async fn recv_timeout(&mut self, timeout: Duration) -> Option<Frame> {
        match self.next_raw(timeout).await {
            Some((Frame::Json(v), id)) => {
                if id.is_some() {
                    self.last_event_id.clone_from(&id);
                }
                self.events.push(SseEvent {
                    id,
                    data: v.clone(),
                });
                self.frames.push(v.clone());
                Some(Frame::Json(v))
            }
            Some((f, _)) => {
                self.heartbeats += usize::from(matches!(f, Frame::Ping(_)));
                Some(f)
            }
            None => self.ended.clone(),
        }
    }

    async fn send_ping(&mut self) {
        let r = self.post(json!({"type": "ping"})).await;
        assert_eq!(
            r.status, 202,
            "{}: POST ping to the stream: {} {}",
            self.label, r.status, r.text
        );
    }
}
