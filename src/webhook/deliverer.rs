//! The delivery task: claims the leases of enabled webhooks, and runs one worker per webhook
//! held, which delivers the team's activities after the webhook's cursor in seq order, one at a
//! time (head of line: a failing activity is retried, with backoff, before any later one).
//!
//! The cursor moves only after the receiver said 2xx, in the same transaction that records the
//! attempt, and only while this instance holds the lease: a crash, a restart or a lost lease
//! resumes from the cursor, so an activity may be delivered twice but is never skipped. A worker
//! whose lease is gone (expired, webhook disabled or deleted) is stopped at the next claim.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::domain::activity::LogEntry;
use crate::domain::webhook::{self, EventFilter};
use crate::domain::{TeamId, WebhookId};
use crate::service::Services;
use crate::service::webhooks::attempt_record;
use crate::store::{Failing, StoreError, WebhookRecord};
use crate::supervisor::Supervisor;
use crate::telemetry;

/// Activities read from the log per step.
const READ_BATCH: i64 = 100;
/// Webhooks one instance delivers at most (each is one request at a time).
const MAX_HELD: i64 = 256;
/// Attempts kept per webhook for its deliveries list.
const KEEP_ATTEMPTS: i64 = 1000;
/// How often (in attempts) a worker trims its webhook's attempts.
const PRUNE_EVERY: u32 = 200;

#[derive(Debug, Clone)]
pub struct DelivererSettings {
    /// How long a claimed lease lasts; renewed every third of it.
    pub lease: Duration,
    /// How often the teams' seqs are read for activities committed on other instances.
    pub poll: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Failing without a success this long disables the webhook.
    pub disable_after: Duration,
}

/// Wakes the deliverer when this instance commits (others' commits are found by polling).
#[derive(Default)]
pub struct Wake(Notify);

impl Wake {
    pub fn committed(&self) {
        self.0.notify_one();
    }
}

/// This instance's delivery: its lease owner id, to give the leases up at shutdown.
pub struct Deliverer {
    owner: Uuid,
    services: Services,
}

impl Deliverer {
    /// Starts the delivery task under `tasks`.
    pub fn start(services: Services, settings: DelivererSettings, tasks: &Supervisor) -> Self {
        let owner = Uuid::new_v4();
        tasks.spawn("webhook delivery", run(services.clone(), settings, owner));
        Self { owner, services }
    }

    /// Gives up this instance's leases (call once the delivery task has stopped), so another
    /// instance takes its webhooks at its next claim instead of when the leases expire.
    pub async fn release(&self) {
        let released = async {
            let mut tx = self.services.store.write().await?;
            tx.release_webhooks(self.owner).await?;
            tx.commit().await
        };
        if let Err(e) = released.await {
            tracing::warn!(error = %e, "giving up the webhook leases failed (they will expire)");
        }
    }
}

/// What a worker is told at each claim and poll: its webhook as stored, and its team's seq.
#[derive(Clone)]
struct Assignment {
    record: Arc<WebhookRecord>,
    team_seq: i64,
}

/// A worker as the task keeps it: dropping `tx` stops the worker.
struct Running {
    /// Tells this worker from a later one of the same webhook.
    generation: u64,
    tx: watch::Sender<Assignment>,
}

async fn run(services: Services, settings: DelivererSettings, owner: Uuid) {
    let settings = Arc::new(settings);
    let mut workers: JoinSet<(WebhookId, u64)> = JoinSet::new();
    let mut generation = 0u64;
    let mut running: HashMap<WebhookId, Running> = HashMap::new();
    let mut records: HashMap<WebhookId, Arc<WebhookRecord>> = HashMap::new();
    let renew_every = settings.lease / 3;
    let mut next_claim = tokio::time::Instant::now();
    loop {
        // A lease to renew, or a webhook nobody holds (new, enabled again, or its holder gone).
        if tokio::time::Instant::now() >= next_claim || unclaimed(&services).await {
            next_claim = tokio::time::Instant::now() + renew_every;
            match claim(&services, owner, &settings).await {
                Ok(held) => {
                    records = held
                        .into_iter()
                        .map(|r| (r.webhook.id, Arc::new(r)))
                        .collect();
                    // Lease gone (taken over, disabled, deleted): stop its worker.
                    running.retain(|id, _| records.contains_key(id));
                }
                Err(e) => tracing::warn!(error = %e, "claiming webhook leases failed"),
            }
            gauge_disabled(&services).await;
        }
        let teams: Vec<TeamId> = {
            let mut t: Vec<TeamId> = records.values().map(|r| r.webhook.team_id).collect();
            t.sort_unstable();
            t.dedup();
            t
        };
        let seqs: HashMap<TeamId, i64> = match team_seqs(&services, &teams).await {
            Ok(s) => s.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "reading the teams' seqs for webhooks failed");
                HashMap::new()
            }
        };
        for (id, record) in &records {
            let team_seq = seqs
                .get(&record.webhook.team_id)
                .copied()
                .unwrap_or(record.webhook.cursor);
            let assignment = Assignment {
                record: record.clone(),
                team_seq,
            };
            match running.get(id) {
                Some(r) => {
                    r.tx.send_replace(assignment);
                }
                None => {
                    let (tx, rx) = watch::channel(assignment);
                    generation += 1;
                    running.insert(*id, Running { generation, tx });
                    let started = generation;
                    let worker = Worker {
                        services: services.clone(),
                        settings: settings.clone(),
                        owner,
                        id: *id,
                    };
                    workers.spawn(async move {
                        worker.run(rx).await;
                        (worker.id, started)
                    });
                }
            }
        }
        // A worker that ended (its webhook disabled, its lease lost) is forgotten; the next
        // claim starts another if the lease is still this instance's.
        while let Some(done) = workers.try_join_next() {
            match done {
                Ok((id, g)) => {
                    if running.get(&id).is_some_and(|r| r.generation == g) {
                        running.remove(&id);
                        // Not restarted before the next claim says the lease is still ours.
                        records.remove(&id);
                    }
                    if !running.contains_key(&id) {
                        metrics::gauge!(telemetry::WEBHOOK_BACKLOG, "webhook" => id.to_string())
                            .set(0.0);
                    }
                }
                Err(e) => tracing::error!(error = %e, "a webhook worker panicked"),
            }
        }
        let until_claim = next_claim.saturating_duration_since(tokio::time::Instant::now());
        tokio::select! {
            () = services.webhooks.wake.0.notified() => {}
            () = tokio::time::sleep(settings.poll.min(until_claim)) => {}
        }
    }
}

async fn claim(
    services: &Services,
    owner: Uuid,
    settings: &DelivererSettings,
) -> Result<Vec<WebhookRecord>, StoreError> {
    let now = OffsetDateTime::now_utc();
    let mut tx = services.store.write().await?;
    let held = tx
        .claim_webhooks(owner, now, now + settings.lease, MAX_HELD)
        .await?;
    tx.commit().await?;
    Ok(held)
}

async fn unclaimed(services: &Services) -> bool {
    let now = OffsetDateTime::now_utc();
    let found = async { services.store.read().await?.unclaimed_webhooks(now).await }.await;
    found.unwrap_or_else(|e| {
        tracing::debug!(error = %e, "looking for unclaimed webhooks failed");
        false
    })
}

async fn team_seqs(
    services: &Services,
    teams: &[TeamId],
) -> Result<Vec<(TeamId, i64)>, StoreError> {
    if teams.is_empty() {
        return Ok(Vec::new());
    }
    services.store.read().await?.last_seqs(teams).await
}

async fn gauge_disabled(services: &Services) {
    let count = async { services.store.read().await?.count_disabled_webhooks().await }.await;
    match count {
        Ok(n) => metrics::gauge!(telemetry::WEBHOOKS_DISABLED).set(n as f64),
        Err(e) => tracing::debug!(error = %e, "counting disabled webhooks failed"),
    }
}

struct Worker {
    services: Services,
    settings: Arc<DelivererSettings>,
    owner: Uuid,
    id: WebhookId,
}

/// Why a worker stops.
enum Stop {
    /// The lease is no longer this instance's, or the webhook was disabled or deleted.
    Released,
}

impl Worker {
    async fn run(&self, mut rx: watch::Receiver<Assignment>) {
        let start = rx.borrow_and_update().clone();
        let mut cursor = start.record.webhook.cursor;
        let mut failures = start.record.failures.max(0) as u32;
        let mut failing_since = start.record.webhook.failing_since;
        // A retry the previous holder scheduled is honoured.
        if let Some(at) = start.record.next_attempt_at {
            let wait = at - OffsetDateTime::now_utc();
            if wait.is_positive() {
                let wait = Duration::try_from(wait).unwrap_or_default();
                if sleep_or_closed(&mut rx, wait).await.is_err() {
                    return;
                }
            }
        }
        let mut attempts: u32 = 0;
        loop {
            let team_seq = rx.borrow_and_update().team_seq;
            let backlog = (team_seq - cursor).max(0);
            metrics::gauge!(telemetry::WEBHOOK_BACKLOG, "webhook" => self.id.to_string())
                .set(backlog as f64);
            if team_seq <= cursor {
                if rx.changed().await.is_err() {
                    return;
                }
                continue;
            }
            // Read again at each step: a change of url, events or secret applies to the next
            // activity, and a disabled or deleted webhook stops here.
            let record = match self.current().await {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, webhook = %self.id, "reading a webhook failed");
                    if sleep_or_closed(&mut rx, self.settings.retry_base)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
            };
            let batch = match self.read(record.webhook.team_id, cursor, team_seq).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, webhook = %self.id, "reading the log for a webhook failed");
                    if sleep_or_closed(&mut rx, self.settings.retry_base)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
            };
            let Some(first) = batch.first() else {
                // The log ends below what the team's seq said (a pruned tail cannot be: the
                // latest is always kept); look again at the next poll.
                if rx.changed().await.is_err() {
                    return;
                }
                continue;
            };
            if first.seq != cursor + 1 {
                // Pruned by the log's retention while the webhook was disabled or failing.
                tracing::warn!(webhook = %self.id, from = cursor + 1, to = first.seq - 1, "activities were pruned before this webhook delivered them");
            }
            let filter = EventFilter::from_stored(record.webhook.events.clone());
            let mut skipped_to = None;
            for entry in &batch {
                if !filter.matches(entry.route.kind.as_str()) {
                    skipped_to = Some(entry.seq);
                    continue;
                }
                match self
                    .deliver(
                        &mut rx,
                        &record,
                        entry,
                        &mut failures,
                        &mut failing_since,
                        &mut attempts,
                    )
                    .await
                {
                    Ok(()) => {
                        cursor = entry.seq;
                        skipped_to = None;
                    }
                    Err(Stop::Released) => return,
                }
            }
            if let Some(seq) = skipped_to {
                match self.advance(seq).await {
                    Ok(true) => cursor = seq,
                    Ok(false) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, webhook = %self.id, "moving a webhook's cursor failed");
                        if sleep_or_closed(&mut rx, self.settings.retry_base)
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// The webhook as stored, if it is still enabled.
    async fn current(&self) -> Result<Option<WebhookRecord>, StoreError> {
        let record = self.services.store.read().await?.webhook(self.id).await?;
        Ok(record.filter(|r| r.webhook.enabled))
    }

    async fn read(&self, team: TeamId, after: i64, upto: i64) -> Result<Vec<LogEntry>, StoreError> {
        self.services
            .store
            .read()
            .await?
            .activities(team, after, upto, READ_BATCH)
            .await
    }

    async fn advance(&self, seq: i64) -> Result<bool, StoreError> {
        let mut tx = self.services.store.write().await?;
        let held = tx.webhook_delivered(self.id, self.owner, seq).await?;
        tx.commit().await?;
        Ok(held)
    }

    /// Delivers one activity, retrying until the receiver takes it; `Released` when the webhook
    /// is no longer this worker's to deliver.
    async fn deliver(
        &self,
        rx: &mut watch::Receiver<Assignment>,
        record: &WebhookRecord,
        entry: &LogEntry,
        failures: &mut u32,
        failing_since: &mut Option<OffsetDateTime>,
        attempts: &mut u32,
    ) -> Result<(), Stop> {
        let message_id = activity_id(&entry.json).unwrap_or_else(|| format!("seq_{}", entry.seq));
        let body = Bytes::copy_from_slice(entry.json.as_bytes());
        let mut attempt: i32 = 1;
        let mut record = record.clone();
        loop {
            if attempt > 1 {
                // A retry goes where the webhook points now (its owner may have fixed the url).
                match self.current().await {
                    Ok(Some(r)) => record = r,
                    Ok(None) => return Err(Stop::Released),
                    Err(e) => {
                        tracing::debug!(error = %e, webhook = %self.id, "re-reading a webhook failed")
                    }
                }
            }
            let at = crate::domain::model::timestamp::truncate(OffsetDateTime::now_utc());
            let outcome = match self.services.signing_secrets(&record, at) {
                Ok(secrets) => {
                    self.services
                        .webhooks
                        .sender
                        .send(&record.webhook.url, &message_id, body.clone(), &secrets)
                        .await
                }
                Err(e) => crate::webhook::Outcome {
                    status: None,
                    latency: Duration::ZERO,
                    error: Some(e.to_string()),
                },
            };
            metrics::counter!(telemetry::WEBHOOK_ATTEMPTS).increment(1);
            *attempts += 1;
            let delivery = attempt_record(
                self.id,
                Some(entry.seq),
                message_id.clone(),
                attempt,
                at,
                &outcome,
            );
            let prune = attempts.is_multiple_of(PRUNE_EVERY);
            if outcome.ok() {
                match self.record(&delivery, None, entry.seq, prune).await {
                    Ok(true) => {
                        *failures = 0;
                        *failing_since = None;
                        return Ok(());
                    }
                    Ok(false) => return Err(Stop::Released),
                    Err(e) => {
                        // Delivered but not recorded: it will be delivered again (at least once).
                        tracing::warn!(error = %e, webhook = %self.id, "recording a delivery failed");
                        sleep_or_closed(rx, self.settings.retry_base)
                            .await
                            .map_err(|()| Stop::Released)?;
                        attempt += 1;
                        continue;
                    }
                }
            }
            metrics::counter!(telemetry::WEBHOOK_FAILURES).increment(1);
            *failures += 1;
            let since = *failing_since.get_or_insert(at);
            let gone = outcome.status == Some(410);
            let failed_for = Duration::try_from(at - since).unwrap_or_default();
            let give_up = gone || failed_for >= self.settings.disable_after;
            let wait = webhook::backoff(
                *failures,
                self.settings.retry_base,
                self.settings.retry_max,
                jitter(),
            );
            let failing = Failing {
                failures: i32::try_from(*failures).unwrap_or(i32::MAX),
                since,
                next_attempt_at: at + wait,
            };
            match self
                .record(&delivery, Some(failing), entry.seq, prune)
                .await
            {
                Ok(true) => {}
                Ok(false) => return Err(Stop::Released),
                Err(e) => {
                    tracing::warn!(error = %e, webhook = %self.id, "recording a failed delivery failed")
                }
            }
            if give_up {
                let reason = if gone {
                    webhook::gone_reason(410)
                } else {
                    webhook::failing_reason(failed_for)
                };
                if let Err(e) = self.services.disable_webhook(self.id, reason).await {
                    tracing::warn!(error = %e, webhook = %self.id, "disabling a failing webhook failed");
                }
                return Err(Stop::Released);
            }
            sleep_or_closed(rx, wait)
                .await
                .map_err(|()| Stop::Released)?;
            attempt += 1;
        }
    }

    /// Records the attempt and its consequence in one transaction: the cursor moves to `seq`
    /// on success, the failure state is written otherwise. False when the lease is gone.
    async fn record(
        &self,
        delivery: &crate::domain::webhook::Delivery,
        failing: Option<Failing>,
        seq: i64,
        prune: bool,
    ) -> Result<bool, StoreError> {
        let mut tx = self.services.store.write().await?;
        let held = match failing {
            None => tx.webhook_delivered(self.id, self.owner, seq).await?,
            Some(f) => tx.webhook_failing(self.id, self.owner, f).await?,
        };
        if !held {
            return Ok(false);
        }
        tx.insert_delivery(delivery).await?;
        if prune {
            tx.prune_deliveries(self.id, KEEP_ATTEMPTS).await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}

/// Sleeps for `d`, or ends early with `Err` when the worker's channel closes (it is stopped).
async fn sleep_or_closed(rx: &mut watch::Receiver<Assignment>, d: Duration) -> Result<(), ()> {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => return Ok(()),
            changed = rx.changed() => if changed.is_err() { return Err(()) },
        }
    }
}

/// The activity's `id`: the `webhook-id` of its deliveries, the same on every attempt.
fn activity_id(json: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: String,
    }
    serde_json::from_str::<Id>(json).ok().map(|i| i.id)
}

/// A number in [0, 1) for the backoff's jitter.
fn jitter() -> f64 {
    let mut b = [0u8; 4];
    if getrandom::fill(&mut b).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}
