//! Webhooks as the domain sees them: what a webhook is, which activities it asks for, which URLs
//! it may point at, and how long it waits after a failure. Pure: no network, no clock, no secrets
//! (those are `crate::webhook`'s).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::activity::ActivityKind;
use super::error::{Checks, DomainError, FieldError};
use super::id::{TeamId, UserId, WebhookId};
use super::model::timestamp;

pub const URL_MAX: usize = 2048;
pub const DESCRIPTION_MAX: usize = 200;
pub const MAX_PATTERNS: usize = 50;

/// A team's outgoing webhook, as owners and admins see it (never with its secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    #[schema(value_type = Uuid)]
    pub id: WebhookId,
    #[schema(value_type = Uuid)]
    pub team_id: TeamId,
    pub url: String,
    pub description: String,
    /// Activity type patterns: `task.created`, `task.*` or `*`.
    pub events: Vec<String>,
    pub enabled: bool,
    /// The last seq of the team's log this webhook is done with (delivered, or skipped by
    /// `events`); delivery resumes after it.
    pub cursor: i64,
    #[serde(with = "timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
    #[schema(value_type = Uuid)]
    pub created_by_user_id: UserId,
    /// Since when every attempt has failed (null while deliveries succeed).
    #[serde(with = "timestamp::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub failing_since: Option<OffsetDateTime>,
    /// Why the server disabled it (null when enabled, or disabled by a person).
    pub disabled_reason: Option<String>,
    /// Until when the secret before the last rotation still signs beside the current one.
    #[serde(with = "timestamp::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub previous_secret_expires_at: Option<OffsetDateTime>,
}

/// One attempt to deliver a message (an activity, or a ping) to a webhook.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub id: uuid::Uuid,
    #[schema(value_type = Uuid)]
    pub webhook_id: WebhookId,
    /// The activity's seq; null for a ping.
    pub seq: Option<i64>,
    /// The `webhook-id` header: the activity's id, the same on every attempt of it.
    pub message_id: String,
    /// 1 for the first attempt of this message, then 2, 3, ...
    pub attempt: i32,
    #[serde(with = "timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub attempted_at: OffsetDateTime,
    /// The receiver's HTTP status; null when no response came (timeout, refused, TLS).
    pub status: Option<i32>,
    pub latency_ms: i64,
    pub ok: bool,
    pub error: Option<String>,
}

/// Which activity types a webhook asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFilter(Vec<String>);

impl EventFilter {
    pub fn all() -> Self {
        Self(vec!["*".to_owned()])
    }

    /// Checks every pattern: an exact type, a `prefix.*`, or `*`, each matching some type.
    pub fn parse(patterns: Vec<String>) -> Result<Self, DomainError> {
        if patterns.is_empty() || patterns.len() > MAX_PATTERNS {
            return Err(DomainError::invalid(
                "events",
                format!("must list 1 to {MAX_PATTERNS} activity type patterns"),
            ));
        }
        let mut checks = Checks::default();
        for p in &patterns {
            if !ActivityKind::ALL
                .iter()
                .any(|k| pattern_matches(p, k.as_str()))
            {
                checks.push(FieldError::new(
                    "events",
                    format!(
                        "{:?} matches no activity type (use a type, `prefix.*` or `*`)",
                        p.chars().take(60).collect::<String>()
                    ),
                ));
            }
        }
        checks.finish()?;
        let mut patterns = patterns;
        patterns.dedup();
        Ok(Self(patterns))
    }

    /// Patterns read back from the store (checked when they were written).
    pub fn from_stored(patterns: Vec<String>) -> Self {
        Self(patterns)
    }

    /// Whether an activity of type `kind` is delivered. `*` means every type but the webhooks'
    /// own (`webhook.*` carry other webhooks' URLs, which are often credentials): those go only
    /// to a webhook whose patterns name them (`webhook.*`, `webhook.disabled`).
    pub fn matches(&self, kind: &str) -> bool {
        let admins_only = ActivityKind::parse(kind).is_some_and(ActivityKind::admins_only);
        self.0
            .iter()
            .any(|p| pattern_matches(p, kind) && !(admins_only && p == "*"))
    }

    pub fn into_patterns(self) -> Vec<String> {
        self.0
    }
}

fn pattern_matches(pattern: &str, kind: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some("") => true,
        Some(prefix) => prefix.ends_with('.') && kind.starts_with(prefix),
        None => pattern == kind,
    }
}

pub fn check_description(d: &str) -> Result<(), DomainError> {
    let mut c = Checks::default();
    c.check(
        d.chars().count() <= DESCRIPTION_MAX,
        "description",
        "must be at most 200 characters",
    );
    c.finish()
}

/// A webhook target that passed the checks that need no network: its URL as the HTTP client will
/// read it (normalized), and its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    pub https: bool,
    /// The host when it is an IP address, in any spelling the URL standard accepts
    /// (`127.0.0.1.`, `2130706433`, `0x7f.1`, `[::1]`): checked here, as the client connects to
    /// it without resolving. A name is checked on what it resolves to.
    pub ip: Option<IpAddr>,
    /// The host when it is a name.
    pub name: Option<String>,
}

/// Checks a webhook URL with the parser the HTTP client uses: `https://` (or `http://` when
/// private targets are allowed), a host, no user info, no fragment, and an IP host that is public
/// unless private targets are allowed.
pub fn check_url(raw: &str, allow_private: bool) -> Result<Target, DomainError> {
    let bad = |m: &str| DomainError::invalid("url", m);
    if raw.len() > URL_MAX {
        return Err(bad("must be at most 2048 characters"));
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("must not contain spaces or control characters"));
    }
    let url = url::Url::parse(raw).map_err(|_| bad("must be an absolute https:// URL"))?;
    let https = match url.scheme() {
        "https" => true,
        "http" if allow_private => false,
        "http" => return Err(bad("must use https://")),
        _ => return Err(bad("must be an absolute https:// URL")),
    };
    if url.fragment().is_some() {
        return Err(bad("must not have a fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not carry a user name or password"));
    }
    let (ip, name) = match url.host() {
        Some(url::Host::Ipv4(v4)) => (Some(IpAddr::V4(v4)), None),
        Some(url::Host::Ipv6(v6)) => (Some(IpAddr::V6(v6)), None),
        Some(url::Host::Domain(d)) if !d.is_empty() => (None, Some(d.to_owned())),
        _ => return Err(bad("must name a host")),
    };
    if let Some(ip) = ip
        && !allow_private
        && !is_public(ip)
    {
        return Err(bad(
            "must not point at a loopback, private, link-local or metadata address",
        ));
    }
    if url.as_str().len() > URL_MAX {
        return Err(bad("must be at most 2048 characters"));
    }
    Ok(Target {
        url: url.as_str().to_owned(),
        https,
        ip,
        name,
    })
}

/// Whether an address is on the public internet: not loopback, private, link-local (which holds
/// the cloud metadata service, 169.254.169.254), shared, documentation, multicast or unspecified.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            // `::a.b.c.d` (IPv4-compatible) and `::ffff:0:a.b.c.d` (IPv4-translated) embed an
            // IPv4 address too: never public.
            None => v6.segments()[..4] != [0, 0, 0, 0] && is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_unspecified()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (carrier NAT)
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || first == 0x0064 && ip.segments()[1] == 0xff9b // NAT64 (reaches IPv4 space)
        || first == 0x2002) // 6to4 (embeds an IPv4 address)
}

/// How long to wait before attempt `failures + 1` of the same activity: exponential from `base`,
/// capped at `max`, with `jitter` in [0, 1) taking off up to half (so retries of many webhooks
/// spread out instead of arriving together).
pub fn backoff(failures: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    let capped = exp.min(max);
    capped.mul_f64(1.0 - 0.5 * jitter.clamp(0.0, 1.0))
}

/// Why a failing webhook is disabled.
pub fn gone_reason(status: u16) -> String {
    format!("the receiver answered {status} Gone")
}

pub fn failing_reason(for_how_long: Duration) -> String {
    format!(
        "every delivery failed for {} s",
        for_how_long.as_secs().max(1)
    )
}

/// The cap on a team's webhooks.
pub fn check_capacity(existing: i64, cap: u32) -> Result<(), DomainError> {
    if existing >= i64::from(cap) {
        Err(DomainError::Conflict(
            "the team has as many webhooks as it may have",
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_types_prefixes_and_all() {
        let f = EventFilter::parse(vec!["task.*".into(), "comment.created".into()]).expect("ok");
        assert!(f.matches("task.created"));
        assert!(f.matches("task.assigned"));
        assert!(f.matches("comment.created"));
        assert!(!f.matches("comment.deleted"));
        assert!(!f.matches("member.added"));
        assert!(EventFilter::all().matches("member.added"));
        assert!(
            !EventFilter::all().matches("webhook.disabled"),
            "only when named"
        );
        let named = EventFilter::parse(vec!["*".into(), "webhook.*".into()]).expect("ok");
        assert!(named.matches("webhook.disabled"));
        for bad in [
            vec![],
            vec!["nope.*".to_owned()],
            vec!["task".to_owned()],
            vec!["task*".to_owned()],
        ] {
            assert!(EventFilter::parse(bad.clone()).is_err(), "{bad:?}");
        }
        assert!(EventFilter::parse(vec!["x".into(); 51]).is_err());
    }

    #[test]
    fn urls_must_be_https_and_public() {
        assert!(check_url("https://hooks.example.com/x?y=1", false).is_ok());
        assert!(check_url("https://hooks.example.com:8443", false).is_ok());
        for bad in [
            "http://hooks.example.com/x",
            "ftp://example.com",
            "not a url",
            "https://user:pw@example.com/",
            "https://example.com/#frag",
            "https://127.0.0.1/x",
            "https://10.1.2.3/x",
            "https://172.16.0.1/x",
            "https://192.168.1.1/x",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/",
            "https://0.0.0.0/",
            "https://[::1]/x",
            "https://[fd00::1]/x",
            "https://[fe80::1]/x",
            "https://[::ffff:127.0.0.1]/x",
            "https://",
            "https://example.com:99999/",
            "https://exa mple.com/",
            "https://127.0.0.1./x",
            "https://2130706433/x",
            "https://0x7f.1/x",
            "https://017700000001/x",
            "https://127.1/x",
            "https://10.1.2.3./x",
            "https://[::127.0.0.1]/x",
            "https://[::ffff:0:127.0.0.1]/x",
        ] {
            assert!(check_url(bad, false).is_err(), "{bad}");
        }
        let t = check_url("https://Hooks.Example.com.:443/x", false).expect("a name");
        assert_eq!(t.name.as_deref(), Some("hooks.example.com."));
        assert_eq!(t.url, "https://hooks.example.com./x");
        let t = check_url("http://127.0.0.1:9000/hook", true).expect("allowed");
        assert!(!t.https);
        assert_eq!(t.ip, Some(IpAddr::from([127, 0, 0, 1])));
        assert!(check_url("ftp://127.0.0.1/", true).is_err());
        assert!(is_public("93.184.216.34".parse().expect("ip")));
        assert!(is_public("2606:2800:220:1::1".parse().expect("ip")));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitter_only_shortens() {
        let (b, m) = (Duration::from_secs(1), Duration::from_secs(600));
        assert_eq!(backoff(1, b, m, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(2, b, m, 0.0), Duration::from_secs(2));
        assert_eq!(backoff(5, b, m, 0.0), Duration::from_secs(16));
        assert_eq!(backoff(40, b, m, 0.0), m);
        assert_eq!(backoff(3, b, m, 0.999_999).as_millis(), 2000);
    }
}
