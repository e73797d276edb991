//! `CronScheduler`: each core replica's loop that claims due runs and runs them.
//!
//! A tick asks the store (one round trip, at the store's clock) for the head of
//! the due index, the earliest future due time and the expired leases. It
//! claims what is due, sleeps until the next due time (at most
//! [`MAX_SLEEP`], since other replicas add jobs it does not hear of), and
//! takes over runs whose holder stopped renewing its lease. The cost of a tick
//! follows the number of due jobs, never the number of idle ones.
//!
//! Policies (documented in docs/cron.md):
//! - Catch-up: when a claim finds several due times already passed (downtime,
//!   or a stall), only the latest runs, if it is within the catch-up window;
//!   the others are recorded `skipped`.
//! - Overlap: a due time that comes while the job's previous run is going is
//!   recorded `skipped`.
//! - Backoff: after consecutive errors the next run waits 30 s, 1 min, 5 min,
//!   15 min, then 60 min after the failure; the due times inside are recorded
//!   `skipped`. A success resets it.
//! - Timeout: a run longer than the per-run timeout is stopped and recorded
//!   as an error.
//! - Fairness: every run is a call of its owner: its key must exist and not be revoked, or
//!   the run is recorded `skipped` and the job switched off (all payload kinds); a
//!   `systemEvent` run is admitted against the owner's request limit like any call, and an
//!   `agentTurn` against its limits and quotas. A run refused by a limit or a quota
//!   (`RATE_LIMIT_EXCEEDED`, `QUOTA_EXCEEDED`, storage pressure included) is recorded `skipped`
//!   with the reason: it is the owner's usage, not a failure, so it neither backs off nor
//!   publishes `job.failed`.
//! - Store blips: the owner's key lookup and a `systemEvent`'s admission are asked again for up
//!   to 10 s while the store does not answer, so a failover or a stall delays a run instead of
//!   failing it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use rand::seq::SliceRandom as _;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tonic_types::StatusExt as _;

use super::CronContext;
use super::payload::Payload;
use super::schedule::Schedule;
use super::store::{
    Claim, ClaimOutcome, Finish, JobRecord, RunUsage, STATUS_ERROR, STATUS_OK, STATUS_SKIPPED,
    TRIGGER_SCHEDULE, UpdateOutcome, run_id,
};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorCode};
use crate::events::{Event, JOB_FAILED, SYSTEM_EVENT};
use crate::limits::Charge;
use crate::proto::session_service_server::SessionService as _;
use crate::sessions::retention::CronRunSession;
use crate::sessions::{OnBehalfOf, Sessions};
use crate::store::{Store, StoreError, StoreResult};

/// The longest a tick sleeps: new jobs added on other replicas are seen this fast.
pub const MAX_SLEEP: Duration = Duration::from_millis(250);
/// Due jobs read per tick.
const DUE_BATCH: usize = 256;
/// Claims in flight at once per replica.
const CLAIM_CONCURRENCY: usize = 16;
/// Missed due times recorded one by one per claim; older ones are counted in the oldest record.
const MAX_SKIP_RECORDS: usize = 100;
/// Error backoff after 1, 2, 3, 4 and 5+ consecutive errors.
pub const BACKOFF: [Duration; 5] = [
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(5 * 60),
    Duration::from_secs(15 * 60),
    Duration::from_secs(60 * 60),
];

pub const MISSED: &str = "missed: not run at its due time (no replica was running, or the scheduler was behind); a later due time ran instead (catch-up policy)";
pub const OVERLAP: &str = "skipped: the previous run of this job was still going (overlap policy)";

/// The wait before the next run after `errors` consecutive errors.
pub fn backoff(errors: u32) -> Duration {
    BACKOFF[(errors.max(1) as usize - 1).min(BACKOFF.len() - 1)]
}

/// What one claim covers: the due time to run (if any), the due times to
/// record as skipped, and the job's next due time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub run_ms: Option<i64>,
    pub skipped: Vec<(i64, String)>,
    pub next_ms: Option<i64>,
}

/// Plans the claim of a job whose recorded next due time is `due_ms`, at the
/// store's time `now_ms`. Every due time from `due_ms` up to `next_ms`
/// (excluded) is either run or recorded, exactly once.
pub fn plan(schedule: &Schedule, due_ms: i64, now_ms: i64, catch_up_window_ms: i64) -> Plan {
    let (mut dues, dropped, exact) =
        schedule.due_times(due_ms - 1, now_ms.max(due_ms), MAX_SKIP_RECORDS + 1);
    let slot = dues.pop().unwrap_or(due_ms);
    let mut skipped: Vec<(i64, String)> = dues
        .into_iter()
        .map(|ms| (ms, MISSED.to_string()))
        .collect();
    if dropped > 0
        && let Some(first) = skipped.first_mut()
    {
        let more = if exact { "" } else { "more than " };
        first.1 = format!("{MISSED}; {more}{dropped} earlier due times were missed too");
    }
    let run_ms = if now_ms - slot <= catch_up_window_ms {
        Some(slot)
    } else {
        skipped.push((
            slot,
            format!(
                "missed: more than the catch-up window ({} s) late when the gateway got to it",
                catch_up_window_ms / 1000
            ),
        ));
        None
    };
    Plan {
        run_ms,
        skipped,
        next_ms: schedule.next_after(slot),
    }
}

/// A run this replica holds.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub scheduled_ms: i64,
    pub token: String,
    pub started_ms: i64,
}

/// Why a payload did not run to its end.
enum Failure {
    /// Recorded `error`: counts towards the backoff and publishes `job.failed`.
    Error(String),
    /// Recorded `skipped` with the reason: the owner is over a limit or a quota.
    Refused(String),
    /// Recorded `skipped`, and the job is switched off: its owner key is revoked or gone.
    OwnerGone(String),
}

/// A refusal of the owner's call: over a limit, a quota or a budget is a skip, anything else an
/// error.
fn refusal(code: &str, described: String) -> Failure {
    if code == ErrorCode::RateLimitExceeded.as_str_name()
        || code == ErrorCode::QuotaExceeded.as_str_name()
        || code == ErrorCode::BudgetExceeded.as_str_name()
    {
        Failure::Refused(format!(
            "skipped: the owner's call was refused ({described}); the job runs again at its next due time"
        ))
    } else {
        Failure::Error(described)
    }
}

/// Waits between attempts at a store that did not answer: a run's own reads and its admission
/// ride out a blip of the store (a failover, a stall) instead of being recorded as errors.
struct StoreRetry {
    deadline: Instant,
    pause: Duration,
}

impl StoreRetry {
    /// How long a run keeps asking a store that does not answer.
    const PATIENCE: Duration = Duration::from_secs(10);

    fn new() -> Self {
        Self {
            deadline: Instant::now() + Self::PATIENCE,
            pause: Duration::from_millis(100),
        }
    }

    /// Sleeps before the next attempt; false when patience has run out.
    async fn wait(&mut self) -> bool {
        if Instant::now() + self.pause > self.deadline {
            return false;
        }
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(Duration::from_secs(1));
        true
    }
}

fn api_refusal(error: &ApiError) -> Failure {
    refusal(
        error.code.as_str_name(),
        format!(
            "{}: {} ({})",
            error.code.as_str_name(),
            error.message,
            error.details
        ),
    )
}

fn status_refusal(status: &tonic::Status) -> Failure {
    let reason = status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default();
    refusal(&reason, describe(status))
}

/// How a payload ended.
struct Outcome {
    usage: Option<RunUsage>,
    session_id: Option<String>,
    events: Vec<Event>,
}

pub(crate) struct CronScheduler {
    cron: Arc<CronContext>,
    /// Where a job's owner key is looked up before its agentTurn runs.
    keys: Arc<dyn Store>,
    sessions: Sessions,
    permits: Arc<Semaphore>,
    max_runs: u32,
    wake: Notify,
    stop: watch::Sender<bool>,
}

fn new_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A failed call of the core, in words fit for a run's `error`.
fn describe(status: &tonic::Status) -> String {
    let details = status.get_error_details();
    match details.error_info() {
        Some(info) => {
            let sentence = info.metadata.get("details").cloned().unwrap_or_default();
            format!("{}: {} ({})", info.reason, status.message(), sentence)
        }
        None => status.message().to_string(),
    }
}

impl CronScheduler {
    /// Starts this replica's scheduler loop.
    pub(crate) fn start(
        cron: Arc<CronContext>,
        keys: Arc<dyn Store>,
        sessions: Sessions,
    ) -> Arc<Self> {
        let max_runs = cron.settings.max_concurrent_runs.max(1);
        let (stop, _) = watch::channel(false);
        let scheduler = Arc::new(Self {
            cron,
            keys,
            sessions,
            permits: Arc::new(Semaphore::new(max_runs as usize)),
            max_runs,
            wake: Notify::new(),
            stop,
        });
        tokio::spawn(scheduler.clone().run_loop());
        scheduler
    }

    /// Looks at the due index now (a job was created or changed here).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Stops claiming, then waits (up to the per-run timeout) for the runs in progress.
    pub async fn stop(&self) {
        self.stop.send_replace(true);
        let wait = self.cron.settings.run_timeout() + Duration::from_secs(5);
        match tokio::time::timeout(wait, self.permits.acquire_many(self.max_runs)).await {
            Ok(_) => tracing::info!("cron scheduler stopped; no run in progress"),
            Err(_) => tracing::warn!(
                "cron scheduler stopped with runs still going; their leases will expire and another replica records them"
            ),
        }
    }

    async fn run_loop(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        loop {
            if self.stopping() {
                return;
            }
            let wait = match self.tick().await {
                Ok(wait) => wait,
                Err(err) => {
                    tracing::warn!(error = %err, "cron tick failed; retrying");
                    Duration::from_millis(500)
                }
            };
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                _ = stop.changed() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One look at the due index. Returns how long to sleep.
    async fn tick(self: &Arc<Self>) -> StoreResult<Duration> {
        let store = &self.cron.store;
        let batch = store.due(DUE_BATCH).await?;
        let full = batch.due.len() == DUE_BATCH;
        let mut due = batch.due;
        // Replicas read the same head: different orders spread the claims.
        due.shuffle(&mut rand::rng());
        let now = batch.now_ms;
        futures::stream::iter(due)
            .for_each_concurrent(CLAIM_CONCURRENCY, |(id, due_ms)| async move {
                if self.stopping() {
                    return;
                }
                // Claim only with room to run: a busy replica leaves due jobs to the others
                // (and keeps ticking, so it still takes over abandoned runs).
                let Some(permit) = self.try_permit() else {
                    return;
                };
                if let Err(err) = self.claim_due(&id, due_ms, now, permit).await {
                    tracing::warn!(error = %err, job = %id, "could not claim a due run");
                }
            })
            .await;
        for (id, scheduled_ms) in batch.expired {
            if let Err(err) = self.recover(&id, scheduled_ms).await {
                tracing::warn!(error = %err, job = %id, "could not take over an abandoned run");
            }
        }
        if full && self.permits.available_permits() > 0 {
            return Ok(Duration::ZERO);
        }
        let until_next = batch
            .next_ms
            .map(|next| Duration::from_millis((next - now).max(1) as u64))
            .unwrap_or(MAX_SLEEP);
        Ok(until_next.min(MAX_SLEEP))
    }

    async fn claim_due(
        self: &Arc<Self>,
        id: &str,
        due_ms: i64,
        now_ms: i64,
        permit: OwnedSemaphorePermit,
    ) -> StoreResult<()> {
        let store = &self.cron.store;
        let Some(job) = store.job(id).await? else {
            return store.forget_due(id).await;
        };
        if job.next_ms != Some(due_ms) || !job.enabled {
            return Ok(()); // another replica got there first
        }
        let settings = &self.cron.settings;
        let plan = plan(
            &job.def.schedule,
            due_ms,
            now_ms,
            settings.catch_up_window_ms as i64,
        );
        let claim = Claim {
            job_id: job.def.id.clone(),
            expect_next_ms: Some(due_ms),
            expect_version: job.version,
            run_ms: plan.run_ms,
            skipped: plan.skipped,
            next_ms: plan.next_ms,
            disable: matches!(job.def.schedule, Schedule::At { .. }),
            overlap_reason: OVERLAP.into(),
            token: new_token(),
            replica: self.cron.replica.clone(),
            lease_ms: settings.lease_ms as i64,
            trigger: TRIGGER_SCHEDULE,
        };
        if let (ClaimOutcome::Claimed { now_ms }, Some(scheduled_ms)) =
            (store.claim(&claim).await?, plan.run_ms)
        {
            let ticket = Ticket {
                scheduled_ms,
                token: claim.token,
                started_ms: now_ms,
            };
            // Lag: due time to start, both on Redis's clock.
            metrics::histogram!("openclaw_cron_lag_seconds")
                .record((now_ms - scheduled_ms).max(0) as f64 / 1000.0);
            self.spawn_run(job, ticket, permit);
        }
        Ok(())
    }

    /// Starts a run this replica holds (a claimed due time, or a "run now").
    pub fn spawn_run(
        self: &Arc<Self>,
        job: JobRecord,
        ticket: Ticket,
        permit: OwnedSemaphorePermit,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            this.execute(job, ticket).await;
            drop(permit);
        });
    }

    /// A permit to run one more job now, if this replica has room.
    pub fn try_permit(&self) -> Option<OwnedSemaphorePermit> {
        if self.stopping() {
            return None;
        }
        self.permits.clone().try_acquire_owned().ok()
    }

    /// A run whose holder stopped renewing its lease (it crashed, or lost
    /// Redis for longer than the lease). A systemEvent run is run again (its
    /// event and its completion are one atomic write, so it was not published);
    /// an agentTurn is recorded as failed rather than risk a second model call.
    async fn recover(self: &Arc<Self>, id: &str, scheduled_ms: i64) -> StoreResult<()> {
        let store = &self.cron.store;
        let settings = &self.cron.settings;
        let token = new_token();
        let Some(run) = store
            .take_over(
                id,
                scheduled_ms,
                &token,
                &self.cron.replica,
                settings.lease_ms as i64,
            )
            .await?
        else {
            return Ok(());
        };
        let job = store.job(id).await?;
        let ticket = Ticket {
            scheduled_ms,
            token,
            started_ms: run.started_ms.unwrap_or(scheduled_ms),
        };
        tracing::warn!(job = %id, run = %run.id(), previous = %run.replica, "taking over a run whose replica stopped");
        match job {
            Some(job) if matches!(job.def.payload, Payload::SystemEvent { .. }) => {
                let Some(permit) = self.try_permit() else {
                    return Ok(()); // the lease runs out again and someone else takes it
                };
                self.spawn_run(job, ticket, permit);
            }
            job => {
                let owner = job
                    .as_ref()
                    .map(|j| j.def.owner.clone())
                    .unwrap_or_default();
                let error = "the replica running this run stopped before it finished; an agent turn is not retried, to avoid a second model call".to_string();
                let events = job
                    .as_ref()
                    .map(|j| vec![self.failure_event(j, scheduled_ms, &error)])
                    .unwrap_or_default();
                store
                    .finish(&Finish {
                        job_id: id.to_string(),
                        owner,
                        scheduled_ms,
                        token: ticket.token,
                        status: STATUS_ERROR,
                        error: Some(error),
                        started_ms: ticket.started_ms,
                        duration_ms: 0,
                        usage: None,
                        session_id: None,
                        delete_job: false,
                        events,
                    })
                    .await?;
            }
        }
        Ok(())
    }

    fn failure_event(&self, job: &JobRecord, scheduled_ms: i64, error: &str) -> Event {
        let mut event = Event::new(
            JOB_FAILED,
            format!("Job '{}' failed: {error}", job.def.name),
        );
        event.job_id = job.def.id.clone();
        event.run_id = run_id(&job.def.id, scheduled_ms);
        event.key_id = job.def.owner.clone();
        event.replica = self.cron.replica.clone();
        event
    }

    async fn execute(self: Arc<Self>, job: JobRecord, ticket: Ticket) {
        let store = self.cron.store.clone();
        let settings = self.cron.settings;
        let started = Instant::now();
        let heartbeat = {
            let (store, id, ticket) = (store.clone(), job.def.id.clone(), ticket.clone());
            let every = Duration::from_millis((settings.lease_ms / 3).max(100));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    match store
                        .renew(
                            &id,
                            ticket.scheduled_ms,
                            &ticket.token,
                            settings.lease_ms as i64,
                        )
                        .await
                    {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(job = %id, "lost the lease of a run; its result will not be recorded");
                            return;
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, job = %id, "could not renew a run's lease")
                        }
                    }
                }
            })
        };
        let outcome =
            tokio::time::timeout(settings.run_timeout(), self.perform(&job, &ticket)).await;
        heartbeat.abort();
        let duration_ms = started.elapsed().as_millis() as i64;
        let nothing = || Outcome {
            usage: None,
            session_id: None,
            events: Vec::new(),
        };
        let mut owner_gone = false;
        let (status, error, outcome) = match outcome {
            Ok(Ok(outcome)) => (STATUS_OK, None, outcome),
            Ok(Err(Failure::Error(error))) => (STATUS_ERROR, Some(error), nothing()),
            Ok(Err(Failure::Refused(reason))) => (STATUS_SKIPPED, Some(reason), nothing()),
            Ok(Err(Failure::OwnerGone(reason))) => {
                owner_gone = true;
                (STATUS_SKIPPED, Some(reason), nothing())
            }
            Err(_) => (
                STATUS_ERROR,
                Some(format!(
                    "timed out after {} s (the per-run timeout) and was stopped",
                    settings.run_timeout().as_secs()
                )),
                Outcome {
                    usage: None,
                    session_id: None,
                    events: Vec::new(),
                },
            ),
        };
        let mut events = outcome.events;
        if let (STATUS_ERROR, Some(error)) = (status, &error) {
            events.push(self.failure_event(&job, ticket.scheduled_ms, error));
        }
        metrics::counter!("openclaw_cron_runs_total", "status" => status.to_string()).increment(1);
        let finish = Finish {
            job_id: job.def.id.clone(),
            owner: job.def.owner.clone(),
            scheduled_ms: ticket.scheduled_ms,
            token: ticket.token.clone(),
            status,
            error: error.clone(),
            started_ms: ticket.started_ms,
            duration_ms,
            usage: outcome.usage,
            session_id: outcome.session_id,
            delete_job: matches!(
                job.def.schedule,
                Schedule::At {
                    delete_after_run: true,
                    ..
                }
            ),
            events,
        };
        let mut attempt = 0;
        let finished = loop {
            match store.finish(&finish).await {
                Ok(finished) => break finished,
                Err(err) if attempt < 20 => {
                    attempt += 1;
                    tracing::warn!(error = %err, job = %finish.job_id, "could not record a run's outcome; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(err) => {
                    tracing::error!(error = %err, job = %finish.job_id, "gave up recording a run's outcome; its lease will expire and another replica records it");
                    return;
                }
            }
        };
        if !finished {
            tracing::warn!(job = %finish.job_id, "a run finished after losing its lease; another replica recorded it");
            return;
        }
        if status == STATUS_ERROR
            && let Err(err) = self.back_off(&job.def.id).await
        {
            tracing::warn!(error = %err, job = %job.def.id, "could not apply the error backoff");
        }
        if owner_gone && let Err(err) = self.switch_off(&job.def.id).await {
            tracing::warn!(error = %err, job = %job.def.id, "could not switch off the job of a revoked or deleted key");
        }
    }

    /// Switches off a job whose owner key is revoked or gone: it stops being claimed at all.
    async fn switch_off(&self, id: &str) -> StoreResult<()> {
        let store = &self.cron.store;
        for _ in 0..3 {
            let Some(mut job) = store.job(id).await? else {
                return Ok(());
            };
            if !job.enabled {
                return Ok(());
            }
            job.enabled = false;
            job.next_ms = None;
            job.def.updated_at_ms = store.now_ms().await?;
            match store.update_job(&job, false).await? {
                UpdateOutcome::Conflict => continue,
                UpdateOutcome::Updated | UpdateOutcome::Gone => {
                    tracing::info!(job = %id, "switched off the cron job of a revoked or deleted key");
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Pushes a failing job's next run back by its backoff, recording the due
    /// times in between as skipped.
    async fn back_off(&self, id: &str) -> StoreResult<()> {
        let store = &self.cron.store;
        for _ in 0..3 {
            let Some(job) = store.job(id).await? else {
                return Ok(());
            };
            let (Some(next), true) = (job.next_ms, job.enabled) else {
                return Ok(());
            };
            if job.state.consecutive_errors == 0 {
                return Ok(());
            }
            let wait = backoff(job.state.consecutive_errors);
            let earliest = store.now_ms().await? + wait.as_millis() as i64;
            if next >= earliest {
                return Ok(());
            }
            let Some(postponed) = job.def.schedule.next_after(earliest - 1) else {
                return Ok(());
            };
            let reason = format!(
                "skipped: backing off for {} s after {} consecutive errors (error backoff policy)",
                wait.as_secs(),
                job.state.consecutive_errors
            );
            let (dues, _) = job
                .def
                .schedule
                .due_between(next - 1, postponed - 1, MAX_SKIP_RECORDS);
            let skipped: Vec<(i64, String)> =
                dues.into_iter().map(|ms| (ms, reason.clone())).collect();
            if store.postpone(id, next, postponed, &skipped).await? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Does what the job's payload says.
    async fn perform(&self, job: &JobRecord, ticket: &Ticket) -> Result<Outcome, Failure> {
        // Every kind runs as a call of its owner, who must still hold a valid key.
        let principal = self.owner(&job.def.owner).await?;
        match &job.def.payload {
            Payload::SystemEvent { text } => {
                // One request against the owner's limit, like any other call. Admission
                // changes nothing but a counter, so a store that did not answer is asked again.
                let door = self.sessions.door();
                let mut waits = StoreRetry::new();
                loop {
                    match door.admit(&principal, Charge::default()).await {
                        Ok(_) => break,
                        Err(error) if error.code == ErrorCode::Unavailable => {
                            if !waits.wait().await {
                                return Err(api_refusal(&error));
                            }
                        }
                        Err(error) => return Err(api_refusal(&error)),
                    }
                }
                let mut event = Event::new(SYSTEM_EVENT, text.clone());
                event.job_id = job.def.id.clone();
                event.run_id = run_id(&job.def.id, ticket.scheduled_ms);
                event.key_id = job.def.owner.clone();
                event.replica = self.cron.replica.clone();
                Ok(Outcome {
                    usage: None,
                    session_id: None,
                    events: vec![event],
                })
            }
            Payload::AgentTurn {
                message,
                model,
                session_id,
            } => {
                let mut request = tonic::Request::new(crate::proto::CreateSessionRequest {
                    model: model.clone().unwrap_or_default(),
                    messages: vec![crate::proto::ChatMessage {
                        role: "user".into(),
                        content: message.clone(),
                        ..Default::default()
                    }],
                    context: session_id.as_ref().map(|id| crate::proto::SessionContext {
                        session_id: id.clone(),
                        strategy: String::new(),
                    }),
                    options: None,
                    expires_at: None,
                });
                request.extensions_mut().insert(OnBehalfOf(principal));
                if session_id.is_none() {
                    // A fresh session per run: kept for the cron session retention.
                    request.extensions_mut().insert(CronRunSession {
                        retention_secs: self.cron.settings.session_retention_secs,
                    });
                }
                let response = self
                    .sessions
                    .create_session(request)
                    .await
                    .map_err(|status| status_refusal(&status))?
                    .into_inner();
                let usage = response
                    .reply
                    .as_ref()
                    .and_then(|r| r.usage)
                    .map(|u| RunUsage {
                        prompt_tokens: u.prompt_tokens,
                        completion_tokens: u.completion_tokens,
                    });
                Ok(Outcome {
                    usage,
                    session_id: response.session.map(|s| s.session_id),
                    events: Vec::new(),
                })
            }
        }
    }

    /// The job's owner, as a caller: its key must still exist and be valid.
    async fn owner(&self, owner: &str) -> Result<Principal, Failure> {
        if owner == crate::auth::Principal::Internal.owner_id() {
            return Ok(Principal::Internal);
        }
        let mut waits = StoreRetry::new();
        let found = loop {
            match self.keys.key_by_id(owner).await {
                Err(StoreError::Unavailable(_) | StoreError::Timeout) if waits.wait().await => {}
                found => break found,
            }
        };
        match found {
            Ok(Some(key)) if !key.is_revoked() => Ok(Principal::Key(Arc::new(key))),
            Ok(Some(_)) => Err(Failure::OwnerGone(
                "skipped: the API key that owns this job has been revoked; the job is switched off and runs no more".into(),
            )),
            Ok(None) => Err(Failure::OwnerGone(
                "skipped: the API key that owns this job no longer exists; the job is switched off and runs no more".into(),
            )),
            Err(err) => Err(Failure::Error(format!(
                "the key store is unavailable: {err}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timely_claim_runs_its_due_time_and_moves_to_the_next() {
        let s = Schedule::Every {
            every_ms: 1000,
            anchor_ms: 0,
        };
        let plan = plan(&s, 5000, 5040, 60_000);
        assert_eq!(plan.run_ms, Some(5000));
        assert!(plan.skipped.is_empty());
        assert_eq!(plan.next_ms, Some(6000));
    }

    #[test]
    fn after_downtime_only_the_latest_due_time_runs_and_the_rest_are_skipped() {
        let s = Schedule::Every {
            every_ms: 1000,
            anchor_ms: 0,
        };
        let plan = plan(&s, 5000, 8500, 60_000);
        assert_eq!(plan.run_ms, Some(8000));
        let skipped: Vec<i64> = plan.skipped.iter().map(|(ms, _)| *ms).collect();
        assert_eq!(skipped, [5000, 6000, 7000]);
        assert_eq!(plan.next_ms, Some(9000));
    }

    #[test]
    fn a_due_time_older_than_the_window_is_skipped_too() {
        let s = Schedule::Every {
            every_ms: 86_400_000,
            anchor_ms: 0,
        };
        let day = 86_400_000;
        let plan = plan(&s, day, day + 3 * 3_600_000, 3_600_000);
        assert_eq!(plan.run_ms, None);
        assert_eq!(plan.skipped.len(), 1);
        assert!(plan.skipped[0].1.contains("catch-up window"));
        assert_eq!(plan.next_ms, Some(2 * day));
    }

    #[test]
    fn a_long_outage_records_a_bounded_number_of_skips() {
        let s = Schedule::Every {
            every_ms: 1000,
            anchor_ms: 0,
        };
        let plan = plan(&s, 1000, 1_000_000, 60_000);
        assert_eq!(plan.run_ms, Some(1_000_000));
        assert_eq!(plan.skipped.len(), MAX_SKIP_RECORDS);
        assert!(
            plan.skipped[0]
                .1
                .contains("earlier due times were missed too")
        );
    }

    #[test]
    fn a_per_second_cron_job_down_for_a_year_catches_up_with_bounded_work() {
        let s = Schedule::Cron {
            expr: "* * * * * *".into(),
            tz: "UTC".into(),
        };
        let due = 1_767_225_600_000; // 2026-01-01T00:00:00Z
        let now = due + 365 * 86_400_000 + 250;
        let before = crate::cron::schedule::searches();
        let plan = plan(&s, due, now, 3_600_000);
        let searches = crate::cron::schedule::searches() - before;
        // The documented policy: the latest passed due time runs once, the 100 before it are
        // recorded as missed, and the oldest record counts the rest.
        let latest = now - 250;
        assert_eq!(plan.run_ms, Some(latest));
        let skipped: Vec<i64> = plan.skipped.iter().map(|(ms, _)| *ms).collect();
        let expected: Vec<i64> = (1..=MAX_SKIP_RECORDS as i64)
            .rev()
            .map(|back| latest - back * 1000)
            .collect();
        assert_eq!(skipped, expected);
        assert!(plan.skipped[1..].iter().all(|(_, why)| why == MISSED));
        assert!(
            plan.skipped[0].1.ends_with(&format!(
                "; more than {} earlier due times were missed too",
                crate::cron::schedule::MAX_COUNTED_MISSES + 1
            )),
            "{}",
            plan.skipped[0].1
        );
        assert_eq!(plan.next_ms, Some(latest + 1000));
        // A year is 31,536,000 due times; the work does not grow with them.
        let bound = crate::cron::schedule::MAX_COUNTED_MISSES + 4 * (MAX_SKIP_RECORDS as u64 + 2);
        assert!(
            searches <= bound,
            "{searches} searches for a year's catch-up"
        );
    }

    #[test]
    fn a_short_cron_outage_counts_its_missed_due_times_exactly() {
        let s = Schedule::Cron {
            expr: "* * * * * *".into(),
            tz: "UTC".into(),
        };
        let due = 1_767_225_600_000;
        let plan = plan(&s, due, due + 500_000, 3_600_000);
        assert_eq!(plan.run_ms, Some(due + 500_000));
        assert_eq!(plan.skipped.len(), MAX_SKIP_RECORDS);
        // 501 due times: 1 runs, 100 are recorded, 400 counted.
        assert!(
            plan.skipped[0]
                .1
                .ends_with("; 400 earlier due times were missed too"),
            "{}",
            plan.skipped[0].1
        );
    }

    #[test]
    fn backoff_grows_then_stays_at_an_hour() {
        let secs: Vec<u64> = (1..=7).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [30, 60, 300, 900, 3600, 3600, 3600]);
    }
}
