//! Conversions between stored records and the `openclaw.v1` messages.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use crate::proto;
use crate::quotas::Quotas;
use crate::store::{KeyLimits, KeyQuotas, KeyRecord, SessionRecord, StoredMessage};

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
        expires_at: record.expiry().map(timestamp),
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
        tool_calls: stored.tool_calls.iter().map(tool_call).collect(),
        tool_call_id: stored.tool_call_id.clone().unwrap_or_default(),
        name: stored.name.clone().unwrap_or_default(),
        parts: stored.parts.iter().map(content_part).collect(),
    }
}

pub fn content_part(part: &crate::providers::ContentPart) -> proto::ContentPart {
    use crate::providers::ContentPart;
    match part {
        ContentPart::Text { text } => proto::ContentPart {
            r#type: "text".into(),
            text: text.clone(),
            ..Default::default()
        },
        ContentPart::ImageUrl { url, detail } => proto::ContentPart {
            r#type: "image_url".into(),
            image_url: url.clone(),
            detail: detail.clone().unwrap_or_default(),
            ..Default::default()
        },
    }
}

/// A checked part (see `validation::validate_message`) as the core keeps it.
fn part_of(part: &proto::ContentPart) -> crate::providers::ContentPart {
    use crate::providers::ContentPart;
    if part.r#type == "image_url" {
        ContentPart::ImageUrl {
            url: part.image_url.clone(),
            detail: (!part.detail.is_empty()).then(|| part.detail.clone()),
        }
    } else {
        ContentPart::Text {
            text: part.text.clone(),
        }
    }
}

pub fn tool_call(call: &crate::providers::ToolCall) -> proto::ToolCall {
    proto::ToolCall {
        id: call.id.clone(),
        name: call.name.clone(),
        arguments: call.arguments.clone(),
    }
}

/// A message as a caller sent it, to store: its tool calls, the call it answers and its
/// author's name kept, its tokens counted once.
pub fn stored(
    message: &proto::ChatMessage,
    role: String,
    now: chrono::DateTime<chrono::Utc>,
) -> StoredMessage {
    let optional = |text: &str| (!text.is_empty()).then(|| text.to_owned());
    if message.tool_calls.is_empty()
        && message.tool_call_id.is_empty()
        && message.name.is_empty()
        && message.parts.is_empty()
    {
        return StoredMessage::counted(role, message.content.clone(), now);
    }
    // Sent as parts: the content is the text parts, joined.
    let content = if message.parts.is_empty() {
        message.content.clone()
    } else {
        message
            .parts
            .iter()
            .filter(|p| p.r#type == "text")
            .map(|p| p.text.as_str())
            .collect()
    };
    StoredMessage::with_parts(
        role,
        content,
        message.parts.iter().map(part_of).collect(),
        message
            .tool_calls
            .iter()
            .map(|call| crate::providers::ToolCall {
                id: call.id.clone(),
                name: call.name.clone(),
                arguments: call.arguments.clone(),
            })
            .collect(),
        optional(&message.tool_call_id),
        optional(&message.name),
        now,
    )
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

/// A key's own quotas: a field set where the key has its own value.
pub fn own_quotas(quotas: &KeyQuotas) -> proto::Quotas {
    proto::Quotas {
        max_sessions: quotas.max_sessions,
        max_messages_per_session: quotas.max_messages_per_session,
        max_session_bytes: quotas.max_session_bytes,
        max_message_bytes: quotas.max_message_bytes,
        max_cron_jobs: quotas.max_cron_jobs,
        session_idle_ttl_seconds: quotas.session_idle_ttl_seconds,
    }
}

/// Quotas in force, every field set.
pub fn effective_quotas(quotas: &Quotas) -> proto::Quotas {
    proto::Quotas {
        max_sessions: Some(quotas.max_sessions),
        max_messages_per_session: Some(quotas.max_messages_per_session),
        max_session_bytes: Some(quotas.max_session_bytes),
        max_message_bytes: Some(quotas.max_message_bytes),
        max_cron_jobs: Some(quotas.max_cron_jobs),
        session_idle_ttl_seconds: Some(quotas.session_idle_ttl_seconds),
    }
}

/// A key as administrators see it; `defaults` are the configured quotas its own override.
pub fn api_key(record: &KeyRecord, defaults: &Quotas) -> proto::ApiKey {
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
        quotas: Some(own_quotas(&record.quotas)),
        effective_quotas: Some(effective_quotas(&defaults.with_own(&record.quotas))),
        budget: record.budget.as_ref().map(budget),
        budget_spend: None,
    }
}

/// A key's budget as the API shows it.
pub fn budget(budget: &crate::spend::KeyBudget) -> proto::Budget {
    proto::Budget {
        limit_micros: budget.limit_micros,
        period: budget.period.as_str().to_owned(),
        time_zone: budget.time_zone.clone(),
        thresholds: budget
            .thresholds_permille
            .iter()
            .map(|t| f64::from(*t) / 1000.0)
            .collect(),
    }
}
