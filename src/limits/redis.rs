//! The sliding-window log in Redis, shared by every replica. One script
//! decides all three limits in one round trip; a key's three structures share
//! the hash tag `{rl:<key>}`, so the script also runs on Redis Cluster.
//!
//! - `oc:rl:{<key>}:log`  zset: reservation id → admission time (ms, Redis clock)
//! - `oc:rl:{<key>}:amt`  hash: reservation id → "tokens,context[,cost]"
//! - `oc:rl:{<key>}:sum`  hash: t, c = sums over the live entries; r = the cost (micro-dollars)
//!   they reserve against the key's budget
//! - `oc:rl:{<key>}:spend:<period>`  hash: spent = settled cost in the budget period
//!   (`day:2026-12-07@UTC`), t<permille> = a threshold crossed (see `crate::spend`)
//! - `oc:rl:{<key>}:usage:<day>`  hash: the usage ledger of one UTC day, `<model>\t<provider>\t<x>`
//!   with x in n (requests), e (errors), p, c, k (prompt, completion, cached tokens), $ (cost)
//! - `oc:rl:{<key>}:streams`, `oc:rl:{<key>}:subscriptions`  zset: lease id → expiry (ms,
//!   Redis clock) of each open stream / event subscription (see `leases.rs`)

use std::time::Duration;

use crate::store::SharedConnection;
use async_trait::async_trait;
use redis::Script;

use super::{CapKind, Charge, Decision, LeaseDecision, LimitBackend, Quota, Usage, WINDOW};
use crate::spend::{BudgetWindow, Settled, SpendRecord, UsageRow};
use crate::store::StoreError;

/// A day's ledger hash read back into rows, one per model (fields `<model>\t<provider>\t<x>`).
fn ledger_rows(key: &str, day: &str, fields: Vec<(String, u64)>) -> Vec<UsageRow> {
    let mut rows: Vec<UsageRow> = Vec::new();
    for (field, value) in fields {
        let mut parts = field.rsplitn(3, '\t');
        let (Some(figure), Some(provider), Some(model)) =
            (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let index = match rows
            .iter()
            .position(|r| r.model == model && r.provider == provider)
        {
            Some(i) => i,
            None => {
                rows.push(UsageRow {
                    key_id: key.to_owned(),
                    day: day.to_owned(),
                    model: model.to_owned(),
                    provider: provider.to_owned(),
                    ..UsageRow::default()
                });
                rows.len() - 1
            }
        };
        let row = &mut rows[index];
        match figure {
            "n" => row.requests = value,
            "e" => row.errors = value,
            "p" => row.prompt_tokens = value,
            "c" => row.completion_tokens = value,
            "k" => row.cached_tokens = value,
            "$" => row.cost_micros = value,
            _ => {}
        }
    }
    rows.sort_by(|a, b| a.model.cmp(&b.model).then(a.provider.cmp(&b.provider)));
    rows
}

const ADMIT: &str = r#"
local log, amt, sum, spend = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local window = tonumber(ARGV[2])
local rpm, tpm, cpm = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local want_t, want_c = tonumber(ARGV[6]), tonumber(ARGV[7])
local want_r = tonumber(ARGV[8])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

-- "tokens,context" or "tokens,context,reserved cost".
local function amounts(id)
  local a = redis.call('HGET', amt, id)
  if not a then return 0, 0, 0 end
  local s1 = string.find(a, ',', 1, true)
  local s2 = string.find(a, ',', s1 + 1, true)
  if not s2 then
    return tonumber(string.sub(a, 1, s1 - 1)), tonumber(string.sub(a, s1 + 1)), 0
  end
  return tonumber(string.sub(a, 1, s1 - 1)), tonumber(string.sub(a, s1 + 1, s2 - 1)),
    tonumber(string.sub(a, s2 + 1))
end

local expired = redis.call('ZRANGEBYSCORE', log, '-inf', now - window)
if #expired > 0 then
  local dt, dc, dr = 0, 0, 0
  for _, id in ipairs(expired) do
    local t, c, r = amounts(id)
    dt, dc, dr = dt + t, dc + c, dr + r
    redis.call('HDEL', amt, id)
  end
  redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
  -- Subtracted, never negated: Lua's -0 reaches Redis as "-0", which HINCRBY refuses
  -- (and zero-cost entries, such as reads, expire in batches of their own).
  redis.call('HINCRBY', sum, 't', 0 - dt)
  redis.call('HINCRBY', sum, 'c', 0 - dc)
  if dr > 0 then redis.call('HINCRBY', sum, 'r', 0 - dr) end
end

local count = redis.call('ZCARD', log)
local used_t = tonumber(redis.call('HGET', sum, 't') or '0')
local used_c = tonumber(redis.call('HGET', sum, 'c') or '0')

local function reset_ms()
  local oldest = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
  if #oldest == 0 then return 0 end
  return tonumber(oldest[2]) + window - now
end

-- The budget first: a call it refuses is refused whatever the rate limits say. A call that
-- can cost nothing is never refused for it, even past the limit.
if ARGV[9] ~= '' and want_r > 0 then
  local spent = tonumber(redis.call('HGET', spend, 'spent') or '0')
  local reserved = tonumber(redis.call('HGET', sum, 'r') or '0')
  if spent + reserved + want_r > tonumber(ARGV[9]) then
    return {2, count, used_t, used_c, reset_ms(), 0, spent, reserved}
  end
end

local function fits(fr, ft, fc)
  return count + 1 - fr <= rpm and used_t + want_t - ft <= tpm and used_c + want_c - fc <= cpm
end

if fits(0, 0, 0) then
  redis.call('ZADD', log, now, ARGV[1])
  if want_r > 0 then
    redis.call('HSET', amt, ARGV[1], want_t .. ',' .. want_c .. ',' .. ARGV[8])
    redis.call('HINCRBY', sum, 'r', ARGV[8])
  else
    redis.call('HSET', amt, ARGV[1], want_t .. ',' .. want_c)
  end
  redis.call('HINCRBY', sum, 't', want_t)
  redis.call('HINCRBY', sum, 'c', want_c)
  redis.call('PEXPIRE', log, window + 1000)
  redis.call('PEXPIRE', amt, window + 1000)
  redis.call('PEXPIRE', sum, window + 1000)
  return {1, count + 1, used_t + want_t, used_c + want_c, reset_ms()}
end

local entries = redis.call('ZRANGE', log, 0, -1, 'WITHSCORES')
local fr, ft, fc, wait = 0, 0, 0, window
for i = 1, #entries, 2 do
  if fits(fr, ft, fc) then break end
  local t, c = amounts(entries[i])
  fr, ft, fc = fr + 1, ft + t, fc + c
  wait = tonumber(entries[i + 1]) + window - now
end
return {0, count, used_t, used_c, reset_ms(), wait}
"#;

/// Settles a reservation and, when the call is to be recorded, adds it to the key's ledger
/// for its day (`<model>\t<provider>\t<figure>` fields: n requests, e errors, p prompt, c
/// completion, k cached, $ cost) and its cost to the budget period's `spent`, answering
/// `{spent, thresholds crossed first...}`.
const SETTLE: &str = r#"
local a = redis.call('HGET', KEYS[2], ARGV[1])
if a then
  local s1 = string.find(a, ',', 1, true)
  local s2 = string.find(a, ',', s1 + 1, true)
  local t, c, r
  if s2 then
    t, c, r = tonumber(string.sub(a, 1, s1 - 1)), tonumber(string.sub(a, s1 + 1, s2 - 1)),
      tonumber(string.sub(a, s2 + 1))
  else
    t, c, r = tonumber(string.sub(a, 1, s1 - 1)), tonumber(string.sub(a, s1 + 1)), 0
  end
  local nt, nc = tonumber(ARGV[2]), tonumber(ARGV[3])
  redis.call('HSET', KEYS[2], ARGV[1], nt .. ',' .. nc)
  redis.call('HINCRBY', KEYS[3], 't', nt - t)
  redis.call('HINCRBY', KEYS[3], 'c', nc - c)
  if r > 0 then redis.call('HINCRBY', KEYS[3], 'r', 0 - r) end
end
if ARGV[4] == '' then return {0} end

local usage, f = KEYS[5], ARGV[5]
redis.call('HINCRBY', usage, f .. '\tn', 1)
if ARGV[10] == '0' then redis.call('HINCRBY', usage, f .. '\te', 1) end
redis.call('HINCRBY', usage, f .. '\tp', ARGV[6])
redis.call('HINCRBY', usage, f .. '\tc', ARGV[7])
if ARGV[8] ~= '0' then redis.call('HINCRBY', usage, f .. '\tk', ARGV[8]) end
redis.call('HINCRBY', usage, f .. '\t$', ARGV[9])
redis.call('PEXPIREAT', usage, ARGV[11])
if ARGV[12] == '' then return {0} end

local spend, limit = KEYS[4], tonumber(ARGV[12])
local spent = redis.call('HINCRBY', spend, 'spent', ARGV[9])
redis.call('PEXPIREAT', spend, ARGV[13])
local out = {spent}
-- Crossed at spent >= p/1000 × limit, computed as p × (limit div 1000) + ceil(p × (limit mod
-- 1000) / 1000): spent × 1000 would pass 2^53 (where Lua's doubles skip integers) for the
-- largest budgets, and every term here stays below 10^14.
local rem = limit % 1000
local thousandths = (limit - rem) / 1000
if spent > 0 then
  for p in string.gmatch(ARGV[14], '%d+') do
    local n = tonumber(p)
    if spent >= n * thousandths + math.ceil(n * rem / 1000)
      and redis.call('HSETNX', spend, 't' .. p, 1) == 1 then
      table.insert(out, n)
    end
  end
end
return out
"#;

const AUTH_FAILURE: &str = r#"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"#;

/// Takes a lease if fewer than the cap are live: expired leases (their replica stopped
/// renewing them) are dropped first. Answers {taken, live leases}.
const ACQUIRE_LEASE: &str = r#"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local cap, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local open = redis.call('ZCARD', KEYS[1])
if open >= cap then return {0, open} end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl + 1000)
return {1, open + 1}
"#;

/// Extends a lease (re-adding it if it expired meanwhile: its stream is still open).
const RENEW_LEASE: &str = r#"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl + 1000)
return 1
"#;

pub struct RedisLimits {
    conn: SharedConnection,
    admit: Script,
    settle: Script,
    auth_failure: Script,
    acquire_lease: Script,
    renew_lease: Script,
    window: Duration,
}

impl RedisLimits {
    pub fn new(conn: SharedConnection) -> Self {
        Self::with_window(conn, WINDOW)
    }

    /// A limiter with another window (tests use short ones).
    pub fn with_window(conn: SharedConnection, window: Duration) -> Self {
        Self {
            conn,
            admit: Script::new(ADMIT),
            settle: Script::new(SETTLE),
            auth_failure: Script::new(AUTH_FAILURE),
            acquire_lease: Script::new(ACQUIRE_LEASE),
            renew_lease: Script::new(RENEW_LEASE),
            window,
        }
    }
}

impl RedisLimits {
    /// Loads the scripts into Redis (every primary of a cluster) ahead of the first call that
    /// runs them. A script Redis does not hold yet is answered NOSCRIPT and sent again after
    /// loading it: a model call's settle would then fall behind a request that followed it on
    /// this replica's connection, which would read the reservation unsettled.
    pub async fn preload(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        for script in [
            &self.admit,
            &self.settle,
            &self.auth_failure,
            &self.acquire_lease,
            &self.renew_lease,
        ] {
            script
                .prepare_invoke()
                .load_async(&mut conn)
                .await
                .map_err(StoreError::from)?;
        }
        Ok(())
    }
}

fn keys(key: &str) -> [String; 3] {
    [tagged(key, "log"), tagged(key, "amt"), tagged(key, "sum")]
}

/// `oc:rl:{<key>}:<suffix>`: one of a key's records, under its hash tag. Written by hand
/// rather than with `format!`: several are built for every call.
fn tagged(key: &str, suffix: &str) -> String {
    let mut name = String::with_capacity(key.len() + suffix.len() + 9);
    name.push_str("oc:rl:{");
    name.push_str(key);
    name.push_str("}:");
    name.push_str(suffix);
    name
}

/// A key's spend in one budget period (`spent`, and a `t<permille>` flag per threshold
/// crossed), under the key's hash tag; `-` names the one never written (no budget).
fn spend_hash(key: &str, budget: Option<&BudgetWindow>) -> String {
    let period = budget.map_or("-", |b| b.id.as_str());
    tagged(key, &["spend:", period].concat())
}

/// A key's ledger for one UTC day, under the key's hash tag.
/// How many days of a key's ledger one pipeline reads.
const USAGE_DAYS_PER_ROUND_TRIP: usize = 100;

fn usage_hash(key: &str, day: &str) -> String {
    tagged(key, &["usage:", day].concat())
}

/// The ledger field prefix of a model: `<model>\t<provider>`.
fn usage_field(model: &str, provider: &str) -> String {
    [model, "\t", provider].concat()
}

fn unix_ms(at: chrono::DateTime<chrono::Utc>) -> i64 {
    at.timestamp_millis()
}

/// A key's leases for one cap, under the key's hash tag like its rate-limit log.
fn lease_set(key: &str, kind: CapKind) -> String {
    format!("oc:rl:{{{key}}}:{}", kind.suffix())
}

#[async_trait]
impl LimitBackend for RedisLimits {
    async fn admit_spending(
        &self,
        key: &str,
        quota: Quota,
        charge: Charge,
        reservation: &str,
        budget: Option<&BudgetWindow>,
    ) -> Result<Decision, StoreError> {
        let [log, amt, sum] = keys(key);
        let mut conn = self.conn.clone();
        let limit = budget.map_or(String::new(), |b| b.limit_micros.to_string());
        let reply: Vec<i64> = self
            .admit
            .key(log)
            .key(amt)
            .key(sum)
            .key(spend_hash(key, budget))
            .arg(reservation)
            .arg(self.window.as_millis() as u64)
            .arg(quota.requests)
            .arg(quota.tokens)
            .arg(quota.context)
            .arg(charge.tokens)
            .arg(charge.context)
            .arg(if budget.is_some() {
                charge.cost_micros
            } else {
                0
            })
            .arg(limit)
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        let figure = |i: usize| reply.get(i).copied().unwrap_or(0).max(0) as u64;
        let usage = Usage {
            requests: figure(1),
            tokens: figure(2),
            context: figure(3),
            reset_ms: figure(4),
        };
        Ok(match figure(0) {
            1 => Decision::Admitted(usage),
            2 => Decision::OverBudget {
                spent_micros: figure(6),
                reserved_micros: figure(7),
            },
            _ => Decision::Denied {
                usage,
                retry_ms: figure(5),
            },
        })
    }

    async fn settle_spending(
        &self,
        key: &str,
        reservation: &str,
        used: Charge,
        record: Option<&SpendRecord>,
    ) -> Result<Settled, StoreError> {
        let [log, amt, sum] = keys(key);
        let budget = record.and_then(|r| r.budget.as_ref());
        let mut script = self.settle.prepare_invoke();
        script
            .key(log)
            .key(amt)
            .key(sum)
            .key(spend_hash(key, budget))
            .key(usage_hash(key, record.map_or("-", |r| r.day.as_str())))
            .arg(reservation)
            .arg(used.tokens)
            .arg(used.context);
        match record {
            None => {
                script.arg("");
            }
            Some(r) => {
                script
                    .arg("1")
                    .arg(usage_field(&r.model, &r.provider))
                    .arg(r.prompt_tokens)
                    .arg(r.completion_tokens)
                    .arg(r.cached_tokens)
                    .arg(r.cost_micros)
                    .arg(if r.ok { "1" } else { "0" })
                    .arg(unix_ms(r.keep_until));
                match budget {
                    None => {
                        script.arg("");
                    }
                    Some(b) => {
                        let thresholds = b
                            .thresholds_permille
                            .iter()
                            .chain(std::iter::once(&1000))
                            .map(u32::to_string)
                            .collect::<Vec<_>>()
                            .join(",");
                        script
                            .arg(b.limit_micros)
                            .arg(unix_ms(b.keep_until))
                            .arg(thresholds);
                    }
                }
            }
        }
        let mut conn = self.conn.clone();
        let reply: Vec<i64> = script
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        Ok(Settled {
            spent_micros: reply.first().copied().unwrap_or(0).max(0) as u64,
            crossed_permille: reply.iter().skip(1).map(|p| (*p).max(0) as u32).collect(),
        })
    }

    async fn period_spend(&self, key: &str, budget: &BudgetWindow) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let spent: Option<u64> = redis::cmd("HGET")
            .arg(spend_hash(key, Some(budget)))
            .arg("spent")
            .query_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        Ok(spent.unwrap_or(0))
    }

    async fn usage(&self, key: &str, days: &[String]) -> Result<Vec<UsageRow>, StoreError> {
        // Every day in one round trip: the key's hashes share its hash tag, so one node
        // answers them all on a cluster too.
        let mut rows = Vec::new();
        for days in days.chunks(USAGE_DAYS_PER_ROUND_TRIP) {
            let mut pipe = redis::pipe();
            for day in days {
                pipe.cmd("HGETALL").arg(usage_hash(key, day));
            }
            let mut conn = self.conn.clone();
            let hashes: Vec<Vec<(String, u64)>> = pipe
                .query_async(&mut conn)
                .await
                .map_err(StoreError::from)?;
            for (day, fields) in days.iter().zip(hashes) {
                rows.extend(ledger_rows(key, day, fields));
            }
        }
        Ok(rows)
    }

    async fn record_auth_failure(&self, client: &str, window: Duration) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let n: i64 = self
            .auth_failure
            .key(format!("oc:authfail:{client}"))
            .arg(window.as_millis() as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        Ok(n.max(0) as u64)
    }

    async fn acquire_lease(
        &self,
        key: &str,
        kind: CapKind,
        lease: &str,
        cap: u64,
        ttl: Duration,
    ) -> Result<LeaseDecision, StoreError> {
        let mut conn = self.conn.clone();
        let reply: Vec<i64> = self
            .acquire_lease
            .key(lease_set(key, kind))
            .arg(lease)
            .arg(cap)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::from)?;
        let figure = |i: usize| reply.get(i).copied().unwrap_or(0).max(0) as u64;
        Ok(LeaseDecision {
            taken: figure(0) == 1,
            open: figure(1),
        })
    }

    async fn renew_lease(
        &self,
        key: &str,
        kind: CapKind,
        lease: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.renew_lease
            .key(lease_set(key, kind))
            .arg(lease)
            .arg(ttl.as_millis() as u64)
            .invoke_async::<i64>(&mut conn)
            .await
            .map_err(StoreError::from)?;
        Ok(())
    }

    async fn release_lease(&self, key: &str, kind: CapKind, lease: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("ZREM")
            .arg(lease_set(key, kind))
            .arg(lease)
            .query_async::<i64>(&mut conn)
            .await
            .map_err(StoreError::from)?;
        Ok(())
    }
}

#[cfg(test)]
mod key_names {
    #[test]
    fn records_are_named_under_the_keys_hash_tag() {
        assert_eq!(
            super::keys("k1"),
            ["oc:rl:{k1}:log", "oc:rl:{k1}:amt", "oc:rl:{k1}:sum"]
        );
        assert_eq!(super::spend_hash("k1", None), "oc:rl:{k1}:spend:-");
        assert_eq!(
            super::usage_hash("k1", "2026-12-07"),
            "oc:rl:{k1}:usage:2026-12-07"
        );
        assert_eq!(super::usage_field("m", "p"), "m\tp");
    }
}
