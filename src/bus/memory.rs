//! The in-process bus of the embedded deployment: publishing hands the activities to this
//! instance's own consumer through a bounded queue (the publisher waits when it is full, so nothing
//! is dropped; the relay is the only publisher and is not on any request's path).

use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::{Bus, BusError, BusEvent, SharedPresence, Topic};
use crate::domain::activity::LogEntry;
use crate::domain::{TeamId, UserId};

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
    async fn publish(
        &self,
        _team: TeamId,
        published: i64,
        entries: &[LogEntry],
    ) -> Result<i64, BusError> {
        // The relay is this instance's only publisher: it publishes in order, nothing to skip.
        let Some(last) = entries.last().map(|e| e.seq) else {
            return Ok(published);
        };
        // Nobody listening (the receiver not taken yet, or gone) is not an error: the log is the
        // source of truth and a later subscriber resumes from it.
        if self.tx.is_closed() || self.rx.lock().is_some() {
            return Ok(last);
        }
        // The same two channels as Redis: the team's, and the user's for their own sockets.
        let _ = self.tx.send(BusEvent::Activities(entries.to_vec())).await;
        for e in entries {
            if e.route.recipient().is_some() {
                let _ = self.tx.send(BusEvent::UserActivity(e.clone())).await;
            }
        }
        Ok(last)
    }

    async fn publish_inbox(&self, marks: &[(UserId, i64)]) -> Result<(), BusError> {
        if self.tx.is_closed() || self.rx.lock().is_some() {
            return Ok(());
        }
        for (user, seq) in marks {
            let _ = self.tx.send(BusEvent::Inbox(*user, *seq)).await;
        }
        Ok(())
    }

    async fn forward_to_stream(
        &self,
        _user: UserId,
        _stream: &str,
        _text: &str,
    ) -> Result<bool, BusError> {
        // One instance: its streams are all local, and the caller looked there.
        Ok(false)
    }

    fn take_events(&self) -> Option<mpsc::Receiver<BusEvent>> {
        self.rx.lock().take()
    }

    fn is_up(&self) -> bool {
        true
    }

    async fn watch(&self, _topic: Topic) -> Result<(), BusError> {
        Ok(())
    }

    fn unwatch(&self, _topic: Topic) {}

    fn shared_presence(&self) -> Option<Arc<dyn SharedPresence>> {
        None
    }
}
