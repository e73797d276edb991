//! `CronService`: scheduled jobs in the OpenClaw cron model (`every`, `at`,
//! `cron` schedules; `systemEvent` and `agentTurn` payloads), owned by the key
//! that created them, each due time fired exactly once across every replica.
//!
//! - [`schedule`]: validation and due-time arithmetic (croner + chrono-tz).
//! - [`payload`]: what a run does.
//! - [`store`]: the `CronStore` trait, on Redis and in the embedded file.
//! - [`scheduler`]: each replica's claim loop, and the policies.

pub(crate) mod payload;
pub mod schedule;
pub(crate) mod scheduler;
pub(crate) mod store;

use std::sync::Arc;
use std::time::Duration;

use prost_types::Timestamp;
use rand::Rng as _;
use rand::distr::Alphanumeric;
use tonic::{Request, Response, Status};

use self::payload::Payload;
use self::schedule::Schedule;
use self::scheduler::{CronScheduler, Ticket};
use self::store::{
    Claim, ClaimOutcome, CronStore, JobDefinition, JobRecord, RunRecord, STATUS_RUNNING,
    TRIGGER_MANUAL, UpdateOutcome,
};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::front_door::{FrontDoor, Scope};
use crate::metadata::respond;
use crate::proto::cron_service_server::CronService;
use crate::proto::{self};
use crate::providers::ModelCatalog;

const CRON: Scope = Scope::Named("cron");
const MAX_NAME_CHARS: usize = 100;
const MAX_JOB_ID_LEN: usize = 64;

/// Settings of the scheduler and the event stream.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct CronSettings {
    /// How late a due time may still run when the scheduler gets to it (after
    /// downtime), in milliseconds; older missed due times are recorded as skipped.
    #[arg(
        long = "cron-catch-up-window-ms",
        env = "OPENCLAW_CRON_CATCH_UP_WINDOW_MS",
        default_value_t = 3_600_000
    )]
    pub catch_up_window_ms: u64,

    /// The longest one run may take, in milliseconds; a longer run is stopped and recorded as an error.
    #[arg(
        long = "cron-run-timeout-ms",
        env = "OPENCLAW_CRON_RUN_TIMEOUT_MS",
        default_value_t = 600_000
    )]
    pub run_timeout_ms: u64,

    /// How long a replica's hold on a run lasts without renewal, in milliseconds:
    /// a run of a replica that died is taken over by another this long after.
    #[arg(
        long = "cron-lease-ms",
        env = "OPENCLAW_CRON_LEASE_MS",
        default_value_t = 15_000
    )]
    pub lease_ms: u64,

    /// Runs one replica executes at once; due jobs beyond it are left to other replicas.
    #[arg(
        long = "cron-max-concurrent-runs",
        env = "OPENCLAW_CRON_MAX_CONCURRENT_RUNS",
        default_value_t = 64
    )]
    pub max_concurrent_runs: u32,

    /// About how many system events the event stream keeps for subscribers to resume from.
    #[arg(
        long = "events-max-len",
        env = "OPENCLAW_EVENTS_MAX_LEN",
        default_value_t = 10_000
    )]
    pub events_max_len: u64,

    /// How long a session that an agentTurn job without a named session starts for a run is
    /// kept after its last turn, in seconds (7 days; the owner's shorter session idle time to
    /// live wins); `0` keeps it as long as the owner's other sessions.
    #[arg(
        long = "cron-session-retention-secs",
        env = "OPENCLAW_CRON_SESSION_RETENTION_SECS",
        default_value_t = 7 * 24 * 3600
    )]
    pub session_retention_secs: u64,
}

impl Default for CronSettings {
    fn default() -> Self {
        Self {
            catch_up_window_ms: 3_600_000,
            run_timeout_ms: 600_000,
            lease_ms: 15_000,
            max_concurrent_runs: 64,
            events_max_len: 10_000,
            session_retention_secs: 7 * 24 * 3600,
        }
    }
}

impl CronSettings {
    pub fn run_timeout(&self) -> Duration {
        Duration::from_millis(self.run_timeout_ms.max(1))
    }
}

/// What cron's service and scheduler share: the store, the settings, and the name of this
/// replica (recorded with the runs it claims).
pub(crate) struct CronContext {
    pub(crate) store: Arc<dyn CronStore>,
    pub(crate) settings: CronSettings,
    pub(crate) replica: String,
}

fn new_job_id() -> String {
    let random: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(16)
        .map(char::from)
        .collect();
    format!("job_{random}")
}

fn timestamp(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn validate_name(name: &str) -> ApiResult<String> {
    let name = name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::invalid_field(
            "name",
            "Invalid job name",
            format!("The field 'name' is required: 1-{MAX_NAME_CHARS} printable characters"),
        ));
    }
    Ok(name.to_string())
}

fn plausible_job_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_JOB_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub(crate) fn job_to_proto(job: &JobRecord) -> proto::Job {
    let state = &job.state;
    proto::Job {
        id: job.def.id.clone(),
        name: job.def.name.clone(),
        enabled: job.enabled,
        schedule: Some(job.def.schedule.to_proto()),
        payload: Some(job.def.payload.to_proto()),
        next_run: job.enabled.then_some(job.next_ms).flatten().map(timestamp),
        state: Some(proto::JobState {
            last_run_at: state.last_run_at_ms.map(timestamp),
            last_status: state.last_status.clone().unwrap_or_default(),
            last_error: state.last_error.clone().unwrap_or_default(),
            last_duration_ms: state.last_duration_ms,
            consecutive_errors: state.consecutive_errors,
            running: state.running.is_some(),
        }),
        created_at: Some(timestamp(job.def.created_at_ms)),
        updated_at: Some(timestamp(job.def.updated_at_ms)),
    }
}

pub(crate) fn run_to_proto(run: &RunRecord) -> proto::Run {
    proto::Run {
        id: run.id(),
        job_id: run.job_id.clone(),
        scheduled_at: Some(timestamp(run.scheduled_ms)),
        started_at: run.started_ms.map(timestamp),
        finished_at: run.finished_ms.map(timestamp),
        status: run.status.clone(),
        error: run.error.clone().unwrap_or_default(),
        duration_ms: run.duration_ms,
        usage: run.usage.map(|u| proto::RunUsage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens.saturating_add(u.completion_tokens),
        }),
        session_id: run.session_id.clone().unwrap_or_default(),
        trigger: run.trigger.clone(),
        replica: run.replica.clone(),
    }
}

pub(crate) struct Crons {
    door: Arc<FrontDoor>,
    /// An agentTurn payload names a model of the catalogue.
    models: Arc<ModelCatalog>,
    cron: Arc<CronContext>,
    scheduler: Arc<CronScheduler>,
}

impl Crons {
    pub(crate) fn new(
        door: Arc<FrontDoor>,
        models: Arc<ModelCatalog>,
        cron: Arc<CronContext>,
        scheduler: Arc<CronScheduler>,
    ) -> Self {
        Self {
            door,
            models,
            cron,
            scheduler,
        }
    }

    fn store(&self) -> &Arc<dyn CronStore> {
        &self.cron.store
    }

    fn settings(&self) -> &CronSettings {
        &self.cron.settings
    }

    /// The owner's job, or NOT_FOUND (also for another key's job).
    async fn owned(&self, owner: &str, id: &str) -> ApiResult<JobRecord> {
        if !plausible_job_id(id) {
            return Err(ApiError::not_found("Job", id));
        }
        match self.store().job(id).await? {
            Some(job) if job.def.owner == owner => Ok(job),
            _ => Err(ApiError::not_found("Job", id)),
        }
    }

    fn oldest_at(&self, now_ms: i64) -> i64 {
        now_ms - self.settings().catch_up_window_ms as i64
    }
}

#[tonic::async_trait]
impl CronService for Crons {
    async fn create_job(
        &self,
        request: Request<proto::CreateJobRequest>,
    ) -> Result<Response<proto::Job>, Status> {
        let (principal, admission) = self.door.enter(&request, CRON).await?;
        let body = request.into_inner();
        let name = validate_name(&body.name)?;
        let now = self.store().now_ms().await.map_err(ApiError::from)?;
        let schedule = Schedule::from_request(body.schedule.as_ref(), now, self.oldest_at(now))?;
        let payload = Payload::from_request(body.payload.as_ref(), &self.models)?;
        // A new job is growth: refused while Redis is short of memory.
        self.door.check_growth(&principal)?;
        let quotas = self.door.quotas(&principal);
        crate::quotas::check_payload(&quotas, &payload)?;
        let enabled = body.enabled.unwrap_or(true);
        let job = JobRecord {
            def: JobDefinition {
                id: new_job_id(),
                owner: principal.owner_id().to_string(),
                name,
                payload,
                created_at_ms: now,
                updated_at_ms: now,
                schedule: schedule.clone(),
            },
            enabled,
            next_ms: if enabled {
                schedule.first_due(now)
            } else {
                None
            },
            state: Default::default(),
            version: 1,
        };
        if let Some(used) = self
            .store()
            .insert_job(&job, quotas.max_cron_jobs)
            .await
            .map_err(ApiError::from)?
        {
            return Err(crate::quotas::cron_refusal(quotas.max_cron_jobs, used).into());
        }
        self.scheduler.wake();
        tracing::info!(job = %job.def.id, owner = %job.def.owner, "cron job created");
        Ok(respond(job_to_proto(&job), &admission))
    }

    async fn list_jobs(
        &self,
        request: Request<proto::ListJobsRequest>,
    ) -> Result<Response<proto::ListJobsResponse>, Status> {
        let (principal, admission) = self.door.enter(&request, CRON).await?;
        let jobs = self
            .store()
            .list_jobs(principal.owner_id())
            .await
            .map_err(ApiError::from)?;
        Ok(respond(
            proto::ListJobsResponse {
                jobs: jobs.iter().map(job_to_proto).collect(),
            },
            &admission,
        ))
    }

    async fn get_job(
        &self,
        request: Request<proto::GetJobRequest>,
    ) -> Result<Response<proto::Job>, Status> {
        let (principal, admission) = self.door.enter(&request, CRON).await?;
        let job = self
            .owned(principal.owner_id(), &request.get_ref().job_id)
            .await?;
        Ok(respond(job_to_proto(&job), &admission))
    }

    async fn update_job(
        &self,
        request: Request<proto::UpdateJobRequest>,
    ) -> Result<Response<proto::Job>, Status> {
        let (principal, admission) = self.door.enter(&request, CRON).await?;
        let body = request.into_inner();
        let name = body.name.as_deref().map(validate_name).transpose()?;
        let payload = body
            .payload
            .as_ref()
            .map(|p| Payload::from_request(Some(p), &self.models))
            .transpose()?;
        if let Some(payload) = &payload {
            crate::quotas::check_payload(&self.door.quotas(&principal), payload)?;
        }
        // Optimistic: read, change, write if nobody (a claim, another update) changed it meanwhile.
        for _ in 0..5 {
            let mut job = self.owned(principal.owner_id(), &body.job_id).await?;
            let now = self.store().now_ms().await.map_err(ApiError::from)?;
            let schedule = body
                .schedule
                .as_ref()
                .map(|s| Schedule::from_request(Some(s), now, self.oldest_at(now)))
                .transpose()?;
            let was_enabled = job.enabled;
            if let Some(name) = &name {
                job.def.name = name.clone();
            }
            if let Some(payload) = &payload {
                job.def.payload = payload.clone();
            }
            if let Some(enabled) = body.enabled {
                job.enabled = enabled;
            }
            let reschedule = schedule.is_some() || (job.enabled && !was_enabled);
            if let Some(schedule) = &schedule {
                job.def.schedule = schedule.clone();
            }
            if !job.enabled {
                job.next_ms = None;
            } else if reschedule {
                if let Schedule::At { at_ms, .. } = job.def.schedule
                    && at_ms < self.oldest_at(now)
                {
                    return Err(ApiError::invalid_field(
                        "schedule.at",
                        "Time in the past",
                        "This one-shot job's time has passed; enable it with a new schedule.at",
                    )
                    .into());
                }
                job.next_ms = job.def.schedule.first_due(now);
            }
            job.def.updated_at_ms = now;
            match self
                .store()
                .update_job(&job, schedule.is_some())
                .await
                .map_err(ApiError::from)?
            {
                UpdateOutcome::Updated => {
                    self.scheduler.wake();
                    let job = self.owned(principal.owner_id(), &body.job_id).await?;
                    return Ok(respond(job_to_proto(&job), &admission));
                }
                UpdateOutcome::Conflict => continue,
                UpdateOutcome::Gone => return Err(ApiError::not_found("Job", &body.job_id).into()),
            }
        }
        Err(ApiError::new(
            ErrorCode::Conflict,
            "Job busy",
            "The job kept changing while it was being updated (it fires very often); retry",
        )
        .into())
    }

    async fn delete_job(
        &self,
        request: Request<proto::DeleteJobRequest>,
    ) -> Result<Response<proto::DeleteJobResponse>, Status> {
        let (principal, admission) = self.door.enter(&request, CRON).await?;
        let id = &request.get_ref().job_id;
        let job = self.owned(principal.owner_id(), id).await?;
        if !self
            .store()
            .delete_job(&job.def.owner, id)
            .await
            .map_err(ApiError::from)?
        {
            return Err(ApiError::not_found("Job", id).into());
        }
        tracing::info!(job = %id, "cron job deleted");
        Ok(respond(proto::DeleteJobResponse {}, &admission))
    }

    async fn run_job(
        &self,
        request: Request<proto::RunJobRequest>,
    ) -> Result<Response<proto::Run>, Status> {
        let (principal, admission) = self.door.enter(&request, CRON).await?;
        let job = self
            .owned(principal.owner_id(), &request.get_ref().job_id)
            .await?;
        let Some(permit) = self.scheduler.try_permit() else {
            return Err(ApiError::unavailable(
                "This replica is running as many jobs as it may (or is draining); retry in a few seconds",
            )
            .with_retry_after(Duration::from_secs(2))
            .into());
        };
        let now = self.store().now_ms().await.map_err(ApiError::from)?;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let claim = Claim {
            job_id: job.def.id.clone(),
            expect_next_ms: None,
            expect_version: job.version,
            run_ms: Some(now),
            skipped: Vec::new(),
            next_ms: None,
            disable: false,
            overlap_reason: String::new(),
            token: token.clone(),
            replica: self.cron.replica.clone(),
            lease_ms: self.settings().lease_ms as i64,
            trigger: TRIGGER_MANUAL,
        };
        match self.store().claim(&claim).await.map_err(ApiError::from)? {
            ClaimOutcome::Claimed { now_ms } => {
                let run = RunRecord {
                    job_id: job.def.id.clone(),
                    scheduled_ms: now,
                    status: STATUS_RUNNING.into(),
                    trigger: TRIGGER_MANUAL.into(),
                    started_ms: Some(now_ms),
                    replica: self.cron.replica.clone(),
                    ..Default::default()
                };
                let ticket = Ticket {
                    scheduled_ms: now,
                    token,
                    started_ms: now_ms,
                };
                self.scheduler.spawn_run(job, ticket, permit);
                Ok(respond(run_to_proto(&run), &admission))
            }
            ClaimOutcome::Busy => Err(ApiError::new(
                ErrorCode::Conflict,
                "Job running",
                "A run of this job is still going; wait for it to finish (see its runs) and retry",
            )
            .into()),
            ClaimOutcome::Gone => Err(ApiError::not_found("Job", &job.def.id).into()),
            _ => Err(ApiError::new(
                ErrorCode::Conflict,
                "Job changed",
                "The job changed while the run was being started; retry",
            )
            .into()),
        }
    }

    async fn list_runs(
        &self,
        request: Request<proto::ListRunsRequest>,
    ) -> Result<Response<proto::ListRunsResponse>, Status> {
        let (principal, admission) = self.door.enter(&request, CRON).await?;
        let body = request.get_ref();
        let job = self.owned(principal.owner_id(), &body.job_id).await?;
        let offset = if body.page_token.is_empty() {
            0
        } else {
            body.page_token.parse::<u64>().map_err(|_| {
                ApiError::invalid_field(
                    "pageToken",
                    "Invalid page token",
                    "The field 'pageToken' must be a nextPageToken from a previous page",
                )
            })?
        };
        let limit = match body.page_size {
            0 => 50,
            n if n <= 500 => n,
            _ => {
                return Err(ApiError::invalid_field(
                    "pageSize",
                    "Invalid page size",
                    "The field 'pageSize' must be from 1 to 500",
                )
                .into());
            }
        };
        let page = self
            .store()
            .list_runs(&job.def.id, offset, limit)
            .await
            .map_err(ApiError::from)?;
        Ok(respond(
            proto::ListRunsResponse {
                runs: page.items.iter().map(run_to_proto).collect(),
                next_page_token: page.next.map(|n| n.to_string()).unwrap_or_default(),
            },
            &admission,
        ))
    }
}
