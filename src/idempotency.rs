//! Safe retries of a send: the caller's request id (`x-request-id` metadata)
//! names the send; its result is recorded with the turn it stored (in the
//! same atomic step), and a repeat of the request for the same session within
//! the retention window is answered from that record, without calling the
//! model or counting against limits. A concurrent repeat waits on the
//! session's turn lock and then finds the record.
//!
//! The REST edge always sends a request id, generating one when the client
//! sent none; it then says so with `x-openclaw-idempotent: 0`, and the id is
//! not used as a key. Any other caller's request id is.
//!
//! A repeat must be the same request: the record keeps a fingerprint of the
//! message and options, and a different request under a used id is refused
//! with CONFLICT rather than answered with another request's result.

use prost::Message as _;
use sha2::{Digest as _, Sha256};
use tonic::Request;

use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::proto;

const REQUEST_ID: &str = "x-request-id";
const IDEMPOTENT: &str = "x-openclaw-idempotent";
/// Response metadata of an answer replayed from a record.
pub(crate) const REPLAYED: &str = "openclaw-idempotent-replay";
const MAX_REQUEST_ID_LEN: usize = 128;
const FINGERPRINT_LEN: usize = 64;

/// A send's idempotency key and the fingerprint of what it asked.
#[derive(Debug, Clone)]
pub(crate) struct SendKey {
    pub(crate) request_id: String,
    fingerprint: String,
}

impl SendKey {
    /// The key of a send, when its caller named it.
    pub(crate) fn of<T>(request: &Request<T>, body: &proto::SendMessageRequest) -> Option<Self> {
        let metadata = request.metadata();
        if metadata
            .get(IDEMPOTENT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() == "0")
        {
            return None;
        }
        let request_id = metadata
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|id| (1..=MAX_REQUEST_ID_LEN).contains(&id.len()))?;
        Some(Self {
            request_id: request_id.to_string(),
            fingerprint: fingerprint(body),
        })
    }

    /// The record to store with the turn.
    pub(crate) fn record(&self, response: &proto::SendMessageResponse) -> Vec<u8> {
        let mut out = Vec::with_capacity(FINGERPRINT_LEN + response.encoded_len());
        out.extend_from_slice(self.fingerprint.as_bytes());
        response.encode(&mut out).ok();
        out
    }

    /// The recorded answer, if this very request was recorded.
    pub(crate) fn replay(&self, record: &[u8]) -> ApiResult<proto::SendMessageResponse> {
        let (fingerprint, body) = record
            .split_at_checked(FINGERPRINT_LEN)
            .ok_or_else(corrupt)?;
        if fingerprint != self.fingerprint.as_bytes() {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "Request ID already used",
                format!(
                    "The X-Request-ID '{}' was already used for a different message to this session; use a new request ID for a new message",
                    self.request_id
                ),
            ));
        }
        proto::SendMessageResponse::decode(body).map_err(|_| corrupt())
    }
}

fn corrupt() -> ApiError {
    tracing::error!("a recorded send result does not decode");
    ApiError::internal()
}

/// What identifies a send's content: the session, the message and the options.
fn fingerprint(body: &proto::SendMessageRequest) -> String {
    let mut hash = Sha256::new();
    hash.update(body.session_id.as_bytes());
    hash.update([0]);
    if let Some(message) = &body.message {
        hash.update(message.role.as_bytes());
        hash.update([0]);
        hash.update(message.content.as_bytes());
        // Tool calls, a tool result's call, a name and content parts, only when set (as the
        // options below).
        if !message.tool_calls.is_empty()
            || !message.tool_call_id.is_empty()
            || !message.name.is_empty()
            || !message.parts.is_empty()
        {
            let parts = proto::ChatMessage {
                role: String::new(),
                content: String::new(),
                created_at: None,
                summary: None,
                ..message.clone()
            };
            hash.update([0]);
            hash.update(prost::Message::encode_to_vec(&parts));
        }
    }
    hash.update([0]);
    if let Some(options) = &body.options {
        hash.update(format!("{:?}/{:?}", options.temperature, options.max_tokens).as_bytes());
        // The other options, only when set: a send recorded before they existed keeps its
        // fingerprint.
        let rest = proto::GenerationOptions {
            temperature: None,
            max_tokens: None,
            ..options.clone()
        };
        if rest != proto::GenerationOptions::default() {
            hash.update([0]);
            hash.update(prost::Message::encode_to_vec(&rest));
        }
    }
    let digest = hash.finalize();
    let mut out = String::with_capacity(FINGERPRINT_LEN);
    for byte in digest {
        use std::fmt::Write as _;
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(content: &str) -> proto::SendMessageRequest {
        proto::SendMessageRequest {
            session_id: "s".into(),
            message: Some(proto::ChatMessage {
                role: "user".into(),
                content: content.into(),
                ..Default::default()
            }),
            options: None,
        }
    }

    fn request(metadata: &[(&'static str, &'static str)]) -> Request<()> {
        let mut request = Request::new(());
        for (k, v) in metadata {
            request.metadata_mut().insert(*k, v.parse().expect("ascii"));
        }
        request
    }

    #[test]
    fn a_request_id_is_a_key_unless_the_edge_generated_it() {
        let body = send("hi");
        assert!(SendKey::of(&request(&[]), &body).is_none());
        let key = SendKey::of(&request(&[("x-request-id", "r-1")]), &body).expect("a key");
        assert_eq!(key.request_id, "r-1");
        assert!(
            SendKey::of(
                &request(&[("x-request-id", "r-1"), (IDEMPOTENT, "1")]),
                &body
            )
            .is_some()
        );
        assert!(
            SendKey::of(
                &request(&[("x-request-id", "r-1"), (IDEMPOTENT, "0")]),
                &body
            )
            .is_none()
        );
    }

    #[test]
    fn a_record_replays_only_to_the_same_request() {
        let key = SendKey::of(&request(&[("x-request-id", "r-1")]), &send("hi")).expect("key");
        let response = proto::SendMessageResponse {
            session_id: "s".into(),
            reply: None,
        };
        let record = key.record(&response);
        assert_eq!(key.replay(&record).expect("same request"), response);
        let other = SendKey::of(&request(&[("x-request-id", "r-1")]), &send("bye")).expect("key");
        let error = other.replay(&record).expect_err("different message");
        assert_eq!(error.code, ErrorCode::Conflict);
        assert!(key.replay(b"short").is_err());
    }
}
