//! The presence worker of the scaled deployment: records this instance's viewers in the shared
//! presence as they change, keeps the instance's heartbeat alive, and sweeps instances that died.
//! The hub only marks tasks as changed; all Redis I/O happens here, off the hub's lock.

use std::sync::Arc;
use std::time::Duration;

use super::Settings;
use super::hub::Hub;
use crate::bus::SharedPresence;

pub(super) async fn run(hub: Arc<Hub>, shared: Arc<dyn SharedPresence>, settings: Settings) {
    let heartbeat_every = (settings.presence_ttl / 3).max(Duration::from_millis(100));
    let mut heartbeat = tokio::time::interval(heartbeat_every);
    let mut sweep = tokio::time::interval(settings.presence_sweep_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = hub.presence_changed.notified() => {}
            _ = heartbeat.tick() => {
                if let Err(e) = shared.heartbeat().await {
                    tracing::debug!(error = %e, "presence heartbeat failed");
                }
                continue;
            }
            _ = sweep.tick() => {
                if let Err(e) = shared.sweep().await {
                    tracing::debug!(error = %e, "presence sweep failed");
                }
                continue;
            }
        }
        let changes = hub.take_presence_changes();
        if changes.is_empty() {
            continue;
        }
        // Records are only kept for instances with a live heartbeat: renew it first (after a
        // Redis restart it is gone).
        if let Err(e) = shared.heartbeat().await {
            tracing::debug!(error = %e, "presence heartbeat failed; re-registered when the bus is back");
            continue;
        }
        for c in changes {
            if let Err(e) = shared.sync(c.team, c.task, &c.viewers, c.announce).await {
                tracing::debug!(error = %e, task = %c.task, "presence sync failed; re-registered when the bus is back");
            }
        }
    }
}
