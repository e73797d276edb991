//! The sliding-window log in Redis, shared by every replica. One script
//! decides all three limits in one round trip; a key's three structures share
//! the hash tag `{rl:<key>}`, so the script also runs on Redis Cluster.
//!
//! - `oc:rl:{<key>}:log`  zset: reservation id → admission time (ms, Redis clock)
//! - `oc:rl:{<key>}:amt`  hash: reservation id → "tokens,context"
//! - `oc:rl:{<key>}:sum`  hash: t, c = sums over the live entries
//! - `oc:rl:{<key>}:streams`, `oc:rl:{<key>}:subscriptions`  zset: lease id → expiry (ms,
//!   Redis clock) of each open stream / event subscription (see `leases.rs`)

use std::time::Duration;

use crate::store::SharedConnection;
use async_trait::async_trait;
use redis::Script;

use super::{CapKind, Charge, Decision, LeaseDecision, LimitBackend, Quota, Usage, WINDOW};
use crate::store::StoreError;

const ADMIT: &str = r#"
local log, amt, sum = KEYS[1], KEYS[2], KEYS[3]
local window = tonumber(ARGV[2])
local rpm, tpm, cpm = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local want_t, want_c = tonumber(ARGV[6]), tonumber(ARGV[7])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local function amounts(id)
  local a = redis.call('HGET', amt, id)
  if not a then return 0, 0 end
  local sep = string.find(a, ',', 1, true)
  return tonumber(string.sub(a, 1, sep - 1)), tonumber(string.sub(a, sep + 1))
end

local expired = redis.call('ZRANGEBYSCORE', log, '-inf', now - window)
if #expired > 0 then
  local dt, dc = 0, 0
  for _, id in ipairs(expired) do
    local t, c = amounts(id)
    dt, dc = dt + t, dc + c
    redis.call('HDEL', amt, id)
  end
  redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
  -- Subtracted, never negated: Lua's -0 reaches Redis as "-0", which HINCRBY refuses
  -- (and zero-cost entries, such as reads, expire in batches of their own).
  redis.call('HINCRBY', sum, 't', 0 - dt)
  redis.call('HINCRBY', sum, 'c', 0 - dc)
end

local count = redis.call('ZCARD', log)
local used_t = tonumber(redis.call('HGET', sum, 't') or '0')
local used_c = tonumber(redis.call('HGET', sum, 'c') or '0')

local function fits(fr, ft, fc)
  return count + 1 - fr <= rpm and used_t + want_t - ft <= tpm and used_c + want_c - fc <= cpm
end

local function reset_ms()
  local oldest = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
  if #oldest == 0 then return 0 end
  return tonumber(oldest[2]) + window - now
end

if fits(0, 0, 0) then
  redis.call('ZADD', log, now, ARGV[1])
  redis.call('HSET', amt, ARGV[1], want_t .. ',' .. want_c)
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

const SETTLE: &str = r#"
local a = redis.call('HGET', KEYS[2], ARGV[1])
if not a then return 0 end
local sep = string.find(a, ',', 1, true)
local t, c = tonumber(string.sub(a, 1, sep - 1)), tonumber(string.sub(a, sep + 1))
local nt, nc = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], nt .. ',' .. nc)
redis.call('HINCRBY', KEYS[3], 't', nt - t)
redis.call('HINCRBY', KEYS[3], 'c', nc - c)
return 1
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

fn keys(key: &str) -> [String; 3] {
    [
        format!("oc:rl:{{{key}}}:log"),
        format!("oc:rl:{{{key}}}:amt"),
        format!("oc:rl:{{{key}}}:sum"),
    ]
}

/// A key's leases for one cap, under the key's hash tag like its rate-limit log.
fn lease_set(key: &str, kind: CapKind) -> String {
    format!("oc:rl:{{{key}}}:{}", kind.suffix())
}

#[async_trait]
impl LimitBackend for RedisLimits {
    async fn admit(
        &self,
        key: &str,
        quota: Quota,
        charge: Charge,
        reservation: &str,
    ) -> Result<Decision, StoreError> {
        let [log, amt, sum] = keys(key);
        let mut conn = self.conn.clone();
        let reply: Vec<i64> = self
            .admit
            .key(log)
            .key(amt)
            .key(sum)
            .arg(reservation)
            .arg(self.window.as_millis() as u64)
            .arg(quota.requests)
            .arg(quota.tokens)
            .arg(quota.context)
            .arg(charge.tokens)
            .arg(charge.context)
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
        Ok(if figure(0) == 1 {
            Decision::Admitted(usage)
        } else {
            Decision::Denied {
                usage,
                retry_ms: figure(5),
            }
        })
    }

    async fn settle(&self, key: &str, reservation: &str, used: Charge) -> Result<(), StoreError> {
        let [log, amt, sum] = keys(key);
        let mut conn = self.conn.clone();
        self.settle
            .key(log)
            .key(amt)
            .key(sum)
            .arg(reservation)
            .arg(used.tokens)
            .arg(used.context)
            .invoke_async::<i64>(&mut conn)
            .await
            .map_err(StoreError::from)?;
        Ok(())
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
