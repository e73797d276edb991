//! Token counting with a real BPE (OpenAI's cl100k_base): used to estimate a
//! prompt before the provider has answered, and to report usage for the
//! simulator. Provider-reported usage always wins when there is one.

use tiktoken_rs::{CoreBPE, cl100k_base_singleton};

/// Tokens every chat message costs beyond its text (role and separators), as
/// in OpenAI's accounting for chat formats.
const PER_MESSAGE_OVERHEAD: u32 = 4;
/// Tokens that prime the assistant's reply.
const REPLY_PRIMING: u32 = 3;

fn bpe() -> &'static CoreBPE {
    cl100k_base_singleton()
}

/// Loads the vocabulary now, so the first request does not pay for it.
pub fn warm_up() {
    let _ = bpe();
}

pub fn count_text(text: &str) -> u32 {
    u32::try_from(bpe().encode_ordinary(text).len()).unwrap_or(u32::MAX)
}

/// Prompt tokens for a chat transcript of `(role, content)` pairs.
pub fn count_prompt<'a>(messages: impl IntoIterator<Item = (&'a str, &'a str)>) -> u32 {
    messages
        .into_iter()
        .fold(REPLY_PRIMING, |total, (role, content)| {
            total
                .saturating_add(PER_MESSAGE_OVERHEAD)
                .saturating_add(count_text(role))
                .saturating_add(count_text(content))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_with_a_real_vocabulary() {
        assert_eq!(count_text("Hello"), 1);
        assert_eq!(count_text("Hello world"), 2);
        assert!(count_text("你好，世界") >= 3);
    }

    #[test]
    fn a_prompt_costs_its_messages_plus_overhead() {
        let n = count_prompt([("user", "Hello")]);
        assert_eq!(n, REPLY_PRIMING + PER_MESSAGE_OVERHEAD + 1 + 1);
    }
}
