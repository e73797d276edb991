//! Per-key quotas on what a key keeps stored: sessions, each session's messages and bytes,
//! one message's bytes, cron jobs, and how long an idle session is kept. A key's own values
//! (its record's [`KeyQuotas`]) override the gateway-wide defaults from configuration.

use crate::auth::Principal;
use crate::config::CoreConfig;
use crate::error::ApiError;
use crate::store::{CapBreach, KeyQuotas, SessionCap, SessionCaps};

/// What to do about a full sessions quota.
const DELETE_SESSIONS: &str = "delete sessions you no longer need (DELETE /api/v1/sessions/{id}) or ask the gateway's administrator for a higher quota";
/// What to do about a full session.
const NEW_SESSION: &str = "nothing was stored; continue the conversation in a new session (POST /api/v1/sessions) or ask the gateway's administrator for a higher quota";

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

    /// What the store checks a session's writes against.
    pub fn session_caps(&self) -> SessionCaps {
        SessionCaps {
            max_sessions: self.max_sessions,
            max_messages: self.max_messages_per_session,
            max_bytes: self.max_session_bytes,
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

/// The refusal of a session write the store found over a quota.
pub fn refusal(breach: CapBreach) -> ApiError {
    match breach.cap {
        SessionCap::Sessions => ApiError::quota_exceeded(
            "maxSessions",
            breach.limit,
            breach.used,
            "sessions",
            DELETE_SESSIONS,
        ),
        SessionCap::Messages => ApiError::quota_exceeded(
            "maxMessagesPerSession",
            breach.limit,
            breach.used,
            "messages",
            NEW_SESSION,
        ),
        SessionCap::Bytes => ApiError::quota_exceeded(
            "maxSessionBytes",
            breach.limit,
            breach.used,
            "bytes",
            NEW_SESSION,
        ),
    }
}

/// A message longer than the key's `maxMessageBytes`, refused before anything is stored;
/// `field` names the message (`messages[2]`), or its content field when it ends in `message`
/// or `.message` itself (`payload.message`).
pub fn check_message_bytes(quotas: &Quotas, content: &str, field: &str) -> Result<(), ApiError> {
    check_bytes(quotas, content.len() as u64, field)
}

/// [`check_message_bytes`] of a whole message: its text, its parts (an image's URL, data URLs
/// included) and its tool calls' arguments.
pub fn check_chat_message_bytes(
    quotas: &Quotas,
    message: &crate::proto::ChatMessage,
    field: &str,
) -> Result<(), ApiError> {
    let parts: usize = message
        .parts
        .iter()
        .map(|p| p.text.len() + p.image_url.len())
        .sum();
    let calls: usize = message
        .tool_calls
        .iter()
        .map(|c| c.name.len() + c.arguments.len())
        .sum();
    check_bytes(
        quotas,
        (message.content.len() + parts + calls) as u64,
        field,
    )
}

pub fn check_bytes(quotas: &Quotas, bytes: u64, field: &str) -> Result<(), ApiError> {
    if bytes <= quotas.max_message_bytes {
        return Ok(());
    }
    let field = if field.ends_with("message") && field != "message" {
        field.to_owned()
    } else {
        format!("{field}.content")
    };
    let mut err = ApiError::quota_exceeded(
        "maxMessageBytes",
        quotas.max_message_bytes,
        bytes,
        "bytes",
        &format!(
            "'{field}' carries {bytes} bytes; nothing was stored. Send it in shorter messages or ask the gateway's administrator for a higher quota"
        ),
    );
    err.field = Some(field);
    Err(err)
}

/// The refusal of a cron job over the owner's `maxCronJobs`.
pub fn cron_refusal(limit: u64, used: u64) -> ApiError {
    ApiError::quota_exceeded(
        "maxCronJobs",
        limit,
        used,
        "jobs",
        "delete jobs you no longer need (DELETE /api/v1/cron/jobs/{id}) or ask the gateway's administrator for a higher quota",
    )
}

/// An agentTurn payload's message held to the key's `maxMessageBytes` (it is stored in a
/// session each run).
pub fn check_payload(
    quotas: &Quotas,
    payload: &crate::cron::payload::Payload,
) -> Result<(), ApiError> {
    match payload {
        crate::cron::payload::Payload::AgentTurn { message, .. } => {
            check_message_bytes(quotas, message, "payload.message")
        }
        crate::cron::payload::Payload::SystemEvent { .. } => Ok(()),
    }
}

/// Records how full a quota is after a create counted against it (a histogram of used/limit
/// per quota: no per-key label).
pub fn observe_usage(quota: &'static str, used: u64, limit: u64) {
    if limit == 0 || limit == u64::MAX {
        return;
    }
    metrics::histogram!("openclaw_quota_usage_ratio", "quota" => quota)
        .record(used as f64 / limit as f64);
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
