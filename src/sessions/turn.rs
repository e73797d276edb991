//! One turn of a session: the session's history (read under its turn lock), the caller's
//! admission, the model's answer when the turn ends with a user message, and the turn stored
//! whole under the lock's fence (with the send's result, for a keyed send), or nothing.

use std::sync::Arc;

use chrono::Utc;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::front_door::FrontDoor;
use crate::idempotency::SendKey;
use crate::inference::{Inference, Streamed};
use crate::limits::{Admission, Charge};
use crate::proto::{self, ChatMessage};
use crate::providers::Model;
use crate::providers::Sampling;
use crate::quotas::{Quotas, check_chat_message_bytes};
use crate::store::{
    CapBreach, ContextStrategy, History, HistoryBudget, SessionCap, SessionRecord, Store,
    StoredMessage, SummaryOf,
};
use crate::tokenizer;

use super::context::{self, Compaction};
use super::turn_lock::{TurnLock, TurnLocks};
use super::validation::{validate_message, validate_options, validate_session_id};

/// What running a session's turns takes.
pub(crate) struct Turns {
    door: Arc<FrontDoor>,
    inference: Arc<Inference>,
    store: Arc<dyn Store>,
    pub(super) locks: TurnLocks,
    /// Every model's context window, for the turn's read of its history.
    windows: Arc<Vec<(String, u32)>>,
}

/// A turn of an existing session, its lock held: what of the history it can send, and what
/// the turn adds.
pub(super) struct Turn {
    pub(super) lock: TurnLock,
    pub(super) session: SessionRecord,
    pub(super) history: History,
    pub(super) new: Vec<StoredMessage>,
}

/// Whether the turn's new messages may ask for an answer: they end with a user message, or with
/// the result of one of the model's tool calls.
fn awaits_answer(messages: &[StoredMessage]) -> bool {
    messages
        .last()
        .is_some_and(|m| m.role == "user" || m.role == "tool")
}

/// Whether the model is asked to answer `transcript`: it ends with a user message, or with tool
/// results that answer every call of the last assistant message (results of parallel calls
/// sent one per send are stored until the last one comes).
pub(super) fn asks_model(transcript: &[StoredMessage]) -> bool {
    asks_model_after(std::iter::empty(), transcript)
}

/// [`asks_model`] of `earlier` followed by `new`, without joining them.
fn asks_model_after<'a>(
    earlier: impl DoubleEndedIterator<Item = &'a StoredMessage>,
    new: &'a [StoredMessage],
) -> bool {
    match new.last() {
        Some(last) if last.role == "user" => true,
        Some(last) if last.role == "tool" => {
            let newest_first = new.iter().rev().chain(earlier.rev());
            let mut answered = std::collections::HashSet::new();
            for message in newest_first {
                match message.role.as_str() {
                    "assistant" => {
                        return message
                            .tool_calls
                            .iter()
                            .all(|call| answered.contains(call.id.as_str()));
                    }
                    "tool" => {
                        answered.extend(message.tool_call_id.as_deref());
                    }
                    _ => {}
                }
            }
            true
        }
        _ => false,
    }
}

impl Turn {
    /// Whether the turn's messages, after the history read, ask the model ([`asks_model`]).
    pub(super) fn asks_model(&self) -> bool {
        asks_model_after(
            self.history
                .head
                .iter()
                .chain(self.history.tail.iter().map(|(_, m)| m)),
            &self.new,
        )
    }
}

/// What a send found before asking the model.
// One per send, matched at once: boxing the turn would buy nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum PreparedSend {
    /// A repeat of a recorded send: its recorded answer.
    Replay(proto::SendMessageResponse),
    /// A new turn, with the session's lock held.
    Turn(Turn),
}

impl Turns {
    pub(crate) fn new(
        door: Arc<FrontDoor>,
        inference: Arc<Inference>,
        store: Arc<dyn Store>,
        locks: TurnLocks,
    ) -> Self {
        let windows = inference
            .models()
            .models()
            .map(|m| (m.id.clone(), m.context_window))
            .collect();
        Self {
            door,
            inference,
            store,
            locks,
            windows: Arc::new(windows),
        }
    }

    /// The quotas on what `principal` keeps stored.
    pub(crate) fn quotas(&self, principal: &Principal) -> Quotas {
        self.door.quotas(principal)
    }

    pub(super) fn models(&self) -> &crate::providers::ModelCatalog {
        self.inference.models()
    }

    /// The completion a turn reserves when neither it nor its session names maxTokens.
    pub(super) fn default_max_tokens(&self) -> u32 {
        self.inference.default_max_tokens()
    }

    /// How much history a turn adding `new` (with the request's `max_tokens`) can send.
    pub(super) fn budget(&self, new: &[StoredMessage], max_tokens: Option<u32>) -> HistoryBudget {
        let fixed = new
            .iter()
            .map(StoredMessage::prompt_cost)
            .sum::<u64>()
            .saturating_add(u64::from(tokenizer::REPLY_PRIMING));
        HistoryBudget {
            windows: self.windows.clone(),
            default_window: crate::providers::DEFAULT_CONTEXT_WINDOW,
            fixed: u32::try_from(fixed).unwrap_or(u32::MAX),
            max_tokens,
            default_max_tokens: self.default_max_tokens(),
        }
    }

    /// Asks the model with `prompt` when it awaits an answer ([`asks_model`]), appending its answer
    /// to `new`; otherwise admits a plain request.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn answer(
        &self,
        principal: &Principal,
        model: &Arc<Model>,
        prompt: &[StoredMessage],
        new: &mut Vec<StoredMessage>,
        temperature: Option<f32>,
        max_tokens: Option<u32>,
        sampling: Sampling,
    ) -> ApiResult<(Option<proto::Reply>, Admission)> {
        // Everything answered here is stored: refused while Redis is short of memory, before
        // the model is asked.
        self.door.check_growth(principal)?;
        if !asks_model(prompt) {
            return Ok((None, self.door.admit(principal, Charge::default()).await?));
        }
        let (answer, admission) = self
            .inference
            .admit(
                principal,
                model.clone(),
                prompt.iter(),
                temperature,
                max_tokens,
                sampling,
            )
            .await?
            .complete()
            .await?;
        new.push(answer.stored);
        Ok((Some(answer.reply), admission))
    }

    /// What a locked turn sends: the history that fits the model's window with `new`, after a
    /// compaction when the session summarises and its history no longer fits.
    #[allow(clippy::too_many_arguments)]
    async fn prompt(
        &self,
        principal: &Principal,
        model: &Arc<Model>,
        lock: &TurnLock,
        session: &SessionRecord,
        history: &mut History,
        new: &[StoredMessage],
        max_tokens: Option<u32>,
        field: &str,
    ) -> ApiResult<Vec<StoredMessage>> {
        let window = model.context_window;
        let reserve = max_tokens.unwrap_or(self.default_max_tokens());
        if session.context_strategy == ContextStrategy::Summarize {
            let cost = |messages: &mut dyn Iterator<Item = &StoredMessage>| -> u64 {
                messages.map(StoredMessage::prompt_cost).sum()
            };
            let room = context::room(window, reserve);
            let beside = cost(&mut history.head.iter()) + cost(&mut new.iter());
            let summary = cost(&mut history.summary.iter().map(|(_, m)| m));
            let tail = cost(&mut history.tail.iter().map(|(_, m)| m));
            let fits = beside + summary + tail <= room;
            if (!history.complete || !fits)
                && beside <= room
                && let Some(plan) = context::plan_compaction(history, room - beside)
            {
                self.compact(principal, model, lock, history, plan).await?;
            }
        }
        let earlier: Vec<&StoredMessage> = history.tail.iter().map(|(_, m)| m).collect();
        let summary = history.summary.as_ref().map(|(_, m)| m);
        context::fit(
            &history.head,
            summary,
            &earlier,
            history.complete,
            new,
            window,
            reserve,
            field,
        )
        .map(|(prompt, _)| prompt)
    }

    /// Summarises the history's older turns (and its previous summary) with the model, stores
    /// the summary under the turn's lock, and leaves `history` as the next prompt reads it.
    async fn compact(
        &self,
        principal: &Principal,
        model: &Arc<Model>,
        lock: &TurnLock,
        history: &mut History,
        plan: Compaction,
    ) -> ApiResult<()> {
        let lower = history.lower_bound();
        let summary_at = history.summary.as_ref().map(|(index, _)| *index);
        let first_read = history
            .tail
            .first()
            .map_or(history.len, |(index, _)| *index);
        // What the bounded read left out: read now, once, for this compaction only.
        let mut older = Vec::new();
        let mut offset = lower;
        while offset < first_read.min(plan.keep_from) {
            let limit = (first_read.min(plan.keep_from) - offset).min(1000) as u32;
            let page = self
                .store
                .list_messages(&lock.owner, &lock.id, offset, limit)
                .await?;
            if page.items.is_empty() {
                break;
            }
            for (i, message) in page.items.into_iter().enumerate() {
                if Some(offset + i as u64) != summary_at {
                    older.push(message);
                }
            }
            offset += u64::from(limit);
        }
        older.extend(
            history.tail[..plan.keep_start]
                .iter()
                .map(|(_, m)| m.clone()),
        );
        if older.is_empty() {
            return Ok(());
        }
        let instruction = StoredMessage::counted(
            "system".into(),
            context::SUMMARY_INSTRUCTION.into(),
            Utc::now(),
        );
        let limit = context::room(model.context_window, plan.summary_tokens)
            .saturating_sub(instruction.prompt_cost())
            .saturating_sub(u64::from(plan.summary_tokens) + 48);
        let mut text = history
            .summary
            .as_ref()
            .map(|(_, m)| context::summary_text(m).to_string());
        for lines in context::transcript_chunks(&older, limit.max(16)) {
            let request = [
                instruction.clone(),
                StoredMessage::counted(
                    "user".into(),
                    context::summary_request(text.as_deref(), &lines),
                    Utc::now(),
                ),
            ];
            let (answer, _) = self
                .inference
                .admit(
                    principal,
                    model.clone(),
                    request.iter(),
                    None,
                    Some(plan.summary_tokens),
                    Sampling::default(),
                )
                .await?
                .complete()
                .await?;
            text = Some(tokenizer::truncate(
                &answer.stored.content,
                plan.summary_tokens,
            ));
        }
        let Some(text) = text else { return Ok(()) };
        let summary = context::summary_message(
            &text,
            plan.summary_tokens,
            SummaryOf {
                from: history.head.len() as u64,
                to: plan.keep_from,
            },
        );
        self.locks.append_summary(lock, &summary).await?;
        metrics::counter!("openclaw_session_compactions_total", "model" => model.id.clone())
            .increment(1);
        let index = history.len;
        history.len += 1;
        history.summary = Some((index, summary));
        history.tail.drain(..plan.keep_start);
        history.complete = true;
        Ok(())
    }

    /// Runs a locked turn to its end: the model's answer (when the turn ends with a user
    /// message), then the turn's messages and the reply stored together, with the send's
    /// result under `key`, releasing the lock. On failure the lock is given back.
    /// `field` names the request's new message(s) in a refusal.
    pub(super) async fn run(
        &self,
        principal: &Principal,
        turn: &mut Turn,
        options: Option<proto::GenerationOptions>,
        key: Option<&SendKey>,
        field: &str,
    ) -> ApiResult<(Option<proto::Reply>, Admission)> {
        let Turn {
            lock,
            session,
            history,
            new,
        } = turn;
        let outcome = async {
            let model = self.models().resolve_model(&session.model)?.clone();
            let (temperature, max_tokens, sampling) = merge_options(session, options.as_ref())?;
            let prompt = if awaits_answer(new) {
                // The tool definitions take room in the window beside the completion's.
                let reserve = max_tokens
                    .unwrap_or(self.default_max_tokens())
                    .saturating_add(sampling.tool_tokens());
                self.prompt(
                    principal,
                    &model,
                    lock,
                    session,
                    history,
                    new,
                    Some(reserve),
                    field,
                )
                .await?
            } else {
                Vec::new()
            };
            let (reply, admission) = self
                .answer(
                    principal,
                    &model,
                    &prompt,
                    new,
                    temperature,
                    max_tokens,
                    sampling,
                )
                .await?;
            let record = key.map(|key| {
                let body = key.record(&proto::SendMessageResponse {
                    session_id: lock.id.clone(),
                    reply: reply.clone(),
                });
                (key, body)
            });
            self.locks
                .append(
                    lock,
                    new,
                    record.as_ref().map(|(key, body)| (*key, body.as_slice())),
                    self.quotas(principal).session_caps(),
                )
                .await?;
            Ok((reply, admission))
        }
        .await;
        if outcome.is_err() {
            self.locks.release(lock).await;
        }
        outcome
    }

    /// Opens the model's streamed answer to a locked turn (giving the lock back when that
    /// fails).
    pub(super) async fn open_stream(
        &self,
        principal: &Principal,
        turn: &mut Turn,
        options: Option<&proto::GenerationOptions>,
    ) -> ApiResult<Streamed> {
        let opened = async {
            self.door.check_growth(principal)?;
            let model = self.models().resolve_model(&turn.session.model)?.clone();
            let (temperature, max_tokens, sampling) = merge_options(&turn.session, options)?;
            // The tool definitions take room in the window beside the completion's.
            let reserve = max_tokens
                .unwrap_or(self.default_max_tokens())
                .saturating_add(sampling.tool_tokens());
            let prompt = self
                .prompt(
                    principal,
                    &model,
                    &turn.lock,
                    &turn.session,
                    &mut turn.history,
                    &turn.new,
                    Some(reserve),
                    "message",
                )
                .await?;
            self.inference
                .admit(
                    principal,
                    model,
                    prompt.iter(),
                    temperature,
                    max_tokens,
                    sampling,
                )
                .await?
                .stream()
                .await
        }
        .await;
        if opened.is_err() {
            self.locks.release(&turn.lock).await;
        }
        opened
    }

    /// The recorded answer to a repeat of the keyed send, if there is one.
    async fn recorded(
        &self,
        owner: &str,
        session_id: &str,
        key: Option<&SendKey>,
    ) -> ApiResult<Option<proto::SendMessageResponse>> {
        let Some(key) = key else { return Ok(None) };
        match self
            .store
            .recorded_result(owner, session_id, &key.request_id)
            .await?
        {
            Some(record) => key.replay(&record).map(Some),
            None => Ok(None),
        }
    }

    /// Everything a send does before the model is asked: checks the request,
    /// answers a repeat from its record, and takes the session's turn lock.
    pub(super) async fn prepare_send(
        &self,
        principal: &Principal,
        body: &proto::SendMessageRequest,
        key: Option<&SendKey>,
    ) -> ApiResult<PreparedSend> {
        let owner = principal.owner_id();
        validate_session_id(&body.session_id, "sessionId")?;
        let Some(message) = body.message.as_ref() else {
            return Err(ApiError::invalid_field(
                "message",
                "Missing required field",
                "The field 'message' is required: {\"message\": {\"role\": \"user\", \"content\": \"...\"}}",
            ));
        };
        // The next user message, or the result of one of the model's tool calls.
        validate_message(message, "message", &["user", "tool"])?;
        check_chat_message_bytes(&self.quotas(principal), message, "message")?;
        validate_options(&body.options)?;
        let new = to_stored(std::slice::from_ref(message));
        let budget = self.budget(&new, body.options.as_ref().and_then(|o| o.max_tokens));
        let Some((lock, session, history)) =
            self.locks.lock(owner, &body.session_id, &budget).await?
        else {
            return Err(ApiError::not_found("Session", &body.session_id));
        };
        // Looked up under the lock only: a repeat that raced the first waited for
        // the lock, and an ordinary send pays no extra round trip before it.
        match self.recorded(owner, &body.session_id, key).await {
            Ok(Some(done)) => {
                self.locks.release(&lock).await;
                return Ok(PreparedSend::Replay(done));
            }
            Ok(None) => {}
            Err(err) => {
                self.locks.release(&lock).await;
                return Err(err);
            }
        }
        // A session already too full for this message and its reply is refused before the
        // model is asked (the store checks again as it appends, with the bytes too).
        let limit = self.quotas(principal).max_messages_per_session;
        let used = u64::from(session.message_count);
        if used + 2 > limit {
            self.locks.release(&lock).await;
            return Err(crate::quotas::refusal(CapBreach {
                cap: SessionCap::Messages,
                limit,
                used,
            }));
        }
        Ok(PreparedSend::Turn(Turn {
            lock,
            session,
            history,
            new,
        }))
    }
}

/// A new session's record, before its first turn is stored.
pub(crate) fn new_session(
    owner: &str,
    id: String,
    model: &Model,
    temperature: Option<f32>,
    max_tokens: Option<u32>,
    context_strategy: ContextStrategy,
) -> SessionRecord {
    let now = Utc::now();
    SessionRecord {
        owner: owner.to_string(),
        id,
        model: model.id.clone(),
        status: "active".into(),
        created_at: now,
        updated_at: now,
        temperature,
        max_tokens,
        message_count: 0,
        incarnation: uuid::Uuid::new_v4().simple().to_string(),
        // Set by the create from its owner's quotas and request.
        idle_ttl_seconds: 0,
        expires_at: None,
        context_strategy,
        summary_at: None,
        sampling: None,
    }
}

/// The turn's options over the session's own.
fn merge_options(
    session: &SessionRecord,
    options: Option<&proto::GenerationOptions>,
) -> ApiResult<(Option<f32>, Option<u32>, Sampling)> {
    let own = super::validation::sampling(options)?;
    Ok((
        options.and_then(|o| o.temperature).or(session.temperature),
        options.and_then(|o| o.max_tokens).or(session.max_tokens),
        session.sampling.clone().unwrap_or_default().overlaid(&own),
    ))
}

pub(super) fn to_stored(messages: &[ChatMessage]) -> Vec<StoredMessage> {
    let now = Utc::now();
    messages
        .iter()
        .map(|m| crate::convert::stored(m, m.role.clone(), now))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ToolCall;

    fn message(role: &str) -> StoredMessage {
        StoredMessage::counted(role.into(), "text".into(), Utc::now())
    }

    fn calls(ids: &[&str]) -> StoredMessage {
        let calls = ids
            .iter()
            .map(|id| ToolCall {
                id: (*id).into(),
                name: "f".into(),
                arguments: "{}".into(),
            })
            .collect();
        StoredMessage::agent(
            "assistant".into(),
            String::new(),
            calls,
            None,
            None,
            Utc::now(),
        )
    }

    fn result(id: &str) -> StoredMessage {
        StoredMessage::agent(
            "tool".into(),
            "r".into(),
            Vec::new(),
            Some(id.into()),
            None,
            Utc::now(),
        )
    }

    #[test]
    fn the_model_is_asked_once_every_call_has_its_result() {
        assert!(asks_model(&[message("user")]));
        assert!(!asks_model(&[message("user"), message("assistant")]));
        assert!(!asks_model(&[]));
        let pending = [message("user"), calls(&["a", "b"]), result("a")];
        assert!(!asks_model(&pending));
        let answered = [
            message("user"),
            calls(&["a", "b"]),
            result("a"),
            result("b"),
        ];
        assert!(asks_model(&answered));
        // A result of a call the window no longer holds: the model is asked.
        assert!(asks_model(&[result("z")]));
    }
}
