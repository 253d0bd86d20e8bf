//! Metrics: the process-wide Prometheus recorder, the name and meaning of every metric, and the
//! text `/metrics` serves.
//!
//! Layers record through the `metrics` macros with the names below (counters are atomics: cheap
//! enough to bump once per activity, never once per recipient). Gauges of live state (connections,
//! subscriptions) are read when scraped, through the hook `app` registers, so that no code path
//! has to keep them in step. This module must never do I/O or block, and nothing in it may fail a
//! request: without a recorder the macros do nothing.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Open WebSocket connections (gauge).
pub const WS_CONNECTIONS: &str = "taskforge_ws_connections";
/// Room subscriptions by `scope` (`team`, `board`, `task`) (gauge).
pub const WS_SUBSCRIPTIONS: &str = "taskforge_ws_subscriptions";
/// Activities committed by this instance.
pub const ACTIVITIES_COMMITTED: &str = "taskforge_activities_committed_total";
/// Activities this instance's relay published on the bus (what another instance had already
/// published is not counted again).
pub const ACTIVITIES_PUBLISHED: &str = "taskforge_activities_published_total";
/// Activities dispatched to this instance's rooms, in seq order (once each per followed team).
pub const ACTIVITIES_DISPATCHED: &str = "taskforge_activities_dispatched_total";
/// Live activity frames queued on sockets (one per recipient socket).
pub const DELIVERIES: &str = "taskforge_deliveries_total";
/// Activity frames sent by resume replays.
pub const REPLAYED: &str = "taskforge_replayed_activities_total";
/// Sockets cut because their outgoing queue was full.
pub const SLOW_CONSUMER_CUTS: &str = "taskforge_slow_consumer_disconnects_total";
/// Frames discarded with those sockets (queued and not yet written, plus the one refused).
pub const FRAMES_DROPPED: &str = "taskforge_frames_dropped_total";
/// Times the bus came back after being down (Redis reconnects).
pub const BUS_RECONNECTS: &str = "taskforge_bus_reconnects_total";
/// Reads of missed activities from the log (a seq skipped ahead, a periodic check, a join behind).
pub const GAP_REPAIRS: &str = "taskforge_gap_repairs_total";
/// Activities those reads brought back.
pub const GAP_REPAIRED_ACTIVITIES: &str = "taskforge_gap_repaired_activities_total";
/// Dispatches that stopped repairing after 64 gaps in a row and left the rest to the periodic
/// check (which carries on from the log). Any rise means the log answered in an unexpected way.
pub const GAP_REPAIRS_ABANDONED: &str = "taskforge_gap_repairs_abandoned_total";
/// From an activity's hand-over to the relay (right after its commit) to its publish on the bus,
/// seconds, per activity this instance committed and published.
pub const RELAY_LAG: &str = "taskforge_relay_lag_seconds";
/// Activities the relay's scan published for a relay that did not (an instance that crashed
/// between commit and publish, or could not reach the bus): found by the instance holding the
/// scan lease once their commit is `TASKFORGE_RELAY_REPAIR_AFTER` old.
pub const RELAY_REPAIRED: &str = "taskforge_relay_repaired_activities_total";
/// Write transactions committed by one `COMMIT` (group commit): batches, and the requests they
/// carried (their ratio is the mean batch size).
pub const WRITE_BATCHES: &str = "taskforge_write_batches_total";
pub const WRITE_BATCH_MEMBERS: &str = "taskforge_write_batch_members_total";
/// Activities deleted from the log past its retention (by the instance holding the housekeeping
/// lease).
pub const LOG_PRUNED: &str = "taskforge_log_pruned_total";
/// 1 while this instance holds the housekeeping lease (it prunes the log), else 0.
pub const HOUSEKEEPING_LEASE: &str = "taskforge_housekeeping_lease";
/// Background tasks (by `task`) that ended before shutdown, by returning or panicking; any rise
/// also makes `/readyz` answer 503.
pub const BACKGROUND_TASK_FAILURES: &str = "taskforge_background_task_failures_total";
/// Sockets cut because a write or a replay made no progress for `TASKFORGE_WS_WRITE_TIMEOUT`
/// (also counted in the slow-consumer cuts).
pub const STALLED_SOCKETS: &str = "taskforge_stalled_socket_cuts_total";
/// Password hashes that gave up waiting for a core (answered 503 `unavailable`).
pub const HASHES_REFUSED: &str = "taskforge_password_hashes_refused_total";
/// HTTP requests by `method`, `route` (the route template) and `status`.
pub const HTTP_REQUESTS: &str = "taskforge_http_requests_total";
/// HTTP request durations by `method` and `route`, seconds.
pub const HTTP_DURATION: &str = "taskforge_http_request_duration_seconds";
/// Webhook requests sent (deliveries and their retries).
pub const WEBHOOK_ATTEMPTS: &str = "taskforge_webhook_attempts_total";
/// Webhook requests that did not end in a 2xx.
pub const WEBHOOK_FAILURES: &str = "taskforge_webhook_failures_total";
/// Per webhook delivered by this instance: seqs of its team's log after its cursor.
pub const WEBHOOK_BACKLOG: &str = "taskforge_webhook_backlog";
/// Webhooks disabled (by a person or by the server), in the whole database.
pub const WEBHOOKS_DISABLED: &str = "taskforge_webhooks_disabled";
/// From an activity's commit (its `ts`) to its frames being queued on this instance's sockets,
/// seconds. Across hosts this includes their clock difference.
pub const DELIVERY_LATENCY: &str = "taskforge_activity_delivery_latency_seconds";

/// Heap bytes by `kind`, as the allocator counts them: `allocated` (live), `active` (pages holding
/// live data), `resident` (in memory, metadata included), `retained` (unmapped from RSS, kept for
/// reuse). Present when the binary registered its allocator's figures
/// ([`register_allocator_probe`]); they tell a leak (allocated grows) from fragmentation.
pub const ALLOCATOR_BYTES: &str = "taskforge_allocator_bytes";

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Reads the allocator's figures as `(kind, bytes)` pairs; see [`ALLOCATOR_BYTES`].
pub type AllocatorProbe = fn() -> Vec<(&'static str, u64)>;

static ALLOCATOR_PROBE: OnceLock<AllocatorProbe> = OnceLock::new();

/// Makes every scrape export the allocator's figures. The binary registers it, since only the
/// binary chooses the global allocator; the first registration wins.
pub fn register_allocator_probe(probe: AllocatorProbe) {
    let _ = ALLOCATOR_PROBE.set(probe);
}

/// Reads live state into gauges just before a scrape.
pub type ScrapeHook = Arc<dyn Fn() + Send + Sync>;

/// What `/metrics` needs: the recorder's handle and the hook that refreshes the gauges.
#[derive(Clone)]
pub struct Telemetry {
    handle: PrometheusHandle,
    before_scrape: Option<ScrapeHook>,
}

impl Telemetry {
    /// Installs the process-wide recorder (once; later calls share it) and describes every metric.
    pub fn install() -> Result<Telemetry, BuildError> {
        // Servers built at the same moment in one process (tests) install it once between them.
        static INSTALLING: parking_lot::Mutex<()> = parking_lot::Mutex::new(());
        let _installing = INSTALLING.lock();
        let handle = match HANDLE.get() {
            Some(h) => h.clone(),
            None => {
                let h = PrometheusBuilder::new()
                    .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
                    .install_recorder()?;
                describe();
                HANDLE.get_or_init(|| h).clone()
            }
        };
        Ok(Telemetry {
            handle,
            before_scrape: None,
        })
    }

    pub fn with_scrape_hook(mut self, hook: ScrapeHook) -> Self {
        self.before_scrape = Some(hook);
        self
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        if let Some(hook) = &self.before_scrape {
            hook();
        }
        if let Some(probe) = ALLOCATOR_PROBE.get() {
            for (kind, bytes) in probe() {
                metrics::gauge!(ALLOCATOR_BYTES, "kind" => kind).set(bytes as f64);
            }
        }
        self.handle.render()
    }

    /// Drains the histograms' buffers now and then: without a scrape they would only grow.
    pub fn spawn_upkeep(&self, tasks: &crate::supervisor::Supervisor) {
        let handle = self.handle.clone();
        tasks.spawn("metrics upkeep", async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        });
    }
}

fn describe() {
    describe_gauge!(WS_CONNECTIONS, "Open WebSocket connections");
    describe_counter!(
        LOG_PRUNED,
        "Activities deleted from the log past its retention"
    );
    describe_gauge!(
        HOUSEKEEPING_LEASE,
        "1 while this instance holds the housekeeping lease"
    );
    describe_counter!(WEBHOOK_ATTEMPTS, "Webhook requests sent, retries included");
    describe_counter!(
        WEBHOOK_FAILURES,
        "Webhook requests that did not end in a 2xx"
    );
    describe_gauge!(
        WEBHOOK_BACKLOG,
        "Per webhook delivered here: seqs of its team's log after its cursor"
    );
    describe_gauge!(WEBHOOKS_DISABLED, "Disabled webhooks in the database");
    describe_gauge!(WS_SUBSCRIPTIONS, "Room subscriptions by scope kind");
    describe_gauge!(
        ALLOCATOR_BYTES,
        Unit::Bytes,
        "Heap bytes by kind, as the allocator counts them"
    );
    describe_counter!(
        ACTIVITIES_COMMITTED,
        "Activities committed by this instance"
    );
    describe_counter!(
        ACTIVITIES_PUBLISHED,
        "Activities this instance published on the bus"
    );
    describe_counter!(
        ACTIVITIES_DISPATCHED,
        "Activities dispatched to this instance's rooms"
    );
    describe_counter!(DELIVERIES, "Live activity frames queued on sockets");
    describe_counter!(REPLAYED, "Activity frames sent by resume replays");
    describe_counter!(
        SLOW_CONSUMER_CUTS,
        "Sockets cut because their outgoing queue was full"
    );
    describe_counter!(
        FRAMES_DROPPED,
        "Frames discarded with sockets cut as slow consumers"
    );
    describe_counter!(BUS_RECONNECTS, "Times the bus came back after being down");
    describe_counter!(GAP_REPAIRS, "Reads of missed activities from the log");
    describe_counter!(
        GAP_REPAIRED_ACTIVITIES,
        "Activities brought back by gap repairs"
    );
    describe_counter!(
        GAP_REPAIRS_ABANDONED,
        "Dispatches that left a gap to the periodic check after too many repairs"
    );
    describe_counter!(
        BACKGROUND_TASK_FAILURES,
        "Background tasks that ended before shutdown, by task"
    );
    describe_counter!(
        STALLED_SOCKETS,
        "Sockets cut because a write or a replay made no progress"
    );
    describe_counter!(
        HASHES_REFUSED,
        "Password hashes refused after waiting too long for a core"
    );
    describe_counter!(HTTP_REQUESTS, "HTTP requests by method, route and status");
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request durations by method and route"
    );
    describe_histogram!(
        RELAY_LAG,
        Unit::Seconds,
        "From an activity's commit to its publish by this instance's relay"
    );
    describe_counter!(
        RELAY_REPAIRED,
        "Activities the relay's scan published for a relay that did not"
    );
    describe_counter!(
        WRITE_BATCHES,
        "Group commits: batches of write transactions committed together"
    );
    describe_counter!(
        WRITE_BATCH_MEMBERS,
        "Write transactions committed by the group commits"
    );
    describe_histogram!(
        DELIVERY_LATENCY,
        Unit::Seconds,
        "From an activity's commit to its frames queued on this instance's sockets"
    );
    // Present from the start at 0, so that a dashboard tells "none yet" from "not exported".
    for counter in [
        ACTIVITIES_COMMITTED,
        ACTIVITIES_PUBLISHED,
        ACTIVITIES_DISPATCHED,
        DELIVERIES,
        REPLAYED,
        SLOW_CONSUMER_CUTS,
        FRAMES_DROPPED,
        BUS_RECONNECTS,
        GAP_REPAIRS,
        GAP_REPAIRED_ACTIVITIES,
        GAP_REPAIRS_ABANDONED,
        RELAY_REPAIRED,
        WRITE_BATCHES,
        WRITE_BATCH_MEMBERS,
        STALLED_SOCKETS,
        HASHES_REFUSED,
    ] {
        metrics::counter!(counter).increment(0);
    }
}

/// Seconds since an activity's commit, from the `"ts":"..."` of its JSON (no full parse).
pub fn since_commit(activity_json: &str) -> Option<f64> {
    const KEY: &str = "\"ts\":\"";
    let start = activity_json.find(KEY)? + KEY.len();
    let end = start + activity_json[start..].find('"')?;
    let ts = time::OffsetDateTime::parse(
        &activity_json[start..end],
        &time::format_description::well_known::Rfc3339,
    )
    .ok()?;
    let age = time::OffsetDateTime::now_utc() - ts;
    Some(age.as_seconds_f64().max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_commit_time_of_an_activity() {
        let now = time::OffsetDateTime::now_utc() - time::Duration::milliseconds(1500);
        let ts = now
            .format(&time::format_description::well_known::Rfc3339)
            .expect("format");
        let json = format!(r#"{{"id":"x","v":1,"type":"task.created","ts":"{ts}","seq":3}}"#);
        let age = since_commit(&json).expect("a ts");
        assert!((1.4..5.0).contains(&age), "{age}");
        assert_eq!(since_commit(r#"{"seq":3}"#), None);
        assert_eq!(since_commit(r#"{"ts":"yesterday"}"#), None);
        assert_eq!(since_commit(r#"{"ts":"2026"#), None);
    }
}
