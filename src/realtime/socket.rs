//! The WebSocket wire of one connection: the HTTP upgrade, the inbound message stream, and the
//! writer that puts outbound frames on the socket.
//!
//! Inbound frames are decoded by tungstenite (masking, fragmentation, UTF-8, size limits). The
//! outbound side is written here instead: a server frame is a 2–10 byte header before the shared
//! payload, so a batch goes out as one vectored write straight from the bytes every recipient
//! shares. Nothing is copied per recipient, and no write buffer outlives a batch: an idle socket
//! holds no memory sized by its past bursts (a retained buffer grew to whatever its largest
//! batch was, which left each socket's memory to chance and fragmented the heap under churn).
//!
//! This module never interprets messages; that is `connection`'s job.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio_tungstenite::WebSocketStream;
use tokio_util::task::TaskTracker;
use tungstenite::protocol::{Role, WebSocketConfig};

use super::outbox::{Frame, Outbox};
use crate::http::error::ApiError;

type Io = TokioIo<Upgraded>;

/// The inbound half: client messages, decoded.
pub type Inbound = WebSocketStream<InboundIo>;

/// A validated upgrade request (`GET` with the WebSocket headers, HTTP/1.1).
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        if parts.version != Version::HTTP_11 {
            return Err(upgrade_required("WebSocket upgrades need HTTP/1.1"));
        }
        if parts.method != Method::GET {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "a WebSocket upgrade is a GET",
            ));
        }
        let h = &parts.headers;
        if !has_token(h, header::CONNECTION, "upgrade")
            || !has_token(h, header::UPGRADE, "websocket")
        {
            return Err(upgrade_required(
                "this endpoint speaks WebSocket: send Connection: Upgrade and Upgrade: websocket",
            ));
        }
        if h.get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return Err(upgrade_required("Sec-WebSocket-Version must be 13"));
        }
        let key = h
            .get(header::SEC_WEBSOCKET_KEY)
            .filter(|k| !k.is_empty())
            .cloned()
            .ok_or_else(|| ApiError::bad_request("Sec-WebSocket-Key is missing"))?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or_else(|| upgrade_required("this connection cannot be upgraded"))?;
        Ok(Self { key, on_upgrade })
    }
}

fn upgrade_required(detail: &str) -> ApiError {
    ApiError::new(StatusCode::UPGRADE_REQUIRED, "upgrade_required", detail)
}

/// Whether a comma-separated header holds `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

impl Upgrade {
    /// Answers 101 and runs `serve` on the socket once the client has switched protocols.
    /// Replies that tungstenite makes on its own (pongs) go through `outbox`.
    pub fn on_upgrade<F, Fut>(
        self,
        tasks: &TaskTracker,
        config: WebSocketConfig,
        outbox: Arc<Outbox>,
        serve: F,
    ) -> Response
    where
        F: FnOnce(Inbound, Outbound) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accept = tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        tasks.spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(error = %e, "the client did not complete the upgrade");
                    return;
                }
            };
            let (read, write) = tokio::io::split(TokioIo::new(upgraded));
            let inbound = InboundIo {
                read,
                replies: outbox,
            };
            let inbound =
                WebSocketStream::from_raw_socket(inbound, Role::Server, Some(config)).await;
            serve(inbound, Outbound { write }).await;
        });
        (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, HeaderValue::from_static("upgrade")),
                (header::UPGRADE, HeaderValue::from_static("websocket")),
            ],
            [(header::SEC_WEBSOCKET_ACCEPT, accept)],
        )
            .into_response()
    }
}

/// The socket's read half for tungstenite. What tungstenite writes (a pong; its echo of a close
/// comes after the writer's own close and is dropped) is already framed; it is queued for the writer like a live frame, so a client
/// that floods pings without reading is cut as a slow consumer instead of growing the queue.
pub struct InboundIo {
    read: ReadHalf<Io>,
    replies: Arc<Outbox>,
}

impl AsyncRead for InboundIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for InboundIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.replies
            .push_live(Frame::Raw(Bytes::copy_from_slice(buf)));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
/// The longest server frame header: no mask, 64-bit length.
const MAX_HEADER: usize = 10;
/// Frames per vectored write (two slices each; well under the kernel's 1,024).
const FRAMES_PER_WRITE: usize = 64;

impl Frame {
    /// Writes the frame's header into `head` (none for raw bytes); returns its length.
    fn head(&self, head: &mut [u8; MAX_HEADER]) -> usize {
        match self {
            Frame::Text(text) => header(OP_TEXT, text.len(), head),
            Frame::Positioned(p) => header(OP_TEXT, p.text.len(), head),
            Frame::Ping => header(OP_PING, 0, head),
            Frame::Raw(_) => 0,
        }
    }

    fn payload(&self) -> &[u8] {
        match self {
            Frame::Text(text) => text.as_bytes(),
            Frame::Positioned(p) => p.text.as_bytes(),
            Frame::Ping => &[],
            Frame::Raw(bytes) => bytes,
        }
    }
}

/// Writes an unmasked, final frame header; returns its length.
fn header(opcode: u8, len: usize, head: &mut [u8; MAX_HEADER]) -> usize {
    head[0] = 0x80 | opcode;
    match len {
        0..=125 => {
            head[1] = len as u8;
            2
        }
        126..=0xFFFF => {
            head[1] = 126;
            head[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        _ => {
            head[1] = 127;
            head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        }
    }
}

/// The outbound half: writes batches of frames, and the close.
pub struct Outbound<W = WriteHalf<Io>> {
    write: W,
}

impl<W: AsyncWrite + Unpin> Outbound<W> {
    /// Writes every frame of `batch`, in order, with as few syscalls as the kernel allows. A
    /// write that makes no progress for `stall` fails with `TimedOut`: a peer that stopped
    /// reading must not hold the writer (and what it holds) for ever.
    pub async fn write_batch(&mut self, batch: &[Frame], stall: Duration) -> io::Result<()> {
        let mut at = Position::default();
        let deadline = tokio::time::sleep(stall);
        tokio::pin!(deadline);
        std::future::poll_fn(|cx| {
            let before = (at.frame, at.offset);
            if let Poll::Ready(done) = self.poll_write_from(cx, batch, &mut at) {
                return Poll::Ready(done);
            }
            if (at.frame, at.offset) != before {
                deadline.as_mut().reset(tokio::time::Instant::now() + stall);
            }
            match deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::ErrorKind::TimedOut.into())),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// Writes a close frame with `code` and `reason` (or neither), then ends the TCP stream's
    /// write side.
    pub async fn close(&mut self, code: Option<u16>, reason: &str) -> io::Result<()> {
        // A close payload is at most 125 bytes: the code and up to 123 of reason.
        let reason = match code {
            Some(_) => &reason.as_bytes()[..reason.floor_char_boundary(123)],
            None => &[],
        };
        let payload_len = if code.is_some() { 2 + reason.len() } else { 0 };
        let mut frame = Vec::with_capacity(MAX_HEADER + payload_len);
        let mut head = [0; MAX_HEADER];
        let n = header(OP_CLOSE, payload_len, &mut head);
        frame.extend_from_slice(&head[..n]);
        if let Some(code) = code {
            frame.extend_from_slice(&code.to_be_bytes());
            frame.extend_from_slice(reason);
        }
        self.write.write_all(&frame).await?;
        self.write.shutdown().await
    }

    fn poll_write_from(
        &mut self,
        cx: &mut Context<'_>,
        batch: &[Frame],
        at: &mut Position,
    ) -> Poll<io::Result<()>> {
        while at.frame < batch.len() {
            let frames = &batch[at.frame..batch.len().min(at.frame + FRAMES_PER_WRITE)];
            let mut heads = [[0u8; MAX_HEADER]; FRAMES_PER_WRITE];
            let mut head_lens = [0usize; FRAMES_PER_WRITE];
            for ((frame, head), len) in frames.iter().zip(&mut heads).zip(&mut head_lens) {
                *len = frame.head(head);
            }
            let mut slices = [IoSlice::new(&[]); 2 * FRAMES_PER_WRITE];
            let mut used = 0;
            let mut skip = at.offset;
            for ((frame, head), &len) in frames.iter().zip(&heads).zip(&head_lens) {
                for part in [&head[..len], frame.payload()] {
                    if skip >= part.len() {
                        skip -= part.len();
                        continue;
                    }
                    slices[used] = IoSlice::new(&part[skip..]);
                    skip = 0;
                    used += 1;
                }
            }
            let mut written = if used == 0 {
                0
            } else {
                match ready!(Pin::new(&mut self.write).poll_write_vectored(cx, &slices[..used])) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(n) => n,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            };
            for (frame, &len) in frames.iter().zip(&head_lens) {
                let left = len + frame.payload().len() - at.offset;
                if written < left {
                    at.offset += written;
                    break;
                }
                written -= left;
                at.frame += 1;
                at.offset = 0;
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// How far a batch has been written: the frame, and the bytes of it already sent.
#[derive(Default)]
struct Position {
    frame: usize,
    offset: usize,
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use tungstenite::Message;
    use tungstenite::protocol::frame::coding::CloseCode;

    use super::*;

    fn text(len: usize) -> Frame {
        let s: String = (0..len)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        Frame::Text(s.into())
    }

    #[test]
    fn headers_use_the_shortest_length_form() {
        let mut head = [0; MAX_HEADER];
        assert_eq!(header(OP_TEXT, 0, &mut head), 2);
        assert_eq!(head[..2], [0x81, 0]);
        assert_eq!(header(OP_TEXT, 125, &mut head), 2);
        assert_eq!(head[..2], [0x81, 125]);
        assert_eq!(header(OP_TEXT, 126, &mut head), 4);
        assert_eq!(head[..4], [0x81, 126, 0, 126]);
        assert_eq!(header(OP_PING, 65_535, &mut head), 4);
        assert_eq!(head[..4], [0x89, 126, 0xff, 0xff]);
        assert_eq!(header(OP_CLOSE, 65_536, &mut head), 10);
        assert_eq!(head[..10], [0x88, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn tokens_are_matched_in_lists_and_case_blind() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(has_token(&h, header::CONNECTION, "upgrade"));
        h.insert(header::CONNECTION, HeaderValue::from_static("upgraded"));
        assert!(!has_token(&h, header::CONNECTION, "upgrade"));
        assert!(!has_token(&h, header::UPGRADE, "websocket"));
    }

    /// A peer that reads nothing: the write gives up after the stall time instead of waiting for
    /// ever.
    #[tokio::test(start_paused = true)]
    async fn a_write_that_makes_no_progress_times_out() {
        let (server, _client) = tokio::io::duplex(64);
        let mut out = Outbound { write: server };
        let err = out
            .write_batch(&[text(10_000)], Duration::from_secs(3))
            .await
            .expect_err("nobody reads");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    /// Through a pipe that takes a few bytes at a time, a batch larger than one vectored write,
    /// with every length form, arrives whole and in order, and so does the close.
    #[tokio::test]
    async fn a_batch_survives_partial_writes() {
        let (server, client) = tokio::io::duplex(97);
        let mut batch: Vec<Frame> = [0, 1, 125, 126, 765, 65_535, 65_536, 200_000]
            .into_iter()
            .map(text)
            .collect();
        batch.push(Frame::Ping);
        // A pong, as tungstenite frames it.
        batch.push(Frame::Raw(Bytes::from_static(&[0x8a, 2, b'o', b'k'])));
        batch.extend((0..3 * FRAMES_PER_WRITE).map(|i| text(i % 300)));
        let expected = batch.clone();

        let write = async move {
            let mut out = Outbound { write: server };
            out.write_batch(&batch, Duration::from_secs(30))
                .await
                .expect("batch written");
            out.close(Some(4008), "too many frames queued")
                .await
                .expect("closed");
        };
        let read = async move {
            let mut ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
            let mut got = Vec::new();
            while let Some(msg) = ws.next().await {
                let msg = msg.expect("a valid frame");
                let end = msg.is_close();
                got.push(msg);
                if end {
                    break;
                }
            }
            got
        };
        let ((), got) = tokio::join!(write, read);

        assert_eq!(got.len(), expected.len() + 1, "every frame and the close");
        for (i, (frame, msg)) in expected.iter().zip(&got).enumerate() {
            match (frame, msg) {
                (Frame::Text(t), Message::Text(m)) => assert_eq!(t, m, "frame {i}"),
                (Frame::Ping, Message::Ping(p)) => assert!(p.is_empty()),
                (Frame::Raw(_), Message::Pong(p)) => assert_eq!(&p[..], b"ok"),
                _ => panic!("frame {i}: sent {frame:?}, received {msg:?}"),
            }
        }
        match got.last() {
            Some(Message::Close(Some(cf))) => {
                assert_eq!(cf.code, CloseCode::from(4008));
                assert_eq!(cf.reason.as_str(), "too many frames queued");
            }
            other => panic!("expected the close, got {other:?}"),
        }
    }
}
