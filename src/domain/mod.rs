//! Pure types and rules of TaskForge: entities, roles, validation, activities and their routing.
//!
//! This module owns what is true whatever the storage or transport. It must never do I/O, touch a
//! database, a socket or a clock (callers pass `now` in).

pub mod activity;
pub mod error;
pub mod id;
pub mod idempotency;
pub mod import;
pub mod model;
pub mod notify;
pub mod presence;
pub mod rules;
pub mod search;
pub mod webhook;

pub use activity::{Activity, ActivityData, ActivityKind, Change, Room, Route};
pub use error::{DomainError, FieldError};
pub use id::{
    ActivityId, BoardId, CommentId, LabelId, NotificationId, SessionId, TaskId, TeamId, UserId,
    WebhookId,
};
pub use model::*;
