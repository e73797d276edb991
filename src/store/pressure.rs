//! Storage pressure: Redis runs with `maxmemory-policy noeviction`, so once it is full every
//! write of every tenant fails, rate-limit admission included. The gateway keeps it from getting
//! there by refusing new growth (sessions, messages, cron jobs) from the tenants storing the most
//! before memory runs out, and from every tenant just before, while reads, rate-limit admission,
//! revocations, cron claims, event streams and turn locks keep the headroom above the hard
//! threshold. The policy is in docs/storage-pressure.md.
//!
//! Nothing here costs a request a round trip:
//! - [`StorageLedger`]: the bytes each key's sessions store, counted in memory by the store as
//!   it writes and deletes, and added to the zset [`STORED_BYTES`] (owner → bytes) by the
//!   sampler once a second, in one pipeline.
//! - [`StoragePressure`]: each core's sampler reads `INFO memory` of every primary (on a Redis
//!   Cluster, `INFO` goes to each primary) once a second, and, above the soft threshold, the keys
//!   storing more than their fair share; a request's check ([`StoragePressure::check_growth`])
//!   reads that snapshot from memory.
//! - Under pressure the counts of the heaviest keys are checked against what Redis holds
//!   ([`recount`], at most every [`RECOUNT_EVERY`] per key): counts drift where sessions go away
//!   other than by the gateway's delete (expiry), were stored before counting began, or a core
//!   stopped before flushing, and a key must not be refused for bytes it no longer stores.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use redis::Value;

use super::redis_connection::SharedConnection;
use crate::error::ApiError;

/// The zset of owner id → bytes its sessions store (the JSON of every stored message).
pub const STORED_BYTES: &str = "oc:storage:bytes";

const NOT_SAMPLED: &str = "Redis's memory has not been sampled yet";

/// Heavy keys read per sample, most first: refusing these is what relieves the pressure.
const MAX_HEAVY: usize = 1000;
/// How often one key's count may be checked against Redis, under pressure.
pub const RECOUNT_EVERY: Duration = Duration::from_secs(60);
/// Keys recounted per sample, at most.
const RECOUNTS_PER_SAMPLE: usize = 3;
/// Sessions of one key measured by a recount, at most (the newest ones).
const RECOUNT_MAX_SESSIONS: isize = 10_000;

/// When the gateway starts refusing growth, as percentages of Redis's `maxmemory`.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct StorageSettings {
    /// Above this share of Redis's maxmemory (percent), keys storing more than their fair share
    /// are refused new sessions, messages and cron jobs (QUOTA_EXCEEDED, quota `storage`).
    #[arg(
        long = "storage-soft-percent",
        env = "OPENCLAW_STORAGE_SOFT_PERCENT",
        default_value_t = 80
    )]
    pub soft_percent: u8,

    /// Above this share of Redis's maxmemory (percent), every key is refused new growth; the
    /// memory above it is the headroom that keeps admission, revocation, cron claims, events and
    /// locks working under noeviction.
    #[arg(
        long = "storage-hard-percent",
        env = "OPENCLAW_STORAGE_HARD_PERCENT",
        default_value_t = 90
    )]
    pub hard_percent: u8,

    /// How often each core samples Redis's memory, in milliseconds.
    #[arg(
        long = "storage-sample-ms",
        env = "OPENCLAW_STORAGE_SAMPLE_MS",
        default_value_t = 1000
    )]
    pub sample_ms: u64,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            soft_percent: 80,
            hard_percent: 90,
            sample_ms: 1000,
        }
    }
}

impl StorageSettings {
    /// A contradictory setting, named.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            1 <= self.soft_percent
                && self.soft_percent < self.hard_percent
                && self.hard_percent <= 99,
            "OPENCLAW_STORAGE_SOFT_PERCENT ({}) must be below OPENCLAW_STORAGE_HARD_PERCENT ({}), \
             both between 1 and 99: the memory above the hard threshold is the headroom that keeps \
             rate-limit admission and revocations working",
            self.soft_percent,
            self.hard_percent
        );
        anyhow::ensure!(
            self.sample_ms >= 10,
            "OPENCLAW_STORAGE_SAMPLE_MS ({}) must be at least 10",
            self.sample_ms
        );
        Ok(())
    }
}

/// How full Redis is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// No policy applies: the embedded store, Redis without `maxmemory`, or not sampled yet.
    Off,
    Normal,
    /// Keys storing more than their fair share are refused growth.
    Soft,
    /// Every key is refused growth.
    Hard,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Off => "off",
            Level::Normal => "normal",
            Level::Soft => "soft",
            Level::Hard => "hard",
        }
    }

    /// The `openclaw_storage_pressure_level` gauge: 0 off or normal, 1 soft, 2 hard.
    fn gauge(self) -> f64 {
        match self {
            Level::Off | Level::Normal => 0.0,
            Level::Soft => 1.0,
            Level::Hard => 2.0,
        }
    }

    /// The level a sample of `used` gives after `previous`: a threshold crossed upwards is left
    /// only once memory is [`RELEASE_POINTS`] below it, so memory hovering at a threshold
    /// (a flood's own transient buffers come and go) does not flip refusals on and off.
    fn sampled(used: u64, max: u64, settings: &StorageSettings, previous: Level) -> Level {
        let level = Level::of(used, max, settings);
        if level >= previous || max == 0 {
            return level;
        }
        let held = |percent: u8| {
            used as u128 * 100 >= max as u128 * percent.saturating_sub(RELEASE_POINTS) as u128
        };
        match previous {
            Level::Hard if held(settings.hard_percent) => Level::Hard,
            Level::Hard | Level::Soft if held(settings.soft_percent) => Level::Soft,
            _ => level,
        }
    }

    fn of(used: u64, max: u64, settings: &StorageSettings) -> Level {
        if max == 0 {
            return Level::Off;
        }
        // Integer arithmetic: used * 100 >= max * percent.
        let used = used as u128 * 100;
        if used >= max as u128 * settings.hard_percent as u128 {
            Level::Hard
        } else if used >= max as u128 * settings.soft_percent as u128 {
            Level::Soft
        } else {
            Level::Normal
        }
    }
}

/// How far (percentage points of maxmemory) below a threshold memory must fall to leave it.
const RELEASE_POINTS: u8 = 5;

/// The bytes each owner's stored messages gained or lost since the last flush, kept in memory
/// by the store (no round trip on the request path).
#[derive(Debug, Default)]
pub struct StorageLedger {
    pending: Mutex<HashMap<String, i64>>,
    /// Bytes this replica stored since the last flush: added to the last sample, so a burst
    /// between two samples meets the hard threshold without waiting for the next one.
    grown: AtomicI64,
}

impl StorageLedger {
    /// `owner` stores `delta` bytes more (less, when negative).
    pub fn add(&self, owner: &str, delta: i64) {
        if delta == 0 {
            return;
        }
        if delta > 0 {
            self.grown.fetch_add(delta, Ordering::Relaxed);
        }
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        match pending.get_mut(owner) {
            Some(sum) => *sum += delta,
            None => {
                pending.insert(owner.to_string(), delta);
            }
        }
    }

    /// Bytes stored here since the last flush.
    fn grown(&self) -> u64 {
        self.grown.load(Ordering::Relaxed).max(0) as u64
    }

    fn take(&self) -> HashMap<String, i64> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        self.grown.store(0, Ordering::Relaxed);
        std::mem::take(&mut *pending)
    }

    /// Deltas whose flush failed, kept for the next one.
    fn restore(&self, deltas: HashMap<String, i64>) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        for (owner, delta) in deltas {
            *pending.entry(owner).or_default() += delta;
        }
    }
}

/// What the last sample found.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub level: Level,
    /// `used_memory` and `maxmemory` of the fullest primary (by share of its maxmemory).
    pub used_bytes: u64,
    pub max_bytes: u64,
    /// Keys storing any bytes.
    pub tenants: u64,
    /// The soft threshold's memory divided among the tenants; 0 below the soft threshold.
    pub fair_share_bytes: u64,
    /// Above the soft threshold: the keys storing more than the fair share, with their bytes.
    heavy: HashMap<String, u64>,
    /// Why no policy applies, when none does.
    pub detail: String,
}

impl Snapshot {
    fn off(detail: &str) -> Self {
        Self {
            level: Level::Off,
            used_bytes: 0,
            max_bytes: 0,
            tenants: 0,
            fair_share_bytes: 0,
            heavy: HashMap::new(),
            detail: detail.to_string(),
        }
    }

    fn percent(&self) -> u64 {
        percent(self.used_bytes, self.max_bytes)
    }
}

fn percent(used: u64, max: u64) -> u64 {
    if max == 0 {
        0
    } else {
        (used as u128 * 100 / max as u128) as u64
    }
}

/// The storage-pressure policy of one core replica.
pub struct StoragePressure {
    settings: StorageSettings,
    state: RwLock<Snapshot>,
    conn: Option<SharedConnection>,
    ledger: Option<Arc<StorageLedger>>,
}

impl StoragePressure {
    /// No policy: the store is not Redis (the embedded store grows on disk, not in memory).
    pub fn off(detail: &str) -> Arc<Self> {
        Arc::new(Self {
            settings: StorageSettings::default(),
            state: RwLock::new(Snapshot::off(detail)),
            conn: None,
            ledger: None,
        })
    }

    /// Starts sampling Redis through `conn`, and flushing `ledger` into [`STORED_BYTES`].
    pub fn start(
        settings: StorageSettings,
        conn: SharedConnection,
        ledger: Arc<StorageLedger>,
    ) -> Arc<Self> {
        let pressure = Arc::new(Self {
            settings,
            state: RwLock::new(Snapshot::off(NOT_SAMPLED)),
            conn: Some(conn.clone()),
            ledger: Some(ledger.clone()),
        });
        let weak = Arc::downgrade(&pressure);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(settings.sample_ms));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut recounted: HashMap<String, Instant> = HashMap::new();
            loop {
                every.tick().await;
                let Some(pressure) = weak.upgrade() else {
                    return;
                };
                flush(&conn, &ledger).await;
                let previous = pressure.snapshot().level;
                match sample(&conn, &settings, previous, &mut recounted).await {
                    Ok(snapshot) => pressure.publish(snapshot),
                    Err(err) => {
                        // The last sample stays: a Redis that does not answer refuses writes
                        // by itself, and comes back to the level it had. Never sampled (INFO
                        // refused, say), status tells why no policy applies.
                        tracing::debug!(error = %err, "could not sample Redis's memory");
                        pressure.unsampled(&err);
                    }
                }
            }
        });
        pressure
    }

    fn publish(&self, snapshot: Snapshot) {
        metrics::gauge!("openclaw_storage_used_bytes").set(snapshot.used_bytes as f64);
        metrics::gauge!("openclaw_storage_max_bytes").set(snapshot.max_bytes as f64);
        metrics::gauge!("openclaw_storage_pressure_level").set(snapshot.level.gauge());
        let before = self.snapshot().level;
        if before != snapshot.level {
            let (level, used, max, heavy) = (
                snapshot.level.as_str(),
                snapshot.used_bytes,
                snapshot.max_bytes,
                snapshot.heavy.len(),
            );
            if snapshot.level > Level::Normal {
                tracing::warn!(level, used, max, heavy, "storage pressure: refusing growth");
            } else {
                tracing::info!(level, used, max, "storage pressure: no growth refused");
            }
        }
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = snapshot;
    }

    /// A sample failed: while none has succeeded, the reason is what status shows.
    fn unsampled(&self, err: &redis::RedisError) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        if state.level != Level::Off || state.max_bytes != 0 || state.used_bytes != 0 {
            return;
        }
        let detail = format!(
            "Redis's memory could not be sampled (INFO memory: {err}): no storage-pressure policy applies until it can be"
        );
        if state.detail == NOT_SAMPLED {
            tracing::warn!(error = %err, "could not sample Redis's memory; the storage-pressure policy waits for it");
        }
        state.detail = detail;
    }

    /// The last sample.
    pub fn snapshot(&self) -> Snapshot {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn settings(&self) -> StorageSettings {
        self.settings
    }

    /// The bytes `owner`'s sessions store, as last flushed (one round trip: for status, never
    /// on the request path). `None` without Redis.
    pub async fn stored_bytes(&self, owner: &str) -> Option<u64> {
        let mut conn = self.conn.clone()?;
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(STORED_BYTES)
            .arg(owner)
            .query_async(&mut conn)
            .await
            .ok()?;
        Some(score.unwrap_or(0.0).max(0.0) as u64)
    }

    /// Refuses new growth (a session, a message, a cron job) of `owner` when the pressure says
    /// so: above the soft threshold when it stores more than its fair share, above the hard one
    /// always. Reads memory only.
    pub fn check_growth(&self, owner: &str) -> Result<(), ApiError> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        // What this replica stored since the sample counts towards the hard threshold now.
        let grown = self.ledger.as_ref().map_or(0, |ledger| ledger.grown());
        let level = match state.level {
            Level::Off => Level::Off,
            sampled => sampled.max(Level::of(
                state.used_bytes.saturating_add(grown),
                state.max_bytes,
                &self.settings,
            )),
        };
        let refusal = match level {
            Level::Off | Level::Normal => return Ok(()),
            Level::Soft => {
                let Some(&stored) = state.heavy.get(owner) else {
                    return Ok(());
                };
                let mut err = ApiError::quota_exceeded(
                    "storage",
                    state.fair_share_bytes,
                    stored,
                    "bytes",
                    "",
                );
                err.details = format!(
                    "The gateway's storage is {}% full (Redis maxmemory {} bytes), above the soft threshold of {}%, so the keys storing the most are refused new sessions, messages and cron jobs first. This API key stores {} bytes, more than its fair share of {} bytes ({}% of maxmemory divided among the {} keys storing data). Delete sessions you no longer need (DELETE /api/v1/sessions/{{id}}) to get below it; reading and deleting keep working. The operator can raise Redis's maxmemory.",
                    state.percent(),
                    state.max_bytes,
                    self.settings.soft_percent,
                    stored,
                    state.fair_share_bytes,
                    self.settings.soft_percent,
                    state.tenants,
                );
                err
            }
            Level::Hard => {
                // The whole gateway's allowance is used up: the figures are Redis's.
                let threshold =
                    (state.max_bytes as u128 * self.settings.hard_percent as u128 / 100) as u64;
                let used = state.used_bytes.saturating_add(grown);
                let mut err = ApiError::quota_exceeded("storage", threshold, used, "bytes", "");
                err.details = format!(
                    "The gateway's storage is {}% full (Redis uses {} of its maxmemory {} bytes), above the hard threshold of {}% ({} bytes), so no API key may store more until memory is freed; what is stored stays. Delete sessions you no longer need (DELETE /api/v1/sessions/{{id}}); reading, deleting and calls that store nothing keep working. The operator can raise Redis's maxmemory.",
                    percent(used, state.max_bytes),
                    used,
                    state.max_bytes,
                    self.settings.hard_percent,
                    threshold,
                );
                err
            }
        };
        metrics::counter!("openclaw_storage_refusals_total", "level" => level.as_str())
            .increment(1);
        Err(refusal)
    }
}

/// Adds the ledger's pending deltas to [`STORED_BYTES`] in one pipeline; on failure they wait
/// for the next flush.
async fn flush(conn: &SharedConnection, ledger: &StorageLedger) {
    let deltas = ledger.take();
    if deltas.is_empty() {
        return;
    }
    let mut pipe = redis::pipe();
    for (owner, delta) in &deltas {
        pipe.cmd("ZINCRBY")
            .arg(STORED_BYTES)
            .arg(*delta)
            .arg(owner)
            .ignore();
    }
    // A key whose sessions are all gone is no tenant any more.
    pipe.cmd("ZREMRANGEBYSCORE")
        .arg(STORED_BYTES)
        .arg("-inf")
        .arg(0)
        .ignore();
    let mut conn = conn.clone();
    if let Err(err) = pipe.query_async::<()>(&mut conn).await {
        tracing::debug!(error = %err, "could not record stored bytes; retrying with the next sample");
        ledger.restore(deltas);
    }
}

/// One look at Redis: the fullest primary's memory and, above the soft threshold, who stores
/// the most.
async fn sample(
    conn: &SharedConnection,
    settings: &StorageSettings,
    previous: Level,
    recounted: &mut HashMap<String, Instant>,
) -> redis::RedisResult<Snapshot> {
    let mut conn = conn.clone();
    let info: Value = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await?;
    let mut texts = Vec::new();
    info_texts(&info, &mut texts);
    let nodes: Vec<(u64, u64)> = texts.iter().filter_map(|t| memory_of(t)).collect();
    if nodes.is_empty() {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Parse,
            "INFO memory answered without used_memory",
        )));
    }
    if nodes.iter().all(|(_, max)| *max == 0) {
        let used = nodes.iter().map(|(used, _)| used).sum();
        let mut snapshot = Snapshot::off(
            "Redis has no maxmemory set: no storage-pressure policy applies (set maxmemory with maxmemory-policy noeviction)",
        );
        snapshot.used_bytes = used;
        return Ok(snapshot);
    }
    // The fullest primary decides: a write whose slot lives there fails first.
    let (used, max) = nodes
        .into_iter()
        .filter(|(_, max)| *max > 0)
        .max_by(|a, b| (a.0 as u128 * b.1 as u128).cmp(&(b.0 as u128 * a.1 as u128)))
        .unwrap_or((0, 0));
    let level = Level::sampled(used, max, settings, previous);
    let mut snapshot = Snapshot {
        level,
        used_bytes: used,
        max_bytes: max,
        tenants: 0,
        fair_share_bytes: 0,
        heavy: HashMap::new(),
        detail: String::new(),
    };
    if level >= Level::Soft {
        let tenants: u64 = redis::cmd("ZCARD")
            .arg(STORED_BYTES)
            .query_async(&mut conn)
            .await?;
        let share = fair_share(max, settings.soft_percent, tenants);
        let heavy: Vec<(String, f64)> = redis::cmd("ZREVRANGEBYSCORE")
            .arg(STORED_BYTES)
            .arg("+inf")
            .arg(format!("({share}"))
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(MAX_HEAVY)
            .query_async(&mut conn)
            .await?;
        snapshot.tenants = tenants;
        snapshot.fair_share_bytes = share;
        snapshot.heavy = heavy
            .into_iter()
            .map(|(owner, bytes)| (owner, bytes.max(0.0) as u64))
            .collect();
        // The heaviest keys not checked lately: their counts are what refuses them.
        recounted.retain(|_, at| at.elapsed() < RECOUNT_EVERY);
        let mut due: Vec<(String, u64)> = snapshot
            .heavy
            .iter()
            .filter(|(owner, _)| !recounted.contains_key(*owner))
            .map(|(owner, bytes)| (owner.clone(), *bytes))
            .collect();
        due.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
        for (owner, counted) in due.into_iter().take(RECOUNTS_PER_SAMPLE) {
            recounted.insert(owner.clone(), Instant::now());
            let actual = match recount(&conn, &owner).await {
                Ok(actual) => actual,
                Err(err) => {
                    tracing::debug!(error = %err, owner = %owner, "could not recount a key's stored bytes");
                    continue;
                }
            };
            if actual.abs_diff(counted) > counted / 10 {
                tracing::info!(owner = %owner, counted, actual, "corrected a key's count of stored bytes");
            }
            if actual > share {
                snapshot.heavy.insert(owner, actual);
            } else {
                snapshot.heavy.remove(&owner);
            }
        }
    }
    Ok(snapshot)
}

/// Measures what `owner`'s sessions hold in Redis now (`MEMORY USAGE` of each session's message
/// list, the newest [`RECOUNT_MAX_SESSIONS`]) and replaces its count in [`STORED_BYTES`] with it.
/// Deltas other cores have not flushed yet are added on top later: the count may run ahead by
/// about a second of growth, never behind by what expired.
async fn recount(conn: &SharedConnection, owner: &str) -> redis::RedisResult<u64> {
    let mut c = conn.clone();
    let ids: Vec<String> = redis::cmd("ZREVRANGE")
        .arg(super::redis::owner_index(owner))
        .arg(0)
        .arg(RECOUNT_MAX_SESSIONS - 1)
        .query_async(&mut c)
        .await?;
    let mut total: u64 = 0;
    // Each session lives in its own slot: one command each, a batch at a time.
    for batch in ids.chunks(64) {
        let sizes = futures::future::try_join_all(batch.iter().map(|id| {
            let mut c = conn.clone();
            let key = format!("{}:msgs", super::redis::session_base(owner, id));
            async move {
                redis::cmd("MEMORY")
                    .arg("USAGE")
                    .arg(key)
                    .arg("SAMPLES")
                    .arg(0)
                    .query_async::<Option<u64>>(&mut c)
                    .await
            }
        }))
        .await?;
        total += sizes.into_iter().flatten().sum::<u64>();
    }
    if total == 0 {
        redis::cmd("ZREM")
            .arg(STORED_BYTES)
            .arg(owner)
            .query_async::<()>(&mut c)
            .await?;
    } else {
        redis::cmd("ZADD")
            .arg(STORED_BYTES)
            .arg(total)
            .arg(owner)
            .query_async::<()>(&mut c)
            .await?;
    }
    Ok(total)
}

/// The soft threshold's memory divided evenly among the keys storing data.
fn fair_share(max: u64, soft_percent: u8, tenants: u64) -> u64 {
    (max as u128 * soft_percent as u128 / 100 / tenants.max(1) as u128) as u64
}

/// Every text in an `INFO` answer: one for a single node, one per primary on a cluster.
fn info_texts(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::BulkString(bytes) => out.push(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) => out.push(text.clone()),
        Value::VerbatimString { text, .. } => out.push(text.clone()),
        Value::Array(items) | Value::Set(items) => {
            for item in items {
                info_texts(item, out);
            }
        }
        Value::Map(pairs) => {
            for (_, item) in pairs {
                info_texts(item, out);
            }
        }
        _ => {}
    }
}

/// `used_memory` and `maxmemory` from one node's `INFO memory`.
fn memory_of(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            line.trim()
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(':'))
                .and_then(|value| value.trim().parse::<u64>().ok())
        })
    };
    Some((field("used_memory")?, field("maxmemory").unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> StorageSettings {
        StorageSettings::default()
    }

    #[test]
    fn a_threshold_is_left_only_well_below_it() {
        let s = settings();
        // Up: at once.
        assert_eq!(Level::sampled(80, 100, &s, Level::Normal), Level::Soft);
        assert_eq!(Level::sampled(90, 100, &s, Level::Soft), Level::Hard);
        // Down: only 5 points below the threshold.
        assert_eq!(Level::sampled(79, 100, &s, Level::Soft), Level::Soft);
        assert_eq!(Level::sampled(75, 100, &s, Level::Soft), Level::Soft);
        assert_eq!(Level::sampled(74, 100, &s, Level::Soft), Level::Normal);
        assert_eq!(Level::sampled(86, 100, &s, Level::Hard), Level::Hard);
        assert_eq!(Level::sampled(84, 100, &s, Level::Hard), Level::Soft);
        assert_eq!(Level::sampled(10, 100, &s, Level::Hard), Level::Normal);
        assert_eq!(Level::sampled(95, 0, &s, Level::Hard), Level::Off);
    }

    #[test]
    fn levels_follow_the_thresholds_and_no_maxmemory_is_off() {
        let s = settings();
        assert_eq!(Level::of(100, 0, &s), Level::Off);
        assert_eq!(Level::of(79, 100, &s), Level::Normal);
        assert_eq!(Level::of(80, 100, &s), Level::Soft);
        assert_eq!(Level::of(89, 100, &s), Level::Soft);
        assert_eq!(Level::of(90, 100, &s), Level::Hard);
        assert_eq!(Level::of(120, 100, &s), Level::Hard);
    }

    #[test]
    fn info_memory_is_read_from_each_node() {
        let node = "# Memory\r\nused_memory:1234\r\nused_memory_human:1.2K\r\nmaxmemory:5000\r\nmaxmemory_human:4.9K\r\n";
        assert_eq!(memory_of(node), Some((1234, 5000)));
        assert_eq!(memory_of("# Memory\r\nused_memory:7\r\n"), Some((7, 0)));
        let cluster = Value::Map(vec![
            (
                Value::SimpleString("a:1".into()),
                Value::BulkString(node.as_bytes().to_vec()),
            ),
            (
                Value::SimpleString("b:2".into()),
                Value::VerbatimString {
                    format: redis::VerbatimFormat::Text,
                    text: "used_memory:4900\r\nmaxmemory:5000\r\n".into(),
                },
            ),
        ]);
        let mut texts = Vec::new();
        info_texts(&cluster, &mut texts);
        let nodes: Vec<_> = texts.iter().filter_map(|t| memory_of(t)).collect();
        assert_eq!(nodes, [(1234, 5000), (4900, 5000)]);
    }

    fn pressure(level: Level, heavy: &[(&str, u64)]) -> StoragePressure {
        StoragePressure {
            settings: settings(),
            state: RwLock::new(Snapshot {
                level,
                used_bytes: 85,
                max_bytes: 100,
                tenants: 4,
                fair_share_bytes: fair_share(100, 80, 4),
                heavy: heavy.iter().map(|(k, b)| (k.to_string(), *b)).collect(),
                detail: String::new(),
            }),
            conn: None,
            ledger: None,
        }
    }

    #[test]
    fn soft_pressure_refuses_only_the_keys_over_their_fair_share() {
        let p = pressure(Level::Soft, &[("heavy", 60)]);
        assert!(p.check_growth("light").is_ok());
        let err = p.check_growth("heavy").unwrap_err();
        assert_eq!(err.code, crate::error::ErrorCode::QuotaExceeded);
        let breach = err.quota.clone().unwrap();
        assert_eq!(
            (breach.quota, breach.limit, breach.used),
            ("storage", 20, 60)
        );
        assert!(
            err.details.contains("soft threshold of 80%"),
            "{}",
            err.details
        );
        assert!(err.details.contains("Delete sessions"), "{}", err.details);
    }

    #[test]
    fn hard_pressure_refuses_everyone_and_normal_refuses_no_one() {
        let p = pressure(Level::Hard, &[("heavy", 60)]);
        let err = p.check_growth("light").unwrap_err();
        let breach = err.quota.clone().unwrap();
        assert_eq!((breach.limit, breach.used), (90, 85));
        assert!(
            err.details.contains("hard threshold of 90%"),
            "{}",
            err.details
        );
        assert!(p.check_growth("heavy").is_err());
        let p = pressure(Level::Normal, &[("heavy", 60)]);
        p.state.write().unwrap().used_bytes = 50;
        assert!(p.check_growth("heavy").is_ok());
        assert!(StoragePressure::off("embedded").check_growth("x").is_ok());
    }

    #[test]
    fn what_was_stored_since_the_sample_meets_the_hard_threshold_at_once() {
        let mut p = pressure(Level::Normal, &[]);
        p.state.write().unwrap().used_bytes = 70;
        let ledger = Arc::new(StorageLedger::default());
        p.ledger = Some(ledger.clone());
        assert!(p.check_growth("light").is_ok());
        ledger.add("light", 25);
        let err = p.check_growth("light").unwrap_err();
        assert!(err.details.contains("hard threshold"), "{}", err.details);
    }

    #[test]
    fn thresholds_must_leave_headroom() {
        assert!(settings().validate().is_ok());
        let bad = StorageSettings {
            soft_percent: 90,
            hard_percent: 90,
            sample_ms: 1000,
        };
        assert!(bad.validate().is_err());
        let bad = StorageSettings {
            hard_percent: 100,
            ..settings()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn the_ledger_sums_and_keeps_what_it_could_not_flush() {
        let ledger = StorageLedger::default();
        ledger.add("a", 10);
        ledger.add("a", -3);
        ledger.add("b", 0);
        assert_eq!(ledger.grown(), 10);
        let taken = ledger.take();
        assert_eq!(ledger.grown(), 0);
        assert_eq!(taken.get("a"), Some(&7));
        assert!(!taken.contains_key("b"));
        ledger.add("a", 1);
        ledger.restore(taken);
        assert_eq!(ledger.take().get("a"), Some(&8));
    }
}
