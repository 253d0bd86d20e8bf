//! The webhooks' rows: their settings and sealed secrets, their cursor into the team's log, the
//! lease that says which instance delivers them, and the record of every attempt.
//!
//! Written once for both drivers, like `sql.rs`, and kept apart from it: `impl_webhook_tx!`.

use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::webhook::{Delivery, Webhook};
use crate::domain::{TeamId, UserId, WebhookId};

use super::sql::row;
use super::{Result, StoreError};

/// The secrets of a webhook, sealed with the server's webhook key.
#[derive(Debug, Clone)]
pub struct SealedSecrets {
    pub current: Vec<u8>,
    /// The secret before the last rotation, which signs beside `current` until `previous_until`.
    pub previous: Option<Vec<u8>>,
    pub previous_until: Option<OffsetDateTime>,
}

/// A webhook with what delivering it needs.
#[derive(Debug, Clone)]
pub struct WebhookRecord {
    pub webhook: Webhook,
    pub secrets: SealedSecrets,
    /// Failed attempts in a row (of the activity at the head of its queue).
    pub failures: i32,
    pub next_attempt_at: Option<OffsetDateTime>,
}

/// A failed attempt's consequence for its webhook.
#[derive(Debug, Clone, Copy)]
pub struct Failing {
    pub failures: i32,
    pub since: OffsetDateTime,
    pub next_attempt_at: OffsetDateTime,
}

#[async_trait::async_trait]
pub trait WebhookTx: Send {
    async fn insert_webhook(&mut self, w: &Webhook, secret: &[u8]) -> Result<()>;
    async fn webhook(&mut self, id: WebhookId) -> Result<Option<WebhookRecord>>;
    /// `webhook`, locking the row until the transaction ends (PostgreSQL; SQLite's writer is
    /// alone anyway).
    async fn lock_webhook(&mut self, id: WebhookId) -> Result<Option<WebhookRecord>>;
    /// The team's webhooks, oldest first.
    async fn team_webhooks(&mut self, team: TeamId) -> Result<Vec<Webhook>>;
    async fn count_webhooks(&mut self, team: TeamId) -> Result<i64>;
    /// Writes the settings (url, description, events, enabled, disabled reason, failing since,
    /// updated at); with `reset`, also forgets the failures (a re-enable). Disabling frees the
    /// lease, so that enabling it again is claimed at the next poll. False if it is gone.
    async fn update_webhook(&mut self, w: &Webhook, reset: bool) -> Result<bool>;
    async fn set_webhook_secrets(
        &mut self,
        id: WebhookId,
        secrets: &SealedSecrets,
        at: OffsetDateTime,
    ) -> Result<bool>;
    async fn set_delivered_seq(&mut self, id: WebhookId, seq: i64) -> Result<()>;
    async fn delete_webhook(&mut self, id: WebhookId) -> Result<bool>;

    /// Takes (or renews) the lease of up to `limit` enabled webhooks that no other instance
    /// holds at `now`, until `until`; returns every webhook `owner` holds after it.
    async fn claim_webhooks(
        &mut self,
        owner: Uuid,
        now: OffsetDateTime,
        until: OffsetDateTime,
        limit: i64,
    ) -> Result<Vec<WebhookRecord>>;
    /// Whether an enabled webhook has no current lease at `now` (one to claim).
    async fn unclaimed_webhooks(&mut self, now: OffsetDateTime) -> Result<bool>;
    /// Gives up `owner`'s leases (at shutdown), so that another instance takes them at once.
    async fn release_webhooks(&mut self, owner: Uuid) -> Result<()>;
    /// Moves the cursor to `seq` (never back) and clears the failures, if `owner` still holds
    /// the lease of the enabled webhook; false otherwise (stop delivering it).
    async fn webhook_delivered(&mut self, id: WebhookId, owner: Uuid, seq: i64) -> Result<bool>;
    /// Records a failed attempt's consequence, under the same condition.
    async fn webhook_failing(&mut self, id: WebhookId, owner: Uuid, f: Failing) -> Result<bool>;

    async fn insert_delivery(&mut self, d: &Delivery) -> Result<()>;
    /// The webhook's attempts, newest first, before `before` (a delivery id).
    async fn deliveries(
        &mut self,
        webhook: WebhookId,
        before: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<Delivery>>;
    /// Deletes all but the webhook's `keep` most recent attempts.
    async fn prune_deliveries(&mut self, webhook: WebhookId, keep: i64) -> Result<u64>;
    async fn count_disabled_webhooks(&mut self) -> Result<i64>;
}

row! {
    pub(super) struct WebhookRow {
        id: WebhookId,
        team_id: TeamId,
        url: String,
        description: String,
        events: String,
        enabled: bool,
        delivered_seq: i64,
        secret: Vec<u8>,
        previous_secret: Option<Vec<u8>>,
        previous_secret_until: Option<OffsetDateTime>,
        created_by: UserId,
        created_at: OffsetDateTime,
        updated_at: OffsetDateTime,
        failures: i32,
        failing_since: Option<OffsetDateTime>,
        next_attempt_at: Option<OffsetDateTime>,
        disabled_reason: Option<String>,
    }
}

/// `SELECT webhook_columns!() FROM webhooks ...`: the columns of a `WebhookRow`.
macro_rules! webhook_columns {
    () => {
        "id, team_id, url, description, events, enabled, delivered_seq, secret, \
         previous_secret, previous_secret_until, created_by, created_at, updated_at, failures, \
         failing_since, next_attempt_at, disabled_reason"
    };
}
pub(super) use webhook_columns;

impl TryFrom<WebhookRow> for WebhookRecord {
    type Error = StoreError;
    fn try_from(r: WebhookRow) -> Result<Self, StoreError> {
        let events: Vec<String> = serde_json::from_str(&r.events)
            .map_err(|_| StoreError::Corrupt(format!("webhook events {:?}", r.events)))?;
        Ok(WebhookRecord {
            webhook: Webhook {
                id: r.id,
                team_id: r.team_id,
                url: r.url,
                description: r.description,
                events,
                enabled: r.enabled,
                cursor: r.delivered_seq,
                created_at: r.created_at,
                updated_at: r.updated_at,
                created_by_user_id: r.created_by,
                failing_since: r.failing_since,
                disabled_reason: r.disabled_reason,
                previous_secret_expires_at: r.previous_secret.as_ref().and(r.previous_secret_until),
            },
            secrets: SealedSecrets {
                current: r.secret,
                previous: r.previous_secret,
                previous_until: r.previous_secret_until,
            },
            failures: r.failures,
            next_attempt_at: r.next_attempt_at,
        })
    }
}

row! {
    pub(super) struct DeliveryRow {
        webhook_id: WebhookId,
        id: Uuid,
        seq: Option<i64>,
        message_id: String,
        attempt: i32,
        attempted_at: OffsetDateTime,
        status: Option<i32>,
        latency_ms: i64,
        ok: bool,
        error: Option<String>,
    }
}

impl From<DeliveryRow> for Delivery {
    fn from(r: DeliveryRow) -> Self {
        Delivery {
            id: r.id,
            webhook_id: r.webhook_id,
            seq: r.seq,
            message_id: r.message_id,
            attempt: r.attempt,
            attempted_at: r.attempted_at,
            status: r.status,
            latency_ms: r.latency_ms,
            ok: r.ok,
            error: r.error,
        }
    }
}

/// `Store::webhook_now` for either driver's pool.
macro_rules! webhook_now {
    ($pool:expr, $id:expr) => {{
        let row: Option<$crate::store::webhooks::WebhookRow> = sqlx::query_as(concat!(
            "SELECT ",
            $crate::store::webhooks::webhook_columns!(),
            " FROM webhooks WHERE id = $1"
        ))
        .bind($id)
        .fetch_optional($pool)
        .await?;
        row.map(TryInto::try_into).transpose()
    }};
}
pub(super) use webhook_now;

pub(super) fn events_json(w: &Webhook) -> Result<String> {
    Ok(serde_json::to_string(&w.events)?)
}

macro_rules! impl_webhook_tx {
    ($tx:ident, $lock_row:literal, $($api:ident)::+) => {
        const _: () = {
            use time::OffsetDateTime;
            use uuid::Uuid;
            use $crate::domain::webhook::{Delivery, Webhook};
            use $crate::domain::{TeamId, WebhookId};
            use $crate::store::webhooks::*;
            use $crate::store::Result;
            // The query API of the driver: sqlx's, or the SQLite writer's.
            use $crate::store::$($api)::+ as api;
            use $crate::store::sql::Heavy as _;

            #[async_trait::async_trait]
            impl $crate::store::webhooks::WebhookTx for $tx {
                async fn insert_webhook(&mut self, w: &Webhook, secret: &[u8]) -> Result<()> {
                    api::query(
                        "INSERT INTO webhooks (id, team_id, url, description, events, enabled, \
                         delivered_seq, secret, created_by, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    )
                    .bind(w.id)
                    .bind(w.team_id)
                    .bind(&w.url)
                    .bind(&w.description)
                    .bind(events_json(w)?)
                    .bind(w.enabled)
                    .bind(w.cursor)
                    .bind(secret)
                    .bind(w.created_by_user_id)
                    .bind(w.created_at)
                    .bind(w.updated_at)
                    .execute(self.exec())
                    .await?;
                    Ok(())
                }

                async fn webhook(&mut self, id: WebhookId) -> Result<Option<WebhookRecord>> {
                    let row: Option<WebhookRow> = api::query_as(concat!(
                        "SELECT ", webhook_columns!(), " FROM webhooks WHERE id = $1"
                    ))
                    .bind(id)
                    .fetch_optional(self.exec())
                    .await?;
                    row.map(TryInto::try_into).transpose()
                }

                async fn lock_webhook(&mut self, id: WebhookId) -> Result<Option<WebhookRecord>> {
                    // Webhook rows are also locked by the deliverer, across teams.
                    self.holds_shared_rows();
                    let row: Option<WebhookRow> = api::query_as(concat!(
                        "SELECT ", webhook_columns!(), " FROM webhooks WHERE id = $1", $lock_row
                    ))
                    .bind(id)
                    .fetch_optional(self.exec())
                    .await?;
                    row.map(TryInto::try_into).transpose()
                }

                async fn team_webhooks(&mut self, team: TeamId) -> Result<Vec<Webhook>> {
                    let rows: Vec<WebhookRow> = api::query_as(concat!(
                        "SELECT ", webhook_columns!(),
                        " FROM webhooks WHERE team_id = $1 ORDER BY id LIMIT 1000"
                    ))
                    .bind(team)
                    .fetch_all(self.exec())
                    .await?;
                    rows.into_iter()
                        .map(|r| WebhookRecord::try_from(r).map(|r| r.webhook))
                        .collect()
                }

                async fn count_webhooks(&mut self, team: TeamId) -> Result<i64> {
                    let (n,): (i64,) =
                        api::query_as("SELECT COUNT(*) FROM webhooks WHERE team_id = $1")
                            .bind(team)
                            .fetch_one(self.exec())
                            .await?;
                    Ok(n)
                }

                async fn update_webhook(&mut self, w: &Webhook, reset: bool) -> Result<bool> {
                    let done = api::query(
                        "UPDATE webhooks SET url = $2, description = $3, events = $4, \
                         enabled = $5, disabled_reason = $6, failing_since = $7, \
                         updated_at = $8, \
                         failures = CASE WHEN $9 THEN 0 ELSE failures END, \
                         next_attempt_at = CASE WHEN $9 THEN NULL ELSE next_attempt_at END, \
                         lease_owner = CASE WHEN $5 THEN lease_owner ELSE NULL END, \
                         lease_until = CASE WHEN $5 THEN lease_until ELSE NULL END \
                         WHERE id = $1",
                    )
                    .bind(w.id)
                    .bind(&w.url)
                    .bind(&w.description)
                    .bind(events_json(w)?)
                    .bind(w.enabled)
                    .bind(&w.disabled_reason)
                    .bind(w.failing_since)
                    .bind(w.updated_at)
                    .bind(reset)
                    .execute(self.exec())
                    .await?;
                    Ok(done.rows_affected() > 0)
                }

                async fn set_webhook_secrets(
                    &mut self,
                    id: WebhookId,
                    s: &SealedSecrets,
                    at: OffsetDateTime,
                ) -> Result<bool> {
                    let done = api::query(
                        "UPDATE webhooks SET secret = $2, previous_secret = $3, \
                         previous_secret_until = $4, updated_at = $5 WHERE id = $1",
                    )
                    .bind(id)
                    .bind(&s.current)
                    .bind(&s.previous)
                    .bind(s.previous_until)
                    .bind(at)
                    .execute(self.exec())
                    .await?;
                    Ok(done.rows_affected() > 0)
                }

                async fn set_delivered_seq(&mut self, id: WebhookId, seq: i64) -> Result<()> {
                    api::query("UPDATE webhooks SET delivered_seq = $2 WHERE id = $1")
                        .bind(id)
                        .bind(seq)
                        .execute(self.exec())
                        .await?;
                    Ok(())
                }

                async fn delete_webhook(&mut self, id: WebhookId) -> Result<bool> {
                    api::query("DELETE FROM webhook_deliveries WHERE webhook_id = $1")
                        .bind(id)
                        .heavy()
                        .execute(self.exec())
                        .await?;
                    let done = api::query("DELETE FROM webhooks WHERE id = $1")
                        .bind(id)
                        .execute(self.exec())
                        .await?;
                    Ok(done.rows_affected() > 0)
                }

                async fn claim_webhooks(
                    &mut self,
                    owner: Uuid,
                    now: OffsetDateTime,
                    until: OffsetDateTime,
                    limit: i64,
                ) -> Result<Vec<WebhookRecord>> {
                    // Renew what this instance holds, then take free or expired leases. The
                    // conditions are repeated outside the locking subquery: a row another
                    // instance claimed meanwhile is read again after its commit.
                    // Rows are locked in id order here and below: a renewal and another
                    // instance's claim cannot wait on each other in a cycle (PostgreSQL).
                    api::query(concat!(
                        "UPDATE webhooks SET lease_until = $2 WHERE id IN \
                         (SELECT id FROM webhooks WHERE lease_owner = $1 AND enabled ORDER BY id",
                        $lock_row,
                        ") AND lease_owner = $1"
                    ))
                    .bind(owner)
                    .bind(until)
                    .execute(self.exec())
                    .await?;
                    api::query(concat!(
                        "UPDATE webhooks SET lease_owner = $1, lease_until = $2 \
                         WHERE enabled AND (lease_owner IS NULL OR lease_until < $3) \
                         AND id IN (SELECT id FROM webhooks WHERE enabled \
                         AND (lease_owner IS NULL OR lease_until < $3) ORDER BY id LIMIT $4",
                        $lock_row,
                        ")"
                    ))
                    .bind(owner)
                    .bind(until)
                    .bind(now)
                    .bind(limit)
                    .execute(self.exec())
                    .await?;
                    let rows: Vec<WebhookRow> = api::query_as(concat!(
                        "SELECT ", webhook_columns!(),
                        " FROM webhooks WHERE lease_owner = $1 AND enabled ORDER BY id"
                    ))
                    .bind(owner)
                    .fetch_all(self.exec())
                    .await?;
                    rows.into_iter().map(TryInto::try_into).collect()
                }

                async fn unclaimed_webhooks(&mut self, now: OffsetDateTime) -> Result<bool> {
                    let row: Option<(WebhookId,)> = api::query_as(
                        "SELECT id FROM webhooks WHERE enabled \
                         AND (lease_owner IS NULL OR lease_until < $1) LIMIT 1",
                    )
                    .bind(now)
                    .fetch_optional(self.exec())
                    .await?;
                    Ok(row.is_some())
                }

                async fn release_webhooks(&mut self, owner: Uuid) -> Result<()> {
                    api::query(
                        "UPDATE webhooks SET lease_owner = NULL, lease_until = NULL \
                         WHERE lease_owner = $1",
                    )
                    .bind(owner)
                    .execute(self.exec())
                    .await?;
                    Ok(())
                }

                async fn webhook_delivered(
                    &mut self,
                    id: WebhookId,
                    owner: Uuid,
                    seq: i64,
                ) -> Result<bool> {
                    let done = api::query(
                        "UPDATE webhooks SET \
                         delivered_seq = CASE WHEN delivered_seq < $3 THEN $3 ELSE delivered_seq END, \
                         failures = 0, failing_since = NULL, next_attempt_at = NULL \
                         WHERE id = $1 AND lease_owner = $2 AND enabled",
                    )
                    .bind(id)
                    .bind(owner)
                    .bind(seq)
                    .execute(self.exec())
                    .await?;
                    Ok(done.rows_affected() > 0)
                }

                async fn webhook_failing(
                    &mut self,
                    id: WebhookId,
                    owner: Uuid,
                    f: Failing,
                ) -> Result<bool> {
                    let done = api::query(
                        "UPDATE webhooks SET failures = $3, failing_since = $4, \
                         next_attempt_at = $5 \
                         WHERE id = $1 AND lease_owner = $2 AND enabled",
                    )
                    .bind(id)
                    .bind(owner)
                    .bind(f.failures)
                    .bind(f.since)
                    .bind(f.next_attempt_at)
                    .execute(self.exec())
                    .await?;
                    Ok(done.rows_affected() > 0)
                }

                async fn insert_delivery(&mut self, d: &Delivery) -> Result<()> {
                    api::query(
                        "INSERT INTO webhook_deliveries (webhook_id, id, seq, message_id, \
                         attempt, attempted_at, status, latency_ms, ok, error) \
                         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 \
                         WHERE EXISTS (SELECT 1 FROM webhooks WHERE id = $1)",
                    )
                    .bind(d.webhook_id)
                    .bind(d.id)
                    .bind(d.seq)
                    .bind(&d.message_id)
                    .bind(d.attempt)
                    .bind(d.attempted_at)
                    .bind(d.status)
                    .bind(d.latency_ms)
                    .bind(d.ok)
                    .bind(&d.error)
                    .execute(self.exec())
                    .await?;
                    Ok(())
                }

                async fn deliveries(
                    &mut self,
                    webhook: WebhookId,
                    before: Option<Uuid>,
                    limit: i64,
                ) -> Result<Vec<Delivery>> {
                    let rows: Vec<DeliveryRow> = api::query_as(
                        "SELECT webhook_id, id, seq, message_id, attempt, attempted_at, status, \
                         latency_ms, ok, error FROM webhook_deliveries \
                         WHERE webhook_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
                    )
                    .bind(webhook)
                    .bind(before.unwrap_or(Uuid::max()))
                    .bind(limit)
                    .fetch_all(self.exec())
                    .await?;
                    Ok(rows.into_iter().map(Into::into).collect())
                }

                async fn prune_deliveries(&mut self, webhook: WebhookId, keep: i64) -> Result<u64> {
                    let done = api::query(
                        "DELETE FROM webhook_deliveries WHERE webhook_id = $1 AND id < \
                         (SELECT id FROM webhook_deliveries WHERE webhook_id = $1 \
                         ORDER BY id DESC LIMIT 1 OFFSET $2)",
                    )
                    .bind(webhook)
                    .bind(keep - 1)
                    .heavy()
                    .execute(self.exec())
                    .await?;
                    Ok(done.rows_affected())
                }

                async fn count_disabled_webhooks(&mut self) -> Result<i64> {
                    let (n,): (i64,) =
                        api::query_as("SELECT COUNT(*) FROM webhooks WHERE NOT enabled")
                            .fetch_one(self.exec())
                            .await?;
                    Ok(n)
                }
            }
        };
    };
}
pub(super) use impl_webhook_tx;
