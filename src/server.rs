//! Builds the core from its configuration and serves it on a bound listener.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::auth::Authenticator;
use crate::completions::{Completer, Completions};
use crate::config::CoreConfig;
use crate::cron::scheduler::CronScheduler;
use crate::cron::store::{CronStore, EmbeddedCronStore, RedisCronStore};
use crate::cron::{CronContext, Crons};
use crate::dashboard::sessions::{DashboardSessionStore, RedisDashboardSessions};
use crate::dashboard::traffic::Traffic;
use crate::dashboard::{Dashboard, DashboardSessions};
use crate::events::{Event, EventBus, EventSettings, Events, REPLICA_DRAINING};
use crate::front_door::{DefaultLimits, FrontDoor, LimitSettings};
use crate::inference::Inference;
use crate::keys::Keys;
use crate::limits::{LocalLimits, RateLimiter, RedisDownPolicy, RedisLimits};
use crate::proto::completion_service_server::CompletionServiceServer;
use crate::proto::cron_service_server::CronServiceServer;
use crate::proto::dashboard_service_server::DashboardServiceServer;
use crate::proto::event_service_server::EventServiceServer;
use crate::proto::key_service_server::KeyServiceServer;
use crate::proto::session_service_server::SessionServiceServer;
use crate::proto::system_service_server::SystemServiceServer;
use crate::proto::usage_service_server::UsageServiceServer;
use crate::providers::ModelCatalog;
use crate::quotas::Quotas;
use crate::sessions::Sessions;
use crate::sessions::retention::{Retention, start_sweep};
use crate::sessions::turn::Turns;
use crate::sessions::turn_lock::TurnLocks;
use crate::store::pressure::StoragePressure;
use crate::store::{EmbeddedStore, RedisStore, SharedConnection, Store};
use crate::system::System;
use crate::usage::Usage;

/// File name of the embedded store inside the data folder.
pub const EMBEDDED_DB_FILE: &str = "gateway.redb";

/// What lives in the state store beside the `Store` itself: system events and cron jobs.
pub struct Schedules {
    pub events: EventBus,
    pub cron: Arc<dyn CronStore>,
    /// The Redis connection, when state is shared: dashboard sessions and traffic counts use it.
    pub redis: Option<SharedConnection>,
}

/// The store, the rate limiter that goes with it (shared through Redis, or in
/// memory), and the event stream and cron store kept in the same backend.
pub async fn open_store(
    config: &CoreConfig,
) -> anyhow::Result<(Arc<dyn Store>, RateLimiter, Schedules)> {
    match config.redis()? {
        Some(redis) => {
            let store = RedisStore::connect(&redis)
                .await
                .context("configuring the Redis store")?;
            if let Err(err) = store.ping().await {
                if let Some(problem) = redis.startup_failure(&err.to_string()).await {
                    anyhow::bail!(problem);
                }
                tracing::warn!(error = %err, "Redis does not answer yet; requests fail with UNAVAILABLE until it does");
            }
            tracing::info!(
                topology = redis.mode(),
                tls = redis.uses_tls(),
                "state store: redis (shared by every replica)"
            );
            let fallback = match config.rate_limit_redis_down {
                RedisDownPolicy::Closed => None,
                RedisDownPolicy::Open => Some((LocalLimits::default(), config.core_replicas)),
            };
            tracing::info!(policy = ?config.rate_limit_redis_down, "rate limits: shared sliding window in Redis");
            let limits = RedisLimits::new(store.connection());
            match tokio::time::timeout(config.redis_timeout(), limits.preload()).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "could not load the rate-limit scripts; Redis loads each on its first use");
                }
                Err(_) => {
                    tracing::warn!(
                        "Redis did not load the rate-limit scripts in time; it loads each on its first use"
                    );
                }
            }
            let limiter =
                RateLimiter::new(Arc::new(limits), fallback).with_timeout(config.redis_timeout());
            let event_settings = EventSettings {
                max_len: config.cron.events_max_len,
            };
            let schedules = Schedules {
                events: EventBus::redis(store.connection(), &redis, event_settings),
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
            // Spend and the usage ledger are written through to the same file.
            let spend = crate::store::EmbeddedSpend::open(store.database())
                .context("opening the spend tables of the embedded store")?;
            let limiter = RateLimiter::new(
                Arc::new(LocalLimits::default().with_journal(Arc::new(spend))),
                None,
            );
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

/// The core, assembled from its configuration: the parts its services are made of. Each
/// service receives the parts it uses ([`CoreApi::start`]); none holds this.
pub(crate) struct Gateway {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) models: Arc<ModelCatalog>,
    /// This replica's name, in its runs, events and status.
    pub(crate) replica: String,
    door: Arc<FrontDoor>,
    inference: Arc<Inference>,
    events: EventBus,
    cron: Arc<CronContext>,
    sign_ins: Arc<DashboardSessions>,
    traffic: Arc<Traffic>,
    /// How long a session's turn lock is leased: longer than any model call.
    turn_lease: std::time::Duration,
    /// How long a send's result is kept for a client repeating its request id.
    idempotency_retention: std::time::Duration,
    /// How long sessions are kept, and how often expired ones are swept.
    retention: Retention,
    session_sweep_interval: std::time::Duration,
}

impl Gateway {
    fn is_draining(&self) -> bool {
        self.door.is_draining()
    }
}

pub(crate) async fn build(config: &CoreConfig) -> anyhow::Result<Arc<Gateway>> {
    let (store, limits, schedules) = open_store(config).await?;
    // Counted on the request path, summed over the replicas through Redis when it is shared.
    let traffic = Arc::new(Traffic::default());
    let sign_in_store: Arc<dyn DashboardSessionStore> = match &schedules.redis {
        Some(conn) => {
            traffic.share_through(conn.clone());
            Arc::new(RedisDashboardSessions::new(conn.clone()))
        }
        None => crate::dashboard::sessions::memory(),
    };
    if config.internal_token.is_none() {
        tracing::warn!("OPENCLAW_INTERNAL_TOKEN is not set: key administration is disabled");
    }
    let auth = Authenticator::new(store.clone(), config.internal_token.clone())
        .with_timeout(config.redis_timeout());
    let models = Arc::new(model_catalog(config)?);
    crate::tokenizer::warm_up();
    let sign_ins = Arc::new(DashboardSessions::new(
        sign_in_store,
        store.clone(),
        config.internal_token.clone(),
    ));
    let door = Arc::new(FrontDoor::new(
        auth,
        limits,
        sign_ins.clone(),
        traffic.clone(),
        LimitSettings {
            per_minute: DefaultLimits {
                requests_per_minute: config.default_requests_per_minute,
                tokens_per_minute: config.default_tokens_per_minute,
                context_tokens_per_minute: config.default_context_tokens_per_minute,
            },
            stream_caps: config.stream_caps,
            quotas: crate::quotas::Quotas::defaults(config),
            spend: crate::spend::SpendSettings {
                clock: crate::spend::SpendClock::with_offset(config.spend_clock_offset_seconds),
                ledger_retention: std::time::Duration::from_secs(
                    config.usage_retention_days * 24 * 3600,
                ),
                gateway_budget: config.gateway_budget()?,
            },
        },
    ));
    door.set_events(schedules.events.clone());
    config.storage.validate()?;
    door.set_pressure(match (store.storage_ledger(), &schedules.redis) {
        (Some(ledger), Some(conn)) => StoragePressure::start(config.storage, conn.clone(), ledger),
        _ => StoragePressure::off(
            "the embedded store keeps sessions on disk, not in Redis's memory: no storage-pressure policy applies",
        ),
    });
    let inference = Arc::new(Inference::new(
        door.clone(),
        models.clone(),
        config.default_max_tokens,
    ));
    let replica = config.replica();
    Ok(Arc::new(Gateway {
        cron: Arc::new(CronContext {
            store: schedules.cron,
            settings: config.cron,
            replica: replica.clone(),
        }),
        store,
        models,
        replica,
        door,
        inference,
        events: schedules.events,
        sign_ins,
        traffic,
        // A turn's lock outlives the longest model call it may wait for.
        turn_lease: config.provider_timeout() + std::time::Duration::from_secs(10),
        idempotency_retention: std::time::Duration::from_secs(
            config.idempotency_retention_secs.max(1),
        ),
        retention: Retention {
            defaults: Quotas::defaults(config),
        },
        session_sweep_interval: std::time::Duration::from_secs(config.session_sweep_interval_secs),
    }))
}

/// The largest request message a gRPC call may carry (tonic's default, stated so the error can
/// name it). The edge's body limit (1 MiB by default) keeps REST requests well below it.
pub const MAX_REQUEST_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The gRPC listener's TLS from the configuration: none, server TLS, or mutual TLS when a client
/// CA is set. Files are read now, so a wrong path stops the start with its name.
pub fn grpc_tls(config: &CoreConfig) -> anyhow::Result<Option<ServerTlsConfig>> {
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
    };
    let (cert, key) = match (&config.grpc_tls_cert, &config.grpc_tls_key) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) => {
            anyhow::ensure!(
                config.grpc_client_ca.is_none(),
                "OPENCLAW_GRPC_CLIENT_CA is set without OPENCLAW_GRPC_TLS_CERT and OPENCLAW_GRPC_TLS_KEY: \
                 mutual TLS needs the server's own certificate and key too"
            );
            return Ok(None);
        }
        _ => anyhow::bail!(
            "set both OPENCLAW_GRPC_TLS_CERT and OPENCLAW_GRPC_TLS_KEY for TLS on the gRPC address, or neither"
        ),
    };
    openclaw_runtime::tls::install_crypto_provider();
    let mut tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            read(cert, "gRPC certificate chain")?,
            read(key, "gRPC private key")?,
        ))
        // A client that opens a connection and never finishes the handshake is dropped.
        .timeout(std::time::Duration::from_secs(10));
    if let Some(ca) = &config.grpc_client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca, "gRPC client CA")?));
    }
    Ok(Some(tls))
}

/// The core's gRPC API, started: every service behind the core's own layers, the cron
/// scheduler and the health service. It is served over TCP ([`CoreApi::serve`]) and, in a
/// combined replica, called by the REST edge of the same process ([`CoreApi::in_process`]).
pub struct CoreApi {
    gateway: Arc<Gateway>,
    routes: Routes,
    health: tonic_health::server::HealthReporter,
    scheduler: Arc<CronScheduler>,
    /// What the edge of a combined replica calls directly.
    #[cfg_attr(not(feature = "rest"), allow(dead_code))]
    direct: Direct,
}

impl CoreApi {
    /// Starts the scheduler and the readiness watch, and assembles the services.
    pub async fn start(gateway: Arc<Gateway>) -> anyhow::Result<Self> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<SessionServiceServer<Sessions>>().await;
        watch_readiness(gateway.clone(), health.clone());
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building gRPC reflection")?;
        let core = &gateway;
        let locks = || {
            TurnLocks::new(
                core.store.clone(),
                core.turn_lease,
                core.idempotency_retention,
            )
        };
        let turns = Arc::new(Turns::new(
            core.door.clone(),
            core.inference.clone(),
            core.store.clone(),
            locks(),
        ));
        let sessions = || {
            Sessions::new(
                core.door.clone(),
                core.store.clone(),
                turns.clone(),
                core.retention,
            )
        };
        start_sweep(core.store.clone(), core.session_sweep_interval);
        let completer = Arc::new(Completer::new(
            core.inference.clone(),
            locks(),
            core.store.clone(),
            core.retention,
        ));
        let scheduler = CronScheduler::start(core.cron.clone(), core.store.clone(), sessions());
        let direct = Direct {
            sessions: Arc::new(sessions()),
            completions: Arc::new(Completions::new(core.door.clone(), completer)),
        };
        const LIMIT: usize = MAX_REQUEST_MESSAGE_BYTES;
        let mut routes = Routes::builder();
        routes
            .add_service(health_service)
            .add_service(reflection)
            .add_service(
                SessionServiceServer::from_arc(direct.sessions.clone())
                    .max_decoding_message_size(LIMIT),
            )
            .add_service(
                CompletionServiceServer::from_arc(direct.completions.clone())
                    .max_decoding_message_size(LIMIT),
            )
            .add_service(
                KeyServiceServer::new(Keys::new(
                    core.door.clone(),
                    core.store.clone(),
                    core.events.clone(),
                ))
                .max_decoding_message_size(LIMIT),
            )
            .add_service(
                CronServiceServer::new(Crons::new(
                    core.door.clone(),
                    core.models.clone(),
                    core.cron.clone(),
                    scheduler.clone(),
                ))
                .max_decoding_message_size(LIMIT),
            )
            .add_service(
                EventServiceServer::new(Events::new(core.door.clone(), core.events.clone()))
                    .max_decoding_message_size(LIMIT),
            )
            .add_service(
                DashboardServiceServer::new(Dashboard::new(
                    core.door.clone(),
                    core.store.clone(),
                    core.cron.store.clone(),
                    core.sign_ins.clone(),
                    core.traffic.clone(),
                ))
                .max_decoding_message_size(LIMIT),
            )
            .add_service(
                UsageServiceServer::new(Usage::new(core.door.clone(), core.store.clone()))
                    .max_decoding_message_size(LIMIT),
            )
            .add_service(
                SystemServiceServer::new(System::new(
                    core.door.clone(),
                    core.store.clone(),
                    core.cron.store.clone(),
                    core.models.clone(),
                    core.replica.clone(),
                ))
                .max_decoding_message_size(LIMIT),
            );
        Ok(Self {
            gateway,
            routes: routes.routes(),
            health,
            scheduler,
            direct,
        })
    }

    /// The API as a service the REST edge of this process calls directly: the same services
    /// behind the same layers as over TCP, without a socket, HTTP/2 framing or a task per call.
    /// Only a binary built with the edge (the `rest` feature) has one to hand it to.
    #[cfg(feature = "rest")]
    pub fn in_process(&self) -> gateway_rest::CoreService {
        // Calls from this process's own edge carry its clients' addresses, believed as such.
        let service = core_layers()
            .map_request(|mut request: http::Request<tonic::body::Body>| {
                request
                    .extensions_mut()
                    .insert(crate::front_door::InProcessEdge);
                request
            })
            .service(self.routes.clone());
        gateway_rest::CoreService::in_process(service).with_direct_calls(self.direct.clone())
    }

    /// Serves the API on `listener` (over TLS when `tls` is given, see [`grpc_tls`]) until
    /// `shutdown` resolves: then the replica announces its drain, stops claiming cron runs and
    /// lets the calls in flight finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        tls: Option<ServerTlsConfig>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            gateway: draining,
            routes,
            health,
            scheduler: stopping,
            direct: _,
        } = self;
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(std::time::Duration::from_secs(60)));
        let shutdown = async move {
            shutdown.await;
            draining.door.start_draining();
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
        let mut server = Server::builder();
        if let Some(tls) = tls {
            server = server
                .tls_config(tls)
                .context("configuring TLS on the gRPC address (check the certificate and key)")?;
        }
        server
            .tcp_nodelay(true)
            .layer(core_layers())
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .context("serving gRPC")
    }
}

/// What every call of the core's API passes through, over TCP and in-process alike: the metrics
/// and trace span of the call, then the oversized-message error.
fn core_layers() -> tower::ServiceBuilder<
    tower::layer::util::Stack<
        OversizedMessageLayer,
        tower::layer::util::Stack<crate::observe::ObserveLayer, tower::layer::util::Identity>,
    >,
> {
    tower::ServiceBuilder::new()
        .layer(crate::observe::ObserveLayer)
        .layer(OversizedMessageLayer)
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
            if let Ok(nodes) = gateway.store.nodes().await {
                for node in nodes {
                    metrics::gauge!(
                        "openclaw_redis_node_up",
                        "node" => node.address,
                        "role" => node.role
                    )
                    .set(if node.up { 1.0 } else { 0.0 });
                }
            }
            let ready =
                !gateway.is_draining() && (reachable || gateway.door.limits().policy() == "open");
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
pub fn readiness_check(gateway: Arc<Gateway>) -> openclaw_runtime::metrics::ReadinessCheck {
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

/// Turns tonic's bare refusal of an oversized request message (OUT_OF_RANGE, "decoded message
/// length too large") into the product's INVALID_REQUEST, whose details name the limit, so REST
/// and gRPC callers learn what to change.
#[derive(Debug, Clone, Copy, Default)]
struct OversizedMessageLayer;

impl<S> tower::Layer<S> for OversizedMessageLayer {
    type Service = OversizedMessage<S>;
    fn layer(&self, inner: S) -> Self::Service {
        OversizedMessage { inner }
    }
}

#[derive(Debug, Clone)]
struct OversizedMessage<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for OversizedMessage<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(match oversized_message(response.headers()) {
                Some(found) => too_large(&found).into_http(),
                None => response,
            })
        })
    }
}

/// The refusal of a request message over [`MAX_REQUEST_MESSAGE_BYTES`], `found` bytes long.
fn too_large(found: &dyn std::fmt::Display) -> tonic::Status {
    tonic::Status::from(crate::error::ApiError::invalid(
        "Request message too large",
        format!(
            "The request message is {found} bytes; a call may carry at most {MAX_REQUEST_MESSAGE_BYTES} bytes. \
             Send less in one call (fewer or shorter messages)"
        ),
    ))
}

/// The services whose calls the edge of a combined replica makes directly
/// ([`gateway_rest::DirectCalls`]): the same services the gRPC routes hold.
#[derive(Clone)]
struct Direct {
    sessions: Arc<Sessions>,
    completions: Arc<Completions>,
}

/// A direct call passes what a gRPC call passes through: the in-process mark (its client
/// address is believed), the bound on the message's size and the observation of the call.
#[cfg(feature = "rest")]
fn direct_call<R, T, F>(
    path: &'static str,
    mut request: tonic::Request<R>,
    call: impl FnOnce(tonic::Request<R>) -> F + Send + 'static,
) -> gateway_rest::Unary<T>
where
    R: prost::Message + Send + 'static,
    T: Send + 'static,
    F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send + 'static,
{
    request
        .extensions_mut()
        .insert(crate::front_door::InProcessEdge);
    Box::pin(crate::observe::observed(
        path,
        request,
        move |request| async move {
            let size = request.get_ref().encoded_len();
            if size > MAX_REQUEST_MESSAGE_BYTES {
                return Err(too_large(&size));
            }
            call(request).await
        },
    ))
}

#[cfg(feature = "rest")]
impl gateway_rest::DirectCalls for Direct {
    fn complete(
        &self,
        request: tonic::Request<crate::proto::CompleteRequest>,
    ) -> gateway_rest::Unary<crate::proto::CompleteResponse> {
        use crate::proto::completion_service_server::CompletionService as _;
        let completions = self.completions.clone();
        direct_call(
            "/openclaw.v1.CompletionService/Complete",
            request,
            move |request| async move { completions.complete(request).await },
        )
    }

    fn send_message(
        &self,
        request: tonic::Request<crate::proto::SendMessageRequest>,
    ) -> gateway_rest::Unary<crate::proto::SendMessageResponse> {
        use crate::proto::session_service_server::SessionService as _;
        let sessions = self.sessions.clone();
        direct_call(
            "/openclaw.v1.SessionService/SendMessage",
            request,
            move |request| async move { sessions.send_message(request).await },
        )
    }
}

/// The size tonic reports when it refused a request message over the decoding limit.
fn oversized_message(headers: &http::HeaderMap) -> Option<String> {
    const OUT_OF_RANGE: &[u8] = b"11";
    if headers.get("grpc-status")?.as_bytes() != OUT_OF_RANGE {
        return None;
    }
    let message = headers.get("grpc-message")?.to_str().ok()?;
    // `grpc-message` is percent-encoded on the wire.
    let message = percent_encoding::percent_decode_str(message).decode_utf8_lossy();
    let rest = message
        .split_once("decoded message length too large: found ")?
        .1;
    Some(rest.split(' ').next()?.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tonics_refusal_of_an_oversized_message_is_recognised() {
        let status = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 5000000 bytes, the limit is: 4194304 bytes",
        );
        let response = status.into_http::<tonic::body::Body>();
        assert_eq!(
            oversized_message(response.headers()).as_deref(),
            Some("5000000")
        );
        let other =
            tonic::Status::out_of_range("page 9 is past the end").into_http::<tonic::body::Body>();
        assert_eq!(oversized_message(other.headers()), None);
    }
}
