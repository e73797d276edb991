//! Who is calling. Every gRPC call carries `authorization: Bearer <secret>`,
//! where the secret is an API key (generated here, stored only as a SHA-256)
//! or the internal token from the environment or `.env`.
//!
//! Verified keys are cached per replica for [`KEY_CACHE_TTL`], which bounds
//! how long a revocation takes to reach every replica: new calls are refused by then, and
//! calls that stay open (event subscriptions) re-check their key through the same cache
//! ([`Authenticator::still_valid`]) and end by then too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;

use crate::config::Secret;
use crate::error::{ApiError, ApiResult};
use crate::store::{KeyRecord, Store};

/// How long a replica trusts a key it has verified before asking the store again.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(2);
/// How often a long-lived call (an event subscription) checks that its key still holds, and
/// how old a cached verification that check accepts: half the cache's lifetime each, so a key
/// revoked on any replica ends such calls within [`KEY_CACHE_TTL`] too.
pub const KEY_RECHECK_INTERVAL: Duration = Duration::from_millis(1000);
/// How long a verified key is still trusted while the store is unreachable.
const STALE_KEY_GRACE: Duration = Duration::from_secs(300);
/// How often a key's last-used time is written, at most.
const TOUCH_INTERVAL: Duration = Duration::from_secs(60);
/// Every key starts with this, so leaked keys are easy to recognise and scan for.
pub const KEY_PREFIX: &str = "oc_";
const KEY_RANDOM_CHARS: usize = 40;
/// How many characters of a key are shown back (`oc_` and 8 more).
const SHOWN_PREFIX_CHARS: usize = 11;

/// What a key may do. A key created without scopes has all of them.
pub const SCOPES: &[&str] = &["sessions", "cron", "status"];

#[derive(Debug, Clone)]
pub enum Principal {
    /// The holder of an API key.
    Key(Arc<KeyRecord>),
    /// A service holding the internal token.
    Internal,
}

impl Principal {
    /// The namespace that owns this caller's sessions and jobs.
    pub fn owner_id(&self) -> &str {
        match self {
            Principal::Key(key) => &key.id,
            Principal::Internal => "internal",
        }
    }

    pub fn require_scope(&self, scope: &str) -> ApiResult<()> {
        match self {
            Principal::Internal => Ok(()),
            Principal::Key(key) if key.scopes.iter().any(|s| s == scope) => Ok(()),
            Principal::Key(_) => Err(ApiError::forbidden(format!(
                "This API key lacks the '{scope}' scope; create a key with it (scopes: {})",
                SCOPES.join(", ")
            ))),
        }
    }

    pub fn require_internal(&self) -> ApiResult<()> {
        match self {
            Principal::Internal => Ok(()),
            Principal::Key(_) => Err(ApiError::forbidden(
                "Key administration needs the internal token (OPENCLAW_INTERNAL_TOKEN), not an API key",
            )),
        }
    }
}

/// A freshly generated key: the secret is shown once, the record is stored.
pub struct GeneratedKey {
    pub secret: String,
    pub record: KeyRecord,
}

pub fn hash_secret(secret: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(secret.as_bytes());
    let mut out = String::with_capacity(64);
    for byte in digest {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    out
}

fn random_chars(n: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

pub fn generate_key(
    name: String,
    scopes: Vec<String>,
    limits: crate::store::KeyLimits,
    quotas: crate::store::KeyQuotas,
) -> GeneratedKey {
    let secret = format!("{KEY_PREFIX}{}", random_chars(KEY_RANDOM_CHARS));
    let record = KeyRecord {
        id: format!("key_{}", random_chars(16)),
        name,
        secret_hash: hash_secret(&secret),
        prefix: secret[..SHOWN_PREFIX_CHARS].to_string(),
        scopes,
        limits,
        quotas,
        budget: None,
        created_at: Utc::now(),
        last_used_at: None,
        revoked_at: None,
    };
    GeneratedKey { secret, record }
}

struct CachedKey {
    record: Arc<KeyRecord>,
    verified_at: Instant,
}

pub struct Authenticator {
    store: Arc<dyn Store>,
    internal_token: Option<Secret>,
    /// What an edge holding the internal token sends to vouch for the client address it
    /// forwards ([`openclaw_runtime::forwarding`]).
    edge_proof: Option<String>,
    cache: Mutex<HashMap<String, CachedKey>>,
    touched: Mutex<HashMap<String, Instant>>,
    /// Bound on one key lookup in the store (the Redis timeout).
    lookup_timeout: Duration,
}

impl Authenticator {
    pub fn new(store: Arc<dyn Store>, internal_token: Option<Secret>) -> Self {
        let edge_proof = internal_token
            .as_ref()
            .map(|token| openclaw_runtime::forwarding::edge_proof(token.expose()));
        Self {
            store,
            internal_token,
            edge_proof,
            cache: Mutex::new(HashMap::new()),
            touched: Mutex::new(HashMap::new()),
            lookup_timeout: Duration::from_secs(1),
        }
    }

    /// Bounds every key lookup in the store by `timeout` (the Redis timeout).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.lookup_timeout = timeout;
        self
    }

    /// Whether the call comes from an edge that holds the internal token: only then is the
    /// client address it forwards believed. Constant time, and false when no token is set.
    pub fn is_edge(&self, metadata: &MetadataMap) -> bool {
        let (Some(expected), Some(sent)) = (
            &self.edge_proof,
            metadata.get(openclaw_runtime::forwarding::EDGE_PROOF),
        ) else {
            return false;
        };
        bool::from(expected.as_bytes().ct_eq(sent.as_bytes()))
    }

    /// Whether the call presents a credential that could be right or wrong: a bearer secret.
    /// A call without one (or with a header no secret could pass) guesses nothing.
    pub fn presents_credential(metadata: &MetadataMap) -> bool {
        bearer(metadata).is_ok()
    }

    /// Verifies the caller's bearer credential.
    pub async fn authenticate(&self, metadata: &MetadataMap) -> ApiResult<Principal> {
        let secret = bearer(metadata)?;
        if let Some(token) = &self.internal_token
            && bool::from(token.expose().as_bytes().ct_eq(secret.as_bytes()))
        {
            return Ok(Principal::Internal);
        }
        if !secret.starts_with(KEY_PREFIX) {
            return Err(invalid_key());
        }
        let record = self.verified(&hash_secret(secret), KEY_CACHE_TTL).await?;
        if record.is_revoked() {
            return Err(revoked());
        }
        self.touch(&record);
        Ok(Principal::Key(record))
    }

    /// Whether a key verified earlier, by a call still open (an event subscription), still
    /// holds: `Err(UNAUTHORIZED)` once it has been revoked or deleted on any replica. Answered
    /// from the cache while its verification is younger than [`KEY_RECHECK_INTERVAL`], so
    /// checking every interval costs a key at most one store read per interval and replica,
    /// whatever the number of its open calls. Not a use of the key: its last use is not
    /// recorded.
    pub async fn still_valid(&self, key: &KeyRecord) -> ApiResult<()> {
        let record = self
            .verified(&key.secret_hash, KEY_RECHECK_INTERVAL)
            .await?;
        if record.is_revoked() {
            return Err(revoked());
        }
        Ok(())
    }

    /// The key whose secret hashes to `hash`: from the cache while its verification is younger
    /// than `max_age`, otherwise read from the store (and cached).
    async fn verified(&self, hash: &str, max_age: Duration) -> ApiResult<Arc<KeyRecord>> {
        if let Some(record) = self.cached(hash, max_age) {
            return Ok(record);
        }
        match tokio::time::timeout(self.lookup_timeout, self.store.key_by_hash(hash))
            .await
            .unwrap_or(Err(crate::store::StoreError::Timeout))
        {
            Ok(Some(record)) => {
                // The index lookup matched; compare the full hash in constant
                // time anyway so no code path compares secrets byte by byte.
                if !bool::from(record.secret_hash.as_bytes().ct_eq(hash.as_bytes())) {
                    return Err(invalid_key());
                }
                let record = Arc::new(record);
                self.remember(hash.to_owned(), record.clone());
                Ok(record)
            }
            Ok(None) => Err(invalid_key()),
            // The store is unreachable: a key verified recently stays
            // trusted for a while (without refreshing it), so the limits'
            // Redis-down policy decides what happens, not authentication.
            Err(err) => self
                .cached(hash, STALE_KEY_GRACE)
                .ok_or_else(|| ApiError::from(err)),
        }
    }

    /// Forgets a key at once on this replica (others follow within [`KEY_CACHE_TTL`]).
    pub fn forget(&self, secret_hash: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(secret_hash);
        }
    }

    fn cached(&self, hash: &str, max_age: Duration) -> Option<Arc<KeyRecord>> {
        let cache = self.cache.lock().ok()?;
        let entry = cache.get(hash)?;
        (entry.verified_at.elapsed() < max_age).then(|| entry.record.clone())
    }

    fn remember(&self, hash: String, record: Arc<KeyRecord>) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() > 100_000 {
                cache.retain(|_, entry| entry.verified_at.elapsed() < STALE_KEY_GRACE);
            }
            cache.insert(
                hash,
                CachedKey {
                    record,
                    verified_at: Instant::now(),
                },
            );
        }
    }

    /// Records the key's last use, at most once a minute per replica, off the request path.
    fn touch(&self, record: &Arc<KeyRecord>) {
        let due = match self.touched.lock() {
            Ok(mut touched) => {
                let due = touched
                    .get(&record.id)
                    .is_none_or(|at| at.elapsed() >= TOUCH_INTERVAL);
                if due {
                    touched.insert(record.id.clone(), Instant::now());
                }
                due
            }
            Err(_) => false,
        };
        if !due {
            return;
        }
        let store = self.store.clone();
        let id = record.id.clone();
        tokio::spawn(async move {
            if let Err(err) = store.touch_key(&id, Utc::now()).await {
                tracing::debug!(error = %err, key = %id, "could not record the key's last use");
            }
        });
    }
}

fn revoked() -> ApiError {
    ApiError::unauthorized(
        "This API key has been revoked; generate a new key in the dashboard (Settings → API Keys)",
    )
}

fn invalid_key() -> ApiError {
    ApiError::unauthorized("Please provide a valid API key in Authorization header")
}

/// The secret from `authorization: Bearer <secret>`.
pub fn bearer(metadata: &MetadataMap) -> ApiResult<&str> {
    let Some(value) = metadata.get("authorization") else {
        return Err(ApiError::unauthorized(
            "Missing Authorization header; send 'Authorization: Bearer YOUR_API_KEY'",
        ));
    };
    let value = value.to_str().map_err(|_| invalid_key())?;
    let (scheme, secret) = value.trim().split_once(' ').ok_or_else(|| {
        ApiError::unauthorized(
            "Malformed Authorization header; use 'Authorization: Bearer YOUR_API_KEY'",
        )
    })?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::unauthorized(format!(
            "Unsupported authorization scheme '{scheme}'; use 'Authorization: Bearer YOUR_API_KEY'"
        )));
    }
    let secret = secret.trim();
    if secret.is_empty() {
        return Err(invalid_key());
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_stored_as_its_sha256_in_lowercase_hex() {
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn generated_keys_are_long_random_and_stored_only_as_a_hash() {
        let a = generate_key("a".into(), vec![], Default::default(), Default::default());
        let b = generate_key("b".into(), vec![], Default::default(), Default::default());
        assert_ne!(a.secret, b.secret);
        assert!(a.secret.starts_with(KEY_PREFIX));
        assert_eq!(a.secret.len(), KEY_PREFIX.len() + KEY_RANDOM_CHARS);
        assert_eq!(a.record.secret_hash, hash_secret(&a.secret));
        assert!(!a.record.secret_hash.contains(&a.secret));
        assert!(a.secret.starts_with(&a.record.prefix));
    }

    #[test]
    fn bearer_accepts_any_case_scheme_and_rejects_the_rest() {
        let mut md = MetadataMap::new();
        assert!(bearer(&md).is_err());
        md.insert("authorization", "bearer oc_x".parse().unwrap());
        assert_eq!(bearer(&md).unwrap(), "oc_x");
        md.insert("authorization", "Basic abc".parse().unwrap());
        assert!(bearer(&md).is_err());
        md.insert("authorization", "Bearer ".parse().unwrap());
        assert!(bearer(&md).is_err());
    }
}
