//! Jobs and runs in Redis, shared by every core replica.
//!
//! Every key shares the hash tag `{sched}` (with the event stream), so each
//! script below touches one slot and stays atomic on a cluster too:
//! - `oc:{sched}:job:<id>` hash: `def` (JSON definition), `enabled`, `next`
//!   (due ms, empty when none), `version`, `running` (scheduled ms of the run
//!   in progress), and the state: `lastRunAt`, `lastStatus`, `lastError`,
//!   `lastDurationMs`, `errors`.
//! - `oc:{sched}:due` zset: enabled jobs by next due ms. A tick reads only the
//!   due head of it.
//! - `oc:{sched}:run:<id>:<ms>` hash: one run; `oc:{sched}:runs:<id>` zset its
//!   job's history by scheduled ms, trimmed to [`RUN_HISTORY`].
//! - `oc:{sched}:leases` zset: `<id>:<ms>` of running runs by lease expiry.
//! - `oc:{sched}:owner:<key id>` zset: a key's jobs by creation.
//!
//! Time comes from `TIME` inside the scripts, so replicas' clocks never decide.

use std::collections::HashMap;

use crate::store::SharedConnection;
use async_trait::async_trait;
use redis::Script;

use super::{
    Claim, ClaimOutcome, CronStore, DueBatch, Finish, JobDefinition, JobRecord, JobState,
    RUN_HISTORY, RunRecord, RunUsage, UpdateOutcome,
};
use crate::events::{STREAM_FIELD, STREAM_KEY};
use crate::store::{Page, StoreError, StoreResult};

const DUE: &str = "oc:{sched}:due";
const LEASES: &str = "oc:{sched}:leases";
/// Expired leases handed to one tick, at most.
const EXPIRED_BATCH: usize = 20;

fn job_key(id: &str) -> String {
    format!("oc:{{sched}}:job:{id}")
}

fn runs_key(id: &str) -> String {
    format!("oc:{{sched}}:runs:{id}")
}

fn run_prefix(id: &str) -> String {
    format!("oc:{{sched}}:run:{id}:")
}

fn owner_key(owner: &str) -> String {
    format!("oc:{{sched}}:owner:{owner}")
}

fn lease_member(id: &str, ms: i64) -> String {
    format!("{id}:{ms}")
}

const PRELUDE: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function int(n) return string.format('%d', n) end
local function record_skip(prefix, runs, job, id, ms, reason, now, touch)
  local rk = prefix .. ms
  if redis.call('EXISTS', rk) == 1 then return end
  redis.call('HSET', rk, 'jobId', id, 'scheduledMs', ms, 'status', 'skipped',
    'trigger', 'schedule', 'error', reason, 'finishedMs', int(now))
  redis.call('ZADD', runs, ms, ms)
  if touch then redis.call('HSET', job, 'lastStatus', 'skipped', 'lastError', reason) end
end
local function trim_runs(prefix, runs, keep, running)
  local n = redis.call('ZCARD', runs)
  if n <= keep then return end
  local old = redis.call('ZRANGE', runs, 0, n - keep - 1)
  for _, m in ipairs(old) do
    if m ~= running then
      redis.call('DEL', prefix .. m)
      redis.call('ZREM', runs, m)
    end
  end
end
"#;

struct Scripts {
    due: Script,
    claim: Script,
    finish: Script,
    renew: Script,
    take_over: Script,
    postpone: Script,
    update: Script,
    delete: Script,
    insert: Script,
}

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

impl Scripts {
    fn new() -> Self {
        Self {
            // KEYS: job, owner, due. ARGV: 1 max jobs, 2 id, 3 created ms, 4 def, 5 enabled,
            // 6 next ('' = none), 7 version. The owner's count and the insert are one step.
            // Returns -1 when stored, else the owner's job count.
            insert: script(
                r#"
                local n = redis.call('ZCARD', KEYS[2])
                if n >= tonumber(ARGV[1]) then return n end
                redis.call('HSET', KEYS[1], 'def', ARGV[4], 'enabled', ARGV[5], 'next', ARGV[6],
                  'version', ARGV[7], 'errors', '0', 'running', '')
                redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
                if ARGV[5] == '1' and ARGV[6] ~= '' then redis.call('ZADD', KEYS[3], ARGV[6], ARGV[2]) end
                return -(n + 2)
                "#,
            ),
            // KEYS: due, leases. ARGV: limit, expired limit.
            due: script(
                r#"
                local now = now_ms()
                local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', int(now), 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
                local nxt = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. int(now), '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
                local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', int(now), 'LIMIT', 0, tonumber(ARGV[2]))
                return {int(now), due, nxt, expired}
                "#,
            ),
            // KEYS: job, due, leases, runs.
            // ARGV: 1 id, 2 expected next ('' = manual), 3 version, 4 run ms ('' = none),
            // 5 next ms ('' = none), 6 disable, 7 token, 8 replica, 9 lease ms, 10 trigger,
            // 11 overlap reason, 12 history kept, 13 run key prefix, 14.. (ms, reason) skipped.
            claim: script(
                r#"
                if redis.call('EXISTS', KEYS[1]) == 0 then
                  redis.call('ZREM', KEYS[2], ARGV[1])
                  return {'gone'}
                end
                local j = redis.call('HMGET', KEYS[1], 'next', 'version', 'enabled', 'running')
                if j[2] ~= ARGV[3] then return {'stale'} end
                local scheduled = ARGV[2] ~= ''
                if scheduled and (j[1] ~= ARGV[2] or j[3] ~= '1') then return {'stale'} end
                local now = now_ms()
                if scheduled and tonumber(ARGV[2]) > now then return {'early'} end
                local running = j[4]
                if running == '' then running = false end
                local prefix = ARGV[13]
                if not scheduled and (running or redis.call('EXISTS', prefix .. ARGV[4]) == 1) then
                  return {'busy'}
                end
                for i = 14, #ARGV, 2 do
                  record_skip(prefix, KEYS[4], KEYS[1], ARGV[1], ARGV[i], ARGV[i + 1], now, true)
                end
                local outcome = 'recorded'
                if ARGV[4] ~= '' then
                  if running then
                    record_skip(prefix, KEYS[4], KEYS[1], ARGV[1], ARGV[4], ARGV[11], now, true)
                  elseif redis.call('EXISTS', prefix .. ARGV[4]) == 0 then
                    local lease = now + tonumber(ARGV[9])
                    redis.call('HSET', prefix .. ARGV[4], 'jobId', ARGV[1], 'scheduledMs', ARGV[4],
                      'status', 'running', 'trigger', ARGV[10], 'startedMs', int(now),
                      'replica', ARGV[8], 'token', ARGV[7], 'leaseUntil', int(lease), 'attempt', 1)
                    redis.call('ZADD', KEYS[4], ARGV[4], ARGV[4])
                    redis.call('ZADD', KEYS[3], lease, ARGV[1] .. ':' .. ARGV[4])
                    redis.call('HSET', KEYS[1], 'running', ARGV[4])
                    running = ARGV[4]
                    outcome = 'claimed'
                  end
                end
                if scheduled then
                  if ARGV[6] == '1' or ARGV[5] == '' then
                    redis.call('HSET', KEYS[1], 'next', '')
                    redis.call('ZREM', KEYS[2], ARGV[1])
                    if ARGV[6] == '1' then
                      redis.call('HSET', KEYS[1], 'enabled', '0')
                      redis.call('HINCRBY', KEYS[1], 'version', 1)
                    end
                  else
                    redis.call('HSET', KEYS[1], 'next', ARGV[5])
                    redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
                  end
                end
                trim_runs(prefix, KEYS[4], tonumber(ARGV[12]), running or '')
                return {outcome, int(now)}
                "#,
            ),
            // KEYS: job, run, leases, events, due, runs, owner.
            // ARGV: 1 token, 2 status, 3 error, 4 started ms, 5 duration ms, 6 usage,
            // 7 session id, 8 job id, 9 scheduled ms, 10 delete job, 11 stream max len,
            // 12 run key prefix, 13.. events (JSON).
            finish: script(
                r#"
                local r = redis.call('HMGET', KEYS[2], 'token', 'status')
                if r[1] ~= ARGV[1] or r[2] ~= 'running' then return {0} end
                local now = now_ms()
                redis.call('HSET', KEYS[2], 'status', ARGV[2], 'finishedMs', int(now), 'durationMs', ARGV[5])
                if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], 'error', ARGV[3]) end
                if ARGV[6] ~= '' then redis.call('HSET', KEYS[2], 'usage', ARGV[6]) end
                if ARGV[7] ~= '' then redis.call('HSET', KEYS[2], 'sessionId', ARGV[7]) end
                redis.call('ZREM', KEYS[3], ARGV[8] .. ':' .. ARGV[9])
                if redis.call('EXISTS', KEYS[1]) == 1 then
                  if redis.call('HGET', KEYS[1], 'running') == ARGV[9] then
                    redis.call('HSET', KEYS[1], 'running', '')
                  end
                  redis.call('HSET', KEYS[1], 'lastRunAt', ARGV[4], 'lastStatus', ARGV[2],
                    'lastError', ARGV[3], 'lastDurationMs', ARGV[5])
                  if ARGV[2] == 'ok' then
                    redis.call('HSET', KEYS[1], 'errors', 0)
                  elseif ARGV[2] == 'error' then
                    redis.call('HINCRBY', KEYS[1], 'errors', 1)
                  end
                  if ARGV[10] == '1' and ARGV[2] == 'ok' then
                    for _, m in ipairs(redis.call('ZRANGE', KEYS[6], 0, -1)) do
                      redis.call('DEL', ARGV[12] .. m)
                    end
                    redis.call('DEL', KEYS[6], KEYS[1])
                    redis.call('ZREM', KEYS[5], ARGV[8])
                    redis.call('ZREM', KEYS[7], ARGV[8])
                  end
                end
                for i = 13, #ARGV do
                  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[11], '*', 'e', ARGV[i])
                end
                return {1, int(now)}
                "#,
            ),
            // KEYS: run, leases. ARGV: token, lease ms, lease member.
            renew: script(
                r#"
                local r = redis.call('HMGET', KEYS[1], 'token', 'status')
                if r[1] ~= ARGV[1] or r[2] ~= 'running' then return 0 end
                local lease = now_ms() + tonumber(ARGV[2])
                redis.call('HSET', KEYS[1], 'leaseUntil', int(lease))
                redis.call('ZADD', KEYS[2], lease, ARGV[3])
                return 1
                "#,
            ),
            // KEYS: run, leases. ARGV: lease member, token, replica, lease ms.
            take_over: script(
                r#"
                local r = redis.call('HMGET', KEYS[1], 'status', 'leaseUntil')
                if not r[1] or r[1] ~= 'running' then
                  redis.call('ZREM', KEYS[2], ARGV[1])
                  return false
                end
                local now = now_ms()
                if tonumber(r[2] or '0') > now then return false end
                local lease = now + tonumber(ARGV[4])
                redis.call('HSET', KEYS[1], 'token', ARGV[2], 'replica', ARGV[3], 'leaseUntil', int(lease))
                redis.call('HINCRBY', KEYS[1], 'attempt', 1)
                redis.call('ZADD', KEYS[2], lease, ARGV[1])
                return redis.call('HGETALL', KEYS[1])
                "#,
            ),
            // KEYS: job, due, runs. ARGV: 1 id, 2 expected next, 3 next, 4 run key prefix,
            // 5 history kept, 6.. (ms, reason) skipped.
            postpone: script(
                r#"
                local j = redis.call('HMGET', KEYS[1], 'next', 'enabled', 'running')
                if j[1] ~= ARGV[2] or j[2] ~= '1' then return 0 end
                local now = now_ms()
                for i = 6, #ARGV, 2 do
                  record_skip(ARGV[4], KEYS[3], KEYS[1], ARGV[1], ARGV[i], ARGV[i + 1], now, false)
                end
                redis.call('HSET', KEYS[1], 'next', ARGV[3])
                redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
                trim_runs(ARGV[4], KEYS[3], tonumber(ARGV[5]), j[3] or '')
                return 1
                "#,
            ),
            // KEYS: job, due. ARGV: 1 id, 2 expected version, 3 def, 4 enabled, 5 next, 6 reset errors.
            update: script(
                r#"
                if redis.call('EXISTS', KEYS[1]) == 0 then return 'gone' end
                if redis.call('HGET', KEYS[1], 'version') ~= ARGV[2] then return 'conflict' end
                redis.call('HSET', KEYS[1], 'def', ARGV[3], 'enabled', ARGV[4], 'next', ARGV[5],
                  'version', int(tonumber(ARGV[2]) + 1))
                if ARGV[6] == '1' then redis.call('HSET', KEYS[1], 'errors', 0) end
                if ARGV[4] == '1' and ARGV[5] ~= '' then
                  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
                else
                  redis.call('ZREM', KEYS[2], ARGV[1])
                end
                return 'ok'
                "#,
            ),
            // KEYS: job, due, runs, owner. ARGV: id, run key prefix.
            delete: script(
                r#"
                if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
                for _, m in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
                  redis.call('DEL', ARGV[2] .. m)
                end
                redis.call('DEL', KEYS[3], KEYS[1])
                redis.call('ZREM', KEYS[2], ARGV[1])
                redis.call('ZREM', KEYS[4], ARGV[1])
                return 1
                "#,
            ),
        }
    }
}

#[derive(Clone)]
pub struct RedisCronStore {
    conn: SharedConnection,
    scripts: std::sync::Arc<Scripts>,
    events_max_len: u64,
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("cron store: {what}"))
}

fn opt_i64(map: &HashMap<String, String>, field: &str) -> Option<i64> {
    map.get(field)
        .filter(|v| !v.is_empty())
        .and_then(|v| v.parse().ok())
}

fn opt_string(map: &HashMap<String, String>, field: &str) -> Option<String> {
    map.get(field).filter(|v| !v.is_empty()).cloned()
}

fn decode_job(map: HashMap<String, String>) -> StoreResult<Option<JobRecord>> {
    let Some(def) = map.get("def") else {
        return Ok(None);
    };
    let def: JobDefinition = serde_json::from_str(def).map_err(corrupt)?;
    Ok(Some(JobRecord {
        def,
        enabled: map.get("enabled").is_some_and(|v| v == "1"),
        next_ms: opt_i64(&map, "next"),
        version: opt_i64(&map, "version").unwrap_or(0) as u64,
        state: JobState {
            last_run_at_ms: opt_i64(&map, "lastRunAt"),
            last_status: opt_string(&map, "lastStatus"),
            last_error: opt_string(&map, "lastError"),
            last_duration_ms: opt_i64(&map, "lastDurationMs"),
            consecutive_errors: opt_i64(&map, "errors").unwrap_or(0).max(0) as u32,
            running: opt_i64(&map, "running"),
        },
    }))
}

fn decode_run(map: HashMap<String, String>) -> StoreResult<Option<RunRecord>> {
    let (Some(job_id), Some(scheduled_ms)) =
        (opt_string(&map, "jobId"), opt_i64(&map, "scheduledMs"))
    else {
        return Ok(None);
    };
    let usage = match map.get("usage").filter(|u| !u.is_empty()) {
        Some(raw) => Some(serde_json::from_str::<RunUsage>(raw).map_err(corrupt)?),
        None => None,
    };
    Ok(Some(RunRecord {
        job_id,
        scheduled_ms,
        status: opt_string(&map, "status").unwrap_or_default(),
        trigger: opt_string(&map, "trigger").unwrap_or_default(),
        started_ms: opt_i64(&map, "startedMs"),
        finished_ms: opt_i64(&map, "finishedMs"),
        duration_ms: opt_i64(&map, "durationMs"),
        error: opt_string(&map, "error"),
        usage,
        session_id: opt_string(&map, "sessionId"),
        replica: opt_string(&map, "replica").unwrap_or_default(),
        token: opt_string(&map, "token").unwrap_or_default(),
        lease_until_ms: opt_i64(&map, "leaseUntil").unwrap_or(0),
        attempt: opt_i64(&map, "attempt").unwrap_or(0).max(0) as u32,
    }))
}

fn pairs_to_map(flat: Vec<String>) -> HashMap<String, String> {
    let mut map = HashMap::with_capacity(flat.len() / 2);
    let mut iter = flat.into_iter();
    while let (Some(k), Some(v)) = (iter.next(), iter.next()) {
        map.insert(k, v);
    }
    map
}

fn split_member(member: &str) -> Option<(String, i64)> {
    let (id, ms) = member.rsplit_once(':')?;
    Some((id.to_string(), ms.parse().ok()?))
}

fn scored(flat: Vec<String>) -> Vec<(String, i64)> {
    flat.chunks(2)
        .filter_map(|pair| match pair {
            [member, score] => Some((member.clone(), score.parse::<f64>().ok()? as i64)),
            _ => None,
        })
        .collect()
}

fn opt_arg(value: Option<i64>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

impl RedisCronStore {
    /// `conn` is the store's shared connection (`RedisStore::connection`).
    pub fn new(conn: SharedConnection, events_max_len: u64) -> Self {
        Self {
            conn,
            scripts: std::sync::Arc::new(Scripts::new()),
            events_max_len,
        }
    }

    async fn hgetall_many(&self, keys: &[String]) -> StoreResult<Vec<HashMap<String, String>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.hgetall(key);
        }
        let mut conn = self.conn.clone();
        pipe.query_async(&mut conn).await.map_err(StoreError::from)
    }
}

#[async_trait]
impl CronStore for RedisCronStore {
    async fn now_ms(&self) -> StoreResult<i64> {
        let mut conn = self.conn.clone();
        let (secs, micros): (i64, i64) = redis::cmd("TIME")
            .query_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        Ok(secs * 1000 + micros / 1000)
    }

    async fn insert_job(&self, job: &JobRecord, max_jobs: u64) -> StoreResult<Option<u64>> {
        let def = serde_json::to_string(&job.def).map_err(corrupt)?;
        let id = &job.def.id;
        let mut conn = self.conn.clone();
        let stored: i64 = self
            .scripts
            .insert
            .key(job_key(id))
            .key(owner_key(&job.def.owner))
            .key(DUE)
            .arg(max_jobs)
            .arg(id)
            .arg(job.def.created_at_ms)
            .arg(def)
            .arg(if job.enabled { "1" } else { "0" })
            .arg(opt_arg(job.next_ms))
            .arg(job.version)
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        if stored < 0 {
            crate::quotas::observe_usage("maxCronJobs", (-stored - 1) as u64, max_jobs);
            Ok(None)
        } else {
            Ok(Some(stored as u64))
        }
    }

    async fn job_count(&self, owner: &str) -> StoreResult<u64> {
        let mut conn = self.conn.clone();
        redis::cmd("ZCARD")
            .arg(owner_key(owner))
            .query_async(&mut conn)
            .await
            .map_err(StoreError::from)
    }

    async fn job(&self, id: &str) -> StoreResult<Option<JobRecord>> {
        let mut maps = self.hgetall_many(&[job_key(id)]).await?;
        match maps.pop() {
            Some(map) => decode_job(map),
            None => Ok(None),
        }
    }

    async fn list_jobs(&self, owner: &str) -> StoreResult<Vec<JobRecord>> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(owner_key(owner))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        let keys: Vec<String> = ids.iter().map(|id| job_key(id)).collect();
        let mut out = Vec::with_capacity(keys.len());
        for map in self.hgetall_many(&keys).await? {
            // A job deleted between the two reads is simply not listed.
            if let Some(job) = decode_job(map)? {
                out.push(job);
            }
        }
        Ok(out)
    }

    async fn update_job(&self, job: &JobRecord, reset_errors: bool) -> StoreResult<UpdateOutcome> {
        let def = serde_json::to_string(&job.def).map_err(corrupt)?;
        let mut conn = self.conn.clone();
        let outcome: String = self
            .scripts
            .update
            .key(job_key(&job.def.id))
            .key(DUE)
            .arg(&job.def.id)
            .arg(job.version)
            .arg(def)
            .arg(if job.enabled { "1" } else { "0" })
            .arg(opt_arg(job.next_ms))
            .arg(if reset_errors { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        Ok(match outcome.as_str() {
            "ok" => UpdateOutcome::Updated,
            "conflict" => UpdateOutcome::Conflict,
            _ => UpdateOutcome::Gone,
        })
    }

    async fn delete_job(&self, owner: &str, id: &str) -> StoreResult<bool> {
        let mut conn = self.conn.clone();
        let deleted: i64 = self
            .scripts
            .delete
            .key(job_key(id))
            .key(DUE)
            .key(runs_key(id))
            .key(owner_key(owner))
            .arg(id)
            .arg(run_prefix(id))
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        Ok(deleted == 1)
    }

    async fn due(&self, limit: usize) -> StoreResult<DueBatch> {
        let mut conn = self.conn.clone();
        let (now, due, next, expired): (String, Vec<String>, Vec<String>, Vec<String>) = self
            .scripts
            .due
            .key(DUE)
            .key(LEASES)
            .arg(limit)
            .arg(EXPIRED_BATCH)
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        Ok(DueBatch {
            now_ms: now.parse().map_err(corrupt)?,
            due: scored(due),
            next_ms: scored(next).first().map(|(_, ms)| *ms),
            expired: expired.iter().filter_map(|m| split_member(m)).collect(),
        })
    }

    async fn forget_due(&self, id: &str) -> StoreResult<()> {
        let mut conn = self.conn.clone();
        redis::cmd("ZREM")
            .arg(DUE)
            .arg(id)
            .query_async::<i64>(&mut conn)
            .await
            .map_err(StoreError::from)?;
        Ok(())
    }

    async fn claim(&self, claim: &Claim) -> StoreResult<ClaimOutcome> {
        let id = &claim.job_id;
        let mut invocation = self.scripts.claim.prepare_invoke();
        invocation
            .key(job_key(id))
            .key(DUE)
            .key(LEASES)
            .key(runs_key(id))
            .arg(id)
            .arg(opt_arg(claim.expect_next_ms))
            .arg(claim.expect_version)
            .arg(opt_arg(claim.run_ms))
            .arg(opt_arg(claim.next_ms))
            .arg(if claim.disable { "1" } else { "0" })
            .arg(&claim.token)
            .arg(&claim.replica)
            .arg(claim.lease_ms)
            .arg(claim.trigger)
            .arg(&claim.overlap_reason)
            .arg(RUN_HISTORY)
            .arg(run_prefix(id));
        for (ms, reason) in &claim.skipped {
            invocation.arg(ms).arg(reason);
        }
        let mut conn = self.conn.clone();
        let reply: Vec<String> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        Ok(match reply.first().map(String::as_str) {
            Some("claimed") => ClaimOutcome::Claimed {
                now_ms: reply
                    .get(1)
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| corrupt("claim reply without time"))?,
            },
            Some("recorded") => ClaimOutcome::Recorded,
            Some("stale") => ClaimOutcome::Stale,
            Some("early") => ClaimOutcome::Early,
            Some("busy") => ClaimOutcome::Busy,
            Some("gone") => ClaimOutcome::Gone,
            other => return Err(corrupt(format!("unexpected claim reply {other:?}"))),
        })
    }

    async fn renew(
        &self,
        job_id: &str,
        scheduled_ms: i64,
        token: &str,
        lease_ms: i64,
    ) -> StoreResult<bool> {
        let mut conn = self.conn.clone();
        let renewed: i64 = self
            .scripts
            .renew
            .key(format!("{}{scheduled_ms}", run_prefix(job_id)))
            .key(LEASES)
            .arg(token)
            .arg(lease_ms)
            .arg(lease_member(job_id, scheduled_ms))
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        Ok(renewed == 1)
    }

    async fn finish(&self, finish: &Finish) -> StoreResult<bool> {
        let id = &finish.job_id;
        let usage = match &finish.usage {
            Some(usage) => serde_json::to_string(usage).map_err(corrupt)?,
            None => String::new(),
        };
        let mut invocation = self.scripts.finish.prepare_invoke();
        invocation
            .key(job_key(id))
            .key(format!("{}{}", run_prefix(id), finish.scheduled_ms))
            .key(LEASES)
            .key(STREAM_KEY)
            .key(DUE)
            .key(runs_key(id))
            .key(owner_key(&finish.owner))
            .arg(&finish.token)
            .arg(finish.status)
            .arg(finish.error.as_deref().unwrap_or(""))
            .arg(finish.started_ms)
            .arg(finish.duration_ms)
            .arg(usage)
            .arg(finish.session_id.as_deref().unwrap_or(""))
            .arg(id)
            .arg(finish.scheduled_ms)
            .arg(if finish.delete_job { "1" } else { "0" })
            .arg(self.events_max_len)
            .arg(run_prefix(id));
        for event in &finish.events {
            invocation.arg(event.encode());
        }
        let mut conn = self.conn.clone();
        let reply: Vec<i64> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        let _ = STREAM_FIELD; // the scripts write the same field name ('e')
        Ok(reply.first() == Some(&1))
    }

    async fn take_over(
        &self,
        job_id: &str,
        scheduled_ms: i64,
        token: &str,
        replica: &str,
        lease_ms: i64,
    ) -> StoreResult<Option<RunRecord>> {
        let mut conn = self.conn.clone();
        let reply: Option<Vec<String>> = self
            .scripts
            .take_over
            .key(format!("{}{scheduled_ms}", run_prefix(job_id)))
            .key(LEASES)
            .arg(lease_member(job_id, scheduled_ms))
            .arg(token)
            .arg(replica)
            .arg(lease_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        match reply {
            Some(flat) if !flat.is_empty() => decode_run(pairs_to_map(flat)),
            _ => Ok(None),
        }
    }

    async fn postpone(
        &self,
        job_id: &str,
        expect_next_ms: i64,
        next_ms: i64,
        skipped: &[(i64, String)],
    ) -> StoreResult<bool> {
        let mut invocation = self.scripts.postpone.prepare_invoke();
        invocation
            .key(job_key(job_id))
            .key(DUE)
            .key(runs_key(job_id))
            .arg(job_id)
            .arg(expect_next_ms)
            .arg(next_ms)
            .arg(run_prefix(job_id))
            .arg(RUN_HISTORY);
        for (ms, reason) in skipped {
            invocation.arg(ms).arg(reason);
        }
        let mut conn = self.conn.clone();
        let moved: i64 = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        Ok(moved == 1)
    }

    async fn list_runs(
        &self,
        job_id: &str,
        offset: u64,
        limit: u32,
    ) -> StoreResult<Page<RunRecord>> {
        let mut conn = self.conn.clone();
        let start = offset as i64;
        let stop = start + i64::from(limit); // one extra to learn whether more remain
        let mut members: Vec<String> = redis::cmd("ZREVRANGE")
            .arg(runs_key(job_id))
            .arg(start)
            .arg(stop)
            .query_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        let more = members.len() > limit as usize;
        members.truncate(limit as usize);
        let prefix = run_prefix(job_id);
        let keys: Vec<String> = members.iter().map(|m| format!("{prefix}{m}")).collect();
        let mut items = Vec::with_capacity(keys.len());
        for map in self.hgetall_many(&keys).await? {
            if let Some(run) = decode_run(map)? {
                items.push(run);
            }
        }
        Ok(Page {
            items,
            next: more.then(|| offset + u64::from(limit)),
        })
    }
}
