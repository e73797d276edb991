//! How long a session is kept (docs/retention.md). A new session captures its owner's
//! `sessionIdleTtlSeconds` and its own `expiresAt` in its record; the store enforces the
//! expiry from there (TTLs on Redis, reads and a sweep in the embedded store), so no request
//! pays for it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::quotas::Quotas;
use crate::store::{SessionRecord, Store};

/// The retention rules a replica applies to the sessions it creates.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retention {
    /// The gateway-wide quotas, a key's own over them.
    pub(crate) defaults: Quotas,
}

/// Set (in-process only) by a scheduled agentTurn that starts a fresh session for its run:
/// such a session is kept for the cron session retention
/// (`OPENCLAW_CRON_SESSION_RETENTION_SECS`) after its last turn, or for its owner's idle time
/// to live when that is shorter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CronRunSession {
    /// `0`: only the owner's idle time to live applies.
    pub(crate) retention_secs: u64,
}

impl Retention {
    /// The idle time to live a new session of `principal` gets (`0`: kept until deleted).
    pub(crate) fn idle_ttl_seconds(
        &self,
        principal: &Principal,
        cron_run: Option<CronRunSession>,
    ) -> u64 {
        let own = self
            .defaults
            .for_principal(principal)
            .session_idle_ttl_seconds;
        match cron_run.map(|run| run.retention_secs) {
            Some(run) if run > 0 && (own == 0 || run < own) => run,
            _ => own,
        }
    }
}

/// A create request's `expiresAt`: absent, or an RFC 3339 time after `now`.
pub(crate) fn parse_expires_at(
    raw: Option<&str>,
    now: DateTime<Utc>,
) -> ApiResult<Option<DateTime<Utc>>> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let at = DateTime::parse_from_rfc3339(raw.trim())
        .map_err(|_| {
            ApiError::invalid_field(
                "expiresAt",
                "Invalid expiresAt",
                format!(
                    "The field 'expiresAt' is '{}'; use an RFC 3339 time such as 2026-02-15T00:00:00Z, or leave it out to keep the session while it is in use",
                    raw.chars().take(40).collect::<String>()
                ),
            )
        })?
        .with_timezone(&Utc);
    if at <= now {
        return Err(ApiError::invalid_field(
            "expiresAt",
            "expiresAt is in the past",
            format!(
                "The field 'expiresAt' ({}) must be in the future (it is now {}); give a later time, or leave it out",
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        ));
    }
    Ok(Some(at))
}

/// A continued session accepts only its own `expiresAt` (or none): the end of a session is
/// fixed when it is created.
pub(crate) fn check_unchanged(
    session: &SessionRecord,
    requested: Option<DateTime<Utc>>,
) -> ApiResult<()> {
    let Some(requested) = requested else {
        return Ok(());
    };
    if session.expires_at == Some(requested) {
        return Ok(());
    }
    let current = session.expires_at.map_or_else(
        || "none".to_string(),
        |at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    Err(ApiError::invalid_field(
        "expiresAt",
        "expiresAt cannot be changed",
        format!(
            "The session '{}' exists already and its expiresAt is {current}: a session's expiresAt is set when it is created. Leave 'expiresAt' out to continue it, or create a new session",
            session.id
        ),
    ))
}

/// Drops expired sessions in the background, every `interval`, in batches, until the store
/// has none due; Redis expires a session's own keys by itself, so there it drops the owners'
/// index entries that name them.
pub(crate) fn start_sweep(store: Arc<dyn Store>, interval: Duration) {
    const BATCH: usize = 1000;
    if interval.is_zero() {
        tracing::info!(
            "the sweep of expired sessions is off (OPENCLAW_SESSION_SWEEP_INTERVAL_SECS=0)"
        );
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // A full batch may mean more are due: go on, yielding between batches.
            loop {
                let swept = store.sweep_expired_sessions(BATCH).await;
                if let Ok(dropped) = swept {
                    metrics::counter!("openclaw_expired_sessions_swept_total")
                        .increment(dropped as u64);
                }
                match swept {
                    Ok(dropped) if dropped >= BATCH => tokio::task::yield_now().await,
                    Ok(dropped) => {
                        if dropped > 0 {
                            tracing::debug!(dropped, "expired sessions swept");
                        }
                        break;
                    }
                    Err(err) => {
                        metrics::counter!("openclaw_store_errors_total", "op" => "sweep")
                            .increment(1);
                        tracing::warn!(error = %err, "sweeping expired sessions failed; trying again at the next interval");
                        break;
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retention(idle: u64) -> Retention {
        let mut defaults = Quotas {
            max_sessions: 1,
            max_messages_per_session: 1,
            max_session_bytes: 1,
            max_message_bytes: 1,
            max_cron_jobs: 1,
            session_idle_ttl_seconds: 0,
        };
        defaults.session_idle_ttl_seconds = idle;
        Retention { defaults }
    }

    #[test]
    fn a_cron_run_session_keeps_the_shorter_of_its_retention_and_the_owners_idle_ttl() {
        let run = |secs| {
            Some(CronRunSession {
                retention_secs: secs,
            })
        };
        let internal = Principal::Internal;
        assert_eq!(retention(100).idle_ttl_seconds(&internal, None), 100);
        assert_eq!(retention(100).idle_ttl_seconds(&internal, run(10)), 10);
        assert_eq!(retention(5).idle_ttl_seconds(&internal, run(10)), 5);
        assert_eq!(retention(0).idle_ttl_seconds(&internal, run(10)), 10);
        assert_eq!(retention(100).idle_ttl_seconds(&internal, run(0)), 100);
        assert_eq!(retention(0).idle_ttl_seconds(&internal, None), 0);
    }

    #[test]
    fn expires_at_must_be_a_future_rfc3339_time() {
        let now = Utc::now();
        assert_eq!(parse_expires_at(None, now).unwrap(), None);
        let later = (now + chrono::Duration::hours(1)).to_rfc3339();
        assert!(parse_expires_at(Some(&later), now).unwrap().is_some());
        let past = (now - chrono::Duration::seconds(1)).to_rfc3339();
        let err = parse_expires_at(Some(&past), now).unwrap_err();
        assert!(
            format!("{err:?}").contains("must be in the future"),
            "{err:?}"
        );
        let err = parse_expires_at(Some("tomorrow"), now).unwrap_err();
        assert!(format!("{err:?}").contains("RFC 3339"), "{err:?}");
    }
}
