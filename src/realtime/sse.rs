//! `/realtime/sse`: the socket's server messages as Server-Sent Events, for clients behind
//! proxies that break WebSockets.
//!
//! A stream's scopes are fixed when it opens (query parameters); it runs the same subscribes as
//! a socket (`connection::Session`), through the same outbox, hub and limits. What differs is
//! the wire: each message is one event, and each event that moves the stream's position carries
//! an `id:` that covers every team of the stream, so the browser's automatic reconnect (which
//! sends it back as `Last-Event-ID`) resumes every scope exactly where it stopped. The client's
//! own messages (presence, token renewal, ping) arrive by `POST /realtime/sse/{streamId}`.
//!
//! The position is exact because a team's scopes are replayed and joined together
//! (`Session::try_subscribe_group`): before the join a team's position moves only with its
//! replay (in seq order), at the join it is the join point, and after it live activities arrive
//! in seq order. Live frames of a team not yet joined (user-room copies) do not move it.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

use super::Realtime;
use super::connection::{Session, SubscribeError, instant_of, team_of};
use super::outbox::{Arrival, CloseReason, Frame, Outbox, Positioned, RETAINED_FRAMES, Stream};
use super::protocol::{
    ClientMessage, ErrorCode, PresenceUser, Scope, ScopeIds, ServerMessage, parse,
};
use crate::bus::Topic;
use crate::domain::{BoardId, TaskId, TeamId, UserId};
use crate::http::error::ApiError;
use crate::http::extract::bearer;
use crate::http::serve::ConnectionAbort;
use crate::limits::{Key, KeyedLimiter, MessageLimit, client_ip};

/// Client messages waiting for a stream's task (a POST beyond them is refused with 429).
const CONTROL_QUEUE: usize = 8;
/// The reconnect delay the stream asks the browser for.
const RETRY_MS: u64 = 1_000;

/// What a `POST /realtime/sse/{streamId}` reaches: the stream's user, its message limit and the
/// queue its task reads.
pub(super) struct StreamHandle {
    user: UserId,
    limit: Mutex<MessageLimit>,
    /// At most `CONTROL_QUEUE` messages. A queue that allocates on its first message, not a
    /// channel: most streams never get one, and a channel's first block cost 2.5 KiB a stream.
    control: Mutex<VecDeque<ClientMessage>>,
    /// Wakes the stream's task (a stored permit: a push before it waits is not missed).
    control_ready: Notify,
    /// Set when the stream's task ended: a POST that still found the handle is refused.
    ended: AtomicBool,
}

/// The streams of this instance, by id.
pub(super) struct Streams {
    by_id: Mutex<HashMap<String, Arc<StreamHandle>>>,
    /// Messages a user may have forwarded to their streams on other instances, per minute.
    forward_limit: Option<KeyedLimiter>,
}

impl Streams {
    pub(super) fn new(rate_per_second: u32) -> Streams {
        Streams {
            by_id: Mutex::default(),
            forward_limit: KeyedLimiter::per_minute(rate_per_second.saturating_mul(60)),
        }
    }
}

/// The parameters of `GET /realtime/sse`.
#[derive(Debug, Default)]
struct Request {
    scopes: Vec<Scope>,
    inbox: bool,
    since: Option<i64>,
    inbox_since: Option<i64>,
    last_event_id: Option<String>,
    token: Option<String>,
}

fn parse_request(query: Option<&str>) -> Result<Request, String> {
    fn id<T: From<Uuid>>(name: &str, v: &str) -> Result<T, String> {
        Uuid::parse_str(v)
            .map(T::from)
            .map_err(|_| format!("{name} must be a UUID"))
    }
    fn seq(name: &str, v: &str) -> Result<i64, String> {
        v.parse::<i64>()
            .ok()
            .filter(|s| *s >= 0)
            .ok_or_else(|| format!("{name} must be an integer, 0 or more"))
    }
    let mut r = Request::default();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*k {
            "teamId" => r.scopes.push(Scope::Team(id::<TeamId>("teamId", &v)?)),
            "boardId" => r.scopes.push(Scope::Board(id::<BoardId>("boardId", &v)?)),
            "taskId" => r.scopes.push(Scope::Task(id::<TaskId>("taskId", &v)?)),
            "inbox" => r.inbox = v == "true",
            "since" => r.since = Some(seq("since", &v)?),
            "inboxSince" => r.inbox_since = Some(seq("inboxSince", &v)?),
            "lastEventId" => r.last_event_id = Some(v.into_owned()),
            "token" => r.token = Some(v.into_owned()),
            // Anything else (a cache buster) is not ours to refuse.
            _ => {}
        }
    }
    let mut seen = std::collections::HashSet::new();
    r.scopes.retain(|s| seen.insert(*s));
    Ok(r)
}

/// A stream's position: per stream (team or inbox), the last seq it delivered, and whether the
/// stream's scopes of it are joined. Written as the event id `<teamId>:<seq>,…,inbox:<seq>`.
#[derive(Debug, Default, Clone)]
pub(super) struct Position {
    entries: Vec<(Stream, i64, bool)>,
}

impl Position {
    /// Reads an event id; `None` if it is not one this server wrote.
    pub(super) fn parse(id: &str) -> Option<Position> {
        let mut p = Position::default();
        for part in id.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (stream, seq) = part.rsplit_once(':')?;
            let seq: i64 = seq.parse().ok().filter(|s| *s >= 0)?;
            let stream = match stream {
                "inbox" => Stream::Inbox,
                team => Stream::Team(TeamId::from(Uuid::parse_str(team).ok()?)),
            };
            if p.get(stream).is_none() {
                p.entries.push((stream, seq, false));
            }
        }
        Some(p)
    }

    pub(super) fn get(&self, stream: Stream) -> Option<i64> {
        self.entries
            .iter()
            .find(|(s, _, _)| *s == stream)
            .map(|(_, seq, _)| *seq)
    }

    /// Keeps only the streams of this stream.
    fn retain(&mut self, keep: impl Fn(Stream) -> bool) {
        self.entries.retain(|(s, _, _)| keep(*s));
    }

    /// Applies a positioned frame; true if the position moved.
    fn apply(&mut self, p: &Positioned) -> bool {
        let i = match self.entries.iter().position(|(s, _, _)| *s == p.stream) {
            Some(i) => i,
            // A live frame of a stream this one does not follow: a user-room copy.
            None if p.arrival == Arrival::Live => return false,
            None => {
                self.entries.push((p.stream, -1, false));
                self.entries.len() - 1
            }
        };
        let (_, seq, joined) = &mut self.entries[i];
        let moved = match p.arrival {
            Arrival::Live if !*joined => false,
            Arrival::Live | Arrival::Replay => p.seq > *seq,
            Arrival::Joined => {
                *joined = true;
                p.seq != *seq
            }
        };
        if moved {
            *seq = p.seq;
        }
        moved
    }

    fn write(&self, out: &mut String) {
        for (i, (stream, seq, _)) in self.entries.iter().filter(|e| e.1 >= 0).enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = match stream {
                Stream::Team(team) => write!(out, "{team}:{seq}"),
                Stream::Inbox => write!(out, "inbox:{seq}"),
            };
        }
    }
}

/// `GET /realtime/sse`: checks the token and the scopes, then answers with the event stream.
pub(super) async fn open(
    State(rt): State<Arc<Realtime>>,
    RawQuery(query): RawQuery,
    parts: Parts,
) -> Response {
    match open_stream(rt, query.as_deref(), &parts).await {
        Ok(r) | Err(r) => r,
    }
}

async fn open_stream(
    rt: Arc<Realtime>,
    query: Option<&str>,
    parts: &Parts,
) -> Result<Response, Response> {
    let fail = |e: ApiError| e.into_response();
    if let Some(refusal) = rt.refuse_connection(parts) {
        return Err(refusal);
    }
    let req = parse_request(query).map_err(|why| fail(ApiError::bad_request(why)))?;
    let principal = match req.token.as_deref().or_else(|| bearer(parts)) {
        None => {
            return Err(fail(ApiError::unauthorized(
                "an access token is required (Authorization: Bearer, or ?token=)",
            )));
        }
        Some(t) => rt
            .verify_token(t)
            .map_err(|why| fail(ApiError::unauthorized(why)))?,
    };
    if req.scopes.is_empty() && !req.inbox {
        return Err(fail(ApiError::bad_request(
            "name at least one teamId, boardId or taskId, or inbox=true",
        )));
    }
    if req.scopes.len() > rt.settings.max_subscriptions {
        return Err(fail(ApiError::bad_request(format!(
            "at most {} scopes per stream",
            rt.settings.max_subscriptions
        ))));
    }
    let header_id = parts
        .headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let resume = match header_id.or(req.last_event_id.clone()) {
        None => None,
        Some(id) => Some(Position::parse(&id).ok_or_else(|| {
            fail(ApiError::bad_request(
                "Last-Event-ID is not an event id of this stream",
            ))
        })?),
    };

    // Access first: a stream of nothing but forbidden scopes is refused outright, so that a
    // browser stops reconnecting to it.
    let user = principal.user_id;
    let checked = check_scopes(&rt, user, &req.scopes).await.map_err(|e| {
        tracing::warn!(error = %e, "checking an SSE stream's scopes failed");
        fail(unavailable("the server could not check the scopes; retry"))
    })?;
    let (display_name, groups, refused) = checked.ok_or_else(|| {
        fail(ApiError::unauthorized(
            "the access token's user does not exist",
        ))
    })?;
    if groups.is_empty() && !req.inbox {
        return Err(fail(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "not a member, or no such team, board or task",
        )));
    }
    if req.since.is_some() && groups.len() > 1 {
        return Err(fail(ApiError::bad_request(
            "since names one team's seq; a stream of several teams resumes with Last-Event-ID",
        )));
    }
    let mut position = resume.unwrap_or_default();
    position.retain(|s| match s {
        Stream::Team(t) => groups.iter().any(|(team, _)| *team == t),
        Stream::Inbox => req.inbox,
    });
    let plan = Plan {
        groups: groups
            .into_iter()
            .map(|(team, scopes)| {
                let since = position.get(Stream::Team(team)).or(req.since);
                (team, scopes, since)
            })
            .collect(),
        refused,
        inbox: req
            .inbox
            .then(|| position.get(Stream::Inbox).or(req.inbox_since)),
    };

    let outbox = Arc::new(Outbox::for_stream(rt.settings.outbox));
    let id = rt.hub.register(
        PresenceUser {
            user_id: user,
            display_name,
        },
        outbox.clone(),
    );
    let stream_id = Uuid::new_v4().simple().to_string();
    let control = Arc::new(StreamHandle {
        user,
        limit: Mutex::new(MessageLimit::new(rt.settings.rate, rt.settings.burst)),
        control: Mutex::new(VecDeque::new()),
        control_ready: Notify::new(),
        ended: AtomicBool::new(false),
    });
    rt.streams.insert(stream_id.clone(), control.clone());
    // Watched before the answer, so that a message POSTed (and forwarded) right after the
    // hello finds the stream listening. Counted even when it fails (the bus resubscribes).
    if let Err(e) = rt.bus.watch(Topic::User(user)).await {
        tracing::debug!(error = %e, "watching the user's channel without the bus");
    }
    let hello = hello(&stream_id, user, rt.settings.ping_interval);
    let body = EventWriter {
        outbox: outbox.clone(),
        position,
        hello: Some(hello),
        done: Arc::new(tokio::sync::Notify::new()),
        cut: Arc::new(AtomicBool::new(false)),
        ended: false,
        batch: Vec::new(),
        id: String::new(),
    };
    let body_done = body.done.clone();
    let body_cut = body.cut.clone();
    let abort = parts.extensions.get::<ConnectionAbort>().cloned();
    let session = Session {
        rt: rt.clone(),
        id,
        user,
        outbox,
    };
    rt.sockets.spawn(run(
        session,
        StreamTask {
            stream_id,
            expires_at: principal.expires_at,
            control,
            plan,
            body_done,
            body_cut,
            abort,
        },
    ));
    let stream = futures_util::stream::unfold(body, |mut w| async move {
        let chunk = w.next_chunk().await?;
        Some((Ok::<Bytes, Infallible>(chunk), w))
    });
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

fn unavailable(detail: &str) -> ApiError {
    let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail);
    e.retry_after = Some(1);
    e
}

/// The user's display name, the allowed scopes grouped by team (in the order first named), and
/// the scopes refused; `None` if the user does not exist.
type Checked = (String, Vec<(TeamId, Vec<Scope>)>, Vec<Scope>);

async fn check_scopes(
    rt: &Realtime,
    user: UserId,
    scopes: &[Scope],
) -> Result<Option<Checked>, crate::store::StoreError> {
    let mut tx = rt.store.read().await?;
    let Some(u) = tx.user(user).await? else {
        return Ok(None);
    };
    let mut groups: Vec<(TeamId, Vec<Scope>)> = Vec::new();
    let mut refused = Vec::new();
    let mut member_of: HashMap<TeamId, bool> = HashMap::new();
    for &scope in scopes {
        let Some(team) = team_of(&mut *tx, scope).await? else {
            refused.push(scope);
            continue;
        };
        let member = match member_of.get(&team) {
            Some(m) => *m,
            None => {
                let m = tx.role(team, user).await?.is_some();
                member_of.insert(team, m);
                m
            }
        };
        if !member {
            refused.push(scope);
        } else if let Some((_, group)) = groups.iter_mut().find(|(t, _)| *t == team) {
            group.push(scope);
        } else {
            groups.push((team, vec![scope]));
        }
    }
    Ok(Some((u.display_name, groups, refused)))
}

/// The stream's first event: its id (for the POSTs) and its heartbeat.
fn hello(stream_id: &str, user: UserId, heartbeat: Duration) -> Bytes {
    let msg = ServerMessage::Stream {
        stream_id: stream_id.to_owned(),
        user_id: user,
        heartbeat_ms: u64::try_from(heartbeat.as_millis()).unwrap_or(u64::MAX),
    }
    .frame();
    Bytes::from(format!("retry: {RETRY_MS}\ndata: {msg}\n\n"))
}

/// What a stream's task subscribes at the start.
struct Plan {
    /// Per team: its scopes and where they resume.
    groups: Vec<(TeamId, Vec<Scope>, Option<i64>)>,
    /// Scopes refused at the access check (an `error` each).
    refused: Vec<Scope>,
    /// `Some(since)` when the inbox is part of the stream.
    inbox: Option<Option<i64>>,
}

struct StreamTask {
    stream_id: String,
    expires_at: OffsetDateTime,
    control: Arc<StreamHandle>,
    plan: Plan,
    /// Notified when the response body ended (or was dropped with its connection).
    body_done: Arc<tokio::sync::Notify>,
    /// Set when the body ended on a slow-consumer cut.
    body_cut: Arc<AtomicBool>,
    abort: Option<ConnectionAbort>,
}

/// A stream's task: the subscribes, then the timers (token expiry, heartbeat) and the client's
/// POSTed messages until the stream closes.
async fn run(session: Session, mut t: StreamTask) {
    let rt = session.rt.clone();
    let outbox = session.outbox.clone();
    // Watched by `open_stream`; released here.
    let user_topic = Topic::User(session.user);
    tracing::info!(conn = session.id, user = %session.user, "SSE stream opened");
    let mut subscribing = Some(Box::pin(subscribe_all(session.clone(), t.plan)));
    let every = rt.settings.ping_interval;
    let mut heartbeat = tokio::time::interval_at(Instant::now() + every, every);
    loop {
        let expiry = tokio::time::sleep_until(instant_of(t.expires_at));
        tokio::select! {
            () = outbox.closed() => break,
            () = expiry => {
                outbox.close(CloseReason::TokenExpired);
                break;
            }
            _ = heartbeat.tick() => {
                // hyper stops polling the body of a peer that does not read: frames then wait
                // in the outbox, which only overflows after hours of heartbeats. Cut it here.
                if outbox.stalled() {
                    tracing::info!(conn = session.id, "SSE stream not read for the stall time; cutting it");
                    outbox.cut();
                } else {
                    outbox.push(Frame::Ping);
                }
            }
            () = async {
                if let Some(s) = subscribing.as_mut() {
                    s.await;
                }
            }, if subscribing.is_some() => subscribing = None,
            () = t.control.control_ready.notified() => {
                let messages = std::mem::take(&mut *t.control.control.lock());
                for msg in messages {
                    on_message(&session, &mut t.expires_at, msg);
                }
            }
        }
    }
    drop(subscribing);
    t.control.ended.store(true, Ordering::Release);
    rt.streams.remove(&t.stream_id);
    rt.inbox.detach(session.id);
    rt.hub.unregister(session.id);
    rt.bus.unwatch(user_topic);
    // The body writes what is queued and the closing error, then ends. A client that stopped
    // reading never lets it: cut the connection once it had the writer's stall time.
    // (The body's end stores a permit: a wait that starts after it returns at once.)
    // A body that ended on a slow-consumer cut is no proof either: it only handed its last chunk
    // to hyper (into its buffer or the kernel's), which a client that stopped reading never
    // takes. It gets the stall time to drain too, then the connection is cut rather than left to
    // the next request's header timeout.
    let stall = outbox.stall() + Duration::from_secs(1);
    let stalled = match tokio::time::timeout(stall, t.body_done.notified()).await {
        Err(_) => true,
        Ok(()) if t.body_cut.load(Ordering::Acquire) => {
            tokio::time::sleep(stall).await;
            true
        }
        Ok(()) => false,
    };
    if stalled && let Some(abort) = &t.abort {
        tracing::info!(
            conn = session.id,
            "SSE stream made no progress; cutting the connection"
        );
        metrics::counter!(crate::telemetry::STALLED_SOCKETS).increment(1);
        abort.0.cancel();
    }
    tracing::info!(conn = session.id, "SSE stream closed");
}

async fn subscribe_all(session: Session, plan: Plan) {
    for scope in plan.refused {
        session.reply(ServerMessage::scoped_error(
            ErrorCode::Forbidden,
            "not a member, or no such team, board or task",
            scope,
        ));
    }
    for (team, scopes, since) in plan.groups {
        let mut result = session.try_subscribe_group(team, &scopes, since).await;
        if since.is_some() && matches!(result, Err(SubscribeError::ResumeUnavailable)) {
            // The browser resends the same id on every reconnect: it cannot subscribe without
            // it. Say so for each scope, then subscribe them afresh (the client refetches).
            for &scope in &scopes {
                session.reply(ServerMessage::scoped_error(
                    ErrorCode::ResumeUnavailable,
                    "the stream's position is outside the retained log; subscribed afresh: refetch",
                    scope,
                ));
            }
            result = session.try_subscribe_group(team, &scopes, None).await;
        }
        match result {
            Ok(refused) => {
                for scope in refused {
                    session.reply_subscribe_error(&SubscribeError::Forbidden, scope);
                }
            }
            Err(e) => {
                for &scope in &scopes {
                    session.reply_subscribe_error(&e, scope);
                }
                if transient(&e) {
                    return end_to_retry(&session);
                }
            }
        }
        if session.outbox.is_closed() {
            return;
        }
    }
    if let Some(since) = plan.inbox {
        const AFRESH: &str =
            "the stream's inbox position is beyond the inbox stream; subscribed afresh: refetch";
        let mut result = session.try_subscribe_inbox(since).await;
        if since.is_some() && matches!(result, Err(SubscribeError::ResumeUnavailable)) {
            session.reply_inbox_error(&SubscribeError::ResumeUnavailable, AFRESH);
            result = session.try_subscribe_inbox(None).await;
        }
        if let Err(e) = result {
            session.reply_inbox_error(&e, AFRESH);
            if transient(&e) {
                end_to_retry(&session);
            }
        }
    }
}

/// Whether a subscribe failed for a reason that a later attempt may not meet.
fn transient(e: &SubscribeError) -> bool {
    matches!(e, SubscribeError::Busy | SubscribeError::Store(_))
}

/// A socket's client retries a subscribe that met a passing failure; a stream cannot be asked
/// to, and left open it would stay without those scopes. Ending it (without an error: the
/// `unavailable` errors are sent) makes the browser reconnect and resume every scope, exactly:
/// the failed team's position never moved.
fn end_to_retry(session: &Session) {
    session.outbox.close(CloseReason::GoingAway);
}

/// A message POSTed to the stream.
fn on_message(session: &Session, expires_at: &mut OffsetDateTime, msg: ClientMessage) {
    match msg {
        ClientMessage::Ping => session.reply(ServerMessage::Pong),
        ClientMessage::Auth { token } => session.renew(expires_at, &token),
        ClientMessage::Presence(fields) => {
            if let Some(e) = session.rt.hub.presence_message(session.id, &fields) {
                session.reply(e);
            }
        }
        // Refused at the POST: scopes change by reopening the stream.
        ClientMessage::Subscribe(_) | ClientMessage::Unsubscribe(_) => {}
    }
}

/// The response body: the hello, then the outbox as events, then the closing error.
struct EventWriter {
    outbox: Arc<Outbox>,
    position: Position,
    hello: Option<Bytes>,
    done: Arc<tokio::sync::Notify>,
    /// Set when the body ends on a slow-consumer cut (read by the stream's task).
    cut: Arc<AtomicBool>,
    ended: bool,
    /// The frames being written, and the last event id: kept between batches (as the socket's
    /// writer keeps its batch), so that a batch allocates only its chunk.
    batch: Vec<Frame>,
    id: String,
}

impl EventWriter {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(hello) = self.hello.take() {
            return Some(hello);
        }
        if self.ended {
            return None;
        }
        let mut batch = std::mem::take(&mut self.batch);
        let next = self.outbox.next_batch(&mut batch).await;
        let chunk = next.is_none().then(|| self.events(&batch));
        batch.clear();
        batch.shrink_to(RETAINED_FRAMES);
        self.batch = batch;
        match next {
            None => chunk,
            Some(reason) => {
                self.ended = true;
                if reason == CloseReason::SlowConsumer {
                    self.cut.store(true, Ordering::Release);
                }
                let error = reason.error_code().map(|code| {
                    let scope = match reason {
                        CloseReason::Revoked(team) => ScopeIds {
                            team_id: Some(team),
                            ..ScopeIds::default()
                        },
                        _ => ScopeIds::default(),
                    };
                    ServerMessage::Error {
                        code,
                        message: reason.message().to_owned(),
                        scope,
                    }
                });
                let mut out = BytesMut::new();
                if let Some(e) = error {
                    data(&mut out, e.frame().as_bytes());
                }
                Some(out.freeze())
            }
        }
    }

    /// Frames as events: `id:` where the position moved, `data:` with the message, a comment for
    /// a heartbeat.
    fn events(&mut self, batch: &[Frame]) -> Bytes {
        // Room for each event's framing, and for an `id:` line (as long as the last one, or a
        // team's) on each positioned frame: the chunk is allocated once, never regrown.
        let id_line = self.id.len().max(48) + 8;
        let size: usize = batch
            .iter()
            .map(|f| match f {
                Frame::Positioned(p) => p.text.len() + 16 + id_line,
                f => f.text().map_or(16, |t| t.len() + 16),
            })
            .sum();
        let mut out = BytesMut::with_capacity(size);
        for frame in batch {
            match frame {
                Frame::Positioned(p) => {
                    if self.position.apply(p) {
                        self.id.clear();
                        self.position.write(&mut self.id);
                        out.put_slice(b"id: ");
                        out.put_slice(self.id.as_bytes());
                        out.put_u8(b'\n');
                    }
                    data(&mut out, p.text.as_bytes());
                }
                Frame::Text(t) => data(&mut out, t.as_bytes()),
                Frame::Ping => out.put_slice(b": keepalive\n\n"),
                Frame::Raw(_) => {}
            }
        }
        out.freeze()
    }
}

/// One `data:` field per line of `text` (the JSON the server writes has no raw newlines; a
/// stored activity could), then the blank line that ends the event.
fn data(out: &mut BytesMut, text: &[u8]) {
    // The usual case, one line: `contains` scans a word at a time, the split below a byte at a
    // time (it was the largest SSE-only cost of a fanout).
    if !text.contains(&b'\n') {
        out.put_slice(b"data: ");
        out.put_slice(text);
        out.put_slice(b"\n\n");
        return;
    }
    for line in text.split(|&b| b == b'\n') {
        out.put_slice(b"data: ");
        out.put_slice(line);
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        // The connection ended (or the body finished): the stream's task unregisters.
        self.outbox.close(CloseReason::Gone);
        self.done.notify_one();
    }
}

/// `POST /realtime/sse/{streamId}`: a client message for a stream, handed to it here or, when
/// another instance holds it, over the bus (202 either way: replies arrive on the stream).
pub(super) async fn post(
    State(rt): State<Arc<Realtime>>,
    Path(stream_id): Path<String>,
    parts: Parts,
    body: Bytes,
) -> Response {
    let (user, text, msg) = match read_post(&rt, &parts, &body) {
        Ok(m) => m,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let result = match rt.streams.deliver(user, &stream_id, msg) {
        Err(PostError::NoStream) => match forward(&rt, user, &stream_id, text).await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::warn!(error = %e, "could not forward a message to an SSE stream");
                return unavailable("the message could not be handed to its stream; retry")
                    .into_response();
            }
        },
        other => other,
    };
    match result {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Hands a message to a stream on another instance. The stream's own limit applies there;
/// here the user's POSTs are limited too, so that nobody drives publishes at will.
async fn forward(
    rt: &Realtime,
    user: UserId,
    stream_id: &str,
    text: &str,
) -> Result<Result<(), PostError>, crate::bus::BusError> {
    if rt
        .streams
        .forward_limit
        .as_ref()
        .is_some_and(|l| l.check(Key::of(user.as_bytes())).is_err())
    {
        return Ok(Err(PostError::RateLimited));
    }
    Ok(rt
        .bus
        .forward_to_stream(user, stream_id, text)
        .await?
        .then_some(())
        .ok_or(PostError::NoStream))
}

/// Why a POSTed message was refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum PostError {
    #[error("an access token is required (Authorization: Bearer)")]
    NoToken,
    #[error("{0}")]
    Token(&'static str),
    #[error("a message is at most {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    BadRequest(String),
    #[error("no such stream")]
    NoStream,
    #[error("this stream belongs to another user")]
    OtherUser,
    #[error("slow down: too many messages")]
    RateLimited,
}

impl From<PostError> for ApiError {
    fn from(e: PostError) -> Self {
        let detail = e.to_string();
        match e {
            PostError::NoToken | PostError::Token(_) => ApiError::unauthorized(detail),
            PostError::TooLarge(_) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", detail)
            }
            PostError::BadRequest(_) => ApiError::bad_request(detail),
            PostError::NoStream => ApiError::not_found(),
            PostError::OtherUser => ApiError::new(StatusCode::FORBIDDEN, "forbidden", detail),
            PostError::RateLimited => ApiError::rate_limited(Duration::from_secs(1), detail),
        }
    }
}

/// The POST's user, its text and the message it holds.
fn read_post<'a>(
    rt: &Realtime,
    parts: &Parts,
    body: &'a [u8],
) -> Result<(UserId, &'a str, ClientMessage), PostError> {
    let token = bearer(parts).ok_or(PostError::NoToken)?;
    let principal = rt.verify_token(token).map_err(PostError::Token)?;
    if body.len() > rt.settings.max_message_bytes {
        return Err(PostError::TooLarge(rt.settings.max_message_bytes));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| PostError::BadRequest("the body must be UTF-8 JSON".into()))?;
    let msg = parse(text).map_err(PostError::BadRequest)?;
    if matches!(
        msg,
        ClientMessage::Subscribe(_) | ClientMessage::Unsubscribe(_)
    ) {
        return Err(PostError::BadRequest(
            "an SSE stream's scopes are fixed: reopen the stream with the new scopes (and lastEventId)".into(),
        ));
    }
    Ok((principal.user_id, text, msg))
}

impl Streams {
    fn insert(&self, id: String, handle: Arc<StreamHandle>) {
        self.by_id.lock().insert(id, handle);
    }

    fn remove(&self, id: &str) {
        self.by_id.lock().remove(id);
    }

    /// Hands `msg` from `user` to the stream `id` if it is on this instance.
    pub(super) fn deliver(
        &self,
        user: UserId,
        id: &str,
        msg: ClientMessage,
    ) -> Result<(), PostError> {
        let handle = self
            .by_id
            .lock()
            .get(id)
            .cloned()
            .ok_or(PostError::NoStream)?;
        if handle.user != user {
            return Err(PostError::OtherUser);
        }
        if !handle.limit.lock().allow() {
            return Err(PostError::RateLimited);
        }
        if handle.ended.load(Ordering::Acquire) {
            return Err(PostError::NoStream);
        }
        {
            let mut queue = handle.control.lock();
            if queue.len() >= CONTROL_QUEUE {
                return Err(PostError::RateLimited);
            }
            queue.push_back(msg);
        }
        handle.control_ready.notify_one();
        Ok(())
    }

    /// A message another instance forwarded over the bus (the POST was answered there).
    pub(super) fn forwarded(&self, user: UserId, id: &str, text: &str) {
        let Ok(msg) = parse(text) else {
            return;
        };
        if let Err(e) = self.deliver(user, id, msg)
            && !matches!(e, PostError::NoStream)
        {
            tracing::debug!(error = %e, "dropped a forwarded stream message");
        }
    }
}

impl Realtime {
    /// A new connection (socket or stream) refused before it starts: the server is draining, or
    /// the address opens too many.
    pub(super) fn refuse_connection(&self, parts: &Parts) -> Option<Response> {
        if self.draining.is_cancelled() {
            return Some(
                unavailable(
                    "this instance is shutting down; reconnect (to another instance) and resume",
                )
                .into_response(),
            );
        }
        if let Some(limit) = &self.connect_limit
            && let Some(ip) = client_ip(parts, self.settings.trust_forwarded)
            && let Err(wait) = limit.check(Key::ip(ip))
        {
            return Some(
                ApiError::rate_limited(wait, "too many connection attempts from this address")
                    .into_response(),
            );
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(stream: Stream, seq: i64, arrival: Arrival) -> Positioned {
        Positioned {
            text: "{}".into(),
            stream,
            seq,
            arrival,
        }
    }

    #[test]
    fn each_line_of_a_message_is_a_data_field() {
        let mut out = BytesMut::new();
        data(&mut out, br#"{"type":"pong"}"#);
        data(&mut out, b"a\nb");
        data(&mut out, b"");
        assert_eq!(
            &out[..],
            b"data: {\"type\":\"pong\"}\n\ndata: a\ndata: b\n\ndata: \n\n"
        );
    }

    #[test]
    fn an_event_id_reads_back() {
        let a = TeamId::from(Uuid::now_v7());
        let b = TeamId::from(Uuid::now_v7());
        let mut p = Position::default();
        assert!(p.apply(&frame(Stream::Team(a), 41, Arrival::Joined)));
        assert!(p.apply(&frame(Stream::Team(b), 17, Arrival::Joined)));
        assert!(p.apply(&frame(Stream::Inbox, 5, Arrival::Joined)));
        let mut id = String::new();
        p.write(&mut id);
        assert_eq!(id, format!("{a}:41,{b}:17,inbox:5"));
        let back = Position::parse(&id).expect("parses");
        assert_eq!(back.get(Stream::Team(a)), Some(41));
        assert_eq!(back.get(Stream::Team(b)), Some(17));
        assert_eq!(back.get(Stream::Inbox), Some(5));
        for bad in ["x", "abc:1", "inbox:-1", "inbox:", ":3"] {
            assert!(Position::parse(bad).is_none(), "{bad}");
        }
    }

    /// Before its scopes are joined a team's position moves only with its replay; live frames
    /// then (user-room copies) do not move it, and after the join live frames do.
    #[test]
    fn a_team_moves_with_its_replay_then_its_join_then_live() {
        let a = TeamId::from(Uuid::now_v7());
        let mut p = Position::parse(&format!("{a}:10")).expect("parses");
        assert!(
            !p.apply(&frame(Stream::Team(a), 30, Arrival::Live)),
            "user copy before the join"
        );
        assert!(p.apply(&frame(Stream::Team(a), 12, Arrival::Replay)));
        assert_eq!(p.get(Stream::Team(a)), Some(12));
        assert!(p.apply(&frame(Stream::Team(a), 20, Arrival::Joined)));
        assert!(
            !p.apply(&frame(Stream::Team(a), 20, Arrival::Joined)),
            "a second scope of the group"
        );
        assert!(p.apply(&frame(Stream::Team(a), 21, Arrival::Live)));
        assert!(
            !p.apply(&frame(Stream::Team(a), 19, Arrival::Live)),
            "a late user copy"
        );
        assert_eq!(p.get(Stream::Team(a)), Some(21));
        let other = TeamId::from(Uuid::now_v7());
        assert!(
            !p.apply(&frame(Stream::Team(other), 99, Arrival::Live)),
            "another team's copy"
        );
        let mut id = String::new();
        p.write(&mut id);
        assert_eq!(id, format!("{a}:21"));
    }
}
