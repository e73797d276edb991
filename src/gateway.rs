//! The core's shared state: one value, cloned cheaply into every gRPC service.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use tonic::{Request, Response};

use crate::auth::{Authenticator, Principal};
use crate::error::ApiResult;
use crate::limits::{Admission, CapKind, Charge, Quota, RateLimiter, StreamCaps, StreamLease};
use crate::providers::ModelCatalog;
use crate::store::Store;

/// The configured limits that apply to a key without its own.
#[derive(Debug, Clone, Copy)]
pub struct DefaultLimits {
    pub requests_per_minute: u64,
    pub tokens_per_minute: u64,
    pub context_tokens_per_minute: u64,
}

pub struct Gateway {
    pub store: Arc<dyn Store>,
    pub auth: Authenticator,
    pub limits: RateLimiter,
    pub models: ModelCatalog,
    pub default_limits: DefaultLimits,
    /// Caps on streams and event subscriptions open at once, for keys without their own.
    pub stream_caps: StreamCaps,
    /// Completion tokens reserved (and asked of the model) when a request names no maxTokens.
    pub default_max_tokens: u32,
    /// How long a session's turn lock is leased: longer than any model call.
    pub turn_lease: std::time::Duration,
    pub replica: String,
    /// How long a send's result is kept for a client repeating its request id.
    pub idempotency_retention: std::time::Duration,
    /// System events: published here, delivered by `EventService`.
    pub events: crate::events::EventBus,
    /// Cron jobs' store and scheduler settings.
    pub cron: crate::cron::CronContext,
    /// Web dashboard sign-ins (in memory until the server configures the shared store).
    pub dashboard: crate::dashboard::DashboardSessions,
    started: Instant,
    queue_depth: AtomicU64,
    draining: AtomicBool,
}

impl Gateway {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn Store>,
        auth: Authenticator,
        limits: RateLimiter,
        models: ModelCatalog,
        default_limits: DefaultLimits,
        default_max_tokens: u32,
        turn_lease: std::time::Duration,
        replica: String,
        events: crate::events::EventBus,
        cron: crate::cron::CronContext,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            auth,
            limits,
            models,
            default_limits,
            stream_caps: StreamCaps::default(),
            default_max_tokens,
            turn_lease,
            replica,
            idempotency_retention: std::time::Duration::from_secs(24 * 3600),
            events,
            cron,
            dashboard: Default::default(),
            started: Instant::now(),
            queue_depth: AtomicU64::new(0),
            draining: AtomicBool::new(false),
        })
    }

    /// Who is calling, and may they use `scope`? Failed attempts count
    /// against the client's address (the brute-force guard).
    pub async fn authorize<T>(&self, request: &Request<T>, scope: Scope) -> ApiResult<Principal> {
        if self.is_draining() {
            // Refused before any work: the edge may safely send it to another core.
            return Err(crate::error::ApiError::unavailable(
                "This core replica is shutting down; retry and another replica will answer",
            )
            .with_retry_after(std::time::Duration::from_secs(1))
            .with_metadata(vec![("openclaw-retry-elsewhere", "1".to_string())]));
        }
        let client = client_address(request);
        self.limits.check_client(&client)?;
        // The dashboard's calls name a signed-in session instead of a credential.
        let authenticated = match self.dashboard.resolve(self, request.metadata()).await {
            Some(resolved) => resolved,
            None => self.auth.authenticate(request.metadata()).await,
        };
        let principal = match authenticated {
            Ok(principal) => principal,
            Err(err) if err.code == crate::error::ErrorCode::Unauthorized => {
                return Err(self.limits.auth_failed(&client, err).await);
            }
            Err(err) => return Err(err),
        };
        match scope {
            Scope::Internal => principal.require_internal()?,
            Scope::Named(name) => principal.require_scope(name)?,
            Scope::Any => {}
        }
        Ok(principal)
    }

    /// Authorizes the call and admits it as one request that uses no model.
    pub async fn enter<T>(
        &self,
        request: &Request<T>,
        scope: Scope,
    ) -> ApiResult<(Principal, Admission)> {
        let principal = self.authorize(request, scope).await?;
        let admission = self.admit(&principal, Charge::default()).await?;
        Ok((principal, admission))
    }

    /// Admits one request of `principal` costing `charge` against its key's limits.
    pub async fn admit(&self, principal: &Principal, charge: Charge) -> ApiResult<Admission> {
        match principal {
            Principal::Internal => Ok(Admission::unlimited()),
            Principal::Key(key) => {
                self.limits
                    .admit(&key.id, self.quota(principal), charge)
                    .await
            }
        }
    }

    /// The limits that apply to the caller.
    pub fn quota(&self, principal: &Principal) -> Quota {
        let d = self.default_limits;
        let own = match principal {
            Principal::Key(key) => key.limits.clone(),
            Principal::Internal => Default::default(),
        };
        Quota {
            requests: own.requests_per_minute.unwrap_or(d.requests_per_minute),
            tokens: own.tokens_per_minute.unwrap_or(d.tokens_per_minute),
            context: own
                .context_tokens_per_minute
                .unwrap_or(d.context_tokens_per_minute),
        }
    }

    /// The caller's cap of open streams of `kind`.
    pub fn stream_cap(&self, principal: &Principal, kind: CapKind) -> u64 {
        let own = match principal {
            Principal::Key(key) => match kind {
                CapKind::Streams => key.limits.concurrent_streams,
                CapKind::Subscriptions => key.limits.event_subscriptions,
            },
            Principal::Internal => None,
        };
        own.unwrap_or_else(|| self.stream_caps.cap(kind))
    }

    /// Takes a lease on the caller's cap of open streams of `kind` (none for the
    /// internal token, which is not limited), or refuses the stream. Hold the guard
    /// for as long as the stream is open.
    pub async fn open_stream(
        &self,
        principal: &Principal,
        kind: CapKind,
    ) -> ApiResult<Option<StreamLease>> {
        match principal {
            Principal::Internal => Ok(None),
            Principal::Key(key) => self
                .limits
                .open_stream(
                    &key.id,
                    kind,
                    self.stream_cap(principal, kind),
                    self.stream_caps.lease_ttl(),
                )
                .await
                .map(Some),
        }
    }

    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    pub fn queue_depth(&self) -> u64 {
        self.queue_depth.load(Ordering::Relaxed)
    }

    /// Counts a model call as waiting or running until the guard drops.
    pub fn enqueue(self: &Arc<Self>) -> QueueSlot {
        self.queue_depth.fetch_add(1, Ordering::Relaxed);
        QueueSlot(self.clone())
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

pub struct QueueSlot(Arc<Gateway>);

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.0.queue_depth.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a call needs beyond a valid credential.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    /// An API key with this scope (or the internal token).
    Named(&'static str),
    /// The internal token only.
    Internal,
    /// Any valid credential: calls that only describe the caller itself.
    Any,
}

/// The address a request came from: the edge forwards its client's as
/// `x-openclaw-client-ip`; direct gRPC callers are known by their socket.
pub(crate) fn client_address<T>(request: &Request<T>) -> String {
    request
        .metadata()
        .get("x-openclaw-client-ip")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64)
        .map(str::to_string)
        .or_else(|| request.remote_addr().map(|a| a.ip().to_string()))
        .unwrap_or_else(|| "unknown".into())
}

/// A response carrying the caller's remaining quota as metadata.
pub fn respond<T>(message: T, admission: &Admission) -> Response<T> {
    let mut response = Response::new(message);
    add_metadata(response.metadata_mut(), admission.headers());
    response
}

pub fn add_metadata(
    metadata: &mut tonic::metadata::MetadataMap,
    entries: Vec<(&'static str, String)>,
) {
    for (name, value) in entries {
        if let Ok(value) = tonic::metadata::MetadataValue::try_from(value.as_str()) {
            metadata.insert(name, value);
        }
    }
}
