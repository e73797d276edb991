//! `DashboardService`: signing in to the web dashboard, and the few views it
//! needs that no other service offers (per-key usage, traffic per minute).
//!
//! A dashboard session is a random id held by the browser in an HttpOnly
//! cookie; the core stores only its SHA-256 (see [`sessions`]). Calls made for
//! a signed-in user carry the id as `x-openclaw-dashboard-session` metadata,
//! which [`FrontDoor::authorize`] resolves to the principal that signed in.

pub(crate) mod sessions;
pub(crate) mod traffic;

use std::sync::Arc;

use chrono::Utc;
use hmac::{Hmac, Mac};
use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};

use crate::auth::{Principal, hash_secret};
use crate::config::Secret;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::front_door::{FrontDoor, Scope};
use crate::store::{KeyRecord, Store};

use self::traffic::Traffic;
use crate::proto::dashboard_service_server::DashboardService;
use crate::proto::{self};

pub use self::sessions::{DashboardSession, DashboardSessionStore, SESSION_TTL};

/// The metadata naming a dashboard session.
pub const SESSION_METADATA: &str = "x-openclaw-dashboard-session";
/// Dashboard session ids start with this, so they are never mistaken for keys.
const SESSION_PREFIX: &str = "ocd_";
const MAX_CREDENTIAL_CHARS: usize = 512;
const MAX_USAGE_KEYS: usize = 500;

fn random_chars(n: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// The dashboard sessions of this deployment, and how long a new one lasts.
pub(crate) struct DashboardSessions {
    store: Arc<dyn DashboardSessionStore>,
    /// Where the key a session signed in with is looked up again on each call.
    keys: Arc<dyn Store>,
    /// The internal token this replica accepts: an operator session resolves only while it
    /// is the token the session was opened with.
    internal_token: Option<Secret>,
    ttl: std::time::Duration,
}

/// What a session is bound to: the credential that opened it, as it stands now.
enum Credential<'a> {
    /// The internal token this replica holds (`None`: it holds none).
    Operator(Option<&'a Secret>),
    Key(&'a KeyRecord),
}

/// A keyed hash of the credential a session was opened with: HMAC-SHA256 keyed with the
/// session id over a domain-separated description of the credential. The store keeps only
/// this and the SHA-256 of the session id, so whoever reads the store can neither find the
/// token in it nor test guesses of the token against it without the browser's cookie.
/// `None` when there is nothing to bind to (an operator session on a replica without a token).
fn binding(session_id: &str, credential: Credential<'_>) -> Option<String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(session_id.as_bytes()).ok()?;
    mac.update(b"openclaw dashboard session binding v1\0");
    match credential {
        Credential::Operator(token) => {
            mac.update(b"operator\0");
            mac.update(token?.expose().as_bytes());
        }
        Credential::Key(key) => {
            mac.update(b"key\0");
            mac.update(key.id.as_bytes());
            mac.update(b"\0");
            mac.update(key.secret_hash.as_bytes());
        }
    }
    let digest = mac.finalize().into_bytes();
    Some(digest.iter().map(|byte| format!("{byte:02x}")).collect())
}

impl DashboardSessions {
    pub(crate) fn new(
        store: Arc<dyn DashboardSessionStore>,
        keys: Arc<dyn Store>,
        internal_token: Option<Secret>,
    ) -> Self {
        Self {
            store,
            keys,
            internal_token,
            ttl: SESSION_TTL,
        }
    }

    fn credential<'a>(&'a self, principal: &'a Principal) -> Credential<'a> {
        match principal {
            Principal::Key(key) => Credential::Key(key),
            Principal::Internal => Credential::Operator(self.internal_token.as_ref()),
        }
    }

    async fn open(&self, principal: &Principal) -> ApiResult<(String, DashboardSession)> {
        let id = format!("{SESSION_PREFIX}{}", random_chars(43));
        let key_id = match principal {
            Principal::Key(key) => Some(key.id.clone()),
            Principal::Internal => None,
        };
        let identity = sessions::identity_of(key_id.as_deref());
        let session = DashboardSession {
            key_id,
            csrf_token: random_chars(43),
            expires_at: Utc::now()
                + chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::hours(12)),
            binding: binding(&id, self.credential(principal)).ok_or_else(|| {
                ApiError::unauthorized(
                    "This replica holds no internal token; sign in with an API key, or set OPENCLAW_INTERNAL_TOKEN",
                )
            })?,
            // Read before the session is stored: a "sign out everywhere" racing this sign-in
            // ends it rather than missing it.
            generation: self.store.generation(&identity).await?,
        };
        self.store.put(&hash_secret(&id), &session).await?;
        Ok((id, session))
    }

    /// The session named in the metadata, if any.
    pub(crate) fn id(metadata: &MetadataMap) -> Option<&str> {
        metadata
            .get(SESSION_METADATA)
            .and_then(|v| v.to_str().ok())
            .filter(|id| id.starts_with(SESSION_PREFIX) && id.len() <= 128)
    }

    async fn find(&self, metadata: &MetadataMap) -> ApiResult<DashboardSession> {
        let id = Self::id(metadata).ok_or_else(signed_out)?;
        self.store
            .get(&hash_secret(id))
            .await?
            .ok_or_else(signed_out)
    }

    /// Resolves a call carrying dashboard-session metadata to the principal that signed in.
    /// `None` when the call carries no such metadata.
    pub(crate) async fn resolve(&self, metadata: &MetadataMap) -> Option<ApiResult<Principal>> {
        metadata.get(SESSION_METADATA)?;
        Some(self.principal_of(metadata).await)
    }

    async fn principal_of(&self, metadata: &MetadataMap) -> ApiResult<Principal> {
        let id = Self::id(metadata).ok_or_else(signed_out)?;
        let hash = hash_secret(id);
        let session = self.store.get(&hash).await?.ok_or_else(signed_out)?;
        match self.check(id, &session).await? {
            Ok(principal) => Ok(principal),
            Err(ended) => {
                // Ended for good: deleted at once, so no later call (on any replica, with any
                // token) can bring it back.
                self.store.delete(&hash).await?;
                tracing::info!(
                    who = session.identity(),
                    reason = ended.reason,
                    "dashboard session ended"
                );
                Err(ApiError::unauthorized(ended.details))
            }
        }
    }

    /// Whether the session still stands: its identity has not signed out everywhere since it
    /// was opened, and the credential it was opened with still holds (the same internal token;
    /// the same key, not revoked). The outer error is the store failing, the inner one why the
    /// session has ended.
    async fn check(
        &self,
        id: &str,
        session: &DashboardSession,
    ) -> ApiResult<Result<Principal, Ended>> {
        if self.store.generation(&session.identity()).await? != session.generation {
            return Ok(Err(Ended {
                reason: "signed out everywhere",
                details: "This dashboard session was ended by 'Sign out everywhere'; sign in again",
            }));
        }
        let principal = match &session.key_id {
            None => Principal::Internal,
            Some(key_id) => match self.keys.key_by_id(key_id).await? {
                None => {
                    return Ok(Err(Ended {
                        reason: "key deleted",
                        details: "The API key this dashboard session was opened with no longer exists; sign in again with a valid key",
                    }));
                }
                Some(key) if key.is_revoked() => {
                    return Ok(Err(Ended {
                        reason: "key revoked",
                        details: "This API key has been revoked; sign in again with a valid key",
                    }));
                }
                Some(key) => Principal::Key(Arc::new(key)),
            },
        };
        let bound = binding(id, self.credential(&principal))
            .is_some_and(|now| bool::from(now.as_bytes().ct_eq(session.binding.as_bytes())));
        if !bound {
            return Ok(Err(match principal {
                Principal::Internal => Ended {
                    reason: "internal token changed",
                    details: "The internal token changed since this dashboard session was opened; sign in again with the current token",
                },
                Principal::Key(_) => Ended {
                    reason: "key changed",
                    details: "The API key this dashboard session was opened with has changed; sign in again with a valid key",
                },
            }));
        }
        Ok(Ok(principal))
    }

    /// Ends every dashboard session of `principal`'s identity, on every replica.
    async fn end_all(&self, principal: &Principal) -> ApiResult<()> {
        let key_id = match principal {
            Principal::Key(key) => Some(key.id.as_str()),
            Principal::Internal => None,
        };
        let identity = sessions::identity_of(key_id);
        self.store.end_all(&identity).await?;
        tracing::info!(who = identity, "dashboard: signed out everywhere");
        Ok(())
    }
}

/// Why a stored session no longer stands: a log word, and what its holder is told.
struct Ended {
    reason: &'static str,
    details: &'static str,
}

fn signed_out() -> ApiError {
    ApiError::unauthorized("The dashboard session has expired or was ended; sign in again")
}

pub(crate) struct Dashboard {
    door: Arc<FrontDoor>,
    store: Arc<dyn Store>,
    /// Where a key's cron jobs are counted (its maxCronJobs quota).
    cron: Arc<dyn crate::cron::store::CronStore>,
    sign_ins: Arc<DashboardSessions>,
    traffic: Arc<Traffic>,
}

impl Dashboard {
    pub(crate) fn new(
        door: Arc<FrontDoor>,
        store: Arc<dyn Store>,
        cron: Arc<dyn crate::cron::store::CronStore>,
        sign_ins: Arc<DashboardSessions>,
        traffic: Arc<Traffic>,
    ) -> Self {
        Self {
            door,
            store,
            cron,
            sign_ins,
            traffic,
        }
    }

    fn identity(
        &self,
        principal: &Principal,
        session: &DashboardSession,
    ) -> proto::DashboardIdentity {
        proto::DashboardIdentity {
            kind: match principal {
                Principal::Internal => "operator",
                Principal::Key(_) => "key",
            }
            .into(),
            key: match principal {
                Principal::Key(key) => {
                    Some(crate::convert::api_key(key, &self.door.default_quotas()))
                }
                Principal::Internal => None,
            },
            csrf_token: session.csrf_token.clone(),
            expires_at: Some(crate::convert::timestamp(session.expires_at)),
        }
    }

    /// What the key has spent in its budget's current period, if it has a budget.
    async fn budget_spend(&self, key: &KeyRecord) -> ApiResult<Option<proto::BudgetSpend>> {
        let Some(budget) = &key.budget else {
            return Ok(None);
        };
        let window = budget.at(self.door.spend_settings().clock.now());
        let spent = self.door.limits().period_spend(&key.id, &window).await?;
        Ok(Some(proto::BudgetSpend {
            spent_micros: spent,
            limit_micros: window.limit_micros,
            period_start: Some(crate::convert::timestamp(window.period.start)),
            resets_at: Some(crate::convert::timestamp(window.resets_at)),
        }))
    }

    async fn usage_of(&self, principal: &Principal) -> ApiResult<proto::KeyUsage> {
        let Principal::Key(key) = principal else {
            return Err(ApiError::invalid(
                "Not a key",
                "The internal token has no usage; name the keys in 'keyIds'",
            ));
        };
        let quota = self.door.quota(principal);
        let quotas = self.door.quotas(principal);
        let (usage, sessions, cron_jobs, budget_spend) = tokio::join!(
            self.door.limits().usage(&key.id),
            self.store.session_count(&key.id),
            self.cron.job_count(&key.id),
            self.budget_spend(key)
        );
        let usage = usage?;
        Ok(proto::KeyUsage {
            budget_spend: budget_spend?,
            sessions: sessions?,
            session_limit: quotas.max_sessions,
            cron_jobs: cron_jobs?,
            cron_job_limit: quotas.max_cron_jobs,
            key_id: key.id.clone(),
            requests: usage.requests,
            tokens: usage.tokens,
            context_tokens: usage.context,
            request_limit: quota.requests,
            token_limit: quota.tokens,
            context_token_limit: quota.context,
        })
    }
}

#[tonic::async_trait]
impl DashboardService for Dashboard {
    async fn sign_in(
        &self,
        request: Request<proto::SignInRequest>,
    ) -> Result<Response<proto::SignInResponse>, Status> {
        let door = &self.door;
        if door.is_draining() {
            return Err(ApiError::unavailable(
                "This core replica is shutting down; retry and another replica will answer",
            )
            .into());
        }
        let credential = request.get_ref().credential.trim();
        let mut metadata = MetadataMap::new();
        let bearer = (!credential.is_empty() && credential.len() <= MAX_CREDENTIAL_CHARS)
            .then(|| MetadataValue::try_from(format!("Bearer {credential}")).ok())
            .flatten();
        let principal = match bearer {
            Some(value) => {
                metadata.insert("authorization", value);
                door.auth().authenticate(&metadata).await
            }
            // Nothing entered guesses nothing: it is not counted against the address.
            None => {
                return Err(
                    ApiError::unauthorized("Enter the internal token or an API key").into(),
                );
            }
        };
        let principal = match principal {
            Ok(principal) => principal,
            Err(err) if err.code == ErrorCode::Unauthorized => {
                let client = door.client_address(&request);
                return Err(door.guessed_wrong(&client, err).await.into());
            }
            Err(err) => return Err(err.into()),
        };
        let (session_id, session) = self.sign_ins.open(&principal).await?;
        tracing::info!(who = principal.owner_id(), "dashboard sign-in");
        Ok(Response::new(proto::SignInResponse {
            session_id,
            identity: Some(self.identity(&principal, &session)),
        }))
    }

    async fn sign_out(
        &self,
        request: Request<proto::SignOutRequest>,
    ) -> Result<Response<proto::SignOutResponse>, Status> {
        if let Some(id) = DashboardSessions::id(request.metadata()) {
            self.sign_ins
                .store
                .delete(&hash_secret(id))
                .await
                .map_err(ApiError::from)?;
        }
        Ok(Response::new(proto::SignOutResponse {}))
    }

    async fn sign_out_everywhere(
        &self,
        request: Request<proto::SignOutEverywhereRequest>,
    ) -> Result<Response<proto::SignOutEverywhereResponse>, Status> {
        let principal = self.door.authorize(&request, Scope::Any).await?;
        self.sign_ins.end_all(&principal).await?;
        Ok(Response::new(proto::SignOutEverywhereResponse {}))
    }

    async fn whoami(
        &self,
        request: Request<proto::WhoamiRequest>,
    ) -> Result<Response<proto::DashboardIdentity>, Status> {
        let principal = self.door.authorize(&request, Scope::Any).await?;
        let session = match self.sign_ins.find(request.metadata()).await {
            Ok(session) => session,
            // A bearer caller has no session (and so no CSRF token).
            Err(_) => DashboardSession {
                key_id: None,
                csrf_token: String::new(),
                expires_at: Utc::now(),
                binding: String::new(),
                generation: 0,
            },
        };
        Ok(Response::new(self.identity(&principal, &session)))
    }

    async fn get_key_usage(
        &self,
        request: Request<proto::GetKeyUsageRequest>,
    ) -> Result<Response<proto::GetKeyUsageResponse>, Status> {
        let principal = self.door.authorize(&request, Scope::Any).await?;
        let ids = &request.get_ref().key_ids;
        let mut usage = Vec::new();
        match &principal {
            Principal::Key(key) => {
                if ids.iter().any(|id| *id != key.id) {
                    // Another key's usage: as if it did not exist.
                    let other = ids
                        .iter()
                        .find(|id| **id != key.id)
                        .cloned()
                        .unwrap_or_default();
                    return Err(ApiError::not_found("Key", &other).into());
                }
                usage.push(self.usage_of(&principal).await?);
            }
            Principal::Internal => {
                for id in ids.iter().take(MAX_USAGE_KEYS) {
                    let key = self
                        .store
                        .key_by_id(id)
                        .await
                        .map_err(ApiError::from)?
                        .ok_or_else(|| ApiError::not_found("Key", id))?;
                    usage.push(self.usage_of(&Principal::Key(Arc::new(key))).await?);
                }
            }
        }
        Ok(Response::new(proto::GetKeyUsageResponse { usage }))
    }

    async fn get_traffic(
        &self,
        request: Request<proto::GetTrafficRequest>,
    ) -> Result<Response<proto::TrafficReport>, Status> {
        self.door.authorize(&request, Scope::Internal).await?;
        let minutes = self
            .traffic
            .last_hour()
            .await
            .into_iter()
            .map(|(minute, counts)| proto::TrafficMinute {
                minute: Some(prost_types::Timestamp {
                    seconds: minute * 60,
                    nanos: 0,
                }),
                requests: counts.requests,
                tokens: counts.tokens,
                rejections: counts.rejections,
            })
            .collect();
        Ok(Response::new(proto::TrafficReport { minutes }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binding_names_one_session_and_one_credential() {
        let token = Secret::new("token-a");
        let rotated = Secret::new("token-b");
        let bound = binding("ocd_1", Credential::Operator(Some(&token)));
        assert!(bound.as_ref().is_some_and(|b| b.len() == 64));
        assert_eq!(bound, binding("ocd_1", Credential::Operator(Some(&token))));
        assert_ne!(
            bound,
            binding("ocd_1", Credential::Operator(Some(&rotated)))
        );
        assert_ne!(bound, binding("ocd_2", Credential::Operator(Some(&token))));
        assert!(
            !bound.as_ref().is_some_and(|b| b.contains("token-a")),
            "the token is not in the stored binding"
        );
        assert_eq!(binding("ocd_1", Credential::Operator(None)), None);
    }
}
