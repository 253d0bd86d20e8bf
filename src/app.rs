//! Wiring: builds the store, bus, relay, services and router from a `Config`, and serves them.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::bus::{
    Bus, BusError, InProcessBus, RedisBus, RedisSettings, RedisTarget, Relay, RelaySettings,
};
use crate::config::Config;
use crate::http::serve::ServeSettings;
use crate::http::{self, AppState, EdgeLimits};
use crate::limits::{AuthLimits, KeyedLimiter};
use crate::realtime::{self, Realtime};
use crate::service::webhooks::WebhookPolicy;
use crate::service::{Services, TokenService};
use crate::store::{self, StoreError};
use crate::supervisor::Supervisor;
use crate::telemetry::Telemetry;
use crate::webhook::{Deliverer, DelivererSettings, SecretKey, Sender, SenderSettings};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("TASKFORGE_JWT_SECRET is required (or run `taskforge serve --dev` to generate one)")]
    MissingSecret,
    #[error("TASKFORGE_JWT_SECRET must be at least 32 bytes")]
    WeakSecret,
    #[error("the Redis bus (TASKFORGE_REDIS_URL or TASKFORGE_REDIS_CLUSTER): {0}")]
    Redis(#[from] BusError),
    #[error("could not open the database: {0}")]
    Store(#[from] StoreError),
    #[error("could not listen: {0}")]
    Io(#[from] std::io::Error),
    #[error("could not set up metrics: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    #[error("TASKFORGE_WEBHOOK_SECRET_KEY: {0}")]
    WebhookKey(#[from] crate::webhook::secret::SecretError),
    #[error("could not set up the webhook client: {0}")]
    WebhookClient(#[from] reqwest::Error),
}

/// The JWT secret from the config; `--dev` generates a random one when none is given.
fn jwt_secret(config: &Config) -> Result<Vec<u8>, StartError> {
    match &config.jwt_secret {
        Some(s) if s.len() >= 32 => Ok(s.as_bytes().to_vec()),
        Some(_) => Err(StartError::WeakSecret),
        None if config.dev => {
            let mut secret = vec![0u8; 32];
            getrandom::fill(&mut secret)
                .map_err(|e| StartError::Io(std::io::Error::other(e.to_string())))?;
            tracing::warn!(
                "--dev: generated a random JWT secret; tokens will not survive a restart"
            );
            Ok(secret)
        }
        None => Err(StartError::MissingSecret),
    }
}

/// The webhook key (given, or derived from the JWT secret) and the delivery client.
fn webhook_policy(config: &Config, jwt_secret: &[u8]) -> Result<WebhookPolicy, StartError> {
    let key = match &config.webhook_secret_key {
        Some(k) => SecretKey::from_base64(k)?,
        None => SecretKey::derived_from(jwt_secret)?,
    };
    if config.webhook_allow_private {
        tracing::warn!(
            "TASKFORGE_WEBHOOK_ALLOW_PRIVATE: webhooks may target loopback and private addresses"
        );
    }
    Ok(WebhookPolicy {
        key,
        per_team: config.webhooks_per_team,
        allow_private: config.webhook_allow_private,
        sender: Sender::new(&SenderSettings {
            allow_private: config.webhook_allow_private,
            timeout: config.webhook_timeout,
            connect_timeout: config.webhook_connect_timeout,
        })?,
        wake: Default::default(),
    })
}

/// Runs the server on `config.listen` until SIGTERM or Ctrl-C.
pub async fn serve(config: Config) -> Result<(), StartError> {
    let listener = TcpListener::bind(config.listen).await?;
    let app = App::build(config).await?;
    // The one line on stdout, printed once the database is migrated: scripts and process tests
    // wait for it to learn the port.
    println!("taskforge listening on http://{}", listener.local_addr()?);
    app.run(listener, shutdown_signal()).await
}

/// Builds the server from `config` and runs it on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    App::build(config).await?.run(listener, shutdown).await
}

/// A built server: database migrated, bus connected, background tasks started, router ready.
/// Nothing is served until [`App::run`]; dropping an `App` without running it leaves its
/// background tasks to the runtime, so run it (tests included).
pub struct App {
    config: Config,
    tasks: Supervisor,
    realtime: Arc<Realtime>,
    deliverer: Deliverer,
    relay: Relay,
    router: axum::Router,
}

impl App {
    pub async fn build(config: Config) -> Result<App, StartError> {
        let secret = jwt_secret(&config)?;
        let tasks = Supervisor::new();
        let pg = store::PgOptions {
            pool_size: config.database_pool_size,
            pooler: config.database_pooler,
            migration_url: config.migration_database_url.clone(),
        };
        let store =
            store::connect_with(&config.database_url, &pg, config.write_batch.into()).await?;
        tracing::info!(backend = store.backend(), "database ready");
        if let Some(upkeep) = store.upkeep() {
            tasks.spawn("store upkeep", upkeep);
        }
        let redis = match (&config.redis_url, config.redis_cluster.as_slice()) {
            (Some(url), _) => Some(RedisTarget::Single(url.clone())),
            (None, []) => None,
            (None, nodes) => Some(RedisTarget::Cluster(nodes.to_vec())),
        };
        let bus: Arc<dyn Bus> = match redis {
            None => Arc::new(InProcessBus::new(4096)),
            Some(target) => {
                let bus = RedisBus::start(
                    RedisSettings {
                        target,
                        check_every: config.bus_check_interval,
                        presence_ttl: config.presence_ttl,
                        queue: 65_536,
                        queue_bytes: 64 << 20,
                    },
                    &tasks,
                )?;
                bus.wait_up(Duration::from_secs(5)).await;
                bus
            }
        };
        let relay = Relay::start(
            store.clone(),
            bus.clone(),
            RelaySettings {
                scan_every: config.relay_scan_interval,
                repair_after: config.relay_repair_after,
                retention: config.log_retention,
                prune_every: config.prune_interval,
                refresh_ttl: config.refresh_token_ttl,
                crash_after_commit: config.crash_after_commit(),
                ..RelaySettings::default()
            },
            &tasks,
        );
        let tokens = Arc::new(TokenService::new(
            &secret,
            config.access_token_ttl,
            config.refresh_token_ttl,
        ));
        let realtime = Realtime::start(
            store.clone(),
            &bus,
            tokens.clone(),
            realtime::Settings::from_config(&config),
            &tasks,
        );
        let services = Services {
            store,
            relay: relay.clone(),
            tokens,
            hashing: Arc::new(crate::service::PasswordHashing::for_this_machine()),
            webhooks: Arc::new(webhook_policy(&config, &secret)?),
        };
        let retry_base = config
            .webhook_retry_base
            .clamp(Duration::from_millis(1), Duration::from_secs(86_400));
        let deliverer = Deliverer::start(
            services.clone(),
            // Bounded so that no setting, however large, overflows a timestamp.
            DelivererSettings {
                lease: config
                    .webhook_lease
                    .clamp(Duration::from_millis(300), Duration::from_secs(3600)),
                poll: config
                    .webhook_poll_interval
                    .clamp(Duration::from_millis(10), Duration::from_secs(60)),
                retry_base,
                retry_max: config
                    .webhook_retry_max
                    .clamp(retry_base, Duration::from_secs(86_400)),
                disable_after: config.webhook_disable_after,
            },
            &tasks,
        );
        let hub = realtime.hub.clone();
        let telemetry =
            Telemetry::install()?.with_scrape_hook(Arc::new(move || hub.record_gauges()));
        telemetry.spawn_upkeep(&tasks);
        if config.fault_background_panic() {
            tasks.spawn("fault injection", async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                panic!("fault injection: a background task dies");
            });
        }
        let router = http::router(
            AppState {
                services,
                bus,
                telemetry,
                tasks: tasks.clone(),
                limits: Arc::new(EdgeLimits {
                    auth: AuthLimits {
                        per_ip: KeyedLimiter::per_minute(config.auth_limit_per_ip),
                        per_email_at_ip: KeyedLimiter::per_minute(config.auth_limit_per_email),
                        per_email: KeyedLimiter::per_minute(config.auth_limit_per_account),
                    },
                    member_by_email: KeyedLimiter::per_minute(config.member_email_limit_per_user),
                    trust_forwarded: config.trust_forwarded_for,
                }),
            },
            config.max_body_bytes,
            realtime.router(),
        );
        Ok(App {
            config,
            tasks,
            realtime,
            deliverer,
            relay,
            router,
        })
    }

    /// Serves on `listener` until `shutdown` resolves, then drains within
    /// `config.drain_timeout`: one deadline for in-flight requests, socket closes, presence and
    /// the background tasks.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), StartError> {
        let App {
            config,
            tasks,
            realtime,
            deliverer,
            relay,
            router,
        } = self;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "listening");
        let stop = CancellationToken::new();
        let serving = tokio::spawn(http::serve::serve(
            listener,
            router,
            ServeSettings {
                header_timeout: config.header_timeout,
                // Two heartbeats' worth, as a socket's ping timeout.
                unacked_timeout: Some(config.ws_ping_interval.max(Duration::from_secs(1)) * 2),
            },
            stop.clone(),
        ));
        shutdown.await;
        tracing::info!("shutting down");
        let deadline = tokio::time::Instant::now() + config.drain_timeout;
        // Sockets are not requests: close them (1001) so clients resume on another instance, and
        // refuse new upgrades from now on.
        realtime.shutdown();
        stop.cancel();
        let drained = async {
            if let Err(e) = serving.await {
                tracing::warn!(error = %e, "the HTTP server task failed");
            }
            realtime.closed().await;
            realtime.retire().await;
            tasks.shutdown().await;
            deliverer.release().await;
            relay.release_leases().await;
        };
        if tokio::time::timeout_at(deadline, drained).await.is_err() {
            tracing::warn!("drain time is up; exiting with work in flight");
        } else {
            tracing::info!("stopped");
        }
        Ok(())
    }
}

/// Applies the migrations and exits.
pub async fn migrate(database_url: &str) -> Result<(), StartError> {
    // Migrating needs one connection at a time.
    let store = store::connect(database_url, 2).await?;
    tracing::info!(backend = store.backend(), "migrations applied");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
