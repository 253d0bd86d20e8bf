//! The one configuration struct, read from flags and `TASKFORGE_*` environment variables.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on (port 0 picks a free one; the chosen address is printed on start).
    #[arg(long, env = "TASKFORGE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// `sqlite://path` (created if missing) or `postgres://...`.
    #[arg(
        long,
        env = "TASKFORGE_DATABASE_URL",
        default_value = "sqlite://taskforge.db"
    )]
    pub database_url: String,

    /// Redis URL for the multi-instance bus; unset means the in-process bus.
    #[arg(long, env = "TASKFORGE_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Redis Cluster nodes for the multi-instance bus (sharded pub/sub), comma-separated
    /// (`redis://10.0.0.1:6379,redis://10.0.0.2:6379`; any of them, the rest is discovered).
    /// Instead of `TASKFORGE_REDIS_URL`.
    #[arg(
        long,
        env = "TASKFORGE_REDIS_CLUSTER",
        value_delimiter = ',',
        conflicts_with = "redis_url"
    )]
    pub redis_cluster: Vec<String>,

    /// HS256 secret for access tokens, at least 32 bytes. Required unless `--dev`.
    #[arg(long, env = "TASKFORGE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Development mode: generates a JWT secret when none is given (tokens die with the process).
    #[arg(long)]
    pub dev: bool,

    /// Access token lifetime (`900`, `90s`, `15m`, `1h`).
    #[arg(long, env = "TASKFORGE_ACCESS_TOKEN_TTL", default_value = "15m", value_parser = parse_duration)]
    pub access_token_ttl: Duration,

    /// Refresh token lifetime.
    #[arg(long, env = "TASKFORGE_REFRESH_TOKEN_TTL", default_value = "30d", value_parser = parse_duration)]
    pub refresh_token_ttl: Duration,

    /// How long the activity log keeps activities (older `since` answers `resume_unavailable`).
    #[arg(long, env = "TASKFORGE_LOG_RETENTION", default_value = "30d", value_parser = parse_duration)]
    pub log_retention: Duration,

    /// How often the activity log is pruned and expired refresh sessions are purged (and at least
    /// once per log retention).
    #[arg(long, env = "TASKFORGE_PRUNE_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub prune_interval: Duration,

    /// How often the relay looks for unpublished activities.
    #[arg(long, env = "TASKFORGE_RELAY_SCAN_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub relay_scan_interval: Duration,

    /// How old an unpublished commit must be before the relay scan (one instance at a time)
    /// publishes it for the relay that did not: an instance that crashed between commit and
    /// publish, or could not reach the bus.
    #[arg(long, env = "TASKFORGE_RELAY_REPAIR_AFTER", default_value = "2s", value_parser = parse_duration)]
    pub relay_repair_after: Duration,

    /// How often each followed team is compared with the log (repairs what the bus lost).
    #[arg(long, env = "TASKFORGE_BUS_CHECK_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub bus_check_interval: Duration,

    /// Scaled deployment: how long an instance's presence outlives its last heartbeat.
    #[arg(long, env = "TASKFORGE_PRESENCE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub presence_ttl: Duration,

    /// How long a connection's `editing` or `typing` presence state holds without being sent
    /// again (clients resend it every ~2 s); then it falls back to `viewing`.
    #[arg(long, env = "TASKFORGE_PRESENCE_STATE_TTL", default_value = "5s", value_parser = parse_duration)]
    pub presence_state_ttl: Duration,

    /// Scaled deployment: how often live instances sweep the presence of dead ones.
    #[arg(long, env = "TASKFORGE_PRESENCE_SWEEP_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub presence_sweep_interval: Duration,

    /// A request head must arrive within this after a connection opens (or after the previous
    /// response on a kept-alive connection); slower connections are closed.
    #[arg(long, env = "TASKFORGE_HEADER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// On SIGTERM: how long in-flight requests and socket closes may take before the process exits.
    #[arg(long, env = "TASKFORGE_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Group commit: the most write transactions committed together by one `COMMIT` (those that
    /// queue for the SQLite writer, or for one PostgreSQL team, while one runs); 1 commits each
    /// alone. PostgreSQL takes 65 at most (`store::postgres::MAX_BATCH`).
    #[arg(long, env = "TASKFORGE_WRITE_BATCH", default_value_t = crate::store::DEFAULT_WRITE_BATCH,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub write_batch: u16,

    /// PostgreSQL: connections of this instance's pool (N instances hold up to N times this;
    /// keep it under the server's `max_connections`).
    #[arg(long, env = "TASKFORGE_DATABASE_POOL_SIZE", default_value_t = 32)]
    pub database_pool_size: u32,

    /// PostgreSQL: what stands between this instance and the database: `none` (the server, or a
    /// pooler in session mode) or `transaction` (PgBouncer's `pool_mode = transaction`: no named
    /// statements, nothing kept in the session).
    #[arg(
        long,
        env = "TASKFORGE_DATABASE_POOLER",
        value_enum,
        default_value = "none"
    )]
    pub database_pooler: crate::store::Pooler,

    /// PostgreSQL behind a transaction pooler: a direct connection (or a session pool) to run the
    /// migrations over at start. Without it such an instance migrates nothing and refuses to
    /// start on a schema older than its own (run `taskforge migrate` first).
    #[arg(long, env = "TASKFORGE_MIGRATION_DATABASE_URL")]
    pub migration_database_url: Option<String>,

    /// Largest accepted HTTP request body, in bytes.
    #[arg(long, env = "TASKFORGE_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// How long an unauthenticated socket may take to send its `auth` message.
    #[arg(long, env = "TASKFORGE_WS_AUTH_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub ws_auth_timeout: Duration,

    /// Live frames a socket may have queued before it is cut as a slow consumer (4008).
    #[arg(long, env = "TASKFORGE_WS_QUEUE_LIMIT", default_value_t = 1024)]
    pub ws_queue_limit: usize,

    /// Bytes one socket may have queued unwritten, replies and errors included (one frame more
    /// cuts it as a slow consumer, like `TASKFORGE_WS_QUEUE_LIMIT`).
    #[arg(long, env = "TASKFORGE_WS_QUEUE_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub ws_queue_bytes: usize,

    /// A socket whose writes (or replay) make no progress this long is cut as a slow consumer.
    #[arg(long, env = "TASKFORGE_WS_WRITE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub ws_write_timeout: Duration,

    /// Rooms one socket may join.
    #[arg(long, env = "TASKFORGE_WS_MAX_SUBSCRIPTIONS", default_value_t = 1000)]
    pub ws_max_subscriptions: usize,

    /// Sustained client messages per second per socket.
    #[arg(long, env = "TASKFORGE_WS_RATE", default_value_t = 100)]
    pub ws_rate: u32,

    /// Burst of client messages per socket.
    #[arg(long, env = "TASKFORGE_WS_BURST", default_value_t = 200)]
    pub ws_burst: u32,

    /// Interval of WebSocket pings; a peer silent for two intervals is dropped.
    #[arg(long, env = "TASKFORGE_WS_PING_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub ws_ping_interval: Duration,

    /// Largest inbound socket message, in bytes (larger ones close with 1009).
    #[arg(long, env = "TASKFORGE_WS_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub ws_max_message_bytes: usize,

    /// Sign-up and log-in attempts per minute from one client address, in bursts of as many
    /// (0: no limit).
    #[arg(long, env = "TASKFORGE_AUTH_LIMIT_PER_IP", default_value_t = 60)]
    pub auth_limit_per_ip: u32,

    /// Sign-up and log-in attempts per minute for one email address from one client address
    /// (0: no limit).
    #[arg(long, env = "TASKFORGE_AUTH_LIMIT_PER_EMAIL", default_value_t = 10)]
    pub auth_limit_per_email: u32,

    /// Sign-up and log-in attempts per minute for one email address from all addresses together:
    /// a ceiling well above what one address may spend, so that guesses from elsewhere cannot
    /// lock the owner out (0: no limit).
    #[arg(long, env = "TASKFORGE_AUTH_LIMIT_PER_ACCOUNT", default_value_t = 100)]
    pub auth_limit_per_account: u32,

    /// Members added by email per minute by one user (each answers whether the address has an
    /// account; 0: no limit).
    #[arg(
        long,
        env = "TASKFORGE_MEMBER_EMAIL_LIMIT_PER_USER",
        default_value_t = 30
    )]
    pub member_email_limit_per_user: u32,

    /// WebSocket connection attempts per minute from one client address (0: no limit).
    #[arg(long, env = "TASKFORGE_CONNECT_LIMIT_PER_IP", default_value_t = 600)]
    pub connect_limit_per_ip: u32,

    /// Take the client address for these limits from the last `X-Forwarded-For` entry: only
    /// behind a load balancer that appends it (`true` or `false`).
    #[arg(long, env = "TASKFORGE_TRUST_FORWARDED_FOR", default_value_t = false, action = clap::ArgAction::Set)]
    pub trust_forwarded_for: bool,

    /// Webhooks may target loopback and private addresses, and plain `http://` (tests and
    /// on-premise receivers; `true` or `false`).
    #[arg(long, env = "TASKFORGE_WEBHOOK_ALLOW_PRIVATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub webhook_allow_private: bool,

    /// Key sealing webhook secrets at rest: 32 bytes in base64. Unset: derived from the JWT
    /// secret (then changing that secret makes existing webhooks unable to sign until rotated).
    #[arg(long, env = "TASKFORGE_WEBHOOK_SECRET_KEY", hide_env_values = true)]
    pub webhook_secret_key: Option<String>,

    /// Webhooks one team may have.
    #[arg(long, env = "TASKFORGE_WEBHOOKS_PER_TEAM", default_value_t = 10)]
    pub webhooks_per_team: u32,

    /// Time limit of one webhook request, connection and answer included.
    #[arg(long, env = "TASKFORGE_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub webhook_timeout: Duration,

    /// Time limit of connecting to a webhook's receiver.
    #[arg(long, env = "TASKFORGE_WEBHOOK_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub webhook_connect_timeout: Duration,

    /// First wait before retrying a failed webhook delivery; it doubles per failure.
    #[arg(long, env = "TASKFORGE_WEBHOOK_RETRY_BASE", default_value = "1s", value_parser = parse_duration)]
    pub webhook_retry_base: Duration,

    /// Longest wait between retries of a webhook delivery.
    #[arg(long, env = "TASKFORGE_WEBHOOK_RETRY_MAX", default_value = "10m", value_parser = parse_duration)]
    pub webhook_retry_max: Duration,

    /// A webhook whose deliveries all fail for this long is disabled.
    #[arg(long, env = "TASKFORGE_WEBHOOK_DISABLE_AFTER", default_value = "24h", value_parser = parse_duration)]
    pub webhook_disable_after: Duration,

    /// How long an instance's claim on a webhook lasts without renewal (a dead instance's
    /// webhooks are taken over after it).
    #[arg(long, env = "TASKFORGE_WEBHOOK_LEASE", default_value = "10s", value_parser = parse_duration)]
    pub webhook_lease: Duration,

    /// How often webhooks look for activities committed on other instances.
    #[arg(long, env = "TASKFORGE_WEBHOOK_POLL_INTERVAL", default_value = "500ms", value_parser = parse_duration)]
    pub webhook_poll_interval: Duration,

    /// Tracing filter, e.g. `info` or `taskforge=debug,tower_http=info`.
    #[arg(long, env = "TASKFORGE_LOG", default_value = "info")]
    pub log: String,

    #[arg(long, env = "TASKFORGE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Test-only fault injection (`crash-after-commit`, `background-task-panic`); honoured by
    /// debug builds only.
    #[arg(long, env = "TASKFORGE_FAULT", hide = true)]
    pub fault: Option<String>,
}

impl Config {
    pub fn crash_after_commit(&self) -> bool {
        cfg!(debug_assertions) && self.fault.as_deref() == Some("crash-after-commit")
    }

    /// A supervised background task that panics shortly after start (readiness must fail).
    pub fn fault_background_panic(&self) -> bool {
        cfg!(debug_assertions) && self.fault.as_deref() == Some("background-task-panic")
    }
}

/// Parses `900` (seconds), `250ms`, `90s`, `15m`, `2h` or `30d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = |k: u64| Duration::from_secs(n.saturating_mul(k));
    match unit {
        "" | "s" => Ok(secs(1)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => Ok(secs(60)),
        "h" => Ok(secs(3600)),
        "d" => Ok(secs(86_400)),
        _ => Err(format!(
            "invalid duration unit in {s:?} (use ms, s, m, h or d)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("900"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(2_592_000)));
        assert!(parse_duration("5 weeks").is_err());
        assert!(parse_duration("").is_err());
    }
}
