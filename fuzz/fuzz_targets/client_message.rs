//! Fuzzes what the realtime socket does with one inbound client frame, as far as it is pure:
//! the decoder (`realtime::protocol::parse`), the scope check of subscribe/unsubscribe, the
//! verification of an `auth` token, and the server frames written in answer (which must always be
//! JSON with the contract's `type`/`code`).
//!
//! Bytes that are not UTF-8 stand for a binary frame: the connection answers it with a
//! `bad_request` error frame, and the bytes are also decoded lossily as a text frame. Inputs above
//! the server's default inbound limit (64 KiB) stand for an oversized frame: the connection closes
//! with 1009 without decoding it.

#![no_main]

use std::borrow::Cow;
use std::sync::LazyLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use taskforge::realtime::outbox::CloseReason;
use taskforge::realtime::protocol::{
    ClientMessage, ErrorCode, Scope, ScopeIds, ServerMessage, parse,
};
use taskforge::service::{AuthError, TokenService};

/// The server's default `TASKFORGE_WS_MAX_MESSAGE_BYTES`.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The secret the seed tokens are signed with (see the README).
const SECRET: &[u8] = b"fuzz-secret-fuzz-secret-fuzz-sec";

static TOKENS: LazyLock<TokenService> = LazyLock::new(|| {
    TokenService::new(
        SECRET,
        Duration::from_secs(15 * 60),
        Duration::from_secs(30 * 24 * 3600),
    )
});

/// A server frame as a client reads it: always a JSON object with a `type`.
fn sent(msg: &ServerMessage) -> Value {
    let frame = msg.frame();
    let v: Value = serde_json::from_str(frame.as_str()).expect("a server frame is not JSON");
    assert!(v["type"].is_string(), "a server frame has no type: {v}");
    v
}

/// `code` as the contract spells it.
fn error_frame(code: &'static str, message: impl Into<String>) -> Value {
    let typed = ErrorCode::parse(code).expect("a code of the contract");
    let v = sent(&ServerMessage::error(typed, message));
    assert_eq!(v["type"], "error");
    assert_eq!(v["code"], code);
    assert!(v["message"].is_string());
    v
}

/// The close the connection sends for `reason`, and the error frame before it.
fn closes(reason: CloseReason, code: u16, error: Option<&str>) {
    assert_eq!(reason.code(), Some(code));
    assert_eq!(reason.error_code().map(ErrorCode::as_str), error);
}

/// The one id field a scope is written as, in `subscribed`/`unsubscribed`/scoped errors.
fn check_scope(scope: Scope) {
    assert_eq!(Scope::of_room(scope.room()), Some(scope));
    let (key, id) = match scope {
        Scope::Team(id) => ("teamId", id.to_string()),
        Scope::Board(id) => ("boardId", id.to_string()),
        Scope::Task(id) => ("taskId", id.to_string()),
    };
    let ids = serde_json::to_value(ScopeIds::from(scope)).expect("scope ids serialize");
    let obj = ids.as_object().expect("scope ids are an object");
    assert_eq!(obj.len(), 1, "scope ids name more than one room: {ids}");
    assert_eq!(obj[key], Value::String(id.clone()));

    let left = sent(&ServerMessage::Unsubscribed {
        scope,
        reason: None,
    });
    assert_eq!(left["type"], "unsubscribed");
    assert_eq!(left[key], Value::String(id.clone()));
    let joined = sent(&ServerMessage::Subscribed {
        scope,
        seq: 0,
        presence: None,
    });
    assert_eq!(joined[key], Value::String(id.clone()));
    let refused = sent(&ServerMessage::scoped_error(
        ErrorCode::Forbidden,
        "not a member",
        scope,
    ));
    assert_eq!(refused["code"], "forbidden");
    assert_eq!(refused[key], Value::String(id));
}

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_MESSAGE_BYTES {
        // Refused by the socket's frame limit before any decoding.
        closes(CloseReason::TooBig, 1009, None);
        return;
    }
    let text: Cow<'_, str> = match std::str::from_utf8(data) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => {
            // What an authenticated socket answers to a binary frame (it stays open).
            error_frame("bad_request", "binary frames are not part of the protocol");
            String::from_utf8_lossy(data)
        }
    };

    let parsed = parse(&text);
    // Before authentication only `auth` is accepted; anything else closes 4001.
    if !matches!(parsed, Ok(ClientMessage::Auth { .. })) {
        closes(CloseReason::Unauthorized, 4001, Some("unauthorized"));
    }
    match parsed {
        Err(why) => {
            assert!(!why.is_empty(), "an empty decoding error for {text:?}");
            error_frame("bad_request", why);
        }
        Ok(ClientMessage::Ping) => {
            assert_eq!(sent(&ServerMessage::Pong)["type"], "pong");
        }
        Ok(ClientMessage::Auth { token }) => match TOKENS.verify(&token) {
            Ok(p) => {
                let v = sent(&ServerMessage::Authenticated {
                    user_id: p.user_id,
                    expires_at: p.expires_at,
                });
                assert_eq!(v["type"], "authenticated");
                assert_eq!(v["userId"], Value::String(p.user_id.to_string()));
                assert!(v["expiresAt"].is_string());
            }
            Err(AuthError::Expired) => {
                closes(CloseReason::TokenExpired, 4001, Some("token_expired"))
            }
            Err(AuthError::Invalid) => {
                closes(CloseReason::Unauthorized, 4001, Some("unauthorized"))
            }
        },
        Ok(ClientMessage::Subscribe(fields) | ClientMessage::Unsubscribe(fields)) => {
            match fields.scope() {
                Ok(scope) => check_scope(scope),
                Err(why) => {
                    let named = [
                        fields.team_id.is_some(),
                        fields.board_id.is_some(),
                        fields.task_id.is_some(),
                    ]
                    .into_iter()
                    .filter(|named| *named)
                    .count();
                    assert_ne!(named, 1, "a scope naming one room was refused: {why}");
                    error_frame("bad_request", why);
                }
            }
        }
    }
});
