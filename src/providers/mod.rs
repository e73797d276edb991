//! Model providers: anything that completes a chat. Models are addressed as
//! `<provider>/<upstream model>` (e.g. `zai/glm-4.7-flash`); the catalog maps
//! each known model id to the provider that serves it.

mod openai;
mod simulator;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use self::openai::{OpenAiCompatible, OpenAiConfig};
pub use self::simulator::Simulator;

use crate::error::{ApiError, ErrorCode};

#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The provider's own model name (`glm-4.7-flash`).
    pub model: String,
    /// `(role, content)` in order.
    pub messages: Vec<(String, String)>,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct ChatCompletion {
    pub content: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub finish_reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("answered HTTP {status}: {message}")]
    Status { status: u16, message: String },
    #[error("answered something that is not a chat completion: {0}")]
    BadResponse(String),
}

impl ProviderError {
    /// What the caller is told: the provider's name and what happened, never its key or URL.
    pub fn into_api_error(self, provider: &str, model: &str) -> ApiError {
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
            ProviderError::Status { status, message } => ApiError::new(
                ErrorCode::UpstreamError,
                "Model provider error",
                format!("{provider} answered HTTP {status} for {model}: {message}"),
            ),
            ProviderError::BadResponse(_) => ApiError::new(
                ErrorCode::UpstreamError,
                "Model provider error",
                format!("{provider} sent an answer for {model} that is not a chat completion"),
            ),
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
    async fn complete(&self, request: &ChatRequest) -> Result<ChatCompletion, ProviderError>;
}

/// One model the gateway serves.
#[derive(Clone)]
pub struct Model {
    /// What clients ask for: `zai/glm-4.7-flash`.
    pub id: String,
    /// What the provider calls it: `glm-4.7-flash`.
    pub upstream: String,
    pub provider: Arc<dyn ChatProvider>,
}

/// The models of the guide's appendix A, served by Z.ai.
pub const ZAI_MODELS: &[&str] = &[
    "zai/glm-4.7-flash",
    "zai/glm-4.5-flash",
    "zai/glm-4-flash-250414",
];
pub const DEFAULT_MODEL: &str = "zai/glm-4.7-flash";

#[derive(Clone, Default)]
pub struct ModelCatalog {
    models: Vec<Model>,
}

impl ModelCatalog {
    /// Serves every `model_ids` entry (`provider/name`) with `provider`.
    pub fn add_provider(&mut self, provider: Arc<dyn ChatProvider>, model_ids: &[&str]) {
        for id in model_ids {
            let upstream = id.split_once('/').map_or(*id, |(_, name)| name);
            self.models.push(Model {
                id: (*id).to_string(),
                upstream: upstream.to_string(),
                provider: provider.clone(),
            });
        }
    }

    pub fn resolve(&self, id: &str) -> Result<&Model, ApiError> {
        self.models.iter().find(|m| m.id == id).ok_or_else(|| {
            ApiError::invalid_field(
                "model",
                "Unknown model",
                format!(
                    "The model '{id}' is not served here; use one of: {}",
                    self.ids().join(", ")
                ),
            )
        })
    }

    pub fn ids(&self) -> Vec<&str> {
        self.models.iter().map(|m| m.id.as_str()).collect()
    }

    /// Each distinct provider once, in the order they were added.
    pub fn providers(&self) -> Vec<Arc<dyn ChatProvider>> {
        let mut seen: Vec<Arc<dyn ChatProvider>> = Vec::new();
        for model in &self.models {
            if !seen.iter().any(|p| Arc::ptr_eq(p, &model.provider)) {
                seen.push(model.provider.clone());
            }
        }
        seen
    }

    pub fn any_simulated(&self) -> bool {
        self.models.iter().any(|m| m.provider.simulated())
    }
}
