//! The server under test, on a throwaway database (a fresh SQLite file or PostgreSQL database).
//!
//! Most tests run it **inside the test process** ([`TestServer::start`]): `App::build` on a
//! listener bound to a random port, served on the test's runtime until the `TestServer` is
//! dropped or restarted. A test runs it as a **child process** ([`TestServer::process`]) only
//! where a process must die or be watched from outside: SIGKILL (crash), SIGTERM (drain), exit
//! codes, its output, fault injection that exits, and `/metrics` (the recorder is one per
//! process, so in-process servers would share their counters).

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{CommandFactory, FromArgMatches, Parser};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::*;

/// What the process prints once it is ready: `taskforge listening on http://127.0.0.1:PORT`.
pub const READY_PREFIX: &str = "taskforge listening on ";

/// Where the server runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    InProcess,
    Process,
}

/// The database a server (and its peers) use; dropped with the last of them.
struct TestDatabase {
    url: String,
    /// What the servers are given: `url` itself, or with `TASKFORGE_TEST_PGBOUNCER_URL` set the
    /// same database through that PgBouncer (transaction mode), with `url` to migrate over.
    served: Vec<(String, String)>,
    _dir: Option<tempfile::TempDir>,
    /// PostgreSQL: the admin URL and the database's name, dropped at the end.
    pg: Option<(String, String)>,
}

impl TestDatabase {
    async fn create(backend: Backend) -> TestDatabase {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("sqlite://{}/taskforge.db", dir.path().display());
                TestDatabase {
                    served: vec![("TASKFORGE_DATABASE_URL".into(), url.clone())],
                    url,
                    _dir: Some(dir),
                    pg: None,
                }
            }
            Backend::Postgres => {
                let admin = std::env::var("TASKFORGE_TEST_DATABASE_URL")
                    .expect("TASKFORGE_TEST_DATABASE_URL must be set for PostgreSQL tests");
                let name = format!("tf_{}", Uuid::new_v4().simple());
                create_pg_database(&admin, &name).await;
                let url = pg_url_with_db(&admin, &name);
                let served = match std::env::var("TASKFORGE_TEST_PGBOUNCER_URL") {
                    Ok(pooler) if !pooler.is_empty() => vec![
                        (
                            "TASKFORGE_DATABASE_URL".into(),
                            pg_url_with_db(&pooler, &name),
                        ),
                        ("TASKFORGE_DATABASE_POOLER".into(), "transaction".into()),
                        ("TASKFORGE_MIGRATION_DATABASE_URL".into(), url.clone()),
                    ],
                    _ => vec![("TASKFORGE_DATABASE_URL".into(), url.clone())],
                };
                TestDatabase {
                    served,
                    url,
                    _dir: None,
                    pg: Some((admin, name)),
                }
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((admin, name)) = self.pg.take() else {
            return;
        };
        // Best effort, on a thread of its own so that no runtime is blocked on; FORCE ends the
        // connections an in-process server's pool may still hold.
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

/// The running server: a task of the test's runtime, or a child process.
enum Running {
    InProcess {
        stop: CancellationToken,
        served: tokio::task::JoinHandle<()>,
    },
    Process(Child),
}

pub struct TestServer {
    pub backend: Backend,
    pub mode: Mode,
    pub base: String,
    pub db_url: String,
    pub jwt_secret: String,
    /// The settings, as the `TASKFORGE_*` variables a process reads.
    env: Vec<(String, String)>,
    running: Option<Running>,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
    pub(super) spec: Option<Arc<Spec>>,
    pub(super) frames: Option<Arc<FrameSchema>>,
    /// The HTTP client of this server's SSE streams and their POSTs, built once: building one
    /// (its TLS roots) costs more CPU than a whole stream, and a resume test opens hundreds. Per
    /// server, not per process: a client's pooled connections belong to the runtime (the test)
    /// that made them.
    pub(super) sse_http: std::sync::OnceLock<reqwest::Client>,
    db: Arc<TestDatabase>,
}

impl TestServer {
    /// A server in the test process on a fresh database.
    pub async fn start(backend: Backend) -> TestServer {
        Self::launch(backend, Mode::InProcess, &[]).await
    }

    /// A server in the test process with settings overridden (`TASKFORGE_*` names).
    pub async fn start_with(backend: Backend, overrides: &[(&str, &str)]) -> TestServer {
        Self::launch(backend, Mode::InProcess, overrides).await
    }

    /// A server as a child process: for tests that kill it, signal it, read its output or its
    /// process-wide metrics.
    pub async fn process(backend: Backend) -> TestServer {
        Self::launch(backend, Mode::Process, &[]).await
    }

    pub async fn process_with(backend: Backend, overrides: &[(&str, &str)]) -> TestServer {
        Self::launch(backend, Mode::Process, overrides).await
    }

    async fn launch(backend: Backend, mode: Mode, overrides: &[(&str, &str)]) -> TestServer {
        let jwt_secret = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
        let db = Arc::new(TestDatabase::create(backend).await);
        let mut env: Vec<(String, String)> = vec![
            ("TASKFORGE_LISTEN".into(), "127.0.0.1:0".into()),
            ("TASKFORGE_JWT_SECRET".into(), jwt_secret.clone()),
            ("TASKFORGE_LOG".into(), "info".into()),
            // Tests register users and open sockets by the hundred from one address: the
            // per-address and per-email limits are off unless a test (limits.rs) sets them.
            ("TASKFORGE_AUTH_LIMIT_PER_IP".into(), "0".into()),
            ("TASKFORGE_AUTH_LIMIT_PER_EMAIL".into(), "0".into()),
            ("TASKFORGE_CONNECT_LIMIT_PER_IP".into(), "0".into()),
            // Tests run side by side (and clusters of three) on one PostgreSQL server.
            ("TASKFORGE_DATABASE_POOL_SIZE".into(), "10".into()),
        ];
        env.extend(db.served.iter().cloned());
        override_env(&mut env, overrides);
        let mut srv = TestServer {
            backend,
            mode,
            base: String::new(),
            db_url: db.url.clone(),
            jwt_secret,
            env,
            running: None,
            stderr: Arc::default(),
            stdout: Arc::default(),
            spec: None,
            frames: None,
            sse_http: std::sync::OnceLock::new(),
            db,
        };
        srv.boot().await;
        srv
    }

    /// Another server on the same database with the same JWT secret (a peer in a cluster), run
    /// the same way as this one.
    pub async fn start_peer(&self, overrides: &[(&str, &str)]) -> TestServer {
        let mut env = self.env.clone();
        override_env(&mut env, overrides);
        let mut srv = TestServer {
            backend: self.backend,
            mode: self.mode,
            base: String::new(),
            db_url: self.db_url.clone(),
            jwt_secret: self.jwt_secret.clone(),
            env,
            running: None,
            stderr: Arc::default(),
            stdout: Arc::default(),
            spec: self.spec.clone(),
            frames: self.frames.clone(),
            sse_http: std::sync::OnceLock::new(),
            db: self.db.clone(),
        };
        srv.boot().await;
        srv
    }

    async fn boot(&mut self) {
        match self.mode {
            Mode::InProcess => self.boot_in_process().await,
            Mode::Process => self.boot_process().await,
        }
        if self.spec.is_none() {
            self.spec = Some(Arc::new(Spec::fetch(&self.base).await));
        }
        if self.frames.is_none() {
            self.frames = Some(Arc::new(FrameSchema::fetch(&self.base).await));
        }
    }

    async fn boot_in_process(&mut self) {
        echo_logs_if_asked();
        let config = config_from_env(&self.env);
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .expect("bind the server's listener");
        let addr = listener.local_addr().expect("listener address");
        let app = tokio::time::timeout(Duration::from_secs(30), taskforge::app::App::build(config))
            .await
            .expect("the server did not start within 30 s")
            .unwrap_or_else(|e| panic!("the server did not start: {e}"));
        let stop = CancellationToken::new();
        let served = tokio::spawn({
            let stop = stop.clone();
            async move {
                if let Err(e) = app.run(listener, stop.cancelled_owned()).await {
                    panic!("the in-process server failed: {e}");
                }
            }
        });
        self.base = format!("http://{addr}");
        self.running = Some(Running::InProcess { stop, served });
    }

    async fn boot_process(&mut self) {
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
        self.running = Some(Running::Process(child));
    }

    fn child(&mut self) -> Option<&mut Child> {
        match self.running.as_mut()? {
            Running::Process(child) => Some(child),
            Running::InProcess { .. } => {
                panic!("this needs a server process: start it with TestServer::process")
            }
        }
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        match self.running.as_ref()? {
            Running::Process(child) => child.id(),
            Running::InProcess { .. } => {
                panic!("this needs a server process: start it with TestServer::process")
            }
        }
    }

    /// Kills the server process (SIGKILL: no shutdown runs, as in a crash); the database is kept.
    pub async fn stop(&mut self) {
        if let Some(child) = self.child() {
            let _ = child.kill().await;
        }
        self.running = None;
    }

    /// Stops the server and starts it again on the same database (new random port): a crash
    /// and a start for a process, a graceful shutdown and a start in the test process.
    pub async fn restart(&mut self) {
        match self.running.take() {
            Some(Running::Process(mut child)) => {
                let _ = child.kill().await;
            }
            Some(Running::InProcess { stop, served }) => {
                stop.cancel();
                tokio::time::timeout(Duration::from_secs(30), served)
                    .await
                    .expect("the in-process server did not stop within 30 s")
                    .expect("the in-process server task failed");
            }
            None => {}
        }
        self.boot().await;
    }

    /// Sets (or with `None` removes) a setting for the next (re)start.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.env.push((key.to_owned(), v.to_owned()));
        }
    }

    /// The server's listening address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.base
            .trim_start_matches("http://")
            .parse()
            .expect("base is http://ip:port")
    }

    fn http_client(&self, builder: reqwest::ClientBuilder) -> Api {
        Api::new(
            &self.base,
            self.spec.clone().expect("spec loaded"),
            builder.no_proxy().build().expect("reqwest client"),
        )
    }

    pub fn client(&self) -> Api {
        self.http_client(
            reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(64),
        )
    }

    /// An API client whose connections come from `local` (another loopback address, e.g.
    /// 127.0.0.2), with `timeout` per request; responses are checked against the spec as usual.
    pub fn client_from(&self, local: std::net::IpAddr, timeout: Duration) -> Api {
        self.http_client(
            reqwest::Client::builder()
                .local_address(local)
                .timeout(timeout),
        )
    }

    /// An API client with `timeout` per request (a hang fails the request instead of the test
    /// waiting for ever).
    pub fn client_with_timeout(&self, timeout: Duration) -> Api {
        self.http_client(reqwest::Client::builder().timeout(timeout))
    }

    pub fn spec(&self) -> &serde_json::Value {
        &self.spec.as_ref().expect("spec loaded").doc
    }

    fn output(&self, lines: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
        assert_eq!(
            self.mode,
            Mode::Process,
            "a server's output is read from a process: start it with TestServer::process"
        );
        lines.lock().unwrap().clone()
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.output(&self.stderr)
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.output(&self.stdout)
    }

    /// Polls the captured stderr until `pred` matches a line (bounded by `timeout`).
    pub async fn wait_for_log(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stderr_lines().iter().any(|l| pred(l)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
        self.child()?;
        let Some(Running::Process(mut child)) = self.running.take() else {
            return None;
        };
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(s)) => Some(s),
            _ => {
                let _ = child.kill().await;
                None
            }
        }
    }

    /// Sends SIGTERM to the server and waits (bounded) for it to exit.
    pub async fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        self.child()?;
        self.sigterm();
        self.wait_exit(Duration::from_secs(20)).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        match self.running.take() {
            Some(Running::Process(mut child)) => {
                let _ = child.start_kill();
            }
            // The runtime ends with the test and takes the server's tasks with it.
            Some(Running::InProcess { stop, .. }) => stop.cancel(),
            None => {}
        }
    }
}

fn override_env(env: &mut Vec<(String, String)>, overrides: &[(&str, &str)]) {
    for (k, v) in overrides {
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_string(), v.to_string()));
    }
}

/// `taskforge serve`'s arguments, to build the one `Config` the binary would from the same
/// settings.
#[derive(Parser)]
struct ServeArgs {
    #[command(flatten)]
    config: taskforge::config::Config,
}

/// The `Config` a process would read from `env`, and from nothing else: the test process's
/// own `TASKFORGE_*` variables are not consulted. A name that is not a setting fails the test.
fn config_from_env(env: &[(String, String)]) -> taskforge::config::Config {
    let command = ServeArgs::command();
    let mut args = vec!["taskforge".to_string()];
    for (key, value) in env {
        let arg = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == key.as_str()))
            .unwrap_or_else(|| panic!("{key} is not a server setting"));
        let long = arg.get_long().expect("settings have a long flag");
        args.push(format!("--{long}={value}"));
    }
    let command = command.mut_args(|a| a.env(None::<&str>));
    let matches = command
        .try_get_matches_from(&args)
        .unwrap_or_else(|e| panic!("settings {env:?}: {e}"));
    ServeArgs::from_arg_matches(&matches)
        .unwrap_or_else(|e| panic!("settings {env:?}: {e}"))
        .config
}

/// With `TASKFORGE_TEST_ECHO` set, in-process servers log to stderr (once per test process).
fn echo_logs_if_asked() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if std::env::var("TASKFORGE_TEST_ECHO").is_ok() {
        ONCE.call_once(|| {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
                .with_writer(std::io::stderr)
                .try_init();
        });
    }
}
