//! All durable state behind one interface, with two implementations that pass
//! the same conformance suite (`tests/store_conformance.rs`):
//! [`RedisStore`] for scaled deployments and [`EmbeddedStore`] (a redb file)
//! for the single-machine default.
//!
//! Sessions are addressed by `(owner, session_id)`: a key's sessions live in
//! its own namespace, so a client-chosen session id can never collide with, or
//! reveal, another key's session.

mod embedded;
pub mod pressure;
mod redis;
pub mod redis_connection;
mod redis_error;
mod timestamp;
pub(crate) use timestamp::push_digits;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use self::embedded::{EmbeddedSpend, EmbeddedStore};
pub use self::redis::RedisStore;
pub use self::redis_connection::{
    ConfigError as RedisConfigError, NodeHealth, RedisConfig, SharedConnection,
    TlsFiles as RedisTlsFiles, Topology as RedisTopology,
};

/// A failure of the storage backend itself (never "not found": that is `Ok(None)`/`Ok(false)`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage backend unavailable: {0}")]
    Unavailable(String),
    #[error("storage backend did not answer within its timeout")]
    Timeout,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The backend refused an operation as we wrote it (a script that fails, a command
    /// against a value of another type): a fault of ours, which retrying does not cure.
    #[error("storage backend refused the operation: {0}")]
    Internal(String),
    /// A write the primary holds but fewer replicas confirmed than configured
    /// (`OPENCLAW_REDIS_WAIT_REPLICAS`); repeating it is safe.
    #[error("{0}")]
    NotReplicated(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Per-key limits; `None` takes the configured default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyLimits {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub context_tokens_per_minute: Option<u64>,
    /// Streamed replies open at once (keys stored before this cap existed have none).
    #[serde(default)]
    pub concurrent_streams: Option<u64>,
    /// Event subscriptions open at once.
    #[serde(default)]
    pub event_subscriptions: Option<u64>,
}

/// Per-key quotas on what a key may keep stored; `None` takes the configured default
/// (`OPENCLAW_DEFAULT_MAX_SESSIONS` and its siblings, see [`crate::config::CoreConfig`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyQuotas {
    /// Sessions the key keeps at once.
    #[serde(default)]
    pub max_sessions: Option<u64>,
    /// Messages one session holds (its whole history, every role).
    #[serde(default)]
    pub max_messages_per_session: Option<u64>,
    /// Bytes of message content one session holds.
    #[serde(default)]
    pub max_session_bytes: Option<u64>,
    /// Bytes of content one message may carry.
    #[serde(default)]
    pub max_message_bytes: Option<u64>,
    /// Cron jobs the key owns at once.
    #[serde(default)]
    pub max_cron_jobs: Option<u64>,
    /// Seconds a session is kept after its last turn; `0` keeps sessions until deleted.
    #[serde(default)]
    pub session_idle_ttl_seconds: Option<u64>,
}

/// An API key as stored: never the secret, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    /// Lowercase hex SHA-256 of the whole key.
    pub secret_hash: String,
    /// The first characters of the key, safe to show.
    pub prefix: String,
    pub scopes: Vec<String>,
    pub limits: KeyLimits,
    /// Keys stored before quotas existed have none of their own (the defaults apply).
    #[serde(default)]
    pub quotas: KeyQuotas,
    /// The key's spend budget per period, if it has one (docs/budgets.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<crate::spend::KeyBudget>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl KeyRecord {
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionRecord {
    /// The id of the key that owns the session.
    pub owner: String,
    pub id: String,
    pub model: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Defaults for later turns, from the create request.
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
    /// Filled in by reads; ignored on writes.
    #[serde(default)]
    pub message_count: u32,
    /// This life of the session id: fresh each time a session is created, so a session deleted
    /// and created again under the same id is another incarnation, and a turn begun on the old
    /// one cannot store into the new one ([`TurnFence`]). Sessions stored before incarnations
    /// existed have the empty one.
    #[serde(default)]
    pub incarnation: String,
    /// Seconds the session is kept after its last turn: its owner's `sessionIdleTtlSeconds`
    /// when it was created, so the store refreshes the expiry on each turn with nothing more
    /// to read. `0` (and sessions stored before retention existed) keeps it until deleted.
    #[serde(default)]
    pub idle_ttl_seconds: u64,
    /// The end its creator set (`expiresAt`): the session goes then, however active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// How the history is fitted into the model's context window; sessions stored before
    /// strategies existed use the window.
    #[serde(default)]
    pub context_strategy: ContextStrategy,
    /// The index of the latest compaction summary in the history (embedded store; the Redis
    /// store keeps it in the session's meta hash and fills it in on the turn's read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary_at: Option<u64>,
    /// Sampling defaults for later turns (`stop`, `topP`, `responseFormat`, ...), from the
    /// create request; each send may override them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<crate::providers::Sampling>,
}

impl SessionRecord {
    /// When the store drops the session unless a turn comes first: the earlier of its last
    /// activity plus its idle time to live and its own `expires_at`; `None` keeps it.
    pub fn expiry(&self) -> Option<DateTime<Utc>> {
        let idle = (self.idle_ttl_seconds > 0)
            .then(|| {
                let ttl = chrono::Duration::try_seconds(
                    i64::try_from(self.idle_ttl_seconds).unwrap_or(i64::MAX),
                )?;
                self.updated_at.checked_add_signed(ttl)
            })
            .flatten();
        match (idle, self.expires_at) {
            (Some(idle), Some(hard)) => Some(idle.min(hard)),
            (idle, hard) => idle.or(hard),
        }
    }

    /// Whether the session has expired at `now` (the store treats it as absent).
    pub fn expired_at(&self, now: DateTime<Utc>) -> bool {
        self.expiry().is_some_and(|expiry| expiry <= now)
    }
}

/// How a session's history is fitted into its model's context window
/// (docs/context-windows.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContextStrategy {
    /// The system prompt and the most recent whole turns that fit.
    #[default]
    Window,
    /// When the history no longer fits, the model summarises the older turns; the summary is
    /// stored in the history and sent in their place.
    Summarize,
}

impl ContextStrategy {
    /// Every strategy's name, as requests and reads spell it.
    pub const NAMES: [&'static str; 2] = ["window", "summarize"];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Window => "window",
            Self::Summarize => "summarize",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "window" => Some(Self::Window),
            "summarize" => Some(Self::Summarize),
            _ => None,
        }
    }
}

/// What a compaction summary stands for: the messages `from..to` (indices in the history, `to`
/// excluded), earlier summaries included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryOf {
    pub from: u64,
    pub to: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredMessage {
    pub role: String,
    pub content: String,
    #[serde(with = "timestamp")]
    pub created_at: DateTime<Utc>,
    /// Set on a compaction summary (a `system` message the gateway wrote): what it stands for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<SummaryOf>,
    /// An assistant message's tool calls, as the model made them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<crate::providers::ToolCall>,
    /// A `tool` message: the id of the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// The author's name, as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A message sent as parts (text and images), as sent; `content` holds its text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<crate::providers::ContentPart>,
    /// The content's tokens (cl100k_base), counted once when the message was stored, so a
    /// later turn's admission does not tokenize the whole history again. Messages stored
    /// without it are counted when read.
    ///
    /// Kept the LAST field: the Redis store's turn read finds it at the end of the stored JSON
    /// to walk back through the history without decoding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u32>,
}

impl StoredMessage {
    /// A message stored now, its tokens counted once.
    pub fn counted(role: String, content: String, created_at: DateTime<Utc>) -> Self {
        let tokens = Some(crate::tokenizer::count_text(&content));
        Self {
            role,
            content,
            created_at,
            summary: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
            parts: Vec::new(),
            tokens,
        }
    }

    /// A message with an agent's parts (tool calls, the call a tool result answers, an author
    /// name), its tokens counted once: content, calls and name together.
    pub fn agent(
        role: String,
        content: String,
        tool_calls: Vec<crate::providers::ToolCall>,
        tool_call_id: Option<String>,
        name: Option<String>,
        created_at: DateTime<Utc>,
    ) -> Self {
        Self::with_parts(
            role,
            content,
            Vec::new(),
            tool_calls,
            tool_call_id,
            name,
            created_at,
        )
    }

    /// [`Self::agent`] for a message sent as parts: its text parts and images counted (an
    /// image at [`crate::providers::IMAGE_TOKENS`], or less at low detail).
    pub fn with_parts(
        role: String,
        content: String,
        parts: Vec<crate::providers::ContentPart>,
        tool_calls: Vec<crate::providers::ToolCall>,
        tool_call_id: Option<String>,
        name: Option<String>,
        created_at: DateTime<Utc>,
    ) -> Self {
        let text = if parts.is_empty() {
            content.as_str()
        } else {
            ""
        };
        let tokens = crate::providers::reply_tokens(text, &tool_calls)
            .saturating_add(
                parts
                    .iter()
                    .map(crate::providers::ContentPart::tokens)
                    .fold(0u32, u32::saturating_add),
            )
            .saturating_add(name.as_deref().map_or(0, crate::tokenizer::count_text))
            .saturating_add(
                tool_call_id
                    .as_deref()
                    .map_or(0, crate::tokenizer::count_text),
            );
        Self {
            role,
            content,
            created_at,
            summary: None,
            tool_calls,
            tool_call_id,
            name,
            parts,
            tokens: Some(tokens),
        }
    }

    /// What the message carries, in bytes: its text, its parts (an image's URL, data URLs
    /// included) and its tool calls.
    pub fn bytes(&self) -> u64 {
        let parts: usize = self
            .parts
            .iter()
            .map(|part| match part {
                crate::providers::ContentPart::Text { text } => text.len(),
                crate::providers::ContentPart::ImageUrl { url, .. } => url.len(),
            })
            .sum();
        let calls: usize = self
            .tool_calls
            .iter()
            .map(|c| c.name.len() + c.arguments.len())
            .sum();
        (self.content.len() + parts + calls) as u64
    }

    /// What the message costs in a prompt beyond the reply's priming (cl100k_base): its content,
    /// its role and the chat format's separators.
    pub fn prompt_cost(&self) -> u64 {
        let content = self
            .tokens
            .unwrap_or_else(|| crate::tokenizer::count_text(&self.content));
        u64::from(content) + u64::from(crate::tokenizer::MESSAGE_OVERHEAD)
    }
}

/// How much history a turn can send, so [`Store::lock_session`] reads only the tail that can
/// fit the session's model's context window: the window, less the completion reserved, less
/// what the turn itself adds.
#[derive(Debug, Clone)]
pub struct HistoryBudget {
    /// Context windows (tokens) by model id; a model not listed has `default_window`.
    pub windows: std::sync::Arc<Vec<(String, u32)>>,
    pub default_window: u32,
    /// The tokens the turn needs beside its history: its new messages and the reply's priming.
    pub fixed: u32,
    /// The completion reserved: the turn's maxTokens when it names one, else the session's,
    /// else `default_max_tokens`.
    pub max_tokens: Option<u32>,
    pub default_max_tokens: u32,
}

impl HistoryBudget {
    /// Every message, whatever it costs.
    pub fn unbounded() -> Self {
        Self {
            windows: Default::default(),
            default_window: u32::MAX,
            fixed: 0,
            max_tokens: Some(0),
            default_max_tokens: 0,
        }
    }

    /// The session's model's window.
    pub fn window(&self, session: &SessionRecord) -> u32 {
        self.windows
            .iter()
            .find(|(model, _)| *model == session.model)
            .map_or(self.default_window, |(_, window)| *window)
    }

    /// The completion the session's turn reserves.
    pub fn reserve(&self, session: &SessionRecord) -> u32 {
        self.max_tokens
            .or(session.max_tokens)
            .unwrap_or(self.default_max_tokens)
    }

    /// Tokens left for the session's history (system prompt, summary and latest turns); may be
    /// negative when not even the turn itself fits.
    pub fn for_history(&self, session: &SessionRecord) -> i64 {
        i64::from(self.window(session)) - i64::from(self.reserve(session)) - i64::from(self.fixed)
    }
}

/// A session's history as a turn reads it (under its lock): what can be sent, not all of it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// The system prompt: the messages at the head of the history while they are `system` ones.
    /// Always read, whatever the budget.
    pub head: Vec<StoredMessage>,
    /// The latest compaction summary and its index, for a session that has one. Always read.
    pub summary: Option<(u64, StoredMessage)>,
    /// The latest messages that fit the budget, with their indices, oldest first; the summary
    /// is not among them.
    pub tail: Vec<(u64, StoredMessage)>,
    /// Whether the tail reaches back to the first message it could hold (after the head, or
    /// after what the summary stands for): false when older ones were left unread.
    pub complete: bool,
    /// Every message the session holds.
    pub len: u64,
}

impl History {
    /// The messages read, in stored order (the whole history when it was read unbounded).
    pub fn messages(&self) -> Vec<StoredMessage> {
        let mut out = self.head.clone();
        let mut rest: Vec<&(u64, StoredMessage)> = self.tail.iter().collect();
        if let Some(summary) = &self.summary {
            rest.push(summary);
            rest.sort_by_key(|(index, _)| *index);
        }
        out.extend(rest.into_iter().map(|(_, m)| m.clone()));
        out
    }

    /// Where the tail may start: after the head, and after what the summary stands for.
    pub fn lower_bound(&self) -> u64 {
        let head = self.head.len() as u64;
        match &self.summary {
            Some((_, m)) => m.summary.map_or(head, |s| s.to.max(head)),
            None => head,
        }
    }
}

/// What a turn's write is fenced by: the turn lock's token, and the incarnation of the session
/// the lock was taken on ([`LockOutcome::Acquired`]'s `session.incarnation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnFence<'a> {
    pub token: &'a str,
    pub incarnation: &'a str,
}

/// The per-session and per-owner quotas a session write is held to (see [`crate::quotas`]),
/// checked by the store in the same atomic step as the write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionCaps {
    /// Sessions the owner keeps at once (checked when a session is created).
    pub max_sessions: u64,
    /// Messages one session holds.
    pub max_messages: u64,
    /// Bytes of message content (UTF-8) one session holds.
    pub max_bytes: u64,
}

impl SessionCaps {
    /// No quota at all (tools and tests that store on nobody's behalf).
    pub const UNLIMITED: Self = Self {
        max_sessions: u64::MAX,
        max_messages: u64::MAX,
        max_bytes: u64::MAX,
    };
}

/// Which [`SessionCaps`] quota a write would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionCap {
    Sessions,
    Messages,
    Bytes,
}

/// A write refused by a quota: nothing was written. `used` is what was in use before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapBreach {
    pub cap: SessionCap,
    pub limit: u64,
    pub used: u64,
}

/// Bytes of content of `messages`, as [`SessionCaps::max_bytes`] counts them.
pub fn content_bytes(messages: &[StoredMessage]) -> u64 {
    messages.iter().map(|m| m.content.len() as u64).sum()
}

/// The quota first messages of a new session would pass, if any (the session holds nothing
/// yet, so the check needs no round trip).
pub fn first_messages_breach(messages: &[StoredMessage], caps: SessionCaps) -> Option<CapBreach> {
    if messages.len() as u64 > caps.max_messages {
        return Some(CapBreach {
            cap: SessionCap::Messages,
            limit: caps.max_messages,
            used: 0,
        });
    }
    (content_bytes(messages) > caps.max_bytes).then_some(CapBreach {
        cap: SessionCap::Bytes,
        limit: caps.max_bytes,
        used: 0,
    })
}

/// What became of a [`Store::create_session`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateOutcome {
    Created,
    /// The owner already has a session with that id: nothing was written.
    Exists,
    /// A quota refused it: nothing was written.
    OverQuota(CapBreach),
}

impl CreateOutcome {
    pub fn created(self) -> bool {
        self == Self::Created
    }
}

/// What became of an [`Store::append_turn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    Appended,
    /// The lock was not held with this token any more (its lease ran out): nothing was written.
    LockLost,
    /// The session was deleted meanwhile (and perhaps created again under the same id, as
    /// another incarnation): nothing was written. Checked before the lock, since deleting a
    /// session drops its lock too.
    SessionGone,
    /// The turn would take the session past its messages or bytes quota: nothing was
    /// written, and the lock (if still ours) was released.
    OverQuota(CapBreach),
}

/// The outcome of a client's request, recorded with the turn it produced so
/// that a repeat of the request (same request id, same session) is answered
/// from the store instead of running again.
#[derive(Debug, Clone, Copy)]
pub struct RecordedResult<'a> {
    /// The client's id for the request (its `X-Request-ID`).
    pub request_id: &'a str,
    /// What to answer a repeat with (opaque to the store).
    pub body: &'a [u8],
    /// How long the record is kept.
    pub retention: Duration,
}

/// One page of a listing; `next` is the offset of the following page, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<u64>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// "redis" or "embedded-store": how status and logs name this backend.
    fn name(&self) -> &'static str;

    /// A cheap round trip that proves the backend answers.
    async fn ping(&self) -> StoreResult<()>;

    /// The health of each node behind the store, where there are several (a Redis Cluster, a
    /// Sentinel-managed primary and its replicas); empty for a single node or an embedded
    /// store, whose health is [`Store::ping`]'s.
    async fn nodes(&self) -> StoreResult<Vec<NodeHealth>> {
        Ok(Vec::new())
    }

    /// Where the store counts the bytes each key's sessions store, for the storage-pressure
    /// policy ([`pressure`]); `None` where no such policy applies (the embedded store).
    fn storage_ledger(&self) -> Option<std::sync::Arc<pressure::StorageLedger>> {
        None
    }

    // ---- API keys ----

    /// Stores a new key. Ids and hashes are fresh by construction (random).
    async fn insert_key(&self, key: &KeyRecord) -> StoreResult<()>;
    async fn key_by_hash(&self, secret_hash: &str) -> StoreResult<Option<KeyRecord>>;
    async fn key_by_id(&self, id: &str) -> StoreResult<Option<KeyRecord>>;
    /// Every key, oldest first.
    async fn list_keys(&self) -> StoreResult<Vec<KeyRecord>>;
    /// Replaces an existing key's record (name, limits, revocation, last use).
    /// Returns false when no key has that id; the secret hash never changes.
    /// Revocation is permanent: a write racing a revoke never clears it.
    async fn update_key(&self, key: &KeyRecord) -> StoreResult<bool>;

    /// Records that the key was used at `at` (never moving the time backwards), changing
    /// nothing else, in one atomic step: read-then-write through `update_key` would undo an
    /// administrator's change written by another replica in between.
    async fn touch_key(&self, id: &str, at: DateTime<Utc>) -> StoreResult<()>;

    // ---- sessions ----

    /// Creates the session with its first messages, atomically, unless the owner already has
    /// a session with that id, or already keeps `caps.max_sessions` sessions, or the messages
    /// pass the session's quotas: then it writes nothing and says why. The session count is
    /// exact across replicas (two creates racing for the last slot cannot both have it).
    async fn create_session(
        &self,
        session: &SessionRecord,
        messages: &[StoredMessage],
        caps: SessionCaps,
    ) -> StoreResult<CreateOutcome>;
    /// How many sessions count against the owner's `maxSessions` quota now.
    async fn session_count(&self, owner: &str) -> StoreResult<u64>;
    async fn get_session(&self, owner: &str, id: &str) -> StoreResult<Option<SessionRecord>>;
    /// The owner's sessions, newest first.
    async fn list_sessions(
        &self,
        owner: &str,
        offset: u64,
        limit: u32,
    ) -> StoreResult<Page<SessionRecord>>;
    /// Messages in the order they were stored.
    async fn list_messages(
        &self,
        owner: &str,
        id: &str,
        offset: u64,
        limit: u32,
    ) -> StoreResult<Page<StoredMessage>>;
    /// Deletes the session, its history and its turn lock (a turn in flight then finds the
    /// session gone when it stores, see [`AppendOutcome::SessionGone`], and a session created
    /// again under the id is not kept waiting for it). Returns false when there was none.
    async fn delete_session(&self, owner: &str, id: &str) -> StoreResult<bool>;

    /// Takes the session's turn lock for `lease` unless another holder has it, and reads the
    /// session with the part of its history that `budget` can hold under the lock, in one step:
    /// the system prompt at its head, the latest summary, and the latest messages walking back
    /// from the end while they fit (each costs [`StoredMessage::prompt_cost`]; a message stored
    /// without its count may be costed higher, never lower).
    async fn lock_session(
        &self,
        owner: &str,
        id: &str,
        token: &str,
        lease: Duration,
        budget: &HistoryBudget,
    ) -> StoreResult<LockOutcome>;
    /// Appends a compaction summary (a message with [`StoredMessage::summary`] set) as the
    /// session's latest, keeping the turn lock, if the fence still holds: the summary is stored
    /// even if the turn that made it fails later.
    async fn append_summary(
        &self,
        owner: &str,
        id: &str,
        fence: TurnFence<'_>,
        summary: &StoredMessage,
    ) -> StoreResult<AppendOutcome>;
    /// Appends a whole turn (user message(s) and the reply) and releases the
    /// lock, atomically, if and only if the session is still the incarnation the fence names,
    /// the fence's token still holds the lock, and the session stays within `caps`' messages
    /// and bytes (otherwise [`AppendOutcome::OverQuota`], the lock released).
    async fn append_turn(
        &self,
        owner: &str,
        id: &str,
        fence: TurnFence<'_>,
        messages: &[StoredMessage],
        at: DateTime<Utc>,
        caps: SessionCaps,
    ) -> StoreResult<AppendOutcome>;
    /// Releases the lock if `token` holds it; otherwise does nothing.
    async fn unlock_session(&self, owner: &str, id: &str, token: &str) -> StoreResult<()>;

    /// [`Store::append_turn`] that also records `result`, in the same atomic
    /// step: the turn is stored with its record or neither is.
    #[allow(clippy::too_many_arguments)]
    async fn append_turn_recording(
        &self,
        owner: &str,
        id: &str,
        fence: TurnFence<'_>,
        messages: &[StoredMessage],
        at: DateTime<Utc>,
        result: RecordedResult<'_>,
        caps: SessionCaps,
    ) -> StoreResult<AppendOutcome>;

    /// The body recorded for `request_id` in the owner's session, while it is
    /// retained. Deleting the session deletes its records.
    async fn recorded_result(
        &self,
        owner: &str,
        id: &str,
        request_id: &str,
    ) -> StoreResult<Option<Vec<u8>>>;

    /// Drops up to `budget` sessions that expired ([`SessionRecord::expiry`]) with everything
    /// of theirs, index entries included, and returns how many entries it dropped; run in the
    /// background (`OPENCLAW_SESSION_SWEEP_INTERVAL_SECS`), never on a request. Reads treat an
    /// expired session as absent whether or not a sweep has come by yet.
    async fn sweep_expired_sessions(&self, budget: usize) -> StoreResult<usize> {
        let _ = budget;
        Ok(0)
    }
}

/// What [`Store::lock_session`] found.
// Acquired is the outcome nearly every time, made once per turn and taken apart at once:
// boxing it would cost an allocation per turn and buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum LockOutcome {
    Acquired {
        session: SessionRecord,
        history: History,
    },
    /// Another holder has the lock; try again later.
    Busy,
    /// The owner has no such session; no lock was taken.
    NoSession,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_expires_at_the_earlier_of_idle_expiry_and_its_own_end() {
        let at = |secs: i64| DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap();
        let mut session = SessionRecord {
            owner: "k".into(),
            id: "s".into(),
            model: "m".into(),
            status: "active".into(),
            created_at: at(0),
            updated_at: at(10),
            temperature: None,
            max_tokens: None,
            message_count: 0,
            incarnation: String::new(),
            idle_ttl_seconds: 0,
            expires_at: None,
            context_strategy: ContextStrategy::Window,
            summary_at: None,
            sampling: None,
        };
        assert_eq!(session.expiry(), None, "kept until deleted");
        session.idle_ttl_seconds = 60;
        assert_eq!(session.expiry(), Some(at(70)), "last activity + idle time");
        session.expires_at = Some(at(40));
        assert_eq!(session.expiry(), Some(at(40)), "its own end comes first");
        session.expires_at = Some(at(100));
        assert_eq!(session.expiry(), Some(at(70)));
        assert!(!session.expired_at(at(69)) && session.expired_at(at(70)));
        session.idle_ttl_seconds = u64::MAX;
        assert_eq!(
            session.expiry(),
            Some(at(100)),
            "an endless idle time never overflows"
        );
        session.idle_ttl_seconds = 0;
        assert_eq!(session.expiry(), Some(at(100)));
    }

    #[test]
    fn a_message_stored_before_token_counts_reads_back_uncounted() {
        let old = r#"{"role":"user","content":"hi","createdAt":"2026-01-02T03:04:05Z"}"#;
        let message: StoredMessage = serde_json::from_str(old).unwrap();
        assert_eq!(message.tokens, None);
        let counted = StoredMessage::counted("user".into(), "hi".into(), message.created_at);
        let written = serde_json::to_string(&counted).unwrap();
        assert!(written.contains(r#""tokens":1"#), "{written}");
        assert_eq!(
            serde_json::from_str::<StoredMessage>(&written).unwrap(),
            counted
        );
    }

    /// The Redis turn read finds a message's count, and a summary's range, in the stored JSON.
    #[test]
    fn the_token_count_ends_the_stored_json() {
        let mut summary = StoredMessage::counted(
            "system".into(),
            "Earlier: \"tokens\":9} \"summary\":{\"from\":1".into(),
            Utc::now(),
        );
        summary.summary = Some(SummaryOf { from: 1, to: 7 });
        let written = serde_json::to_string(&summary).unwrap();
        let tokens = summary.tokens.unwrap();
        assert!(
            written.ends_with(&format!(
                r#","summary":{{"from":1,"to":7}},"tokens":{tokens}}}"#
            )),
            "{written}"
        );
        assert!(written.starts_with(r#"{"role":"system","#), "{written}");
    }
}
