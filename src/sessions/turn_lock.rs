//! A session's turn lock: leased in the store, so the turns of one session are taken one at a
//! time on every replica. Its token and the session's incarnation fence the turn's write: a turn
//! whose lease ran out (and whose session another turn may have continued) stores nothing, and
//! neither does a turn whose session was deleted meanwhile, even if a session with the same id
//! was created since.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;

use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::idempotency::SendKey;
use crate::store::{
    AppendOutcome, History, HistoryBudget, LockOutcome, RecordedResult, SessionCaps, SessionRecord,
    Store, StoredMessage, TurnFence,
};

/// The session's turn lock, held until the turn is stored or abandoned.
///
/// Dropped while still held (a caller that went away mid-turn, a failure on a path that did not
/// release it), it is released in the background; a release that fails is retried until the
/// lease would have freed it anyway, so one lost reply from Redis does not block the session for
/// the whole lease.
pub(crate) struct TurnLock {
    pub(crate) owner: String,
    pub(crate) id: String,
    token: String,
    /// The incarnation of the session the lock was taken on.
    incarnation: String,
    store: Arc<dyn Store>,
    lease_ends: tokio::time::Instant,
    held: AtomicBool,
}

impl TurnLock {
    fn fence(&self) -> TurnFence<'_> {
        TurnFence {
            token: &self.token,
            incarnation: &self.incarnation,
        }
    }

    /// The lock is gone from the store (stored with the turn, or found lost): nothing to release.
    fn forget(&self) {
        self.held.store(false, Ordering::Relaxed);
    }

    /// Releases the lock from a task of its own, retrying until its lease ends.
    fn release_in_background(&self) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(release_until(
                self.store.clone(),
                self.owner.clone(),
                self.id.clone(),
                self.token.clone(),
                self.lease_ends,
            ));
        }
    }
}

impl Drop for TurnLock {
    fn drop(&mut self) {
        if self.held.swap(false, Ordering::Relaxed) {
            self.release_in_background();
        }
    }
}

/// Releases the lock `token` may hold on the session, retrying with backoff until `lease_ends`
/// (when the store frees it by itself). Releasing is idempotent and never frees another holder's
/// lock, so retrying is always safe.
async fn release_until(
    store: Arc<dyn Store>,
    owner: String,
    id: String,
    token: String,
    lease_ends: tokio::time::Instant,
) {
    let mut wait = Duration::from_millis(50);
    let mut failures = 0u32;
    loop {
        match store.unlock_session(&owner, &id, &token).await {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(session = %id, attempts = failures + 1, "session lock released");
                }
                return;
            }
            Err(err) => {
                failures += 1;
                tracing::debug!(error = %err, session = %id, attempt = failures, "could not release a session lock; retrying until its lease ends");
            }
        }
        if tokio::time::Instant::now() + wait >= lease_ends {
            tracing::warn!(session = %id, "session lock not released; its lease frees it");
            return;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}

/// Takes, releases and writes under the sessions' turn locks.
pub(crate) struct TurnLocks {
    store: Arc<dyn Store>,
    /// How long a lock is leased: longer than any model call.
    lease: Duration,
    /// How long a send's result is kept for a client repeating its request id.
    retention: Duration,
}

impl TurnLocks {
    pub(crate) fn new(store: Arc<dyn Store>, lease: Duration, retention: Duration) -> Self {
        Self {
            store,
            lease,
            retention,
        }
    }

    /// Waits for the session's turn lock, reading what of its history `budget` can hold.
    /// `Ok(None)` when the session does not exist.
    pub(crate) async fn lock(
        &self,
        owner: &str,
        id: &str,
        budget: &HistoryBudget,
    ) -> ApiResult<Option<(TurnLock, SessionRecord, History)>> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let deadline = tokio::time::Instant::now() + self.lease;
        let mut wait = Duration::from_millis(5);
        loop {
            // Leased from now: the store's lease starts no earlier than the request leaves.
            let lease_ends = tokio::time::Instant::now() + self.lease;
            let outcome = match self
                .store
                .lock_session(owner, id, &token, self.lease, budget)
                .await
            {
                Ok(outcome) => outcome,
                Err(err) => {
                    // The store may have taken the lock even though its answer never came
                    // (a stalled Redis that resumes, a connection lost after the write):
                    // give it back rather than let it block the session for the lease.
                    tokio::spawn(release_until(
                        self.store.clone(),
                        owner.to_string(),
                        id.to_string(),
                        token,
                        lease_ends,
                    ));
                    return Err(err.into());
                }
            };
            match outcome {
                LockOutcome::Acquired { session, history } => {
                    let lock = TurnLock {
                        owner: owner.to_string(),
                        id: id.to_string(),
                        token,
                        incarnation: session.incarnation.clone(),
                        store: self.store.clone(),
                        lease_ends,
                        held: AtomicBool::new(true),
                    };
                    return Ok(Some((lock, session, history)));
                }
                LockOutcome::NoSession => return Ok(None),
                LockOutcome::Busy => {
                    if tokio::time::Instant::now() + wait > deadline {
                        return Err(ApiError::new(
                            ErrorCode::Conflict,
                            "Session busy",
                            "Another message to this session is still being answered; retry when it has finished",
                        ));
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(100));
                }
            }
        }
    }

    /// Gives the lock back now; if the store does not answer, keeps trying in the background.
    pub(crate) async fn release(&self, lock: &TurnLock) {
        if !lock.held.swap(false, Ordering::Relaxed) {
            return;
        }
        if let Err(err) = self
            .store
            .unlock_session(&lock.owner, &lock.id, &lock.token)
            .await
        {
            tracing::warn!(error = %err, session = %lock.id, "could not release a session lock; retrying in the background");
            lock.release_in_background();
        }
    }

    /// Stores a turn's messages and releases the lock, atomically, if the lock is still
    /// ours and the session stays within `caps`; with a key, the send's recorded result too.
    pub(crate) async fn append(
        &self,
        lock: &TurnLock,
        new: &[StoredMessage],
        record: Option<(&SendKey, &[u8])>,
        caps: SessionCaps,
    ) -> ApiResult<()> {
        let store = &self.store;
        let outcome = match record {
            None => {
                store
                    .append_turn(&lock.owner, &lock.id, lock.fence(), new, Utc::now(), caps)
                    .await?
            }
            Some((key, body)) => {
                store
                    .append_turn_recording(
                        &lock.owner,
                        &lock.id,
                        lock.fence(),
                        new,
                        Utc::now(),
                        RecordedResult {
                            request_id: &key.request_id,
                            body,
                            retention: self.retention,
                        },
                        caps,
                    )
                    .await?
            }
        };
        // Each outcome leaves the lock gone: released with the turn, deleted with the session,
        // or already someone else's.
        lock.forget();
        fenced(lock, outcome)
    }

    /// Stores a compaction summary under the turn's lock, which stays held for the turn.
    pub(crate) async fn append_summary(
        &self,
        lock: &TurnLock,
        summary: &StoredMessage,
    ) -> ApiResult<()> {
        let outcome = self
            .store
            .append_summary(&lock.owner, &lock.id, lock.fence(), summary)
            .await?;
        if outcome != AppendOutcome::Appended {
            lock.forget();
        }
        fenced(lock, outcome)
    }
}

/// What a fenced write's outcome means for the caller.
fn fenced(lock: &TurnLock, outcome: AppendOutcome) -> ApiResult<()> {
    match outcome {
        AppendOutcome::Appended => Ok(()),
        AppendOutcome::OverQuota(breach) => Err(crate::quotas::refusal(breach)),
        AppendOutcome::SessionGone => Err(ApiError::new(
            ErrorCode::NotFound,
            "Session deleted",
            format!(
                "The session '{}' was deleted while this reply was being produced (or reached its expiry meanwhile), so the reply was not stored; create a new session (POST /api/v1/sessions) and send the message there",
                lock.id
            ),
        )),
        AppendOutcome::LockLost => Err(ApiError::new(
            ErrorCode::Conflict,
            "Turn not stored",
            "The session's turn lock expired before the reply arrived, so nothing was stored; send the message again",
        )),
    }
}
