//! `/api/v1/keys`: API key administration, translated to `KeyService`. The core demands the
//! internal token for all of it.

use axum::{extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    core_client::{CoreClient, required},
    envelope::{ApiResult, Enveloped, SuccessEnvelope},
    extract::{JsonBody, PathId},
    headers::Caller,
    openapi::responses::*,
    proto::{self, key_service_client::KeyServiceClient},
    timestamp,
};

pub(crate) const TAG: &str = "keys";

/// Per-key limits: requests and tokens per minute, and how many streams and event
/// subscriptions may be open at once (docs/rate-limits.md). Unset limits take the gateway's
/// defaults.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LimitsInput {
    #[schema(example = 60)]
    requests_per_minute: Option<u64>,
    #[schema(example = 1000000)]
    tokens_per_minute: Option<u64>,
    #[schema(example = 200000)]
    context_tokens_per_minute: Option<u64>,
    /// Streamed replies open at once, over every replica.
    #[schema(example = 20)]
    concurrent_streams: Option<u64>,
    /// Event subscriptions (`/api/v1/events`) open at once, over every replica.
    #[schema(example = 10)]
    event_subscriptions: Option<u64>,
}

impl From<LimitsInput> for proto::Limits {
    fn from(limits: LimitsInput) -> Self {
        Self {
            requests_per_minute: limits.requests_per_minute,
            tokens_per_minute: limits.tokens_per_minute,
            context_tokens_per_minute: limits.context_tokens_per_minute,
            concurrent_streams: limits.concurrent_streams,
            event_subscriptions: limits.event_subscriptions,
        }
    }
}

/// Per-key quotas on what the key keeps stored (docs/quotas.md). Unset quotas take the
/// gateway's defaults. Every value is a positive integer, except `sessionIdleTtlSeconds`,
/// where 0 keeps sessions until deleted.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Quotas {
    /// Sessions the key keeps at once.
    #[schema(example = 1000)]
    max_sessions: Option<u64>,
    /// Messages one session holds (every role).
    #[schema(example = 10000)]
    max_messages_per_session: Option<u64>,
    /// Bytes of message content (UTF-8) one session holds.
    #[schema(example = 16777216)]
    max_session_bytes: Option<u64>,
    /// Bytes of content one message may carry.
    #[schema(example = 1048576)]
    max_message_bytes: Option<u64>,
    /// Cron jobs the key owns at once.
    #[schema(example = 100)]
    max_cron_jobs: Option<u64>,
    /// Seconds a session is kept after its last turn; 0 keeps sessions until deleted.
    #[schema(example = 2592000)]
    session_idle_ttl_seconds: Option<u64>,
}

impl From<Quotas> for proto::Quotas {
    fn from(quotas: Quotas) -> Self {
        Self {
            max_sessions: quotas.max_sessions,
            max_messages_per_session: quotas.max_messages_per_session,
            max_session_bytes: quotas.max_session_bytes,
            max_message_bytes: quotas.max_message_bytes,
            max_cron_jobs: quotas.max_cron_jobs,
            session_idle_ttl_seconds: quotas.session_idle_ttl_seconds,
        }
    }
}

impl From<proto::Quotas> for Quotas {
    fn from(quotas: proto::Quotas) -> Self {
        Self {
            max_sessions: quotas.max_sessions,
            max_messages_per_session: quotas.max_messages_per_session,
            max_session_bytes: quotas.max_session_bytes,
            max_message_bytes: quotas.max_message_bytes,
            max_cron_jobs: quotas.max_cron_jobs,
            session_idle_ttl_seconds: quotas.session_idle_ttl_seconds,
        }
    }
}

/// A key's spend budget (docs/budgets.md): at most `limitMicros` per period. Each threshold
/// publishes one `budget.threshold` event per period; at the limit, model calls get 402
/// `BUDGET_EXCEEDED` until the period resets, while reads keep working.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Budget {
    /// Micro-dollars (US$0.000001) per period: 5000000 is $5.
    #[schema(example = 5000000)]
    limit_micros: u64,
    /// `day`, `week` (from Monday) or `month`.
    #[schema(example = "day")]
    period: String,
    /// The IANA time zone whose midnight starts a period; default `UTC`.
    #[serde(default)]
    #[schema(example = "UTC")]
    time_zone: Option<String>,
    /// Fractions of the limit, each above 0 and below 1, that publish an event when crossed.
    #[serde(default)]
    #[schema(example = json!([0.5, 0.8]))]
    thresholds: Vec<f64>,
}

impl From<Budget> for proto::Budget {
    fn from(budget: Budget) -> Self {
        proto::Budget {
            limit_micros: budget.limit_micros,
            period: budget.period,
            time_zone: budget.time_zone.unwrap_or_default(),
            thresholds: budget.thresholds,
        }
    }
}

impl From<proto::Budget> for Budget {
    fn from(budget: proto::Budget) -> Self {
        Budget {
            limit_micros: budget.limit_micros,
            period: budget.period,
            time_zone: Some(budget.time_zone),
            thresholds: budget.thresholds,
        }
    }
}

/// A budget's current period: the key's spend in it and when it resets.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BudgetSpend {
    #[schema(example = 1250000)]
    spent_micros: u64,
    #[schema(example = 5000000)]
    limit_micros: u64,
    #[schema(value_type = Option<String>, format = DateTime, example = "2026-12-07T00:00:00Z")]
    period_start: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime, example = "2026-12-08T00:00:00Z")]
    resets_at: Option<String>,
}

impl From<proto::BudgetSpend> for BudgetSpend {
    fn from(spend: proto::BudgetSpend) -> Self {
        BudgetSpend {
            spent_micros: spend.spent_micros,
            limit_micros: spend.limit_micros,
            period_start: timestamp::from_proto(spend.period_start.as_ref()),
            resets_at: timestamp::from_proto(spend.resets_at.as_ref()),
        }
    }
}

/// `null` as "remove", absent as "keep": what `budget` means in a `PATCH`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateKeyRequest {
    /// What the key is for.
    #[serde(default)]
    #[schema(example = "billing-service")]
    name: String,
    /// Any of "sessions", "cron", "status"; empty or absent means all.
    #[serde(default)]
    #[schema(example = json!(["sessions", "status"]))]
    scopes: Vec<String>,
    limits: Option<LimitsInput>,
    /// The key's own quotas; absent ones take the gateway's defaults.
    quotas: Option<Quotas>,
    /// A spend budget; absent: none.
    budget: Option<Budget>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UpdateKeyRequest {
    /// A new name; absent keeps the current one.
    #[schema(example = "billing-service-v2")]
    name: Option<String>,
    /// Limits given here replace the key's; absent ones stay as they are.
    limits: Option<LimitsInput>,
    /// Quotas given here replace the key's; absent ones stay as they are.
    quotas: Option<Quotas>,
    /// A budget replaces the key's (the current period's spend is kept); `null` removes it;
    /// absent keeps it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Budget>)]
    budget: Option<Option<Budget>>,
}

impl CreateKeyRequest {
    pub(crate) fn into_proto(self) -> proto::CreateKeyRequest {
        proto::CreateKeyRequest {
            name: self.name,
            scopes: self.scopes,
            limits: self.limits.map(Into::into),
            quotas: self.quotas.map(Into::into),
            budget: self.budget.map(Into::into),
        }
    }
}

impl UpdateKeyRequest {
    pub(crate) fn into_proto(self, id: String) -> proto::UpdateKeyRequest {
        proto::UpdateKeyRequest {
            id,
            name: self.name,
            limits: self.limits.map(Into::into),
            quotas: self.quotas.map(Into::into),
            remove_budget: matches!(self.budget, Some(None)),
            budget: self.budget.flatten().map(Into::into),
        }
    }
}

/// A key's limits; null means the gateway's default applies.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Limits {
    #[schema(example = 60)]
    requests_per_minute: Option<u64>,
    #[schema(example = 1000000)]
    tokens_per_minute: Option<u64>,
    #[schema(example = 200000)]
    context_tokens_per_minute: Option<u64>,
    #[schema(example = 20)]
    concurrent_streams: Option<u64>,
    #[schema(example = 10)]
    event_subscriptions: Option<u64>,
}

/// An API key as administrators see it; the secret itself is shown only at creation.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ApiKey {
    #[schema(example = "key-9f2c")]
    id: String,
    #[schema(example = "billing-service")]
    name: String,
    /// The key's first characters, safe to show.
    #[schema(example = "oc_3fA9x")]
    prefix: String,
    #[schema(example = json!(["sessions", "cron", "status"]))]
    scopes: Vec<String>,
    limits: Limits,
    /// The key's own quotas; null means the gateway's default applies.
    quotas: Quotas,
    /// The quotas in force for the key, each its own value or the gateway's default.
    effective_quotas: Quotas,
    /// The key's spend budget; null: none.
    budget: Option<Budget>,
    /// The budget's current period; null without a budget.
    budget_spend: Option<BudgetSpend>,
    #[schema(value_type = Option<String>, format = DateTime, example = "2026-02-14T22:00:00Z")]
    created_at: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    last_used_at: Option<String>,
    revoked: bool,
    #[schema(value_type = Option<String>, format = DateTime)]
    revoked_at: Option<String>,
}

/// A new key, with its secret: store it now, it is never shown again.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreatedKey {
    #[serde(flatten)]
    api_key: ApiKey,
    /// The secret to send as `Authorization: Bearer <key>`.
    #[schema(example = "oc_3fA9x...")]
    key: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KeyList {
    keys: Vec<ApiKey>,
}

impl From<proto::ApiKey> for ApiKey {
    fn from(key: proto::ApiKey) -> Self {
        let limits = key.limits.unwrap_or_default();
        Self {
            created_at: timestamp::from_proto(key.created_at.as_ref()),
            last_used_at: timestamp::from_proto(key.last_used_at.as_ref()),
            revoked_at: timestamp::from_proto(key.revoked_at.as_ref()),
            id: key.id,
            name: key.name,
            prefix: key.prefix,
            scopes: key.scopes,
            limits: Limits {
                requests_per_minute: limits.requests_per_minute,
                tokens_per_minute: limits.tokens_per_minute,
                context_tokens_per_minute: limits.context_tokens_per_minute,
                concurrent_streams: limits.concurrent_streams,
                event_subscriptions: limits.event_subscriptions,
            },
            revoked: key.revoked,
            quotas: key.quotas.unwrap_or_default().into(),
            effective_quotas: key.effective_quotas.unwrap_or_default().into(),
            budget: key.budget.map(Into::into),
            budget_spend: key.budget_spend.map(Into::into),
        }
    }
}

/// Generate a key. The secret is in this answer only.
#[utoipa::path(
    post,
    path = "/api/v1/keys",
    tag = TAG,
    request_body = CreateKeyRequest,
    responses(
        (status = 201, description = "Key created", body = SuccessEnvelope<CreatedKey>),
        (status = 409, response = Conflict),
        BodyErrors,
        CallErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create_key(
    State(core): State<CoreClient>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateKeyRequest>,
) -> ApiResult<CreatedKey> {
    let request = body.into_proto();
    let reply = core
        .call(&caller, request, |channel, request| async move {
            KeyServiceClient::new(channel).create_key(request).await
        })
        .await?;
    let created = reply.message;
    let data = CreatedKey {
        api_key: required(created.key, "CreateKeyResponse.key")?.into(),
        key: created.secret,
    };
    Ok(Enveloped::ok(data)
        .with_status(StatusCode::CREATED)
        .with_headers(reply.headers))
}

/// List every key, revoked ones included.
#[utoipa::path(
    get,
    path = "/api/v1/keys",
    tag = TAG,
    responses(
        (status = 200, description = "All keys", body = SuccessEnvelope<KeyList>),
        (status = 400, response = InvalidRequest),
        CallErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_keys(
    State(core): State<CoreClient>,
    caller: Caller,
) -> ApiResult<KeyList> {
    core.enveloped(
        &caller,
        proto::ListKeysRequest {},
        |channel, request| async move { KeyServiceClient::new(channel).list_keys(request).await },
        |listed| KeyList {
            keys: listed.keys.into_iter().map(Into::into).collect(),
        },
    )
    .await
}

/// Read one key.
#[utoipa::path(
    get,
    path = "/api/v1/keys/{id}",
    tag = TAG,
    params(("id" = String, Path, description = "The key's ID")),
    responses(
        (status = 200, description = "The key", body = SuccessEnvelope<ApiKey>),
        (status = 400, response = InvalidRequest),
        (status = 404, response = NotFound),
        CallErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_key(
    State(core): State<CoreClient>,
    caller: Caller,
    PathId(id): PathId,
) -> ApiResult<ApiKey> {
    core.enveloped(
        &caller,
        proto::GetKeyRequest { id },
        |channel, request| async move { KeyServiceClient::new(channel).get_key(request).await },
        ApiKey::from,
    )
    .await
}

/// Rename a key or change its limits.
#[utoipa::path(
    patch,
    path = "/api/v1/keys/{id}",
    tag = TAG,
    params(("id" = String, Path, description = "The key's ID")),
    request_body = UpdateKeyRequest,
    responses(
        (status = 200, description = "The updated key", body = SuccessEnvelope<ApiKey>),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        BodyErrors,
        CallErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn update_key(
    State(core): State<CoreClient>,
    caller: Caller,
    PathId(id): PathId,
    JsonBody(body): JsonBody<UpdateKeyRequest>,
) -> ApiResult<ApiKey> {
    let request = body.into_proto(id);
    core.enveloped(
        &caller,
        request,
        |channel, request| async move { KeyServiceClient::new(channel).update_key(request).await },
        ApiKey::from,
    )
    .await
}

/// Revoke a key on every replica. Revoking twice is harmless.
#[utoipa::path(
    delete,
    path = "/api/v1/keys/{id}",
    tag = TAG,
    params(("id" = String, Path, description = "The key's ID")),
    responses(
        (status = 200, description = "The revoked key", body = SuccessEnvelope<ApiKey>),
        (status = 400, response = InvalidRequest),
        (status = 404, response = NotFound),
        CallErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn revoke_key(
    State(core): State<CoreClient>,
    caller: Caller,
    PathId(id): PathId,
) -> ApiResult<ApiKey> {
    core.enveloped(
        &caller,
        proto::RevokeKeyRequest { id },
        |channel, request| async move { KeyServiceClient::new(channel).revoke_key(request).await },
        ApiKey::from,
    )
    .await
}
