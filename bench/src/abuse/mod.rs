//! Scenario `abuse`: hostile clients against a live server while a normal user works.
//!
//! For each attack the tool starts a fresh `taskforge serve` (the binary given, SQLite in a temp
//! dir, a free loopback port, the server's default limits), sets up the accounts it needs,
//! starts the normal user (`normal`), waits `--warmup`, then runs the attack (`attacks`) for its
//! window while sampling the server's RSS every 100 ms. After the window: `--grace` for late
//! deliveries, a check of what the server did to the attacking sockets, and the check that
//! nothing committed was lost: every task the normal user created must be in the team's activity
//! log and must have been delivered live or be delivered by a resume from the seq the user
//! started at. Then the server is stopped and the next attack gets a new one.
//!
//! Addresses: the normal user 127.0.0.1, attackers 127.0.0.2 ..= 127.0.0.250, registrations
//! 127.0.0.251 ..= 127.0.0.254. Every attack is bounded in time (its window) and, where it sends
//! requests as fast as it can, in count; `--rss-cap-mib` ends an attack early when the server's
//! RSS passes it (the machine is shared).

mod attacks;
mod net;
mod normal;
mod server;
mod table;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use hyper::header::HeaderValue;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use attacks::Attack;
use attacks::{AttackTraffic, Ctx, Knobs};
use net::{Api, Conn, NORMAL_SOURCE, setup_source};
use normal::{Control, NormalConfig, NormalRaw, NormalReport};
use server::Server;

use crate::procfs::{self, Proc};

#[derive(clap::Args, Debug, Clone)]
pub struct AbuseArgs {
    /// The `taskforge` binary to attack; a fresh server of it is started for every attack
    #[arg(long, required_unless_present = "summarize")]
    pub server_bin: Option<PathBuf>,
    /// Attacks to run, in this order (repeat or comma-separate; default: all of them)
    #[arg(long = "attack", value_delimiter = ',')]
    pub attacks: Vec<Attack>,
    /// Seconds each attack lasts (slow-heads: --slow-heads-duration)
    #[arg(long, default_value_t = 25.0)]
    pub duration: f64,
    /// Seconds the slow-heads attack lasts (at least 45 to see which connections outlive 45 s)
    #[arg(long, default_value_t = 50.0)]
    pub slow_heads_duration: f64,
    /// Seconds the normal user works before the attack starts (its baseline)
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Seconds after the attack during which late deliveries still count
    #[arg(long, default_value_t = 3.0)]
    pub grace: f64,
    /// The normal user's GET and POST period, ms
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
    /// Seconds between the normal user's log-ins (the server allows 10 per minute per email)
    #[arg(long, default_value_t = 7.0)]
    pub login_every: f64,
    /// Timeout of every request, s (a normal request that times out counts with this time)
    #[arg(long, default_value_t = 10.0)]
    pub request_timeout: f64,
    /// stalled-replay: activities seeded into the team's log before the attack
    #[arg(long, default_value_t = 20_000)]
    pub seed_activities: u64,
    /// stalled-replay: description length of each seeded task, bytes
    #[arg(long, default_value_t = 1024)]
    pub seed_description_bytes: usize,
    /// stalled-replay: connections seeding in parallel
    #[arg(long, default_value_t = 8)]
    pub seed_writers: usize,
    /// stalled-replay: sockets that subscribe with since=0 and never read
    #[arg(long, default_value_t = 12)]
    pub stalled_sockets: usize,
    /// silent-readers: sockets that ping and never read
    #[arg(long, default_value_t = 36)]
    pub silent_sockets: usize,
    /// silent-readers: ms between the pings of each socket (the server allows 100/s)
    #[arg(long, default_value_t = 200)]
    pub silent_ping_ms: u64,
    /// silent-readers: task creations per second keeping the team busy
    #[arg(long, default_value_t = 100.0)]
    pub busy_rate: f64,
    /// silent-readers: connections sharing --busy-rate
    #[arg(long, default_value_t = 4)]
    pub busy_writers: usize,
    /// silent-readers: description length of the busy tasks, bytes (large enough that the
    /// frames outgrow the kernel's socket buffers within the attack)
    #[arg(long, default_value_t = 4096)]
    pub busy_description_bytes: usize,
    /// SO_RCVBUF of the sockets that never read, bytes
    #[arg(long, default_value_t = 4096)]
    pub recv_buffer: u32,
    /// huge-login-fields: log-ins in flight at once, each client from its own address
    #[arg(long, default_value_t = 200)]
    pub huge_concurrency: usize,
    /// huge-login-fields: log-ins sent in all, at most
    #[arg(long, default_value_t = 1000)]
    pub huge_total: u64,
    /// huge-login-fields: length of the huge email (even attempts) or password (odd ones), bytes
    #[arg(long, default_value_t = 900_000)]
    pub huge_field_bytes: usize,
    /// login-storm: log-ins in flight at once (valid, wrong password, unknown email in turn)
    #[arg(long, default_value_t = 300)]
    pub storm_concurrency: usize,
    /// login-storm: accounts registered for the valid log-ins
    #[arg(long, default_value_t = 20)]
    pub storm_accounts: usize,
    /// login-storm: log-ins sent in all, at most
    #[arg(long, default_value_t = 20_000)]
    pub storm_total: u64,
    /// slow-heads: connections sending half a request head
    #[arg(long, default_value_t = 300)]
    pub slow_heads: usize,
    /// password-guessing: wrong passwords per second for the normal user's email
    #[arg(long, default_value_t = 30.0)]
    pub guess_rate: f64,
    /// password-guessing: addresses they come from
    #[arg(long, default_value_t = 5)]
    pub guess_addrs: usize,
    /// metrics-flood and refresh-flood: clients sending as fast as they can
    #[arg(long, default_value_t = 50)]
    pub flood_clients: usize,
    /// Seconds the attacking sockets are read after the attack to see whether the server ended them
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// End an attack early when the server's RSS passes this, MiB (the machine is shared)
    #[arg(long, default_value_t = 4096)]
    pub rss_cap_mib: u64,
    /// Extra environment of the server, KEY=VALUE (repeatable). Nothing else of TASKFORGE_* is
    /// passed on: the server runs with its own defaults
    #[arg(long = "server-env", value_parser = server::parse_env_pair)]
    pub server_env: Vec<(String, String)>,
    /// Keep the temp dir (databases, server logs)
    #[arg(long)]
    pub keep_dir: bool,
    /// Free-form label copied into every report
    #[arg(long)]
    pub label: Option<String>,
    /// Print one JSON object line per attack instead of the table
    #[arg(long)]
    pub json: bool,
    /// Also append each attack's JSON line to this file
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// Run nothing: print the table of medians per attack over the JSON lines in these files
    #[arg(long, num_args = 1..)]
    pub summarize: Vec<PathBuf>,
}

impl AbuseArgs {
    fn knobs(&self) -> Knobs {
        Knobs {
            request_timeout: secs(self.request_timeout),
            stalled_sockets: self.stalled_sockets,
            silent_sockets: self.silent_sockets,
            silent_ping_every: Duration::from_millis(self.silent_ping_ms.max(10)),
            busy_rate: self.busy_rate,
            busy_writers: self.busy_writers,
            busy_description_bytes: self.busy_description_bytes,
            recv_buffer: self.recv_buffer,
            huge_concurrency: self.huge_concurrency,
            huge_total: self.huge_total,
            huge_field_bytes: self.huge_field_bytes,
            storm_concurrency: self.storm_concurrency,
            storm_total: self.storm_total,
            slow_heads: self.slow_heads,
            guess_rate: self.guess_rate,
            guess_addrs: self.guess_addrs,
            flood_clients: self.flood_clients,
            drain: secs(self.drain),
        }
    }

    fn window(&self, attack: Attack) -> Duration {
        match attack {
            Attack::SlowHeads => secs(self.slow_heads_duration),
            _ => secs(self.duration),
        }
    }

    fn attacks(&self) -> Vec<Attack> {
        if self.attacks.is_empty() {
            Attack::ALL.to_vec()
        } else {
            self.attacks.clone()
        }
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// The tasks seeded for stalled-replay.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SeedReport {
    pub activities: u64,
    /// Their descriptions, MB (10^6 bytes); the log holds a little more per activity
    pub description_mb: f64,
    pub secs: f64,
}

/// Whether everything the normal user committed survived.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CommittedCheck {
    /// Tasks the normal user created (2xx), warm-up included
    pub created: u64,
    /// Of those, in `GET /teams/{id}/activity` after the attack
    pub in_log: u64,
    /// Delivered live on the user's socket
    pub live: u64,
    /// Not delivered live but replayed by a resume from the user's first seq
    pub resumed: u64,
    /// Missing from the log, or neither delivered live nor replayed
    pub lost: u64,
    /// The check could not be made (e.g. the server died)
    pub error: Option<String>,
}

/// The result of one attack (the `--json` line).
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct AbuseReport {
    pub scenario: String,
    pub attack: Attack,
    pub label: Option<String>,
    pub server_bin: String,
    /// When the attack started, seconds since the Unix epoch
    pub started_unix: u64,
    /// How long the attack ran, s
    pub attack_secs: f64,
    /// Why the attack ended before its window did, if it did
    pub aborted: Option<String>,
    pub normal: NormalReport,
    /// Server RSS just before the attack, its peak from the start of the attack to the end of
    /// the checks after it (100 ms samples), the growth, and RSS once the attacking sockets were
    /// closed, KiB
    pub rss_before_kib: Option<u64>,
    pub rss_peak_kib: Option<u64>,
    pub rss_growth_kib: Option<i64>,
    pub rss_after_kib: Option<u64>,
    /// Server CPU seconds during the attack window
    pub server_cpu_secs: Option<f64>,
    pub traffic: AttackTraffic,
    pub committed: CommittedCheck,
    /// The server still ran after the attack
    pub server_survived: bool,
    pub server_exit: Option<String>,
    /// WARN and ERROR lines in the server's log, and the first ones
    pub server_warnings: u64,
    pub server_first_warnings: Vec<String>,
    pub seed: Option<SeedReport>,
    /// Starting the server and the setup (and the seed), s
    pub setup_secs: f64,
}

impl AbuseReport {
    /// Something committed was lost, or the check could not be made.
    pub fn lost_data(&self) -> bool {
        self.committed.lost > 0 || self.committed.error.is_some()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn unique() -> String {
    format!(
        "{}-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
        std::process::id()
    )
}

/// A registered account.
#[derive(Clone)]
struct Account {
    email: String,
    password: String,
    token: String,
    bearer: HeaderValue,
}

async fn register(conn: &mut Conn, api: &Api, email: &str, timeout: Duration) -> Result<Account> {
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let body = json!({ "email": email, "password": password, "displayName": "Abuse" }).to_string();
    let v = net::call_json(conn, api.post("/api/v1/auth/register", None, body), timeout).await?;
    let token = v["accessToken"]
        .as_str()
        .ok_or_else(|| anyhow!("register answered no accessToken"))?
        .to_owned();
    Ok(Account {
        email: email.to_owned(),
        password,
        bearer: HeaderValue::from_str(&format!("Bearer {token}"))?,
        token,
    })
}

/// Creates `n` tasks with `bytes`-long descriptions in the team over `writers` connections.
async fn seed(
    api: &Api,
    bearer: &HeaderValue,
    team: &str,
    n: u64,
    bytes: usize,
    writers: usize,
    timeout: Duration,
) -> Result<SeedReport> {
    let start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let path = format!("/api/v1/teams/{team}/tasks");
    let description = "s".repeat(bytes);
    let handles: Vec<_> = (0..writers.max(1))
        .map(|_| {
            let (api, bearer, next, path, description) = (
                api.clone(),
                bearer.clone(),
                next.clone(),
                path.clone(),
                description.clone(),
            );
            tokio::spawn(async move {
                let mut conn = Conn::new(api.server, NORMAL_SOURCE.into());
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok::<_, anyhow::Error>(());
                    }
                    let body = json!({ "title": format!("seed-{i}"), "description": description })
                        .to_string();
                    net::call_json(&mut conn, api.post(&path, Some(&bearer), body), timeout)
                        .await
                        .with_context(|| format!("seeding task {i}"))?;
                }
            })
        })
        .collect();
    for h in handles {
        h.await.context("a seeding task panicked")??;
    }
    Ok(SeedReport {
        activities: n,
        description_mb: (n as f64 * bytes as f64) / 1e6,
        secs: start.elapsed().as_secs_f64(),
    })
}

/// Samples the server's RSS every 100 ms on its own thread; past the cap (or when the process is
/// gone) it sets `abort` with the reason.
struct Sampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<u64>>,
}

impl Sampler {
    fn start(
        pid: u32,
        cap_kib: u64,
        abort: Arc<AtomicBool>,
        why: Arc<Mutex<Option<String>>>,
    ) -> std::io::Result<Sampler> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("rss-sampler".into())
            .spawn(move || {
                let mut samples = Vec::new();
                while !flag.load(Ordering::Relaxed) {
                    match procfs::rss_kib(Proc::Pid(pid)) {
                        Ok((rss, _)) => {
                            samples.push(rss);
                            if rss > cap_kib && !abort.swap(true, Ordering::Relaxed) {
                                *why.lock().unwrap_or_else(PoisonError::into_inner) =
                                    Some(format!("server RSS above {} MiB", cap_kib / 1024));
                            }
                        }
                        Err(_) => {
                            if !abort.swap(true, Ordering::Relaxed) {
                                *why.lock().unwrap_or_else(PoisonError::into_inner) =
                                    Some("the server process is gone".into());
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                samples
            })?;
        Ok(Sampler { stop, handle })
    }

    fn finish(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

/// Ends the normal user's thread on every path out of an attack (errors included).
struct StopOnDrop(Arc<Control>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop_requests.store(true, Ordering::Relaxed);
        self.0.stop.store(true, Ordering::Relaxed);
    }
}

/// Task ids of the `task.created` activities after `since`, from the team's log over HTTP.
async fn logged_task_ids(
    conn: &mut Conn,
    api: &Api,
    bearer: &HeaderValue,
    team: &str,
    since: u64,
    timeout: Duration,
) -> Result<HashSet<String>> {
    let mut ids = HashSet::new();
    let mut cursor: Option<String> = None;
    // Bounded: 5,000 pages of 200.
    for _ in 0..5_000 {
        let mut path = format!("/api/v1/teams/{team}/activity?since={since}&limit=200");
        if let Some(c) = &cursor {
            path.push_str("&cursor=");
            path.push_str(c);
        }
        let v = net::call_json(conn, api.get(&path, Some(bearer)), timeout).await?;
        for a in v["items"].as_array().map(Vec::as_slice).unwrap_or_default() {
            if a["type"].as_str() == Some("task.created")
                && let Some(id) = a["taskId"].as_str()
            {
                ids.insert(id.to_owned());
            }
        }
        match v["nextCursor"].as_str() {
            // Cursors are base64url; anything else would not make a valid request path.
            Some(c)
                if c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                cursor = Some(c.to_owned());
            }
            Some(c) => bail!("the activity log answered a cursor that is not base64url: {c:?}"),
            None => return Ok(ids),
        }
    }
    bail!("the activity log did not end within 5,000 pages")
}

/// The `i` of the normal user's tasks a resume from `since` replays.
async fn resumed_indexes(
    api: &Api,
    token: &str,
    team: &str,
    since: u64,
    timeout: Duration,
) -> Result<HashSet<u64>> {
    let mut ws = net::ws_connect(api, NORMAL_SOURCE.into(), token, None, timeout).await?;
    net::send_subscribe(&mut ws, team, Some(since)).await?;
    let mut seen = HashSet::new();
    net::await_subscribed(&mut ws, Duration::from_secs(30), |a| {
        if let Some(i) = normal::normal_index(a) {
            seen.insert(i);
        }
    })
    .await?;
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        futures_util::SinkExt::close(&mut ws),
    )
    .await;
    Ok(seen)
}

async fn committed_check(
    api: &Api,
    user: &Account,
    team: &str,
    raw: &NormalRaw,
    timeout: Duration,
) -> CommittedCheck {
    let created: Vec<(u64, &str)> = raw
        .posts
        .iter()
        .filter_map(|p| p.task_id.as_deref().map(|id| (p.i, id)))
        .collect();
    let mut check = CommittedCheck {
        created: created.len() as u64,
        ..CommittedCheck::default()
    };
    let Some(since) = raw.first_seq else {
        check.error = Some("the normal user's socket never subscribed".into());
        return check;
    };
    let mut conn = Conn::new(api.server, NORMAL_SOURCE.into());
    let logged = match logged_task_ids(&mut conn, api, &user.bearer, team, since, timeout).await {
        Ok(ids) => ids,
        Err(e) => {
            check.error = Some(format!("reading the activity log: {e:#}"));
            return check;
        }
    };
    let not_live: Vec<u64> = created
        .iter()
        .filter(|(i, _)| !raw.arrivals.contains_key(i))
        .map(|(i, _)| *i)
        .collect();
    let resumed = if not_live.is_empty() {
        HashSet::new()
    } else {
        match resumed_indexes(api, &user.token, team, since, timeout).await {
            Ok(r) => r,
            Err(e) => {
                check.error = Some(format!("resuming from seq {since}: {e:#}"));
                HashSet::new()
            }
        }
    };
    for (i, id) in &created {
        let in_log = logged.contains(*id);
        let live = raw.arrivals.contains_key(i);
        let replayed = !live && resumed.contains(i);
        check.in_log += u64::from(in_log);
        check.live += u64::from(live);
        check.resumed += u64::from(replayed);
        if !in_log || !(live || replayed) {
            check.lost += 1;
        }
    }
    check
}

fn log(msg: impl AsRef<str>) {
    eprintln!("[abuse] {}", msg.as_ref());
}

/// One attack against a fresh server.
async fn run_attack(
    attack: Attack,
    args: &AbuseArgs,
    bin: &Path,
    dir: &Path,
) -> Result<AbuseReport> {
    let name = attack.name();
    let timeout = secs(args.request_timeout);
    let setup_start = Instant::now();
    let mut server = Server::start(bin, dir, name, &args.server_env).await?;
    log(format!(
        "{name}: server pid {} at {}",
        server.pid, server.addr
    ));
    let api = Api::new(server.addr)?;
    let tag = unique();

    // Accounts: the normal user from its own address, the rest from the setup addresses.
    let mut own = Conn::new(api.server, NORMAL_SOURCE.into());
    let user = register(
        &mut own,
        &api,
        &format!("normal-{tag}@example.com"),
        timeout,
    )
    .await?;
    let team = net::call_json(
        &mut own,
        api.post(
            "/api/v1/teams",
            Some(&user.bearer),
            json!({ "name": format!("abuse {name}") }).to_string(),
        ),
        timeout,
    )
    .await?;
    let team_id = team["id"]
        .as_str()
        .ok_or_else(|| anyhow!("the team has no id: {team}"))?
        .to_owned();
    let mut setup_conns: Vec<Conn> = (0..4)
        .map(|k| Conn::new(api.server, setup_source(k)))
        .collect();
    let attacker = if matches!(attack, Attack::StalledReplay | Attack::SilentReaders) {
        let a = register(
            &mut setup_conns[0],
            &api,
            &format!("attacker-{tag}@example.com"),
            timeout,
        )
        .await?;
        net::call_json(
            &mut own,
            api.post(
                &format!("/api/v1/teams/{team_id}/members"),
                Some(&user.bearer),
                json!({ "email": a.email, "role": "member" }).to_string(),
            ),
            timeout,
        )
        .await?;
        Some(a)
    } else {
        None
    };
    let mut accounts = Vec::new();
    if attack == Attack::LoginStorm {
        for k in 0..args.storm_accounts {
            let conn = &mut setup_conns[k % 4];
            let a = register(conn, &api, &format!("storm-{k}-{tag}@example.com"), timeout).await?;
            accounts.push((a.email, a.password));
        }
    }
    let seed = if attack == Attack::StalledReplay {
        log(format!(
            "{name}: seeding {} tasks with {} B descriptions",
            args.seed_activities, args.seed_description_bytes
        ));
        let s = seed(
            &api,
            &user.bearer,
            &team_id,
            args.seed_activities,
            args.seed_description_bytes,
            args.seed_writers,
            timeout,
        )
        .await?;
        log(format!("{name}: seeded in {:.1} s", s.secs));
        Some(s)
    } else {
        None
    };
    drop(setup_conns);
    drop(own);
    let setup_secs = setup_start.elapsed().as_secs_f64();

    // The normal user.
    let ctrl = Arc::new(Control::default());
    let _stop = StopOnDrop(ctrl.clone());
    let normal = normal::spawn(
        NormalConfig {
            api: api.clone(),
            team_id: team_id.clone(),
            bearer: user.bearer.clone(),
            token: user.token.clone(),
            email: user.email.clone(),
            password: user.password.clone(),
            interval: Duration::from_millis(args.interval_ms.max(1)),
            login_every: secs(args.login_every),
            request_timeout: timeout,
        },
        ctrl.clone(),
    )?;
    let ready_by = Instant::now() + Duration::from_secs(15);
    while !ctrl.subscribed.load(Ordering::Relaxed) {
        ensure!(
            Instant::now() < ready_by,
            "the normal user's socket did not subscribe within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(secs(args.warmup)).await;

    // The attack.
    let pid = server.pid;
    let rss_before_kib = procfs::rss_kib(Proc::Pid(pid)).ok().map(|r| r.0);
    let abort = Arc::new(AtomicBool::new(false));
    let abort_why = Arc::new(Mutex::new(None));
    let sampler = Sampler::start(
        pid,
        args.rss_cap_mib.saturating_mul(1024),
        abort.clone(),
        abort_why.clone(),
    )?;
    let cpu0 = procfs::cpu_seconds(Proc::Pid(pid)).ok();
    let started_unix = unix_now();
    let attack_start = Instant::now();
    let window = args.window(attack);
    log(format!(
        "{name}: attacking for {:.0} s",
        window.as_secs_f64()
    ));
    let ctx = Arc::new(Ctx {
        api: api.clone(),
        knobs: args.knobs(),
        team_id: team_id.clone(),
        normal_email: user.email.clone(),
        attacker_token: attacker.as_ref().map(|a| a.token.clone()),
        attacker_bearer: attacker.as_ref().map(|a| a.bearer.clone()),
        accounts,
        until: attack_start + window,
        abort: abort.clone(),
    });
    let grace = secs(args.grace);
    let ender = {
        let (ctx, ctrl) = (ctx.clone(), ctrl.clone());
        tokio::spawn(async move {
            ctx.wait_over().await;
            ctrl.stop_requests.store(true, Ordering::Relaxed);
            let end = Instant::now();
            // The user stops reading at the end of the grace even while the attack's own
            // checks (the drain) still run.
            tokio::spawn(async move {
                tokio::time::sleep_until((end + grace).into()).await;
                ctrl.stop.store(true, Ordering::Relaxed);
            });
            end
        })
    };
    let traffic = attacks::run(attack, ctx).await;
    let attack_end = ender.await.unwrap_or_else(|_| Instant::now());
    let server_cpu_secs = cpu0
        .zip(procfs::cpu_seconds(Proc::Pid(pid)).ok())
        .map(|(a, b)| b - a);
    let grace_end = attack_end + grace;
    tokio::time::sleep_until(grace_end.into()).await;
    ctrl.stop.store(true, Ordering::Relaxed);
    let raw = tokio::task::spawn_blocking(move || normal.join())
        .await
        .context("joining the normal user")?
        .map_err(|_| anyhow!("the normal user's thread panicked"))??;
    // Let the server notice the closed sockets before the RSS after.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after_kib = procfs::rss_kib(Proc::Pid(pid)).ok().map(|r| r.0);
    let samples = sampler.finish();
    let rss_peak_kib = samples.iter().copied().max();
    let normal_report = normal::summarize(&raw, attack_start, attack_end, grace_end);
    let committed = committed_check(&api, &user, &team_id, &raw, timeout).await;
    let server_survived = server.alive();
    server.stop().await;
    let (server_warnings, server_first_warnings) = server.warnings();
    let aborted = abort_why
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    Ok(AbuseReport {
        scenario: "abuse".into(),
        attack,
        label: args.label.clone(),
        server_bin: bin.display().to_string(),
        started_unix,
        attack_secs: attack_end
            .saturating_duration_since(attack_start)
            .as_secs_f64(),
        aborted,
        normal: normal_report,
        rss_before_kib,
        rss_peak_kib,
        rss_growth_kib: rss_before_kib
            .zip(rss_peak_kib)
            .map(|(b, p)| p as i64 - b as i64),
        rss_after_kib,
        server_cpu_secs,
        traffic,
        committed,
        server_survived,
        server_exit: server.exit().map(str::to_owned),
        server_warnings,
        server_first_warnings,
        seed,
        setup_secs,
    })
}

fn append_line(path: &Path, line: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(f, "{line}").with_context(|| format!("writing {}", path.display()))
}

/// Reads `abuse --json` lines (other lines are skipped).
pub fn read_reports(paths: &[PathBuf]) -> Result<Vec<AbuseReport>> {
    let mut out = Vec::new();
    for p in paths {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        for line in text.lines().filter(|l| l.trim_start().starts_with('{')) {
            let v: Value = serde_json::from_str(line)
                .with_context(|| format!("a line of {} is not JSON", p.display()))?;
            if v["scenario"].as_str() == Some("abuse") {
                out.push(serde_json::from_value(v).with_context(|| {
                    format!("a line of {} is not an abuse report", p.display())
                })?);
            }
        }
    }
    Ok(out)
}

/// What a run did.
#[derive(Default)]
pub struct Outcome {
    pub reports: Vec<AbuseReport>,
    /// Attacks that could not run (setup failed); each was reported on stderr
    pub not_run: usize,
}

/// Runs the attacks (or, with `--summarize`, prints the medians of earlier runs). An attack that
/// cannot run is reported on stderr and the next one runs.
pub async fn run(args: &AbuseArgs) -> Result<Outcome> {
    if !args.summarize.is_empty() {
        let reports = read_reports(&args.summarize)?;
        ensure!(!reports.is_empty(), "no abuse report in those files");
        print!("{}", table::render(&table::median_rows(&reports)));
        return Ok(Outcome::default());
    }
    let bin = args
        .server_bin
        .clone()
        .ok_or_else(|| anyhow!("--server-bin is required"))?;
    ensure!(bin.is_file(), "no server binary at {}", bin.display());
    let dir = std::env::temp_dir().join(format!("taskforge-abuse-{}", unique()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut reports = Vec::new();
    let mut not_run = 0;
    for attack in args.attacks() {
        match run_attack(attack, args, &bin, &dir).await {
            Ok(r) => {
                let line = serde_json::to_string(&r).context("serializing the report")?;
                if args.json {
                    println!("{line}");
                }
                if let Some(p) = &args.json_out {
                    append_line(p, &line)?;
                }
                log(format!("{}: {}", attack.name(), table::one_line(&r)));
                reports.push(r);
            }
            Err(e) => {
                not_run += 1;
                log(format!("{}: could not run: {e:#}", attack.name()));
            }
        }
    }
    if !args.json {
        print!(
            "{}",
            table::render(&reports.iter().map(table::row).collect::<Vec<_>>())
        );
    }
    if args.keep_dir {
        log(format!("kept {}", dir.display()));
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(Outcome { reports, not_run })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: AbuseArgs,
    }

    #[test]
    fn parses_attacks_and_env() {
        let cli = Cli::try_parse_from([
            "abuse",
            "--server-bin",
            "/bin/true",
            "--attack",
            "slow-heads,login-storm",
            "--attack",
            "metrics-flood",
            "--server-env",
            "TASKFORGE_LOG=warn",
        ])
        .expect("parses");
        assert_eq!(
            cli.args.attacks(),
            vec![Attack::SlowHeads, Attack::LoginStorm, Attack::MetricsFlood]
        );
        assert_eq!(
            cli.args.server_env,
            vec![("TASKFORGE_LOG".to_owned(), "warn".to_owned())]
        );
        assert_eq!(cli.args.window(Attack::SlowHeads), Duration::from_secs(50));
        assert_eq!(cli.args.window(Attack::LoginStorm), Duration::from_secs(25));
        let all = Cli::try_parse_from(["abuse", "--server-bin", "x"]).expect("parses");
        assert_eq!(all.args.attacks(), Attack::ALL.to_vec());
        assert!(Cli::try_parse_from(["abuse"]).is_err());
        assert!(Cli::try_parse_from(["abuse", "--summarize", "a.jsonl"]).is_ok());
        assert!(Cli::try_parse_from(["abuse", "--server-bin", "x", "--attack", "nope"]).is_err());
    }

    #[test]
    fn reads_back_its_json_lines() {
        let dir = std::env::temp_dir().join(format!("abuse-test-{}", unique()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("a.jsonl");
        let r = table::tests::report(Attack::LoginStorm, 12.0, 100 * 1024, 3);
        let line = serde_json::to_string(&r).expect("json");
        std::fs::write(
            &path,
            format!("{line}\nnot json at all\n{{\"scenario\":\"other\"}}\n"),
        )
        .expect("write");
        let back = read_reports(std::slice::from_ref(&path)).expect("reads");
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].attack, Attack::LoginStorm);
        assert_eq!(back[0].normal, r.normal);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
