//! The presence worker of the scaled deployment: records this instance's viewers (and what it
//! shows of each) in the shared presence as they change, keeps the instance's heartbeat alive,
//! sweeps instances that died, and runs the hub's presence tick (throttled changes, expiry).
//! The hub only marks tasks as changed; all Redis I/O happens here, off the hub's lock.
//!
//! A change that cannot be recorded (Redis unreachable) goes back to the hub and is retried at
//! each heartbeat until it is: dropping it would leave a viewer who left "present" for good.

use std::sync::Arc;
use std::time::Duration;

use super::Settings;
use super::hub::{Hub, PresenceChange};
use super::viewers::TICK;
use crate::bus::SharedPresence;

pub(super) async fn run(hub: Arc<Hub>, shared: Arc<dyn SharedPresence>, settings: Settings) {
    let heartbeat_every = (settings.presence_ttl / 3).max(Duration::from_millis(100));
    let mut heartbeat = tokio::time::interval(heartbeat_every);
    let mut sweep = tokio::time::interval(settings.presence_sweep_interval);
    let mut states = tokio::time::interval(TICK);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    states.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Set while changes wait for Redis: they are retried at the heartbeat, not at every new
    // change (which would only fail again, as often as viewers come and go).
    let mut failing = false;
    loop {
        let tick = tokio::select! {
            _ = hub.presence_changed.notified() => false,
            _ = heartbeat.tick() => true,
            _ = sweep.tick() => {
                if let Err(e) = shared.sweep().await {
                    tracing::debug!(error = %e, "presence sweep failed");
                }
                continue;
            }
            _ = states.tick() => {
                // What it changes marks tasks dirty and wakes this loop at its next turn.
                hub.presence_tick();
                continue;
            }
        };
        if failing && !tick {
            continue;
        }
        let changes = hub.take_presence_changes();
        if changes.is_empty() {
            if tick && let Err(e) = shared.heartbeat().await {
                tracing::debug!(error = %e, "presence heartbeat failed");
            }
            continue;
        }
        failing = !record(&hub, shared.as_ref(), changes).await;
    }
}

/// Renews the heartbeat and records `changes`; what could not be recorded goes back to the hub.
/// Returns whether everything was recorded.
async fn record(hub: &Hub, shared: &dyn SharedPresence, changes: Vec<PresenceChange>) -> bool {
    // Records are only kept for instances with a live heartbeat: renew it first (after a Redis
    // restart it is gone).
    if let Err(e) = shared.heartbeat().await {
        tracing::debug!(error = %e, n = changes.len(), "presence heartbeat failed; the changes are kept and retried at the next heartbeat");
        hub.requeue_presence_changes(changes);
        return false;
    }
    let mut changes = changes.into_iter();
    while let Some(c) = changes.next() {
        if let Err(e) = shared.sync(c.team, c.task, &c.viewers, c.announce).await {
            tracing::debug!(error = %e, task = %c.task, "presence sync failed; it and the changes after it are retried at the next heartbeat");
            // Redis is unlikely to take the rest now: keep them too instead of waiting on each.
            hub.requeue_presence_changes(std::iter::once(c).chain(changes).collect());
            return false;
        }
    }
    true
}

/// The embedded deployment's counterpart: only the hub's presence tick (the hub tells the rooms
/// itself).
pub(super) async fn run_local(hub: Arc<Hub>) {
    let mut states = tokio::time::interval(TICK);
    states.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        states.tick().await;
        hub.presence_tick();
    }
}
