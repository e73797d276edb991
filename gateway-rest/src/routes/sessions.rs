//! `/api/v1/sessions`: chat sessions, translated to `SessionService`. A send
//! streams its reply as server-sent events when the client asks (`"stream":
//! true`, or `Accept: text/event-stream`); see docs/streaming.md.

use std::convert::Infallible;

use axum::{
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures::{Stream, StreamExt as _};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use std::collections::BTreeMap;

use crate::routes::content::ContentInput;
use crate::routes::sampling::{
    ResponseFormatInput, Stop, first_set_field, parse_logprobs, sampling,
};
use crate::routes::tools::{
    ToolCallChunk, ToolCallInput, ToolCallOutput, ToolChoiceInput, ToolInput,
};

use crate::{
    core_client::{CoreClient, required},
    envelope::{ApiResult, Enveloped, ErrorObject, SuccessEnvelope},
    error::{ApiError, code_name},
    extract::{JsonBody, PathId, QueryParams},
    headers::Caller,
    openapi::responses::*,
    proto::{self, session_service_client::SessionServiceClient},
    timestamp,
};

pub(crate) const TAG: &str = "sessions";

// ---- request bodies -------------------------------------------------------------------------

/// A chat message as the caller sends it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MessageInput {
    /// "system", "user", "assistant" or "tool".
    #[serde(default)]
    #[schema(example = "user")]
    role: String,
    /// The text (may be empty on an assistant message that calls tools, or a tool's result),
    /// or, on a user message, an array of parts: `{"type": "text", "text"}` and
    /// `{"type": "image_url", "imageUrl": {"url", "detail"?}}` (an http(s) or data URL).
    #[schema(value_type = Object, example = "Hello")]
    content: Option<ContentInput>,
    /// An assistant message's tool calls, as the model returned them.
    tool_calls: Option<Vec<ToolCallInput>>,
    /// A "tool" message: the id of the tool call whose result `content` is.
    #[schema(example = "call_0194b6a0")]
    tool_call_id: Option<String>,
    /// The author's name (letters, digits, '_' and '-', at most 64), passed to the provider.
    name: Option<String>,
    /// Any other field: refused, named.
    #[serde(flatten)]
    #[schema(ignore)]
    unknown: BTreeMap<String, serde_json::Value>,
}

/// Refuses a field a request body does not have, naming it and the ones it has: nothing a
/// client sends is silently dropped.
fn refuse_unknown(
    unknown: &BTreeMap<String, serde_json::Value>,
    at: &str,
    fields: &str,
) -> Result<(), ApiError> {
    let Some(name) = first_set_field(unknown) else {
        return Ok(());
    };
    let field = if at.is_empty() {
        name.clone()
    } else {
        format!("{at}.{name}")
    };
    Err(ApiError::invalid_field(
        field.clone(),
        "Unknown field",
        format!("The field '{field}' is not one this request takes; remove it (fields: {fields})"),
    ))
}

const MESSAGE_FIELDS: &str = "role, content, toolCalls, toolCallId, name";
const OPTION_FIELDS: &str = "temperature, maxTokens, stop, topP, seed, presencePenalty, frequencyPenalty, logitBias, user, responseFormat, tools, toolChoice, parallelToolCalls, logprobs, topLogprobs";

impl MessageInput {
    fn into_proto(self, field: &str) -> Result<proto::ChatMessage, ApiError> {
        refuse_unknown(&self.unknown, field, MESSAGE_FIELDS)?;
        let (content, parts) =
            crate::routes::content::content(self.content, &format!("{field}.content"), "imageUrl")?;
        Ok(proto::ChatMessage {
            role: self.role,
            content,
            parts,
            tool_calls: crate::routes::tools::tool_calls(
                self.tool_calls.unwrap_or_default(),
                &format!("{field}.toolCalls"),
            )?,
            tool_call_id: self.tool_call_id.unwrap_or_default(),
            name: self.name.unwrap_or_default(),
            ..Default::default()
        })
    }
}

/// Continue an existing session instead of starting one, and how its history is fitted into
/// the model's context window.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ContextInput {
    /// A session of the caller to continue.
    #[schema(example = "optional-session-id")]
    session_id: Option<String>,
    /// "window" (default): the system prompt and the latest whole turns that fit the model's
    /// context window are sent. "summarize": when the history no longer fits, the model
    /// summarises the older turns and the summary, stored in the history, is sent in their
    /// place. Chosen when the session is created (docs/context-windows.md).
    #[schema(example = "window")]
    strategy: Option<String>,
    /// Any other field: refused, named.
    #[serde(flatten)]
    #[schema(ignore)]
    unknown: BTreeMap<String, serde_json::Value>,
}

/// How a session's history is fitted into its model's context window.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SessionContextOutput {
    /// "window" or "summarize".
    #[schema(example = "window")]
    strategy: String,
}

/// What a compaction summary stands for: the messages `from` to `to` of the history (0-based,
/// `to` excluded), earlier summaries included.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SummaryRange {
    #[schema(example = 1)]
    from: u64,
    #[schema(example = 41)]
    to: u64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateSessionRequest {
    /// Defaults to "zai/glm-4.7-flash".
    #[schema(example = "zai/glm-4.7-flash")]
    model: Option<String>,
    /// The conversation so far. When it ends with a user turn the model answers it.
    #[serde(default)]
    messages: Vec<MessageInput>,
    context: Option<ContextInput>,
    /// Sampling temperature.
    #[schema(example = 0.7)]
    temperature: Option<f32>,
    /// Upper bound on the reply's tokens.
    #[schema(example = 1000)]
    max_tokens: Option<u32>,
    /// RFC 3339, in the future: the session is deleted then, however active (and sooner when
    /// idle for the key's session idle time to live). Set when the session is created; continuing
    /// a session accepts only its own value. See docs/retention.md.
    #[schema(value_type = Option<String>, format = DateTime, example = "2026-03-01T00:00:00Z")]
    expires_at: Option<String>,
    // Sampling options, kept as the session's defaults (each send may override them).
    /// Up to 4 sequences (or one string) that end the reply where they appear.
    #[schema(value_type = Option<Vec<String>>, example = json!(["\n\n"]))]
    stop: Option<Stop>,
    /// Nucleus sampling: above 0, at most 1.
    #[schema(example = 0.9)]
    top_p: Option<f32>,
    /// Best-effort deterministic sampling (OpenAI-compatible providers).
    #[schema(example = 42)]
    seed: Option<i64>,
    /// From -2 to 2 (OpenAI-compatible providers).
    presence_penalty: Option<f32>,
    /// From -2 to 2 (OpenAI-compatible providers).
    frequency_penalty: Option<f32>,
    /// Token id (as a string) → bias from -100 to 100 (OpenAI-compatible providers).
    logit_bias: Option<BTreeMap<String, f32>>,
    /// The end user the call is made for, passed to the provider.
    #[schema(example = "user-1234")]
    user: Option<String>,
    /// `{"type": "text"}`, `{"type": "json_object"}` or
    /// `{"type": "json_schema", "jsonSchema": {"name", "schema", "strict"?, "description"?}}`.
    response_format: Option<ResponseFormatInput>,
    /// Functions the model may call: `[{"type": "function", "function": {"name",
    /// "description"?, "parameters"?, "strict"?}}]` (at most 128).
    tools: Option<Vec<ToolInput>>,
    /// `"auto"` (the default with tools), `"none"`, `"required"`, or
    /// `{"type": "function", "function": {"name": "..."}}`.
    #[schema(value_type = Option<Object>, example = "auto")]
    tool_choice: Option<ToolChoiceInput>,
    /// Whether the model may call several tools in one reply.
    parallel_tool_calls: Option<bool>,
    /// Return the log probability of each token of the reply (OpenAI-compatible providers).
    logprobs: Option<bool>,
    /// With `logprobs`: the most likely alternatives at each position too, 0 to 20.
    top_logprobs: Option<u32>,
    /// Any other field: refused, named.
    #[serde(flatten)]
    #[schema(ignore)]
    unknown: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SendMessageRequest {
    /// The user's next message.
    message: Option<MessageInput>,
    #[schema(example = 0.7)]
    temperature: Option<f32>,
    #[schema(example = 1000)]
    max_tokens: Option<u32>,
    /// Stream the reply as server-sent events (docs/streaming.md). Absent: streamed when the
    /// request's `Accept` asks for `text/event-stream`.
    #[schema(example = false)]
    stream: Option<bool>,
    // Sampling options for this send, over the session's.
    /// Up to 4 sequences (or one string) that end the reply where they appear.
    #[schema(value_type = Option<Vec<String>>, example = json!(["\n\n"]))]
    stop: Option<Stop>,
    /// Nucleus sampling: above 0, at most 1.
    #[schema(example = 0.9)]
    top_p: Option<f32>,
    /// Best-effort deterministic sampling (OpenAI-compatible providers).
    #[schema(example = 42)]
    seed: Option<i64>,
    /// From -2 to 2 (OpenAI-compatible providers).
    presence_penalty: Option<f32>,
    /// From -2 to 2 (OpenAI-compatible providers).
    frequency_penalty: Option<f32>,
    /// Token id (as a string) → bias from -100 to 100 (OpenAI-compatible providers).
    logit_bias: Option<BTreeMap<String, f32>>,
    /// The end user the call is made for, passed to the provider.
    #[schema(example = "user-1234")]
    user: Option<String>,
    /// `{"type": "text"}`, `{"type": "json_object"}` or
    /// `{"type": "json_schema", "jsonSchema": {"name", "schema", "strict"?, "description"?}}`.
    response_format: Option<ResponseFormatInput>,
    /// Functions the model may call: `[{"type": "function", "function": {"name",
    /// "description"?, "parameters"?, "strict"?}}]` (at most 128).
    tools: Option<Vec<ToolInput>>,
    /// `"auto"` (the default with tools), `"none"`, `"required"`, or
    /// `{"type": "function", "function": {"name": "..."}}`.
    #[schema(value_type = Option<Object>, example = "auto")]
    tool_choice: Option<ToolChoiceInput>,
    /// Whether the model may call several tools in one reply.
    parallel_tool_calls: Option<bool>,
    /// Return the log probability of each token of the reply (OpenAI-compatible providers).
    logprobs: Option<bool>,
    /// With `logprobs`: the most likely alternatives at each position too, 0 to 20.
    top_logprobs: Option<u32>,
    /// Any other field: refused, named.
    #[serde(flatten)]
    #[schema(ignore)]
    unknown: BTreeMap<String, serde_json::Value>,
}

impl CreateSessionRequest {
    pub(crate) fn into_proto(self) -> Result<proto::CreateSessionRequest, ApiError> {
        refuse_unknown(
            &self.unknown,
            "",
            &format!("model, messages, context, expiresAt, {OPTION_FIELDS}"),
        )?;
        Ok(proto::CreateSessionRequest {
            model: self.model.unwrap_or_default(),
            messages: self
                .messages
                .into_iter()
                .enumerate()
                .map(|(i, m)| m.into_proto(&format!("messages[{i}]")))
                .collect::<Result<_, _>>()?,
            context: self
                .context
                .map(|context| {
                    refuse_unknown(&context.unknown, "context", "sessionId, strategy")?;
                    Ok::<_, ApiError>(proto::SessionContext {
                        session_id: context.session_id.unwrap_or_default(),
                        strategy: context.strategy.unwrap_or_default(),
                    })
                })
                .transpose()?,
            options: sampling!(self).into_options(self.temperature, self.max_tokens)?,
            expires_at: self.expires_at,
        })
    }
}

impl SendMessageRequest {
    /// The request for `session_id`, and whether the reply is to be streamed (absent: as the
    /// request's `Accept` asks).
    pub(crate) fn into_proto(
        self,
        session_id: String,
        accepts_event_stream: bool,
    ) -> Result<(proto::SendMessageRequest, bool), ApiError> {
        refuse_unknown(
            &self.unknown,
            "",
            &format!("message, stream, {OPTION_FIELDS}"),
        )?;
        let request = proto::SendMessageRequest {
            session_id,
            options: sampling!(self).into_options(self.temperature, self.max_tokens)?,
            message: self.message.map(|m| m.into_proto("message")).transpose()?,
        };
        Ok((request, self.stream.unwrap_or(accepts_event_stream)))
    }
}

/// Paging through a list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub(crate) struct PageQuery {
    /// How many items per page (the core's default when absent).
    page_size: Option<u32>,
    /// `nextPageToken` from the previous page.
    page_token: Option<String>,
}

// ---- response data ------------------------------------------------------------------------

/// A message as the gateway returns it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Message {
    #[schema(example = "assistant")]
    role: String,
    #[schema(example = "Response here")]
    content: String,
    /// The tools the model called (the reply's `finishReason` is then "tool_calls"): run them
    /// and send each result as a "tool" message with its `toolCallId`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallOutput>,
}

/// A stored message of a session's history.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StoredMessage {
    #[schema(example = "user")]
    role: String,
    #[schema(example = "Hello")]
    content: String,
    #[schema(value_type = Option<String>, format = DateTime, example = "2026-02-14T22:00:00Z")]
    created_at: Option<String>,
    /// Present on a compaction summary the gateway stored (role "system", strategy
    /// "summarize"): the messages it stands for.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    summary: Option<SummaryRange>,
    /// An assistant message's tool calls.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallOutput>,
    /// A "tool" message: the call it answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    tool_call_id: Option<String>,
    /// The author's name, as sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    name: Option<String>,
    /// A message sent as parts (text and images), as sent; `content` holds its text.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    parts: Vec<PartOutput>,
}

/// A part of a message sent as parts.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum PartOutput {
    Text {
        text: String,
    },
    ImageUrl {
        #[serde(rename = "imageUrl")]
        image_url: ImageOutput,
    },
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ImageOutput {
    url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    detail: Option<String>,
}

impl From<proto::ContentPart> for PartOutput {
    fn from(part: proto::ContentPart) -> Self {
        if part.r#type == "image_url" {
            PartOutput::ImageUrl {
                image_url: ImageOutput {
                    url: part.image_url,
                    detail: non_empty(part.detail),
                },
            }
        } else {
            PartOutput::Text { text: part.text }
        }
    }
}

/// Tokens one model call used.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Usage {
    #[schema(example = 100)]
    prompt_tokens: u32,
    #[schema(example = 50)]
    completion_tokens: u32,
    #[schema(example = 150)]
    total_tokens: u32,
}

/// A session's summary.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Session {
    #[schema(example = "session-123")]
    session_id: String,
    /// "active".
    #[schema(example = "active")]
    status: String,
    #[schema(example = "zai/glm-4.7-flash")]
    model: String,
    #[schema(value_type = Option<String>, format = DateTime, example = "2026-02-14T22:00:00Z")]
    created_at: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime, example = "2026-02-14T22:00:05Z")]
    updated_at: Option<String>,
    #[schema(example = 2)]
    message_count: u32,
    /// When the session is deleted unless a turn comes first: the earlier of its last activity
    /// plus the key's session idle time to live and its own `expiresAt`; `null`: kept until
    /// deleted. See docs/retention.md.
    #[schema(value_type = Option<String>, format = DateTime, example = "2026-03-16T22:00:05Z")]
    expires_at: Option<String>,
    context: SessionContextOutput,
}

/// A new (or continued) session, with the model's reply when the messages ended with a user turn.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreatedSession {
    #[schema(example = "session-123")]
    session_id: String,
    #[schema(example = "active")]
    status: String,
    #[schema(value_type = Option<String>, format = DateTime, example = "2026-02-14T22:00:00Z")]
    created_at: Option<String>,
    #[schema(example = "zai/glm-4.7-flash")]
    model: String,
    /// When the session is deleted unless a turn comes first (see `Session.expiresAt`); `null`:
    /// kept until deleted.
    #[schema(value_type = Option<String>, format = DateTime, example = "2026-03-16T22:00:05Z")]
    expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    message: Option<Message>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    usage: Option<Usage>,
    /// Why the model stopped ("stop", "length", "tool_calls", ...), when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "stop")]
    finish_reason: Option<String>,
    /// With `logprobs`: the reply's tokens' log probabilities, as on a send.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>, nullable = false)]
    logprobs: Option<serde_json::Value>,
    context: SessionContextOutput,
}

/// The model's reply to a sent message.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SentMessage {
    #[schema(example = "session-123")]
    session_id: String,
    /// The model's reply. Absent when the send was a tool result while other tool calls of the
    /// model's still await theirs: it is stored, and the last result's send is answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    message: Option<Message>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    usage: Option<Usage>,
    /// The model that answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "zai/glm-4.7-flash")]
    model: Option<String>,
    /// Why the model stopped ("stop", "length", "tool_calls", ...), when the provider said.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "stop")]
    finish_reason: Option<String>,
    /// With `logprobs`: the reply's tokens' log probabilities as the provider gave them, in
    /// OpenAI's shape (`{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>, nullable = false)]
    logprobs: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SessionList {
    sessions: Vec<Session>,
    /// Present when there are more; pass it as `pageToken`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    next_page_token: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MessageList {
    #[schema(example = "session-123")]
    session_id: String,
    messages: Vec<StoredMessage>,
    /// Present when there are more; pass it as `pageToken`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    next_page_token: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeletedSession {
    #[schema(example = "session-123")]
    session_id: String,
    /// Always `true`.
    deleted: bool,
}

impl From<proto::ChatMessage> for Message {
    fn from(message: proto::ChatMessage) -> Self {
        Self {
            role: message.role,
            content: message.content,
            tool_calls: message.tool_calls.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<proto::ChatMessage> for StoredMessage {
    fn from(message: proto::ChatMessage) -> Self {
        Self {
            created_at: timestamp::from_proto(message.created_at.as_ref()),
            role: message.role,
            content: message.content,
            summary: message.summary.map(|s| SummaryRange {
                from: s.from,
                to: s.to,
            }),
            tool_calls: message.tool_calls.into_iter().map(Into::into).collect(),
            tool_call_id: non_empty(message.tool_call_id),
            name: non_empty(message.name),
            parts: message.parts.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<proto::Usage> for Usage {
    fn from(usage: proto::Usage) -> Self {
        Self {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.total_tokens,
        }
    }
}

impl From<proto::Session> for Session {
    fn from(session: proto::Session) -> Self {
        Self {
            created_at: timestamp::from_proto(session.created_at.as_ref()),
            updated_at: timestamp::from_proto(session.updated_at.as_ref()),
            expires_at: timestamp::from_proto(session.expires_at.as_ref()),
            session_id: session.session_id,
            status: session.status,
            model: session.model,
            message_count: session.message_count,
            context: SessionContextOutput {
                strategy: strategy_name(session.context_strategy),
            },
        }
    }
}

/// A strategy as the core names it ("window" for a core that names none).
fn strategy_name(strategy: String) -> String {
    if strategy.is_empty() {
        "window".into()
    } else {
        strategy
    }
}

fn non_empty(token: String) -> Option<String> {
    (!token.is_empty()).then_some(token)
}

// ---- handlers -----------------------------------------------------------------------------

/// Create a session, or continue `context.sessionId`; answers the last user turn.
#[utoipa::path(
    post,
    path = "/api/v1/sessions",
    tag = TAG,
    request_body = CreateSessionRequest,
    responses(
        (status = 201, description = "Session created", body = SuccessEnvelope<CreatedSession>),
        (status = 200, description = "An existing session of the caller was continued", body = SuccessEnvelope<CreatedSession>),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 502, response = UpstreamError),
        BodyErrors,
        CallErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create_session(
    State(core): State<CoreClient>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateSessionRequest>,
) -> ApiResult<CreatedSession> {
    let request = body.into_proto()?;
    let reply = core
        .call(&caller, request, |channel, request| async move {
            SessionServiceClient::new(channel)
                .create_session(request)
                .await
        })
        .await?;
    let created = reply.message.created;
    let session = required(reply.message.session, "CreateSessionResponse.session")?;
    let answer = reply.message.reply;
    let data = CreatedSession {
        context: SessionContextOutput {
            strategy: strategy_name(session.context_strategy),
        },
        session_id: session.session_id,
        status: session.status,
        created_at: timestamp::from_proto(session.created_at.as_ref()),
        expires_at: timestamp::from_proto(session.expires_at.as_ref()),
        model: answer
            .as_ref()
            .map(|answer| answer.model.clone())
            .filter(|model| !model.is_empty())
            .unwrap_or(session.model),
        message: answer
            .as_ref()
            .and_then(|answer| answer.message.clone())
            .map(Into::into),
        finish_reason: answer
            .as_ref()
            .and_then(|answer| non_empty(answer.finish_reason.clone())),
        logprobs: answer
            .as_ref()
            .and_then(|answer| parse_logprobs(&answer.logprobs)),
        usage: answer.and_then(|answer| answer.usage).map(Into::into),
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(Enveloped::ok(data)
        .with_status(status)
        .with_headers(reply.headers))
}

/// Send a user message and get the model's reply, whole or streamed.
#[utoipa::path(
    post,
    path = "/api/v1/sessions/{sessionId}/messages",
    tag = TAG,
    params(
        ("sessionId" = String, Path, description = "The session to continue"),
        ("Accept" = Option<String>, Header, description = "`text/event-stream` streams the reply (unless the body says `\"stream\": false`)"),
    ),
    request_body = SendMessageRequest,
    responses(
        (status = 200, description = "The model's reply: the envelope, or with `stream` a `text/event-stream` of `delta` events (`{\"content\"}`), then one `done` event (the envelope's `data`) or one `error` event (the envelope's `error`). See docs/streaming.md", content(
            (SuccessEnvelope<SentMessage> = "application/json"),
            (StreamEvent = "text/event-stream", example = "event: delta\ndata: {\"content\":\"Hel\"}\n\nevent: delta\ndata: {\"content\":\"lo\"}\n\nevent: done\ndata: {\"sessionId\":\"session-123\",\"message\":{\"role\":\"assistant\",\"content\":\"Hello\"},\"usage\":{\"promptTokens\":10,\"completionTokens\":2,\"totalTokens\":12},\"model\":\"zai/glm-4.7-flash\",\"finishReason\":\"stop\"}\n\n"),
        )),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 502, response = UpstreamError),
        BodyErrors,
        CallErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn send_message(
    State(core): State<CoreClient>,
    caller: Caller,
    headers: HeaderMap,
    PathId(session_id): PathId,
    JsonBody(body): JsonBody<SendMessageRequest>,
) -> Result<Response, ApiError> {
    let (request, stream) = body.into_proto(session_id, accepts_event_stream(&headers))?;
    if stream {
        return stream_message(core, caller, request).await;
    }
    let reply = core
        .call(&caller, request, |channel, request| async move {
            if let Some(core) = channel.direct() {
                return core.send_message(request).await;
            }
            SessionServiceClient::new(channel)
                .send_message(request)
                .await
        })
        .await?;
    let response = reply.message;
    let data = sent_message(response)?;
    Ok(Enveloped::ok(data)
        .with_headers(reply.headers)
        .into_response())
}

fn sent_message(response: proto::SendMessageResponse) -> Result<SentMessage, ApiError> {
    let Some(answer) = response.reply else {
        return Ok(SentMessage {
            session_id: response.session_id,
            message: None,
            usage: None,
            model: None,
            finish_reason: None,
            logprobs: None,
        });
    };
    Ok(SentMessage {
        session_id: response.session_id,
        message: Some(required(answer.message, "Reply.message")?.into()),
        usage: Some(answer.usage.unwrap_or_default().into()),
        model: Some(answer.model),
        finish_reason: non_empty(answer.finish_reason),
        logprobs: parse_logprobs(&answer.logprobs),
    })
}

/// Whether the client's `Accept` asks for server-sent events.
pub(crate) fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|kind| {
            kind.split(';')
                .next()
                .is_some_and(|kind| kind.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// A piece of a streamed reply (the `data` of a `delta` event).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StreamEvent {
    /// The next piece of the reply's text (empty when the event is a tool call's).
    #[schema(example = "Hel")]
    content: String,
    /// A piece of a tool call: the first of each call has its `id`, `type` and
    /// `function.name`, the rest add to `function.arguments`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    tool_call: Option<ToolCallChunk>,
    /// With `logprobs`: this piece's tokens' log probabilities.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>, nullable = false)]
    logprobs: Option<serde_json::Value>,
}

/// The reply as server-sent events. Errors before the first event (auth,
/// limits, a model that cannot answer) are ordinary error responses.
async fn stream_message(
    core: CoreClient,
    caller: Caller,
    request: proto::SendMessageRequest,
) -> Result<Response, ApiError> {
    let reply = core
        .call(&caller, request, |channel, request| async move {
            SessionServiceClient::new(channel)
                .stream_message(request)
                .await
        })
        .await?;
    let events = futures::stream::unfold(Some(reply.message), |stream| async move {
        let mut stream = stream?;
        let event = match stream.next().await {
            Some(Ok(proto::StreamEvent {
                event: Some(proto::stream_event::Event::Delta(delta)),
            })) => {
                return Some((
                    Ok(json_event(
                        "delta",
                        &StreamEvent {
                            content: delta.content,
                            tool_call: delta.tool_call.map(Into::into),
                            logprobs: parse_logprobs(&delta.logprobs),
                        },
                    )),
                    Some(stream),
                ));
            }
            Some(Ok(proto::StreamEvent {
                event: Some(proto::stream_event::Event::Done(done)),
            })) => match sent_message(done) {
                Ok(data) => json_event("done", &data),
                Err(error) => error_event(error),
            },
            Some(Ok(proto::StreamEvent { event: None })) => {
                error_event(ApiError::incomplete_answer("StreamEvent.event"))
            }
            Some(Err(status)) => error_event(ApiError::from(status)),
            None => error_event(ApiError::incomplete_answer("StreamEvent.done")),
        };
        // `done` or `error` is the last event.
        Some((Ok(event), None))
    });
    Ok(event_stream(events, reply.headers))
}

/// A `text/event-stream` response, kept alive with comments and never buffered by proxies.
pub(crate) fn event_stream<S>(events: S, forwarded: HeaderMap) -> Response
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    headers.extend(forwarded);
    response
}

fn json_event<T: Serialize>(name: &'static str, data: &T) -> Event {
    Event::default()
        .event(name)
        .json_data(data)
        .unwrap_or_else(|_| error_event(ApiError::internal()))
}

/// The envelope's `error` object, as the last event of a failed stream.
fn error_event(error: ApiError) -> Event {
    tracing::warn!(%error, "streamed reply failed");
    let object = ErrorObject {
        code: code_name(error.code).to_owned(),
        quota: error.quota().cloned(),
        resets_at: error.budget().map(|b| b.resets_at.clone()),
        budget: error.budget().cloned(),
        message: error.message,
        details: error.details,
        retry_after: error.retry_after,
    };
    Event::default()
        .event("error")
        .json_data(&object)
        .unwrap_or_else(|_| Event::default().event("error").data("{}"))
}

/// List the caller's sessions, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/sessions",
    tag = TAG,
    params(PageQuery),
    responses(
        (status = 200, description = "One page of sessions", body = SuccessEnvelope<SessionList>),
        (status = 400, response = InvalidRequest),
        CallErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_sessions(
    State(core): State<CoreClient>,
    caller: Caller,
    QueryParams(page): QueryParams<PageQuery>,
) -> ApiResult<SessionList> {
    let request = proto::ListSessionsRequest {
        page_size: page.page_size.unwrap_or_default(),
        page_token: page.page_token.unwrap_or_default(),
    };
    core.enveloped(
        &caller,
        request,
        |channel, request| async move {
            SessionServiceClient::new(channel)
                .list_sessions(request)
                .await
        },
        |listed| SessionList {
            sessions: listed.sessions.into_iter().map(Into::into).collect(),
            next_page_token: non_empty(listed.next_page_token),
        },
    )
    .await
}

/// Read one session.
#[utoipa::path(
    get,
    path = "/api/v1/sessions/{sessionId}",
    tag = TAG,
    params(
        ("sessionId" = String, Path, description = "The session to read"),
    ),
    responses(
        (status = 200, description = "The session", body = SuccessEnvelope<Session>),
        (status = 400, response = InvalidRequest),
        (status = 404, response = NotFound),
        CallErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_session(
    State(core): State<CoreClient>,
    caller: Caller,
    PathId(session_id): PathId,
) -> ApiResult<Session> {
    let request = proto::GetSessionRequest { session_id };
    core.enveloped(
        &caller,
        request,
        |channel, request| async move {
            SessionServiceClient::new(channel)
                .get_session(request)
                .await
        },
        Session::from,
    )
    .await
}

/// Read a session's history, oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/sessions/{sessionId}/messages",
    tag = TAG,
    params(
        ("sessionId" = String, Path, description = "The session whose history to read"),
        PageQuery,
    ),
    responses(
        (status = 200, description = "One page of messages", body = SuccessEnvelope<MessageList>),
        (status = 400, response = InvalidRequest),
        (status = 404, response = NotFound),
        CallErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_messages(
    State(core): State<CoreClient>,
    caller: Caller,
    PathId(session_id): PathId,
    QueryParams(page): QueryParams<PageQuery>,
) -> ApiResult<MessageList> {
    let request = proto::ListMessagesRequest {
        session_id: session_id.clone(),
        page_size: page.page_size.unwrap_or_default(),
        page_token: page.page_token.unwrap_or_default(),
    };
    core.enveloped(
        &caller,
        request,
        |channel, request| async move {
            SessionServiceClient::new(channel)
                .list_messages(request)
                .await
        },
        |listed| MessageList {
            session_id,
            messages: listed.messages.into_iter().map(Into::into).collect(),
            next_page_token: non_empty(listed.next_page_token),
        },
    )
    .await
}

/// Delete a session and its history.
#[utoipa::path(
    delete,
    path = "/api/v1/sessions/{sessionId}",
    tag = TAG,
    params(
        ("sessionId" = String, Path, description = "The session to delete"),
    ),
    responses(
        (status = 200, description = "The session is gone", body = SuccessEnvelope<DeletedSession>),
        (status = 400, response = InvalidRequest),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        CallErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn delete_session(
    State(core): State<CoreClient>,
    caller: Caller,
    PathId(session_id): PathId,
) -> ApiResult<DeletedSession> {
    let request = proto::DeleteSessionRequest {
        session_id: session_id.clone(),
    };
    core.enveloped(
        &caller,
        request,
        |channel, request| async move {
            SessionServiceClient::new(channel)
                .delete_session(request)
                .await
        },
        |_| DeletedSession {
            session_id,
            deleted: true,
        },
    )
    .await
}
