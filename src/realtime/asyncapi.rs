//! The AsyncAPI 3 document of the socket protocol, assembled from the message types' schemas
//! (the same `utoipa` schemas the OpenAPI document uses), so it cannot drift from the code.

use serde_json::{Value, json};
use utoipa::OpenApi;

use super::protocol::{ClientMessage, PresenceActivity, ServerMessage};
use crate::domain::Activity;

#[derive(OpenApi)]
#[openapi(components(schemas(ClientMessage, ServerMessage, PresenceActivity, Activity)))]
struct Schemas;

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
                "description": "presence.joined / presence.left: ephemeral, no seq, not replayed.",
                "required": ["type", "activity"],
                "properties": { "type": { "const": "activity" }, "activity": refs("PresenceActivity") }
            }),
        );
        map.insert(
            "ServerFrame".into(),
            json!({
                "description": "Any frame the server sends.",
                "anyOf": [refs("ServerMessage"), refs("ActivityFrame"), refs("PresenceFrame")]
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
                task rooms; resume with `since`. Close codes: 4001 unauthorized or token expired, \
                4008 slow consumer or rate limit, 1001 server going away, 1009 frame too large, \
                1007 text frame not UTF-8, 1002 other WebSocket protocol errors."
        },
        "defaultContentType": "application/json",
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
            }
        },
        "operations": {
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
    use crate::domain::Team;
    use crate::domain::activity::{ActivityData, ActivityDraft, LogEntry};
    use crate::domain::{Board, BoardId, TaskId, TeamId, UserId};
    use crate::realtime::protocol::{
        ErrorCode, PresenceUser, Scope, activity_frame, presence_frame,
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
                presence: Some(vec![user.clone()]),
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
            presence_frame(true, team_id, task_id, &user).to_string(),
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
            json!({"type": "unsubscribe", "boardId": id}),
            json!({"type": "auth", "token": "x"}),
            json!({"type": "ping"}),
        ] {
            assert!(v.is_valid(&frame), "{frame} should match ClientFrame");
        }
        assert!(!v.is_valid(&json!({"type": "launch"})));
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
}
