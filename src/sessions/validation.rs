//! Checks of the requests that carry conversations: session ids, messages, generation options
//! and pages. Completions and cron payloads use the same checks, so a session id or a message
//! is valid (or not) the same way wherever it is sent.

use crate::error::{ApiError, ApiResult};
use crate::proto::{self, ChatMessage};

/// The roles a session's messages may have.
pub(crate) const ROLES: &[&str] = &["system", "user", "assistant"];
const MAX_SESSION_ID_LEN: usize = 128;
const MAX_TOKENS_CAP: u32 = 131_072;

/// A session id must be safe in URLs and store keys.
pub(crate) fn validate_session_id(id: &str, field: &str) -> ApiResult<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_SESSION_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_field(
            field,
            "Invalid session id",
            format!(
                "The field '{field}' must be 1-{MAX_SESSION_ID_LEN} characters of letters, digits, '-', '_', '.' or ':'"
            ),
        ))
    }
}

pub(crate) fn validate_message(
    message: &ChatMessage,
    field: &str,
    roles: &[&str],
) -> ApiResult<()> {
    if message.role.is_empty() {
        return Err(ApiError::invalid_field(
            format!("{field}.role"),
            "Missing required field",
            format!(
                "The field '{field}.role' is required (one of: {})",
                roles.join(", ")
            ),
        ));
    }
    if !roles.contains(&message.role.as_str()) {
        return Err(ApiError::invalid_field(
            format!("{field}.role"),
            "Invalid role",
            format!(
                "The field '{field}.role' is '{}'; use one of: {}",
                message.role.chars().take(40).collect::<String>(),
                roles.join(", ")
            ),
        ));
    }
    if message.content.trim().is_empty() {
        return Err(ApiError::invalid_field(
            format!("{field}.content"),
            "Empty message",
            format!("The field '{field}.content' must not be empty"),
        ));
    }
    Ok(())
}

pub(crate) fn validate_options(options: &Option<proto::GenerationOptions>) -> ApiResult<()> {
    let Some(options) = options else {
        return Ok(());
    };
    if let Some(t) = options.temperature
        && !(t.is_finite() && (0.0..=2.0).contains(&t))
    {
        return Err(ApiError::invalid_field(
            "temperature",
            "Invalid temperature",
            "The field 'temperature' must be a number from 0 to 2",
        ));
    }
    if let Some(n) = options.max_tokens
        && !(1..=MAX_TOKENS_CAP).contains(&n)
    {
        return Err(ApiError::invalid_field(
            "maxTokens",
            "Invalid maxTokens",
            format!("The field 'maxTokens' must be a whole number from 1 to {MAX_TOKENS_CAP}"),
        ));
    }
    Ok(())
}

/// Where a page starts: the `nextPageToken` of the page before, or the beginning.
pub(crate) fn parse_page_token(token: &str) -> ApiResult<u64> {
    if token.is_empty() {
        return Ok(0);
    }
    token.parse().map_err(|_| {
        ApiError::invalid_field(
            "pageToken",
            "Invalid page token",
            "The field 'pageToken' must be a nextPageToken from a previous page",
        )
    })
}

/// How many items a page holds: `default` when the caller names none, at most `max`.
pub(crate) fn page_size(requested: u32, default: u32, max: u32) -> ApiResult<u32> {
    match requested {
        0 => Ok(default),
        n if n <= max => Ok(n),
        _ => Err(ApiError::invalid_field(
            "pageSize",
            "Invalid page size",
            format!("The field 'pageSize' must be from 1 to {max}"),
        )),
    }
}
