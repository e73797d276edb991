//! Builds the core from its configuration and serves it on a bound listener.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::auth::Authenticator;
use crate::completions::Completions;
use crate::config::CoreConfig;
use crate::cron::scheduler::CronScheduler;
use crate::cron::store::{CronStore, EmbeddedCronStore, RedisCronStore};
use crate::cron::{CronContext, Crons};
use crate::dashboard::Dashboard;
use crate::events::{Event, EventBus, EventSettings, Events, REPLICA_DRAINING};
use crate::gateway::{DefaultLimits, Gateway};
use crate::keys::Keys;
use crate::limits::{LocalLimits, RateLimiter, RedisDownPolicy, RedisLimits};
use crate::proto::completion_service_server::CompletionServiceServer;
use crate::proto::cron_service_server::CronServiceServer;
use crate::proto::dashboard_service_server::DashboardServiceServer;
use crate::proto::event_service_server::EventServiceServer;
use crate::proto::key_service_server::KeyServiceServer;
use crate::proto::session_service_server::SessionServiceServer;
use crate::proto::system_service_server::SystemServiceServer;
use crate::providers::ModelCatalog;
use crate::sessions::Sessions;
use crate::store::{EmbeddedStore, RedisStore, RedisStoreConfig, Store};
use crate::system::System;

/// File name of the embedded store inside the data folder.
pub const EMBEDDED_DB_FILE: &str = "gateway.redb";

/// What lives in the state store beside the `Store` itself: system events and cron jobs.
pub struct Schedules {
    pub events: EventBus,
    pub cron: Arc<dyn CronStore>,
    /// The Redis connection, when state is shared: dashboard sessions and traffic counts use it.
    pub redis: Option<redis::aio::ConnectionManager>,
}

/// The store, the rate limiter that goes with it (shared through Redis, or in
/// memory), and the event stream and cron store kept in the same backend.
pub async fn open_store(
    config: &CoreConfig,
) -> anyhow::Result<(Arc<dyn Store>, RateLimiter, Schedules)> {
    match &config.redis_url {
        Some(url) => {
            let store = RedisStore::connect(RedisStoreConfig {
                url: url.clone(),
                connect_timeout: config.redis_timeout(),
                response_timeout: config.redis_timeout(),
            })
            .await
            .context("configuring the Redis store")?;
            if let Err(err) = store.ping().await {
                tracing::warn!(error = %err, "Redis does not answer yet; requests fail with UNAVAILABLE until it does");
            }
            tracing::info!("state store: redis (shared by every replica)");
            let fallback = match config.rate_limit_redis_down {
                RedisDownPolicy::Closed => None,
                RedisDownPolicy::Open => Some((LocalLimits::default(), config.core_replicas)),
            };
            tracing::info!(policy = ?config.rate_limit_redis_down, "rate limits: shared sliding window in Redis");
            let limiter =
                RateLimiter::new(Arc::new(RedisLimits::new(store.connection())), fallback)
                    .with_timeout(config.redis_timeout());
            let event_settings = EventSettings {
                max_len: config.cron.events_max_len,
            };
            let schedules = Schedules {
                events: EventBus::redis(store.connection(), url, event_settings)
                    .context("configuring the event stream")?,
                cron: Arc::new(RedisCronStore::new(
                    store.connection(),
                    config.cron.events_max_len,
                )),
                redis: Some(store.connection()),
            };
            Ok((Arc::new(store), limiter, schedules))
        }
        None => {
            let path = config.data_dir.join(EMBEDDED_DB_FILE);
            let store = EmbeddedStore::open(&path)
                .with_context(|| format!("opening the embedded store at {}", path.display()))?;
            tracing::info!(path = %path.display(), "state store: embedded (single process; set OPENCLAW_REDIS_URL to scale out)");
            let limiter = RateLimiter::new(Arc::new(LocalLimits::default()), None);
            let events = EventBus::in_memory(EventSettings {
                max_len: config.cron.events_max_len,
            });
            let cron = EmbeddedCronStore::open(store.database(), events.clone())
                .context("opening the cron tables of the embedded store")?;
            let schedules = Schedules {
                events,
                cron: Arc::new(cron),
                redis: None,
            };
            Ok((Arc::new(store), limiter, schedules))
        }
    }
}

/// The providers and models the configuration declares (`--providers-file`, or the built-in zai).
pub fn model_catalog(config: &CoreConfig) -> anyhow::Result<ModelCatalog> {
    crate::providers::load_catalog(config)
}

pub async fn build(config: &CoreConfig) -> anyhow::Result<Arc<Gateway>> {
    let (store, limits, schedules) = open_store(config).await?;
    let shared = schedules.redis.clone();
    if let Some(conn) = &shared {
        limits.traffic.share_through(conn.clone());
    }
    if config.internal_token.is_none() {
        tracing::warn!("OPENCLAW_INTERNAL_TOKEN is not set: key administration is disabled");
    }
    let auth = Authenticator::new(store.clone(), config.internal_token.clone())
        .with_timeout(config.redis_timeout());
    let models = model_catalog(config)?;
    crate::tokenizer::warm_up();
    let mut gateway = Gateway::new(
        store,
        auth,
        limits,
        models,
        DefaultLimits {
            requests_per_minute: config.default_requests_per_minute,
            tokens_per_minute: config.default_tokens_per_minute,
            context_tokens_per_minute: config.default_context_tokens_per_minute,
        },
        config.default_max_tokens,
        // A turn's lock outlives the longest model call it may wait for.
        config.provider_timeout() + std::time::Duration::from_secs(10),
        config.replica(),
        schedules.events,
        CronContext {
            store: schedules.cron,
            settings: config.cron,
        },
    );
    if let Some(fresh) = Arc::get_mut(&mut gateway) {
        fresh.idempotency_retention =
            std::time::Duration::from_secs(config.idempotency_retention_secs.max(1));
        fresh.stream_caps = config.stream_caps;
        if let Some(conn) = shared {
            fresh.dashboard.store = Arc::new(
                crate::dashboard::sessions::RedisDashboardSessions::new(conn),
            );
        }
    }
    Ok(gateway)
}

/// Serves the gRPC API on `listener` until `shutdown` resolves, then lets
/// in-flight calls finish.
pub async fn run(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<SessionServiceServer<Sessions>>().await;
    watch_readiness(gateway.clone(), health.clone());
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building gRPC reflection")?;
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(std::time::Duration::from_secs(60)));
    let scheduler = CronScheduler::start(gateway.clone());
    let draining = gateway.clone();
    let stopping = scheduler.clone();
    let shutdown = async move {
        shutdown.await;
        draining.start_draining();
        health
            .set_not_serving::<SessionServiceServer<Sessions>>()
            .await;
        // Subscribers hear it, then their streams end so they reconnect elsewhere.
        let mut event = Event::new(
            REPLICA_DRAINING,
            format!("Replica {} is draining", draining.replica),
        );
        event.replica = draining.replica.clone();
        let published = match draining.events.publish(event).await {
            Ok(id) => Some(id),
            Err(err) => {
                tracing::warn!(error = %err, "could not announce the drain");
                None
            }
        };
        draining.events.close_after(published).await;
        // No new claims; the runs in progress finish.
        stopping.stop().await;
    };
    Server::builder()
        .tcp_nodelay(true)
        .layer(crate::observe::ObserveLayer)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(SessionServiceServer::new(Sessions::new(gateway.clone())))
        .add_service(CompletionServiceServer::new(Completions::new(
            gateway.clone(),
        )))
        .add_service(KeyServiceServer::new(Keys::new(gateway.clone())))
        .add_service(CronServiceServer::new(Crons::new(
            gateway.clone(),
            scheduler,
        )))
        .add_service(EventServiceServer::new(Events::new(gateway.clone())))
        .add_service(DashboardServiceServer::new(Dashboard::new(gateway.clone())))
        .add_service(SystemServiceServer::new(System::new(gateway)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("serving gRPC")
}

/// Keeps the gRPC health service (what readiness probes ask) in step with the
/// store: NOT_SERVING while it does not answer, and for good once draining.
fn watch_readiness(gateway: Arc<Gateway>, health: tonic_health::server::HealthReporter) {
    use tonic_health::ServingStatus;
    tokio::spawn(async move {
        let mut last = None;
        loop {
            // With the fail-open limit policy a replica keeps serving what it
            // can without Redis, so it stays ready; otherwise it steps aside.
            let started = std::time::Instant::now();
            let reachable = gateway.store.ping().await.is_ok();
            metrics::histogram!("openclaw_store_ping_seconds", "store" => gateway.store.name())
                .record(started.elapsed().as_secs_f64());
            metrics::gauge!("openclaw_store_up", "store" => gateway.store.name())
                .set(if reachable { 1.0 } else { 0.0 });
            let ready = !gateway.is_draining() && (reachable || gateway.limits.policy() == "open");
            if last != Some(ready) {
                let status = if ready {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                health.set_service_status("", status).await;
                health
                    .set_service_status("openclaw.v1.SessionService", status)
                    .await;
                if last.is_some() {
                    tracing::info!(ready, "readiness changed");
                }
                last = Some(ready);
            }
            if gateway.is_draining() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        }
    });
}

/// The core's readiness for the metrics port's `/readyz`.
pub fn readiness_check(gateway: Arc<Gateway>) -> gateway_rest::ops::metrics::ReadinessCheck {
    Arc::new(move || {
        let gateway = gateway.clone();
        Box::pin(async move {
            if gateway.is_draining() {
                return Err("draining".to_string());
            }
            gateway
                .store
                .ping()
                .await
                .map_err(|err| format!("the store does not answer: {err}"))
        })
    })
}
