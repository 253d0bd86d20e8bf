//! The socket protocol: client and server messages exactly as the contract shapes them, and the
//! frames the hub shares among recipients (serialized once).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use tungstenite::Utf8Bytes;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::activity::LogEntry;
use crate::domain::model::{text_enum, timestamp};
use crate::domain::notify::{InboxEvent, Notification, ReadMark};
use crate::domain::presence::{
    PresenceField, PresenceKind, PresenceState, PresenceStatus, PresenceView,
};
use crate::domain::{ActivityId, BoardId, Room, TaskId, TeamId, UserId};

/// What a subscribe or unsubscribe names: exactly one of `teamId`, `boardId`, `taskId`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScopeFields {
    #[schema(value_type = Option<Uuid>)]
    pub team_id: Option<TeamId>,
    #[schema(value_type = Option<Uuid>)]
    pub board_id: Option<BoardId>,
    #[schema(value_type = Option<Uuid>)]
    pub task_id: Option<TaskId>,
    /// Resume: replay what the room missed after this seq, before `subscribed`.
    #[schema(minimum = 0)]
    pub since: Option<i64>,
    /// `true` instead of a room: the user's inbox stream (`since` is then an inbox seq).
    pub inbox: Option<bool>,
}

/// A room a client can subscribe to (user rooms are joined implicitly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
pub enum Scope {
    #[serde(rename = "teamId")]
    #[schema(value_type = Uuid)]
    Team(TeamId),
    #[serde(rename = "boardId")]
    #[schema(value_type = Uuid)]
    Board(BoardId),
    #[serde(rename = "taskId")]
    #[schema(value_type = Uuid)]
    Task(TaskId),
}

impl Scope {
    pub fn room(self) -> Room {
        match self {
            Scope::Team(id) => Room::Team(id),
            Scope::Board(id) => Room::Board(id),
            Scope::Task(id) => Room::Task(id),
        }
    }

    pub fn of_room(room: Room) -> Option<Scope> {
        match room {
            Room::Team(id) => Some(Scope::Team(id)),
            Room::Board(id) => Some(Scope::Board(id)),
            Room::Task(id) => Some(Scope::Task(id)),
            Room::User(_) | Room::Admins(_) => None,
        }
    }
}

/// The ids of a scope as optional fields: what an `error` echoes when it concerns a room.
#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScopeIds {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Uuid>)]
    pub team_id: Option<TeamId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Uuid>)]
    pub board_id: Option<BoardId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Uuid>)]
    pub task_id: Option<TaskId>,
    /// `true` when the error concerns the inbox subscription.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbox: Option<bool>,
}

impl From<Scope> for ScopeIds {
    fn from(s: Scope) -> Self {
        match s {
            Scope::Team(id) => ScopeIds {
                team_id: Some(id),
                ..Default::default()
            },
            Scope::Board(id) => ScopeIds {
                board_id: Some(id),
                ..Default::default()
            },
            Scope::Task(id) => ScopeIds {
                task_id: Some(id),
                ..Default::default()
            },
        }
    }
}

impl ScopeFields {
    pub fn scope(&self) -> Result<Scope, &'static str> {
        match (self.team_id, self.board_id, self.task_id) {
            (Some(id), None, None) => Ok(Scope::Team(id)),
            (None, Some(id), None) => Ok(Scope::Board(id)),
            (None, None, Some(id)) => Ok(Scope::Task(id)),
            (None, None, None) => Err("name one of teamId, boardId or taskId"),
            _ => Err("name only one of teamId, boardId or taskId"),
        }
    }
}

/// Client -> server.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Join a room; with `since`, first replay what it missed.
    Subscribe(ScopeFields),
    /// Leave a room.
    Unsubscribe(ScopeFields),
    /// Authenticate, or replace the token before it expires.
    Auth { token: String },
    /// Answered by `pong`.
    Ping,
    /// What the user does in a task room the socket is subscribed to; repeat it (every ~2 s)
    /// while it holds, or editing and typing fall back to viewing.
    Presence(PresenceFields),
}

/// A `presence` message. The state and field are read leniently: a bad value is answered with
/// a `bad_request` that names the task, not one that names nothing.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PresenceFields {
    #[schema(value_type = Uuid)]
    pub task_id: TaskId,
    #[serde(default)]
    #[schema(value_type = PresenceState, required = true)]
    pub state: Lenient<PresenceState>,
    /// Required for `editing` and `typing`; ignored for `viewing`.
    #[serde(default)]
    #[schema(value_type = Option<PresenceField>)]
    pub field: Lenient<PresenceField>,
}

impl PresenceFields {
    /// The status the message asks for, or why it is malformed.
    pub fn status(&self) -> Result<PresenceStatus, &'static str> {
        let state = match self.state {
            Lenient::Valid(s) => s,
            Lenient::Missing => return Err("state is required: viewing, editing or typing"),
            Lenient::Invalid => return Err("state must be viewing, editing or typing"),
        };
        let field = match self.field {
            Lenient::Valid(f) => Some(f),
            Lenient::Missing => None,
            // Viewing ignores its field, whatever it is.
            Lenient::Invalid if state == PresenceState::Viewing => None,
            Lenient::Invalid => return Err("field must be title, description or comment"),
        };
        PresenceStatus::new(state, field)
    }
}

/// A field of a client message whose value, when it has the wrong shape, is kept as `Invalid`
/// instead of failing the whole message. `null` counts as missing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Lenient<T> {
    #[default]
    Missing,
    Valid(T),
    Invalid,
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match serde_json::Value::deserialize(d)? {
            serde_json::Value::Null => Lenient::Missing,
            v => serde_json::from_value(v).map_or(Lenient::Invalid, Lenient::Valid),
        })
    }
}

pub use crate::domain::activity::PresenceUser;

/// The `code` of an `error` frame. The contract fixes the strings; they are written only here.
/// (The closes that follow some of them are `outbox::CloseReason`'s.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A message that is not part of the protocol (bad JSON, unknown type, an id that is not a
    /// UUID, a binary frame, a negative `since`); the socket stays open.
    BadRequest,
    /// No valid token: closes 4001.
    Unauthorized,
    /// The access token expired: closes 4001.
    TokenExpired,
    /// Not a member, or no such team, board or task (the same answer for both).
    Forbidden,
    /// The socket is in as many rooms as it may be.
    TooManySubscriptions,
    /// Too many messages; repeated, closes 4008.
    RateLimited,
    /// The socket did not keep up: closes 4008 (resume with `since`).
    SlowConsumer,
    /// `since` is outside the retained log: subscribe without it and refetch.
    ResumeUnavailable,
    /// The server could not serve the subscribe now; retry.
    Unavailable,
    /// A frame the server could not write.
    Internal,
}

text_enum!(ErrorCode {
    BadRequest = "bad_request",
    Unauthorized = "unauthorized",
    TokenExpired = "token_expired",
    Forbidden = "forbidden",
    TooManySubscriptions = "too_many_subscriptions",
    RateLimited = "rate_limited",
    SlowConsumer = "slow_consumer",
    ResumeUnavailable = "resume_unavailable",
    Unavailable = "unavailable",
    Internal = "internal",
});

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Server -> client (activities are written by `activity_frame`, not through this type).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Subscribed {
        #[serde(flatten)]
        scope: Scope,
        seq: i64,
        /// Task rooms: who is there now, the caller included, and what each one does.
        #[serde(skip_serializing_if = "Option::is_none")]
        presence: Option<Vec<PresenceEntry>>,
    },
    Unsubscribed {
        #[serde(flatten)]
        scope: Scope,
        /// `membership_revoked` when the server removed the subscription.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
    },
    /// The inbox is subscribed: live delivery begins after `seq`.
    #[serde(rename = "subscribed", rename_all = "camelCase")]
    InboxSubscribed {
        /// Always `true`.
        inbox: bool,
        seq: i64,
        unread_count: i64,
    },
    #[serde(rename = "unsubscribed")]
    InboxUnsubscribed {
        /// Always `true`.
        inbox: bool,
    },
    Error {
        #[schema(value_type = String)]
        code: ErrorCode,
        message: String,
        /// The room the error concerns, if any.
        #[serde(flatten)]
        scope: ScopeIds,
    },
    #[serde(rename_all = "camelCase")]
    Authenticated {
        #[schema(value_type = Uuid)]
        user_id: UserId,
        #[serde(with = "timestamp")]
        #[schema(value_type = String, format = DateTime)]
        expires_at: OffsetDateTime,
    },
    Pong,
    /// The first event of an SSE stream: its id (for the messages POSTed to it) and how often
    /// its heartbeat comes.
    #[serde(rename_all = "camelCase")]
    Stream {
        stream_id: String,
        #[schema(value_type = Uuid)]
        user_id: UserId,
        heartbeat_ms: u64,
    },
}

impl ServerMessage {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error {
            code,
            message: message.into(),
            scope: ScopeIds::default(),
        }
    }

    pub fn scoped_error(code: ErrorCode, message: impl Into<String>, scope: Scope) -> Self {
        ServerMessage::Error {
            code,
            message: message.into(),
            scope: scope.into(),
        }
    }

    pub fn frame(&self) -> Utf8Bytes {
        Utf8Bytes::from(serde_json::to_string(self).unwrap_or_else(|_| {
            format!(
                r#"{{"type":"error","code":"{}","message":"unserializable message"}}"#,
                ErrorCode::Internal.as_str()
            )
        }))
    }
}

/// `{"type":"activity","activity":<the logged JSON>}`, built without re-serializing.
pub fn activity_frame(entry: &LogEntry) -> Utf8Bytes {
    let mut s = String::with_capacity(entry.json.len() + 32);
    s.push_str(r#"{"type":"activity","activity":"#);
    s.push_str(&entry.json);
    s.push('}');
    Utf8Bytes::from(s)
}

/// An event of the user's inbox stream: `notification.created` or `notification.read`.
pub fn inbox_frame(event: &InboxEvent) -> Utf8Bytes {
    #[derive(Serialize)]
    #[serde(tag = "type")]
    enum Envelope<'a> {
        #[serde(rename = "notification.created")]
        Created {
            seq: i64,
            notification: &'a Notification,
        },
        #[serde(rename = "notification.read")]
        Read(&'a ReadMark),
    }
    let envelope = match event {
        InboxEvent::Created(n) => Envelope::Created {
            seq: n.seq,
            notification: n,
        },
        InboxEvent::Read(r) => Envelope::Read(r),
    };
    // Strings, numbers and ids only: serializing cannot fail.
    Utf8Bytes::from(serde_json::to_string(&envelope).unwrap_or_default())
}

/// Someone in a task room, in its `subscribed` snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PresenceEntry {
    #[schema(value_type = Uuid)]
    pub user_id: UserId,
    pub display_name: String,
    /// The most active state of the user's connections to the room.
    pub state: PresenceState,
    /// The field edited or typed in (absent while viewing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<PresenceField>,
}

impl From<&PresenceView> for PresenceEntry {
    fn from(v: &PresenceView) -> Self {
        PresenceEntry {
            user_id: v.user.user_id,
            display_name: v.user.display_name.clone(),
            state: v.stamped.status.state(),
            field: v.stamped.status.field(),
        }
    }
}

/// An ephemeral presence event (`presence.joined`, `presence.left`, `presence.updated`): no seq,
/// not logged, not replayed.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PresenceActivity {
    #[schema(value_type = Uuid)]
    pub id: ActivityId,
    pub v: u32,
    #[serde(rename = "type")]
    pub kind: PresenceKind,
    #[schema(value_type = Uuid)]
    pub team_id: TeamId,
    #[schema(value_type = Uuid)]
    pub actor_user_id: UserId,
    #[serde(with = "timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub ts: OffsetDateTime,
    #[schema(value_type = Uuid)]
    pub task_id: TaskId,
    pub data: PresenceData,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PresenceData {
    #[schema(value_type = Uuid)]
    pub task_id: TaskId,
    #[schema(value_type = Uuid)]
    pub user_id: UserId,
    pub display_name: String,
    /// `presence.updated`: what the user now does in the task (the most active state of their
    /// connections).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<PresenceState>,
    /// `presence.updated` while editing or typing: the field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<PresenceField>,
}

/// `presence.joined` or `presence.left`.
pub fn presence_frame(joined: bool, team: TeamId, task: TaskId, user: &PresenceUser) -> Utf8Bytes {
    let kind = if joined {
        PresenceKind::Joined
    } else {
        PresenceKind::Left
    };
    presence_event_frame(kind, team, task, user, None)
}

/// `presence.updated`: what `user` is shown doing in `task` changed to `status`.
pub fn presence_updated_frame(
    team: TeamId,
    task: TaskId,
    user: &PresenceUser,
    status: PresenceStatus,
) -> Utf8Bytes {
    presence_event_frame(PresenceKind::Updated, team, task, user, Some(status))
}

fn presence_event_frame(
    kind: PresenceKind,
    team: TeamId,
    task: TaskId,
    user: &PresenceUser,
    status: Option<PresenceStatus>,
) -> Utf8Bytes {
    let activity = PresenceActivity {
        id: ActivityId::from(Uuid::now_v7()),
        v: crate::domain::activity::ACTIVITY_VERSION,
        kind,
        team_id: team,
        actor_user_id: user.user_id,
        ts: timestamp::truncate(OffsetDateTime::now_utc()),
        task_id: task,
        data: PresenceData {
            task_id: task,
            user_id: user.user_id,
            display_name: user.display_name.clone(),
            state: status.map(PresenceStatus::state),
            field: status.and_then(PresenceStatus::field),
        },
    };
    #[derive(Serialize)]
    struct Envelope<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        activity: &'a PresenceActivity,
    }
    Utf8Bytes::from(
        serde_json::to_string(&Envelope {
            kind: "activity",
            activity: &activity,
        })
        .unwrap_or_default(),
    )
}

/// Parses a client text frame. Unknown fields are ignored; anything else malformed is `Err`.
pub fn parse(text: &str) -> Result<ClientMessage, String> {
    serde_json::from_str(text).map_err(|e| {
        let msg = e.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg);
        // serde quotes what it did not expect (an unknown type, a bad id): never echo more than
        // a short prefix of the client's input.
        match msg.char_indices().nth(MAX_ECHO) {
            Some((end, _)) => format!("{}…", &msg[..end]),
            None => msg.to_owned(),
        }
    })
}

/// The most characters of an error message derived from client input.
const MAX_ECHO: usize = 160;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_messages_keep_their_shapes() {
        let team = TeamId::NIL;
        let sub = ServerMessage::Subscribed {
            scope: Scope::Team(team),
            seq: 3,
            presence: None,
        };
        assert_eq!(
            serde_json::to_value(&sub).unwrap(),
            serde_json::json!({"type":"subscribed","teamId":team,"seq":3})
        );
        let task = TaskId::NIL;
        let unsub = ServerMessage::Unsubscribed {
            scope: Scope::Task(task),
            reason: Some("membership_revoked"),
        };
        assert_eq!(
            serde_json::to_value(&unsub).unwrap(),
            serde_json::json!({"type":"unsubscribed","taskId":task,"reason":"membership_revoked"})
        );
        let err = ServerMessage::error(ErrorCode::BadRequest, "nope");
        assert_eq!(
            serde_json::to_value(&err).unwrap(),
            serde_json::json!({"type":"error","code":"bad_request","message":"nope"})
        );
    }

    /// The codes are the contract's strings, and `parse` reads back what `as_str` writes.
    #[test]
    fn error_codes_keep_their_wire_names() {
        for &code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert_eq!(
                serde_json::to_value(code).expect("serializes"),
                serde_json::json!(code.as_str())
            );
        }
        let names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "bad_request",
                "unauthorized",
                "token_expired",
                "forbidden",
                "too_many_subscriptions",
                "rate_limited",
                "slow_consumer",
                "resume_unavailable",
                "unavailable",
                "internal",
            ]
        );
    }

    #[test]
    fn client_messages_parse() {
        let m = parse(
            r#"{"type":"subscribe","teamId":"00000000-0000-0000-0000-000000000001","extra":1}"#,
        );
        assert!(matches!(
            m,
            Ok(ClientMessage::Subscribe(ScopeFields {
                team_id: Some(_),
                ..
            }))
        ));
        assert!(parse(r#"{"type":"ping"}"#).is_ok());
        assert!(parse(r#"{"type":"subscribe","teamId":"not-a-uuid"}"#).is_err());
        assert!(parse(r#"{"type":"launch"}"#).is_err());
        assert!(parse("{").is_err());
    }

    /// An error about the client's input quotes at most a short prefix of it.
    #[test]
    fn errors_do_not_echo_long_input() {
        let long = "x".repeat(60_000);
        for text in [
            format!(r#"{{"type":"{long}"}}"#),
            format!(r#"{{"type":"subscribe","teamId":"{long}"}}"#),
            format!(r#"{{"type":"auth","token":{long}}}"#),
        ] {
            let why = parse(&text).expect_err("invalid");
            assert!(why.chars().count() <= MAX_ECHO + 1, "{} chars", why.len());
        }
    }
}
