//! Typed ids: one newtype over `Uuid` per kind of entity, so that a board id cannot be passed
//! where a team id is meant. On the wire (`serde(transparent)`) and in the database
//! (`sqlx(transparent)`: whatever `Uuid` binds and decodes to on each backend) they are the plain
//! UUID they wrap.
//!
//! They do not implement `utoipa::ToSchema` on purpose: a field of a type that does becomes a
//! `$ref` to a schema of its own, which would change the OpenAPI and AsyncAPI documents. Schema
//! fields name `value_type = Uuid` instead, and forgetting to is a compile error.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! ids {
    ($($(#[$doc:meta])* $name:ident;)+) => {$(
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
            sqlx::Type,
        )]
        #[serde(transparent)]
        #[sqlx(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// The nil id: sorts before every UUIDv7, so key-set pages start after it.
            pub const NIL: Self = Self(Uuid::nil());

            pub const fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }

            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }

            pub const fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    )+};
}

ids! {
    /// A user (also the subject of an access token).
    UserId;
    /// A team: the unit of membership, of the activity log and of its seq.
    TeamId;
    BoardId;
    TaskId;
    CommentId;
    /// An activity, logged or ephemeral (presence).
    ActivityId;
    /// A refresh-token family: one login session and every token rotated from it.
    SessionId;
    /// A notification in one user's inbox.
    NotificationId;
    WebhookId;
    /// A team's label (issue: labels and search).
    LabelId;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_plain_uuids_on_the_wire() {
        let u = Uuid::from_u128(0x0192_0000_0000_7000_8000_0000_0000_0001);
        let id = TeamId::from(u);
        assert_eq!(
            serde_json::to_value(id).expect("serializes"),
            serde_json::to_value(u).expect("serializes")
        );
        let back: TeamId = serde_json::from_value(serde_json::json!(u.to_string())).expect("reads");
        assert_eq!(back, id);
        assert_eq!(id.to_string(), u.to_string());
        assert_eq!(u.to_string().parse::<TeamId>().ok(), Some(id));
        assert!(serde_json::from_value::<TeamId>(serde_json::json!("not-a-uuid")).is_err());
        assert!(TeamId::NIL < id);
    }
}
