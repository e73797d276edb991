//! The sampling options a request may set beyond temperature and the completion bound: the
//! sessions API declares them in lowerCamelCase, the OpenAI-compatible surface in snake_case
//! (`response_format`'s schema is `jsonSchema` or `json_schema` on either). Each is carried to the
//! core, which checks its range and refuses it when the model's provider cannot honour it: none
//! is dropped.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::proto;
use crate::routes::tools::{ToolChoiceInput, ToolInput};

/// Sampling options beyond `temperature` and the completion bound, as a request declared them.
#[derive(Debug, Default)]
pub(crate) struct SamplingInput {
    pub(crate) stop: Option<Stop>,
    pub(crate) top_p: Option<f32>,
    pub(crate) seed: Option<i64>,
    pub(crate) presence_penalty: Option<f32>,
    pub(crate) frequency_penalty: Option<f32>,
    pub(crate) logit_bias: Option<BTreeMap<String, f32>>,
    pub(crate) user: Option<String>,
    pub(crate) response_format: Option<ResponseFormatInput>,
    pub(crate) tools: Option<Vec<ToolInput>>,
    pub(crate) tool_choice: Option<ToolChoiceInput>,
    pub(crate) parallel_tool_calls: Option<bool>,
    pub(crate) logprobs: Option<bool>,
    pub(crate) top_logprobs: Option<u32>,
}

/// One stop sequence or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ResponseFormatInput {
    /// "text", "json_object" or "json_schema".
    #[serde(rename = "type", default)]
    #[schema(example = "json_schema")]
    pub(crate) kind: String,
    #[serde(alias = "json_schema")]
    pub(crate) json_schema: Option<JsonSchemaInput>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct JsonSchemaInput {
    #[serde(default)]
    #[schema(example = "weather")]
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) description: Option<String>,
    /// A JSON Schema object.
    #[schema(value_type = Object)]
    pub(crate) schema: Option<Value>,
    pub(crate) strict: Option<bool>,
}

impl SamplingInput {
    /// The core's options with `temperature` and `max_tokens`; `None` when nothing is set. A
    /// `json_schema` format without its schema reaches the core, which names what is missing.
    /// Tools of another kind than functions are refused here, named by the sessions API's
    /// spelling (`/v1` renames them).
    pub(crate) fn into_options(
        self,
        temperature: Option<f32>,
        max_tokens: Option<u32>,
    ) -> Result<Option<proto::GenerationOptions>, ApiError> {
        let tools = crate::routes::tools::tools(self.tools.unwrap_or_default(), "tools")?;
        let tool_choice = self
            .tool_choice
            .map(|choice| crate::routes::tools::tool_choice(choice, "toolChoice"))
            .transpose()?;
        let response_format = self.response_format.map(|format| {
            let schema = format.json_schema;
            proto::ResponseFormat {
                r#type: format.kind,
                name: schema.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
                description: schema
                    .as_ref()
                    .and_then(|s| s.description.clone())
                    .unwrap_or_default(),
                schema: schema
                    .as_ref()
                    .and_then(|s| s.schema.as_ref())
                    .map(Value::to_string)
                    .unwrap_or_default(),
                strict: schema.and_then(|s| s.strict),
            }
        });
        let options = proto::GenerationOptions {
            temperature,
            max_tokens,
            stop: match self.stop {
                None => Vec::new(),
                Some(Stop::One(one)) => vec![one],
                Some(Stop::Many(many)) => many,
            },
            top_p: self.top_p,
            seed: self.seed,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            logit_bias: self.logit_bias.unwrap_or_default().into_iter().collect(),
            user: self.user.unwrap_or_default(),
            response_format,
            tools,
            tool_choice,
            parallel_tool_calls: self.parallel_tool_calls,
            logprobs: self.logprobs,
            top_logprobs: self.top_logprobs,
        };
        Ok((options != proto::GenerationOptions::default()).then_some(options))
    }
}

/// The sampling options of a request that declares them as its own fields (so its OpenAPI
/// schema lists them), as the shared input.
macro_rules! sampling {
    ($request:expr) => {
        $crate::routes::sampling::SamplingInput {
            stop: $request.stop,
            top_p: $request.top_p,
            seed: $request.seed,
            presence_penalty: $request.presence_penalty,
            frequency_penalty: $request.frequency_penalty,
            logit_bias: $request.logit_bias,
            user: $request.user,
            response_format: $request.response_format,
            tools: $request.tools,
            tool_choice: $request.tool_choice,
            parallel_tool_calls: $request.parallel_tool_calls,
            logprobs: $request.logprobs,
            top_logprobs: $request.top_logprobs,
        }
    };
}

pub(crate) use sampling;

/// The first of a request's undeclared fields that is set: a field sent as `null` counts as not
/// sent (SDKs send a reply back with its `refusal: null`). Both surfaces refuse what this names.
pub(crate) fn first_set_field(fields: &BTreeMap<String, Value>) -> Option<&String> {
    fields
        .iter()
        .find(|(_, value)| !value.is_null())
        .map(|(name, _)| name)
}

/// The log probabilities the core passed on (JSON text), as JSON; `None` when none were asked.
pub(crate) fn parse_logprobs(text: &str) -> Option<Value> {
    (!text.is_empty())
        .then(|| serde_json::from_str(text).ok())
        .flatten()
}
