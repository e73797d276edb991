//! Model providers: anything that completes a chat. Models are addressed as
//! `<provider>/<upstream model>` (e.g. `zai/glm-4.7-flash`); the catalog maps
//! each known model id to the provider that serves it, with its fallbacks.
//! Providers are configuration (`file.rs`); calls to them go through
//! `resilience.rs` (timeouts, retries, circuit breaker, fallbacks).

mod anthropic;
mod circuit;
mod event_stream;
mod file;
mod http;
mod openai;
mod resilience;
mod simulator;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;

pub use self::circuit::CircuitState;
pub use self::file::load_catalog;
pub use self::openai::{OpenAiCompatible, OpenAiConfig};
pub use self::resilience::ProviderGuard;
pub use self::simulator::Simulator;

use crate::error::{ApiError, ErrorCode, FieldViolationReason};
use crate::spend::Prices;
use crate::tokenizer;

#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The provider's own model name (`glm-4.7-flash`).
    pub model: String,
    /// The conversation, in order.
    pub messages: Vec<Message>,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
    /// Every other sampling option a caller set.
    pub sampling: Sampling,
}

/// One message of a conversation sent to a provider.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
    /// An assistant message's tool calls.
    pub tool_calls: Vec<ToolCall>,
    /// A `tool` message: the call it answers.
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
    /// A message sent as parts (text and images); `content` is then its text.
    pub parts: Vec<ContentPart>,
}

/// A part of a message sent as parts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    Text {
        text: String,
    },
    /// An image by URL (the provider fetches it) or data URL.
    ImageUrl {
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
}

/// What an image counts in a prompt estimate: the gateway does not fetch images, so it counts
/// what OpenAI charges for a 1024×1024 image, or a low-detail one.
pub const IMAGE_TOKENS: u32 = 765;
pub const LOW_DETAIL_IMAGE_TOKENS: u32 = 85;

impl ContentPart {
    /// The part's tokens in a prompt estimate.
    pub fn tokens(&self) -> u32 {
        match self {
            ContentPart::Text { text } => tokenizer::count_text(text),
            ContentPart::ImageUrl { detail, .. } if detail.as_deref() == Some("low") => {
                LOW_DETAIL_IMAGE_TOKENS
            }
            ContentPart::ImageUrl { .. } => IMAGE_TOKENS,
        }
    }
}

impl Message {
    /// A message of text alone.
    #[cfg(test)]
    pub fn text(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
            parts: Vec::new(),
        }
    }
}

impl From<&crate::store::StoredMessage> for Message {
    fn from(stored: &crate::store::StoredMessage) -> Self {
        Self {
            role: stored.role.clone(),
            content: stored.content.clone(),
            tool_calls: stored.tool_calls.clone(),
            tool_call_id: stored.tool_call_id.clone(),
            name: stored.name.clone(),
            parts: stored.parts.clone(),
        }
    }
}

/// A model's call of a function tool: stored in an assistant message as it was received.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// JSON text, as the model wrote it.
    pub arguments: String,
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Tool {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON Schema object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    Function { function: String },
}

/// A piece of a streamed tool call: the first piece of each call has its id and name.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCallDelta {
    pub index: u32,
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: String,
}

/// Adds streamed tool-call pieces up to whole calls, in index order.
#[derive(Debug, Default)]
pub struct ToolCallAssembler {
    calls: std::collections::BTreeMap<u32, ToolCall>,
}

impl ToolCallAssembler {
    pub fn add(&mut self, delta: &ToolCallDelta) {
        let call = self.calls.entry(delta.index).or_insert_with(|| ToolCall {
            id: String::new(),
            name: String::new(),
            arguments: String::new(),
        });
        if let Some(id) = &delta.id {
            call.id.clone_from(id);
        }
        if let Some(name) = &delta.name {
            call.name.push_str(name);
        }
        call.arguments.push_str(&delta.arguments);
    }

    pub fn finish(self) -> Vec<ToolCall> {
        self.calls.into_values().collect()
    }
}

/// The sampling options beyond temperature and the completion bound, each carried to the
/// provider or refused: a provider that cannot honour one says which ([`ChatProvider::refuses`]).
/// Stored with a session as its defaults (camelCase JSON).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sampling {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub logit_bias: std::collections::BTreeMap<String, f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Tool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
}

impl Sampling {
    /// `self`, with the fields `over` sets replacing its own.
    pub fn overlaid(&self, over: &Sampling) -> Sampling {
        Sampling {
            stop: if over.stop.is_empty() {
                self.stop.clone()
            } else {
                over.stop.clone()
            },
            top_p: over.top_p.or(self.top_p),
            seed: over.seed.or(self.seed),
            presence_penalty: over.presence_penalty.or(self.presence_penalty),
            frequency_penalty: over.frequency_penalty.or(self.frequency_penalty),
            logit_bias: if over.logit_bias.is_empty() {
                self.logit_bias.clone()
            } else {
                over.logit_bias.clone()
            },
            user: over.user.clone().or_else(|| self.user.clone()),
            response_format: over
                .response_format
                .clone()
                .or_else(|| self.response_format.clone()),
            tools: if over.tools.is_empty() {
                self.tools.clone()
            } else {
                over.tools.clone()
            },
            tool_choice: over
                .tool_choice
                .clone()
                .or_else(|| self.tool_choice.clone()),
            parallel_tool_calls: over.parallel_tool_calls.or(self.parallel_tool_calls),
            logprobs: over.logprobs.or(self.logprobs),
            top_logprobs: over.top_logprobs.or(self.top_logprobs),
        }
    }

    /// Whether the reply's log probabilities are asked for.
    pub fn wants_logprobs(&self) -> bool {
        self.logprobs == Some(true)
    }

    /// What the tool definitions add to a prompt (cl100k_base tokens of their JSON): providers
    /// put them in the prompt, so the admission reserves them.
    pub fn tool_tokens(&self) -> u32 {
        if self.tools.is_empty() {
            return 0;
        }
        serde_json::to_string(&self.tools).map_or(0, |json| tokenizer::count_text(&json))
    }

    pub fn is_empty(&self) -> bool {
        *self == Sampling::default()
    }

    /// Whether the reply must be JSON (an object, or matching a schema).
    pub fn wants_json(&self) -> bool {
        matches!(
            self.response_format,
            Some(ResponseFormat::JsonObject | ResponseFormat::JsonSchema { .. })
        )
    }
}

/// The format a reply must have.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        schema: serde_json::Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        strict: Option<bool>,
    },
}

#[derive(Debug, Clone)]
pub struct ChatCompletion {
    pub content: String,
    /// The tools the model called (finish reason `tool_calls`).
    pub tool_calls: Vec<ToolCall>,
    /// The reply's log probabilities (`{"content": [...]}`), when asked and given.
    pub logprobs: Option<serde_json::Value>,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens the provider read from its cache (`usage.prompt_tokens_details.cached_tokens`).
    pub cached_tokens: u32,
    pub finish_reason: String,
}

/// A piece of a streamed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Chunk {
    /// The next piece of the reply's text (never empty).
    Delta(String),
    /// The next piece of a tool call.
    ToolCall(ToolCallDelta),
    /// The log probabilities of the tokens of the pieces since the last ones
    /// (`{"content": [...]}`).
    Logprobs(serde_json::Value),
    /// The last chunk: why the model stopped and, when the provider said, the usage.
    End(StreamEnd),
}

#[derive(Debug, Clone, PartialEq)]
pub struct StreamEnd {
    pub finish_reason: String,
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
    pub cached_tokens: Option<u32>,
}

/// The tokens of a reply (cl100k_base): its text and its tool calls' names and arguments.
pub fn reply_tokens(content: &str, tool_calls: &[ToolCall]) -> u32 {
    tool_calls
        .iter()
        .fold(tokenizer::count_text(content), |n, call| {
            n.saturating_add(tokenizer::count_text(&call.name))
                .saturating_add(tokenizer::count_text(&call.arguments))
        })
}

/// Deltas, then one [`Chunk::End`]; an error ends the stream.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Chunk, ProviderError>> + Send>>;

impl ChatCompletion {
    /// The whole answer a stream added up to. Usage the provider did not
    /// report is counted: the prompt as `prompt_tokens` (the caller counted it
    /// before asking), the completion from its text.
    pub fn from_stream(
        content: String,
        tool_calls: Vec<ToolCall>,
        logprobs: Option<serde_json::Value>,
        end: StreamEnd,
        prompt_tokens: u32,
    ) -> Self {
        let completion_tokens = end
            .completion_tokens
            .unwrap_or_else(|| reply_tokens(&content, &tool_calls));
        Self {
            prompt_tokens: end.prompt_tokens.unwrap_or(prompt_tokens),
            completion_tokens,
            cached_tokens: end.cached_tokens.unwrap_or(0),
            content,
            tool_calls,
            logprobs,
            finish_reason: end.finish_reason,
        }
    }
}

/// Adds the log probabilities of a streamed reply's pieces up to the whole reply's.
#[derive(Debug, Default)]
pub struct LogprobsAssembler {
    content: Vec<serde_json::Value>,
    seen: bool,
}

impl LogprobsAssembler {
    pub fn add(&mut self, piece: &serde_json::Value) {
        self.seen = true;
        if let Some(tokens) = piece.get("content").and_then(serde_json::Value::as_array) {
            self.content.extend(tokens.iter().cloned());
        }
    }

    pub fn finish(self) -> Option<serde_json::Value> {
        self.seen
            .then(|| serde_json::json!({"content": self.content, "refusal": null}))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("answered HTTP {status}: {message}")]
    Status {
        status: u16,
        message: String,
        /// What the provider's `Retry-After` asked for.
        retry_after: Option<Duration>,
    },
    #[error("answered something that is not a chat completion: {0}")]
    BadResponse(String),
    #[error("circuit open for another {retry_in:?} after repeated failures")]
    CircuitOpen { retry_in: Duration },
}

impl ProviderError {
    /// What the caller is told: the provider's name and what happened, never its key, its URL,
    /// or its own words (they may carry account ids or key fragments): those are logged here,
    /// under `request_id`, which the caller is given to quote.
    pub fn into_api_error(self, provider: &str, model: &str, request_id: Option<&str>) -> ApiError {
        match self {
            ProviderError::Timeout(after) => ApiError::new(
                ErrorCode::UpstreamTimeout,
                "Model provider timed out",
                format!(
                    "{provider} did not answer for {model} within {}s; retry, or use a smaller maxTokens",
                    after.as_secs()
                ),
            ),
            ProviderError::Connect(_) => ApiError::new(
                ErrorCode::UpstreamError,
                "Model provider unreachable",
                format!(
                    "Could not reach {provider} for {model}; retry later or choose another model"
                ),
            ),
            ProviderError::Status {
                status, message, ..
            } => {
                tracing::warn!(
                    request_id = request_id.unwrap_or_default(),
                    provider,
                    model,
                    status,
                    provider_message = %message,
                    "the model provider refused a call"
                );
                let quoted = request_id
                    .map(|id| format!("; the request id is {id}"))
                    .unwrap_or_default();
                ApiError::new(
                    ErrorCode::UpstreamError,
                    "Model provider error",
                    format!(
                        "The model provider '{provider}' answered {status} for {model}{quoted}; operators can find the provider's message in the gateway's logs"
                    ),
                )
            }
            ProviderError::BadResponse(_) => ApiError::new(
                ErrorCode::UpstreamError,
                "Model provider error",
                format!("{provider} sent an answer for {model} that is not a chat completion"),
            ),
            ProviderError::CircuitOpen { retry_in } => {
                let wait = retry_in.as_secs() + u64::from(retry_in.subsec_nanos() > 0);
                ApiError::new(
                    ErrorCode::Unavailable,
                    "Model provider unavailable",
                    format!(
                        "{provider} failed repeatedly, so calls to it are paused; retry {model} in {wait} seconds or choose another model"
                    ),
                )
                .with_retry_after(Duration::from_secs(wait.max(1)))
                .with_metadata(vec![("retry-after", wait.max(1).to_string())])
            }
        }
    }
}

#[async_trait]
pub trait ChatProvider: Send + Sync + 'static {
    /// How status and errors name this provider ("zai").
    fn name(&self) -> &str;
    /// True for the built-in offline simulator.
    fn simulated(&self) -> bool {
        false
    }
    /// The first sampling option this provider cannot honour, by its sessions-API name
    /// (`seed`, `responseFormat`), with what it supports instead; `None` when it honours all.
    fn refuses(&self, _sampling: &Sampling) -> Option<(&'static str, &'static str)> {
        None
    }
    async fn complete(&self, request: &ChatRequest) -> Result<ChatCompletion, ProviderError>;

    /// Streams the answer. Returns once the provider has accepted the
    /// request; the stream then yields deltas and ends with one
    /// [`Chunk::End`]. Without a streaming API of its own, a provider answers
    /// whole and the stream has a single delta.
    async fn stream(&self, request: &ChatRequest) -> Result<ChunkStream, ProviderError> {
        let completion = self.complete(request).await?;
        let end = Chunk::End(StreamEnd {
            finish_reason: completion.finish_reason,
            prompt_tokens: Some(completion.prompt_tokens),
            completion_tokens: Some(completion.completion_tokens),
            cached_tokens: Some(completion.cached_tokens),
        });
        let mut chunks = Vec::new();
        if let Some(logprobs) = completion.logprobs {
            chunks.push(Ok(Chunk::Logprobs(logprobs)));
        }
        if !completion.content.is_empty() {
            chunks.push(Ok(Chunk::Delta(completion.content)));
        }
        for (index, call) in completion.tool_calls.into_iter().enumerate() {
            chunks.push(Ok(Chunk::ToolCall(ToolCallDelta {
                index: index as u32,
                id: Some(call.id),
                name: Some(call.name),
                arguments: call.arguments,
            })));
        }
        chunks.push(Ok(end));
        Ok(Box::pin(futures::stream::iter(chunks)))
    }
}

/// One model the gateway serves.
#[derive(Clone)]
pub struct Model {
    /// What clients ask for: `zai/glm-4.7-flash`.
    pub id: String,
    /// What the provider calls it: `glm-4.7-flash`.
    pub upstream: String,
    pub provider: Arc<dyn ChatProvider>,
    /// Model ids asked in order when this one cannot answer.
    pub fallbacks: Vec<String>,
    /// The provider's retry policy, circuit breaker and counters.
    pub guard: Arc<ProviderGuard>,
    /// Tokens the model reads and writes in one call: the prompt sent plus the reserved
    /// completion never exceed it (`contextWindow` in the providers file).
    pub context_window: u32,
    /// What its tokens cost (`inputPricePerMTok` and its siblings in the providers file).
    pub prices: Prices,
}

/// The models of the guide's appendix A, served by Z.ai.
pub const ZAI_MODELS: &[&str] = &[
    "zai/glm-4.7-flash",
    "zai/glm-4.5-flash",
    "zai/glm-4-flash-250414",
];
pub const DEFAULT_MODEL: &str = "zai/glm-4.7-flash";

/// The context window of a model whose entry names none and that is not one of the guide's
/// (tokens): the common size of current chat models, and what the smaller GLM models publish.
pub const DEFAULT_CONTEXT_WINDOW: u32 = 128_000;

/// The published context windows of the guide's models (tokens), by their upstream name:
/// Z.ai lists glm-4.7-flash at 200K and glm-4.5-flash at 128K; glm-4-flash-250414 is taken
/// at 128K with the rest of the GLM-4 flash family. See docs/context-windows.md for sources.
pub const KNOWN_CONTEXT_WINDOWS: &[(&str, u32)] = &[
    ("glm-4.7-flash", 200_000),
    ("glm-4.5-flash", 128_000),
    ("glm-4-flash-250414", 128_000),
];

/// The published window of a model the gateway knows by its upstream name, else the default.
pub fn known_context_window(upstream: &str) -> u32 {
    KNOWN_CONTEXT_WINDOWS
        .iter()
        .find(|(name, _)| *name == upstream)
        .map_or(DEFAULT_CONTEXT_WINDOW, |(_, window)| *window)
}

/// The published prices of the guide's models on Z.ai's own API, by upstream name, in
/// micro-dollars per million tokens (input, output, cached input). Z.ai's pricing page
/// (docs.z.ai/guides/overview/pricing, read 2026-12) lists GLM-4.7-Flash and GLM-4.5-Flash as
/// free, and GLM-4-Flash-250414 with the free GLM-4 flash family; resellers charge for the same
/// weights (about $0.07 in / $0.40 out per million for GLM-4.7-Flash), so a providers file
/// pointing elsewhere should set its own prices. See docs/budgets.md.
pub const KNOWN_PRICES: &[(&str, Prices)] = &[
    (
        "glm-4.7-flash",
        Prices {
            input: 0,
            output: 0,
            cached_input: 0,
        },
    ),
    (
        "glm-4.5-flash",
        Prices {
            input: 0,
            output: 0,
            cached_input: 0,
        },
    ),
    (
        "glm-4-flash-250414",
        Prices {
            input: 0,
            output: 0,
            cached_input: 0,
        },
    ),
];

/// The published prices of a model the gateway knows by its upstream name, else zero (a
/// model without prices costs nothing: local models, and any the operator left unpriced).
pub fn known_prices(upstream: &str) -> Prices {
    KNOWN_PRICES
        .iter()
        .find(|(name, _)| *name == upstream)
        .map_or_else(Prices::default, |(_, prices)| *prices)
}

/// Bound on a whole model call (every attempt and fallback) when none is configured.
const DEFAULT_CALL_BUDGET: Duration = Duration::from_secs(120);

#[derive(Clone)]
pub struct ModelCatalog {
    models: Vec<Arc<Model>>,
    default_model: String,
    call_budget: Duration,
}

impl Default for ModelCatalog {
    fn default() -> Self {
        Self {
            models: Vec::new(),
            default_model: DEFAULT_MODEL.to_string(),
            call_budget: DEFAULT_CALL_BUDGET,
        }
    }
}

/// A model of a provider: its id, its upstream name and its fallbacks.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub id: String,
    pub upstream: String,
    pub fallbacks: Vec<String>,
    /// Tokens; see [`Model::context_window`].
    pub context_window: u32,
    pub prices: Prices,
}

impl ModelCatalog {
    /// Serves `models` with `provider`, guarded by `guard`.
    pub fn add_models(
        &mut self,
        provider: Arc<dyn ChatProvider>,
        guard: Arc<ProviderGuard>,
        models: Vec<ModelSpec>,
    ) {
        for spec in models {
            self.models.push(Arc::new(Model {
                id: spec.id,
                upstream: spec.upstream,
                provider: provider.clone(),
                fallbacks: spec.fallbacks,
                guard: guard.clone(),
                context_window: spec.context_window,
                prices: spec.prices,
            }));
        }
    }

    /// The model a request naming none gets.
    pub fn default_model(&self) -> &str {
        &self.default_model
    }

    pub fn set_default_model(&mut self, id: impl Into<String>) {
        self.default_model = id.into();
    }

    /// Bound on a whole model call: every attempt, wait and fallback.
    pub fn call_budget(&self) -> Duration {
        self.call_budget
    }

    pub fn set_call_budget(&mut self, budget: Duration) {
        self.call_budget = budget;
    }

    pub fn resolve(&self, id: &str) -> Result<&Model, ApiError> {
        self.resolve_model(id).map(|model| &**model)
    }

    /// Like [`Self::resolve`], as a handle that outlives the catalog borrow.
    pub fn resolve_model(&self, id: &str) -> Result<&Arc<Model>, ApiError> {
        self.models.iter().find(|m| m.id == id).ok_or_else(|| {
            // The reason, not the sentence, is what clients act on (OpenAI's `model_not_found`).
            ApiError::invalid_field(
                "model",
                "Unknown model",
                format!(
                    "The model '{id}' is not served here; use one of: {}",
                    self.ids().join(", ")
                ),
            )
            .with_field_reason(FieldViolationReason::UnknownModel)
        })
    }

    /// Also accepts a provider's own model name (`glm-4.7-flash`) when exactly
    /// one provider serves it, as clients of OpenAI-compatible APIs expect.
    pub fn resolve_loose(&self, id: &str) -> Result<&Arc<Model>, ApiError> {
        match self.resolve_model(id) {
            Ok(model) => Ok(model),
            Err(err) => {
                let mut named = self.models.iter().filter(|m| m.upstream == id);
                match (named.next(), named.next()) {
                    (Some(model), None) if !id.contains('/') => Ok(model),
                    _ => Err(err),
                }
            }
        }
    }

    /// The highest price of each kind among `model` and the fallbacks that may answer for it:
    /// what a call of `model` is reserved at, so a dearer fallback cannot pass a budget.
    pub(crate) fn dearest_prices(&self, model: &Model) -> Prices {
        model
            .fallbacks
            .iter()
            .filter_map(|id| self.models.iter().find(|m| &m.id == id))
            .fold(model.prices, |most, fallback| Prices {
                input: most.input.max(fallback.prices.input),
                output: most.output.max(fallback.prices.output),
                cached_input: most.cached_input.max(fallback.prices.cached_input),
            })
    }

    pub(crate) fn resolve_shared(&self, id: &str) -> Option<Arc<Model>> {
        self.models.iter().find(|m| m.id == id).cloned()
    }

    pub fn ids(&self) -> Vec<&str> {
        self.models.iter().map(|m| m.id.as_str()).collect()
    }

    pub fn models(&self) -> impl Iterator<Item = &Arc<Model>> {
        self.models.iter()
    }

    /// Each distinct provider once with its guard, in the order they were added.
    pub fn guarded_providers(&self) -> Vec<(Arc<dyn ChatProvider>, Arc<ProviderGuard>)> {
        let mut seen: Vec<(Arc<dyn ChatProvider>, Arc<ProviderGuard>)> = Vec::new();
        for model in &self.models {
            if !seen.iter().any(|(p, _)| Arc::ptr_eq(p, &model.provider)) {
                seen.push((model.provider.clone(), model.guard.clone()));
            }
        }
        seen
    }

    pub fn any_simulated(&self) -> bool {
        self.models.iter().any(|m| m.provider.simulated())
    }
}

#[cfg(test)]
mod tests {
    use crate::providers::circuit::BreakerSettings;
    use crate::providers::resilience::RetrySettings;
    use tonic_types::StatusExt as _;

    use super::*;

    fn catalog() -> ModelCatalog {
        let mut catalog = ModelCatalog::default();
        let guard = Arc::new(ProviderGuard::new(
            "zai",
            RetrySettings::default(),
            catalog.call_budget(),
            BreakerSettings::default(),
        ));
        let spec = ModelSpec {
            id: DEFAULT_MODEL.to_string(),
            upstream: "glm-4.7-flash".to_string(),
            fallbacks: Vec::new(),
            context_window: known_context_window("glm-4.7-flash"),
            prices: Prices::default(),
        };
        catalog.add_models(Arc::new(Simulator::new("zai")), guard, vec![spec]);
        catalog
    }

    /// A client learns that the model is unknown, and which field named it, from the status's
    /// `BadRequest` details: the sentences may be reworded at any time.
    #[test]
    fn an_unknown_model_is_marked_as_such_in_the_status_details() {
        let Err(error) = catalog().resolve_loose("nobody/nothing") else {
            panic!("an unknown model resolves to nothing");
        };
        assert_eq!(error.code, ErrorCode::InvalidRequest);
        assert_eq!(error.field.as_deref(), Some("model"));
        assert_eq!(error.field_reason, Some(FieldViolationReason::UnknownModel));

        let status = tonic::Status::from(error);
        let details = status.get_error_details();
        let violation = details
            .bad_request()
            .and_then(|bad| bad.field_violations.first())
            .expect("a field violation");
        assert_eq!(violation.field, "model");
        assert_eq!(violation.reason, "UNKNOWN_MODEL");
        assert_eq!(
            details.error_info().map(|info| info.reason.as_str()),
            Some("INVALID_REQUEST")
        );
    }

    #[test]
    fn a_served_model_resolves() {
        assert!(catalog().resolve(DEFAULT_MODEL).is_ok());
    }
}
