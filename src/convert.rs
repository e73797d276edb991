//! Conversions between stored records and the `openclaw.v1` messages.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use crate::proto;
use crate::store::{KeyLimits, KeyRecord, SessionRecord, StoredMessage};

pub fn timestamp(at: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

pub fn session(record: &SessionRecord) -> proto::Session {
    proto::Session {
        session_id: record.id.clone(),
        status: record.status.clone(),
        model: record.model.clone(),
        created_at: Some(timestamp(record.created_at)),
        updated_at: Some(timestamp(record.updated_at)),
        message_count: record.message_count,
        context_strategy: record.context_strategy.as_str().to_string(),
    }
}

pub fn message(stored: &StoredMessage) -> proto::ChatMessage {
    proto::ChatMessage {
        role: stored.role.clone(),
        content: stored.content.clone(),
        created_at: Some(timestamp(stored.created_at)),
        summary: stored.summary.map(|s| proto::SummaryOf {
            from: s.from,
            to: s.to,
        }),
    }
}

pub fn limits(limits: &KeyLimits) -> proto::Limits {
    proto::Limits {
        requests_per_minute: limits.requests_per_minute,
        tokens_per_minute: limits.tokens_per_minute,
        context_tokens_per_minute: limits.context_tokens_per_minute,
        concurrent_streams: limits.concurrent_streams,
        event_subscriptions: limits.event_subscriptions,
    }
}

pub fn api_key(record: &KeyRecord) -> proto::ApiKey {
    proto::ApiKey {
        id: record.id.clone(),
        name: record.name.clone(),
        prefix: record.prefix.clone(),
        scopes: record.scopes.clone(),
        limits: Some(limits(&record.limits)),
        created_at: Some(timestamp(record.created_at)),
        last_used_at: record.last_used_at.map(timestamp),
        revoked: record.is_revoked(),
        revoked_at: record.revoked_at.map(timestamp),
    }
}
