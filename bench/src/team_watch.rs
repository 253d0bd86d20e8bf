//! Watchers for `writes --watch`: one WebSocket per team and server URL, subscribed to the team,
//! reading every activity and checking each team's seqs (skips, repeats). Their job is to make the
//! servers' hubs follow the written teams, so that the relay, the bus and the hubs' log check carry
//! the load a real deployment has; what they see is reported beside the writes.
//!
//! A socket that is closed resumes with `since` = the last seq it saw (what the client library
//! does), so a close costs no activity; closes are counted by reason.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::fanout::{Scan, Scanner, Ws};
use crate::http_writes::parse_url;

/// What the watchers saw over the whole run (the `watch` object of the `--json` line).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WatchReport {
    /// Sockets opened at the start (teams × server URLs)
    pub sockets: usize,
    /// Activity frames received, replays after a resume included
    pub deliveries: u64,
    /// Seqs skipped: a frame whose seq is more than one above the last one of its socket
    pub skipped: u64,
    /// Frames whose seq is not above the last one of their socket
    pub repeated: u64,
    /// Closes by the server or errors, by reason (each followed by a resume)
    pub closes: BTreeMap<String, u64>,
}

struct Shared {
    stop: AtomicBool,
    deliveries: AtomicU64,
    skipped: AtomicU64,
    repeated: AtomicU64,
    closes: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    fn closed(&self, why: String) {
        *self
            .closes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(why)
            .or_default() += 1;
    }
}

/// The running watchers; `finish` stops them and reports.
pub struct TeamWatchers {
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
    sockets: usize,
}

/// `last` of a socket that has not been subscribed yet.
const NEVER: u64 = u64::MAX;

impl TeamWatchers {
    /// Opens and subscribes one socket per (URL, team) with `token`; returns once every socket
    /// has its `subscribed` answer.
    pub async fn start(urls: &[String], token: &str, teams: &[String]) -> Result<Self> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            deliveries: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            repeated: AtomicU64::new(0),
            closes: Mutex::new(BTreeMap::new()),
        });
        let mut tasks = JoinSet::new();
        let mut sockets = 0;
        for url in urls {
            let target = parse_url(url)?;
            let ws_url = format!(
                "ws://{}{}/realtime?token={token}",
                target.addr, target.prefix
            );
            for team in teams {
                let (ws, last) = connect(&target.addr, &ws_url, team, NEVER, &shared)
                    .await
                    .with_context(|| format!("watching team {team} on {url}"))?;
                sockets += 1;
                tasks.spawn(watch(
                    shared.clone(),
                    target.addr.clone(),
                    ws_url.clone(),
                    team.clone(),
                    ws,
                    last,
                ));
            }
        }
        Ok(Self {
            shared,
            tasks,
            sockets,
        })
    }

    /// Lets the sockets read for `tail` more (what is still in flight), then closes them.
    pub async fn finish(mut self, tail: Duration) -> WatchReport {
        tokio::time::sleep(tail).await;
        self.shared.stop.store(true, Ordering::Relaxed);
        while self.tasks.join_next().await.is_some() {}
        let s = &self.shared;
        WatchReport {
            sockets: self.sockets,
            deliveries: s.deliveries.load(Ordering::Relaxed),
            skipped: s.skipped.load(Ordering::Relaxed),
            repeated: s.repeated.load(Ordering::Relaxed),
            closes: s
                .closes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        }
    }
}

/// Checks one seq against the socket's `last`, and moves `last`.
fn observe(shared: &Shared, last: &mut u64, seq: Option<u64>) {
    shared.deliveries.fetch_add(1, Ordering::Relaxed);
    let Some(seq) = seq else { return };
    if *last != NEVER && seq <= *last {
        shared.repeated.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if *last != NEVER && seq > *last + 1 {
        shared.skipped.fetch_add(seq - *last - 1, Ordering::Relaxed);
    }
    *last = seq;
}

/// Connects and subscribes (with `since` once a seq was seen); returns the socket and the seq it
/// is at after the replay.
async fn connect(
    addr: &str,
    ws_url: &str,
    team: &str,
    mut last: u64,
    shared: &Shared,
) -> Result<(Ws, u64)> {
    let stream = TcpStream::connect(addr).await.context("connect")?;
    stream.set_nodelay(true)?;
    let (mut ws, _) = tokio_tungstenite::client_async(ws_url, stream)
        .await
        .context("handshake")?;
    let subscribe = if last == NEVER {
        format!(r#"{{"type":"subscribe","teamId":"{team}"}}"#)
    } else {
        format!(r#"{{"type":"subscribe","teamId":"{team}","since":{last}}}"#)
    };
    ws.send(Message::text(subscribe))
        .await
        .context("subscribe")?;
    let scanner = Scanner::new();
    while let Some(msg) = ws.next().await {
        match msg.context("reading the subscribe answer")? {
            Message::Text(t) => match scanner.scan(t.as_bytes()) {
                Scan::Activity { seq, .. } => observe(shared, &mut last, seq),
                Scan::Other => {
                    let v: serde_json::Value = serde_json::from_str(t.as_str())?;
                    match v["type"].as_str() {
                        Some("subscribed") => {
                            let seq = v["seq"].as_u64().ok_or_else(|| anyhow!("no seq: {v}"))?;
                            if last == NEVER {
                                last = seq;
                            } else if seq > last {
                                // The replay should have brought everything up to `seq`.
                                shared.skipped.fetch_add(seq - last, Ordering::Relaxed);
                                last = seq;
                            }
                            return Ok((ws, last));
                        }
                        Some("error") => bail!("subscribe answered {v}"),
                        _ => {}
                    }
                }
            },
            Message::Close(f) => bail!("closed during subscribe: {f:?}"),
            _ => {}
        }
    }
    bail!("ended before `subscribed`")
}

/// Reads one team's socket until told to stop, resuming after any close.
async fn watch(
    shared: Arc<Shared>,
    addr: String,
    ws_url: String,
    team: String,
    mut ws: Ws,
    mut last: u64,
) {
    let scanner = Scanner::new();
    loop {
        let why = loop {
            if shared.stop.load(Ordering::Relaxed) {
                let _ = ws.close(None).await;
                return;
            }
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        if let Scan::Activity { seq, .. } = scanner.scan(t.as_bytes()) {
                            observe(&shared, &mut last, seq);
                        }
                    }
                    Some(Ok(Message::Close(f))) => {
                        break f.map_or("close".into(), |f| format!("close {}", u16::from(f.code)));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break format!("error: {e}"),
                    None => break "eof".into(),
                },
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        };
        shared.closed(why);
        // Resume; a failed attempt is counted and retried until the run stops.
        loop {
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            match connect(&addr, &ws_url, &team, last, &shared).await {
                Ok((w, l)) => {
                    ws = w;
                    last = l;
                    break;
                }
                Err(e) => shared.closed(format!("resume: {}", e.root_cause())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        Shared {
            stop: AtomicBool::new(false),
            deliveries: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            repeated: AtomicU64::new(0),
            closes: Mutex::new(BTreeMap::new()),
        }
    }

    #[test]
    fn seqs_are_checked_per_socket() {
        let s = shared();
        let mut last = 4;
        for seq in [5, 6, 6, 9, 3, 10] {
            observe(&s, &mut last, Some(seq));
        }
        observe(&s, &mut last, None);
        assert_eq!(s.deliveries.load(Ordering::Relaxed), 7);
        assert_eq!(s.repeated.load(Ordering::Relaxed), 2, "6 again and 3");
        assert_eq!(s.skipped.load(Ordering::Relaxed), 2, "7 and 8");
        assert_eq!(last, 10);
    }
}
