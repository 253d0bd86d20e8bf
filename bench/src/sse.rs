//! A minimal client of `GET /realtime/sse`: one HTTP/1.1 request per TCP connection, the chunked
//! `text/event-stream` body read in place, each event's `data` handed out as the same bytes a
//! WebSocket text frame would carry.
//!
//! Built for the fanout's hot path: one buffer per connection, read like tungstenite reads its
//! frames (into the buffer's spare room, then split off), so the two transports cost the
//! generator about the same per delivery. The chunk framing is removed inside that buffer (the
//! payload moved down over the chunk headers), and an event's data is a slice of the buffer, not
//! a copy. Only what TaskForge sends is supported: a `200` with `Transfer-Encoding: chunked`,
//! lines ended by `\n`; anything else is an error.

use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::{Bytes, BytesMut};
use memchr::memmem;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

use crate::arrival::StampedTcp;

/// A response head larger than this is refused.
const MAX_HEAD: usize = 16 * 1024;
/// A chunk-size line (hex digits and extensions) longer than this is refused.
const MAX_SIZE_LINE: usize = 1024;

/// Where the de-chunker is in the body's chunk framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many payload bytes of the current chunk still to come.
    Data(usize),
    /// Expecting the CRLF after a chunk's payload.
    DataEnd,
    /// The last chunk came: the body is complete (trailers are ignored).
    Done,
}

/// What ended a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The server ended the body (the last chunk).
    Finished,
    /// The connection closed without the last chunk.
    Eof,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::Finished => "stream ended",
            End::Eof => "eof",
        }
    }
}

/// One SSE stream on its own connection.
pub struct SseConn {
    io: StampedTcp,
    /// `[0, body)`: de-chunked body not yet split into events; `[body, len)`: bytes read and not
    /// yet de-chunked (a partial chunk-size line or CRLF, or nothing).
    buf: BytesMut,
    body: usize,
    /// Where the search for the blank line that ends an event resumes in `[0, body)`.
    scanned: usize,
    chunk: Chunk,
    read_size: usize,
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// The value of a chunk-size line (extensions after `;` ignored).
fn chunk_size(line: &[u8]) -> Option<usize> {
    let hex = line.split(|&b| b == b';').next()?.trim_ascii();
    if hex.is_empty() || hex.len() > 15 {
        return None;
    }
    let mut n = 0usize;
    for &c in hex {
        let d = (c as char).to_digit(16)?;
        n = n * 16 + d as usize;
    }
    Some(n)
}

/// The `data` of one event (its lines and the blank line that ends it): `None` for an event
/// without a data field (a comment such as the heartbeat, a lone `retry:`). Several data
/// lines are joined with `\n`, as a browser does (TaskForge writes one per event).
fn event_data(event: &Bytes) -> Option<Bytes> {
    let mut found: Option<(usize, usize)> = None;
    let mut joined: Option<BytesMut> = None;
    let mut start = 0;
    while start < event.len() {
        let end = memchr::memchr(b'\n', &event[start..]).map_or(event.len(), |i| start + i);
        let line = &event[start..end];
        if let Some(rest) = line.strip_prefix(b"data") {
            let value = match rest {
                [] => Some(&rest[..0]),
                [b':', b' ', v @ ..] | [b':', v @ ..] => Some(v),
                _ => None, // a field named e.g. `database`: not ours
            };
            if let Some(v) = value {
                let from = end - v.len();
                match (&mut joined, found) {
                    (Some(j), _) => {
                        j.extend_from_slice(b"\n");
                        j.extend_from_slice(v);
                    }
                    (None, Some((a, b))) => {
                        let mut j = BytesMut::from(&event[a..b]);
                        j.extend_from_slice(b"\n");
                        j.extend_from_slice(v);
                        joined = Some(j);
                    }
                    (None, None) => found = Some((from, end)),
                }
            }
        }
        start = end + 1;
    }
    match (joined, found) {
        (Some(j), _) => Some(j.freeze()),
        (None, Some((a, b))) => Some(event.slice(a..b)),
        (None, None) => None,
    }
}

impl SseConn {
    fn new(io: StampedTcp, rest: &[u8], read_size: usize) -> io::Result<Self> {
        let mut buf = BytesMut::with_capacity(read_size.max(rest.len()));
        buf.extend_from_slice(rest);
        let mut conn = SseConn {
            io,
            buf,
            body: 0,
            scanned: 0,
            chunk: Chunk::Size,
            read_size,
        };
        conn.dechunk()?;
        Ok(conn)
    }

    /// The kernel's arrival stamp of the last read (see `StampedTcp::arrived_at`).
    pub fn arrived_at(&self, now: std::time::Instant) -> Option<std::time::Instant> {
        self.io.arrived_at(now)
    }

    /// Moves the chunk payloads in `[body, len)` down to `body`, dropping the chunk framing.
    fn dechunk(&mut self) -> io::Result<()> {
        let end = self.buf.len();
        let mut raw = self.body;
        loop {
            match self.chunk {
                Chunk::Size => {
                    let Some(nl) = memmem::find(&self.buf[raw..end], b"\r\n") else {
                        if end - raw > MAX_SIZE_LINE {
                            return Err(invalid("chunk-size line too long"));
                        }
                        break;
                    };
                    let size = chunk_size(&self.buf[raw..raw + nl])
                        .ok_or_else(|| invalid("bad chunk-size line"))?;
                    raw += nl + 2;
                    self.chunk = if size == 0 {
                        Chunk::Done
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Data(left) => {
                    let n = left.min(end - raw);
                    if n == 0 {
                        break;
                    }
                    if raw != self.body {
                        self.buf.copy_within(raw..raw + n, self.body);
                    }
                    self.body += n;
                    raw += n;
                    self.chunk = if n == left {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - n)
                    };
                }
                Chunk::DataEnd => {
                    if end - raw < 2 {
                        break;
                    }
                    if &self.buf[raw..raw + 2] != b"\r\n" {
                        return Err(invalid("chunk payload not followed by CRLF"));
                    }
                    raw += 2;
                    self.chunk = Chunk::Size;
                }
                Chunk::Done => {
                    raw = end;
                    break;
                }
            }
        }
        // Close the gap the framing left, so that the raw bytes follow the body again.
        if raw > self.body {
            self.buf.copy_within(raw..end, self.body);
            self.buf.truncate(self.body + (end - raw));
        }
        Ok(())
    }

    /// The next complete event with data in the buffer, if any (events without data skipped).
    fn next_data(&mut self) -> Option<Bytes> {
        loop {
            let from = self.scanned;
            let Some(i) = memmem::find(&self.buf[from..self.body], b"\n\n") else {
                // A blank line may straddle what came next: resume one byte back.
                self.scanned = self.body.saturating_sub(1);
                return None;
            };
            let len = from + i + 2;
            let event = self.buf.split_to(len).freeze();
            self.body -= len;
            self.scanned = 0;
            if let Some(data) = event_data(&event) {
                return Some(data);
            }
        }
    }

    /// The next event's data, or how the stream ended.
    pub fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Result<Bytes, End>>> {
        loop {
            if let Some(data) = self.next_data() {
                return Poll::Ready(Ok(Ok(data)));
            }
            if self.chunk == Chunk::Done {
                return Poll::Ready(Ok(Err(End::Finished)));
            }
            // As tungstenite reads: into the spare room, zeroed, then cut back to what came.
            if self.buf.capacity() - self.buf.len() < self.read_size / 4 {
                self.buf.reserve(self.read_size);
            }
            let len = self.buf.len();
            let room = (self.buf.capacity() - len).min(self.read_size);
            self.buf.resize(len + room, 0);
            let mut rb = ReadBuf::new(&mut self.buf[len..]);
            let read = Pin::new(&mut self.io).poll_read(cx, &mut rb);
            let n = rb.filled().len();
            self.buf.truncate(len + n);
            ready!(read)?;
            if n == 0 {
                return Poll::Ready(Ok(Err(End::Eof)));
            }
            self.dechunk()?;
        }
    }

    /// The next event's data (off the hot path: the setup).
    async fn data(&mut self) -> io::Result<Result<Bytes, End>> {
        poll_fn(|cx| self.poll_data(cx)).await
    }
}

/// Where a stream connects, what it asks for.
pub struct SseTarget<'a> {
    pub server: SocketAddr,
    pub source: Option<IpAddr>,
    /// `host:port` for the Host header
    pub host: &'a str,
    /// Path and query, e.g. `/realtime/sse?teamId=…&token=…`
    pub path: &'a str,
    pub stamps: bool,
    pub read_size: usize,
}

/// Opens the stream and waits for its `subscribed` event; returns the stream and the seq in it.
pub async fn open(t: SseTarget<'_>) -> Result<(SseConn, u64)> {
    let tcp = crate::fanout::connect_tcp(t.server, t.source).await?;
    let mut io = StampedTcp::new(tcp, t.stamps)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-store\r\n\r\n",
        t.path, t.host
    );
    io.write_all(request.as_bytes())
        .await
        .context("sending the request")?;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_len = loop {
        if let Some(i) = memmem::find(&head, b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > MAX_HEAD {
            bail!("response head over {MAX_HEAD} bytes");
        }
        let n = tokio::io::AsyncReadExt::read(&mut io, &mut chunk)
            .await
            .context("reading the response head")?;
        if n == 0 {
            bail!("connection closed before the response head");
        }
        head.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&head[..head_len]);
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        let body = String::from_utf8_lossy(&head[head_len..]);
        bail!("GET /realtime/sse answered {status}: {}", body.trim());
    }
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    if !chunked {
        bail!("the event stream is not chunked: {text}");
    }
    let mut conn = SseConn::new(io, &head[head_len..], t.read_size)?;
    loop {
        let data = match conn.data().await.context("reading the stream")? {
            Ok(d) => d,
            Err(end) => bail!("the stream ended before `subscribed` ({})", end.as_str()),
        };
        let v: Value = serde_json::from_slice(&data).with_context(|| {
            format!("event data is not JSON: {}", String::from_utf8_lossy(&data))
        })?;
        match v["type"].as_str() {
            Some("subscribed") => {
                let seq = v["seq"]
                    .as_u64()
                    .ok_or_else(|| anyhow!("subscribed without a seq: {v}"))?;
                return Ok((conn, seq));
            }
            Some("error") => bail!("the stream answered {v}"),
            _ => {} // the stream's hello
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size(b"1a"), Some(26));
        assert_eq!(chunk_size(b"0"), Some(0));
        assert_eq!(chunk_size(b"FF;name=value"), Some(255));
        assert_eq!(chunk_size(b""), None);
        assert_eq!(chunk_size(b"zz"), None);
        assert_eq!(chunk_size(b"ffffffffffffffffff"), None);
    }

    #[test]
    fn event_data_is_a_slice_or_joined() {
        let ev = Bytes::from_static(b"id: t:3\ndata: {\"a\":1}\n");
        assert_eq!(event_data(&ev).as_deref(), Some(&b"{\"a\":1}"[..]));
        let ev = Bytes::from_static(b": keepalive\n");
        assert_eq!(event_data(&ev), None);
        let ev = Bytes::from_static(b"retry: 1000\ndata:x\ndata: y\n");
        assert_eq!(event_data(&ev).as_deref(), Some(&b"x\ny"[..]));
        let ev = Bytes::from_static(b"database: 1\n");
        assert_eq!(event_data(&ev), None);
    }

    /// A stream cut into chunks that split events, CRLFs and size lines, delivered in small
    /// reads: every event's data comes out whole and in order, and the end is seen.
    #[tokio::test]
    async fn reads_chunked_events_split_anywhere() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let events: Vec<String> = (0..50)
            .map(|i| {
                format!(
                    "{{\"type\":\"activity\",\"seq\":{i},\"pad\":\"{}\"}}",
                    "x".repeat(i * 7)
                )
            })
            .collect();
        let mut body = String::from("retry: 1000\ndata: {\"type\":\"stream\"}\n\n");
        body.push_str("id: t:0\ndata: {\"type\":\"subscribed\",\"seq\":0}\n\n: keepalive\n\n");
        for (i, e) in events.iter().enumerate() {
            body.push_str(&format!("id: t:{i}\ndata: {e}\n\n"));
        }
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut req = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut req)
                .await
                .expect("request");
            let mut wire = Vec::new();
            wire.extend_from_slice(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
            );
            // Chunks of varying sizes that ignore event boundaries.
            let b = body.as_bytes();
            let mut at = 0;
            let mut k = 0;
            while at < b.len() {
                let n = (17 + k * 13 % 97).min(b.len() - at);
                wire.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                wire.extend_from_slice(&b[at..at + n]);
                wire.extend_from_slice(b"\r\n");
                at += n;
                k += 1;
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            for piece in wire.chunks(5) {
                s.write_all(piece).await.expect("write");
                s.flush().await.expect("flush");
            }
        });
        let (mut conn, seq) = open(SseTarget {
            server: addr,
            source: None,
            host: &addr.to_string(),
            path: "/realtime/sse?teamId=t&token=x",
            stamps: false,
            read_size: 64,
        })
        .await
        .expect("open");
        assert_eq!(seq, 0);
        for e in &events {
            let got = conn.data().await.expect("read").expect("an event");
            assert_eq!(std::str::from_utf8(&got).expect("utf-8"), e);
        }
        assert_eq!(conn.data().await.expect("read"), Err(End::Finished));
        server.await.expect("server");
    }

    #[tokio::test]
    async fn refusals_carry_the_status() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut req = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut req).await;
            let _ = s
                .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 9\r\n\r\nforbidden")
                .await;
        });
        let Err(e) = open(SseTarget {
            server: addr,
            source: None,
            host: &addr.to_string(),
            path: "/realtime/sse?teamId=t",
            stamps: false,
            read_size: 8192,
        })
        .await
        else {
            panic!("a 403 opened a stream");
        };
        assert!(format!("{e:#}").contains("403"), "{e:#}");
    }
}
