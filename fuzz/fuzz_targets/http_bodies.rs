//! Fuzzes every JSON request body of the HTTP API: the first byte picks the body type, the rest is
//! the body. Each body goes through the server's own `Json` extractor (problem+json rejections
//! included) and, when it deserializes, through the pure validation and conversion that the
//! handler and the service run before they touch the store.
//!
//! | first byte % 11 | body type       | endpoints                                          |
//! |-----------------|-----------------|----------------------------------------------------|
//! | 0               | `RegisterBody`  | POST /auth/register                                |
//! | 1               | `LoginBody`     | POST /auth/login                                   |
//! | 2               | `RefreshBody`   | POST /auth/refresh, POST /auth/logout              |
//! | 3               | `PatchMeBody`   | PATCH /me                                          |
//! | 4               | `NameBody`      | POST/PATCH teams, POST /teams/{id}/boards, PATCH /boards/{id} |
//! | 5               | `AddMemberBody` | POST /teams/{id}/members                           |
//! | 6               | `RoleBody`      | PATCH /teams/{id}/members/{userId}                 |
//! | 7               | `NewTask`       | POST /teams/{id}/tasks                             |
//! | 8               | `TaskPatch`     | PATCH /tasks/{id}                                  |
//! | 9               | `CommentBody`   | POST /tasks/{id}/comments, PATCH /comments/{id}    |
//! | 10              | `If-Match` text | PATCH /tasks/{id} (a header, not a body)           |

#![no_main]

use std::fmt::Debug;
use std::future::Future;
use std::pin::pin;
use std::sync::LazyLock;
use std::task::{Context, Poll, Waker};

use axum::body::Body;
use axum::extract::FromRequest;
use axum::http::{Request, StatusCode, header};
use axum::response::IntoResponse;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde_json::Value;
use taskforge::domain::activity::{ActivityData, ActivityDraft, Room};
use taskforge::domain::rules::{self, NewTask, TaskPatch};
use taskforge::domain::{
    BoardId, DomainError, Priority, Role, Task, TaskId, TaskStatus, TeamId, UserId,
};
use taskforge::http::error::ApiError;
use taskforge::http::extract::Json;
use taskforge::http::routes::auth::{LoginBody, PatchMeBody, RefreshBody, RegisterBody};
use taskforge::http::routes::tasks::CommentBody;
use taskforge::http::routes::teams::{AddMemberBody, NameBody, RoleBody};
use taskforge::service::MemberRef;
use time::OffsetDateTime;
use uuid::Uuid;

/// Strict unless `TASKFORGE_FUZZ_TOLERATE_KNOWN=1`: the two findings of the first campaign
/// (fuzz/regressions/http_bodies) are fixed, so by default neither is tolerated any more.
static STRICT: LazyLock<bool> =
    LazyLock::new(|| !std::env::var_os("TASKFORGE_FUZZ_TOLERATE_KNOWN").is_some_and(|v| v == "1"));

const TEAM: TeamId = TeamId::from_uuid(Uuid::from_u128(0x0196_0000_0000_7000_8000_0000_0000_0001));
const BOARD: BoardId =
    BoardId::from_uuid(Uuid::from_u128(0x0196_0000_0000_7000_8000_0000_0000_0002));
const TASK: TaskId = TaskId::from_uuid(Uuid::from_u128(0x0196_0000_0000_7000_8000_0000_0000_0003));
const ACTOR: UserId = UserId::from_uuid(Uuid::from_u128(0x0196_0000_0000_7000_8000_0000_0000_0004));

fn at(unix_ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .expect("a fixed time in range")
}

/// Polls a future that never waits (the body is in memory) to completion.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..64 {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("the Json extractor did not finish on an in-memory body");
}

/// The body as the handler receives it: through the server's `Json` extractor.
fn extract<T: DeserializeOwned + Debug>(body: &[u8]) -> Option<T> {
    let req = Request::builder()
        .method("POST")
        .uri("/api/v1/fuzz")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_vec()))
        .expect("a valid request");
    let extracted = block_on(<Json<T> as FromRequest<()>>::from_request(req, &()));
    // The extractor accepts exactly the JSON objects serde_json accepts, as the same values
    // (serde would also read a struct from an array; the API's bodies are objects only).
    let direct = serde_json::from_slice::<T>(body);
    let is_object = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    match (&extracted, &direct) {
        (Ok(Json(a)), Ok(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}")),
        (Err(_), Err(_)) => {}
        (Ok(_), Err(e)) => panic!("the extractor accepted a body serde_json rejects: {e}"),
        (Err(e), Ok(_)) if !is_object && *STRICT => {
            assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY, "{e:?}");
        }
        // serde_json checks UTF-8 only in the strings it keeps; the extractor in the whole body.
        (Err(e), Ok(_)) if std::str::from_utf8(body).is_err() => {
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{e:?}");
        }
        (Err(e), Ok(_)) => panic!("the extractor rejected a body serde_json accepts: {e:?}"),
    }
    match extracted {
        Ok(Json(v)) => {
            // Known finding (fuzz/regressions/http_bodies): serde's derived structs also accept a
            // JSON array of the fields in order, so `["a@b.c","password","Ada"]` registers.
            // Fixed: the extractor refuses non-object bodies (422).
            if *STRICT {
                let json: Value = serde_json::from_slice(body).expect("an accepted body is JSON");
                assert!(
                    json.is_object(),
                    "a body that is not a JSON object was accepted: {json}"
                );
            }
            Some(v)
        }
        Err(e) => {
            rejection(e, body);
            None
        }
    }
}

/// A rejected body: 400 for what is not JSON, 422 naming a field for JSON of the wrong shape.
fn rejection(e: ApiError, body: &[u8]) {
    let json = serde_json::from_slice::<Value>(body).ok();
    match e.status {
        StatusCode::BAD_REQUEST => {
            assert_eq!(e.problem.code, "bad_request");
            // Known findings (fuzz/regressions/http_bodies), tolerated so that a run goes on;
            // fixed since (the syntax is checked on its own first), so they fail unless
            // TASKFORGE_FUZZ_TOLERATE_KNOWN=1. Both are
            // well-formed JSON that serde_json reports as a syntax error, so they answer 400
            // "not valid JSON" instead of 422 naming the field:
            // - an enum field (`role`, `status`, `priority`) given a number, a boolean, an array
            //   or a `null` it does not accept ("expected value");
            // - a body sent as an array with more elements than the struct has fields
            //   ("trailing characters").
            let detail = e.problem.detail.as_str();
            let known = !*STRICT
                && (detail.starts_with("the body is not valid JSON: expected value at ")
                    || (detail.starts_with("the body is not valid JSON: trailing characters at ")
                        && json.as_ref().is_some_and(Value::is_array)));
            assert!(
                json.is_none() || known,
                "well-formed JSON answered 400: {:?}",
                e.problem
            );
        }
        StatusCode::UNPROCESSABLE_ENTITY => {
            assert_eq!(e.problem.code, "validation_failed");
            let errors = e.problem.errors.as_ref().expect("a 422 names its fields");
            assert!(!errors.is_empty() && errors.iter().all(|f| !f.field.is_empty()));
        }
        other => panic!("a body was rejected with {other}: {:?}", e.problem),
    }
    problem(e);
}

/// What the client receives for an error: problem+json with the status repeated in the body.
fn problem(e: ApiError) {
    let json = serde_json::to_value(&e.problem).expect("a problem serializes");
    assert_eq!(json["status"], e.status.as_u16());
    let res = e.into_response();
    assert_eq!(
        res.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
}

/// A rule check: `Ok`, or a non-empty list of field errors answered as 422.
fn validated(r: Result<(), DomainError>) -> bool {
    match r {
        Ok(()) => true,
        Err(DomainError::Validation(errors)) => {
            assert!(!errors.is_empty(), "a validation error without fields");
            let e = ApiError::from(DomainError::Validation(errors));
            assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
            problem(e);
            false
        }
        Err(other) => panic!("a body check returned {other:?}"),
    }
}

fn base_task() -> Task {
    let t = at(1_764_097_384_123);
    Task {
        id: TASK,
        team_id: TEAM,
        board_id: BOARD,
        title: "Write the contract".into(),
        description: String::new(),
        status: TaskStatus::Todo,
        priority: Priority::None,
        assignee_user_id: None,
        due_date: None,
        position: 1.0,
        created_by: ACTOR,
        created_at: t,
        updated_at: t,
        version: 1,
    }
}

/// An activity as the store logs it and the socket sends it: serialized once, readable back.
fn logged(draft: ActivityDraft, seq: i64) -> (Value, Vec<Room>) {
    let kind = draft.data.kind();
    let (activity, route) = draft.into_activity(TEAM, seq);
    let json = serde_json::to_string(&activity).expect("an activity serializes");
    let v: Value = serde_json::from_str(&json).expect("a logged activity is JSON");
    assert_eq!(v["type"], kind.as_str());
    assert_eq!(v["seq"], seq);
    assert_eq!(v["v"], 1);
    assert_eq!(v["teamId"], Value::String(TEAM.to_string()));
    serde_json::from_str::<taskforge::domain::Activity>(&json)
        .expect("a logged activity reads back as an Activity");
    (v, route.rooms())
}

/// `Services::create_task` after its `input.check()`, without the store.
fn create_task(input: NewTask) {
    if !validated(input.check()) {
        return;
    }
    let status = input.status.unwrap_or_default();
    let position = input
        .position
        .unwrap_or_else(|| rules::position_after(Some(2.5)));
    assert!(position.is_finite());
    let now = at(1_764_097_385_000);
    let task = Task {
        id: TASK,
        team_id: TEAM,
        board_id: input.board_id.unwrap_or(BOARD),
        title: input.title,
        description: input.description.unwrap_or_default(),
        status,
        priority: input.priority.unwrap_or_default(),
        assignee_user_id: input.assignee_user_id,
        due_date: input.due_date,
        position,
        created_by: ACTOR,
        created_at: now,
        updated_at: now,
        version: 1,
    };
    let body = serde_json::to_value(&task).expect("a task serializes");
    assert_eq!(body["version"], 1);
    let (_, rooms) = logged(
        ActivityDraft::new(ActivityData::TaskCreated { task: task.clone() }, ACTOR, now),
        1,
    );
    assert_eq!(rooms, vec![Room::Team(TEAM), Room::Board(task.board_id)]);
    if task.assignee_user_id.is_some() {
        let data = ActivityData::TaskAssigned {
            assignee_user_id: task.assignee_user_id,
            previous_assignee_user_id: None,
            task,
        };
        logged(ActivityDraft::new(data, ACTOR, now), 2);
    }
}

const PATCHABLE: [&str; 8] = [
    "title",
    "description",
    "boardId",
    "status",
    "priority",
    "assigneeUserId",
    "dueDate",
    "position",
];

/// `Services::update_task` after its `patch.check()`, against a task in memory.
fn update_task(patch: TaskPatch) {
    if !validated(patch.check()) {
        return;
    }
    let base = base_task();
    let now = at(1_764_097_386_000);
    let (next, changes) = patch.apply(&base, now);
    if changes.is_empty() {
        assert_eq!(next, base, "a patch without changes changed the task");
    } else {
        assert_eq!(next.version, base.version + 1);
        assert_eq!(next.updated_at, now);
        let task = serde_json::to_value(&next).expect("a task serializes");
        for (field, change) in &changes {
            assert!(
                PATCHABLE.contains(&field.as_str()),
                "unknown change {field}"
            );
            assert_ne!(change.from, change.to, "{field} did not change");
            assert_eq!(
                change.to,
                task[field.as_str()],
                "{field}: `to` is not the new value"
            );
        }
    }
    // The same patch again changes nothing.
    let (again, more) = patch.apply(&next, at(1_764_097_387_000));
    assert!(more.is_empty(), "a patch is not idempotent: {more:?}");
    assert_eq!(again, next);
    if changes.is_empty() {
        return;
    }
    let assignee_changed = changes.contains_key("assigneeUserId");
    let moved = |d: ActivityDraft| {
        if next.board_id != base.board_id {
            d.moved_from(base.board_id)
        } else {
            d
        }
    };
    let (v, rooms) = logged(
        moved(ActivityDraft::new(
            ActivityData::TaskUpdated {
                task: next.clone(),
                changes,
            },
            ACTOR,
            now,
        )),
        7,
    );
    assert_eq!(v["data"]["task"]["version"], next.version);
    assert!(rooms.contains(&Room::Board(next.board_id)));
    assert!(rooms.contains(&Room::Board(base.board_id)));
    assert!(rooms.contains(&Room::Task(TASK)));
    if assignee_changed {
        let data = ActivityData::TaskAssigned {
            task: next.clone(),
            assignee_user_id: next.assignee_user_id,
            previous_assignee_user_id: base.assignee_user_id,
        };
        let (_, rooms) = logged(moved(ActivityDraft::new(data, ACTOR, now)), 8);
        if let Some(u) = next.assignee_user_id {
            assert!(rooms.contains(&Room::User(u)));
        }
    }
}

/// `add_member`'s handler (exactly one of email and userId) and `Services::add_member`'s checks.
fn add_member(b: AddMemberBody) {
    let who = match (b.email, b.user_id) {
        (Some(email), None) => MemberRef::Email(email),
        (None, Some(id)) => MemberRef::Id(id),
        _ => {
            problem(ApiError::validation(vec![
                taskforge::domain::FieldError::new("email", "give exactly one of email and userId"),
            ]));
            return;
        }
    };
    if validated(rules::check_assignable_role(b.role)) {
        assert_ne!(b.role, Role::Owner);
        if let MemberRef::Email(email) = who {
            rules::normalize_email(&email);
        }
    } else {
        assert_eq!(b.role, Role::Owner);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 11 {
        0 => {
            if let Some(b) = extract::<RegisterBody>(body) {
                let email = rules::normalize_email(&b.email);
                validated(rules::check_registration(
                    &email,
                    &b.password,
                    &b.display_name,
                ));
            }
        }
        1 => {
            if let Some(b) = extract::<LoginBody>(body) {
                rules::normalize_email(&b.email);
            }
        }
        2 => {
            // The token is only hashed (a private function) and looked up.
            extract::<RefreshBody>(body);
        }
        3 => {
            if let Some(b) = extract::<PatchMeBody>(body) {
                validated(rules::check_display_name(&b.display_name));
            }
        }
        4 => {
            if let Some(b) = extract::<NameBody>(body) {
                validated(rules::check_name("name", &b.name));
            }
        }
        5 => {
            if let Some(b) = extract::<AddMemberBody>(body) {
                add_member(b);
            }
        }
        6 => {
            if let Some(b) = extract::<RoleBody>(body) {
                validated(rules::check_assignable_role(b.role));
            }
        }
        7 => {
            if let Some(b) = extract::<NewTask>(body) {
                create_task(b);
            }
        }
        8 => {
            if let Some(b) = extract::<TaskPatch>(body) {
                update_task(b);
            }
        }
        9 => {
            if let Some(b) = extract::<CommentBody>(body) {
                validated(rules::check_comment_body(&b.body));
            }
        }
        _ => {
            let header = String::from_utf8_lossy(body);
            for version in [1, 7, i64::MAX] {
                let ok = rules::if_match_allows(&header, version);
                if header.trim() == "*" {
                    assert!(ok);
                }
            }
            assert!(rules::if_match_allows(&format!("{header}, \"5\""), 5));
        }
    }
});
