//! Cron fairness end to end: a job's runs are its owner's calls. A systemEvent run counts
//! against the owner's request limit (on Redis and in the embedded store); a run over a limit
//! or a quota is recorded `skipped` with the reason, without error backoff or `job.failed`;
//! the jobs of a revoked or deleted key stop firing, every payload kind, and are switched off.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Behaviour, INTERNAL_TOKEN, Stack, all_events, expect_data, expect_error};

async fn key(stack: &Stack, name: &str, limits: Value) -> (String, String) {
    let response = stack
        .http
        .post(stack.url("/api/v1/keys"))
        .bearer_auth(INTERNAL_TOKEN)
        .json(&json!({"name": name, "limits": limits}))
        .send()
        .await
        .unwrap();
    let data = expect_data(response, 201).await;
    (
        data["key"].as_str().unwrap().to_string(),
        data["id"].as_str().unwrap().to_string(),
    )
}

async fn create_job(stack: &Stack, key: &str, body: Value) -> String {
    let data = expect_data(stack.post("/api/v1/cron/jobs", key, &body).await, 201).await;
    data["id"].as_str().unwrap().to_string()
}

/// The job's runs, oldest first.
async fn runs(stack: &Stack, key: &str, job: &str) -> Vec<Value> {
    let response = stack
        .get(&format!("/api/v1/cron/jobs/{job}/runs?pageSize=500"), key)
        .await;
    let mut runs = expect_data(response, 200).await["runs"]
        .as_array()
        .unwrap()
        .clone();
    runs.reverse();
    runs
}

fn scheduled_ms(run: &Value) -> i64 {
    run["id"]
        .as_str()
        .and_then(|id| id.rsplit_once(':'))
        .and_then(|(_, ms)| ms.parse().ok())
        .unwrap()
}

/// Fills Redis with data of no tenant's, 256 KiB at a time, until it uses `target` bytes;
/// returns the keys written.
async fn fill(conn: &mut redis::aio::MultiplexedConnection, target: u64) -> Vec<String> {
    let mut keys = Vec::new();
    loop {
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(conn)
            .await
            .unwrap();
        let used: u64 = info
            .lines()
            .find_map(|l| l.trim().strip_prefix("used_memory:"))
            .and_then(|v| v.parse().ok())
            .unwrap();
        if used >= target {
            return keys;
        }
        let key = format!("filler:{}", keys.len());
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(vec![b'f'; 256 * 1024])
            .query_async(conn)
            .await
            .unwrap();
        keys.push(key);
    }
}

fn every_second(kind: &str) -> Value {
    let payload = match kind {
        "systemEvent" => json!({"kind": "systemEvent", "text": "tick"}),
        _ => json!({"kind": "agentTurn", "message": "status?"}),
    };
    json!({"name": kind, "schedule": {"kind": "every", "everyMs": 1000}, "payload": payload})
}

async fn system_event_runs_count_against_the_owners_request_limit(stack: Stack) {
    // Four requests a minute: creating the job is one, so three runs fit.
    let (owner, _) = key(&stack, "limited", json!({"requestsPerMinute": 4})).await;
    let job = create_job(&stack, &owner, every_second("systemEvent")).await;
    tokio::time::sleep(Duration::from_millis(6500)).await;

    // The key's own calls are refused now: the runs used its limit.
    expect_error(
        stack.get("/api/v1/sessions", &owner).await,
        429,
        "RATE_LIMIT_EXCEEDED",
    )
    .await;
    let admin = support::get_with_key(
        &stack.http,
        stack.url(&format!("/api/v1/cron/jobs/{job}/runs?pageSize=500")),
        &owner,
    )
    .await;
    expect_error(admin, 429, "RATE_LIMIT_EXCEEDED").await;

    // Read the runs from the store (the owner itself is over its limit).
    let runs = stored_runs(&stack, &job).await;
    let ok = runs.iter().filter(|(_, status, _)| status == "ok").count();
    assert_eq!(ok, 3, "three runs fit the limit: {runs:#?}");
    let skipped: Vec<_> = runs
        .iter()
        .filter(|(_, status, _)| status == "skipped")
        .collect();
    assert!(skipped.len() >= 2, "{runs:#?}");
    for (_, _, error) in &skipped {
        assert!(error.contains("RATE_LIMIT_EXCEEDED"), "{error}");
        assert!(error.starts_with("skipped:"), "{error}");
    }
    // No backoff: every due time is run or recorded, one second apart, none postponed.
    for pair in runs.windows(2) {
        assert_eq!(pair[1].0 - pair[0].0, 1000, "{runs:#?}");
    }
    // Three ticks published, no failure notice.
    let events = all_events(stack.core.port).await;
    let ticks = events
        .iter()
        .filter(|e| e.r#type == "system.event" && e.job_id == job)
        .count();
    assert_eq!(ticks, 3);
    assert!(
        !events
            .iter()
            .any(|e| e.r#type == "cron.job_failed" && e.job_id == job),
        "{events:?}"
    );
}

/// A job's runs as (scheduled ms, status, error), oldest first, read from Redis: the owner may
/// not call any more (over its limit, revoked, deleted) and no one else sees its jobs.
async fn stored_runs(stack: &Stack, job: &str) -> Vec<(i64, String, String)> {
    match &stack.redis {
        Some(redis) => {
            let client = redis::Client::open(support::redis_url(redis)).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let times: Vec<i64> = redis::cmd("ZRANGE")
                .arg(format!("oc:{{sched}}:runs:{job}"))
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .unwrap();
            let mut out = Vec::new();
            for ms in times {
                let (status, error): (Option<String>, Option<String>) = redis::cmd("HMGET")
                    .arg(format!("oc:{{sched}}:run:{job}:{ms}"))
                    .arg("status")
                    .arg("error")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                out.push((ms, status.unwrap_or_default(), error.unwrap_or_default()));
            }
            out
        }
        None => panic!("stored_runs reads Redis"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_event_runs_count_against_the_request_limit_on_redis() {
    system_event_runs_count_against_the_owners_request_limit(Stack::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_event_runs_count_against_the_request_limit_in_the_embedded_store() {
    let stack = Stack::embedded().await;
    // The owner may not read its runs any more (that is the point): the ticks on the event
    // stream tell how many ran.
    let (owner, _) = key(&stack, "limited", json!({"requestsPerMinute": 4})).await;
    let job = create_job(&stack, &owner, every_second("systemEvent")).await;
    tokio::time::sleep(Duration::from_millis(6500)).await;
    expect_error(
        stack.get("/api/v1/sessions", &owner).await,
        429,
        "RATE_LIMIT_EXCEEDED",
    )
    .await;
    let events = all_events(stack.core.port).await;
    let ticks = events
        .iter()
        .filter(|e| e.r#type == "system.event" && e.job_id == job)
        .count();
    assert_eq!(ticks, 3, "three runs fit the limit: {events:?}");
    assert!(!events.iter().any(|e| e.r#type == "cron.job_failed"));
}

/// Revoked (through the API) or deleted (its record gone from the store): either way every job
/// of the key stops, whatever its payload.
async fn a_gone_keys_jobs_stop(revoke: bool) {
    let stack = Stack::start().await;
    stack.upstream.behave(Behaviour::Reply {
        content: "done".into(),
        prompt_tokens: 3,
        completion_tokens: 1,
    });
    let (owner, owner_id) = key(&stack, "owner", json!({})).await;
    let event_job = create_job(&stack, &owner, every_second("systemEvent")).await;
    let turn_job = create_job(&stack, &owner, every_second("agentTurn")).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for job in [&event_job, &turn_job] {
        let before = runs(&stack, &owner, job).await;
        assert!(
            before.iter().any(|r| r["status"] == "ok"),
            "the job ran while its key was valid: {before:#?}"
        );
    }

    let client = redis::Client::open(support::redis_url(stack.redis.as_ref().unwrap())).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let why = if revoke {
        let response = stack
            .http
            .delete(stack.url(&format!("/api/v1/keys/{owner_id}")))
            .bearer_auth(INTERNAL_TOKEN)
            .send()
            .await
            .unwrap();
        expect_data(response, 200).await;
        "has been revoked"
    } else {
        let _: () = redis::cmd("DEL")
            .arg(format!("oc:key:{owner_id}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        "no longer exists"
    };
    let calls_then = stack.upstream.received().len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let events_then = all_events(stack.core.port).await.len();
    let runs_then: Vec<usize> = {
        let mut counts = Vec::new();
        for job in [&event_job, &turn_job] {
            counts.push(stored_runs(&stack, job).await.len());
        }
        counts
    };
    tokio::time::sleep(Duration::from_millis(3000)).await;

    for (i, job) in [&event_job, &turn_job].into_iter().enumerate() {
        let runs = stored_runs(&stack, job).await;
        assert_eq!(runs.len(), runs_then[i], "{job} still fires: {runs:#?}");
        let (_, status, error) = runs.last().unwrap();
        assert_eq!(status, "skipped", "{runs:#?}");
        assert!(error.contains(why), "{error}");
        assert!(error.contains("switched off"), "{error}");
        let enabled: Option<String> = redis::cmd("HGET")
            .arg(format!("oc:{{sched}}:job:{job}"))
            .arg("enabled")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(enabled.as_deref(), Some("0"), "{job} is switched off");
        let errors: Option<String> = redis::cmd("HGET")
            .arg(format!("oc:{{sched}}:job:{job}"))
            .arg("errors")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(errors.as_deref().unwrap_or("0"), "0", "a skip is no error");
    }
    // No model call and no event since: the job fired no more.
    assert!(stack.upstream.received().len() <= calls_then + 1);
    assert_eq!(all_events(stack.core.port).await.len(), events_then);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_keys_jobs_of_every_kind_stop_firing() {
    a_gone_keys_jobs_stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_keys_jobs_of_every_kind_stop_firing() {
    a_gone_keys_jobs_stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_turn_over_a_quota_is_skipped_with_the_reason_and_runs_again_after() {
    let stack = Stack::start().await;
    stack.upstream.behave(Behaviour::Reply {
        content: "done".into(),
        prompt_tokens: 3,
        completion_tokens: 1,
    });
    let client = redis::Client::open(support::redis_url(stack.redis.as_ref().unwrap())).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (owner, _) = key(&stack, "owner", json!({})).await;
    let job = create_job(
        &stack,
        &owner,
        json!({"name": "notes", "schedule": {"kind": "every", "everyMs": 1000}, "payload": {"kind": "agentTurn", "message": "status?", "sessionId": "notes"}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Redis fills past the hard threshold (storage pressure): the owner is over its storage
    // quota, and the turn is refused with QUOTA_EXCEEDED.
    let maxmemory: u64 = 16 * 1024 * 1024;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(maxmemory)
        .query_async(&mut conn)
        .await
        .unwrap();
    let fillers = fill(&mut conn, maxmemory * 93 / 100).await;
    tokio::time::sleep(Duration::from_millis(5000)).await;
    let under_pressure = runs(&stack, &owner, &job).await;
    let skipped: Vec<&Value> = under_pressure
        .iter()
        .filter(|r| r["status"] == "skipped")
        .collect();
    assert!(skipped.len() >= 3, "{under_pressure:#?}");
    for run in &skipped {
        let error = run["error"].as_str().unwrap();
        assert!(error.contains("QUOTA_EXCEEDED"), "{error}");
        assert!(error.contains("hard threshold"), "{error}");
    }
    // Skipped, not failed: no backoff (every due time is recorded, a second apart) and no
    // failure notice.
    let tail: Vec<i64> = under_pressure.iter().map(scheduled_ms).collect();
    for pair in tail.windows(2) {
        assert_eq!(pair[1] - pair[0], 1000, "{under_pressure:#?}");
    }
    let events = all_events(stack.core.port).await;
    assert!(
        !events.iter().any(|e| e.r#type == "cron.job_failed"),
        "{events:?}"
    );
    let job_now = expect_data(
        stack.get(&format!("/api/v1/cron/jobs/{job}"), &owner).await,
        200,
    )
    .await;
    assert_eq!(job_now["status"], "enabled", "{job_now}");
    assert_eq!(job_now["state"]["consecutiveErrors"], 0, "{job_now}");
    assert_eq!(job_now["state"]["lastStatus"], "skipped", "{job_now}");

    // Memory freed: the next runs are ok again.
    let _: () = redis::cmd("DEL")
        .arg(&fillers)
        .query_async(&mut conn)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let after = runs(&stack, &owner, &job).await;
    assert_eq!(after.last().unwrap()["status"], "ok", "{after:#?}");
}
