//! `SessionService`: conversations with a model. A turn (the user's
//! message(s) and the model's reply) is stored whole or not at all, and the
//! turns of one session are taken one at a time, on every replica, by a
//! leased lock in the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::Principal;
use crate::convert;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::gateway::{Gateway, Scope, respond};
use crate::idempotency::{self, SendKey};
use crate::inference::{self, Streamed};
use crate::limits::{Admission, CapKind, Charge, Leased};
use crate::proto::session_service_server::SessionService;
use crate::proto::{self, ChatMessage};
use crate::providers::Model;
use crate::store::{
    AppendOutcome, LockOutcome, RecordedResult, SessionRecord, Store, StoredMessage,
};

pub(crate) const ROLES: &[&str] = &["system", "user", "assistant"];
const MAX_SESSION_ID_LEN: usize = 128;
const MAX_TOKENS_CAP: u32 = 131_072;

pub struct Sessions {
    gateway: Arc<Gateway>,
}

impl Sessions {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

/// A session id must be safe in URLs and store keys.
pub fn validate_session_id(id: &str, field: &str) -> ApiResult<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_SESSION_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_field(
            field,
            "Invalid session id",
            format!(
                "The field '{field}' must be 1-{MAX_SESSION_ID_LEN} characters of letters, digits, '-', '_', '.' or ':'"
            ),
        ))
    }
}

pub(crate) fn validate_message(
    message: &ChatMessage,
    field: &str,
    roles: &[&str],
) -> ApiResult<()> {
    if message.role.is_empty() {
        return Err(ApiError::invalid_field(
            format!("{field}.role"),
            "Missing required field",
            format!(
                "The field '{field}.role' is required (one of: {})",
                roles.join(", ")
            ),
        ));
    }
    if !roles.contains(&message.role.as_str()) {
        return Err(ApiError::invalid_field(
            format!("{field}.role"),
            "Invalid role",
            format!(
                "The field '{field}.role' is '{}'; use one of: {}",
                message.role.chars().take(40).collect::<String>(),
                roles.join(", ")
            ),
        ));
    }
    if message.content.trim().is_empty() {
        return Err(ApiError::invalid_field(
            format!("{field}.content"),
            "Empty message",
            format!("The field '{field}.content' must not be empty"),
        ));
    }
    Ok(())
}

pub(crate) fn validate_options(options: &Option<proto::GenerationOptions>) -> ApiResult<()> {
    let Some(options) = options else {
        return Ok(());
    };
    if let Some(t) = options.temperature
        && !(t.is_finite() && (0.0..=2.0).contains(&t))
    {
        return Err(ApiError::invalid_field(
            "temperature",
            "Invalid temperature",
            "The field 'temperature' must be a number from 0 to 2",
        ));
    }
    if let Some(n) = options.max_tokens
        && !(1..=MAX_TOKENS_CAP).contains(&n)
    {
        return Err(ApiError::invalid_field(
            "maxTokens",
            "Invalid maxTokens",
            format!("The field 'maxTokens' must be a whole number from 1 to {MAX_TOKENS_CAP}"),
        ));
    }
    Ok(())
}

fn parse_page_token(token: &str) -> ApiResult<u64> {
    if token.is_empty() {
        return Ok(0);
    }
    token.parse().map_err(|_| {
        ApiError::invalid_field(
            "pageToken",
            "Invalid page token",
            "The field 'pageToken' must be a nextPageToken from a previous page",
        )
    })
}

fn page_size(requested: u32, default: u32, max: u32) -> ApiResult<u32> {
    match requested {
        0 => Ok(default),
        n if n <= max => Ok(n),
        _ => Err(ApiError::invalid_field(
            "pageSize",
            "Invalid page size",
            format!("The field 'pageSize' must be from 1 to {max}"),
        )),
    }
}

fn new_session_id() -> String {
    format!("sess_{}", uuid::Uuid::new_v4().simple())
}

/// The session's turn lock, held until the turn is stored or abandoned.
///
/// Dropped while still held (a caller that went away mid-turn, a failure on a path that did not
/// release it), it is released in the background; a release that fails is retried until the
/// lease would have freed it anyway, so one lost reply from Redis does not block the session for
/// the whole lease.
pub(crate) struct TurnLock {
    pub(crate) owner: String,
    pub(crate) id: String,
    pub(crate) token: String,
    store: Arc<dyn Store>,
    lease_ends: tokio::time::Instant,
    held: AtomicBool,
}

impl TurnLock {
    /// The lock is gone from the store (stored with the turn, or found lost): nothing to release.
    fn forget(&self) {
        self.held.store(false, Ordering::Relaxed);
    }

    /// Releases the lock from a task of its own, retrying until its lease ends.
    fn release_in_background(&self) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(release_until(
                self.store.clone(),
                self.owner.clone(),
                self.id.clone(),
                self.token.clone(),
                self.lease_ends,
            ));
        }
    }
}

impl Drop for TurnLock {
    fn drop(&mut self) {
        if self.held.swap(false, Ordering::Relaxed) {
            self.release_in_background();
        }
    }
}

/// Releases the lock `token` may hold on the session, retrying with backoff until `lease_ends`
/// (when the store frees it by itself). Releasing is idempotent and never frees another holder's
/// lock, so retrying is always safe.
async fn release_until(
    store: Arc<dyn Store>,
    owner: String,
    id: String,
    token: String,
    lease_ends: tokio::time::Instant,
) {
    let mut wait = Duration::from_millis(50);
    let mut failures = 0u32;
    loop {
        match store.unlock_session(&owner, &id, &token).await {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(session = %id, attempts = failures + 1, "session lock released");
                }
                return;
            }
            Err(err) => {
                failures += 1;
                tracing::debug!(error = %err, session = %id, attempt = failures, "could not release a session lock; retrying until its lease ends");
            }
        }
        if tokio::time::Instant::now() + wait >= lease_ends {
            tracing::warn!(session = %id, "session lock not released; its lease frees it");
            return;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}

/// Events of a streamed reply in flight to the caller.
const STREAM_BUFFER: usize = 16;

impl Sessions {
    /// Waits for the session's turn lock. `Ok(None)` when the session does not exist.
    pub(crate) async fn lock(
        &self,
        owner: &str,
        id: &str,
    ) -> ApiResult<Option<(TurnLock, SessionRecord, Vec<StoredMessage>)>> {
        let gateway = &self.gateway;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let deadline = tokio::time::Instant::now() + gateway.turn_lease;
        let mut wait = Duration::from_millis(5);
        loop {
            // Leased from now: the store's lease starts no earlier than the request leaves.
            let lease_ends = tokio::time::Instant::now() + gateway.turn_lease;
            let outcome = match gateway
                .store
                .lock_session(owner, id, &token, gateway.turn_lease)
                .await
            {
                Ok(outcome) => outcome,
                Err(err) => {
                    // The store may have taken the lock even though its answer never came
                    // (a stalled Redis that resumes, a connection lost after the write):
                    // give it back rather than let it block the session for the lease.
                    tokio::spawn(release_until(
                        gateway.store.clone(),
                        owner.to_string(),
                        id.to_string(),
                        token,
                        lease_ends,
                    ));
                    return Err(err.into());
                }
            };
            match outcome {
                LockOutcome::Acquired { session, history } => {
                    let lock = TurnLock {
                        owner: owner.to_string(),
                        id: id.to_string(),
                        token,
                        store: gateway.store.clone(),
                        lease_ends,
                        held: AtomicBool::new(true),
                    };
                    return Ok(Some((lock, session, history)));
                }
                LockOutcome::NoSession => return Ok(None),
                LockOutcome::Busy => {
                    if tokio::time::Instant::now() + wait > deadline {
                        return Err(ApiError::new(
                            ErrorCode::Conflict,
                            "Session busy",
                            "Another message to this session is still being answered; retry when it has finished",
                        ));
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(100));
                }
            }
        }
    }

    /// Gives the lock back now; if the store does not answer, keeps trying in the background.
    pub(crate) async fn release(&self, lock: &TurnLock) {
        if !lock.held.swap(false, Ordering::Relaxed) {
            return;
        }
        if let Err(err) = self
            .gateway
            .store
            .unlock_session(&lock.owner, &lock.id, &lock.token)
            .await
        {
            tracing::warn!(error = %err, session = %lock.id, "could not release a session lock; retrying in the background");
            lock.release_in_background();
        }
    }

    /// Asks the model when `new` ends with a user message; otherwise admits a plain request.
    async fn answer_if_asked(
        &self,
        principal: &Principal,
        model: &Arc<Model>,
        history: &[StoredMessage],
        new: &mut Vec<StoredMessage>,
        temperature: Option<f32>,
        max_tokens: Option<u32>,
    ) -> ApiResult<(Option<proto::Reply>, Admission)> {
        if new.last().is_none_or(|m| m.role != "user") {
            return Ok((
                None,
                self.gateway.admit(principal, Charge::default()).await?,
            ));
        }
        let (answer, admission) = inference::admit(
            &self.gateway,
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

    /// Runs one turn on a locked, existing session: history + `new` to the
    /// model when `new` ends with a user message, then stores `new` and the
    /// reply together and releases the lock.
    async fn turn(
        &self,
        principal: &Principal,
        lock: TurnLock,
        session: &SessionRecord,
        history: Vec<StoredMessage>,
        new: Vec<StoredMessage>,
        options: Option<proto::GenerationOptions>,
    ) -> ApiResult<(Option<proto::Reply>, Admission)> {
        self.turn_recording(principal, lock, session, history, new, options, None)
            .await
    }

    /// [`Self::turn`] that also records the send's result under `key`, with the turn.
    #[allow(clippy::too_many_arguments)]
    async fn turn_recording(
        &self,
        principal: &Principal,
        lock: TurnLock,
        session: &SessionRecord,
        history: Vec<StoredMessage>,
        new: Vec<StoredMessage>,
        options: Option<proto::GenerationOptions>,
        key: Option<&SendKey>,
    ) -> ApiResult<(Option<proto::Reply>, Admission)> {
        let outcome = self
            .turn_locked(principal, &lock, session, history, new, options, key)
            .await;
        if outcome.is_err() {
            self.release(&lock).await;
        }
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    async fn turn_locked(
        &self,
        principal: &Principal,
        lock: &TurnLock,
        session: &SessionRecord,
        history: Vec<StoredMessage>,
        mut new: Vec<StoredMessage>,
        options: Option<proto::GenerationOptions>,
        key: Option<&SendKey>,
    ) -> ApiResult<(Option<proto::Reply>, Admission)> {
        let model = self.gateway.models.resolve_model(&session.model)?.clone();
        let (temperature, max_tokens) = merge_options(session, options.as_ref());
        let (reply, admission) = self
            .answer_if_asked(
                principal,
                &model,
                &history,
                &mut new,
                temperature,
                max_tokens,
            )
            .await?;
        let response = key.map(|key| {
            key.record(&proto::SendMessageResponse {
                session_id: lock.id.clone(),
                reply: reply.clone(),
            })
        });
        self.store_turn(lock, &new, key.zip(response.as_deref()))
            .await?;
        Ok((reply, admission))
    }

    /// Stores a turn's messages and releases the lock, atomically; with a
    /// key, the send's recorded result too.
    pub(crate) async fn store_turn(
        &self,
        lock: &TurnLock,
        new: &[StoredMessage],
        record: Option<(&SendKey, &[u8])>,
    ) -> ApiResult<()> {
        let store = &self.gateway.store;
        let outcome = match record {
            None => {
                store
                    .append_turn(&lock.owner, &lock.id, &lock.token, new, Utc::now())
                    .await?
            }
            Some((key, body)) => {
                store
                    .append_turn_recording(
                        &lock.owner,
                        &lock.id,
                        &lock.token,
                        new,
                        Utc::now(),
                        RecordedResult {
                            request_id: &key.request_id,
                            body,
                            retention: self.gateway.idempotency_retention,
                        },
                    )
                    .await?
            }
        };
        // Each outcome leaves the lock gone: released with the turn, deleted with the session,
        // or already someone else's.
        lock.forget();
        match outcome {
            AppendOutcome::Appended => Ok(()),
            AppendOutcome::SessionGone => Err(ApiError::not_found("Session", &lock.id)),
            AppendOutcome::LockLost => Err(ApiError::new(
                ErrorCode::Conflict,
                "Turn not stored",
                "The session's turn lock expired before the reply arrived, so nothing was stored; send the message again",
            )),
        }
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
            .gateway
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
    async fn prepare_send(
        &self,
        owner: &str,
        body: &proto::SendMessageRequest,
        key: Option<&SendKey>,
    ) -> ApiResult<PreparedSend> {
        validate_session_id(&body.session_id, "sessionId")?;
        let Some(message) = body.message.as_ref() else {
            return Err(ApiError::invalid_field(
                "message",
                "Missing required field",
                "The field 'message' is required: {\"message\": {\"role\": \"user\", \"content\": \"...\"}}",
            ));
        };
        validate_message(message, "message", &["user"])?;
        validate_options(&body.options)?;
        let Some((lock, session, history)) = self.lock(owner, &body.session_id).await? else {
            return Err(ApiError::not_found("Session", &body.session_id));
        };
        // Looked up under the lock only: a repeat that raced the first waited for
        // the lock, and an ordinary send pays no extra round trip before it.
        match self.recorded(owner, &body.session_id, key).await {
            Ok(Some(done)) => {
                self.release(&lock).await;
                return Ok(PreparedSend::Replay(done));
            }
            Ok(None) => {}
            Err(err) => {
                self.release(&lock).await;
                return Err(err);
            }
        }
        Ok(PreparedSend::Turn {
            lock,
            session,
            history,
            new: to_stored(std::slice::from_ref(message)),
        })
    }

    /// Opens a streamed reply on a locked session (releasing the lock when
    /// that fails), with the turn's messages so far.
    async fn open_streamed_turn(
        &self,
        principal: &Principal,
        lock: &TurnLock,
        session: &SessionRecord,
        history: &[StoredMessage],
        new: &[StoredMessage],
        options: Option<&proto::GenerationOptions>,
    ) -> ApiResult<Streamed> {
        let opened = async {
            let model = self.gateway.models.resolve_model(&session.model)?.clone();
            let (temperature, max_tokens) = merge_options(session, options);
            inference::admit(
                &self.gateway,
                principal,
                model,
                history.iter().chain(new.iter()),
                temperature,
                max_tokens,
            )
            .await?
            .stream()
            .await
        }
        .await;
        if opened.is_err() {
            self.release(lock).await;
        }
        opened
    }
}

/// What a send found before asking the model.
enum PreparedSend {
    /// A repeat of a recorded send: its recorded answer.
    Replay(proto::SendMessageResponse),
    /// A new turn, with the session's lock held.
    Turn {
        lock: TurnLock,
        session: SessionRecord,
        history: Vec<StoredMessage>,
        new: Vec<StoredMessage>,
    },
}

/// A recorded answer, marked as a replay. It carries no rate-limit figures:
/// a replay is not counted against the limits.
fn replayed<T>(message: T, reply: Option<&proto::Reply>) -> Response<T> {
    let mut response = Response::new(message);
    let metadata = response.metadata_mut();
    metadata.insert(
        idempotency::REPLAYED,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    if reply.is_some_and(|r| r.simulated) {
        metadata.insert(
            "openclaw-simulated",
            tonic::metadata::MetadataValue::from_static("true"),
        );
    }
    response
}

fn delta_event(content: String) -> proto::StreamEvent {
    proto::StreamEvent {
        event: Some(proto::stream_event::Event::Delta(proto::Delta { content })),
    }
}

fn done_event(done: proto::SendMessageResponse) -> proto::StreamEvent {
    proto::StreamEvent {
        event: Some(proto::stream_event::Event::Done(done)),
    }
}

fn merge_options(
    session: &SessionRecord,
    options: Option<&proto::GenerationOptions>,
) -> (Option<f32>, Option<u32>) {
    (
        options.and_then(|o| o.temperature).or(session.temperature),
        options.and_then(|o| o.max_tokens).or(session.max_tokens),
    )
}

fn to_stored(messages: &[ChatMessage]) -> Vec<StoredMessage> {
    let now = Utc::now();
    messages
        .iter()
        .map(|m| StoredMessage::counted(m.role.clone(), m.content.clone(), now))
        .collect()
}

fn reply_response<T>(
    message: T,
    reply: Option<&proto::Reply>,
    admission: &Admission,
) -> Response<T> {
    let mut response = respond(message, admission);
    if reply.is_some_and(|r| r.simulated) {
        response.metadata_mut().insert(
            "openclaw-simulated",
            tonic::metadata::MetadataValue::from_static("true"),
        );
    }
    response
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
            None => self.gateway.authorize(&request, SESSIONS).await?,
        };
        let owner = principal.owner_id().to_string();
        let body = request.into_inner();
        let model_id = if body.model.is_empty() {
            self.gateway.models.default_model()
        } else {
            body.model.as_str()
        };
        let model = self.gateway.models.resolve_model(model_id)?.clone();
        for (i, message) in body.messages.iter().enumerate() {
            validate_message(message, &format!("messages[{i}]"), ROLES)?;
        }
        validate_options(&body.options)?;
        let requested_id = body
            .context
            .as_ref()
            .map(|c| c.session_id.as_str())
            .unwrap_or("");
        if !requested_id.is_empty() {
            validate_session_id(requested_id, "context.sessionId")?;
        }
        let new = to_stored(&body.messages);

        // Continue a session the caller already owns.
        if !requested_id.is_empty()
            && let Some((lock, session, history)) = self.lock(&owner, requested_id).await?
        {
            let (reply, admission) = self
                .turn(&principal, lock, &session, history, new, body.options)
                .await?;
            let mut session = session;
            session.message_count += body.messages.len() as u32 + u32::from(reply.is_some());
            let message = proto::CreateSessionResponse {
                session: Some(convert::session(&session)),
                reply,
                created: false,
            };
            let reply = message.reply.clone();
            return Ok(reply_response(message, reply.as_ref(), &admission));
        }

        let now = Utc::now();
        let id = if requested_id.is_empty() {
            new_session_id()
        } else {
            requested_id.to_string()
        };
        let mut session = SessionRecord {
            owner: owner.clone(),
            id,
            model: model.id.clone(),
            status: "active".into(),
            created_at: now,
            updated_at: now,
            temperature: body.options.as_ref().and_then(|o| o.temperature),
            max_tokens: body.options.as_ref().and_then(|o| o.max_tokens),
            message_count: 0,
        };
        let mut stored = new;
        let (reply, admission) = self
            .answer_if_asked(
                &principal,
                &model,
                &[],
                &mut stored,
                session.temperature,
                session.max_tokens,
            )
            .await?;
        session.updated_at = Utc::now();
        if !self
            .gateway
            .store
            .create_session(&session, &stored)
            .await
            .map_err(ApiError::from)?
        {
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
        let principal = self.gateway.authorize(&request, SESSIONS).await?;
        let owner = principal.owner_id().to_string();
        let key = SendKey::of(&request, request.get_ref());
        let body = request.into_inner();
        let (lock, session, history, new) =
            match self.prepare_send(&owner, &body, key.as_ref()).await? {
                PreparedSend::Replay(done) => {
                    let reply = done.reply.clone();
                    return Ok(replayed(done, reply.as_ref()));
                }
                PreparedSend::Turn {
                    lock,
                    session,
                    history,
                    new,
                } => (lock, session, history, new),
            };
        // Once admitted and locked, the turn runs to completion in its own task:
        // a client that disconnects (or times out) cancels nothing half way, the
        // lock is released, and the stored turn can be replayed by its request id.
        let sessions = Sessions::new(self.gateway.clone());
        let options = body.options;
        let turn = tokio::spawn(crate::observe::carrying_request_id(async move {
            sessions
                .turn_recording(
                    &principal,
                    lock,
                    &session,
                    history,
                    new,
                    options,
                    key.as_ref(),
                )
                .await
        }));
        let (reply, admission) = turn.await.map_err(|err| {
            tracing::error!(error = %err, "a turn's task failed");
            ApiError::internal()
        })??;
        let out = proto::SendMessageResponse {
            session_id: body.session_id,
            reply: reply.clone(),
        };
        Ok(reply_response(out, reply.as_ref(), &admission))
    }

    type StreamMessageStream = Leased<ReceiverStream<Result<proto::StreamEvent, Status>>>;

    async fn stream_message(
        &self,
        request: Request<proto::SendMessageRequest>,
    ) -> Result<Response<Self::StreamMessageStream>, Status> {
        let principal = self.gateway.authorize(&request, SESSIONS).await?;
        let owner = principal.owner_id().to_string();
        let key = SendKey::of(&request, request.get_ref());
        let body = request.into_inner();
        let (events, stream) = mpsc::channel(STREAM_BUFFER);
        let (lock, session, history, mut new) =
            match self.prepare_send(&owner, &body, key.as_ref()).await? {
                PreparedSend::Replay(done) => {
                    let reply = done.reply.clone();
                    let content = reply
                        .as_ref()
                        .and_then(|r| r.message.as_ref())
                        .map(|m| m.content.clone())
                        .unwrap_or_default();
                    // The buffer holds both events.
                    if !content.is_empty() {
                        let _ = events.try_send(Ok(delta_event(content)));
                    }
                    let _ = events.try_send(Ok(done_event(done)));
                    // A replay streams nothing from a model: it holds no lease.
                    return Ok(replayed(
                        Leased::new(ReceiverStream::new(stream), None),
                        reply.as_ref(),
                    ));
                }
                PreparedSend::Turn {
                    lock,
                    session,
                    history,
                    new,
                } => (lock, session, history, new),
            };
        // Counted against the key's cap from before the model is asked until the caller
        // leaves or the stream ends.
        let lease = match self.gateway.open_stream(&principal, CapKind::Streams).await {
            Ok(lease) => lease,
            Err(error) => {
                self.release(&lock).await;
                return Err(error.into());
            }
        };
        let sessions = Sessions::new(self.gateway.clone());
        let session_id = body.session_id;
        let options = body.options;
        let (opened, opening) = oneshot::channel();
        // From here the turn runs in its own task, to its end, even if the caller leaves
        // (before or after the first piece): the reply is stored whole and the lock released.
        tokio::spawn(crate::observe::carrying_request_id(async move {
            let streamed = match sessions
                .open_streamed_turn(
                    &principal,
                    &lock,
                    &session,
                    &history,
                    &new,
                    options.as_ref(),
                )
                .await
            {
                Ok(streamed) => streamed,
                Err(error) => {
                    let _ = opened.send(Err(error));
                    return;
                }
            };
            drop(history);
            let _ = opened.send(Ok((
                streamed.admission().clone(),
                streamed.model().provider.simulated(),
            )));
            let outcome = async {
                let (answer, _) = streamed.relay(&events, delta_event).await?;
                new.push(answer.stored);
                let done = proto::SendMessageResponse {
                    session_id,
                    reply: Some(answer.reply),
                };
                let record = key.as_ref().map(|key| (key, key.record(&done)));
                sessions
                    .store_turn(
                        &lock,
                        &new,
                        record.as_ref().map(|(key, body)| (*key, body.as_slice())),
                    )
                    .await?;
                Ok::<_, ApiError>(done)
            }
            .await;
            let event = match outcome {
                Ok(done) => Ok(done_event(done)),
                Err(error) => {
                    sessions.release(&lock).await;
                    Err(Status::from(error))
                }
            };
            let _ = events.send(event).await;
        }));
        let (admission, simulated) = opening.await.map_err(|_| ApiError::internal())??;
        let mut response = respond(Leased::new(ReceiverStream::new(stream), lease), &admission);
        if simulated {
            response.metadata_mut().insert(
                "openclaw-simulated",
                tonic::metadata::MetadataValue::from_static("true"),
            );
        }
        Ok(response)
    }

    async fn get_session(
        &self,
        request: Request<proto::GetSessionRequest>,
    ) -> Result<Response<proto::Session>, Status> {
        let (principal, admission) = self.gateway.enter(&request, SESSIONS).await?;
        let owner = principal.owner_id();
        let id = &request.get_ref().session_id;
        validate_session_id(id, "sessionId")?;
        match self
            .gateway
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
        let (principal, admission) = self.gateway.enter(&request, SESSIONS).await?;
        let owner = principal.owner_id();
        let body = request.get_ref();
        let offset = parse_page_token(&body.page_token)?;
        let limit = page_size(body.page_size, 50, 200)?;
        let page = self
            .gateway
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
        let (principal, admission) = self.gateway.enter(&request, SESSIONS).await?;
        let owner = principal.owner_id();
        let body = request.get_ref();
        validate_session_id(&body.session_id, "sessionId")?;
        let offset = parse_page_token(&body.page_token)?;
        let limit = page_size(body.page_size, 100, 1000)?;
        let store = &self.gateway.store;
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
        let (principal, admission) = self.gateway.enter(&request, SESSIONS).await?;
        let owner = principal.owner_id();
        let id = &request.get_ref().session_id;
        validate_session_id(id, "sessionId")?;
        if self
            .gateway
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
