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
use rand::Rng;
use rand::distr::Alphanumeric;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};

use crate::auth::{Principal, hash_secret};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::front_door::{FrontDoor, Scope};
use crate::store::Store;

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
    ttl: std::time::Duration,
}

impl DashboardSessions {
    pub(crate) fn new(store: Arc<dyn DashboardSessionStore>, keys: Arc<dyn Store>) -> Self {
        Self {
            store,
            keys,
            ttl: SESSION_TTL,
        }
    }

    async fn open(&self, principal: &Principal) -> ApiResult<(String, DashboardSession)> {
        let id = format!("{SESSION_PREFIX}{}", random_chars(43));
        let session = DashboardSession {
            key_id: match principal {
                Principal::Key(key) => Some(key.id.clone()),
                Principal::Internal => None,
            },
            csrf_token: random_chars(43),
            expires_at: Utc::now()
                + chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::hours(12)),
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
        let session = self.find(metadata).await?;
        let Some(key_id) = &session.key_id else {
            return Ok(Principal::Internal);
        };
        let key = self.keys.key_by_id(key_id).await?.ok_or_else(signed_out)?;
        if key.is_revoked() {
            return Err(ApiError::unauthorized(
                "This API key has been revoked; sign in again with a valid key",
            ));
        }
        Ok(Principal::Key(Arc::new(key)))
    }
}

fn signed_out() -> ApiError {
    ApiError::unauthorized("The dashboard session has expired or was ended; sign in again")
}

pub(crate) struct Dashboard {
    door: Arc<FrontDoor>,
    store: Arc<dyn Store>,
    sign_ins: Arc<DashboardSessions>,
    traffic: Arc<Traffic>,
}

impl Dashboard {
    pub(crate) fn new(
        door: Arc<FrontDoor>,
        store: Arc<dyn Store>,
        sign_ins: Arc<DashboardSessions>,
        traffic: Arc<Traffic>,
    ) -> Self {
        Self {
            door,
            store,
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
                Principal::Key(key) => Some(crate::convert::api_key(key)),
                Principal::Internal => None,
            },
            csrf_token: session.csrf_token.clone(),
            expires_at: Some(crate::convert::timestamp(session.expires_at)),
        }
    }

    async fn usage_of(&self, principal: &Principal) -> ApiResult<proto::KeyUsage> {
        let Principal::Key(key) = principal else {
            return Err(ApiError::invalid(
                "Not a key",
                "The internal token has no usage; name the keys in 'keyIds'",
            ));
        };
        let quota = self.door.quota(principal);
        let usage = self.door.limits().usage(&key.id).await?;
        Ok(proto::KeyUsage {
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
