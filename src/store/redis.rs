//! The shared store for scaled deployments: every replica of the core reads and
//! writes the same Redis, so any replica can serve any key, session or job.
//!
//! Layout (all keys under `oc:`; a session's keys share one hash tag so its
//! scripts touch a single slot):
//! - `oc:key:<id>` the key record (JSON; a use sets its `lastUsedAt` in place, by script);
//!   `oc:keyhash:<sha256>` → id; `oc:keys` zset of ids by creation.
//! - `oc:s:{<owner>/<id>}:meta` hash {record (JSON), updatedAt, incarnation (the record's, for
//!   the fenced append to compare), summaryAt (the index of the latest compaction summary in
//!   `…:msgs`, once there is one)}; `…:msgs` list of messages (JSON, each ending with its token
//!   count, which a turn's read walks back by);
//!   `…:lock` the turn lock's token, with a lease (PX); `…:results` hash of request id → the
//!   recorded result of a client's request, `…:results:exp` zset of request id by expiry (ms).
//!   The meta hash also holds `idleTtlMs` and `expiresAtMs` (0: none), fixed at creation: a
//!   session that expires carries PEXPIREAT on all of these keys, set by the script that
//!   creates it and moved by each script that appends a turn (docs/retention.md).
//! - `oc:o:<owner>:sessions` zset of the owner's session ids by creation time; its size is what
//!   the owner's `maxSessions` quota counts (checked and added to in one script);
//!   `{oc:o:<owner>:sessions}:expiring` zset of those that expire, by when they are due at the
//!   earliest (ms): its hash tag is the index's whole name, so both share a slot. The sweep
//!   reads the due ones, and drops from the index those whose session is gone.
//!   `{oc:o:<owner>:sessions}:listed` (the index's slot) notes when ids were listed, for a
//!   minute: such an entry may be a create in progress, which a sweep of dead entries spares.
//! - `…:meta`'s `bytes` field: the session's bytes of message content (the `maxSessionBytes`
//!   quota), kept by the create and append scripts; a session stored before it existed has it
//!   computed once, by the first append.
//! - `oc:storage:bytes` zset of owner → bytes of its stored messages, for the storage-pressure
//!   policy (counted here in memory, added there by the sampler: see [`super::pressure`]).
//!
//! On a Redis Cluster every script and pipeline touches one slot: a session's keys share the
//! hash tag `{<owner>/<id>}`; a key record, its secret's index entry and the list of keys are
//! single-key commands, as is the owner's index. The writes that span slots (a session and its
//! owner's index; a key record, its secret and the listing) are ordered so that stopping
//! between them is harmless, and listings skip what such a stop leaves behind (see
//! `create_session`, `delete_session`, `insert_key`).
//!
//! Every command goes through one [`SharedConnection`] (standalone, cluster or Sentinel) with
//! connect and response timeouts, so a dead Redis fails a request fast instead of hanging it.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::{AsyncCommands, Script};

use super::pressure::StorageLedger;
use super::redis_connection::{RedisConfig, SharedConnection};
use super::{
    AppendOutcome, CapBreach, CreateOutcome, History, HistoryBudget, KeyRecord, LockOutcome, Page,
    RecordedResult, SessionCap, SessionCaps, SessionRecord, Store, StoreError, StoreResult,
    StoredMessage, TurnFence, content_bytes, first_messages_breach,
};

#[derive(Clone)]
pub struct RedisStore {
    conn: SharedConnection,
    scripts: std::sync::Arc<Scripts>,
    /// The bytes each owner's sessions gain and lose (see [`super::pressure`]).
    ledger: std::sync::Arc<StorageLedger>,
    /// Which owner the next sweep starts from, so a sweep that runs out of budget does not
    /// leave the same owners behind every time.
    sweep_start: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// How long past its due time an expiry entry whose session is gone is left alone: a create
/// lists its session (and its expiry entry) one round trip before it writes the session.
const EXPIRY_GRACE_MS: i64 = 5_000;

/// The owner id of sessions created with the internal token (`Principal::Internal`), which
/// has no key record to be listed by.
const INTERNAL_OWNER: &str = "internal";

/// How old an index entry must be before a missing session is taken for gone rather than for
/// a create in progress (listed first, created second).
const CREATE_BOUND_MS: i64 = 60_000;

struct Scripts {
    list_session: Script,
    drop_dead_entries: Script,
    create_session: Script,
    lock_session: Script,
    append_summary: Script,
    append_turn: Script,
    append_turn_recording: Script,
    recorded_result: Script,
    unlock_session: Script,
    delete_session: Script,
    update_key: Script,
    touch_key: Script,
    session_bytes: Script,
    unlist_session: Script,
    drop_expired_entry: Script,
}

/// The tail of both append scripts (KEYS[2] meta, KEYS[3] msgs, KEYS[4] results, KEYS[5]
/// results:exp): moves the session's expiry to now + its idle time to live, never past its own
/// `expiresAt`, by the server's clock. The recorded results go at the same time, or sooner when
/// the newest of them is due sooner. A session that never expires has nothing to move.
const REFRESH_EXPIRY: &str = r#"
                do
                  local life = redis.call('HMGET', KEYS[2], 'idleTtlMs', 'expiresAtMs')
                  local ttl, hard = tonumber(life[1]) or 0, tonumber(life[2]) or 0
                  if ttl > 0 or hard > 0 then
                    local t = redis.call('TIME')
                    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
                    local at = hard
                    if ttl > 0 and (hard == 0 or now + ttl < hard) then at = now + ttl end
                    redis.call('PEXPIREAT', KEYS[2], string.format('%d', at))
                    redis.call('PEXPIREAT', KEYS[3], string.format('%d', at))
                    local newest = redis.call('ZRANGE', KEYS[5], -1, -1, 'WITHSCORES')
                    if #newest == 2 then
                      local results = string.format('%d', math.min(at, tonumber(newest[2])))
                      redis.call('PEXPIREAT', KEYS[4], results)
                      redis.call('PEXPIREAT', KEYS[5], results)
                    end
                  end
                end
"#;

/// A script assembled from pieces.
fn script(pieces: &[&str]) -> Script {
    Script::new(&pieces.concat())
}

/// The longest idle time to live the store sets (100 years; longer ones are cut to it), so the
/// milliseconds stay exact in the scripts' numbers.
const MAX_TTL_MS: u64 = 100 * 365 * 24 * 3_600_000;

impl Scripts {
    fn new() -> Self {
        Self {
            // The owner's index (KEYS[1]) takes the session id (ARGV[2], scored by its creation
            // time ARGV[1]) unless it already holds ARGV[3] (maxSessions) entries: the count and
            // the add are one step, so two creates cannot both take the last slot. Returns -1
            // when the id is listed already (its slot is taken), -(n + 2) when added to n
            // entries, else the count (the index is full). KEYS[2] notes when each id was
            // listed (the server's clock), for the last ARGV[4] ms: an entry listed that
            // recently may be a create in progress, which a sweep must not take for dead.
            // KEYS[3] holds the owner's sessions that expire by when they are due at the
            // earliest (ARGV[5] ms; 0: never), for the sweep of expired sessions.
            list_session: Script::new(
                r#"
                local t = redis.call('TIME')
                local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
                redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[4]))
                local function note_expiry()
                  if tonumber(ARGV[5]) > 0 then
                    redis.call('ZADD', KEYS[3], ARGV[5], ARGV[2])
                  else
                    redis.call('ZREM', KEYS[3], ARGV[2])
                  end
                end
                if redis.call('ZSCORE', KEYS[1], ARGV[2]) then
                  redis.call('ZADD', KEYS[2], now, ARGV[2])
                  redis.call('PEXPIRE', KEYS[2], ARGV[4])
                  note_expiry()
                  return -1
                end
                local n = redis.call('ZCARD', KEYS[1])
                if n >= tonumber(ARGV[3]) then return n end
                redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
                redis.call('ZADD', KEYS[2], now, ARGV[2])
                redis.call('PEXPIRE', KEYS[2], ARGV[4])
                note_expiry()
                return -(n + 2)
                "#,
            ),
            // Drops from the owner's index (KEYS[1]) the ids ARGV[3..], found without a
            // session, unless listed within the last ARGV[1] ms (KEYS[2], see list_session) or
            // created at or after ARGV[2] (ms): either may be a create in progress. An id whose
            // expiry (KEYS[3], see list_session) is due has expired, and goes at once.
            drop_dead_entries: Script::new(
                r#"
                local t = redis.call('TIME')
                local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
                redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[1]))
                local dropped = 0
                for i = 3, #ARGV do
                  local created = redis.call('ZSCORE', KEYS[1], ARGV[i])
                  local due = redis.call('ZSCORE', KEYS[3], ARGV[i])
                  if due and tonumber(due) <= now then
                    -- Due to expire, and found gone: it expired (a create under the id again
                    -- would have moved its due time to the future).
                    redis.call('ZREM', KEYS[3], ARGV[i])
                    dropped = dropped + redis.call('ZREM', KEYS[1], ARGV[i])
                  elseif created and tonumber(created) < tonumber(ARGV[2])
                    and not redis.call('ZSCORE', KEYS[2], ARGV[i]) then
                    dropped = dropped + redis.call('ZREM', KEYS[1], ARGV[i])
                  end
                end
                return dropped
                "#,
            ),
            // ARGV[6]: the bytes of content of the first messages (ARGV[7..]).
            create_session: Script::new(
                r#"
                if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
                redis.call('HSET', KEYS[1], 'record', ARGV[1], 'updatedAt', ARGV[2], 'incarnation', ARGV[5],
                  'idleTtlMs', ARGV[6], 'expiresAtMs', ARGV[7], 'bytes', ARGV[8])
                for i = 9, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
                local ttl, hard = tonumber(ARGV[6]), tonumber(ARGV[7])
                if ttl > 0 or hard > 0 then
                  local t = redis.call('TIME')
                  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
                  local at = hard
                  if ttl > 0 and (hard == 0 or now + ttl < hard) then at = now + ttl end
                  at = string.format('%d', at)
                  redis.call('PEXPIREAT', KEYS[1], at)
                  redis.call('PEXPIREAT', KEYS[2], at)
                end
                return 1
                "#,
            ),
            // Takes the lock, then reads what the turn can send (see `Store::lock_session`):
            // the system prompt at the head, the latest summary (its index in the meta hash's
            // `summaryAt`), and the latest messages walking back from the end, in growing
            // batches, while they fit the budget: the session's model's window (ARGV[7..] are
            // model/window pairs, ARGV[4] the default) less the completion reserved (ARGV[5],
            // or when it is negative the session's maxTokens, else ARGV[6]) less the turn's own
            // tokens (ARGV[3]). A message's cost is its stored count (the last field of its
            // JSON) plus the chat format's 5; one stored without a count costs the length of its
            // content as stored (escaped JSON), which no count of it exceeds (a token is at
            // least a byte); the quotes around it cannot occur unescaped inside it. Nothing is
            // decoded but the session record. The messages are returned joined by line breaks.
            lock_session: Script::new(
                r#"
                if redis.call('EXISTS', KEYS[2]) == 0 then return {'none'} end
                local holder = redis.call('GET', KEYS[1])
                if holder and holder ~= ARGV[1] then return {'busy'} end
                redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
                local meta = redis.call('HMGET', KEYS[2], 'record', 'updatedAt', 'summaryAt')
                local record = cjson.decode(meta[1])
                local window = tonumber(ARGV[4])
                for i = 7, #ARGV, 2 do
                  if ARGV[i] == record.model then window = tonumber(ARGV[i + 1]) end
                end
                local reserve = tonumber(ARGV[5])
                if reserve < 0 then
                  reserve = tonumber(ARGV[6])
                  if type(record.maxTokens) == 'number' then reserve = record.maxTokens end
                end
                local budget = window - reserve - tonumber(ARGV[3])
                local function cost(m)
                  local t = string.match(m, '"tokens":(%d+)}$')
                  if t then return tonumber(t) + 5 end
                  local _, open = string.find(m, '","content":"', 1, true)
                  local close = string.find(m, '","createdAt":"', 1, true)
                  if open and close and close > open then return close - open - 1 + 5 end
                  return #m + 5
                end
                local len = redis.call('LLEN', KEYS[3])
                local head = {}
                while #head < len do
                  local m = redis.call('LINDEX', KEYS[3], #head)
                  if string.sub(m, 1, 17) ~= '{"role":"system",' then break end
                  head[#head + 1] = m
                  budget = budget - cost(m)
                end
                local lower = #head
                local summaryAt = tonumber(meta[3])
                local summary = false
                if summaryAt then
                  summary = redis.call('LINDEX', KEYS[3], summaryAt)
                  if summary then
                    budget = budget - cost(summary)
                    local to = tonumber(string.match(summary, '"summary":{"from":%d+,"to":(%d+)}'))
                    if to and to > lower then lower = to end
                  else
                    summaryAt = nil
                  end
                end
                local tail = {}
                local at = len - 1
                local chunk = 16
                local complete = '0'
                while true do
                  if at < lower then complete = '1' break end
                  local from = math.max(lower, at - chunk + 1)
                  local batch = redis.call('LRANGE', KEYS[3], from, at)
                  local full = false
                  for j = #batch, 1, -1 do
                    local index = from + j - 1
                    if index ~= summaryAt then
                      local c = cost(batch[j])
                      if c > budget then full = true break end
                      budget = budget - c
                      tail[#tail + 1] = batch[j]
                    end
                    at = index - 1
                  end
                  if full or #batch == 0 then break end
                  chunk = chunk * 2
                end
                local out = {'ok', meta[1], meta[2] or '', tostring(len), tostring(#head),
                  tostring(summaryAt or -1), tostring(at + 1), complete}
                local msgs = head
                if summary then msgs[#msgs + 1] = summary end
                for i = #tail, 1, -1 do msgs[#msgs + 1] = tail[i] end
                if #msgs > 0 then out[#out + 1] = table.concat(msgs, '\n') end
                return out
                "#,
            ),
            // A compaction summary, as the session's latest message, under the turn's fence;
            // the lock stays held for the turn.
            append_summary: Script::new(
                r#"
                local incarnation = redis.call('HGET', KEYS[2], 'incarnation') or ''
                if redis.call('EXISTS', KEYS[2]) == 0 or incarnation ~= ARGV[2] then return 'gone' end
                if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'lost' end
                local n = redis.call('RPUSH', KEYS[3], ARGV[3])
                redis.call('HSET', KEYS[2], 'summaryAt', n - 1)
                -- The summary's content counts in the session's bytes like any message (a
                -- session without the count yet has it computed, summary included, later).
                if redis.call('HEXISTS', KEYS[2], 'bytes') == 1 then
                  redis.call('HINCRBY', KEYS[2], 'bytes', ARGV[4])
                end
                return 'ok'
                "#,
            ),
            // The session first: deleting it drops its lock, so a turn that began on this
            // incarnation (ARGV[3]) learns that it is gone, deleted or created again, rather
            // than that it lost the lock. The lock is dropped only if it is still ours.
            // Then the session's quotas (ARGV[4] messages, ARGV[5] bytes; ARGV[6] the turn's
            // bytes): a turn that would pass one is refused whole and the lock released.
            append_turn: script(&[
                r#"
                local FIRST = 7
                local incarnation = redis.call('HGET', KEYS[2], 'incarnation') or ''
                if redis.call('EXISTS', KEYS[2]) == 0 or incarnation ~= ARGV[3] then
                  if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
                  return 'gone'
                end
                if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'lost' end
"#,
                APPEND_QUOTA_CHECK,
                r#"
                for i = FIRST, #ARGV do redis.call('RPUSH', KEYS[3], ARGV[i]) end
                redis.call('HSET', KEYS[2], 'updatedAt', ARGV[2])
                "#,
                REFRESH_EXPIRY,
                r#"
                redis.call('DEL', KEYS[1])
                return 'ok'
                "#,
            ]),
            // As append_turn (the incarnation is ARGV[6], the quotas ARGV[7..9]), plus the
            // result under the request id, expiring after the retention (ms, ARGV[5]) by the
            // server's clock; a few expired records are dropped on the way.
            append_turn_recording: script(&[
                r#"
                local FIRST = 10
                local incarnation = redis.call('HGET', KEYS[2], 'incarnation') or ''
                if redis.call('EXISTS', KEYS[2]) == 0 or incarnation ~= ARGV[6] then
                  if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
                  return 'gone'
                end
                if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'lost' end
"#,
                APPEND_QUOTA_CHECK,
                r#"
                for i = FIRST, #ARGV do redis.call('RPUSH', KEYS[3], ARGV[i]) end
                redis.call('HSET', KEYS[2], 'updatedAt', ARGV[2])
                local t = redis.call('TIME')
                local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
                local expired = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, 64)
                if #expired > 0 then
                  redis.call('HDEL', KEYS[4], unpack(expired))
                  redis.call('ZREM', KEYS[5], unpack(expired))
                end
                local retention = tonumber(ARGV[5])
                redis.call('HSET', KEYS[4], ARGV[3], ARGV[4])
                redis.call('ZADD', KEYS[5], now + retention, ARGV[3])
                redis.call('PEXPIRE', KEYS[4], retention)
                redis.call('PEXPIRE', KEYS[5], retention)
                "#,
                REFRESH_EXPIRY,
                r#"
                redis.call('DEL', KEYS[1])
                return 'ok'
                "#,
            ]),
            recorded_result: Script::new(
                r#"
                local expires = redis.call('ZSCORE', KEYS[2], ARGV[1])
                if not expires then return false end
                local t = redis.call('TIME')
                local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
                if tonumber(expires) <= now then return false end
                return redis.call('HGET', KEYS[1], ARGV[1])
                "#,
            ),
            unlock_session: Script::new(
                r#"
                if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
                return 1
                "#,
            ),
            // The lock goes too: a turn in progress is fenced by the incarnation (it learns
            // that the session is gone), and a session created again under the id is not
            // kept waiting for that turn.
            delete_session: Script::new(
                r#"
                local n = redis.call('DEL', KEYS[1])
                redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
                return n
                "#,
            ),
            // The bytes of a session's stored messages (read-only), for the storage ledger.
            session_bytes: Script::new(
                r#"
                local n = 0
                for _, m in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do n = n + #m end
                return n
                "#,
            ),
            unlist_session: Script::new(
                r#"
                redis.call('ZREM', KEYS[2], ARGV[1])
                return redis.call('ZREM', KEYS[1], ARGV[1])
                "#,
            ),
            // Drops a session that expired from its owner's index, only if its expiry entry is
            // still the one the sweep saw: a session created again under the id rewrote it.
            drop_expired_entry: Script::new(
                r#"
                local due = redis.call('ZSCORE', KEYS[2], ARGV[1])
                if not due or tonumber(due) ~= tonumber(ARGV[2]) then return 0 end
                redis.call('ZREM', KEYS[2], ARGV[1])
                return redis.call('ZREM', KEYS[1], ARGV[1])
                "#,
            ),
            // Revocation is permanent: a write that would clear it (a stale
            // read-modify-write racing a revoke) is refused with -1.
            update_key: Script::new(
                r#"
                local cur = redis.call('GET', KEYS[1])
                if not cur then return 0 end
                if string.find(cur, '"revokedAt":"', 1, true) and not string.find(ARGV[1], '"revokedAt":"', 1, true) then
                  return -1
                end
                redis.call('SET', KEYS[1], ARGV[1])
                return 1
                "#,
            ),
            // Sets lastUsedAt (ARGV[1], its JSON) in the current record, and nothing else: an
            // administrator's change written since the key was read stays. The record is JSON
            // as serde writes it, so the field is found as text (a name inside a string value
            // has its quotes escaped and cannot match); decoding and re-encoding with cjson
            // would turn empty lists into objects and large numbers into exponents. The time
            // moves forward only: ARGV[2] is the new time as YYYYMMDDhhmmss + 9 digits of
            // nanoseconds, compared with the stored one put in the same form.
            touch_key: Script::new(
                r#"
                local cur = redis.call('GET', KEYS[1])
                if not cur then return 0 end
                local s, e = string.find(cur, '"lastUsedAt":null', 1, true)
                if not s then
                  local value
                  s, e, value = string.find(cur, '"lastUsedAt":"([^"]*)"')
                  if s then
                    local y, mo, d, h, mi, sec, frac =
                      string.match(value, '^(%d%d%d%d)-(%d%d)-(%d%d)T(%d%d):(%d%d):(%d%d)%.?(%d*)Z$')
                    if y and #frac <= 9 then
                      local stored = y .. mo .. d .. h .. mi .. sec .. frac .. string.rep('0', 9 - #frac)
                      if stored >= ARGV[2] then return 0 end
                    end
                  end
                end
                local field = '"lastUsedAt":' .. ARGV[1]
                if s then
                  cur = string.sub(cur, 1, s - 1) .. field .. string.sub(cur, e + 1)
                else
                  cur = '{' .. field .. ',' .. string.sub(cur, 2)
                end
                redis.call('SET', KEYS[1], cur)
                return 1
                "#,
            ),
        }
    }
}

/// The quota check of both append scripts, after the fence: `FIRST` is the index of the first
/// message in ARGV, preceded by the messages quota, the bytes quota and the turn's bytes. The
/// session's byte count lives in its meta hash (`bytes`); a session stored before the count
/// existed has it computed here from its messages, once (and stored, refused turn or not: it
/// describes what the session already holds).
const APPEND_QUOTA_CHECK: &str = r#"
                local count = redis.call('LLEN', KEYS[3])
                local bytes = redis.call('HGET', KEYS[2], 'bytes')
                if bytes then
                  bytes = tonumber(bytes)
                else
                  bytes = 0
                  for _, raw in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
                    local ok, m = pcall(cjson.decode, raw)
                    if ok and type(m) == 'table' and type(m.content) == 'string' then bytes = bytes + #m.content end
                  end
                  redis.call('HSET', KEYS[2], 'bytes', string.format('%d', bytes))
                end
                local adding = #ARGV - FIRST + 1
                if count + adding > tonumber(ARGV[FIRST - 3]) then
                  redis.call('DEL', KEYS[1])
                  return 'quota:messages:' .. string.format('%d', count)
                end
                if bytes + tonumber(ARGV[FIRST - 1]) > tonumber(ARGV[FIRST - 2]) then
                  redis.call('DEL', KEYS[1])
                  return 'quota:bytes:' .. string.format('%d', bytes)
                end
                redis.call('HINCRBY', KEYS[2], 'bytes', ARGV[FIRST - 1])"#;

/// How many of a full index's oldest entries a create looks at for sessions that are gone.
const FULL_INDEX_SCAN: isize = 1024;

/// `oc:s:{<owner>/<id>}`: the prefix of a session's records, its hash tag. Joined rather than
/// formatted, as the records' names built from it are: a turn names several.
pub(super) fn session_base(owner: &str, id: &str) -> String {
    ["oc:s:{", owner, "/", id, "}"].concat()
}

pub(super) fn owner_index(owner: &str) -> String {
    format!("oc:o:{owner}:sessions")
}

/// The owner's sessions that expire, by when they are due at the earliest (ms). Its hash tag is
/// the whole name of the owner's index, so the two share a slot and one script writes both.
fn owner_expiring(owner: &str) -> String {
    format!("{{oc:o:{owner}:sessions}}:expiring")
}

/// When each of the owner's recent index entries was listed: in the index's slot (its hash tag
/// is the index's whole name).
fn owner_listings(owner: &str) -> String {
    format!("{{oc:o:{owner}:sessions}}:listed")
}

fn key_key(id: &str) -> String {
    format!("oc:key:{id}")
}

fn key_hash_key(hash: &str) -> String {
    format!("oc:keyhash:{hash}")
}

const KEYS_INDEX: &str = "oc:keys";

fn encode<T: serde::Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(raw: &str) -> StoreResult<T> {
    serde_json::from_str(raw).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Adds each message (as JSON) to the script's arguments; returns the bytes they take.
fn encoded_args(
    invocation: &mut redis::ScriptInvocation<'_>,
    messages: &[StoredMessage],
) -> StoreResult<i64> {
    let mut bytes = 0;
    for message in messages {
        let encoded = encode(message)?;
        bytes += encoded.len() as i64;
        invocation.arg(encoded);
    }
    Ok(bytes)
}

fn decode_session(
    record: &str,
    updated_at: Option<&str>,
    count: u32,
) -> StoreResult<SessionRecord> {
    let mut session: SessionRecord = decode(record)?;
    if let Some(raw) = updated_at {
        session.updated_at = DateTime::parse_from_rfc3339(raw)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?
            .with_timezone(&Utc);
    }
    session.message_count = count;
    Ok(session)
}

/// Reads an append script's answer (`quota:<messages|bytes>:<used>` for a refusal).
fn append_outcome(reply: &str, caps: SessionCaps) -> StoreResult<AppendOutcome> {
    let refused = |cap, limit, used: &str| {
        used.parse()
            .map(|used| AppendOutcome::OverQuota(CapBreach { cap, limit, used }))
            .map_err(|_| StoreError::Corrupt(format!("unexpected append reply {reply:?}")))
    };
    match reply {
        "ok" => Ok(AppendOutcome::Appended),
        "lost" => Ok(AppendOutcome::LockLost),
        "gone" => Ok(AppendOutcome::SessionGone),
        other => match other.strip_prefix("quota:") {
            Some(rest) if rest.starts_with("messages:") => {
                refused(SessionCap::Messages, caps.max_messages, &rest[9..])
            }
            Some(rest) if rest.starts_with("bytes:") => {
                refused(SessionCap::Bytes, caps.max_bytes, &rest[6..])
            }
            _ => Err(StoreError::Corrupt(format!(
                "unexpected append reply {other:?}"
            ))),
        },
    }
}

/// What [`RedisStore::list_new_session`] did.
enum Listing {
    /// The id is listed now.
    Added,
    /// The index had the id already (a session that exists, or an earlier life's entry).
    AlreadyListed,
    /// The owner keeps this many sessions, its quota: nothing was listed.
    Full(u64),
}

impl RedisStore {
    /// Lists a new session in its owner's index unless the owner keeps `max_sessions` already;
    /// then returns how many it keeps. A full index may hold entries of sessions that are gone
    /// (expired, or a delete or create that stopped halfway): those that cannot be a create in
    /// progress are dropped (the oldest [`FULL_INDEX_SCAN`] entries are looked at, see
    /// [`Self::drop_dead_entries`]) and the listing tried once more. The common case, room in
    /// the index, is one round trip.
    async fn list_new_session(
        &self,
        session: &SessionRecord,
        max_sessions: u64,
        first_due: i64,
    ) -> StoreResult<Listing> {
        let index = owner_index(&session.owner);
        let mut full = None;
        for attempt in 0..2 {
            let mut conn = self.conn.clone();
            let listed: i64 = self
                .scripts
                .list_session
                .key(&index)
                .key(owner_listings(&session.owner))
                .key(owner_expiring(&session.owner))
                .arg(session.created_at.timestamp_millis())
                .arg(&session.id)
                .arg(max_sessions)
                .arg(CREATE_BOUND_MS)
                .arg(first_due)
                .invoke_async(&mut conn)
                .await
                .map_err(StoreError::from)?;
            if listed == -1 {
                return Ok(Listing::AlreadyListed);
            }
            if listed < -1 {
                crate::quotas::observe_usage("maxSessions", (-listed - 1) as u64, max_sessions);
                return Ok(Listing::Added);
            }
            full = Some(listed as u64);
            if attempt == 0 {
                let oldest: Vec<String> = conn
                    .zrange(&index, 0, FULL_INDEX_SCAN - 1)
                    .await
                    .map_err(StoreError::from)?;
                let exists = futures::future::try_join_all(oldest.iter().map(|id| {
                    let mut conn = self.conn.clone();
                    let meta = format!("{}:meta", session_base(&session.owner, id));
                    async move { conn.exists::<_, bool>(meta).await.map_err(StoreError::from) }
                }))
                .await?;
                let dead: Vec<String> = oldest
                    .into_iter()
                    .zip(exists)
                    .filter_map(|(id, exists)| (!exists).then_some(id))
                    .collect();
                if dead.is_empty() || self.drop_dead_entries(&session.owner, &dead).await? == 0 {
                    break;
                }
            }
        }
        Ok(Listing::Full(full.unwrap_or(max_sessions)))
    }

    /// Prepares the connection (see [`SharedConnection::open`]): the core starts, and reports
    /// Redis as down, while Redis is away.
    pub async fn connect(config: &RedisConfig) -> StoreResult<Self> {
        let conn = SharedConnection::open(config)
            .await
            .map_err(|e| StoreError::Unavailable(e.0))?;
        Ok(Self {
            conn,
            scripts: std::sync::Arc::new(Scripts::new()),
            ledger: std::sync::Arc::default(),
            sweep_start: Default::default(),
        })
    }

    /// Drops index entries of `owner` naming sessions that do not exist, once they are older
    /// than a create could take: a younger one may belong to a create in progress (listed
    /// first, created second). Best effort: a listing never fails for it.
    async fn drop_stale_index_entries(&self, owner: &str, ids: &[String]) {
        let mut conn = self.conn.clone();
        let mut dead = Vec::new();
        for id in ids {
            let exists: bool = conn
                .exists(format!("{}:meta", session_base(owner, id)))
                .await
                .unwrap_or(true);
            if !exists {
                dead.push(id.clone());
            }
        }
        if !dead.is_empty() {
            let _ = self.drop_dead_entries(owner, &dead).await;
        }
    }

    /// Drops the owner's index entries `ids`, found without a session, except those that may
    /// belong to a create in progress: listed within [`CREATE_BOUND_MS`] (by the server's
    /// clock), or created since then. Returns how many were dropped.
    async fn drop_dead_entries(&self, owner: &str, ids: &[String]) -> StoreResult<u64> {
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.drop_dead_entries.prepare_invoke();
        invocation
            .key(owner_index(owner))
            .key(owner_listings(owner))
            .key(owner_expiring(owner))
            .arg(CREATE_BOUND_MS)
            .arg(Utc::now().timestamp_millis() - CREATE_BOUND_MS);
        for id in ids {
            invocation.arg(id);
        }
        invocation
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::from)
    }

    /// Looks at up to `budget` due entries of the owners' expiry sets (`…:expiring`): a
    /// session still there is due again when its keys expire (its turns moved that), one
    /// without an expiry leaves the set, and one that is gone (expired, or a create that
    /// stopped half way) leaves its owner's index. Returns how many index entries it dropped.
    /// The cost is one read per owner and one per due entry, never one per session.
    async fn sweep_index_entries(&self, budget: usize) -> StoreResult<usize> {
        use std::sync::atomic::Ordering;
        let mut conn = self.conn.clone();
        let mut owners: Vec<String> = conn
            .zrange(KEYS_INDEX, 0, -1)
            .await
            .map_err(StoreError::from)?;
        owners.push(INTERNAL_OWNER.to_owned());
        let first = self.sweep_start.load(Ordering::Relaxed) % owners.len();
        let now = Utc::now().timestamp_millis();
        let (mut looked, mut dropped) = (0usize, 0usize);
        for turn in 0..owners.len() {
            if looked >= budget {
                // Next time, start where this sweep stopped.
                self.sweep_start
                    .store((first + turn) % owners.len(), Ordering::Relaxed);
                return Ok(dropped);
            }
            let owner = &owners[(first + turn) % owners.len()];
            let (index, expiring) = (owner_index(owner), owner_expiring(owner));
            let due: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
                .arg(&expiring)
                .arg("-inf")
                .arg(now)
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(budget - looked)
                .query_async(&mut conn)
                .await
                .map_err(StoreError::from)?;
            looked += due.len();
            // Each session's meta is in its own slot: one PTTL each, all sent at once.
            let ttls = futures::future::try_join_all(due.iter().map(|(id, _)| {
                let mut conn = self.conn.clone();
                let meta = format!("{}:meta", session_base(owner, id));
                async move { conn.pttl::<_, i64>(meta).await.map_err(StoreError::from) }
            }))
            .await?;
            for ((id, score), ttl) in due.iter().zip(ttls) {
                match ttl {
                    // Kept until deleted (a session created again under the id without expiry).
                    -1 => {
                        redis::cmd("ZREM")
                            .arg(&expiring)
                            .arg(id)
                            .query_async::<()>(&mut conn)
                            .await
                            .map_err(StoreError::from)?;
                    }
                    // Gone. A create lists first and writes second: an entry only just due
                    // may be a create in progress, and waits for the next sweep.
                    -2 if (*score as i64) < now - EXPIRY_GRACE_MS => {
                        let removed: i64 = self
                            .scripts
                            .drop_expired_entry
                            .key(&index)
                            .key(&expiring)
                            .arg(id)
                            .arg(*score as i64)
                            .invoke_async(&mut conn)
                            .await
                            .map_err(StoreError::from)?;
                        dropped += usize::try_from(removed).unwrap_or(0);
                    }
                    -2 => {}
                    // Alive: due again when its keys expire. XX: never re-add an entry a
                    // delete removed meanwhile.
                    left => {
                        redis::cmd("ZADD")
                            .arg(&expiring)
                            .arg("XX")
                            .arg(now + left)
                            .arg(id)
                            .query_async::<()>(&mut conn)
                            .await
                            .map_err(StoreError::from)?;
                    }
                }
            }
        }
        self.sweep_start.store(first, Ordering::Relaxed);
        Ok(dropped)
    }

    /// The shared connection, for other Redis-backed parts of the core.
    pub fn connection(&self) -> SharedConnection {
        self.conn.clone()
    }
}

#[async_trait]
impl Store for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn storage_ledger(&self) -> Option<std::sync::Arc<StorageLedger>> {
        Some(self.ledger.clone())
    }

    async fn nodes(&self) -> StoreResult<Vec<super::NodeHealth>> {
        self.conn.nodes().await.map_err(StoreError::from)
    }

    async fn ping(&self) -> StoreResult<()> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(StoreError::from)?;
        Ok(())
    }

    async fn insert_key(&self, key: &KeyRecord) -> StoreResult<()> {
        // Three keys in three slots, written in an order that is safe to stop anywhere: the
        // record, then the secret's index entry (a key that authenticates has a record), then
        // the listing (a listed key authenticates). A failure in between leaves a key nobody
        // holds the secret of (creation answered an error), invisible to listings.
        let mut conn = self.conn.clone();
        conn.set::<_, _, ()>(key_key(&key.id), encode(key)?)
            .await
            .map_err(StoreError::from)?;
        conn.set::<_, _, ()>(key_hash_key(&key.secret_hash), &key.id)
            .await
            .map_err(StoreError::from)?;
        conn.zadd::<_, _, _, ()>(KEYS_INDEX, &key.id, key.created_at.timestamp_millis())
            .await
            .map_err(StoreError::from)?;
        self.conn.replicated().await
    }

    async fn key_by_hash(&self, secret_hash: &str) -> StoreResult<Option<KeyRecord>> {
        let mut conn = self.conn.clone();
        let id: Option<String> = conn
            .get(key_hash_key(secret_hash))
            .await
            .map_err(StoreError::from)?;
        match id {
            Some(id) => self.key_by_id(&id).await,
            None => Ok(None),
        }
    }

    async fn key_by_id(&self, id: &str) -> StoreResult<Option<KeyRecord>> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = conn.get(key_key(id)).await.map_err(StoreError::from)?;
        raw.as_deref().map(decode).transpose()
    }

    async fn list_keys(&self) -> StoreResult<Vec<KeyRecord>> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = conn
            .zrange(KEYS_INDEX, 0, -1)
            .await
            .map_err(StoreError::from)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // Records live in their own slots: one GET each, all sent at once.
        let raws = futures::future::try_join_all(ids.iter().map(|id| {
            let mut conn = self.conn.clone();
            async move {
                conn.get::<_, Option<String>>(key_key(id))
                    .await
                    .map_err(StoreError::from)
            }
        }))
        .await?;
        raws.iter().flatten().map(|raw| decode(raw)).collect()
    }

    async fn update_key(&self, key: &KeyRecord) -> StoreResult<bool> {
        let mut conn = self.conn.clone();
        let mut record = key.clone();
        loop {
            let outcome: i64 = self
                .scripts
                .update_key
                .key(key_key(&record.id))
                .arg(encode(&record)?)
                .invoke_async(&mut conn)
                .await
                .map_err(StoreError::from)?;
            match outcome {
                1 => {
                    // A revocation or a lowered limit must not be undone by a failover.
                    self.conn.replicated().await?;
                    return Ok(true);
                }
                0 => return Ok(false),
                _ => {
                    // Revoked meanwhile: keep the revocation, apply the rest.
                    let Some(current) = self.key_by_id(&record.id).await? else {
                        return Ok(false);
                    };
                    record.revoked_at = current.revoked_at;
                }
            }
        }
    }

    async fn touch_key(&self, id: &str, at: DateTime<Utc>) -> StoreResult<()> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .scripts
            .touch_key
            .key(key_key(id))
            .arg(encode(&at)?)
            .arg(at.format("%Y%m%d%H%M%S%9f").to_string())
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        Ok(())
    }

    async fn create_session(
        &self,
        session: &SessionRecord,
        messages: &[StoredMessage],
        caps: SessionCaps,
    ) -> StoreResult<CreateOutcome> {
        if let Some(breach) = first_messages_breach(messages, caps) {
            return Ok(CreateOutcome::OverQuota(breach));
        }
        let base = session_base(&session.owner, &session.id);
        let mut conn = self.conn.clone();
        let idle_ttl_ms = session
            .idle_ttl_seconds
            .saturating_mul(1000)
            .min(MAX_TTL_MS);
        let expires_at_ms = session
            .expires_at
            .map_or(0, |at| at.timestamp_millis().max(1));
        // When the sweep first looks whether the session is still there (its turns may have
        // moved its expiry by then; the sweep reads where to).
        let now = Utc::now().timestamp_millis();
        let first_due = match (idle_ttl_ms, expires_at_ms) {
            (0, 0) => 0,
            (0, hard) => hard,
            (idle, 0) => now.saturating_add(idle as i64),
            (idle, hard) => now.saturating_add(idle as i64).min(hard),
        };
        // Listed first, created second: the owner's index lives in another slot, so the two
        // cannot be one script on a cluster. An entry whose session was never created (a
        // failure in between) is skipped by listings and dropped once it is old (or by the
        // sweep once due). The listing is where the maxSessions quota is counted; an id listed
        // already keeps its entry (a create refused because the session exists leaves it as it
        // was).
        let listed = match self
            .list_new_session(session, caps.max_sessions, first_due)
            .await?
        {
            Listing::Full(used) => {
                return Ok(CreateOutcome::OverQuota(CapBreach {
                    cap: SessionCap::Sessions,
                    limit: caps.max_sessions,
                    used,
                }));
            }
            Listing::Added => true,
            Listing::AlreadyListed => false,
        };
        let mut invocation = self.scripts.create_session.prepare_invoke();
        invocation
            .key([base.as_str(), ":meta"].concat())
            .key([base.as_str(), ":msgs"].concat())
            .arg(encode(session)?)
            .arg(session.updated_at.to_rfc3339())
            .arg(session.created_at.timestamp_millis())
            .arg(&session.id)
            .arg(&session.incarnation)
            .arg(idle_ttl_ms)
            .arg(expires_at_ms)
            .arg(content_bytes(messages));
        let bytes = encoded_args(&mut invocation, messages)?;
        let created: i64 = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        if created == 1 {
            self.ledger.add(&session.owner, bytes);
        }
        if created == 1 && !listed {
            // The entry was an earlier life's (a session that expired, or one a sweep was
            // dropping meanwhile): list this one at its own creation time.
            conn.zadd::<_, _, _, ()>(
                owner_index(&session.owner),
                &session.id,
                session.created_at.timestamp_millis(),
            )
            .await
            .map_err(StoreError::from)?;
        }
        Ok(if created == 1 {
            CreateOutcome::Created
        } else {
            CreateOutcome::Exists
        })
    }

    async fn session_count(&self, owner: &str) -> StoreResult<u64> {
        let mut conn = self.conn.clone();
        conn.zcard(owner_index(owner))
            .await
            .map_err(StoreError::from)
    }

    async fn get_session(&self, owner: &str, id: &str) -> StoreResult<Option<SessionRecord>> {
        let base = session_base(owner, id);
        let mut conn = self.conn.clone();
        let ((record, updated_at), count): ((Option<String>, Option<String>), u32) = redis::pipe()
            .cmd("HMGET")
            .arg([base.as_str(), ":meta"].concat())
            .arg("record")
            .arg("updatedAt")
            .llen([base.as_str(), ":msgs"].concat())
            .query_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        match record {
            Some(record) => Ok(Some(decode_session(&record, updated_at.as_deref(), count)?)),
            None => Ok(None),
        }
    }

    async fn list_sessions(
        &self,
        owner: &str,
        offset: u64,
        limit: u32,
    ) -> StoreResult<Page<SessionRecord>> {
        let mut conn = self.conn.clone();
        let start = offset as isize;
        let stop = start + limit as isize; // one extra to learn whether more remain
        let mut ids: Vec<String> = conn
            .zrevrange(owner_index(owner), start, stop)
            .await
            .map_err(StoreError::from)?;
        let more = ids.len() > limit as usize;
        ids.truncate(limit as usize);
        // One pipeline per session (each session's keys share a slot; different sessions may
        // not), all sent at once on the multiplexed connection.
        let rows = futures::future::try_join_all(ids.iter().map(|id| {
            let base = session_base(owner, id);
            let mut conn = self.conn.clone();
            async move {
                let mut pipe = redis::pipe();
                pipe.cmd("HMGET")
                    .arg([base.as_str(), ":meta"].concat())
                    .arg("record")
                    .arg("updatedAt");
                pipe.llen([base.as_str(), ":msgs"].concat());
                pipe.query_async::<((Option<String>, Option<String>), u32)>(&mut conn)
                    .await
                    .map_err(StoreError::from)
            }
        }))
        .await?;
        let mut items = Vec::with_capacity(rows.len());
        let mut orphans = Vec::new();
        for (id, ((record, updated_at), count)) in ids.iter().zip(rows) {
            match record {
                Some(record) => items.push(decode_session(&record, updated_at.as_deref(), count)?),
                // Deleted between the two reads, or an index entry left by a create or delete
                // that failed halfway: not listed.
                None => orphans.push(id.clone()),
            }
        }
        if !orphans.is_empty() {
            self.drop_stale_index_entries(owner, &orphans).await;
        }
        Ok(Page {
            items,
            next: more.then(|| offset + limit as u64),
        })
    }

    async fn list_messages(
        &self,
        owner: &str,
        id: &str,
        offset: u64,
        limit: u32,
    ) -> StoreResult<Page<StoredMessage>> {
        let base = session_base(owner, id);
        let mut conn = self.conn.clone();
        let start = offset as isize;
        let stop = start + limit as isize;
        let raws: Vec<String> = conn
            .lrange([base.as_str(), ":msgs"].concat(), start, stop)
            .await
            .map_err(StoreError::from)?;
        let more = raws.len() > limit as usize;
        let items = raws
            .iter()
            .take(limit as usize)
            .map(|raw| decode(raw))
            .collect::<StoreResult<Vec<StoredMessage>>>()?;
        Ok(Page {
            items,
            next: more.then(|| offset + limit as u64),
        })
    }

    async fn delete_session(&self, owner: &str, id: &str) -> StoreResult<bool> {
        let base = session_base(owner, id);
        let mut conn = self.conn.clone();
        // Measured before, subtracted after: a turn stored in between stays counted (the
        // ledger errs towards a key storing more).
        let bytes: i64 = self
            .scripts
            .session_bytes
            .key([base.as_str(), ":msgs"].concat())
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        let deleted: i64 = self
            .scripts
            .delete_session
            .key([base.as_str(), ":meta"].concat())
            .key([base.as_str(), ":msgs"].concat())
            .key([base.as_str(), ":results"].concat())
            .key([base.as_str(), ":results:exp"].concat())
            .key([base.as_str(), ":lock"].concat())
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        if deleted == 1 {
            self.ledger.add(owner, -bytes);
        }
        // Deleted first, unlisted second (the index is in another slot): a failure in between
        // leaves an entry that listings skip and drop once it is old.
        self.scripts
            .unlist_session
            .key(owner_index(owner))
            .key(owner_expiring(owner))
            .arg(id)
            .invoke_async::<i64>(&mut conn)
            .await
            .map_err(StoreError::from)?;
        // A session created again under this id between the two steps keeps its entries.
        let recreated: Option<String> = conn
            .hget([base.as_str(), ":meta"].concat(), "record")
            .await
            .map_err(StoreError::from)?;
        if let Some(record) = recreated {
            let session: SessionRecord = decode(&record)?;
            // Due at the earliest when it expires without another turn; the sweep reads
            // how far its turns have moved that.
            let due = session
                .expiry()
                .map_or(0, |at| at.timestamp_millis().max(1));
            self.scripts
                .list_session
                .key(owner_index(owner))
                .key(owner_expiring(owner))
                .arg(session.created_at.timestamp_millis())
                .arg(id)
                .arg(due)
                .invoke_async::<i64>(&mut conn)
                .await
                .map_err(StoreError::from)?;
        }
        Ok(deleted == 1)
    }

    async fn lock_session(
        &self,
        owner: &str,
        id: &str,
        token: &str,
        lease: Duration,
        budget: &HistoryBudget,
    ) -> StoreResult<LockOutcome> {
        let base = session_base(owner, id);
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.lock_session.prepare_invoke();
        invocation
            .key([base.as_str(), ":lock"].concat())
            .key([base.as_str(), ":meta"].concat())
            .key([base.as_str(), ":msgs"].concat())
            .arg(token)
            .arg(lease.as_millis().max(1) as u64)
            .arg(budget.fixed)
            .arg(budget.default_window)
            .arg(budget.max_tokens.map_or(-1, i64::from))
            .arg(budget.default_max_tokens);
        for (model, window) in budget.windows.iter() {
            invocation.arg(model).arg(*window);
        }
        let reply: Vec<Option<String>> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        match reply.first().and_then(|s| s.as_deref()) {
            Some("none") => Ok(LockOutcome::NoSession),
            Some("busy") => Ok(LockOutcome::Busy),
            Some("ok") => {
                let field = |i: usize| reply.get(i).and_then(|r| r.as_deref()).unwrap_or("");
                let number = |i: usize| {
                    field(i).parse::<i64>().map_err(|_| {
                        StoreError::Corrupt(format!("unexpected lock reply field {i} of {id}"))
                    })
                };
                let record = reply
                    .get(1)
                    .and_then(|r| r.as_deref())
                    .ok_or_else(|| StoreError::Corrupt(format!("session {id} has no record")))?;
                let len = number(3)?.max(0) as u64;
                let head_len = number(4)?.max(0) as usize;
                let summary_at = u64::try_from(number(5)?).ok();
                let tail_from = number(6)?.max(0) as u64;
                let complete = field(7) == "1";
                // The messages come as one string, a line each: one reply value to parse
                // rather than one per message (stored JSON never holds a raw line break).
                let mut rest = reply
                    .get(8)
                    .and_then(|r| r.as_deref())
                    .unwrap_or("")
                    .split('\n')
                    .filter(|line| !line.is_empty());
                let head = rest
                    .by_ref()
                    .take(head_len)
                    .map(decode)
                    .collect::<StoreResult<Vec<StoredMessage>>>()?;
                let summary = match summary_at {
                    Some(at) => {
                        let raw = rest.next().ok_or_else(|| {
                            StoreError::Corrupt(format!("session {id} lost its summary"))
                        })?;
                        Some((at, decode::<StoredMessage>(raw)?))
                    }
                    None => None,
                };
                let mut tail = Vec::new();
                let mut index = tail_from;
                for raw in rest {
                    if Some(index) == summary_at {
                        index += 1;
                    }
                    tail.push((index, decode::<StoredMessage>(raw)?));
                    index += 1;
                }
                let mut session = decode_session(
                    record,
                    Some(field(2)).filter(|s| !s.is_empty()),
                    u32::try_from(len).unwrap_or(u32::MAX),
                )?;
                session.summary_at = summary_at;
                let history = History {
                    head,
                    summary,
                    tail,
                    complete,
                    len,
                };
                Ok(LockOutcome::Acquired { session, history })
            }
            other => Err(StoreError::Corrupt(format!(
                "unexpected lock reply {other:?}"
            ))),
        }
    }

    async fn append_summary(
        &self,
        owner: &str,
        id: &str,
        fence: TurnFence<'_>,
        summary: &StoredMessage,
    ) -> StoreResult<AppendOutcome> {
        let base = session_base(owner, id);
        let encoded = encode(summary)?;
        let mut conn = self.conn.clone();
        let outcome: String = self
            .scripts
            .append_summary
            .key([base.as_str(), ":lock"].concat())
            .key([base.as_str(), ":meta"].concat())
            .key([base.as_str(), ":msgs"].concat())
            .arg(fence.token)
            .arg(fence.incarnation)
            .arg(&encoded)
            .arg(content_bytes(std::slice::from_ref(summary)))
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        match outcome.as_str() {
            "ok" => {
                self.ledger.add(owner, encoded.len() as i64);
                Ok(AppendOutcome::Appended)
            }
            "lost" => Ok(AppendOutcome::LockLost),
            "gone" => Ok(AppendOutcome::SessionGone),
            other => Err(StoreError::Corrupt(format!(
                "unexpected summary reply {other:?}"
            ))),
        }
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
        let base = session_base(owner, id);
        let mut invocation = self.scripts.append_turn.prepare_invoke();
        invocation
            .key([base.as_str(), ":lock"].concat())
            .key([base.as_str(), ":meta"].concat())
            .key([base.as_str(), ":msgs"].concat())
            .key([base.as_str(), ":results"].concat())
            .key([base.as_str(), ":results:exp"].concat())
            .arg(fence.token)
            .arg(at.to_rfc3339())
            .arg(fence.incarnation)
            .arg(caps.max_messages)
            .arg(caps.max_bytes)
            .arg(content_bytes(messages));
        let bytes = encoded_args(&mut invocation, messages)?;
        let mut conn = self.conn.clone();
        let outcome: String = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        let outcome = append_outcome(&outcome, caps)?;
        if outcome == AppendOutcome::Appended {
            self.ledger.add(owner, bytes);
        }
        Ok(outcome)
    }

    async fn unlock_session(&self, owner: &str, id: &str, token: &str) -> StoreResult<()> {
        let base = session_base(owner, id);
        let mut conn = self.conn.clone();
        self.scripts
            .unlock_session
            .key([base.as_str(), ":lock"].concat())
            .arg(token)
            .invoke_async::<i64>(&mut conn)
            .await
            .map_err(StoreError::from)?;
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
        let base = session_base(owner, id);
        let mut invocation = self.scripts.append_turn_recording.prepare_invoke();
        invocation
            .key([base.as_str(), ":lock"].concat())
            .key([base.as_str(), ":meta"].concat())
            .key([base.as_str(), ":msgs"].concat())
            .key([base.as_str(), ":results"].concat())
            .key([base.as_str(), ":results:exp"].concat())
            .arg(fence.token)
            .arg(at.to_rfc3339())
            .arg(result.request_id)
            .arg(result.body)
            .arg(result.retention.as_millis().max(1) as u64)
            .arg(fence.incarnation)
            .arg(caps.max_messages)
            .arg(caps.max_bytes)
            .arg(content_bytes(messages));
        let bytes = encoded_args(&mut invocation, messages)?;
        let mut conn = self.conn.clone();
        let outcome: String = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        let outcome = append_outcome(&outcome, caps)?;
        if outcome == AppendOutcome::Appended {
            self.ledger.add(owner, bytes);
        }
        Ok(outcome)
    }

    async fn recorded_result(
        &self,
        owner: &str,
        id: &str,
        request_id: &str,
    ) -> StoreResult<Option<Vec<u8>>> {
        let base = session_base(owner, id);
        let mut conn = self.conn.clone();
        self.scripts
            .recorded_result
            .key([base.as_str(), ":results"].concat())
            .key([base.as_str(), ":results:exp"].concat())
            .arg(request_id)
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::from)
    }

    /// Redis drops an expired session's keys itself (PEXPIREAT); what is left is the entry in
    /// its owner's index, another key in another slot.
    async fn sweep_expired_sessions(&self, budget: usize) -> StoreResult<usize> {
        self.sweep_index_entries(budget).await
    }
}
