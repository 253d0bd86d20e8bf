//! The `/realtime` WebSocket endpoint: the protocol, connections, and the `Hub` that fans
//! activities out to rooms.
//!
//! Realtime consumes the bus and reads the store (access checks, resume replays); it never writes
//! the store and never holds a lock across an await or a socket write.

pub mod asyncapi;
mod connection;
pub mod hub;
mod inbox;
pub mod outbox;
mod presence;
pub mod protocol;
mod socket;
mod sse;
mod viewers;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::{Bus, BusEvent};
use crate::config::Config;
use crate::http::error::ApiError;
use crate::http::extract::bearer;
use crate::limits::KeyedLimiter;
use crate::service::auth::Principal;
use crate::service::{AuthError, TokenService};
use crate::store::Store;
use crate::supervisor::Supervisor;
use hub::Hub;
use inbox::InboxFeed;
use outbox::{CloseReason, Outbox};
use socket::Upgrade;

#[derive(Debug, Clone)]
pub struct Settings {
    pub auth_timeout: Duration,
    /// What one socket may make the server hold for it (frames, bytes, replay window, stall).
    pub outbox: outbox::Limits,
    pub max_subscriptions: usize,
    pub rate: u32,
    pub burst: u32,
    pub ping_interval: Duration,
    pub max_message_bytes: usize,
    /// How often every followed team is compared with the log.
    pub check_interval: Duration,
    /// Shared presence: heartbeat every `ttl / 3`, sweep dead instances every `sweep_interval`.
    pub presence_ttl: Duration,
    pub presence_sweep_interval: Duration,
    /// Editing and typing fall back to viewing after this without a repeat.
    pub presence_state_ttl: Duration,
    /// Connection attempts per minute from one client address (0: no limit).
    pub connect_per_minute: u32,
    /// Whether the client address comes from `X-Forwarded-For` (see `limits::client_ip`).
    pub trust_forwarded: bool,
}

impl Settings {
    pub fn from_config(c: &Config) -> Self {
        Self {
            auth_timeout: c.ws_auth_timeout,
            outbox: outbox::Limits {
                frames: c.ws_queue_limit.max(1),
                bytes: c.ws_queue_bytes.max(64 * 1024),
                replay_frames: 256,
                replay_bytes: 256 * 1024,
                stall: c.ws_write_timeout.max(Duration::from_millis(100)),
            },
            max_subscriptions: c.ws_max_subscriptions,
            rate: c.ws_rate,
            burst: c.ws_burst.max(1),
            ping_interval: c.ws_ping_interval.max(Duration::from_millis(100)),
            max_message_bytes: c.ws_max_message_bytes,
            check_interval: c.bus_check_interval.max(Duration::from_millis(10)),
            presence_ttl: c.presence_ttl.max(Duration::from_millis(300)),
            presence_sweep_interval: c.presence_sweep_interval.max(Duration::from_millis(100)),
            presence_state_ttl: c.presence_state_ttl.max(Duration::from_millis(500)),
            connect_per_minute: c.connect_limit_per_ip,
            trust_forwarded: c.trust_forwarded_for,
        }
    }
}

pub struct Realtime {
    pub hub: Arc<Hub>,
    /// Each user's inbox stream, for their sockets that subscribed to it.
    inbox: Arc<InboxFeed>,
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    tokens: Arc<TokenService>,
    settings: Settings,
    connect_limit: Option<KeyedLimiter>,
    /// Cancelled when the server starts shutting down: no new sockets from then on.
    draining: CancellationToken,
    /// Every socket's and SSE stream's task, from the upgrade on: shutdown waits for them to close.
    sockets: TaskTracker,
    /// This instance's SSE streams, for the messages POSTed to them.
    streams: Arc<sse::Streams>,
}

impl Realtime {
    /// Starts the hub, the task that dispatches what the bus delivers, the periodic check of
    /// followed teams against the log and the presence worker (with shared presence) or the
    /// presence tick (without).
    pub fn start(
        store: Arc<dyn Store>,
        bus: &Arc<dyn Bus>,
        tokens: Arc<TokenService>,
        settings: Settings,
        tasks: &Supervisor,
    ) -> Arc<Self> {
        let hub = Arc::new(
            Hub::new(store.clone(), bus.clone(), settings.max_subscriptions)
                .with_presence_state_ttl(settings.presence_state_ttl),
        );
        let inbox = Arc::new(InboxFeed::new(store.clone()));
        let streams = Arc::new(sse::Streams::new(settings.rate));
        if let Some(mut events) = bus.take_events() {
            let hub = hub.clone();
            let inbox = inbox.clone();
            let streams = streams.clone();
            tasks.spawn("bus dispatch", async move {
                while let Some(event) = events.recv().await {
                    match event {
                        BusEvent::Activities(entries) => hub.dispatch(entries).await,
                        BusEvent::UserActivity(entry) => hub.deliver_user_copy(entry),
                        BusEvent::Presence(ev) => hub.on_presence(&ev),
                        BusEvent::Inbox(user, seq) => inbox.reached(user, seq),
                        BusEvent::StreamMessage { user, stream, text } => {
                            streams.forwarded(user, &stream, &text);
                        }
                        BusEvent::Resync => {
                            hub.presence_resync();
                            if let Err(e) = hub.check().await {
                                tracing::warn!(error = %e, "resync from the log failed; the periodic check retries");
                            }
                            if let Err(e) = inbox.check().await {
                                tracing::warn!(error = %e, "inbox resync failed; the periodic check retries");
                            }
                        }
                    }
                }
            });
        }
        tasks.spawn("inbox feed", inbox.clone().run());
        tasks.spawn(
            "log check",
            run_checks(hub.clone(), inbox.clone(), settings.check_interval),
        );
        match bus.shared_presence() {
            Some(shared) => tasks.spawn(
                "presence",
                presence::run(hub.clone(), shared, settings.clone()),
            ),
            None => tasks.spawn("presence states", presence::run_local(hub.clone())),
        }
        Arc::new(Self {
            hub,
            inbox,
            store,
            bus: bus.clone(),
            tokens,
            connect_limit: KeyedLimiter::per_minute(settings.connect_per_minute),
            settings,
            draining: CancellationToken::new(),
            sockets: TaskTracker::new(),
            streams,
        })
    }

    /// Closes every socket with 1001 (the server is going away), including those upgraded but not
    /// yet authenticated, and refuses new upgrades (503).
    pub fn shutdown(&self) {
        self.draining.cancel();
        self.hub.close_all(CloseReason::GoingAway);
        self.sockets.close();
    }

    /// Resolves once every socket's task has ended (after `shutdown`).
    pub async fn closed(&self) {
        self.sockets.wait().await;
    }

    /// After the sockets are closed: takes this instance's viewers out of the shared presence.
    pub async fn retire(&self) {
        if let Some(shared) = self.bus.shared_presence()
            && let Err(e) = shared.retire().await
        {
            tracing::warn!(error = %e, "could not remove this instance's presence; the others sweep it");
        }
    }

    /// A connection's token (socket handshake, SSE stream, POSTed message): its principal, or
    /// why it is refused.
    fn verify_token(&self, token: &str) -> Result<Principal, &'static str> {
        self.tokens.verify(token).map_err(|e| match e {
            AuthError::Expired => "the access token has expired",
            AuthError::Invalid => "the access token is invalid",
        })
    }

    pub fn router(self: &Arc<Self>) -> Router {
        let doc: Arc<str> = Arc::from(asyncapi::document().to_string());
        Router::new()
            .route("/realtime", axum::routing::get(upgrade))
            .route("/realtime/sse", axum::routing::get(sse::open))
            .route("/realtime/sse/{stream_id}", axum::routing::post(sse::post))
            .route(
                "/asyncapi.json",
                axum::routing::get(move || {
                    let doc = doc.clone();
                    async move {
                        (
                            [(axum::http::header::CONTENT_TYPE, "application/json")],
                            doc.to_string(),
                        )
                    }
                }),
            )
            .with_state(self.clone())
    }
}

/// Compares the followed teams with the log, and the subscribed inboxes with the store, every
/// `every`: an activity the bus lost, and the last one before a quiet spell, reach the sockets
/// within two intervals (`Hub::check_settled`), an inbox event within one.
async fn run_checks(hub: Arc<Hub>, inbox: Arc<InboxFeed>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = hub.check_settled().await {
            tracing::warn!(error = %e, "checking followed teams against the log failed");
        }
        if let Err(e) = inbox.check().await {
            tracing::warn!(error = %e, "checking subscribed inboxes against the store failed");
        }
    }
}

#[derive(Debug, Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// Verifies a handshake token (query or header) before upgrading; without one, the first message
/// must be `auth`.
async fn upgrade(
    State(rt): State<Arc<Realtime>>,
    Query(q): Query<TokenQuery>,
    parts: Parts,
    ws: Upgrade,
) -> Response {
    if let Some(refusal) = rt.refuse_connection(&parts) {
        return refusal;
    }
    let token = q.token.or_else(|| bearer(&parts).map(str::to_owned));
    let principal = match token {
        None => None,
        Some(t) => match rt.verify_token(&t) {
            Ok(p) => Some(p),
            Err(why) => return ApiError::unauthorized(why).into_response(),
        },
    };
    let max = rt.settings.max_message_bytes;
    // Every socket keeps its read buffer for life, and a client sends only small messages: 512
    // bytes hold a subscribe or an auth with its token (a larger frame grows the buffer while it
    // is read). 4 KiB cost 3.5 KiB more per idle socket. The decoder writes only its own short
    // replies, straight into the outbox.
    let config = tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(512)
        .write_buffer_size(0)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let outbox = Arc::new(Outbox::new(rt.settings.outbox));
    let sockets = rt.sockets.clone();
    ws.on_upgrade(
        &sockets,
        config,
        outbox.clone(),
        move |inbound, outbound| connection::run(inbound, outbound, outbox, rt, principal),
    )
}
