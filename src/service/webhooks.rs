//! A team's webhooks: created, changed, rotated, tested and deleted by its owners and admins.
//! Every change is an activity of the team's log (`webhook.*`, read by owners and admins only)
//! and never carries the secret, which the caller sees once, when it is made.

use std::time::Duration;

use bytes::Bytes;
use uuid::Uuid;

use super::{
    OwnedBy, Page, PageRequest, Result, ServiceError, Services, now, page_by_id, role_in, seq_of,
};
use crate::domain::activity::{ActivityData, ActivityDraft};
use crate::domain::rules::Action;
use crate::domain::webhook::{self, Delivery, EventFilter, Webhook};
use crate::domain::*;
use crate::store::{SealedSecrets, Tx, WebhookRecord};
use crate::webhook::secret::SecretError;
use crate::webhook::{Outcome, Secret, SecretKey, Sender};

/// How long a rotated-out secret keeps signing beside the new one.
pub const PREVIOUS_SECRET_TTL: Duration = Duration::from_secs(24 * 3600);

/// What the server allows and uses for webhooks.
pub struct WebhookPolicy {
    pub key: SecretKey,
    pub per_team: u32,
    pub allow_private: bool,
    pub sender: Sender,
    /// Tells the deliverer of this instance's commits.
    pub wake: crate::webhook::deliverer::Wake,
}

impl WebhookPolicy {
    /// A policy for unit tests that never send a webhook.
    #[cfg(test)]
    pub fn for_tests() -> Self {
        Self {
            key: SecretKey::derived_from(b"unit tests").expect("a key"),
            per_team: 10,
            allow_private: true,
            sender: Sender::new(&crate::webhook::SenderSettings {
                allow_private: true,
                timeout: Duration::from_secs(1),
                connect_timeout: Duration::from_secs(1),
            })
            .expect("a client"),
            wake: Default::default(),
        }
    }
}

/// A webhook as asked for by `POST /teams/{teamId}/webhooks`.
#[derive(Debug, Clone)]
pub struct NewWebhook {
    pub url: String,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
}

/// A `PATCH /webhooks/{id}`: the fields given change.
#[derive(Debug, Clone, Default)]
pub struct WebhookPatch {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
}

/// A webhook with its secret in plain text: only the answer of a create or a rotation. Its
/// `Debug` leaves the secret out.
#[derive(Clone)]
pub struct WithSecret {
    pub webhook: Webhook,
    pub secret: String,
}

impl std::fmt::Debug for WithSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithSecret")
            .field("webhook", &self.webhook)
            .field("secret", &"…")
            .finish()
    }
}

impl From<SecretError> for ServiceError {
    fn from(e: SecretError) -> Self {
        ServiceError::Internal(e.to_string())
    }
}

impl Services {
    pub async fn create_webhook(
        &self,
        actor: UserId,
        team: TeamId,
        new: NewWebhook,
    ) -> Result<WithSecret> {
        let policy = &self.webhooks;
        // Who may is checked before the URL is looked up: the answer says something of what a
        // name resolves to, which is not for outsiders.
        {
            let mut tx = self.store.read().await?;
            role_in(&mut *tx, team, actor)
                .await?
                .ensure(Action::ManageWebhooks)?;
        }
        let url = self.checked_url(&new.url).await?;
        let events = match new.events {
            Some(p) => EventFilter::parse(p)?,
            None => EventFilter::all(),
        };
        let description = new.description.unwrap_or_default();
        webhook::check_description(&description)?;
        let mut tx = self.write_in(team).await?;
        role_in(&mut *tx, team, actor)
            .await?
            .ensure(Action::ManageWebhooks)?;
        let at = now();
        let id = WebhookId::from(Uuid::now_v7());
        let secret = Secret::generate()?;
        let mut created = Webhook {
            id,
            team_id: team,
            url,
            description,
            events: events.into_patterns(),
            enabled: true,
            cursor: seq_of(&mut *tx, team).await?,
            created_at: at,
            updated_at: at,
            created_by_user_id: actor,
            failing_since: None,
            disabled_reason: None,
            previous_secret_expires_at: None,
        };
        tx.insert_webhook(&created, &policy.key.seal(id, &secret)?)
            .await?;
        let draft = ActivityDraft::new(
            ActivityData::WebhookCreated {
                webhook: created.clone(),
            },
            actor,
            at,
        );
        let entries = tx.append(team, vec![draft]).await?;
        // Counted once `append` holds the team's row (it serializes the team's writers): two
        // creates racing cannot both commit over the cap. The new webhook is one of the count.
        webhook::check_capacity(tx.count_webhooks(team).await? - 1, policy.per_team)?;
        // The webhook starts just before its own creation (its first delivery, if its events
        // ask for it), whatever committed between the read above and the append.
        if let Some(first) = entries.first()
            && first.seq - 1 != created.cursor
        {
            created.cursor = first.seq - 1;
            tx.set_delivered_seq(id, created.cursor).await?;
        }
        self.commit_appended(tx, entries).await?;
        Ok(WithSecret {
            webhook: created,
            secret: secret.to_whsec(),
        })
    }

    pub async fn team_webhooks(&self, actor: UserId, team: TeamId) -> Result<Page<Webhook>> {
        let mut tx = self.store.read().await?;
        role_in(&mut *tx, team, actor)
            .await?
            .ensure(Action::ManageWebhooks)?;
        Ok(Page {
            items: tx.team_webhooks(team).await?,
            next_cursor: None,
        })
    }

    pub async fn webhook(&self, actor: UserId, id: WebhookId) -> Result<Webhook> {
        let mut tx = self.store.read().await?;
        Ok(managed(&mut *tx, actor, id, false).await?.webhook)
    }

    pub async fn update_webhook(
        &self,
        actor: UserId,
        id: WebhookId,
        patch: WebhookPatch,
    ) -> Result<Webhook> {
        {
            let mut tx = self.store.read().await?;
            managed(&mut *tx, actor, id, false).await?;
        }
        let url = match &patch.url {
            Some(u) => Some(self.checked_url(u).await?),
            None => None,
        };
        let events = patch.events.map(EventFilter::parse).transpose()?;
        if let Some(d) = &patch.description {
            webhook::check_description(d)?;
        }
        let mut tx = self.write_for(OwnedBy::Webhook(id)).await?;
        let mut w = managed(&mut *tx, actor, id, true).await?.webhook;
        let before = w.clone();
        let retarget = url.as_ref().is_some_and(|u| *u != w.url);
        if let Some(u) = url {
            w.url = u;
        }
        if let Some(e) = events {
            w.events = e.into_patterns();
        }
        if let Some(d) = patch.description {
            w.description = d;
        }
        // `enabled: true` on a disabled webhook resumes it; on a failing one it retries now.
        let enable = patch.enabled == Some(true) && (!w.enabled || w.failing_since.is_some());
        if let Some(on) = patch.enabled {
            w.enabled = on;
            // A person's choice replaces the server's reason either way.
            w.disabled_reason = None;
        }
        // Re-enabled or pointed elsewhere: earlier failures say nothing about what comes next.
        let reset = enable || retarget;
        if reset {
            w.failing_since = None;
        }
        if w == before {
            // Committed though nothing changed: see `import_tasks`.
            tx.commit().await?;
            return Ok(w);
        }
        w.updated_at = now();
        if !tx.update_webhook(&w, reset).await? {
            return Err(DomainError::NotFound.into());
        }
        let draft = ActivityDraft::new(
            ActivityData::WebhookUpdated { webhook: w.clone() },
            actor,
            w.updated_at,
        );
        self.commit(tx, w.team_id, vec![draft], Vec::new()).await?;
        Ok(w)
    }

    pub async fn delete_webhook(&self, actor: UserId, id: WebhookId) -> Result<()> {
        let mut tx = self.write_for(OwnedBy::Webhook(id)).await?;
        let w = managed(&mut *tx, actor, id, true).await?.webhook;
        if !tx.delete_webhook(id).await? {
            return Err(DomainError::NotFound.into());
        }
        let draft = ActivityDraft::new(
            ActivityData::WebhookDeleted { webhook_id: id },
            actor,
            now(),
        );
        self.commit(tx, w.team_id, vec![draft], Vec::new()).await?;
        Ok(())
    }

    /// A new secret; the current one keeps signing beside it for `PREVIOUS_SECRET_TTL`.
    pub async fn rotate_webhook_secret(&self, actor: UserId, id: WebhookId) -> Result<WithSecret> {
        let mut tx = self.write_for(OwnedBy::Webhook(id)).await?;
        let record = managed(&mut *tx, actor, id, true).await?;
        let at = now();
        let secret = Secret::generate()?;
        let sealed = SealedSecrets {
            current: self.webhooks.key.seal(id, &secret)?,
            previous: Some(record.secrets.current),
            previous_until: Some(at + PREVIOUS_SECRET_TTL),
        };
        if !tx.set_webhook_secrets(id, &sealed, at).await? {
            return Err(DomainError::NotFound.into());
        }
        let mut w = record.webhook;
        w.updated_at = at;
        w.previous_secret_expires_at = sealed.previous_until;
        let draft = ActivityDraft::new(
            ActivityData::WebhookUpdated { webhook: w.clone() },
            actor,
            at,
        );
        self.commit(tx, w.team_id, vec![draft], Vec::new()).await?;
        Ok(WithSecret {
            webhook: w,
            secret: secret.to_whsec(),
        })
    }

    /// Sends one signed ping now and records it with the webhook's deliveries.
    pub async fn ping_webhook(&self, actor: UserId, id: WebhookId) -> Result<Delivery> {
        let record = {
            let mut tx = self.store.read().await?;
            managed(&mut *tx, actor, id, false).await?
        };
        let w = &record.webhook;
        let at = now();
        let body = serde_json::json!({
            "type": "webhook.ping",
            "webhookId": w.id,
            "teamId": w.team_id,
            "ts": crate::domain::model::timestamp::format(&at),
        });
        let message_id = format!("ping_{}", Uuid::now_v7().simple());
        let outcome = match self.signing_secrets(&record, at) {
            Ok(secrets) => {
                self.webhooks
                    .sender
                    .send(&w.url, &message_id, Bytes::from(body.to_string()), &secrets)
                    .await
            }
            Err(e) => Outcome {
                status: None,
                latency: Duration::ZERO,
                error: Some(e.to_string()),
            },
        };
        let delivery = attempt_record(w.id, None, message_id, 1, at, &outcome);
        let mut tx = self.store.write().await?;
        tx.insert_delivery(&delivery).await?;
        tx.prune_deliveries(w.id, crate::webhook::deliverer::KEEP_ATTEMPTS)
            .await?;
        tx.commit().await?;
        Ok(delivery)
    }

    pub async fn webhook_deliveries(
        &self,
        actor: UserId,
        id: WebhookId,
        req: &PageRequest,
    ) -> Result<Page<Delivery>> {
        let page = req.after_id::<Uuid>()?;
        let mut tx = self.store.read().await?;
        managed(&mut *tx, actor, id, false).await?;
        let rows = tx.deliveries(id, page.after, page.limit).await?;
        Ok(page_by_id(rows, page, |d: &Delivery| d.id))
    }

    /// The server gives up on a webhook (its receiver answered 410, or failed for too long):
    /// disabled, with the reason, and a `webhook.disabled` activity. Nothing if it is already
    /// disabled or gone.
    pub async fn disable_webhook(&self, id: WebhookId, reason: String) -> Result<()> {
        let Some(team) = self.team_of(OwnedBy::Webhook(id)).await? else {
            return Ok(());
        };
        let mut tx = self.write_in(team).await?;
        let Some(record) = tx.lock_webhook(id).await? else {
            tx.commit().await?;
            return Ok(());
        };
        let mut w = record.webhook;
        if !w.enabled {
            // Committed though nothing changed: see `import_tasks`.
            tx.commit().await?;
            return Ok(());
        }
        w.enabled = false;
        w.disabled_reason = Some(reason.clone());
        w.updated_at = now();
        tx.update_webhook(&w, false).await?;
        let draft = ActivityDraft::new(
            ActivityData::WebhookDisabled {
                webhook: w.clone(),
                reason,
            },
            // Nobody acted: the server did. The nil id says so.
            UserId::from(Uuid::nil()),
            w.updated_at,
        );
        self.commit(tx, w.team_id, vec![draft], Vec::new()).await?;
        Ok(())
    }

    /// The secrets that sign a webhook's requests at `at`: the current one, and the previous
    /// one until it expires.
    pub fn signing_secrets(
        &self,
        record: &WebhookRecord,
        at: time::OffsetDateTime,
    ) -> Result<Vec<Secret>, SecretError> {
        let key = &self.webhooks.key;
        let id = record.webhook.id;
        let mut secrets = vec![key.open(id, &record.secrets.current)?];
        if let (Some(previous), Some(until)) =
            (&record.secrets.previous, record.secrets.previous_until)
            && at < until
        {
            secrets.push(key.open(id, previous)?);
        }
        Ok(secrets)
    }

    /// The URL checks, including what the name resolves to now (it is checked again at each
    /// connect: this only refuses early what would never be delivered).
    async fn checked_url(&self, url: &str) -> Result<String> {
        let allow_private = self.webhooks.allow_private;
        let target = webhook::check_url(url, allow_private)?;
        if allow_private || target.ip.is_some() {
            return Ok(target.url);
        }
        let refused = || {
            DomainError::invalid(
                "url",
                "must not point at a loopback, private, link-local or metadata address",
            )
        };
        let host = target.name.clone().ok_or_else(refused)?;
        let host = host.trim_end_matches('.');
        if host.eq_ignore_ascii_case("localhost")
            || host.to_ascii_lowercase().ends_with(".localhost")
        {
            return Err(refused().into());
        }
        let lookup =
            tokio::time::timeout(Duration::from_secs(3), tokio::net::lookup_host((host, 443)))
                .await;
        // A name that does not resolve now may later: the connect-time check decides then.
        if let Ok(Ok(addrs)) = lookup {
            let addrs: Vec<_> = addrs.collect();
            if !addrs.is_empty() && addrs.iter().all(|a| !webhook::is_public(a.ip())) {
                return Err(refused().into());
            }
        }
        Ok(target.url)
    }
}

/// The webhook, if the caller may manage it: not found for a non-member (or a webhook that is
/// gone), forbidden for a member below admin. With `lock`, its row is locked until the
/// transaction ends (every change reads and writes it whole: two must not interleave).
async fn managed(
    tx: &mut dyn Tx,
    actor: UserId,
    id: WebhookId,
    lock: bool,
) -> Result<WebhookRecord> {
    let record = if lock {
        tx.lock_webhook(id).await?
    } else {
        tx.webhook(id).await?
    };
    let record = record.ok_or(DomainError::NotFound)?;
    role_in(tx, record.webhook.team_id, actor)
        .await?
        .ensure(Action::ManageWebhooks)?;
    Ok(record)
}

/// The record of one attempt.
pub fn attempt_record(
    webhook: WebhookId,
    seq: Option<i64>,
    message_id: String,
    attempt: i32,
    at: time::OffsetDateTime,
    outcome: &Outcome,
) -> Delivery {
    Delivery {
        id: Uuid::now_v7(),
        webhook_id: webhook,
        seq,
        message_id,
        attempt,
        attempted_at: at,
        status: outcome.status.map(i32::from),
        latency_ms: i64::try_from(outcome.latency.as_millis()).unwrap_or(i64::MAX),
        ok: outcome.ok(),
        error: outcome.error.clone(),
    }
}
