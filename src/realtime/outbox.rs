//! A connection's bounded outgoing queue.
//!
//! Live frames come from the hub's dispatch, which must never wait on a socket: past `live_limit`
//! queued live frames the connection is cut as a slow consumer instead. Replay frames come from the
//! connection's own task, which waits for room (it is that client's own request). The writer takes
//! everything queued at once and writes it as one batch.

use std::collections::VecDeque;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tungstenite::Utf8Bytes;

/// Why the server closes a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// 4008, after a `slow_consumer` error.
    SlowConsumer,
    /// 4008, after repeated `rate_limited` errors.
    RateLimited,
    /// 4001, after an `unauthorized` error.
    Unauthorized,
    /// 4001, after a `token_expired` error.
    TokenExpired,
    /// 1001: the server is shutting down; reconnect elsewhere and resume.
    GoingAway,
    /// 1009: an inbound frame was too large.
    TooBig,
    /// 1002: the client broke the WebSocket protocol (a reserved opcode, a stray continuation).
    ProtocolError,
    /// 1007: a text frame that is not UTF-8.
    InvalidData,
    /// The client closed: its close is answered with its own code.
    PeerClosed(Option<u16>),
    /// The socket failed or the peer vanished: a close without a status, if it gets through.
    Gone,
}

impl CloseReason {
    /// The close frame's status code; `None` for a close without one.
    pub fn code(self) -> Option<u16> {
        match self {
            Self::SlowConsumer | Self::RateLimited => Some(4008),
            Self::Unauthorized | Self::TokenExpired => Some(4001),
            Self::GoingAway => Some(1001),
            Self::TooBig => Some(1009),
            Self::ProtocolError => Some(1002),
            Self::InvalidData => Some(1007),
            Self::PeerClosed(code) => code,
            Self::Gone => None,
        }
    }

    /// The `error` code sent before the close, if any.
    pub fn error_code(self) -> Option<&'static str> {
        match self {
            Self::SlowConsumer => Some("slow_consumer"),
            Self::RateLimited => Some("rate_limited"),
            Self::Unauthorized => Some("unauthorized"),
            Self::TokenExpired => Some("token_expired"),
            _ => None,
        }
    }
}

/// A frame waiting to be written.
#[derive(Debug, Clone)]
pub enum Frame {
    Text(Utf8Bytes),
    Ping,
    /// Bytes already framed: the decoder's own replies (pongs).
    Raw(Bytes),
}

/// Queue slots an outbox (and a writer's batch) keeps between bursts.
pub const RETAINED_FRAMES: usize = 8;

#[derive(Default)]
struct State {
    frames: VecDeque<Frame>,
    live: usize,
    replay: usize,
    closed: Option<CloseReason>,
}

pub struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    closing: Notify,
    drained: Notify,
    live_limit: usize,
    replay_window: usize,
}

impl Outbox {
    pub fn new(live_limit: usize, replay_window: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            closing: Notify::new(),
            drained: Notify::new(),
            live_limit,
            replay_window,
        }
    }

    /// Queues a live frame; over the limit the connection is cut (returns false).
    pub fn push_live(&self, frame: Frame) -> bool {
        let mut s = self.state.lock();
        if s.closed.is_some() {
            return false;
        }
        if s.live >= self.live_limit {
            s.closed = Some(CloseReason::SlowConsumer);
            metrics::counter!(crate::telemetry::SLOW_CONSUMER_CUTS).increment(1);
            metrics::counter!(crate::telemetry::FRAMES_DROPPED)
                .increment(s.frames.len() as u64 + 1);
            s.frames.clear();
            drop(s);
            self.ready.notify_one();
            self.drained.notify_waiters();
            self.closing.notify_waiters();
            return false;
        }
        s.live += 1;
        s.frames.push_back(frame);
        drop(s);
        self.ready.notify_one();
        true
    }

    /// Queues a reply to the client's own message.
    pub fn push(&self, frame: Frame) {
        let mut s = self.state.lock();
        if s.closed.is_none() {
            s.frames.push_back(frame);
            drop(s);
            self.ready.notify_one();
        }
    }

    /// Queues a replayed frame, waiting while `replay_window` of them are still unwritten.
    /// False once the connection is closing.
    pub async fn push_replay(&self, frame: Frame) -> bool {
        loop {
            let drained = self.drained.notified();
            {
                let mut s = self.state.lock();
                if s.closed.is_some() {
                    return false;
                }
                if s.replay < self.replay_window {
                    s.replay += 1;
                    s.frames.push_back(frame);
                    drop(s);
                    self.ready.notify_one();
                    return true;
                }
            }
            drained.await;
        }
    }

    /// Asks the writer to close with `reason` after what is queued (the first reason wins).
    pub fn close(&self, reason: CloseReason) {
        let mut s = self.state.lock();
        if s.closed.is_none() {
            s.closed = Some(reason);
        }
        drop(s);
        self.ready.notify_one();
        self.drained.notify_waiters();
        self.closing.notify_waiters();
    }

    /// Resolves once the connection is closing.
    pub async fn closed(&self) {
        loop {
            let closing = self.closing.notified();
            if self.is_closed() {
                return;
            }
            closing.await;
        }
    }

    pub fn is_closed(&self) -> bool {
        self.state.lock().closed.is_some()
    }

    /// Waits for frames; moves all queued ones into `batch`. Returns the close reason once the
    /// queue is empty and the connection is closing.
    pub async fn next_batch(&self, batch: &mut Vec<Frame>) -> Option<CloseReason> {
        loop {
            let ready = self.ready.notified();
            {
                let mut s = self.state.lock();
                if !s.frames.is_empty() {
                    batch.extend(s.frames.drain(..));
                    // A burst (a replay, a backlog) must not leave an idle socket holding its
                    // high-water mark: memory per idle socket is what a server has most of.
                    if s.frames.capacity() > RETAINED_FRAMES {
                        s.frames.shrink_to(RETAINED_FRAMES);
                    }
                    s.live = 0;
                    s.replay = 0;
                    drop(s);
                    self.drained.notify_waiters();
                    return None;
                }
                if let Some(reason) = s.closed {
                    return Some(reason);
                }
            }
            ready.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_live_queue_cuts_the_connection() {
        let o = Outbox::new(2, 8);
        assert!(o.push_live(Frame::Text("a".into())));
        assert!(o.push_live(Frame::Text("b".into())));
        assert!(!o.push_live(Frame::Text("c".into())));
        assert!(o.is_closed());
    }

    #[tokio::test]
    async fn the_writer_takes_everything_queued_at_once() {
        let o = Outbox::new(8, 8);
        o.push_live(Frame::Text("a".into()));
        o.push(Frame::Text("b".into()));
        let mut batch = Vec::new();
        assert_eq!(o.next_batch(&mut batch).await, None);
        assert_eq!(batch.len(), 2);
        o.close(CloseReason::GoingAway);
        assert_eq!(o.next_batch(&mut batch).await, Some(CloseReason::GoingAway));
    }
}
