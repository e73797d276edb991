//! A client for any OpenAI-compatible chat-completions API (Z.ai, a local
//! server, another vendor): `POST {base_url}/chat/completions`, whole or
//! streamed as server-sent events (`stream_options.include_usage`, so a
//! streamed answer reports the same usage as a whole one).

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

use super::event_stream::EventDecoder;
use super::http::{ByteStream, Endpoint, Response};
use super::{
    ChatCompletion, ChatProvider, ChatRequest, Chunk, ChunkStream, ContentPart, Message,
    ProviderError, ResponseFormat, StreamEnd, Tool, ToolCall, ToolCallDelta, ToolChoice,
};
use crate::config::Secret;
use crate::{json_text, tokenizer};

#[derive(Clone)]
pub struct OpenAiConfig {
    pub name: String,
    /// Up to and excluding `/chat/completions`, e.g. `https://api.z.ai/api/paas/v4`.
    pub base_url: String,
    /// Sent as `Authorization: Bearer`; a local server may need none.
    pub api_key: Option<Secret>,
    pub connect_timeout: Duration,
    /// Bound on a whole call, from sending to the last byte of the answer.
    pub request_timeout: Duration,
    /// Sent with every call (the providers file's `headers`).
    pub headers: Vec<(String, Secret)>,
    /// Added to every call's URL (the providers file's `query`).
    pub query: Vec<(String, Secret)>,
}

impl OpenAiConfig {
    /// The reqwest client of a provider reached through a proxy: its timeouts, TCP_NODELAY,
    /// kept-alive connections (see [`super::http`]).
    pub(super) fn client(&self) -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("openclaw-gateway/", env!("CARGO_PKG_VERSION")))
            .build()?)
    }

    /// `{base_url}{path}` with the configured query parameters.
    pub(super) fn endpoint(&self, path: &str) -> anyhow::Result<reqwest::Url> {
        let endpoint = format!("{}{path}", self.base_url.trim_end_matches('/'));
        let mut url = reqwest::Url::parse(&endpoint).map_err(|error| {
            anyhow::anyhow!(
                "provider '{}': the base URL '{}' is not a valid URL ({error})",
                self.name,
                openclaw_runtime::redact::url(&self.base_url)
            )
        })?;
        if !self.query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (name, value) in &self.query {
                pairs.append_pair(name, value.expose());
            }
        }
        Ok(url)
    }

    /// The configured headers, values marked sensitive (never logged).
    pub(super) fn header_map(&self) -> anyhow::Result<reqwest::header::HeaderMap> {
        let mut map = reqwest::header::HeaderMap::new();
        for (name, value) in &self.headers {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())?;
            let mut value = reqwest::header::HeaderValue::from_str(value.expose()).map_err(|_| {
                anyhow::anyhow!(
                    "provider '{}': the value of header '{name}' is not valid in an HTTP header",
                    self.name
                )
            })?;
            value.set_sensitive(true);
            map.insert(name, value);
        }
        Ok(map)
    }
}

pub struct OpenAiCompatible {
    config: OpenAiConfig,
    /// Built once: the URL, the client, the configured headers and the bearer token.
    endpoint: Endpoint,
}

impl OpenAiCompatible {
    pub fn new(config: OpenAiConfig) -> anyhow::Result<Self> {
        let mut headers = config.header_map()?;
        if let Some(key) = &config.api_key {
            let mut value =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.expose()))
                    .map_err(|_| anyhow::anyhow!("the API key is not valid in an HTTP header"))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let endpoint = Endpoint::new(&config, "/chat/completions", headers)?;
        Ok(Self { config, endpoint })
    }
}

/// A chat-completions request: `model` and `messages` first, written by [`encode`]; the
/// options after them by serde.
struct WireRequest<'a> {
    model: &'a str,
    messages: &'a [Message],
    options: WireOptions<'a>,
}

/// Everything a chat-completions request carries beside its model and messages.
#[derive(Serialize)]
#[cfg_attr(test, derive(Clone))]
struct WireOptions<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f32>,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    logit_bias: &'a std::collections::BTreeMap<String, f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_logprobs: Option<u32>,
}

/// OpenAI's function tool: `{"type": "function", "function": {...}}`.
fn wire_tool(tool: &Tool) -> serde_json::Value {
    let mut function = serde_json::json!({"name": tool.name});
    if let Some(description) = &tool.description {
        function["description"] = serde_json::Value::from(description.as_str());
    }
    if let Some(parameters) = &tool.parameters {
        function["parameters"] = parameters.clone();
    }
    if let Some(strict) = tool.strict {
        function["strict"] = serde_json::Value::from(strict);
    }
    serde_json::json!({"type": "function", "function": function})
}

fn wire_tool_choice(choice: &ToolChoice) -> serde_json::Value {
    match choice {
        ToolChoice::Auto => "auto".into(),
        ToolChoice::None => "none".into(),
        ToolChoice::Required => "required".into(),
        ToolChoice::Function { function } => {
            serde_json::json!({"type": "function", "function": {"name": function}})
        }
    }
}

/// OpenAI's `response_format`: `{"type": "json_schema", "json_schema": {...}}`.
fn wire_response_format(format: &ResponseFormat) -> serde_json::Value {
    match format {
        ResponseFormat::Text => serde_json::json!({"type": "text"}),
        ResponseFormat::JsonObject => serde_json::json!({"type": "json_object"}),
        ResponseFormat::JsonSchema {
            name,
            description,
            schema,
            strict,
        } => {
            let mut inner = serde_json::json!({"name": name, "schema": schema});
            if let Some(description) = description {
                inner["description"] = serde_json::Value::from(description.as_str());
            }
            if let Some(strict) = strict {
                inner["strict"] = serde_json::Value::from(*strict);
            }
            serde_json::json!({"type": "json_schema", "json_schema": inner})
        }
    }
}

impl WireRequest<'_> {
    /// The request's JSON. The messages, most of a request's bytes, are written by hand:
    /// their text with [`crate::json_text::write_str`], the rest (parts, tool calls) by serde.
    fn encode(&self) -> serde_json::Result<Vec<u8>> {
        let text: usize = self.messages.iter().map(|m| m.content.len() + 48).sum();
        let mut out = Vec::with_capacity(text + 256);
        out.extend_from_slice(b"{\"model\":");
        json_text::write_str(&mut out, self.model);
        out.extend_from_slice(b",\"messages\":[");
        for (i, message) in self.messages.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            WireMessage::from(message).encode(&mut out)?;
        }
        out.push(b']');
        // The options object always holds `stream`: its `{` becomes the `,` after the messages.
        let options = out.len();
        serde_json::to_writer(&mut out, &self.options)?;
        out[options] = b',';
        Ok(out)
    }
}

#[derive(Serialize)]
#[cfg_attr(test, derive(Clone))]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'a str,
    /// Null on an assistant message that only calls tools; parts for one sent as parts.
    content: Option<WireContent<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum WireContent<'a> {
    Text(&'a str),
    Parts(Vec<serde_json::Value>),
}

/// OpenAI's content parts: `{"type": "text", "text"}`, `{"type": "image_url", "image_url":
/// {"url", "detail"?}}`.
fn wire_parts(parts: &[ContentPart]) -> Vec<serde_json::Value> {
    parts
        .iter()
        .map(|part| match part {
            ContentPart::Text { text } => serde_json::json!({"type": "text", "text": text}),
            ContentPart::ImageUrl { url, detail } => {
                let mut image = serde_json::json!({"url": url});
                if let Some(detail) = detail {
                    image["detail"] = serde_json::Value::from(detail.as_str());
                }
                serde_json::json!({"type": "image_url", "image_url": image})
            }
        })
        .collect()
}

impl WireMessage<'_> {
    /// Appends the message's JSON, byte for byte what its `Serialize` writes.
    fn encode(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        out.extend_from_slice(b"{\"role\":");
        json_text::write_str(out, self.role);
        out.extend_from_slice(b",\"content\":");
        match &self.content {
            None => out.extend_from_slice(b"null"),
            Some(WireContent::Text(text)) => json_text::write_str(out, text),
            Some(WireContent::Parts(parts)) => serde_json::to_writer(&mut *out, parts)?,
        }
        if !self.tool_calls.is_empty() {
            out.extend_from_slice(b",\"tool_calls\":");
            serde_json::to_writer(&mut *out, &self.tool_calls)?;
        }
        if let Some(id) = self.tool_call_id {
            out.extend_from_slice(b",\"tool_call_id\":");
            json_text::write_str(out, id);
        }
        if let Some(name) = self.name {
            out.extend_from_slice(b",\"name\":");
            json_text::write_str(out, name);
        }
        out.push(b'}');
        Ok(())
    }
}

impl<'a> From<&'a Message> for WireMessage<'a> {
    fn from(message: &'a Message) -> Self {
        let only_calls = message.content.is_empty() && !message.tool_calls.is_empty();
        let content = if !message.parts.is_empty() {
            Some(WireContent::Parts(wire_parts(&message.parts)))
        } else {
            (!only_calls).then_some(WireContent::Text(message.content.as_str()))
        };
        Self {
            role: &message.role,
            content,
            tool_calls: message
                .tool_calls
                .iter()
                .map(|call| {
                    serde_json::json!({
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    })
                })
                .collect(),
            tool_call_id: message.tool_call_id.as_deref(),
            name: message.name.as_deref(),
        }
    }
}

/// A tool call as OpenAI sends it, whole (`message.tool_calls`) or in pieces
/// (`delta.tool_calls`, where `index` says which call a piece adds to).
#[derive(Deserialize)]
struct WireToolCall {
    index: Option<u32>,
    id: Option<String>,
    function: Option<WireFunction>,
}

#[derive(Deserialize)]
struct WireFunction {
    name: Option<String>,
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct WireResponse {
    choices: Vec<WireChoice>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: WireReply,
    finish_reason: Option<String>,
    #[serde(default)]
    logprobs: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct WireReply {
    content: Option<String>,
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Deserialize)]
struct WireUsage {
    prompt_tokens: Option<u32>,
    completion_tokens: Option<u32>,
    prompt_tokens_details: Option<WirePromptDetails>,
}

#[derive(Deserialize)]
struct WirePromptDetails {
    cached_tokens: Option<u32>,
}

impl WireUsage {
    fn cached_tokens(&self) -> Option<u32> {
        self.prompt_tokens_details.as_ref()?.cached_tokens
    }
}

/// One event of a streamed answer.
#[derive(Deserialize)]
struct WireChunk {
    #[serde(default)]
    choices: Vec<WireChunkChoice>,
    usage: Option<WireUsage>,
    error: Option<WireErrorBody>,
}

#[derive(Deserialize)]
struct WireChunkChoice {
    delta: Option<WireReply>,
    finish_reason: Option<String>,
    #[serde(default)]
    logprobs: Option<serde_json::Value>,
}

#[derive(Deserialize)]
pub(super) struct WireError {
    pub(super) error: WireErrorBody,
}

#[derive(Deserialize)]
pub(super) struct WireErrorBody {
    pub(super) message: Option<String>,
}

/// How long the provider asks to be left alone: `retry-after-ms` (OpenAI's),
/// else `Retry-After` in seconds or as an HTTP date.
pub(super) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = text("retry-after")?;
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

impl OpenAiCompatible {
    async fn send(&self, request: &ChatRequest, stream: bool) -> Result<Response, ProviderError> {
        let body = WireRequest {
            model: &request.model,
            messages: &request.messages,
            options: WireOptions {
                temperature: request.temperature,
                max_tokens: request.max_tokens,
                stream,
                stream_options: stream.then_some(StreamOptions {
                    include_usage: true,
                }),
                stop: &request.sampling.stop,
                top_p: request.sampling.top_p,
                seed: request.sampling.seed,
                presence_penalty: request.sampling.presence_penalty,
                frequency_penalty: request.sampling.frequency_penalty,
                logit_bias: &request.sampling.logit_bias,
                user: request.sampling.user.as_deref(),
                response_format: request
                    .sampling
                    .response_format
                    .as_ref()
                    .map(wire_response_format),
                tools: request.sampling.tools.iter().map(wire_tool).collect(),
                tool_choice: request.sampling.tool_choice.as_ref().map(wire_tool_choice),
                parallel_tool_calls: request.sampling.parallel_tool_calls,
                logprobs: request.sampling.logprobs,
                top_logprobs: request.sampling.top_logprobs,
            },
        };
        let body = body
            .encode()
            .map_err(|e| ProviderError::BadResponse(format!("the request did not encode: {e}")))?;
        self.endpoint.post(body, stream).await
    }
}

/// Reads an OpenAI streamed answer: each event's delta as it comes, then one end.
struct ChunkReader {
    body: ByteStream,
    decoder: EventDecoder,
    events: std::collections::VecDeque<String>,
    /// Chunks read from one event beyond the first (an event may carry several tool-call pieces).
    pending: std::collections::VecDeque<Chunk>,
    scratch: Vec<String>,
    finish_reason: Option<String>,
    usage: Option<WireUsage>,
    done: bool,
}

impl ChunkReader {
    fn end(&mut self) -> Chunk {
        self.done = true;
        let usage = self.usage.take();
        Chunk::End(StreamEnd {
            finish_reason: self.finish_reason.take().unwrap_or_else(|| "stop".into()),
            prompt_tokens: usage.as_ref().and_then(|u| u.prompt_tokens),
            completion_tokens: usage.as_ref().and_then(|u| u.completion_tokens),
            cached_tokens: usage.as_ref().and_then(WireUsage::cached_tokens),
        })
    }

    /// The next chunk worth passing on, or `None` after the end.
    async fn next_chunk(&mut self) -> Option<Result<Chunk, ProviderError>> {
        if self.done {
            return None;
        }
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                return Some(Ok(chunk));
            }
            while let Some(data) = self.events.pop_front() {
                if data.trim() == "[DONE]" {
                    return Some(Ok(self.end()));
                }
                let chunk: WireChunk = match serde_json::from_str(&data) {
                    Ok(chunk) => chunk,
                    Err(err) => {
                        self.done = true;
                        return Some(Err(ProviderError::BadResponse(format!(
                            "a stream event is not a chat completion chunk: {err}"
                        ))));
                    }
                };
                if let Some(error) = chunk.error {
                    self.done = true;
                    return Some(Err(ProviderError::Status {
                        status: 502,
                        message: error
                            .message
                            .unwrap_or_else(|| "error in stream".into())
                            .chars()
                            .take(300)
                            .collect(),
                        retry_after: None,
                    }));
                }
                if chunk.usage.is_some() {
                    self.usage = chunk.usage;
                }
                for choice in chunk.choices {
                    if let Some(reason) = choice.finish_reason {
                        self.finish_reason = Some(reason);
                    }
                    if let Some(logprobs) = choice.logprobs.filter(|l| !l.is_null()) {
                        self.pending.push_back(Chunk::Logprobs(logprobs));
                    }
                    let Some(delta) = choice.delta else { continue };
                    if let Some(text) = delta.content
                        && !text.is_empty()
                    {
                        self.pending.push_back(Chunk::Delta(text));
                    }
                    for (i, call) in delta.tool_calls.into_iter().flatten().enumerate() {
                        let function = call.function;
                        self.pending.push_back(Chunk::ToolCall(ToolCallDelta {
                            index: call.index.unwrap_or(i as u32),
                            id: call.id,
                            name: function.as_ref().and_then(|f| f.name.clone()),
                            arguments: function.and_then(|f| f.arguments).unwrap_or_default(),
                        }));
                    }
                }
                if let Some(chunk) = self.pending.pop_front() {
                    return Some(Ok(chunk));
                }
            }
            match self.body.next().await {
                Some(Ok(bytes)) => {
                    self.decoder.feed(&bytes, &mut self.scratch);
                    self.events.extend(self.scratch.drain(..));
                }
                Some(Err(err)) => {
                    self.done = true;
                    return Some(Err(err));
                }
                None => {
                    self.decoder.finish(&mut self.scratch);
                    if !self.scratch.is_empty() {
                        self.events.extend(self.scratch.drain(..));
                        continue;
                    }
                    // Some servers close without [DONE]; a finish reason says the answer is whole.
                    if self.finish_reason.is_some() {
                        return Some(Ok(self.end()));
                    }
                    self.done = true;
                    return Some(Err(ProviderError::BadResponse(
                        "the stream ended before the answer was finished".into(),
                    )));
                }
            }
        }
    }
}

#[async_trait]
impl ChatProvider for OpenAiCompatible {
    fn name(&self) -> &str {
        &self.config.name
    }

    async fn complete(&self, request: &ChatRequest) -> Result<ChatCompletion, ProviderError> {
        let response = self.send(request, false).await?;
        let bytes = response.bytes().await?;
        let wire: WireResponse = serde_json::from_slice(&bytes)
            .map_err(|e| ProviderError::BadResponse(e.to_string()))?;
        let choice = wire
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| ProviderError::BadResponse("no choices".into()))?;
        let content = choice.message.content.unwrap_or_default();
        let logprobs = choice.logprobs.filter(|l| !l.is_null());
        let tool_calls: Vec<ToolCall> = choice
            .message
            .tool_calls
            .into_iter()
            .flatten()
            .map(|call| {
                let function = call.function;
                ToolCall {
                    id: call.id.unwrap_or_default(),
                    name: function
                        .as_ref()
                        .and_then(|f| f.name.clone())
                        .unwrap_or_default(),
                    arguments: function.and_then(|f| f.arguments).unwrap_or_default(),
                }
            })
            .collect();
        let usage = wire.usage;
        let prompt_tokens = usage
            .as_ref()
            .and_then(|u| u.prompt_tokens)
            .unwrap_or_else(|| {
                tokenizer::count_prompt(
                    request
                        .messages
                        .iter()
                        .map(|m| (m.role.as_str(), m.content.as_str())),
                )
            });
        let completion_tokens = usage
            .as_ref()
            .and_then(|u| u.completion_tokens)
            .unwrap_or_else(|| super::reply_tokens(&content, &tool_calls));
        Ok(ChatCompletion {
            content,
            tool_calls,
            logprobs,
            prompt_tokens,
            completion_tokens,
            cached_tokens: usage
                .as_ref()
                .and_then(WireUsage::cached_tokens)
                .unwrap_or(0),
            finish_reason: choice.finish_reason.unwrap_or_else(|| "stop".into()),
        })
    }

    async fn stream(&self, request: &ChatRequest) -> Result<ChunkStream, ProviderError> {
        let response = self.send(request, true).await?;
        let reader = ChunkReader {
            body: response.bytes_stream(),
            decoder: EventDecoder::default(),
            events: Default::default(),
            pending: Default::default(),
            scratch: Vec::new(),
            finish_reason: None,
            usage: None,
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(
            reader,
            |mut reader| async move {
                let chunk = reader.next_chunk().await?;
                Some((chunk, reader))
            },
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_that_only_calls_tools_has_null_content_and_its_calls() {
        let message = Message {
            role: "assistant".into(),
            content: String::new(),
            tool_calls: vec![ToolCall {
                id: "call_1".into(),
                name: "get_weather".into(),
                arguments: r#"{"city":"Paris"}"#.into(),
            }],
            tool_call_id: None,
            name: None,
            parts: Vec::new(),
        };
        assert_eq!(
            serde_json::to_value(WireMessage::from(&message)).unwrap(),
            serde_json::json!({
                "role": "assistant",
                "content": null,
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}],
            })
        );
        let result = Message {
            role: "tool".into(),
            content: "18 C".into(),
            tool_calls: Vec::new(),
            tool_call_id: Some("call_1".into()),
            name: Some("weather-bot".into()),
            parts: Vec::new(),
        };
        assert_eq!(
            serde_json::to_value(WireMessage::from(&result)).unwrap(),
            serde_json::json!({"role": "tool", "content": "18 C", "tool_call_id": "call_1", "name": "weather-bot"})
        );
    }

    #[test]
    fn tools_and_the_tool_choice_take_openai_shapes() {
        let tool = Tool {
            name: "f".into(),
            description: None,
            parameters: Some(serde_json::json!({"type": "object"})),
            strict: Some(true),
        };
        assert_eq!(
            wire_tool(&tool),
            serde_json::json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": true}})
        );
        assert_eq!(wire_tool_choice(&ToolChoice::Required), "required");
        assert_eq!(
            wire_tool_choice(&ToolChoice::Function {
                function: "f".into()
            }),
            serde_json::json!({"type": "function", "function": {"name": "f"}})
        );
    }

    /// Every shape of message, with text that needs escaping.
    fn conversation() -> Vec<Message> {
        let plain = Message::text;
        vec![
            plain(
                "system",
                "Answer in \"quotes\", a \\ and\na new line;\tno\u{1} controls.",
            ),
            Message {
                name: Some("ana \"the\" user".into()),
                ..plain("user", "naïve café — 日本語 🙂")
            },
            Message {
                tool_calls: vec![ToolCall {
                    id: "call_1".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Paris"}"#.into(),
                }],
                ..plain("assistant", "")
            },
            Message {
                tool_call_id: Some("call_1".into()),
                ..plain("tool", "18 C")
            },
            Message {
                parts: vec![
                    ContentPart::Text {
                        text: "what is \"this\"?".into(),
                    },
                    ContentPart::ImageUrl {
                        url: "https://example.com/a.png".into(),
                        detail: Some("low".into()),
                    },
                ],
                ..plain("user", "what is \"this\"?")
            },
        ]
    }

    #[test]
    fn the_request_is_written_byte_for_byte_as_serde_writes_it() {
        #[derive(Serialize)]
        struct Serde<'a> {
            model: &'a str,
            messages: Vec<WireMessage<'a>>,
            #[serde(flatten)]
            options: &'a WireOptions<'a>,
        }
        let messages = conversation();
        let stop = vec!["END".to_string()];
        let bias = std::collections::BTreeMap::from([("50256".to_string(), -100.0)]);
        let tools = vec![wire_tool(&Tool {
            name: "get_weather".into(),
            description: Some("The \"weather\"".into()),
            parameters: Some(serde_json::json!({"type": "object"})),
            strict: None,
        })];
        let empty = std::collections::BTreeMap::new();
        for (model, options) in [
            (
                "glm-4.7-flash",
                WireOptions {
                    temperature: None,
                    max_tokens: None,
                    stream: false,
                    stream_options: None,
                    stop: &[],
                    top_p: None,
                    seed: None,
                    presence_penalty: None,
                    frequency_penalty: None,
                    logit_bias: &empty,
                    user: None,
                    response_format: None,
                    tools: Vec::new(),
                    tool_choice: None,
                    parallel_tool_calls: None,
                    logprobs: None,
                    top_logprobs: None,
                },
            ),
            (
                "a \"model\"",
                WireOptions {
                    temperature: Some(0.7),
                    max_tokens: Some(64),
                    stream: true,
                    stream_options: Some(StreamOptions {
                        include_usage: true,
                    }),
                    stop: &stop,
                    top_p: Some(0.9),
                    seed: Some(-3),
                    presence_penalty: Some(0.5),
                    frequency_penalty: Some(-0.5),
                    logit_bias: &bias,
                    user: Some("u-1"),
                    response_format: Some(wire_response_format(&ResponseFormat::JsonObject)),
                    tools: tools.clone(),
                    tool_choice: Some(wire_tool_choice(&ToolChoice::Auto)),
                    parallel_tool_calls: Some(false),
                    logprobs: Some(true),
                    top_logprobs: Some(2),
                },
            ),
        ] {
            for count in 0..=messages.len() {
                let request = WireRequest {
                    model,
                    messages: &messages[..count],
                    options: options.clone(),
                };
                let expected = serde_json::to_string(&Serde {
                    model,
                    messages: messages[..count].iter().map(WireMessage::from).collect(),
                    options: &request.options,
                })
                .unwrap();
                let written = String::from_utf8(request.encode().unwrap()).unwrap();
                assert_eq!(written, expected);
            }
        }
    }
}
