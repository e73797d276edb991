//! Tool calling, as both surfaces spell it: OpenAI's shapes (`{"type": "function", "function":
//! {...}}`), with the sessions API naming its fields in lowerCamelCase (`toolCalls`,
//! `toolCallId`, `toolChoice`, `parallelToolCalls`) and `/v1` in snake_case. The core checks
//! names, schemas and ids; here only what the wire shape itself decides is refused.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::proto;

/// A function the model may call.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct ToolInput {
    /// Always "function".
    #[serde(rename = "type", default)]
    #[schema(example = "function")]
    pub(crate) kind: String,
    pub(crate) function: Option<FunctionInput>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct FunctionInput {
    /// 1 to 64 letters, digits, '_' or '-'.
    #[serde(default)]
    #[schema(example = "get_weather")]
    pub(crate) name: String,
    #[schema(example = "The weather in a city")]
    pub(crate) description: Option<String>,
    /// The arguments' JSON Schema (an object).
    #[schema(value_type = Option<Object>, example = json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}))]
    pub(crate) parameters: Option<Value>,
    /// The provider must follow the schema exactly.
    pub(crate) strict: Option<bool>,
}

/// `"auto"`, `"none"`, `"required"`, or `{"type": "function", "function": {"name": "..."}}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum ToolChoiceInput {
    Mode(String),
    Function {
        #[serde(rename = "type", default)]
        kind: String,
        function: NamedFunction,
    },
}

#[derive(Debug, Deserialize)]
pub(crate) struct NamedFunction {
    #[serde(default)]
    name: String,
}

/// A tool call an assistant message made, as the model returned it.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct ToolCallInput {
    #[serde(default)]
    #[schema(example = "call_0194b6a0")]
    pub(crate) id: String,
    /// Always "function".
    #[serde(rename = "type")]
    #[schema(example = "function")]
    pub(crate) kind: Option<String>,
    pub(crate) function: Option<CalledFunction>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub(crate) struct CalledFunction {
    #[serde(default)]
    #[schema(example = "get_weather")]
    pub(crate) name: String,
    /// The arguments, as JSON text.
    #[serde(default)]
    #[schema(example = "{\"city\":\"Paris\"}")]
    pub(crate) arguments: String,
}

/// A tool call of the reply, or of a stored assistant message.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ToolCallOutput {
    #[schema(example = "call_0194b6a0")]
    id: String,
    /// Always "function".
    #[serde(rename = "type")]
    #[schema(example = "function")]
    kind: &'static str,
    function: CalledFunction,
}

impl From<proto::ToolCall> for ToolCallOutput {
    fn from(call: proto::ToolCall) -> Self {
        Self {
            id: call.id,
            kind: "function",
            function: CalledFunction {
                name: call.name,
                arguments: call.arguments,
            },
        }
    }
}

/// A piece of a streamed tool call: the first piece of each call has its id, type and name.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ToolCallChunk {
    /// Which of the reply's tool calls this piece adds to.
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionChunk,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FunctionChunk {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// The next piece of the arguments' JSON text.
    arguments: String,
}

impl From<proto::ToolCallDelta> for ToolCallChunk {
    fn from(delta: proto::ToolCallDelta) -> Self {
        let first = !delta.id.is_empty();
        Self {
            index: delta.index,
            id: first.then_some(delta.id),
            kind: first.then_some("function"),
            function: FunctionChunk {
                name: (!delta.name.is_empty()).then_some(delta.name),
                arguments: delta.arguments,
            },
        }
    }
}

fn invalid(field: String, details: String) -> ApiError {
    ApiError::invalid_field(field, "Invalid request", details)
}

/// The request's tools, for the core.
pub(crate) fn tools(tools: Vec<ToolInput>, field: &str) -> Result<Vec<proto::Tool>, ApiError> {
    tools
        .into_iter()
        .enumerate()
        .map(|(i, tool)| {
            if tool.kind != "function" {
                return Err(invalid(
                    format!("{field}[{i}].type"),
                    format!(
                        "The field '{field}[{i}].type' must be \"function\": function tools are the only kind"
                    ),
                ));
            }
            let Some(function) = tool.function else {
                return Err(invalid(
                    format!("{field}[{i}].function"),
                    format!(
                        "The field '{field}[{i}].function' is required: {{\"name\", \"description\"?, \"parameters\"?, \"strict\"?}}"
                    ),
                ));
            };
            Ok(proto::Tool {
                name: function.name,
                description: function.description.unwrap_or_default(),
                // Anything but an object reaches the core as text it refuses, naming the field.
                parameters: function
                    .parameters
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                strict: function.strict,
            })
        })
        .collect()
}

/// The request's tool choice, for the core.
pub(crate) fn tool_choice(
    choice: ToolChoiceInput,
    field: &str,
) -> Result<proto::ToolChoice, ApiError> {
    match choice {
        ToolChoiceInput::Mode(mode) => Ok(proto::ToolChoice {
            mode,
            function: String::new(),
        }),
        ToolChoiceInput::Function { kind, function } if kind == "function" => {
            Ok(proto::ToolChoice {
                mode: "function".into(),
                function: function.name,
            })
        }
        ToolChoiceInput::Function { .. } => Err(invalid(
            format!("{field}.type"),
            format!(
                "The field '{field}.type' must be \"function\": {{\"type\": \"function\", \"function\": {{\"name\": \"...\"}}}}"
            ),
        )),
    }
}

/// An assistant message's tool calls, for the core.
pub(crate) fn tool_calls(
    calls: Vec<ToolCallInput>,
    field: &str,
) -> Result<Vec<proto::ToolCall>, ApiError> {
    calls
        .into_iter()
        .enumerate()
        .map(|(i, call)| {
            if call.kind.as_deref().is_some_and(|kind| kind != "function") {
                return Err(invalid(
                    format!("{field}[{i}].type"),
                    format!("The field '{field}[{i}].type' must be \"function\""),
                ));
            }
            let Some(function) = call.function else {
                return Err(invalid(
                    format!("{field}[{i}].function"),
                    format!(
                        "The field '{field}[{i}].function' is required: {{\"name\", \"arguments\"}}"
                    ),
                ));
            };
            Ok(proto::ToolCall {
                id: call.id,
                name: function.name,
                arguments: function.arguments,
            })
        })
        .collect()
}
