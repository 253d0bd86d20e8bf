//! Redis of the test's own (restartable, one server or a Redis Cluster) and clusters of server
//! processes on one PostgreSQL database and that Redis: the scaled deployment.
//!
//! With `TASKFORGE_TEST_REDIS_CLUSTER=1` every [`Cluster`] runs on a Redis Cluster of its own
//! (three primaries, three replicas, sharded pub/sub) instead of one Redis: the multi-instance
//! tests are written once and run over both.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::*;

/// Whether `redis-server` is installed; `false` (with a visible message) outside CI, a failure
/// under `CI=true`.
fn redis_server_found() -> bool {
    let found = std::process::Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but redis-server is not installed: multi-instance tests cannot run");
        }
        eprintln!("skipping: redis-server is not installed");
    }
    found
}

/// Whether the `redis-server` of `child` serves on `port` within 10 s. False at once when it
/// exits first, and when another process answers there: a port handed out by `free_port` can be
/// taken by another test before this server binds it (both then start on it, one fails), and a
/// server of another test's cluster must never join this one.
async fn listens(port: u16, child: &mut Child) -> bool {
    let Some(pid) = child.id() else {
        return false;
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait().is_ok_and(|exited| exited.is_some()) {
            return false;
        }
        let info = async {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
            let mut con = client.get_multiplexed_async_connection().await.ok()?;
            redis::cmd("INFO")
                .arg("server")
                .query_async::<String>(&mut con)
                .await
                .ok()
        };
        if let Ok(Some(info)) = tokio::time::timeout(Duration::from_secs(1), info).await {
            // Answering means it bound every port (the cluster bus's too) and serves.
            return info.contains(&format!("process_id:{pid}\r\n"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A `redis-server` started by the test on a free loopback port, so the test can restart it.
pub struct TestRedis {
    pub port: u16,
    child: Option<Child>,
}

impl TestRedis {
    /// `None` (with a visible message) when `redis-server` is not installed, except under
    /// `CI=true`, where that is a failure.
    pub async fn start() -> Option<TestRedis> {
        if !redis_server_found() {
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
        let child = self.child.insert(child);
        assert!(
            listens(self.port, child).await,
            "redis-server did not serve on {} within 10 s (or another server took the port)",
            self.port
        );
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

/// A Redis Cluster of the test's own on loopback: three primaries with a replica each, nodes
/// timing out after two seconds (so a failover takes a few seconds, and a loaded machine does not
/// fail nodes over by mistake), nothing kept on disk but the cluster's own node tables.
pub struct TestRedisCluster {
    dir: tempfile::TempDir,
    nodes: Vec<ClusterNode>,
}

struct ClusterNode {
    port: u16,
    bus_port: u16,
    child: Option<Child>,
}

impl TestRedisCluster {
    const NODES: usize = 6;

    /// `None` (with a visible message) when `redis-server` is not installed, except under
    /// `CI=true`, where that is a failure.
    pub async fn start() -> Option<TestRedisCluster> {
        if !redis_server_found() {
            return None;
        }
        let nodes = (0..Self::NODES)
            .map(|_| ClusterNode {
                port: free_port(),
                bus_port: free_port(),
                child: None,
            })
            .collect();
        let mut cluster = TestRedisCluster {
            dir: tempfile::tempdir().expect("a directory for the cluster"),
            nodes,
        };
        cluster.create().await;
        Some(cluster)
    }

    /// The node URLs, as `TASKFORGE_REDIS_CLUSTER` takes them.
    pub fn setting(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts node `i`; false when it could not listen (its ports were taken meanwhile).
    async fn spawn(&mut self, i: usize) -> bool {
        let node = &mut self.nodes[i];
        let conf = format!("nodes-{}.conf", node.port);
        let child = Command::new("redis-server")
            .args(["--port", &node.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes", "--cluster-config-file", &conf])
            .args(["--cluster-port", &node.bus_port.to_string()])
            .args(["--cluster-node-timeout", "2000"])
            .args(["--cluster-replica-validity-factor", "0"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join(format!("node-{}.log", node.port)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn redis-server");
        let child = node.child.insert(child);
        listens(node.port, child).await
    }

    /// Starts every node afresh and joins them into one cluster (`redis-cli --cluster create`).
    async fn create(&mut self) {
        for i in 0..self.nodes.len() {
            let conf = self
                .dir
                .path()
                .join(format!("nodes-{}.conf", self.nodes[i].port));
            let _ = std::fs::remove_file(conf);
            let mut attempts = 0;
            while !self.spawn(i).await {
                // Another process took a port between `free_port` and the start: new ones.
                attempts += 1;
                assert!(attempts < 5, "no free ports for a cluster node");
                if let Some(mut child) = self.nodes[i].child.take() {
                    let _ = child.kill().await;
                }
                self.nodes[i].port = free_port();
                self.nodes[i].bus_port = free_port();
            }
        }
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for n in &self.nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.wait_ok(Duration::from_secs(30)).await;
    }

    async fn command(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
        let mut con = tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| redis::RedisError::from(std::io::Error::other("connect timed out")))??;
        cmd.query_async(&mut con).await
    }

    async fn text(port: u16, cmd: &redis::Cmd) -> Option<String> {
        match Self::command(port, cmd).await.ok()? {
            redis::Value::BulkString(b) => Some(String::from_utf8_lossy(&b).into_owned()),
            redis::Value::VerbatimString { text, .. } => Some(text),
            redis::Value::SimpleString(s) => Some(s),
            _ => None,
        }
    }

    /// Waits until every running node says `cluster_state:ok` and sees three primaries.
    pub async fn wait_ok(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let mut ok = true;
            let mut states = Vec::new();
            for n in self.nodes.iter().filter(|n| n.child.is_some()) {
                let info = Self::text(n.port, &redis::cmd("CLUSTER").arg("INFO").clone()).await;
                let good = info.as_ref().is_some_and(|i| {
                    i.contains("cluster_state:ok") && i.contains("cluster_size:3")
                });
                ok &= good;
                states.push((n.port, good));
            }
            let primaries = self.primaries().await;
            let replicas = self.replicas().await;
            let running = self.nodes.iter().filter(|n| n.child.is_some()).count();
            if ok && primaries.len() == 3 && replicas == running - 3 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster was not ok within {timeout:?}: nodes ok {states:?}, \
                 primaries {primaries:?}, {replicas} replicas of {running} nodes"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The ports of the primaries that serve slots, as a running node sees them.
    pub async fn primaries(&self) -> Vec<u16> {
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            let Some(table) = Self::text(n.port, &redis::cmd("CLUSTER").arg("NODES").clone()).await
            else {
                continue;
            };
            let mut ports: Vec<u16> = table
                .lines()
                .filter_map(|line| {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    let serving = f.len() > 8;
                    let primary = f.get(2)?.split(',').any(|flag| flag == "master")
                        && !f.get(2)?.contains("fail");
                    let port = f
                        .get(1)?
                        .split('@')
                        .next()?
                        .rsplit(':')
                        .next()?
                        .parse()
                        .ok()?;
                    (serving && primary).then_some(port)
                })
                .collect();
            ports.sort_unstable();
            return ports;
        }
        Vec::new()
    }

    /// How many replicas follow a primary, as a running node sees them.
    async fn replicas(&self) -> usize {
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            let Some(table) = Self::text(n.port, &redis::cmd("CLUSTER").arg("NODES").clone()).await
            else {
                continue;
            };
            return table
                .lines()
                .filter(|line| {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    f.get(2).is_some_and(|flags| {
                        flags.split(',').any(|flag| flag == "slave") && !flags.contains("fail")
                    }) && f.get(7) == Some(&"connected")
                })
                .count();
        }
        0
    }

    /// The port of the primary that serves the slot of `key` (a key or a shard channel).
    pub async fn owner_of(&self, key: &str) -> u16 {
        let port = self.primaries().await[0];
        let slot = match Self::command(port, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).await {
            Ok(redis::Value::Int(slot)) => slot,
            other => panic!("CLUSTER KEYSLOT {key}: {other:?}"),
        };
        let table = Self::text(port, &redis::cmd("CLUSTER").arg("NODES").clone())
            .await
            .expect("CLUSTER NODES");
        for line in table.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let Some(p) = f
                .get(1)
                .and_then(|a| a.split('@').next())
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
            else {
                continue;
            };
            let serves = f.iter().skip(8).any(|range| {
                let mut ends = range.splitn(2, '-').map(|n| n.parse::<i64>());
                match (ends.next(), ends.next()) {
                    (Some(Ok(a)), Some(Ok(b))) => (a..=b).contains(&slot),
                    (Some(Ok(a)), None) => a == slot,
                    _ => false,
                }
            });
            if serves && !f[2].contains("fail") {
                return p;
            }
        }
        panic!("no primary serves the slot {slot} of {key}:\n{table}");
    }

    /// Moves the slot of `key` (with its keys) from the primary that serves it to the primary on
    /// `to`, as `redis-cli --cluster reshard` does: IMPORTING, MIGRATING, MIGRATE, then NODE on
    /// every primary.
    pub async fn move_slot_of(&self, key: &str, to: u16) {
        let from = self.owner_of(key).await;
        assert_ne!(from, to, "{key} is already on {to}");
        let slot = match Self::command(from, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).await {
            Ok(redis::Value::Int(slot)) => slot,
            other => panic!("CLUSTER KEYSLOT {key}: {other:?}"),
        };
        let id = async |port: u16| {
            Self::text(port, &redis::cmd("CLUSTER").arg("MYID").clone())
                .await
                .expect("CLUSTER MYID")
        };
        let (from_id, to_id) = (id(from).await, id(to).await);
        let ok = |what: &str, r: redis::RedisResult<redis::Value>| {
            r.unwrap_or_else(|e| panic!("{what}: {e}"));
        };
        ok(
            "IMPORTING",
            Self::command(
                to,
                redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg("IMPORTING")
                    .arg(&from_id),
            )
            .await,
        );
        ok(
            "MIGRATING",
            Self::command(
                from,
                redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg("MIGRATING")
                    .arg(&to_id),
            )
            .await,
        );
        loop {
            let keys: Vec<String> = match Self::command(
                from,
                redis::cmd("CLUSTER")
                    .arg("GETKEYSINSLOT")
                    .arg(slot)
                    .arg(100),
            )
            .await
            {
                Ok(redis::Value::Array(keys)) => keys
                    .into_iter()
                    .filter_map(|k| match k {
                        redis::Value::BulkString(b) => String::from_utf8(b).ok(),
                        _ => None,
                    })
                    .collect(),
                other => panic!("GETKEYSINSLOT: {other:?}"),
            };
            if keys.is_empty() {
                break;
            }
            ok(
                "MIGRATE",
                Self::command(
                    from,
                    redis::cmd("MIGRATE")
                        .arg("127.0.0.1")
                        .arg(to)
                        .arg("")
                        .arg(0)
                        .arg(5000)
                        .arg("KEYS")
                        .arg(&keys),
                )
                .await,
            );
        }
        // The new owner first, then the old one (which then tells its shard subscribers), then
        // the other primaries.
        let mut order = vec![to, from];
        order.extend(
            self.primaries()
                .await
                .into_iter()
                .filter(|p| *p != to && *p != from),
        );
        for port in order {
            ok(
                "SETSLOT NODE",
                Self::command(
                    port,
                    redis::cmd("CLUSTER")
                        .arg("SETSLOT")
                        .arg(slot)
                        .arg("NODE")
                        .arg(&to_id),
                )
                .await,
            );
        }
    }

    /// How many clients of the node on `port` follow the shard channel `channel`.
    pub async fn shard_subscribers(port: u16, channel: &str) -> i64 {
        let cmd = redis::cmd("PUBSUB").arg("SHARDNUMSUB").arg(channel).clone();
        match Self::command(port, &cmd).await {
            Ok(redis::Value::Array(v)) => match v.get(1) {
                Some(redis::Value::Int(n)) => *n,
                _ => 0,
            },
            _ => 0,
        }
    }

    /// A node's `INFO commandstats` count of `command` (lowercase, e.g. `spublish`).
    pub async fn calls(port: u16, command: &str) -> u64 {
        let info = Self::text(port, &redis::cmd("INFO").arg("commandstats").clone())
            .await
            .unwrap_or_default();
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Kills the node on `port` (as a crash would).
    pub async fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts the node on `port` again with its node table: it rejoins (as a replica, when its
    /// replica took over meanwhile).
    pub async fn restart(&mut self, port: u16) {
        let i = self
            .nodes
            .iter()
            .position(|n| n.port == port)
            .expect("a node");
        assert!(
            self.spawn(i).await,
            "redis-server did not start again on {port}"
        );
    }

    /// Kills every node (everything the cluster held is gone).
    pub async fn stop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut child) = n.child.take() {
                let _ = child.kill().await;
            }
        }
    }

    /// A new, empty cluster on the same ports.
    pub async fn start_again(&mut self) {
        self.create().await;
    }
}

impl Drop for TestRedisCluster {
    fn drop(&mut self) {
        // A failed test shows what the nodes said (the directory goes with the cluster).
        if std::thread::panicking() {
            for n in &self.nodes {
                let log = self.dir.path().join(format!("node-{}.log", n.port));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!(
                    "--- redis cluster node {} (last lines):\n{}",
                    n.port,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
    }
}

/// The Redis of a [`Cluster`]: one server, or a Redis Cluster with
/// `TASKFORGE_TEST_REDIS_CLUSTER=1`.
pub enum BusRedis {
    One(TestRedis),
    Sharded(TestRedisCluster),
}

impl BusRedis {
    /// `None` (skipped, with a message) without redis-server outside CI.
    pub async fn start() -> Option<BusRedis> {
        if std::env::var("TASKFORGE_TEST_REDIS_CLUSTER").is_ok_and(|v| v == "1" || v == "true") {
            TestRedisCluster::start().await.map(BusRedis::Sharded)
        } else {
            TestRedis::start().await.map(BusRedis::One)
        }
    }

    /// The server setting that points an instance at it.
    pub fn setting(&self) -> (&'static str, String) {
        match self {
            BusRedis::One(r) => ("TASKFORGE_REDIS_URL", r.url()),
            BusRedis::Sharded(c) => ("TASKFORGE_REDIS_CLUSTER", c.setting()),
        }
    }

    /// Kills it (everything it held is gone).
    pub async fn stop(&mut self) {
        match self {
            BusRedis::One(r) => r.stop().await,
            BusRedis::Sharded(c) => c.stop().await,
        }
    }

    /// Starts it again, empty.
    pub async fn start_again(&mut self) {
        match self {
            BusRedis::One(r) => r.start_again().await,
            BusRedis::Sharded(c) => c.start_again().await,
        }
    }
}

/// Server processes on one PostgreSQL database and one Redis (or Redis Cluster) of the test's
/// own: the scaled deployment.
pub struct Cluster {
    pub nodes: Vec<TestServer>,
    pub redis: BusRedis,
}

impl Cluster {
    /// `None` (skipped, with a message) without PostgreSQL or redis-server outside CI.
    pub async fn start(n: usize, overrides: &[(&str, &str)]) -> Option<Cluster> {
        if !postgres_enabled() {
            return None;
        }
        let redis = BusRedis::start().await?;
        Some(Self::start_on(redis, n, overrides).await)
    }

    /// `n` instances on `redis` (the caller checked that PostgreSQL is there).
    pub async fn start_on(redis: BusRedis, n: usize, overrides: &[(&str, &str)]) -> Cluster {
        let (name, value) = redis.setting();
        let mut env: Vec<(&str, &str)> = vec![
            (name, value.as_str()),
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
        Cluster { nodes, redis }
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
