//! `/api/v1/system/status` (translated to `SystemService`) and the edge's own liveness probe.

use axum::{Json, extract::State};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{
    core_client::CoreClient,
    envelope::{ApiResult, SuccessEnvelope},
    headers::Caller,
    openapi::responses::*,
    proto::{self, system_service_client::SystemServiceClient},
};

pub(crate) const TAG: &str = "system";

/// The gateway's state, and the caller's usage next to its limits.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SystemStatus {
    /// "running", "degraded" (a dependency is unhealthy) or "draining".
    #[schema(example = "running")]
    gateway: String,
    /// The core's version.
    #[schema(example = "2026.2.13")]
    version: String,
    /// Whole seconds since the answering core replica started, as "<seconds>s".
    #[schema(example = "3600s")]
    uptime: String,
    resources: Resources,
    dependencies: Vec<Dependency>,
    /// True when some models are answered by the built-in offline simulator.
    simulated: bool,
    /// The core replica that answered.
    #[schema(example = "core-0")]
    replica: String,
    storage: Storage,
    /// The caller's key's spend budget and its spend this period (docs/budgets.md); null for
    /// a key without a budget.
    budget: Option<BudgetStatus>,
    /// The gateway-wide budget for every key together: shown to the internal token only, null
    /// otherwise or when none is configured.
    gateway_budget: Option<BudgetStatus>,
}

/// A spend budget and its current period, in integer micro-dollars (US$0.000001).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BudgetStatus {
    #[schema(example = 5000000)]
    limit_micros: u64,
    /// "day", "week" or "month".
    #[schema(example = "month")]
    period: String,
    #[schema(example = "UTC")]
    time_zone: String,
    /// Settled spend in the current period.
    #[schema(example = 1250000)]
    spent_micros: u64,
    #[schema(value_type = Option<String>, format = DateTime, example = "2026-12-01T00:00:00Z")]
    period_start: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime, example = "2027-01-01T00:00:00Z")]
    resets_at: Option<String>,
    /// Fractions of the limit that publish a `budget.threshold` event once per period.
    #[schema(example = json!([0.5, 0.8]))]
    thresholds: Vec<f64>,
}

impl From<proto::BudgetStatus> for BudgetStatus {
    fn from(budget: proto::BudgetStatus) -> Self {
        Self {
            limit_micros: budget.limit_micros,
            period: budget.period,
            time_zone: budget.time_zone,
            spent_micros: budget.spent_micros,
            period_start: crate::timestamp::from_proto(budget.period_start.as_ref()),
            resets_at: crate::timestamp::from_proto(budget.resets_at.as_ref()),
            thresholds: budget.thresholds,
        }
    }
}

/// How full the store is, and whether new growth is refused (docs/storage-pressure.md).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Storage {
    /// Redis's used_memory (the fullest primary's, on a cluster).
    #[schema(example = 21474836)]
    used_bytes: u64,
    /// Redis's maxmemory; 0 when none is set.
    #[schema(example = 33554432)]
    max_bytes: u64,
    /// "off" (embedded store, or no maxmemory), "normal", "soft" (keys storing more than their
    /// fair share are refused new sessions, messages and cron jobs) or "hard" (every key is).
    #[schema(example = "normal")]
    level: String,
    #[schema(example = 80)]
    soft_percent: u32,
    #[schema(example = 90)]
    hard_percent: u32,
    /// Above the soft threshold: the soft threshold's memory divided among the keys storing data.
    #[schema(example = 0)]
    fair_share_bytes: u64,
    /// Bytes the caller's sessions store, as last counted.
    #[schema(example = 52000)]
    key_stored_bytes: u64,
    /// Why no policy applies, when none does.
    #[schema(example = "")]
    detail: String,
}

/// The caller's usage in the current one-minute window, and the replica's queue.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Resources {
    /// Tokens (prompt + completion) used in the current window.
    #[schema(example = 250000)]
    token_usage: u64,
    /// Prompt tokens sent to models in the current window.
    #[schema(example = 43000)]
    context_usage: u64,
    /// Model calls waiting on the answering replica.
    #[schema(example = 0)]
    queue_depth: u64,
    #[schema(example = 1000000)]
    token_limit: u64,
    #[schema(example = 200000)]
    context_limit: u64,
    #[schema(example = 12)]
    request_usage: u64,
    #[schema(example = 60)]
    request_limit: u64,
    /// The caller's quotas on what it keeps stored (docs/quotas.md), by name.
    #[schema(example = json!({
        "maxSessions": {"limit": 1000, "used": 12, "unit": "sessions", "per": "key"},
        "maxMessagesPerSession": {"limit": 10000, "used": null, "unit": "messages", "per": "session"}
    }))]
    quotas: std::collections::BTreeMap<String, QuotaUsage>,
}

/// One quota: its value in force for the caller and, where the usage is the key's own
/// (sessions, cron jobs), what the caller holds now.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct QuotaUsage {
    #[schema(example = 1000)]
    limit: u64,
    /// What the caller holds now; null for quotas on one session or one message (each
    /// session's `messageCount` is in its record).
    #[schema(example = 12)]
    used: Option<u64>,
    /// "sessions", "messages", "bytes", "jobs" or "seconds".
    #[schema(example = "sessions")]
    unit: String,
    /// "key" (the key's total), "session" (each session) or "message" (each message).
    #[schema(example = "key")]
    per: String,
}

/// The health of one dependency: the store or a model provider.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Dependency {
    /// "redis", "embedded-store", or a provider such as "zai".
    #[schema(example = "redis")]
    name: String,
    /// "store" or "provider".
    #[schema(example = "store")]
    kind: String,
    /// "ok", "degraded", "down" or "simulated".
    #[schema(example = "ok")]
    status: String,
    #[schema(example = "")]
    detail: String,
    /// Round-trip time of the last check; null when not measured.
    #[schema(example = 0.4)]
    latency_ms: Option<f64>,
}

impl From<proto::SystemStatus> for SystemStatus {
    fn from(status: proto::SystemStatus) -> Self {
        let uptime = status
            .uptime
            .map(|uptime| uptime.seconds.max(0))
            .unwrap_or_default();
        let resources = status.resources.unwrap_or_default();
        Self {
            gateway: status.gateway,
            version: status.version,
            uptime: format!("{uptime}s"),
            resources: Resources {
                token_usage: resources.token_usage,
                context_usage: resources.context_usage,
                queue_depth: resources.queue_depth,
                token_limit: resources.token_limit,
                context_limit: resources.context_limit,
                request_usage: resources.request_usage,
                request_limit: resources.request_limit,
                quotas: resources
                    .quotas
                    .into_iter()
                    .map(|q| {
                        let usage = QuotaUsage {
                            limit: q.limit,
                            used: q.used,
                            unit: q.unit,
                            per: q.per,
                        };
                        (q.name, usage)
                    })
                    .collect(),
            },
            dependencies: status
                .dependencies
                .into_iter()
                .map(|dependency| Dependency {
                    name: dependency.name,
                    kind: dependency.kind,
                    status: dependency.status,
                    detail: dependency.detail,
                    // proto3 doubles have no presence; 0 means "not measured".
                    latency_ms: (dependency.latency_ms > 0.0).then_some(dependency.latency_ms),
                })
                .collect(),
            simulated: status.simulated,
            replica: status.replica,
            budget: status.budget.map(Into::into),
            gateway_budget: status.gateway_budget.map(Into::into),
            storage: {
                let storage = status.storage.unwrap_or_default();
                Storage {
                    used_bytes: storage.used_bytes,
                    max_bytes: storage.max_bytes,
                    level: storage.level,
                    soft_percent: storage.soft_percent,
                    hard_percent: storage.hard_percent,
                    fair_share_bytes: storage.fair_share_bytes,
                    key_stored_bytes: storage.key_stored_bytes,
                    detail: storage.detail,
                }
            },
        }
    }
}

/// The gateway's status, dependencies and the caller's usage.
#[utoipa::path(
    get,
    path = "/api/v1/system/status",
    tag = TAG,
    responses(
        (status = 200, description = "The gateway's status", body = SuccessEnvelope<SystemStatus>),
        (status = 400, response = InvalidRequest),
        CallErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn status(
    State(core): State<CoreClient>,
    caller: Caller,
) -> ApiResult<SystemStatus> {
    core.enveloped(
        &caller,
        proto::GetStatusRequest {},
        |channel, request| async move { SystemServiceClient::new(channel).get_status(request).await },
        SystemStatus::from,
    )
    .await
}

/// The liveness probe's answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

/// Liveness of this edge process. It does not consult the core: an edge that answers is alive.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = TAG,
    responses((status = 200, description = "The edge is alive", body = Health)),
    security(())
)]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness of this edge: not draining, and a core answers its gRPC health check.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = TAG,
    responses(
        (status = 200, description = "The edge can serve traffic", body = Health),
        (status = 503, description = "Draining, or no core answers", body = Health)
    ),
    security(())
)]
pub(crate) async fn readyz(
    State(core): State<CoreClient>,
    State(draining): State<crate::server::Draining>,
) -> (axum::http::StatusCode, Json<Health>) {
    use axum::http::StatusCode;
    if draining.is_set() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health { status: "draining" }),
        );
    }
    if core.healthy().await {
        (StatusCode::OK, Json(Health { status: "ready" }))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "core unreachable",
            }),
        )
    }
}
