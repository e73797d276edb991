//! The offline stand-in for a provider, used when no credential is configured
//! so a fresh `cargo run` answers at once. Every surface says when it is in use.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt as _;

use super::{
    ChatCompletion, ChatProvider, ChatRequest, Chunk, ChunkStream, ProviderError, ResponseFormat,
    StreamEnd, Tool, ToolCall, ToolCallDelta, ToolChoice,
};
use crate::tokenizer;

/// A value that satisfies `schema` (the common JSON Schema keywords: `type`, `properties`,
/// `required`, `items`, `enum`, `const`), its strings saying `said`: deterministic, so a
/// structured-output client can be tried offline.
fn instance(schema: &serde_json::Value, said: &str) -> serde_json::Value {
    use serde_json::{Value, json};
    if let Some(value) = schema.get("const") {
        return value.clone();
    }
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    let kind = match schema.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        // A list of types: the first that is not null.
        Some(Value::Array(kinds)) => kinds
            .iter()
            .filter_map(Value::as_str)
            .find(|k| *k != "null")
            .unwrap_or("null"),
        _ if schema.get("properties").is_some() => "object",
        _ => "string",
    };
    match kind {
        "object" => {
            let mut object = serde_json::Map::new();
            if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                for (name, property) in properties {
                    object.insert(name.clone(), instance(property, said));
                }
            }
            Value::Object(object)
        }
        "array" => match schema.get("items") {
            Some(items) => {
                let count = schema.get("minItems").and_then(Value::as_u64).unwrap_or(1);
                Value::Array(
                    (0..count.clamp(1, 3))
                        .map(|_| instance(items, said))
                        .collect(),
                )
            }
            None => json!([]),
        },
        "integer" => json!(schema.get("minimum").and_then(Value::as_i64).unwrap_or(1)),
        "number" => json!(schema.get("minimum").and_then(Value::as_f64).unwrap_or(1.0)),
        "boolean" => json!(true),
        "null" => Value::Null,
        _ => json!(format!("[offline simulator] {said}")),
    }
}

/// The tool the simulated model calls, if any: the one `tool_choice` names or requires, else
/// one the user's last message names, else the first when that message mentions a tool at all.
fn chosen_tool<'a>(request: &'a ChatRequest, last_user: &str) -> Option<&'a Tool> {
    let tools = &request.sampling.tools;
    let asked = last_user.to_lowercase();
    match &request.sampling.tool_choice {
        Some(ToolChoice::None) => None,
        Some(ToolChoice::Function { function }) => tools.iter().find(|t| &t.name == function),
        Some(ToolChoice::Required) => tools
            .iter()
            .find(|t| asked.contains(&t.name.to_lowercase()))
            .or_else(|| tools.first()),
        Some(ToolChoice::Auto) | None => tools
            .iter()
            .find(|t| asked.contains(&t.name.to_lowercase()))
            .or_else(|| tools.first().filter(|_| asked.contains("tool"))),
    }
}

/// The pause between two streamed words, so a streamed answer looks like one.
const WORD_PAUSE: Duration = Duration::from_millis(5);

pub struct Simulator {
    name: String,
}

impl Simulator {
    /// Simulates the provider called `name` (the models keep their ids).
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
}

#[async_trait]
impl ChatProvider for Simulator {
    fn name(&self) -> &str {
        &self.name
    }

    fn simulated(&self) -> bool {
        true
    }

    /// The simulator writes its answers, it does not sample them: it has no log probabilities.
    fn refuses(&self, sampling: &super::Sampling) -> Option<(&'static str, &'static str)> {
        sampling.wants_logprobs().then_some((
            "logprobs",
            "the offline simulator has no log probabilities; set a provider key to use a real model",
        ))
    }

    async fn complete(&self, request: &ChatRequest) -> Result<ChatCompletion, ProviderError> {
        let last_user = request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map_or("", |m| m.content.as_str());
        let turns = request.messages.iter().filter(|m| m.role == "user").count();
        let images = request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map_or(0, |m| {
                m.parts
                    .iter()
                    .filter(|p| matches!(p, super::ContentPart::ImageUrl { .. }))
                    .count()
            });
        let said: String = last_user.chars().take(200).collect();
        let seen = match images {
            0 => String::new(),
            1 => ", with 1 image".to_owned(),
            n => format!(", with {n} images"),
        };
        let prompt_tokens = tokenizer::count_prompt(
            request
                .messages
                .iter()
                .map(|m| (m.role.as_str(), m.content.as_str())),
        )
        .saturating_add(request.sampling.tool_tokens());
        // The tool results that came after the last assistant message, if any: the model
        // answers from them. Otherwise a tool it is asked to use is called, with arguments
        // built from its parameters' schema.
        let results: Vec<&super::Message> = request
            .messages
            .iter()
            .rev()
            .take_while(|m| m.role == "tool")
            .collect();
        if results.is_empty()
            && let Some(tool) = chosen_tool(request, last_user)
        {
            let arguments = tool
                .parameters
                .as_ref()
                .map_or_else(|| serde_json::json!({}), |schema| instance(schema, &said));
            let call = ToolCall {
                id: format!("call_sim_{turns}_{}", tool.name),
                name: tool.name.clone(),
                arguments: arguments.to_string(),
            };
            let tool_calls = vec![call];
            return Ok(ChatCompletion {
                completion_tokens: super::reply_tokens("", &tool_calls),
                content: String::new(),
                tool_calls,
                logprobs: None,
                prompt_tokens,
                cached_tokens: 0,
                finish_reason: "tool_calls".into(),
            });
        }
        let mut content = match &request.sampling.response_format {
            // JSON asked for: an object, or an instance of the schema, built from the question.
            Some(ResponseFormat::JsonObject) => {
                serde_json::json!({"simulated": true, "youSaid": said, "turn": turns}).to_string()
            }
            Some(ResponseFormat::JsonSchema { schema, .. }) => instance(schema, &said).to_string(),
            _ if !results.is_empty() => {
                let returned: Vec<String> = results
                    .iter()
                    .rev()
                    .map(|m| format!("\"{}\"", m.content.chars().take(200).collect::<String>()))
                    .collect();
                format!(
                    "[offline simulator: {}] The tool returned {}. Set ZAI_API_KEY to get answers from the real model.",
                    request.model,
                    returned.join(" and ")
                )
            }
            _ => format!(
                "[offline simulator: {}] You said: \"{said}\" (turn {turns}{seen}). Set ZAI_API_KEY to get answers from the real model.",
                request.model,
            ),
        };
        let mut finish_reason = "stop".to_string();
        // A stop sequence ends the reply where it first appears, as a model's would.
        if let Some(at) = request
            .sampling
            .stop
            .iter()
            .filter_map(|stop| content.find(stop.as_str()))
            .min()
        {
            content.truncate(at);
        }
        if let Some(max) = request.max_tokens
            && tokenizer::count_text(&content) > max
        {
            content = content.chars().take(max as usize).collect();
            finish_reason = "length".into();
        }
        Ok(ChatCompletion {
            completion_tokens: tokenizer::count_text(&content),
            content,
            tool_calls: Vec::new(),
            logprobs: None,
            prompt_tokens,
            cached_tokens: 0,
            finish_reason,
        })
    }

    /// The same answer as [`Self::complete`], word by word.
    async fn stream(&self, request: &ChatRequest) -> Result<ChunkStream, ProviderError> {
        let completion = self.complete(request).await?;
        let mut words: Vec<Chunk> = completion
            .content
            .split_inclusive(' ')
            .map(|word| Chunk::Delta(word.to_string()))
            .collect();
        // A tool call comes as OpenAI streams one: its id and name, then its arguments in pieces.
        for (index, call) in completion.tool_calls.into_iter().enumerate() {
            let index = index as u32;
            words.push(Chunk::ToolCall(ToolCallDelta {
                index,
                id: Some(call.id),
                name: Some(call.name),
                arguments: String::new(),
            }));
            let mut rest = call.arguments.as_str();
            while !rest.is_empty() {
                let mut cut = rest.len().min(16);
                while !rest.is_char_boundary(cut) {
                    cut += 1;
                }
                let (piece, after) = rest.split_at(cut);
                words.push(Chunk::ToolCall(ToolCallDelta {
                    index,
                    id: None,
                    name: None,
                    arguments: piece.to_owned(),
                }));
                rest = after;
            }
        }
        words.push(Chunk::End(StreamEnd {
            finish_reason: completion.finish_reason,
            prompt_tokens: Some(completion.prompt_tokens),
            completion_tokens: Some(completion.completion_tokens),
            cached_tokens: None,
        }));
        let first = std::iter::once(true).chain(std::iter::repeat(false));
        Ok(Box::pin(
            futures::stream::iter(words.into_iter().zip(first)).then(|(chunk, first)| async move {
                if !first {
                    tokio::time::sleep(WORD_PAUSE).await;
                }
                Ok(chunk)
            }),
        ))
    }
}
