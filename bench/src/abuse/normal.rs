//! The normal user: what an ordinary client sees while an attack runs.
//!
//! It runs on its own thread and runtime, so that the attackers' tasks never delay its requests
//! or its reads (what it measures is the server). From 127.0.0.1, every `interval`: a GET of the
//! team's tasks and a POST creating a task titled `normal-<i>` (each on its own keep-alive
//! connection); every `login_every`: a log-in with its own email and password. Its WebSocket is
//! subscribed to the team; a `task.created` of `normal-<i>` arriving is timed from the send of
//! POST `i`. A socket the server ends is reopened with `since` (what a client does), and counted.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use hyper::header::HeaderValue;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::Message;

use super::net::{self, Api, Conn, Failure, NORMAL_SOURCE};

pub struct NormalConfig {
    pub api: Api,
    pub team_id: String,
    pub bearer: HeaderValue,
    pub token: String,
    pub email: String,
    pub password: String,
    pub interval: Duration,
    pub login_every: Duration,
    pub request_timeout: Duration,
}

/// What the orchestrator tells the normal user, and what it tells back.
#[derive(Default)]
pub struct Control {
    /// Set by the user once its socket is subscribed.
    pub subscribed: AtomicBool,
    /// No more requests (the attack is over).
    pub stop_requests: AtomicBool,
    /// Stop reading the socket too (the grace for late deliveries is over).
    pub stop: AtomicBool,
}

/// One request: when it was sent, how long it took (to the end of the response, or to the
/// failure), and its status or failure.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub ms: f64,
    pub outcome: Result<u16, Failure>,
}

/// One task creation.
#[derive(Debug, Clone)]
pub struct Post {
    pub i: u64,
    pub sample: Sample,
    pub task_id: Option<String>,
}

/// Everything the normal user saw.
#[derive(Debug, Default)]
pub struct NormalRaw {
    pub gets: Vec<Sample>,
    pub posts: Vec<Post>,
    pub logins: Vec<Sample>,
    /// `i` of `normal-<i>` to the arrival of its `task.created`
    pub arrivals: HashMap<u64, Instant>,
    /// `subscribed.seq` of the first subscribe: the team's seq before the user's first task
    pub first_seq: Option<u64>,
    /// Socket ends and failed (re)connects, with when they happened
    pub ws_events: Vec<(Instant, String)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts the normal user on its own thread.
pub fn spawn(
    cfg: NormalConfig,
    ctrl: Arc<Control>,
) -> std::io::Result<std::thread::JoinHandle<Result<NormalRaw>>> {
    std::thread::Builder::new()
        .name("normal-user".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("the normal user's runtime")?;
            Ok(rt.block_on(run(Arc::new(cfg), ctrl)))
        })
}

async fn run(cfg: Arc<NormalConfig>, ctrl: Arc<Control>) -> NormalRaw {
    let raw = Arc::new(Mutex::new(NormalRaw::default()));
    let tasks = [
        tokio::spawn(get_loop(cfg.clone(), ctrl.clone(), raw.clone())),
        tokio::spawn(post_loop(cfg.clone(), ctrl.clone(), raw.clone())),
        tokio::spawn(login_loop(cfg.clone(), ctrl.clone(), raw.clone())),
        tokio::spawn(ws_loop(cfg.clone(), ctrl.clone(), raw.clone())),
    ];
    for t in tasks {
        let _ = t.await;
    }
    std::mem::take(&mut *lock(&raw))
}

/// Waits until the socket is subscribed, so that every task the user creates comes after the
/// seq its first subscribe reports (the committed check reads the log from there).
async fn await_socket(ctrl: &Control) {
    while !ctrl.subscribed.load(Ordering::Relaxed) && !ctrl.stop_requests.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn ticker(every: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(every);
    // A slow answer delays the next request; it does not cause a burst of catch-up requests.
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    t
}

async fn get_loop(cfg: Arc<NormalConfig>, ctrl: Arc<Control>, raw: Arc<Mutex<NormalRaw>>) {
    await_socket(&ctrl).await;
    let mut conn = Conn::new(cfg.api.server, NORMAL_SOURCE.into());
    let path = format!("/api/v1/teams/{}/tasks?limit=20", cfg.team_id);
    let mut tick = ticker(cfg.interval);
    while !ctrl.stop_requests.load(Ordering::Relaxed) {
        tick.tick().await;
        let req = cfg.api.get(&path, Some(&cfg.bearer));
        let at = Instant::now();
        let outcome = conn
            .exchange(req, cfg.request_timeout, false)
            .await
            .map(|r| r.status);
        let ms = at.elapsed().as_secs_f64() * 1000.0;
        lock(&raw).gets.push(Sample { at, ms, outcome });
    }
}

async fn post_loop(cfg: Arc<NormalConfig>, ctrl: Arc<Control>, raw: Arc<Mutex<NormalRaw>>) {
    await_socket(&ctrl).await;
    let mut conn = Conn::new(cfg.api.server, NORMAL_SOURCE.into());
    let path = format!("/api/v1/teams/{}/tasks", cfg.team_id);
    let mut tick = ticker(cfg.interval);
    let mut i = 0u64;
    while !ctrl.stop_requests.load(Ordering::Relaxed) {
        tick.tick().await;
        let body = json!({ "title": format!("normal-{i}") }).to_string();
        let req = cfg.api.post(&path, Some(&cfg.bearer), body);
        let at = Instant::now();
        let reply = conn.exchange(req, cfg.request_timeout, true).await;
        let ms = at.elapsed().as_secs_f64() * 1000.0;
        let task_id = reply
            .as_ref()
            .ok()
            .filter(|r| (200..300).contains(&r.status))
            .and_then(|r| serde_json::from_slice::<Value>(&r.body).ok())
            .and_then(|v| v["id"].as_str().map(str::to_owned));
        let outcome = reply.map(|r| r.status);
        lock(&raw).posts.push(Post {
            i,
            sample: Sample { at, ms, outcome },
            task_id,
        });
        i += 1;
    }
}

async fn login_loop(cfg: Arc<NormalConfig>, ctrl: Arc<Control>, raw: Arc<Mutex<NormalRaw>>) {
    await_socket(&ctrl).await;
    let mut conn = Conn::new(cfg.api.server, NORMAL_SOURCE.into());
    let body = json!({ "email": cfg.email, "password": cfg.password }).to_string();
    let mut tick = ticker(cfg.login_every);
    while !ctrl.stop_requests.load(Ordering::Relaxed) {
        // Woken often, so that the end of the attack is seen within 100 ms.
        tokio::select! {
            _ = tick.tick() => {}
            () = tokio::time::sleep(Duration::from_millis(100)) => continue,
        }
        let req = cfg
            .api
            .post("/api/v1/auth/login", None, body.clone().into_bytes());
        let at = Instant::now();
        let outcome = conn
            .exchange(req, cfg.request_timeout, false)
            .await
            .map(|r| r.status);
        let ms = at.elapsed().as_secs_f64() * 1000.0;
        lock(&raw).logins.push(Sample { at, ms, outcome });
    }
}

/// `i` of an activity that is the `task.created` of `normal-<i>`.
pub fn normal_index(activity: &Value) -> Option<u64> {
    if activity["type"].as_str() != Some("task.created") {
        return None;
    }
    activity["data"]["task"]["title"]
        .as_str()?
        .strip_prefix("normal-")?
        .parse()
        .ok()
}

async fn ws_loop(cfg: Arc<NormalConfig>, ctrl: Arc<Control>, raw: Arc<Mutex<NormalRaw>>) {
    let mut last_seq: Option<u64> = None;
    let see = |a: &Value, last_seq: &mut Option<u64>| {
        if let Some(s) = a["seq"].as_u64() {
            *last_seq = Some(last_seq.map_or(s, |l| l.max(s)));
        }
        if let Some(i) = normal_index(a) {
            lock(&raw).arrivals.entry(i).or_insert_with(Instant::now);
        }
    };
    let event = |what: String| lock(&raw).ws_events.push((Instant::now(), what));
    while !ctrl.stop.load(Ordering::Relaxed) {
        let mut ws = match net::ws_connect(
            &cfg.api,
            NORMAL_SOURCE.into(),
            &cfg.token,
            None,
            cfg.request_timeout,
        )
        .await
        {
            Ok(ws) => ws,
            Err(e) => {
                event(format!("connect: {}", e.root_cause()));
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        let subscribed = async {
            net::send_subscribe(&mut ws, &cfg.team_id, last_seq).await?;
            let mut seen = last_seq;
            let seq =
                net::await_subscribed(&mut ws, cfg.request_timeout, |a| see(a, &mut seen)).await?;
            Ok::<_, anyhow::Error>((seq, seen))
        }
        .await;
        match subscribed {
            Ok((seq, seen)) => {
                let mut r = lock(&raw);
                r.first_seq.get_or_insert(seq);
                last_seq = Some(seen.map_or(seq, |s| s.max(seq)));
            }
            Err(e) => {
                event(format!("subscribe: {}", e.root_cause()));
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        }
        ctrl.subscribed.store(true, Ordering::Relaxed);
        let why = loop {
            // Checked on every frame too: deliveries after the grace must not count as live.
            if ctrl.stop.load(Ordering::Relaxed) {
                break None;
            }
            let msg = tokio::select! {
                m = ws.next() => m,
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    if ctrl.stop.load(Ordering::Relaxed) {
                        break None;
                    }
                    continue;
                }
            };
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                    if v["type"].as_str() == Some("activity") {
                        see(&v["activity"], &mut last_seq);
                    }
                }
                Some(Ok(Message::Close(f))) => break Some(net::close_reason(f.as_ref())),
                Some(Ok(_)) => {}
                Some(Err(e)) => break Some(format!("error: {e}")),
                None => break Some("eof".to_owned()),
            }
        };
        match why {
            Some(why) => {
                event(why);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            None => {
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
            }
        }
    }
}

/// One kind of request during the attack.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OpReport {
    pub count: u64,
    /// 2xx answers
    pub ok: u64,
    /// Slowest request (failures included, counted to the failure), ms
    pub max_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Answers by status
    pub statuses: BTreeMap<String, u64>,
    /// Requests without an answer: connect, send, body, timeout
    pub errors: BTreeMap<String, u64>,
}

/// The `q` quantile (nearest rank) of sorted values.
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn op_report<'a>(samples: impl Iterator<Item = &'a Sample>) -> OpReport {
    let mut r = OpReport::default();
    let mut ms = Vec::new();
    for s in samples {
        r.count += 1;
        ms.push(s.ms);
        match s.outcome {
            Ok(status) => {
                if (200..300).contains(&status) {
                    r.ok += 1;
                }
                *r.statuses.entry(status.to_string()).or_default() += 1;
            }
            Err(e) => *r.errors.entry(e.to_owned()).or_default() += 1,
        }
    }
    ms.sort_by(f64::total_cmp);
    r.max_ms = ms.last().copied();
    r.p50_ms = quantile(&ms, 0.5);
    r.p99_ms = quantile(&ms, 0.99);
    r
}

/// Live deliveries of the tasks created during the attack.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryReport {
    /// Tasks created (2xx) during the attack
    pub expected: u64,
    pub delivered: u64,
    /// From the POST's send to the `task.created` frame, ms
    pub max_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Never arrived within the attack and the grace after it
    pub lost: u64,
}

/// What the normal user saw during the attack.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NormalReport {
    pub get: OpReport,
    pub post: OpReport,
    pub login: OpReport,
    /// The slowest of the three, ms, and which it was
    pub worst_ms: Option<f64>,
    pub worst_op: Option<String>,
    /// Requests without a 2xx answer during the attack
    pub failed: u64,
    /// The slowest request before the attack (the warm-up), ms: what "normal" is on this machine
    pub baseline_worst_ms: Option<f64>,
    pub delivery: DeliveryReport,
    /// The user's own log-ins refused with 429 during the attack
    pub login_refused: u64,
    /// Ends of the user's socket by the server during the attack and the grace, by reason
    pub ws_cuts: BTreeMap<String, u64>,
}

/// The figures of requests sent in `[from, to)`; deliveries of those tasks count until `until`
/// (the end of the grace).
pub fn summarize(raw: &NormalRaw, from: Instant, to: Instant, until: Instant) -> NormalReport {
    let during = |s: &&Sample| s.at >= from && s.at < to;
    let get = op_report(raw.gets.iter().filter(during));
    let post = op_report(raw.posts.iter().map(|p| &p.sample).filter(during));
    let login = op_report(raw.logins.iter().filter(during));
    let (worst_ms, worst_op) = [("GET", &get), ("POST", &post), ("login", &login)]
        .iter()
        .filter_map(|(name, r)| r.max_ms.map(|m| (m, *name)))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map_or((None, None), |(m, n)| (Some(m), Some(n.to_owned())));
    let failed = [&get, &post, &login].iter().map(|r| r.count - r.ok).sum();
    let baseline_worst_ms = raw
        .gets
        .iter()
        .chain(raw.posts.iter().map(|p| &p.sample))
        .chain(raw.logins.iter())
        .filter(|s| s.at < from)
        .map(|s| s.ms)
        .max_by(f64::total_cmp);
    let mut delivery = DeliveryReport::default();
    let mut times = Vec::new();
    for p in raw.posts.iter().filter(|p| during(&&p.sample)) {
        if !matches!(p.sample.outcome, Ok(s) if (200..300).contains(&s)) {
            continue;
        }
        delivery.expected += 1;
        match raw.arrivals.get(&p.i).filter(|&&a| a <= until) {
            Some(&a) => {
                delivery.delivered += 1;
                times.push(a.saturating_duration_since(p.sample.at).as_secs_f64() * 1000.0);
            }
            None => delivery.lost += 1,
        }
    }
    times.sort_by(f64::total_cmp);
    delivery.max_ms = times.last().copied();
    delivery.p50_ms = quantile(&times, 0.5);
    delivery.p99_ms = quantile(&times, 0.99);
    let mut ws_cuts = BTreeMap::new();
    for (at, why) in &raw.ws_events {
        if *at >= from && *at <= until {
            *ws_cuts.entry(why.clone()).or_default() += 1;
        }
    }
    NormalReport {
        login_refused: login.statuses.get("429").copied().unwrap_or(0),
        get,
        post,
        login,
        worst_ms,
        worst_op,
        failed,
        baseline_worst_ms,
        delivery,
        ws_cuts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(base: Instant, at_ms: u64, ms: f64, outcome: Result<u16, Failure>) -> Sample {
        Sample {
            at: base + Duration::from_millis(at_ms),
            ms,
            outcome,
        }
    }

    #[test]
    fn finds_the_normal_tasks() {
        let a: Value = serde_json::from_str(
            r#"{"type":"task.created","seq":9,"data":{"task":{"id":"x","title":"normal-41"}}}"#,
        )
        .expect("json");
        assert_eq!(normal_index(&a), Some(41));
        let other: Value =
            serde_json::from_str(r#"{"type":"task.created","data":{"task":{"title":"seed-1"}}}"#)
                .expect("json");
        assert_eq!(normal_index(&other), None);
        let updated: Value =
            serde_json::from_str(r#"{"type":"task.updated","data":{"task":{"title":"normal-1"}}}"#)
                .expect("json");
        assert_eq!(normal_index(&updated), None);
    }

    #[test]
    fn quantiles() {
        assert_eq!(quantile(&[], 0.5), None);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&[7.0], 0.99), Some(7.0));
    }

    #[test]
    fn only_the_attack_window_counts() {
        let base = Instant::now();
        let from = base + Duration::from_secs(2);
        let to = base + Duration::from_secs(10);
        let until = base + Duration::from_secs(12);
        let mut raw = NormalRaw {
            gets: vec![
                sample(base, 0, 900.0, Ok(200)), // warm-up: baseline only
                sample(base, 3000, 5.0, Ok(200)),
                sample(base, 4000, 40.0, Err("timeout")),
            ],
            logins: vec![
                sample(base, 2500, 80.0, Ok(200)),
                sample(base, 9000, 3.0, Ok(429)),
            ],
            ..NormalRaw::default()
        };
        let post = |i: u64, at: u64, status: u16| Post {
            i,
            sample: sample(base, at, 10.0 + i as f64, Ok(status)),
            task_id: Some(format!("t{i}")),
        };
        raw.posts = vec![
            post(0, 1000, 201),   // warm-up
            post(1, 2100, 201),   // delivered after 150 ms
            post(2, 5000, 201),   // delivered after the grace: lost
            post(3, 6000, 500),   // not created: not expected
            post(4, 9900, 201),   // never delivered: lost
            post(5, 10_500, 201), // after the attack: not counted
        ];
        raw.arrivals.insert(1, base + Duration::from_millis(2250));
        raw.arrivals.insert(2, base + Duration::from_secs(13));
        raw.ws_events
            .push((base + Duration::from_secs(11), "close 4008".into()));
        raw.ws_events
            .push((base + Duration::from_secs(1), "eof".into()));
        let r = summarize(&raw, from, to, until);
        assert_eq!(r.get.count, 2);
        assert_eq!(r.get.ok, 1);
        assert_eq!(r.get.errors.get("timeout"), Some(&1));
        assert_eq!(r.get.max_ms, Some(40.0));
        assert_eq!(r.post.count, 4);
        assert_eq!(r.post.statuses.get("500"), Some(&1));
        assert_eq!(r.login.count, 2);
        assert_eq!(r.login_refused, 1);
        assert_eq!(r.worst_ms, Some(80.0));
        assert_eq!(r.worst_op.as_deref(), Some("login"));
        assert_eq!(r.failed, 1 + 1 + 1);
        assert_eq!(r.baseline_worst_ms, Some(900.0));
        assert_eq!(r.delivery.expected, 3);
        assert_eq!(r.delivery.delivered, 1);
        assert_eq!(r.delivery.lost, 2);
        let d = r.delivery.max_ms.expect("a delivery");
        assert!((d - 150.0).abs() < 1e-6, "{d}");
        assert_eq!(r.ws_cuts.len(), 1);
        assert_eq!(r.ws_cuts.get("close 4008"), Some(&1));
    }
}
