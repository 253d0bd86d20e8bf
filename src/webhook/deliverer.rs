//! The delivery task: claims the leases of enabled webhooks, and runs one worker per webhook
//! held, which delivers the team's activities after the webhook's cursor in seq order, one at a
//! time (head of line: a failing activity is retried, with backoff, before any later one).
//!
//! The cursor moves only after the receiver said 2xx, in the same transaction that records the
//! attempt, and only while this instance holds the lease: a crash, a restart or a lost lease
//! resumes from the cursor, so an activity may be delivered twice but is never skipped.
//!
//! A worker stops sending when its lease is no longer vouched for: it is aborted when a claim no
//! longer returns its webhook (disabled, deleted, taken over), and it sends nothing past the
//! lease's end as of the last successful claim (an instance cut off from the database must not
//! keep sending while another instance has taken the webhook over). Each attempt reads the
//! webhook's row first, so a new url, events, secret or a reset of its failures applies to the
//! next request.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use uuid::Uuid;

use crate::domain::activity::LogEntry;
use crate::domain::webhook::{self, Delivery, EventFilter};
use crate::domain::{TeamId, WebhookId};
use crate::service::Services;
use crate::service::webhooks::attempt_record;
use crate::store::{Failing, StoreError, WebhookRecord};
use crate::supervisor::Supervisor;
use crate::telemetry;

/// Activities read from the log per step.
const READ_BATCH: i64 = 100;
/// Webhooks one instance holds at most (each is one request at a time).
const MAX_HELD: usize = 256;
/// How soon the leases are claimed again after a worker ended (a worker that ends at once every
/// time, a panic at its start, restarts at most this often).
const CLAIM_AFTER_A_WORKER_ENDS: Duration = Duration::from_secs(1);
/// Attempts kept per webhook for its deliveries list.
pub const KEEP_ATTEMPTS: i64 = 1000;
/// How often (in attempts) a worker trims its webhook's attempts (and once when it starts).
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
pub struct Wake {
    notify: Notify,
    /// A webhook was created or changed since the deliverer last looked for unclaimed ones.
    webhooks_changed: AtomicBool,
}

impl Wake {
    /// Activities were committed: the workers move on. Only when `webhooks_changed` (a webhook
    /// created, changed, deleted or disabled) does the deliverer look for webhooks nobody
    /// holds before its next poll: looking at every commit cost a read per commit.
    pub fn committed(&self, webhooks_changed: bool) {
        if webhooks_changed {
            self.webhooks_changed.store(true, Ordering::Release);
        }
        self.notify.notify_one();
    }

    fn take_webhooks_changed(&self) -> bool {
        self.webhooks_changed.swap(false, Ordering::AcqRel)
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

/// What a worker is told at each claim and poll.
#[derive(Clone, Copy)]
struct Assignment {
    /// The team's latest seq.
    team_seq: i64,
    /// Until when the lease is vouched for by the last successful claim.
    held_until: Instant,
}

/// A worker as the task keeps it. Dropping `tx` and aborting stops it.
struct Running {
    /// Tells this worker from a later one of the same webhook.
    generation: u64,
    tx: watch::Sender<Assignment>,
    abort: AbortHandle,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.abort.abort();
    }
}

async fn run(services: Services, settings: DelivererSettings, owner: Uuid) {
    let settings = Arc::new(settings);
    let mut workers: JoinSet<()> = JoinSet::new();
    let mut tasks: HashMap<tokio::task::Id, (WebhookId, u64)> = HashMap::new();
    let mut generation = 0u64;
    let mut running: HashMap<WebhookId, Running> = HashMap::new();
    let mut records: HashMap<WebhookId, TeamId> = HashMap::new();
    let mut held_until = Instant::now();
    let renew_every = settings.lease / 3;
    let mut next_claim = Instant::now();
    // When to look for webhooks nobody holds even if no webhook changed here (one created on
    // another instance, or whose holder is gone).
    let mut next_look = Instant::now();
    let mut changed = false;
    loop {
        let look = changed || Instant::now() >= next_look;
        if look {
            next_look = Instant::now() + settings.poll;
        }
        // A lease to renew, or a webhook nobody holds (new, enabled again, or its holder gone).
        if Instant::now() >= next_claim || (look && unclaimed(&services).await) {
            let started = Instant::now();
            next_claim = started + renew_every;
            let room = MAX_HELD.saturating_sub(records.len());
            match claim(&services, owner, &settings, room).await {
                Ok(held) => {
                    held_until = started + settings.lease;
                    records = held
                        .iter()
                        .map(|r| (r.webhook.id, r.webhook.team_id))
                        .collect();
                    // Lease gone (taken over, disabled, deleted): stop its worker now, even
                    // mid-request (dropping `Running` aborts it).
                    running.retain(|id, _| records.contains_key(id));
                }
                Err(e) => tracing::warn!(error = %e, "claiming webhook leases failed"),
            }
            gauge_disabled(&services).await;
        }
        let mut teams: Vec<TeamId> = records.values().copied().collect();
        teams.sort_unstable();
        teams.dedup();
        let seqs: HashMap<TeamId, i64> = match team_seqs(&services, &teams).await {
            Ok(s) => s.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "reading the teams' seqs for webhooks failed");
                HashMap::new()
            }
        };
        for (id, team) in &records {
            let Some(&team_seq) = seqs.get(team) else {
                continue;
            };
            let assignment = Assignment {
                team_seq,
                held_until,
            };
            if let Some(r) = running.get(id) {
                r.tx.send_replace(assignment);
                continue;
            }
            let (tx, rx) = watch::channel(assignment);
            generation += 1;
            let worker = Worker {
                services: services.clone(),
                settings: settings.clone(),
                owner,
                id: *id,
            };
            let abort = workers.spawn(async move { worker.run(rx).await });
            tasks.insert(abort.id(), (*id, generation));
            running.insert(
                *id,
                Running {
                    generation,
                    tx,
                    abort,
                },
            );
        }
        // A worker that ended (its webhook disabled, its lease lost, or a panic) is forgotten,
        // with its record: the next claim starts another if the lease is still this instance's.
        while let Some(done) = workers.try_join_next_with_id() {
            forget_worker(
                done,
                &mut tasks,
                &mut running,
                &mut records,
                &mut next_claim,
            );
        }
        let until_claim = next_claim.saturating_duration_since(Instant::now());
        tokio::select! {
            () = services.webhooks.wake.notify.notified() => {}
            () = tokio::time::sleep(settings.poll.min(until_claim)) => {}
            // A worker ending wakes the loop too (nothing else may, for a whole poll).
            Some(done) = workers.join_next_with_id() => {
                forget_worker(done, &mut tasks, &mut running, &mut records, &mut next_claim);
            }
        }
        changed = services.webhooks.wake.take_webhooks_changed();
    }
}

async fn claim(
    services: &Services,
    owner: Uuid,
    settings: &DelivererSettings,
    room: usize,
) -> Result<Vec<WebhookRecord>, StoreError> {
    let now = OffsetDateTime::now_utc();
    let mut tx = services.store.write().await?;
    let held = tx
        .claim_webhooks(
            owner,
            now,
            now + settings.lease,
            i64::try_from(room).unwrap_or(0),
        )
        .await?;
    tx.commit().await?;
    Ok(held)
}

/// Forgets a worker that ended, unless a newer one for its webhook runs already. Its lease may be
/// this instance's again already (the webhook disabled, then enabled and claimed before this
/// worker saw the disable and stopped): held, it is no look's "unclaimed", so the leases are
/// claimed again soon instead of at the next renewal.
fn forget_worker(
    done: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
    tasks: &mut HashMap<tokio::task::Id, (WebhookId, u64)>,
    running: &mut HashMap<WebhookId, Running>,
    records: &mut HashMap<WebhookId, TeamId>,
    next_claim: &mut Instant,
) {
    let task = match done {
        Ok((task, ())) => task,
        Err(e) => {
            if e.is_panic() {
                tracing::error!(error = %e, "a webhook worker panicked");
            }
            e.id()
        }
    };
    let Some((id, g)) = tasks.remove(&task) else {
        return;
    };
    if running.get(&id).is_some_and(|r| r.generation == g) {
        running.remove(&id);
        records.remove(&id);
        *next_claim = (*next_claim).min(Instant::now() + CLAIM_AFTER_A_WORKER_ENDS);
    }
    if !running.contains_key(&id) {
        metrics::gauge!(telemetry::WEBHOOK_BACKLOG, "webhook" => id.to_string()).set(0.0);
    }
}

/// Whether a webhook waits for a holder. A look that fails says yes: the claim then finds out
/// (and warns if it fails too), so a change made here is not lost to one failed read until the
/// next poll.
async fn unclaimed(services: &Services) -> bool {
    let now = OffsetDateTime::now_utc();
    let found = async { services.store.read().await?.unclaimed_webhooks(now).await }.await;
    found.unwrap_or_else(|e| {
        tracing::debug!(error = %e, "looking for unclaimed webhooks failed");
        true
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

/// The worker is to stop: its webhook is no longer its to deliver (disabled, deleted, the lease
/// lost or given up).
struct Stop;

impl Worker {
    async fn run(&self, mut rx: watch::Receiver<Assignment>) {
        let Ok(Some(start)) = self.current().await else {
            return;
        };
        let mut cursor = start.webhook.cursor;
        let mut attempts: u32 = 0;
        let _ = self.prune().await;
        // A retry the previous holder scheduled is honoured.
        if let Some(wait) = start.next_attempt_at.and_then(until)
            && self.wait_retry(&mut rx, wait).await.is_err()
        {
            return;
        }
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
            let record = match self.current().await {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, webhook = %self.id, "reading a webhook failed");
                    if self.pause(&mut rx, self.settings.retry_base).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            // Never behind what the row says (another holder may have moved it while this
            // instance had lost the lease).
            cursor = cursor.max(record.webhook.cursor);
            let batch = match self.read(record.webhook.team_id, cursor, team_seq).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, webhook = %self.id, "reading the log for a webhook failed");
                    if self.pause(&mut rx, self.settings.retry_base).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let Some(first) = batch.first() else {
                if rx.changed().await.is_err() {
                    return;
                }
                continue;
            };
            if first.seq != cursor + 1 {
                // Pruned by the log's retention while the webhook was disabled or failing.
                tracing::warn!(webhook = %self.id, from = cursor + 1, to = first.seq - 1, "activities were pruned before this webhook delivered them");
            }
            let mut filter = EventFilter::from_stored(record.webhook.events.clone());
            let mut skipped_to = None;
            for entry in &batch {
                if !filter.matches(entry.route.kind.as_str()) {
                    skipped_to = Some(entry.seq);
                    continue;
                }
                match self.deliver(&mut rx, entry, &mut attempts).await {
                    Ok(Some(now)) => {
                        cursor = entry.seq;
                        skipped_to = None;
                        filter = EventFilter::from_stored(now.webhook.events);
                    }
                    // Its events no longer ask for it (changed since the batch began).
                    Ok(None) => skipped_to = Some(entry.seq),
                    Err(Stop) => return,
                }
            }
            if let Some(seq) = skipped_to {
                match self.advance(seq).await {
                    Ok(true) => cursor = seq,
                    Ok(false) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, webhook = %self.id, "moving a webhook's cursor failed");
                        if self.pause(&mut rx, self.settings.retry_base).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// The webhook as stored, if it is still enabled.
    async fn current(&self) -> Result<Option<WebhookRecord>, StoreError> {
        let record = self.services.store.webhook_now(self.id).await?;
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

    async fn prune(&self) -> Result<(), StoreError> {
        let mut tx = self.services.store.write().await?;
        tx.prune_deliveries(self.id, KEEP_ATTEMPTS).await?;
        tx.commit().await
    }

    /// Delivers one activity, retrying until the receiver takes it. `Ok(Some(webhook))` once
    /// delivered (as the webhook stood then), `Ok(None)` when the webhook's events no longer ask
    /// for it, `Stop` when the webhook is no longer this worker's to deliver.
    async fn deliver(
        &self,
        rx: &mut watch::Receiver<Assignment>,
        entry: &LogEntry,
        attempts: &mut u32,
    ) -> Result<Option<WebhookRecord>, Stop> {
        let message_id = activity_id(&entry.json).unwrap_or_else(|| format!("seq_{}", entry.seq));
        let body = Bytes::copy_from_slice(entry.json.as_bytes());
        let mut write_failures = 0u32;
        loop {
            // Behind by this activity and what follows it (the gauge keeps growing while the
            // head of the line is retried).
            let backlog = (rx.borrow().team_seq - entry.seq + 1).max(0);
            metrics::gauge!(telemetry::WEBHOOK_BACKLOG, "webhook" => self.id.to_string())
                .set(backlog as f64);
            self.while_held(rx).await?;
            // Read at each attempt: where it points, what it asks for, its secrets, and its
            // failures (which a PATCH may have reset) are the row's, not this worker's.
            let record = match self.current().await {
                Ok(Some(r)) => r,
                Ok(None) => return Err(Stop),
                Err(e) => {
                    tracing::warn!(error = %e, webhook = %self.id, "reading a webhook failed");
                    write_failures += 1;
                    self.pause(rx, self.retry_wait(write_failures)).await?;
                    continue;
                }
            };
            if !EventFilter::from_stored(record.webhook.events.clone())
                .matches(entry.route.kind.as_str())
            {
                return Ok(None);
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
            // The attempt's number counts the failures before it, whoever made them.
            let attempt = record.failures.saturating_add(1).max(1);
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
                    Ok(true) => return Ok(Some(record)),
                    Ok(false) => return Err(Stop),
                    Err(e) => {
                        // Delivered but not recorded: it will be delivered again (at least
                        // once), after a wait that grows while the database stays away.
                        tracing::warn!(error = %e, webhook = %self.id, "recording a delivery failed");
                        write_failures += 1;
                        self.pause(rx, self.retry_wait(write_failures)).await?;
                        continue;
                    }
                }
            }
            metrics::counter!(telemetry::WEBHOOK_FAILURES).increment(1);
            let failures = u32::try_from(attempt).unwrap_or(u32::MAX);
            let since = record.webhook.failing_since.unwrap_or(at);
            let failed_for = Duration::try_from(at - since).unwrap_or_default();
            let gone = outcome.status == Some(410);
            let give_up = gone || failed_for >= self.settings.disable_after;
            let wait = self.retry_wait(failures);
            let failing = Failing {
                failures: attempt,
                since,
                next_attempt_at: at + wait,
            };
            match self
                .record(&delivery, Some(failing), entry.seq, prune)
                .await
            {
                Ok(true) => {}
                Ok(false) => return Err(Stop),
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
                return Err(Stop);
            }
            self.wait_retry(rx, wait).await?;
        }
    }

    /// The wait before retry number `failures` (exponential, jittered, capped).
    fn retry_wait(&self, failures: u32) -> Duration {
        webhook::backoff(
            failures,
            self.settings.retry_base,
            self.settings.retry_max,
            jitter(),
        )
    }

    /// Waits for `d` before a retry of the head of the line; ends early when the webhook's
    /// failures were reset (enabled again, or pointed elsewhere). `Stop` when the worker is
    /// stopped or the webhook is gone.
    async fn wait_retry(
        &self,
        rx: &mut watch::Receiver<Assignment>,
        d: Duration,
    ) -> Result<(), Stop> {
        self.sleep(rx, d, true).await
    }

    /// Sleeps for `d` (after a store error); `Stop` when the worker is stopped meanwhile.
    async fn pause(&self, rx: &mut watch::Receiver<Assignment>, d: Duration) -> Result<(), Stop> {
        self.sleep(rx, d, false).await
    }

    /// Sleeps for `d`, waking at each new assignment (every poll) to see whether the worker was
    /// stopped and, with `until_reset`, whether the row's failures were reset.
    async fn sleep(
        &self,
        rx: &mut watch::Receiver<Assignment>,
        d: Duration,
        until_reset: bool,
    ) -> Result<(), Stop> {
        let deadline = Instant::now() + d;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return Ok(()),
                changed = rx.changed() => {
                    if changed.is_err() {
                        return Err(Stop);
                    }
                    if until_reset {
                        match self.current().await {
                            Ok(None) => return Err(Stop),
                            Ok(Some(r)) if r.failures == 0 => return Ok(()),
                            _ => {}
                        }
                    }
                }
            }
        }
    }

    /// Returns once the lease is vouched for by a claim that has not run out (waiting for the
    /// next successful claim otherwise); `Stop` when the worker is stopped.
    async fn while_held(&self, rx: &mut watch::Receiver<Assignment>) -> Result<(), Stop> {
        loop {
            if rx.has_changed().is_err() {
                return Err(Stop);
            }
            if Instant::now() < rx.borrow().held_until {
                return Ok(());
            }
            if rx.changed().await.is_err() {
                return Err(Stop);
            }
        }
    }

    /// Records the attempt and its consequence in one transaction: the cursor moves to `seq`
    /// on success, the failure state is written otherwise. False when the lease is gone.
    async fn record(
        &self,
        delivery: &Delivery,
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

/// How long until `at`, if it is in the future.
fn until(at: OffsetDateTime) -> Option<Duration> {
    let wait = at - OffsetDateTime::now_utc();
    wait.is_positive()
        .then(|| Duration::try_from(wait).unwrap_or_default())
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
