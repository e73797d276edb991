//! What a run does: publish a system event, or run a model turn for the
//! job's owner.

use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult};
use crate::proto;
use crate::providers::ModelCatalog;
use crate::sessions::validation::validate_session_id;

const MAX_TEXT_CHARS: usize = 10_000;
const MAX_MESSAGE_CHARS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Payload {
    #[serde(rename = "systemEvent")]
    SystemEvent { text: String },
    #[serde(rename = "agentTurn", rename_all = "camelCase")]
    AgentTurn {
        message: String,
        model: Option<String>,
        /// Without one, every run starts a fresh session.
        session_id: Option<String>,
    },
}

fn required_text(value: Option<&str>, field: &str, kind: &str, max: usize) -> ApiResult<String> {
    let value = value.unwrap_or("");
    if value.trim().is_empty() {
        return Err(ApiError::invalid_field(
            format!("payload.{field}"),
            "Missing required field",
            format!("The field 'payload.{field}' is required (non-empty) for a '{kind}' payload"),
        ));
    }
    if value.chars().count() > max {
        return Err(ApiError::invalid_field(
            format!("payload.{field}"),
            "Field too long",
            format!("The field 'payload.{field}' must be at most {max} characters"),
        ));
    }
    Ok(value.to_string())
}

impl Payload {
    pub fn from_request(
        request: Option<&proto::Payload>,
        models: &ModelCatalog,
    ) -> ApiResult<Self> {
        let Some(p) = request else {
            return Err(ApiError::invalid_field(
                "payload",
                "Missing required field",
                "The field 'payload' is required, e.g. {\"kind\": \"systemEvent\", \"text\": \"...\"}",
            ));
        };
        match p.kind.as_str() {
            "systemEvent" => Ok(Payload::SystemEvent {
                text: required_text(p.text.as_deref(), "text", "systemEvent", MAX_TEXT_CHARS)?,
            }),
            "agentTurn" => {
                let message = required_text(
                    p.message.as_deref(),
                    "message",
                    "agentTurn",
                    MAX_MESSAGE_CHARS,
                )?;
                let model = match p.model.as_deref().map(str::trim).filter(|m| !m.is_empty()) {
                    Some(model) => Some(
                        models
                            .resolve(model)
                            .map_err(|mut err| {
                                err.field = Some("payload.model".into());
                                err.details = err.details.replacen(
                                    "The model",
                                    "The field 'payload.model': the model",
                                    1,
                                );
                                err
                            })?
                            .id
                            .clone(),
                    ),
                    None => None,
                };
                let session_id = match p.session_id.as_deref().filter(|s| !s.is_empty()) {
                    Some(id) => {
                        validate_session_id(id, "payload.sessionId")?;
                        Some(id.to_string())
                    }
                    None => None,
                };
                Ok(Payload::AgentTurn {
                    message,
                    model,
                    session_id,
                })
            }
            "" => Err(ApiError::invalid_field(
                "payload.kind",
                "Missing required field",
                "The field 'payload.kind' is required: one of systemEvent, agentTurn",
            )),
            other => Err(ApiError::invalid_field(
                "payload.kind",
                "Invalid payload kind",
                format!(
                    "The field 'payload.kind' is '{}'; use one of: systemEvent, agentTurn",
                    other.chars().take(40).collect::<String>()
                ),
            )),
        }
    }

    pub fn to_proto(&self) -> proto::Payload {
        match self {
            Payload::SystemEvent { text } => proto::Payload {
                kind: "systemEvent".into(),
                text: Some(text.clone()),
                ..Default::default()
            },
            Payload::AgentTurn {
                message,
                model,
                session_id,
            } => proto::Payload {
                kind: "agentTurn".into(),
                message: Some(message.clone()),
                model: model.clone(),
                session_id: session_id.clone(),
                ..Default::default()
            },
        }
    }
}
