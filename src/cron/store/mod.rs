//! Where jobs, their due times and their runs live: [`RedisCronStore`] for
//! scaled deployments, [`EmbeddedCronStore`] (tables in the redb file) for the
//! single-process default. Both keep the same rules:
//!
//! - A job's next due time is in a due index scored by time, so a tick reads
//!   only what is due (no scan of idle jobs).
//! - [`CronStore::claim`] is one atomic step: it checks that the job's next
//!   due time (and version) is still the one the caller read, advances it,
//!   writes the run record (`running`, with a lease) and the skipped records
//!   the caller computed, and says whether the caller owns the run. A
//!   `(job, scheduled time)` pair is the run's id, so no interleaving of
//!   replicas produces a second run of one due time.
//! - The store's clock decides due-ness (Redis `TIME`), never a replica's.

mod embedded;
mod redis;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use self::embedded::EmbeddedCronStore;
pub use self::redis::RedisCronStore;
use super::payload::Payload;
use super::schedule::Schedule;
use crate::events::Event;
use crate::store::{Page, StoreResult};

/// A job's definition, as created and updated through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobDefinition {
    pub id: String,
    /// The id of the key that created it (`internal` for the internal token).
    pub owner: String,
    pub name: String,
    pub schedule: Schedule,
    pub payload: Payload,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// What runs have left on a job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobState {
    pub last_run_at_ms: Option<i64>,
    pub last_status: Option<String>,
    pub last_error: Option<String>,
    pub last_duration_ms: Option<i64>,
    pub consecutive_errors: u32,
    /// The scheduled time of the run in progress.
    pub running: Option<i64>,
}

/// A job as read: definition, switch, next due time and state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    pub def: JobDefinition,
    pub enabled: bool,
    pub next_ms: Option<i64>,
    pub state: JobState,
    /// Bumped by every change of the definition or switch; claims check it.
    pub version: u64,
}

pub const STATUS_RUNNING: &str = "running";
pub const STATUS_OK: &str = "ok";
pub const STATUS_ERROR: &str = "error";
pub const STATUS_SKIPPED: &str = "skipped";

pub const TRIGGER_SCHEDULE: &str = "schedule";
pub const TRIGGER_MANUAL: &str = "manual";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunUsage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// One run: one due time of a job (or one "run now").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    pub job_id: String,
    pub scheduled_ms: i64,
    pub status: String,
    pub trigger: String,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub duration_ms: Option<i64>,
    pub error: Option<String>,
    pub usage: Option<RunUsage>,
    pub session_id: Option<String>,
    pub replica: String,
    /// Who holds the run while it is `running`, and until when.
    pub token: String,
    pub lease_until_ms: i64,
    pub attempt: u32,
}

impl RunRecord {
    /// The run's id and idempotency key.
    pub fn id(&self) -> String {
        run_id(&self.job_id, self.scheduled_ms)
    }
}

pub fn run_id(job_id: &str, scheduled_ms: i64) -> String {
    format!("{job_id}:{scheduled_ms}")
}

/// One claim attempt, planned by the scheduler from a job it read.
#[derive(Debug, Clone)]
pub struct Claim {
    pub job_id: String,
    /// The job's next due time as read; `None` for a manual run.
    pub expect_next_ms: Option<i64>,
    pub expect_version: u64,
    /// The due time to run; `None` when every due time covered is skipped.
    pub run_ms: Option<i64>,
    /// Due times recorded as `skipped`, with the reason.
    pub skipped: Vec<(i64, String)>,
    /// The job's next due time once this claim is made (scheduled claims).
    pub next_ms: Option<i64>,
    /// A one-shot job: disabled once claimed.
    pub disable: bool,
    /// Why `run_ms` is skipped if a run of the job is still going.
    pub overlap_reason: String,
    pub token: String,
    pub replica: String,
    pub lease_ms: i64,
    pub trigger: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The caller owns the run of `run_ms`, started at `now_ms` (store clock).
    Claimed { now_ms: i64 },
    /// The due times were recorded (skipped) and the job advanced; nothing to run.
    Recorded,
    /// Another replica claimed first, or the job changed: read again.
    Stale,
    /// The due time is not yet reached by the store's clock.
    Early,
    /// A manual run while another run is going.
    Busy,
    /// The job no longer exists.
    Gone,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Finish {
    pub job_id: String,
    pub owner: String,
    pub scheduled_ms: i64,
    pub token: String,
    pub status: &'static str,
    pub error: Option<String>,
    pub started_ms: i64,
    pub duration_ms: i64,
    pub usage: Option<RunUsage>,
    pub session_id: Option<String>,
    /// A one-shot job that asked to be deleted after a successful run.
    pub delete_job: bool,
    /// Published with the completion, atomically: a systemEvent's event, a
    /// failure notice.
    pub events: Vec<Event>,
}

/// What one scheduler tick reads, at the store's clock.
#[derive(Debug, Clone, Default)]
pub struct DueBatch {
    pub now_ms: i64,
    /// `(job id, due ms)`, earliest first.
    pub due: Vec<(String, i64)>,
    /// The earliest due time after `now_ms`.
    pub next_ms: Option<i64>,
    /// Runs whose holder's lease ran out: `(job id, scheduled ms)`.
    pub expired: Vec<(String, i64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateOutcome {
    Updated,
    /// The job changed since it was read: read again.
    Conflict,
    Gone,
}

#[async_trait]
pub trait CronStore: Send + Sync + 'static {
    /// The store's clock, in Unix milliseconds.
    async fn now_ms(&self) -> StoreResult<i64>;

    /// Stores a new job unless its owner already has `max_jobs` (the `maxCronJobs` quota,
    /// counted in the same atomic step as the insert, so two replicas cannot both take the
    /// last slot): then nothing is written and the owner's job count is returned.
    async fn insert_job(&self, job: &JobRecord, max_jobs: u64) -> StoreResult<Option<u64>>;
    /// How many jobs the owner has (what its `maxCronJobs` quota counts).
    async fn job_count(&self, owner: &str) -> StoreResult<u64>;
    async fn job(&self, id: &str) -> StoreResult<Option<JobRecord>>;
    /// The owner's jobs, oldest first.
    async fn list_jobs(&self, owner: &str) -> StoreResult<Vec<JobRecord>>;
    /// Replaces definition, switch and next due time if the stored version is
    /// `job.version`; the stored version becomes `job.version + 1`.
    /// `reset_errors` clears the consecutive-error count (a new schedule).
    async fn update_job(&self, job: &JobRecord, reset_errors: bool) -> StoreResult<UpdateOutcome>;
    /// Deletes the job and its runs. False when there was none.
    async fn delete_job(&self, owner: &str, id: &str) -> StoreResult<bool>;

    /// Due jobs (at most `limit`), the next due time, and expired leases.
    async fn due(&self, limit: usize) -> StoreResult<DueBatch>;
    /// Drops a due entry whose job is gone.
    async fn forget_due(&self, id: &str) -> StoreResult<()>;
    async fn claim(&self, claim: &Claim) -> StoreResult<ClaimOutcome>;
    /// Extends the lease of a run the caller holds. False when it lost it.
    async fn renew(
        &self,
        job_id: &str,
        scheduled_ms: i64,
        token: &str,
        lease_ms: i64,
    ) -> StoreResult<bool>;
    /// Records the outcome of a run the caller holds, and publishes its
    /// events, atomically. False (and nothing written) when it lost the run.
    async fn finish(&self, finish: &Finish) -> StoreResult<bool>;
    /// Takes over a run whose lease expired. `None` when it is not (any more)
    /// a running run with an expired lease.
    async fn take_over(
        &self,
        job_id: &str,
        scheduled_ms: i64,
        token: &str,
        replica: &str,
        lease_ms: i64,
    ) -> StoreResult<Option<RunRecord>>;
    /// Moves the job's next due time from `expect_next_ms` to `next_ms` and
    /// records the due times in between as skipped (error backoff). False when
    /// the job moved on meanwhile.
    async fn postpone(
        &self,
        job_id: &str,
        expect_next_ms: i64,
        next_ms: i64,
        skipped: &[(i64, String)],
    ) -> StoreResult<bool>;
    /// The job's runs, newest first.
    async fn list_runs(
        &self,
        job_id: &str,
        offset: u64,
        limit: u32,
    ) -> StoreResult<Page<RunRecord>>;
}

/// How many runs a job's history keeps.
pub const RUN_HISTORY: usize = 1000;
