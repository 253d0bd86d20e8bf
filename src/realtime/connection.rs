//! One socket: authentication, the reader loop (subscribe, resume, auth renewal, rate limit,
//! keepalive) and the writer task that drains the outbox in batches.
//!
//! A subscribe runs beside the reader loop, not inside it: a long replay to a client that reads
//! slowly must not stop the loop's timers (token expiry, the ping timeout). While one runs, the
//! loop holds at most one more message and reads no further (a client cannot queue work).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use time::OffsetDateTime;
use tokio::time::{Instant, sleep_until};

use super::Realtime;
use super::hub::{ConnId, Join};
use super::outbox::{Arrival, CloseReason, Frame, Outbox, RETAINED_FRAMES, Stream};
use super::protocol::{
    ClientMessage, ErrorCode, PresenceUser, Scope, ScopeFields, ScopeIds, ServerMessage, parse,
};
use super::socket::{Inbound, Outbound};
use crate::bus::Topic;
use crate::domain::activity::LogEntry;
use crate::domain::presence::PresenceView;
use crate::domain::{Role, Room, TaskId, TeamId, UserId};
use crate::limits::MessageLimit;
use crate::service::AuthError;
use crate::service::auth::Principal;
use crate::store::{StoreError, Tx};
use tungstenite::Message;

/// How many times a subscribe re-reads its snapshot while the team's dispatch moves under it.
const JOIN_ATTEMPTS: usize = 64;
/// Log entries read per step of a replay (the store also bounds a step's size).
const REPLAY_BATCH: i64 = 1_000;
/// The answer to a subscribe that names the inbox and a room.
const NOT_BOTH: &str = "name either inbox or one of teamId, boardId or taskId";
/// Rejected messages in a row after which a flooding socket is closed.
const RATE_STRIKES: u32 = 50;

pub(super) enum SubscribeError {
    Forbidden,
    ResumeUnavailable,
    TooMany,
    Busy,
    Store(StoreError),
}

impl From<StoreError> for SubscribeError {
    fn from(e: StoreError) -> Self {
        SubscribeError::Store(e)
    }
}

/// A subscribe in progress, owned by the reader loop.
type Subscribing = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a subscribe needs of its connection; shared with the subscribe while it runs.
#[derive(Clone)]
pub(super) struct Session {
    pub(super) rt: Arc<Realtime>,
    pub(super) id: ConnId,
    pub(super) user: UserId,
    pub(super) outbox: Arc<Outbox>,
}

struct Conn {
    session: Session,
    expires_at: OffsetDateTime,
}

pub(super) async fn run(
    mut stream: Inbound,
    outbound: Outbound,
    outbox: Arc<Outbox>,
    rt: Arc<Realtime>,
    principal: Option<Principal>,
) {
    let mut writer = tokio::spawn(write_loop(outbound, outbox.clone()));

    let principal = match principal {
        Some(p) => Some(p),
        None => Box::pin(authenticate(&rt, &mut stream, &outbox)).await,
    };
    if let Some(p) = principal {
        serve(&rt, p, &mut stream, &outbox).await;
    }
    // Let the writer send the close, then read until the peer answers it: closing with unread
    // input would turn the close into a reset that discards it. A peer that does neither gets
    // no longer than this.
    let deadline = Instant::now() + Duration::from_secs(2);
    if tokio::time::timeout_at(deadline, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    let drain = async { while let Some(Ok(_)) = stream.next().await {} };
    let _ = tokio::time::timeout_at(deadline, drain).await;
}

/// The socket connected without a token: the first message must be `auth`, in time.
async fn authenticate(rt: &Realtime, stream: &mut Inbound, outbox: &Outbox) -> Option<Principal> {
    let deadline = tokio::time::sleep(rt.settings.auth_timeout);
    tokio::pin!(deadline);
    let msg = tokio::select! {
        _ = &mut deadline => {
            outbox.close(CloseReason::Unauthorized);
            return None;
        }
        () = rt.draining.cancelled() => {
            outbox.close(CloseReason::GoingAway);
            return None;
        }
        msg = stream.next() => msg,
    };
    let token = match msg {
        Some(Ok(Message::Text(text))) => match parse(&text) {
            Ok(ClientMessage::Auth { token }) => token,
            _ => {
                outbox.close(CloseReason::Unauthorized);
                return None;
            }
        },
        // An oversized first frame gets 1009 like any other, not a bare close.
        Some(Err(e)) => {
            outbox.close(close_for(e));
            return None;
        }
        Some(Ok(Message::Close(frame))) => {
            outbox.close(CloseReason::PeerClosed(frame.map(|f| f.code.into())));
            return None;
        }
        None => {
            outbox.close(CloseReason::Gone);
            return None;
        }
        Some(Ok(_)) => {
            outbox.close(CloseReason::Unauthorized);
            return None;
        }
    };
    match rt.tokens.verify(&token) {
        Ok(p) => {
            outbox.push(Frame::Text(
                ServerMessage::Authenticated {
                    user_id: p.user_id,
                    expires_at: p.expires_at,
                }
                .frame(),
            ));
            Some(p)
        }
        Err(AuthError::Expired) => {
            outbox.close(CloseReason::TokenExpired);
            None
        }
        Err(AuthError::Invalid) => {
            outbox.close(CloseReason::Unauthorized);
            None
        }
    }
}

async fn serve(rt: &Arc<Realtime>, p: Principal, stream: &mut Inbound, outbox: &Arc<Outbox>) {
    // Boxed, as every rare path of a connection: a task's future is as large as its largest
    // state, and every socket holds it for its whole life.
    let user = match Box::pin(async { rt.store.read().await?.user(p.user_id).await }).await {
        Ok(Some(u)) => PresenceUser {
            user_id: u.id,
            display_name: u.display_name,
        },
        Ok(None) => {
            outbox.close(CloseReason::Unauthorized);
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not load the socket's user");
            outbox.close(CloseReason::GoingAway);
            return;
        }
    };
    let id = rt.hub.register(user, outbox.clone());
    // Live only (no resume for user rooms): no need to wait for the bus to confirm.
    let user_topic = Topic::User(p.user_id);
    if let Err(e) = Box::pin(rt.bus.watch(user_topic)).await {
        tracing::debug!(error = %e, "watching the user's channel without the bus");
    }
    tracing::info!(conn = id, user = %p.user_id, "socket connected");
    let mut conn = Conn {
        session: Session {
            rt: rt.clone(),
            id,
            user: p.user_id,
            outbox: outbox.clone(),
        },
        expires_at: p.expires_at,
    };
    conn.read_loop(stream).await;
    rt.inbox.detach(id);
    rt.hub.unregister(id);
    rt.bus.unwatch(user_topic);
    tracing::info!(conn = id, "socket closed");
}

pub(super) fn instant_of(t: OffsetDateTime) -> Instant {
    let left = (t - OffsetDateTime::now_utc()).whole_milliseconds().max(0);
    Instant::now() + Duration::from_millis(u64::try_from(left).unwrap_or(0))
}

impl Conn {
    async fn read_loop(&mut self, stream: &mut Inbound) {
        let rt = self.session.rt.clone();
        let ping_every = rt.settings.ping_interval;
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        let mut last_heard = Instant::now();
        let mut limit = MessageLimit::new(rt.settings.rate, rt.settings.burst);
        let outbox = self.session.outbox.clone();
        let mut subscribing: Option<Subscribing> = None;
        // A message read while a subscribe runs: handled once it is done.
        // Replies go out in the order of the messages (clients match a `rate_limited` to the
        // message it refused by that order), so it is not even rate-checked before then.
        let mut held: Option<Message> = None;
        loop {
            if subscribing.is_none()
                && let Some(msg) = held.take()
            {
                match self.on_message(msg, &mut limit) {
                    Ok(next) => subscribing = next,
                    Err(()) => return,
                }
                continue;
            }
            let expiry = sleep_until(instant_of(self.expires_at));
            tokio::select! {
                _ = outbox.closed() => return,
                _ = expiry => {
                    outbox.close(CloseReason::TokenExpired);
                    return;
                }
                _ = ping.tick() => {
                    // A peer with a message held is not silent: it is waiting for its subscribe.
                    if held.is_none() && last_heard.elapsed() > ping_every * 2 {
                        tracing::info!(conn = self.session.id, "peer silent for two ping intervals; dropping it");
                        outbox.close(CloseReason::Gone);
                        return;
                    }
                    outbox.push(Frame::Ping);
                }
                () = async {
                    if let Some(s) = subscribing.as_mut() {
                        s.await;
                    }
                }, if subscribing.is_some() => subscribing = None,
                msg = stream.next(), if held.is_none() => {
                    last_heard = Instant::now();
                    match msg {
                        None => {
                            outbox.close(CloseReason::Gone);
                            return;
                        }
                        Some(Err(e)) => {
                            outbox.close(close_for(e));
                            return;
                        }
                        Some(Ok(Message::Close(frame))) => {
                            // The writer answers the close; read until the socket ends.
                            outbox.close(CloseReason::PeerClosed(frame.map(|f| f.code.into())));
                            while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(1), stream.next()).await {}
                            return;
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                        Some(Ok(other)) if subscribing.is_some() => held = Some(other),
                        Some(Ok(other)) => match self.on_message(other, &mut limit) {
                            Ok(next) => subscribing = next,
                            Err(()) => return,
                        },
                    }
                }
            }
        }
    }

    /// Charges a client message to the rate limit and handles it; a subscribe is returned to run
    /// beside the reader loop. `Err` when the socket is closed for flooding.
    fn on_message(
        &mut self,
        msg: Message,
        limit: &mut MessageLimit,
    ) -> Result<Option<Subscribing>, ()> {
        if !limit.allow() {
            if limit.refused_in_a_row >= RATE_STRIKES {
                self.session.outbox.close(CloseReason::RateLimited);
                return Err(());
            }
            self.session.reply(ServerMessage::error(
                ErrorCode::RateLimited,
                "slow down: too many messages",
            ));
            return Ok(None);
        }
        Ok(match msg {
            Message::Text(text) => self.on_text(&text),
            _ => {
                self.session.reply(ServerMessage::error(
                    ErrorCode::BadRequest,
                    "binary frames are not part of the protocol",
                ));
                None
            }
        })
    }

    /// Handles a client message; a subscribe is returned to run beside the reader loop.
    fn on_text(&mut self, text: &str) -> Option<Subscribing> {
        let msg = match parse(text) {
            Ok(m) => m,
            Err(why) => {
                self.session
                    .reply(ServerMessage::error(ErrorCode::BadRequest, why));
                return None;
            }
        };
        match msg {
            ClientMessage::Ping => self.session.reply(ServerMessage::Pong),
            ClientMessage::Presence(fields) => {
                if let Some(e) = self
                    .session
                    .rt
                    .hub
                    .presence_message(self.session.id, &fields)
                {
                    self.session.reply(e);
                }
            }
            ClientMessage::Auth { token } => self.session.renew(&mut self.expires_at, &token),
            ClientMessage::Subscribe(fields) => {
                let session = self.session.clone();
                return Some(Box::pin(async move { session.subscribe(&fields).await }));
            }
            ClientMessage::Unsubscribe(fields) if fields.inbox == Some(true) => {
                match fields.scope() {
                    Err(_) => {
                        self.session.rt.inbox.detach(self.session.id);
                        self.session
                            .reply(ServerMessage::InboxUnsubscribed { inbox: true });
                    }
                    Ok(_) => self
                        .session
                        .reply(ServerMessage::error(ErrorCode::BadRequest, NOT_BOTH)),
                }
            }
            ClientMessage::Unsubscribe(fields) => match fields.scope() {
                Ok(scope) => {
                    self.session.rt.hub.leave(self.session.id, scope.room());
                    self.session.reply(ServerMessage::Unsubscribed {
                        scope,
                        reason: None,
                    });
                }
                Err(why) => self
                    .session
                    .reply(ServerMessage::error(ErrorCode::BadRequest, why)),
            },
        }
        None
    }
}

impl Session {
    pub(super) fn reply(&self, msg: ServerMessage) {
        self.outbox.push(Frame::Text(msg.frame()));
    }

    /// A fresh token for the same user keeps the connection alive past the old one's expiry.
    pub(super) fn renew(&self, expires_at: &mut OffsetDateTime, token: &str) {
        match self.rt.tokens.verify(token) {
            Ok(p) if p.user_id == self.user => {
                *expires_at = p.expires_at;
                self.reply(ServerMessage::Authenticated {
                    user_id: p.user_id,
                    expires_at: p.expires_at,
                });
            }
            Ok(_) | Err(AuthError::Invalid) => self.outbox.close(CloseReason::Unauthorized),
            Err(AuthError::Expired) => self.outbox.close(CloseReason::TokenExpired),
        }
    }

    /// The `error` answering a subscribe of `scope` that failed.
    pub(super) fn reply_subscribe_error(&self, e: &SubscribeError, scope: Scope) {
        let (code, message) = match e {
            SubscribeError::Forbidden => (
                ErrorCode::Forbidden,
                "not a member, or no such team, board or task",
            ),
            SubscribeError::ResumeUnavailable => (
                ErrorCode::ResumeUnavailable,
                "since is outside the retained log; subscribe without it and refetch",
            ),
            SubscribeError::TooMany => (
                ErrorCode::TooManySubscriptions,
                "this socket is in too many rooms",
            ),
            SubscribeError::Busy => (
                ErrorCode::Unavailable,
                "the team is too busy to join right now; retry",
            ),
            SubscribeError::Store(e) => {
                tracing::warn!(error = %e, "subscribe failed");
                (
                    ErrorCode::Unavailable,
                    "the server could not check this subscription; retry",
                )
            }
        };
        self.reply(ServerMessage::scoped_error(code, message, scope));
    }

    pub(super) async fn subscribe(&self, fields: &ScopeFields) {
        if fields.inbox == Some(true) {
            return self.subscribe_inbox(fields).await;
        }
        let scope = match fields.scope() {
            Ok(s) => s,
            Err(why) => return self.reply(ServerMessage::error(ErrorCode::BadRequest, why)),
        };
        if fields.since.is_some_and(|s| s < 0) {
            return self.reply(ServerMessage::scoped_error(
                ErrorCode::BadRequest,
                "since must be 0 or more",
                scope,
            ));
        }
        if let Err(e) = self.try_subscribe(scope, fields.since).await {
            self.reply_subscribe_error(&e, scope);
        }
    }

    async fn subscribe_inbox(&self, fields: &ScopeFields) {
        let error = |code, message: &str| ServerMessage::Error {
            code,
            message: message.to_owned(),
            scope: ScopeIds {
                inbox: Some(true),
                ..ScopeIds::default()
            },
        };
        if fields.scope().is_ok() {
            return self.reply(error(ErrorCode::BadRequest, NOT_BOTH));
        }
        if fields.since.is_some_and(|s| s < 0) {
            return self.reply(error(ErrorCode::BadRequest, "since must be 0 or more"));
        }
        if let Err(e) = self.try_subscribe_inbox(fields.since).await {
            self.reply_inbox_error(
                &e,
                "since is beyond the inbox stream; subscribe without it and refetch",
            );
        }
    }

    /// The `error` answering an inbox subscribe that failed; `resume_unavailable` says
    /// `resume_message`.
    pub(super) fn reply_inbox_error(&self, e: &SubscribeError, resume_message: &str) {
        let (code, message) = match e {
            SubscribeError::ResumeUnavailable => (ErrorCode::ResumeUnavailable, resume_message),
            other => {
                if let SubscribeError::Store(e) = other {
                    tracing::warn!(error = %e, "inbox subscribe failed");
                }
                (
                    ErrorCode::Unavailable,
                    "the server could not read the inbox; retry",
                )
            }
        };
        self.reply(ServerMessage::Error {
            code,
            message: message.to_owned(),
            scope: ScopeIds {
                inbox: Some(true),
                ..ScopeIds::default()
            },
        });
    }

    /// Replays the inbox stream after `since` up to its latest seq, then attaches the socket to
    /// the feed from there (queuing `subscribed`).
    pub(super) async fn try_subscribe_inbox(
        &self,
        since: Option<i64>,
    ) -> Result<(), SubscribeError> {
        let rt = &self.rt;
        // A subscribe again replaces the socket's position: stop the feed before reading where
        // the stream stands, or it could send an event that the replay and the attach send again.
        rt.inbox.detach(self.id);
        let (latest, unread_count) = rt.store.read().await?.inbox_state(self.user).await?;
        let from = match since {
            Some(s) if s > latest => return Err(SubscribeError::ResumeUnavailable),
            Some(s) => s,
            None => latest,
        };
        let outbox = &self.outbox;
        super::inbox::replay(&*rt.store, self.user, from, latest, |frame| {
            outbox.push_replay(frame)
        })
        .await?;
        let subscribed = ServerMessage::InboxSubscribed {
            inbox: true,
            seq: latest,
            unread_count,
        };
        rt.inbox.attach(
            self.id,
            self.user,
            outbox.clone(),
            latest,
            latest,
            subscribed.frame(),
        );
        // A hint that came before the attach found no socket of the user here: look again (or
        // leave it to the periodic check: `subscribed` is already queued).
        match async { rt.store.read().await?.inbox_seqs(&[self.user]).await }.await {
            Ok(now) => {
                for (user, seq) in now {
                    rt.inbox.reached(user, seq);
                }
            }
            Err(e) => tracing::debug!(error = %e, "re-reading the inbox seq after a subscribe"),
        }
        Ok(())
    }

    /// Checks access in a store snapshot and joins at a point of the team's dispatch that the
    /// snapshot vouches for. With `since`, replays what the room missed up to that point first.
    async fn try_subscribe(&self, scope: Scope, since: Option<i64>) -> Result<(), SubscribeError> {
        let team = {
            let mut tx = self.rt.store.read().await?;
            team_of(&mut *tx, scope)
                .await?
                .ok_or(SubscribeError::Forbidden)?
        };
        let refused = self.try_subscribe_group(team, &[scope], since).await?;
        if refused.is_empty() {
            Ok(())
        } else {
            Err(SubscribeError::Forbidden)
        }
    }

    /// `try_subscribe` for several scopes of one team (an SSE stream's): one replay of what any
    /// of them missed, then all joined at the same point. Returns the scopes refused because they
    /// no longer belong to `team` (deleted meanwhile); the others are joined.
    pub(super) async fn try_subscribe_group(
        &self,
        team: TeamId,
        scopes: &[Scope],
        since: Option<i64>,
    ) -> Result<Vec<Scope>, SubscribeError> {
        // Keeps the team followed until the join (or failure) below.
        let _pin = self.rt.hub.follow(team).await?;
        let mut elsewhere: Vec<(Scope, Vec<PresenceView>)> = Vec::with_capacity(scopes.len());
        for &scope in scopes {
            let viewers = match (scope, self.rt.bus.shared_presence()) {
                (Scope::Task(task), Some(shared)) => {
                    shared.viewers(team, task).await.unwrap_or_else(|e| {
                        tracing::debug!(error = %e, "presence snapshot without other instances");
                        Vec::new()
                    })
                }
                _ => Vec::new(),
            };
            elsewhere.push((scope, viewers));
        }
        let mut refused = Vec::new();
        let mut replayed = since;
        let mut checked_bounds = false;
        for _ in 0..JOIN_ATTEMPTS {
            let mut tx = self.rt.store.read().await?;
            let mut kept = Vec::with_capacity(elsewhere.len());
            for (scope, viewers) in elsewhere {
                if team_of(&mut *tx, scope).await? == Some(team) {
                    kept.push((scope, viewers));
                } else {
                    refused.push(scope);
                }
            }
            elsewhere = kept;
            if elsewhere.is_empty() {
                return Ok(refused);
            }
            let admin = match tx.role(team, self.user).await? {
                None => return Err(SubscribeError::Forbidden),
                Some(role) => role >= Role::Admin,
            };
            let bounds = tx
                .log_bounds(team)
                .await?
                .ok_or(SubscribeError::Forbidden)?;
            if let (Some(s), false) = (since, checked_bounds) {
                if s < bounds.oldest_since || s > bounds.last_seq {
                    return Err(SubscribeError::ResumeUnavailable);
                }
                checked_bounds = true;
            }
            // The snapshot is not held while the replay waits on the socket: a client that
            // stops reading must not hold a database connection.
            drop(tx);
            let group: Vec<Scope> = elsewhere.iter().map(|(scope, _)| *scope).collect();
            if let Some(from) = replayed {
                let upto = self.rt.hub.dispatched(team).unwrap_or(0);
                if upto > bounds.last_seq {
                    continue; // the hub is ahead of this snapshot: take a newer one
                }
                if upto < from {
                    // The client saw more than this instance has dispatched (it resumes here
                    // after another instance): bring the hub up to it rather than wait for it.
                    self.rt.hub.catch_up(team, from).await?;
                    continue;
                }
                if !self.replay(team, &group, admin, from, upto).await? {
                    return Ok(refused); // the socket is closing
                }
                replayed = Some(upto.max(from));
            }
            let joining: Vec<(Scope, &[PresenceView])> = elsewhere
                .iter()
                .map(|(scope, viewers)| (*scope, viewers.as_slice()))
                .collect();
            match self
                .rt
                .hub
                .join_group(self.id, &joining, team, admin, bounds.last_seq, replayed)
            {
                Join::Joined(_) => {
                    for (scope, _) in &elsewhere {
                        if let Scope::Task(task) = *scope {
                            self.presence_after_join(team, task).await;
                        }
                    }
                    return Ok(refused);
                }
                Join::Gone => return Ok(refused),
                Join::TooMany => return Err(SubscribeError::TooMany),
                Join::Stale => tokio::task::yield_now().await,
                Join::Behind => self.rt.hub.catch_up(team, bounds.last_seq).await?,
            }
        }
        Err(SubscribeError::Busy)
    }

    /// Shared presence: what changed on other instances between the snapshot read and the join
    /// was announced before this socket was in the room. Read again; the hub tells the socket
    /// what it missed.
    async fn presence_after_join(&self, team: TeamId, task: TaskId) {
        let Some(shared) = self.rt.bus.shared_presence() else {
            return;
        };
        let now = shared.viewers(team, task).await;
        if let Err(e) = &now {
            tracing::debug!(error = %e, "presence re-read after a join");
        }
        let now = now.as_deref().ok();
        self.rt.hub.reconcile_presence(self.id, team, task, now);
    }

    /// Queues the activities of `(from, upto]` that reach any of the scopes' rooms (and, for an
    /// owner's or admin's team scope, the admins room); false if the socket closes.
    /// Each step reads in its own short transaction, released before the frames wait for the
    /// writer; the outbox cuts a socket that takes nothing for its stall time.
    async fn replay(
        &self,
        team: TeamId,
        scopes: &[Scope],
        admin: bool,
        from: i64,
        upto: i64,
    ) -> Result<bool, SubscribeError> {
        let mut rooms: Vec<Room> = scopes.iter().map(|s| s.room()).collect();
        if admin && rooms.contains(&Room::Team(team)) {
            rooms.push(Room::Admins(team));
        }
        let mut cursor = from;
        while cursor < upto {
            let batch = {
                let mut tx = self.rt.store.read().await?;
                tx.activities(team, cursor, upto, REPLAY_BATCH).await?
            };
            // Pruned between two steps: the rest cannot be replayed faithfully.
            if batch.first().is_none_or(|e| e.seq != cursor + 1) {
                return Err(SubscribeError::ResumeUnavailable);
            }
            let Some(last) = batch.last().map(|e| e.seq) else {
                break;
            };
            cursor = last;
            let reaches = |e: &&LogEntry| rooms.iter().any(|r| e.route.reaches(*r));
            for e in batch.iter().filter(reaches) {
                let frame = Frame::positioned(
                    super::protocol::activity_frame(e),
                    Stream::Team(team),
                    e.seq,
                    Arrival::Replay,
                );
                if !self.outbox.push_replay(frame).await {
                    return Ok(false);
                }
                metrics::counter!(crate::telemetry::REPLAYED).increment(1);
            }
        }
        Ok(true)
    }
}

/// The team a scope belongs to, if it exists.
pub(super) async fn team_of(tx: &mut dyn Tx, scope: Scope) -> Result<Option<TeamId>, StoreError> {
    Ok(match scope {
        Scope::Team(id) => tx.team(id).await?.map(|t| t.id),
        Scope::Board(id) => tx.board(id).await?.map(|b| b.team_id),
        Scope::Task(id) => tx.task(id).await?.map(|t| t.team_id),
    })
}

/// How a socket whose input failed is closed (RFC 6455, 7.4.1).
fn close_for(e: tungstenite::Error) -> CloseReason {
    match e {
        tungstenite::Error::Capacity(_) => CloseReason::TooBig,
        tungstenite::Error::Utf8(_) => CloseReason::InvalidData,
        tungstenite::Error::Protocol(_) => CloseReason::ProtocolError,
        _ => CloseReason::Gone,
    }
}

/// Drains the outbox into the socket: everything queued goes out in one vectored write.
async fn write_loop(mut out: Outbound, outbox: Arc<Outbox>) {
    let mut batch = Vec::new();
    loop {
        match outbox.next_batch(&mut batch).await {
            None => {
                let written = out.write_batch(&batch, outbox.stall()).await;
                batch.clear();
                batch.shrink_to(RETAINED_FRAMES);
                match written {
                    Ok(()) => {}
                    // The peer stopped reading: cut it as a slow consumer (it may resume). The
                    // socket cannot take a close frame either, so none is tried.
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                        tracing::info!("a write made no progress; cutting the socket");
                        metrics::counter!(crate::telemetry::STALLED_SOCKETS).increment(1);
                        outbox.cut();
                        return;
                    }
                    Err(_) => {
                        outbox.close(CloseReason::Gone);
                        return;
                    }
                }
            }
            Some(reason) => {
                if let Some(code) = reason.error_code() {
                    let msg = ServerMessage::error(code, reason.message());
                    let _ = out
                        .write_batch(&[Frame::Text(msg.frame())], outbox.stall())
                        .await;
                }
                let _ = out.close(reason.code(), reason.message()).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<A, B, C, D, E, F>(_: impl Fn(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every socket holds its reader and writer tasks for as long as it lives, idle or not: what
    /// a rare path (subscribe, replay, the store) needs must be boxed while it runs, not reserved
    /// in every connection's task.
    #[test]
    fn connection_tasks_stay_small() {
        let reader = future_size(run);
        let writer = future_size(|a, b, (), (), ()| write_loop(a, b));
        eprintln!("reader task {reader} bytes, writer task {writer} bytes");
        // 1,168 and 312 bytes with Rust 1.95, in release.
        assert!(reader <= 1536, "the reader task takes {reader} bytes");
        assert!(writer <= 512, "the writer task takes {writer} bytes");
    }
}

#[cfg(test)]
#[path = "hub_join_tests.rs"]
mod hub_joins;
