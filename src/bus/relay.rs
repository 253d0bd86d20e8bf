//! The outbox relay: publishes each team's committed activities in seq order and advances the
//! team's published watermark in batches.
//!
//! Fast path: the service hands freshly committed entries to `Relay::committed`, so publishing
//! needs no read. Whenever what arrives does not continue a team's published seq (commits of one
//! team finishing out of order, or a restart), the relay reads the missing range from the log.
//! The watermark in the store lags the in-memory one by at most `persist_every`: after a crash,
//! the relay republishes from the stored watermark (consumers drop seqs they already have).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
// Tokio's clock (std's own unless a test pauses it): the scan, write-back and pruning schedule
// must follow the clock the relay sleeps on.
use tokio::time::Instant;

use super::{Bus, TeamPublish};
use crate::domain::activity::LogEntry;
use crate::domain::{TeamId, UserId};
use crate::store::{Store, StoreError};
use crate::supervisor::Supervisor;
use crate::telemetry;

#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// How often to look for activities that nobody published (e.g. left by a crashed instance).
    pub scan_every: Duration,
    /// How often the published watermark is written back.
    pub persist_every: Duration,
    /// How long the log keeps published activities.
    pub retention: Duration,
    /// How often the log is pruned and expired sessions are purged (at most `retention`).
    pub prune_every: Duration,
    /// How long a refresh token lives: sessions expired or revoked longer ago are purged.
    pub refresh_ttl: Duration,
    /// Rows one prune statement deletes at most (a short transaction, whatever the backlog).
    pub prune_chunk: i64,
    /// How old a commit must be, unpublished, before the scan publishes it for its relay (which
    /// publishes and saves its own within `persist_every` while it lives).
    pub repair_after: Duration,
    /// Test-only fault switch: abort the process after a commit, before publishing.
    pub crash_after_commit: bool,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            scan_every: Duration::from_secs(1),
            persist_every: Duration::from_millis(100),
            retention: Duration::from_secs(30 * 24 * 3600),
            prune_every: Duration::from_secs(3600),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            prune_chunk: 5_000,
            repair_after: Duration::from_secs(2),
            crash_after_commit: false,
        }
    }
}

/// Largest read of the log in one step.
const READ_BATCH: i64 = 1_000;
/// Publish steps per team per run (a backlog larger than this continues at the next scan tick).
const PUBLISH_STEPS: usize = 16;
/// Teams per bus call of a publish step.
const TEAMS_PER_CALL: usize = 256;
/// Entries per bus call of a publish step (a team's run is never split).
const ENTRIES_PER_CALL: usize = 4_096;
/// The lease that makes one instance at a time scan for teams other relays left behind.
const SCAN_LEASE: &str = "relay-scan";
/// The shortest term of the scan lease (three scan intervals otherwise).
const MIN_SCAN_LEASE: Duration = Duration::from_secs(3);
/// A team published and saved, and not touched for this long, leaves the relay's memory (its
/// watermark is re-read from the store if it writes again), so the map holds the teams in use,
/// not every team ever written.
const IDLE_EVICT: Duration = Duration::from_secs(300);
/// The shortest housekeeping interval: its loop must not spin.
const MIN_PRUNE_EVERY: Duration = Duration::from_millis(100);
/// The lease that makes one instance at a time do the housekeeping.
const HOUSEKEEPING_LEASE: &str = "housekeeping";
/// Old activities looked at to find the teams to prune, per round (the oldest first).
const PRUNE_SCAN: i64 = 10_000;
/// Rounds of one housekeeping run; a larger backlog goes on at the next run.
const PRUNE_ROUNDS: usize = 1_000;

#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    settings: RelaySettings,
    /// Entries committed since the relay last ran, by team.
    pending: Mutex<HashMap<TeamId, Handover>>,
    /// Inbox seqs committed since the relay last ran, by user (the highest).
    inboxes: Mutex<HashMap<UserId, i64>>,
    wake: Notify,
    /// This process's name in the housekeeping lease.
    holder: String,
}

impl Relay {
    /// Starts the relay task. It first republishes whatever the log holds above the watermarks.
    pub fn start(
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        settings: RelaySettings,
        tasks: &Supervisor,
    ) -> Self {
        let inner = Arc::new(Inner {
            store,
            bus,
            settings,
            pending: Mutex::new(HashMap::new()),
            inboxes: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            holder: uuid::Uuid::new_v4().to_string(),
        });
        tasks.spawn("relay", run(inner.clone()));
        tasks.spawn("housekeeping", housekeeping_loop(inner.clone()));
        Self { inner }
    }

    /// Gives the housekeeping and scan leases up, so that the next instance (or this one
    /// restarted) need not wait for them to expire. Called at shutdown, after the background
    /// tasks stopped.
    pub async fn release_leases(&self) {
        let result = async {
            let mut tx = self.inner.store.write().await?;
            for name in [HOUSEKEEPING_LEASE, SCAN_LEASE] {
                tx.release_lease(name, &self.inner.holder).await?;
            }
            tx.commit().await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "releasing the relay's leases failed");
        }
    }

    /// Hands over entries that have just committed (any order, any teams).
    pub fn committed(&self, entries: Vec<LogEntry>) {
        if entries.is_empty() {
            return;
        }
        if self.inner.settings.crash_after_commit {
            tracing::error!("fault injection: aborting between commit and publish");
            // Exit at once, as a crash would: no destructor runs, nothing else is published.
            std::process::exit(86);
        }
        let now = Instant::now();
        let mut pending = self.inner.pending.lock();
        for e in entries {
            pending
                .entry(e.team_id())
                .or_insert_with(|| Handover {
                    since: now,
                    entries: Vec::new(),
                })
                .entries
                .push(e);
        }
        drop(pending);
        self.inner.wake.notify_one();
    }

    /// Hands over inbox seqs that have just committed. Not crash-safe like activities: what a
    /// crash loses here, the inbox's periodic check of the store finds.
    pub fn notified(&self, marks: Vec<(UserId, i64)>) {
        if marks.is_empty() {
            return;
        }
        let mut inboxes = self.inner.inboxes.lock();
        for (user, seq) in marks {
            let at = inboxes.entry(user).or_insert(seq);
            *at = (*at).max(seq);
        }
        drop(inboxes);
        self.inner.wake.notify_one();
    }
}

/// A team's entries handed over since the relay last ran.
struct Handover {
    /// When the first of them was handed over.
    since: Instant,
    entries: Vec<LogEntry>,
}

#[derive(Default)]
struct Watermarks {
    /// What this relay has published, per team, and when the team was last touched.
    published: HashMap<TeamId, Mark>,
    /// Teams whose watermark moved since it was last written.
    unsaved: HashMap<TeamId, i64>,
    /// Teams this relay could not publish to the end, retried at the next scan tick, with when
    /// their first unpublished hand-over came and how many entries it had (for the lag).
    retry: HashMap<TeamId, Option<Handed>>,
}

#[derive(Debug, Clone, Copy)]
struct Mark {
    seq: i64,
    touched: Instant,
}

impl Watermarks {
    fn get(&self, team: &TeamId) -> Option<i64> {
        self.published.get(team).map(|m| m.seq)
    }

    fn retry_later(&mut self, team: TeamId, handed: Option<Handed>) {
        let was = self.retry.remove(&team).flatten();
        self.retry.insert(team, Handed::merge(was, handed));
    }

    /// Records that `team` is published up to `seq` (as far as this relay knows), touching it.
    /// `save`: the store's watermark may be below `seq`, so write it back.
    fn set(&mut self, team: TeamId, seq: i64, save: bool, now: Instant) {
        self.published.insert(team, Mark { seq, touched: now });
        if save {
            self.unsaved.insert(team, seq);
        }
    }

    /// Forgets teams whose watermark is saved and that nothing touched for `idle`.
    fn evict_idle(&mut self, now: Instant, idle: Duration) {
        let unsaved = &self.unsaved;
        self.published.retain(|team, m| {
            unsaved.contains_key(team) || now.saturating_duration_since(m.touched) < idle
        });
    }
}

async fn run(inner: Arc<Inner>) {
    let mut marks = Watermarks::default();
    let mut next_scan = Instant::now();
    let mut next_persist = Instant::now();
    let shared = inner.store.backend() != "sqlite";
    let lease_term = (inner.settings.scan_every * 3).max(MIN_SCAN_LEASE);
    loop {
        let now = Instant::now();
        if now >= next_scan {
            // Teams this relay could not finish (the bus was down, a backlog too long for one
            // run) are its own to retry; teams other instances left behind are the lease
            // holder's to find.
            let retry: Vec<Work> = std::mem::take(&mut marks.retry)
                .into_iter()
                .map(|(team, handed)| (team, handed, Vec::new()))
                .collect();
            publish_teams(&inner, &mut marks, retry).await;
            // A relay that cannot reach the bus would find teams and fail to publish them: it
            // leaves the lease to expire for one that can.
            let scan_here = if !shared {
                true
            } else if inner.bus.is_up() {
                take_lease(&inner, SCAN_LEASE, lease_term)
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "taking the relay scan lease failed");
                        false
                    })
            } else {
                false
            };
            if scan_here && let Err(e) = scan(&inner, &mut marks).await {
                tracing::warn!(error = %e, "relay scan failed");
            }
            marks.evict_idle(Instant::now(), IDLE_EVICT);
            next_scan = now + inner.settings.scan_every;
        }
        let pending: Vec<Work> = std::mem::take(&mut *inner.pending.lock())
            .into_iter()
            .map(|(team, p)| {
                let handed = Handed {
                    since: p.since,
                    count: p.entries.len(),
                };
                (team, Some(handed), p.entries)
            })
            .collect();
        publish_teams(&inner, &mut marks, pending).await;
        let inboxes: Vec<(UserId, i64)> = inner.inboxes.lock().drain().collect();
        if !inboxes.is_empty()
            && let Err(e) = inner.bus.publish_inbox(&inboxes).await
        {
            tracing::debug!(error = %e, "inbox publish failed; the inbox check finds it");
        }
        if !marks.unsaved.is_empty() && Instant::now() >= next_persist {
            if let Err(e) = persist(&inner, &mut marks).await {
                tracing::warn!(error = %e, "saving published watermarks failed");
            }
            next_persist = Instant::now() + inner.settings.persist_every;
        }
        let wait = if marks.unsaved.is_empty() {
            next_scan
        } else {
            next_scan.min(next_persist)
        };
        tokio::select! {
            _ = inner.wake.notified() => {}
            _ = tokio::time::sleep_until(wait) => {}
        }
    }
}

/// Hand-overs not published yet: when the first came, and how many entries they had.
#[derive(Debug, Clone, Copy)]
struct Handed {
    since: Instant,
    count: usize,
}

impl Handed {
    fn merge(a: Option<Handed>, b: Option<Handed>) -> Option<Handed> {
        match (a, b) {
            (Some(a), Some(b)) => Some(Handed {
                since: a.since.min(b.since),
                count: a.count + b.count,
            }),
            (a, b) => a.or(b),
        }
    }
}

/// A team to publish: its unpublished hand-overs (None: from the log only), and the fresh
/// entries (any order).
type Work = (TeamId, Option<Handed>, Vec<LogEntry>);

/// One team's progress through a relay run.
struct Backlog {
    team: TeamId,
    /// The watermark this relay knew before the run (None: read from the store).
    known: Option<i64>,
    published: i64,
    /// The last fresh seq (`i64::MAX` for a team published from the log only).
    target: i64,
    /// What is still to publish, sorted.
    pending: Vec<LogEntry>,
    handed: Option<Handed>,
    /// Still publishing in this run.
    open: bool,
    /// The bus or the store failed for this team: retried at the next scan tick.
    failed: bool,
}

/// Publishes each team's fresh entries (sorted here), first reading from the log whatever lies
/// between the team's published seq and its first fresh entry; a team without fresh entries
/// (a scan or a retry) gets what the log holds above its published seq. Every team's next run
/// of contiguous seqs goes in one bus call per step (`Bus::publish_teams`). Another instance may
/// have published some of it: the bus skips those and says how far the team is published.
/// Returns how many activities this relay published.
async fn publish_teams(inner: &Inner, marks: &mut Watermarks, work: Vec<Work>) -> u64 {
    // The watermarks this relay does not know yet, in one read.
    let unknown: Vec<TeamId> = work
        .iter()
        .map(|(team, _, _)| *team)
        .filter(|team| marks.get(team).is_none())
        .collect();
    let stored: Result<HashMap<TeamId, i64>, StoreError> = if unknown.is_empty() {
        Ok(HashMap::new())
    } else {
        published_seqs(inner, &unknown)
            .await
            .map(|seqs| seqs.into_iter().collect())
    };
    if let Err(e) = &stored {
        tracing::warn!(error = %e, teams = unknown.len(), "relay: reading watermarks failed");
    }
    let mut teams = Vec::with_capacity(work.len());
    for (team, handed, mut fresh) in work {
        fresh.sort_by_key(|e| e.seq);
        let known = marks.get(&team);
        let published = match (known, &stored) {
            (Some(p), _) => p,
            (None, Ok(stored)) => stored.get(&team).copied().unwrap_or(0),
            (None, Err(_)) => {
                marks.retry_later(team, handed);
                continue;
            }
        };
        teams.push(Backlog {
            team,
            known,
            published,
            target: fresh.last().map_or(i64::MAX, |e| e.seq),
            handed,
            pending: fresh,
            open: true,
            failed: false,
        });
    }
    let mut total = 0u64;
    for _ in 0..PUBLISH_STEPS {
        let mut step = Vec::new();
        for (i, b) in teams.iter_mut().enumerate().filter(|(_, b)| b.open) {
            match next_run(inner, b).await {
                Ok(Some(run)) => step.push((i, run)),
                Ok(None) => b.open = false,
                Err(e) => {
                    tracing::warn!(error = %e, team = %b.team, "relay: reading the log failed");
                    (b.open, b.failed) = (false, true);
                }
            }
        }
        if step.is_empty() {
            break;
        }
        for chunk in calls_of(&step) {
            let calls: Vec<TeamPublish<'_>> = chunk
                .iter()
                .map(|&(i, run)| TeamPublish {
                    team: teams[i].team,
                    published: teams[i].published,
                    entries: &teams[i].pending[..run],
                })
                .collect();
            let answers = inner.bus.publish_teams(&calls).await;
            for (&(i, _), answer) in chunk.iter().zip(answers) {
                let b = &mut teams[i];
                match answer {
                    Ok(p) => {
                        total += p.sent;
                        b.published = b.published.max(p.upto);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, team = %b.team, "publish failed; retried later");
                        (b.open, b.failed) = (false, true);
                    }
                }
            }
        }
    }
    metrics::counter!(telemetry::ACTIVITIES_PUBLISHED).increment(total);
    let now = Instant::now();
    for b in teams {
        // Failed, cut short by the step limit, or short of fresh entries the log did not
        // hold yet (a commit handed over before an earlier one).
        if b.failed || b.open || (b.target != i64::MAX && b.published < b.target) {
            marks.retry_later(b.team, b.handed);
        } else if let Some(h) = b.handed {
            // Commit to publish, for each handed activity (the first one's hand-over time: an
            // upper bound for the others).
            metrics::histogram!(telemetry::RELAY_LAG).record_many(
                now.saturating_duration_since(h.since).as_secs_f64(),
                h.count,
            );
        }
        marks.set(b.team, b.published, b.known != Some(b.published), now);
    }
    total
}

/// A step's runs cut into bus calls of at most `TEAMS_PER_CALL` teams and, past the first team
/// of a call, `ENTRIES_PER_CALL` entries: a call's messages are held in memory at once and
/// share the bus's connection with everything else.
fn calls_of(step: &[(usize, usize)]) -> Vec<&[(usize, usize)]> {
    let mut calls = Vec::new();
    let (mut start, mut entries) = (0, 0);
    for (k, &(_, run)) in step.iter().enumerate() {
        if k > start && (k - start == TEAMS_PER_CALL || entries + run > ENTRIES_PER_CALL) {
            calls.push(&step[start..k]);
            (start, entries) = (k, 0);
        }
        entries += run;
    }
    if start < step.len() {
        calls.push(&step[start..]);
    }
    calls
}

/// The length of `b`'s next run of contiguous seqs above its published one (at the front of
/// `b.pending` after this call), reading from the log what the fresh entries skip; None when
/// nothing is left to publish now.
async fn next_run(inner: &Inner, b: &mut Backlog) -> Result<Option<usize>, StoreError> {
    let published = b.published;
    b.pending.retain(|e| e.seq > published);
    if published >= b.target {
        return Ok(None);
    }
    if b.pending.first().is_none_or(|e| e.seq != published + 1) {
        let upto = b.pending.first().map_or(b.target, |e| e.seq - 1);
        let mut missing = inner
            .store
            .read()
            .await?
            .activities(b.team, published, upto, READ_BATCH)
            .await?;
        if missing.is_empty() {
            return Ok(None);
        }
        missing.append(&mut b.pending);
        b.pending = missing;
    }
    // The bus takes contiguous seqs only: a hole further on (a later commit handed over before
    // an earlier one, a log read cut short) is read from the log at the next step.
    let run = b
        .pending
        .windows(2)
        .position(|w| w[1].seq != w[0].seq + 1)
        .map_or(b.pending.len(), |i| i + 1);
    Ok(Some(run))
}

async fn published_seqs(inner: &Inner, teams: &[TeamId]) -> Result<Vec<(TeamId, i64)>, StoreError> {
    inner.store.read().await?.published_seqs(teams).await
}

/// Finds teams whose first unpublished activity is older than `repair_after` (left by a crashed
/// instance, or by a relay that could not reach the bus) and publishes them.
async fn scan(inner: &Inner, marks: &mut Watermarks) -> Result<(), StoreError> {
    let stale_before = time::OffsetDateTime::now_utc()
        - time::Duration::try_from(inner.settings.repair_after).unwrap_or(time::Duration::ZERO);
    let behind = inner
        .store
        .read()
        .await?
        .unpublished_teams(READ_BATCH, stale_before)
        .await?;
    let mut work = Vec::with_capacity(behind.len());
    for &(team, stored) in &behind {
        let known = marks.get(&team).unwrap_or(stored).max(stored);
        marks.set(team, known, false, Instant::now());
        work.push((team, None, Vec::new()));
    }
    let repaired = publish_teams(inner, marks, work).await;
    metrics::counter!(telemetry::RELAY_REPAIRED).increment(repaired);
    for (team, stored) in behind {
        // What was already published still needs its watermark saved (which also clears the
        // team's unpublished record).
        if let Some(known) = marks.get(&team)
            && known > stored
        {
            marks.unsaved.entry(team).or_insert(known);
        }
    }
    Ok(())
}

async fn persist(inner: &Inner, marks: &mut Watermarks) -> Result<(), StoreError> {
    // In team order: relays of several instances then lock the same rows in the same order.
    let mut batch: Vec<(TeamId, i64)> = marks.unsaved.iter().map(|(t, s)| (*t, *s)).collect();
    batch.sort_unstable();
    let teams: Vec<TeamId> = batch.iter().map(|(t, _)| *t).collect();
    let mut tx = inner.store.write().await?;
    tx.set_published_seqs(&batch).await?;
    // Last: appends to these teams upsert the same rows.
    tx.clear_unpublished(&teams).await?;
    tx.commit().await?;
    marks.unsaved.clear();
    Ok(())
}

/// The store's periodic cleanup, in its own task (a long prune never delays publishing), on one
/// instance at a time: each run first takes (or renews) a lease in the store, for two intervals,
/// so that when its holder dies another instance takes over within that time (a holder that stops
/// gracefully gives it up: `Relay::release_leases`). SQLite has one server process by
/// design: no lease there.
async fn housekeeping_loop(inner: Arc<Inner>) {
    let every = inner
        .settings
        .prune_every
        .min(inner.settings.retention)
        .max(MIN_PRUNE_EVERY);
    let shared = inner.store.backend() != "sqlite";
    let mut next = Instant::now() + inner.settings.scan_every;
    loop {
        tokio::time::sleep_until(next).await;
        next = Instant::now() + every;
        let held = if shared {
            take_lease(&inner, HOUSEKEEPING_LEASE, every * 2).await
        } else {
            Ok(true)
        };
        let held = match held {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(error = %e, "taking the housekeeping lease failed");
                false
            }
        };
        metrics::gauge!(telemetry::HOUSEKEEPING_LEASE).set(if held { 1.0 } else { 0.0 });
        if held {
            let lease = shared.then_some(every * 2);
            if !housekeeping(&inner, lease).await {
                metrics::gauge!(telemetry::HOUSEKEEPING_LEASE).set(0.0);
            }
        }
    }
}

async fn take_lease(inner: &Inner, name: &str, term: Duration) -> Result<bool, StoreError> {
    let now = time::OffsetDateTime::now_utc();
    // A term too long for the calendar is a year: renewed at every run anyway.
    let until = time::Duration::try_from(term)
        .ok()
        .and_then(|t| now.checked_add(t))
        .or_else(|| now.checked_add(time::Duration::days(365)))
        .unwrap_or(now);
    let mut tx = inner.store.write().await?;
    let held = tx.take_lease(name, &inner.holder, now, until).await?;
    tx.commit().await?;
    Ok(held)
}

/// The cleanup itself: the activity log beyond its retention (in chunks), notifications as old,
/// idempotency keys past their 24 hours, and refresh sessions that can no longer be used. Each
/// step in its own transactions, so one failing does not undo another. `lease`: the term to
/// renew while pruning (None: no lease). False when the lease was lost on the way (the rest is
/// left to its new holder).
async fn housekeeping(inner: &Inner, lease: Option<Duration>) -> bool {
    let now = time::OffsetDateTime::now_utc();
    // A duration too large for `time` means nothing is old enough to go.
    if let Some(before) = time::Duration::try_from(inner.settings.retention)
        .ok()
        .and_then(|r| now.checked_sub(r))
    {
        match prune_log(inner, before, lease).await {
            Ok((n, held)) => {
                report("the activity log", Ok(n));
                if !held {
                    return false;
                }
            }
            Err(e) => report("the activity log", Err(e)),
        }
        report(
            "notifications",
            in_one_tx(inner, |tx| Box::pin(tx.prune_inbox(before))).await,
        );
    }
    report(
        "idempotency keys",
        in_one_tx(inner, |tx| {
            Box::pin(tx.prune_idempotency_keys(now - crate::domain::idempotency::KEY_LIFETIME))
        })
        .await,
    );
    if let Some(expired) = time::Duration::try_from(inner.settings.refresh_ttl)
        .ok()
        .and_then(|ttl| now.checked_sub(ttl))
    {
        report(
            "expired refresh sessions",
            in_one_tx(inner, |tx| Box::pin(tx.purge_sessions(now, expired))).await,
        );
    }
    true
}

fn report(what: &str, result: Result<u64, StoreError>) {
    match result {
        Ok(n) if n > 0 => tracing::info!(removed = n, "pruned {what}"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "pruning {what} failed"),
    }
}

type StoreStep<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, StoreError>> + Send + 'a>>;

/// One cleanup statement in a write transaction of its own.
async fn in_one_tx(
    inner: &Inner,
    step: impl for<'a> FnOnce(&'a mut dyn crate::store::Tx) -> StoreStep<'a>,
) -> Result<u64, StoreError> {
    let mut tx = inner.store.write().await?;
    let n = step(&mut *tx).await?;
    tx.commit().await?;
    Ok(n)
}

/// Prune statements between renewals of the lease, within one team's backlog.
const CHUNKS_PER_RENEWAL: usize = 20;

/// The log beyond its retention, team by team from the most overdue, `prune_chunk` rows per
/// transaction, so that writers wait for no long delete. The teams come from windows of the
/// oldest activities, each window after the last, so teams whose old rows must stay (unpublished,
/// or above a recent seq) do not hide the others. Stops when no old activity is left past the
/// last window, after `PRUNE_ROUNDS` windows, or when the lease is lost (then false).
async fn prune_log(
    inner: &Inner,
    before: time::OffsetDateTime,
    lease: Option<Duration>,
) -> Result<(u64, bool), StoreError> {
    let renew = || async {
        match lease {
            Some(term) => take_lease(inner, HOUSEKEEPING_LEASE, term).await,
            None => Ok(true),
        }
    };
    let chunk = inner.settings.prune_chunk.max(1);
    let mut total = 0;
    let mut after = None;
    let mut chunks = 0usize;
    for _ in 0..PRUNE_ROUNDS {
        let (teams, last) = inner
            .store
            .read()
            .await?
            .teams_with_old_activities(before, after, PRUNE_SCAN)
            .await?;
        if teams.is_empty() {
            break;
        }
        for team in teams {
            loop {
                let n =
                    in_one_tx(inner, |tx| Box::pin(tx.prune_team_log(team, before, chunk))).await?;
                total += n;
                metrics::counter!(telemetry::LOG_PRUNED).increment(n);
                chunks += 1;
                if chunks.is_multiple_of(CHUNKS_PER_RENEWAL) && !renew().await? {
                    return Ok((total, false));
                }
                if n < chunk as u64 {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        after = last;
        if !renew().await? {
            return Ok((total, false));
        }
    }
    Ok((total, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Teams come and go in waves; the map keeps only those touched within `IDLE_EVICT` or not
    /// yet saved, however many teams were ever written.
    #[test]
    fn the_watermark_map_holds_only_teams_in_use() {
        const WAVE: usize = 1_000;
        let mut marks = Watermarks::default();
        let start = Instant::now();
        for wave in 0..20u32 {
            let at = start + IDLE_EVICT * wave;
            for seq in 1..=WAVE as i64 {
                marks.set(TeamId::from(uuid::Uuid::now_v7()), seq, true, at);
            }
            // Unsaved watermarks are never forgotten, however old.
            marks.evict_idle(at + IDLE_EVICT * 2, IDLE_EVICT);
            assert_eq!(marks.published.len(), marks.unsaved.len());
            // Saved: what the last eviction pass kept is at most the wave touched just now.
            marks.unsaved.clear();
            marks.evict_idle(at + IDLE_EVICT / 2, IDLE_EVICT);
            assert!(
                marks.published.len() <= WAVE,
                "wave {wave}: {} teams held",
                marks.published.len()
            );
        }
        // A team touched recently stays; an idle one goes.
        let busy = TeamId::from(uuid::Uuid::now_v7());
        let idle = TeamId::from(uuid::Uuid::now_v7());
        let later = start + IDLE_EVICT * 40;
        marks.set(idle, 3, false, later);
        marks.set(busy, 5, false, later + IDLE_EVICT);
        marks.evict_idle(later + IDLE_EVICT + IDLE_EVICT / 2, IDLE_EVICT);
        assert_eq!(marks.get(&busy), Some(5));
        assert_eq!(marks.get(&idle), None);
        assert_eq!(marks.published.len(), 1);
    }
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod core_tests;
