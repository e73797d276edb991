//! The offline stand-in for a provider, used when no credential is configured
//! so a fresh `cargo run` answers at once. Every surface says when it is in use.

use async_trait::async_trait;

use super::{ChatCompletion, ChatProvider, ChatRequest, ProviderError};
use crate::tokenizer;

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

    async fn complete(&self, request: &ChatRequest) -> Result<ChatCompletion, ProviderError> {
        let last_user = request
            .messages
            .iter()
            .rev()
            .find(|(role, _)| role == "user")
            .map_or("", |(_, content)| content.as_str());
        let turns = request
            .messages
            .iter()
            .filter(|(role, _)| role == "user")
            .count();
        let mut content = format!(
            "[offline simulator: {}] You said: \"{}\" (turn {turns}). Set ZAI_API_KEY to get answers from the real model.",
            request.model,
            last_user.chars().take(200).collect::<String>()
        );
        let mut finish_reason = "stop".to_string();
        if let Some(max) = request.max_tokens
            && tokenizer::count_text(&content) > max
        {
            content = content.chars().take(max as usize).collect();
            finish_reason = "length".into();
        }
        let prompt_tokens = tokenizer::count_prompt(
            request
                .messages
                .iter()
                .map(|(r, c)| (r.as_str(), c.as_str())),
        );
        Ok(ChatCompletion {
            completion_tokens: tokenizer::count_text(&content),
            content,
            prompt_tokens,
            finish_reason,
        })
    }
}
