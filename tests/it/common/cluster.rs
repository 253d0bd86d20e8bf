//! Redis of the test's own (restartable) and clusters of server processes on one PostgreSQL
//! database and that Redis: the scaled deployment.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::*;

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
        let first = TestServer::process_with(Backend::Postgres, &env).await;
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
