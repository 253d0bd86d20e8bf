//! The scaled deployment on a Redis Cluster (`TASKFORGE_REDIS_CLUSTER`): three instances on a
//! cluster of three primaries with a replica each, started by the test on loopback.
//!
//! - the publishes are spread over the primaries (a team's channel and keys share the team's
//!   slot; `INFO commandstats` of each primary shows its share, and no unsharded `PUBLISH`);
//! - a primary killed under writers: its replica takes over, and every socket still gets every
//!   activity exactly once and in order;
//! - a team's slot moved to another primary (resharding) under writers: the instances follow its
//!   channel there, and nothing is lost.
//!
//! Every multi-instance test also runs on a cluster of its own with
//! `TASKFORGE_TEST_REDIS_CLUSTER=1` (see `Cluster` in `common`). Skipped (with a message)
//! without PostgreSQL or `redis-server`, except under `CI=true`.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

use crate::cluster::wait_bus;
use crate::common::*;
use crate::realtime_random::wait_all;

const T: Duration = Duration::from_secs(30);

/// Three instances on a Redis Cluster of the test's own, each with its bus up.
async fn sharded_cluster() -> Option<Cluster> {
    if !postgres_enabled() {
        return None;
    }
    let redis = TestRedisCluster::start().await?;
    let cluster = Cluster::start_on(BusRedis::Sharded(redis), 3, &[]).await;
    for i in 0..3 {
        wait_bus(&cluster.node(i).client(), "up", T).await;
    }
    Some(cluster)
}

fn redis_cluster(cluster: &mut Cluster) -> &mut TestRedisCluster {
    match &mut cluster.redis {
        BusRedis::Sharded(c) => c,
        BusRedis::One(_) => panic!("this test runs on a Redis Cluster"),
    }
}

/// Every team's logged seqs above `from`, as `wait_all` wants them.
async fn logged(api: &Api, tok: &str, from: &HashMap<Uuid, i64>) -> BTreeSet<(Uuid, i64)> {
    let mut all = BTreeSet::new();
    for (&team, &from) in from {
        let log = api
            .all_pages(tok, &format!("/api/v1/teams/{team}/activity"))
            .await;
        all.extend(
            log.iter()
                .map(|a| a["seq"].as_i64().expect("seq"))
                .filter(|&s| s > from)
                .map(|s| (team, s)),
        );
    }
    all
}

/// Each team's seqs on a socket, in the order they arrived; fails on a repeat or a step back.
fn in_order_once(label: &str, frames: &[Value]) -> HashMap<Uuid, Vec<i64>> {
    let mut seen: HashMap<Uuid, Vec<i64>> = HashMap::new();
    for a in logged_activities(frames) {
        let team = a["teamId"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .expect("teamId");
        let seq = a["seq"].as_i64().expect("seq");
        let seqs = seen.entry(team).or_default();
        if let Some(&last) = seqs.last() {
            assert!(seq > last, "{label}: team {team} seq {seq} after {last}");
        }
        seqs.push(seq);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_are_spread_over_the_primaries_with_sharded_pubsub() {
    let Some(mut cluster) = sharded_cluster().await else {
        return;
    };
    const TEAMS: usize = 30;
    const WRITES: usize = 3;
    let api = cluster.node(0).client();
    let owner = api.new_user("Owner").await;
    let tok = owner.token();
    let mut teams = Vec::new();
    for i in 0..TEAMS {
        teams.push(api.create_team(tok, &format!("Shard {i}")).await.id);
    }
    // One socket on B follows every team, so B subscribes every team's channel.
    let mut ws = cluster.node(1).ws(tok).await.labeled("all@B");
    let mut from = HashMap::new();
    for &team in &teams {
        from.insert(team, ws.subscribe(Scope::Team(team), None).await.seq);
    }
    for i in 0..WRITES {
        for (n, &team) in teams.iter().enumerate() {
            cluster
                .node(n)
                .client()
                .task(tok, team, &format!("t{i}"))
                .await;
        }
    }
    let want = logged(&api, tok, &from).await;
    assert_eq!(want.len(), TEAMS * WRITES);
    let mut socks = vec![ws];
    wait_all(&mut socks, std::slice::from_ref(&want), T).await;
    let got = in_order_once("all@B", &socks[0].frames);
    for &team in &teams {
        let want: Vec<i64> = want
            .iter()
            .filter(|(t, _)| *t == team)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(got.get(&team), Some(&want), "team {team} on B");
    }

    let redis = redis_cluster(&mut cluster);
    let primaries = redis.primaries().await;
    assert_eq!(primaries.len(), 3, "three primaries serve slots");
    let mut spublish = Vec::new();
    for &p in &primaries {
        spublish.push(TestRedisCluster::calls(p, "spublish").await);
        assert_eq!(
            TestRedisCluster::calls(p, "publish").await,
            0,
            "primary {p}: no unsharded PUBLISH on a cluster"
        );
        assert!(
            TestRedisCluster::calls(p, "ssubscribe").await > 0,
            "primary {p}: instances SSUBSCRIBE on each primary that owns a followed team"
        );
    }
    let total: u64 = spublish.iter().sum();
    eprintln!("SPUBLISH per primary {primaries:?}: {spublish:?} (total {total})");
    // Every activity once on its team's channel (the user channels and presence add a little).
    assert!(
        total >= (TEAMS * WRITES) as u64,
        "{total} SPUBLISH for {} activities",
        TEAMS * WRITES
    );
    for (p, n) in primaries.iter().zip(&spublish) {
        let share = *n as f64 / total as f64;
        // 30 teams over three primaries: about a third each (10 ± 2.6 teams).
        assert!(
            (0.1..=0.6).contains(&share),
            "primary {p} carried {share:.2} of the publishes: {spublish:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_failover_under_writers_loses_nothing() {
    let Some(mut cluster) = sharded_cluster().await else {
        return;
    };
    const TEAMS: usize = 6;
    let apis: Vec<Api> = (0..3).map(|i| cluster.node(i).client()).collect();
    let owner = apis[0].new_user("Owner").await;
    let tok = owner.token().to_owned();
    let mut teams = Vec::new();
    for i in 0..TEAMS {
        teams.push(apis[0].create_team(&tok, &format!("Failover {i}")).await.id);
    }
    // The primary to kill serves the first team's channel.
    let victim = redis_cluster(&mut cluster)
        .owner_of(&format!("team:{}", teams[0]))
        .await;
    // Sockets on B and C follow every team.
    let (mut socks, from) = following(&cluster, &tok, &teams).await;
    let mut writes = 0usize;
    // Before, while the primary is down and its replica takes over, after.
    write_round(&apis, &tok, &teams, &mut writes).await;
    redis_cluster(&mut cluster).kill(victim).await;
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(4) {
        write_round(&apis, &tok, &teams, &mut writes).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let redis = redis_cluster(&mut cluster);
    redis.wait_ok(T).await;
    let promoted = redis.owner_of(&format!("team:{}", teams[0])).await;
    assert_ne!(promoted, victim, "the replica serves the slot now");
    eprintln!(
        "failover: {victim} -> {promoted} within {:?}",
        down.elapsed()
    );
    redis.restart(victim).await;
    for _ in 0..3 {
        write_round(&apis, &tok, &teams, &mut writes).await;
    }
    every_write_once(&apis[0], &tok, &from, writes, &mut socks).await;
    // The instances followed the channel to the promoted primary (B's and C's subscriptions),
    // and the relays publish there.
    let channel = format!("team:{}", teams[0]);
    let deadline = Instant::now() + T;
    loop {
        let subscribers = TestRedisCluster::shard_subscribers(promoted, &channel).await;
        if subscribers >= 2 {
            break;
        }
        if Instant::now() >= deadline {
            for i in 0..3 {
                let log: Vec<String> = cluster
                    .node(i)
                    .stderr_lines()
                    .into_iter()
                    .filter(|l| {
                        l.contains("redis") || l.contains("resubscrib") || l.contains("channel")
                    })
                    .collect();
                eprintln!("node {i}:\n{}", log.join("\n"));
            }
            panic!("{channel} has {subscribers} shard subscribers on {promoted}, not B's and C's");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = TestRedisCluster::calls(promoted, "spublish").await;
    apis[0].task(&tok, teams[0], "after").await;
    let deadline = Instant::now() + T;
    while TestRedisCluster::calls(promoted, "spublish").await <= before {
        assert!(
            Instant::now() < deadline,
            "no SPUBLISH on {promoted} after the failover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resharded_channel_is_followed_to_its_new_primary() {
    let Some(mut cluster) = sharded_cluster().await else {
        return;
    };
    let apis: Vec<Api> = (0..3).map(|i| cluster.node(i).client()).collect();
    let owner = apis[0].new_user("Owner").await;
    let tok = owner.token().to_owned();
    let mut teams = Vec::new();
    for i in 0..3 {
        teams.push(apis[0].create_team(&tok, &format!("Moved {i}")).await.id);
    }
    let channel = format!("team:{}", teams[0]);
    let (mut socks, from) = following(&cluster, &tok, &teams).await;
    let mut writes = 0usize;
    write_round(&apis, &tok, &teams, &mut writes).await;
    let redis = redis_cluster(&mut cluster);
    let before = redis.owner_of(&channel).await;
    let to = *redis
        .primaries()
        .await
        .iter()
        .find(|p| **p != before)
        .expect("another primary");
    // Its keys (the published seq) go with the slot.
    redis.move_slot_of(&channel, to).await;
    assert_eq!(redis.owner_of(&channel).await, to);
    for _ in 0..3 {
        write_round(&apis, &tok, &teams, &mut writes).await;
    }
    let deadline = Instant::now() + T;
    loop {
        let moved = TestRedisCluster::shard_subscribers(to, &channel).await;
        if moved >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{channel}: {moved} shard subscribers on its new primary {to}, not B's and C's"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    every_write_once(&apis[0], &tok, &from, writes, &mut socks).await;
    // The relays publish the team on its new primary.
    let published = TestRedisCluster::calls(to, "spublish").await;
    apis[0].task(&tok, teams[0], "after").await;
    let deadline = Instant::now() + T;
    while TestRedisCluster::calls(to, "spublish").await <= published {
        assert!(
            Instant::now() < deadline,
            "no SPUBLISH on {to} after the move"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sockets on B and C that follow every team, and the seq each team was at when followed.
async fn following(
    cluster: &Cluster,
    tok: &str,
    teams: &[Uuid],
) -> (Vec<WsClient>, HashMap<Uuid, i64>) {
    let mut socks = Vec::new();
    let mut from = HashMap::new();
    for node in [1, 2] {
        let mut ws = cluster
            .node(node)
            .ws(tok)
            .await
            .labeled(&format!("all@{node}"));
        for &team in teams {
            from.insert(team, ws.subscribe(Scope::Team(team), None).await.seq);
        }
        socks.push(ws);
    }
    (socks, from)
}

/// Every one of the `writes` logged since `from` reaches every socket, once and in order.
async fn every_write_once(
    api: &Api,
    tok: &str,
    from: &HashMap<Uuid, i64>,
    writes: usize,
    socks: &mut [WsClient],
) {
    let want = logged(api, tok, from).await;
    assert_eq!(want.len(), writes, "every write is logged");
    let wants = vec![want.clone(); socks.len()];
    wait_all(socks, &wants, T).await;
    for ws in socks.iter() {
        let got = in_order_once(&ws.label, &ws.frames);
        let have: BTreeSet<(Uuid, i64)> = got
            .iter()
            .flat_map(|(t, seqs)| seqs.iter().map(move |s| (*t, *s)))
            .collect();
        let missing: Vec<_> = want.difference(&have).collect();
        assert!(missing.is_empty(), "{}: lost {missing:?}", ws.label);
    }
}

/// One task in every team, through the instances in turn.
async fn write_round(apis: &[Api], tok: &str, teams: &[Uuid], writes: &mut usize) {
    for &team in teams {
        apis[*writes % apis.len()]
            .task(tok, team, &format!("t{writes}"))
            .await;
        *writes += 1;
    }
}
