//! Jobs and runs of the single-process deployment, in the embedded store's
//! redb file (tables `cron_jobs` and `cron_runs`, JSON values).
//!
//! The whole cron state is also held in memory, with a due index and a lease
//! index, behind one lock: every operation is atomic by holding it, and is
//! written through to the file in one transaction before the lock is let go.
//! After a restart the indexes are rebuilt from the file, so a run that was
//! going when the process died is found by its expired lease like on Redis.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{
    Claim, ClaimOutcome, CronStore, DueBatch, Finish, JobDefinition, JobRecord, JobState,
    RUN_HISTORY, RunRecord, STATUS_ERROR, STATUS_OK, STATUS_RUNNING, STATUS_SKIPPED,
    TRIGGER_SCHEDULE, UpdateOutcome,
};
use crate::events::EventBus;
use crate::store::{Page, StoreError, StoreResult};

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("cron_jobs");
const RUNS: TableDefinition<(&str, i64), &[u8]> = TableDefinition::new("cron_runs");

const EXPIRED_BATCH: usize = 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredJob {
    def: JobDefinition,
    enabled: bool,
    next_ms: Option<i64>,
    state: JobState,
    version: u64,
}

impl From<&StoredJob> for JobRecord {
    fn from(job: &StoredJob) -> Self {
        JobRecord {
            def: job.def.clone(),
            enabled: job.enabled,
            next_ms: job.next_ms,
            state: job.state.clone(),
            version: job.version,
        }
    }
}

#[derive(Default)]
struct State {
    jobs: HashMap<String, StoredJob>,
    runs: HashMap<String, BTreeMap<i64, RunRecord>>,
    due: BTreeSet<(i64, String)>,
    /// (lease until, job id, scheduled ms) of running runs.
    leases: BTreeSet<(i64, String, i64)>,
}

/// What an operation changed, written to the file before the lock is released.
#[derive(Default)]
struct Changes {
    jobs: Vec<String>,
    deleted_jobs: Vec<String>,
    runs: Vec<(String, i64)>,
    deleted_runs: Vec<(String, i64)>,
}

impl State {
    fn set_due(&mut self, id: &str, old: Option<i64>, new: Option<i64>) {
        if let Some(old) = old {
            self.due.remove(&(old, id.to_string()));
        }
        if let Some(new) = new {
            self.due.insert((new, id.to_string()));
        }
    }

    fn record_skip(
        &mut self,
        changes: &mut Changes,
        id: &str,
        ms: i64,
        reason: &str,
        now: i64,
        touch: bool,
    ) {
        let runs = self.runs.entry(id.to_string()).or_default();
        if runs.contains_key(&ms) {
            return;
        }
        runs.insert(
            ms,
            RunRecord {
                job_id: id.to_string(),
                scheduled_ms: ms,
                status: STATUS_SKIPPED.into(),
                trigger: TRIGGER_SCHEDULE.into(),
                finished_ms: Some(now),
                error: Some(reason.to_string()),
                ..Default::default()
            },
        );
        changes.runs.push((id.to_string(), ms));
        if touch && let Some(job) = self.jobs.get_mut(id) {
            job.state.last_status = Some(STATUS_SKIPPED.into());
            job.state.last_error = Some(reason.to_string());
        }
    }

    fn trim_runs(&mut self, changes: &mut Changes, id: &str) {
        let running = self.jobs.get(id).and_then(|j| j.state.running);
        let Some(runs) = self.runs.get_mut(id) else {
            return;
        };
        while runs.len() > RUN_HISTORY {
            let Some(oldest) = runs.keys().copied().find(|ms| Some(*ms) != running) else {
                break;
            };
            runs.remove(&oldest);
            changes.deleted_runs.push((id.to_string(), oldest));
        }
    }

    fn remove_job(&mut self, changes: &mut Changes, id: &str) {
        if let Some(job) = self.jobs.remove(id) {
            self.set_due(id, job.enabled.then_some(job.next_ms).flatten(), None);
        }
        if let Some(runs) = self.runs.remove(id) {
            for (ms, run) in runs {
                if run.status == STATUS_RUNNING {
                    self.leases
                        .remove(&(run.lease_until_ms, id.to_string(), ms));
                }
                changes.deleted_runs.push((id.to_string(), ms));
            }
        }
        changes.deleted_jobs.push(id.to_string());
    }
}

pub struct EmbeddedCronStore {
    db: Arc<Database>,
    state: Arc<Mutex<State>>,
    events: EventBus,
}

fn unavailable(err: impl Into<redb::Error>) -> StoreError {
    StoreError::Unavailable(format!("embedded cron store: {}", err.into()))
}

fn corrupt(err: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("embedded cron store: {err}"))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl EmbeddedCronStore {
    /// Opens the cron tables in `db` (creating them) and loads them. `events`
    /// receives what finished runs publish.
    pub fn open(db: Arc<Database>, events: EventBus) -> StoreResult<Self> {
        let txn = db.begin_write().map_err(unavailable)?;
        txn.open_table(JOBS).map_err(unavailable)?;
        txn.open_table(RUNS).map_err(unavailable)?;
        txn.commit().map_err(unavailable)?;

        let mut state = State::default();
        let read = db.begin_read().map_err(unavailable)?;
        let jobs = read.open_table(JOBS).map_err(unavailable)?;
        for entry in jobs.iter().map_err(unavailable)? {
            let (id, raw) = entry.map_err(unavailable)?;
            let job: StoredJob = serde_json::from_slice(raw.value()).map_err(corrupt)?;
            if job.enabled
                && let Some(next) = job.next_ms
            {
                state.due.insert((next, id.value().to_string()));
            }
            state.jobs.insert(id.value().to_string(), job);
        }
        let runs = read.open_table(RUNS).map_err(unavailable)?;
        for entry in runs.iter().map_err(unavailable)? {
            let (key, raw) = entry.map_err(unavailable)?;
            let (id, ms) = key.value();
            let run: RunRecord = serde_json::from_slice(raw.value()).map_err(corrupt)?;
            if run.status == STATUS_RUNNING {
                state
                    .leases
                    .insert((run.lease_until_ms, id.to_string(), ms));
            }
            state
                .runs
                .entry(id.to_string())
                .or_default()
                .insert(ms, run);
        }
        Ok(Self {
            db,
            state: Arc::new(Mutex::new(state)),
            events,
        })
    }

    /// Runs `work` under the lock and writes what it changed, off the async workers.
    async fn with_state<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut State, &mut Changes) -> StoreResult<T> + Send + 'static,
    {
        let db = self.db.clone();
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
            let mut changes = Changes::default();
            let out = work(&mut state, &mut changes)?;
            persist(&db, &state, &changes)?;
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("embedded cron store task failed: {e}")))?
    }
}

fn persist(db: &Database, state: &State, changes: &Changes) -> StoreResult<()> {
    if changes.jobs.is_empty()
        && changes.deleted_jobs.is_empty()
        && changes.runs.is_empty()
        && changes.deleted_runs.is_empty()
    {
        return Ok(());
    }
    let txn = db.begin_write().map_err(unavailable)?;
    {
        let mut jobs = txn.open_table(JOBS).map_err(unavailable)?;
        for id in &changes.deleted_jobs {
            jobs.remove(id.as_str()).map_err(unavailable)?;
        }
        for id in &changes.jobs {
            if let Some(job) = state.jobs.get(id) {
                let raw = serde_json::to_vec(job).map_err(corrupt)?;
                jobs.insert(id.as_str(), raw.as_slice())
                    .map_err(unavailable)?;
            }
        }
        let mut runs = txn.open_table(RUNS).map_err(unavailable)?;
        for (id, ms) in &changes.deleted_runs {
            runs.remove((id.as_str(), *ms)).map_err(unavailable)?;
        }
        for (id, ms) in &changes.runs {
            if let Some(run) = state.runs.get(id).and_then(|r| r.get(ms)) {
                let raw = serde_json::to_vec(run).map_err(corrupt)?;
                runs.insert((id.as_str(), *ms), raw.as_slice())
                    .map_err(unavailable)?;
            }
        }
    }
    txn.commit().map_err(unavailable)
}

#[async_trait]
impl CronStore for EmbeddedCronStore {
    async fn now_ms(&self) -> StoreResult<i64> {
        Ok(now_ms())
    }

    async fn insert_job(&self, job: &JobRecord, max_jobs: u64) -> StoreResult<Option<u64>> {
        let job = job.clone();
        self.with_state(move |state, changes| {
            let owned = state
                .jobs
                .values()
                .filter(|j| j.def.owner == job.def.owner)
                .count() as u64;
            if owned >= max_jobs {
                return Ok(Some(owned));
            }
            crate::quotas::observe_usage("maxCronJobs", owned + 1, max_jobs);
            let id = job.def.id.clone();
            state.set_due(&id, None, job.enabled.then_some(job.next_ms).flatten());
            state.jobs.insert(
                id.clone(),
                StoredJob {
                    def: job.def,
                    enabled: job.enabled,
                    next_ms: job.next_ms,
                    state: JobState::default(),
                    version: job.version,
                },
            );
            changes.jobs.push(id);
            Ok(None)
        })
        .await
    }

    async fn job_count(&self, owner: &str) -> StoreResult<u64> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(state.jobs.values().filter(|j| j.def.owner == owner).count() as u64)
    }

    async fn job(&self, id: &str) -> StoreResult<Option<JobRecord>> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(state.jobs.get(id).map(JobRecord::from))
    }

    async fn list_jobs(&self, owner: &str) -> StoreResult<Vec<JobRecord>> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut jobs: Vec<JobRecord> = state
            .jobs
            .values()
            .filter(|j| j.def.owner == owner)
            .map(JobRecord::from)
            .collect();
        jobs.sort_by(|a, b| {
            (a.def.created_at_ms, &a.def.id).cmp(&(b.def.created_at_ms, &b.def.id))
        });
        Ok(jobs)
    }

    async fn update_job(&self, job: &JobRecord, reset_errors: bool) -> StoreResult<UpdateOutcome> {
        let job = job.clone();
        self.with_state(move |state, changes| {
            let id = job.def.id.clone();
            let Some(stored) = state.jobs.get(&id) else {
                return Ok(UpdateOutcome::Gone);
            };
            if stored.version != job.version {
                return Ok(UpdateOutcome::Conflict);
            }
            let old_due = stored.enabled.then_some(stored.next_ms).flatten();
            state.set_due(&id, old_due, job.enabled.then_some(job.next_ms).flatten());
            if let Some(stored) = state.jobs.get_mut(&id) {
                stored.def = job.def;
                stored.enabled = job.enabled;
                stored.next_ms = job.next_ms;
                stored.version = job.version + 1;
                if reset_errors {
                    stored.state.consecutive_errors = 0;
                }
            }
            changes.jobs.push(id);
            Ok(UpdateOutcome::Updated)
        })
        .await
    }

    async fn delete_job(&self, _owner: &str, id: &str) -> StoreResult<bool> {
        let id = id.to_string();
        self.with_state(move |state, changes| {
            if !state.jobs.contains_key(&id) {
                return Ok(false);
            }
            state.remove_job(changes, &id);
            Ok(true)
        })
        .await
    }

    async fn due(&self, limit: usize) -> StoreResult<DueBatch> {
        let now = now_ms();
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let due = state
            .due
            .iter()
            .take_while(|(ms, _)| *ms <= now)
            .take(limit)
            .map(|(ms, id)| (id.clone(), *ms))
            .collect();
        let next_ms = state
            .due
            .range((now + 1, String::new())..)
            .next()
            .map(|(ms, _)| *ms);
        let expired = state
            .leases
            .iter()
            .take_while(|(until, _, _)| *until <= now)
            .take(EXPIRED_BATCH)
            .map(|(_, id, ms)| (id.clone(), *ms))
            .collect();
        Ok(DueBatch {
            now_ms: now,
            due,
            next_ms,
            expired,
        })
    }

    async fn forget_due(&self, id: &str) -> StoreResult<()> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.due.retain(|(_, due_id)| due_id != id);
        Ok(())
    }

    async fn claim(&self, claim: &Claim) -> StoreResult<ClaimOutcome> {
        let claim = claim.clone();
        self.with_state(move |state, changes| {
            let id = claim.job_id.clone();
            let Some(job) = state.jobs.get(&id) else {
                state.due.retain(|(_, due_id)| *due_id != id);
                return Ok(ClaimOutcome::Gone);
            };
            if job.version != claim.expect_version {
                return Ok(ClaimOutcome::Stale);
            }
            let scheduled = claim.expect_next_ms.is_some();
            if scheduled && (job.next_ms != claim.expect_next_ms || !job.enabled) {
                return Ok(ClaimOutcome::Stale);
            }
            let now = now_ms();
            if claim.expect_next_ms.is_some_and(|due| due > now) {
                return Ok(ClaimOutcome::Early);
            }
            let running = job.state.running;
            let exists = |state: &State, ms: i64| {
                state
                    .runs
                    .get(&id)
                    .is_some_and(|runs| runs.contains_key(&ms))
            };
            if !scheduled && (running.is_some() || claim.run_ms.is_some_and(|ms| exists(state, ms)))
            {
                return Ok(ClaimOutcome::Busy);
            }
            for (ms, reason) in &claim.skipped {
                state.record_skip(changes, &id, *ms, reason, now, true);
            }
            let mut outcome = ClaimOutcome::Recorded;
            if let Some(ms) = claim.run_ms {
                if running.is_some() {
                    state.record_skip(changes, &id, ms, &claim.overlap_reason, now, true);
                } else if !exists(state, ms) {
                    let lease = now + claim.lease_ms;
                    state.runs.entry(id.clone()).or_default().insert(
                        ms,
                        RunRecord {
                            job_id: id.clone(),
                            scheduled_ms: ms,
                            status: STATUS_RUNNING.into(),
                            trigger: claim.trigger.into(),
                            started_ms: Some(now),
                            replica: claim.replica.clone(),
                            token: claim.token.clone(),
                            lease_until_ms: lease,
                            attempt: 1,
                            ..Default::default()
                        },
                    );
                    state.leases.insert((lease, id.clone(), ms));
                    changes.runs.push((id.clone(), ms));
                    if let Some(job) = state.jobs.get_mut(&id) {
                        job.state.running = Some(ms);
                    }
                    outcome = ClaimOutcome::Claimed { now_ms: now };
                }
            }
            if scheduled && let Some(job) = state.jobs.get_mut(&id) {
                let old = job.next_ms;
                let new = if claim.disable { None } else { claim.next_ms };
                job.next_ms = new;
                if claim.disable {
                    job.enabled = false;
                    job.version += 1;
                }
                state.set_due(&id, old, new);
            }
            changes.jobs.push(id.clone());
            state.trim_runs(changes, &id);
            Ok(outcome)
        })
        .await
    }

    async fn renew(
        &self,
        job_id: &str,
        scheduled_ms: i64,
        token: &str,
        lease_ms: i64,
    ) -> StoreResult<bool> {
        let (id, token) = (job_id.to_string(), token.to_string());
        self.with_state(move |state, changes| {
            let Some(run) = state
                .runs
                .get_mut(&id)
                .and_then(|r| r.get_mut(&scheduled_ms))
            else {
                return Ok(false);
            };
            if run.token != token || run.status != STATUS_RUNNING {
                return Ok(false);
            }
            let old = run.lease_until_ms;
            run.lease_until_ms = now_ms() + lease_ms;
            let new = run.lease_until_ms;
            state.leases.remove(&(old, id.clone(), scheduled_ms));
            state.leases.insert((new, id.clone(), scheduled_ms));
            changes.runs.push((id, scheduled_ms));
            Ok(true)
        })
        .await
    }

    async fn finish(&self, finish: &Finish) -> StoreResult<bool> {
        let finish = finish.clone();
        let events = finish.events.clone();
        let finished = self
            .with_state(move |state, changes| {
                let id = finish.job_id.clone();
                let ms = finish.scheduled_ms;
                let Some(run) = state.runs.get_mut(&id).and_then(|r| r.get_mut(&ms)) else {
                    return Ok(false);
                };
                if run.token != finish.token || run.status != STATUS_RUNNING {
                    return Ok(false);
                }
                let lease = run.lease_until_ms;
                run.status = finish.status.into();
                run.finished_ms = Some(now_ms());
                run.duration_ms = Some(finish.duration_ms);
                run.error = finish.error.clone();
                run.usage = finish.usage;
                run.session_id = finish.session_id.clone();
                state.leases.remove(&(lease, id.clone(), ms));
                changes.runs.push((id.clone(), ms));
                if let Some(job) = state.jobs.get_mut(&id) {
                    if job.state.running == Some(ms) {
                        job.state.running = None;
                    }
                    job.state.last_run_at_ms = Some(finish.started_ms);
                    job.state.last_status = Some(finish.status.into());
                    job.state.last_error = finish.error.clone();
                    job.state.last_duration_ms = Some(finish.duration_ms);
                    // A skipped run (the owner over a limit or quota) is no error.
                    if finish.status == STATUS_OK {
                        job.state.consecutive_errors = 0;
                    } else if finish.status == STATUS_ERROR {
                        job.state.consecutive_errors += 1;
                    }
                    changes.jobs.push(id.clone());
                    if finish.delete_job && finish.status == STATUS_OK {
                        state.remove_job(changes, &id);
                    }
                }
                Ok(true)
            })
            .await?;
        if finished {
            for event in events {
                self.events.announce(event).await;
            }
        }
        Ok(finished)
    }

    async fn take_over(
        &self,
        job_id: &str,
        scheduled_ms: i64,
        token: &str,
        replica: &str,
        lease_ms: i64,
    ) -> StoreResult<Option<RunRecord>> {
        let (id, token, replica) = (job_id.to_string(), token.to_string(), replica.to_string());
        self.with_state(move |state, changes| {
            let now = now_ms();
            let Some(run) = state
                .runs
                .get_mut(&id)
                .and_then(|r| r.get_mut(&scheduled_ms))
            else {
                state
                    .leases
                    .retain(|(_, lid, lms)| !(*lid == id && *lms == scheduled_ms));
                return Ok(None);
            };
            if run.status != STATUS_RUNNING || run.lease_until_ms > now {
                return Ok(None);
            }
            let old = run.lease_until_ms;
            run.token = token;
            run.replica = replica;
            run.lease_until_ms = now + lease_ms;
            run.attempt += 1;
            let taken = run.clone();
            state.leases.remove(&(old, id.clone(), scheduled_ms));
            state
                .leases
                .insert((taken.lease_until_ms, id.clone(), scheduled_ms));
            changes.runs.push((id, scheduled_ms));
            Ok(Some(taken))
        })
        .await
    }

    async fn postpone(
        &self,
        job_id: &str,
        expect_next_ms: i64,
        next_ms: i64,
        skipped: &[(i64, String)],
    ) -> StoreResult<bool> {
        let (id, skipped) = (job_id.to_string(), skipped.to_vec());
        self.with_state(move |state, changes| {
            let Some(job) = state.jobs.get(&id) else {
                return Ok(false);
            };
            if job.next_ms != Some(expect_next_ms) || !job.enabled {
                return Ok(false);
            }
            let now = now_ms();
            for (ms, reason) in &skipped {
                state.record_skip(changes, &id, *ms, reason, now, false);
            }
            if let Some(job) = state.jobs.get_mut(&id) {
                job.next_ms = Some(next_ms);
            }
            state.set_due(&id, Some(expect_next_ms), Some(next_ms));
            changes.jobs.push(id.clone());
            state.trim_runs(changes, &id);
            Ok(true)
        })
        .await
    }

    async fn list_runs(
        &self,
        job_id: &str,
        offset: u64,
        limit: u32,
    ) -> StoreResult<Page<RunRecord>> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(runs) = state.runs.get(job_id) else {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        };
        let mut items: Vec<RunRecord> = runs
            .values()
            .rev()
            .skip(offset as usize)
            .take(limit as usize + 1)
            .cloned()
            .collect();
        let more = items.len() > limit as usize;
        items.truncate(limit as usize);
        Ok(Page {
            items,
            next: more.then(|| offset + u64::from(limit)),
        })
    }
}
