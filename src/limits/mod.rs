//! Per-key rate limits, summed over every replica: requests, tokens (prompt +
//! completion) and context (prompt tokens sent to models), each per minute.
//!
//! # Algorithm: a sliding-window log with reservations
//! Every admitted request is one entry `(time, tokens, context)` in the key's
//! log; an entry counts against the key for exactly [`WINDOW`] after it was
//! admitted. A request is admitted only if, counting every live entry plus
//! itself, all three sums stay within the key's limits. So in *every* window
//! of 60 s (not just aligned minutes) a key is admitted at most `requests`
//! requests and at most `tokens`/`context` *reserved* tokens: the bound is
//! exact, with no burst at window edges and no multiplication by the
//! replica count, because the log lives in Redis and one script decides.
//!
//! Token costs are known only after the model answers, so admission reserves
//! an estimate (the prompt counted with a real tokenizer, plus `maxTokens` or
//! the model's default) and [`RateLimiter::settle`] later replaces it with the
//! provider's reported usage (zero for a failed call). Settled usage can
//! exceed the reservation only if the provider reports more than was
//! reserved; the excess then delays later admissions.
//!
//! Time comes from the Redis server (`TIME` inside the script), never from
//! the replicas' clocks. A key's log holds at most `requests` entries.
//!
//! Beside the per-minute limits, [`leases`] caps how many streamed replies and
//! event subscriptions a key holds open at once, with leases in the same store.

mod leases;
mod local;
mod redis;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

pub use self::leases::{
    CapKind, DEFAULT_LEASE_TTL, LeaseDecision, Leased, StreamCaps, StreamLease,
};
pub use self::local::LocalLimits;
pub use self::redis::RedisLimits;

use crate::error::{ApiError, ApiResult, BudgetBreach, ErrorCode};
use crate::spend::{BudgetWindow, GATEWAY_BUDGET_KEY, Settled, SpendRecord, UsageRow};
use crate::store::StoreError;

/// How long an admitted request counts against its key.
pub const WINDOW: Duration = Duration::from_secs(60);

/// A key's limits per [`WINDOW`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub requests: u64,
    pub tokens: u64,
    pub context: u64,
}

/// What one request costs on admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Charge {
    pub tokens: u64,
    pub context: u64,
    /// The most the call can cost, in micro-dollars, reserved against the budget the
    /// admission is given while the call runs (ignored without one; 0 for free models);
    /// settled to 0, since the settled cost is then part of the period's spend.
    pub cost_micros: u64,
}

/// A key's use of its quota in the current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub requests: u64,
    pub tokens: u64,
    pub context: u64,
    /// When the oldest live entry leaves the window (capacity frees up), in ms from now.
    pub reset_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Admitted; `usage` includes this request.
    Admitted(Usage),
    /// Over a limit; retry after `retry_ms`.
    Denied { usage: Usage, retry_ms: u64 },
    /// Over the key's budget for the period: `spent_micros` settled, `reserved_micros` held
    /// by calls in flight. Nothing was logged.
    OverBudget {
        spent_micros: u64,
        reserved_micros: u64,
    },
}

/// A place that keeps the logs: Redis (shared) or this process's memory.
#[async_trait]
pub trait LimitBackend: Send + Sync + 'static {
    /// Atomically admits (and logs) the request under `reservation`, or refuses it.
    async fn admit(
        &self,
        key: &str,
        quota: Quota,
        charge: Charge,
        reservation: &str,
    ) -> Result<Decision, StoreError> {
        self.admit_spending(key, quota, charge, reservation, None)
            .await
    }
    /// [`Self::admit`], refusing too (in the same decision) when the key's settled spend in
    /// `budget`'s period, the cost reserved by its calls in flight and `charge.cost_micros`
    /// together would pass the budget's limit.
    async fn admit_spending(
        &self,
        key: &str,
        quota: Quota,
        charge: Charge,
        reservation: &str,
        budget: Option<&BudgetWindow>,
    ) -> Result<Decision, StoreError>;
    /// Replaces a reservation's amounts with what was really used.
    async fn settle(&self, key: &str, reservation: &str, used: Charge) -> Result<(), StoreError> {
        self.settle_spending(key, reservation, used, None)
            .await
            .map(|_| ())
    }
    /// [`Self::settle`], and (in the same step) records the call in the usage ledger and its
    /// cost against the key's budget period, answering the thresholds it crossed first.
    async fn settle_spending(
        &self,
        key: &str,
        reservation: &str,
        used: Charge,
        record: Option<&SpendRecord>,
    ) -> Result<Settled, StoreError>;
    /// The key's settled spend in `budget`'s period, in micro-dollars.
    async fn period_spend(&self, key: &str, budget: &BudgetWindow) -> Result<u64, StoreError>;
    /// The key's ledger rows for each of `days` (UTC, `2026-12-07`): one per model and day.
    async fn usage(&self, key: &str, days: &[String]) -> Result<Vec<UsageRow>, StoreError>;
    /// Counts a failed authentication from `client`; returns its failures in the window so far.
    async fn record_auth_failure(&self, client: &str, window: Duration) -> Result<u64, StoreError>;
    /// Atomically takes the lease `lease` on `key`'s `kind` cap, living `ttl`, if fewer than
    /// `cap` unexpired leases are held; answers how many are.
    async fn acquire_lease(
        &self,
        key: &str,
        kind: CapKind,
        lease: &str,
        cap: u64,
        ttl: Duration,
    ) -> Result<LeaseDecision, StoreError>;
    /// Extends a held lease to `ttl` from now (taking it again if it had expired: the stream
    /// it stands for is still open).
    async fn renew_lease(
        &self,
        key: &str,
        kind: CapKind,
        lease: &str,
        ttl: Duration,
    ) -> Result<(), StoreError>;
    /// Gives a lease back; releasing one that is gone is harmless.
    async fn release_lease(&self, key: &str, kind: CapKind, lease: &str) -> Result<(), StoreError>;
}

/// What to do when the shared limiter (Redis) cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RedisDownPolicy {
    /// Refuse requests with UNAVAILABLE until Redis answers again.
    Closed,
    /// Admit through a limiter in this replica's memory, allowing each replica
    /// its share (1/N) of every limit.
    Open,
}

/// The outcome of admitting a request: the figures for response headers, and
/// the reservation to settle once the model has answered.
#[derive(Debug, Clone)]
pub(crate) struct Admission {
    pub key: Option<String>,
    pub reservation: String,
    pub quota: Option<Quota>,
    pub usage: Usage,
    /// True when the local fallback decided (Redis was unreachable).
    pub local: bool,
    /// The budget period the call was admitted against, if its key has a budget.
    pub budget: Option<Box<BudgetWindow>>,
    /// The call's admission against the gateway-wide budget, when one is configured: settled
    /// beside this one.
    pub gateway: Option<Box<Admission>>,
}

impl Admission {
    /// Callers with the internal token are not limited.
    pub fn unlimited() -> Self {
        Self {
            key: None,
            reservation: String::new(),
            quota: None,
            usage: Usage::default(),
            local: false,
            budget: None,
            gateway: None,
        }
    }

    /// `x-ratelimit-{limit,remaining,reset}-{requests,tokens,context}` (reset in whole seconds).
    pub fn header_values(&self) -> Option<[(&'static str, u64); 9]> {
        Some(rate_values(self.quota?, self.usage))
    }
}

fn rate_headers(quota: Quota, usage: Usage) -> Vec<(&'static str, String)> {
    rate_values(quota, usage)
        .into_iter()
        .map(|(name, value)| (name, value.to_string()))
        .collect()
}

/// The rate-limit headers' values: limit, remaining and reset (whole seconds) of each resource.
fn rate_values(quota: Quota, usage: Usage) -> [(&'static str, u64); 9] {
    let reset = usage.reset_ms.div_ceil(1000);
    [
        ("x-ratelimit-limit-requests", quota.requests),
        (
            "x-ratelimit-remaining-requests",
            quota.requests.saturating_sub(usage.requests),
        ),
        ("x-ratelimit-reset-requests", reset),
        ("x-ratelimit-limit-tokens", quota.tokens),
        (
            "x-ratelimit-remaining-tokens",
            quota.tokens.saturating_sub(usage.tokens),
        ),
        ("x-ratelimit-reset-tokens", reset),
        ("x-ratelimit-limit-context", quota.context),
        (
            "x-ratelimit-remaining-context",
            quota.context.saturating_sub(usage.context),
        ),
        ("x-ratelimit-reset-context", reset),
    ]
}

/// The ledger's name for calls made with the internal token, which belong to no key.
pub const INTERNAL_LEDGER_KEY: &str = "internal";

/// A backend refuses on a budget only when given one.
fn unreachable_budget() -> BudgetWindow {
    tracing::error!("a limits backend refused a call over a budget it was not given");
    crate::spend::KeyBudget {
        limit_micros: 0,
        period: crate::spend::PeriodKind::Day,
        time_zone: "UTC".into(),
        thresholds_permille: Vec::new(),
    }
    .at(chrono::Utc::now())
}

/// Failed authentications allowed per client address per window before it is refused.
pub(crate) const AUTH_FAILURES_ALLOWED: u64 = 20;

pub(crate) struct RateLimiter {
    backend: Arc<dyn LimitBackend>,
    /// Present when the backend is shared (Redis) and the policy is `Open`.
    fallback: Option<Arc<LocalLimits>>,
    /// The divisor of each limit for the fallback.
    share: u64,
    degraded: AtomicBool,
    /// Clients refused until the given time after too many failed authentications.
    blocked: Mutex<HashMap<String, Instant>>,
    /// Bound on one decision by the backend, whatever its client does meanwhile
    /// (reconnecting included): past it, the Redis-down policy applies.
    decision_timeout: Duration,
}

impl RateLimiter {
    pub fn new(backend: Arc<dyn LimitBackend>, fallback: Option<(LocalLimits, u64)>) -> Self {
        let (fallback, share) = match fallback {
            Some((limits, share)) => (Some(Arc::new(limits)), share.max(1)),
            None => (None, 1),
        };
        Self {
            backend,
            fallback,
            share,
            degraded: AtomicBool::new(false),
            blocked: Mutex::new(HashMap::new()),
            decision_timeout: Duration::from_secs(1),
        }
    }

    /// Bounds every decision of the backend by `timeout` (the Redis timeout).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.decision_timeout = timeout;
        self
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.decision_timeout, call)
            .await
            .unwrap_or(Err(StoreError::Timeout))
    }

    /// "closed" or "open", as configured.
    pub fn policy(&self) -> &'static str {
        if self.fallback.is_some() {
            "open"
        } else {
            "closed"
        }
    }

    /// True while the shared limiter is unreachable and the fallback decides.
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// Records whether the shared backend answered; logs each change, with the cause of a failure.
    fn note_backend(&self, failure: Option<&StoreError>) {
        let healthy = failure.is_none();
        let was_degraded = self.degraded.swap(!healthy, Ordering::Relaxed);
        if was_degraded == healthy {
            match failure {
                None => tracing::info!(
                    "rate limiter: Redis answers again; limits are shared across replicas"
                ),
                Some(err) if self.fallback.is_some() => tracing::warn!(
                    error = %err,
                    share = self.share,
                    "rate limiter: Redis unreachable; FAILING OPEN to this replica's share of each limit"
                ),
                Some(err) => tracing::warn!(
                    error = %err,
                    "rate limiter: Redis unreachable; FAILING CLOSED (requests get UNAVAILABLE)"
                ),
            }
        } else if let Some(err) = failure {
            tracing::debug!(error = %err, "rate limiter backend failed");
        }
    }

    /// Admits a request of `key` costing `charge`, or answers why not: over a rate limit, or
    /// (when `budget` is given) over the key's budget for the period.
    pub async fn admit(
        &self,
        key: &str,
        quota: Quota,
        charge: Charge,
        budget: Option<BudgetWindow>,
    ) -> ApiResult<Admission> {
        self.admit_as(key, quota, charge, budget, "key").await
    }

    /// Reserves a model call's most (`cost_micros`) against the gateway-wide budget's period
    /// `budget`, or refuses it (BUDGET_EXCEEDED, scope `gateway`). The same script as a key's
    /// admission, on the pseudo key [`GATEWAY_BUDGET_KEY`] with no rate limit.
    pub async fn admit_gateway(
        &self,
        cost_micros: u64,
        budget: BudgetWindow,
    ) -> ApiResult<Admission> {
        let unlimited = Quota {
            requests: u64::MAX,
            tokens: u64::MAX,
            context: u64::MAX,
        };
        let charge = Charge {
            tokens: 0,
            context: 0,
            cost_micros,
        };
        self.admit_as(
            GATEWAY_BUDGET_KEY,
            unlimited,
            charge,
            Some(budget),
            "gateway",
        )
        .await
    }

    async fn admit_as(
        &self,
        key: &str,
        quota: Quota,
        charge: Charge,
        mut budget: Option<BudgetWindow>,
        scope: &'static str,
    ) -> ApiResult<Admission> {
        if charge.tokens > quota.tokens || charge.context > quota.context {
            return Err(ApiError::invalid(
                "Request exceeds the token limit",
                format!(
                    "This request needs about {} tokens ({} of context) but this key allows {} tokens and {} context tokens per minute; shorten the history or lower maxTokens",
                    charge.tokens, charge.context, quota.tokens, quota.context
                ),
            ));
        }
        let reservation = uuid::Uuid::new_v4().simple().to_string();
        let started = std::time::Instant::now();
        let outcome = self
            .bounded(
                self.backend
                    .admit_spending(key, quota, charge, &reservation, budget.as_ref()),
            )
            .await;
        static DECISIONS: openclaw_runtime::metrics::Handles<(), metrics::Histogram> =
            openclaw_runtime::metrics::Handles::new();
        DECISIONS
            .get(&(), || {
                (
                    (),
                    metrics::histogram!("openclaw_rate_limit_decision_seconds"),
                )
            })
            .record(started.elapsed().as_secs_f64());
        let (decision, local) = match outcome {
            Ok(decision) => {
                self.note_backend(None);
                (decision, false)
            }
            Err(err) => {
                metrics::counter!("openclaw_store_errors_total", "op" => "rate_limit").increment(1);
                self.note_backend(Some(&err));
                match &self.fallback {
                    Some(local) => {
                        let share = Quota {
                            requests: (quota.requests / self.share).max(1),
                            tokens: (quota.tokens / self.share).max(charge.tokens),
                            context: (quota.context / self.share).max(charge.context),
                        };
                        // This replica's share of the budget too, counted from zero in its
                        // memory: together the replicas spend at most the limit meanwhile.
                        budget = budget.map(|window| BudgetWindow {
                            limit_micros: window.limit_micros / self.share,
                            ..window
                        });
                        let decision = local
                            .admit_spending(key, share, charge, &reservation, budget.as_ref())
                            .await?;
                        (decision, true)
                    }
                    None => {
                        return Err(ApiError::unavailable(
                            "Rate limits cannot be checked right now (the shared store is unreachable); retry in a few seconds",
                        )
                        .with_retry_after(Duration::from_secs(1)));
                    }
                }
            }
        };
        match decision {
            Decision::Admitted(usage) => Ok(Admission {
                key: Some(key.to_string()),
                reservation,
                quota: Some(quota),
                usage,
                local,
                budget: budget.map(Box::new),
                gateway: None,
            }),
            Decision::OverBudget {
                spent_micros,
                reserved_micros,
            } => {
                let window = budget.unwrap_or_else(unreachable_budget);
                Err(ApiError::budget_exceeded(BudgetBreach {
                    scope,
                    limit_micros: window.limit_micros,
                    spent_micros,
                    reserved_micros,
                    cost_micros: charge.cost_micros,
                    period: window.period.kind.as_str(),
                    resets_at: window.resets_at,
                }))
            }
            Decision::Denied { usage, retry_ms } => {
                let resource = if usage.requests + 1 > quota.requests {
                    "requests"
                } else if usage.tokens + charge.tokens > quota.tokens {
                    "tokens"
                } else {
                    "context"
                };
                metrics::counter!("openclaw_rate_limit_rejections_total", "resource" => resource)
                    .increment(1);
                let wait = retry_ms.div_ceil(1000).max(1);
                Err(ApiError::new(
                    ErrorCode::RateLimitExceeded,
                    "Rate limit exceeded",
                    format!("Try again in {wait} seconds"),
                )
                .with_retry_after(Duration::from_secs(wait))
                .with_metadata({
                    let mut headers = rate_headers(quota, usage);
                    headers.push(("retry-after", wait.to_string()));
                    headers
                }))
            }
        }
    }

    /// Takes a lease on `key`'s `kind` cap for a stream about to open, or answers
    /// RATE_LIMIT_EXCEEDED naming the cap and how many are open. The lease is renewed
    /// while the returned guard lives and released when it drops. When Redis does not
    /// answer, the Redis-down policy decides as it does for the per-minute limits.
    pub async fn open_stream(
        &self,
        key: &str,
        kind: CapKind,
        cap: u64,
        ttl: Duration,
    ) -> ApiResult<StreamLease> {
        let lease = uuid::Uuid::new_v4().simple().to_string();
        let outcome = self
            .bounded(self.backend.acquire_lease(key, kind, &lease, cap, ttl))
            .await;
        // The cap that decided: this replica's share of it while the fallback decides.
        let (decision, holder, cap): (LeaseDecision, Arc<dyn LimitBackend>, u64) = match outcome {
            Ok(decision) => {
                self.note_backend(None);
                (decision, self.backend.clone(), cap)
            }
            Err(err) => {
                metrics::counter!("openclaw_store_errors_total", "op" => "stream_cap").increment(1);
                self.note_backend(Some(&err));
                match &self.fallback {
                    Some(local) => {
                        let share = (cap / self.share).max(1);
                        let decision = local.acquire_lease(key, kind, &lease, share, ttl).await?;
                        (decision, local.clone() as Arc<dyn LimitBackend>, share)
                    }
                    None => {
                        return Err(ApiError::unavailable(
                            "Stream limits cannot be checked right now (the shared store is unreachable); retry in a few seconds",
                        )
                        .with_retry_after(Duration::from_secs(1)));
                    }
                }
            }
        };
        if !decision.taken {
            return Err(leases::over_cap(kind, cap, decision.open));
        }
        Ok(StreamLease::hold(leases::Holding {
            backend: holder,
            key: key.to_string(),
            kind,
            id: lease,
            ttl,
            timeout: self.decision_timeout,
        }))
    }

    /// Replaces the admission's reservation with what the model really used and, given a
    /// `record`, records the call in the usage ledger and against the key's budget; answers
    /// the budget thresholds the call crossed first. A call of the internal token (no key) is
    /// recorded under [`INTERNAL_LEDGER_KEY`].
    pub async fn settle(
        &self,
        admission: &Admission,
        used: Charge,
        record: Option<&SpendRecord>,
    ) -> Settled {
        let key = match (&admission.key, record) {
            (Some(key), _) => key.as_str(),
            (None, Some(_)) => INTERNAL_LEDGER_KEY,
            (None, None) => return Settled::default(),
        };
        let outcome = if admission.local {
            match &self.fallback {
                Some(local) => {
                    local
                        .settle_spending(key, &admission.reservation, used, record)
                        .await
                }
                None => Ok(Settled::default()),
            }
        } else {
            self.bounded(
                self.backend
                    .settle_spending(key, &admission.reservation, used, record),
            )
            .await
        };
        outcome.unwrap_or_else(|err| {
            tracing::warn!(error = %err, key, "could not settle a model call: its token reservation expires with the window, and the call is missing from the usage ledger");
            metrics::counter!("openclaw_store_errors_total", "op" => "settle").increment(1);
            Settled::default()
        })
    }

    /// The key's settled spend in `budget`'s period.
    pub async fn period_spend(&self, key: &str, budget: &BudgetWindow) -> ApiResult<u64> {
        Ok(self.bounded(self.backend.period_spend(key, budget)).await?)
    }

    /// The key's usage ledger for `days`.
    pub async fn ledger(&self, key: &str, days: &[String]) -> ApiResult<Vec<UsageRow>> {
        Ok(self.bounded(self.backend.usage(key, days)).await?)
    }

    /// The key's use of its quota in the current window, without counting a request: an
    /// admission against a zero quota is always refused and writes nothing.
    pub async fn usage(&self, key: &str) -> ApiResult<Usage> {
        let nothing = Quota {
            requests: 0,
            tokens: 0,
            context: 0,
        };
        let peek = "usage-peek";
        let decision = match self
            .backend
            .admit(key, nothing, Charge::default(), peek)
            .await
        {
            Ok(decision) => decision,
            Err(err) => match &self.fallback {
                Some(local) => local.admit(key, nothing, Charge::default(), peek).await?,
                None => return Err(err.into()),
            },
        };
        Ok(match decision {
            Decision::Admitted(usage) | Decision::Denied { usage, .. } => usage,
            Decision::OverBudget { .. } => Usage::default(),
        })
    }

    /// Refuses a client this replica has seen fail authentication too often
    /// (the brute-force guard). Costs no round trip.
    pub fn check_client(&self, client: &str) -> ApiResult<()> {
        let blocked = self
            .blocked
            .lock()
            .ok()
            .and_then(|blocked| blocked.get(client).copied())
            .is_some_and(|until| until > Instant::now());
        if blocked {
            Err(too_many_failures())
        } else {
            Ok(())
        }
    }

    /// Counts a failed authentication from `client` across every replica, and
    /// turns `error` into RATE_LIMIT_EXCEEDED once the client has failed too often.
    pub async fn auth_failed(&self, client: &str, error: ApiError) -> ApiError {
        let failures = match self
            .bounded(self.backend.record_auth_failure(client, WINDOW))
            .await
        {
            Ok(n) => n,
            Err(_) => match &self.fallback {
                Some(local) => local.record_auth_failure(client, WINDOW).await.unwrap_or(0),
                None => 0,
            },
        };
        if failures < AUTH_FAILURES_ALLOWED {
            return error;
        }
        if let Ok(mut blocked) = self.blocked.lock() {
            let now = Instant::now();
            blocked.retain(|_, until| *until > now);
            blocked.insert(client.to_string(), now + WINDOW);
        }
        tracing::warn!(
            client,
            failures,
            "client blocked after repeated failed authentication"
        );
        too_many_failures()
    }
}

fn too_many_failures() -> ApiError {
    let wait = WINDOW.as_secs();
    ApiError::new(
        ErrorCode::RateLimitExceeded,
        "Too many failed authentications",
        format!("This address sent too many invalid credentials; Try again in {wait} seconds"),
    )
    .with_retry_after(WINDOW)
    .with_metadata(vec![("retry-after", wait.to_string())])
}
