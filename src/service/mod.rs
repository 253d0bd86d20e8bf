//! The use cases of TaskForge: each public method is one thing a user can do. A method opens one
//! store transaction, applies the rules of `domain`, appends the activities the change emits in
//! that same transaction, commits, and hands the committed activities to the relay.
//!
//! Services know nothing of HTTP or sockets; they return `ServiceError`, which the edges map.

mod activity;
pub mod auth;
pub mod idempotency;
mod import;
pub mod inbox;
mod labels;
mod tasks;
pub mod teams;
pub mod webhooks;

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use uuid::Uuid;

use crate::bus::Relay;
use crate::domain::activity::{ActivityDraft, LogEntry};
use crate::domain::{DomainError, Role, TeamId, UserId};
use crate::store::{PageAfter, Store, StoreError, Tx};

pub use auth::{AuthError, Claims, PasswordHashing, Session, TokenService};
pub use teams::MemberRef;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
    /// The server is at capacity for this kind of work: retry after the given time.
    #[error("busy: {0}")]
    Busy(&'static str, std::time::Duration),
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// How often an optimistic write is retried after losing a race with a concurrent writer.
const WRITE_ATTEMPTS: usize = 8;

/// What a write by id names; its team is read first, so that the write opens in the team's lane
/// (`Services::write_for`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum OwnedBy {
    Task(crate::domain::TaskId),
    Comment(crate::domain::CommentId),
    Label(crate::domain::LabelId),
    Board(crate::domain::BoardId),
    Webhook(crate::domain::WebhookId),
}

/// The services, sharing one store, relay and token service.
#[derive(Clone)]
pub struct Services {
    pub store: Arc<dyn Store>,
    pub relay: Relay,
    pub tokens: Arc<TokenService>,
    /// This server's budget of password hashes (CPU and memory bound).
    pub hashing: Arc<PasswordHashing>,
    pub webhooks: Arc<webhooks::WebhookPolicy>,
}

/// A page of items and the cursor of the next page.
#[derive(Debug, Clone, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    #[serde(rename = "nextCursor")]
    pub next_cursor: Option<String>,
}

/// Data read together with the team's latest seq at that moment.
#[derive(Debug, Clone)]
pub struct Seqd<T> {
    pub data: T,
    pub seq: i64,
}

/// A list request as clients send it: `limit` (clamped to 1..=200, default 50) and `cursor`.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

impl PageRequest {
    fn limit(&self) -> Result<i64> {
        match self.limit {
            None => Ok(DEFAULT_LIMIT),
            Some(n) if n < 1 => Err(DomainError::invalid("limit", "must be at least 1").into()),
            Some(n) => Ok(n.min(MAX_LIMIT)),
        }
    }

    /// The key-set page after an id cursor. Fetches one more than asked to know if more follow.
    fn after_id<K: From<Uuid>>(&self) -> Result<PageAfter<K>> {
        let after = match &self.cursor {
            None => None,
            Some(c) => Some(
                decode_cursor(c)
                    .and_then(|b| Uuid::from_slice(&b).ok())
                    .map(K::from)
                    .ok_or_else(bad_cursor)?,
            ),
        };
        Ok(PageAfter {
            after,
            limit: self.limit()? + 1,
        })
    }

    /// The page after a seq cursor.
    fn after_seq(&self) -> Result<(Option<i64>, i64)> {
        let after = match &self.cursor {
            None => None,
            Some(c) => Some(
                decode_cursor(c)
                    .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                    .map(i64::from_be_bytes)
                    .filter(|s| *s >= 0)
                    .ok_or_else(bad_cursor)?,
            ),
        };
        Ok((after, self.limit()?))
    }
}

fn bad_cursor() -> ServiceError {
    DomainError::invalid("cursor", "is not a cursor this server issued").into()
}

fn decode_cursor(c: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(c).ok()
}

/// Cuts a fetched `limit + 1` rows into a page, with the cursor of the last item kept.
fn page_by_id<T, K: Into<Uuid>>(
    mut rows: Vec<T>,
    page: PageAfter<K>,
    id: impl Fn(&T) -> K,
) -> Page<T> {
    let more = rows.len() as i64 >= page.limit;
    if more {
        rows.truncate((page.limit - 1) as usize);
    }
    let next_cursor = if more {
        rows.last()
            .map(|r| URL_SAFE_NO_PAD.encode(id(r).into().as_bytes()))
    } else {
        None
    };
    Page {
        items: rows,
        next_cursor,
    }
}

fn seq_cursor(seq: i64) -> String {
    URL_SAFE_NO_PAD.encode(seq.to_be_bytes())
}

/// The caller's role in a team; a non-member is told the team does not exist.
async fn role_in(tx: &mut dyn Tx, team: TeamId, user: UserId) -> Result<Role> {
    tx.role(team, user)
        .await?
        .ok_or_else(|| DomainError::NotFound.into())
}

/// The team's latest seq, read in the caller's snapshot.
async fn seq_of(tx: &mut dyn Tx, team: TeamId) -> Result<i64> {
    Ok(tx.last_seq(team).await?.unwrap_or(0))
}

fn now() -> time::OffsetDateTime {
    crate::domain::model::timestamp::truncate(time::OffsetDateTime::now_utc())
}

impl Services {
    /// Appends the change's activities, commits, and hands them to the relay, with the inbox
    /// seqs the change's notifications took (`inbox::notify`, written earlier in `tx`).
    async fn commit(
        &self,
        mut tx: Box<dyn Tx>,
        team: TeamId,
        drafts: Vec<ActivityDraft>,
        notified: Vec<(UserId, i64)>,
    ) -> Result<Vec<LogEntry>> {
        let entries = tx.append(team, drafts).await?;
        self.commit_handing_over(tx, entries.clone(), notified)
            .await?;
        Ok(entries)
    }

    /// A write transaction of `team`: every write that appends to a team's log opens its
    /// transaction here or in `write_for` (see `Store::write_team`).
    async fn write_in(&self, team: TeamId) -> Result<Box<dyn Tx>> {
        Ok(self.store.write_team(team).await?)
    }

    /// `write_in` the team that owns `what` (nothing changes team); 404 when it does not exist.
    async fn write_for(&self, what: OwnedBy) -> Result<Box<dyn Tx>> {
        if !self.store.lanes_by_team() {
            return Ok(self.store.write().await?);
        }
        let team = self.team_of(what).await?.ok_or(DomainError::NotFound)?;
        self.write_in(team).await
    }

    /// The team that owns `what`, if it exists.
    async fn team_of(&self, what: OwnedBy) -> Result<Option<TeamId>> {
        let mut tx = self.store.read().await?;
        Ok(match what {
            OwnedBy::Task(id) => tx.task(id).await?.map(|t| t.team_id),
            OwnedBy::Comment(id) => tx.comment(id).await?.map(|c| c.team_id),
            OwnedBy::Label(id) => tx.label(id).await?.map(|l| l.team_id),
            OwnedBy::Board(id) => tx.board(id).await?.map(|b| b.team_id),
            OwnedBy::Webhook(id) => tx.webhook(id).await?.map(|w| w.webhook.team_id),
        })
    }

    /// Commits a transaction whose activities are appended, and hands them to the relay.
    /// Handed over in the `COMMIT`'s task, right after it: a batch's activities reach the relay
    /// in seq order (woken callers would hand them over in any order).
    async fn commit_appended(&self, tx: Box<dyn Tx>, entries: Vec<LogEntry>) -> Result<()> {
        self.commit_handing_over(tx, entries, Vec::new()).await
    }

    /// `commit_appended`, with the inbox seqs the transaction raised.
    async fn commit_handing_over(
        &self,
        tx: Box<dyn Tx>,
        entries: Vec<LogEntry>,
        notified: Vec<(UserId, i64)>,
    ) -> Result<()> {
        let (relay, webhooks) = (self.relay.clone(), self.webhooks.clone());
        tx.commit_then(Box::new(move || {
            metrics::counter!(crate::telemetry::ACTIVITIES_COMMITTED)
                .increment(entries.len() as u64);
            let webhooks_changed = entries.iter().any(|e| e.route.kind.is_webhook_change());
            relay.committed(entries);
            relay.notified(notified);
            webhooks.wake.committed(webhooks_changed);
        }))
        .await?;
        Ok(())
    }
}
