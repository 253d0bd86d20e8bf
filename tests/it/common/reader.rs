//! What every realtime client of the tests offers, whatever its transport ([`WsClient`],
//! [`SseClient`], [`RtClient`]): reading server messages as JSON frames, waiting for some,
//! barriers (a `ping` answered by a `pong` in order with everything queued before it), and the
//! end of the connection. A client implements the four required methods; the rest is shared.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::*;

#[allow(async_fn_in_trait)]
pub trait FrameReader {
    /// The client's name in failure messages.
    fn label(&self) -> &str;

    /// Every JSON frame received so far, in order (activities, replies, errors...).
    fn frames(&self) -> &[Value];

    /// The next frame, or `None` after `timeout`. JSON frames are validated against the
    /// AsyncAPI document and recorded; once the connection ended, its end every time.
    async fn recv_timeout(&mut self, timeout: Duration) -> Option<Frame>;

    /// Sends a `ping`; its `pong` comes back after everything queued for this client before it.
    async fn send_ping(&mut self);

    /// The last few JSON frames received (for failure messages).
    fn tail(&self) -> String {
        let n = self.frames().len();
        self.frames()[n.saturating_sub(8)..]
            .iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            .join("\n    ")
    }

    /// The next JSON frame, skipping pings/pongs; panics on timeout or when the socket ends.
    async fn next_json(&mut self) -> Value {
        self.next_json_within(WS_RECV_TIMEOUT).await
    }

    async fn next_json_within(&mut self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_timeout(left).await {
                Some(Frame::Json(v)) => return v,
                Some(Frame::Ping(_) | Frame::Pong(_)) => continue,
                Some(other) => panic!(
                    "{}: expected a JSON frame, got {other:?}; last frames: {}",
                    self.label(),
                    self.tail()
                ),
                None => panic!(
                    "{}: no JSON frame within {timeout:?}; last frames: {}",
                    self.label(),
                    self.tail()
                ),
            }
        }
    }

    /// The next JSON frame, asserting its `type`.
    async fn expect_type(&mut self, kind: &str) -> Value {
        let v = self.next_json().await;
        assert_eq!(
            v["type"],
            kind,
            "{}: expected a {kind:?} frame, got {v}",
            self.label()
        );
        v
    }

    /// Reads until the socket ends (bounded by `timeout`): the JSON frames seen before, and the
    /// end (`Close` or `Dropped`). Panics when it does not end in time.
    async fn expect_end(&mut self, timeout: Duration) -> (Vec<Value>, Frame) {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_timeout(left).await {
                Some(Frame::Json(v)) => seen.push(v),
                Some(f) if f.is_end() => return (seen, f),
                Some(_) => continue,
                None => panic!(
                    "{}: the socket did not end within {timeout:?}; frames seen meanwhile: {seen:?}",
                    self.label()
                ),
            }
        }
    }

    /// Collects JSON frames for `d` (pings skipped); stops early when the socket ends.
    async fn collect_for(&mut self, d: Duration) -> Vec<Value> {
        let deadline = Instant::now() + d;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return out;
            }
            match self.recv_timeout(left).await {
                Some(Frame::Json(v)) => out.push(v),
                Some(f) if f.is_end() => return out,
                Some(_) => {}
                None => return out,
            }
        }
    }

    /// Reads whatever is immediately available (bounded to 10,000 frames).
    async fn pump(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        for _ in 0..10_000 {
            match self.recv_timeout(Duration::from_millis(2)).await {
                Some(Frame::Json(v)) => out.push(v),
                Some(f) if f.is_end() => return out,
                Some(_) => {}
                None => return out,
            }
        }
        out
    }

    /// Sends `ping` and returns every JSON frame received before the `pong`: everything the
    /// server had queued for this socket before it read the ping.
    async fn barrier(&mut self) -> Vec<Value> {
        self.send_ping().await;
        let mut out = Vec::new();
        for _ in 0..100_000 {
            let v = self.next_json().await;
            if v["type"] == "pong" {
                return out;
            }
            out.push(v);
        }
        panic!("{}: no pong after 100,000 frames", self.label());
    }

    /// Asserts `ping` is answered by `pong` with nothing before it.
    async fn expect_pong(&mut self) {
        let before = self.barrier().await;
        assert!(
            before.is_empty(),
            "{}: frames before the pong: {before:?}",
            self.label()
        );
    }

    /// Reads JSON frames until one satisfies `pred` (bounded by `timeout`); returns it and the
    /// frames seen before it.
    async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> (Value, Vec<Value>) {
        let deadline = Instant::now() + timeout;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_timeout(left).await {
                Some(Frame::Json(v)) if pred(&v) => return (v, before),
                Some(Frame::Json(v)) => before.push(v),
                Some(Frame::Ping(_) | Frame::Pong(_)) => {}
                Some(other) => panic!(
                    "{}: waiting for {what}, got {other:?}; frames before: {before:?}",
                    self.label()
                ),
                None => panic!(
                    "{}: no {what} within {timeout:?}; frames meanwhile: {before:?}",
                    self.label()
                ),
            }
        }
    }

    /// Reads until `n` activity frames (presence excluded) arrived; returns their `activity`
    /// objects. Panics after `timeout`.
    async fn activities(&mut self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_timeout(left).await {
                Some(Frame::Json(v)) => {
                    if is_logged_activity(&v) {
                        out.push(v["activity"].clone());
                    }
                }
                Some(Frame::Ping(_) | Frame::Pong(_)) => {}
                Some(other) => panic!(
                    "{}: waiting for {n} activities, got {other:?} after {out:?}",
                    self.label()
                ),
                None => panic!(
                    "{}: only {} of {n} activities within {timeout:?}: {out:?}",
                    self.label(),
                    out.len()
                ),
            }
        }
        out
    }

    /// Reads until `n` inbox frames (`notification.*`) arrived; returns them.
    async fn inbox_frames(&mut self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_timeout(left).await {
                Some(Frame::Json(v)) => {
                    if v["type"]
                        .as_str()
                        .is_some_and(|t| t.starts_with("notification."))
                    {
                        out.push(v);
                    }
                }
                Some(Frame::Ping(_) | Frame::Pong(_)) => {}
                Some(other) => panic!(
                    "{}: waiting for {n} inbox frames, got {other:?} after {out:?}",
                    self.label()
                ),
                None => panic!(
                    "{}: only {} of {n} inbox frames within {timeout:?}: {out:?}",
                    self.label(),
                    out.len()
                ),
            }
        }
        out
    }
}
