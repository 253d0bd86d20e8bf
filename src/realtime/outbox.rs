//! A connection's bounded outgoing queue.
//!
//! Live frames come from the hub's dispatch, which must never wait on a socket: past `live_limit`
//! queued live frames the connection is cut as a slow consumer instead. Replay frames come from the
//! connection's own task, which waits for room (it is that client's own request). The writer takes
//! everything queued at once and writes it as one batch.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tungstenite::Utf8Bytes;

use super::protocol::ErrorCode;
use crate::domain::TeamId;

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
    /// An SSE stream's user was removed from this team: the stream ends after a `forbidden`
    /// error naming it (a socket stays open and only leaves the team's rooms).
    Revoked(TeamId),
    /// The client closed: its close is answered with its own code.
    PeerClosed(Option<u16>),
    /// The socket failed or the peer vanished: a close without a status, if it gets through.
    Gone,
}

impl CloseReason {
    /// The close frame's status code (`None` for a close without one), the `error` sent before
    /// it, and the text of both: one row per reason, so that a code and its error stay together.
    fn row(self) -> (Option<u16>, Option<ErrorCode>, &'static str) {
        use ErrorCode as E;
        match self {
            Self::SlowConsumer => (
                Some(4008),
                Some(E::SlowConsumer),
                "too many frames queued: resume with since",
            ),
            Self::RateLimited => (Some(4008), Some(E::RateLimited), "too many messages"),
            Self::Unauthorized => (Some(4001), Some(E::Unauthorized), "authentication required"),
            Self::TokenExpired => (
                Some(4001),
                Some(E::TokenExpired),
                "the access token expired",
            ),
            Self::GoingAway => (
                Some(1001),
                None,
                "server going away: reconnect and resume with since",
            ),
            Self::TooBig => (Some(1009), None, "message too large"),
            Self::ProtocolError => (Some(1002), None, "WebSocket protocol error"),
            Self::InvalidData => (Some(1007), None, "a text frame must be UTF-8"),
            Self::Revoked(_) => (
                None,
                Some(E::Forbidden),
                "membership revoked: the team's scopes left this stream",
            ),
            Self::PeerClosed(code) => (code, None, ""),
            Self::Gone => (None, None, ""),
        }
    }

    /// The close frame's status code; `None` for a close without one.
    pub fn code(self) -> Option<u16> {
        self.row().0
    }

    /// The `error` code sent before the close, if any.
    pub fn error_code(self) -> Option<ErrorCode> {
        self.row().1
    }

    /// The close frame's reason, and the message of the `error` before it.
    pub fn message(self) -> &'static str {
        self.row().2
    }
}

/// A frame waiting to be written.
#[derive(Debug, Clone)]
pub enum Frame {
    Text(Utf8Bytes),
    /// A text frame that moves the connection's position in a stream (an activity, a
    /// `subscribed`, an inbox event). A socket writes it as text; an SSE stream also makes its
    /// event id from it. Shared behind one pointer, so a frame stays as small as the others.
    Positioned(Arc<Positioned>),
    Ping,
    /// Bytes already framed: the decoder's own replies (pongs).
    Raw(Bytes),
}

/// The stream a positioned frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Team(TeamId),
    Inbox,
}

/// How a positioned frame reached the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Dispatched live: it moves a stream's position only once the stream's scopes are joined
    /// (before that it is a user-room copy, not part of the scopes' order).
    Live,
    /// Replayed by the connection's own subscribe, in seq order.
    Replay,
    /// A `subscribed`: the scopes of the stream are joined at `seq`.
    Joined,
}

#[derive(Debug)]
pub struct Positioned {
    pub text: Utf8Bytes,
    pub stream: Stream,
    pub seq: i64,
    pub arrival: Arrival,
}

impl Frame {
    pub fn positioned(text: Utf8Bytes, stream: Stream, seq: i64, arrival: Arrival) -> Frame {
        Frame::Positioned(Arc::new(Positioned {
            text,
            stream,
            seq,
            arrival,
        }))
    }

    /// The text of a text frame (plain or positioned).
    pub fn text(&self) -> Option<&Utf8Bytes> {
        match self {
            Frame::Text(t) => Some(t),
            Frame::Positioned(p) => Some(&p.text),
            Frame::Ping | Frame::Raw(_) => None,
        }
    }
}

/// Queue slots an outbox (and a writer's batch) keeps between bursts.
pub const RETAINED_FRAMES: usize = 8;

impl Frame {
    /// The bytes this frame holds in a queue: its payload, plus a slot's worth so that a flood of
    /// empty frames counts too.
    fn cost(&self) -> usize {
        const SLOT: usize = 32;
        SLOT + match self {
            Frame::Text(t) => t.len(),
            Frame::Positioned(p) => p.text.len(),
            Frame::Ping => 0,
            Frame::Raw(b) => b.len(),
        }
    }
}

/// What one socket may make the server hold for it.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Frames queued unwritten (live frames and replies); one more cuts the socket.
    pub frames: usize,
    /// Bytes queued unwritten, every kind of frame counted; one more frame past it cuts the socket.
    pub bytes: usize,
    /// Replayed frames unwritten before the replay waits for the writer.
    pub replay_frames: usize,
    /// Replayed bytes unwritten before the replay waits for the writer.
    pub replay_bytes: usize,
    /// A replay that waits this long without the writer taking anything cuts the socket.
    pub stall: Duration,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Frame>,
    /// Live frames and replies queued.
    queued: usize,
    /// Bytes of everything queued.
    bytes: usize,
    /// Replayed frames queued, and their bytes.
    replay: usize,
    replay_bytes: usize,
    closed: Option<CloseReason>,
    /// When the oldest frame still queued was queued (`None` while empty).
    waiting_since: Option<tokio::time::Instant>,
}

impl State {
    /// The queue was just emptied: nothing is counted against the limits any more. A burst (a
    /// replay, a backlog) must not leave an idle socket holding its high-water mark either:
    /// memory per idle socket is what a server has most of.
    fn emptied(&mut self) {
        if self.frames.capacity() > RETAINED_FRAMES {
            self.frames.shrink_to(RETAINED_FRAMES);
        }
        self.queued = 0;
        self.bytes = 0;
        self.replay = 0;
        self.replay_bytes = 0;
        self.waiting_since = None;
    }

    fn enqueue(&mut self, frame: Frame) {
        if self.frames.is_empty() {
            self.waiting_since = Some(tokio::time::Instant::now());
        }
        self.frames.push_back(frame);
    }
}

pub struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    closing: Notify,
    drained: Notify,
    limits: Limits,
    /// An SSE stream's outbox: a revocation ends the stream (see `revoked`).
    ends_on_revoke: bool,
    /// Replays that had to wait for the writer, ever (see `replay_waits`).
    replay_waits: std::sync::atomic::AtomicUsize,
}

impl Outbox {
    pub fn new(limits: Limits) -> Self {
        Self {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            closing: Notify::new(),
            drained: Notify::new(),
            replay_waits: std::sync::atomic::AtomicUsize::new(0),
            limits,
            ends_on_revoke: false,
        }
    }

    /// The outbox of an SSE stream: like a socket's, except that a revocation ends it.
    pub fn for_stream(limits: Limits) -> Self {
        Self {
            ends_on_revoke: true,
            ..Self::new(limits)
        }
    }

    /// The user lost their membership of `team` and left its rooms (`unsubscribed` is queued).
    /// A socket stays open; an SSE stream, whose scopes are fixed, ends with an error.
    pub fn revoked(&self, team: TeamId) {
        if self.ends_on_revoke {
            self.close(CloseReason::Revoked(team));
        }
    }

    /// Queues a live frame; over the limits the connection is cut (returns false).
    pub fn push_live(&self, frame: Frame) -> bool {
        self.push_counted(frame)
    }

    /// Queues a reply to the client's own message. Replies count against the same limits as live
    /// frames: a client that sends without reading is cut like one that does not keep up.
    pub fn push(&self, frame: Frame) {
        self.push_counted(frame);
    }

    fn push_counted(&self, frame: Frame) -> bool {
        let cost = frame.cost();
        let mut s = self.state.lock();
        if s.closed.is_some() {
            return false;
        }
        if s.queued >= self.limits.frames || s.bytes + cost > self.limits.bytes {
            drop(s);
            self.cut();
            return false;
        }
        s.queued += 1;
        s.bytes += cost;
        s.enqueue(frame);
        drop(s);
        self.ready.notify_one();
        true
    }

    /// Cuts the connection as a slow consumer: what is queued is dropped, the writer closes 4008.
    pub fn cut(&self) {
        let mut s = self.state.lock();
        if s.closed.is_some() {
            return;
        }
        s.closed = Some(CloseReason::SlowConsumer);
        metrics::counter!(crate::telemetry::SLOW_CONSUMER_CUTS).increment(1);
        metrics::counter!(crate::telemetry::FRAMES_DROPPED).increment(s.frames.len() as u64);
        s.frames.clear();
        s.emptied();
        drop(s);
        self.ready.notify_one();
        self.drained.notify_waiters();
        self.closing.notify_waiters();
    }

    /// Queues a replayed frame, waiting while the replay window (frames or bytes) is full; a
    /// frame larger than the window goes alone. False once the connection is closing; a wait of
    /// `stall` without the writer taking anything cuts it.
    pub async fn push_replay(&self, frame: Frame) -> bool {
        let cost = frame.cost();
        loop {
            let drained = self.drained.notified();
            {
                let mut s = self.state.lock();
                if s.closed.is_some() {
                    return false;
                }
                let fits = s.replay < self.limits.replay_frames
                    && s.replay_bytes + cost <= self.limits.replay_bytes;
                if fits || s.replay == 0 {
                    s.replay += 1;
                    s.replay_bytes += cost;
                    s.bytes += cost;
                    s.enqueue(frame);
                    drop(s);
                    self.ready.notify_one();
                    return true;
                }
            }
            self.replay_waits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if tokio::time::timeout(self.limits.stall, drained)
                .await
                .is_err()
            {
                tracing::info!("replay made no progress; cutting the socket");
                metrics::counter!(crate::telemetry::STALLED_SOCKETS).increment(1);
                self.cut();
                return false;
            }
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

    /// How many times a replay waited for the writer (tests move a paused clock only once a
    /// replay is waiting, so that its stall timer has started).
    #[cfg(test)]
    pub fn replay_waits(&self) -> usize {
        self.replay_waits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a frame has waited for the writer longer than the stall limit: the writer is
    /// stuck (an SSE body that hyper no longer polls because its peer does not read).
    pub fn stalled(&self) -> bool {
        self.state
            .lock()
            .waiting_since
            .is_some_and(|t| t.elapsed() >= self.limits.stall)
    }

    /// The writer's stall limit (see `Limits::stall`).
    pub fn stall(&self) -> Duration {
        self.limits.stall
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
                    s.emptied();
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

    fn limits(frames: usize, bytes: usize) -> Limits {
        Limits {
            frames,
            bytes,
            replay_frames: 2,
            replay_bytes: 1 << 20,
            stall: Duration::from_secs(5),
        }
    }

    /// The contract's close codes, and the error each one follows.
    #[test]
    fn closes_carry_the_codes_of_the_contract() {
        use CloseReason::*;
        for (reason, code, error) in [
            (SlowConsumer, Some(4008), Some(ErrorCode::SlowConsumer)),
            (RateLimited, Some(4008), Some(ErrorCode::RateLimited)),
            (Unauthorized, Some(4001), Some(ErrorCode::Unauthorized)),
            (TokenExpired, Some(4001), Some(ErrorCode::TokenExpired)),
            (GoingAway, Some(1001), None),
            (TooBig, Some(1009), None),
            (ProtocolError, Some(1002), None),
            (InvalidData, Some(1007), None),
            (
                Revoked(crate::domain::TeamId::NIL),
                None,
                Some(ErrorCode::Forbidden),
            ),
            (PeerClosed(Some(1000)), Some(1000), None),
            (PeerClosed(None), None, None),
            (Gone, None, None),
        ] {
            assert_eq!(reason.code(), code, "{reason:?}");
            assert_eq!(reason.error_code(), error, "{reason:?}");
            // The server says why it closes; answering the peer's close, or a dead socket, it does not.
            assert_eq!(
                reason.message().is_empty(),
                matches!(reason, PeerClosed(_) | Gone),
                "{reason:?}"
            );
        }
    }

    #[test]
    fn a_full_live_queue_cuts_the_connection() {
        let o = Outbox::new(limits(2, 1 << 20));
        assert!(o.push_live(Frame::Text("a".into())));
        assert!(o.push_live(Frame::Text("b".into())));
        assert!(!o.push_live(Frame::Text("c".into())));
        assert!(o.is_closed());
    }

    /// Replies count too, and in bytes: a client that sends without reading is cut.
    #[tokio::test]
    async fn replies_count_in_bytes() {
        let o = Outbox::new(limits(1000, 1000));
        let big: String = "x".repeat(400);
        o.push(Frame::Text(big.clone().into()));
        o.push(Frame::Text(big.clone().into()));
        assert!(!o.is_closed());
        o.push(Frame::Text(big.into()));
        assert!(o.is_closed(), "the third reply is past 1,000 bytes");
        let mut batch = Vec::new();
        assert_eq!(
            o.next_batch(&mut batch).await,
            Some(CloseReason::SlowConsumer),
            "what was queued is dropped with the cut"
        );
        assert!(batch.is_empty());
    }

    #[tokio::test]
    async fn the_writer_takes_everything_queued_at_once() {
        let o = Outbox::new(limits(8, 1 << 20));
        o.push_live(Frame::Text("a".into()));
        o.push(Frame::Text("b".into()));
        let mut batch = Vec::new();
        assert_eq!(o.next_batch(&mut batch).await, None);
        assert_eq!(batch.len(), 2);
        o.close(CloseReason::GoingAway);
        assert_eq!(o.next_batch(&mut batch).await, Some(CloseReason::GoingAway));
    }

    /// A replay waits for the writer while its window is full, and gives up (cutting the socket)
    /// when the writer takes nothing for the stall time.
    #[tokio::test(start_paused = true)]
    async fn a_replay_that_makes_no_progress_cuts_the_socket() {
        let o = Outbox::new(limits(8, 1 << 20));
        assert!(o.push_replay(Frame::Text("1".into())).await);
        assert!(o.push_replay(Frame::Text("2".into())).await);
        let started = tokio::time::Instant::now();
        assert!(!o.push_replay(Frame::Text("3".into())).await);
        assert!(started.elapsed() >= Duration::from_secs(5));
        assert!(o.is_closed());
        let mut batch = Vec::new();
        assert_eq!(
            o.next_batch(&mut batch).await,
            Some(CloseReason::SlowConsumer)
        );
    }

    /// A frame that waits longer than the stall time says the writer is stuck; taking the queue
    /// clears it.
    #[tokio::test(start_paused = true)]
    async fn a_frame_left_waiting_past_the_stall_time_is_seen() {
        let o = Outbox::new(limits(8, 1 << 20));
        assert!(!o.stalled());
        o.push(Frame::Ping);
        tokio::time::advance(Duration::from_secs(4)).await;
        o.push(Frame::Ping);
        assert!(!o.stalled(), "4 s of the 5 s stall time");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(o.stalled(), "the oldest frame has waited 5 s");
        let mut batch = Vec::new();
        assert_eq!(o.next_batch(&mut batch).await, None);
        assert!(!o.stalled());
    }

    #[tokio::test(start_paused = true)]
    async fn a_replay_goes_on_while_the_writer_drains() {
        let o = std::sync::Arc::new(Outbox::new(limits(8, 1 << 20)));
        let writer = {
            let o = o.clone();
            tokio::spawn(async move {
                let mut n = 0;
                let mut batch = Vec::new();
                while o.next_batch(&mut batch).await.is_none() {
                    n += batch.len();
                    batch.clear();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                n
            })
        };
        for i in 0..10 {
            assert!(o.push_replay(Frame::Text(i.to_string().into())).await);
        }
        o.close(CloseReason::GoingAway);
        assert_eq!(writer.await.expect("the writer"), 10);
    }
}
