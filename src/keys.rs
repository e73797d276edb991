//! `KeyService`: API key administration, for holders of the internal token.

use std::sync::Arc;

use chrono::Utc;
use tonic::{Request, Response, Status};

use crate::auth::{SCOPES, generate_key};
use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::events::{Event, EventBus};
use crate::front_door::{FrontDoor, Scope};
use crate::proto::key_service_server::KeyService;
use crate::proto::{self};
use crate::store::{KeyLimits, KeyQuotas, KeyRecord, Store};

const MAX_NAME_CHARS: usize = 100;

pub(crate) struct Keys {
    door: Arc<FrontDoor>,
    store: Arc<dyn Store>,
    /// Where a revocation is announced.
    events: EventBus,
}

impl Keys {
    pub(crate) fn new(door: Arc<FrontDoor>, store: Arc<dyn Store>, events: EventBus) -> Self {
        Self {
            door,
            store,
            events,
        }
    }

    async fn admin<T>(&self, request: &Request<T>) -> ApiResult<()> {
        self.door
            .authorize(request, Scope::Internal)
            .await
            .map(|_| ())
    }

    /// The key as administrators see it, with its quotas in force.
    fn shown(&self, key: &KeyRecord) -> proto::ApiKey {
        convert::api_key(key, &self.door.default_quotas())
    }

    /// [`Self::shown`], with the spend of its budget's current period (one read of the limits
    /// store per key with a budget).
    async fn shown_with_spend(&self, key: &KeyRecord) -> ApiResult<proto::ApiKey> {
        let mut shown = self.shown(key);
        if let Some(budget) = &key.budget {
            let window = budget.at(self.door.spend_settings().clock.now());
            let spent = self.door.limits().period_spend(&key.id, &window).await?;
            shown.budget_spend = Some(proto::BudgetSpend {
                spent_micros: spent,
                limit_micros: window.limit_micros,
                period_start: Some(convert::timestamp(window.period.start)),
                resets_at: Some(convert::timestamp(window.resets_at)),
            });
        }
        Ok(shown)
    }

    async fn existing(&self, id: &str) -> ApiResult<KeyRecord> {
        self.store
            .key_by_id(id)
            .await?
            .ok_or_else(|| ApiError::not_found("Key", id))
    }
}

fn validate_name(name: &str) -> ApiResult<String> {
    let name = name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::invalid_field(
            "name",
            "Invalid key name",
            format!("The field 'name' is required: 1-{MAX_NAME_CHARS} printable characters"),
        ));
    }
    Ok(name.to_string())
}

fn validate_scopes(scopes: &[String]) -> ApiResult<Vec<String>> {
    if scopes.is_empty() {
        return Ok(SCOPES.iter().map(|s| s.to_string()).collect());
    }
    let mut out: Vec<String> = Vec::new();
    for scope in scopes {
        if !SCOPES.contains(&scope.as_str()) {
            return Err(ApiError::invalid_field(
                "scopes",
                "Unknown scope",
                format!(
                    "The scope '{}' does not exist; use some of: {}",
                    scope.chars().take(40).collect::<String>(),
                    SCOPES.join(", ")
                ),
            ));
        }
        if !out.contains(scope) {
            out.push(scope.clone());
        }
    }
    Ok(out)
}

/// Applies the fields set in `patch` over `base`; a limit must be at least 1.
fn merge_limits(base: &KeyLimits, patch: Option<&proto::Limits>) -> ApiResult<KeyLimits> {
    let Some(patch) = patch else {
        return Ok(base.clone());
    };
    let check = |value: Option<u64>, field: &str| -> ApiResult<()> {
        if value == Some(0) {
            return Err(ApiError::invalid_field(
                format!("limits.{field}"),
                "Invalid limit",
                format!("The field 'limits.{field}' must be a whole number of at least 1"),
            ));
        }
        Ok(())
    };
    check(patch.requests_per_minute, "requestsPerMinute")?;
    check(patch.tokens_per_minute, "tokensPerMinute")?;
    check(patch.context_tokens_per_minute, "contextTokensPerMinute")?;
    check(patch.concurrent_streams, "concurrentStreams")?;
    check(patch.event_subscriptions, "eventSubscriptions")?;
    Ok(KeyLimits {
        requests_per_minute: patch.requests_per_minute.or(base.requests_per_minute),
        tokens_per_minute: patch.tokens_per_minute.or(base.tokens_per_minute),
        context_tokens_per_minute: patch
            .context_tokens_per_minute
            .or(base.context_tokens_per_minute),
        concurrent_streams: patch.concurrent_streams.or(base.concurrent_streams),
        event_subscriptions: patch.event_subscriptions.or(base.event_subscriptions),
    })
}

/// Applies the fields set in `patch` over `base`; a quota must be at least 1, except
/// `sessionIdleTtlSeconds`, where 0 keeps sessions until deleted.
fn merge_quotas(base: &KeyQuotas, patch: Option<&proto::Quotas>) -> ApiResult<KeyQuotas> {
    let Some(patch) = patch else {
        return Ok(base.clone());
    };
    let positive = |value: Option<u64>, field: &str| -> ApiResult<()> {
        if value == Some(0) {
            return Err(ApiError::invalid_field(
                format!("quotas.{field}"),
                "Invalid quota",
                format!("The field 'quotas.{field}' must be a positive integer (at least 1)"),
            ));
        }
        Ok(())
    };
    positive(patch.max_sessions, "maxSessions")?;
    positive(patch.max_messages_per_session, "maxMessagesPerSession")?;
    positive(patch.max_session_bytes, "maxSessionBytes")?;
    positive(patch.max_message_bytes, "maxMessageBytes")?;
    positive(patch.max_cron_jobs, "maxCronJobs")?;
    if let Some(ttl) = patch.session_idle_ttl_seconds
        && ttl > MAX_IDLE_TTL_SECONDS
    {
        return Err(ApiError::invalid_field(
            "quotas.sessionIdleTtlSeconds",
            "Invalid quota",
            format!(
                "The field 'quotas.sessionIdleTtlSeconds' must be from 0 (keep sessions until deleted) to {MAX_IDLE_TTL_SECONDS} (100 years)"
            ),
        ));
    }
    Ok(KeyQuotas {
        max_sessions: patch.max_sessions.or(base.max_sessions),
        max_messages_per_session: patch
            .max_messages_per_session
            .or(base.max_messages_per_session),
        max_session_bytes: patch.max_session_bytes.or(base.max_session_bytes),
        max_message_bytes: patch.max_message_bytes.or(base.max_message_bytes),
        max_cron_jobs: patch.max_cron_jobs.or(base.max_cron_jobs),
        session_idle_ttl_seconds: patch
            .session_idle_ttl_seconds
            .or(base.session_idle_ttl_seconds),
    })
}

/// The longest idle expiry a key may ask for: 100 years (a Redis TTL in ms stays far from
/// overflow).
const MAX_IDLE_TTL_SECONDS: u64 = 100 * 365 * 24 * 3600;

#[tonic::async_trait]
impl KeyService for Keys {
    async fn create_key(
        &self,
        request: Request<proto::CreateKeyRequest>,
    ) -> Result<Response<proto::CreateKeyResponse>, Status> {
        self.admin(&request).await?;
        let body = request.into_inner();
        let name = validate_name(&body.name)?;
        let scopes = validate_scopes(&body.scopes)?;
        let limits = merge_limits(&KeyLimits::default(), body.limits.as_ref())?;
        let quotas = merge_quotas(&KeyQuotas::default(), body.quotas.as_ref())?;
        let budget = body
            .budget
            .as_ref()
            .map(crate::spend::parse_budget)
            .transpose()?;
        let mut generated = generate_key(name, scopes, limits, quotas);
        generated.record.budget = budget;
        self.store
            .insert_key(&generated.record)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(key = %generated.record.id, name = %generated.record.name, "API key created");
        Ok(Response::new(proto::CreateKeyResponse {
            key: Some(self.shown(&generated.record)),
            secret: generated.secret,
        }))
    }

    async fn list_keys(
        &self,
        request: Request<proto::ListKeysRequest>,
    ) -> Result<Response<proto::ListKeysResponse>, Status> {
        self.admin(&request).await?;
        let keys = self.store.list_keys().await.map_err(ApiError::from)?;
        let shown =
            futures::future::try_join_all(keys.iter().map(|key| self.shown_with_spend(key)))
                .await?;
        Ok(Response::new(proto::ListKeysResponse { keys: shown }))
    }

    async fn get_key(
        &self,
        request: Request<proto::GetKeyRequest>,
    ) -> Result<Response<proto::ApiKey>, Status> {
        self.admin(&request).await?;
        let key = self.existing(&request.get_ref().id).await?;
        Ok(Response::new(self.shown_with_spend(&key).await?))
    }

    async fn update_key(
        &self,
        request: Request<proto::UpdateKeyRequest>,
    ) -> Result<Response<proto::ApiKey>, Status> {
        self.admin(&request).await?;
        let body = request.into_inner();
        let mut key = self.existing(&body.id).await?;
        if let Some(name) = &body.name {
            key.name = validate_name(name)?;
        }
        key.limits = merge_limits(&key.limits, body.limits.as_ref())?;
        key.quotas = merge_quotas(&key.quotas, body.quotas.as_ref())?;
        match (&body.budget, body.remove_budget) {
            (Some(_), true) => {
                return Err(ApiError::invalid_field(
                    "budget",
                    "Conflicting budget change",
                    "Send either a new 'budget' or 'removeBudget', not both",
                )
                .into());
            }
            (Some(budget), false) => key.budget = Some(crate::spend::parse_budget(budget)?),
            (None, true) => key.budget = None,
            (None, false) => {}
        }
        if !self.store.update_key(&key).await.map_err(ApiError::from)? {
            return Err(ApiError::not_found("Key", &body.id).into());
        }
        self.door.auth().forget(&key.secret_hash);
        // Re-read: a revocation racing this update is kept by the store.
        let key = self.existing(&body.id).await?;
        Ok(Response::new(self.shown_with_spend(&key).await?))
    }

    async fn revoke_key(
        &self,
        request: Request<proto::RevokeKeyRequest>,
    ) -> Result<Response<proto::ApiKey>, Status> {
        self.admin(&request).await?;
        let id = request.into_inner().id;
        let mut key = self.existing(&id).await?;
        if key.revoked_at.is_none() {
            key.revoked_at = Some(Utc::now());
            if !self.store.update_key(&key).await.map_err(ApiError::from)? {
                return Err(ApiError::not_found("Key", &id).into());
            }
            tracing::info!(key = %key.id, "API key revoked");
            self.events.announce(Event::key_revoked(&key.id)).await;
        }
        self.door.auth().forget(&key.secret_hash);
        Ok(Response::new(self.shown(&key)))
    }
}
