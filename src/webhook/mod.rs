//! Outgoing webhooks: each enabled webhook is a durable subscriber of its team's log, delivered
//! by the one instance holding its lease, in seq order, at least once, signed per the Standard
//! Webhooks specification.
//!
//! - [`secret`]: secrets, sealed at rest, and signatures;
//! - [`sender`]: one request, with the network safety rules;
//! - [`deliverer`]: the background task that claims leases and delivers.
//!
//! This module reads the log and the webhooks' rows and writes only their delivery state (cursor,
//! failures, attempts); settings change through `service::webhooks`, which also appends the
//! `webhook.disabled` activity when a delivery gives up.

pub mod deliverer;
pub mod secret;
pub mod sender;

pub use deliverer::{Deliverer, DelivererSettings};
pub use secret::{Secret, SecretKey};
pub use sender::{Outcome, Sender, SenderSettings};
