//! Black-box test harness: spawns a real `taskforge serve` process on a random port against a
//! throwaway database (SQLite file or a fresh PostgreSQL database) and talks to it over HTTP.
//! Every response seen through [`Api`] is checked against the server's own `/openapi.json`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use uuid::Uuid;

pub const READY_PREFIX: &str = "taskforge listening on ";
pub const API: &str = "/api/v1";

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Whether PostgreSQL-backed tests can run. Panics under `CI=true` when no database is configured.
pub fn postgres_enabled() -> bool {
    if std::env::var("TASKFORGE_TEST_DATABASE_URL").is_ok_and(|v| !v.is_empty()) {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but TASKFORGE_TEST_DATABASE_URL is not set: PostgreSQL tests cannot run");
    }
    eprintln!("skipping PostgreSQL: TASKFORGE_TEST_DATABASE_URL not set");
    false
}

/// Generates `mod <name> { sqlite, postgres }` tests for each `async fn <name>(Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if !$crate::common::postgres_enabled() {
                        return;
                    }
                    super::$name($crate::common::Backend::Postgres).await
                }
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------------------------

pub struct TestServer {
    pub backend: Backend,
    pub base: String,
    pub db_url: String,
    pub jwt_secret: String,
    env: Vec<(String, String)>,
    child: Option<Child>,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
    spec: Option<Arc<Spec>>,
    frame_schema: Arc<tokio::sync::Mutex<Option<Arc<FrameSchema>>>>,
    _tmp: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
}

impl TestServer {
    pub async fn start(backend: Backend) -> TestServer {
        Self::start_with(backend, &[]).await
    }

    pub async fn start_with(backend: Backend, overrides: &[(&str, &str)]) -> TestServer {
        let jwt_secret = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
        let (db_url, tmp, pg) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("sqlite://{}/taskforge.db", dir.path().display());
                (url, Some(dir), None)
            }
            Backend::Postgres => {
                let admin = std::env::var("TASKFORGE_TEST_DATABASE_URL")
                    .expect("TASKFORGE_TEST_DATABASE_URL must be set for PostgreSQL tests");
                let name = format!("tf_{}", Uuid::new_v4().simple());
                create_pg_database(&admin, &name).await;
                (pg_url_with_db(&admin, &name), None, Some((admin, name)))
            }
        };
        let mut env: Vec<(String, String)> = vec![
            ("TASKFORGE_LISTEN".into(), "127.0.0.1:0".into()),
            ("TASKFORGE_DATABASE_URL".into(), db_url.clone()),
            ("TASKFORGE_JWT_SECRET".into(), jwt_secret.clone()),
            ("TASKFORGE_LOG".into(), "info".into()),
            // Tests register users and open sockets by the hundred from one address: the
            // per-address and per-email limits are off unless a test (tests/limits.rs) sets them.
            ("TASKFORGE_AUTH_LIMIT_PER_IP".into(), "0".into()),
            ("TASKFORGE_AUTH_LIMIT_PER_EMAIL".into(), "0".into()),
            ("TASKFORGE_CONNECT_LIMIT_PER_IP".into(), "0".into()),
            // Tests run side by side (and clusters of three) on one PostgreSQL server.
            ("TASKFORGE_DATABASE_POOL_SIZE".into(), "10".into()),
        ];
        for (k, v) in overrides {
            env.retain(|(ek, _)| ek != k);
            env.push((k.to_string(), v.to_string()));
        }
        let mut srv = TestServer {
            backend,
            base: String::new(),
            db_url,
            jwt_secret,
            env,
            child: None,
            stderr: Arc::default(),
            stdout: Arc::default(),
            spec: None,
            frame_schema: Arc::default(),
            _tmp: tmp,
            pg,
        };
        srv.spawn().await;
        srv
    }

    async fn spawn(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_taskforge"));
        cmd.arg("serve");
        for (k, _) in std::env::vars() {
            if k.starts_with("TASKFORGE_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn taskforge binary");

        let stderr = child.stderr.take().expect("stderr");
        let sink = self.stderr.clone();
        let echo = std::env::var("TASKFORGE_TEST_ECHO").is_ok();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if echo {
                    eprintln!("[server] {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });

        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        let base = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, lines.next_line()).await {
                Err(_) => panic!(
                    "server did not print its ready line within 30 s; stderr:\n{}",
                    self.stderr_text()
                ),
                Ok(Ok(Some(line))) => {
                    self.stdout.lock().unwrap().push(line.clone());
                    if let Some(url) = line.strip_prefix(READY_PREFIX) {
                        break url.trim().trim_end_matches('/').to_string();
                    }
                }
                Ok(_) => {
                    // Give the stderr drain a moment to collect the cause.
                    let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    panic!(
                        "server exited before it was ready; stderr:\n{}",
                        self.stderr_text()
                    );
                }
            }
        };
        assert!(
            base.starts_with("http://127.0.0.1:"),
            "unexpected ready line URL {base:?}"
        );
        let sink = self.stdout.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        self.base = base;
        self.child = Some(child);
        if self.spec.is_none() {
            self.spec = Some(Arc::new(Spec::fetch(&self.base).await));
        }
    }

    /// Another server process on the same database with the same JWT secret (a peer in a
    /// cluster); it does not own the database.
    pub async fn start_peer(&self, overrides: &[(&str, &str)]) -> TestServer {
        let mut env = self.env.clone();
        for (k, v) in overrides {
            env.retain(|(ek, _)| ek != k);
            env.push((k.to_string(), v.to_string()));
        }
        let mut srv = TestServer {
            backend: self.backend,
            base: String::new(),
            db_url: self.db_url.clone(),
            jwt_secret: self.jwt_secret.clone(),
            env,
            child: None,
            stderr: Arc::default(),
            stdout: Arc::default(),
            spec: self.spec.clone(),
            frame_schema: Arc::default(),
            _tmp: None,
            pg: None,
        };
        srv.spawn().await;
        srv
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Kills the server process (SIGKILL: no shutdown runs, as in a crash); the database is kept.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Stops the server and starts it again on the same database (new random port).
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }

    /// Sets (or with `None` removes) an environment variable for the next (re)start.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.env.push((key.to_owned(), v.to_owned()));
        }
    }

    pub fn client(&self) -> Api {
        Api::new(
            &self.base,
            self.spec.clone().expect("spec loaded"),
            reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(64)
                .build()
                .expect("reqwest client"),
        )
    }

    pub fn spec(&self) -> &Value {
        &self.spec.as_ref().expect("spec loaded").doc
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Polls the captured stderr until `pred` matches a line (bounded by `timeout`).
    pub async fn wait_for_log(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stderr.lock().unwrap().iter().any(|l| pred(l)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if let Some((admin, name)) = self.pg.take() {
            // Best effort; a separate thread so no runtime is blocked on.
            let _ = std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    use sqlx::Connection;
                    if let Ok(Ok(mut conn)) = tokio::time::timeout(
                        Duration::from_secs(5),
                        sqlx::PgConnection::connect(&admin),
                    )
                    .await
                    {
                        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                        let _ = tokio::time::timeout(
                            Duration::from_secs(10),
                            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn),
                        )
                        .await;
                    }
                });
            })
            .join();
        }
    }
}

async fn create_pg_database(admin: &str, name: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin)
        .await
        .unwrap_or_else(|e| panic!("connect to TASKFORGE_TEST_DATABASE_URL ({admin}): {e}"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
}

/// `postgres://u@h:5432/test?x=y` + `tf_1` -> `postgres://u@h:5432/tf_1?x=y`
fn pg_url_with_db(admin: &str, db: &str) -> String {
    let (main, query) = match admin.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (admin, None),
    };
    let scheme_end = main.find("://").map(|i| i + 3).unwrap_or(0);
    let authority_end = main[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(main.len());
    let mut url = format!("{}/{}", &main[..authority_end], db);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

// ---------------------------------------------------------------------------------------------
// Redis of the test's own, and clusters of server processes
// ---------------------------------------------------------------------------------------------

/// A `redis-server` started by the test on a free loopback port, so the test can restart it.
pub struct TestRedis {
    pub port: u16,
    child: Option<Child>,
}

impl TestRedis {
    /// `None` (with a visible message) when `redis-server` is not installed, except under
    /// `CI=true`, where that is a failure.
    pub async fn start() -> Option<TestRedis> {
        let found = std::process::Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!(
                    "CI=true but redis-server is not installed: multi-instance tests cannot run"
                );
            }
            eprintln!("skipping: redis-server is not installed");
            return None;
        }
        let port = free_port();
        let mut redis = TestRedis { port, child: None };
        redis.spawn().await;
        Some(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("redis-server did not listen on {} within 10 s", self.port);
    }

    /// Kills Redis (everything it held is gone: it keeps nothing on disk).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts it again, empty, on the same port.
    pub async fn start_again(&mut self) {
        self.spawn().await;
    }
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// Server processes on one PostgreSQL database and one Redis of the test's own: the scaled
/// deployment.
pub struct Cluster {
    pub nodes: Vec<TestServer>,
    pub redis: TestRedis,
}

impl Cluster {
    /// `None` (skipped, with a message) without PostgreSQL or redis-server outside CI.
    pub async fn start(n: usize, overrides: &[(&str, &str)]) -> Option<Cluster> {
        if !postgres_enabled() {
            return None;
        }
        let redis = TestRedis::start().await?;
        let url = redis.url();
        let mut env: Vec<(&str, &str)> = vec![
            ("TASKFORGE_REDIS_URL", url.as_str()),
            ("TASKFORGE_BUS_CHECK_INTERVAL", "200ms"),
            ("TASKFORGE_PRESENCE_TTL", "2s"),
            ("TASKFORGE_PRESENCE_SWEEP_INTERVAL", "500ms"),
        ];
        env.extend_from_slice(overrides);
        let first = TestServer::start_with(Backend::Postgres, &env).await;
        let mut nodes = Vec::with_capacity(n);
        for _ in 1..n {
            nodes.push(first.start_peer(&[]).await);
        }
        nodes.insert(0, first);
        Some(Cluster { nodes, redis })
    }

    pub fn node(&self, i: usize) -> &TestServer {
        &self.nodes[i % self.nodes.len()]
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Peers first: the first node drops the database.
        while self.nodes.len() > 1 {
            self.nodes.pop();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// OpenAPI conformance
// ---------------------------------------------------------------------------------------------

pub struct Spec {
    pub doc: Value,
    prefixes: Vec<String>,
    templates: Vec<(String, Vec<String>)>,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

impl Spec {
    async fn fetch(base: &str) -> Spec {
        let resp = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("{base}/openapi.json"))
            .send()
            .await
            .expect("GET /openapi.json");
        assert_eq!(resp.status().as_u16(), 200, "GET /openapi.json status");
        let doc: Value = resp.json().await.expect("/openapi.json is JSON");
        Spec::new(doc)
    }

    pub fn new(doc: Value) -> Spec {
        let templates = doc["paths"]
            .as_object()
            .expect("openapi.json has paths")
            .keys()
            .map(|p| (p.clone(), segments(p)))
            .collect();
        let prefixes = doc["servers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["url"].as_str())
            .filter(|u| u.starts_with('/') && *u != "/")
            .map(|u| u.trim_end_matches('/').to_string())
            .collect();
        Spec {
            doc,
            prefixes,
            templates,
            validators: Mutex::default(),
        }
    }

    /// The best matching path template (most literal segments) for a concrete path.
    fn match_path(&self, path: &str) -> Option<&str> {
        let mut candidates = vec![path.to_string()];
        for p in &self.prefixes {
            if let Some(rest) = path.strip_prefix(p.as_str()) {
                candidates.push(rest.to_string());
            }
        }
        let mut best: Option<(&str, usize)> = None;
        for cand in &candidates {
            let segs = segments(cand);
            for (tpl, tsegs) in &self.templates {
                if tsegs.len() != segs.len() {
                    continue;
                }
                let mut literal = 0;
                let ok = tsegs.iter().zip(&segs).all(|(t, s)| {
                    if t.starts_with('{') && t.ends_with('}') {
                        !s.is_empty()
                    } else if t == s {
                        literal += 1;
                        true
                    } else {
                        false
                    }
                });
                if ok && best.is_none_or(|(_, l)| literal > l) {
                    best = Some((tpl, literal));
                }
            }
        }
        best.map(|(t, _)| t)
    }

    fn deref<'a>(&'a self, v: &'a Value) -> &'a Value {
        let mut cur = v;
        for _ in 0..8 {
            match cur.get("$ref").and_then(Value::as_str) {
                Some(r) if r.starts_with("#/") => match self.doc.pointer(&r[1..]) {
                    Some(t) => cur = t,
                    None => panic!("openapi.json: dangling $ref {r}"),
                },
                _ => break,
            }
        }
        cur
    }

    /// Panics when the response is not documented or does not match its documented schema.
    pub fn check(&self, method: &str, path: &str, status: u16, content_type: &str, text: &str) {
        let path = path.split('?').next().unwrap_or(path);
        let Some(template) = self.match_path(path) else {
            return;
        };
        let Some(op) = self.doc["paths"][template].get(method.to_ascii_lowercase()) else {
            return;
        };
        let responses = &op["responses"];
        let code = status.to_string();
        let range = format!("{}XX", status / 100);
        let (key, resp) = [code.as_str(), range.as_str(), "default"]
            .into_iter()
            .find_map(|k| responses.get(k).map(|r| (k, r)))
            .unwrap_or_else(|| {
                panic!(
                    "OpenAPI: {method} {path} (operation {template}) answered undocumented status \
                     {status}; documented: {:?}; body: {text}",
                    responses
                        .as_object()
                        .map(|o| o.keys().cloned().collect::<Vec<_>>())
                        .unwrap_or_default()
                )
            });
        if text.trim().is_empty() {
            return;
        }
        let ct = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !ct.contains("json") {
            return;
        }
        let content = &self.deref(resp)["content"];
        let media = content.get(&ct).or_else(|| {
            content
                .as_object()
                .and_then(|o| o.iter().find(|(k, _)| k.contains("json")).map(|(_, v)| v))
        });
        let Some(schema) = media.and_then(|m| m.get("schema")) else {
            return;
        };
        let cache_key = format!("{method} {template} {key} {ct}");
        let validator = {
            let mut cache = self.validators.lock().unwrap();
            cache
                .entry(cache_key)
                .or_insert_with(|| {
                    let root = json!({
                        "allOf": [schema],
                        "components": self.doc.get("components").cloned().unwrap_or(json!({})),
                    });
                    Arc::new(
                        jsonschema::options()
                            .with_draft(jsonschema::Draft::Draft202012)
                            .build(&root)
                            .unwrap_or_else(|e| {
                                panic!("OpenAPI schema for {method} {template} {key}: {e}")
                            }),
                    )
                })
                .clone()
        };
        let body: Value = serde_json::from_str(text).unwrap_or_else(|e| {
            panic!("{method} {path} -> {status}: content type {ct} but invalid JSON ({e}): {text}")
        });
        let errors: Vec<String> = validator
            .iter_errors(&body)
            .map(|e| format!("{e} (at {})", e.instance_path))
            .collect();
        if !errors.is_empty() {
            panic!(
                "OpenAPI: {method} {path} -> {status} does not match the schema of {template} \
                 [{key}]:\n  {}\nbody: {text}",
                errors.join("\n  ")
            );
        }
    }
}

fn segments(p: &str) -> Vec<String> {
    p.trim_matches('/').split('/').map(str::to_string).collect()
}

// ---------------------------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// WebSocket client for `/realtime`
// ---------------------------------------------------------------------------------------------
//
// Every JSON frame received is validated against `#/components/schemas/ServerFrame` of the
// server's `/asyncapi.json` (a no-op, announced on stderr, while the document does not exist).

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The default time `WsClient::recv` waits for a frame.
pub const WS_RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// Validator of server frames built from `/asyncapi.json` (`None` while the server has none).
pub struct FrameSchema {
    validator: Option<jsonschema::Validator>,
}

impl FrameSchema {
    async fn fetch(base: &str) -> FrameSchema {
        let resp = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("{base}/asyncapi.json"))
            .send()
            .await
            .expect("GET /asyncapi.json");
        let status = resp.status().as_u16();
        if status == 404 {
            eprintln!(
                "WARNING: GET /asyncapi.json answered 404: WebSocket frames are NOT validated \
                 against the AsyncAPI document"
            );
            return FrameSchema { validator: None };
        }
        assert_eq!(status, 200, "GET /asyncapi.json status");
        let doc: Value = resp.json().await.expect("/asyncapi.json is JSON");
        FrameSchema::new(&doc)
    }

    pub fn new(doc: &Value) -> FrameSchema {
        assert!(
            doc["asyncapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.")),
            "/asyncapi.json: expected an AsyncAPI 3.x document, got asyncapi = {}",
            doc["asyncapi"]
        );
        let components = doc.get("components").cloned().unwrap_or(json!({}));
        assert!(
            components["schemas"]["ServerFrame"].is_object(),
            "/asyncapi.json has no components.schemas.ServerFrame"
        );
        let root = json!({
            "allOf": [{"$ref": "#/components/schemas/ServerFrame"}],
            "components": components,
        });
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&root)
            .unwrap_or_else(|e| panic!("/asyncapi.json ServerFrame schema does not compile: {e}"));
        FrameSchema {
            validator: Some(validator),
        }
    }

    pub fn enforced(&self) -> bool {
        self.validator.is_some()
    }

    /// The validation errors of `frame` against `ServerFrame` (none while not enforced).
    pub fn errors(&self, frame: &Value) -> Vec<String> {
        let Some(v) = &self.validator else {
            return Vec::new();
        };
        v.iter_errors(frame)
            .map(|e| format!("{e} (at {})", e.instance_path))
            .collect()
    }

    /// Panics when `frame` does not match `ServerFrame`.
    #[track_caller]
    pub fn check(&self, frame: &Value) {
        let errors = self.errors(frame);
        if !errors.is_empty() {
            panic!(
                "AsyncAPI: server frame does not match ServerFrame:\n  {}\nframe: {frame}",
                errors.join("\n  ")
            );
        }
    }
}

/// One frame read from the socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A text frame holding JSON (already validated against the AsyncAPI document).
    Json(Value),
    /// A text frame that is not JSON.
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// A close frame: code (1005 when the frame had none) and reason.
    Close(u16, String),
    /// The stream ended (or failed) without a close frame: the description.
    Dropped(String),
}

impl Frame {
    pub fn is_end(&self) -> bool {
        matches!(self, Frame::Close(..) | Frame::Dropped(_))
    }
}

/// What a room subscription names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Team(Uuid),
    Board(Uuid),
    Task(Uuid),
}

impl Scope {
    pub fn key(self) -> &'static str {
        match self {
            Scope::Team(_) => "teamId",
            Scope::Board(_) => "boardId",
            Scope::Task(_) => "taskId",
        }
    }
    pub fn id(self) -> Uuid {
        match self {
            Scope::Team(id) | Scope::Board(id) | Scope::Task(id) => id,
        }
    }
    /// Whether a server frame (`subscribed`, `unsubscribed`, `error`) names this scope.
    pub fn named_by(self, frame: &Value) -> bool {
        frame[self.key()].as_str() == Some(&self.id().to_string())
    }
}

/// The answer to a successful subscribe.
#[derive(Debug, Clone)]
pub struct Subscribed {
    pub seq: i64,
    /// The `subscribed` frame itself.
    pub frame: Value,
    /// Activity frames (the `activity` objects) received between the subscribe message and its
    /// reply: with `since`, the replay (frames of the socket's other rooms may interleave).
    pub before: Vec<Value>,
}

pub struct WsClient {
    ws: WebSocketStream<TcpStream>,
    schema: Arc<FrameSchema>,
    /// Every JSON frame received so far, in order (activities, replies, errors...).
    pub frames: Vec<Value>,
    /// Number of `Ping` frames received.
    pub pings: usize,
    pub label: String,
    /// Set once a close frame or the end of the stream was seen.
    pub ended: Option<Frame>,
}

/// How to present credentials at the handshake.
#[derive(Clone, Copy, Debug)]
pub enum WsAuth<'a> {
    Query(&'a str),
    Header(&'a str),
    None,
}

impl TestServer {
    pub fn ws_url(&self) -> String {
        format!("{}/realtime", self.base.replacen("http://", "ws://", 1))
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.base
            .trim_start_matches("http://")
            .parse()
            .expect("base is http://ip:port")
    }

    async fn frame_schema(&self) -> Arc<FrameSchema> {
        let mut guard = self.frame_schema.lock().await;
        if let Some(s) = guard.as_ref() {
            return s.clone();
        }
        let s = Arc::new(FrameSchema::fetch(&self.base).await);
        *guard = Some(s.clone());
        s
    }

    /// Connects with `?token=` (panics unless the upgrade succeeds).
    pub async fn ws(&self, token: &str) -> WsClient {
        self.ws_connect(WsAuth::Query(token), None)
            .await
            .unwrap_or_else(|(s, b)| panic!("WebSocket handshake refused: {s} {b}"))
    }

    /// Connects with `Authorization: Bearer`.
    pub async fn ws_header(&self, token: &str) -> WsClient {
        self.ws_connect(WsAuth::Header(token), None)
            .await
            .unwrap_or_else(|(s, b)| panic!("WebSocket handshake refused: {s} {b}"))
    }

    /// Connects without any token (the first message must then be `auth`).
    pub async fn ws_anonymous(&self) -> WsClient {
        self.ws_connect(WsAuth::None, None)
            .await
            .unwrap_or_else(|(s, b)| panic!("WebSocket handshake refused: {s} {b}"))
    }

    /// Connects with `?token=` on a TCP socket whose receive buffer is `recv_buffer` bytes (for
    /// slow-consumer tests: a client that does not read fills the kernel buffers quickly).
    pub async fn ws_small_buffer(&self, token: &str, recv_buffer: u32) -> WsClient {
        self.ws_connect(WsAuth::Query(token), Some(recv_buffer))
            .await
            .unwrap_or_else(|(s, b)| panic!("WebSocket handshake refused: {s} {b}"))
    }

    /// Attempts a handshake; `Err((status, body))` when the server answered HTTP instead of
    /// upgrading.
    pub async fn ws_connect(
        &self,
        auth: WsAuth<'_>,
        recv_buffer: Option<u32>,
    ) -> Result<WsClient, (u16, String)> {
        let url = match auth {
            WsAuth::Query(t) => format!("{}?token={}", self.ws_url(), urlencode(t)),
            _ => self.ws_url(),
        };
        let mut req = url.as_str().into_client_request().expect("ws request");
        if let WsAuth::Header(t) = auth {
            req.headers_mut().insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
            );
        }
        let sock = if self.addr().is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .expect("socket");
        if let Some(n) = recv_buffer {
            sock.set_recv_buffer_size(n).expect("SO_RCVBUF");
        }
        let stream = tokio::time::timeout(Duration::from_secs(10), sock.connect(self.addr()))
            .await
            .expect("TCP connect timed out")
            .expect("TCP connect");
        let schema = self.frame_schema().await;
        let handshake = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::client_async(req, stream),
        )
        .await
        .expect("WebSocket handshake timed out");
        match handshake {
            Ok((ws, resp)) => {
                assert_eq!(resp.status().as_u16(), 101, "upgrade status");
                Ok(WsClient {
                    ws,
                    schema,
                    frames: Vec::new(),
                    pings: 0,
                    label: String::from("ws"),
                    ended: None,
                })
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let ct = resp
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Err((status, format!("[content-type: {ct}] {body}")))
            }
            Err(e) => panic!("WebSocket handshake failed: {e}"),
        }
    }

    /// Sends SIGTERM to the server and waits (bounded) for it to exit.
    pub async fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let pid = child.id().expect("server pid");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM {pid} failed");
        match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
            Ok(Ok(s)) => Some(s),
            _ => {
                let _ = child.kill().await;
                None
            }
        }
    }
}

impl WsClient {
    pub fn labeled(mut self, label: &str) -> WsClient {
        self.label = label.to_string();
        self
    }

    pub fn schema_enforced(&self) -> bool {
        self.schema.enforced()
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(WsMessage::text(text.to_string()))
            .await
            .unwrap_or_else(|e| panic!("{}: send failed: {e}", self.label));
    }

    /// Sends without panicking (for sockets the server may already have closed).
    pub async fn try_send_text(&mut self, text: &str) -> bool {
        self.ws
            .send(WsMessage::text(text.to_string()))
            .await
            .is_ok()
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_text(&v.to_string()).await
    }

    pub async fn send_binary(&mut self, bytes: &[u8]) {
        self.ws
            .send(WsMessage::binary(bytes.to_vec()))
            .await
            .unwrap_or_else(|e| panic!("{}: send failed: {e}", self.label));
    }

    /// Sends any message, raw frames (`WsMessage::Frame`: invalid UTF-8 in a text frame,
    /// fragments, reserved opcodes...) included; `Err` when the send failed (e.g. the server
    /// already closed the socket).
    pub async fn try_send_message(&mut self, msg: WsMessage) -> Result<(), String> {
        self.ws.send(msg).await.map_err(|e| e.to_string())
    }

    /// Sends a close frame (normal closure) and waits briefly for the server's answer.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    /// The next frame, or `None` after `timeout`. JSON frames are validated and recorded.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Option<Frame> {
        if let Some(end) = &self.ended {
            return Some(end.clone());
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(m) => m,
            };
            let frame = match msg {
                None => Frame::Dropped("stream ended".into()),
                Some(Err(e)) => Frame::Dropped(e.to_string()),
                Some(Ok(WsMessage::Text(t))) => match serde_json::from_str::<Value>(t.as_str()) {
                    Ok(v) => {
                        self.schema.check(&v);
                        self.frames.push(v.clone());
                        Frame::Json(v)
                    }
                    Err(_) => Frame::Text(t.as_str().to_string()),
                },
                Some(Ok(WsMessage::Binary(b))) => Frame::Binary(b.to_vec()),
                Some(Ok(WsMessage::Ping(p))) => {
                    self.pings += 1;
                    Frame::Ping(p.to_vec())
                }
                Some(Ok(WsMessage::Pong(p))) => Frame::Pong(p.to_vec()),
                Some(Ok(WsMessage::Close(cf))) => match cf {
                    Some(cf) => Frame::Close(u16::from(cf.code), cf.reason.as_str().to_string()),
                    None => Frame::Close(1005, String::new()),
                },
                Some(Ok(WsMessage::Frame(_))) => continue,
            };
            if frame.is_end() {
                self.ended = Some(frame.clone());
            }
            return Some(frame);
        }
    }

    /// The next frame (pings included) within `WS_RECV_TIMEOUT`; panics on timeout.
    pub async fn recv(&mut self) -> Frame {
        match self.recv_timeout(WS_RECV_TIMEOUT).await {
            Some(f) => f,
            None => panic!(
                "{}: no frame within {WS_RECV_TIMEOUT:?}; last frames: {}",
                self.label,
                self.tail()
            ),
        }
    }

    /// The last few JSON frames received (for failure messages).
    pub fn tail(&self) -> String {
        let n = self.frames.len();
        self.frames[n.saturating_sub(8)..]
            .iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            .join("\n    ")
    }

    /// The next JSON frame, skipping pings/pongs; panics on timeout or when the socket ends.
    pub async fn next_json(&mut self) -> Value {
        self.next_json_within(WS_RECV_TIMEOUT).await
    }

    pub async fn next_json_within(&mut self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_timeout(left).await {
                Some(Frame::Json(v)) => return v,
                Some(Frame::Ping(_) | Frame::Pong(_)) => continue,
                Some(other) => panic!(
                    "{}: expected a JSON frame, got {other:?}; last frames: {}",
                    self.label,
                    self.tail()
                ),
                None => panic!(
                    "{}: no JSON frame within {timeout:?}; last frames: {}",
                    self.label,
                    self.tail()
                ),
            }
        }
    }

    /// The next JSON frame, asserting its `type`.
    pub async fn expect_type(&mut self, kind: &str) -> Value {
        let v = self.next_json().await;
        assert_eq!(
            v["type"], kind,
            "{}: expected a {kind:?} frame, got {v}",
            self.label
        );
        v
    }

    /// Reads until the socket ends (bounded by `timeout`): the JSON frames seen before, and the
    /// end (`Close` or `Dropped`). Panics when it does not end in time.
    pub async fn expect_end(&mut self, timeout: Duration) -> (Vec<Value>, Frame) {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_timeout(left).await {
                Some(Frame::Json(v)) => seen.push(v),
                Some(f) if f.is_end() => return (seen, f),
                Some(_) => continue,
                None => panic!(
                    "{}: the socket did not end within {timeout:?}; frames seen meanwhile: {seen:?}",
                    self.label
                ),
            }
        }
    }

    /// Reads until the socket ends and asserts the close code; returns the JSON frames seen.
    pub async fn expect_close(&mut self, code: u16, timeout: Duration) -> Vec<Value> {
        let (seen, end) = self.expect_end(timeout).await;
        assert_eq!(
            end,
            Frame::Close(code, end_reason(&end)),
            "{}: expected close {code}; frames before it: {seen:?}",
            self.label
        );
        seen
    }

    /// Collects JSON frames for `d` (pings skipped); stops early when the socket ends.
    pub async fn collect_for(&mut self, d: Duration) -> Vec<Value> {
        let deadline = Instant::now() + d;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return out;
            }
            match self.recv_timeout(left).await {
                Some(Frame::Json(v)) => out.push(v),
                Some(f) if f.is_end() => return out,
                Some(_) => {}
                None => return out,
            }
        }
    }

    /// Reads whatever is immediately available (bounded to 10,000 frames).
    pub async fn pump(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        for _ in 0..10_000 {
            match self.recv_timeout(Duration::from_millis(2)).await {
                Some(Frame::Json(v)) => out.push(v),
                Some(f) if f.is_end() => return out,
                Some(_) => {}
                None => return out,
            }
        }
        out
    }

    /// Sends `ping` and returns every JSON frame received before the `pong`: everything the
    /// server had queued for this socket before it read the ping.
    pub async fn barrier(&mut self) -> Vec<Value> {
        self.send_json(json!({"type": "ping"})).await;
        let mut out = Vec::new();
        for _ in 0..100_000 {
            let v = self.next_json().await;
            if v["type"] == "pong" {
                return out;
            }
            out.push(v);
        }
        panic!("{}: no pong after 100,000 frames", self.label);
    }

    /// Asserts `ping` is answered by `pong` with nothing before it.
    pub async fn expect_pong(&mut self) {
        let before = self.barrier().await;
        assert!(
            before.is_empty(),
            "{}: frames before the pong: {before:?}",
            self.label
        );
    }

    /// Reads JSON frames until one satisfies `pred` (bounded by `timeout`); returns it and the
    /// frames seen before it.
    pub async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> (Value, Vec<Value>) {
        let deadline = Instant::now() + timeout;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_timeout(left).await {
                Some(Frame::Json(v)) if pred(&v) => return (v, before),
                Some(Frame::Json(v)) => before.push(v),
                Some(Frame::Ping(_) | Frame::Pong(_)) => {}
                Some(other) => panic!(
                    "{}: waiting for {what}, got {other:?}; frames before: {before:?}",
                    self.label
                ),
                None => panic!(
                    "{}: no {what} within {timeout:?}; frames meanwhile: {before:?}",
                    self.label
                ),
            }
        }
    }

    /// Reads until `n` activity frames (presence excluded) arrived; returns their `activity`
    /// objects. Panics after `timeout`.
    pub async fn activities(&mut self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_timeout(left).await {
                Some(Frame::Json(v)) => {
                    if is_logged_activity(&v) {
                        out.push(v["activity"].clone());
                    }
                }
                Some(Frame::Ping(_) | Frame::Pong(_)) => {}
                Some(other) => panic!(
                    "{}: waiting for {n} activities, got {other:?} after {out:?}",
                    self.label
                ),
                None => panic!(
                    "{}: only {} of {n} activities within {timeout:?}: {out:?}",
                    self.label,
                    out.len()
                ),
            }
        }
        out
    }

    /// Subscribes and waits for the `subscribed` reply of that scope; `Err(error frame)` when the
    /// server answers an `error` for it (or one without a scope).
    pub async fn try_subscribe(
        &mut self,
        scope: Scope,
        since: Option<i64>,
    ) -> Result<Subscribed, Value> {
        let mut msg = json!({"type": "subscribe"});
        msg[scope.key()] = json!(scope.id());
        if let Some(s) = since {
            msg["since"] = json!(s);
        }
        self.send_json(msg).await;
        let mut before = Vec::new();
        for _ in 0..1_000_000 {
            let v = self.next_json().await;
            match v["type"].as_str() {
                Some("subscribed") if scope.named_by(&v) => {
                    let seq = v["seq"].as_i64().unwrap_or_else(|| {
                        panic!("{}: subscribed without a numeric seq: {v}", self.label)
                    });
                    return Ok(Subscribed {
                        seq,
                        frame: v,
                        before,
                    });
                }
                Some("error")
                    if scope.named_by(&v)
                        || (v.get("teamId").is_none()
                            && v.get("boardId").is_none()
                            && v.get("taskId").is_none()) =>
                {
                    return Err(v);
                }
                Some("activity") => before.push(v["activity"].clone()),
                _ => {}
            }
        }
        panic!("{}: no reply to subscribe", self.label);
    }

    /// Subscribes; panics unless the server answers `subscribed`.
    pub async fn subscribe(&mut self, scope: Scope, since: Option<i64>) -> Subscribed {
        let label = self.label.clone();
        self.try_subscribe(scope, since)
            .await
            .unwrap_or_else(|e| panic!("{label}: subscribe {scope:?} since {since:?}: {e}"))
    }

    pub async fn subscribe_team(&mut self, team: Uuid, since: Option<i64>) -> i64 {
        self.subscribe(Scope::Team(team), since).await.seq
    }
    pub async fn subscribe_board(&mut self, board: Uuid, since: Option<i64>) -> i64 {
        self.subscribe(Scope::Board(board), since).await.seq
    }
    pub async fn subscribe_task(&mut self, task: Uuid, since: Option<i64>) -> i64 {
        self.subscribe(Scope::Task(task), since).await.seq
    }

    /// Unsubscribes and waits for the `unsubscribed` reply of that scope; returns it.
    pub async fn unsubscribe(&mut self, scope: Scope) -> Value {
        let mut msg = json!({"type": "unsubscribe"});
        msg[scope.key()] = json!(scope.id());
        self.send_json(msg).await;
        let (v, _) = self
            .wait_for("unsubscribed", WS_RECV_TIMEOUT, |v| {
                v["type"] == "unsubscribed" && scope.named_by(v) && v.get("reason").is_none()
            })
            .await;
        v
    }

    /// `auth` message; returns the reply frame.
    pub async fn auth(&mut self, token: &str) -> Value {
        self.send_json(json!({"type": "auth", "token": token}))
            .await;
        self.next_json().await
    }
}

fn end_reason(f: &Frame) -> String {
    match f {
        Frame::Close(_, r) => r.clone(),
        _ => String::new(),
    }
}

/// Whether a frame is an activity with a `seq` (not an ephemeral presence event).
pub fn is_logged_activity(frame: &Value) -> bool {
    frame["type"] == "activity" && frame["activity"]["seq"].is_i64()
}

/// Whether a frame is a presence activity.
pub fn is_presence(frame: &Value) -> bool {
    frame["type"] == "activity"
        && frame["activity"]["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("presence."))
}

/// The `activity` objects of logged activity frames in `frames`.
pub fn logged_activities(frames: &[Value]) -> Vec<Value> {
    frames
        .iter()
        .filter(|f| is_logged_activity(f))
        .map(|f| f["activity"].clone())
        .collect()
}

/// A small deterministic RNG (splitmix64) for seeded randomized tests.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    /// A seed from `TASKFORGE_TEST_SEED`, or from the clock.
    pub fn seed_from_env() -> u64 {
        std::env::var("TASKFORGE_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            })
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

// ---------------------------------------------------------------------------------------------
// JWT helpers (forging tokens with the server's known secret)
// ---------------------------------------------------------------------------------------------

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The claims of a JWT, unverified.
pub fn claims_of(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("JWT payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON payload")
}

/// A JWT of `claims` signed with `alg` and `secret`.
pub fn sign(alg: jsonwebtoken::Algorithm, claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign JWT")
}

// ---------------------------------------------------------------------------------------------
// Hostile clients: other source addresses, raw TCP, a shutdown watched from outside
// ---------------------------------------------------------------------------------------------

impl TestServer {
    /// The server's listening address.
    pub fn socket_addr(&self) -> std::net::SocketAddr {
        self.addr()
    }

    /// An API client whose connections come from `local` (another loopback address, e.g.
    /// 127.0.0.2), with `timeout` per request; responses are checked against the spec as usual.
    pub fn client_from(&self, local: std::net::IpAddr, timeout: Duration) -> Api {
        Api::new(
            &self.base,
            self.spec.clone().expect("spec loaded"),
            reqwest::Client::builder()
                .no_proxy()
                .local_address(local)
                .timeout(timeout)
                .build()
                .expect("reqwest client"),
        )
    }

    /// An API client with `timeout` per request (a hang fails the request instead of the test
    /// waiting for ever).
    pub fn client_with_timeout(&self, timeout: Duration) -> Api {
        Api::new(
            &self.base,
            self.spec.clone().expect("spec loaded"),
            reqwest::Client::builder()
                .no_proxy()
                .timeout(timeout)
                .build()
                .expect("reqwest client"),
        )
    }

    /// A plain TCP connection to the server (nothing sent yet).
    pub async fn tcp(&self) -> TcpStream {
        tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(self.addr()))
            .await
            .expect("TCP connect timed out")
            .expect("TCP connect")
    }

    /// Sends SIGTERM and returns at once: the server runs its shutdown while the test watches.
    /// Pair with [`TestServer::wait_exit`].
    pub fn sigterm(&self) {
        let pid = self.pid().expect("the server is running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM {pid} failed");
    }

    /// Waits up to `timeout` for the process to exit; `None` (the process is then killed) when
    /// it did not.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(s)) => Some(s),
            _ => {
                let _ = child.kill().await;
                None
            }
        }
    }
}

/// How a raw connection ended while reading from it.
#[derive(Debug)]
pub enum RawEnd {
    /// The server closed it (read returned 0), after sending these bytes.
    Closed(Vec<u8>),
    /// A read failed (a reset), after these bytes.
    Failed(Vec<u8>, std::io::ErrorKind),
    /// Still open after the wait, with these bytes received meanwhile.
    Open(Vec<u8>),
}

/// Reads from `tcp` until the server closes it, a read fails, or `timeout` passes (bounded to
/// 16 MiB).
pub async fn read_until_end(tcp: &mut TcpStream, timeout: Duration) -> RawEnd {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    while got.len() < 16 << 20 {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return RawEnd::Open(got),
            Ok(Ok(0)) => return RawEnd::Closed(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return RawEnd::Failed(got, e.kind()),
        }
    }
    RawEnd::Open(got)
}
