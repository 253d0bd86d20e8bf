//! The bytes of a bus message. An activity travels as its routing header and the exact JSON
//! clients receive (serialized once, at commit); a presence change as a small JSON record.
//!
//! ```text
//! A<seq>|<kind>|<team>|<board>|<prev board>|<task>|<user>\n<activity json>
//! P+<viewer json>      (joined)
//! P-<viewer json>      (left)
//! P~<viewer json>      (updated: the record of what the user is now shown doing)
//! I<seq>               (the user's inbox stream reached seq; on the user's channel)
//! S<stream id>\n<json> (a client message POSTed for the user's SSE stream; on the user's channel)
//! ```

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::PresenceEvent;
use crate::domain::activity::{ActivityKind, LogEntry, PresenceUser, Route};
use crate::domain::presence::{
    PresenceField, PresenceKind, PresenceState, PresenceStatus, PresenceView, Stamped,
};
use crate::domain::{TaskId, TeamId, UserId};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed bus message: {0}")]
pub struct WireError(&'static str);

/// A decoded message.
#[derive(Debug)]
pub enum Message {
    Activity(LogEntry),
    Presence(PresenceEvent),
    Inbox(i64),
    /// A client message for an SSE stream that lives on some instance.
    StreamMessage {
        stream: String,
        text: String,
    },
}

pub fn encode_stream_message(stream: &str, text: &str) -> Vec<u8> {
    format!("S{stream}\n{text}").into_bytes()
}

pub fn encode_inbox(seq: i64) -> Vec<u8> {
    format!("I{seq}").into_bytes()
}

pub fn encode_activity(e: &LogEntry) -> Vec<u8> {
    fn opt(id: Option<impl std::fmt::Display>) -> String {
        id.map(|u| u.to_string()).unwrap_or_default()
    }
    let r = &e.route;
    let header = format!(
        "A{}|{}|{}|{}|{}|{}|{}\n",
        e.seq,
        r.kind.as_str(),
        r.team_id,
        opt(r.board_id),
        opt(r.prev_board_id),
        opt(r.task_id),
        opt(r.user_id)
    );
    let mut out = Vec::with_capacity(header.len() + e.json.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(e.json.as_bytes());
    out
}

/// A viewer as the presence registry stores it (one per instance and user); a published
/// presence message carries it as is. `state`, `field` and `at` are what the instance shows of
/// the user (the registry's scripts read them: keep the names); a record without them is viewing.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Viewer {
    pub team_id: TeamId,
    pub task_id: TaskId,
    pub user_id: UserId,
    pub display_name: String,
    #[serde(default)]
    pub state: PresenceState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<PresenceField>,
    /// When the state took effect (Unix milliseconds; 0 for viewing).
    #[serde(default)]
    pub at: i64,
}

impl Viewer {
    pub fn new(team_id: TeamId, task_id: TaskId, v: &PresenceView) -> Viewer {
        Viewer {
            team_id,
            task_id,
            user_id: v.user.user_id,
            display_name: v.user.display_name.clone(),
            state: v.stamped.status.state(),
            field: v.stamped.status.field(),
            at: v.stamped.at,
        }
    }

    pub fn encode(&self) -> String {
        // A struct of strings, numbers and uuids always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn user(&self) -> PresenceUser {
        PresenceUser {
            user_id: self.user_id,
            display_name: self.display_name.clone(),
        }
    }

    /// The status the record holds; `None` for editing or typing without a field.
    pub fn status(&self) -> Option<PresenceStatus> {
        PresenceStatus::new(self.state, self.field).ok()
    }

    /// The record as a view; `None` when its status is malformed.
    pub fn view(&self) -> Option<PresenceView> {
        Some(PresenceView {
            user: self.user(),
            stamped: Stamped::new(self.status()?, self.at),
        })
    }
}

pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
    match bytes.first() {
        Some(b'A') => decode_activity(&bytes[1..]).map(Message::Activity),
        Some(b'P') => {
            let kind = match bytes.get(1) {
                Some(b'+') => PresenceKind::Joined,
                Some(b'-') => PresenceKind::Left,
                Some(b'~') => PresenceKind::Updated,
                _ => return Err(WireError("presence sign")),
            };
            let v: Viewer =
                serde_json::from_slice(&bytes[2..]).map_err(|_| WireError("presence record"))?;
            let status = v.status().ok_or(WireError("presence state"))?;
            Ok(Message::Presence(PresenceEvent {
                kind,
                team_id: v.team_id,
                task_id: v.task_id,
                user: v.user(),
                status,
            }))
        }
        Some(b'I') => std::str::from_utf8(&bytes[1..])
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .filter(|s| *s > 0)
            .map(Message::Inbox)
            .ok_or(WireError("inbox seq")),
        Some(b'S') => {
            let text = std::str::from_utf8(&bytes[1..]).map_err(|_| WireError("stream message"))?;
            let (stream, text) = text.split_once('\n').ok_or(WireError("stream message"))?;
            Ok(Message::StreamMessage {
                stream: stream.to_owned(),
                text: text.to_owned(),
            })
        }
        _ => Err(WireError("unknown kind")),
    }
}

fn decode_activity(bytes: &[u8]) -> Result<LogEntry, WireError> {
    let nl = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or(WireError("no header"))?;
    let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| WireError("header"))?;
    let json = std::str::from_utf8(&bytes[nl + 1..]).map_err(|_| WireError("body"))?;
    let mut f = header.split('|');
    let mut next = || f.next().ok_or(WireError("short header"));
    let seq: i64 = next()?.parse().map_err(|_| WireError("seq"))?;
    let kind = ActivityKind::parse(next()?).ok_or(WireError("kind"))?;
    fn id<T: std::str::FromStr>(s: &str) -> Result<T, WireError> {
        s.parse().map_err(|_| WireError("id"))
    }
    fn opt<T: std::str::FromStr>(s: &str) -> Result<Option<T>, WireError> {
        if s.is_empty() {
            Ok(None)
        } else {
            id(s).map(Some)
        }
    }
    let team_id = id(next()?)?;
    let board_id = opt(next()?)?;
    let prev_board_id = opt(next()?)?;
    let task_id = opt(next()?)?;
    let user_id = opt(next()?)?;
    Ok(LogEntry {
        seq,
        route: Route {
            kind,
            team_id,
            board_id,
            prev_board_id,
            task_id,
            user_id,
        },
        json: Arc::from(json),
    })
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::domain::BoardId;

    fn entry(user: Option<UserId>) -> LogEntry {
        LogEntry {
            seq: 42,
            route: Route {
                kind: ActivityKind::TaskAssigned,
                team_id: TeamId::from(Uuid::now_v7()),
                board_id: Some(BoardId::from(Uuid::now_v7())),
                prev_board_id: None,
                task_id: Some(TaskId::from(Uuid::now_v7())),
                user_id: user,
            },
            json: Arc::from(r#"{"type":"task.assigned","x":"a|b\nc"}"#),
        }
    }

    #[test]
    fn activities_round_trip() {
        for user in [None, Some(UserId::from(Uuid::now_v7()))] {
            let e = entry(user);
            let Ok(Message::Activity(back)) = decode(&encode_activity(&e)) else {
                panic!("did not decode");
            };
            assert_eq!(back.seq, e.seq);
            assert_eq!(back.route, e.route);
            assert_eq!(back.json, e.json);
        }
    }

    #[test]
    fn presence_round_trips() {
        let status = PresenceStatus::new(PresenceState::Typing, Some(PresenceField::Comment))
            .expect("a status");
        let view = PresenceView {
            user: PresenceUser {
                user_id: UserId::from(Uuid::now_v7()),
                display_name: "Ann \"the | one\"".into(),
            },
            stamped: Stamped::new(status, 1_700_000_000_123),
        };
        let v = Viewer::new(
            TeamId::from(Uuid::now_v7()),
            TaskId::from(Uuid::now_v7()),
            &view,
        );
        assert_eq!(v.view(), Some(view.clone()));
        for (sign, kind) in [
            ('+', PresenceKind::Joined),
            ('-', PresenceKind::Left),
            ('~', PresenceKind::Updated),
        ] {
            let msg = format!("P{sign}{}", v.encode());
            let Ok(Message::Presence(ev)) = decode(msg.as_bytes()) else {
                panic!("did not decode {msg}");
            };
            assert_eq!(ev.kind, kind);
            assert_eq!(ev.task_id, v.task_id);
            assert_eq!(ev.user, view.user);
            assert_eq!(ev.status, status);
        }
    }

    /// A record written before states existed reads as viewing.
    #[test]
    fn a_record_without_a_state_is_viewing() {
        let id = Uuid::now_v7();
        let old =
            format!(r#"P+{{"teamId":"{id}","taskId":"{id}","userId":"{id}","displayName":"Ann"}}"#);
        let Ok(Message::Presence(ev)) = decode(old.as_bytes()) else {
            panic!("did not decode");
        };
        assert_eq!(ev.status, PresenceStatus::VIEWING);
        let bad = format!(
            r#"P~{{"teamId":"{id}","taskId":"{id}","userId":"{id}","displayName":"A","state":"typing"}}"#
        );
        assert_eq!(
            decode(bad.as_bytes()).err(),
            Some(WireError("presence state")),
            "typing without a field"
        );
    }

    #[test]
    fn inbox_marks_round_trip() {
        assert!(matches!(decode(&encode_inbox(17)), Ok(Message::Inbox(17))));
        match decode(&encode_stream_message("ab12", r#"{"type":"ping"}"#)) {
            Ok(Message::StreamMessage { stream, text }) => {
                assert_eq!(
                    (stream.as_str(), text.as_str()),
                    ("ab12", r#"{"type":"ping"}"#)
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"A",
            b"A1|task.created",
            b"Ax|task.created|a|||||\n{}",
            b"P*{}",
            b"P+{",
            b"I",
            b"Ix",
            b"I-3",
            b"Z",
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }
}
