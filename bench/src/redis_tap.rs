//! A minimal Redis client for the `fanout` benchmark of the scaled deployment (RESP2, no auth: a
//! benchmark Redis on loopback):
//!
//! - a `PSUBSCRIBE team:* user:*` tap that counts the messages the instances publish, by channel
//!   kind and by payload kind (`A...` activity, `P...` presence). A snapshot sends `PING` on the tap
//!   and waits for its `pong`: Redis answers it after every message published before it, so a
//!   snapshot taken after the last delivery counts every message of the window.
//! - `INFO all` snapshots: calls per command (`commandstats`) and Redis's own CPU time.
//!
//! The tap is one more pattern subscriber: Redis matches each PUBLISH against its two patterns and
//! writes the message to it besides the instances, which it counts in Redis's CPU.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// `host:port` of `redis://host[:port][/db]` or `host:port`.
pub fn parse_redis_addr(s: &str) -> Result<String> {
    let rest = s.strip_prefix("redis://").unwrap_or(s);
    ensure!(
        !rest.contains("://"),
        "--redis must be redis://host:port or host:port (got {s:?})"
    );
    let hostport = rest.split('/').next().unwrap_or("");
    ensure!(
        !hostport.contains('@'),
        "--redis: passwords are not supported (got {s:?})"
    );
    ensure!(!hostport.is_empty(), "--redis needs a host (got {s:?})");
    let has_port = match hostport.rfind(':') {
        Some(p) => !hostport.starts_with('[') || hostport[..p].ends_with(']'),
        None => false,
    };
    Ok(if has_port {
        hostport.to_string()
    } else {
        format!("{hostport}:6379")
    })
}

// ---------------------------------------------------------------- RESP

#[derive(Debug, PartialEq, Eq)]
enum Resp {
    /// A simple or bulk string.
    Str(Vec<u8>),
    Nil,
    Int(i64),
    Error(String),
    Array(Vec<Resp>),
}

fn line_at(b: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let rel = memchr::memmem::find(b.get(pos..)?, b"\r\n")?;
    Some((&b[pos..pos + rel], pos + rel + 2))
}

fn int_of(line: &[u8]) -> Result<i64> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad RESP integer {:?}", String::from_utf8_lossy(line)))
}

/// One RESP2 value starting at `pos`: the value and the position after it, or None when `b` does
/// not hold all of it yet.
fn parse_at(b: &[u8], pos: usize) -> Result<Option<(Resp, usize)>> {
    let Some(&kind) = b.get(pos) else {
        return Ok(None);
    };
    let Some((line, next)) = line_at(b, pos + 1) else {
        return Ok(None);
    };
    Ok(Some(match kind {
        b'+' => (Resp::Str(line.to_vec()), next),
        b'-' => (
            Resp::Error(String::from_utf8_lossy(line).into_owned()),
            next,
        ),
        b':' => (Resp::Int(int_of(line)?), next),
        b'$' => {
            let len = int_of(line)?;
            if len < 0 {
                (Resp::Nil, next)
            } else {
                let end = next + len as usize;
                if b.len() < end + 2 {
                    return Ok(None);
                }
                (Resp::Str(b[next..end].to_vec()), end + 2)
            }
        }
        b'*' => {
            let len = int_of(line)?;
            if len < 0 {
                (Resp::Nil, next)
            } else {
                let mut items = Vec::with_capacity(len.min(64) as usize);
                let mut p = next;
                for _ in 0..len {
                    let Some((item, after)) = parse_at(b, p)? else {
                        return Ok(None);
                    };
                    items.push(item);
                    p = after;
                }
                (Resp::Array(items), p)
            }
        }
        other => bail!("unexpected RESP type byte {:?}", other as char),
    }))
}

/// Takes one complete value off the front of `buf`, if it holds one.
fn take_frame(buf: &mut BytesMut) -> Result<Option<Resp>> {
    Ok(parse_at(buf, 0)?.map(|(v, used)| {
        buf.advance(used);
        v
    }))
}

fn command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

async fn connect(addr: &str, timeout: Duration) -> Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connecting to Redis at {addr}: timed out"))?
        .with_context(|| format!("connecting to Redis at {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Reads until one complete value is in `buf` and returns it.
async fn read_frame(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<Resp> {
    loop {
        if let Some(v) = take_frame(buf)? {
            return Ok(v);
        }
        if stream.read_buf(buf).await? == 0 {
            bail!("Redis closed the connection");
        }
    }
}

// ---------------------------------------------------------------- the tap

/// Messages seen by the tap since it subscribed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TapCounts {
    /// On `team:{id}` channels (pattern `team:*`)
    pub team: u64,
    /// On `user:{id}` channels (pattern `user:*`)
    pub user: u64,
    pub team_bytes: u64,
    pub user_bytes: u64,
    /// Payloads starting with `A` (an activity)
    pub activities: u64,
    /// Payloads starting with `P` (a presence change)
    pub presence: u64,
    /// Payloads of another kind
    pub other: u64,
}

impl TapCounts {
    pub fn since(self, before: TapCounts) -> TapCounts {
        TapCounts {
            team: self.team.saturating_sub(before.team),
            user: self.user.saturating_sub(before.user),
            team_bytes: self.team_bytes.saturating_sub(before.team_bytes),
            user_bytes: self.user_bytes.saturating_sub(before.user_bytes),
            activities: self.activities.saturating_sub(before.activities),
            presence: self.presence.saturating_sub(before.presence),
            other: self.other.saturating_sub(before.other),
        }
    }

    fn count(&mut self, pattern: &[u8], payload: &[u8]) {
        let len = payload.len() as u64;
        match pattern {
            b"team:*" => {
                self.team += 1;
                self.team_bytes += len;
            }
            _ => {
                self.user += 1;
                self.user_bytes += len;
            }
        }
        match payload.first() {
            Some(b'A') => self.activities += 1,
            Some(b'P') => self.presence += 1,
            _ => self.other += 1,
        }
    }
}

type Waiter = oneshot::Sender<TapCounts>;

/// The running tap; dropping it ends its task and closes its connection.
pub struct Tap {
    ctl: mpsc::Sender<Waiter>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tap {
    /// Connects, subscribes to `team:*` and `user:*` and waits for Redis to confirm both.
    pub async fn start(addr: &str, timeout: Duration) -> Result<Tap> {
        let mut stream = connect(addr, timeout).await?;
        let mut buf = BytesMut::with_capacity(64 * 1024);
        stream
            .write_all(&command(&["PSUBSCRIBE", "team:*", "user:*"]))
            .await?;
        let mut acks = 0;
        while acks < 2 {
            let frame = tokio::time::timeout(timeout, read_frame(&mut stream, &mut buf))
                .await
                .map_err(|_| anyhow!("Redis did not confirm PSUBSCRIBE in time"))??;
            match frame {
                Resp::Array(items) if items.first() == Some(&Resp::Str(b"psubscribe".to_vec())) => {
                    acks += 1
                }
                Resp::Error(e) => bail!("PSUBSCRIBE: {e}"),
                other => bail!("unexpected answer to PSUBSCRIBE: {other:?}"),
            }
        }
        let (ctl, rx) = mpsc::channel(4);
        let task = tokio::spawn(run_tap(stream, buf, rx));
        Ok(Tap { ctl, task })
    }

    /// The counts of every message published before this call (see the module doc).
    pub async fn snapshot(&mut self, timeout: Duration) -> Result<TapCounts> {
        let (tx, rx) = oneshot::channel();
        let sent = self.ctl.send(tx).await.is_ok();
        let got = if sent {
            tokio::time::timeout(timeout, rx)
                .await
                .map_err(|_| anyhow!("the Redis tap's PING got no answer in time"))?
                .ok()
        } else {
            None
        };
        match got {
            Some(c) => Ok(c),
            None => {
                // The task ended: report why.
                if self.task.is_finished() {
                    match (&mut self.task).await {
                        Ok(Err(e)) => return Err(e.context("the Redis tap failed")),
                        Err(e) => bail!("the Redis tap panicked: {e}"),
                        Ok(Ok(())) => {}
                    }
                }
                bail!("the Redis tap has stopped")
            }
        }
    }
}

async fn run_tap(
    mut stream: TcpStream,
    mut buf: BytesMut,
    mut ctl: mpsc::Receiver<Waiter>,
) -> Result<()> {
    let mut counts = TapCounts::default();
    let mut waiters: VecDeque<Waiter> = VecDeque::new();
    let ping = command(&["PING"]);
    loop {
        while let Some(frame) = take_frame(&mut buf)? {
            let Resp::Array(items) = frame else {
                if let Resp::Error(e) = frame {
                    bail!("Redis answered the tap with an error: {e}");
                }
                continue;
            };
            match items.as_slice() {
                [Resp::Str(kind), Resp::Str(pattern), _, Resp::Str(payload)]
                    if kind == b"pmessage" =>
                {
                    counts.count(pattern, payload)
                }
                [Resp::Str(kind), ..] if kind == b"pong" => {
                    if let Some(w) = waiters.pop_front() {
                        let _ = w.send(counts);
                    }
                }
                _ => {}
            }
        }
        tokio::select! {
            w = ctl.recv() => {
                let Some(w) = w else { return Ok(()) };
                stream.write_all(&ping).await.context("sending PING on the tap")?;
                waiters.push_back(w);
            }
            n = stream.read_buf(&mut buf) => {
                if n.context("reading the tap")? == 0 {
                    bail!("Redis closed the tap's connection");
                }
            }
        }
    }
}

// ---------------------------------------------------------------- relay lag

/// The `relay-lag` subcommand: a `PSUBSCRIBE team:*` watcher that reads each activity the
/// instances publish for the length of a load (see bench/relay.sh).
#[derive(clap::Args, Debug, Clone)]
pub struct RelayLagArgs {
    /// The Redis the instances publish on (redis://127.0.0.1:PORT)
    #[arg(long)]
    pub redis: String,
    /// How long to watch, seconds
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Count only activities of this type (e.g. task.created: a load's own, not its setup's)
    #[arg(long)]
    pub kind: Option<String>,
    /// Free-form label copied into the report
    #[arg(long)]
    pub label: Option<String>,
}

/// What the watcher saw. An activity's age is the time from its `ts` (its commit, by the clock of
/// the instance that wrote it: the same host here) to its arrival on the watcher's connection:
/// the relay's lag plus Redis's delivery, for any relay version.
#[derive(serde::Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct RelayLagReport {
    pub label: Option<String>,
    pub duration_secs: f64,
    /// Activity messages of `--kind` (any, without it) received, repeats included
    pub activities: u64,
    pub teams: usize,
    /// Messages whose seq the team's channel had already carried (published again)
    pub repeats: u64,
    /// Times a team's seq jumped past the next one (a subscriber repairs that from the log)
    pub skips: u64,
    pub age_p50_ms: f64,
    pub age_p99_ms: f64,
    pub age_p999_ms: f64,
    pub age_max_ms: f64,
}

/// Watches `team:*` on `addr` for `window` and reports (see `RelayLagReport`).
pub async fn watch_activities(
    addr: &str,
    window: Duration,
    kind: Option<&str>,
    timeout: Duration,
) -> Result<RelayLagReport> {
    let mut stream = connect(addr, timeout).await?;
    let mut buf = BytesMut::with_capacity(256 * 1024);
    stream
        .write_all(&command(&["PSUBSCRIBE", "team:*"]))
        .await?;
    match tokio::time::timeout(timeout, read_frame(&mut stream, &mut buf)).await {
        Ok(Ok(Resp::Array(items))) if items.first() == Some(&Resp::Str(b"psubscribe".to_vec())) => {
        }
        other => bail!("PSUBSCRIBE was not confirmed: {other:?}"),
    }
    // Microseconds, up to an hour.
    let mut ages = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let mut last: std::collections::HashMap<Vec<u8>, i64> = std::collections::HashMap::new();
    let (mut activities, mut repeats, mut skips) = (0u64, 0u64, 0u64);
    let deadline = tokio::time::Instant::now() + window;
    loop {
        while let Some(frame) = take_frame(&mut buf)? {
            let Resp::Array(items) = frame else { continue };
            let [Resp::Str(message), _, _, Resp::Str(payload)] = items.as_slice() else {
                continue;
            };
            if message != b"pmessage" || payload.first() != Some(&b'A') {
                continue;
            }
            // `A{seq}|{kind}|{team}|...\n{json}`
            let Some(nl) = memchr::memchr(b'\n', payload) else {
                continue;
            };
            let mut header = payload[1..nl].split(|b| *b == b'|');
            let seq = header
                .next()
                .and_then(|s| std::str::from_utf8(s).ok())
                .and_then(|s| s.parse::<i64>().ok());
            let of_kind = header.next();
            let team = header.next().map(<[u8]>::to_vec);
            let (Some(seq), Some(of_kind), Some(team)) = (seq, of_kind, team) else {
                continue;
            };
            // Every activity counts for the order of its team's seqs; only those of `kind` for
            // the ages.
            match last.get_mut(&team) {
                Some(l) if seq <= *l => repeats += 1,
                Some(l) => {
                    if seq > *l + 1 {
                        skips += 1;
                    }
                    *l = seq;
                }
                None => {
                    last.insert(team, seq);
                }
            }
            if kind.is_some_and(|k| k.as_bytes() != of_kind) {
                continue;
            }
            activities += 1;
            if let Some(age) = std::str::from_utf8(&payload[nl + 1..])
                .ok()
                .and_then(taskforge::telemetry::since_commit)
            {
                ages.saturating_record((age.max(0.0) * 1e6) as u64);
            }
        }
        tokio::select! {
            n = stream.read_buf(&mut buf) => {
                if n.context("reading the watcher")? == 0 {
                    bail!("Redis closed the watcher's connection");
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    let ms = |q: f64| ages.value_at_quantile(q) as f64 / 1000.0;
    Ok(RelayLagReport {
        label: None,
        duration_secs: window.as_secs_f64(),
        activities,
        teams: last.len(),
        repeats,
        skips,
        age_p50_ms: ms(0.5),
        age_p99_ms: ms(0.99),
        age_p999_ms: ms(0.999),
        age_max_ms: ages.max() as f64 / 1000.0,
    })
}

// ---------------------------------------------------------------- INFO

/// What one `INFO all` says about the load.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InfoSnapshot {
    /// `calls=` of every `cmdstat_<command>` line
    pub calls: BTreeMap<String, u64>,
    /// `used_cpu_user + used_cpu_sys`, seconds
    pub cpu_secs: Option<f64>,
}

pub fn parse_info(text: &str) -> InfoSnapshot {
    let mut s = InfoSnapshot::default();
    let (mut user, mut sys) = (None, None);
    for line in text.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("cmdstat_") {
            let Some((name, stats)) = rest.split_once(':') else {
                continue;
            };
            if let Some(calls) = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|v| v.parse().ok())
            {
                s.calls.insert(name.to_string(), calls);
            }
        } else if let Some(v) = line.strip_prefix("used_cpu_user:") {
            user = v.parse::<f64>().ok();
        } else if let Some(v) = line.strip_prefix("used_cpu_sys:") {
            sys = v.parse::<f64>().ok();
        }
    }
    s.cpu_secs = user.zip(sys).map(|(u, s)| u + s);
    s
}

/// Calls per command between two snapshots, without zeros and without this benchmark's own
/// `INFO` (the first snapshot's) and the tap's `PING` (the last snapshot's), which fall in between.
pub fn calls_between(before: &InfoSnapshot, after: &InfoSnapshot) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (name, &calls) in &after.calls {
        let mut d = calls.saturating_sub(before.calls.get(name).copied().unwrap_or(0));
        if name == "info" || name == "ping" {
            d = d.saturating_sub(1);
        }
        if d > 0 {
            out.insert(name.clone(), d);
        }
    }
    out
}

/// A plain command connection, for `INFO`.
pub struct Commands {
    stream: TcpStream,
    buf: BytesMut,
    timeout: Duration,
}

impl Commands {
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Commands> {
        Ok(Commands {
            stream: connect(addr, timeout).await?,
            buf: BytesMut::with_capacity(16 * 1024),
            timeout,
        })
    }

    pub async fn info(&mut self) -> Result<InfoSnapshot> {
        self.stream.write_all(&command(&["INFO", "all"])).await?;
        let frame = tokio::time::timeout(self.timeout, read_frame(&mut self.stream, &mut self.buf))
            .await
            .map_err(|_| anyhow!("Redis did not answer INFO in time"))??;
        match frame {
            Resp::Str(text) => Ok(parse_info(&String::from_utf8_lossy(&text))),
            Resp::Error(e) => bail!("INFO: {e}"),
            other => bail!("unexpected answer to INFO: {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        assert_eq!(
            parse_redis_addr("redis://127.0.0.1:6390").unwrap(),
            "127.0.0.1:6390"
        );
        assert_eq!(
            parse_redis_addr("redis://127.0.0.1:6390/0").unwrap(),
            "127.0.0.1:6390"
        );
        assert_eq!(parse_redis_addr("localhost").unwrap(), "localhost:6379");
        assert_eq!(parse_redis_addr("[::1]").unwrap(), "[::1]:6379");
        assert_eq!(parse_redis_addr("[::1]:7000").unwrap(), "[::1]:7000");
        assert!(parse_redis_addr("redis://:pw@127.0.0.1").is_err());
        assert!(parse_redis_addr("rediss://127.0.0.1").is_err());
    }

    #[test]
    fn parses_resp_frames() {
        let mut buf = BytesMut::from(
            &b"*4\r\n$8\r\npmessage\r\n$6\r\nteam:*\r\n$6\r\nteam:1\r\n$3\r\nA1\n\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n*3\r\n$10\r\npsub"[..],
        );
        assert_eq!(
            take_frame(&mut buf).unwrap(),
            Some(Resp::Array(vec![
                Resp::Str(b"pmessage".to_vec()),
                Resp::Str(b"team:*".to_vec()),
                Resp::Str(b"team:1".to_vec()),
                Resp::Str(b"A1\n".to_vec()),
            ]))
        );
        assert_eq!(
            take_frame(&mut buf).unwrap(),
            Some(Resp::Array(vec![
                Resp::Str(b"pong".to_vec()),
                Resp::Str(Vec::new())
            ]))
        );
        // Incomplete: left in the buffer.
        assert_eq!(take_frame(&mut buf).unwrap(), None);
        assert_eq!(buf.len(), 13);
        let mut b = BytesMut::from(&b":12\r\n-ERR no\r\n$-1\r\n+OK\r\n"[..]);
        assert_eq!(take_frame(&mut b).unwrap(), Some(Resp::Int(12)));
        assert_eq!(
            take_frame(&mut b).unwrap(),
            Some(Resp::Error("ERR no".into()))
        );
        assert_eq!(take_frame(&mut b).unwrap(), Some(Resp::Nil));
        assert_eq!(take_frame(&mut b).unwrap(), Some(Resp::Str(b"OK".to_vec())));
        assert!(take_frame(&mut BytesMut::from(&b"?x\r\n"[..])).is_err());
    }

    #[test]
    fn counts_by_pattern_and_payload() {
        let mut c = TapCounts::default();
        c.count(b"team:*", b"A1|task.created|...");
        c.count(b"user:*", b"A2|...");
        c.count(b"team:*", b"P+{}");
        assert_eq!(
            (c.team, c.user, c.activities, c.presence, c.other),
            (2, 1, 2, 1, 0)
        );
        let d = c.since(TapCounts {
            team: 1,
            ..TapCounts::default()
        });
        assert_eq!(d.team, 1);
    }

    #[test]
    fn parses_info() {
        let before = parse_info(
            "# CPU\r\nused_cpu_sys:1.5\r\nused_cpu_user:2.25\r\n# Commandstats\r\ncmdstat_evalsha:calls=10,usec=5,usec_per_call=0.5\r\ncmdstat_info:calls=3,usec=1\r\ncmdstat_client|setname:calls=2,usec=0\r\n",
        );
        assert_eq!(before.cpu_secs, Some(3.75));
        assert_eq!(before.calls["evalsha"], 10);
        assert_eq!(before.calls["client|setname"], 2);
        let after = parse_info(
            "cmdstat_evalsha:calls=25,usec=9\r\ncmdstat_info:calls=4,usec=1\r\ncmdstat_ping:calls=1\r\ncmdstat_publish:calls=15\r\ncmdstat_client|setname:calls=2,usec=0\r\n",
        );
        let d = calls_between(&before, &after);
        assert_eq!(
            d.into_iter().collect::<Vec<_>>(),
            vec![("evalsha".to_string(), 15), ("publish".to_string(), 15)]
        );
    }
}
