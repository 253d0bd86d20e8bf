//! Property tests of the socket protocol's message types (no server process).
//!
//! Client -> server: valid messages of every type (subscribe / unsubscribe with a team, board or
//! task scope and an optional `since`, auth, ping), written as a client would (a JSON object in
//! any key order, with unknown extra fields, explicit nulls and whitespace), parse with the
//! server's `realtime::protocol::parse` into exactly what was generated, and match the
//! `ClientFrame` schema of the AsyncAPI document. Malformed ones (truncated, unknown type, ids that
//! are not UUIDs, fields of the wrong JSON type, zero or two scopes, scalars) are refused, and
//! `parse` never panics, whatever the input.
//!
//! Server -> client: `subscribed`, `unsubscribed`, `error`, `authenticated`, `pong`, activity
//! frames (every activity type, built as the store builds them) and presence frames serialize to
//! JSON whose fields are exactly those the contract requires, with the generated values, that
//! deserialize back (`Activity`) to what was serialized, and that match `ServerFrame` of the
//! AsyncAPI document.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use proptest::test_runner::Config as PropConfig;
use serde_json::{Value, json};
use taskforge::domain::activity::{ACTIVITY_VERSION, ActivityData, ActivityDraft, LogEntry};
use taskforge::domain::model::timestamp;
use taskforge::domain::presence::{PresenceField, PresenceState, PresenceStatus};
use taskforge::domain::webhook::Webhook;
use taskforge::domain::{
    Activity, Board, Change, Comment, Label, Member, Priority, Role, Task, TaskId, TaskStatus,
    Team, TeamId, User, UserId,
};
use taskforge::realtime::asyncapi;
use taskforge::realtime::protocol::{
    ClientMessage, ErrorCode, PresenceEntry, PresenceUser, Scope, ScopeFields, ServerMessage,
    activity_frame, parse, presence_frame, presence_updated_frame,
};
use time::OffsetDateTime;
use uuid::Uuid;

const CASES: u32 = 256;

const SCOPE_KEYS: [&str; 3] = ["teamId", "boardId", "taskId"];
const MESSAGE_FIELDS: [&str; 6] = ["type", "teamId", "boardId", "taskId", "since", "token"];
const ERROR_CODES: [&str; 8] = [
    "unauthorized",
    "token_expired",
    "forbidden",
    "bad_request",
    "too_many_subscriptions",
    "rate_limited",
    "slow_consumer",
    "resume_unavailable",
];

fn config() -> PropConfig {
    PropConfig {
        cases: CASES,
        // Failures are reported with their minimal input; nothing is written next to the tests.
        failure_persistence: None,
        ..PropConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// AsyncAPI schemas
// ---------------------------------------------------------------------------------------------

fn validator(name: &'static str) -> &'static jsonschema::Validator {
    static SERVER: OnceLock<jsonschema::Validator> = OnceLock::new();
    static CLIENT: OnceLock<jsonschema::Validator> = OnceLock::new();
    let cell = match name {
        "ServerFrame" => &SERVER,
        _ => &CLIENT,
    };
    cell.get_or_init(|| {
        let doc = asyncapi::document();
        let root = json!({
            "$ref": format!("#/components/schemas/{name}"),
            "components": doc["components"],
        });
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&root)
            .unwrap_or_else(|e| panic!("/asyncapi.json {name} does not compile: {e}"))
    })
}

fn schema_errors(name: &'static str, v: &Value) -> Vec<String> {
    validator(name)
        .iter_errors(v)
        .map(|e| format!("{e} (at {})", e.instance_path))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

/// Any UUID, as whichever id type the caller needs.
fn uuid<T: From<Uuid> + std::fmt::Debug>() -> impl Strategy<Value = T> {
    any::<u128>().prop_map(|n| T::from(Uuid::from_u128(n)))
}

fn scope() -> impl Strategy<Value = Scope> {
    (0..3usize, uuid::<Uuid>()).prop_map(|(k, id)| match k {
        0 => Scope::Team(id.into()),
        1 => Scope::Board(id.into()),
        _ => Scope::Task(id.into()),
    })
}

fn key_of(s: Scope) -> &'static str {
    match s {
        Scope::Team(_) => "teamId",
        Scope::Board(_) => "boardId",
        Scope::Task(_) => "taskId",
    }
}

fn id_of(s: Scope) -> Uuid {
    match s {
        Scope::Team(id) => id.into(),
        Scope::Board(id) => id.into(),
        Scope::Task(id) => id.into(),
    }
}

/// A JSON scalar: null, boolean, integer, any finite float, string.
fn json_scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ]
}

/// Any JSON value (bounded depth and size).
fn json_value() -> impl Strategy<Value = Value> {
    nest(json_scalar().boxed())
}

/// A JSON value whose floats have few decimals: serde_json's default (best-effort) float parsing
/// reads them back exactly, unlike some long ones (see `floats_are_written_exactly`).
fn json_value_exact() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<i32>().prop_map(|i| Value::from(f64::from(i) / 16.0)),
        any::<String>().prop_map(Value::from),
    ];
    nest(leaf.boxed())
}

fn nest(leaf: BoxedStrategy<Value>) -> impl Strategy<Value = Value> {
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z_]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Unknown fields a client may add (never one of the message's fields).
fn extras() -> impl Strategy<Value = Vec<(String, Value)>> {
    prop::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,8}", json_value(), 0..3).prop_map(|m| {
        m.into_iter()
            .filter(|(k, _)| !MESSAGE_FIELDS.contains(&k.as_str()))
            .collect()
    })
}

/// What a client means to send.
#[derive(Debug, Clone)]
enum Msg {
    Subscribe { scope: Scope, since: Option<i64> },
    Unsubscribe { scope: Scope, since: Option<i64> },
    Auth { token: String },
    Ping,
}

fn msg(since: impl Strategy<Value = i64> + Clone + 'static) -> impl Strategy<Value = Msg> {
    prop_oneof![
        3 => (scope(), prop::option::of(since.clone()))
            .prop_map(|(scope, since)| Msg::Subscribe { scope, since }),
        2 => (scope(), prop::option::of(since))
            .prop_map(|(scope, since)| Msg::Unsubscribe { scope, since }),
        2 => any::<String>().prop_map(|token| Msg::Auth { token }),
        1 => Just(Msg::Ping),
    ]
}

/// How the client writes it: which optional fields are explicit nulls, unknown extras, key
/// order, whitespace.
#[derive(Debug, Clone)]
struct Layout {
    null_since: bool,
    null_scopes: bool,
    extras: Vec<(String, Value)>,
    order: Vec<usize>,
    ws: Vec<&'static str>,
}

fn layout() -> impl Strategy<Value = Layout> {
    let ws = prop::collection::vec(
        prop_oneof![Just(""), Just(" "), Just("\n\t"), Just("\r\n ")],
        24,
    );
    (
        any::<bool>(),
        any::<bool>(),
        extras(),
        Just((0..16usize).collect::<Vec<_>>()).prop_shuffle(),
        ws,
    )
        .prop_map(|(null_since, null_scopes, extras, order, ws)| Layout {
            null_since,
            null_scopes,
            extras,
            order,
            ws,
        })
}

/// The message's fields, in the layout's order.
fn fields(m: &Msg, l: &Layout) -> Vec<(String, Value)> {
    let mut f: Vec<(String, Value)> = Vec::new();
    let scoped = |t: &str, scope: Scope, since: Option<i64>, f: &mut Vec<(String, Value)>| {
        f.push(("type".into(), json!(t)));
        f.push((key_of(scope).into(), json!(id_of(scope).to_string())));
        match since {
            Some(s) => f.push(("since".into(), json!(s))),
            None if l.null_since => f.push(("since".into(), Value::Null)),
            None => {}
        }
        if l.null_scopes {
            for k in SCOPE_KEYS.iter().filter(|k| **k != key_of(scope)) {
                f.push(((*k).into(), Value::Null));
            }
        }
    };
    match m {
        Msg::Subscribe { scope, since } => scoped("subscribe", *scope, *since, &mut f),
        Msg::Unsubscribe { scope, since } => scoped("unsubscribe", *scope, *since, &mut f),
        Msg::Auth { token } => {
            f.push(("type".into(), json!("auth")));
            f.push(("token".into(), json!(token)));
        }
        Msg::Ping => f.push(("type".into(), json!("ping"))),
    }
    f.extend(l.extras.iter().cloned());
    let mut ordered: Vec<(usize, (String, Value))> = f
        .into_iter()
        .enumerate()
        .map(|(i, kv)| (l.order.iter().position(|o| *o == i).unwrap_or(i), kv))
        .collect();
    ordered.sort_by_key(|(rank, _)| *rank);
    ordered.into_iter().map(|(_, kv)| kv).collect()
}

/// A JSON object written by hand (so key order and whitespace are the client's).
fn write_object(pairs: &[(String, Value)], ws: &[&str]) -> String {
    let w = |i: usize| ws.get(i % ws.len().max(1)).copied().unwrap_or("");
    let mut s = String::new();
    s.push_str(w(0));
    s.push('{');
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(w(3 * i + 1));
        s.push_str(&serde_json::to_string(k).unwrap());
        s.push_str(w(3 * i + 2));
        s.push(':');
        s.push_str(w(3 * i + 3));
        s.push_str(&serde_json::to_string(v).unwrap());
    }
    s.push_str(w(pairs.len() * 3 + 1));
    s.push('}');
    s.push_str(w(pairs.len() * 3 + 2));
    s
}

fn encode(m: &Msg, l: &Layout) -> String {
    write_object(&fields(m, l), &l.ws)
}

fn scope_fields_match(f: &ScopeFields, scope: Scope, since: Option<i64>) -> Result<(), String> {
    let parsed = f.scope().map_err(|e| format!("scope(): {e}"))?;
    if parsed != scope {
        return Err(format!("scope {parsed:?} != {scope:?}"));
    }
    if f.since != since {
        return Err(format!("since {:?} != {since:?}", f.since));
    }
    Ok(())
}

fn matches(m: &Msg, parsed: &ClientMessage) -> Result<(), String> {
    match (m, parsed) {
        (Msg::Subscribe { scope, since }, ClientMessage::Subscribe(f))
        | (Msg::Unsubscribe { scope, since }, ClientMessage::Unsubscribe(f)) => {
            scope_fields_match(f, *scope, *since)
        }
        (Msg::Auth { token }, ClientMessage::Auth { token: t }) if t == token => Ok(()),
        (Msg::Ping, ClientMessage::Ping) => Ok(()),
        _ => Err(format!("parsed as {parsed:?}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Client -> server
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// Every valid message parses into what the client meant, whatever the key order, unknown
    /// fields, explicit nulls and whitespace; and the AsyncAPI `ClientFrame` schema accepts it.
    #[test]
    fn valid_client_messages_round_trip(m in msg(0..=i64::MAX), l in layout()) {
        let text = encode(&m, &l);
        let parsed = parse(&text);
        prop_assert!(parsed.is_ok(), "{text} -> {parsed:?}");
        let parsed = parsed.unwrap();
        if let Err(e) = matches(&m, &parsed) {
            prop_assert!(false, "{text}: {e}");
        }
        let v: Value = serde_json::from_str(&text).unwrap();
        let errors = schema_errors("ClientFrame", &v);
        prop_assert!(errors.is_empty(), "ClientFrame rejects {text}: {errors:?}");
    }

    /// `since` is parsed as any 64-bit integer (negative ones are refused later, by the socket:
    /// see tests/realtime_protection.rs).
    #[test]
    fn any_i64_since_parses(m in msg(any::<i64>()), l in layout()) {
        let text = encode(&m, &l);
        match parse(&text) {
            Ok(p) => {
                if let Err(e) = matches(&m, &p) {
                    prop_assert!(false, "{text}: {e}");
                }
            }
            Err(e) => prop_assert!(false, "{text} -> Err({e})"),
        }
    }

    /// Ids are case-insensitive on input: an uppercase UUID names the same room.
    #[test]
    fn uppercase_ids_parse_to_the_same_id(s in scope(), sub in any::<bool>()) {
        let t = if sub { "subscribe" } else { "unsubscribe" };
        let text = json!({"type": t, key_of(s): id_of(s).to_string().to_uppercase()}).to_string();
        match parse(&text) {
            Ok(ClientMessage::Subscribe(f) | ClientMessage::Unsubscribe(f)) => {
                prop_assert_eq!(f.scope(), Ok(s));
            }
            other => prop_assert!(false, "{text} -> {other:?}"),
        }
    }

    /// Any strict prefix of a valid message (cut before its closing brace) is refused.
    #[test]
    fn truncated_messages_are_refused(m in msg(0..=i64::MAX), l in layout(), cut in any::<prop::sample::Index>()) {
        let text = encode(&m, &l);
        let end = text.rfind('}').unwrap();
        let mut at = cut.index(end + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let prefix = &text[..at];
        let r = parse(prefix);
        prop_assert!(r.is_err(), "{prefix:?} (a prefix of {text:?}) -> {r:?}");
    }

    /// An unknown `type` is refused.
    #[test]
    fn unknown_types_are_refused(t in any::<String>(), extra in extras()) {
        prop_assume!(!["subscribe", "unsubscribe", "auth", "ping", "presence"].contains(&t.as_str()));
        let mut pairs = vec![("type".to_string(), json!(t)), ("teamId".to_string(), json!(Uuid::nil()))];
        pairs.extend(extra);
        let text = write_object(&pairs, &[""]);
        let r = parse(&text);
        prop_assert!(r.is_err(), "{text} -> {r:?}");
    }

    /// A scope id that is not a UUID is refused.
    #[test]
    fn ids_that_are_not_uuids_are_refused(s in scope(), id in any::<String>(), sub in any::<bool>()) {
        prop_assume!(Uuid::parse_str(&id).is_err());
        let t = if sub { "subscribe" } else { "unsubscribe" };
        let text = json!({"type": t, key_of(s): id}).to_string();
        let r = parse(&text);
        prop_assert!(r.is_err(), "{text} -> {r:?}");
    }

    /// A field of the wrong JSON type is refused (`null` is "absent" for the optional ones).
    #[test]
    fn fields_of_the_wrong_type_are_refused(m in msg(0..=i64::MAX), l in layout(), wrong in json_value(), pick in any::<prop::sample::Index>()) {
        let mut pairs = fields(&m, &l);
        let known: Vec<usize> = pairs
            .iter()
            .enumerate()
            .filter(|(_, (k, _))| MESSAGE_FIELDS.contains(&k.as_str()))
            .map(|(i, _)| i)
            .collect();
        let i = known[pick.index(known.len())];
        let field = pairs[i].0.clone();
        let acceptable = match field.as_str() {
            "type" | "token" => wrong.is_string(),
            "since" => wrong.is_null() || wrong.is_i64(),
            // Scope ids: a string that is a UUID, or null.
            _ => wrong.is_null() || wrong.as_str().is_some_and(|s| Uuid::parse_str(s).is_ok()),
        };
        prop_assume!(!acceptable);
        pairs[i].1 = wrong;
        let text = write_object(&pairs, &l.ws);
        let r = parse(&text);
        prop_assert!(r.is_err(), "{field} = {}: {text} -> {r:?}", pairs[i].1);
    }

    /// Zero or several scopes parse, and `scope()` refuses them.
    #[test]
    fn zero_or_several_scopes_are_refused(
        present in prop::sample::select(vec![vec![], vec![0, 1], vec![0, 2], vec![1, 2], vec![0, 1, 2]]),
        ids in prop::collection::vec(uuid::<Uuid>(), 3),
        since in prop::option::of(0i64..1000),
        sub in any::<bool>(),
    ) {
        let mut m = json!({"type": if sub { "subscribe" } else { "unsubscribe" }});
        for i in present {
            m[SCOPE_KEYS[i]] = json!(ids[i]);
        }
        if let Some(s) = since {
            m["since"] = json!(s);
        }
        match parse(&m.to_string()) {
            Ok(ClientMessage::Subscribe(f) | ClientMessage::Unsubscribe(f)) => {
                prop_assert!(f.scope().is_err(), "{m} -> {:?}", f.scope());
            }
            other => prop_assert!(false, "{m} -> {other:?}"),
        }
    }

    /// Top-level JSON scalars are refused.
    #[test]
    fn scalars_are_refused(v in json_scalar()) {
        let text = v.to_string();
        let r = parse(&text);
        prop_assert!(r.is_err(), "{text} -> {r:?}");
    }

    /// `parse` never panics, and its error message is not empty and carries no position.
    #[test]
    fn parse_never_panics_on_text(s in any::<String>()) {
        if let Err(e) = parse(&s) {
            prop_assert!(!e.is_empty());
            prop_assert!(!e.contains(" at line "), "{e}");
        }
    }

    #[test]
    fn parse_never_panics_on_json(v in json_value(), t in prop::sample::select(vec!["subscribe", "unsubscribe", "auth", "ping"])) {
        let _ = parse(&v.to_string());
        let mut with_type = json!({"type": t});
        if let Value::Object(m) = &v {
            for (k, x) in m {
                with_type[k] = x.clone();
            }
        }
        let _ = parse(&with_type.to_string());
    }
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    for depth in [127, 128, 129, 1_000, 10_000, 100_000] {
        let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(parse(&arrays).is_err(), "depth {depth}");
        let in_field = format!(
            r#"{{"type":"subscribe","teamId":{}{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert!(parse(&in_field).is_err(), "depth {depth} in teamId");
        let objects = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
        assert!(parse(&objects).is_err(), "depth {depth} (objects)");
    }
    // Shallow unknown fields are ignored.
    let shallow = format!(
        r#"{{"type":"ping","x":{}{}}}"#,
        "[".repeat(50),
        "]".repeat(50)
    );
    assert!(matches!(parse(&shallow), Ok(ClientMessage::Ping)));
}

// ---------------------------------------------------------------------------------------------
// Server -> client
// ---------------------------------------------------------------------------------------------

/// A UTC timestamp at millisecond precision (what the server stores and sends), years 1970-2199.
fn ts() -> impl Strategy<Value = OffsetDateTime> {
    (0i64..7_258_118_400, 0u32..1000).prop_map(|(s, ms)| {
        OffsetDateTime::from_unix_timestamp(s)
            .unwrap()
            .replace_millisecond(ms as u16)
            .unwrap()
    })
}

/// Any instant with nanoseconds (years 1970-9999): sent at millisecond precision.
fn ts_nanos() -> impl Strategy<Value = OffsetDateTime> {
    (0i64..253_402_300_799, 0u32..1_000_000_000).prop_map(|(s, ns)| {
        OffsetDateTime::from_unix_timestamp(s)
            .unwrap()
            .replace_nanosecond(ns)
            .unwrap()
    })
}

fn text_value() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[ -~]{0,40}"]
}

fn presence_user() -> impl Strategy<Value = PresenceUser> {
    (uuid(), text_value()).prop_map(|(user_id, display_name)| PresenceUser {
        user_id,
        display_name,
    })
}

fn presence_status() -> impl Strategy<Value = PresenceStatus> {
    (
        prop::sample::select(PresenceState::ALL.to_vec()),
        prop::sample::select(PresenceField::ALL.to_vec()),
    )
        .prop_map(|(state, field)| PresenceStatus::new(state, Some(field)).unwrap())
}

fn presence_entry() -> impl Strategy<Value = PresenceEntry> {
    (presence_user(), presence_status()).prop_map(|(u, s)| PresenceEntry {
        user_id: u.user_id,
        display_name: u.display_name,
        state: s.state(),
        field: s.field(),
    })
}

fn user() -> impl Strategy<Value = User> {
    (
        uuid(),
        "[a-z0-9.]{1,12}@[a-z]{1,8}\\.test",
        text_value(),
        ts(),
    )
        .prop_map(|(id, email, display_name, created_at)| User {
            id,
            email,
            display_name,
            created_at,
        })
}

fn task() -> impl Strategy<Value = Task> {
    (
        (uuid(), uuid(), uuid(), text_value(), text_value()),
        (
            prop::sample::select(vec![
                TaskStatus::Todo,
                TaskStatus::InProgress,
                TaskStatus::Done,
                TaskStatus::Canceled,
            ]),
            prop::sample::select(vec![
                Priority::None,
                Priority::Low,
                Priority::Medium,
                Priority::High,
                Priority::Urgent,
            ]),
            prop::option::of(uuid()),
            prop::option::of((1970i32..2200, 1u8..=12, 1u8..=28)),
        ),
        // Positions exactly representable with few decimals (see the report on float parsing).
        (any::<i32>(), uuid(), ts(), ts(), 1i64..i64::MAX),
        prop::collection::vec(uuid(), 0..4),
    )
        .prop_map(
            |(
                (id, team_id, board_id, title, description),
                (status, priority, assignee_user_id, due),
                (pos, created_by, created_at, updated_at, version),
                label_ids,
            )| Task {
                id,
                team_id,
                board_id,
                title,
                description,
                status,
                priority,
                assignee_user_id,
                due_date: due.map(|(y, m, d)| {
                    time::Date::from_calendar_date(y, time::Month::try_from(m).unwrap(), d).unwrap()
                }),
                position: f64::from(pos) / 16.0,
                created_by,
                created_at,
                updated_at,
                version,
                label_ids,
            },
        )
}

fn label() -> impl Strategy<Value = Label> {
    (uuid(), uuid(), text_value(), "#[0-9a-f]{6}", ts()).prop_map(
        |(id, team_id, name, color, created_at)| Label {
            id,
            team_id,
            name,
            color,
            created_at,
        },
    )
}

fn comment() -> impl Strategy<Value = Comment> {
    (
        (uuid(), uuid(), uuid(), uuid()),
        text_value(),
        ts(),
        prop::option::of(ts()),
    )
        .prop_map(
            |((id, task_id, team_id, author_user_id), body, created_at, edited_at)| Comment {
                id,
                task_id,
                team_id,
                author_user_id,
                body,
                created_at,
                edited_at,
            },
        )
}

fn member() -> impl Strategy<Value = Member> {
    (
        uuid(),
        user(),
        prop::sample::select(vec![Role::Owner, Role::Admin, Role::Member, Role::Viewer]),
        ts(),
    )
        .prop_map(|(team_id, user, role, joined_at)| Member {
            team_id,
            user,
            role,
            joined_at,
        })
}

fn board() -> impl Strategy<Value = Board> {
    (uuid(), uuid(), text_value(), ts()).prop_map(|(id, team_id, name, created_at)| Board {
        id,
        team_id,
        name,
        created_at,
    })
}

fn team() -> impl Strategy<Value = Team> {
    (uuid(), text_value(), ts(), uuid()).prop_map(|(id, name, created_at, default_board_id)| Team {
        id,
        name,
        created_at,
        default_board_id,
    })
}

fn changes() -> impl Strategy<Value = BTreeMap<String, Change>> {
    prop::collection::btree_map(
        prop::sample::select(vec![
            "title".to_string(),
            "status".into(),
            "priority".into(),
            "position".into(),
            "assigneeUserId".into(),
            "dueDate".into(),
        ]),
        (json_value_exact(), json_value_exact()).prop_map(|(from, to)| Change { from, to }),
        0..4,
    )
}

fn activity_data() -> impl Strategy<Value = ActivityData> {
    prop_oneof![
        task().prop_map(|task| ActivityData::TaskCreated { task }),
        (task(), changes()).prop_map(|(task, changes)| ActivityData::TaskUpdated { task, changes }),
        (uuid(), uuid())
            .prop_map(|(task_id, board_id)| ActivityData::TaskDeleted { task_id, board_id }),
        (uuid(), prop::collection::vec(uuid(), 1..20), any::<u32>()).prop_map(
            |(board_id, task_ids, comment_count)| ActivityData::TaskImported {
                board_id,
                task_ids,
                comment_count
            }
        ),
        (task(), prop::option::of(uuid()), prop::option::of(uuid())).prop_map(|(task, a, p)| {
            ActivityData::TaskAssigned {
                task,
                assignee_user_id: a,
                previous_assignee_user_id: p,
            }
        }),
        comment().prop_map(|comment| ActivityData::CommentCreated { comment }),
        comment().prop_map(|comment| ActivityData::CommentUpdated { comment }),
        (uuid(), uuid()).prop_map(|(comment_id, task_id)| ActivityData::CommentDeleted {
            comment_id,
            task_id
        }),
        member().prop_map(|member| ActivityData::MemberAdded { member }),
        member().prop_map(|member| ActivityData::MemberUpdated { member }),
        uuid().prop_map(|user_id| ActivityData::MemberRemoved { user_id }),
        team().prop_map(|team| ActivityData::TeamUpdated { team }),
        board().prop_map(|board| ActivityData::BoardCreated { board }),
        board().prop_map(|board| ActivityData::BoardUpdated { board }),
        uuid().prop_map(|board_id| ActivityData::BoardDeleted { board_id }),
        webhook().prop_map(|webhook| ActivityData::WebhookCreated { webhook }),
        webhook().prop_map(|webhook| ActivityData::WebhookUpdated { webhook }),
        uuid().prop_map(|webhook_id| ActivityData::WebhookDeleted { webhook_id }),
        (webhook(), text_value())
            .prop_map(|(webhook, reason)| ActivityData::WebhookDisabled { webhook, reason }),
        label().prop_map(|label| ActivityData::LabelCreated { label }),
        label().prop_map(|label| ActivityData::LabelUpdated { label }),
        uuid().prop_map(|label_id| ActivityData::LabelDeleted { label_id }),
    ]
}

fn webhook() -> impl Strategy<Value = Webhook> {
    (
        (uuid(), uuid(), uuid(), text_value(), text_value()),
        (any::<bool>(), 0i64..1_000_000, ts(), ts()),
        (
            prop::option::of(ts()),
            prop::option::of(text_value()),
            prop::option::of(ts()),
        ),
    )
        .prop_map(
            |(
                (id, team_id, created_by_user_id, url, description),
                (enabled, cursor, created_at, updated_at),
                (failing_since, disabled_reason, previous_secret_expires_at),
            )| Webhook {
                id,
                team_id,
                url,
                description,
                events: vec!["*".into()],
                enabled,
                cursor,
                created_at,
                updated_at,
                created_by_user_id,
                failing_since,
                disabled_reason,
                previous_secret_expires_at,
            },
        )
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

fn set(ks: &[&str]) -> BTreeSet<String> {
    ks.iter().map(|k| k.to_string()).collect()
}

fn assert_ts_millis(s: &str) -> Result<OffsetDateTime, String> {
    let b = s.as_bytes();
    let shape = s.len() == 24 && s.ends_with('Z') && b[10] == b'T' && b[19] == b'.';
    if !shape {
        return Err(format!("{s:?} is not RFC 3339 UTC with milliseconds"));
    }
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{s:?}: {e}"))
}

/// Serializes a server message, checks the frame text is that JSON, and matches `ServerFrame`.
fn server_json(m: &ServerMessage) -> Result<Value, String> {
    let frame = m.frame();
    let text: &str = frame.as_str();
    let v: Value = serde_json::from_str(text).map_err(|e| format!("{text}: {e}"))?;
    if v != serde_json::to_value(m).unwrap() {
        return Err(format!("frame() {text} differs from serde_json::to_value"));
    }
    let errors = schema_errors("ServerFrame", &v);
    if !errors.is_empty() {
        return Err(format!("ServerFrame rejects {text}: {errors:?}"));
    }
    Ok(v)
}

/// The contract's `data` fields per activity type, and whether `boardId` / `taskId` apply.
fn contract_of(kind: &str) -> (&'static [&'static str], bool, bool) {
    match kind {
        "task.created" => (&["task"], true, true),
        "task.updated" => (&["task", "changes"], true, true),
        "task.deleted" => (&["taskId", "boardId"], true, true),
        "task.imported" => (&["boardId", "taskIds", "commentCount"], true, false),
        "task.assigned" => (
            &["task", "assigneeUserId", "previousAssigneeUserId"],
            true,
            true,
        ),
        "comment.created" | "comment.updated" => (&["comment"], false, true),
        "comment.deleted" => (&["commentId", "taskId"], false, true),
        "member.added" | "member.updated" => (&["member"], false, false),
        "member.removed" => (&["userId"], false, false),
        "team.updated" => (&["team"], false, false),
        "board.created" | "board.updated" => (&["board"], true, false),
        "board.deleted" => (&["boardId"], true, false),
        "webhook.created" | "webhook.updated" => (&["webhook"], false, false),
        "webhook.deleted" => (&["webhookId"], false, false),
        "webhook.disabled" => (&["webhook", "reason"], false, false),
        "label.created" | "label.updated" => (&["label"], false, false),
        "label.deleted" => (&["labelId"], false, false),
        other => panic!("unknown activity type {other}"),
    }
}

const TASK_FIELDS: [&str; 15] = [
    "id",
    "teamId",
    "boardId",
    "title",
    "description",
    "status",
    "priority",
    "assigneeUserId",
    "dueDate",
    "position",
    "createdBy",
    "createdAt",
    "updatedAt",
    "version",
    "labelIds",
];

fn check_task(t: &Value, task: &Task) -> Result<(), String> {
    for f in TASK_FIELDS {
        if t.get(f).is_none() {
            return Err(format!("Task without {f}: {t}"));
        }
    }
    let want = json!({
        "id": task.id, "teamId": task.team_id, "boardId": task.board_id, "title": task.title,
        "status": task.status.as_str(), "priority": task.priority.as_str(),
        "assigneeUserId": task.assignee_user_id, "position": task.position,
        "createdBy": task.created_by, "version": task.version,
        "createdAt": timestamp::format(&task.created_at),
        "updatedAt": timestamp::format(&task.updated_at),
        "dueDate": task.due_date.map(|d| format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())),
        "labelIds": task.label_ids,
    });
    for (k, v) in want.as_object().unwrap() {
        if &t[k] != v {
            return Err(format!("Task {k}: {} != {v}", t[k]));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn subscribed_frames(s in scope(), seq in 0i64..=i64::MAX, presence in prop::option::of(prop::collection::vec(presence_entry(), 0..4))) {
        let v = server_json(&ServerMessage::Subscribed { scope: s, seq, presence: presence.clone() })
            .map_err(TestCaseError::fail)?;
        let mut want = set(&["type", key_of(s), "seq"]);
        if presence.is_some() {
            want.insert("presence".into());
        }
        prop_assert_eq!(keys(&v), want, "{}", v);
        prop_assert_eq!(&v["type"], "subscribed");
        prop_assert_eq!(&v[key_of(s)], &json!(id_of(s).hyphenated().to_string()));
        prop_assert_eq!(v["seq"].as_i64(), Some(seq));
        if let Some(p) = presence {
            let got = v["presence"].as_array().expect("presence array");
            prop_assert_eq!(got.len(), p.len());
            for (g, u) in got.iter().zip(&p) {
                let mut want = set(&["userId", "displayName", "state"]);
                if u.field.is_some() {
                    want.insert("field".into());
                }
                prop_assert_eq!(keys(g), want);
                prop_assert_eq!(&g["userId"], &json!(u.user_id));
                prop_assert_eq!(g["displayName"].as_str(), Some(u.display_name.as_str()));
                prop_assert_eq!(g["state"].as_str(), Some(u.state.as_str()));
                let back: PresenceEntry = serde_json::from_value(g.clone()).unwrap();
                prop_assert_eq!(&back, u);
            }
        }
    }

    #[test]
    fn unsubscribed_frames(s in scope(), revoked in any::<bool>()) {
        let reason = revoked.then_some("membership_revoked");
        let v = server_json(&ServerMessage::Unsubscribed { scope: s, reason })
            .map_err(TestCaseError::fail)?;
        let mut want = set(&["type", key_of(s)]);
        if revoked {
            want.insert("reason".into());
        }
        prop_assert_eq!(keys(&v), want, "{}", v);
        prop_assert_eq!(&v["type"], "unsubscribed");
        prop_assert_eq!(&v[key_of(s)], &json!(id_of(s)));
        if revoked {
            prop_assert_eq!(&v["reason"], "membership_revoked");
        }
    }

    #[test]
    fn error_frames(code in prop::sample::select(ERROR_CODES.to_vec()), message in text_value(), s in prop::option::of(scope())) {
        // The contract's spelling, read as the server's type: every code it lists must exist.
        let typed = ErrorCode::parse(code)
            .ok_or_else(|| TestCaseError::fail(format!("{code} is not an ErrorCode")))?;
        let m = match s {
            Some(s) => ServerMessage::scoped_error(typed, message.clone(), s),
            None => ServerMessage::error(typed, message.clone()),
        };
        let v = server_json(&m).map_err(TestCaseError::fail)?;
        let mut want = set(&["type", "code", "message"]);
        if let Some(s) = s {
            want.insert(key_of(s).into());
            prop_assert_eq!(&v[key_of(s)], &json!(id_of(s)));
        }
        prop_assert_eq!(keys(&v), want, "{}", v);
        prop_assert_eq!(&v["type"], "error");
        prop_assert_eq!(&v["code"], code);
        prop_assert_eq!(v["message"].as_str(), Some(message.as_str()));
    }

    #[test]
    fn authenticated_frames(user_id in uuid::<UserId>(), expires_at in ts_nanos()) {
        let v = server_json(&ServerMessage::Authenticated { user_id, expires_at })
            .map_err(TestCaseError::fail)?;
        prop_assert_eq!(keys(&v), set(&["type", "userId", "expiresAt"]), "{}", v);
        prop_assert_eq!(&v["type"], "authenticated");
        prop_assert_eq!(&v["userId"], &json!(user_id));
        let got = assert_ts_millis(v["expiresAt"].as_str().unwrap_or("")).map_err(TestCaseError::fail)?;
        prop_assert_eq!(got, timestamp::truncate(expires_at));
    }

    /// Activity frames, built as the store builds them (serialized once, wrapped without
    /// re-serializing): the contract's envelope and fields, and `Activity` deserializes back.
    #[test]
    fn activity_frames(data in activity_data(), team_id in uuid::<TeamId>(), actor in uuid::<UserId>(), at in ts(), seq in 1i64..=i64::MAX) {
        let kind = data.kind().as_str();
        let (activity, route) = ActivityDraft::new(data.clone(), actor, at).into_activity(team_id, seq);
        let json_text = serde_json::to_string(&activity).unwrap();
        let frame = activity_frame(&LogEntry { seq, route, json: Arc::from(json_text) });
        let v: Value = serde_json::from_str(frame.as_str()).map_err(|e| TestCaseError::fail(format!("{e}: {}", frame.as_str())))?;
        let errors = schema_errors("ServerFrame", &v);
        prop_assert!(errors.is_empty(), "ServerFrame rejects {}: {errors:?}", frame.as_str());
        prop_assert_eq!(keys(&v), set(&["type", "activity"]));
        prop_assert_eq!(&v["type"], "activity");
        let a = &v["activity"];

        let (data_fields, has_board, has_task) = contract_of(kind);
        let mut want = set(&["id", "v", "type", "teamId", "actorUserId", "ts", "seq", "data"]);
        if has_board {
            want.insert("boardId".into());
        }
        if has_task {
            want.insert("taskId".into());
        }
        prop_assert_eq!(keys(a), want, "{}", a);
        prop_assert_eq!(&a["id"], &json!(activity.id));
        prop_assert_eq!(a["v"].as_u64(), Some(u64::from(ACTIVITY_VERSION)));
        prop_assert_eq!(ACTIVITY_VERSION, 1);
        prop_assert_eq!(&a["type"], kind);
        prop_assert_eq!(&a["teamId"], &json!(team_id));
        prop_assert_eq!(&a["actorUserId"], &json!(actor));
        prop_assert_eq!(a["seq"].as_i64(), Some(seq));
        let got_ts = assert_ts_millis(a["ts"].as_str().unwrap_or("")).map_err(TestCaseError::fail)?;
        prop_assert_eq!(got_ts, at);
        prop_assert_eq!(keys(&a["data"]), set(data_fields), "{}", a["data"]);

        // Where boardId / taskId come from, per type.
        let d = &a["data"];
        match &data {
            ActivityData::TaskCreated { task } | ActivityData::TaskUpdated { task, .. } | ActivityData::TaskAssigned { task, .. } => {
                check_task(&d["task"], task).map_err(TestCaseError::fail)?;
                prop_assert_eq!(&a["boardId"], &json!(task.board_id));
                prop_assert_eq!(&a["taskId"], &json!(task.id));
            }
            ActivityData::TaskDeleted { task_id, board_id } => {
                prop_assert_eq!(&d["taskId"], &json!(task_id));
                prop_assert_eq!(&d["boardId"], &json!(board_id));
                prop_assert_eq!(&a["boardId"], &json!(board_id));
                prop_assert_eq!(&a["taskId"], &json!(task_id));
            }
            ActivityData::TaskImported { board_id, task_ids, comment_count } => {
                prop_assert_eq!(&d["boardId"], &json!(board_id));
                prop_assert_eq!(&a["boardId"], &json!(board_id));
                prop_assert_eq!(&d["taskIds"], &json!(task_ids));
                prop_assert_eq!(d["commentCount"].as_u64(), Some(u64::from(*comment_count)));
            }
            ActivityData::CommentCreated { comment } | ActivityData::CommentUpdated { comment } => {
                prop_assert_eq!(keys(&d["comment"]), set(&["id", "taskId", "teamId", "authorUserId", "body", "createdAt", "editedAt"]));
                prop_assert_eq!(d["comment"]["body"].as_str(), Some(comment.body.as_str()));
                prop_assert_eq!(&a["taskId"], &json!(comment.task_id));
                if comment.edited_at.is_none() {
                    prop_assert!(d["comment"]["editedAt"].is_null());
                }
            }
            ActivityData::CommentDeleted { task_id, .. } => {
                prop_assert_eq!(&a["taskId"], &json!(task_id));
            }
            ActivityData::MemberAdded { member } | ActivityData::MemberUpdated { member } => {
                prop_assert_eq!(keys(&d["member"]), set(&["teamId", "user", "role", "joinedAt"]));
                prop_assert_eq!(keys(&d["member"]["user"]), set(&["id", "email", "displayName", "createdAt"]));
                prop_assert_eq!(&d["member"]["role"], member.role.as_str());
            }
            ActivityData::BoardCreated { board } | ActivityData::BoardUpdated { board } => {
                prop_assert_eq!(keys(&d["board"]), set(&["id", "teamId", "name", "createdAt"]));
                prop_assert_eq!(&a["boardId"], &json!(board.id));
            }
            ActivityData::BoardDeleted { board_id } => {
                prop_assert_eq!(&a["boardId"], &json!(board_id));
            }
            ActivityData::TeamUpdated { team } => {
                prop_assert_eq!(keys(&d["team"]), set(&["id", "name", "createdAt", "defaultBoardId"]));
                prop_assert_eq!(d["team"]["name"].as_str(), Some(team.name.as_str()));
                prop_assert_eq!(&d["team"]["defaultBoardId"], &json!(team.default_board_id));
            }
            ActivityData::MemberRemoved { user_id } => {
                prop_assert_eq!(&d["userId"], &json!(user_id));
            }
            ActivityData::WebhookCreated { webhook }
            | ActivityData::WebhookUpdated { webhook }
            | ActivityData::WebhookDisabled { webhook, .. } => {
                prop_assert_eq!(&d["webhook"]["id"], &json!(webhook.id));
                prop_assert!(d["webhook"].get("secret").is_none(), "no secret in {}", d);
            }
            ActivityData::WebhookDeleted { webhook_id } => {
                prop_assert_eq!(&d["webhookId"], &json!(webhook_id));
            }
            ActivityData::LabelCreated { label } | ActivityData::LabelUpdated { label } => {
                prop_assert_eq!(keys(&d["label"]), set(&["id", "teamId", "name", "color", "createdAt"]));
                prop_assert_eq!(&d["label"]["id"], &json!(label.id));
            }
            ActivityData::LabelDeleted { label_id } => {
                prop_assert_eq!(&d["labelId"], &json!(label_id));
            }
        }

        // A client deserializing the activity gets back exactly what the server serialized.
        let back: Activity = serde_json::from_value(a.clone())
            .map_err(|e| TestCaseError::fail(format!("Activity does not deserialize ({e}): {a}")))?;
        prop_assert_eq!(back, activity);
    }

    #[test]
    fn presence_frames(joined in any::<bool>(), team_id in uuid::<TeamId>(), task_id in uuid::<TaskId>(), u in presence_user()) {
        let frame = presence_frame(joined, team_id, task_id, &u);
        let v: Value = serde_json::from_str(frame.as_str()).unwrap();
        let errors = schema_errors("ServerFrame", &v);
        prop_assert!(errors.is_empty(), "ServerFrame rejects {}: {errors:?}", frame.as_str());
        prop_assert_eq!(keys(&v), set(&["type", "activity"]));
        prop_assert_eq!(&v["type"], "activity");
        let a = &v["activity"];
        // Ephemeral: no seq.
        prop_assert_eq!(keys(a), set(&["id", "v", "type", "teamId", "actorUserId", "ts", "taskId", "data"]), "{}", a);
        prop_assert_eq!(&a["type"], if joined { "presence.joined" } else { "presence.left" });
        prop_assert_eq!(a["v"].as_u64(), Some(1));
        prop_assert_eq!(&a["teamId"], &json!(team_id));
        prop_assert_eq!(&a["taskId"], &json!(task_id));
        prop_assert_eq!(&a["actorUserId"], &json!(u.user_id));
        assert_ts_millis(a["ts"].as_str().unwrap_or("")).map_err(TestCaseError::fail)?;
        prop_assert_eq!(keys(&a["data"]), set(&["taskId", "userId", "displayName"]));
        prop_assert_eq!(&a["data"]["taskId"], &json!(task_id));
        prop_assert_eq!(&a["data"]["userId"], &json!(u.user_id));
        prop_assert_eq!(a["data"]["displayName"].as_str(), Some(u.display_name.as_str()));
    }

    #[test]
    fn presence_updated_frames(team_id in uuid::<TeamId>(), task_id in uuid::<TaskId>(), u in presence_user(), status in prop_oneof![Just(PresenceStatus::VIEWING), presence_status()]) {
        let frame = presence_updated_frame(team_id, task_id, &u, status);
        let v: Value = serde_json::from_str(frame.as_str()).unwrap();
        let errors = schema_errors("ServerFrame", &v);
        prop_assert!(errors.is_empty(), "ServerFrame rejects {}: {errors:?}", frame.as_str());
        let a = &v["activity"];
        prop_assert_eq!(keys(a), set(&["id", "v", "type", "teamId", "actorUserId", "ts", "taskId", "data"]), "{}", a);
        prop_assert_eq!(&a["type"], "presence.updated");
        prop_assert_eq!(&a["actorUserId"], &json!(u.user_id));
        let mut want = set(&["taskId", "userId", "displayName", "state"]);
        if status.field().is_some() {
            want.insert("field".into());
        }
        prop_assert_eq!(keys(&a["data"]), want);
        prop_assert_eq!(a["data"]["state"].as_str(), Some(status.state().as_str()));
        prop_assert_eq!(a["data"]["field"].as_str(), status.field().map(|f| f.as_str()));
    }

    /// A `presence` message with a task id always parses (a bad state or field is the hub's to
    /// answer, naming the task); its status is valid exactly when the state is known and, unless
    /// viewing, the field is too.
    #[test]
    fn presence_messages_parse_and_validate(task in uuid::<Uuid>(), state in json_value(), field in prop::option::of(json_value()), named_state in prop::sample::select(vec!["viewing", "editing", "typing", "dancing"]), named_field in prop::option::of(prop::sample::select(vec!["title", "description", "comment", "body"])), named in any::<bool>()) {
        let mut m = json!({"type": "presence", "taskId": task});
        if named {
            m["state"] = json!(named_state);
            if let Some(f) = named_field {
                m["field"] = json!(f);
            }
        } else {
            m["state"] = state.clone();
            if let Some(f) = &field {
                m["field"] = f.clone();
            }
        }
        let Ok(ClientMessage::Presence(p)) = parse(&m.to_string()) else {
            return Err(TestCaseError::fail(format!("{m} did not parse as presence")));
        };
        prop_assert_eq!(p.task_id, TaskId::from(task));
        let state = m["state"].as_str().and_then(PresenceState::parse);
        let field = m.get("field").and_then(|f| f.as_str()).and_then(PresenceField::parse);
        let valid = match state {
            None => false,
            Some(PresenceState::Viewing) => true,
            Some(_) => field.is_some(),
        };
        prop_assert_eq!(p.status().is_ok(), valid, "{}", m);
        if let Ok(s) = p.status() {
            prop_assert_eq!(Some(s.state()), state);
            let want_field = if s.state() == PresenceState::Viewing { None } else { field };
            prop_assert_eq!(s.field(), want_field);
        }
    }
}

/// The server writes every float of an activity exactly (shortest round-trip form): the text
/// parsed with a correctly rounding parser gives back the same number. (serde_json's own default
/// parser is best-effort and may be one unit in the last place off for long ones; a Rust client
/// that needs exact values enables its `float_roundtrip` feature.)
#[test]
fn floats_are_written_exactly() {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for _ in 0..10_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let f = f64::from_bits(x);
        if !f.is_finite() {
            continue;
        }
        let text = serde_json::to_string(&json!({ "position": f })).unwrap();
        let num = &text[r#"{"position":"#.len()..text.len() - 1];
        assert_eq!(num.parse::<f64>().unwrap(), f, "{text}");
    }
}

#[test]
fn pong_frame() {
    let v = server_json(&ServerMessage::Pong).unwrap();
    assert_eq!(v, json!({"type": "pong"}));
}
