//! Dashboard sessions: created by signing in, referenced by the browser's
//! cookie, stored under the SHA-256 of the session id with an expiry. In Redis
//! every replica sees them; the embedded default keeps them in this process
//! (it is one process), so a restart signs everybody out.
//!
//! Each session also records what it may be ended by: the credential it was
//! opened with (a keyed hash, [`DashboardSession::binding`]) and its identity's
//! sign-out generation when it was opened. "Sign out everywhere" raises the
//! generation, which ends every session opened before, on every replica.
//!
//! | Redis key | value | expiry |
//! |---|---|---|
//! | `oc:dash:<sha256 of the session id>` | the session as JSON | `EX` = the time it has left |
//! | `oc:dash:gen:operator`, `oc:dash:gen:key:<key id>` | the identity's sign-out generation (an integer, `INCR`) | none: a counter that expired would start again at 0 and could match an older session's number |

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::store::SharedConnection;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::{StoreError, StoreResult};

/// How long a dashboard session lasts after signing in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// What a session id stands for. Never holds the credential that signed in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DashboardSession {
    /// The API key's id, or `None` for an operator (the internal token).
    pub key_id: Option<String>,
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
    /// A keyed hash of the credential the session was opened with (see
    /// `dashboard::binding`). Empty in sessions stored before sessions were bound,
    /// which therefore no longer resolve.
    #[serde(default)]
    pub binding: String,
    /// The identity's sign-out generation when the session was opened.
    #[serde(default)]
    pub generation: u64,
}

impl DashboardSession {
    /// Who signed in, as "sign out everywhere" counts them: the operator, or one key.
    pub fn identity(&self) -> String {
        identity_of(self.key_id.as_deref())
    }
}

/// `operator`, or `key:<key id>`.
pub fn identity_of(key_id: Option<&str>) -> String {
    match key_id {
        Some(id) => format!("key:{id}"),
        None => "operator".to_string(),
    }
}

#[async_trait]
pub trait DashboardSessionStore: Send + Sync + 'static {
    /// Stores the session under `hash` until it expires.
    async fn put(&self, hash: &str, session: &DashboardSession) -> StoreResult<()>;
    /// The session, unless it is unknown or expired.
    async fn get(&self, hash: &str) -> StoreResult<Option<DashboardSession>>;
    async fn delete(&self, hash: &str) -> StoreResult<()>;
    /// The identity's sign-out generation: 0 until its first "sign out everywhere".
    async fn generation(&self, identity: &str) -> StoreResult<u64>;
    /// Raises the identity's sign-out generation, so every session of it opened
    /// so far no longer resolves; returns the new generation.
    async fn end_all(&self, identity: &str) -> StoreResult<u64>;
}

fn seconds_left(session: &DashboardSession) -> u64 {
    (session.expires_at - Utc::now()).num_seconds().max(1) as u64
}

/// `oc:dash:<sha256 of the session id>` → the session as JSON, with `EX`.
pub struct RedisDashboardSessions {
    conn: SharedConnection,
}

impl RedisDashboardSessions {
    pub fn new(conn: SharedConnection) -> Self {
        Self { conn }
    }
}

fn redis_key(hash: &str) -> String {
    format!("oc:dash:{hash}")
}

fn generation_key(identity: &str) -> String {
    format!("oc:dash:gen:{identity}")
}

#[async_trait]
impl DashboardSessionStore for RedisDashboardSessions {
    async fn put(&self, hash: &str, session: &DashboardSession) -> StoreResult<()> {
        let json =
            serde_json::to_string(session).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(redis_key(hash))
            .arg(json)
            .arg("EX")
            .arg(seconds_left(session))
            .query_async::<()>(&mut conn)
            .await
            .map_err(StoreError::from)
    }

    async fn get(&self, hash: &str) -> StoreResult<Option<DashboardSession>> {
        let mut conn = self.conn.clone();
        let json: Option<String> = redis::cmd("GET")
            .arg(redis_key(hash))
            .query_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        let Some(json) = json else { return Ok(None) };
        let session: DashboardSession =
            serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok((session.expires_at > Utc::now()).then_some(session))
    }

    async fn delete(&self, hash: &str) -> StoreResult<()> {
        let mut conn = self.conn.clone();
        redis::cmd("DEL")
            .arg(redis_key(hash))
            .query_async::<()>(&mut conn)
            .await
            .map_err(StoreError::from)
    }

    async fn generation(&self, identity: &str) -> StoreResult<u64> {
        let mut conn = self.conn.clone();
        let generation: Option<u64> = redis::cmd("GET")
            .arg(generation_key(identity))
            .query_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        Ok(generation.unwrap_or(0))
    }

    async fn end_all(&self, identity: &str) -> StoreResult<u64> {
        let mut conn = self.conn.clone();
        redis::cmd("INCR")
            .arg(generation_key(identity))
            .query_async(&mut conn)
            .await
            .map_err(StoreError::from)
    }
}

/// Sessions in this process's memory, for the single-process embedded default.
#[derive(Default)]
pub struct MemoryDashboardSessions {
    sessions: Mutex<HashMap<String, DashboardSession>>,
    generations: Mutex<HashMap<String, u64>>,
}

fn poisoned() -> StoreError {
    StoreError::Unavailable("dashboard session table lock poisoned".into())
}

#[async_trait]
impl DashboardSessionStore for MemoryDashboardSessions {
    async fn put(&self, hash: &str, session: &DashboardSession) -> StoreResult<()> {
        let mut sessions = self.sessions.lock().map_err(|_| poisoned())?;
        let now = Utc::now();
        sessions.retain(|_, s| s.expires_at > now);
        sessions.insert(hash.to_string(), session.clone());
        Ok(())
    }

    async fn get(&self, hash: &str) -> StoreResult<Option<DashboardSession>> {
        let sessions = self.sessions.lock().map_err(|_| poisoned())?;
        Ok(sessions
            .get(hash)
            .filter(|s| s.expires_at > Utc::now())
            .cloned())
    }

    async fn delete(&self, hash: &str) -> StoreResult<()> {
        self.sessions.lock().map_err(|_| poisoned())?.remove(hash);
        Ok(())
    }

    async fn generation(&self, identity: &str) -> StoreResult<u64> {
        let generations = self.generations.lock().map_err(|_| poisoned())?;
        Ok(generations.get(identity).copied().unwrap_or(0))
    }

    async fn end_all(&self, identity: &str) -> StoreResult<u64> {
        let mut generations = self.generations.lock().map_err(|_| poisoned())?;
        let generation = generations.entry(identity.to_string()).or_insert(0);
        *generation += 1;
        // The ended sessions would resolve to nothing from now on; drop them at once.
        self.sessions
            .lock()
            .map_err(|_| poisoned())?
            .retain(|_, s| s.identity() != identity);
        Ok(*generation)
    }
}

/// The store the core uses for dashboard sessions.
pub fn memory() -> Arc<dyn DashboardSessionStore> {
    Arc::new(MemoryDashboardSessions::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn expired_sessions_are_not_returned() {
        let store = MemoryDashboardSessions::default();
        let live = DashboardSession {
            key_id: None,
            csrf_token: "c".into(),
            expires_at: Utc::now() + chrono::Duration::seconds(60),
            binding: "b".into(),
            generation: 0,
        };
        let dead = DashboardSession {
            expires_at: Utc::now() - chrono::Duration::seconds(1),
            ..live.clone()
        };
        store.put("a", &live).await.unwrap();
        store.put("b", &dead).await.unwrap();
        assert_eq!(store.get("a").await.unwrap(), Some(live));
        assert_eq!(store.get("b").await.unwrap(), None);
        store.delete("a").await.unwrap();
        assert_eq!(store.get("a").await.unwrap(), None);
    }

    fn session(key_id: Option<&str>) -> DashboardSession {
        DashboardSession {
            key_id: key_id.map(str::to_string),
            csrf_token: "c".into(),
            expires_at: Utc::now() + chrono::Duration::seconds(60),
            binding: "b".into(),
            generation: 0,
        }
    }

    #[tokio::test]
    async fn ending_all_of_one_identity_leaves_the_others() {
        let store = MemoryDashboardSessions::default();
        store.put("op", &session(None)).await.unwrap();
        store.put("k1", &session(Some("key_1"))).await.unwrap();
        store.put("k2", &session(Some("key_2"))).await.unwrap();
        assert_eq!(store.generation("key:key_1").await.unwrap(), 0);
        assert_eq!(store.end_all("key:key_1").await.unwrap(), 1);
        assert_eq!(store.end_all("key:key_1").await.unwrap(), 2);
        assert_eq!(store.generation("key:key_1").await.unwrap(), 2);
        assert_eq!(store.generation("key:key_2").await.unwrap(), 0);
        assert_eq!(store.generation("operator").await.unwrap(), 0);
        assert_eq!(store.get("k1").await.unwrap(), None);
        assert!(store.get("k2").await.unwrap().is_some());
        assert!(store.get("op").await.unwrap().is_some());
    }
}
