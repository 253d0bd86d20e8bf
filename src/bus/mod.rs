//! Moving committed activities (and presence changes) to every interested instance.
//!
//! `Bus` is the transport: in-process for the embedded deployment, Redis pub/sub for many
//! instances. `Relay` is the outbox reader: after commit it hands each team's activities to the bus
//! in seq order and advances the team's published watermark, and it republishes what a crash left
//! behind. The bus is allowed to lose messages (Redis pub/sub is at most once): the hub repairs
//! from the log, so the bus never decides routing, never touches sockets and is never the source
//! of truth.

mod memory;
mod redis;
mod relay;
pub mod wire;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::domain::activity::{LogEntry, PresenceUser};
use crate::domain::presence::{PresenceKind, PresenceStatus, PresenceView};
use crate::domain::{TaskId, TeamId, UserId};

pub use memory::InProcessBus;
pub use redis::{RedisBus, RedisSettings, RedisTarget};
pub use relay::{Relay, RelaySettings};

#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("the bus is closed")]
    Closed,
    #[error("the bus is unreachable: {0}")]
    Unreachable(String),
}

/// A channel of the bus: a team's activities and presence, or what reaches a user's own sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    Team(TeamId),
    User(UserId),
}

impl Topic {
    /// The pub/sub channel name (`team:{id}`, `user:{id}`).
    pub fn channel(self) -> String {
        match self {
            Topic::Team(id) => format!("team:{id}"),
            Topic::User(id) => format!("user:{id}"),
        }
    }
}

/// Someone started or stopped viewing a task, on any instance, or what they are shown doing
/// there changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEvent {
    pub kind: PresenceKind,
    pub team_id: TeamId,
    pub task_id: TaskId,
    pub user: PresenceUser,
    /// What the user is shown doing in the task now (for `Updated`).
    pub status: PresenceStatus,
}

/// What an instance receives from the bus.
#[derive(Debug, Clone)]
pub enum BusEvent {
    /// Activities of one team, in seq order, from the team's channel.
    Activities(Vec<LogEntry>),
    /// An activity from a user's channel: for that user's own sockets on an instance that does
    /// not follow the team (live only, no repair).
    UserActivity(LogEntry),
    /// A presence change published by some instance (scaled deployment).
    Presence(PresenceEvent),
    /// A user's inbox stream reached this seq (from the user's channel; a hint: the inbox
    /// reads the events themselves from the store).
    Inbox(UserId, i64),
    /// A client message POSTed (on some instance) for one of the user's SSE streams.
    StreamMessage {
        user: UserId,
        stream: String,
        text: String,
    },
    /// Messages may have been lost (the bus reconnected, or its queue overflowed): every followed
    /// team must be checked against the log.
    Resync,
}

/// One team's share of `Bus::publish_teams`: the arguments of a `publish`.
#[derive(Debug, Clone, Copy)]
pub struct TeamPublish<'a> {
    pub team: TeamId,
    pub published: i64,
    pub entries: &'a [LogEntry],
}

/// The answer to one team's share of `Bus::publish_teams`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The team's published seq afterwards.
    pub upto: i64,
    /// How many of the entries this call published (the others another publisher had).
    pub sent: u64,
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes activities of one team (ascending, contiguous seqs) on its channel, and each one
    /// that reaches a user's own sockets also on that user's channel. `published` is the team's
    /// published seq as far as the caller knows. Entries another publisher already published are
    /// skipped. Returns the team's published seq afterwards: when it is below
    /// `entries[0].seq - 1`, nothing was published and the caller must publish the gap first.
    async fn publish(
        &self,
        team: TeamId,
        published: i64,
        entries: &[LogEntry],
    ) -> Result<i64, BusError>;

    /// `publish` for several teams, in one round trip where the bus can (the relay's steps carry
    /// many teams): one answer per item, in order, with how many entries this call sent.
    async fn publish_teams(&self, batch: &[TeamPublish<'_>]) -> Vec<Result<Published, BusError>> {
        let mut answers = Vec::with_capacity(batch.len());
        for p in batch {
            // The only publisher on a bus without an override: what it passed is what it sent.
            let answer = self.publish(p.team, p.published, p.entries).await;
            answers.push(answer.map(|upto| Published {
                upto,
                sent: u64::try_from(upto - p.published).unwrap_or(0),
            }));
        }
        answers
    }

    /// Tells the instances with sockets of these users that their inbox streams reached these
    /// seqs (on each user's channel). At most once, like every publish: the inbox's periodic
    /// check finds what is lost.
    async fn publish_inbox(&self, marks: &[(UserId, i64)]) -> Result<(), BusError>;

    /// Hands a client message to the user's SSE stream `stream` on whichever instance holds it
    /// (at most once, like every publish). `Ok(false)`: no instance listens for the user (this
    /// bus reaches no other instance, or none has a connection of the user).
    async fn forward_to_stream(
        &self,
        user: UserId,
        stream: &str,
        text: &str,
    ) -> Result<bool, BusError>;

    /// The stream of events for this instance; there is one, taken by the realtime hub.
    fn take_events(&self) -> Option<mpsc::Receiver<BusEvent>>;

    /// Whether the bus is connected (the log keeps working either way).
    fn is_up(&self) -> bool;

    /// Starts receiving a topic. Returns once the bus confirmed the subscription, so that a store
    /// read made afterwards misses nothing published later. Counted: one `unwatch` per `watch`.
    /// On error the topic is still wanted and is subscribed when the bus is back.
    async fn watch(&self, topic: Topic) -> Result<(), BusError>;

    /// Releases one `watch`; the last one unsubscribes.
    fn unwatch(&self, topic: Topic);

    /// Presence shared between instances; `None` where this instance's hub is the only one.
    fn shared_presence(&self) -> Option<Arc<dyn SharedPresence>>;
}

/// Presence kept where every instance sees it. Each instance states, per task, who views it
/// locally and what it shows of each; the registry decides who joined or left across all
/// instances, and what each user is shown doing (`domain::presence::most_active` over the
/// instances), and publishes the changes.
#[async_trait]
pub trait SharedPresence: Send + Sync + 'static {
    /// Records that `viewers` are this instance's viewers of `task` now. With `announce`,
    /// publishes `presence.joined` / `presence.left` for users present nowhere else, and
    /// `presence.updated` when what a user is shown doing across all instances changed.
    async fn sync(
        &self,
        team: TeamId,
        task: TaskId,
        viewers: &[PresenceView],
        announce: bool,
    ) -> Result<(), BusError>;

    /// Everyone viewing `task` on the other live instances, with what they are shown doing
    /// there (this instance's own viewers are the hub's to tell).
    async fn viewers(&self, team: TeamId, task: TaskId) -> Result<Vec<PresenceView>, BusError>;

    /// Renews this instance's heartbeat.
    async fn heartbeat(&self) -> Result<(), BusError>;

    /// Removes the viewers of instances whose heartbeat expired, publishing their
    /// `presence.left` (or `presence.updated` for users still present elsewhere whose shown
    /// state changes); returns how many instances were swept.
    async fn sweep(&self) -> Result<usize, BusError>;

    /// Removes this instance's viewers (publishing their `presence.left`) at shutdown.
    async fn retire(&self) -> Result<(), BusError>;
}
