//! Rate limits: which key to charge for what, with `governor`'s GCRA over a bounded key table.
//!
//! Used by the edges (`http` for sign-up, log-in and adding members by email, `realtime` for
//! connection attempts and each socket's messages). It owns only the counting and the keys; what
//! to answer is the caller's. It must never grow without bound or be turned against the users it
//! protects:
//! - a key is 16 bytes whatever the client sent (emails are hashed, never stored);
//! - the key table holds at most `MAX_KEYS`; when it is full the least recently used key goes,
//!   never all of them;
//! - IPv6 clients are keyed by their /64 (one host commonly holds a whole /64);
//! - failed log-ins from other addresses cannot lock an account's owner out: attempts count per
//!   (email, address), and the per-email ceiling is far above what one address may spend.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use governor::clock::{Clock, DefaultClock};
use governor::nanos::Nanos;
use governor::state::{NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use lru::LruCache;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

/// Keys kept at most per limiter: about 100 bytes each, so about 10 MiB when full.
const MAX_KEYS: usize = 100_000;

/// What a limiter is keyed by: 16 bytes, whatever the client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(u128);

impl Key {
    /// A client address; an IPv6 address by its /64, an IPv4-mapped one as the IPv4 address.
    pub fn ip(ip: IpAddr) -> Key {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Key(u128::from(v4.to_ipv6_mapped())),
            IpAddr::V6(v6) => Key(u128::from(v6) & (u128::MAX << 64)),
        }
    }

    /// An email address (normalized by the caller), hashed.
    pub fn email(email: &str) -> Key {
        Key::hashed(&[b"email", email.as_bytes()])
    }

    /// An email address as tried from one client address.
    pub fn email_at(email: &str, ip: IpAddr) -> Key {
        let Key(ip) = Key::ip(ip);
        Key::hashed(&[b"email-at", email.as_bytes(), &ip.to_be_bytes()])
    }

    /// Anything else with an identity of its own (a user id).
    pub fn of(bytes: &[u8]) -> Key {
        Key::hashed(&[b"id", bytes])
    }

    fn hashed(parts: &[&[u8]]) -> Key {
        let mut h = Sha256::new();
        for p in parts {
            // Length-prefixed, so that no two different part lists hash alike.
            h.update((p.len() as u64).to_be_bytes());
            h.update(p);
        }
        let digest = h.finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        Key(u128::from_be_bytes(first))
    }
}

/// governor's state per key, in a table that forgets the least recently used key when full.
struct BoundedKeys {
    keys: Arc<Mutex<LruCache<Key, Nanos>>>,
}

impl StateStore for BoundedKeys {
    type Key = Key;

    fn measure_and_replace<T, F, E>(&self, key: &Key, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // The lock is held across the measurement, so no compare-and-swap is needed.
        let mut keys = self.keys.lock();
        let (out, state) = f(keys.get(key).copied())?;
        keys.put(*key, state);
        Ok(out)
    }
}

/// `n` attempts per minute per key, in bursts of up to `n`.
pub struct KeyedLimiter {
    limiter: RateLimiter<Key, BoundedKeys, DefaultClock>,
    keys: Arc<Mutex<LruCache<Key, Nanos>>>,
}

impl KeyedLimiter {
    /// A limiter of `per_minute` attempts per key; `None` for 0 (no limit).
    pub fn per_minute(per_minute: u32) -> Option<KeyedLimiter> {
        Self::with_capacity(per_minute, MAX_KEYS)
    }

    fn with_capacity(per_minute: u32, keys: usize) -> Option<KeyedLimiter> {
        let n = NonZeroU32::new(per_minute)?;
        let keys = Arc::new(Mutex::new(LruCache::new(std::num::NonZeroUsize::new(
            keys,
        )?)));
        Some(KeyedLimiter {
            limiter: RateLimiter::new(
                Quota::per_minute(n),
                BoundedKeys { keys: keys.clone() },
                DefaultClock::default(),
            ),
            keys,
        })
    }

    /// Charges one attempt to `key`: `Err(wait)` when it has none left, `wait` being the time
    /// until it has one again.
    pub fn check(&self, key: Key) -> Result<(), Duration> {
        self.limiter
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// How many keys the table holds now.
    pub fn keys(&self) -> usize {
        self.keys.lock().len()
    }
}

/// One socket's message limit: `rate` per second in bursts of `burst`, and how many messages in a
/// row it has refused (a client that keeps flooding is closed by the caller).
pub struct MessageLimit {
    limiter: Option<RateLimiter<NotKeyed, governor::state::InMemoryState, DefaultClock>>,
    pub refused_in_a_row: u32,
}

impl MessageLimit {
    /// `rate` 0 means no limit.
    pub fn new(rate: u32, burst: u32) -> MessageLimit {
        let limiter = NonZeroU32::new(rate).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
        });
        MessageLimit {
            limiter,
            refused_in_a_row: 0,
        }
    }

    /// Charges one message; false (and one more refusal in a row) when over the limit.
    pub fn allow(&mut self) -> bool {
        let ok = self.limiter.as_ref().is_none_or(|l| l.check().is_ok());
        if ok {
            self.refused_in_a_row = 0;
        } else {
            self.refused_in_a_row += 1;
        }
        ok
    }
}

/// Sign-up and log-in attempts: per client address, per (email, address), and a per-email
/// ceiling. An attempt over any of them answers 429; the cheaper checks come first, and an attempt
/// refused by one is not charged to the later ones.
pub struct AuthLimits {
    pub per_ip: Option<KeyedLimiter>,
    pub per_email_at_ip: Option<KeyedLimiter>,
    pub per_email: Option<KeyedLimiter>,
}

/// An attempt over a limit: 429 `rate_limited` with `Retry-After`.
#[derive(Debug)]
pub struct RateLimited {
    pub wait: Duration,
    pub detail: &'static str,
}

impl AuthLimits {
    /// Charges one attempt for `email` (normalized) from `ip`.
    pub fn check(&self, ip: Option<IpAddr>, email: &str) -> Result<(), RateLimited> {
        let refused = |detail| move |wait| RateLimited { wait, detail };
        if let Some(ip) = ip {
            if let Some(l) = &self.per_ip {
                l.check(Key::ip(ip))
                    .map_err(refused("too many attempts from this address; retry later"))?;
            }
            if let Some(l) = &self.per_email_at_ip {
                l.check(Key::email_at(email, ip)).map_err(refused(
                    "too many attempts for this account from this address; retry later",
                ))?;
            }
        }
        if let Some(l) = &self.per_email {
            l.check(Key::email(email))
                .map_err(refused("too many attempts for this account; retry later"))?;
        }
        Ok(())
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
        let a = Key::of(b"a");
        for _ in 0..3 {
            assert!(l.check(a).is_ok());
        }
        let wait = l.check(a).expect_err("the fourth is refused");
        assert!(
            wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        // Another key has its own bucket.
        assert!(l.check(Key::of(b"b")).is_ok());
        assert!(KeyedLimiter::per_minute(0).is_none());
    }

    /// A full table forgets its least recently used key, and only that one: the keys an attacker
    /// floods in cannot reset everyone else's.
    #[test]
    fn a_full_table_drops_the_oldest_key_only() {
        let l = KeyedLimiter::with_capacity(1, 3).expect("a limiter");
        let (a, b, c, d) = (Key::of(b"a"), Key::of(b"b"), Key::of(b"c"), Key::of(b"d"));
        for k in [a, b, c] {
            assert!(l.check(k).is_ok());
        }
        // Touch `a`, so `b` is now the least recently used.
        assert!(l.check(a).is_err());
        assert!(l.check(d).is_ok());
        assert_eq!(l.keys(), 3);
        assert!(l.check(a).is_err(), "a is still limited");
        assert!(l.check(c).is_err(), "c is still limited");
        assert!(l.check(b).is_ok(), "b was forgotten, so it starts afresh");
    }

    #[test]
    fn keys_are_fixed_size_and_ipv6_goes_by_64() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("an address");
        assert_eq!(
            Key::ip(ip("2001:db8:1:2:aaaa::1")),
            Key::ip(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
        );
        assert_ne!(
            Key::ip(ip("2001:db8:1:2::1")),
            Key::ip(ip("2001:db8:1:3::1"))
        );
        assert_eq!(Key::ip(ip("::ffff:192.0.2.1")), Key::ip(ip("192.0.2.1")));
        assert_ne!(Key::ip(ip("192.0.2.1")), Key::ip(ip("192.0.2.2")));
        // A megabyte of email is 16 bytes of key.
        let huge = "a".repeat(1 << 20);
        assert_eq!(std::mem::size_of_val(&Key::email(&huge)), 16);
        assert_ne!(
            Key::email("a@x.io"),
            Key::email_at("a@x.io", ip("192.0.2.1"))
        );
        assert_ne!(
            Key::email_at("a@x.io", ip("192.0.2.1")),
            Key::email_at("a@x.io", ip("192.0.2.2"))
        );
    }

    /// Failed log-ins for one email from several other addresses leave the owner's own address
    /// its attempts.
    #[test]
    fn guessing_from_other_addresses_does_not_lock_the_owner_out() {
        let limits = AuthLimits {
            per_ip: KeyedLimiter::per_minute(60),
            per_email_at_ip: KeyedLimiter::per_minute(10),
            per_email: KeyedLimiter::per_minute(100),
        };
        let email = "owner@example.com";
        for i in 2..7u8 {
            let attacker = IpAddr::from([127, 0, 0, i]);
            let refused = (0..30)
                .filter(|_| limits.check(Some(attacker), email).is_err())
                .count();
            assert_eq!(refused, 20, "each attacker address gets 10 of its 30");
        }
        let owner = IpAddr::from([127, 0, 0, 1]);
        assert!(limits.check(Some(owner), email).is_ok());
    }

    #[test]
    fn a_socket_gets_its_burst_then_is_refused() {
        let mut m = MessageLimit::new(1, 3);
        assert!((0..3).all(|_| m.allow()));
        assert!(!m.allow());
        assert!(!m.allow());
        assert_eq!(m.refused_in_a_row, 2);
        assert!(MessageLimit::new(0, 0).allow(), "rate 0: no limit");
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
