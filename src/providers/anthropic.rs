//! A client for Anthropic's Messages API: `POST {base_url}/v1/messages` with `x-api-key` and
//! `anthropic-version`, whole or streamed as server-sent events, translated to and from the
//! gateway's chat model so a session or an OpenAI-SDK client can use a Claude model and a
//! fallback can cross vendors.
//!
//! The translation:
//! - system messages become the top-level `system` prompt (joined by blank lines, in order);
//! - the conversation must alternate user and assistant: consecutive messages of one role are
//!   sent as one message of text blocks, and a conversation that opens with the assistant gets
//!   an empty-question user turn first;
//! - `max_tokens` is required by the API: the gateway always sends the call's bound;
//! - the reply's text blocks are the answer; `stop_reason` `end_turn`/`stop_sequence` reads as
//!   `stop`, `max_tokens` as `length`, `tool_use` as `tool_calls`;
//! - usage: prompt tokens are `input_tokens` plus the cache's reads and writes
//!   (`cache_read_input_tokens`, `cache_creation_input_tokens`), the cached ones the reads.

use async_trait::async_trait;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

use super::event_stream::EventDecoder;
use super::http::{ByteStream, Endpoint, Response};
use super::openai::OpenAiConfig;
use super::{
    ChatCompletion, ChatProvider, ChatRequest, Chunk, ChunkStream, ContentPart, Message,
    ProviderError, Sampling, StreamEnd, ToolCall, ToolCallDelta, ToolChoice,
};

/// The `anthropic-version` sent unless the providers file names another.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// The completion bound sent when a request names none (the API requires one).
const DEFAULT_MAX_TOKENS: u32 = 4096;

pub struct Anthropic {
    config: OpenAiConfig,
    /// Built once: the URL, the client, the configured headers, `anthropic-version` and the key.
    endpoint: Endpoint,
}

impl Anthropic {
    pub fn new(config: OpenAiConfig, version: String) -> anyhow::Result<Self> {
        let mut headers = config.header_map()?;
        headers.insert(
            "anthropic-version",
            reqwest::header::HeaderValue::from_str(&version).map_err(|_| {
                anyhow::anyhow!("anthropicVersion '{version}' is not valid in an HTTP header")
            })?,
        );
        if let Some(key) = &config.api_key {
            let mut value = reqwest::header::HeaderValue::from_str(key.expose())
                .map_err(|_| anyhow::anyhow!("the API key is not valid in an HTTP header"))?;
            value.set_sensitive(true);
            headers.insert("x-api-key", value);
        }
        let endpoint = Endpoint::new(&config, "/v1/messages", headers)?;
        Ok(Self { config, endpoint })
    }
}

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<WireMetadata<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
}

#[derive(Serialize)]
struct WireMetadata<'a> {
    user_id: &'a str,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'a str,
    content: Vec<serde_json::Value>,
}

/// A message's content blocks: its text, its tool calls as `tool_use`, a tool result as
/// `tool_result` (which Anthropic takes in a user message).
fn blocks(message: &Message) -> Vec<serde_json::Value> {
    use serde_json::json;
    if message.role == "tool" {
        return vec![json!({
            "type": "tool_result",
            "tool_use_id": message.tool_call_id.as_deref().unwrap_or_default(),
            "content": message.content,
        })];
    }
    let mut blocks = Vec::new();
    if !message.parts.is_empty() {
        blocks.extend(message.parts.iter().map(part_block));
    } else if !message.content.is_empty() || message.tool_calls.is_empty() {
        blocks.push(json!({"type": "text", "text": message.content}));
    }
    for call in &message.tool_calls {
        // The arguments are JSON text; Anthropic wants the object.
        let input = serde_json::from_str::<serde_json::Value>(&call.arguments)
            .ok()
            .filter(serde_json::Value::is_object)
            .unwrap_or_else(|| json!({}));
        blocks.push(json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input}));
    }
    blocks
}

/// A part as an Anthropic block: text, or an image by URL or base64 data (a data URL's media
/// type and data).
fn part_block(part: &ContentPart) -> serde_json::Value {
    use serde_json::json;
    match part {
        ContentPart::Text { text } => json!({"type": "text", "text": text}),
        ContentPart::ImageUrl { url, .. } => {
            let data = url
                .strip_prefix("data:")
                .and_then(|rest| rest.split_once(";base64,"));
            match data {
                Some((media_type, data)) => json!({
                    "type": "image",
                    "source": {"type": "base64", "media_type": media_type, "data": data},
                }),
                None => json!({"type": "image", "source": {"type": "url", "url": url}}),
            }
        }
    }
}

/// Anthropic's tools: `{name, description, input_schema}`.
fn wire_tools(sampling: &Sampling) -> Vec<serde_json::Value> {
    sampling
        .tools
        .iter()
        .map(|tool| {
            let mut wire = serde_json::json!({
                "name": tool.name,
                "input_schema": tool
                    .parameters
                    .clone()
                    .unwrap_or_else(|| serde_json::json!({"type": "object"})),
            });
            if let Some(description) = &tool.description {
                wire["description"] = serde_json::Value::from(description.as_str());
            }
            wire
        })
        .collect()
}

/// Anthropic's `tool_choice`: auto, any (OpenAI's required), tool (a named function) or none;
/// `parallel_tool_calls: false` is its `disable_parallel_tool_use`.
fn wire_tool_choice(sampling: &Sampling) -> Option<serde_json::Value> {
    if sampling.tools.is_empty() {
        return None;
    }
    let mut choice = match &sampling.tool_choice {
        None if sampling.parallel_tool_calls != Some(false) => return None,
        None | Some(ToolChoice::Auto) => serde_json::json!({"type": "auto"}),
        Some(ToolChoice::None) => return Some(serde_json::json!({"type": "none"})),
        Some(ToolChoice::Required) => serde_json::json!({"type": "any"}),
        Some(ToolChoice::Function { function }) => {
            serde_json::json!({"type": "tool", "name": function})
        }
    };
    if sampling.parallel_tool_calls == Some(false) {
        choice["disable_parallel_tool_use"] = serde_json::Value::Bool(true);
    }
    Some(choice)
}

/// The request body: the system prompt lifted out, roles made to alternate (tool results
/// travel in user messages).
fn wire_request<'a>(request: &'a ChatRequest, stream: bool) -> WireRequest<'a> {
    let system: Vec<&str> = request
        .messages
        .iter()
        .filter(|m| m.role == "system")
        .map(|m| m.content.as_str())
        .collect();
    let mut messages: Vec<WireMessage<'a>> = Vec::new();
    for message in request.messages.iter().filter(|m| m.role != "system") {
        let role = if message.role == "assistant" {
            "assistant"
        } else {
            "user"
        };
        let content = blocks(message);
        match messages.last_mut() {
            Some(last) if last.role == role => last.content.extend(content),
            _ => {
                if messages.is_empty() && role == "assistant" {
                    messages.push(WireMessage {
                        role: "user",
                        content: vec![serde_json::json!({"type": "text", "text": "(continue)"})],
                    });
                }
                messages.push(WireMessage { role, content });
            }
        }
    }
    WireRequest {
        model: &request.model,
        max_tokens: request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        messages,
        temperature: request.temperature,
        top_p: request.sampling.top_p,
        stop_sequences: &request.sampling.stop,
        metadata: request
            .sampling
            .user
            .as_deref()
            .map(|user_id| WireMetadata { user_id }),
        tools: wire_tools(&request.sampling),
        tool_choice: wire_tool_choice(&request.sampling),
        stream,
    }
}

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    content: Vec<WireBlock>,
    stop_reason: Option<String>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireBlock {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    /// A `tool_use` block's id, name and input.
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    input: Option<serde_json::Value>,
}

#[derive(Deserialize, Default, Clone, Copy)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u32>,
    #[serde(default)]
    output_tokens: Option<u32>,
    #[serde(default)]
    cache_read_input_tokens: Option<u32>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u32>,
}

impl WireUsage {
    /// Every prompt token the call read: fresh, written to the cache, read from it.
    fn prompt_tokens(&self) -> Option<u32> {
        let input = self.input_tokens?;
        Some(
            input
                .saturating_add(self.cache_read_input_tokens.unwrap_or(0))
                .saturating_add(self.cache_creation_input_tokens.unwrap_or(0)),
        )
    }
}

/// Anthropic's stop reason in the OpenAI vocabulary the gateway speaks.
fn finish_reason(stop: Option<&str>) -> String {
    match stop {
        Some("max_tokens") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
    .to_owned()
}

/// An error event's body inside a stream.
#[derive(Deserialize)]
struct WireErrorBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    message: Option<String>,
}

impl Anthropic {
    async fn send(&self, request: &ChatRequest, stream: bool) -> Result<Response, ProviderError> {
        let body = serde_json::to_vec(&wire_request(request, stream))
            .map_err(|e| ProviderError::BadResponse(format!("the request did not encode: {e}")))?;
        self.endpoint.post(body, stream).await
    }
}

#[async_trait]
impl ChatProvider for Anthropic {
    fn name(&self) -> &str {
        &self.config.name
    }

    /// The Messages API has stop sequences, `top_p` and a user id, and none of the rest.
    fn refuses(&self, sampling: &Sampling) -> Option<(&'static str, &'static str)> {
        const NOT: &str = "Anthropic's Messages API has no such option";
        if sampling.seed.is_some() {
            return Some(("seed", NOT));
        }
        if sampling.presence_penalty.is_some() {
            return Some(("presencePenalty", NOT));
        }
        if sampling.frequency_penalty.is_some() {
            return Some(("frequencyPenalty", NOT));
        }
        if !sampling.logit_bias.is_empty() {
            return Some(("logitBias", NOT));
        }
        if sampling.wants_logprobs() {
            return Some(("logprobs", NOT));
        }
        if sampling.wants_json() {
            return Some((
                "responseFormat",
                "the gateway does not ask Anthropic models for JSON output; only \"text\" is supported",
            ));
        }
        None
    }

    async fn complete(&self, request: &ChatRequest) -> Result<ChatCompletion, ProviderError> {
        let response = self.send(request, false).await?;
        let bytes = response.bytes().await?;
        let wire: WireResponse = serde_json::from_slice(&bytes)
            .map_err(|e| ProviderError::BadResponse(e.to_string()))?;
        let content: String = wire
            .content
            .iter()
            .filter(|block| block.kind == "text")
            .filter_map(|block| block.text.as_deref())
            .collect();
        let tool_calls: Vec<ToolCall> = wire
            .content
            .into_iter()
            .filter(|block| block.kind == "tool_use")
            .map(|block| ToolCall {
                id: block.id.unwrap_or_default(),
                name: block.name.unwrap_or_default(),
                arguments: block
                    .input
                    .unwrap_or_else(|| serde_json::json!({}))
                    .to_string(),
            })
            .collect();
        let usage = wire.usage.unwrap_or_default();
        Ok(ChatCompletion {
            prompt_tokens: usage.prompt_tokens().unwrap_or_else(|| {
                crate::tokenizer::count_prompt(
                    request
                        .messages
                        .iter()
                        .map(|m| (m.role.as_str(), m.content.as_str())),
                )
            }),
            completion_tokens: usage
                .output_tokens
                .unwrap_or_else(|| super::reply_tokens(&content, &tool_calls)),
            cached_tokens: usage.cache_read_input_tokens.unwrap_or(0),
            content,
            tool_calls,
            logprobs: None,
            finish_reason: finish_reason(wire.stop_reason.as_deref()),
        })
    }

    async fn stream(&self, request: &ChatRequest) -> Result<ChunkStream, ProviderError> {
        let response = self.send(request, true).await?;
        let reader = EventReader {
            body: response.bytes_stream(),
            decoder: EventDecoder::default(),
            events: Default::default(),
            scratch: Vec::new(),
            stop_reason: None,
            usage: WireUsage::default(),
            done: false,
            tool_blocks: Vec::new(),
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

/// One event of a streamed message: `message_start`, `content_block_start`,
/// `content_block_delta`, `content_block_stop`, `message_delta`, `message_stop`, `ping`,
/// `error`.
#[derive(Deserialize)]
struct WireEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    message: Option<WireStartedMessage>,
    #[serde(default)]
    delta: Option<WireDelta>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<WireErrorBody>,
    /// The content block a `content_block_*` event is about.
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    content_block: Option<WireBlock>,
}

#[derive(Deserialize)]
struct WireStartedMessage {
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireDelta {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    stop_reason: Option<String>,
    /// An `input_json_delta`'s piece of a tool call's input.
    #[serde(default)]
    partial_json: Option<String>,
}

struct EventReader {
    body: ByteStream,
    decoder: EventDecoder,
    events: std::collections::VecDeque<String>,
    scratch: Vec<String>,
    stop_reason: Option<String>,
    /// Input figures from `message_start`, output from `message_delta`.
    usage: WireUsage,
    done: bool,
    /// The content block index of each tool call streamed so far, in order.
    tool_blocks: Vec<u32>,
}

impl EventReader {
    fn end(&mut self) -> Chunk {
        self.done = true;
        Chunk::End(StreamEnd {
            finish_reason: finish_reason(self.stop_reason.as_deref()),
            prompt_tokens: self.usage.prompt_tokens(),
            completion_tokens: self.usage.output_tokens,
            cached_tokens: self.usage.cache_read_input_tokens,
        })
    }

    fn absorb(&mut self, usage: WireUsage) {
        let merged = &mut self.usage;
        merged.input_tokens = usage.input_tokens.or(merged.input_tokens);
        merged.output_tokens = usage.output_tokens.or(merged.output_tokens);
        merged.cache_read_input_tokens = usage
            .cache_read_input_tokens
            .or(merged.cache_read_input_tokens);
        merged.cache_creation_input_tokens = usage
            .cache_creation_input_tokens
            .or(merged.cache_creation_input_tokens);
    }

    async fn next_chunk(&mut self) -> Option<Result<Chunk, ProviderError>> {
        if self.done {
            return None;
        }
        loop {
            while let Some(data) = self.events.pop_front() {
                let event: WireEvent = match serde_json::from_str(&data) {
                    Ok(event) => event,
                    Err(err) => {
                        self.done = true;
                        return Some(Err(ProviderError::BadResponse(format!(
                            "a stream event is not a Messages API event: {err}"
                        ))));
                    }
                };
                match event.kind.as_str() {
                    "message_start" => {
                        if let Some(usage) = event.message.and_then(|m| m.usage) {
                            self.absorb(usage);
                        }
                    }
                    "content_block_start" => {
                        if let Some(block) = event.content_block
                            && block.kind == "tool_use"
                        {
                            let index = self.tool_blocks.len() as u32;
                            self.tool_blocks.push(event.index.unwrap_or_default());
                            return Some(Ok(Chunk::ToolCall(ToolCallDelta {
                                index,
                                id: block.id,
                                name: block.name,
                                arguments: String::new(),
                            })));
                        }
                    }
                    "content_block_delta" => match event.delta {
                        Some(delta) if delta.kind.as_deref() == Some("text_delta") => {
                            if let Some(text) = delta.text
                                && !text.is_empty()
                            {
                                return Some(Ok(Chunk::Delta(text)));
                            }
                        }
                        Some(delta) if delta.kind.as_deref() == Some("input_json_delta") => {
                            let block = event.index.unwrap_or_default();
                            if let Some(index) = self.tool_blocks.iter().position(|b| *b == block)
                                && let Some(piece) = delta.partial_json
                                && !piece.is_empty()
                            {
                                return Some(Ok(Chunk::ToolCall(ToolCallDelta {
                                    index: index as u32,
                                    id: None,
                                    name: None,
                                    arguments: piece,
                                })));
                            }
                        }
                        _ => {}
                    },
                    "message_delta" => {
                        if let Some(reason) = event.delta.and_then(|d| d.stop_reason) {
                            self.stop_reason = Some(reason);
                        }
                        if let Some(usage) = event.usage {
                            self.absorb(usage);
                        }
                    }
                    "message_stop" => return Some(Ok(self.end())),
                    "error" => {
                        self.done = true;
                        let body = event.error.unwrap_or(WireErrorBody {
                            kind: None,
                            message: None,
                        });
                        // Overloaded mid-stream is Anthropic's 529; anything else a bad gateway.
                        let status = if body.kind.as_deref() == Some("overloaded_error") {
                            529
                        } else {
                            502
                        };
                        return Some(Err(ProviderError::Status {
                            status,
                            message: body
                                .message
                                .unwrap_or_else(|| "error in stream".into())
                                .chars()
                                .take(300)
                                .collect(),
                            retry_after: None,
                        }));
                    }
                    // ping, content_block_stop, and event types added later.
                    _ => {}
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
                    if self.stop_reason.is_some() {
                        return Some(Ok(self.end()));
                    }
                    self.done = true;
                    return Some(Err(ProviderError::BadResponse(
                        "the stream ended before the message was finished".into(),
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(messages: &[(&str, &str)]) -> ChatRequest {
        ChatRequest {
            model: "claude-sonnet-4-5".into(),
            messages: messages
                .iter()
                .map(|(r, c)| Message::text(*r, *c))
                .collect(),
            temperature: Some(0.2),
            max_tokens: Some(64),
            sampling: Sampling::default(),
        }
    }

    #[test]
    fn the_system_prompt_is_lifted_out_and_roles_alternate() {
        let body = serde_json::to_value(wire_request(
            &request(&[
                ("system", "Be brief."),
                ("user", "Hello"),
                ("user", "Are you there?"),
                ("assistant", "Yes."),
                ("system", "Answer in French."),
                ("user", "Bye"),
            ]),
            false,
        ))
        .unwrap();
        assert_eq!(body["system"], "Be brief.\n\nAnswer in French.");
        assert_eq!(body["max_tokens"], 64);
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[0]["role"], "user");
        assert_eq!(messages[0]["content"][1]["text"], "Are you there?");
        assert_eq!(messages[1]["role"], "assistant");
        assert_eq!(messages[2]["content"][0]["text"], "Bye");
        assert!(body.get("stream").is_none());
    }

    #[test]
    fn tools_calls_and_results_become_anthropic_blocks() {
        let mut request = request(&[("user", "Weather in Paris?")]);
        request.messages.push(Message {
            role: "assistant".into(),
            content: String::new(),
            tool_calls: vec![ToolCall {
                id: "toolu_1".into(),
                name: "get_weather".into(),
                arguments: r#"{"city":"Paris"}"#.into(),
            }],
            tool_call_id: None,
            name: None,
            parts: Vec::new(),
        });
        request.messages.push(Message {
            role: "tool".into(),
            content: "18 C".into(),
            tool_calls: Vec::new(),
            tool_call_id: Some("toolu_1".into()),
            name: None,
            parts: Vec::new(),
        });
        request.sampling.tools = vec![super::super::Tool {
            name: "get_weather".into(),
            description: Some("The weather".into()),
            parameters: Some(serde_json::json!({"type": "object"})),
            strict: None,
        }];
        request.sampling.tool_choice = Some(ToolChoice::Required);
        request.sampling.parallel_tool_calls = Some(false);
        let body = serde_json::to_value(wire_request(&request, false)).unwrap();
        assert_eq!(
            body["tools"],
            serde_json::json!([{"name": "get_weather", "description": "The weather", "input_schema": {"type": "object"}}])
        );
        assert_eq!(
            body["tool_choice"],
            serde_json::json!({"type": "any", "disable_parallel_tool_use": true})
        );
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 3);
        assert_eq!(
            messages[1]["content"],
            serde_json::json!([{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}])
        );
        assert_eq!(messages[2]["role"], "user");
        assert_eq!(
            messages[2]["content"],
            serde_json::json!([{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C"}])
        );
    }

    #[test]
    fn without_tools_no_tool_choice_is_sent() {
        let mut request = request(&[("user", "Hi")]);
        request.sampling.tool_choice = Some(ToolChoice::Auto);
        let body = serde_json::to_value(wire_request(&request, false)).unwrap();
        assert!(body.get("tools").is_none());
        assert!(body.get("tool_choice").is_none());
    }

    #[test]
    fn a_conversation_opening_with_the_assistant_gets_a_user_turn_first() {
        let body =
            serde_json::to_value(wire_request(&request(&[("assistant", "Hi!")]), true)).unwrap();
        assert_eq!(body["messages"][0]["role"], "user");
        assert_eq!(body["messages"][1]["role"], "assistant");
        assert_eq!(body["stream"], true);
    }

    #[test]
    fn cache_reads_and_writes_count_as_prompt_tokens() {
        let usage = WireUsage {
            input_tokens: Some(10),
            output_tokens: Some(5),
            cache_read_input_tokens: Some(100),
            cache_creation_input_tokens: Some(20),
        };
        assert_eq!(usage.prompt_tokens(), Some(130));
        assert_eq!(finish_reason(Some("end_turn")), "stop");
        assert_eq!(finish_reason(Some("max_tokens")), "length");
    }
}
