//! What of a session's history a turn sends, so the request never exceeds the model's context
//! window (docs/context-windows.md): the system prompt, the latest summary (strategy
//! `summarize`), and the most recent whole turns that fit beside the new message and the
//! completion reserved. With `summarize`, a history that no longer fits is first compacted: the
//! model itself summarises the older turns (a call billed like any other), and the summary is
//! stored in the history, marked, in their place.

use chrono::Utc;

use crate::error::{ApiError, ApiResult};
use crate::store::{History, StoredMessage, SummaryOf};
use crate::tokenizer;

/// The longest summary asked for (tokens); smaller windows get a quarter of their room.
const MAX_SUMMARY_TOKENS: u64 = 1024;

/// What the summarising call is told.
pub(crate) const SUMMARY_INSTRUCTION: &str = "You compact a conversation so it can go on past the model's context window. Summarise the conversation below for the assistant that continues it: keep every fact, decision, name, number, open question and instruction from the user; drop pleasantries. Write the summary only, in the conversation's language.";

/// How a stored summary begins, so the model reading it knows what it is.
pub(crate) const SUMMARY_PREFIX: &str = "Summary of the earlier conversation: ";

/// What a prompt of these messages costs beside its reply's priming.
fn cost<'a>(messages: impl IntoIterator<Item = &'a StoredMessage>) -> u64 {
    messages.into_iter().map(StoredMessage::prompt_cost).sum()
}

/// The room a turn has: the window less the completion reserved and the reply's priming.
pub(crate) fn room(window: u32, reserve: u32) -> u64 {
    u64::from(window).saturating_sub(u64::from(reserve) + u64::from(tokenizer::REPLY_PRIMING))
}

/// The refusal when the system prompt and the new messages alone do not fit.
pub(crate) fn too_large(field: &str, needed: u64, window: u32, reserve: u32) -> ApiError {
    ApiError::invalid_field(
        field,
        "Message too long for the model's context window",
        format!(
            "The field '{field}' is too long: with the system prompt it needs {needed} tokens and {reserve} are reserved for the reply (maxTokens), but the model's context window is {window} tokens; shorten the message, lower maxTokens, or choose a model with a larger window"
        ),
    )
}

/// Where the latest of `earlier` that fit in `room` begin: walking back from the end while
/// they fit, then, where that cut the conversation (or `earlier` is itself a cut one, not
/// `whole`), forward to the first user message, so a reply is never sent without the message
/// it answers.
pub(crate) fn fitting_start(earlier: &[&StoredMessage], room: u64, whole: bool) -> usize {
    let mut used = 0u64;
    let mut start = earlier.len();
    while start > 0 {
        let next = earlier[start - 1].prompt_cost();
        if used + next > room {
            break;
        }
        used += next;
        start -= 1;
    }
    if start == 0 && whole {
        return 0;
    }
    earlier[start..]
        .iter()
        .position(|m| m.role == "user")
        .map_or(earlier.len(), |i| start + i)
}

/// The prompt of a turn: `head`, `summary`, the latest of `earlier` that fit, then `new`; or
/// INVALID_REQUEST (on `field`) when `head`, `summary` and `new` alone do not. `whole`: nothing
/// older than `earlier` was left out before it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fit(
    head: &[StoredMessage],
    summary: Option<&StoredMessage>,
    earlier: &[&StoredMessage],
    whole: bool,
    new: &[StoredMessage],
    window: u32,
    reserve: u32,
    field: &str,
) -> ApiResult<(Vec<StoredMessage>, usize)> {
    let room = room(window, reserve);
    let fixed = cost(head) + cost(summary) + cost(new);
    if fixed > room {
        return Err(too_large(
            field,
            fixed + u64::from(tokenizer::REPLY_PRIMING),
            window,
            reserve,
        ));
    }
    let start = fitting_start(earlier, room - fixed, whole);
    let mut prompt = Vec::with_capacity(head.len() + 1 + earlier.len() - start + new.len());
    prompt.extend(head.iter().cloned());
    prompt.extend(summary.cloned());
    prompt.extend(earlier[start..].iter().map(|m| (*m).clone()));
    prompt.extend(new.iter().cloned());
    Ok((prompt, start))
}

/// The prompt of a new session's first turn: its leading system messages, the latest of the
/// messages after them that fit, and its last (user) message.
pub(crate) fn fit_initial(
    messages: &[StoredMessage],
    window: u32,
    reserve: u32,
) -> ApiResult<Vec<StoredMessage>> {
    let Some((last, before)) = messages.split_last() else {
        return Ok(Vec::new());
    };
    let head = before.iter().take_while(|m| m.role == "system").count();
    let earlier: Vec<&StoredMessage> = before[head..].iter().collect();
    fit(
        &before[..head],
        None,
        &earlier,
        true,
        std::slice::from_ref(last),
        window,
        reserve,
        "messages",
    )
    .map(|(prompt, _)| prompt)
}

/// What a compaction will do: summarise everything before `keep_from` (beyond the head) that the
/// previous summary does not already stand for, and keep the turns from `keep_from` on.
pub(crate) struct Compaction {
    /// The index of the first message kept verbatim.
    pub(crate) keep_from: u64,
    /// Where the tail keeps from (a position in `History::tail`).
    pub(crate) keep_start: usize,
    /// The summary's budget (tokens).
    pub(crate) summary_tokens: u32,
}

/// Plans a compaction of `history` for a turn with `room_for_history` tokens left beside the
/// head, the new messages and the reply: the latest turns that fit half of it are kept, the
/// summary gets up to a quarter. None when nothing could be summarised.
pub(crate) fn plan_compaction(history: &History, room_for_history: u64) -> Option<Compaction> {
    let tail: Vec<&StoredMessage> = history.tail.iter().map(|(_, m)| m).collect();
    let keep_start = fitting_start(&tail, room_for_history / 2, history.complete);
    let keep_from = history
        .tail
        .get(keep_start)
        .map_or(history.len, |(index, _)| *index);
    // Something to summarise: unread messages before the tail (the summary itself aside), or
    // tail messages not kept.
    let lower = history.lower_bound();
    let first = history
        .tail
        .first()
        .map_or(history.len, |(index, _)| *index);
    let summary_between = history
        .summary
        .as_ref()
        .is_some_and(|(at, _)| (lower..first).contains(at));
    let unread = first.saturating_sub(lower) > u64::from(summary_between);
    if keep_start == 0 && !unread {
        return None;
    }
    if keep_from <= lower {
        return None;
    }
    let summary_tokens = (room_for_history / 4).min(MAX_SUMMARY_TOKENS);
    if summary_tokens < 16 {
        return None;
    }
    Some(Compaction {
        keep_from,
        keep_start,
        summary_tokens: summary_tokens as u32,
    })
}

/// The transcripts to summarise, each small enough for one call of a model with `limit` tokens
/// of room for it: `previous` (the summary so far, if any) opens the first, and each later one
/// opens with the summary the call before it made (filled in by the caller).
pub(crate) fn transcript_chunks(older: &[StoredMessage], limit: u64) -> Vec<Vec<String>> {
    let mut chunks: Vec<Vec<String>> = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut used = 0u64;
    for message in older {
        let mut line = format!("{}: {}", message.role, message.content);
        let mut tokens = message.prompt_cost();
        if tokens > limit {
            // One message longer than a whole call: its start stands for it.
            line = tokenizer::truncate(&line, limit.saturating_sub(8) as u32);
            tokens = u64::from(tokenizer::count_text(&line)) + 4;
        }
        if used + tokens > limit && !current.is_empty() {
            chunks.push(std::mem::take(&mut current));
            used = 0;
        }
        used += tokens;
        current.push(line);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// The user message of a summarising call.
pub(crate) fn summary_request(previous: Option<&str>, lines: &[String]) -> String {
    let mut text = String::new();
    if let Some(previous) = previous.filter(|p| !p.is_empty()) {
        text.push_str("The summary so far:\n");
        text.push_str(previous);
        text.push_str("\n\nThe conversation since:\n");
    } else {
        text.push_str("The conversation:\n");
    }
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// The summary message stored in the history.
pub(crate) fn summary_message(text: &str, max_tokens: u32, covers: SummaryOf) -> StoredMessage {
    let body = tokenizer::truncate(
        text.trim(),
        max_tokens.saturating_sub(tokenizer::count_text(SUMMARY_PREFIX)),
    );
    let mut message = StoredMessage::counted(
        "system".into(),
        format!("{SUMMARY_PREFIX}{body}"),
        Utc::now(),
    );
    message.summary = Some(covers);
    message
}

/// The text of a stored summary, without its prefix.
pub(crate) fn summary_text(message: &StoredMessage) -> &str {
    message
        .content
        .strip_prefix(SUMMARY_PREFIX)
        .unwrap_or(&message.content)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> StoredMessage {
        StoredMessage::counted(role.into(), content.into(), Utc::now())
    }

    fn turns(n: usize) -> Vec<StoredMessage> {
        (0..n)
            .flat_map(|i| {
                [
                    msg("user", &format!("question number {i} about the report")),
                    msg("assistant", &format!("answer number {i}: fine")),
                ]
            })
            .collect()
    }

    #[test]
    fn the_latest_whole_turns_that_fit_are_sent() {
        let history = turns(20);
        let earlier: Vec<&StoredMessage> = history.iter().collect();
        let head = [msg("system", "Be brief.")];
        let new = [msg("user", "and now?")];
        let (prompt, start) = fit(&head, None, &earlier, true, &new, 200, 50, "message").unwrap();
        let total = tokenizer::count_prompt_known(
            prompt
                .iter()
                .map(|m| (m.role.as_str(), m.content.as_str(), m.tokens)),
        );
        assert!(total + 50 <= 200, "{total}");
        assert!(start > 0 && start < earlier.len());
        assert_eq!(prompt[0].content, "Be brief.");
        assert_eq!(prompt[1].role, "user", "a turn starts with its question");
        assert_eq!(prompt.last().unwrap().content, "and now?");
        // One token less room never sends more.
        let (smaller, _) = fit(&head, None, &earlier, true, &new, 199, 50, "message").unwrap();
        assert!(smaller.len() <= prompt.len());
        // A tail already cut by the store's read starts at a question too.
        let (cut, _) = fit(
            &head,
            None,
            &earlier[1..],
            false,
            &new,
            10_000,
            50,
            "message",
        )
        .unwrap();
        assert_eq!(cut[1].role, "user");
        assert_eq!(cut.len(), 1 + earlier.len() - 2 + 1);
    }

    #[test]
    fn a_message_that_cannot_fit_is_refused_naming_the_field() {
        let new = [msg("user", &"word ".repeat(300))];
        let error = fit(&[], None, &[], true, &new, 256, 16, "message").unwrap_err();
        assert_eq!(error.field.as_deref(), Some("message"));
        assert!(error.details.contains("256"), "{}", error.details);
    }

    #[test]
    fn a_compaction_keeps_recent_turns_and_summarises_the_rest() {
        let messages = turns(10);
        let history = History {
            head: Vec::new(),
            summary: None,
            tail: messages
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, m)| (i as u64, m))
                .collect(),
            complete: false,
            len: 20,
        };
        let plan = plan_compaction(&history, 120).expect("a plan");
        assert!(plan.keep_start > 0 && plan.keep_start < 20);
        assert_eq!(plan.keep_from, plan.keep_start as u64);
        assert_eq!(history.tail[plan.keep_start].1.role, "user");
        assert_eq!(plan.summary_tokens, 30);
    }

    #[test]
    fn transcripts_are_cut_to_fit_one_call() {
        let chunks = transcript_chunks(&turns(30), 100);
        assert!(chunks.len() > 1);
        for chunk in &chunks {
            let tokens: u32 = chunk.iter().map(|l| tokenizer::count_text(l) + 4).sum();
            assert!(tokens <= 100, "{tokens}");
        }
        let long = [msg("user", &"many words here ".repeat(200))];
        let chunks = transcript_chunks(&long, 50);
        assert_eq!(chunks.len(), 1);
        assert!(tokenizer::count_text(&chunks[0][0]) <= 50);
    }
}
