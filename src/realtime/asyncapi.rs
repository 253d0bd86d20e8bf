//! The AsyncAPI 3 document of the socket protocol, assembled from the message types' schemas
//! (the same `utoipa` schemas the OpenAPI document uses) and from the routing table
//! (`Route::rooms`), so it cannot drift from the code.

use serde_json::{Map, Value, json};
use utoipa::OpenApi;
use uuid::Uuid;

use super::protocol::{ClientMessage, PresenceActivity, ServerMessage};
use crate::domain::notify::{Notification, ReadMark};
use crate::domain::{Activity, ActivityKind, BoardId, Route, TaskId, TeamId, UserId};

#[derive(OpenApi)]
#[openapi(components(schemas(
    ClientMessage,
    ServerMessage,
    PresenceActivity,
    Activity,
    Notification,
    ReadMark
)))]
struct Schemas;

const ROUTING_DESCRIPTION: &str = "The rooms each logged activity type is delivered to, by kind \
    of room. `team`, `board` and `task` are the rooms a client subscribes to; the activity's teamId, \
    boardId or taskId says which one (board.* activities carry boardId but reach the team room \
    only). `user` is one user's own sockets (the new assignee of task.assigned, the member of \
    member.*), not a scope a client subscribes to. A task move also reaches the room of the board \
    the task left: the task.updated whose changes include boardId (from: the board left), and the \
    task.assigned of the same PATCH, committed right after it at seq + 1.";

/// The `x-taskforge-routing` extension: for every activity type, the kinds of room it reaches,
/// read off `Route::rooms` for a route with every id known and a task that moved (a moved task's
/// two boards are both `board`: each kind is listed once, in the order `Route::rooms` gives).
pub fn routing() -> Value {
    let rooms: Map<String, Value> = ActivityKind::ALL
        .iter()
        .map(|&kind| {
            let route = Route {
                kind,
                team_id: TeamId::from(Uuid::from_u128(1)),
                board_id: Some(BoardId::from(Uuid::from_u128(2))),
                prev_board_id: Some(BoardId::from(Uuid::from_u128(3))),
                task_id: Some(TaskId::from(Uuid::from_u128(4))),
                user_id: Some(UserId::from(Uuid::from_u128(5))),
            };
            let mut kinds: Vec<&str> = Vec::new();
            for room in route.rooms() {
                if !kinds.contains(&room.kind()) {
                    kinds.push(room.kind());
                }
            }
            (kind.as_str().to_owned(), json!(kinds))
        })
        .collect();
    json!({ "description": ROUTING_DESCRIPTION, "rooms": rooms })
}

/// The document served at `/asyncapi.json`.
pub fn document() -> Value {
    let mut schemas = serde_json::to_value(
        Schemas::openapi()
            .components
            .map(|c| c.schemas)
            .unwrap_or_default(),
    )
    .unwrap_or_else(|_| json!({}));
    let refs = |name: &str| json!({ "$ref": format!("#/components/schemas/{name}") });
    if let Some(map) = schemas.as_object_mut() {
        map.insert(
            "ActivityFrame".into(),
            json!({
                "type": "object",
                "description": "A domain event, logged with a per-team seq.",
                "required": ["type", "activity"],
                "properties": { "type": { "const": "activity" }, "activity": refs("Activity") }
            }),
        );
        map.insert(
            "PresenceFrame".into(),
            json!({
                "type": "object",
                "description": "presence.joined / presence.left / presence.updated: ephemeral, no seq, \
                    not replayed, never sent about the receiving socket's own user. presence.updated \
                    carries the user's state (and field) in data: the most active of their \
                    connections to the task room on every instance.",
                "required": ["type", "activity"],
                "properties": { "type": { "const": "activity" }, "activity": refs("PresenceActivity") }
            }),
        );
        map.insert(
            "NotificationCreatedFrame".into(),
            json!({
                "type": "object",
                "description": "A notification in the user's inbox stream (after subscribe with inbox: true).",
                "required": ["type", "seq", "notification"],
                "properties": {
                    "type": { "const": "notification.created" },
                    "seq": { "type": "integer", "format": "int64" },
                    "notification": refs("Notification")
                }
            }),
        );
        map.insert(
            "NotificationReadFrame".into(),
            json!({
                "description": "A mark-read in the user's inbox stream: ids marked, or every notification up to `upto`.",
                "allOf": [
                    refs("ReadMark"),
                    { "type": "object", "required": ["type"], "properties": { "type": { "const": "notification.read" } } }
                ]
            }),
        );
        map.insert(
            "ServerFrame".into(),
            json!({
                "description": "Any frame the server sends.",
                "anyOf": [
                    refs("ServerMessage"),
                    refs("ActivityFrame"),
                    refs("PresenceFrame"),
                    refs("NotificationCreatedFrame"),
                    refs("NotificationReadFrame")
                ]
            }),
        );
        map.insert(
            "ClientFrame".into(),
            json!({ "description": "Any frame a client sends.", "allOf": [refs("ClientMessage")] }),
        );
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "TaskForge realtime",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "JSON text frames over a WebSocket. Authenticate with ?token=, an \
                Authorization: Bearer header, or a first `auth` message. Subscribe to team, board and \
                task rooms; resume with `since`. Subscribe with `inbox: true` for the user's own \
                notification stream (notification.created, notification.read), resumed with its own \
                `since`. In a task room, send `presence` with a state (viewing, editing or typing; \
                editing and typing name a field) and repeat it every ~2 s while it holds: editing \
                and typing fall back to viewing after TASKFORGE_PRESENCE_STATE_TTL (5 s) without \
                a repeat, and changes take effect at most 5 times a second per socket (the last \
                one wins). The room's other users receive presence.updated when what the user is \
                shown doing changes; `subscribed` lists each user's state. \
                Close codes: 4001 unauthorized or token expired, \
                4008 slow consumer or rate limit, 1001 server going away, 1009 frame too large, \
                1007 text frame not UTF-8, 1002 other WebSocket protocol errors. \
                Where WebSockets are blocked, the same server messages come as Server-Sent Events \
                from GET /realtime/sse (channel realtimeSse): scopes are fixed by the query \
                (repeatable teamId, boardId, taskId; inbox=true), the first event is `stream` \
                (its streamId), each event's id is the stream's resume position for every team \
                (`<teamId>:<seq>,…,inbox:<seq>`) that Last-Event-ID (or ?lastEventId=) resumes, and \
                client messages other than subscribe/unsubscribe are POSTed to \
                /realtime/sse/{streamId} (channel realtimeSseMessages, answered 202)."
        },
        "defaultContentType": "application/json",
        "x-taskforge-routing": routing(),
        "channels": {
            "realtime": {
                "address": "/realtime",
                "messages": {
                    "client": { "$ref": "#/components/messages/ClientFrame" },
                    "server": { "$ref": "#/components/messages/ServerFrame" }
                },
                "bindings": { "ws": {
                    "method": "GET",
                    "query": { "type": "object", "properties": { "token": { "type": "string", "description": "an access token" } } }
                } }
            },
            "realtimeSse": {
                "address": "/realtime/sse",
                "description": "text/event-stream: one server message per event (data: the JSON; no event name), `: keepalive` comments, `id:` on events that move the stream's position.",
                "messages": {
                    "server": { "$ref": "#/components/messages/ServerFrame" }
                },
                "bindings": { "http": {
                    "method": "GET",
                    "query": { "type": "object", "properties": {
                        "token": { "type": "string", "description": "an access token (or Authorization: Bearer)" },
                        "teamId": { "type": "array", "items": { "type": "string", "format": "uuid" } },
                        "boardId": { "type": "array", "items": { "type": "string", "format": "uuid" } },
                        "taskId": { "type": "array", "items": { "type": "string", "format": "uuid" } },
                        "inbox": { "type": "boolean" },
                        "since": { "type": "integer", "minimum": 0, "description": "resume a stream whose scopes are all of one team" },
                        "inboxSince": { "type": "integer", "minimum": 0 },
                        "lastEventId": { "type": "string", "description": "resume position, as the Last-Event-ID header" }
                    } }
                } }
            },
            "realtimeSseMessages": {
                "address": "/realtime/sse/{streamId}",
                "parameters": { "streamId": { "description": "from the stream's first event" } },
                "messages": {
                    "client": { "$ref": "#/components/messages/ClientFrame" }
                },
                "bindings": { "http": { "method": "POST" } }
            }
        },
        "operations": {
            "sendServerEvents": {
                "action": "send",
                "channel": { "$ref": "#/channels/realtimeSse" },
                "messages": [{ "$ref": "#/channels/realtimeSse/messages/server" }]
            },
            "receivePostedMessages": {
                "action": "receive",
                "channel": { "$ref": "#/channels/realtimeSseMessages" },
                "messages": [{ "$ref": "#/channels/realtimeSseMessages/messages/client" }]
            },
            "receiveClientFrames": {
                "action": "receive",
                "channel": { "$ref": "#/channels/realtime" },
                "messages": [{ "$ref": "#/channels/realtime/messages/client" }]
            },
            "sendServerFrames": {
                "action": "send",
                "channel": { "$ref": "#/channels/realtime" },
                "messages": [{ "$ref": "#/channels/realtime/messages/server" }]
            }
        },
        "components": {
            "schemas": schemas,
            "messages": {
                "ClientFrame": { "name": "ClientFrame", "payload": refs("ClientFrame") },
                "ServerFrame": { "name": "ServerFrame", "payload": refs("ServerFrame") }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::NotificationId;
    use crate::domain::Team;
    use crate::domain::activity::{ActivityData, ActivityDraft, LogEntry};
    use crate::domain::notify::{InboxEvent, Reason};
    use crate::domain::presence::{PresenceField, PresenceState, PresenceStatus};
    use crate::domain::{Board, BoardId, TaskId, TeamId, UserId};
    use crate::realtime::protocol::{
        ErrorCode, PresenceEntry, PresenceUser, Scope, activity_frame, inbox_frame, presence_frame,
        presence_updated_frame,
    };
    use std::sync::Arc;
    use time::OffsetDateTime;
    use uuid::Uuid;

    fn validator(name: &str) -> jsonschema::Validator {
        let doc = document();
        let root = json!({ "$ref": format!("#/components/schemas/{name}"), "components": doc["components"] });
        jsonschema::validator_for(&root).expect("the schemas compile")
    }

    #[test]
    fn every_kind_of_server_frame_matches_server_frame() {
        let v = validator("ServerFrame");
        let id = Uuid::now_v7();
        let (team_id, board_id, task_id, user_id) = (
            TeamId::from(id),
            BoardId::from(id),
            TaskId::from(id),
            UserId::from(id),
        );
        let user = PresenceUser {
            user_id,
            display_name: "Ann".into(),
        };
        let now = crate::domain::model::timestamp::truncate(OffsetDateTime::now_utc());
        let team = Team {
            id: team_id,
            name: "T".into(),
            created_at: now,
            default_board_id: board_id,
        };
        let board = Board {
            id: board_id,
            team_id,
            name: "B".into(),
            created_at: now,
        };
        let frames: Vec<String> = vec![
            ServerMessage::Subscribed {
                scope: Scope::Team(team_id),
                seq: 1,
                presence: None,
            }
            .frame()
            .to_string(),
            ServerMessage::Subscribed {
                scope: Scope::Task(task_id),
                seq: 0,
                presence: Some(vec![
                    PresenceEntry {
                        user_id,
                        display_name: "Ann".into(),
                        state: PresenceState::Viewing,
                        field: None,
                    },
                    PresenceEntry {
                        user_id,
                        display_name: "Bob".into(),
                        state: PresenceState::Typing,
                        field: Some(PresenceField::Comment),
                    },
                ]),
            }
            .frame()
            .to_string(),
            ServerMessage::Unsubscribed {
                scope: Scope::Board(board_id),
                reason: Some("membership_revoked"),
            }
            .frame()
            .to_string(),
            ServerMessage::error(ErrorCode::BadRequest, "no")
                .frame()
                .to_string(),
            ServerMessage::scoped_error(ErrorCode::Forbidden, "no", Scope::Task(task_id))
                .frame()
                .to_string(),
            ServerMessage::Authenticated {
                user_id,
                expires_at: now,
            }
            .frame()
            .to_string(),
            ServerMessage::Pong.frame().to_string(),
            ServerMessage::Stream {
                stream_id: "0f".into(),
                user_id,
                heartbeat_ms: 30_000,
            }
            .frame()
            .to_string(),
            presence_frame(true, team_id, task_id, &user).to_string(),
            presence_frame(false, team_id, task_id, &user).to_string(),
            presence_updated_frame(team_id, task_id, &user, PresenceStatus::VIEWING).to_string(),
            presence_updated_frame(
                team_id,
                task_id,
                &user,
                PresenceStatus::new(PresenceState::Editing, Some(PresenceField::Title))
                    .expect("a status"),
            )
            .to_string(),
            ServerMessage::InboxSubscribed {
                inbox: true,
                seq: 3,
                unread_count: 1,
            }
            .frame()
            .to_string(),
            ServerMessage::InboxUnsubscribed { inbox: true }
                .frame()
                .to_string(),
            inbox_frame(&InboxEvent::Created(Box::new(Notification {
                id: NotificationId::from(id),
                seq: 4,
                team_id,
                task_id,
                board_id: Some(board_id),
                task_title: "T".into(),
                activity_type: "comment.created".into(),
                reasons: vec![Reason::Commented, Reason::Mentioned],
                actor_user_id: user_id,
                actor_display_name: "Ann".into(),
                comment_id: None,
                excerpt: Some("hi @Bob".into()),
                created_at: now,
                read_at: None,
            })))
            .to_string(),
            inbox_frame(&InboxEvent::Read(ReadMark {
                seq: 5,
                ids: Some(vec![NotificationId::from(id)]),
                upto: None,
                unread_count: 0,
            }))
            .to_string(),
            inbox_frame(&InboxEvent::Read(ReadMark {
                seq: 6,
                ids: None,
                upto: Some(4),
                unread_count: 0,
            }))
            .to_string(),
        ]
        .into_iter()
        .chain(
            [
                ActivityData::TeamUpdated { team },
                ActivityData::BoardCreated { board },
            ]
            .into_iter()
            .map(|data| {
                let (activity, route) =
                    ActivityDraft::new(data, user_id, now).into_activity(team_id, 7);
                let json = serde_json::to_string(&activity).expect("serializes");
                activity_frame(&LogEntry {
                    seq: 7,
                    route,
                    json: Arc::from(json),
                })
                .to_string()
            }),
        )
        .collect();
        for frame in frames {
            let value: Value = serde_json::from_str(&frame).expect("frames are JSON");
            let errors: Vec<String> = v.iter_errors(&value).map(|e| e.to_string()).collect();
            assert!(
                errors.is_empty(),
                "{frame} does not match ServerFrame: {errors:?}"
            );
        }
        assert!(
            !v.is_valid(&json!({"type": "subscribed"})),
            "a subscribed frame without seq must not match"
        );
    }

    #[test]
    fn client_frames_match_client_frame() {
        let v = validator("ClientFrame");
        let id = Uuid::now_v7();
        for frame in [
            json!({"type": "subscribe", "teamId": id}),
            json!({"type": "subscribe", "taskId": id, "since": 3}),
            json!({"type": "subscribe", "inbox": true, "since": 3}),
            json!({"type": "unsubscribe", "inbox": true}),
            json!({"type": "unsubscribe", "boardId": id}),
            json!({"type": "auth", "token": "x"}),
            json!({"type": "ping"}),
            json!({"type": "presence", "taskId": id, "state": "viewing"}),
            json!({"type": "presence", "taskId": id, "state": "typing", "field": "comment"}),
        ] {
            assert!(v.is_valid(&frame), "{frame} should match ClientFrame");
        }
        assert!(!v.is_valid(&json!({"type": "launch"})));
        for bad in [
            json!({"type": "presence", "taskId": id}),
            json!({"type": "presence", "taskId": id, "state": "dancing"}),
            json!({"type": "presence", "taskId": id, "state": "editing", "field": "body"}),
        ] {
            assert!(!v.is_valid(&bad), "{bad} should not match ClientFrame");
        }
    }

    #[test]
    fn the_document_names_every_message() {
        let doc = document();
        assert_eq!(doc["asyncapi"], "3.0.0");
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        for name in [
            "ClientMessage",
            "ServerMessage",
            "Activity",
            "PresenceActivity",
            "ServerFrame",
            "ClientFrame",
        ] {
            assert!(schemas.contains_key(name), "missing schema {name}");
        }
        let text = doc.to_string();
        for kind in [
            "subscribe",
            "unsubscribe",
            "auth",
            "ping",
            "presence",
            "presence.joined",
            "presence.left",
            "presence.updated",
            "subscribed",
            "unsubscribed",
            "authenticated",
            "pong",
            "error",
        ] {
            assert!(
                text.contains(&format!("\"{kind}\"")),
                "missing message type {kind}"
            );
        }
    }

    /// The routing table in the document is `Route::rooms`: with every id known, a kind's listed
    /// room kinds are exactly those of the rooms it reaches; with some ids missing, or a task that
    /// did not move, it reaches no room of a kind not listed. Every kind is listed, and no other.
    #[test]
    fn the_routing_extension_is_route_rooms_for_every_kind() {
        let doc = document();
        let table = doc["x-taskforge-routing"]["rooms"]
            .as_object()
            .expect("x-taskforge-routing.rooms is an object");
        let listed = |kind: ActivityKind| -> Vec<&str> {
            table
                .get(kind.as_str())
                .unwrap_or_else(|| panic!("{} is not in x-taskforge-routing", kind.as_str()))
                .as_array()
                .expect("an array of room kinds")
                .iter()
                .map(|k| k.as_str().expect("a room kind is a string"))
                .collect()
        };
        assert_eq!(table.len(), ActivityKind::ALL.len(), "{table:?}");
        // The same types as the schema's `type` enum, which the client's ActivityType comes from.
        let schema_types: Vec<&str> = doc["components"]["schemas"]["ActivityData"]["oneOf"]
            .as_array()
            .expect("ActivityData.oneOf")
            .iter()
            .map(|v| v["properties"]["type"]["enum"][0].as_str().expect("a type"))
            .collect();
        let mut keys: Vec<&str> = table.keys().map(String::as_str).collect();
        let mut schema_sorted = schema_types.clone();
        keys.sort_unstable();
        schema_sorted.sort_unstable();
        assert_eq!(keys, schema_sorted);

        let id = |n: u128| Uuid::from_u128(n);
        let (team, board, prev, task, user) = (
            TeamId::from(id(1)),
            BoardId::from(id(2)),
            BoardId::from(id(3)),
            TaskId::from(id(4)),
            UserId::from(id(5)),
        );
        for &kind in ActivityKind::ALL {
            let kinds = listed(kind);
            let full = Route {
                kind,
                team_id: team,
                board_id: Some(board),
                prev_board_id: Some(prev),
                task_id: Some(task),
                user_id: Some(user),
            };
            let mut reached: Vec<&str> = full.rooms().iter().map(|r| r.kind()).collect();
            reached.dedup();
            assert_eq!(kinds, reached, "{}", kind.as_str());
            for mask in 0..32u8 {
                let on = |bit: u8| mask & (1 << bit) != 0;
                let route = Route {
                    kind,
                    team_id: team,
                    board_id: on(0).then_some(board),
                    prev_board_id: if on(1) {
                        Some(prev)
                    } else {
                        on(2).then_some(board)
                    },
                    task_id: on(3).then_some(task),
                    user_id: on(4).then_some(user),
                };
                for room in route.rooms() {
                    assert!(
                        kinds.contains(&room.kind()),
                        "{} reaches {room:?}, a {} room the document does not list",
                        kind.as_str(),
                        room.kind()
                    );
                }
            }
        }
        // The mapping back to kinds, spelled out for a few kinds.
        assert_eq!(
            listed(ActivityKind::TaskAssigned),
            ["board", "task", "user"]
        );
        assert_eq!(listed(ActivityKind::TaskDeleted), ["team", "board", "task"]);
        assert_eq!(listed(ActivityKind::MemberRemoved), ["team", "user"]);
        assert_eq!(listed(ActivityKind::BoardDeleted), ["team"]);
        let about = doc["x-taskforge-routing"]["description"]
            .as_str()
            .expect("a description");
        assert!(about.contains("seq + 1") && about.contains("changes include boardId"));
    }
}
