//! `/api/v1/cron/jobs`: scheduled jobs, translated to `CronService`. The JSON is the guide's
//! (section 2.3 and 2.4): `schedule {kind: "every", everyMs}`, `payload {kind: "systemEvent", text}`,
//! and jobs listed with `id`, `name`, `status`, `nextRun`.

use axum::{extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::{
    core_client::CoreClient,
    envelope::{ApiResult, SuccessEnvelope},
    extract::{JsonBody, PathId, QueryParams},
    headers::Caller,
    openapi::responses::*,
    proto::{self, cron_service_client::CronServiceClient},
    timestamp,
};

pub(crate) const TAG: &str = "cron";

// ---- request bodies -------------------------------------------------------------------------

/// When the job fires. `kind` decides which other fields apply.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Schedule {
    /// "every", "at" or "cron".
    #[serde(default)]
    #[schema(example = "every")]
    kind: String,
    /// every: the interval in milliseconds (at least 1000).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = 86400000)]
    every_ms: Option<i64>,
    /// every: Unix milliseconds the intervals count from (default: the creation time).
    #[serde(skip_serializing_if = "Option::is_none")]
    anchor_ms: Option<i64>,
    /// at: the one time it fires (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "2026-02-15T00:00:00Z")]
    at: Option<String>,
    /// at: delete the job after a successful run (default false: it is disabled).
    #[serde(skip_serializing_if = "Option::is_none")]
    delete_after_run: Option<bool>,
    /// cron: 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "0 9 * * 1-5")]
    expr: Option<String>,
    /// cron: IANA time zone (default "UTC").
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "America/New_York")]
    tz: Option<String>,
}

/// What a run does. `kind` decides which other fields apply.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Payload {
    /// "systemEvent" or "agentTurn".
    #[serde(default)]
    #[schema(example = "systemEvent")]
    kind: String,
    /// systemEvent: the event's text.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "Running daily backup")]
    text: Option<String>,
    /// agentTurn: the user message sent to the model.
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    /// agentTurn: the model (default "zai/glm-4.7-flash").
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    /// agentTurn: the session to continue (created on the first run); absent: a fresh session per run.
    #[serde(skip_serializing_if = "Option::is_none")]
    session_id: Option<String>,
}

impl From<Schedule> for proto::Schedule {
    fn from(s: Schedule) -> Self {
        Self {
            kind: s.kind,
            every_ms: s.every_ms,
            anchor_ms: s.anchor_ms,
            at: s.at,
            delete_after_run: s.delete_after_run,
            expr: s.expr,
            tz: s.tz,
        }
    }
}

impl From<proto::Schedule> for Schedule {
    fn from(s: proto::Schedule) -> Self {
        Self {
            kind: s.kind,
            every_ms: s.every_ms,
            anchor_ms: s.anchor_ms,
            at: s.at,
            delete_after_run: s.delete_after_run,
            expr: s.expr,
            tz: s.tz,
        }
    }
}

impl From<Payload> for proto::Payload {
    fn from(p: Payload) -> Self {
        Self {
            kind: p.kind,
            text: p.text,
            message: p.message,
            model: p.model,
            session_id: p.session_id,
        }
    }
}

impl From<proto::Payload> for Payload {
    fn from(p: proto::Payload) -> Self {
        Self {
            kind: p.kind,
            text: p.text,
            message: p.message,
            model: p.model,
            session_id: p.session_id,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateJobRequest {
    #[serde(default)]
    #[schema(example = "daily-backup")]
    name: String,
    schedule: Option<Schedule>,
    payload: Option<Payload>,
    /// Default true.
    enabled: Option<bool>,
}

/// Fields to change; absent ones stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UpdateJobRequest {
    name: Option<String>,
    /// A new schedule (recomputes the next run and clears the error backoff).
    schedule: Option<Schedule>,
    payload: Option<Payload>,
    /// false disables the job; true enables it and computes its next run.
    enabled: Option<bool>,
}

impl CreateJobRequest {
    pub(crate) fn into_proto(self) -> proto::CreateJobRequest {
        proto::CreateJobRequest {
            name: self.name,
            schedule: self.schedule.map(Into::into),
            payload: self.payload.map(Into::into),
            enabled: self.enabled,
        }
    }
}

impl UpdateJobRequest {
    pub(crate) fn into_proto(self, job_id: String) -> proto::UpdateJobRequest {
        proto::UpdateJobRequest {
            job_id,
            name: self.name,
            schedule: self.schedule.map(Into::into),
            payload: self.payload.map(Into::into),
            enabled: self.enabled,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub(crate) struct RunsQuery {
    /// Runs per page, 1-500 (default 50).
    page_size: Option<u32>,
    /// `nextPageToken` from the previous page.
    page_token: Option<String>,
}

// ---- response data ------------------------------------------------------------------------

/// What the job's runs have left.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JobState {
    #[schema(value_type = Option<String>, format = DateTime, example = "2026-02-15T00:00:00Z")]
    last_run_at: Option<String>,
    /// "ok", "error" or "skipped"; null before the first run.
    #[schema(example = "ok")]
    last_status: Option<String>,
    last_error: Option<String>,
    #[schema(example = 12)]
    last_duration_ms: Option<i64>,
    #[schema(example = 0)]
    consecutive_errors: u32,
    /// A run is going now.
    running: bool,
}

/// A job as the guide lists it, with its schedule, payload and state.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Job {
    #[schema(example = "job_4kq9Xb2LmP0aZt7c")]
    id: String,
    #[schema(example = "daily-backup")]
    name: String,
    /// "enabled" or "disabled".
    #[schema(example = "enabled")]
    status: String,
    /// The next due time; null when disabled or done.
    #[schema(value_type = Option<String>, format = DateTime, example = "2026-02-15T00:00:00Z")]
    next_run: Option<String>,
    schedule: Schedule,
    payload: Payload,
    state: JobState,
    #[schema(value_type = Option<String>, format = DateTime, example = "2026-02-14T00:00:00Z")]
    created_at: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime, example = "2026-02-14T00:00:00Z")]
    updated_at: Option<String>,
}

impl From<proto::Job> for Job {
    fn from(job: proto::Job) -> Self {
        let state = job.state.unwrap_or_default();
        Self {
            id: job.id,
            name: job.name,
            status: if job.enabled { "enabled" } else { "disabled" }.into(),
            next_run: timestamp::from_proto(job.next_run.as_ref()),
            schedule: job.schedule.unwrap_or_default().into(),
            payload: job.payload.unwrap_or_default().into(),
            state: JobState {
                last_run_at: timestamp::from_proto(state.last_run_at.as_ref()),
                last_status: Some(state.last_status).filter(|s| !s.is_empty()),
                last_error: Some(state.last_error).filter(|s| !s.is_empty()),
                last_duration_ms: state.last_duration_ms,
                consecutive_errors: state.consecutive_errors,
                running: state.running,
            },
            created_at: timestamp::from_proto(job.created_at.as_ref()),
            updated_at: timestamp::from_proto(job.updated_at.as_ref()),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JobList {
    jobs: Vec<Job>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeletedJob {
    #[schema(example = "job_4kq9Xb2LmP0aZt7c")]
    id: String,
    /// Always `true`.
    deleted: bool,
}

/// Tokens an agentTurn run used.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RunUsage {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
}

/// One run: one due time of the job (or one "run now").
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Run {
    /// `<jobId>:<scheduled Unix ms>`, the run's idempotency key.
    #[schema(example = "job_4kq9Xb2LmP0aZt7c:1771113600000")]
    id: String,
    job_id: String,
    /// The due time this run is for.
    #[schema(value_type = Option<String>, format = DateTime, example = "2026-02-15T00:00:00Z")]
    scheduled_at: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    started_at: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    finished_at: Option<String>,
    /// "running", "ok", "error" or "skipped".
    #[schema(example = "ok")]
    status: String,
    error: Option<String>,
    #[schema(example = 12)]
    duration_ms: Option<i64>,
    usage: Option<RunUsage>,
    /// The session an agentTurn ran in.
    session_id: Option<String>,
    /// "schedule" or "manual".
    #[schema(example = "schedule")]
    trigger: String,
    /// The core replica that ran it.
    replica: Option<String>,
}

impl From<proto::Run> for Run {
    fn from(run: proto::Run) -> Self {
        Self {
            id: run.id,
            job_id: run.job_id,
            scheduled_at: timestamp::from_proto(run.scheduled_at.as_ref()),
            started_at: timestamp::from_proto(run.started_at.as_ref()),
            finished_at: timestamp::from_proto(run.finished_at.as_ref()),
            status: run.status,
            error: Some(run.error).filter(|e| !e.is_empty()),
            duration_ms: run.duration_ms,
            usage: run.usage.map(|u| RunUsage {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
                total_tokens: u.total_tokens,
            }),
            session_id: Some(run.session_id).filter(|s| !s.is_empty()),
            trigger: run.trigger,
            replica: Some(run.replica).filter(|r| !r.is_empty()),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RunList {
    #[schema(example = "job_4kq9Xb2LmP0aZt7c")]
    job_id: String,
    /// Newest first.
    runs: Vec<Run>,
    /// Present when there are more; pass it as `pageToken`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    next_page_token: Option<String>,
}

// ---- handlers -----------------------------------------------------------------------------

/// Create a job (guide 2.3).
#[utoipa::path(
    post,
    path = "/api/v1/cron/jobs",
    tag = TAG,
    request_body = CreateJobRequest,
    responses(
        (status = 201, description = "Job created", body = SuccessEnvelope<Job>),
        BodyErrors,
        CallErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create_job(
    State(core): State<CoreClient>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateJobRequest>,
) -> ApiResult<Job> {
    let request = body.into_proto();
    let created = core
        .enveloped(
            &caller,
            request,
            |channel, request| async move {
                CronServiceClient::new(channel).create_job(request).await
            },
            Job::from,
        )
        .await?;
    Ok(created.with_status(StatusCode::CREATED))
}

/// List the caller's jobs (guide 2.4), oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/cron/jobs",
    tag = TAG,
    responses(
        (status = 200, description = "The caller's jobs", body = SuccessEnvelope<JobList>),
        (status = 400, response = InvalidRequest),
        CallErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_jobs(
    State(core): State<CoreClient>,
    caller: Caller,
) -> ApiResult<JobList> {
    core.enveloped(
        &caller,
        proto::ListJobsRequest {},
        |channel, request| async move { CronServiceClient::new(channel).list_jobs(request).await },
        |listed| JobList {
            jobs: listed.jobs.into_iter().map(Into::into).collect(),
        },
    )
    .await
}

/// Read one job.
#[utoipa::path(
    get,
    path = "/api/v1/cron/jobs/{jobId}",
    tag = TAG,
    params(("jobId" = String, Path, description = "The job to read")),
    responses(
        (status = 200, description = "The job", body = SuccessEnvelope<Job>),
        (status = 404, response = NotFound),
        CallErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_job(
    State(core): State<CoreClient>,
    caller: Caller,
    PathId(job_id): PathId,
) -> ApiResult<Job> {
    core.enveloped(
        &caller,
        proto::GetJobRequest { job_id },
        |channel, request| async move { CronServiceClient::new(channel).get_job(request).await },
        Job::from,
    )
    .await
}

/// Change a job: name, schedule, payload, or enable/disable it.
#[utoipa::path(
    patch,
    path = "/api/v1/cron/jobs/{jobId}",
    tag = TAG,
    params(("jobId" = String, Path, description = "The job to change")),
    request_body = UpdateJobRequest,
    responses(
        (status = 200, description = "The changed job", body = SuccessEnvelope<Job>),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        BodyErrors,
        CallErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn update_job(
    State(core): State<CoreClient>,
    caller: Caller,
    PathId(job_id): PathId,
    JsonBody(body): JsonBody<UpdateJobRequest>,
) -> ApiResult<Job> {
    let request = body.into_proto(job_id);
    core.enveloped(
        &caller,
        request,
        |channel, request| async move { CronServiceClient::new(channel).update_job(request).await },
        Job::from,
    )
    .await
}

/// Delete a job and its run history.
#[utoipa::path(
    delete,
    path = "/api/v1/cron/jobs/{jobId}",
    tag = TAG,
    params(("jobId" = String, Path, description = "The job to delete")),
    responses(
        (status = 200, description = "The job is gone", body = SuccessEnvelope<DeletedJob>),
        (status = 404, response = NotFound),
        CallErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn delete_job(
    State(core): State<CoreClient>,
    caller: Caller,
    PathId(job_id): PathId,
) -> ApiResult<DeletedJob> {
    let request = proto::DeleteJobRequest {
        job_id: job_id.clone(),
    };
    core.enveloped(
        &caller,
        request,
        |channel, request| async move { CronServiceClient::new(channel).delete_job(request).await },
        |_| DeletedJob {
            id: job_id,
            deleted: true,
        },
    )
    .await
}

/// Run a job now, outside its schedule; the run's outcome shows in its history.
#[utoipa::path(
    post,
    path = "/api/v1/cron/jobs/{jobId}/run",
    tag = TAG,
    params(("jobId" = String, Path, description = "The job to run")),
    responses(
        (status = 202, description = "The run started", body = SuccessEnvelope<Run>),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        CallErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn run_job(
    State(core): State<CoreClient>,
    caller: Caller,
    PathId(job_id): PathId,
) -> ApiResult<Run> {
    let started = core
        .enveloped(
            &caller,
            proto::RunJobRequest { job_id },
            |channel, request| async move { CronServiceClient::new(channel).run_job(request).await },
            Run::from,
        )
        .await?;
    Ok(started.with_status(StatusCode::ACCEPTED))
}

/// A job's run history, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/cron/jobs/{jobId}/runs",
    tag = TAG,
    params(("jobId" = String, Path, description = "The job whose runs to list"), RunsQuery),
    responses(
        (status = 200, description = "One page of runs", body = SuccessEnvelope<RunList>),
        (status = 400, response = InvalidRequest),
        (status = 404, response = NotFound),
        CallErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_runs(
    State(core): State<CoreClient>,
    caller: Caller,
    PathId(job_id): PathId,
    QueryParams(query): QueryParams<RunsQuery>,
) -> ApiResult<RunList> {
    let request = proto::ListRunsRequest {
        job_id: job_id.clone(),
        page_size: query.page_size.unwrap_or_default(),
        page_token: query.page_token.unwrap_or_default(),
    };
    core.enveloped(
        &caller,
        request,
        |channel, request| async move { CronServiceClient::new(channel).list_runs(request).await },
        |listed| RunList {
            job_id,
            runs: listed.runs.into_iter().map(Into::into).collect(),
            next_page_token: Some(listed.next_page_token).filter(|t| !t.is_empty()),
        },
    )
    .await
}
