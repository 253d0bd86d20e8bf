//! Presence survives a Redis outage: a viewer who leaves a task while their instance cannot reach
//! Redis is announced as gone once it can again, and is no longer listed.
//!
//! Two instances on one PostgreSQL database and a Redis of the test's own; instance A reaches
//! Redis through a TCP proxy of the test that can cut it off (Redis keeps its data, as in a
//! network partition), instance B directly.
//!
//! Skipped (with a message) without PostgreSQL or `redis-server`, except under `CI=true`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const T: Duration = Duration::from_secs(30);

/// A TCP proxy to Redis that can be cut (open connections dropped, new ones closed at once) and
/// healed.
struct CutProxy {
    port: u16,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl CutProxy {
    async fn start(upstream: u16) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (c, list) = (cut.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let handle = tokio::spawn(async move {
                    let Ok(mut redis) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut redis).await;
                });
                let mut list = list.lock().unwrap();
                list.retain(|h| !h.is_finished());
                list.push(handle);
            }
        });
        CutProxy { port, cut, conns }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// Polls `/readyz` until its bus field is `bus` (bounded).
async fn wait_bus(api: &Api, bus: &str) {
    let deadline = Instant::now() + T;
    loop {
        let r = api.send("GET", "/readyz", None, None, &[]).await;
        if r.json["bus"] == bus {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: /readyz did not report bus {bus:?} within {T:?}; last answer {} {}",
            api.base,
            r.status,
            r.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn user_ids(presence: &Value) -> Vec<String> {
    let mut ids: Vec<String> = presence
        .as_array()
        .unwrap_or_else(|| panic!("presence is not an array: {presence}"))
        .iter()
        .filter_map(|e| e["userId"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow set: cargo test -- --ignored"]
async fn a_viewer_who_leaves_while_redis_is_unreachable_is_announced_gone_once_it_is_back() {
    if !postgres_enabled() {
        return;
    }
    let Some(redis) = TestRedis::start().await else {
        return;
    };
    let proxy = CutProxy::start(redis.port).await;
    let proxy_url = proxy.url();
    // A heartbeat that outlives the outage: no instance is swept (a sweep would announce the
    // leave by itself), so what announces it is instance A's own record of it.
    let a = TestServer::process_with(
        Backend::Postgres,
        &[
            ("TASKFORGE_REDIS_URL", proxy_url.as_str()),
            ("TASKFORGE_BUS_CHECK_INTERVAL", "200ms"),
            ("TASKFORGE_PRESENCE_TTL", "15s"),
            ("TASKFORGE_PRESENCE_SWEEP_INTERVAL", "500ms"),
            ("TASKFORGE_LOG", "info,taskforge::realtime::presence=debug"),
        ],
    )
    .await;
    let direct = redis.url();
    let b = a
        .start_peer(&[("TASKFORGE_REDIS_URL", direct.as_str())])
        .await;

    let api = b.client();
    let x = api.new_user("Xavier").await;
    let team = api.create_team(x.token(), "Partition").await;
    let y = api.member(x.token(), team.id, "Yvonne", "member").await;
    let z = api.member(x.token(), team.id, "Zed", "viewer").await;
    let task = api
        .task(x.token(), team.id, "viewed across a partition")
        .await;
    let room = Scope::Task(task.id);

    let mut wx = a.ws(x.token()).await.labeled("X@A");
    wx.subscribe(room, None).await;
    let mut wy = b.ws(y.token()).await.labeled("Y@B");
    let s = wy.subscribe(room, None).await;
    let known = wy.presence_settled(&s.frame, &[x.id(), y.id()]).await;
    assert_eq!(
        known,
        user_ids(&json!([{"userId": x.id()}, {"userId": y.id()}])),
        "B lists X (on A) and Y: {}",
        s.frame
    );
    // Both directions work before the outage.
    let (f, _) = wx.wait_for("presence.joined Y", T, is_presence).await;
    assert_eq!(f["activity"]["type"], "presence.joined", "{f}");
    // Whatever B queued for Y before the cut is read now: a join that B's snapshot already showed
    // may still follow it as `presence.joined` (B reads the shared presence again after joining),
    // and that frame was sent before the outage, not during it.
    wy.barrier().await;

    // A loses Redis; X leaves the task meanwhile, and A fails to record it.
    proxy.cut();
    wait_bus(&a.client(), "down").await;
    wx.unsubscribe(room).await;
    assert!(
        a.wait_for_log(|l| l.contains("presence heartbeat failed;"), T)
            .await,
        "A tried to record the leave while Redis was unreachable; A's stderr:\n{}",
        a.stderr_text()
    );

    let meanwhile = wy.barrier().await;
    assert!(
        !meanwhile.iter().any(is_presence),
        "nothing about X can reach B while A is cut off: {meanwhile:?}"
    );

    // Redis is reachable again: Y (on B) hears that X left.
    proxy.heal();
    wait_bus(&a.client(), "up").await;
    let (f, _) = wy
        .wait_for("presence.left X", T, |f| {
            is_presence(f) && f["activity"]["type"] == "presence.left"
        })
        .await;
    assert_eq!(f["activity"]["data"]["userId"], json!(x.id()), "{f}");
    assert_eq!(f["activity"]["taskId"], json!(task.id), "{f}");

    // A newcomer on B sees Y and itself, not X.
    let mut wz = b.ws(z.token()).await.labeled("Z@B");
    let s = wz.subscribe(room, None).await;
    assert_eq!(
        user_ids(&s.frame["presence"]),
        user_ids(&json!([{"userId": y.id()}, {"userId": z.id()}])),
        "after the outage: {}",
        s.frame
    );
    drop(b);
    drop(a);
}
