//! The HTTP client of the tests ([`Api`]): typed calls for the contract's endpoints, responses
//! ([`Resp`]) with problem+json assertions, the typed shapes of the bodies, and `/metrics` scrapes.

use std::sync::Arc;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use uuid::Uuid;

use super::spec::Spec;

/// A `/metrics` scrape: `name{labels} value` lines keyed by `name{labels}` as printed.
pub struct Metrics(std::collections::HashMap<String, f64>);

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        Metrics(
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .filter_map(|l| {
                    let (k, v) = l.rsplit_once(' ')?;
                    Some((k.to_owned(), v.parse().ok()?))
                })
                .collect(),
        )
    }

    /// The value of the one series of `name` whose labels contain every `label="value"` given
    /// (0 when there is none; panics when several match).
    #[track_caller]
    pub fn get(&self, name: &str, labels: &[&str]) -> f64 {
        let hits: Vec<f64> = self
            .0
            .iter()
            .filter(|(k, _)| {
                let (n, l) = k.split_once('{').unwrap_or((k.as_str(), ""));
                n == name && labels.iter().all(|want| l.contains(want))
            })
            .map(|(_, v)| *v)
            .collect();
        assert!(
            hits.len() <= 1,
            "{name} {labels:?} matches several series: {hits:?}"
        );
        hits.first().copied().unwrap_or(0.0)
    }

    /// The sum over every series of `name` (whatever its labels).
    pub fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| k.split_once('{').map_or(k.as_str(), |(n, _)| n) == name)
            .map(|(_, v)| *v)
            .sum()
    }

    /// Whether a series of `name` with every `label="value"` given is exported at all.
    pub fn has(&self, name: &str, labels: &[&str]) -> bool {
        self.0.keys().any(|k| {
            let (n, l) = k.split_once('{').unwrap_or((k.as_str(), ""));
            n == name && labels.iter().all(|want| l.contains(want))
        })
    }
}

#[derive(Debug, Clone)]
pub struct Resp {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub headers: HeaderMap,
    pub json: Value,
    pub text: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `X-TaskForge-Seq` as a number (panics if absent or not a number).
    pub fn seq(&self) -> i64 {
        let v = self
            .header("x-taskforge-seq")
            .unwrap_or_else(|| panic!("{} {}: no X-TaskForge-Seq header", self.method, self.path));
        v.parse()
            .unwrap_or_else(|_| panic!("X-TaskForge-Seq is not a number: {v:?}"))
    }

    /// Asserts the status and returns the JSON body.
    #[track_caller]
    pub fn ok(&self, status: u16) -> &Value {
        assert_eq!(
            self.status, status,
            "{} {}: expected {status}, got {}: {}",
            self.method, self.path, self.status, self.text
        );
        &self.json
    }

    #[track_caller]
    pub fn parse<T: DeserializeOwned>(&self, status: u16) -> T {
        let v = self.ok(status).clone();
        serde_json::from_value(v).unwrap_or_else(|e| {
            panic!(
                "{} {}: cannot parse body ({e}): {}",
                self.method, self.path, self.text
            )
        })
    }

    /// A 429 `rate_limited` with a `Retry-After` of 1 to 60 seconds; returns the seconds.
    #[track_caller]
    pub fn retry_after(&self) -> u64 {
        self.problem(429, "rate_limited");
        let secs: u64 = self
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("a Retry-After in seconds: {:?}", self.headers));
        assert!((1..=60).contains(&secs), "Retry-After {secs}");
        secs
    }

    /// Asserts an RFC 9457 problem response with the given status and code.
    #[track_caller]
    pub fn problem(&self, status: u16, code: &str) -> &Value {
        let ctx = format!(
            "{} {} -> {}: {}",
            self.method, self.path, self.status, self.text
        );
        assert_eq!(self.status, status, "expected {status} {code}: {ctx}");
        let ct = self.header("content-type").unwrap_or("");
        assert!(
            ct.starts_with("application/problem+json"),
            "content-type {ct:?} is not application/problem+json: {ctx}"
        );
        let j = &self.json;
        assert_eq!(j["code"], code, "problem code: {ctx}");
        assert_eq!(j["status"], status, "problem status field: {ctx}");
        assert!(j["type"].is_string(), "problem type: {ctx}");
        assert!(
            j["title"].as_str().is_some_and(|t| !t.is_empty()),
            "problem title: {ctx}"
        );
        assert!(j["detail"].is_string(), "problem detail: {ctx}");
        j
    }

    /// Asserts a 422 `validation_failed` problem that names `field` in `errors`.
    #[track_caller]
    pub fn invalid(&self, field: &str) {
        let j = self.problem(422, "validation_failed");
        let errors = j["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("422 without errors[]: {}", self.text));
        assert!(
            errors
                .iter()
                .all(|e| e["field"].is_string() && e["message"].is_string()),
            "errors entries must be {{field, message}}: {}",
            self.text
        );
        assert!(
            errors.iter().any(|e| e["field"]
                .as_str()
                .is_some_and(|f| f == field || f.ends_with(&format!(".{field}")))),
            "422 errors do not name field {field:?}: {}",
            self.text
        );
    }
}

#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    spec: Arc<Spec>,
}

pub type Headers<'a> = &'a [(&'a str, &'a str)];

impl Api {
    pub fn new(base: &str, spec: Arc<Spec>, http: reqwest::Client) -> Api {
        Api {
            base: base.to_string(),
            http,
            spec,
        }
    }

    /// Sends a request with an optional JSON body; validates the response against the spec.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        headers: Headers<'_>,
    ) -> Resp {
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
        let ct = body.map(|_| "application/json");
        self.send_raw(method, path, token, bytes, ct, headers).await
    }

    /// Scrapes `/metrics`.
    pub async fn metrics(&self) -> Metrics {
        let r = self
            .send_raw("GET", "/metrics", None, None, None, &[])
            .await;
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text);
        Metrics::parse(&r.text)
    }

    /// Sends raw bytes with an explicit (or no) content type.
    pub async fn send_raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
        content_type: Option<&str>,
        headers: Headers<'_>,
    ) -> Resp {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(m, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        for (k, v) in headers {
            req = req.header(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: request failed: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp
            .text()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: reading body failed: {e}"));
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        let ct = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        self.spec.check(method, path, status, ct, &text);
        Resp {
            method: method.to_string(),
            path: path.to_string(),
            status,
            headers,
            json,
            text,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.send("GET", path, Some(token), None, &[]).await
    }
    pub async fn post(&self, path: &str, token: &str, body: Value) -> Resp {
        self.send("POST", path, Some(token), Some(&body), &[]).await
    }
    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Resp {
        self.send("PATCH", path, Some(token), Some(&body), &[])
            .await
    }
    pub async fn delete(&self, path: &str, token: &str) -> Resp {
        self.send("DELETE", path, Some(token), None, &[]).await
    }
    pub async fn put(&self, path: &str, token: &str) -> Resp {
        self.send("PUT", path, Some(token), None, &[]).await
    }

    // ---- inbox ------------------------------------------------------------------------------

    /// `GET /me/notifications` with a query string (`""` for none); the whole body.
    pub async fn inbox(&self, token: &str, query: &str) -> Value {
        self.get(&format!("/api/v1/me/notifications{query}"), token)
            .await
            .ok(200)
            .clone()
    }

    /// Every notification the inbox serves, newest first (all pages).
    pub async fn all_notifications(&self, token: &str) -> Vec<Value> {
        self.all_pages(token, "/api/v1/me/notifications").await
    }

    /// `PUT` (true) or `DELETE` (false) `/tasks/{task}/follow`.
    pub async fn follow(&self, token: &str, task: Uuid, following: bool) {
        let path = format!("/api/v1/tasks/{task}/follow");
        let r = if following {
            self.put(&path, token).await
        } else {
            self.delete(&path, token).await
        };
        r.ok(204);
    }

    /// `POST /me/notifications/read`; returns `{seq, unreadCount}`.
    pub async fn mark_read(&self, token: &str, body: Value) -> Value {
        self.post("/api/v1/me/notifications/read", token, body)
            .await
            .ok(200)
            .clone()
    }

    // ---- auth -------------------------------------------------------------------------------

    pub async fn register_raw(&self, email: &str, password: &str, display_name: &str) -> Resp {
        let body = json!({"email": email, "password": password, "displayName": display_name});
        self.send("POST", "/api/v1/auth/register", None, Some(&body), &[])
            .await
    }

    pub async fn register(&self, email: &str, password: &str, display_name: &str) -> AuthResponse {
        self.register_raw(email, password, display_name)
            .await
            .parse(201)
    }

    /// Registers a fresh user with a unique email and password `PASSWORD`.
    pub async fn new_user(&self, name: &str) -> AuthResponse {
        self.register(&unique_email(name), PASSWORD, name).await
    }

    pub async fn login(&self, email: &str, password: &str) -> Resp {
        let body = json!({"email": email, "password": password});
        self.send("POST", "/api/v1/auth/login", None, Some(&body), &[])
            .await
    }

    pub async fn refresh(&self, refresh_token: &str) -> Resp {
        let body = json!({"refreshToken": refresh_token});
        self.send("POST", "/api/v1/auth/refresh", None, Some(&body), &[])
            .await
    }

    pub async fn logout(&self, refresh_token: &str) -> Resp {
        let body = json!({"refreshToken": refresh_token});
        self.send("POST", "/api/v1/auth/logout", None, Some(&body), &[])
            .await
    }

    // ---- teams, members, boards -------------------------------------------------------------

    pub async fn create_team(&self, token: &str, name: &str) -> Team {
        self.post("/api/v1/teams", token, json!({"name": name}))
            .await
            .parse(201)
    }

    pub async fn add_member(&self, token: &str, team: Uuid, email: &str, role: &str) -> Member {
        self.post(
            &format!("/api/v1/teams/{team}/members"),
            token,
            json!({"email": email, "role": role}),
        )
        .await
        .parse(201)
    }

    /// Registers a user and adds them to `team` with `role`.
    pub async fn member(&self, owner: &str, team: Uuid, name: &str, role: &str) -> AuthResponse {
        let u = self.new_user(name).await;
        self.add_member(owner, team, &u.user.email, role).await;
        u
    }

    pub async fn create_board(&self, token: &str, team: Uuid, name: &str) -> Board {
        self.post(
            &format!("/api/v1/teams/{team}/boards"),
            token,
            json!({"name": name}),
        )
        .await
        .parse(201)
    }

    pub async fn create_label(&self, token: &str, team: Uuid, name: &str, color: &str) -> Label {
        self.post(
            &format!("/api/v1/teams/{team}/labels"),
            token,
            json!({"name": name, "color": color}),
        )
        .await
        .parse(201)
    }

    // ---- tasks and comments -----------------------------------------------------------------

    pub async fn create_task(&self, token: &str, team: Uuid, body: Value) -> Task {
        self.post(&format!("/api/v1/teams/{team}/tasks"), token, body)
            .await
            .parse(201)
    }

    pub async fn task(&self, token: &str, team: Uuid, title: &str) -> Task {
        self.create_task(token, team, json!({"title": title})).await
    }

    pub async fn get_task(&self, token: &str, task: Uuid) -> Resp {
        self.get(&format!("/api/v1/tasks/{task}"), token).await
    }

    pub async fn patch_task(&self, token: &str, task: Uuid, body: Value) -> Resp {
        self.patch(&format!("/api/v1/tasks/{task}"), token, body)
            .await
    }

    pub async fn comment(&self, token: &str, task: Uuid, body: &str) -> Comment {
        self.post(
            &format!("/api/v1/tasks/{task}/comments"),
            token,
            json!({"body": body}),
        )
        .await
        .parse(201)
    }

    // ---- pagination -------------------------------------------------------------------------

    /// Follows `nextCursor` from `path` (which may already have a query string) and returns
    /// every item, asserting 200 on each page. Bounded to 10,000 pages.
    pub async fn all_pages(&self, token: &str, path: &str) -> Vec<Value> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..10_000 {
            let url = match &cursor {
                Some(c) => format!("{path}{sep}cursor={}", urlencode(c)),
                None => path.to_string(),
            };
            let r = self.get(&url, token).await;
            let page = r.ok(200);
            items.extend(
                page["items"]
                    .as_array()
                    .expect("items array")
                    .iter()
                    .cloned(),
            );
            match page["nextCursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => {
                    assert!(page["nextCursor"].is_null(), "nextCursor: {}", r.text);
                    return items;
                }
            }
        }
        panic!("{path}: more than 10,000 pages");
    }

    pub async fn activity(&self, token: &str, team: Uuid) -> Vec<Activity> {
        self.all_pages(token, &format!("/api/v1/teams/{team}/activity?limit=200"))
            .await
            .into_iter()
            .map(|v| serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}")))
            .collect()
    }

    /// Activities of `team` with seq > `since`.
    pub async fn activity_since(&self, token: &str, team: Uuid, since: i64) -> Vec<Activity> {
        self.all_pages(
            token,
            &format!("/api/v1/teams/{team}/activity?limit=200&since={since}"),
        )
        .await
        .into_iter()
        .map(|v| serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}")))
        .collect()
    }

    /// The team's current seq via `X-TaskForge-Seq` on GET /teams/{id}.
    pub async fn team_seq(&self, token: &str, team: Uuid) -> i64 {
        let r = self.get(&format!("/api/v1/teams/{team}"), token).await;
        r.ok(200);
        r.seq()
    }
}

pub const PASSWORD: &str = "correct horse battery staple";

pub fn unique_email(prefix: &str) -> String {
    let clean: String = prefix
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    format!("{clean}-{}@example.com", Uuid::new_v4().simple())
}

pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Typed shapes (extra fields are allowed: the contract welcomes additions)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub display_name: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthResponse {
    pub user: User,
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: i64,
}

impl AuthResponse {
    pub fn token(&self) -> &str {
        &self.access_token
    }
    pub fn id(&self) -> Uuid {
        self.user.id
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Team {
    pub id: Uuid,
    pub name: String,
    pub created_at: String,
    pub default_board_id: Uuid,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub team_id: Uuid,
    pub user: User,
    pub role: String,
    pub joined_at: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Board {
    pub id: Uuid,
    pub team_id: Uuid,
    pub name: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    pub id: Uuid,
    pub team_id: Uuid,
    pub board_id: Uuid,
    pub title: String,
    pub description: Option<String>,
    pub status: String,
    pub priority: String,
    pub assignee_user_id: Option<Uuid>,
    pub due_date: Option<String>,
    pub position: f64,
    pub created_by: Uuid,
    pub created_at: String,
    pub updated_at: String,
    pub version: i64,
    /// Ascending ids; absent before labels existed (checked where labels are tested).
    #[serde(default)]
    pub label_ids: Vec<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Label {
    pub id: Uuid,
    pub team_id: Uuid,
    pub name: String,
    pub color: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Comment {
    pub id: Uuid,
    pub task_id: Uuid,
    pub team_id: Uuid,
    pub author_user_id: Uuid,
    pub body: String,
    pub created_at: String,
    pub edited_at: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Activity {
    pub id: Uuid,
    pub v: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub team_id: Uuid,
    pub actor_user_id: Uuid,
    pub ts: String,
    pub seq: i64,
    #[serde(default)]
    pub board_id: Option<Uuid>,
    #[serde(default)]
    pub task_id: Option<Uuid>,
    pub data: Value,
}

/// Asserts an RFC 3339 UTC timestamp with exactly millisecond precision (`...T..:..:..123Z`).
#[track_caller]
pub fn assert_ts_millis(ts: &str) {
    let ok = ts.len() == 24
        && ts.ends_with('Z')
        && ts.as_bytes()[10] == b'T'
        && ts.as_bytes()[19] == b'.'
        && ts[20..23].bytes().all(|b| b.is_ascii_digit())
        && time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).is_ok();
    assert!(
        ok,
        "timestamp {ts:?} is not RFC 3339 UTC with millisecond precision"
    );
}
