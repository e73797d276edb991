//! Token counting with a real BPE (OpenAI's cl100k_base): used to estimate a
//! prompt before the provider has answered, and to report usage for the
//! simulator. Provider-reported usage always wins when there is one.
//!
//! The encoder is GitHub's `bpe-openai`, which gives the same tokens as tiktoken
//! (the tests below check it against tiktoken-rs) at a third of the instructions
//! per count: every request's prompt estimate goes through here.

use bpe_openai::Tokenizer;

/// Tokens every chat message costs beyond its text (role and separators), as
/// in OpenAI's accounting for chat formats.
const PER_MESSAGE_OVERHEAD: u32 = 4;
/// Tokens that prime the assistant's reply.
pub const REPLY_PRIMING: u32 = 3;
/// What a message of one of the chat roles costs beyond its content: the separators and the
/// role (one token each in cl100k_base).
pub const MESSAGE_OVERHEAD: u32 = PER_MESSAGE_OVERHEAD + 1;

fn bpe() -> &'static Tokenizer {
    bpe_openai::cl100k_base()
}

/// Loads the vocabulary now, so the first request does not pay for it.
pub fn warm_up() {
    let _ = bpe();
}

pub fn count_text(text: &str) -> u32 {
    u32::try_from(bpe().count(text)).unwrap_or(u32::MAX)
}

/// The longest start of `text` that is at most `max` tokens.
pub fn truncate(text: &str, max: u32) -> String {
    let tokens = bpe().encode(text);
    if tokens.len() <= max as usize {
        return text.to_string();
    }
    let mut keep = max as usize;
    // A cut inside a character decodes to invalid UTF-8: give back tokens until it does not.
    while keep > 0 {
        if let Some(start) = bpe().decode(&tokens[..keep]) {
            return start;
        }
        keep -= 1;
    }
    String::new()
}

/// Tokens of a role: the chat roles are one token each in cl100k_base.
fn count_role(role: &str) -> u32 {
    match role {
        "system" | "user" | "assistant" | "tool" | "developer" => 1,
        other => count_text(other),
    }
}

/// Prompt tokens for a chat transcript of `(role, content)` pairs.
pub fn count_prompt<'a>(messages: impl IntoIterator<Item = (&'a str, &'a str)>) -> u32 {
    count_prompt_known(
        messages
            .into_iter()
            .map(|(role, content)| (role, content, None)),
    )
}

/// [`count_prompt`] for messages whose content may have been counted already
/// (`(role, content, Some(tokens))`): only the others go through the BPE.
pub fn count_prompt_known<'a>(
    messages: impl IntoIterator<Item = (&'a str, &'a str, Option<u32>)>,
) -> u32 {
    messages
        .into_iter()
        .fold(REPLY_PRIMING, |total, (role, content, known)| {
            total
                .saturating_add(PER_MESSAGE_OVERHEAD)
                .saturating_add(count_role(role))
                .saturating_add(known.unwrap_or_else(|| count_text(content)))
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
    fn the_chat_roles_are_counted_as_the_bpe_counts_them() {
        for role in [
            "system",
            "user",
            "assistant",
            "tool",
            "developer",
            "moderator",
        ] {
            assert_eq!(count_role(role), count_text(role), "{role}");
        }
    }

    #[test]
    fn known_counts_stand_in_for_the_bpe() {
        let text = "Turn 3: we agreed to ship the report on Friday.";
        let counted = count_prompt([("user", text), ("assistant", "Fine.")]);
        let known = count_prompt_known([
            ("user", text, Some(count_text(text))),
            ("assistant", "Fine.", None),
        ]);
        assert_eq!(known, counted);
        assert_eq!(
            count_prompt_known([("user", text, Some(100))]),
            count_prompt([("user", "")]) + 100
        );
    }

    #[test]
    fn truncation_keeps_at_most_the_tokens_asked() {
        let text = "one two three four five six seven eight nine ten";
        assert_eq!(truncate(text, 100), text);
        let cut = truncate(text, 4);
        assert!(count_text(&cut) <= 4 && text.starts_with(&cut), "{cut}");
        assert!(count_text(&truncate("你好，世界，你好", 2)) <= 2);
    }

    /// Pieces that exercise cl100k_base's pre-tokenizer: contractions, letters after a
    /// non-letter, runs of 1–3 digits, punctuation with trailing newlines, and whitespace runs
    /// before text, before newlines and at the end (its `\s+(?!\S)` look-ahead).
    const PIECES: &[&str] = &[
        "a", "Z", "the", " the", "ing", " ", "  ", "\n", "\r\n", "\t", "'s", "'LL", "'ve", "’",
        "1", "23", "456789", "!", "?", "...", "--", "\\", "\"", "{", "}", "你", "好", "é",
        "e\u{301}", "ü", "🙂", "\u{a0}", "\u{3000}", "ا", "ع", "Ω",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]

        #[test]
        fn counts_and_truncates_exactly_as_tiktoken_does(
            picks in proptest::collection::vec(0..PIECES.len(), 0..40),
            max in 0u32..12,
        ) {
            let text: String = picks.iter().map(|&i| PIECES[i]).collect();
            let reference = tiktoken_rs::cl100k_base_singleton();
            let tokens = reference.encode_ordinary(&text);
            proptest::prop_assert_eq!(count_text(&text) as usize, tokens.len());
            proptest::prop_assert_eq!(bpe().encode(text.as_str()), tokens.clone());
            // The same cut as tiktoken's tokens give: the longest start of at most `max` tokens
            // that decodes to whole characters.
            let keep = (0..=tokens.len().min(max as usize))
                .rev()
                .find_map(|n| reference.decode(&tokens[..n]).ok())
                .unwrap_or_default();
            proptest::prop_assert_eq!(truncate(&text, max), keep);
        }
    }

    #[test]
    fn a_prompt_costs_its_messages_plus_overhead() {
        let n = count_prompt([("user", "Hello")]);
        assert_eq!(n, REPLY_PRIMING + PER_MESSAGE_OVERHEAD + 1 + 1);
    }
}
