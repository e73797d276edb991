//! `SessionService`: conversations with a model. A turn (the user's
//! message(s) and the model's reply) is stored whole or not at all, and the
//! turns of one session are taken one at a time, on every replica, by a
//! leased lock in the store.
//!
//! - [`validation`]: the request checks (also used by completions and cron payloads).
//! - [`turn_lock`]: the lock's lease, its release, and the write fenced by it.
//! - [`turn`]: one turn: history, admission, the model's answer, the fenced write.
//! - [`streaming`]: a turn answered as a stream.
//! - [`retention`]: how long a session is kept, and the sweep of expired ones.

mod context;
pub(crate) mod retention;
mod streaming;
pub(crate) mod turn;
pub(crate) mod turn_lock;
pub(crate) mod validation;

use std::sync::Arc;

use chrono::Utc;
use tonic::{Request, Response, Status};

use crate::auth::Principal;
use crate::convert;
use crate::error::{ApiError, ErrorCode};
use crate::front_door::{FrontDoor, Scope};
use crate::idempotency::{self, SendKey};
use crate::limits::{Admission, CapKind, Leased};
use crate::metadata::{mark_simulated, respond};
use crate::proto;
use crate::proto::session_service_server::SessionService;
use crate::quotas::check_chat_message_bytes;
use crate::store::{ContextStrategy, CreateOutcome, Store, first_messages_breach};
use crate::streaming::EventStream;

use self::retention::{CronRunSession, Retention};
use self::streaming::{StreamedTurn, delta_event, done_event};
use self::turn::{PreparedSend, Turns, new_session, to_stored};
use self::validation::{
    ROLES, page_size, parse_page_token, validate_message, validate_options, validate_session_id,
};

pub(crate) struct Sessions {
    door: Arc<FrontDoor>,
    store: Arc<dyn Store>,
    turns: Arc<Turns>,
    retention: Retention,
}

impl Sessions {
    pub(crate) fn new(
        door: Arc<FrontDoor>,
        store: Arc<dyn Store>,
        turns: Arc<Turns>,
        retention: Retention,
    ) -> Self {
        Self {
            door,
            store,
            turns,
            retention,
        }
    }

    /// The front door its calls pass: a scheduled systemEvent is admitted through it too.
    pub(crate) fn door(&self) -> &FrontDoor {
        &self.door
    }
}

fn new_session_id() -> String {
    format!("sess_{}", uuid::Uuid::new_v4().simple())
}

/// A recorded answer, marked as a replay. It carries no rate-limit figures:
/// a replay is not counted against the limits.
fn replayed<T>(message: T, reply: Option<&proto::Reply>) -> Response<T> {
    let mut response = Response::new(message);
    response.metadata_mut().insert(
        idempotency::REPLAYED,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    mark_simulated(response, reply.is_some_and(|r| r.simulated))
}

fn reply_response<T>(
    message: T,
    reply: Option<&proto::Reply>,
    admission: &Admission,
) -> Response<T> {
    mark_simulated(
        respond(message, admission),
        reply.is_some_and(|r| r.simulated),
    )
}

const SESSIONS: Scope = Scope::Named("sessions");

/// Set (in-process only: request extensions never come from the wire) by a
/// scheduled agentTurn, which calls `create_session` for the job's owner
/// without the owner's secret: the turn is billed and limited as that key's.
#[derive(Clone)]
pub(crate) struct OnBehalfOf(pub(crate) Principal);

#[tonic::async_trait]
impl SessionService for Sessions {
    async fn create_session(
        &self,
        request: Request<proto::CreateSessionRequest>,
    ) -> Result<Response<proto::CreateSessionResponse>, Status> {
        let principal = match request.extensions().get::<OnBehalfOf>() {
            Some(OnBehalfOf(principal)) => principal.clone(),
            None => self.door.authorize(&request, SESSIONS).await?,
        };
        let cron_run = request.extensions().get::<CronRunSession>().copied();
        let owner = principal.owner_id().to_string();
        let body = request.into_inner();
        let models = self.turns.models();
        let model_id = if body.model.is_empty() {
            models.default_model()
        } else {
            body.model.as_str()
        };
        let model = models.resolve_model(model_id)?.clone();
        let quotas = self.turns.quotas(&principal);
        for (i, message) in body.messages.iter().enumerate() {
            validate_message(message, &format!("messages[{i}]"), ROLES)?;
            check_chat_message_bytes(&quotas, message, &format!("messages[{i}]"))?;
        }
        validate_options(&body.options)?;
        let expires_at = retention::parse_expires_at(body.expires_at.as_deref(), Utc::now())?;
        let requested_id = body
            .context
            .as_ref()
            .map(|c| c.session_id.as_str())
            .unwrap_or("");
        if !requested_id.is_empty() {
            validate_session_id(requested_id, "context.sessionId")?;
        }
        let requested_strategy = body
            .context
            .as_ref()
            .map(|c| c.strategy.as_str())
            .filter(|s| !s.is_empty());
        let strategy = match requested_strategy {
            None => ContextStrategy::default(),
            Some(name) => ContextStrategy::parse(name).ok_or_else(|| {
                ApiError::invalid_field(
                    "context.strategy",
                    "Unknown context strategy",
                    format!(
                        "The field 'context.strategy' is '{name}', which is not a context strategy; use one of: {} (absent: window)",
                        ContextStrategy::NAMES.join(", ")
                    ),
                )
            })?,
        };
        let new = to_stored(&body.messages);

        // Continue a session the caller already owns.
        let budget = self
            .turns
            .budget(&new, body.options.as_ref().and_then(|o| o.max_tokens));
        if !requested_id.is_empty()
            && let Some((lock, session, history)) =
                self.turns.locks.lock(&owner, requested_id, &budget).await?
        {
            if let Err(error) = retention::check_unchanged(&session, expires_at) {
                self.turns.locks.release(&lock).await;
                return Err(error.into());
            }
            if requested_strategy.is_some() && session.context_strategy != strategy {
                self.turns.locks.release(&lock).await;
                return Err(ApiError::invalid_field(
                    "context.strategy",
                    "Context strategy cannot change",
                    format!(
                        "The session '{requested_id}' uses the '{}' strategy, chosen when it was created; omit context.strategy to continue it, or create a new session",
                        session.context_strategy.as_str()
                    ),
                )
                .into());
            }
            let mut turn = turn::Turn {
                lock,
                session,
                history,
                new,
            };
            let (reply, admission) = self
                .turns
                .run(&principal, &mut turn, body.options, None, "messages")
                .await?;
            let mut record = turn.session;
            // Stored just now: its expiry moved with it.
            record.updated_at = Utc::now();
            // What was stored before, a summary this turn made, the turn itself.
            record.message_count = u32::try_from(turn.history.len).unwrap_or(u32::MAX)
                + body.messages.len() as u32
                + u32::from(reply.is_some());
            let message = proto::CreateSessionResponse {
                session: Some(convert::session(&record)),
                reply,
                created: false,
            };
            let reply = message.reply.clone();
            return Ok(reply_response(message, reply.as_ref(), &admission));
        }

        let id = if requested_id.is_empty() {
            new_session_id()
        } else {
            requested_id.to_string()
        };
        let options = body.options.as_ref();
        let mut session = new_session(
            &owner,
            id,
            &model,
            options.and_then(|o| o.temperature),
            options.and_then(|o| o.max_tokens),
            strategy,
        );
        session.idle_ttl_seconds = self.retention.idle_ttl_seconds(&principal, cron_run);
        session.expires_at = expires_at;
        let sampling = validation::sampling(options)?;
        session.sampling = (!sampling.is_empty()).then(|| sampling.clone());
        let mut stored = new;
        // The first messages alone over the session's quotas: refused before the model is
        // asked (the store checks again, with the reply).
        if let Some(breach) = first_messages_breach(&stored, quotas.session_caps()) {
            return Err(crate::quotas::refusal(breach).into());
        }
        // The first turn sends what of the given messages fits the window (whatever the
        // strategy: nothing is stored to summarise yet).
        let prompt = if turn::asks_model(&stored) {
            context::fit_initial(
                &stored,
                model.context_window,
                session
                    .max_tokens
                    .unwrap_or(self.turns.default_max_tokens())
                    .saturating_add(sampling.tool_tokens()),
            )?
        } else {
            Vec::new()
        };
        let (reply, admission) = self
            .turns
            .answer(
                &principal,
                &model,
                &prompt,
                &mut stored,
                session.temperature,
                session.max_tokens,
                sampling,
            )
            .await?;
        session.updated_at = Utc::now();
        let outcome = self
            .store
            .create_session(&session, &stored, quotas.session_caps())
            .await
            .map_err(ApiError::from)?;
        if let CreateOutcome::OverQuota(breach) = outcome {
            return Err(crate::quotas::refusal(breach).into());
        }
        if outcome == CreateOutcome::Exists {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "Session created concurrently",
                format!(
                    "Another request created the session '{}' at the same moment; send your messages to it with POST /api/v1/sessions/{}/messages",
                    session.id, session.id
                ),
            )
            .into());
        }
        session.message_count = stored.len() as u32;
        let message = proto::CreateSessionResponse {
            session: Some(convert::session(&session)),
            reply: reply.clone(),
            created: true,
        };
        Ok(reply_response(message, reply.as_ref(), &admission))
    }

    async fn send_message(
        &self,
        request: Request<proto::SendMessageRequest>,
    ) -> Result<Response<proto::SendMessageResponse>, Status> {
        let principal = self.door.authorize(&request, SESSIONS).await?;
        let key = SendKey::of(&request, request.get_ref());
        let body = request.into_inner();
        let turn = match self
            .turns
            .prepare_send(&principal, &body, key.as_ref())
            .await?
        {
            PreparedSend::Replay(done) => {
                let reply = done.reply.clone();
                return Ok(replayed(done, reply.as_ref()));
            }
            PreparedSend::Turn(turn) => turn,
        };
        // Once admitted and locked, the turn runs to completion in its own task:
        // a client that disconnects (or times out) cancels nothing half way, the
        // lock is released, and the stored turn can be replayed by its request id.
        let turns = self.turns.clone();
        let options = body.options;
        let running = tokio::spawn(crate::observe::carrying_request_id(async move {
            let mut turn = turn;
            turns
                .run(&principal, &mut turn, options, key.as_ref(), "message")
                .await
        }));
        let (reply, admission) = running.await.map_err(|err| {
            tracing::error!(error = %err, "a turn's task failed");
            ApiError::internal()
        })??;
        let out = proto::SendMessageResponse {
            session_id: body.session_id,
            reply: reply.clone(),
        };
        Ok(reply_response(out, reply.as_ref(), &admission))
    }

    type StreamMessageStream = EventStream<proto::StreamEvent>;

    async fn stream_message(
        &self,
        request: Request<proto::SendMessageRequest>,
    ) -> Result<Response<Self::StreamMessageStream>, Status> {
        let principal = self.door.authorize(&request, SESSIONS).await?;
        let key = SendKey::of(&request, request.get_ref());
        let body = request.into_inner();
        let turn = match self
            .turns
            .prepare_send(&principal, &body, key.as_ref())
            .await?
        {
            PreparedSend::Replay(done) => return Ok(replay_stream(done)),
            PreparedSend::Turn(turn) => turn,
        };
        if !turn.asks_model() {
            // A tool result while other calls of the model's await theirs: stored, nothing
            // streamed but the end.
            let mut turn = turn;
            let (reply, _) = self
                .turns
                .run(&principal, &mut turn, body.options, key.as_ref(), "message")
                .await?;
            return Ok(replay_stream(proto::SendMessageResponse {
                session_id: body.session_id,
                reply,
            }));
        }
        // Counted against the key's cap from before the model is asked until the caller
        // leaves or the stream ends.
        let lease = match self.door.open_stream(&principal, CapKind::Streams).await {
            Ok(lease) => lease,
            Err(error) => {
                self.turns.locks.release(&turn.lock).await;
                return Err(error.into());
            }
        };
        let streamed = StreamedTurn {
            turns: self.turns.clone(),
            principal,
            turn,
            session_id: body.session_id,
            options: body.options,
            key,
        };
        crate::streaming::stream(streamed, lease).await
    }

    async fn get_session(
        &self,
        request: Request<proto::GetSessionRequest>,
    ) -> Result<Response<proto::Session>, Status> {
        let (principal, admission) = self.door.enter(&request, SESSIONS).await?;
        let owner = principal.owner_id();
        let id = &request.get_ref().session_id;
        validate_session_id(id, "sessionId")?;
        match self
            .store
            .get_session(owner, id)
            .await
            .map_err(ApiError::from)?
        {
            Some(session) => Ok(respond(convert::session(&session), &admission)),
            None => Err(ApiError::not_found("Session", id).into()),
        }
    }

    async fn list_sessions(
        &self,
        request: Request<proto::ListSessionsRequest>,
    ) -> Result<Response<proto::ListSessionsResponse>, Status> {
        let (principal, admission) = self.door.enter(&request, SESSIONS).await?;
        let owner = principal.owner_id();
        let body = request.get_ref();
        let offset = parse_page_token(&body.page_token)?;
        let limit = page_size(body.page_size, 50, 200)?;
        let page = self
            .store
            .list_sessions(owner, offset, limit)
            .await
            .map_err(ApiError::from)?;
        let out = proto::ListSessionsResponse {
            sessions: page.items.iter().map(convert::session).collect(),
            next_page_token: page.next.map(|n| n.to_string()).unwrap_or_default(),
        };
        Ok(respond(out, &admission))
    }

    async fn list_messages(
        &self,
        request: Request<proto::ListMessagesRequest>,
    ) -> Result<Response<proto::ListMessagesResponse>, Status> {
        let (principal, admission) = self.door.enter(&request, SESSIONS).await?;
        let owner = principal.owner_id();
        let body = request.get_ref();
        validate_session_id(&body.session_id, "sessionId")?;
        let offset = parse_page_token(&body.page_token)?;
        let limit = page_size(body.page_size, 100, 1000)?;
        let store = &self.store;
        if store
            .get_session(owner, &body.session_id)
            .await
            .map_err(ApiError::from)?
            .is_none()
        {
            return Err(ApiError::not_found("Session", &body.session_id).into());
        }
        let page = store
            .list_messages(owner, &body.session_id, offset, limit)
            .await
            .map_err(ApiError::from)?;
        let out = proto::ListMessagesResponse {
            messages: page.items.iter().map(convert::message).collect(),
            next_page_token: page.next.map(|n| n.to_string()).unwrap_or_default(),
        };
        Ok(respond(out, &admission))
    }

    async fn delete_session(
        &self,
        request: Request<proto::DeleteSessionRequest>,
    ) -> Result<Response<proto::DeleteSessionResponse>, Status> {
        let (principal, admission) = self.door.enter(&request, SESSIONS).await?;
        let owner = principal.owner_id();
        let id = &request.get_ref().session_id;
        validate_session_id(id, "sessionId")?;
        if self
            .store
            .delete_session(owner, id)
            .await
            .map_err(ApiError::from)?
        {
            Ok(respond(proto::DeleteSessionResponse {}, &admission))
        } else {
            Err(ApiError::not_found("Session", id).into())
        }
    }
}

/// A repeated send's recorded answer, as the stream it was: its whole content, then done.
fn replay_stream(done: proto::SendMessageResponse) -> Response<EventStream<proto::StreamEvent>> {
    let reply = done.reply.clone();
    let message = reply
        .as_ref()
        .and_then(|r| r.message.clone())
        .unwrap_or_default();
    let (events, stream) = tokio::sync::mpsc::channel(message.tool_calls.len() + 2);
    // The buffer holds every event.
    let logprobs = reply
        .as_ref()
        .map(|r| r.logprobs.clone())
        .unwrap_or_default();
    if !message.content.is_empty() || !logprobs.is_empty() {
        let _ = events.try_send(Ok(delta_event(proto::Delta {
            content: message.content,
            logprobs,
            ..Default::default()
        })));
    }
    for (index, call) in message.tool_calls.into_iter().enumerate() {
        let _ = events.try_send(Ok(delta_event(proto::Delta {
            tool_call: Some(proto::ToolCallDelta {
                index: index as u32,
                id: call.id,
                name: call.name,
                arguments: call.arguments,
            }),
            ..Default::default()
        })));
    }
    let _ = events.try_send(Ok(done_event(done)));
    // A replay streams nothing from a model: it holds no lease.
    replayed(
        Leased::new(tokio_stream::wrappers::ReceiverStream::new(stream), None),
        reply.as_ref(),
    )
}
