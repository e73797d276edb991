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
//! - `oc:o:<owner>:sessions` zset of the owner's session ids by creation time.
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

use super::redis_connection::{RedisConfig, SharedConnection};
use super::{
    AppendOutcome, History, HistoryBudget, KeyRecord, LockOutcome, Page, RecordedResult,
    SessionRecord, Store, StoreError, StoreResult, StoredMessage, TurnFence,
};

#[derive(Clone)]
pub struct RedisStore {
    conn: SharedConnection,
    scripts: std::sync::Arc<Scripts>,
}

struct Scripts {
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
}

impl Scripts {
    fn new() -> Self {
        Self {
            create_session: Script::new(
                r#"
                if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
                redis.call('HSET', KEYS[1], 'record', ARGV[1], 'updatedAt', ARGV[2], 'incarnation', ARGV[5])
                for i = 6, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
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
            // decoded but the session record.
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
                for i = 1, #head do out[#out + 1] = head[i] end
                if summary then out[#out + 1] = summary end
                for i = #tail, 1, -1 do out[#out + 1] = tail[i] end
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
                return 'ok'
                "#,
            ),
            // The session first: deleting it drops its lock, so a turn that began on this
            // incarnation (ARGV[3]) learns that it is gone, deleted or created again, rather
            // than that it lost the lock. The lock is dropped only if it is still ours.
            append_turn: Script::new(
                r#"
                local incarnation = redis.call('HGET', KEYS[2], 'incarnation') or ''
                if redis.call('EXISTS', KEYS[2]) == 0 or incarnation ~= ARGV[3] then
                  if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
                  return 'gone'
                end
                if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'lost' end
                for i = 4, #ARGV do redis.call('RPUSH', KEYS[3], ARGV[i]) end
                redis.call('HSET', KEYS[2], 'updatedAt', ARGV[2])
                redis.call('DEL', KEYS[1])
                return 'ok'
                "#,
            ),
            // As append_turn (the incarnation is ARGV[6]), plus the result under the request
            // id, expiring after the retention (ms, ARGV[5]) by the server's clock; a few
            // expired records are dropped on the way.
            append_turn_recording: Script::new(
                r#"
                local incarnation = redis.call('HGET', KEYS[2], 'incarnation') or ''
                if redis.call('EXISTS', KEYS[2]) == 0 or incarnation ~= ARGV[6] then
                  if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
                  return 'gone'
                end
                if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'lost' end
                for i = 7, #ARGV do redis.call('RPUSH', KEYS[3], ARGV[i]) end
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
                redis.call('DEL', KEYS[1])
                return 'ok'
                "#,
            ),
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

fn session_base(owner: &str, id: &str) -> String {
    format!("oc:s:{{{owner}/{id}}}")
}

fn owner_index(owner: &str) -> String {
    format!("oc:o:{owner}:sessions")
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

impl RedisStore {
    /// Prepares the connection (see [`SharedConnection::open`]): the core starts, and reports
    /// Redis as down, while Redis is away.
    pub async fn connect(config: &RedisConfig) -> StoreResult<Self> {
        let conn = SharedConnection::open(config)
            .await
            .map_err(|e| StoreError::Unavailable(e.0))?;
        Ok(Self {
            conn,
            scripts: std::sync::Arc::new(Scripts::new()),
        })
    }

    /// Drops index entries of `owner` naming sessions that do not exist, once they are older
    /// than a create could take: a younger one may belong to a create in progress (listed
    /// first, created second). Best effort: a listing never fails for it.
    async fn drop_stale_index_entries(&self, owner: &str, ids: &[String]) {
        const CREATE_BOUND_MS: i64 = 60_000;
        let mut conn = self.conn.clone();
        let index = owner_index(owner);
        let cutoff = Utc::now().timestamp_millis() - CREATE_BOUND_MS;
        for id in ids {
            let score: Option<i64> = conn.zscore(&index, id).await.unwrap_or(None);
            let exists: bool = conn
                .exists(format!("{}:meta", session_base(owner, id)))
                .await
                .unwrap_or(true);
            if !exists && score.is_some_and(|created| created < cutoff) {
                let _: Result<(), _> = conn.zrem(&index, id).await;
            }
        }
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
    ) -> StoreResult<bool> {
        let base = session_base(&session.owner, &session.id);
        let mut conn = self.conn.clone();
        // Listed first, created second: the owner's index lives in another slot, so the two
        // cannot be one script on a cluster. An entry whose session was never created (a
        // failure in between) is skipped by listings and dropped once it is old.
        // NX: a create refused because the session exists leaves its entry as it was.
        redis::cmd("ZADD")
            .arg(owner_index(&session.owner))
            .arg("NX")
            .arg(session.created_at.timestamp_millis())
            .arg(&session.id)
            .query_async::<()>(&mut conn)
            .await
            .map_err(StoreError::from)?;
        let mut invocation = self.scripts.create_session.prepare_invoke();
        invocation
            .key(format!("{base}:meta"))
            .key(format!("{base}:msgs"))
            .arg(encode(session)?)
            .arg(session.updated_at.to_rfc3339())
            .arg(session.created_at.timestamp_millis())
            .arg(&session.id)
            .arg(&session.incarnation);
        for message in messages {
            invocation.arg(encode(message)?);
        }
        let created: i64 = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        Ok(created == 1)
    }

    async fn get_session(&self, owner: &str, id: &str) -> StoreResult<Option<SessionRecord>> {
        let base = session_base(owner, id);
        let mut conn = self.conn.clone();
        let ((record, updated_at), count): ((Option<String>, Option<String>), u32) = redis::pipe()
            .cmd("HMGET")
            .arg(format!("{base}:meta"))
            .arg("record")
            .arg("updatedAt")
            .llen(format!("{base}:msgs"))
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
                    .arg(format!("{base}:meta"))
                    .arg("record")
                    .arg("updatedAt");
                pipe.llen(format!("{base}:msgs"));
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
            .lrange(format!("{base}:msgs"), start, stop)
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
        let deleted: i64 = self
            .scripts
            .delete_session
            .key(format!("{base}:meta"))
            .key(format!("{base}:msgs"))
            .key(format!("{base}:results"))
            .key(format!("{base}:results:exp"))
            .key(format!("{base}:lock"))
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        // Deleted first, unlisted second (the index is in another slot): a failure in between
        // leaves an entry that listings skip and drop once it is old.
        conn.zrem::<_, _, ()>(owner_index(owner), id)
            .await
            .map_err(StoreError::from)?;
        // A session created again under this id between the two steps keeps its entry.
        let recreated: Option<String> = conn
            .hget(format!("{base}:meta"), "record")
            .await
            .map_err(StoreError::from)?;
        if let Some(record) = recreated {
            let session: SessionRecord = decode(&record)?;
            redis::cmd("ZADD")
                .arg(owner_index(owner))
                .arg("NX")
                .arg(session.created_at.timestamp_millis())
                .arg(id)
                .query_async::<()>(&mut conn)
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
            .key(format!("{base}:lock"))
            .key(format!("{base}:meta"))
            .key(format!("{base}:msgs"))
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
                let mut rest = reply[8..].iter().flatten();
                let head = rest
                    .by_ref()
                    .take(head_len)
                    .map(|raw| decode(raw))
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
        let mut conn = self.conn.clone();
        let outcome: String = self
            .scripts
            .append_summary
            .key(format!("{base}:lock"))
            .key(format!("{base}:meta"))
            .key(format!("{base}:msgs"))
            .arg(fence.token)
            .arg(fence.incarnation)
            .arg(encode(summary)?)
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        match outcome.as_str() {
            "ok" => Ok(AppendOutcome::Appended),
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
    ) -> StoreResult<AppendOutcome> {
        let base = session_base(owner, id);
        let mut invocation = self.scripts.append_turn.prepare_invoke();
        invocation
            .key(format!("{base}:lock"))
            .key(format!("{base}:meta"))
            .key(format!("{base}:msgs"))
            .arg(fence.token)
            .arg(at.to_rfc3339())
            .arg(fence.incarnation);
        for message in messages {
            invocation.arg(encode(message)?);
        }
        let mut conn = self.conn.clone();
        let outcome: String = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        match outcome.as_str() {
            "ok" => Ok(AppendOutcome::Appended),
            "lost" => Ok(AppendOutcome::LockLost),
            "gone" => Ok(AppendOutcome::SessionGone),
            other => Err(StoreError::Corrupt(format!(
                "unexpected append reply {other:?}"
            ))),
        }
    }

    async fn unlock_session(&self, owner: &str, id: &str, token: &str) -> StoreResult<()> {
        let base = session_base(owner, id);
        let mut conn = self.conn.clone();
        self.scripts
            .unlock_session
            .key(format!("{base}:lock"))
            .arg(token)
            .invoke_async::<i64>(&mut conn)
            .await
            .map_err(StoreError::from)?;
        Ok(())
    }

    async fn append_turn_recording(
        &self,
        owner: &str,
        id: &str,
        fence: TurnFence<'_>,
        messages: &[StoredMessage],
        at: DateTime<Utc>,
        result: RecordedResult<'_>,
    ) -> StoreResult<AppendOutcome> {
        let base = session_base(owner, id);
        let mut invocation = self.scripts.append_turn_recording.prepare_invoke();
        invocation
            .key(format!("{base}:lock"))
            .key(format!("{base}:meta"))
            .key(format!("{base}:msgs"))
            .key(format!("{base}:results"))
            .key(format!("{base}:results:exp"))
            .arg(fence.token)
            .arg(at.to_rfc3339())
            .arg(result.request_id)
            .arg(result.body)
            .arg(result.retention.as_millis().max(1) as u64)
            .arg(fence.incarnation);
        for message in messages {
            invocation.arg(encode(message)?);
        }
        let mut conn = self.conn.clone();
        let outcome: String = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        match outcome.as_str() {
            "ok" => Ok(AppendOutcome::Appended),
            "lost" => Ok(AppendOutcome::LockLost),
            "gone" => Ok(AppendOutcome::SessionGone),
            other => Err(StoreError::Corrupt(format!(
                "unexpected append reply {other:?}"
            ))),
        }
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
            .key(format!("{base}:results"))
            .key(format!("{base}:results:exp"))
            .arg(request_id)
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::from)
    }
}
