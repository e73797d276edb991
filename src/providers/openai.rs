//! A client for any OpenAI-compatible chat-completions API (Z.ai, a local
//! server, another vendor): `POST {base_url}/chat/completions`.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{ChatCompletion, ChatProvider, ChatRequest, ProviderError};
use crate::config::Secret;
use crate::tokenizer;

#[derive(Clone)]
pub struct OpenAiConfig {
    pub name: String,
    /// Up to and excluding `/chat/completions`, e.g. `https://api.z.ai/api/paas/v4`.
    pub base_url: String,
    pub api_key: Secret,
    pub connect_timeout: Duration,
    /// Bound on a whole call, from sending to the last byte of the answer.
    pub request_timeout: Duration,
}

pub struct OpenAiCompatible {
    config: OpenAiConfig,
    endpoint: String,
    http: reqwest::Client,
}

impl OpenAiCompatible {
    pub fn new(config: OpenAiConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("openclaw-gateway/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let endpoint = format!("{}/chat/completions", config.base_url.trim_end_matches('/'));
        Ok(Self {
            config,
            endpoint,
            http,
        })
    }
}

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    stream: bool,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'a str,
    content: &'a str,
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
}

#[derive(Deserialize)]
struct WireReply {
    content: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    prompt_tokens: Option<u32>,
    completion_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct WireError {
    error: WireErrorBody,
}

#[derive(Deserialize)]
struct WireErrorBody {
    message: Option<String>,
}

fn classify(err: reqwest::Error, timeout: Duration) -> ProviderError {
    if err.is_timeout() {
        ProviderError::Timeout(timeout)
    } else if err.is_connect() {
        ProviderError::Connect(err.to_string())
    } else {
        ProviderError::BadResponse(err.to_string())
    }
}

#[async_trait]
impl ChatProvider for OpenAiCompatible {
    fn name(&self) -> &str {
        &self.config.name
    }

    async fn complete(&self, request: &ChatRequest) -> Result<ChatCompletion, ProviderError> {
        let body = WireRequest {
            model: &request.model,
            messages: request
                .messages
                .iter()
                .map(|(role, content)| WireMessage { role, content })
                .collect(),
            temperature: request.temperature,
            max_tokens: request.max_tokens,
            stream: false,
        };
        let timeout = self.config.request_timeout;
        let response = self
            .http
            .post(&self.endpoint)
            .bearer_auth(self.config.api_key.expose())
            .json(&body)
            .send()
            .await
            .map_err(|e| classify(e, timeout))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| classify(e, timeout))?;
        if !status.is_success() {
            let message = serde_json::from_slice::<WireError>(&bytes)
                .ok()
                .and_then(|e| e.error.message)
                .map(|m| m.chars().take(300).collect())
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
            return Err(ProviderError::Status {
                status: status.as_u16(),
                message,
            });
        }
        let wire: WireResponse = serde_json::from_slice(&bytes)
            .map_err(|e| ProviderError::BadResponse(e.to_string()))?;
        let choice = wire
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| ProviderError::BadResponse("no choices".into()))?;
        let content = choice.message.content.unwrap_or_default();
        let usage = wire.usage;
        let prompt_tokens = usage
            .as_ref()
            .and_then(|u| u.prompt_tokens)
            .unwrap_or_else(|| {
                tokenizer::count_prompt(
                    request
                        .messages
                        .iter()
                        .map(|(r, c)| (r.as_str(), c.as_str())),
                )
            });
        let completion_tokens = usage
            .as_ref()
            .and_then(|u| u.completion_tokens)
            .unwrap_or_else(|| tokenizer::count_text(&content));
        Ok(ChatCompletion {
            content,
            prompt_tokens,
            completion_tokens,
            finish_reason: choice.finish_reason.unwrap_or_else(|| "stop".into()),
        })
    }
}
