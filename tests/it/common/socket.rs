//! The WebSocket client of the tests ([`WsClient`]) for `/realtime`: every JSON frame received
//! is validated against `ServerFrame` of the server's `/asyncapi.json`. Also raw TCP helpers
//! for hostile-client tests.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::header::HeaderValue;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use uuid::Uuid;

use super::*;

/// The default time `WsClient::recv` waits for a frame.
pub const WS_RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// One frame read from the socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A text frame holding JSON (already validated against the AsyncAPI document).
    Json(Value),
    /// A text frame that is not JSON.
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// A close frame: code (1005 when the frame had none) and reason.
    Close(u16, String),
    /// The stream ended (or failed) without a close frame: the description.
    Dropped(String),
}

impl Frame {
    pub fn is_end(&self) -> bool {
        matches!(self, Frame::Close(..) | Frame::Dropped(_))
    }
}

/// What a room subscription names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Team(Uuid),
    Board(Uuid),
    Task(Uuid),
}

impl Scope {
    pub fn key(self) -> &'static str {
        match self {
            Scope::Team(_) => "teamId",
            Scope::Board(_) => "boardId",
            Scope::Task(_) => "taskId",
        }
    }
    pub fn id(self) -> Uuid {
        match self {
            Scope::Team(id) | Scope::Board(id) | Scope::Task(id) => id,
        }
    }
    /// Whether a server frame (`subscribed`, `unsubscribed`, `error`) names this scope.
    pub fn named_by(self, frame: &Value) -> bool {
        frame[self.key()].as_str() == Some(&self.id().to_string())
    }
}

/// The answer to a successful subscribe.
#[derive(Debug, Clone)]
pub struct Subscribed {
    pub seq: i64,
    /// The `subscribed` frame itself.
    pub frame: Value,
    /// Activity frames (the `activity` objects) received between the subscribe message and its
    /// reply: with `since`, the replay (frames of the socket's other rooms may interleave).
    pub before: Vec<Value>,
}

pub struct WsClient {
    ws: WebSocketStream<TcpStream>,
    schema: Arc<FrameSchema>,
    /// Every JSON frame received so far, in order (activities, replies, errors...).
    pub frames: Vec<Value>,
    /// Number of `Ping` frames received.
    pub pings: usize,
    pub label: String,
    /// Set once a close frame or the end of the stream was seen.
    pub ended: Option<Frame>,
}

/// How to present credentials at the handshake.
#[derive(Clone, Copy, Debug)]
pub enum WsAuth<'a> {
    Query(&'a str),
    Header(&'a str),
    None,
}

impl TestServer {
    pub fn ws_url(&self) -> String {
        format!("{}/realtime", self.base.replacen("http://", "ws://", 1))
    }

    /// Connects with `?token=` (panics unless the upgrade succeeds).
    pub async fn ws(&self, token: &str) -> WsClient {
        self.ws_connect(WsAuth::Query(token), None)
            .await
            .unwrap_or_else(|(s, b)| panic!("WebSocket handshake refused: {s} {b}"))
    }

    /// Connects with `Authorization: Bearer`.
    pub async fn ws_header(&self, token: &str) -> WsClient {
        self.ws_connect(WsAuth::Header(token), None)
            .await
            .unwrap_or_else(|(s, b)| panic!("WebSocket handshake refused: {s} {b}"))
    }

    /// Connects without any token (the first message must then be `auth`).
    pub async fn ws_anonymous(&self) -> WsClient {
        self.ws_connect(WsAuth::None, None)
            .await
            .unwrap_or_else(|(s, b)| panic!("WebSocket handshake refused: {s} {b}"))
    }

    /// Connects with `?token=` on a TCP socket whose receive buffer is `recv_buffer` bytes (for
    /// slow-consumer tests: a client that does not read fills the kernel buffers quickly).
    pub async fn ws_small_buffer(&self, token: &str, recv_buffer: u32) -> WsClient {
        self.ws_connect(WsAuth::Query(token), Some(recv_buffer))
            .await
            .unwrap_or_else(|(s, b)| panic!("WebSocket handshake refused: {s} {b}"))
    }

    /// Attempts a handshake; `Err((status, body))` when the server answered HTTP instead of
    /// upgrading.
    pub async fn ws_connect(
        &self,
        auth: WsAuth<'_>,
        recv_buffer: Option<u32>,
    ) -> Result<WsClient, (u16, String)> {
        let url = match auth {
            WsAuth::Query(t) => format!("{}?token={}", self.ws_url(), urlencode(t)),
            _ => self.ws_url(),
        };
        let mut req = url.as_str().into_client_request().expect("ws request");
        if let WsAuth::Header(t) = auth {
            req.headers_mut().insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
            );
        }
        let sock = if self.addr().is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .expect("socket");
        if let Some(n) = recv_buffer {
            sock.set_recv_buffer_size(n).expect("SO_RCVBUF");
        }
        let stream = tokio::time::timeout(Duration::from_secs(10), sock.connect(self.addr()))
            .await
            .expect("TCP connect timed out")
            .expect("TCP connect");
        let schema = self.frames.clone().expect("frame schema loaded");
        let handshake = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::client_async(req, stream),
        )
        .await
        .expect("WebSocket handshake timed out");
        match handshake {
            Ok((ws, resp)) => {
                assert_eq!(resp.status().as_u16(), 101, "upgrade status");
                Ok(WsClient {
                    ws,
                    schema,
                    frames: Vec::new(),
                    pings: 0,
                    label: String::from("ws"),
                    ended: None,
                })
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let ct = resp
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Err((status, format!("[content-type: {ct}] {body}")))
            }
            Err(e) => panic!("WebSocket handshake failed: {e}"),
        }
    }

    /// A plain TCP connection to the server (nothing sent yet).
    pub async fn tcp(&self) -> TcpStream {
        tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(self.addr()))
            .await
            .expect("TCP connect timed out")
            .expect("TCP connect")
    }
}
impl WsClient {
    pub fn labeled(mut self, label: &str) -> WsClient {
        self.label = label.to_string();
        self
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(WsMessage::text(text.to_string()))
            .await
            .unwrap_or_else(|e| panic!("{}: send failed: {e}", self.label));
    }

    /// Sends without panicking (for sockets the server may already have closed).
    pub async fn try_send_text(&mut self, text: &str) -> bool {
        self.ws
            .send(WsMessage::text(text.to_string()))
            .await
            .is_ok()
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_text(&v.to_string()).await
    }

    pub async fn send_binary(&mut self, bytes: &[u8]) {
        self.ws
            .send(WsMessage::binary(bytes.to_vec()))
            .await
            .unwrap_or_else(|e| panic!("{}: send failed: {e}", self.label));
    }

    /// Sends any message, raw frames (`WsMessage::Frame`: invalid UTF-8 in a text frame,
    /// fragments, reserved opcodes...) included; `Err` when the send failed (e.g. the server
    /// already closed the socket).
    pub async fn try_send_message(&mut self, msg: WsMessage) -> Result<(), String> {
        self.ws.send(msg).await.map_err(|e| e.to_string())
    }

    /// Sends a close frame (normal closure) and waits briefly for the server's answer.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    /// Reads until the socket ends and asserts the close code; returns the JSON frames seen.
    pub async fn expect_close(&mut self, code: u16, timeout: Duration) -> Vec<Value> {
        let (seen, end) = self.expect_end(timeout).await;
        assert_eq!(
            end,
            Frame::Close(code, end_reason(&end)),
            "{}: expected close {code}; frames before it: {seen:?}",
            self.label
        );
        seen
    }

    /// Subscribes and waits for the `subscribed` reply of that scope; `Err(error frame)` when the
    /// server answers an `error` for it (or one without a scope).
    pub async fn try_subscribe(
        &mut self,
        scope: Scope,
        since: Option<i64>,
    ) -> Result<Subscribed, Value> {
        let mut msg = json!({"type": "subscribe"});
        msg[scope.key()] = json!(scope.id());
        if let Some(s) = since {
            msg["since"] = json!(s);
        }
        self.send_json(msg).await;
        let mut before = Vec::new();
        for _ in 0..1_000_000 {
            let v = self.next_json().await;
            match v["type"].as_str() {
                Some("subscribed") if scope.named_by(&v) => {
                    let seq = v["seq"].as_i64().unwrap_or_else(|| {
                        panic!("{}: subscribed without a numeric seq: {v}", self.label)
                    });
                    return Ok(Subscribed {
                        seq,
                        frame: v,
                        before,
                    });
                }
                Some("error")
                    if scope.named_by(&v)
                        || (v.get("teamId").is_none()
                            && v.get("boardId").is_none()
                            && v.get("taskId").is_none()) =>
                {
                    return Err(v);
                }
                Some("activity") => before.push(v["activity"].clone()),
                _ => {}
            }
        }
        panic!("{}: no reply to subscribe", self.label);
    }

    /// Subscribes; panics unless the server answers `subscribed`.
    pub async fn subscribe(&mut self, scope: Scope, since: Option<i64>) -> Subscribed {
        let label = self.label.clone();
        self.try_subscribe(scope, since)
            .await
            .unwrap_or_else(|e| panic!("{label}: subscribe {scope:?} since {since:?}: {e}"))
    }

    pub async fn subscribe_team(&mut self, team: Uuid, since: Option<i64>) -> i64 {
        self.subscribe(Scope::Team(team), since).await.seq
    }
    pub async fn subscribe_board(&mut self, board: Uuid, since: Option<i64>) -> i64 {
        self.subscribe(Scope::Board(board), since).await.seq
    }
    pub async fn subscribe_task(&mut self, task: Uuid, since: Option<i64>) -> i64 {
        self.subscribe(Scope::Task(task), since).await.seq
    }

    /// Subscribes to the inbox and waits for its `subscribed`; returns it and the inbox frames
    /// replayed before it. Panics on an error.
    pub async fn subscribe_inbox(&mut self, since: Option<i64>) -> (Value, Vec<Value>) {
        let mut msg = json!({"type": "subscribe", "inbox": true});
        if let Some(s) = since {
            msg["since"] = json!(s);
        }
        self.send_json(msg).await;
        let label = self.label.clone();
        let (subscribed, before) = self
            .wait_for("inbox subscribed", WS_RECV_TIMEOUT, |v| {
                assert!(v["type"] != "error", "{label}: inbox subscribe: {v}");
                v["type"] == "subscribed" && v["inbox"] == true
            })
            .await;
        let replayed = before
            .into_iter()
            .filter(|v| {
                v["type"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("notification."))
            })
            .collect();
        (subscribed, replayed)
    }

    /// Unsubscribes and waits for the `unsubscribed` reply of that scope; returns it.
    pub async fn unsubscribe(&mut self, scope: Scope) -> Value {
        let mut msg = json!({"type": "unsubscribe"});
        msg[scope.key()] = json!(scope.id());
        self.send_json(msg).await;
        let (v, _) = self
            .wait_for("unsubscribed", WS_RECV_TIMEOUT, |v| {
                v["type"] == "unsubscribed" && scope.named_by(v) && v.get("reason").is_none()
            })
            .await;
        v
    }

    /// The users this socket knows to be present in a room: those of its `subscribed` snapshot,
    /// plus the `presence.joined` of each of `expected` the snapshot lacks (another instance
    /// shares a join through Redis just after it answers it, so a snapshot taken elsewhere at
    /// that moment may miss it; the join then follows). Sorted user ids.
    pub async fn presence_settled(&mut self, snapshot: &Value, expected: &[Uuid]) -> Vec<String> {
        let mut known: Vec<String> = snapshot["presence"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: no presence list in {snapshot}", self.label))
            .iter()
            .filter_map(|e| e["userId"].as_str().map(str::to_owned))
            .collect();
        for user in expected {
            let id = user.to_string();
            if known.contains(&id) {
                continue;
            }
            let (f, _) = self
                .wait_for("presence.joined", WS_RECV_TIMEOUT, |f| {
                    f["type"] == "activity"
                        && f["activity"]["type"] == "presence.joined"
                        && f["activity"]["data"]["userId"].as_str() == Some(id.as_str())
                })
                .await;
            assert!(
                f["activity"]["seq"].is_null(),
                "presence is not logged: {f}"
            );
            known.push(id);
        }
        known.sort();
        known
    }

    /// `auth` message; returns the reply frame.
    pub async fn auth(&mut self, token: &str) -> Value {
        self.send_json(json!({"type": "auth", "token": token}))
            .await;
        self.next_json().await
    }
}

impl FrameReader for WsClient {
    fn label(&self) -> &str {
        &self.label
    }

    fn frames(&self) -> &[Value] {
        &self.frames
    }

    async fn recv_timeout(&mut self, timeout: Duration) -> Option<Frame> {
        if let Some(end) = &self.ended {
            return Some(end.clone());
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(m) => m,
            };
            let frame = match msg {
                None => Frame::Dropped("stream ended".into()),
                Some(Err(e)) => Frame::Dropped(e.to_string()),
                Some(Ok(WsMessage::Text(t))) => match serde_json::from_str::<Value>(t.as_str()) {
                    Ok(v) => {
                        self.schema.check(&v);
                        self.frames.push(v.clone());
                        Frame::Json(v)
                    }
                    Err(_) => Frame::Text(t.as_str().to_string()),
                },
                Some(Ok(WsMessage::Binary(b))) => Frame::Binary(b.to_vec()),
                Some(Ok(WsMessage::Ping(p))) => {
                    self.pings += 1;
                    Frame::Ping(p.to_vec())
                }
                Some(Ok(WsMessage::Pong(p))) => Frame::Pong(p.to_vec()),
                Some(Ok(WsMessage::Close(cf))) => match cf {
                    Some(cf) => Frame::Close(u16::from(cf.code), cf.reason.as_str().to_string()),
                    None => Frame::Close(1005, String::new()),
                },
                Some(Ok(WsMessage::Frame(_))) => continue,
            };
            if frame.is_end() {
                self.ended = Some(frame.clone());
            }
            return Some(frame);
        }
    }

    async fn send_ping(&mut self) {
        self.send_json(json!({"type": "ping"})).await
    }
}

fn end_reason(f: &Frame) -> String {
    match f {
        Frame::Close(_, r) => r.clone(),
        _ => String::new(),
    }
}
#[derive(Debug)]
pub enum RawEnd {
    /// The server closed it (read returned 0), after sending these bytes.
    Closed(Vec<u8>),
    /// A read failed (a reset), after these bytes.
    Failed(Vec<u8>, std::io::ErrorKind),
    /// Still open after the wait, with these bytes received meanwhile.
    Open(Vec<u8>),
}

/// Reads from `tcp` until the server closes it, a read fails, or `timeout` passes (bounded to
/// 16 MiB).
pub async fn read_until_end(tcp: &mut TcpStream, timeout: Duration) -> RawEnd {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    while got.len() < 16 << 20 {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return RawEnd::Open(got),
            Ok(Ok(0)) => return RawEnd::Closed(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return RawEnd::Failed(got, e.kind()),
        }
    }
    RawEnd::Open(got)
}
