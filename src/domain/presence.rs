//! Presence state: what a user does in a task they view (viewing, editing or typing in a field),
//! and the rule that turns the states of a user's connections into the one others are shown.
//!
//! The rule is written here once for the hub's local connections; the shared presence of the
//! scaled deployment applies the same rule to the records of every instance (`bus::redis`, in
//! Lua), so both must change together.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::activity::PresenceUser;
use super::model::text_enum;

/// What a presence event announces: the activity's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
pub enum PresenceKind {
    /// The user's first connection entered the task room.
    #[serde(rename = "presence.joined")]
    Joined,
    /// The user's last connection left it.
    #[serde(rename = "presence.left")]
    Left,
    /// What the user is shown doing there changed.
    #[serde(rename = "presence.updated")]
    Updated,
}

/// What a user does in a task, least to most active (the order is the aggregation's).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum PresenceState {
    #[default]
    Viewing,
    Editing,
    Typing,
}

text_enum!(PresenceState {
    Viewing = "viewing",
    Editing = "editing",
    Typing = "typing",
});

/// The field of a task a user edits or types in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PresenceField {
    Title,
    Description,
    Comment,
}

text_enum!(PresenceField {
    Title = "title",
    Description = "description",
    Comment = "comment",
});

/// A state with its field: what others are shown. Editing and typing always name a field,
/// viewing never does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PresenceStatus {
    state: PresenceState,
    field: Option<PresenceField>,
}

impl PresenceStatus {
    pub const VIEWING: PresenceStatus = PresenceStatus {
        state: PresenceState::Viewing,
        field: None,
    };

    /// `field` is required for editing and typing, and ignored for viewing.
    pub fn new(
        state: PresenceState,
        field: Option<PresenceField>,
    ) -> Result<PresenceStatus, &'static str> {
        match (state, field) {
            (PresenceState::Viewing, _) => Ok(Self::VIEWING),
            (_, None) => Err("editing and typing name a field: title, description or comment"),
            (state, Some(field)) => Ok(PresenceStatus {
                state,
                field: Some(field),
            }),
        }
    }

    pub fn state(self) -> PresenceState {
        self.state
    }

    pub fn field(self) -> Option<PresenceField> {
        self.field
    }
}

/// A status and when it took effect, in milliseconds since the Unix epoch (a wall clock, so that
/// the times of different instances compare). Viewing carries 0: which viewing is latest never
/// changes what is shown, and so never needs recording.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Stamped {
    pub status: PresenceStatus,
    pub at: i64,
}

impl Stamped {
    pub const VIEWING: Stamped = Stamped {
        status: PresenceStatus::VIEWING,
        at: 0,
    };

    pub fn new(status: PresenceStatus, at: i64) -> Stamped {
        let at = if status.state() == PresenceState::Viewing {
            0
        } else {
            at
        };
        Stamped { status, at }
    }

    /// The order of the aggregation: the more active state wins; between equally active ones,
    /// the latest.
    fn key(self) -> (PresenceState, i64) {
        (self.status.state(), self.at)
    }
}

/// A user in a task and what they are shown doing there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceView {
    pub user: PresenceUser,
    pub stamped: Stamped,
}

/// What a user is shown doing, given the states of their connections (on one instance, or the
/// records of every instance): the most active, the latest on a tie. Of two equal keys (the
/// same state at the same millisecond) the first one wins, so callers give a stable order.
/// `None` when there is no connection.
pub fn most_active(states: impl IntoIterator<Item = Stamped>) -> Option<Stamped> {
    states.into_iter().fold(None, |best, s| match best {
        Some(b) if b.key() >= s.key() => Some(b),
        _ => Some(s),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: PresenceState, field: PresenceField) -> PresenceStatus {
        PresenceStatus::new(state, Some(field)).expect("a valid status")
    }

    #[test]
    fn a_status_names_a_field_exactly_when_editing_or_typing() {
        use PresenceField::*;
        use PresenceState::*;
        assert_eq!(
            PresenceStatus::new(Viewing, None),
            Ok(PresenceStatus::VIEWING)
        );
        assert_eq!(
            PresenceStatus::new(Viewing, Some(Title)),
            Ok(PresenceStatus::VIEWING),
            "viewing ignores a field"
        );
        assert!(PresenceStatus::new(Editing, None).is_err());
        assert!(PresenceStatus::new(Typing, None).is_err());
        let s = status(Typing, Comment);
        assert_eq!((s.state(), s.field()), (Typing, Some(Comment)));
        assert_eq!(
            Stamped::new(PresenceStatus::VIEWING, 42),
            Stamped::VIEWING,
            "viewing carries no time"
        );
    }

    #[test]
    fn the_most_active_state_wins_and_the_latest_breaks_a_tie() {
        use PresenceField::*;
        use PresenceState::*;
        let viewing = Stamped::VIEWING;
        let editing_title = Stamped::new(status(Editing, Title), 10);
        let editing_description = Stamped::new(status(Editing, Description), 20);
        let typing_comment = Stamped::new(status(Typing, Comment), 5);

        assert_eq!(most_active([]), None);
        assert_eq!(most_active([viewing]), Some(viewing));
        // More active beats more recent.
        assert_eq!(
            most_active([editing_description, typing_comment, viewing]),
            Some(typing_comment)
        );
        assert_eq!(most_active([viewing, editing_title]), Some(editing_title));
        // Equally active: the latest, in any order.
        assert_eq!(
            most_active([editing_title, editing_description]),
            Some(editing_description)
        );
        assert_eq!(
            most_active([editing_description, editing_title]),
            Some(editing_description)
        );
        // The same key twice: the first.
        let same_time = Stamped::new(status(Editing, Comment), 20);
        assert_eq!(
            most_active([same_time, editing_description]),
            Some(same_time)
        );
        // Whatever the order, the result is the same for distinct keys.
        let all = [viewing, editing_title, editing_description, typing_comment];
        for i in 0..all.len() {
            let mut rotated = all;
            rotated.rotate_left(i);
            assert_eq!(most_active(rotated), Some(typing_comment));
        }
    }

    #[test]
    fn wire_names_round_trip() {
        for &s in PresenceState::ALL {
            assert_eq!(PresenceState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).expect("serializes"), s.as_str());
        }
        for &f in PresenceField::ALL {
            assert_eq!(PresenceField::parse(f.as_str()), Some(f));
            assert_eq!(serde_json::to_value(f).expect("serializes"), f.as_str());
        }
        assert!(PresenceState::Viewing < PresenceState::Editing);
        assert!(PresenceState::Editing < PresenceState::Typing);
    }
}
