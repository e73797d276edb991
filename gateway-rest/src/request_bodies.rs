//! The edge's translation of each JSON request body into its core request, reachable from outside
//! the crate so the fuzz targets (`fuzz/`) and property tests exercise exactly what the handlers
//! run: the same JSON reader (`extract::parse_json`, whose rejections become the envelope's
//! `INVALID_REQUEST`) and the same conversion into the `openclaw.v1` message.

use axum::http::HeaderMap;

use crate::{
    error::{ApiError, code_name},
    extract::parse_json,
    proto,
    routes::{cron, keys, openai, sessions},
};

/// Every JSON request body the edge accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBody {
    /// `POST /api/v1/sessions`
    CreateSession,
    /// `POST /api/v1/sessions/{sessionId}/messages`
    SendMessage,
    /// `POST /api/v1/cron/jobs`
    CreateJob,
    /// `PATCH /api/v1/cron/jobs/{jobId}`
    UpdateJob,
    /// `POST /api/v1/keys`
    CreateKey,
    /// `PATCH /api/v1/keys/{id}`
    UpdateKey,
    /// `POST /v1/chat/completions`
    ChatCompletion,
}

impl RequestBody {
    pub const ALL: [RequestBody; 7] = [
        RequestBody::CreateSession,
        RequestBody::SendMessage,
        RequestBody::CreateJob,
        RequestBody::UpdateJob,
        RequestBody::CreateKey,
        RequestBody::UpdateKey,
        RequestBody::ChatCompletion,
    ];
}

/// The core request a body becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum CoreRequest {
    CreateSession(proto::CreateSessionRequest),
    SendMessage(proto::SendMessageRequest),
    CreateJob(proto::CreateJobRequest),
    UpdateJob(proto::UpdateJobRequest),
    CreateKey(proto::CreateKeyRequest),
    UpdateKey(proto::UpdateKeyRequest),
    Complete(proto::CompleteRequest),
}

/// Why a body was turned away: what the envelope's `error` would say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: &'static str,
    pub message: String,
    pub details: String,
}

impl From<ApiError> for Rejection {
    fn from(error: ApiError) -> Self {
        Self {
            code: code_name(error.code),
            message: error.message,
            details: error.details,
        }
    }
}

/// Reads `bytes` as the body of `kind` and translates it as the handler does. Path ids are
/// `"id"`; a send is not streamed unless the body asks.
pub fn translate(kind: RequestBody, bytes: &[u8]) -> Result<CoreRequest, Rejection> {
    let id = || "id".to_owned();
    Ok(match kind {
        RequestBody::CreateSession => CoreRequest::CreateSession(
            parse_json::<sessions::CreateSessionRequest>(bytes)?.into_proto()?,
        ),
        RequestBody::SendMessage => {
            let body = parse_json::<sessions::SendMessageRequest>(bytes)?;
            CoreRequest::SendMessage(body.into_proto(id(), false)?.0)
        }
        RequestBody::CreateJob => {
            CoreRequest::CreateJob(parse_json::<cron::CreateJobRequest>(bytes)?.into_proto())
        }
        RequestBody::UpdateJob => {
            CoreRequest::UpdateJob(parse_json::<cron::UpdateJobRequest>(bytes)?.into_proto(id()))
        }
        RequestBody::CreateKey => {
            CoreRequest::CreateKey(parse_json::<keys::CreateKeyRequest>(bytes)?.into_proto())
        }
        RequestBody::UpdateKey => {
            CoreRequest::UpdateKey(parse_json::<keys::UpdateKeyRequest>(bytes)?.into_proto(id()))
        }
        RequestBody::ChatCompletion => {
            let body = parse_json::<openai::ChatCompletionRequest>(bytes)?;
            let (request, _, _) = openai::completion_request(body, &HeaderMap::new())?;
            CoreRequest::Complete(request)
        }
    })
}
