//! The single-machine default store: one redb file, so keys, sessions and
//! their histories survive a restart with no service to run beside the core.
//!
//! Layout (values are JSON; keys are redb tuples, so no separator inside a
//! client-chosen session id can make one row look like another's):
//! - `keys`: key id → [`KeyRecord`]; `keys_by_hash`: secret hash → key id.
//! - `sessions`: (owner, session id) → [`SessionRecord`], whose `message_count`
//!   is kept equal to the number of stored messages, and whose `summary_at` is the index of
//!   the latest compaction summary.
//! - `sessions_by_age`: (owner, creation time, session id) → (), the listing
//!   index: one owner's sessions are one contiguous range.
//! - `messages`: (owner, session id, seq) → [`StoredMessage`], seq dense from 0.
//! - `session_bytes`: (owner, session id) → bytes of message content the session holds (its
//!   `maxSessionBytes` quota); a session stored before it existed has it computed by its first
//!   append. The owner's `maxSessions` quota counts its `sessions_by_age` entries.
//! - `turn_results`: (owner, session id, request id) → expiry (unix ms, 8 bytes
//!   big-endian) followed by the recorded body; `turn_results_by_expiry`:
//!   (expiry, owner, session id, request id) → (), so expired records are
//!   dropped oldest first as new ones are written.
//! - `sessions_by_expiry`: (expiry, unix ms; owner; session id) → (), one entry per session
//!   that expires ([`SessionRecord::expiry`]), moved by every turn: the background sweep
//!   ([`Store::sweep_expired_sessions`]) takes the due ones from its front. Reads treat an
//!   expired session as absent before the sweep has come by.
//!
//! - `spend_*`: the usage ledger and budget spend ([`EmbeddedSpend`], in `embedded/spend.rs`).
//!
//! Every change that touches several rows is one write transaction. redb is
//! blocking, so every database call runs on the blocking pool.
//!
//! Turn locks serve one process, so they live in memory beside the database
//! and vanish with it: after a restart no turn is in flight.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redb::backends::InMemoryBackend;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;

mod spend;

pub use spend::EmbeddedSpend;

use super::{
    AppendOutcome, CapBreach, CreateOutcome, History, HistoryBudget, KeyRecord, LockOutcome, Page,
    RecordedResult, SessionCap, SessionCaps, SessionRecord, Store, StoreError, StoreResult,
    StoredMessage, TurnFence, first_messages_breach,
};

type SessionKey = (&'static str, &'static str);
type AgeKey = (&'static str, u128, &'static str);
type MessageKey = (&'static str, &'static str, u32);
type ResultKey = (&'static str, &'static str, &'static str);
type ResultExpiryKey = (u64, &'static str, &'static str, &'static str);
type SessionExpiryKey = (u64, &'static str, &'static str);

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
const KEYS_BY_HASH: TableDefinition<&str, &str> = TableDefinition::new("keys_by_hash");
const SESSIONS: TableDefinition<SessionKey, &[u8]> = TableDefinition::new("sessions");
const SESSIONS_BY_AGE: TableDefinition<AgeKey, ()> = TableDefinition::new("sessions_by_age");
const MESSAGES: TableDefinition<MessageKey, &[u8]> = TableDefinition::new("messages");
const SESSION_BYTES: TableDefinition<SessionKey, u64> = TableDefinition::new("session_bytes");
const TURN_RESULTS: TableDefinition<ResultKey, &[u8]> = TableDefinition::new("turn_results");
const TURN_RESULTS_BY_EXPIRY: TableDefinition<ResultExpiryKey, ()> =
    TableDefinition::new("turn_results_by_expiry");
const SESSIONS_BY_EXPIRY: TableDefinition<SessionExpiryKey, ()> =
    TableDefinition::new("sessions_by_expiry");

/// How many expired turn results one write drops, at most.
const RESULT_PRUNE_BATCH: usize = 64;

const SCHEMA_VERSION_KEY: &str = "schema_version";
const SCHEMA_VERSION: u64 = 1;

/// Above this many entries, taking a lock first drops the expired ones.
const LOCK_PRUNE_THRESHOLD: usize = 1024;

/// The store backed by a redb database; see the module docs for the layout.
pub struct EmbeddedStore {
    db: Arc<Database>,
    locks: Arc<LockTable>,
}

type LockTable = Mutex<HashMap<(String, String), TurnLock>>;

/// A session's turn lock.
struct TurnLock {
    token: String,
    expires: Instant,
    /// An `append_turn` with this token is writing: nobody may take the lock
    /// (even if its lease runs out meanwhile) until that write has finished.
    committing: bool,
}

impl TurnLock {
    fn live(&self, now: Instant) -> bool {
        self.committing || self.expires > now
    }

    /// Whether `token` must wait for this lock.
    fn blocks(&self, token: &str, now: Instant) -> bool {
        self.committing || (self.token != token && self.expires > now)
    }
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

/// Maps any redb failure to [`StoreError::Unavailable`].
trait OrUnavailable<T> {
    fn or_unavailable(self) -> StoreResult<T>;
}

impl<T, E: Into<redb::Error>> OrUnavailable<T> for Result<T, E> {
    fn or_unavailable(self) -> StoreResult<T> {
        self.map_err(|e| StoreError::Unavailable(format!("embedded store: {}", e.into())))
    }
}

fn encode<T: Serialize>(what: &str, value: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(format!("cannot encode {what}: {e}")))
}

fn decode<T: DeserializeOwned>(what: &str, raw: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(raw).map_err(|e| StoreError::Corrupt(format!("stored {what}: {e}")))
}

fn lock_table(locks: &LockTable) -> MutexGuard<'_, HashMap<(String, String), TurnLock>> {
    // The map holds no invariant a panicking holder could have broken halfway.
    locks.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Orders creation times as unsigned integers (nanosecond precision), so the
/// index's natural order is oldest first.
fn age_key(created_at: DateTime<Utc>) -> u128 {
    let nanos = i128::from(created_at.timestamp()) * 1_000_000_000
        + i128::from(created_at.timestamp_subsec_nanos());
    (nanos as u128) ^ (1 << 127)
}

fn too_long() -> StoreError {
    StoreError::Unavailable(
        "embedded store: a session cannot hold more than u32::MAX messages".into(),
    )
}

/// Commits when `keep`, otherwise abandons every change of the transaction.
fn finish(txn: WriteTransaction, keep: bool) -> StoreResult<()> {
    if keep {
        txn.commit().or_unavailable()
    } else {
        txn.abort().or_unavailable()
    }
}

fn read_key(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> StoreResult<Option<KeyRecord>> {
    match table.get(id).or_unavailable()? {
        Some(raw) => decode("key", raw.value()).map(Some),
        None => Ok(None),
    }
}

/// The session, unless there is none or it has expired (which is the same to every reader).
fn read_session(
    table: &impl ReadableTable<SessionKey, &'static [u8]>,
    owner: &str,
    id: &str,
) -> StoreResult<Option<SessionRecord>> {
    Ok(read_session_row(table, owner, id)?.filter(|s| !s.expired_at(Utc::now())))
}

/// The session's row as stored, expired or not.
fn read_session_row(
    table: &impl ReadableTable<SessionKey, &'static [u8]>,
    owner: &str,
    id: &str,
) -> StoreResult<Option<SessionRecord>> {
    match table.get((owner, id)).or_unavailable()? {
        Some(raw) => decode("session", raw.value()).map(Some),
        None => Ok(None),
    }
}

/// A session's place in `sessions_by_expiry`, when it expires.
fn expiry_ms(session: &SessionRecord) -> Option<u64> {
    session
        .expiry()
        .map(|at| u64::try_from(at.timestamp_millis()).unwrap_or(0))
}

/// Moves the session's entry in `sessions_by_expiry` from where `before` had it to where
/// `after` has it (either may be `None`: not there).
fn move_expiry(
    txn: &WriteTransaction,
    owner: &str,
    id: &str,
    before: Option<u64>,
    after: Option<u64>,
) -> StoreResult<()> {
    if before == after {
        return Ok(());
    }
    let mut by_expiry = txn.open_table(SESSIONS_BY_EXPIRY).or_unavailable()?;
    if let Some(old) = before {
        by_expiry.remove((old, owner, id)).or_unavailable()?;
    }
    if let Some(new) = after {
        by_expiry.insert((new, owner, id), ()).or_unavailable()?;
    }
    Ok(())
}

/// Removes the session's row, listing entry, expiry entry, history and recorded results; the
/// removed row, if there was one (expired or not).
fn purge_session(
    txn: &WriteTransaction,
    owner: &str,
    id: &str,
) -> StoreResult<Option<SessionRecord>> {
    let mut sessions = txn.open_table(SESSIONS).or_unavailable()?;
    let removed = match sessions.remove((owner, id)).or_unavailable()? {
        Some(raw) => decode::<SessionRecord>("session", raw.value())?,
        None => return Ok(None),
    };
    txn.open_table(SESSIONS_BY_AGE)
        .or_unavailable()?
        .remove((owner, age_key(removed.created_at), id))
        .or_unavailable()?;
    move_expiry(txn, owner, id, expiry_ms(&removed), None)?;
    txn.open_table(MESSAGES)
        .or_unavailable()?
        .retain_in((owner, id, 0u32)..=(owner, id, u32::MAX), |_, _| false)
        .or_unavailable()?;
    delete_results(txn, owner, id)?;
    txn.open_table(SESSION_BYTES)
        .or_unavailable()?
        .remove((owner, id))
        .or_unavailable()?;
    Ok(Some(removed))
}

/// Up to `limit` messages of one session, from sequence number `from` on.
fn read_messages(
    table: &impl ReadableTable<MessageKey, &'static [u8]>,
    owner: &str,
    id: &str,
    from: u32,
    limit: usize,
) -> StoreResult<Vec<StoredMessage>> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    for entry in table
        .range((owner, id, from)..=(owner, id, u32::MAX))
        .or_unavailable()?
    {
        let (_, raw) = entry.or_unavailable()?;
        out.push(decode("message", raw.value())?);
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// The session and what of its history `budget` can hold (see [`Store::lock_session`]), from
/// one snapshot: the system prompt at the head, the latest summary, and the latest messages,
/// read backwards while they fit.
fn read_session_with_tail(
    db: &Database,
    owner: &str,
    id: &str,
    budget: &HistoryBudget,
) -> StoreResult<Option<(SessionRecord, History)>> {
    let txn = db.begin_read().or_unavailable()?;
    let sessions = txn.open_table(SESSIONS).or_unavailable()?;
    let Some(session) = read_session(&sessions, owner, id)? else {
        return Ok(None);
    };
    let messages = txn.open_table(MESSAGES).or_unavailable()?;
    let len = session.message_count;
    let mut room = budget.for_history(&session);
    let mut history = History {
        len: u64::from(len),
        ..History::default()
    };
    for entry in messages
        .range((owner, id, 0u32)..(owner, id, len))
        .or_unavailable()?
    {
        let (_, raw) = entry.or_unavailable()?;
        let message: StoredMessage = decode("message", raw.value())?;
        if message.role != "system" {
            break;
        }
        room -= message.prompt_cost() as i64;
        history.head.push(message);
    }
    if let Some(at) = session.summary_at
        && let Ok(index) = u32::try_from(at)
        && let Some(raw) = messages.get((owner, id, index)).or_unavailable()?
    {
        let summary: StoredMessage = decode("message", raw.value())?;
        room -= summary.prompt_cost() as i64;
        history.summary = Some((at, summary));
    }
    let lower = u32::try_from(history.lower_bound()).unwrap_or(u32::MAX);
    history.complete = true;
    for entry in messages
        .range((owner, id, lower)..(owner, id, len.max(lower)))
        .or_unavailable()?
        .rev()
    {
        let (key, raw) = entry.or_unavailable()?;
        let index = u64::from(key.value().2);
        if Some(index) == session.summary_at {
            continue;
        }
        let message: StoredMessage = decode("message", raw.value())?;
        let cost = message.prompt_cost() as i64;
        if cost > room {
            history.complete = false;
            break;
        }
        room -= cost;
        history.tail.push((index, message));
    }
    history.tail.reverse();
    Ok(Some((session, history)))
}

/// How many sessions `owner` keeps, counting no further than `up_to`.
fn count_sessions(
    index: &impl ReadableTable<AgeKey, ()>,
    owner: &str,
    up_to: u64,
) -> StoreResult<u64> {
    // `owner` followed by NUL is the least string above `owner`.
    let after_owner = format!("{owner}\0");
    let mut n = 0;
    for entry in index
        .range((owner, 0u128, "")..(after_owner.as_str(), 0u128, ""))
        .or_unavailable()?
    {
        entry.or_unavailable()?;
        n += 1;
        if n >= up_to {
            break;
        }
    }
    Ok(n)
}

/// Deletes the owner's sessions that have expired (walking its whole index: only a create that
/// finds the owner's quota full does this).
fn purge_expired_sessions_of(txn: &WriteTransaction, owner: &str) -> StoreResult<()> {
    let now = Utc::now();
    let ids: Vec<String> = {
        let index = txn.open_table(SESSIONS_BY_AGE).or_unavailable()?;
        let after_owner = format!("{owner}\0");
        let mut ids = Vec::new();
        for entry in index
            .range((owner, 0u128, "")..(after_owner.as_str(), 0u128, ""))
            .or_unavailable()?
        {
            let (key, _) = entry.or_unavailable()?;
            ids.push(key.value().2.to_owned());
        }
        ids
    };
    for id in ids {
        let expired = read_session_row(&txn.open_table(SESSIONS).or_unavailable()?, owner, &id)?
            .is_some_and(|session| session.expired_at(now));
        if expired {
            purge_session(txn, owner, &id)?;
        }
    }
    Ok(())
}

fn session_exists(db: &Database, owner: &str, id: &str) -> StoreResult<bool> {
    let txn = db.begin_read().or_unavailable()?;
    let sessions = txn.open_table(SESSIONS).or_unavailable()?;
    Ok(read_session(&sessions, owner, id)?.is_some())
}

/// Whether the session exists as the incarnation a turn began on.
fn incarnation_lives(db: &Database, owner: &str, id: &str, incarnation: &str) -> StoreResult<bool> {
    let txn = db.begin_read().or_unavailable()?;
    let sessions = txn.open_table(SESSIONS).or_unavailable()?;
    Ok(read_session(&sessions, owner, id)?.is_some_and(|s| s.incarnation == incarnation))
}

/// Now, as unix milliseconds (the clock of the turn results' expiry).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A recorded request result, owned so it can move to the blocking pool.
struct OwnedResult {
    request_id: String,
    /// Expiry (unix ms, big-endian) followed by the body.
    row: Vec<u8>,
    expires: u64,
}

impl OwnedResult {
    fn new(result: RecordedResult<'_>) -> Self {
        let expires = unix_ms().saturating_add(result.retention.as_millis() as u64);
        let mut row = Vec::with_capacity(8 + result.body.len());
        row.extend_from_slice(&expires.to_be_bytes());
        row.extend_from_slice(result.body);
        Self {
            request_id: result.request_id.to_owned(),
            row,
            expires,
        }
    }
}

/// Records `result` in `txn`, after dropping a batch of expired records.
fn write_result(
    txn: &WriteTransaction,
    owner: &str,
    id: &str,
    result: &OwnedResult,
) -> StoreResult<()> {
    let mut results = txn.open_table(TURN_RESULTS).or_unavailable()?;
    let mut by_expiry = txn.open_table(TURN_RESULTS_BY_EXPIRY).or_unavailable()?;
    let now = unix_ms();
    let mut expired = Vec::new();
    for entry in by_expiry
        .range((0u64, "", "", "")..(now, "", "", ""))
        .or_unavailable()?
        .take(RESULT_PRUNE_BATCH)
    {
        let (key, _) = entry.or_unavailable()?;
        let (at, o, s, r) = key.value();
        expired.push((at, o.to_owned(), s.to_owned(), r.to_owned()));
    }
    for (at, o, s, r) in &expired {
        by_expiry
            .remove((*at, o.as_str(), s.as_str(), r.as_str()))
            .or_unavailable()?;
        results
            .remove((o.as_str(), s.as_str(), r.as_str()))
            .or_unavailable()?;
    }
    let previous = results
        .insert(
            (owner, id, result.request_id.as_str()),
            result.row.as_slice(),
        )
        .or_unavailable()?
        .map(|old| expiry_of(old.value()));
    if let Some(old) = previous {
        by_expiry
            .remove((old, owner, id, result.request_id.as_str()))
            .or_unavailable()?;
    }
    by_expiry
        .insert((result.expires, owner, id, result.request_id.as_str()), ())
        .or_unavailable()?;
    Ok(())
}

fn expiry_of(row: &[u8]) -> u64 {
    row.get(..8)
        .and_then(|head| <[u8; 8]>::try_from(head).ok())
        .map_or(0, u64::from_be_bytes)
}

/// Drops every recorded result of one session.
fn delete_results(txn: &WriteTransaction, owner: &str, id: &str) -> StoreResult<()> {
    let mut results = txn.open_table(TURN_RESULTS).or_unavailable()?;
    let mut by_expiry = txn.open_table(TURN_RESULTS_BY_EXPIRY).or_unavailable()?;
    // `id` followed by NUL is the least id above `id`: the range is exactly this session's.
    let after = format!("{id}\0");
    let mut doomed = Vec::new();
    for entry in results
        .range((owner, id, "")..(owner, after.as_str(), ""))
        .or_unavailable()?
    {
        let (key, row) = entry.or_unavailable()?;
        doomed.push((key.value().2.to_owned(), expiry_of(row.value())));
    }
    for (request_id, expires) in &doomed {
        results
            .remove((owner, id, request_id.as_str()))
            .or_unavailable()?;
        by_expiry
            .remove((*expires, owner, id, request_id.as_str()))
            .or_unavailable()?;
    }
    Ok(())
}

/// Appends already-encoded messages and bumps the session row (and records
/// `result`, when given), in one transaction, if the session is still the incarnation
/// the turn began on.
#[allow(clippy::too_many_arguments)]
fn write_turn(
    db: &Database,
    owner: &str,
    id: &str,
    incarnation: &str,
    encoded: &[Vec<u8>],
    added_bytes: u64,
    at: DateTime<Utc>,
    result: Option<&OwnedResult>,
    caps: SessionCaps,
) -> StoreResult<AppendOutcome> {
    let txn = db.begin_write().or_unavailable()?;
    let outcome = {
        let mut sessions = txn.open_table(SESSIONS).or_unavailable()?;
        match read_session(&sessions, owner, id)? {
            Some(session) if session.incarnation != incarnation => AppendOutcome::SessionGone,
            None => AppendOutcome::SessionGone,
            Some(mut session) => 'write: {
                let expired_before = expiry_ms(&session);
                let mut messages = txn.open_table(MESSAGES).or_unavailable()?;
                let mut bytes_table = txn.open_table(SESSION_BYTES).or_unavailable()?;
                let stored = bytes_table
                    .get((owner, id))
                    .or_unavailable()?
                    .map(|v| v.value());
                let bytes = match stored {
                    Some(bytes) => bytes,
                    // Stored before the count existed: counted once, now.
                    None => read_messages(&messages, owner, id, 0, usize::MAX)?
                        .iter()
                        .map(|m| m.content.len() as u64)
                        .sum(),
                };
                let count = u64::from(session.message_count);
                if count + encoded.len() as u64 > caps.max_messages {
                    break 'write AppendOutcome::OverQuota(CapBreach {
                        cap: SessionCap::Messages,
                        limit: caps.max_messages,
                        used: count,
                    });
                }
                if bytes.saturating_add(added_bytes) > caps.max_bytes {
                    break 'write AppendOutcome::OverQuota(CapBreach {
                        cap: SessionCap::Bytes,
                        limit: caps.max_bytes,
                        used: bytes,
                    });
                }
                bytes_table
                    .insert((owner, id), bytes.saturating_add(added_bytes))
                    .or_unavailable()?;
                for raw in encoded {
                    messages
                        .insert((owner, id, session.message_count), raw.as_slice())
                        .or_unavailable()?;
                    session.message_count =
                        session.message_count.checked_add(1).ok_or_else(too_long)?;
                }
                session.updated_at = at;
                sessions
                    .insert((owner, id), encode("session", &session)?.as_slice())
                    .or_unavailable()?;
                move_expiry(&txn, owner, id, expired_before, expiry_ms(&session))?;
                if let Some(result) = result {
                    write_result(&txn, owner, id, result)?;
                }
                AppendOutcome::Appended
            }
        }
    };
    finish(txn, outcome == AppendOutcome::Appended)?;
    Ok(outcome)
}

/// Appends a compaction summary as the session's latest message and records where it is, if
/// the session is still the incarnation the turn began on.
fn write_summary(
    db: &Database,
    owner: &str,
    id: &str,
    incarnation: &str,
    encoded: &[u8],
    content_bytes: u64,
) -> StoreResult<AppendOutcome> {
    let txn = db.begin_write().or_unavailable()?;
    let outcome = {
        let mut sessions = txn.open_table(SESSIONS).or_unavailable()?;
        match read_session(&sessions, owner, id)? {
            Some(mut session) if session.incarnation == incarnation => {
                let index = session.message_count;
                txn.open_table(MESSAGES)
                    .or_unavailable()?
                    .insert((owner, id, index), encoded)
                    .or_unavailable()?;
                session.message_count = index.checked_add(1).ok_or_else(too_long)?;
                session.summary_at = Some(u64::from(index));
                sessions
                    .insert((owner, id), encode("session", &session)?.as_slice())
                    .or_unavailable()?;
                // The summary's content counts in the session's bytes like any message (a
                // session without the count yet has it computed, summary included, later).
                let mut bytes = txn.open_table(SESSION_BYTES).or_unavailable()?;
                let counted = bytes.get((owner, id)).or_unavailable()?.map(|v| v.value());
                if let Some(counted) = counted {
                    bytes
                        .insert((owner, id), counted.saturating_add(content_bytes))
                        .or_unavailable()?;
                }
                AppendOutcome::Appended
            }
            _ => AppendOutcome::SessionGone,
        }
    };
    finish(txn, outcome == AppendOutcome::Appended)?;
    Ok(outcome)
}

/// Marks the turn lock "committing" if `token` holds it and its lease runs; whether it did.
fn begin_commit(locks: &LockTable, key: &(String, String), token: &str) -> bool {
    let now = Instant::now();
    let mut table = lock_table(locks);
    match table.get_mut(key) {
        Some(lock) if lock.token == token && !lock.committing && lock.expires > now => {
            lock.committing = true;
            true
        }
        _ => false,
    }
}

/// Ends the "committing" state of a turn lock however the write ends (even
/// by a panic): the lock is released after a completed write, and handed
/// back to its holder after a failed one.
struct CommitGuard<'a> {
    locks: &'a LockTable,
    key: &'a (String, String),
    token: &'a str,
    release: bool,
}

impl Drop for CommitGuard<'_> {
    fn drop(&mut self) {
        let mut locks = lock_table(self.locks);
        let ours = matches!(
            locks.get(self.key),
            Some(lock) if lock.token == self.token && lock.committing
        );
        if !ours {
            return;
        }
        if self.release {
            locks.remove(self.key);
        } else if let Some(lock) = locks.get_mut(self.key) {
            lock.committing = false;
        }
    }
}

impl EmbeddedStore {
    /// Opens (creating it and its parent directories if needed) the database file at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Unavailable(format!(
                    "embedded store: cannot create {}: {e}",
                    parent.display()
                ))
            })?;
        }
        let db = Database::create(path).map_err(|e| {
            StoreError::Unavailable(format!(
                "embedded store: cannot open {}: {e}",
                path.display()
            ))
        })?;
        Self::init(db)
    }

    /// A store kept in memory only, gone when dropped (for tests).
    pub fn open_temporary() -> Result<Self, StoreError> {
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .or_unavailable()?;
        Self::init(db)
    }

    /// Creates the tables and checks the file's schema version.
    fn init(db: Database) -> StoreResult<Self> {
        let txn = db.begin_write().or_unavailable()?;
        {
            let mut meta = txn.open_table(META).or_unavailable()?;
            let version = meta
                .get(SCHEMA_VERSION_KEY)
                .or_unavailable()?
                .map(|v| v.value());
            match version {
                None => {
                    meta.insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION)
                        .or_unavailable()?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(other) => {
                    return Err(StoreError::Corrupt(format!(
                        "embedded store has schema version {other}; this build reads version {SCHEMA_VERSION}"
                    )));
                }
            }
            txn.open_table(KEYS).or_unavailable()?;
            txn.open_table(KEYS_BY_HASH).or_unavailable()?;
            txn.open_table(SESSIONS).or_unavailable()?;
            txn.open_table(SESSIONS_BY_AGE).or_unavailable()?;
            txn.open_table(MESSAGES).or_unavailable()?;
            txn.open_table(SESSION_BYTES).or_unavailable()?;
            txn.open_table(TURN_RESULTS).or_unavailable()?;
            txn.open_table(TURN_RESULTS_BY_EXPIRY).or_unavailable()?;
            txn.open_table(SESSIONS_BY_EXPIRY).or_unavailable()?;
        }
        txn.commit().or_unavailable()?;
        Ok(Self {
            db: Arc::new(db),
            locks: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The database, for other parts of the core that keep their own tables in the same file.
    pub(crate) fn database(&self) -> Arc<Database> {
        self.db.clone()
    }

    /// Appends a turn (recording `result` with it, when given) if the session is the fence's
    /// incarnation and the fence's token holds the lock.
    #[allow(clippy::too_many_arguments)]
    async fn append(
        &self,
        owner: &str,
        id: &str,
        fence: TurnFence<'_>,
        messages: &[StoredMessage],
        at: DateTime<Utc>,
        result: Option<OwnedResult>,
        caps: SessionCaps,
    ) -> StoreResult<AppendOutcome> {
        let added_bytes = super::content_bytes(messages);
        let encoded = messages
            .iter()
            .map(|m| encode("message", m))
            .collect::<StoreResult<Vec<_>>>()?;
        let key = (owner.to_owned(), id.to_owned());
        let token = fence.token.to_owned();
        let incarnation = fence.incarnation.to_owned();
        // All in one blocking task, so a caller that gives up half way cannot
        // leave the lock in the committing state.
        self.blocking(move |db, locks| {
            let held = begin_commit(locks, &key, &token);
            if !held {
                // Deleting a session drops its lock: say the session is gone (deleted, or
                // created again as another incarnation) when it is, not that the lock was lost.
                return Ok(if incarnation_lives(db, &key.0, &key.1, &incarnation)? {
                    AppendOutcome::LockLost
                } else {
                    AppendOutcome::SessionGone
                });
            }
            let mut guard = CommitGuard {
                locks,
                key: &key,
                token: &token,
                release: false,
            };
            let outcome = write_turn(
                db,
                &key.0,
                &key.1,
                &incarnation,
                &encoded,
                added_bytes,
                at,
                result.as_ref(),
                caps,
            )?;
            guard.release = true;
            drop(guard);
            Ok(outcome)
        })
        .await
    }

    /// Runs blocking database work off the async workers.
    async fn blocking<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database, &LockTable) -> StoreResult<T> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        let locks = Arc::clone(&self.locks);
        tokio::task::spawn_blocking(move || work(&db, &locks))
            .await
            .map_err(|e| StoreError::Unavailable(format!("embedded store task failed: {e}")))?
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn name(&self) -> &'static str {
        "embedded-store"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.blocking(|db, _| {
            let txn = db.begin_read().or_unavailable()?;
            let meta = txn.open_table(META).or_unavailable()?;
            meta.get(SCHEMA_VERSION_KEY).or_unavailable()?;
            Ok(())
        })
        .await
    }

    // ---- API keys ----

    async fn insert_key(&self, key: &KeyRecord) -> StoreResult<()> {
        let raw = encode("key", key)?;
        let id = key.id.clone();
        let hash = key.secret_hash.clone();
        self.blocking(move |db, _| {
            let txn = db.begin_write().or_unavailable()?;
            {
                let mut keys = txn.open_table(KEYS).or_unavailable()?;
                let mut by_hash = txn.open_table(KEYS_BY_HASH).or_unavailable()?;
                // Ids are fresh by construction; should one repeat, its old
                // hash must not keep pointing at the new record.
                if let Some(previous) = read_key(&keys, &id)?
                    && previous.secret_hash != hash
                {
                    by_hash
                        .remove(previous.secret_hash.as_str())
                        .or_unavailable()?;
                }
                keys.insert(id.as_str(), raw.as_slice()).or_unavailable()?;
                by_hash
                    .insert(hash.as_str(), id.as_str())
                    .or_unavailable()?;
            }
            txn.commit().or_unavailable()
        })
        .await
    }

    async fn key_by_hash(&self, secret_hash: &str) -> StoreResult<Option<KeyRecord>> {
        let hash = secret_hash.to_owned();
        self.blocking(move |db, _| {
            let txn = db.begin_read().or_unavailable()?;
            let by_hash = txn.open_table(KEYS_BY_HASH).or_unavailable()?;
            let Some(id) = by_hash
                .get(hash.as_str())
                .or_unavailable()?
                .map(|id| id.value().to_owned())
            else {
                return Ok(None);
            };
            let keys = txn.open_table(KEYS).or_unavailable()?;
            read_key(&keys, &id)
        })
        .await
    }

    async fn key_by_id(&self, id: &str) -> StoreResult<Option<KeyRecord>> {
        let id = id.to_owned();
        self.blocking(move |db, _| {
            let txn = db.begin_read().or_unavailable()?;
            let keys = txn.open_table(KEYS).or_unavailable()?;
            read_key(&keys, &id)
        })
        .await
    }

    async fn list_keys(&self) -> StoreResult<Vec<KeyRecord>> {
        self.blocking(|db, _| {
            let txn = db.begin_read().or_unavailable()?;
            let table = txn.open_table(KEYS).or_unavailable()?;
            let mut keys = Vec::new();
            for entry in table.iter().or_unavailable()? {
                let (_, raw) = entry.or_unavailable()?;
                keys.push(decode::<KeyRecord>("key", raw.value())?);
            }
            keys.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
            Ok(keys)
        })
        .await
    }

    async fn update_key(&self, key: &KeyRecord) -> StoreResult<bool> {
        let mut record = key.clone();
        self.blocking(move |db, _| {
            let txn = db.begin_write().or_unavailable()?;
            let updated = {
                let mut keys = txn.open_table(KEYS).or_unavailable()?;
                match read_key(&keys, &record.id)? {
                    None => false,
                    Some(current) => {
                        // The secret hash never changes, so the hash index stays valid.
                        record.secret_hash = current.secret_hash;
                        // Revocation is permanent: a stale read-modify-write
                        // (say, recording a last use) cannot undo it.
                        if record.revoked_at.is_none() {
                            record.revoked_at = current.revoked_at;
                        }
                        keys.insert(record.id.as_str(), encode("key", &record)?.as_slice())
                            .or_unavailable()?;
                        true
                    }
                }
            };
            finish(txn, updated)?;
            Ok(updated)
        })
        .await
    }

    async fn touch_key(&self, id: &str, at: DateTime<Utc>) -> StoreResult<()> {
        let id = id.to_owned();
        self.blocking(move |db, _| {
            // Read and written in one transaction: an update committed meanwhile is either
            // before it (and kept) or after it.
            let txn = db.begin_write().or_unavailable()?;
            let touched = {
                let mut keys = txn.open_table(KEYS).or_unavailable()?;
                match read_key(&keys, &id)? {
                    Some(mut key) if key.last_used_at.is_none_or(|last| last < at) => {
                        key.last_used_at = Some(at);
                        keys.insert(id.as_str(), encode("key", &key)?.as_slice())
                            .or_unavailable()?;
                        true
                    }
                    _ => false,
                }
            };
            finish(txn, touched)
        })
        .await
    }

    // ---- sessions ----

    async fn create_session(
        &self,
        session: &SessionRecord,
        messages: &[StoredMessage],
        caps: SessionCaps,
    ) -> StoreResult<CreateOutcome> {
        if let Some(breach) = first_messages_breach(messages, caps) {
            return Ok(CreateOutcome::OverQuota(breach));
        }
        let bytes = super::content_bytes(messages);
        let mut record = session.clone();
        record.message_count = u32::try_from(messages.len()).map_err(|_| too_long())?;
        let row = encode("session", &record)?;
        let encoded = messages
            .iter()
            .map(|m| encode("message", m))
            .collect::<StoreResult<Vec<_>>>()?;
        self.blocking(move |db, _| {
            let (owner, id) = (record.owner.as_str(), record.id.as_str());
            let txn = db.begin_write().or_unavailable()?;
            let outcome = {
                let stored =
                    read_session_row(&txn.open_table(SESSIONS).or_unavailable()?, owner, id)?;
                let live = match stored {
                    // An expired session the sweep has not dropped yet gives way to the new one.
                    Some(old) if old.expired_at(Utc::now()) => {
                        purge_session(&txn, owner, id)?;
                        false
                    }
                    Some(_) => true,
                    None => false,
                };
                // A full owner's sessions that expired before the sweep came by make room
                // first: expired sessions never count against maxSessions.
                let full = count_sessions(
                    &txn.open_table(SESSIONS_BY_AGE).or_unavailable()?,
                    owner,
                    caps.max_sessions,
                )? >= caps.max_sessions;
                if full {
                    purge_expired_sessions_of(&txn, owner)?;
                }
                let mut sessions = txn.open_table(SESSIONS).or_unavailable()?;
                let mut by_age = txn.open_table(SESSIONS_BY_AGE).or_unavailable()?;
                let kept = count_sessions(&by_age, owner, caps.max_sessions)?;
                if live {
                    CreateOutcome::Exists
                } else if kept >= caps.max_sessions {
                    CreateOutcome::OverQuota(CapBreach {
                        cap: SessionCap::Sessions,
                        limit: caps.max_sessions,
                        used: kept,
                    })
                } else {
                    crate::quotas::observe_usage("maxSessions", kept + 1, caps.max_sessions);
                    sessions
                        .insert((owner, id), row.as_slice())
                        .or_unavailable()?;
                    move_expiry(&txn, owner, id, None, expiry_ms(&record))?;
                    by_age
                        .insert((owner, age_key(record.created_at), id), ())
                        .or_unavailable()?;
                    txn.open_table(SESSION_BYTES)
                        .or_unavailable()?
                        .insert((owner, id), bytes)
                        .or_unavailable()?;
                    let mut table = txn.open_table(MESSAGES).or_unavailable()?;
                    for (seq, raw) in (0u32..).zip(&encoded) {
                        table
                            .insert((owner, id, seq), raw.as_slice())
                            .or_unavailable()?;
                    }
                    CreateOutcome::Created
                }
            };
            finish(txn, outcome.created())?;
            Ok(outcome)
        })
        .await
    }

    async fn session_count(&self, owner: &str) -> StoreResult<u64> {
        let owner = owner.to_owned();
        self.blocking(move |db, _| {
            let txn = db.begin_read().or_unavailable()?;
            let index = txn.open_table(SESSIONS_BY_AGE).or_unavailable()?;
            count_sessions(&index, &owner, u64::MAX)
        })
        .await
    }

    async fn get_session(&self, owner: &str, id: &str) -> StoreResult<Option<SessionRecord>> {
        let (owner, id) = (owner.to_owned(), id.to_owned());
        self.blocking(move |db, _| {
            let txn = db.begin_read().or_unavailable()?;
            let sessions = txn.open_table(SESSIONS).or_unavailable()?;
            read_session(&sessions, &owner, &id)
        })
        .await
    }

    async fn list_sessions(
        &self,
        owner: &str,
        offset: u64,
        limit: u32,
    ) -> StoreResult<Page<SessionRecord>> {
        let owner = owner.to_owned();
        self.blocking(move |db, _| {
            let txn = db.begin_read().or_unavailable()?;
            let index = txn.open_table(SESSIONS_BY_AGE).or_unavailable()?;
            // `owner` followed by NUL is the least string above `owner`, so
            // this range is exactly the owner's entries.
            let after_owner = format!("{owner}\0");
            let range = index
                .range((owner.as_str(), 0u128, "")..(after_owner.as_str(), 0u128, ""))
                .or_unavailable()?;
            let limit = limit as usize;
            let sessions = txn.open_table(SESSIONS).or_unavailable()?;
            let now = Utc::now();
            let mut items = Vec::new();
            let mut skipped = 0u64;
            let mut more = false;
            // Newest first: the index runs oldest first, so walk it backwards
            // (equal creation times therefore come by descending id). Expired sessions the
            // sweep has not dropped yet are passed over, not counted.
            for entry in range.rev() {
                let (key, _) = entry.or_unavailable()?;
                let id = key.value().2;
                let session = read_session_row(&sessions, &owner, id)?.ok_or_else(|| {
                    StoreError::Corrupt(format!("session index names missing session {id:?}"))
                })?;
                if session.expired_at(now) {
                    continue;
                }
                if skipped < offset {
                    skipped += 1;
                    continue;
                }
                if items.len() == limit {
                    more = true;
                    break;
                }
                items.push(session);
            }
            let next = more.then(|| offset + items.len() as u64);
            Ok(Page { items, next })
        })
        .await
    }

    async fn list_messages(
        &self,
        owner: &str,
        id: &str,
        offset: u64,
        limit: u32,
    ) -> StoreResult<Page<StoredMessage>> {
        let (owner, id) = (owner.to_owned(), id.to_owned());
        self.blocking(move |db, _| {
            let txn = db.begin_read().or_unavailable()?;
            let sessions = txn.open_table(SESSIONS).or_unavailable()?;
            let count = match read_session(&sessions, &owner, &id)? {
                Some(session) => u64::from(session.message_count),
                None => 0,
            };
            if offset >= count {
                return Ok(Page {
                    items: Vec::new(),
                    next: None,
                });
            }
            let messages = txn.open_table(MESSAGES).or_unavailable()?;
            // offset < count <= u32::MAX
            let items = read_messages(&messages, &owner, &id, offset as u32, limit as usize)?;
            let end = offset + items.len() as u64;
            Ok(Page {
                items,
                next: (end < count).then_some(end),
            })
        })
        .await
    }

    async fn delete_session(&self, owner: &str, id: &str) -> StoreResult<bool> {
        let (owner, id) = (owner.to_owned(), id.to_owned());
        self.blocking(move |db, locks| {
            let (owner, id) = (owner.as_str(), id.as_str());
            let txn = db.begin_write().or_unavailable()?;
            // An expired session is dropped too, but it was not there to delete.
            let removed = purge_session(&txn, owner, id)?;
            let deleted = removed.as_ref().is_some_and(|s| !s.expired_at(Utc::now()));
            finish(txn, removed.is_some())?;
            if deleted {
                // The lock goes with the session: a turn in flight is fenced by the
                // incarnation (its append finds the session gone and says so), and a session
                // created again under the id is not kept waiting for it. A lock that is
                // committing is left to its append, which finishes within the moment.
                let mut table = lock_table(locks);
                let key = (owner.to_owned(), id.to_owned());
                if table.get(&key).is_some_and(|lock| !lock.committing) {
                    table.remove(&key);
                }
            }
            Ok(deleted)
        })
        .await
    }

    async fn lock_session(
        &self,
        owner: &str,
        id: &str,
        token: &str,
        lease: Duration,
        budget: &HistoryBudget,
    ) -> StoreResult<LockOutcome> {
        let key = (owner.to_owned(), id.to_owned());
        let token = token.to_owned();
        let budget = budget.clone();
        self.blocking(move |db, locks| {
            let now = Instant::now();
            let expires = now
                .checked_add(lease)
                .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600));
            let taken = {
                let mut table = lock_table(locks);
                if table.len() > LOCK_PRUNE_THRESHOLD {
                    table.retain(|_, lock| lock.live(now));
                }
                match table.get(&key) {
                    Some(lock) if lock.blocks(&token, now) => false,
                    _ => {
                        table.insert(
                            key.clone(),
                            TurnLock {
                                token: token.clone(),
                                expires,
                                committing: false,
                            },
                        );
                        true
                    }
                }
            };
            if !taken {
                // A deleted session is reported as such, not as a lock worth waiting for.
                return Ok(if session_exists(db, &key.0, &key.1)? {
                    LockOutcome::Busy
                } else {
                    LockOutcome::NoSession
                });
            }
            // Read under the lock: every earlier holder's append has committed.
            let read = read_session_with_tail(db, &key.0, &key.1, &budget);
            if !matches!(read, Ok(Some(_))) {
                // No session (or no answer): take no lock.
                let mut table = lock_table(locks);
                let ours = matches!(
                    table.get(&key),
                    Some(lock) if lock.token == token && lock.expires == expires && !lock.committing
                );
                if ours {
                    table.remove(&key);
                }
            }
            Ok(match read? {
                Some((session, history)) => LockOutcome::Acquired { session, history },
                None => LockOutcome::NoSession,
            })
        })
        .await
    }

    async fn append_summary(
        &self,
        owner: &str,
        id: &str,
        fence: TurnFence<'_>,
        summary: &StoredMessage,
    ) -> StoreResult<AppendOutcome> {
        let encoded = encode("message", summary)?;
        let content_bytes = super::content_bytes(std::slice::from_ref(summary));
        let key = (owner.to_owned(), id.to_owned());
        let token = fence.token.to_owned();
        let incarnation = fence.incarnation.to_owned();
        self.blocking(move |db, locks| {
            let held = begin_commit(locks, &key, &token);
            if !held {
                return Ok(if incarnation_lives(db, &key.0, &key.1, &incarnation)? {
                    AppendOutcome::LockLost
                } else {
                    AppendOutcome::SessionGone
                });
            }
            // Handed back to the turn however the write ends: the turn still holds the lock.
            let _guard = CommitGuard {
                locks,
                key: &key,
                token: &token,
                release: false,
            };
            write_summary(db, &key.0, &key.1, &incarnation, &encoded, content_bytes)
        })
        .await
    }

    async fn append_turn(
        &self,
        owner: &str,
        id: &str,
        fence: TurnFence<'_>,
        messages: &[StoredMessage],
        at: DateTime<Utc>,
        caps: SessionCaps,
    ) -> StoreResult<AppendOutcome> {
        self.append(owner, id, fence, messages, at, None, caps)
            .await
    }

    async fn unlock_session(&self, owner: &str, id: &str, token: &str) -> StoreResult<()> {
        let key = (owner.to_owned(), id.to_owned());
        let mut table = lock_table(&self.locks);
        if matches!(table.get(&key), Some(lock) if lock.token == token && !lock.committing) {
            table.remove(&key);
        }
        Ok(())
    }

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
    ) -> StoreResult<AppendOutcome> {
        let result = OwnedResult::new(result);
        self.append(owner, id, fence, messages, at, Some(result), caps)
            .await
    }

    async fn recorded_result(
        &self,
        owner: &str,
        id: &str,
        request_id: &str,
    ) -> StoreResult<Option<Vec<u8>>> {
        let (owner, id, request_id) = (owner.to_owned(), id.to_owned(), request_id.to_owned());
        self.blocking(move |db, _| {
            let txn = db.begin_read().or_unavailable()?;
            // An expired session's records went with it, swept or not.
            let sessions = txn.open_table(SESSIONS).or_unavailable()?;
            if read_session(&sessions, &owner, &id)?.is_none() {
                return Ok(None);
            }
            let results = txn.open_table(TURN_RESULTS).or_unavailable()?;
            let Some(row) = results
                .get((owner.as_str(), id.as_str(), request_id.as_str()))
                .or_unavailable()?
            else {
                return Ok(None);
            };
            let row = row.value();
            if expiry_of(row) <= unix_ms() {
                return Ok(None);
            }
            Ok(row.get(8..).map(<[u8]>::to_vec))
        })
        .await
    }

    async fn sweep_expired_sessions(&self, budget: usize) -> StoreResult<usize> {
        self.blocking(move |db, _| {
            let now = Utc::now();
            let due = {
                let txn = db.begin_read().or_unavailable()?;
                let by_expiry = txn.open_table(SESSIONS_BY_EXPIRY).or_unavailable()?;
                let until = u64::try_from(now.timestamp_millis()).unwrap_or(0);
                let mut due = Vec::new();
                for entry in by_expiry
                    .range((0u64, "", "")..=(until, "", ""))
                    .or_unavailable()?
                    .take(budget)
                {
                    let (key, _) = entry.or_unavailable()?;
                    let (at, owner, id) = key.value();
                    due.push((at, owner.to_owned(), id.to_owned()));
                }
                due
            };
            if due.is_empty() {
                return Ok(0);
            }
            // One transaction for the batch; a turn that moved a session's expiry since it
            // was read keeps the session (its entry is found elsewhere now).
            let txn = db.begin_write().or_unavailable()?;
            let mut dropped = 0;
            for (at, owner, id) in &due {
                let stored =
                    read_session_row(&txn.open_table(SESSIONS).or_unavailable()?, owner, id)?;
                match stored {
                    Some(session) if session.expired_at(now) => {
                        purge_session(&txn, owner, id)?;
                        dropped += 1;
                    }
                    Some(session) if expiry_ms(&session) == Some(*at) => {}
                    _ => {
                        txn.open_table(SESSIONS_BY_EXPIRY)
                            .or_unavailable()?
                            .remove((*at, owner.as_str(), id.as_str()))
                            .or_unavailable()?;
                    }
                }
            }
            txn.commit().or_unavailable()?;
            Ok(dropped)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session stored before sessions counted their bytes (no `session_bytes` row) has the
    /// count computed from its messages by its next append, and the quota holds.
    #[tokio::test]
    async fn a_session_without_a_byte_count_is_counted_from_its_messages() {
        let store = EmbeddedStore::open_temporary().unwrap();
        let now = Utc::now();
        let session = SessionRecord {
            owner: "o".into(),
            id: "s".into(),
            model: "m".into(),
            status: "active".into(),
            created_at: now,
            updated_at: now,
            temperature: None,
            max_tokens: None,
            message_count: 0,
            incarnation: "i".into(),
            idle_ttl_seconds: 0,
            expires_at: None,
            context_strategy: Default::default(),
            summary_at: None,
            sampling: None,
        };
        let msg = |content: &str| StoredMessage {
            role: "user".into(),
            content: content.into(),
            created_at: now,
            summary: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
            parts: Vec::new(),
            tokens: None,
        };
        let created = store
            .create_session(&session, &[msg("12345")], SessionCaps::UNLIMITED)
            .await
            .unwrap();
        assert!(created.created());
        {
            let txn = store.db.begin_write().unwrap();
            txn.open_table(SESSION_BYTES)
                .unwrap()
                .remove(("o", "s"))
                .unwrap();
            txn.commit().unwrap();
        }
        let caps = SessionCaps {
            max_sessions: 10,
            max_messages: 100,
            max_bytes: 8,
        };
        let fence = TurnFence {
            token: "t",
            incarnation: "i",
        };
        let lease = Duration::from_secs(30);
        assert!(matches!(
            store
                .lock_session("o", "s", "t", lease, &HistoryBudget::unbounded())
                .await
                .unwrap(),
            LockOutcome::Acquired { .. }
        ));
        assert_eq!(
            store
                .append_turn("o", "s", fence, &[msg("6789")], now, caps)
                .await
                .unwrap(),
            AppendOutcome::OverQuota(CapBreach {
                cap: SessionCap::Bytes,
                limit: 8,
                used: 5
            })
        );
        assert!(matches!(
            store
                .lock_session("o", "s", "t", lease, &HistoryBudget::unbounded())
                .await
                .unwrap(),
            LockOutcome::Acquired { .. }
        ));
        assert_eq!(
            store
                .append_turn("o", "s", fence, &[msg("678")], now, caps)
                .await
                .unwrap(),
            AppendOutcome::Appended
        );
        let txn = store.db.begin_read().unwrap();
        let bytes = txn
            .open_table(SESSION_BYTES)
            .unwrap()
            .get(("o", "s"))
            .unwrap()
            .map(|v| v.value());
        assert_eq!(bytes, Some(8));
    }
}
