//! The Redis bus of the scaled deployment: pub/sub on `team:{id}` and `user:{id}` channels, and
//! presence shared between instances. It runs on one Redis (or one primary), or on a Redis
//! Cluster with sharded pub/sub.
//!
//! - Publishing goes through one script per team and step that keeps the team's published seq in
//!   Redis: whichever instance's relay gets there first publishes an activity, exactly once and
//!   in seq order; the others skip it. A batch that does not continue the published seq publishes
//!   nothing and the relay first publishes the gap from the log.
//! - Subscriptions are counted and applied in order by one task, so a quick unwatch/watch of the
//!   same channel cannot end unsubscribed. `watch` returns once Redis confirmed the SUBSCRIBE.
//! - Received messages go through a queue bounded in messages and in bytes (activities can be
//!   large). Nothing here blocks the Redis connection: when the queue is full a message is dropped
//!   and a `Resync` follows, and the hub repairs from the log, as it does after a reconnect.
//! - Connecting never blocks the start: until Redis answers, the bus is down, publishing fails
//!   (the relay's retries publish later) and the hub's periodic check delivers from the log.
//!
//! On a cluster every key of a team carries the hash tag `{team:<id>}`, which hashes like the
//! team's channel name `team:<id>`: the publish and presence scripts run on the node that owns
//! the team's channel and publish on it with `SPUBLISH`, and instances `SSUBSCRIBE` there (the
//! cluster client routes each channel to its node and moves it after a failover or resharding).
//! A user's channel lives in another slot, so an activity for a user's own sockets is published
//! there after the script, for the entries the script published. The key layout is the same on
//! one Redis; only `PUBLISH`/`SUBSCRIBE` differ.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, RedisFuture, Script, Value};
use tokio::sync::{Notify, OnceCell, mpsc, oneshot};
use uuid::Uuid;

use super::wire::{self, Viewer};
use super::{Bus, BusError, BusEvent, Published, SharedPresence, TeamPublish, Topic};
use crate::domain::activity::LogEntry;
use crate::domain::presence::{PresenceView, most_active};
use crate::domain::{TaskId, TeamId, UserId};
use crate::supervisor::Supervisor;

/// Where the bus's Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One Redis (or one primary): `redis://host:port`.
    Single(String),
    /// A Redis Cluster, found from these nodes (any of them; the rest is discovered).
    Cluster(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub target: RedisTarget,
    /// How often the connection is checked (and re-established).
    pub check_every: Duration,
    /// How long an instance's presence outlives its last heartbeat.
    pub presence_ttl: Duration,
    /// Received messages waiting for the hub.
    pub queue: usize,
    /// Their payload bytes (a single message larger than this is let through alone).
    pub queue_bytes: usize,
}

const KEYS: &str = "taskforge:";

/// The key layout. A team's keys carry the hash tag `{team:<id>}`, which hashes like the team's
/// channel `team:<id>`, so that on a cluster the team's scripts run on the node of its channel.
mod key {
    use super::KEYS;
    use crate::domain::{TaskId, TeamId};

    /// The team's published seq.
    pub fn published(team: TeamId) -> String {
        format!("{KEYS}{{team:{team}}}:published")
    }

    /// Who views `task`: `{instance}|{user}` -> viewer.
    pub fn presence(team: TeamId, task: TaskId) -> String {
        format!("{}{task}", presence_prefix(team))
    }

    pub fn presence_prefix(team: TeamId) -> String {
        format!("{KEYS}{{team:{team}}}:presence:")
    }

    /// The tasks of `team` that `instance` has viewers of.
    pub fn instance_tasks(team: TeamId, instance: &str) -> String {
        format!("{KEYS}{{team:{team}}}:instance:{instance}")
    }

    /// The teams `instance` ever had viewers in (what a sweep of it visits).
    pub fn instance_teams(instance: &str) -> String {
        format!("{KEYS}instance:{instance}:teams")
    }

    /// The instance's heartbeat.
    pub fn alive(instance: &str) -> String {
        format!("{KEYS}alive:{instance}")
    }

    /// Every instance that has (or had, until swept) presence records.
    pub fn instances() -> String {
        format!("{KEYS}instances")
    }
}
/// A team's published seq is kept this long after its last publish (then the store's watermark
/// is the floor again).
const PUBLISHED_KEY_TTL_SECS: u64 = 7 * 24 * 3600;
/// Channels per SUBSCRIBE when resubscribing everything (one Redis).
const RESUBSCRIBE_CHUNK: usize = 500;
/// SSUBSCRIBEs in flight when resubscribing everything (a cluster: one channel per command,
/// since the channels of one command must share a slot).
const RESUBSCRIBE_CONCURRENCY: usize = 64;

/// The scripts publish with `PUB`: `PUBLISH` on one Redis, `SPUBLISH` on a cluster.
fn script(pub_command: &str, body: &[&str]) -> Script {
    Script::new(&script_source(pub_command, body))
}

fn script_source(pub_command: &str, body: &[&str]) -> String {
    format!("local PUB = '{pub_command}'\n{}", body.concat())
}

/// KEYS: the team's published seq. ARGV: the caller's published seq (a floor: it is known to be
/// published), the team channel, the key's TTL, then (seq, user channel or '', message) triples.
/// Returns the published seq afterwards and how many of the triples this call published.
const PUBLISH_LUA: &str = r"
local p = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[1])
if floor > p then p = floor end
local i, sent = 4, 0
while i <= #ARGV do
  local seq = tonumber(ARGV[i])
  if seq > p + 1 then break end
  if seq == p + 1 then
    redis.call(PUB, ARGV[2], ARGV[i + 2])
    if ARGV[i + 1] ~= '' then redis.call(PUB, ARGV[i + 1], ARGV[i + 2]) end
    p = seq
    sent = sent + 1
  end
  i = i + 3
end
redis.call('SET', KEYS[1], p, 'EX', ARGV[3])
return { p, sent }
";

/// Shared by the presence scripts: what a user is shown doing in a task's presence hash, by
/// the rule of `domain::presence::most_active` (keep them together): of the user's records (one
/// per instance), the most active state, the latest `at` on a tie (then the greatest field name,
/// so that the answer never depends on the hash's order). Fields starting with `skip` are left
/// out. Returns the record, or nil when the user has none. `shape` is the part others are shown.
const SHOWN_LUA: &str = r"
local RANK = { viewing = 0, editing = 1, typing = 2 }
local function shown(key, user, skip)
  local tail = '|' .. user
  local best, best_rank, best_at, best_field
  local flat = redis.call('HGETALL', key)
  for i = 1, #flat, 2 do
    local f = flat[i]
    if string.sub(f, -#tail) == tail and (skip == nil or string.sub(f, 1, #skip) ~= skip) then
      local ok, r = pcall(cjson.decode, flat[i + 1])
      local rank, at = 0, 0
      if ok and type(r) == 'table' then
        rank = RANK[r.state] or 0
        at = tonumber(r.at) or 0
      end
      if best == nil or rank > best_rank or (rank == best_rank and (at > best_at or (at == best_at and f > best_field))) then
        best, best_rank, best_at, best_field = flat[i + 1], rank, at, f
      end
    end
  end
  return best
end
local function shape(v)
  local ok, r = pcall(cjson.decode, v)
  if not ok or type(r) ~= 'table' or r.state == nil or r.state == 'viewing' then return 'viewing' end
  return r.state .. '|' .. tostring(r.field)
end
";

/// Writes the instance's records of a task and publishes what changed for others: `P+` for a
/// user present nowhere else before (and `P~` after it when they already do more than view),
/// `P-` for one present nowhere anymore, `P~` with the winning record when what a user is shown
/// doing across instances changed. Nothing is published without `announce`.
/// KEYS: presence hash, the instance's task index of the team (both in the team's slot).
/// ARGV: instance, team channel, announce ('1'/'0'), the task, then (user, viewer) pairs.
const SYNC_LUA: &str = r"
local prefix = ARGV[1] .. '|'
local announce = ARGV[3] == '1'
local want, have = {}, {}
for i = 5, #ARGV, 2 do want[ARGV[i]] = ARGV[i + 1] end
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do
  if string.sub(flat[i], 1, #prefix) == prefix then have[string.sub(flat[i], #prefix + 1)] = flat[i + 1] end
end
local function put(user, v, old)
  local before = nil
  if announce then before = shown(KEYS[1], user) end
  if v == nil then redis.call('HDEL', KEYS[1], prefix .. user) else redis.call('HSET', KEYS[1], prefix .. user, v) end
  if not announce then return end
  local after = shown(KEYS[1], user)
  if after == nil then
    redis.call(PUB, ARGV[2], 'P-' .. old)
  elseif before == nil then
    redis.call(PUB, ARGV[2], 'P+' .. after)
    if shape(after) ~= 'viewing' then redis.call(PUB, ARGV[2], 'P~' .. after) end
  elseif shape(after) ~= shape(before) then
    redis.call(PUB, ARGV[2], 'P~' .. after)
  end
end
for user, v in pairs(have) do
  if not want[user] then put(user, nil, v) end
end
for user, v in pairs(want) do
  if have[user] ~= v then put(user, v, v) end
end
if next(want) then redis.call('SADD', KEYS[2], ARGV[4]) else redis.call('SREM', KEYS[2], ARGV[4]) end
return 0
";

/// Removes a dead (or retiring) instance's viewers of one team, publishing `presence.left` for
/// users that are present nowhere else, and `presence.updated` for the others whose shown state
/// changes. Atomic, so of several sweepers only one finds anything to remove.
/// KEYS: the instance's task index of the team. ARGV: instance, the team's presence key prefix,
/// the team channel.
const SWEEP_LUA: &str = r"
local prefix = ARGV[1] .. '|'
local removed = 0
for _, task in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[2] .. task
  local flat = redis.call('HGETALL', key)
  local gone = {}
  for i = 1, #flat, 2 do
    if string.sub(flat[i], 1, #prefix) == prefix then gone[string.sub(flat[i], #prefix + 1)] = flat[i + 1] end
  end
  for user, v in pairs(gone) do
    local before = shown(key, user)
    redis.call('HDEL', key, prefix .. user)
    removed = removed + 1
    local after = shown(key, user)
    if after == nil then
      redis.call(PUB, ARGV[3], 'P-' .. v)
    elseif shape(after) ~= shape(before) then
      redis.call(PUB, ARGV[3], 'P~' .. after)
    end
  end
end
redis.call('DEL', KEYS[1])
return removed
";

/// Runs a script call, once more when Redis lost the script between loading and running it (a
/// restart or a `SCRIPT FLUSH` at that moment: redis-rs loads it once, then gives up).
async fn invoke<T: redis::FromRedisValue>(
    call: &redis::ScriptInvocation<'_>,
    con: &mut impl redis::aio::ConnectionLike,
) -> redis::RedisResult<T> {
    match call.invoke_async(con).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            call.invoke_async(con).await
        }
        other => other,
    }
}

fn unreachable(e: impl std::fmt::Display) -> BusError {
    BusError::Unreachable(e.to_string())
}

/// What both connections share with the push handler and the background tasks.
struct Link {
    up: AtomicBool,
    /// A received message was dropped (queue full): a `Resync` is owed.
    lost: AtomicBool,
    /// A cluster node's connection dropped, or a moved channel could not be handed to the
    /// subscription task: every channel is subscribed again (and a `Resync` follows) at the next
    /// check, without taking the bus down.
    resubscribe: AtomicBool,
    /// Whether this is a cluster (a dropped connection is one node's, not the bus's).
    sharded: bool,
    /// Which primary serves which slots, as the last check saw them (a cluster).
    slots: Mutex<Vec<SlotRange>>,
    inbox: Inbox,
    /// To the subscription task: a cluster node dropped a channel (its slot moved).
    subs: mpsc::Sender<SubCommand>,
}

/// Received events on their way to the hub, bounded in count and in payload bytes. `forward`
/// moves them into the hub's channel, which holds one: an event's bytes are released once the
/// hub has taken the event before it, so at most the budget plus that one event wait.
struct Inbox {
    queued: Mutex<Queued>,
    /// Wakes `forward` (one stored permit: a push between its check and its wait is not missed).
    ready: Notify,
    max_events: usize,
    max_bytes: usize,
}

#[derive(Default)]
struct Queued {
    events: VecDeque<(BusEvent, usize)>,
    bytes: usize,
    /// A `Resync` is among `events` (one is enough; it is outside the bounds so it always fits).
    resync: bool,
}

impl Inbox {
    fn new(max_events: usize, max_bytes: usize) -> Self {
        Self {
            queued: Mutex::new(Queued::default()),
            ready: Notify::new(),
            max_events,
            max_bytes,
        }
    }

    /// Queues a received event of `bytes`; false (not queued) when it would break a bound.
    fn push(&self, event: BusEvent, bytes: usize) -> bool {
        let mut q = self.queued.lock();
        let over = q.bytes > 0 && q.bytes.saturating_add(bytes) > self.max_bytes;
        if over || q.events.len() >= self.max_events {
            return false;
        }
        q.bytes += bytes;
        q.events.push_back((event, bytes));
        drop(q);
        self.ready.notify_one();
        true
    }

    /// Queues a `Resync` behind what is queued, unless one is waiting already.
    fn push_resync(&self) {
        let mut q = self.queued.lock();
        if q.resync {
            return;
        }
        q.resync = true;
        q.events.push_back((BusEvent::Resync, 0));
        drop(q);
        self.ready.notify_one();
    }

    fn pop(&self) -> Option<BusEvent> {
        let mut q = self.queued.lock();
        let (event, bytes) = q.events.pop_front()?;
        q.bytes -= bytes;
        if matches!(event, BusEvent::Resync) {
            q.resync = false;
        }
        Some(event)
    }
}

/// Moves received events to the hub in order, one at a time; ends when the hub is gone.
async fn forward(link: Arc<Link>, hub: mpsc::Sender<BusEvent>) {
    // Room first: an event leaves the byte count only when the hub's channel can take it.
    while let Ok(permit) = hub.reserve().await {
        let event = loop {
            if let Some(e) = link.inbox.pop() {
                break e;
            }
            link.inbox.ready.notified().await;
        };
        permit.send(event);
    }
}

/// A connection to one Redis or to a cluster; commands are routed by key on a cluster.
#[derive(Clone)]
enum Con {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Con {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, Value> {
        match self {
            Con::Single(c) => c.req_packed_command(cmd),
            Con::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Con::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Con::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Con::Single(c) => c.get_db(),
            Con::Cluster(c) => c.get_db(),
        }
    }
}

impl Con {
    /// `SUBSCRIBE`, or `SSUBSCRIBE` on a cluster (routed to the node of the channel's slot).
    async fn subscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Con::Single(c) => c.subscribe(channel).await,
            Con::Cluster(c) => c.ssubscribe(channel).await,
        }
    }

    async fn unsubscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Con::Single(c) => c.unsubscribe(channel).await,
            Con::Cluster(c) => c.sunsubscribe(channel).await,
        }
    }

    /// Subscribes every channel; stops at the first failure.
    async fn subscribe_all(&self, channels: &[String]) -> redis::RedisResult<()> {
        match self {
            Con::Single(c) => {
                let mut c = c.clone();
                for chunk in channels.chunks(RESUBSCRIBE_CHUNK) {
                    c.subscribe(chunk).await?;
                }
                Ok(())
            }
            // The channels of one SSUBSCRIBE must share a slot: one command each, many in flight.
            Con::Cluster(c) => {
                let c = c.clone();
                futures_util::stream::iter(channels.to_vec())
                    .map(move |channel| {
                        let mut c = c.clone();
                        async move { c.ssubscribe(channel).await }
                    })
                    .buffer_unordered(RESUBSCRIBE_CONCURRENCY)
                    .try_collect::<()>()
                    .await
            }
        }
    }
}

struct Conns {
    /// Publishing, scripts, presence.
    commands: Con,
    /// Subscriptions only: its pushes carry the messages.
    subscriber: Con,
}

enum SubCommand {
    Watch(String, oneshot::Sender<Result<(), BusError>>),
    Unwatch(String),
    /// The connection came back: subscribe every wanted channel again, then resync.
    Resubscribe,
    /// A cluster node dropped this channel (its slot moved to another node): subscribe it again
    /// if it is still wanted, then resync (messages may have been missed meanwhile).
    Rewatch(String),
}

pub struct RedisBus {
    settings: RedisSettings,
    link: Arc<Link>,
    conns: Arc<OnceCell<Conns>>,
    rx: Mutex<Option<mpsc::Receiver<BusEvent>>>,
    subs: mpsc::Sender<SubCommand>,
    publish: Script,
    /// The publish script's text (`EVAL` where it is not loaded).
    publish_source: String,
    presence: Arc<RedisPresence>,
}

impl RedisBus {
    /// Starts connecting in the background and returns at once.
    pub fn start(settings: RedisSettings, tasks: &Supervisor) -> Result<Arc<Self>, BusError> {
        let client = Client::of(&settings.target)?;
        // The bounds are the inbox's; this channel only hands the hub its next event.
        let (tx, rx) = mpsc::channel(1);
        let (subs, sub_rx) = mpsc::channel(1024);
        let link = Arc::new(Link {
            up: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            resubscribe: AtomicBool::new(false),
            sharded: client.is_cluster(),
            slots: Mutex::new(Vec::new()),
            inbox: Inbox::new(settings.queue.max(16), settings.queue_bytes.max(1)),
            subs: subs.clone(),
        });
        tasks.spawn("redis inbox", forward(link.clone(), tx));
        let conns = Arc::new(OnceCell::new());
        let instance = Uuid::now_v7().to_string();
        let pub_command = client.pub_command();
        tracing::info!(%instance, sharded = client.is_cluster(), "redis bus starting");
        let presence = Arc::new(RedisPresence {
            instance,
            ttl: settings.presence_ttl,
            conns: conns.clone(),
            sync: script(pub_command, &[SHOWN_LUA, SYNC_LUA]),
            sweep: script(pub_command, &[SHOWN_LUA, SWEEP_LUA]),
        });
        let bus = Arc::new(Self {
            settings: settings.clone(),
            link: link.clone(),
            conns: conns.clone(),
            rx: Mutex::new(Some(rx)),
            subs: subs.clone(),
            publish: script(pub_command, &[PUBLISH_LUA]),
            publish_source: script_source(pub_command, &[PUBLISH_LUA]),
            presence,
        });
        tasks.spawn(
            "redis subscriptions",
            run_subscriptions(conns.clone(), link.clone(), sub_rx, settings.check_every),
        );
        tasks.spawn(
            "redis health",
            run_health(client, conns, link, subs, settings.check_every),
        );
        Ok(bus)
    }

    /// Waits (at most `limit`) for the first connection, so that a normal start serves with the
    /// bus up; after that the instance starts anyway and the bus comes up when Redis does.
    pub async fn wait_up(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.is_up() {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("redis is not reachable yet; serving from the log until it is");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    fn commands(&self) -> Result<Con, BusError> {
        self.conns
            .get()
            .map(|c| c.commands.clone())
            .ok_or_else(|| BusError::Unreachable("not connected yet".into()))
    }

    /// A cluster's `publish_teams`: the teams grouped by the primary that serves their slot (as
    /// the last check saw the slots), one pipeline of script calls per primary, all primaries at
    /// once. A call the pipeline could not answer (the slot moved, the script is not loaded
    /// there) is made again alone through the cluster client, which follows redirections and
    /// loads the script; the script skips what the first attempt published.
    async fn publish_sharded(
        &self,
        cluster: ClusterConnection,
        batch: &[TeamPublish<'_>],
    ) -> Vec<Result<Published, BusError>> {
        let slots = self.link.slots.lock().clone();
        let mut groups: HashMap<(String, u16), Vec<usize>> = HashMap::new();
        let mut alone = Vec::new();
        for (i, p) in batch.iter().enumerate() {
            if p.entries.is_empty() {
                continue;
            }
            let slot = i64::from(slot_of(&Topic::Team(p.team).channel()));
            match slots.iter().find(|r| r.start <= slot && slot <= r.end) {
                Some(r) => groups.entry((r.host.clone(), r.port)).or_default().push(i),
                None => alone.push(i),
            }
        }
        let mut answers: Vec<Option<Result<Published, BusError>>> = vec![None; batch.len()];
        let pipelines = groups.into_values().map(|teams| {
            let mut cluster = cluster.clone();
            async move {
                let mut pipe = redis::pipe();
                for &i in &teams {
                    pipe.add_command(self.publish_call(&batch[i], false));
                }
                let slot = slot_of(&Topic::Team(batch[teams[0]].team).channel());
                let at = redis::cluster_routing::SingleNodeRoutingInfo::SpecificNode(
                    redis::cluster_routing::Route::new(
                        slot,
                        redis::cluster_routing::SlotAddr::Master,
                    ),
                );
                let values = cluster
                    .route_pipeline(pipe, 0, teams.len(), at)
                    .await
                    .unwrap_or_default();
                let mut values = values.into_iter();
                teams
                    .into_iter()
                    .map(|i| {
                        let answer = values
                            .next()
                            .and_then(|v| redis::from_redis_value::<(i64, u64)>(v).ok());
                        (i, answer)
                    })
                    .collect::<Vec<_>>()
            }
        });
        let mut again = alone;
        for group in futures_util::future::join_all(pipelines).await {
            for (i, answer) in group {
                match answer {
                    Some((upto, sent)) => answers[i] = Some(Ok(Published { upto, sent })),
                    None => again.push(i),
                }
            }
        }
        let retries = again.into_iter().map(|i| {
            let mut con = Con::Cluster(cluster.clone());
            async move {
                let call = self.publish_call(&batch[i], true);
                let answer: Result<(i64, u64), BusError> =
                    call.query_async(&mut con).await.map_err(unreachable);
                (i, answer.map(|(upto, sent)| Published { upto, sent }))
            }
        });
        for (i, answer) in futures_util::future::join_all(retries).await {
            answers[i] = Some(answer);
        }
        // What reaches a user's own sockets, for the entries each script published.
        let mut copies = Vec::new();
        for (p, answer) in batch.iter().zip(&answers) {
            let Some(Ok(Published { upto, sent })) = answer else {
                continue;
            };
            let first_sent = upto - i64::try_from(*sent).unwrap_or(i64::MAX) + 1;
            for e in p.entries {
                if let (true, Some(user)) =
                    (e.seq >= first_sent && e.seq <= *upto, e.route.recipient())
                {
                    copies.push((user, wire::encode_activity(e)));
                }
            }
        }
        let copies = copies.into_iter().map(|(user, m)| {
            let mut con = Con::Cluster(cluster.clone());
            async move {
                // Live only, like every user-channel message: a failure loses this one.
                let sent: redis::RedisResult<i64> = redis::cmd("SPUBLISH")
                    .arg(Topic::User(user).channel())
                    .arg(m)
                    .query_async(&mut con)
                    .await;
                if let Err(e) = sent {
                    tracing::debug!(error = %e, "a user-channel publish failed");
                }
            }
        });
        futures_util::future::join_all(copies).await;
        batch
            .iter()
            .zip(answers)
            .map(|(p, answer)| {
                answer.unwrap_or(Ok(Published {
                    upto: p.published,
                    sent: 0,
                }))
            })
            .collect()
    }

    /// One team's publish script call: `EVALSHA`, or with `source` the script itself (`EVAL`,
    /// which also works where it is not loaded). On a cluster the user channels are left out
    /// (another slot).
    fn publish_call(&self, p: &TeamPublish<'_>, source: bool) -> redis::Cmd {
        let mut call = if source {
            let mut c = redis::cmd("EVAL");
            c.arg(&self.publish_source);
            c
        } else {
            let mut c = redis::cmd("EVALSHA");
            c.arg(self.publish.get_hash());
            c
        };
        call.arg(1)
            .arg(key::published(p.team))
            .arg(p.published)
            .arg(Topic::Team(p.team).channel())
            .arg(PUBLISHED_KEY_TTL_SECS);
        for e in p.entries {
            call.arg(e.seq).arg("").arg(wire::encode_activity(e));
        }
        call
    }
}

/// The hash slot of a key or channel (CRC16/XMODEM of its hash tag, or of all of it, modulo
/// 16384), as Redis Cluster computes it.
fn slot_of(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        rest.iter()
            .position(|&b| b == b'}')
            .filter(|&close| close > 0)
            .map(|close| &rest[..close])
    });
    let mut crc: u16 = 0;
    for &b in tagged.unwrap_or(bytes) {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16_384
}

/// Slots `start..=end` served by the primary at `host:port` (from `CLUSTER SLOTS`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SlotRange {
    start: i64,
    end: i64,
    host: String,
    port: u16,
}

/// What the bus connects with: one Redis or a cluster (its seed nodes).
enum Client {
    Single(redis::Client),
    Cluster(Vec<redis::ConnectionInfo>),
}

impl Client {
    fn of(target: &RedisTarget) -> Result<Client, BusError> {
        use redis::IntoConnectionInfo;
        // Pushes (the pub/sub messages on a normal connection) need RESP3.
        let resp3 = |url: &str| -> Result<redis::ConnectionInfo, BusError> {
            let info = url.into_connection_info().map_err(unreachable)?;
            let redis_settings = info
                .redis_settings()
                .clone()
                .set_protocol(redis::ProtocolVersion::RESP3);
            Ok(info.set_redis_settings(redis_settings))
        };
        match target {
            RedisTarget::Single(url) => redis::Client::open(resp3(url)?)
                .map(Client::Single)
                .map_err(unreachable),
            RedisTarget::Cluster(nodes) if nodes.is_empty() => Err(BusError::Unreachable(
                "a Redis Cluster needs at least one node".into(),
            )),
            RedisTarget::Cluster(nodes) => nodes
                .iter()
                .map(|n| resp3(n))
                .collect::<Result<Vec<_>, _>>()
                .map(Client::Cluster),
        }
    }

    fn is_cluster(&self) -> bool {
        matches!(self, Client::Cluster(_))
    }

    fn pub_command(&self) -> &'static str {
        if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// A connection for commands, or (with `pushes`) for subscriptions.
    async fn connect(
        &self,
        check_every: Duration,
        pushes: Option<Arc<Link>>,
    ) -> redis::RedisResult<Con> {
        // The push handler runs on the connection's own task: it must not block and must not
        // fail (a failing sender would stop redis-rs from reconnecting).
        let on_push = pushes.map(|link| {
            move |info: PushInfo| -> Result<(), std::convert::Infallible> {
                on_push(&link, info);
                Ok(())
            }
        });
        let connect_timeout = check_every.max(Duration::from_millis(200));
        match self {
            Client::Single(client) => {
                let mut config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(Duration::from_secs(5)))
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_secs(2))
                    .set_number_of_retries(3);
                if let Some(on_push) = on_push {
                    config = config
                        .set_push_sender(on_push)
                        .set_automatic_resubscription();
                }
                client
                    .get_connection_manager_with_config(config)
                    .await
                    .map(Con::Single)
            }
            Client::Cluster(nodes) => {
                let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .connection_timeout(connect_timeout)
                    .response_timeout(Duration::from_secs(5))
                    .retries(3)
                    .min_retry_wait(50)
                    .max_retry_wait(2000);
                // A cluster connection tracks its subscriptions and moves them with their slots.
                if let Some(on_push) = on_push {
                    builder = builder.push_sender(on_push);
                }
                builder
                    .build()?
                    .get_async_connection()
                    .await
                    .map(Con::Cluster)
            }
        }
    }
}

async fn connect(
    client: &Client,
    link: &Arc<Link>,
    check_every: Duration,
) -> redis::RedisResult<Conns> {
    Ok(Conns {
        commands: client.connect(check_every, None).await?,
        subscriber: client.connect(check_every, Some(link.clone())).await?,
    })
}

fn on_push(link: &Link, info: PushInfo) {
    match info.kind {
        // One node of a cluster (a replica as well: its pushes do not say which): the check
        // decides whether the bus is down; its subscriptions are made again either way.
        PushKind::Disconnection if link.sharded => {
            link.resubscribe.store(true, Ordering::SeqCst);
        }
        PushKind::Disconnection if link.up.swap(false, Ordering::SeqCst) => {
            tracing::warn!("redis connection lost; delivering from the log until it is back");
        }
        PushKind::Message | PushKind::SMessage => {
            let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                (info.data.first(), info.data.get(1))
            else {
                return;
            };
            let Some(event) = event_of(channel, payload) else {
                return;
            };
            if !link.inbox.push(event, payload.len()) {
                link.lost.store(true, Ordering::SeqCst);
            }
        }
        // A node gave up a channel whose slot it no longer serves (or confirms an unwatch): the
        // subscription task subscribes it again where the slot is now if it is still wanted.
        PushKind::SUnsubscribe => {
            if let Some(Value::BulkString(channel)) = info.data.first()
                && let Ok(channel) = std::str::from_utf8(channel)
                && link
                    .subs
                    .try_send(SubCommand::Rewatch(channel.to_owned()))
                    .is_err()
            {
                // The task is behind: subscribing everything again covers this channel too.
                link.resubscribe.store(true, Ordering::SeqCst);
            }
        }
        _ => {}
    }
}

fn event_of(channel: &[u8], payload: &[u8]) -> Option<BusEvent> {
    let message = match wire::decode(payload) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring a malformed bus message");
            return None;
        }
    };
    match (channel.strip_prefix(b"user:"), message) {
        (None, wire::Message::Activity(e)) => Some(BusEvent::Activities(vec![e])),
        (Some(_), wire::Message::Activity(e)) => Some(BusEvent::UserActivity(e)),
        (None, wire::Message::Presence(p)) => Some(BusEvent::Presence(p)),
        (Some(user), wire::Message::Inbox(seq)) => std::str::from_utf8(user)
            .ok()
            .and_then(|u| u.parse().ok())
            .map(|u| BusEvent::Inbox(u, seq)),
        (Some(user), wire::Message::StreamMessage { stream, text }) => std::str::from_utf8(user)
            .ok()
            .and_then(|u| u.parse().ok())
            .map(|user| BusEvent::StreamMessage { user, stream, text }),
        (Some(_), wire::Message::Presence(_))
        | (None, wire::Message::Inbox(_) | wire::Message::StreamMessage { .. }) => None,
    }
}

/// Connects, then checks the connection every `check_every` (on a cluster: every primary
/// answers, so a failed primary keeps the bus down until its replica took over): when it comes
/// back, every wanted channel is subscribed again and then the hub is told to resync.
async fn run_health(
    client: Client,
    conns: Arc<OnceCell<Conns>>,
    link: Arc<Link>,
    subs: mpsc::Sender<SubCommand>,
    check_every: Duration,
) {
    let mut tick = tokio::time::interval(check_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Coming up the first time is not a reconnect.
    let mut was_up = false;
    // Which primary serves which slots, as last seen (a cluster).
    let mut last_view: Option<Vec<SlotRange>> = None;
    loop {
        tick.tick().await;
        if conns.get().is_none() {
            match connect(&client, &link, check_every).await {
                Ok(c) => {
                    let _ = conns.set(c);
                    tracing::info!("redis bus connected");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "redis is unreachable; retrying");
                    continue;
                }
            }
        }
        let Some(c) = conns.get() else {
            continue;
        };
        let check = tokio::time::timeout(
            check_every.max(Duration::from_millis(500)),
            // The command connection: a failed check may make the client rebuild its
            // connections, which must not drop the subscriber's subscriptions.
            check(c.commands.clone()),
        )
        .await;
        match check {
            Ok(Ok(view)) => {
                let moved = view.is_some() && view != last_view;
                if let Some(slots) = &view {
                    link.slots.lock().clone_from(slots);
                }
                last_view = view;
                if !link.up.swap(true, Ordering::SeqCst) {
                    tracing::info!("redis bus is up");
                    if was_up {
                        metrics::counter!(crate::telemetry::BUS_RECONNECTS).increment(1);
                    }
                    was_up = true;
                    link.lost.store(false, Ordering::SeqCst);
                    // The resync follows once the channels are subscribed again.
                    let _ = subs.send(SubCommand::Resubscribe).await;
                } else if moved {
                    tracing::info!("the cluster's slots moved; subscribing where they are now");
                    link.resubscribe.store(false, Ordering::SeqCst);
                    let _ = subs.send(SubCommand::Resubscribe).await;
                } else if link.resubscribe.swap(false, Ordering::SeqCst) {
                    tracing::info!("a cluster node's connection dropped; subscribing again");
                    let _ = subs.send(SubCommand::Resubscribe).await;
                }
            }
            _ => {
                if link.up.swap(false, Ordering::SeqCst) {
                    tracing::warn!("redis does not answer; delivering from the log");
                }
            }
        }
        if link.lost.swap(false, Ordering::SeqCst) {
            tracing::warn!("the bus queue overflowed; resyncing from the log");
            link.inbox.push_resync();
        }
    }
}

/// Whether Redis serves: a PING on one Redis. On a cluster, every slot has a primary and every
/// primary answers (a PING to all primaries alone passes while a dead primary's slots have no
/// one, before its replica took over); returns which primary serves which slots, so that a
/// change (a failover, a resharding) subscribes the channels where they are now.
async fn check(con: Con) -> redis::RedisResult<Option<Vec<SlotRange>>> {
    let mut con = match con {
        Con::Single(mut c) => {
            redis::cmd("PING").query_async::<Value>(&mut c).await?;
            return Ok(None);
        }
        Con::Cluster(c) => c,
    };
    let slots: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut con)
        .await?;
    let mut ranges: Vec<(i64, i64, String, u16)> = Vec::new();
    if let Value::Array(items) = slots {
        for item in items {
            let Value::Array(f) = item else { continue };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(primary))) =
                (f.first(), f.get(1), f.get(2))
            else {
                continue;
            };
            let host = match primary.first() {
                Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
                Some(Value::SimpleString(h)) => h.clone(),
                _ => continue,
            };
            let Some(Value::Int(port)) = primary.get(1) else {
                continue;
            };
            let Ok(port) = u16::try_from(*port) else {
                continue;
            };
            ranges.push((*start, *end, host, port));
        }
    }
    ranges.sort();
    let covered: i64 = ranges.iter().map(|(a, b, _, _)| b - a + 1).sum();
    if covered != 16_384 {
        return Err(redis::RedisError::from(std::io::Error::other(format!(
            "the cluster serves {covered} of 16384 slots"
        ))));
    }
    // One PING per primary, to its address (routed by a slot it serves, the client would answer
    // from another node while that primary is gone), or by a slot where CLUSTER SLOTS does not
    // name the address (empty or `?`).
    let mut primaries: HashMap<(String, u16), i64> = HashMap::new();
    for (start, _, host, port) in &ranges {
        primaries.entry((host.clone(), *port)).or_insert(*start);
    }
    let pings = primaries.into_iter().map(|((host, port), slot)| {
        let mut con = con.clone();
        async move {
            use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
            let at = if host.is_empty() || host == "?" {
                let slot = u16::try_from(slot).unwrap_or(0);
                SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master))
            } else {
                SingleNodeRoutingInfo::ByAddress { host, port }
            };
            con.route_command(redis::cmd("PING"), RoutingInfo::SingleNode(at))
                .await
        }
    });
    futures_util::future::try_join_all(pings).await?;
    Ok(Some(
        ranges
            .into_iter()
            .map(|(start, end, host, port)| SlotRange {
                start,
                end,
                host,
                port,
            })
            .collect(),
    ))
}

/// Applies watches and unwatches in order, counting them per channel.
async fn run_subscriptions(
    conns: Arc<OnceCell<Conns>>,
    link: Arc<Link>,
    mut commands: mpsc::Receiver<SubCommand>,
    check_every: Duration,
) {
    let mut wanted: HashMap<String, usize> = HashMap::new();
    // Channels Redis confirmed on the current connection (redis-rs resubscribes them after a
    // reconnect; `Resubscribe` confirms them again).
    let mut confirmed: HashSet<String> = HashSet::new();
    // Unsubscribes this task sent whose `sunsubscribe` push is still to come back as a
    // `Rewatch` (not a channel moved by the cluster).
    let mut dropping: HashMap<String, usize> = HashMap::new();
    let timeout = check_every.max(Duration::from_secs(1));
    while let Some(cmd) = commands.recv().await {
        let subscriber = conns.get().map(|c| c.subscriber.clone());
        match cmd {
            SubCommand::Watch(channel, reply) => {
                *wanted.entry(channel.clone()).or_insert(0) += 1;
                let result = match subscriber {
                    _ if !link.up.load(Ordering::SeqCst) => {
                        Err(BusError::Unreachable("redis is down".into()))
                    }
                    None => Err(BusError::Unreachable("not connected yet".into())),
                    Some(_) if confirmed.contains(&channel) => Ok(()),
                    Some(mut s) => {
                        match tokio::time::timeout(timeout, s.subscribe(&channel)).await {
                            Ok(Ok(())) => {
                                confirmed.insert(channel);
                                Ok(())
                            }
                            Ok(Err(e)) => Err(unreachable(e)),
                            Err(_) => Err(BusError::Unreachable("SUBSCRIBE timed out".into())),
                        }
                    }
                };
                let _ = reply.send(result);
            }
            SubCommand::Unwatch(channel) => {
                let Some(n) = wanted.get_mut(&channel) else {
                    continue;
                };
                *n -= 1;
                if *n == 0 {
                    wanted.remove(&channel);
                    confirmed.remove(&channel);
                    if let Some(mut s) = subscriber {
                        if matches!(s, Con::Cluster(_)) {
                            *dropping.entry(channel.clone()).or_insert(0) += 1;
                        }
                        let _ = tokio::time::timeout(timeout, s.unsubscribe(&channel)).await;
                    }
                }
            }
            SubCommand::Resubscribe => {
                let Some(s) = subscriber else { continue };
                confirmed.clear();
                let all: Vec<String> = wanted.keys().cloned().collect();
                // A millisecond per channel on top: many thousands take their time.
                let limit = timeout * 4
                    + Duration::from_millis(u64::try_from(all.len()).unwrap_or(u64::MAX));
                match tokio::time::timeout(limit, s.subscribe_all(&all)).await {
                    Ok(Ok(())) => {
                        confirmed.extend(all);
                        link.inbox.push_resync();
                    }
                    failed => {
                        let error = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => "timed out".to_owned(),
                        };
                        // Down again: the health check resubscribes when Redis answers.
                        tracing::warn!(%error, "resubscribing failed; retrying");
                        link.up.store(false, Ordering::SeqCst);
                    }
                }
            }
            SubCommand::Rewatch(channel) => {
                if let Some(n) = dropping.get_mut(&channel) {
                    // The confirmation of this task's own unsubscribe.
                    *n -= 1;
                    if *n == 0 {
                        dropping.remove(&channel);
                    }
                    continue;
                }
                if !wanted.contains_key(&channel) {
                    continue;
                }
                confirmed.remove(&channel);
                let Some(mut s) = subscriber else { continue };
                match tokio::time::timeout(timeout, s.subscribe(&channel)).await {
                    Ok(Ok(())) => {
                        tracing::info!(%channel, "a moved channel is subscribed again");
                        confirmed.insert(channel);
                        link.inbox.push_resync();
                    }
                    _ => {
                        tracing::warn!(%channel, "subscribing a moved channel failed; retrying");
                        link.resubscribe.store(true, Ordering::SeqCst);
                    }
                }
            }
        }
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(
        &self,
        team: TeamId,
        published: i64,
        entries: &[LogEntry],
    ) -> Result<i64, BusError> {
        let one = TeamPublish {
            team,
            published,
            entries,
        };
        match self.publish_teams(&[one]).await.pop() {
            Some(answer) => answer.map(|p| p.upto),
            None => Ok(published),
        }
    }

    async fn publish_teams(&self, batch: &[TeamPublish<'_>]) -> Vec<Result<Published, BusError>> {
        let unchanged = |p: &TeamPublish<'_>| Published {
            upto: p.published,
            sent: 0,
        };
        if batch.iter().all(|p| p.entries.is_empty()) {
            return batch.iter().map(|p| Ok(unchanged(p))).collect();
        }
        let all = |e: BusError| batch.iter().map(|_| Err(e.clone())).collect();
        let mut con = match self.commands() {
            Ok(Con::Cluster(cluster)) => return self.publish_sharded(cluster, batch).await,
            Ok(con) => con,
            Err(e) => return all(e),
        };
        // One script call per team, all in one pipeline: a round trip per relay step, not per
        // team. Each call stands alone (its own EVALSHA and answer), as `publish` would run it.
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for p in batch.iter().filter(|p| !p.entries.is_empty()) {
            let mut call = redis::cmd("EVALSHA");
            call.arg(self.publish.get_hash())
                .arg(1)
                .arg(key::published(p.team))
                .arg(p.published)
                .arg(Topic::Team(p.team).channel())
                .arg(PUBLISHED_KEY_TTL_SECS);
            for e in p.entries {
                call.arg(e.seq)
                    .arg(
                        e.route
                            .recipient()
                            .map(|u| Topic::User(u).channel())
                            .unwrap_or_default(),
                    )
                    .arg(wire::encode_activity(e));
            }
            pipe.add_command(call);
        }
        let mut answers: Vec<redis::RedisResult<(i64, u64)>> = Vec::new();
        for attempt in 0..2 {
            answers = match pipe.query_async(&mut con).await {
                Ok(a) => a,
                Err(e) => return all(unreachable(e)),
            };
            let unknown = answers.iter().any(|a| {
                a.as_ref().is_err_and(|e| {
                    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
                })
            });
            if !unknown || attempt == 1 {
                break;
            }
            // Redis restarted (or flushed its scripts): load it and send the batch again. The
            // script skips what the first attempt published.
            if let Err(e) = self.publish.prepare_invoke().load_async(&mut con).await {
                return all(unreachable(e));
            }
        }
        let mut answers = answers.into_iter();
        batch
            .iter()
            .map(|p| {
                if p.entries.is_empty() {
                    return Ok(unchanged(p));
                }
                match answers.next() {
                    Some(Ok((upto, sent))) => Ok(Published { upto, sent }),
                    Some(Err(e)) => Err(unreachable(e)),
                    None => Err(BusError::Unreachable("a publish went unanswered".into())),
                }
            })
            .collect()
    }

    async fn publish_inbox(&self, marks: &[(UserId, i64)]) -> Result<(), BusError> {
        if marks.is_empty() {
            return Ok(());
        }
        let con = self.commands()?;
        if let Con::Cluster(_) = con {
            // Each user's channel is in its own slot: one command each, all in flight.
            let sends = marks.iter().map(|(user, seq)| {
                let mut con = con.clone();
                async move {
                    redis::cmd("SPUBLISH")
                        .arg(Topic::User(*user).channel())
                        .arg(wire::encode_inbox(*seq))
                        .query_async::<()>(&mut con)
                        .await
                }
            });
            return futures_util::future::try_join_all(sends)
                .await
                .map(|_| ())
                .map_err(unreachable);
        }
        let mut con = con;
        let mut pipe = redis::pipe();
        for (user, seq) in marks {
            pipe.cmd("PUBLISH")
                .arg(Topic::User(*user).channel())
                .arg(wire::encode_inbox(*seq))
                .ignore();
        }
        pipe.query_async::<()>(&mut con).await.map_err(unreachable)
    }

    async fn forward_to_stream(
        &self,
        user: UserId,
        stream: &str,
        text: &str,
    ) -> Result<bool, BusError> {
        let mut con = self.commands()?;
        // The instances with a connection of the user listen on this channel; none means no
        // stream of theirs exists anywhere.
        let command = match con {
            Con::Single(_) => "PUBLISH",
            Con::Cluster(_) => "SPUBLISH",
        };
        let receivers: i64 = redis::cmd(command)
            .arg(Topic::User(user).channel())
            .arg(wire::encode_stream_message(stream, text))
            .query_async(&mut con)
            .await
            .map_err(unreachable)?;
        Ok(receivers > 0)
    }

    fn take_events(&self) -> Option<mpsc::Receiver<BusEvent>> {
        self.rx.lock().take()
    }

    fn is_up(&self) -> bool {
        self.link.up.load(Ordering::SeqCst)
    }

    async fn watch(&self, topic: Topic) -> Result<(), BusError> {
        let (tx, rx) = oneshot::channel();
        self.subs
            .send(SubCommand::Watch(topic.channel(), tx))
            .await
            .map_err(|_| BusError::Closed)?;
        rx.await.map_err(|_| BusError::Closed)?
    }

    fn unwatch(&self, topic: Topic) {
        let cmd = SubCommand::Unwatch(topic.channel());
        if let Err(mpsc::error::TrySendError::Full(cmd)) = self.subs.try_send(cmd) {
            let subs = self.subs.clone();
            tokio::spawn(async move {
                let _ = subs.send(cmd).await;
            });
        }
    }

    fn shared_presence(&self) -> Option<Arc<dyn SharedPresence>> {
        Some(self.presence.clone())
    }
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("check_every", &self.settings.check_every)
            .finish_non_exhaustive()
    }
}

/// Presence in Redis: per task a hash of `{instance}|{user}` -> viewer, per instance and team the
/// set of its tasks there (all in the team's slot), per instance the set of its teams and a
/// heartbeat key.
struct RedisPresence {
    instance: String,
    ttl: Duration,
    conns: Arc<OnceCell<Conns>>,
    sync: Script,
    sweep: Script,
}

impl RedisPresence {
    fn commands(&self) -> Result<Con, BusError> {
        self.conns
            .get()
            .map(|c| c.commands.clone())
            .ok_or_else(|| BusError::Unreachable("not connected yet".into()))
    }

    /// Removes `instance`'s viewers, team by team (each team's removal is atomic, so of several
    /// sweepers one publishes each change), then forgets the instance. Its heartbeat is checked
    /// again before each team and before forgetting it: an instance that was only late and
    /// beats again is left alone from there on (on a cluster its heartbeat is in another slot
    /// than the teams' keys, so the check cannot be in the scripts). True for the sweeper that
    /// forgot it.
    async fn sweep_instance(&self, instance: &str) -> Result<bool, BusError> {
        let mut con = self.commands()?;
        let teams: Vec<String> = redis::cmd("SMEMBERS")
            .arg(key::instance_teams(instance))
            .query_async(&mut con)
            .await
            .map_err(unreachable)?;
        for team in teams.iter().filter_map(|t| t.parse::<TeamId>().ok()) {
            if self.alive(&mut con, instance).await? {
                return Ok(false);
            }
            let mut call = self.sweep.key(key::instance_tasks(team, instance));
            call.arg(instance)
                .arg(key::presence_prefix(team))
                .arg(Topic::Team(team).channel());
            invoke::<i64>(&call, &mut con).await.map_err(unreachable)?;
        }
        if self.alive(&mut con, instance).await? {
            return Ok(false);
        }
        redis::cmd("DEL")
            .arg(key::instance_teams(instance))
            .query_async::<()>(&mut con)
            .await
            .map_err(unreachable)?;
        let forgotten: i64 = redis::cmd("SREM")
            .arg(key::instances())
            .arg(instance)
            .query_async(&mut con)
            .await
            .map_err(unreachable)?;
        Ok(forgotten == 1)
    }

    async fn alive(&self, con: &mut Con, instance: &str) -> Result<bool, BusError> {
        if instance == self.instance {
            // Retiring: its heartbeat was deleted first, and it writes nothing anymore.
            return Ok(false);
        }
        redis::cmd("EXISTS")
            .arg(key::alive(instance))
            .query_async(con)
            .await
            .map_err(unreachable)
    }
}

#[async_trait]
impl SharedPresence for RedisPresence {
    async fn sync(
        &self,
        team: TeamId,
        task: TaskId,
        viewers: &[PresenceView],
        announce: bool,
    ) -> Result<(), BusError> {
        let con = self.commands()?;
        // Where a sweep of this instance finds the team: recorded with the script (on a cluster
        // in another slot, so beside it, not in it).
        let mut known = con.clone();
        let record = async move {
            redis::cmd("SADD")
                .arg(key::instance_teams(&self.instance))
                .arg(team.to_string())
                .query_async::<()>(&mut known)
                .await?;
            redis::cmd("SADD")
                .arg(key::instances())
                .arg(&self.instance)
                .query_async::<()>(&mut known)
                .await
        };
        let mut call = self.sync.key(key::presence(team, task));
        call.key(key::instance_tasks(team, &self.instance))
            .arg(&self.instance)
            .arg(Topic::Team(team).channel())
            .arg(if announce { "1" } else { "0" })
            .arg(task.to_string());
        for v in viewers {
            call.arg(v.user.user_id.to_string())
                .arg(Viewer::new(team, task, v).encode());
        }
        let mut con = con;
        let (recorded, synced) = tokio::join!(record, invoke::<i64>(&call, &mut con));
        recorded.map_err(unreachable)?;
        synced.map(|_| ()).map_err(unreachable)
    }

    async fn viewers(&self, team: TeamId, task: TaskId) -> Result<Vec<PresenceView>, BusError> {
        let mut con = self.commands()?;
        let all: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(key::presence(team, task))
            .query_async(&mut con)
            .await
            .map_err(unreachable)?;
        let own = format!("{}|", self.instance);
        let mut users: HashMap<UserId, PresenceView> = HashMap::new();
        for (field, v) in &all {
            if field.starts_with(&own) {
                continue;
            }
            let Some(v) = serde_json::from_str::<Viewer>(v)
                .ok()
                .and_then(|v| v.view())
            else {
                continue;
            };
            match users.get_mut(&v.user.user_id) {
                Some(u) => {
                    u.stamped = most_active([u.stamped, v.stamped]).unwrap_or(v.stamped);
                }
                None => {
                    users.insert(v.user.user_id, v);
                }
            }
        }
        Ok(users.into_values().collect())
    }

    async fn heartbeat(&self) -> Result<(), BusError> {
        let mut con = self.commands()?;
        let ttl_ms = u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        redis::cmd("SET")
            .arg(key::alive(&self.instance))
            .arg(1)
            .arg("PX")
            .arg(ttl_ms)
            .query_async::<()>(&mut con)
            .await
            .map_err(unreachable)?;
        redis::cmd("SADD")
            .arg(key::instances())
            .arg(&self.instance)
            .query_async::<()>(&mut con)
            .await
            .map_err(unreachable)
    }

    async fn sweep(&self) -> Result<usize, BusError> {
        let mut con = self.commands()?;
        let instances: Vec<String> = redis::cmd("SMEMBERS")
            .arg(key::instances())
            .query_async(&mut con)
            .await
            .map_err(unreachable)?;
        let mut swept = 0;
        for other in instances.iter().filter(|i| **i != self.instance) {
            let alive: bool = redis::cmd("EXISTS")
                .arg(key::alive(other))
                .query_async(&mut con)
                .await
                .map_err(unreachable)?;
            if !alive && self.sweep_instance(other).await? {
                tracing::info!(instance = %other, "swept the presence of a dead instance");
                swept += 1;
            }
        }
        Ok(swept)
    }

    async fn retire(&self) -> Result<(), BusError> {
        let mut con = self.commands()?;
        redis::cmd("DEL")
            .arg(key::alive(&self.instance))
            .query_async::<()>(&mut con)
            .await
            .map_err(unreachable)?;
        self.sweep_instance(&self.instance).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::activity::{ActivityKind, Route};

    /// The Redis of the tests (`TASKFORGE_TEST_REDIS_URL`); `None` (with a message) when unset,
    /// except under `CI=true`.
    fn redis_url() -> Option<String> {
        match std::env::var("TASKFORGE_TEST_REDIS_URL") {
            Ok(url) if !url.is_empty() => Some(url),
            _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("CI=true but TASKFORGE_TEST_REDIS_URL is not set")
            }
            _ => {
                eprintln!("skipping Redis: TASKFORGE_TEST_REDIS_URL not set");
                None
            }
        }
    }

    fn activity(team: TeamId, seq: i64, body_bytes: usize) -> LogEntry {
        let body = "x".repeat(body_bytes);
        LogEntry {
            seq,
            route: Route {
                kind: ActivityKind::TaskCreated,
                team_id: team,
                board_id: None,
                prev_board_id: None,
                task_id: Some(TaskId::from(Uuid::now_v7())),
                user_id: None,
            },
            json: Arc::from(format!(
                r#"{{"type":"task.created","seq":{seq},"body":"{body}"}}"#
            )),
        }
    }

    /// The slot a publish is grouped by is the one Redis Cluster serves the key from (the
    /// figures are `CLUSTER KEYSLOT`'s answers on Redis 7.0).
    #[test]
    fn slots_are_computed_as_redis_cluster_does() {
        assert_eq!(slot_of("123456789"), 12739);
        assert_eq!(slot_of("team:abc"), 3670);
        assert_eq!(slot_of("taskforge:{team:abc}:published"), 3670);
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(slot_of("foo{}{bar}"), 8363);
        assert_eq!(slot_of("{user1000}.following"), 3443);
        let team = TeamId::from(Uuid::now_v7());
        let channel = Topic::Team(team).channel();
        assert_eq!(slot_of(&key::published(team)), slot_of(&channel));
        let task = TaskId::from(Uuid::now_v7());
        assert_eq!(slot_of(&key::presence(team, task)), slot_of(&channel));
        assert_eq!(slot_of(&key::instance_tasks(team, "i")), slot_of(&channel));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_larger_than_the_byte_budget_is_dropped_and_ends_in_a_resync() {
        let Some(url) = redis_url() else { return };
        const BUDGET: usize = 256 * 1024;
        const BODY: usize = 56 * 1024; // four and a half to the budget
        const BURST: i64 = 16; // four times the budget, far below the message bound
        let bus = RedisBus::start(
            RedisSettings {
                target: RedisTarget::Single(url),
                check_every: Duration::from_millis(100),
                presence_ttl: Duration::from_secs(10),
                queue: 65_536,
                queue_bytes: BUDGET,
            },
            &Supervisor::new(),
        )
        .expect("start the bus");
        assert!(bus.wait_up(Duration::from_secs(10)).await, "redis is up");
        // The hub's side, taken but not read during the burst. The bus resyncs on coming up.
        let mut events = bus.take_events().expect("the events");
        let first = tokio::time::timeout(Duration::from_secs(10), events.recv()).await;
        assert!(matches!(first, Ok(Some(BusEvent::Resync))), "{first:?}");
        let team = TeamId::from(Uuid::now_v7());
        bus.watch(Topic::Team(team)).await.expect("watch the team");

        let entries: Vec<LogEntry> = (1..=BURST).map(|s| activity(team, s, BODY)).collect();
        let published = bus.publish(team, 0, &entries).await.expect("publish");
        assert_eq!(published, BURST);
        // Then a small message on the same channel: once it is queued, the push handler has
        // seen the whole burst (it fits in what the budget has left).
        let viewer = Viewer::new(
            team,
            TaskId::from(Uuid::now_v7()),
            &PresenceView {
                user: crate::domain::activity::PresenceUser {
                    user_id: UserId::from(Uuid::now_v7()),
                    display_name: "end of the burst".into(),
                },
                stamped: crate::domain::presence::Stamped::VIEWING,
            },
        );
        let mut con = bus.commands().expect("commands");
        let _: i64 = redis::cmd("PUBLISH")
            .arg(Topic::Team(team).channel())
            .arg(format!("P+{}", viewer.encode()))
            .query_async(&mut con)
            .await
            .expect("publish the end marker");
        let _: () = redis::cmd("DEL")
            .arg(key::published(team))
            .query_async(&mut con)
            .await
            .expect("clean up");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let queued = loop {
            {
                let q = bus.link.inbox.queued.lock();
                if q.events
                    .iter()
                    .any(|(e, _)| matches!(e, BusEvent::Presence(_)))
                {
                    break q.bytes;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the end marker was not queued within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(
            queued <= BUDGET,
            "{queued} bytes queued, the budget is {BUDGET}"
        );

        // The hub takes everything: the start of the burst, the marker, and a Resync (in either
        // order: the Resync follows the first dropped message at the next check).
        let mut seqs = Vec::new();
        let (mut marker, mut resynced) = (false, false);
        while !(marker && resynced) {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(BusEvent::Activities(got))) => seqs.extend(got.iter().map(|e| e.seq)),
                Ok(Some(BusEvent::Presence(_))) => marker = true,
                Ok(Some(BusEvent::Resync)) => resynced = true,
                Ok(Some(
                    BusEvent::UserActivity(_)
                    | BusEvent::Inbox(..)
                    | BusEvent::StreamMessage { .. },
                )) => {}
                Ok(None) | Err(_) => break,
            }
        }
        assert!(
            resynced,
            "a Resync follows the dropped messages (got seqs {seqs:?})"
        );
        assert!(marker, "the end marker arrives");
        // Kept: what fit in the budget, plus the one event the hub's channel held.
        assert!(
            !seqs.is_empty() && seqs.len() <= BUDGET / BODY + 1,
            "{seqs:?}"
        );
        // In order, from the start of the burst (the first message always fits). Not always a
        // prefix: once the hub has taken an event, a later message may fit again beside the
        // ones dropped before it; the hub repairs that gap from the log.
        assert_eq!(seqs.first(), Some(&1), "{seqs:?}");
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "what was kept is in order: {seqs:?}"
        );
    }

    /// The relay's pipelined publish: one answer per team in order, each as its own `publish`
    /// would give it (a gap publishes nothing, a repeat is skipped), also right after Redis lost
    /// its scripts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn teams_published_together_are_answered_each_as_alone() {
        let Some(url) = redis_url() else { return };
        let bus = RedisBus::start(
            RedisSettings {
                target: RedisTarget::Single(url),
                check_every: Duration::from_millis(100),
                presence_ttl: Duration::from_secs(10),
                queue: 1_024,
                queue_bytes: 1 << 20,
            },
            &Supervisor::new(),
        )
        .expect("start the bus");
        assert!(bus.wait_up(Duration::from_secs(10)).await, "redis is up");
        let mut events = bus.take_events().expect("the events");
        let [a, b, c] = [(); 3].map(|()| TeamId::from(Uuid::now_v7()));
        for team in [a, b, c] {
            bus.watch(Topic::Team(team)).await.expect("watch");
        }
        let mut con = bus.commands().expect("commands");
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut con)
            .await
            .expect("flush the scripts");
        let of = |team, seqs: std::ops::RangeInclusive<i64>| -> Vec<LogEntry> {
            seqs.map(|s| activity(team, s, 8)).collect()
        };
        let (a13, b23, a14) = (of(a, 1..=3), of(b, 2..=3), of(a, 1..=4));
        let first = bus
            .publish_teams(&[
                TeamPublish {
                    team: a,
                    published: 0,
                    entries: &a13,
                },
                TeamPublish {
                    team: b,
                    published: 0,
                    entries: &b23,
                },
                TeamPublish {
                    team: c,
                    published: 5,
                    entries: &[],
                },
            ])
            .await;
        let first: Vec<(i64, u64)> = first
            .into_iter()
            .map(|r| r.map(|p| (p.upto, p.sent)).expect("answered"))
            .collect();
        assert_eq!(
            first,
            vec![(3, 3), (0, 0), (5, 0)],
            "a published, b's gap left, c untouched"
        );
        let one = |team, published, entries| TeamPublish {
            team,
            published,
            entries,
        };
        let again = bus.publish_teams(&[one(a, 0, &a14)]).await;
        assert_eq!(
            again.into_iter().map(|r| r.ok()).collect::<Vec<_>>(),
            vec![Some(Published { upto: 4, sent: 1 })],
            "only the new one is sent"
        );
        let nothing = bus.publish_teams(&[one(b, 2, &[])]).await;
        assert_eq!(
            nothing.into_iter().map(|r| r.ok()).collect::<Vec<_>>(),
            vec![Some(Published { upto: 2, sent: 0 })],
            "nothing to send is no call"
        );

        let mut seen: Vec<(TeamId, i64)> = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while seen.len() < 4 {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(BusEvent::Activities(got))) => {
                    seen.extend(got.iter().map(|e| (e.team_id(), e.seq)));
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        // Anything more (b's entries, a repeat of a's) would arrive with or before a marker.
        let marker = of(c, 6..=6);
        bus.publish(c, 5, &marker).await.expect("the marker");
        while !seen.contains(&(c, 6)) {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(BusEvent::Activities(got))) => {
                    seen.extend(got.iter().map(|e| (e.team_id(), e.seq)));
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        assert_eq!(seen, vec![(a, 1), (a, 2), (a, 3), (a, 4), (c, 6)]);
        for team in [a, b, c] {
            let _: () = redis::cmd("DEL")
                .arg(key::published(team))
                .query_async(&mut con)
                .await
                .expect("clean up");
        }
    }

    /// The registry's scripts apply the aggregation rule across instances: a user is announced
    /// once, `presence.updated` follows each change of what they are shown doing (the most active
    /// record, the latest on a tie) and nothing else, and a swept instance's records leave as
    /// `presence.left` or, for a user still present elsewhere, `presence.updated`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_registry_announces_changes_of_the_shown_state_across_instances() {
        use crate::domain::activity::PresenceUser;
        use crate::domain::presence::{
            PresenceField, PresenceKind, PresenceState, PresenceStatus, Stamped,
        };
        let Some(url) = redis_url() else { return };
        let tasks = Supervisor::new();
        let start = || {
            RedisBus::start(
                RedisSettings {
                    target: RedisTarget::Single(url.clone()),
                    check_every: Duration::from_millis(100),
                    presence_ttl: Duration::from_secs(10),
                    queue: 1024,
                    queue_bytes: 1 << 20,
                },
                &tasks,
            )
            .expect("start a bus")
        };
        let (a, b, watcher) = (start(), start(), start());
        for bus in [&a, &b, &watcher] {
            assert!(bus.wait_up(Duration::from_secs(10)).await, "redis is up");
        }
        let mut events = watcher.take_events().expect("the events");
        let team = TeamId::from(Uuid::now_v7());
        let task = TaskId::from(Uuid::now_v7());
        watcher
            .watch(Topic::Team(team))
            .await
            .expect("watch the team");
        let (pa, pb) = (a.presence.clone(), b.presence.clone());

        let person = |name: &str| PresenceUser {
            user_id: UserId::from(Uuid::now_v7()),
            display_name: name.into(),
        };
        let (ann, bob) = (person("Ann"), person("Bob"));
        let doing = |state, field, at| {
            Stamped::new(
                PresenceStatus::new(state, Some(field)).expect("a status"),
                at,
            )
        };
        let view = |u: &PresenceUser, stamped| PresenceView {
            user: u.clone(),
            stamped,
        };
        use PresenceField::*;
        use PresenceState::*;
        let viewing = Stamped::VIEWING;
        let steps: [(&RedisPresence, Vec<PresenceView>); 8] = [
            // Joined on A.
            (&pa, vec![view(&ann, viewing)]),
            // Also on B: nothing new to show.
            (&pb, vec![view(&ann, viewing)]),
            (&pb, vec![view(&ann, doing(Editing, Title, 100))]),
            // More active on A.
            (&pa, vec![view(&ann, doing(Typing, Comment, 50))]),
            // As active as B's, and later: A's field.
            (&pa, vec![view(&ann, doing(Editing, Description, 200))]),
            // The same record again: nothing.
            (&pa, vec![view(&ann, doing(Editing, Description, 200))]),
            // B more active again; then Bob joins there.
            (&pb, vec![view(&ann, doing(Typing, Title, 300))]),
            (
                &pb,
                vec![view(&ann, doing(Typing, Title, 300)), view(&bob, viewing)],
            ),
        ];
        for (p, viewers) in &steps {
            p.sync(team, task, viewers, true).await.expect("sync");
        }
        // Seen from A: the others' records only (B's), each user once.
        let mut seen = pa.viewers(team, task).await.expect("viewers");
        seen.sort_by_key(|v| v.user.display_name.clone());
        assert_eq!(
            seen,
            vec![view(&ann, doing(Typing, Title, 300)), view(&bob, viewing)]
        );
        // B dies (it never had a heartbeat): A sweeps it.
        pa.heartbeat().await.expect("heartbeat");
        assert!(pa.sweep_instance(&pb.instance).await.expect("sweep"));
        pa.sync(team, task, &[], true)
            .await
            .expect("A's viewers leave");

        let status = |state, field| PresenceStatus::new(state, field).expect("a status");
        let want = [
            (PresenceKind::Joined, ann.user_id, PresenceStatus::VIEWING),
            (
                PresenceKind::Updated,
                ann.user_id,
                status(Editing, Some(Title)),
            ),
            (
                PresenceKind::Updated,
                ann.user_id,
                status(Typing, Some(Comment)),
            ),
            (
                PresenceKind::Updated,
                ann.user_id,
                status(Editing, Some(Description)),
            ),
            (
                PresenceKind::Updated,
                ann.user_id,
                status(Typing, Some(Title)),
            ),
            (PresenceKind::Joined, bob.user_id, PresenceStatus::VIEWING),
            // The sweep (in either order): Ann is still on A, editing; Bob was on B only.
            (PresenceKind::Left, bob.user_id, PresenceStatus::VIEWING),
            (
                PresenceKind::Updated,
                ann.user_id,
                status(Editing, Some(Description)),
            ),
            (
                PresenceKind::Left,
                ann.user_id,
                status(Editing, Some(Description)),
            ),
        ];
        let mut got = Vec::new();
        while got.len() < want.len() {
            match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
                Ok(Some(BusEvent::Presence(ev))) => {
                    assert_eq!((ev.team_id, ev.task_id), (team, task), "{ev:?}");
                    got.push((ev.kind, ev.user.user_id, ev.status));
                }
                Ok(Some(_)) => {}
                other => panic!("after {got:?}: {other:?}"),
            }
        }
        got[6..8].sort_by_key(|(kind, _, _)| *kind != PresenceKind::Left);
        assert_eq!(got, want);
        // Nothing more: a marker published last is the next event.
        let mut con = watcher.commands().expect("commands");
        let marker = Viewer::new(team, task, &view(&person("end"), viewing));
        let _: i64 = redis::cmd("PUBLISH")
            .arg(Topic::Team(team).channel())
            .arg(format!("P+{}", marker.encode()))
            .query_async(&mut con)
            .await
            .expect("publish the marker");
        loop {
            match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
                Ok(Some(BusEvent::Presence(ev))) => {
                    assert_eq!(ev.user.user_id, marker.user_id, "more presence: {ev:?}");
                    break;
                }
                Ok(Some(_)) => {}
                other => panic!("no marker: {other:?}"),
            }
        }
        tasks.shutdown().await;
    }

    #[test]
    fn the_inbox_is_bounded_in_bytes_and_in_events_and_keeps_one_resync() {
        let inbox = Inbox::new(3, 100);
        assert!(inbox.push(BusEvent::Resync, 60));
        assert!(!inbox.push(BusEvent::Resync, 50), "over the byte budget");
        assert!(inbox.push(BusEvent::Resync, 40));
        assert!(inbox.push(BusEvent::Resync, 0));
        assert!(!inbox.push(BusEvent::Resync, 0), "over the event bound");
        inbox.push_resync();
        inbox.push_resync();
        let mut n = 0;
        while inbox.pop().is_some() {
            n += 1;
        }
        assert_eq!(n, 4, "three events and one resync");
        assert_eq!(inbox.queued.lock().bytes, 0);
        assert!(
            inbox.push(BusEvent::Resync, 500),
            "alone, a large message fits"
        );
        assert!(!inbox.push(BusEvent::Resync, 1), "but nothing beside it");
    }
}
