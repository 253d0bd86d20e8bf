//! Connections from chosen loopback source addresses: keep-alive HTTP/1.1 and WebSocket clients,
//! and the kernel's view of a socket that is never read (`TCP_INFO`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::fanout::Ws;

/// The normal user's own address.
pub const NORMAL_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
/// Attackers use 127.0.0.2 ..= 127.0.0.250.
const ATTACK_FIRST: u8 = 2;
const ATTACK_LAST: u8 = 250;
/// Setup steps (registrations) use 127.0.0.251 ..= 127.0.0.254, so that they do not spend the
/// normal user's or the attackers' per-address budget.
const SETUP_FIRST: u8 = 251;
const SETUP_LAST: u8 = 254;

/// The `k`-th attacker address (wrapping over 127.0.0.2 ..= 127.0.0.250).
pub fn attack_source(k: usize) -> IpAddr {
    let span = usize::from(ATTACK_LAST - ATTACK_FIRST) + 1;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, ATTACK_FIRST + (k % span) as u8))
}

/// The `k`-th setup address (wrapping over 127.0.0.251 ..= 127.0.0.254).
pub fn setup_source(k: usize) -> IpAddr {
    let span = usize::from(SETUP_LAST - SETUP_FIRST) + 1;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, SETUP_FIRST + (k % span) as u8))
}

/// A TCP connection to `server` from `source`, with `SO_RCVBUF` set before connecting when asked
/// (a small one makes a client that never reads stall the server's writes quickly).
pub async fn tcp_from(
    server: SocketAddr,
    source: IpAddr,
    recv_buffer: Option<u32>,
) -> Result<TcpStream> {
    if !server.ip().is_loopback() || !source.is_loopback() {
        bail!("only loopback traffic is allowed (server {server}, source {source})");
    }
    let sock = TcpSocket::new_v4()?;
    if let Some(n) = recv_buffer {
        sock.set_recv_buffer_size(n)?;
    }
    sock.bind(SocketAddr::new(source, 0))
        .with_context(|| format!("bind {source}:0"))?;
    let stream = sock.connect(server).await.context("connect")?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

type Sender = SendRequest<Full<Bytes>>;

/// A response: its status and (when asked for) its body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

/// What a request that got no response ran into.
pub type Failure = &'static str;

/// One keep-alive HTTP/1.1 connection from a fixed source address, re-opened when it breaks.
pub struct Conn {
    server: SocketAddr,
    source: IpAddr,
    sender: Option<Sender>,
    connects: u64,
    /// Connections opened after the first (the server closed one, or a request failed)
    pub reconnects: u64,
}

impl Conn {
    pub fn new(server: SocketAddr, source: IpAddr) -> Self {
        Self {
            server,
            source,
            sender: None,
            connects: 0,
            reconnects: 0,
        }
    }

    async fn ready(&mut self) -> Result<&mut Sender, Failure> {
        let alive = match self.sender.as_mut() {
            Some(s) => s.ready().await.is_ok(),
            None => false,
        };
        if !alive {
            self.sender = None;
            if self.connects > 0 {
                self.reconnects += 1;
            }
            self.connects += 1;
            let stream = tcp_from(self.server, self.source, None)
                .await
                .map_err(|_| "connect")?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|_| "connect")?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            sender.ready().await.map_err(|_| "connect")?;
            self.sender = Some(sender);
        }
        self.sender.as_mut().ok_or("connect")
    }

    /// Sends one request and reads the whole response (kept only with `keep_body`).
    pub async fn exchange(
        &mut self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
        keep_body: bool,
    ) -> Result<Reply, Failure> {
        let result = tokio::time::timeout(timeout, async {
            let sender = self.ready().await?;
            let resp = sender.send_request(req).await.map_err(|_| "send")?;
            let status = resp.status().as_u16();
            let mut body = resp.into_body();
            let mut kept = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|_| "body")?;
                if keep_body && let Some(data) = frame.data_ref() {
                    kept.extend_from_slice(data);
                }
            }
            Ok(Reply {
                status,
                body: Bytes::from(kept),
            })
        })
        .await
        .unwrap_or(Err("timeout"));
        if result.is_err() {
            // The connection's state is unknown: start over on the next request.
            self.sender = None;
        }
        result
    }
}

/// Builds requests for one server (its `Host` header).
#[derive(Clone)]
pub struct Api {
    pub server: SocketAddr,
    host: HeaderValue,
}

impl Api {
    pub fn new(server: SocketAddr) -> Result<Self> {
        Ok(Self {
            server,
            host: HeaderValue::from_str(&server.to_string())?,
        })
    }

    pub fn request(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&HeaderValue>,
        json: Option<Bytes>,
    ) -> Request<Full<Bytes>> {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.host.clone());
        if let Some(t) = bearer {
            b = b.header(AUTHORIZATION, t.clone());
        }
        if json.is_some() {
            b = b.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        b.body(Full::new(json.unwrap_or_default()))
            // Method, path and headers all come from this tool: they are valid.
            .expect("request parts are valid")
    }

    pub fn get(&self, path: &str, bearer: Option<&HeaderValue>) -> Request<Full<Bytes>> {
        self.request(Method::GET, path, bearer, None)
    }

    pub fn post(
        &self,
        path: &str,
        bearer: Option<&HeaderValue>,
        json: impl Into<Bytes>,
    ) -> Request<Full<Bytes>> {
        self.request(Method::POST, path, bearer, Some(json.into()))
    }

    pub fn ws_url(&self, token: &str) -> String {
        format!("ws://{}/realtime?token={token}", self.server)
    }
}

/// A setup call: a 2xx JSON answer, or an error naming the call.
pub async fn call_json(
    conn: &mut Conn,
    req: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<Value> {
    let what = format!("{} {}", req.method(), req.uri().path());
    let reply = conn
        .exchange(req, timeout, true)
        .await
        .map_err(|e| anyhow!("{what}: {e} error"))?;
    let text = String::from_utf8_lossy(&reply.body);
    if !(200..300).contains(&reply.status) {
        bail!("{what}: HTTP {}: {}", reply.status, truncate(&text, 300));
    }
    serde_json::from_slice(&reply.body)
        .with_context(|| format!("{what}: not JSON: {}", truncate(&text, 300)))
}

pub fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Opens a WebSocket to `/realtime?token=` from `source`.
pub async fn ws_connect(
    api: &Api,
    source: IpAddr,
    token: &str,
    recv_buffer: Option<u32>,
    timeout: Duration,
) -> Result<Ws> {
    tokio::time::timeout(timeout, async {
        let stream = tcp_from(api.server, source, recv_buffer).await?;
        let (ws, _) = tokio_tungstenite::client_async_with_config(api.ws_url(token), stream, None)
            .await
            .context("WebSocket handshake")?;
        Ok::<_, anyhow::Error>(ws)
    })
    .await
    .map_err(|_| anyhow!("WebSocket connect timed out"))?
}

/// Sends a subscribe to `team` (with `since` when given).
pub async fn send_subscribe(ws: &mut Ws, team: &str, since: Option<u64>) -> Result<()> {
    let msg = match since {
        Some(s) => format!(r#"{{"type":"subscribe","teamId":"{team}","since":{s}}}"#),
        None => format!(r#"{{"type":"subscribe","teamId":"{team}"}}"#),
    };
    ws.send(Message::text(msg)).await.context("subscribe")
}

/// Reads until `subscribed` and returns its seq; the activities before it go to `on_activity`.
pub async fn await_subscribed(
    ws: &mut Ws,
    timeout: Duration,
    mut on_activity: impl FnMut(&Value),
) -> Result<u64> {
    tokio::time::timeout(timeout, async {
        while let Some(msg) = ws.next().await {
            match msg.context("reading the subscribe answer")? {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                    match v["type"].as_str() {
                        Some("subscribed") => {
                            return v["seq"]
                                .as_u64()
                                .ok_or_else(|| anyhow!("subscribed without a seq"));
                        }
                        Some("activity") => on_activity(&v["activity"]),
                        Some("error") => bail!("subscribe answered {}", truncate(t.as_str(), 300)),
                        _ => {}
                    }
                }
                Message::Close(f) => {
                    bail!("closed before `subscribed`: {}", close_reason(f.as_ref()))
                }
                _ => {}
            }
        }
        bail!("the connection ended before `subscribed`")
    })
    .await
    .map_err(|_| anyhow!("no `subscribed` within {timeout:?}"))?
}

/// `close 4008` (the code of a close frame), or `close` without one.
pub fn close_reason(f: Option<&CloseFrame>) -> String {
    f.map_or_else(
        || "close".to_owned(),
        |f| format!("close {}", u16::from(f.code)),
    )
}

/// `tcpi_state` of an established connection.
const TCP_ESTABLISHED: u8 = 1;

/// The kernel's TCP state of a socket (`TCP_INFO`), `None` when it cannot be read.
pub fn tcp_state(fd: RawFd) -> Option<u8> {
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: fd is a socket this process owns; the pointer and length describe `info`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast::<libc::c_void>(),
            &mut len,
        )
    };
    (rc == 0).then_some(info.tcpi_state)
}

/// Whether the kernel says the peer ended the connection (FIN or RST received) without the
/// socket being read.
pub fn peer_gone(fd: RawFd) -> bool {
    tcp_state(fd).is_some_and(|s| s != TCP_ESTABLISHED)
}

pub fn ws_fd(ws: &Ws) -> RawFd {
    ws.get_ref().as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_stay_in_their_ranges() {
        assert_eq!(attack_source(0), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(
            attack_source(248),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 250))
        );
        assert_eq!(attack_source(249), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(setup_source(0), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 251)));
        assert_eq!(setup_source(5), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 252)));
        for k in 0..1000 {
            assert_ne!(attack_source(k), IpAddr::V4(NORMAL_SOURCE));
            assert!(attack_source(k).is_loopback());
        }
    }

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }

    #[tokio::test]
    async fn refuses_non_loopback() {
        let r = tcp_from(
            "10.0.0.1:80".parse().expect("addr"),
            IpAddr::V4(NORMAL_SOURCE),
            None,
        )
        .await;
        assert!(r.is_err());
    }

    #[tokio::test]
    async fn sees_a_peer_close_without_reading() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listen");
        let addr = listener.local_addr().expect("addr");
        let client = tcp_from(addr, attack_source(3), Some(4096))
            .await
            .expect("connect");
        let (server_side, peer) = listener.accept().await.expect("accept");
        assert_eq!(peer.ip(), attack_source(3));
        assert!(!peer_gone(client.as_raw_fd()));
        drop(server_side);
        let mut gone = false;
        for _ in 0..100 {
            if peer_gone(client.as_raw_fd()) {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(gone);
    }
}
