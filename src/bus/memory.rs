//! The in-process bus of the embedded deployment: publishing hands the activities to this
//! instance's own consumer through a bounded queue (the publisher waits when it is full, so nothing
//! is dropped; the relay is the only publisher and is not on any request's path).

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::{Bus, BusError, BusEvent};
use crate::domain::activity::LogEntry;

pub struct InProcessBus {
    tx: mpsc::Sender<BusEvent>,
    rx: Mutex<Option<mpsc::Receiver<BusEvent>>>,
}

impl InProcessBus {
    pub fn new(capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity);
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

#[async_trait]
impl Bus for InProcessBus {
    async fn publish(&self, entries: &[LogEntry]) -> Result<(), BusError> {
        if entries.is_empty() {
            return Ok(());
        }
        // Nobody listening (the receiver not taken yet, or gone) is not an error: the log is the
        // source of truth and a later subscriber resumes from it.
        if self.tx.is_closed() || self.rx.lock().is_some() {
            return Ok(());
        }
        let _ = self.tx.send(BusEvent::Activities(entries.to_vec())).await;
        Ok(())
    }

    fn take_events(&self) -> Option<mpsc::Receiver<BusEvent>> {
        self.rx.lock().take()
    }

    fn is_up(&self) -> bool {
        true
    }
}
