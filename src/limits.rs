//! Rate limits per key (a client address, an email): token buckets kept in memory, per instance.
//!
//! Used by the edges (`http` for sign-up and log-in attempts, `realtime` for connection attempts).
//! It owns only the counting: which key to charge, and what to answer, is the caller's. It must
//! never grow without bound: the number of keys is capped, and buckets that have refilled are the
//! first to go.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use parking_lot::Mutex;

/// Keys kept at most; past that, refilled buckets are dropped, and if all are busy, all are.
const MAX_KEYS: usize = 100_000;

/// `per_minute` attempts per key, in bursts of up to as many.
pub struct KeyedLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl KeyedLimiter {
    /// A limiter of `per_minute` attempts per key; `None` for 0 (no limit).
    pub fn per_minute(per_minute: u32) -> Option<KeyedLimiter> {
        (per_minute > 0).then(|| KeyedLimiter {
            per_sec: f64::from(per_minute) / 60.0,
            burst: f64::from(per_minute),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Charges one attempt to `key`: `Err(wait)` when it has none left, `wait` being the time
    /// until it has one again.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        if !buckets.contains_key(key) && buckets.len() >= MAX_KEYS {
            let (per_sec, burst) = (self.per_sec, self.burst);
            buckets.retain(|_, b| Self::refilled(*b, now, per_sec) < burst);
            if buckets.len() >= MAX_KEYS {
                buckets.clear();
            }
        }
        let b = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        b.tokens = Self::refilled(*b, now, self.per_sec).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.per_sec))
        }
    }

    fn refilled(b: Bucket, now: Instant, per_sec: f64) -> f64 {
        b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_sec
    }
}

/// The client's address of a request: the peer of its TCP connection (`ConnectInfo`, absent when
/// the server runs without it), or, behind a proxy we trust, the address that proxy appended last
/// to `X-Forwarded-For` (earlier entries are the client's word).
pub fn client_ip(parts: &Parts, trust_forwarded: bool) -> Option<IpAddr> {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    ip_of(peer, &parts.headers, trust_forwarded)
}

fn ip_of(peer: Option<SocketAddr>, headers: &HeaderMap, trust_forwarded: bool) -> Option<IpAddr> {
    if trust_forwarded
        && let Some(ip) = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse::<IpAddr>().ok())
            .next_back()
    {
        return Some(ip);
    }
    peer.map(|p| p.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_burst_then_waits() {
        let l = KeyedLimiter::per_minute(3).expect("a limiter");
        for _ in 0..3 {
            assert!(l.check("a").is_ok());
        }
        let wait = l.check("a").expect_err("the fourth is refused");
        assert!(
            wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        // Another key has its own bucket.
        assert!(l.check("b").is_ok());
        assert!(KeyedLimiter::per_minute(0).is_none());
    }

    #[test]
    fn forwarded_for_only_when_trusted() {
        let peer: SocketAddr = "10.0.0.1:5000".parse().expect("addr");
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            "1.2.3.4, 5.6.7.8".parse().expect("value"),
        );
        assert_eq!(ip_of(Some(peer), &h, false), Some(peer.ip()));
        assert_eq!(ip_of(Some(peer), &h, true), "5.6.7.8".parse().ok());
        assert_eq!(ip_of(Some(peer), &HeaderMap::new(), true), Some(peer.ip()));
    }
}
