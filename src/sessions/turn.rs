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
use crate::quotas::{Quotas, check_message_bytes};
use crate::store::{CapBreach, SessionCap, SessionRecord, Store, StoredMessage};

use super::turn_lock::{TurnLock, TurnLocks};
use super::validation::{validate_message, validate_options, validate_session_id};

/// What running a session's turns takes.
pub(crate) struct Turns {
    door: Arc<FrontDoor>,
    inference: Arc<Inference>,
    store: Arc<dyn Store>,
    pub(super) locks: TurnLocks,
}

/// A turn of an existing session, its lock held: the history so far and what the turn adds.
pub(super) struct Turn {
    pub(super) lock: TurnLock,
    pub(super) session: SessionRecord,
    pub(super) history: Vec<StoredMessage>,
    pub(super) new: Vec<StoredMessage>,
}

/// What a send found before asking the model.
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
        Self {
            door,
            inference,
            store,
            locks,
        }
    }

    /// The quotas on what `principal` keeps stored.
    pub(crate) fn quotas(&self, principal: &Principal) -> Quotas {
        self.door.quotas(principal)
    }

    pub(super) fn models(&self) -> &crate::providers::ModelCatalog {
        self.inference.models()
    }

    /// Asks the model when `new` ends with a user message, appending its answer to `new`;
    /// otherwise admits a plain request.
    pub(super) async fn answer(
        &self,
        principal: &Principal,
        model: &Arc<Model>,
        history: &[StoredMessage],
        new: &mut Vec<StoredMessage>,
        temperature: Option<f32>,
        max_tokens: Option<u32>,
    ) -> ApiResult<(Option<proto::Reply>, Admission)> {
        // Everything answered here is stored: refused while Redis is short of memory, before
        // the model is asked.
        self.door.check_growth(principal)?;
        if new.last().is_none_or(|m| m.role != "user") {
            return Ok((None, self.door.admit(principal, Charge::default()).await?));
        }
        let (answer, admission) = self
            .inference
            .admit(
                principal,
                model.clone(),
                history.iter().chain(new.iter()),
                temperature,
                max_tokens,
            )
            .await?
            .complete()
            .await?;
        new.push(answer.stored);
        Ok((Some(answer.reply), admission))
    }

    /// Runs a locked turn to its end: the model's answer (when the turn ends with a user
    /// message), then the turn's messages and the reply stored together, with the send's
    /// result under `key`, releasing the lock. On failure the lock is given back.
    pub(super) async fn run(
        &self,
        principal: &Principal,
        turn: &mut Turn,
        options: Option<proto::GenerationOptions>,
        key: Option<&SendKey>,
    ) -> ApiResult<(Option<proto::Reply>, Admission)> {
        let Turn {
            lock,
            session,
            history,
            new,
        } = turn;
        let outcome = async {
            let model = self.models().resolve_model(&session.model)?.clone();
            let (temperature, max_tokens) = merge_options(session, options.as_ref());
            let (reply, admission) = self
                .answer(principal, &model, history, new, temperature, max_tokens)
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
        turn: &Turn,
        options: Option<&proto::GenerationOptions>,
    ) -> ApiResult<Streamed> {
        let opened = async {
            self.door.check_growth(principal)?;
            let model = self.models().resolve_model(&turn.session.model)?.clone();
            let (temperature, max_tokens) = merge_options(&turn.session, options);
            self.inference
                .admit(
                    principal,
                    model,
                    turn.history.iter().chain(turn.new.iter()),
                    temperature,
                    max_tokens,
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
        validate_message(message, "message", &["user"])?;
        check_message_bytes(&self.quotas(principal), &message.content, "message")?;
        validate_options(&body.options)?;
        let Some((lock, session, history)) = self.locks.lock(owner, &body.session_id).await? else {
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
            new: to_stored(std::slice::from_ref(message)),
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
    }
}

/// The turn's options over the session's own.
fn merge_options(
    session: &SessionRecord,
    options: Option<&proto::GenerationOptions>,
) -> (Option<f32>, Option<u32>) {
    (
        options.and_then(|o| o.temperature).or(session.temperature),
        options.and_then(|o| o.max_tokens).or(session.max_tokens),
    )
}

pub(super) fn to_stored(messages: &[ChatMessage]) -> Vec<StoredMessage> {
    let now = Utc::now();
    messages
        .iter()
        .map(|m| StoredMessage::counted(m.role.clone(), m.content.clone(), now))
        .collect()
}
