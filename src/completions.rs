//! `CompletionService`: stateless chat completions, the core of the REST
//! edge's OpenAI-compatible surface. The caller sends the whole conversation;
//! the same authentication, limits, providers and resilience apply as to a
//! session's send. Optionally the turn is also stored in a session of the
//! caller (see `CompleteRequest.session_id` in `completions.proto`).

use std::sync::Arc;

use chrono::Utc;
use tonic::{Request, Response, Status};

use crate::auth::Principal;
use crate::convert;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::front_door::{FrontDoor, Scope};
use crate::inference::{Answer, Inference, Streamed};
use crate::limits::{Admission, CapKind};
use crate::metadata::{mark_simulated, respond};
use crate::proto::completion_service_server::CompletionService;
use crate::proto::{self, ChatMessage};
use crate::providers::Sampling;
use crate::providers::{Model, ModelCatalog};
use crate::sessions::retention::Retention;
use crate::sessions::turn::new_session;
use crate::sessions::turn_lock::{TurnLock, TurnLocks};
use crate::sessions::validation::{sampling, validate_message, validate_session_id};
use crate::store::{CreateOutcome, Store, StoredMessage};
use crate::streaming::{EventStream, StreamedAnswer};

const SCOPE: Scope = Scope::Named("sessions");
const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];

pub(crate) struct Completions {
    door: Arc<FrontDoor>,
    completer: Arc<Completer>,
}

impl Completions {
    pub(crate) fn new(door: Arc<FrontDoor>, completer: Arc<Completer>) -> Self {
        Self { door, completer }
    }
}

/// What answering a completion takes: the model, and for one bound to a session, the
/// session's turn lock and the store.
pub(crate) struct Completer {
    inference: Arc<Inference>,
    locks: TurnLocks,
    store: Arc<dyn Store>,
    /// How long the sessions it creates are kept.
    retention: Retention,
}

impl Completer {
    pub(crate) fn new(
        inference: Arc<Inference>,
        locks: TurnLocks,
        store: Arc<dyn Store>,
        retention: Retention,
    ) -> Self {
        Self {
            inference,
            locks,
            store,
            retention,
        }
    }

    fn models(&self) -> &ModelCatalog {
        self.inference.models()
    }
}

/// A checked completion request.
struct Asked {
    model: Arc<Model>,
    /// The conversation as stored and sent: "developer" is sent as "system".
    messages: Vec<StoredMessage>,
    temperature: Option<f32>,
    max_tokens: Option<u32>,
    sampling: Sampling,
    session_id: Option<String>,
}

/// Where a bound completion stores its turn.
enum Binding {
    None,
    /// The caller's session, locked; `new` is what the turn appends before the reply.
    Existing {
        lock: TurnLock,
        new: Vec<StoredMessage>,
    },
    /// No such session yet: it is created with the conversation and the reply.
    Create(String),
}

fn check(models: &ModelCatalog, body: proto::CompleteRequest) -> ApiResult<Asked> {
    if body.model.trim().is_empty() {
        return Err(ApiError::invalid_field(
            "model",
            "Missing required field",
            format!(
                "The field 'model' is required; use one of: {}",
                models.ids().join(", ")
            ),
        ));
    }
    let model = models.resolve_loose(&body.model)?.clone();
    if body.messages.is_empty() {
        return Err(ApiError::invalid_field(
            "messages",
            "Missing required field",
            "The field 'messages' must hold at least one message, the last from the user",
        ));
    }
    for (i, message) in body.messages.iter().enumerate() {
        validate_message(message, &format!("messages[{i}]"), ROLES)?;
    }
    if body
        .messages
        .last()
        .is_some_and(|m| m.role != "user" && m.role != "tool")
    {
        return Err(ApiError::invalid_field(
            "messages",
            "Nothing to answer",
            "The last message must have the role 'user' (or 'tool', the results of the tool calls the model made): the model answers it",
        ));
    }
    let sampling = sampling(body.options.as_ref())?;
    let session_id = (!body.session_id.is_empty()).then_some(body.session_id);
    if let Some(id) = &session_id {
        validate_session_id(id, "OpenClaw-Session-Id")?;
    }
    let now = Utc::now();
    let messages = body
        .messages
        .into_iter()
        .map(|m: ChatMessage| {
            let role = if m.role == "developer" {
                "system".to_owned()
            } else {
                m.role.clone()
            };
            convert::stored(&m, role, now)
        })
        .collect();
    Ok(Asked {
        model,
        messages,
        temperature: body.options.as_ref().and_then(|o| o.temperature),
        max_tokens: body.options.as_ref().and_then(|o| o.max_tokens),
        sampling,
        session_id,
    })
}

/// What of `messages` a session holding `history` has not stored yet: the
/// rest when the history is a prefix of them, else the trailing messages
/// after the last assistant message.
fn unstored(history: &[StoredMessage], messages: &[StoredMessage]) -> Vec<StoredMessage> {
    let continues = history.len() <= messages.len()
        && history
            .iter()
            .zip(messages)
            .all(|(h, m)| h.role == m.role && h.content == m.content);
    let from = if continues {
        history.len()
    } else {
        messages
            .iter()
            .rposition(|m| m.role == "assistant")
            .map_or(0, |i| i + 1)
    };
    messages[from..].to_vec()
}

fn completion_id() -> String {
    format!("chatcmpl-{}", uuid::Uuid::new_v4().simple())
}

impl Completer {
    /// Locks the named session, or notes that it is to be created.
    async fn bind(&self, principal: &Principal, asked: &Asked) -> ApiResult<Binding> {
        let Some(id) = &asked.session_id else {
            return Ok(Binding::None);
        };
        // A bound completion stores its turn: refused while Redis is short of memory.
        self.inference.door().check_growth(principal)?;
        // Stored into a session: each message is held to the key's maxMessageBytes first.
        let quotas = self.inference.door().quotas(principal);
        for (i, message) in asked.messages.iter().enumerate() {
            crate::quotas::check_bytes(&quotas, message.bytes(), &format!("messages[{i}]"))?;
        }
        // The client sends the whole transcript; what of it is new is found by comparing it
        // with the whole stored history, so this read is not bounded by the window.
        let whole = crate::store::HistoryBudget::unbounded();
        match self.locks.lock(principal.owner_id(), id, &whole).await? {
            Some((lock, _, history)) => Ok(Binding::Existing {
                new: unstored(&history.messages(), &asked.messages),
                lock,
            }),
            None => Ok(Binding::Create(id.clone())),
        }
    }

    /// Gives the lock back after a failure before the turn was stored.
    async fn unbind(&self, binding: &Binding) {
        if let Binding::Existing { lock, .. } = binding {
            self.locks.release(lock).await;
        }
    }

    /// Stores the turn where the binding says; returns the session's id.
    async fn store(
        &self,
        principal: &Principal,
        asked: &Asked,
        binding: Binding,
        answer: &Answer,
    ) -> ApiResult<String> {
        match binding {
            Binding::None => Ok(String::new()),
            Binding::Existing { lock, mut new } => {
                new.push(answer.stored.clone());
                let caps = self.inference.door().quotas(principal).session_caps();
                let stored = self.locks.append(&lock, &new, None, caps).await;
                if stored.is_err() {
                    self.locks.release(&lock).await;
                }
                stored.map(|()| lock.id.clone())
            }
            Binding::Create(id) => {
                let mut session = new_session(
                    principal.owner_id(),
                    id.clone(),
                    &asked.model,
                    asked.temperature,
                    asked.max_tokens,
                    crate::store::ContextStrategy::Window,
                );
                session.idle_ttl_seconds = self.retention.idle_ttl_seconds(principal, None);
                let mut messages = asked.messages.clone();
                messages.push(answer.stored.clone());
                let caps = self.inference.door().quotas(principal).session_caps();
                match self.store.create_session(&session, &messages, caps).await? {
                    CreateOutcome::Created => Ok(id),
                    CreateOutcome::OverQuota(breach) => Err(crate::quotas::refusal(breach)),
                    CreateOutcome::Exists => Err(ApiError::new(
                        ErrorCode::Conflict,
                        "Session created concurrently",
                        format!(
                            "Another request created the session '{id}' at the same moment; send the request again to continue it"
                        ),
                    )),
                }
            }
        }
    }

    async fn answer(
        &self,
        principal: &Principal,
        asked: &Asked,
    ) -> ApiResult<(proto::CompleteResponse, Admission, Arc<Model>)> {
        let binding = self.bind(principal, asked).await?;
        let answered = async {
            self.inference
                .admit(
                    principal,
                    asked.model.clone(),
                    &asked.messages,
                    asked.temperature,
                    asked.max_tokens,
                    asked.sampling.clone(),
                )
                .await?
                .complete()
                .await
        }
        .await;
        let (answer, admission) = match answered {
            Ok(answered) => answered,
            Err(err) => {
                self.unbind(&binding).await;
                return Err(err);
            }
        };
        let session_id = self.store(principal, asked, binding, &answer).await?;
        let model = self
            .models()
            .resolve_model(&answer.reply.model)
            .cloned()
            .unwrap_or_else(|_| asked.model.clone());
        let response = proto::CompleteResponse {
            id: completion_id(),
            reply: Some(answer.reply),
            created_at: Some(convert::timestamp(Utc::now())),
            session_id,
        };
        Ok((response, admission, model))
    }
}

/// A completion answered as a stream: started, its pieces, then done (with the session it
/// was stored in, when it is bound to one).
struct StreamedCompletion {
    completer: Arc<Completer>,
    principal: Principal,
    asked: Asked,
    binding: Binding,
    id: String,
    created_at: Option<prost_types::Timestamp>,
}

fn complete_event(event: proto::complete_event::Event) -> proto::CompleteEvent {
    proto::CompleteEvent { event: Some(event) }
}

impl StreamedAnswer for StreamedCompletion {
    type Event = proto::CompleteEvent;

    async fn open(&mut self) -> ApiResult<Streamed> {
        let asked = &self.asked;
        let opened = async {
            self.completer
                .inference
                .admit(
                    &self.principal,
                    asked.model.clone(),
                    &asked.messages,
                    asked.temperature,
                    asked.max_tokens,
                    asked.sampling.clone(),
                )
                .await?
                .stream()
                .await
        }
        .await;
        if opened.is_err() {
            self.completer.unbind(&self.binding).await;
        }
        opened
    }

    fn started(&mut self, model: &Model) -> Option<proto::CompleteEvent> {
        self.id = completion_id();
        let created_at = convert::timestamp(Utc::now());
        self.created_at = Some(created_at);
        Some(complete_event(proto::complete_event::Event::Started(
            proto::CompletionStarted {
                id: self.id.clone(),
                model: model.id.clone(),
                created_at: Some(created_at),
            },
        )))
    }

    fn delta(delta: proto::Delta) -> proto::CompleteEvent {
        complete_event(proto::complete_event::Event::Delta(delta))
    }

    async fn finish(self, answer: ApiResult<Answer>) -> ApiResult<proto::CompleteEvent> {
        let Self {
            completer,
            principal,
            asked,
            binding,
            id,
            created_at,
        } = self;
        let answer = match answer {
            Ok(answer) => answer,
            Err(err) => {
                completer.unbind(&binding).await;
                return Err(err);
            }
        };
        let session_id = completer
            .store(&principal, &asked, binding, &answer)
            .await?;
        Ok(complete_event(proto::complete_event::Event::Done(
            proto::CompleteResponse {
                id,
                reply: Some(answer.reply),
                created_at,
                session_id,
            },
        )))
    }
}

#[tonic::async_trait]
impl CompletionService for Completions {
    async fn complete(
        &self,
        request: Request<proto::CompleteRequest>,
    ) -> Result<Response<proto::CompleteResponse>, Status> {
        let principal = self.door.authorize(&request, SCOPE).await?;
        let asked = check(self.completer.models(), request.into_inner())?;
        let (response, admission, model) = self.completer.answer(&principal, &asked).await?;
        Ok(mark_simulated(
            respond(response, &admission),
            model.provider.simulated(),
        ))
    }

    type StreamCompleteStream = EventStream<proto::CompleteEvent>;

    async fn stream_complete(
        &self,
        request: Request<proto::CompleteRequest>,
    ) -> Result<Response<Self::StreamCompleteStream>, Status> {
        let principal = self.door.authorize(&request, SCOPE).await?;
        let asked = check(self.completer.models(), request.into_inner())?;
        // Counted against the key's cap from before the model is asked until the caller
        // leaves or the stream ends.
        let lease = self.door.open_stream(&principal, CapKind::Streams).await?;
        let binding = self.completer.bind(&principal, &asked).await?;
        let streamed = StreamedCompletion {
            completer: self.completer.clone(),
            principal,
            asked,
            binding,
            id: String::new(),
            created_at: None,
        };
        crate::streaming::stream(streamed, lease).await
    }

    async fn list_models(
        &self,
        request: Request<proto::ListModelsRequest>,
    ) -> Result<Response<proto::ListModelsResponse>, Status> {
        let (_, admission) = self.door.enter(&request, SCOPE).await?;
        let catalog = self.completer.models();
        let default = catalog.default_model();
        let mut models: Vec<proto::ModelInfo> = catalog
            .models()
            .map(|m| proto::ModelInfo {
                id: m.id.clone(),
                provider: m.provider.name().to_string(),
                simulated: m.provider.simulated(),
                fallbacks: m.fallbacks.clone(),
                is_default: m.id == default,
            })
            .collect();
        models.sort_by_key(|m| !m.is_default);
        Ok(respond(proto::ListModelsResponse { models }, &admission))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> StoredMessage {
        StoredMessage {
            summary: None,
            role: role.into(),
            content: content.into(),
            created_at: Utc::now(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
            parts: Vec::new(),
            tokens: None,
        }
    }

    fn contents(messages: &[StoredMessage]) -> Vec<&str> {
        messages.iter().map(|m| m.content.as_str()).collect()
    }

    #[test]
    fn a_conversation_that_continues_the_history_appends_the_rest() {
        let history = vec![msg("user", "a"), msg("assistant", "A")];
        let sent = vec![msg("user", "a"), msg("assistant", "A"), msg("user", "b")];
        assert_eq!(contents(&unstored(&history, &sent)), ["b"]);
        assert_eq!(contents(&unstored(&[], &sent)), ["a", "A", "b"]);
    }

    #[test]
    fn a_conversation_that_differs_appends_its_last_turn() {
        let history = vec![msg("user", "x"), msg("assistant", "X")];
        let sent = vec![
            msg("system", "be brief"),
            msg("user", "a"),
            msg("assistant", "A"),
            msg("user", "b"),
            msg("user", "c"),
        ];
        assert_eq!(contents(&unstored(&history, &sent)), ["b", "c"]);
        let no_assistant = vec![msg("system", "s"), msg("user", "q")];
        assert_eq!(contents(&unstored(&history, &no_assistant)), ["s", "q"]);
    }
}
