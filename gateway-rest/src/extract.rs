//! Extractors that reject into [`ApiError`], so a malformed request still gets the envelope and a
//! `details` sentence naming what to fix.
//!
//! Only the JSON *shape* is checked here (syntax, types). Whether a value means anything (an empty
//! message, an unknown role or model) is the core's call.

use std::time::Duration;

use axum::{
    body::{Body, BodyDataStream},
    extract::{FromRef, FromRequest, FromRequestParts, Path, Query, Request},
    http::{HeaderMap, StatusCode, header, request::Parts},
};
use futures::StreamExt as _;
use serde::de::DeserializeOwned;
use serde_json::error::Category;

use crate::error::ApiError;

/// The configured request body limit, in bytes; the state provides it so a 413 can name it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimit(pub(crate) usize);

/// How much of an unwanted body the edge still reads (and drops) before answering, and for how
/// long. Answering while the client is still sending makes most HTTP clients fail with a broken
/// pipe instead of showing the 413 or 415; past these bounds the connection is cut instead.
const DRAIN_MAX_BYTES: u64 = 16 * 1024 * 1024;
const DRAIN_MAX_TIME: Duration = Duration::from_secs(10);

/// A JSON request body, deserialized with the field path of any type error.
#[derive(Debug)]
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    BodyLimit: FromRef<S>,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let limit = BodyLimit::from_ref(state);
        let (parts, body) = request.into_parts();
        if let Err(error) = check_content_type(&parts.headers) {
            discard(&parts.headers, body.into_data_stream(), 0).await;
            return Err(error);
        }
        let bytes = read_limited(&parts.headers, body, limit).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Reads the whole body if it fits the limit; otherwise drains it and answers 413.
async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: BodyLimit,
) -> Result<Vec<u8>, ApiError> {
    let mut stream = body.into_data_stream();
    let declared = declared_length(headers);
    if declared.is_some_and(|length| length > limit.0 as u64) {
        discard(headers, stream, 0).await;
        return Err(body_too_large(limit));
    }
    let mut bytes = Vec::with_capacity(declared.map_or(0, |length| length as usize));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| {
            ApiError::invalid_request(
                "Unreadable request body",
                "The request body could not be read completely; send it again",
            )
        })?;
        if bytes.len() + chunk.len() > limit.0 {
            let seen = (bytes.len() + chunk.len()) as u64;
            discard(headers, stream, seen).await;
            return Err(body_too_large(limit));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Reads and drops the rest of a body the edge will not use, within bounds. A client that asked
/// `Expect: 100-continue` has not sent it and will not, so there is nothing to drain.
async fn discard(headers: &HeaderMap, mut stream: BodyDataStream, already: u64) {
    let expects_continue = headers
        .get(header::EXPECT)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let too_big = declared_length(headers).is_some_and(|length| length > DRAIN_MAX_BYTES);
    if expects_continue || too_big {
        return;
    }
    let drain = async {
        let mut seen = already;
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len() as u64;
            if seen > DRAIN_MAX_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_MAX_TIME, drain).await;
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub(crate) fn body_too_large(BodyLimit(limit): BodyLimit) -> ApiError {
    ApiError::invalid_request(
        "Request body too large",
        format!("The request body must be at most {limit} bytes"),
    )
    .with_status(StatusCode::PAYLOAD_TOO_LARGE)
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let unsupported = |what: String| {
        ApiError::invalid_request(
            what,
            "Send the body as JSON with Content-Type: application/json",
        )
        .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
    };
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(unsupported("Missing Content-Type".to_owned()));
    };
    let essence = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let is_json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if is_json {
        Ok(())
    } else {
        Err(unsupported(format!(
            "Unsupported Content-Type '{}'",
            essence.chars().take(64).collect::<String>()
        )))
    }
}

pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if let Err(error) = std::str::from_utf8(bytes) {
        return Err(ApiError::invalid_request(
            "Malformed JSON",
            format!(
                "The body is not valid UTF-8 (at byte {}); send JSON encoded as UTF-8",
                error.valid_up_to()
            ),
        ));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid_request(
            "Missing request body",
            "Send a JSON object as the request body",
        ));
    }
    // Most bodies are valid: read them without tracking the path, and read a refused one
    // again with it, so its error names the field.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(describe)?;
    deserializer.end().map_err(|error| syntax_error(&error))?;
    Ok(value)
}

fn describe(error: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = error.path().to_string();
    let inner = error.into_inner();
    match inner.classify() {
        Category::Data => data_error(&path, &without_position(&inner)),
        Category::Syntax | Category::Eof | Category::Io => syntax_error(&inner),
    }
}

fn syntax_error(error: &serde_json::Error) -> ApiError {
    ApiError::invalid_request(
        "Malformed JSON",
        format!(
            "The body is not valid JSON: {} at line {} column {}",
            without_position(error),
            error.line(),
            error.column()
        ),
    )
}

/// A JSON value of the wrong type or range. `path` is serde_path_to_error's
/// (`messages[0].role`; `.` for the whole body).
fn data_error(path: &str, message: &str) -> ApiError {
    let at_root = path == "." || path.is_empty();
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        let full = if at_root {
            field.to_owned()
        } else {
            format!("{path}.{field}")
        };
        return ApiError::invalid_field(
            full.clone(),
            "Missing required field",
            format!("The field '{full}' is required"),
        );
    }
    let expected = message
        .rsplit_once(", expected ")
        .map(|(_, expected)| plain_type(expected));
    match (at_root, expected) {
        (true, _) => ApiError::invalid_request(
            "Invalid request body",
            "The request body must be a JSON object",
        ),
        (false, Some(expected)) => ApiError::invalid_field(
            path,
            "Invalid field type",
            format!("The field '{path}' must be {expected}"),
        ),
        (false, None) => ApiError::invalid_field(
            path,
            "Invalid field value",
            format!("The field '{path}' is invalid: {message}"),
        ),
    }
}

/// Serde's name for an expected type, in the words of a JSON user.
fn plain_type(expected: &str) -> String {
    match expected {
        "a sequence" => "an array".to_owned(),
        "a map" => "an object".to_owned(),
        "a boolean" | "a string" => expected.to_owned(),
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => {
            "a non-negative integer in range".to_owned()
        }
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer in range".to_owned(),
        "f32" | "f64" => "a number".to_owned(),
        struct_name if struct_name.starts_with("struct ") => "an object".to_owned(),
        other => other.to_owned(),
    }
}

/// serde_json appends " at line L column C"; the envelope states the position its own way.
fn without_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(index) => text[..index].to_owned(),
        None => text,
    }
}

/// Query parameters, rejecting into the envelope.
#[derive(Debug)]
pub(crate) struct QueryParams<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(value)| QueryParams(value))
            .map_err(|rejection| {
                let text = rejection.body_text();
                let reason = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text);
                ApiError::invalid_request(
                    "Invalid query parameter",
                    format!("The query string is invalid: {reason}"),
                )
            })
    }
}

/// One path parameter (a session or key ID), rejecting into the envelope.
#[derive(Debug)]
pub(crate) struct PathId(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(id)| PathId(id))
            .map_err(|rejection| {
                ApiError::invalid_request(
                    "Invalid path",
                    format!("The path is invalid: {}", rejection.body_text()),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Message {
        role: String,
        content: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Body {
        #[serde(default)]
        messages: Vec<Message>,
        max_tokens: Option<u32>,
        context: Option<Context>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Context {
        session_id: String,
    }

    fn details(body: &str) -> String {
        parse_json::<Body>(body.as_bytes())
            .expect_err("should be rejected")
            .details
    }

    #[test]
    fn wrong_type_names_the_field_path() {
        assert_eq!(
            details(r#"{"messages":[{"role":5,"content":"hi"}]}"#),
            "The field 'messages[0].role' must be a string"
        );
        assert_eq!(
            details(r#"{"messages":{"role":"user"}}"#),
            "The field 'messages' must be an array"
        );
        assert_eq!(
            details(r#"{"maxTokens":-3}"#),
            "The field 'maxTokens' must be a non-negative integer in range"
        );
        assert_eq!(
            details(r#"{"context":"abc"}"#),
            "The field 'context' must be an object"
        );
    }

    #[test]
    fn missing_nested_field_is_named_with_its_path() {
        assert_eq!(
            details(r#"{"context":{}}"#),
            "The field 'context.sessionId' is required"
        );
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let text = details("{\n  \"messages\": [,]\n}");
        assert!(text.starts_with("The body is not valid JSON: "), "{text}");
        assert!(text.ends_with("at line 2 column 16"), "{text}");
        assert!(details(r#"{"messages": []} trailing"#).contains("trailing characters"));
    }

    #[test]
    fn non_objects_empty_bodies_and_bad_utf8_are_explained() {
        assert_eq!(details("[]"), "The request body must be a JSON object");
        assert_eq!(details("  "), "Send a JSON object as the request body");
        let error = parse_json::<Body>(b"{\"messages\":\"\xff\"}").expect_err("bad utf-8");
        assert!(
            error.details.contains("not valid UTF-8"),
            "{}",
            error.details
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let body: Body = parse_json(br#"{"messages":[],"futureField":{"x":1}}"#).expect("accepted");
        assert!(body.messages.is_empty());
    }

    #[test]
    fn content_type_must_be_json() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, value.parse().expect("header"));
            check_content_type(&headers)
        };
        assert!(with("application/json").is_ok());
        assert!(with("Application/JSON; charset=utf-8").is_ok());
        assert!(with("application/merge-patch+json").is_ok());
        let error = with("text/plain").expect_err("not JSON");
        assert_eq!(error.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(check_content_type(&HeaderMap::new()).is_err());
    }
}
