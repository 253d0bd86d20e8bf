//! Moving committed activities to every interested instance.
//!
//! `Bus` is the transport (in-process here; Redis pub/sub for many instances). `Relay` is the
//! outbox reader: after commit it hands each team's activities to the bus in seq order and
//! advances the team's published watermark, and on start it republishes what a crash left behind.
//! The bus never decides routing and never touches sockets: that is `realtime`.

mod memory;
mod relay;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::domain::activity::LogEntry;

pub use memory::InProcessBus;
pub use relay::{Relay, RelaySettings};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("the bus is closed")]
    Closed,
}

/// What an instance receives from the bus.
#[derive(Debug, Clone)]
pub enum BusEvent {
    /// Activities of one team, in seq order.
    Activities(Vec<LogEntry>),
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes activities of one team, in seq order.
    async fn publish(&self, entries: &[LogEntry]) -> Result<(), BusError>;
    /// The stream of events for this instance; there is one, taken by the realtime hub.
    fn take_events(&self) -> Option<mpsc::Receiver<BusEvent>>;
    fn is_up(&self) -> bool;
}
