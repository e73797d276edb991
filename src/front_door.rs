//! The front door every call of the core passes: who is calling and may they (authorize),
//! does the call fit the caller's limits (admit, settle, stream caps), and is this replica
//! still taking calls (draining) and how many model calls wait on it (queue depth). It also
//! counts admissions, rejections and settled tokens for the dashboard's traffic charts.
//!
//! Services hold it beside what else they use (the store, the model catalogue, their
//! settings); it holds nothing about any one service.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tonic::Request;

use crate::auth::{Authenticator, Principal};
use crate::dashboard::DashboardSessions;
use crate::dashboard::traffic::Traffic;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::events::EventBus;
use crate::limits::{Admission, CapKind, Charge, Quota, RateLimiter, StreamCaps, StreamLease};
use crate::quotas::Quotas;
use crate::spend::{BudgetWindow, Settled, SpendRecord, SpendSettings};
use crate::store::pressure::StoragePressure;

/// The configured limits that apply to a key without its own.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DefaultLimits {
    pub(crate) requests_per_minute: u64,
    pub(crate) tokens_per_minute: u64,
    pub(crate) context_tokens_per_minute: u64,
}

/// The limits of keys that set none of their own.
#[derive(Debug, Clone)]
pub(crate) struct LimitSettings {
    pub(crate) per_minute: DefaultLimits,
    /// Caps on streams and event subscriptions open at once.
    pub(crate) stream_caps: StreamCaps,
    /// The quotas of keys that set none of their own.
    pub(crate) quotas: Quotas,
    /// The clock budgets read, how long the usage ledger keeps days, and the gateway-wide
    /// budget.
    pub(crate) spend: SpendSettings,
}

pub(crate) struct FrontDoor {
    auth: Authenticator,
    limits: RateLimiter,
    /// Web dashboard sign-ins: a call may name one instead of a credential.
    sign_ins: Arc<DashboardSessions>,
    /// Per-minute counts for the dashboard, which reads them.
    traffic: Arc<Traffic>,
    settings: LimitSettings,
    queue_depth: AtomicU64,
    draining: AtomicBool,
    /// Whether Redis has room for a key's new sessions, messages and cron jobs (set once, as
    /// the core is built; none until then).
    pressure: OnceLock<Arc<StoragePressure>>,
    /// Where budget thresholds are announced (set once, as the core is built).
    events: OnceLock<EventBus>,
}

impl FrontDoor {
    pub(crate) fn new(
        auth: Authenticator,
        limits: RateLimiter,
        sign_ins: Arc<DashboardSessions>,
        traffic: Arc<Traffic>,
        settings: LimitSettings,
    ) -> Self {
        Self {
            auth,
            limits,
            sign_ins,
            traffic,
            settings,
            queue_depth: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            pressure: OnceLock::new(),
            events: OnceLock::new(),
        }
    }

    /// Puts the storage-pressure policy in force (once).
    pub(crate) fn set_pressure(&self, pressure: Arc<StoragePressure>) {
        if self.pressure.set(pressure).is_err() {
            tracing::warn!("the storage-pressure policy was set twice; the first stays");
        }
    }

    pub(crate) fn pressure(&self) -> &StoragePressure {
        self.pressure
            .get_or_init(|| StoragePressure::off("no storage-pressure policy is configured"))
    }

    /// Refuses what would store more for `principal` while Redis is short of memory (see
    /// [`StoragePressure::check_growth`]); costs no round trip.
    pub(crate) fn check_growth(&self, principal: &Principal) -> ApiResult<()> {
        self.pressure().check_growth(principal.owner_id())
    }

    /// The key authenticator, for services that change keys (its cache must forget them).
    pub(crate) fn auth(&self) -> &Authenticator {
        &self.auth
    }

    /// Counts a wrong credential from `client` as a guess: `error` while the address has guessed
    /// little, 429 once it has guessed too often (and for every guess while it is blocked).
    pub(crate) async fn guessed_wrong(&self, client: &str, error: ApiError) -> ApiError {
        match self.limits.check_client(client) {
            Err(blocked) => blocked,
            Ok(()) => self.limits.auth_failed(client, error).await,
        }
    }

    /// The address a call came from, as the guard counts it. An edge forwards its client's
    /// (`x-openclaw-client-ip`), believed only beside the edge's proof of the internal token
    /// or a client certificate the listener verified (mutual TLS); any other caller is known
    /// by its socket, whatever it claims.
    pub(crate) fn client_address<T>(&self, request: &Request<T>) -> String {
        let metadata = request.metadata();
        let from_edge = request.extensions().get::<InProcessEdge>().is_some()
            || self.auth.is_edge(metadata)
            || request.peer_certs().is_some_and(|certs| !certs.is_empty());
        from_edge
            .then(|| metadata.get(openclaw_runtime::forwarding::CLIENT_IP))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<std::net::IpAddr>().ok())
            .or_else(|| request.remote_addr().map(|a| a.ip()))
            .map_or_else(|| "unknown".into(), |ip| ip.to_string())
    }

    /// The rate limiter, for services that report on it.
    pub(crate) fn limits(&self) -> &RateLimiter {
        &self.limits
    }

    /// Who is calling, and may they use `scope`? A valid credential is judged by its own
    /// limits only, never by its address. A wrong one is a guess: guesses count against the
    /// client's address (the brute-force guard), and an address that made too many gets 429
    /// for every further guess. A call with no credential at all guesses nothing and is only
    /// told to send one.
    pub(crate) async fn authorize<T>(
        &self,
        request: &Request<T>,
        scope: Scope,
    ) -> ApiResult<Principal> {
        if self.is_draining() {
            // Refused before any work: the edge may safely send it to another core.
            return Err(ApiError::unavailable(
                "This core replica is shutting down; retry and another replica will answer",
            )
            .with_retry_after(std::time::Duration::from_secs(1))
            .with_metadata(vec![("openclaw-retry-elsewhere", "1".to_string())]));
        }
        let metadata = request.metadata();
        // The dashboard's calls name a signed-in session instead of a credential.
        let authenticated = match self.sign_ins.resolve(metadata).await {
            Some(resolved) => resolved,
            None => self.auth.authenticate(metadata).await,
        };
        let principal = match authenticated {
            Ok(principal) => principal,
            Err(err)
                if err.code == ErrorCode::Unauthorized
                    && (Authenticator::presents_credential(metadata)
                        || DashboardSessions::id(metadata).is_some()) =>
            {
                return Err(self.guessed_wrong(&self.client_address(request), err).await);
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
    pub(crate) async fn enter<T>(
        &self,
        request: &Request<T>,
        scope: Scope,
    ) -> ApiResult<(Principal, Admission)> {
        let principal = self.authorize(request, scope).await?;
        let admission = self.admit(&principal, Charge::default()).await?;
        Ok((principal, admission))
    }

    /// Admits one request of `principal` costing `charge` against its key's limits. Requests
    /// that call no model (reads, stores) are never refused for the key's budget.
    pub(crate) async fn admit(
        &self,
        principal: &Principal,
        charge: Charge,
    ) -> ApiResult<Admission> {
        self.admit_within(principal, charge, false).await
    }

    /// Admits a model call of `principal`: against its key's limits and, in the same
    /// decision, its key's budget (reserving `charge.cost_micros` while the call runs).
    pub(crate) async fn admit_call(
        &self,
        principal: &Principal,
        charge: Charge,
    ) -> ApiResult<Admission> {
        self.admit_within(principal, charge, true).await
    }

    async fn admit_within(
        &self,
        principal: &Principal,
        charge: Charge,
        budgeted: bool,
    ) -> ApiResult<Admission> {
        let Principal::Key(key) = principal else {
            return Ok(Admission::unlimited());
        };
        // A call that can cost nothing (a free model) is never held to a budget, and costs
        // the budgets nothing to check.
        let budgeted = budgeted && charge.cost_micros > 0;
        let now = self.settings.spend.clock.now();
        let budget = key
            .budget
            .as_ref()
            .filter(|_| budgeted)
            .map(|budget| budget.at(now));
        let gateway = self
            .settings
            .spend
            .gateway_budget
            .as_ref()
            .filter(|_| budgeted)
            .map(|budget| budget.at(now));
        let quota = self.quota(principal);
        let admitted = match gateway {
            None => self.limits.admit(&key.id, quota, charge, budget).await,
            Some(gateway) => {
                self.admit_both(&key.id, quota, charge, budget, gateway)
                    .await
            }
        };
        match &admitted {
            Ok(_) => self.traffic.admitted(),
            Err(err) if err.code == ErrorCode::RateLimitExceeded => self.traffic.rejected(),
            Err(_) => {}
        }
        admitted
    }

    /// Admits a model call against its key (limits and budget) and, at the same time, the
    /// gateway-wide budget: two scripts sent together on the same connection, so no round
    /// trip is added. Each decides its own budget exactly; when one refuses, what the other
    /// reserved is given back at once (settled to nothing), so a refused call holds no cost.
    async fn admit_both(
        &self,
        key: &str,
        quota: Quota,
        charge: Charge,
        budget: Option<BudgetWindow>,
        gateway: BudgetWindow,
    ) -> ApiResult<Admission> {
        let (own, all) = tokio::join!(
            self.limits.admit(key, quota, charge, budget),
            self.limits.admit_gateway(charge.cost_micros, gateway),
        );
        match (own, all) {
            (Ok(mut own), Ok(all)) => {
                own.gateway = Some(Box::new(all));
                Ok(own)
            }
            (Ok(own), Err(refused)) => {
                self.limits.settle(&own, Charge::default(), None).await;
                Err(refused)
            }
            (Err(refused), Ok(all)) => {
                self.limits.settle(&all, Charge::default(), None).await;
                Err(refused)
            }
            (Err(refused), Err(_)) => Err(refused),
        }
    }

    /// Replaces the admission's reservation with what the model really used, records the
    /// call (`record`) in the usage ledger and against the key's budget (and against the
    /// gateway's, when one is configured, in a second script sent together with the first),
    /// and announces the budget thresholds it crossed first in the period.
    pub(crate) async fn settle(
        &self,
        admission: &Admission,
        used: Charge,
        record: Option<&SpendRecord>,
    ) {
        if admission.key.is_some() {
            self.traffic.tokens(used.tokens);
        }
        let gateway = admission.gateway.as_deref().map(|gateway| {
            let record = record.map(|record| SpendRecord {
                budget: gateway.budget.as_deref().cloned(),
                ..record.clone()
            });
            (gateway, record)
        });
        let settle_gateway = async {
            match &gateway {
                Some((gateway, record)) => Some(
                    self.limits
                        .settle(gateway, Charge::default(), record.as_ref())
                        .await,
                ),
                None => None,
            }
        };
        let (settled, gateway_settled) =
            tokio::join!(self.limits.settle(admission, used, record), settle_gateway);
        if let (Some(key), Some(budget)) = (&admission.key, record.and_then(|r| r.budget.as_ref()))
        {
            self.announce(key, budget, settled).await;
        }
        if let (Some(settled), Some((gateway, Some(record)))) = (gateway_settled, &gateway)
            && let (Some(key), Some(budget)) = (&gateway.key, &record.budget)
        {
            self.announce(key, budget, settled).await;
        }
    }

    /// Publishes one event per threshold of `key`'s budget that a settle crossed first.
    async fn announce(&self, key: &str, budget: &BudgetWindow, settled: Settled) {
        for permille in settled.crossed_permille {
            let event = crate::spend::threshold_event(key, budget, permille, settled.spent_micros);
            match self.events.get() {
                Some(events) => events.announce(event).await,
                None => tracing::warn!(
                    key,
                    "a budget threshold was crossed with no event bus to announce it"
                ),
            }
        }
    }

    /// Where budget thresholds are announced (set once, as the core is built).
    pub(crate) fn set_events(&self, events: EventBus) {
        let _ = self.events.set(events);
    }

    /// How the gateway reads time and keeps the usage ledger.
    pub(crate) fn spend_settings(&self) -> &SpendSettings {
        &self.settings.spend
    }

    /// The limits that apply to the caller.
    pub(crate) fn quota(&self, principal: &Principal) -> Quota {
        let d = self.settings.per_minute;
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

    /// The quotas on what the caller keeps stored: its key's own over the configured defaults.
    pub(crate) fn quotas(&self, principal: &Principal) -> Quotas {
        self.settings.quotas.for_principal(principal)
    }

    /// The configured quotas, for keys without their own.
    pub(crate) fn default_quotas(&self) -> Quotas {
        self.settings.quotas
    }

    /// The caller's cap of open streams of `kind`.
    fn stream_cap(&self, principal: &Principal, kind: CapKind) -> u64 {
        let own = match principal {
            Principal::Key(key) => match kind {
                CapKind::Streams => key.limits.concurrent_streams,
                CapKind::Subscriptions => key.limits.event_subscriptions,
            },
            Principal::Internal => None,
        };
        own.unwrap_or_else(|| self.settings.stream_caps.cap(kind))
    }

    /// Takes a lease on the caller's cap of open streams of `kind` (none for the
    /// internal token, which is not limited), or refuses the stream. Hold the guard
    /// for as long as the stream is open.
    pub(crate) async fn open_stream(
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
                    self.settings.stream_caps.lease_ttl(),
                )
                .await
                .map(Some),
        }
    }

    /// Model calls waiting or running on this replica.
    pub(crate) fn queue_depth(&self) -> u64 {
        self.queue_depth.load(Ordering::Relaxed)
    }

    /// Counts a model call as waiting or running until the guard drops.
    pub(crate) fn enqueue(self: &Arc<Self>) -> QueueSlot {
        self.queue_depth.fetch_add(1, Ordering::Relaxed);
        QueueSlot(self.clone())
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

pub(crate) struct QueueSlot(Arc<FrontDoor>);

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.0.queue_depth.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Marks a call made by the REST edge of this same process (a combined replica): no socket in
/// between, and the client address it forwards is believed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InProcessEdge;

/// What a call needs beyond a valid credential.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scope {
    /// An API key with this scope (or the internal token).
    Named(&'static str),
    /// The internal token only.
    Internal,
    /// Any valid credential: calls that only describe the caller itself.
    Any,
}
