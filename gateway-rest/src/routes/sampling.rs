//! The sampling options a request may set beyond temperature and the completion bound, as the
//! sessions API (lowerCamelCase) and the OpenAI-compatible surface (snake_case) spell them;
//! both spellings are read on both surfaces. Each is carried to the core, which checks its range
//! and refuses it when the model's provider cannot honour it: none is dropped.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::proto;

/// Sampling options beyond `temperature` and the completion bound.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SamplingInput {
    /// A sequence, or up to 4, that end the reply where they appear.
    #[schema(value_type = Option<Object>, example = json!(["\n\n"]))]
    pub(crate) stop: Option<Stop>,
    /// Nucleus sampling: above 0, at most 1.
    #[serde(alias = "top_p")]
    #[schema(example = 0.9)]
    pub(crate) top_p: Option<f32>,
    /// Best-effort deterministic sampling.
    #[schema(example = 42)]
    pub(crate) seed: Option<i64>,
    /// From -2 to 2.
    #[serde(alias = "presence_penalty")]
    pub(crate) presence_penalty: Option<f32>,
    /// From -2 to 2.
    #[serde(alias = "frequency_penalty")]
    pub(crate) frequency_penalty: Option<f32>,
    /// Token id (as a string) → bias from -100 to 100.
    #[serde(alias = "logit_bias")]
    pub(crate) logit_bias: Option<BTreeMap<String, f32>>,
    /// The end user the call is made for, passed to the provider.
    #[schema(example = "user-1234")]
    pub(crate) user: Option<String>,
    /// `{"type": "text"}`, `{"type": "json_object"}` or
    /// `{"type": "json_schema", "jsonSchema": {"name", "schema", "strict"?, "description"?}}`
    /// (`json_schema` in OpenAI's spelling).
    #[serde(alias = "response_format")]
    pub(crate) response_format: Option<ResponseFormatInput>,
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
    pub(crate) fn into_options(
        self,
        temperature: Option<f32>,
        max_tokens: Option<u32>,
    ) -> Option<proto::GenerationOptions> {
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
        };
        (options != proto::GenerationOptions::default()).then_some(options)
    }
}
