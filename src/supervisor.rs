//! Background tasks under one owner: every long-running loop of the process (the relay, the hub's
//! bus dispatch and log check, presence, the Redis connection loops, metrics upkeep) runs here,
//! with one cancellation token and one place that waits for them at shutdown.
//!
//! A task that ends before shutdown, by returning or by panicking, is logged, counted in
//! `/metrics` and makes `/readyz` answer 503: an instance must not look healthy while it runs
//! without its relay or its dispatch. It is not restarted: its state (watermarks, followed teams)
//! is its own, and a load balancer moving traffic away is the safer answer. This module never
//! knows what the tasks do.

use std::future::Future;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::telemetry;

#[derive(Clone, Default)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    tracker: TaskTracker,
    stop: CancellationToken,
    /// Tasks that ended before shutdown.
    failed: Mutex<Vec<&'static str>>,
}

impl Supervisor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` until shutdown. It is dropped at its next await once shutdown begins, so it
    /// must leave nothing half-done across an await that a restart could not pick up (a dropped
    /// transaction rolls back).
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.inner.stop.clone();
        // Its own task, so that a panic is caught by the join below instead of lost.
        let running = tokio::spawn(async move {
            tokio::select! {
                biased;
                () = stop.cancelled() => {}
                () = task => {}
            }
        });
        let inner = self.inner.clone();
        self.inner.tracker.spawn(async move {
            let outcome = running.await;
            if inner.stop.is_cancelled() {
                return;
            }
            match outcome {
                Ok(()) => tracing::error!(task = name, "a background task ended before shutdown"),
                Err(e) => tracing::error!(task = name, error = %e, "a background task panicked"),
            }
            metrics::counter!(telemetry::BACKGROUND_TASK_FAILURES, "task" => name).increment(1);
            inner.failed.lock().push(name);
        });
    }

    /// The tasks that ended before shutdown (none on a healthy instance).
    pub fn failed(&self) -> Vec<&'static str> {
        self.inner.failed.lock().clone()
    }

    /// Stops every task and waits for them to end.
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_task_that_dies_is_reported_and_shutdown_stops_the_rest() {
        let s = Supervisor::new();
        s.spawn("forever", std::future::pending());
        s.spawn("returns", async {});
        s.spawn("panics", async {
            tokio::task::yield_now().await;
            panic!("injected");
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while s.failed().len() < 2 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut failed = s.failed();
        failed.sort_unstable();
        assert_eq!(failed, ["panics", "returns"]);
        tokio::time::timeout(Duration::from_secs(10), s.shutdown())
            .await
            .expect("shutdown ends the task that runs for ever");
        assert_eq!(s.failed().len(), 2, "stopping is not failing");
    }
}
