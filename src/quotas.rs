//! Per-key quotas on what a key keeps stored: sessions, each session's messages and bytes,
//! one message's bytes, cron jobs, and how long an idle session is kept. A key's own values
//! (its record's [`KeyQuotas`]) override the gateway-wide defaults from configuration.

use crate::auth::Principal;
use crate::config::CoreConfig;
use crate::store::KeyQuotas;

/// The quotas in force for one caller, every value resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    pub max_sessions: u64,
    pub max_messages_per_session: u64,
    pub max_session_bytes: u64,
    pub max_message_bytes: u64,
    pub max_cron_jobs: u64,
    /// `0`: sessions are kept until deleted.
    pub session_idle_ttl_seconds: u64,
}

impl Quotas {
    /// The gateway-wide defaults, from configuration.
    pub fn defaults(config: &CoreConfig) -> Self {
        Self {
            max_sessions: config.default_max_sessions,
            max_messages_per_session: config.default_max_messages_per_session,
            max_session_bytes: config.default_max_session_bytes,
            max_message_bytes: config.default_max_message_bytes,
            max_cron_jobs: config.default_max_cron_jobs,
            session_idle_ttl_seconds: config.default_session_idle_ttl_seconds,
        }
    }

    /// These defaults with a key's own values put over them.
    pub fn with_own(self, own: &KeyQuotas) -> Self {
        Self {
            max_sessions: own.max_sessions.unwrap_or(self.max_sessions),
            max_messages_per_session: own
                .max_messages_per_session
                .unwrap_or(self.max_messages_per_session),
            max_session_bytes: own.max_session_bytes.unwrap_or(self.max_session_bytes),
            max_message_bytes: own.max_message_bytes.unwrap_or(self.max_message_bytes),
            max_cron_jobs: own.max_cron_jobs.unwrap_or(self.max_cron_jobs),
            session_idle_ttl_seconds: own
                .session_idle_ttl_seconds
                .unwrap_or(self.session_idle_ttl_seconds),
        }
    }

    /// The quotas of `principal`: a key's own over these defaults; the internal token has the
    /// defaults.
    pub fn for_principal(self, principal: &Principal) -> Self {
        match principal {
            Principal::Key(key) => self.with_own(&key.quotas),
            Principal::Internal => self,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Quotas {
        Quotas {
            max_sessions: 10,
            max_messages_per_session: 20,
            max_session_bytes: 30,
            max_message_bytes: 40,
            max_cron_jobs: 50,
            session_idle_ttl_seconds: 60,
        }
    }

    #[test]
    fn a_keys_own_values_override_only_what_they_name() {
        let own = KeyQuotas {
            max_sessions: Some(3),
            session_idle_ttl_seconds: Some(0),
            ..KeyQuotas::default()
        };
        let resolved = defaults().with_own(&own);
        assert_eq!(resolved.max_sessions, 3);
        assert_eq!(resolved.session_idle_ttl_seconds, 0, "0 means keep forever");
        assert_eq!(resolved.max_cron_jobs, 50);
        assert_eq!(defaults().with_own(&KeyQuotas::default()), defaults());
    }
}
