//! IDOR sweep. Two teams, A (owner Alice) and B (owner Bob), each with a second member, two boards
//! besides the default one, two tasks and comments. With Bob's valid token, every id-bearing
//! endpoint is tried against team A's ids: each must answer `404 not_found` (the contract: "a
//! resource the caller may not see answers 404"), the same answer as for ids that do not exist,
//! leak nothing of A, and change nothing in A. Mixed ids (Bob's own team in the path, A's ids in
//! the body or query) are refused without effect. Over the WebSocket, Bob's subscriptions to A's
//! team, boards and tasks answer `error` `forbidden`, and Bob receives nothing of A afterwards.
//!
//! Each sweep is a table: an endpoint is one line. Every line also runs as a positive control
//! (with a token that may do it) so the sweep cannot pass by everything failing.

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};
use uuid::Uuid;

both_backends!(
    http_sweep_of_another_teams_ids,
    mixed_ids_are_refused,
    realtime_sweep_of_another_teams_ids,
);

// ---------------------------------------------------------------------------------------------
// The sweep tables
// ---------------------------------------------------------------------------------------------
//
// Placeholders in paths and bodies:
//   the target team's ids: {team} {default_board} {board} {spare_board} {task} {comment}
//                          {owner} {member} (user ids)
//   the caller's own:      {my_team} {my_board} {my_task} {me} (user id)
//   a user in no team:     {outsider_email}

/// One request of a sweep.
#[derive(Clone, Copy, Debug)]
struct Row {
    method: &'static str,
    path: &'static str,
    /// JSON body template; empty: no body.
    body: &'static str,
    /// `If-Match` header value; empty: none.
    if_match: &'static str,
    /// The statuses the attack may answer (the contract's, or a list where it is silent). A 200
    /// is accepted only for a list, and only when the list is empty.
    refused: &'static [u16],
    /// The status of the positive control (the same request by someone allowed to make it).
    control: u16,
}

/// A request that the attacker must get `404 not_found` for; `control` is the allowed caller's.
const fn row(method: &'static str, path: &'static str, body: &'static str, control: u16) -> Row {
    Row {
        method,
        path,
        body,
        if_match: "",
        refused: &[404],
        control,
    }
}

impl Row {
    const fn if_match(mut self, v: &'static str) -> Row {
        self.if_match = v;
        self
    }
    const fn refused(mut self, statuses: &'static [u16]) -> Row {
        self.refused = statuses;
        self
    }
}

/// Bob against team A. The contract: not a member, so every one is 404 `not_found`. The control
/// runs in this order with Alice's token (so deletions come last).
#[rustfmt::skip]
const A_SWEEP: &[Row] = &[
    row("GET", "/teams/{team}", "", 200),
    row("PATCH", "/teams/{team}", r#"{"name":"renamed by the sweep"}"#, 200),
    row("GET", "/teams/{team}/members", "", 200),
    row("GET", "/teams/{team}/members?limit=1", "", 200),
    row("POST", "/teams/{team}/members", r#"{"userId":"{me}","role":"admin"}"#, 201),
    row("POST", "/teams/{team}/members", r#"{"email":"{outsider_email}","role":"member"}"#, 201),
    row("PATCH", "/teams/{team}/members/{member}", r#"{"role":"admin"}"#, 200),
    row("PATCH", "/teams/{team}/members/{owner}", r#"{"role":"viewer"}"#, 409),
    row("PATCH", "/teams/{team}/members/{me}", r#"{"role":"admin"}"#, 200),
    row("GET", "/teams/{team}/boards", "", 200),
    row("POST", "/teams/{team}/boards", r#"{"name":"sweep board"}"#, 201),
    row("PATCH", "/boards/{board}", r#"{"name":"renamed board"}"#, 200),
    row("PATCH", "/boards/{default_board}", r#"{"name":"renamed default"}"#, 200),
    row("GET", "/teams/{team}/tasks", "", 200),
    row("GET", "/teams/{team}/tasks?boardId={default_board}&status=todo", "", 200),
    row("GET", "/teams/{team}/tasks?assigneeUserId={member}&limit=1", "", 200),
    row("POST", "/teams/{team}/tasks", r#"{"title":"sweep task"}"#, 201),
    row("POST", "/teams/{team}/tasks", r#"{"title":"t","boardId":"{board}","assigneeUserId":"{member}"}"#, 201),
    row("GET", "/tasks/{task}", "", 200),
    row("PATCH", "/tasks/{task}", r#"{"title":"x"}"#, 200).if_match("\"1\""),
    row("PATCH", "/tasks/{task}", r#"{"title":"y"}"#, 412).if_match("\"99\""),
    row("PATCH", "/tasks/{task}", r#"{"status":"done","boardId":"{board}"}"#, 200),
    row("PATCH", "/tasks/{task}", r#"{"assigneeUserId":"{me}"}"#, 200),
    row("GET", "/tasks/{task}/comments", "", 200),
    row("GET", "/tasks/{task}/comments?limit=1", "", 200),
    row("POST", "/tasks/{task}/comments", r#"{"body":"sweep comment"}"#, 201),
    row("PATCH", "/comments/{comment}", r#"{"body":"edited by the sweep"}"#, 200),
    row("GET", "/teams/{team}/activity", "", 200),
    row("GET", "/teams/{team}/activity?since=0&limit=1", "", 200),
    row("GET", "/teams/{team}/activity?since=999999", "", 410),
    row("DELETE", "/comments/{comment}", "", 204),
    row("DELETE", "/tasks/{task}", "", 204),
    row("DELETE", "/teams/{team}/members/{member}", "", 204),
    row("DELETE", "/teams/{team}/members/{me}", "", 204),
    row("DELETE", "/teams/{team}/members/{owner}", "", 409),
    row("DELETE", "/boards/{spare_board}", "", 204),
    row("DELETE", "/boards/{default_board}", "", 409),
];

/// Bob in his own team B, naming team A's ids in the body, the query or the path. The control
/// runs the same lines with team B's own ids in place of A's, with Bob's token.
#[rustfmt::skip]
const MIXED: &[Row] = &[
    // A board of another team: PATCH is specified (422); POST is silent.
    row("POST", "/teams/{my_team}/tasks", r#"{"title":"x","boardId":"{board}"}"#, 201).refused(&[422, 404]),
    row("POST", "/teams/{my_team}/tasks", r#"{"title":"x","boardId":"{default_board}"}"#, 201).refused(&[422, 404]),
    // "the assignee must be a member (else 422)".
    row("POST", "/teams/{my_team}/tasks", r#"{"title":"x","assigneeUserId":"{member}"}"#, 201).refused(&[422]),
    row("POST", "/teams/{my_team}/tasks", r#"{"title":"x","assigneeUserId":"{owner}"}"#, 201).refused(&[422]),
    // "a board of another team or a non-member assignee answers 422".
    row("PATCH", "/tasks/{my_task}", r#"{"boardId":"{board}"}"#, 200).refused(&[422]),
    row("PATCH", "/tasks/{my_task}", r#"{"title":"moved","boardId":"{default_board}"}"#, 200).refused(&[422]),
    row("PATCH", "/tasks/{my_task}", r#"{"assigneeUserId":"{member}"}"#, 200).refused(&[422]),
    row("PATCH", "/tasks/{my_task}", r#"{"assigneeUserId":"{owner}"}"#, 200).refused(&[422]),
    // List filters naming A's ids: silent in the contract; an empty list or a refusal.
    row("GET", "/teams/{my_team}/tasks?boardId={board}", "", 200).refused(&[200, 404, 422]),
    row("GET", "/teams/{my_team}/tasks?assigneeUserId={member}", "", 200).refused(&[200, 404, 422]),
    // A's users are not members of B: 404.
    row("PATCH", "/teams/{my_team}/members/{member}", r#"{"role":"admin"}"#, 200),
    row("PATCH", "/teams/{my_team}/members/{owner}", r#"{"role":"admin"}"#, 409),
    row("DELETE", "/teams/{my_team}/members/{member}", "", 204),
];

// ---------------------------------------------------------------------------------------------
// The world
// ---------------------------------------------------------------------------------------------

/// The ids a sweep line can name.
#[derive(Clone, Copy, Debug)]
struct Ids {
    team: Uuid,
    default_board: Uuid,
    board: Uuid,
    spare_board: Uuid,
    task: Uuid,
    comment: Uuid,
    owner: Uuid,
    member: Uuid,
}

impl Ids {
    /// Ids that exist nowhere: what "no such resource" answers look like.
    fn ghost() -> Ids {
        Ids {
            team: Uuid::new_v4(),
            default_board: Uuid::new_v4(),
            board: Uuid::new_v4(),
            spare_board: Uuid::new_v4(),
            task: Uuid::new_v4(),
            comment: Uuid::new_v4(),
            owner: Uuid::new_v4(),
            member: Uuid::new_v4(),
        }
    }

    fn named(&self) -> [(&'static str, Uuid); 8] {
        [
            ("{team}", self.team),
            ("{default_board}", self.default_board),
            ("{board}", self.board),
            ("{spare_board}", self.spare_board),
            ("{task}", self.task),
            ("{comment}", self.comment),
            ("{owner}", self.owner),
            ("{member}", self.member),
        ]
    }
}

/// A team with an owner, a second member, boards (the default one, `board`, and an empty
/// `spare_board`), a task with comments on the default board and a task assigned to the member.
struct Side {
    owner: AuthResponse,
    member: AuthResponse,
    team: Team,
    board: Board,
    spare_board: Board,
    task: Task,
    assigned_task: Task,
    comment: Comment,
    /// Strings that must never reach another team: ids, emails, and `tag` (in every name).
    secrets: Vec<String>,
}

impl Side {
    async fn build(api: &Api, tag: &str) -> Side {
        let owner = api.new_user(&format!("{tag} owner")).await;
        let tok = owner.token();
        let team = api.create_team(tok, &format!("{tag} team")).await;
        let member = api
            .member(tok, team.id, &format!("{tag} member"), "member")
            .await;
        let board = api
            .create_board(tok, team.id, &format!("{tag} board"))
            .await;
        let spare_board = api
            .create_board(tok, team.id, &format!("{tag} spare board"))
            .await;
        let task = api
            .create_task(
                tok,
                team.id,
                json!({"title": format!("{tag} task"), "description": format!("{tag} description")}),
            )
            .await;
        let assigned_task = api
            .create_task(
                tok,
                team.id,
                json!({
                    "title": format!("{tag} assigned task"),
                    "boardId": board.id,
                    "assigneeUserId": member.id(),
                }),
            )
            .await;
        let comment = api.comment(tok, task.id, &format!("{tag} comment")).await;
        api.comment(member.token(), task.id, &format!("{tag} member comment"))
            .await;
        let mut secrets: Vec<String> = [
            team.id,
            team.default_board_id,
            board.id,
            spare_board.id,
            task.id,
            assigned_task.id,
            comment.id,
            owner.id(),
            member.id(),
        ]
        .iter()
        .map(Uuid::to_string)
        .collect();
        secrets.push(owner.user.email.clone());
        secrets.push(member.user.email.clone());
        secrets.push(tag.to_string());
        Side {
            owner,
            member,
            team,
            board,
            spare_board,
            task,
            assigned_task,
            comment,
            secrets,
        }
    }

    fn ids(&self) -> Ids {
        Ids {
            team: self.team.id,
            default_board: self.team.default_board_id,
            board: self.board.id,
            spare_board: self.spare_board.id,
            task: self.task.id,
            comment: self.comment.id,
            owner: self.owner.id(),
            member: self.member.id(),
        }
    }
}

/// Who sends a sweep, and whose ids fill the placeholders.
struct Caller<'a> {
    token: &'a str,
    /// The caller's own team (`{my_*}`, `{me}`).
    me: &'a Side,
    outsider_email: &'a str,
}

/// A concrete request of a sweep line.
struct Req {
    row: Row,
    path: String,
    body: Option<Value>,
    /// Path and body as sent (to tell an echo of the request from a leak).
    sent: String,
}

impl Req {
    fn new(row: Row, target: &Ids, caller: &Caller<'_>) -> Req {
        let fill = |tpl: &str| {
            let mut s = tpl.to_string();
            for (k, v) in target.named() {
                s = s.replace(k, &v.to_string());
            }
            let me = caller.me;
            for (k, v) in [
                ("{my_team}", me.team.id.to_string()),
                ("{my_board}", me.board.id.to_string()),
                ("{my_task}", me.task.id.to_string()),
                ("{me}", me.owner.id().to_string()),
                ("{outsider_email}", caller.outsider_email.to_string()),
            ] {
                s = s.replace(k, &v);
            }
            if let Some(left) = placeholder_left(&s) {
                panic!("sweep line {tpl:?}: unknown placeholder {left}");
            }
            s
        };
        let path = format!("{API}{}", fill(row.path));
        let body = (!row.body.is_empty()).then(|| {
            let text = fill(row.body);
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("sweep line {:?}: body is not JSON: {e}", row.body))
        });
        let sent = format!(
            "{path} {}",
            body.as_ref().map(Value::to_string).unwrap_or_default()
        );
        Req {
            row,
            path,
            body,
            sent,
        }
    }

    /// Names the endpoint in failure messages: the table line and the concrete request.
    fn label(&self) -> String {
        let r = &self.row;
        let mut s = format!("{} {}", r.method, r.path);
        if !r.body.is_empty() {
            s.push_str(&format!(" {}", r.body));
        }
        if !r.if_match.is_empty() {
            s.push_str(&format!(" [If-Match: {}]", r.if_match));
        }
        format!("{s} (sent {} {})", r.method, self.sent.trim_end())
    }

    async fn send(&self, api: &Api, token: &str) -> Resp {
        let headers: Vec<(&str, &str)> = if self.row.if_match.is_empty() {
            Vec::new()
        } else {
            vec![("if-match", self.row.if_match)]
        };
        api.send(
            self.row.method,
            &self.path,
            Some(token),
            self.body.as_ref(),
            &headers,
        )
        .await
    }
}

/// A `{name}` placeholder (lowercase letters and `_`) still in `s`.
fn placeholder_left(s: &str) -> Option<&str> {
    let mut rest = s;
    while let Some(i) = rest.find('{') {
        let tail = &rest[i + 1..];
        if let Some(j) = tail.find('}') {
            let name = &tail[..j];
            if !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                return Some(&rest[i..i + j + 2]);
            }
        }
        rest = tail;
    }
    None
}

fn problem_code(status: u16) -> Option<&'static str> {
    match status {
        403 => Some("forbidden"),
        404 => Some("not_found"),
        422 => Some("validation_failed"),
        _ => None,
    }
}

/// What is wrong with the answer to an attack (empty: properly refused).
fn refusal_issues(req: &Req, r: &Resp, secrets: &[String]) -> Vec<String> {
    let who = req.label();
    let mut out = Vec::new();
    if !req.row.refused.contains(&r.status) {
        let verdict = if r.status < 400 {
            "LEAK"
        } else {
            "WRONG STATUS"
        };
        out.push(format!(
            "{verdict}: {who}: expected {:?}, got {}: {}",
            req.row.refused, r.status, r.text
        ));
        return out;
    }
    if r.status == 200 {
        let items = r.json["items"].as_array();
        if !items.is_some_and(Vec::is_empty) {
            out.push(format!(
                "LEAK: {who}: a list naming another team's ids must be empty, got: {}",
                r.text
            ));
        }
    } else if let Some(code) = problem_code(r.status) {
        let ct = r.header("content-type").unwrap_or("");
        let j = &r.json;
        if !ct.starts_with("application/problem+json")
            || j["code"] != code
            || j["status"] != r.status
            || !j["type"].is_string()
            || j["title"].as_str().is_none_or(str::is_empty)
            || !j["detail"].is_string()
        {
            out.push(format!(
                "{who}: {} is not a problem+json with code {code:?} (content-type {ct:?}): {}",
                r.status, r.text
            ));
        }
    }
    if r.status >= 400 {
        for h in ["x-taskforge-seq", "etag"] {
            if let Some(v) = r.header(h) {
                out.push(format!("LEAK: {who}: refused with a {h} header ({v})"));
            }
        }
    }
    for s in secrets {
        if r.text.contains(s.as_str()) && !req.sent.contains(s.as_str()) {
            out.push(format!(
                "LEAK: {who}: the answer carries team A's {s:?}: {}",
                r.text
            ));
        }
    }
    out
}

/// What a refusal reveals, with the target's ids put back as placeholders (so the answers for
/// real and for nonexistent ids compare equal when they are the same).
fn fingerprint(r: &Resp, target: &Ids) -> String {
    let mut detail = r.json["detail"].as_str().unwrap_or("").to_string();
    for (k, v) in target.named() {
        detail = detail.replace(&v.to_string(), k);
    }
    let items = r.json["items"].as_array().map(Vec::len);
    format!(
        "{} code={} title={} detail={detail:?} items={items:?}",
        r.status, r.json["code"], r.json["title"]
    )
}

/// Runs `rows` as an attack on `target`, then again on ids that exist nowhere (the answers must
/// be the same: no existence oracle). Returns the problems found.
async fn attack(
    api: &Api,
    rows: &[Row],
    target: &Ids,
    caller: &Caller<'_>,
    secrets: &[String],
) -> Vec<String> {
    let ghost = Ids::ghost();
    let mut out = Vec::new();
    for row in rows {
        let req = Req::new(*row, target, caller);
        let r = req.send(api, caller.token).await;
        let issues = refusal_issues(&req, &r, secrets);
        let refused = issues.is_empty();
        out.extend(issues);
        let ghost_req = Req::new(*row, &ghost, caller);
        let g = ghost_req.send(api, caller.token).await;
        let (real, unknown) = (fingerprint(&r, target), fingerprint(&g, &ghost));
        if refused && real != unknown {
            out.push(format!(
                "EXISTENCE ORACLE: {}: team A's ids answer [{real}] but unknown ids answer \
                 [{unknown}]",
                req.label()
            ));
        }
    }
    out
}

/// Runs `rows` with a caller allowed to; each must answer its `control` status.
async fn control(api: &Api, rows: &[Row], target: &Ids, caller: &Caller<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for row in rows {
        let req = Req::new(*row, target, caller);
        let r = req.send(api, caller.token).await;
        if r.status != row.control {
            out.push(format!(
                "POSITIVE CONTROL: {}: expected {}, got {}: {}",
                req.label(),
                row.control,
                r.status,
                r.text
            ));
        }
    }
    out
}

/// Everything a team's owner can read of it, by part.
async fn snapshot(api: &Api, token: &str, team: Uuid) -> Vec<(String, Value)> {
    let t = format!("{API}/teams/{team}");
    let mut parts = vec![
        ("team".to_string(), api.get(&t, token).await.ok(200).clone()),
        ("seq".to_string(), json!(api.team_seq(token, team).await)),
    ];
    let mut members = api.all_pages(token, &format!("{t}/members")).await;
    members.sort_by_key(|m| m["user"]["id"].to_string());
    parts.push(("members".into(), json!(members)));
    parts.push((
        "boards".into(),
        json!(api.all_pages(token, &format!("{t}/boards")).await),
    ));
    let tasks = api.all_pages(token, &format!("{t}/tasks")).await;
    for task in &tasks {
        let id = task["id"].as_str().expect("task id");
        let comments = api
            .all_pages(token, &format!("{API}/tasks/{id}/comments"))
            .await;
        parts.push((format!("comments of task {id}"), json!(comments)));
    }
    parts.push(("tasks".into(), json!(tasks)));
    parts.push((
        "activity".into(),
        json!(
            api.all_pages(token, &format!("{t}/activity?limit=200"))
                .await
        ),
    ));
    parts
}

fn changes(what: &str, before: &[(String, Value)], after: &[(String, Value)]) -> Vec<String> {
    let mut out = Vec::new();
    if before.len() != after.len() {
        out.push(format!(
            "NOT UNCHANGED: {what}: parts {:?} became {:?}",
            before.iter().map(|p| &p.0).collect::<Vec<_>>(),
            after.iter().map(|p| &p.0).collect::<Vec<_>>()
        ));
    }
    for ((k, b), (k2, a)) in before.iter().zip(after) {
        if k != k2 || a != b {
            out.push(format!(
                "NOT UNCHANGED: {what}: {k} changed\n    before: {b}\n    after:  {a}"
            ));
        }
    }
    out
}

#[track_caller]
fn assert_clean(what: &str, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{what}: {} problem(s):\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

async fn http_sweep_of_another_teams_ids(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let a = Side::build(&api, "alpha secret").await;
    let bb = Side::build(&api, "bravo").await;
    let eve = api.new_user("Eve outsider").await;
    let alice = a.owner.token();
    let bob = bb.owner.token();
    let a_before = snapshot(&api, alice, a.team.id).await;
    let b_before = snapshot(&api, bob, bb.team.id).await;

    let as_bob = Caller {
        token: bob,
        me: &bb,
        outsider_email: &eve.user.email,
    };
    let mut failures = attack(&api, A_SWEEP, &a.ids(), &as_bob, &a.secrets).await;
    // The other id-bearing reads: A's second task (assigned to A's member).
    let extra = format!("{API}/tasks/{}", a.assigned_task.id);
    let r = api.get(&extra, bob).await;
    if r.status != 404 || r.json["code"] != "not_found" {
        failures.push(format!(
            "LEAK: GET {extra} (A's assigned task): {} {}",
            r.status, r.text
        ));
    }

    // Nothing changed on either side; Bob appears nowhere in A's log.
    let a_after = snapshot(&api, alice, a.team.id).await;
    failures.extend(changes("team A (read by Alice)", &a_before, &a_after));
    failures.extend(changes(
        "team B (read by Bob)",
        &b_before,
        &snapshot(&api, bob, bb.team.id).await,
    ));
    let acts = api.activity(alice, a.team.id).await;
    for x in acts.iter().filter(|x| x.actor_user_id == bb.owner.id()) {
        failures.push(format!(
            "LEAK: team A's activity log has an entry by Bob: {} seq {}: {}",
            x.kind, x.seq, x.data
        ));
    }
    // Bob's own views do not list team A.
    let teams = api.all_pages(bob, &format!("{API}/teams")).await;
    if teams.len() != 1 || teams[0]["id"] != bb.team.id.to_string() {
        failures.push(format!("LEAK: GET /teams as Bob lists {teams:?}"));
    }
    let me = api.get(&format!("{API}/me"), bob).await;
    let me_teams = me.ok(200)["teams"].as_array().cloned().unwrap_or_default();
    if me_teams.len() != 1 || me_teams[0]["team"]["id"] != bb.team.id.to_string() {
        failures.push(format!("LEAK: GET /me as Bob lists {me_teams:?}"));
    }
    assert_clean("Bob against team A's ids", &failures);

    // Positive control: the same lines with Alice's token do what they say.
    let as_alice = Caller {
        token: alice,
        me: &bb,
        outsider_email: &eve.user.email,
    };
    let failures = control(&api, A_SWEEP, &a.ids(), &as_alice).await;
    assert_clean("positive control (Alice on her own team)", &failures);
}

async fn mixed_ids_are_refused(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let a = Side::build(&api, "alpha secret").await;
    let bb = Side::build(&api, "bravo").await;
    let eve = api.new_user("Eve outsider").await;
    let alice = a.owner.token();
    let bob = bb.owner.token();
    let a_before = snapshot(&api, alice, a.team.id).await;
    let b_before = snapshot(&api, bob, bb.team.id).await;

    let as_bob = Caller {
        token: bob,
        me: &bb,
        outsider_email: &eve.user.email,
    };
    let mut failures = attack(&api, MIXED, &a.ids(), &as_bob, &a.secrets).await;
    failures.extend(changes(
        "team A (read by Alice)",
        &a_before,
        &snapshot(&api, alice, a.team.id).await,
    ));
    failures.extend(changes(
        "team B (read by Bob)",
        &b_before,
        &snapshot(&api, bob, bb.team.id).await,
    ));
    assert_clean("Bob's team B with team A's ids", &failures);

    // Positive control: the same lines with team B's own ids succeed for Bob.
    let failures = control(&api, MIXED, &bb.ids(), &as_bob).await;
    assert_clean("positive control (Bob with his own team's ids)", &failures);

    // A user in both teams (the contract lets Bob add any user to B): filtering B's tasks by that
    // user still shows only B's, and A's task assigned to them stays hidden from Bob.
    let carol = &a.member;
    api.post(
        &format!("{API}/teams/{}/members", bb.team.id),
        bob,
        json!({"userId": carol.id(), "role": "member"}),
    )
    .await
    .ok(201);
    let listed = api
        .all_pages(
            bob,
            &format!(
                "{API}/teams/{}/tasks?assigneeUserId={}",
                bb.team.id,
                carol.id()
            ),
        )
        .await;
    assert!(
        listed.is_empty(),
        "LEAK: GET /teams/B/tasks?assigneeUserId=<a member of both teams> lists {listed:?}"
    );
    api.get_task(bob, a.assigned_task.id)
        .await
        .problem(404, "not_found");
    let t: Task = api
        .patch_task(bob, bb.task.id, json!({"assigneeUserId": carol.id()}))
        .await
        .parse(200);
    assert_eq!(t.team_id, bb.team.id);
    // Team A is still as it was (Carol's membership there included).
    assert_clean(
        "team A after Carol joined B",
        &changes(
            "team A (read by Alice)",
            &a_before,
            &snapshot(&api, alice, a.team.id).await,
        ),
    );
}

/// A scope of the same kind naming nothing that exists.
fn ghost_of(scope: Scope) -> Scope {
    match scope {
        Scope::Team(_) => Scope::Team(Uuid::new_v4()),
        Scope::Board(_) => Scope::Board(Uuid::new_v4()),
        Scope::Task(_) => Scope::Task(Uuid::new_v4()),
    }
}

async fn realtime_sweep_of_another_teams_ids(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let a = Side::build(&api, "alpha secret").await;
    let bb = Side::build(&api, "bravo").await;
    let alice_tok = a.owner.token();
    let bob_tok = bb.owner.token();
    let a_scopes = [
        Scope::Team(a.team.id),
        Scope::Board(a.team.default_board_id),
        Scope::Board(a.board.id),
        Scope::Board(a.spare_board.id),
        Scope::Task(a.task.id),
        Scope::Task(a.assigned_task.id),
    ];

    // Positive control: Alice may join every one of them.
    let mut alice = srv.ws(alice_tok).await.labeled("alice");
    for s in a_scopes {
        alice.subscribe(s, None).await;
    }
    let mut bob = srv.ws(bob_tok).await.labeled("bob");
    bob.subscribe(Scope::Team(bb.team.id), None).await;

    let seq_a = api.team_seq(alice_tok, a.team.id).await;
    assert!(seq_a > 0);
    let mut failures = Vec::new();
    for scope in a_scopes {
        for since in [None, Some(0), Some(seq_a), Some(seq_a + 1_000_000)] {
            let what = format!(
                "subscribe {{\"{}\": team A's {}}} since {since:?}",
                scope.key(),
                scope.id()
            );
            let ghost = ghost_of(scope);
            let real = bob.try_subscribe(scope, since).await;
            let unknown = bob.try_subscribe(ghost, since).await;
            match (real, unknown) {
                (Ok(sub), _) => failures.push(format!(
                    "LEAK: {what}: answered {} (replayed {} activities)",
                    sub.frame,
                    sub.before.len()
                )),
                (Err(e), unknown) => {
                    if e["type"] != "error"
                        || e["code"] != "forbidden"
                        || !scope.named_by(&e)
                        || !e["message"].is_string()
                    {
                        failures.push(format!(
                            "{what}: expected an error frame with code \"forbidden\" echoing \
                             {}, got {e}",
                            scope.key()
                        ));
                    }
                    match unknown {
                        Err(g) if g["code"] == e["code"] && g["message"] == e["message"] => {}
                        other => failures.push(format!(
                            "EXISTENCE ORACLE: {what}: answered {e}, an unknown id answered \
                             {other:?}"
                        )),
                    }
                }
            }
        }
    }
    // Leaving a room never joined answers the same for A's ids and unknown ones.
    for scope in a_scopes {
        let v = bob.unsubscribe(scope).await;
        let g = bob.unsubscribe(ghost_of(scope)).await;
        let keys = |f: &Value| {
            let mut k: Vec<String> = f
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k.clone())
                .collect();
            k.sort();
            k
        };
        if keys(&v) != keys(&g) {
            failures.push(format!(
                "EXISTENCE ORACLE: unsubscribe {scope:?} answered {v}, an unknown id answered {g}"
            ));
        }
    }
    // Bob's attempts reached nobody in team A (no presence of Bob in A's task rooms).
    for f in alice.barrier().await {
        if f.to_string().contains(&bb.owner.id().to_string()) {
            failures.push(format!("LEAK: Alice's socket saw Bob's attempts: {f}"));
        }
    }

    // Alice writes in team A: tasks, comments, boards, the team itself.
    let live = api
        .create_task(
            alice_tok,
            a.team.id,
            json!({"title": "alpha secret live task"}),
        )
        .await;
    api.patch_task(
        alice_tok,
        a.task.id,
        json!({"title": "alpha secret task, edited", "status": "in_progress"}),
    )
    .await
    .ok(200);
    api.patch_task(alice_tok, live.id, json!({"priority": "urgent"}))
        .await
        .ok(200);
    api.patch_task(
        alice_tok,
        a.assigned_task.id,
        json!({"assigneeUserId": a.owner.id()}),
    )
    .await
    .ok(200);
    api.comment(alice_tok, a.task.id, "alpha secret live comment")
        .await;
    api.patch(
        &format!("{API}/boards/{}", a.board.id),
        alice_tok,
        json!({"name": "alpha secret board, renamed"}),
    )
    .await
    .ok(200);
    api.patch(
        &format!("{API}/teams/{}", a.team.id),
        alice_tok,
        json!({"name": "alpha secret team, renamed"}),
    )
    .await
    .ok(200);
    api.delete(&format!("{API}/tasks/{}", live.id), alice_tok)
        .await
        .ok(204);
    let last = api.team_seq(alice_tok, a.team.id).await;
    assert!(last > seq_a);
    // Alice's own socket got it all (the writes went out), then Bob gets a bounded second more.
    let (_, before) = alice
        .wait_for("team A's last activity", Duration::from_secs(10), |v| {
            is_logged_activity(v) && v["activity"]["seq"] == last
        })
        .await;
    let mut seen: Vec<i64> = logged_activities(&before)
        .iter()
        .filter_map(|x| x["seq"].as_i64())
        .collect();
    seen.push(last);
    let expected: Vec<i64> = (seq_a + 1..=last).collect();
    assert_eq!(seen, expected, "Alice's socket: team A's activities");

    let mut got = bob.collect_for(Duration::from_secs(1)).await;
    got.extend(bob.barrier().await);
    for f in &got {
        let text = f.to_string();
        let mentions_a = a.secrets.iter().any(|s| text.contains(s.as_str()))
            || text.contains(&live.id.to_string());
        let verdict = if mentions_a { "LEAK" } else { "UNEXPECTED" };
        failures.push(format!("{verdict}: Bob's socket received {f}"));
    }
    assert_clean("Bob over the WebSocket against team A", &failures);

    // Positive control: Bob's socket delivers his own team's activities.
    let t = api.task(bob_tok, bb.team.id, "bravo live task").await;
    let (v, _) = bob
        .wait_for("Bob's task.created", Duration::from_secs(10), |v| {
            is_logged_activity(v) && v["activity"]["taskId"] == t.id.to_string()
        })
        .await;
    assert_eq!(v["activity"]["teamId"], bb.team.id.to_string());
}
