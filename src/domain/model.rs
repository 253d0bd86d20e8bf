//! Entities of the task tracker, as the contract shapes them on the wire.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

pub use super::id::{BoardId, CommentId, LabelId, TaskId, TeamId, UserId};

/// Timestamps are RFC 3339 UTC with millisecond precision: `2026-11-25T19:03:04.123Z`.
pub mod timestamp {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;
    use time::macros::format_description;

    pub fn format(t: &OffsetDateTime) -> String {
        let t = t.to_offset(time::UtcOffset::UTC);
        let fmt = format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        t.format(&fmt)
            .unwrap_or_else(|_| t.unix_timestamp().to_string())
    }

    /// Timestamps are kept at millisecond precision so that what is stored and what is sent agree.
    pub fn truncate(t: OffsetDateTime) -> OffsetDateTime {
        let ms = t.millisecond();
        t.replace_nanosecond(u32::from(ms) * 1_000_000).unwrap_or(t)
    }

    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let s = String::deserialize(d)?;
        OffsetDateTime::parse(&s, &Rfc3339).map_err(serde::de::Error::custom)
    }

    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};
        use time::OffsetDateTime;

        pub fn serialize<S: Serializer>(
            t: &Option<OffsetDateTime>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<OffsetDateTime>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|s| {
                    OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
                        .map_err(serde::de::Error::custom)
                })
                .transpose()
        }
    }
}

/// `YYYY-MM-DD` dates.
pub mod date {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::Date;
    use time::macros::format_description;

    /// `YYYY-MM-DD` with a year from 0000 to 9999: what both databases store and compare alike
    /// (a signed or longer year is refused, not stored as a date SQLite would sort as text).
    pub fn parse(s: &str) -> Option<Date> {
        if s.len() != 10 || !s.as_bytes()[0].is_ascii_digit() {
            return None;
        }
        Date::parse(s, format_description!("[year]-[month]-[day]")).ok()
    }

    pub fn format(d: &Date) -> String {
        d.format(format_description!("[year]-[month]-[day]"))
            .unwrap_or_default()
    }

    pub fn serialize<S: Serializer>(d: &Option<Date>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format(d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Date>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| parse(&s).ok_or_else(|| serde::de::Error::custom("expected YYYY-MM-DD")))
            .transpose()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct User {
    #[schema(value_type = Uuid)]
    pub id: UserId,
    pub email: String,
    pub display_name: String,
    #[serde(with = "timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Team {
    #[schema(value_type = Uuid)]
    pub id: TeamId,
    pub name: String,
    #[serde(with = "timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[schema(value_type = Uuid)]
    pub default_board_id: BoardId,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Member,
    Admin,
    Owner,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    #[schema(value_type = Uuid)]
    pub team_id: TeamId,
    pub user: User,
    pub role: Role,
    #[serde(with = "timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub joined_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Board {
    #[schema(value_type = Uuid)]
    pub id: BoardId,
    #[schema(value_type = Uuid)]
    pub team_id: TeamId,
    pub name: String,
    #[serde(with = "timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    #[default]
    Todo,
    InProgress,
    Done,
    Canceled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    #[default]
    None,
    Low,
    Medium,
    High,
    Urgent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    #[schema(value_type = Uuid)]
    pub id: TaskId,
    #[schema(value_type = Uuid)]
    pub team_id: TeamId,
    #[schema(value_type = Uuid)]
    pub board_id: BoardId,
    pub title: String,
    pub description: String,
    pub status: TaskStatus,
    pub priority: Priority,
    #[schema(value_type = Option<Uuid>)]
    pub assignee_user_id: Option<UserId>,
    #[serde(with = "date")]
    #[schema(value_type = Option<String>, format = Date)]
    pub due_date: Option<time::Date>,
    pub position: f64,
    #[schema(value_type = Uuid)]
    pub created_by: UserId,
    #[serde(with = "timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
    pub version: i64,
    /// The task's labels, in ascending id order (activities logged before labels existed have
    /// none).
    #[serde(default)]
    #[schema(value_type = Vec<Uuid>)]
    pub label_ids: Vec<LabelId>,
}

impl Task {
    /// Whether `other` has other words to search by (its title or description differs): a
    /// task's search index entry changes only then.
    pub fn words_differ(&self, other: &Task) -> bool {
        self.title != other.title || self.description != other.description
    }
}

/// A team's label: a name unique in the team whatever its case, and a color.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Label {
    #[schema(value_type = Uuid)]
    pub id: LabelId,
    #[schema(value_type = Uuid)]
    pub team_id: TeamId,
    pub name: String,
    /// `#rrggbb`, lower case.
    pub color: String,
    #[serde(with = "timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Comment {
    #[schema(value_type = Uuid)]
    pub id: CommentId,
    #[schema(value_type = Uuid)]
    pub task_id: TaskId,
    #[schema(value_type = Uuid)]
    pub team_id: TeamId,
    #[schema(value_type = Uuid)]
    pub author_user_id: UserId,
    pub body: String,
    #[serde(with = "timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "timestamp::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub edited_at: Option<OffsetDateTime>,
}

/// `as_str`, `parse` and `ALL` of a fieldless enum from one table of its wire names.
macro_rules! text_enum {
    ($ty:ty { $($variant:ident = $text:literal),+ $(,)? }) => {
        impl $ty {
            /// Every variant, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some(Self::$variant),)+ _ => None }
            }
        }
    };
}
pub(crate) use text_enum;

text_enum!(Role { Viewer = "viewer", Member = "member", Admin = "admin", Owner = "owner" });
text_enum!(TaskStatus { Todo = "todo", InProgress = "in_progress", Done = "done", Canceled = "canceled" });
text_enum!(Priority { None = "none", Low = "low", Medium = "medium", High = "high", Urgent = "urgent" });

impl Priority {
    /// The order of `sort=priority`: none 0 … urgent 4 (the store's `priority_rank`).
    pub fn rank(self) -> i16 {
        match self {
            Priority::None => 0,
            Priority::Low => 1,
            Priority::Medium => 2,
            Priority::High => 3,
            Priority::Urgent => 4,
        }
    }
}
