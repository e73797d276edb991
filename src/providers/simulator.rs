//! The offline stand-in for a provider, used when no credential is configured
//! so a fresh `cargo run` answers at once. Every surface says when it is in use.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt as _;

use super::{
    ChatCompletion, ChatProvider, ChatRequest, Chunk, ChunkStream, ProviderError, StreamEnd,
};
use crate::tokenizer;

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
