//! `/v1`: an OpenAI-compatible surface, so code written for OpenAI's SDKs works against the
//! gateway by changing its base URL and key. `POST /v1/chat/completions` (whole or streamed)
//! translates to `CompletionService`, `GET /v1/models` lists the served models. Same API keys,
//! same limits; errors in OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`).
//! What differs from OpenAI is listed in docs/openai-compatibility.md.

use std::collections::BTreeMap;
use std::convert::Infallible;

use axum::{
    extract::{FromRef, FromRequest, Request, State},
    http::{HeaderMap, HeaderName, HeaderValue},
    response::{IntoResponse, Response, sse::Event},
};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use utoipa::ToSchema;

use crate::routes::content::ContentInput;
use crate::routes::sampling::{
    ResponseFormatInput, Stop, first_set_field, parse_logprobs, sampling,
};
use crate::routes::tools::{
    ToolCallChunk, ToolCallInput, ToolCallOutput, ToolChoiceInput, ToolInput,
};
use crate::{
    core_client::{CoreClient, required},
    error::ApiError,
    extract::{BodyLimit, JsonBody},
    headers::Caller,
    proto::{self, completion_service_client::CompletionServiceClient},
    routes::sessions::event_stream,
};

pub(crate) const TAG: &str = "openai";

/// Names a session of the caller to store the turn in (request), and the session stored in
/// (response).
pub(crate) const SESSION_HEADER: HeaderName = HeaderName::from_static("openclaw-session-id");

// ---- errors -------------------------------------------------------------------------------

/// An error in OpenAI's shape, with the status and headers (`Retry-After`, rate limits) the
/// gateway's own error would have had.
#[derive(Debug)]
pub(crate) struct OpenAiError(ApiError);

impl From<ApiError> for OpenAiError {
    fn from(error: ApiError) -> Self {
        Self(error)
    }
}

impl From<tonic::Status> for OpenAiError {
    fn from(status: tonic::Status) -> Self {
        Self(ApiError::from(status))
    }
}

/// `{"error": {...}}`
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OpenAiErrorBody {
    error: OpenAiErrorObject,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OpenAiErrorObject {
    /// What went wrong and what to do about it.
    #[schema(example = "The field 'model' is required")]
    message: String,
    /// `invalid_request_error`, `authentication_error`, `permission_error`, `not_found_error`,
    /// `rate_limit_error`, `conflict_error` or `server_error`.
    #[serde(rename = "type")]
    #[schema(example = "invalid_request_error")]
    kind: &'static str,
    /// The request field at fault, when one is.
    #[schema(example = "model")]
    param: Option<String>,
    /// The gateway's error code, lowercase (`invalid_request`, `rate_limit_exceeded`, ...).
    #[schema(example = "invalid_request")]
    code: String,
}

/// The core names sampling fields as the sessions API spells them; OpenAI's spelling here.
const OPENAI_NAMES: [(&str, &str); 15] = [
    ("maxTokens", "max_tokens"),
    ("topLogprobs", "top_logprobs"),
    ("imageUrl", "image_url"),
    ("toolCalls", "tool_calls"),
    ("toolCallId", "tool_call_id"),
    ("toolChoice", "tool_choice"),
    ("parallelToolCalls", "parallel_tool_calls"),
    ("topP", "top_p"),
    ("presencePenalty", "presence_penalty"),
    ("frequencyPenalty", "frequency_penalty"),
    ("logitBias", "logit_bias"),
    ("responseFormat.name", "response_format.json_schema.name"),
    (
        "responseFormat.schema",
        "response_format.json_schema.schema",
    ),
    ("responseFormat", "response_format"),
    ("jsonSchema", "json_schema"),
];

fn openai_spelling(text: &str) -> String {
    let mut out = text.to_owned();
    for (camel, snake) in OPENAI_NAMES {
        out = out.replace(&format!("'{camel}"), &format!("'{snake}"));
        out = out.replace(&format!(".{camel}"), &format!(".{snake}"));
        if out == camel || out.starts_with(&format!("{camel}.")) {
            out = out.replacen(camel, snake, 1);
        }
    }
    out
}

fn error_body(error: &ApiError) -> OpenAiErrorBody {
    use crate::proto::{ErrorCode as C, FieldViolationReason};
    let kind = match error.code {
        C::InvalidRequest => "invalid_request_error",
        C::Unauthorized => "authentication_error",
        C::Forbidden | C::QuotaExceeded => "permission_error",
        C::NotFound => "not_found_error",
        C::RateLimitExceeded => "rate_limit_error",
        C::BudgetExceeded => "insufficient_quota",
        C::Conflict => "conflict_error",
        C::InternalError
        | C::Unspecified
        | C::UpstreamError
        | C::Unavailable
        | C::UpstreamTimeout => "server_error",
    };
    // OpenAI's own code where one exists for the field's reason, the gateway's otherwise.
    let code = match error.field_reason {
        Some(FieldViolationReason::UnknownModel) => "model_not_found".to_owned(),
        Some(FieldViolationReason::Unspecified) | None => {
            crate::error::code_name(error.code).to_ascii_lowercase()
        }
    };
    OpenAiErrorBody {
        error: OpenAiErrorObject {
            message: openai_spelling(&error.details),
            kind,
            param: error.field.as_deref().map(openai_spelling),
            code,
        },
    }
}

/// The same status and headers as the guide's envelope would have; only the body differs.
impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        self.0.render(error_body)
    }
}

/// A JSON body whose rejections are OpenAI-shaped.
pub(crate) struct OpenAiJson<T>(T);

impl<S, T> FromRequest<S> for OpenAiJson<T>
where
    S: Send + Sync,
    BodyLimit: FromRef<S>,
    T: DeserializeOwned,
{
    type Rejection = OpenAiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, OpenAiError> {
        let JsonBody(value) = JsonBody::<T>::from_request(request, state).await?;
        Ok(Self(value))
    }
}

// ---- request ------------------------------------------------------------------------------

/// `POST /v1/chat/completions`, as OpenAI defines it. Every field listed is honoured; any other
/// field (OpenAI's `tools` or `logprobs` included) is refused with 400 naming it, never ignored.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct ChatCompletionRequest {
    /// A model id from `GET /v1/models` (`zai/glm-4.7-flash`), or its provider's own name
    /// (`glm-4.7-flash`) when only one provider serves it.
    #[schema(example = "zai/glm-4.7-flash")]
    model: Option<String>,
    /// The conversation, ending with a user message.
    #[serde(default)]
    messages: Vec<InputMessage>,
    #[schema(example = 0.7)]
    temperature: Option<f32>,
    /// Upper bound on the reply's tokens.
    #[schema(example = 1000)]
    max_tokens: Option<u32>,
    /// OpenAI's newer name for `max_tokens`; wins when both are given.
    max_completion_tokens: Option<u32>,
    /// Stream the reply as OpenAI `chat.completion.chunk` events.
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    /// Only 1 is supported.
    n: Option<u32>,
    /// Up to 4 sequences (or one string) that end the reply where they appear.
    #[schema(value_type = Option<Vec<String>>, example = json!(["\n\n"]))]
    stop: Option<Stop>,
    /// Nucleus sampling: above 0, at most 1.
    #[schema(example = 0.9)]
    top_p: Option<f32>,
    /// Best-effort deterministic sampling.
    #[schema(example = 42)]
    seed: Option<i64>,
    /// From -2 to 2.
    presence_penalty: Option<f32>,
    /// From -2 to 2.
    frequency_penalty: Option<f32>,
    /// Token id (as a string) → bias from -100 to 100.
    logit_bias: Option<BTreeMap<String, f32>>,
    /// The end user the call is made for, passed to the provider.
    #[schema(example = "user-1234")]
    user: Option<String>,
    /// `{"type": "text"}`, `{"type": "json_object"}` or
    /// `{"type": "json_schema", "json_schema": {"name", "schema", "strict"?, "description"?}}`.
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
    unsupported: BTreeMap<String, Value>,
}

/// What the gateway says of an OpenAI field it does not serve yet.
fn unsupported_field(name: &str) -> ApiError {
    let why = match name {
        "functions" | "function_call" => {
            "OpenAI's deprecated function calling is not served; use 'tools' and 'tool_choice'"
        }
        "audio" | "modalities" => "only text replies are supported",
        "prediction" | "web_search_options" | "reasoning_effort" | "service_tier" | "store"
        | "metadata" | "verbosity" => "this OpenAI option is not supported by this gateway",
        _ => "it is not a chat completions field this gateway knows",
    };
    invalid(
        name.to_owned(),
        format!(
            "The field '{name}' is refused: {why}. Remove it; supported: model, messages, temperature, max_tokens, max_completion_tokens, stream, stream_options, n (1), stop, top_p, seed, presence_penalty, frequency_penalty, logit_bias, user, response_format, tools, tool_choice, parallel_tool_calls, logprobs, top_logprobs"
        ),
    )
}

#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct StreamOptions {
    /// Send a last chunk with the usage (and empty `choices`) before `[DONE]`.
    include_usage: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct InputMessage {
    /// "system", "developer", "user", "assistant" or "tool".
    #[serde(default)]
    #[schema(example = "user")]
    role: String,
    /// Text, or an array of parts: `{"type": "text", "text"}` and, on user messages,
    /// `{"type": "image_url", "image_url": {"url", "detail"?}}` (an http(s) or data URL); null
    /// on an assistant message that only calls tools.
    #[schema(value_type = Object, example = "Hello")]
    content: Option<ContentInput>,
    /// An assistant message's tool calls, as the model returned them.
    tool_calls: Option<Vec<ToolCallInput>>,
    /// A "tool" message: the id of the tool call whose result `content` is.
    tool_call_id: Option<String>,
    /// The author's name (letters, digits, '_' and '-', at most 64).
    name: Option<String>,
    /// Any other field (`audio`, `refusal`, ...): refused, named.
    #[serde(flatten)]
    #[schema(ignore)]
    unsupported: BTreeMap<String, Value>,
}

fn invalid(field: String, details: String) -> ApiError {
    ApiError::invalid_field(field, "Invalid request", details)
}

impl InputMessage {
    fn into_proto(self, index: usize) -> Result<proto::ChatMessage, ApiError> {
        // A null field is an absent one: SDKs send back the reply's `refusal: null` as it came.
        if let Some(name) = first_set_field(&self.unsupported) {
            return Err(invalid(
                format!("messages[{index}].{name}"),
                format!(
                    "The field 'messages[{index}].{name}' is refused: a message carries 'role', 'content', 'name', 'tool_calls' and 'tool_call_id' through this gateway"
                ),
            ));
        }
        let (content, parts) = crate::routes::content::content(
            self.content,
            &format!("messages[{index}].content"),
            "image_url",
        )?;
        Ok(proto::ChatMessage {
            role: self.role,
            content,
            parts,
            tool_calls: crate::routes::tools::tool_calls(
                self.tool_calls.unwrap_or_default(),
                &format!("messages[{index}].tool_calls"),
            )?,
            tool_call_id: self.tool_call_id.unwrap_or_default(),
            name: self.name.unwrap_or_default(),
            ..Default::default()
        })
    }
}

pub(crate) fn completion_request(
    body: ChatCompletionRequest,
    headers: &HeaderMap,
) -> Result<(proto::CompleteRequest, bool, bool), ApiError> {
    if body.n.is_some_and(|n| n != 1) {
        return Err(invalid(
            "n".into(),
            "The field 'n' must be 1: the gateway returns one choice".into(),
        ));
    }
    if let Some(name) = first_set_field(&body.unsupported) {
        return Err(unsupported_field(name));
    }
    let session_id = match headers.get(&SESSION_HEADER) {
        None => String::new(),
        Some(value) => value
            .to_str()
            .map(|id| id.trim().to_owned())
            .map_err(|_| {
                ApiError::invalid_request(
                    "Invalid session id",
                    "The header 'OpenClaw-Session-Id' must be a session id of letters, digits, '-', '_', '.' or ':'",
                )
            })?,
    };
    let messages = body
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, message)| message.into_proto(i))
        .collect::<Result<Vec<_>, _>>()?;
    let max_tokens = body.max_completion_tokens.or(body.max_tokens);
    let options = sampling!(body).into_options(body.temperature, max_tokens)?;
    let include_usage = body
        .stream_options
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    Ok((
        proto::CompleteRequest {
            model: body.model.unwrap_or_default(),
            messages,
            options,
            session_id,
        },
        body.stream.unwrap_or(false),
        include_usage,
    ))
}

// ---- response -----------------------------------------------------------------------------

/// A whole completion, as OpenAI returns it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ChatCompletion {
    #[schema(example = "chatcmpl-0194b6a0c7d2")]
    id: String,
    /// Always `chat.completion`.
    #[schema(example = "chat.completion")]
    object: &'static str,
    /// Unix seconds.
    #[schema(example = 1771113600)]
    created: i64,
    /// The model that answered (a fallback, when the asked one could not).
    #[schema(example = "zai/glm-4.7-flash")]
    model: String,
    choices: Vec<Choice>,
    usage: CompletionUsage,
    /// Always null.
    #[schema(value_type = Option<String>)]
    system_fingerprint: Option<()>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Choice {
    index: u32,
    message: OutputMessage,
    /// With `logprobs`: `{"content": [{"token", "logprob", "bytes", "top_logprobs"}], ...}` as
    /// the provider gave it; null otherwise.
    #[schema(value_type = Option<Object>)]
    logprobs: Option<Value>,
    #[schema(example = "stop")]
    finish_reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OutputMessage {
    /// Always `assistant`.
    role: &'static str,
    /// Null when the model only called tools.
    content: Option<String>,
    /// The tools the model called (`finish_reason` is then "tool_calls").
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallOutput>,
    /// Always null.
    #[schema(value_type = Option<String>)]
    refusal: Option<()>,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub(crate) struct CompletionUsage {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
}

impl From<proto::Usage> for CompletionUsage {
    fn from(usage: proto::Usage) -> Self {
        Self {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.total_tokens,
        }
    }
}

/// A piece of a streamed completion (`chat.completion.chunk`).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ChatCompletionChunk<'a> {
    id: &'a str,
    /// Always `chat.completion.chunk`.
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: Vec<ChunkChoice<'a>>,
    /// Present when `stream_options.include_usage`: null but on the last chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<CompletionUsage>)]
    usage: Option<Option<CompletionUsage>>,
    #[schema(value_type = Option<String>)]
    system_fingerprint: Option<()>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ChunkChoice<'a> {
    index: u32,
    delta: ChunkDelta<'a>,
    /// With `logprobs`: this piece's tokens' log probabilities; null otherwise.
    #[schema(value_type = Option<Object>)]
    logprobs: Option<Value>,
    #[schema(value_type = Option<String>)]
    finish_reason: Option<&'a str>,
}

#[derive(Debug, Default, Serialize, ToSchema)]
pub(crate) struct ChunkDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<Vec<ToolCallChunk>>,
}

/// `GET /v1/models`
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ModelList {
    /// Always `list`.
    object: &'static str,
    data: Vec<ModelObject>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ModelObject {
    #[schema(example = "zai/glm-4.7-flash")]
    id: String,
    /// Always `model`.
    object: &'static str,
    /// Always 0: the gateway does not know when a provider made its model.
    created: i64,
    /// The provider serving it.
    #[schema(example = "zai")]
    owned_by: String,
}

fn finish_reason(reason: &str) -> &str {
    if reason.is_empty() { "stop" } else { reason }
}

fn seconds(at: Option<&prost_types::Timestamp>) -> i64 {
    at.map_or_else(|| chrono::Utc::now().timestamp(), |at| at.seconds)
}

fn with_session(mut response: Response, session_id: &str) -> Response {
    if !session_id.is_empty()
        && let Ok(value) = HeaderValue::from_str(session_id)
    {
        response.headers_mut().insert(SESSION_HEADER, value);
    }
    response
}

// ---- handlers -----------------------------------------------------------------------------

/// Create a chat completion (OpenAI-compatible), whole or streamed.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = TAG,
    params(
        ("OpenClaw-Session-Id" = Option<String>, Header, description = "Also store the turn in this session of the caller (created when missing); see docs/openai-compatibility.md"),
    ),
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "The completion, or with `stream: true` a `text/event-stream` of `data: <chat.completion.chunk>` events ending with `data: [DONE]`", content(
            (ChatCompletion = "application/json"),
            (ChatCompletionChunk = "text/event-stream"),
        )),
        (status = 400, description = "Invalid request", body = OpenAiErrorBody),
        (status = 401, description = "Invalid API key", body = OpenAiErrorBody),
        (status = 403, description = "The key lacks the 'sessions' scope", body = OpenAiErrorBody),
        (status = 409, description = "The bound session is busy or was created concurrently", body = OpenAiErrorBody),
        (status = 413, description = "The body is larger than the gateway accepts", body = OpenAiErrorBody),
        (status = 415, description = "The body is not sent as JSON (`Content-Type: application/json`)", body = OpenAiErrorBody),
        (status = 429, description = "A limit is exhausted; see Retry-After", body = OpenAiErrorBody),
        (status = 500, description = "The gateway failed", body = OpenAiErrorBody),
        (status = 502, description = "The model provider failed", body = OpenAiErrorBody),
        (status = 503, description = "A dependency is down, or the provider's circuit is open", body = OpenAiErrorBody),
        (status = 504, description = "The model provider timed out", body = OpenAiErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn chat_completions(
    State(core): State<CoreClient>,
    caller: Caller,
    headers: HeaderMap,
    OpenAiJson(body): OpenAiJson<ChatCompletionRequest>,
) -> Result<Response, OpenAiError> {
    let (request, stream, include_usage) = completion_request(body, &headers)?;
    if stream {
        return stream_completion(core, caller, request, include_usage).await;
    }
    let reply = core
        .call(&caller, request, |channel, request| async move {
            if let Some(core) = channel.direct() {
                return core.complete(request).await;
            }
            CompletionServiceClient::new(channel)
                .complete(request)
                .await
        })
        .await?;
    let done = reply.message;
    let answer = required(done.reply, "CompleteResponse.reply")?;
    let message = required(answer.message, "Reply.message")?;
    let completion = ChatCompletion {
        id: done.id,
        object: "chat.completion",
        created: seconds(done.created_at.as_ref()),
        model: answer.model,
        choices: vec![Choice {
            index: 0,
            message: OutputMessage {
                role: "assistant",
                content: (!message.content.is_empty() || message.tool_calls.is_empty())
                    .then_some(message.content),
                tool_calls: message.tool_calls.into_iter().map(Into::into).collect(),
                refusal: None,
            },
            logprobs: parse_logprobs(&answer.logprobs),
            finish_reason: finish_reason(&answer.finish_reason).to_owned(),
        }],
        usage: answer.usage.unwrap_or_default().into(),
        system_fingerprint: None,
    };
    let mut response = crate::envelope::json_body(&completion);
    response.headers_mut().extend(reply.headers);
    Ok(with_session(response, &done.session_id))
}

/// What every chunk of one streamed completion repeats.
struct ChunkHead {
    id: String,
    created: i64,
    model: String,
    include_usage: bool,
}

impl ChunkHead {
    fn chunk(&self, delta: ChunkDelta<'_>, finish: Option<&str>) -> Event {
        self.chunk_with(delta, None, finish)
    }

    fn chunk_with(
        &self,
        delta: ChunkDelta<'_>,
        logprobs: Option<Value>,
        finish: Option<&str>,
    ) -> Event {
        self.event(&ChatCompletionChunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                logprobs,
                finish_reason: finish,
            }],
            usage: self.include_usage.then_some(None),
            system_fingerprint: None,
        })
    }

    fn usage(&self, usage: CompletionUsage) -> Event {
        self.event(&ChatCompletionChunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: Vec::new(),
            usage: Some(Some(usage)),
            system_fingerprint: None,
        })
    }

    fn event(&self, chunk: &ChatCompletionChunk<'_>) -> Event {
        Event::default()
            .json_data(chunk)
            .unwrap_or_else(|_| error_event(ApiError::internal()))
    }
}

/// OpenAI ends a failed stream with an `error` object in a data event.
fn error_event(error: ApiError) -> Event {
    tracing::warn!(%error, "streamed completion failed");
    Event::default()
        .json_data(error_body(&error))
        .unwrap_or_else(|_| Event::default().data("{\"error\":{}}"))
}

async fn stream_completion(
    core: CoreClient,
    caller: Caller,
    request: proto::CompleteRequest,
    include_usage: bool,
) -> Result<Response, OpenAiError> {
    let reply = core
        .call(&caller, request, |channel, request| async move {
            CompletionServiceClient::new(channel)
                .stream_complete(request)
                .await
        })
        .await?;
    let mut stream = reply.message;
    // The core sends `started` first; anything else there is a failure before the first token.
    let head = match stream.next().await {
        Some(Ok(proto::CompleteEvent {
            event: Some(proto::complete_event::Event::Started(started)),
        })) => ChunkHead {
            id: started.id,
            created: seconds(started.created_at.as_ref()),
            model: started.model,
            include_usage,
        },
        Some(Err(status)) => return Err(status.into()),
        _ => return Err(ApiError::incomplete_answer("CompleteEvent.started").into()),
    };
    let first = head.chunk(
        ChunkDelta {
            role: Some("assistant"),
            content: Some(""),
            tool_calls: None,
        },
        None,
    );
    let rest = futures::stream::unfold(Some((stream, head)), |state| async move {
        let (mut stream, head) = state?;
        let events: Vec<Event> = match stream.next().await {
            Some(Ok(proto::CompleteEvent {
                event: Some(proto::complete_event::Event::Delta(delta)),
            })) => {
                let logprobs = parse_logprobs(&delta.logprobs);
                let event = match delta.tool_call {
                    Some(call) => head.chunk_with(
                        ChunkDelta {
                            tool_calls: Some(vec![call.into()]),
                            ..ChunkDelta::default()
                        },
                        logprobs,
                        None,
                    ),
                    None => head.chunk_with(
                        ChunkDelta {
                            content: (!delta.content.is_empty()).then_some(&delta.content),
                            ..ChunkDelta::default()
                        },
                        logprobs,
                        None,
                    ),
                };
                return Some((futures::stream::iter(vec![event]), Some((stream, head))));
            }
            Some(Ok(proto::CompleteEvent {
                event: Some(proto::complete_event::Event::Done(done)),
            })) => {
                let answer = done.reply.unwrap_or_default();
                let mut events = vec![head.chunk(
                    ChunkDelta::default(),
                    Some(finish_reason(&answer.finish_reason)),
                )];
                if head.include_usage {
                    events.push(head.usage(answer.usage.unwrap_or_default().into()));
                }
                events.push(Event::default().data("[DONE]"));
                events
            }
            Some(Err(status)) => vec![error_event(ApiError::from(status))],
            Some(Ok(_)) | None => vec![error_event(ApiError::incomplete_answer(
                "CompleteEvent.done",
            ))],
        };
        Some((futures::stream::iter(events), None))
    })
    .flatten();
    let events = futures::stream::once(async move { first })
        .chain(rest)
        .map(Ok::<_, Infallible>);
    Ok(event_stream(events, reply.headers))
}

/// List the models (OpenAI-compatible).
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = TAG,
    responses(
        (status = 200, description = "The models served here, the default first", body = ModelList),
        (status = 401, description = "Invalid API key", body = OpenAiErrorBody),
        (status = 429, description = "A limit is exhausted; see Retry-After", body = OpenAiErrorBody),
        (status = 503, description = "The gateway core is unreachable", body = OpenAiErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_models(
    State(core): State<CoreClient>,
    caller: Caller,
) -> Result<Response, OpenAiError> {
    let reply = core
        .call(
            &caller,
            proto::ListModelsRequest {},
            |channel, request| async move {
                CompletionServiceClient::new(channel)
                    .list_models(request)
                    .await
            },
        )
        .await?;
    let list = ModelList {
        object: "list",
        data: reply
            .message
            .models
            .into_iter()
            .map(|model| ModelObject {
                id: model.id,
                object: "model",
                created: 0,
                owned_by: model.provider,
            })
            .collect(),
    };
    let mut response = crate::envelope::json_body(&list);
    response.headers_mut().extend(reply.headers);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, time::Duration};

    use axum::http::{StatusCode, header};
    use serde_json::Value;
    use tonic_types::{ErrorDetails, FieldViolation, StatusExt as _};

    use super::*;
    use crate::proto::{ErrorCode, FieldViolationReason};

    /// A status as the core sends it for a field error: `ErrorInfo` with the code and the
    /// sentence, and a `BadRequest` violation naming the field (and the reason, if any).
    fn field_status(message: &str, details: &str, field: &str, reason: &str) -> tonic::Status {
        let mut error_details = ErrorDetails::with_error_info(
            "INVALID_REQUEST",
            "openclaw.ai",
            HashMap::from([("details".to_owned(), details.to_owned())]),
        );
        error_details.set_bad_request(vec![FieldViolation {
            field: field.to_owned(),
            description: details.to_owned(),
            reason: reason.to_owned(),
            localized_message: None,
        }]);
        tonic::Status::with_error_details(tonic::Code::InvalidArgument, message, error_details)
    }

    async fn render(error: OpenAiError) -> (StatusCode, HeaderMap, Value) {
        crate::envelope::tests::render(error.into_response()).await
    }

    #[tokio::test]
    async fn an_unknown_model_is_model_not_found_whatever_the_core_says() {
        let status = field_status(
            "That model is not something we serve",
            "Pick another one from GET /v1/models",
            "model",
            "UNKNOWN_MODEL",
        );
        let (http, _, body) = render(OpenAiError::from(status)).await;
        assert_eq!(http, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "model_not_found");
        assert_eq!(body["error"]["param"], "model");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(
            body["error"]["message"],
            "Pick another one from GET /v1/models"
        );
    }

    #[tokio::test]
    async fn a_field_error_names_its_param_whatever_the_core_says() {
        let status = field_status(
            "Out of range",
            "Temperatures above two are too hot",
            "temperature",
            "",
        );
        let (http, _, body) = render(OpenAiError::from(status)).await;
        assert_eq!(http, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["param"], "temperature");
        assert_eq!(body["error"]["code"], "invalid_request");
    }

    #[tokio::test]
    async fn sentences_that_look_like_a_field_or_an_unknown_model_are_not_read() {
        let status = tonic::Status::with_error_details(
            tonic::Code::InvalidArgument,
            "Unknown model",
            ErrorDetails::with_error_info(
                "INVALID_REQUEST",
                "openclaw.ai",
                HashMap::from([(
                    "details".to_owned(),
                    "The field 'model' is not served here".to_owned(),
                )]),
            ),
        );
        let (_, _, body) = render(OpenAiError::from(status)).await;
        assert_eq!(body["error"]["code"], "invalid_request");
        assert!(body["error"]["param"].is_null(), "{body}");
    }

    #[tokio::test]
    async fn a_reason_this_edge_does_not_know_is_an_ordinary_field_error() {
        let status = field_status("Bad", "Fix it", "messages", "SOMETHING_NEWER");
        let (_, _, body) = render(OpenAiError::from(status)).await;
        assert_eq!(body["error"]["code"], "invalid_request");
        assert_eq!(body["error"]["param"], "messages");
    }

    #[tokio::test]
    async fn both_shapes_send_the_same_status_and_headers() {
        let limited = || {
            let mut details = ErrorDetails::with_error_info(
                "RATE_LIMIT_EXCEEDED",
                "openclaw.ai",
                HashMap::from([("details".to_owned(), "Wait a little".to_owned())]),
            );
            details.set_retry_info(Some(Duration::from_millis(4_100)));
            let mut status = tonic::Status::with_error_details(
                tonic::Code::ResourceExhausted,
                "Slow down",
                details,
            );
            status.metadata_mut().insert(
                "x-ratelimit-remaining-requests",
                "0".parse().expect("ascii"),
            );
            status
        };
        let (openai_status, openai_headers, openai_body) =
            render(OpenAiError::from(limited())).await;
        let guide = ApiError::from(limited()).into_response();
        assert_eq!(openai_status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(guide.status(), openai_status);
        for name in [
            header::RETRY_AFTER.as_str(),
            "x-ratelimit-remaining-requests",
        ] {
            assert!(openai_headers.get(name).is_some(), "{name}");
            assert_eq!(
                guide.headers().get(name),
                openai_headers.get(name),
                "{name}"
            );
        }
        assert_eq!(
            openai_headers
                .get(header::RETRY_AFTER)
                .map(|v| v.as_bytes()),
            Some(&b"5"[..])
        );
        assert_eq!(openai_body["error"]["type"], "rate_limit_error");
    }

    #[test]
    fn errors_take_openai_types_and_name_the_field() {
        let body = error_body(&ApiError::invalid_field(
            "model",
            "Missing required field",
            "The field 'model' is required",
        ));
        assert_eq!(body.error.kind, "invalid_request_error");
        assert_eq!(body.error.param.as_deref(), Some("model"));
        assert_eq!(body.error.code, "invalid_request");
        let body = error_body(&ApiError::new(
            ErrorCode::RateLimitExceeded,
            "x",
            "Try again in 3 seconds",
        ));
        assert_eq!(body.error.kind, "rate_limit_error");
        assert_eq!(body.error.code, "rate_limit_exceeded");
        assert_eq!(body.error.param, None);
        let mut unknown =
            ApiError::invalid_field("model", "Unknown model", "The model 'x' is not served here");
        unknown.field_reason = Some(FieldViolationReason::UnknownModel);
        let body = error_body(&unknown);
        assert_eq!(body.error.code, "model_not_found");
        assert_eq!(body.error.param.as_deref(), Some("model"));
    }

    #[test]
    fn text_parts_are_joined_images_kept_and_other_parts_refused() {
        let message: InputMessage = serde_json::from_str(
            r#"{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}"#,
        )
        .expect("parts");
        let text = message.into_proto(0).expect("text");
        assert_eq!(text.content, "ab");
        assert!(text.parts.is_empty(), "text alone travels as text");
        let image: InputMessage = serde_json::from_str(
            r#"{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}}]}"#,
        )
        .expect("parts");
        let image = image.into_proto(0).expect("an image");
        assert_eq!(image.content, "a");
        assert_eq!(image.parts.len(), 2);
        assert_eq!(image.parts[1].image_url, "https://example.com/a.png");
        assert_eq!(image.parts[1].detail, "low");
        let audio: InputMessage = serde_json::from_str(
            r#"{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x"}}]}"#,
        )
        .expect("parts");
        assert!(
            audio
                .into_proto(2)
                .expect_err("refused")
                .details
                .contains("messages[2].content[0]")
        );
    }

    #[test]
    fn chunks_carry_usage_null_until_the_last_when_asked() {
        let head = ChunkHead {
            id: "chatcmpl-1".into(),
            created: 1,
            model: "m".into(),
            include_usage: true,
        };
        let chunk = ChatCompletionChunk {
            id: &head.id,
            object: "chat.completion.chunk",
            created: 1,
            model: "m",
            choices: Vec::new(),
            usage: head.include_usage.then_some(None),
            system_fingerprint: None,
        };
        let json = serde_json::to_value(&chunk).expect("json");
        assert!(json.get("usage").is_some_and(|u| u.is_null()));
    }
}
