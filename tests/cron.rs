//! Cron jobs end to end: each due time fires exactly once across replicas that are killed and
//! restarted, missed and overlapping runs follow the documented policies, bad schedules and
//! payloads are explained, and jobs belong to their key.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use openclaw_gateway::proto::event_service_client::EventServiceClient;
use openclaw_gateway::proto::{Event, SubscribeRequest};
use serde_json::{Value, json};
use support::{Behaviour, CoreOptions, FakeUpstream, Stack, all_events, expect_data, expect_error};

/// The minimum interval, which the multi-replica test runs at.
const EVERY_MS: i64 = 1000;

async fn create_job(http: &reqwest::Client, base: &str, key: &str, body: Value) -> Value {
    let response =
        support::post_with_key(http, format!("{base}/api/v1/cron/jobs"), key, &body).await;
    expect_data(response, 201).await
}

async fn runs(http: &reqwest::Client, base: &str, key: &str, job: &str) -> Vec<Value> {
    let response = support::get_with_key(
        http,
        format!("{base}/api/v1/cron/jobs/{job}/runs?pageSize=500"),
        key,
    )
    .await;
    let data = expect_data(response, 200).await;
    data["runs"].as_array().unwrap().clone()
}

/// The scheduled Unix ms of a run, from its id (`<job>:<ms>`).
fn scheduled_ms(run: &Value) -> i64 {
    run["id"]
        .as_str()
        .and_then(|id| id.rsplit_once(':'))
        .and_then(|(_, ms)| ms.parse().ok())
        .expect("run id <job>:<ms>")
}

/// Runs by scheduled time; panics on a duplicate due time.
fn by_due_time(runs: &[Value]) -> BTreeMap<i64, Value> {
    let mut out = BTreeMap::new();
    for run in runs {
        let ms = scheduled_ms(run);
        assert!(
            out.insert(ms, run.clone()).is_none(),
            "two runs for due time {ms}: {runs:#?}"
        );
    }
    out
}

/// Every due time from the first to the last recorded has exactly one record.
fn assert_contiguous(runs: &BTreeMap<i64, Value>, every: i64) {
    let times: Vec<i64> = runs.keys().copied().collect();
    for pair in times.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            every,
            "a due time is missing between {} and {}: {runs:#?}",
            pair[0],
            pair[1]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_every_second_job_fires_once_per_due_time_while_replicas_are_killed_and_restarted() {
    let redis = support::start_redis();
    let dir = tempfile::tempdir().unwrap();
    let options = CoreOptions {
        redis_url: Some(support::redis_url(&redis)),
        data_dir: Some(dir.path().to_path_buf()),
        env: vec![("OPENCLAW_CRON_LEASE_MS".into(), "1500".into())],
        ..Default::default()
    };
    let mut cores: Vec<support::Process> = (0..3).map(|_| support::spawn_core(&options)).collect();
    let ports: Vec<u16> = cores.iter().map(|c| c.port).collect();
    let edge = support::spawn_edge(&cores.iter().collect::<Vec<_>>());
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", edge.port);
    let key = support::create_key(&http, &base, "cron-replicas", json!({})).await;
    let job = create_job(
        &http,
        &base,
        &key,
        json!({"name": "heartbeat", "schedule": {"kind": "every", "everyMs": EVERY_MS}, "payload": {"kind": "systemEvent", "text": "tick"}}),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();

    // Kill one replica at a time with SIGKILL and bring it back on its port, for ~14 s.
    let started = Instant::now();
    let mut victim = 0;
    while started.elapsed() < Duration::from_secs(14) {
        tokio::time::sleep(Duration::from_millis(1300)).await;
        cores[victim].kill();
        tokio::time::sleep(Duration::from_millis(900)).await;
        cores[victim] = support::spawn_core_at(&options, ports[victim]);
        victim = (victim + 1) % cores.len();
    }
    // Let the last lease expire and be taken over, then stop the job.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let paused = http
        .patch(format!("{base}/api/v1/cron/jobs/{id}"))
        .bearer_auth(&key)
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    expect_data(paused, 200).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let history = by_due_time(&runs(&http, &base, &key, &id).await);
    assert!(
        history.len() >= 15,
        "about 18 due times passed: {history:#?}"
    );
    assert_contiguous(&history, EVERY_MS);
    let ok: HashSet<String> = history
        .values()
        .filter(|run| run["status"] == "ok")
        .map(|run| run["id"].as_str().unwrap().to_string())
        .collect();
    for run in history.values() {
        // A replica was always up: nothing was missed for downtime. A due time may only be skipped
        // by the catch-up policy when the scheduler fell behind by more than a whole period.
        match run["status"].as_str().unwrap() {
            "ok" => assert_eq!(run["trigger"], "schedule"),
            "skipped" => assert!(
                run["error"].as_str().unwrap().starts_with("missed"),
                "{run}"
            ),
            other => panic!("run in state {other}: {run}"),
        }
    }
    assert!(
        ok.len() * 10 >= history.len() * 9,
        "at least 90% of due times ran: {history:#?}"
    );
    let replicas: HashSet<&str> = history
        .values()
        .filter_map(|run| run["replica"].as_str())
        .collect();
    assert!(
        replicas.len() >= 3,
        "the replicas shared the work: {replicas:?}"
    );

    // Exactly one event per run that ran, none for any other.
    let events = all_events(cores[0].port).await;
    let mut per_run: HashMap<String, usize> = HashMap::new();
    for event in events.iter().filter(|e| e.r#type == "system.event") {
        assert_eq!(event.text, "tick");
        assert_eq!(event.job_id, id);
        *per_run.entry(event.run_id.clone()).or_default() += 1;
    }
    for (run, count) in &per_run {
        assert_eq!(*count, 1, "run {run} published {count} events");
    }
    assert_eq!(per_run.keys().cloned().collect::<HashSet<_>>(), ok);
}

#[tokio::test]
async fn after_downtime_the_latest_missed_due_time_runs_once_and_older_ones_are_skipped() {
    let redis = support::start_redis();
    let dir = tempfile::tempdir().unwrap();
    let options = CoreOptions {
        redis_url: Some(support::redis_url(&redis)),
        data_dir: Some(dir.path().to_path_buf()),
        env: vec![("OPENCLAW_CRON_LEASE_MS".into(), "1000".into())],
        ..Default::default()
    };
    let mut core = support::spawn_core(&options);
    let port = core.port;
    let edge = support::spawn_edge(&[&core]);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", edge.port);
    let key = support::create_key(&http, &base, "catch-up", json!({})).await;
    let job = create_job(
        &http,
        &base,
        &key,
        json!({"name": "catch-up", "schedule": {"kind": "every", "everyMs": EVERY_MS}, "payload": {"kind": "systemEvent", "text": "tick"}}),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    core.kill();
    let down_at = chrono::Utc::now().timestamp_millis();
    tokio::time::sleep(Duration::from_millis(4000)).await;
    let _core = support::spawn_core_at(&options, port);
    let up_at = chrono::Utc::now().timestamp_millis();
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let history = by_due_time(&runs(&http, &base, &key, &id).await);
    assert_contiguous(&history, EVERY_MS);
    let skipped: Vec<i64> = history
        .iter()
        .filter(|(_, run)| run["status"] == "skipped")
        .map(|(ms, _)| *ms)
        .collect();
    assert!(
        skipped.len() >= 2,
        "the due times of the downtime were skipped: {history:#?}"
    );
    for ms in &skipped {
        assert!(
            *ms >= down_at - EVERY_MS && *ms <= up_at,
            "{ms} skipped outside the downtime"
        );
        assert!(
            history[ms]["error"]
                .as_str()
                .unwrap()
                .contains("catch-up policy")
        );
    }
    // The due time after the last skipped one is the catch-up run, and it ran.
    let last_skipped = *skipped.last().unwrap();
    assert_eq!(
        history[&(last_skipped + EVERY_MS)]["status"],
        "ok",
        "{history:#?}"
    );
    assert!(history.values().filter(|r| r["status"] == "ok").count() >= 4);
}

#[tokio::test]
async fn a_due_time_that_comes_while_the_previous_run_is_going_is_skipped() {
    let stack = Stack::start().await;
    stack
        .upstream
        .behave(Behaviour::Stall(Duration::from_millis(2600)));
    let key = stack.create_key("overlap").await;
    let job = create_job(
        &stack.http,
        &stack.url(""),
        &key,
        json!({"name": "slow-agent", "schedule": {"kind": "every", "everyMs": 1000}, "payload": {"kind": "agentTurn", "message": "summarize the day"}}),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(6500)).await;
    let history = by_due_time(&runs(&stack.http, &stack.url(""), &key, &id).await);
    assert_contiguous(&history, 1000);
    let overlapped = history
        .values()
        .filter(|r| r["status"] == "skipped")
        .inspect(|r| {
            assert!(
                r["error"].as_str().unwrap().contains("overlap policy"),
                "{r}"
            )
        })
        .count();
    assert!(overlapped >= 2, "{history:#?}");
    let ok: Vec<&Value> = history.values().filter(|r| r["status"] == "ok").collect();
    assert!(!ok.is_empty(), "{history:#?}");
    // An agent turn runs in a fresh session of the job's owner, billed with the model's usage.
    let run = ok[0];
    assert_eq!(run["usage"]["promptTokens"], 10);
    assert_eq!(run["usage"]["completionTokens"], 5);
    let session = run["sessionId"].as_str().unwrap();
    let messages = stack
        .get(&format!("/api/v1/sessions/{session}/messages"), &key)
        .await;
    let messages = expect_data(messages, 200).await;
    assert_eq!(messages["messages"][0]["content"], "summarize the day");
    assert_eq!(
        messages["messages"][1]["content"],
        "echo: summarize the day"
    );
}

#[tokio::test]
async fn a_failing_job_backs_off_and_announces_its_failure() {
    let stack = Stack::start().await;
    stack.upstream.behave(Behaviour::Fail {
        status: 500,
        message: "upstream broke".into(),
    });
    let key = stack.create_key("failing").await;
    let job = create_job(
        &stack.http,
        &stack.url(""),
        &key,
        json!({"name": "doomed", "schedule": {"kind": "every", "everyMs": 1000}, "payload": {"kind": "agentTurn", "message": "hi", "sessionId": "cron-doomed"}}),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let response = stack.get(&format!("/api/v1/cron/jobs/{id}"), &key).await;
    let job = expect_data(response, 200).await;
    assert_eq!(job["state"]["lastStatus"], "error", "{job}");
    assert_eq!(
        job["state"]["consecutiveErrors"], 1,
        "one run, then 30 s of backoff: {job}"
    );
    assert!(
        job["state"]["lastError"]
            .as_str()
            .unwrap()
            .contains("UPSTREAM_ERROR"),
        "{job}"
    );
    let next = chrono::DateTime::parse_from_rfc3339(job["nextRun"].as_str().unwrap()).unwrap();
    let wait = next.signed_duration_since(chrono::Utc::now());
    assert!(
        wait > chrono::Duration::seconds(25),
        "backed off 30 s: {job}"
    );
    let history = by_due_time(&runs(&stack.http, &stack.url(""), &key, &id).await);
    let errors = history.values().filter(|r| r["status"] == "error").count();
    assert_eq!(errors, 1, "{history:#?}");
    assert!(
        history
            .values()
            .filter(|r| r["status"] == "skipped")
            .all(|r| r["error"].as_str().unwrap().contains("backoff"))
    );

    let events = all_events(stack.core.port).await;
    let failed: Vec<&Event> = events
        .iter()
        .filter(|e| e.r#type == "cron.job_failed")
        .collect();
    assert_eq!(failed.len(), 1, "{events:#?}");
    assert!(failed[0].text.contains("doomed"));
}

#[tokio::test]
async fn bad_schedules_and_payloads_are_invalid_requests_naming_the_field() {
    let stack = Stack::embedded().await;
    let key = stack.create_key("validation").await;
    let system = json!({"kind": "systemEvent", "text": "x"});
    let cases = [
        (json!({"name": "a", "payload": system}), "schedule"),
        (
            json!({"name": "a", "schedule": {"kind": "hourly"}, "payload": system}),
            "schedule.kind",
        ),
        (
            json!({"name": "a", "schedule": {"kind": "every"}, "payload": system}),
            "schedule.everyMs",
        ),
        (
            json!({"name": "a", "schedule": {"kind": "every", "everyMs": 999}, "payload": system}),
            "schedule.everyMs",
        ),
        (
            json!({"name": "a", "schedule": {"kind": "every", "everyMs": "86400000"}, "payload": system}),
            "schedule.everyMs",
        ),
        (
            json!({"name": "a", "schedule": {"kind": "every", "everyMs": 1000, "anchorMs": -5}, "payload": system}),
            "schedule.anchorMs",
        ),
        (
            json!({"name": "a", "schedule": {"kind": "at", "at": "next tuesday"}, "payload": system}),
            "schedule.at",
        ),
        (
            json!({"name": "a", "schedule": {"kind": "at", "at": "2001-01-01T00:00:00Z"}, "payload": system}),
            "schedule.at",
        ),
        (
            json!({"name": "a", "schedule": {"kind": "cron", "expr": "* * *"}, "payload": system}),
            "schedule.expr",
        ),
        (
            json!({"name": "a", "schedule": {"kind": "cron", "expr": "0 25 * * *"}, "payload": system}),
            "schedule.expr",
        ),
        (
            json!({"name": "a", "schedule": {"kind": "cron", "expr": "0 9 * * *", "tz": "Europe/Atlantis"}, "payload": system}),
            "schedule.tz",
        ),
        (
            json!({"name": "a", "schedule": {"kind": "every", "everyMs": 60000}}),
            "payload",
        ),
        (
            json!({"name": "a", "schedule": {"kind": "every", "everyMs": 60000}, "payload": {"kind": "email"}}),
            "payload.kind",
        ),
        (
            json!({"name": "a", "schedule": {"kind": "every", "everyMs": 60000}, "payload": {"kind": "systemEvent"}}),
            "payload.text",
        ),
        (
            json!({"name": "a", "schedule": {"kind": "every", "everyMs": 60000}, "payload": {"kind": "agentTurn", "message": " "}}),
            "payload.message",
        ),
        (
            json!({"name": "a", "schedule": {"kind": "every", "everyMs": 60000}, "payload": {"kind": "agentTurn", "message": "hi", "model": "gpt-9"}}),
            "payload.model",
        ),
        (
            json!({"name": "a", "schedule": {"kind": "every", "everyMs": 60000}, "payload": {"kind": "agentTurn", "message": "hi", "sessionId": "no spaces"}}),
            "payload.sessionId",
        ),
        (
            json!({"schedule": {"kind": "every", "everyMs": 60000}, "payload": system}),
            "name",
        ),
    ];
    for (body, field) in cases {
        let response = stack.post("/api/v1/cron/jobs", &key, &body).await;
        let error = expect_error(response, 400, "INVALID_REQUEST").await;
        let details = error["details"].as_str().unwrap();
        assert!(details.contains(&format!("'{field}'")), "{body}: {details}");
    }
}

#[tokio::test]
async fn jobs_can_be_read_changed_run_now_and_deleted_by_their_key_only() {
    let stack = Stack::start().await;
    let alice = stack.create_key("alice").await;
    let bob = stack.create_key("bob").await;
    let job = create_job(
        &stack.http,
        &stack.url(""),
        &alice,
        json!({"name": "weekday-report", "schedule": {"kind": "cron", "expr": "0 9 * * 1-5", "tz": "America/New_York"}, "payload": {"kind": "systemEvent", "text": "report"}}),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("job_"));
    assert_eq!(job["status"], "enabled");
    assert_eq!(
        job["schedule"],
        json!({"kind": "cron", "expr": "0 9 * * 1-5", "tz": "America/New_York"})
    );
    let next = job["nextRun"].as_str().unwrap();
    assert!(
        next.ends_with(":00:00Z") && (next.contains("T13:") || next.contains("T14:")),
        "{next}"
    );
    assert_eq!(job["state"]["consecutiveErrors"], 0);

    let url = stack.url(&format!("/api/v1/cron/jobs/{id}"));
    for request in [
        stack.http.get(&url),
        stack.http.delete(&url),
        stack.http.post(format!("{url}/run")),
        stack.http.get(format!("{url}/runs")),
    ] {
        expect_error(
            request.bearer_auth(&bob).send().await.unwrap(),
            404,
            "NOT_FOUND",
        )
        .await;
    }
    let bobs = stack.get("/api/v1/cron/jobs", &bob).await;
    assert_eq!(expect_data(bobs, 200).await["jobs"], json!([]));

    // Disable, rename, re-enable with a new schedule.
    let changed = stack
        .http
        .patch(&url)
        .bearer_auth(&alice)
        .json(&json!({"enabled": false, "name": "paused-report"}))
        .send()
        .await
        .unwrap();
    let changed = expect_data(changed, 200).await;
    assert_eq!(changed["status"], "disabled");
    assert_eq!(changed["name"], "paused-report");
    assert!(changed["nextRun"].is_null());
    let changed = stack
        .http
        .patch(&url)
        .bearer_auth(&alice)
        .json(&json!({"enabled": true, "schedule": {"kind": "every", "everyMs": 3600000}}))
        .send()
        .await
        .unwrap();
    let changed = expect_data(changed, 200).await;
    assert_eq!(changed["status"], "enabled");
    assert!(changed["nextRun"].is_string());
    assert_eq!(changed["schedule"]["everyMs"], 3600000);

    // Run now: the run is recorded with its trigger, outside the schedule.
    let started = stack
        .http
        .post(format!("{url}/run"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    let run = expect_data(started, 202).await;
    assert_eq!(run["status"], "running");
    assert_eq!(run["trigger"], "manual");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let history = runs(&stack.http, &stack.url(""), &alice, &id).await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["status"], "ok");
    assert!(history[0]["durationMs"].is_i64());
    let job = expect_data(support::get_with_key(&stack.http, &url, &alice).await, 200).await;
    assert_eq!(job["state"]["lastStatus"], "ok");
    assert!(job["state"]["lastRunAt"].as_str().unwrap().ends_with('Z'));

    let deleted = stack
        .http
        .delete(&url)
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(expect_data(deleted, 200).await["deleted"], true);
    expect_error(
        support::get_with_key(&stack.http, &url, &alice).await,
        404,
        "NOT_FOUND",
    )
    .await;
}

#[tokio::test]
async fn a_one_shot_job_runs_once_then_is_disabled_or_deleted() {
    let stack = Stack::embedded().await;
    let key = stack.create_key("once").await;
    let soon = (chrono::Utc::now() + chrono::Duration::milliseconds(800))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let keep = create_job(
        &stack.http,
        &stack.url(""),
        &key,
        json!({"name": "once", "schedule": {"kind": "at", "at": soon}, "payload": {"kind": "systemEvent", "text": "once"}}),
    )
    .await;
    let gone = create_job(
        &stack.http,
        &stack.url(""),
        &key,
        json!({"name": "once-and-gone", "schedule": {"kind": "at", "at": soon, "deleteAfterRun": true}, "payload": {"kind": "systemEvent", "text": "bye"}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let url = |job: &Value| {
        stack.url(&format!(
            "/api/v1/cron/jobs/{}",
            job["id"].as_str().unwrap()
        ))
    };
    let kept = expect_data(
        support::get_with_key(&stack.http, url(&keep), &key).await,
        200,
    )
    .await;
    assert_eq!(kept["status"], "disabled");
    assert_eq!(kept["state"]["lastStatus"], "ok");
    assert!(kept["nextRun"].is_null());
    let history = runs(
        &stack.http,
        &stack.url(""),
        &key,
        keep["id"].as_str().unwrap(),
    )
    .await;
    assert_eq!(history.len(), 1);
    expect_error(
        support::get_with_key(&stack.http, url(&gone), &key).await,
        404,
        "NOT_FOUND",
    )
    .await;
}

/// Reads server-sent events until `want` of type `kind` arrived (or `within` passed).
async fn sse_events(
    response: reqwest::Response,
    kind: &str,
    want: usize,
    within: Duration,
) -> Vec<(String, Value)> {
    let mut response = response;
    let mut buffer = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while out.len() < want {
        let chunk = match tokio::time::timeout_at(deadline, response.chunk()).await {
            Ok(Ok(Some(chunk))) => chunk,
            _ => break,
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let message: String = buffer.drain(..end + 2).collect();
            let field = |name: &str| {
                message.lines().find_map(|l| {
                    l.strip_prefix(&format!("{name}:"))
                        .map(|v| v.trim().to_string())
                })
            };
            if field("event").as_deref() == Some(kind)
                && let (Some(id), Some(data)) = (field("id"), field("data"))
            {
                out.push((id, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    out
}

#[tokio::test]
async fn system_events_stream_over_sse_and_resume_from_the_last_event_id() {
    let stack = Stack::start().await;
    let alice = stack.create_key("alice").await;
    let bob = stack.create_key("bob").await;
    let subscribe = |key: &str, last: Option<&str>| {
        let mut request = stack.http.get(stack.url("/api/v1/events")).bearer_auth(key);
        if let Some(last) = last {
            request = request.header("Last-Event-ID", last);
        }
        request.send()
    };
    let alice_stream = subscribe(&alice, None).await.unwrap();
    assert_eq!(alice_stream.status(), 200);
    assert!(
        alice_stream.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let bob_stream = subscribe(&bob, None).await.unwrap();
    create_job(
        &stack.http,
        &stack.url(""),
        &alice,
        json!({"name": "pulse", "schedule": {"kind": "every", "everyMs": 1000}, "payload": {"kind": "systemEvent", "text": "pulse"}}),
    )
    .await;
    let first = sse_events(alice_stream, "system.event", 2, Duration::from_secs(5)).await;
    assert_eq!(first.len(), 2, "{first:?}");
    assert_eq!(first[0].1["text"], "pulse");
    assert_eq!(first[0].1["id"], first[0].0);
    assert!(first[0].1["jobId"].as_str().unwrap().starts_with("job_"));
    // Another key's subscriber sees none of alice's events.
    assert!(
        sse_events(bob_stream, "system.event", 1, Duration::from_millis(1500))
            .await
            .is_empty()
    );

    // Resuming after the first event replays the second, then continues.
    let resumed = subscribe(&alice, Some(&first[0].0)).await.unwrap();
    let replay = sse_events(resumed, "system.event", 2, Duration::from_secs(5)).await;
    assert_eq!(replay[0].0, first[1].0);
    assert_ne!(replay[1].0, first[1].0);

    let bad = stack.get("/api/v1/events?after=yesterday", &alice).await;
    expect_error(bad, 400, "INVALID_REQUEST").await;
}

#[tokio::test]
async fn revoking_a_key_is_announced_to_internal_subscribers() {
    let stack = Stack::start().await;
    let key = stack.create_key("short-lived").await;
    let keys = expect_data(
        stack.get("/api/v1/keys", support::INTERNAL_TOKEN).await,
        200,
    )
    .await;
    let _ = key;
    let id = keys["keys"][0]["id"].as_str().unwrap().to_string();
    let revoked = stack
        .http
        .delete(stack.url(&format!("/api/v1/keys/{id}")))
        .bearer_auth(support::INTERNAL_TOKEN)
        .send()
        .await
        .unwrap();
    expect_data(revoked, 200).await;
    let events = all_events(stack.core.port).await;
    assert!(
        events
            .iter()
            .any(|e| e.r#type == "key.revoked" && e.key_id == id),
        "{events:#?}"
    );
}

#[tokio::test]
async fn the_embedded_store_runs_jobs_and_keeps_them_across_a_restart() {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let options = CoreOptions {
        upstream: Some(upstream.base_url()),
        data_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let mut core = support::spawn_core(&options);
    let port = core.port;
    let edge = support::spawn_edge(&[&core]);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", edge.port);
    let key = support::create_key(&http, &base, "embedded", json!({})).await;
    let job = create_job(
        &http,
        &base,
        &key,
        json!({"name": "local", "schedule": {"kind": "every", "everyMs": 1000}, "payload": {"kind": "systemEvent", "text": "local"}}),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(2300)).await;
    core.kill();
    let _core = support::spawn_core_at(&options, port);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let history = by_due_time(&runs(&http, &base, &key, &id).await);
    assert_contiguous(&history, 1000);
    assert!(
        history.values().filter(|r| r["status"] == "ok").count() >= 3,
        "{history:#?}"
    );
    let listed = expect_data(
        http.get(format!("{base}/api/v1/cron/jobs"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(listed["jobs"][0]["id"], id.as_str());
}

#[tokio::test]
async fn a_draining_replica_announces_it_and_ends_its_event_streams() {
    let redis = support::start_redis();
    let dir = tempfile::tempdir().unwrap();
    let options = CoreOptions {
        redis_url: Some(support::redis_url(&redis)),
        data_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let leaving = support::spawn_core(&options);
    let staying = support::spawn_core(&options);
    let subscribe = |port: u16| async move {
        let mut client = EventServiceClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .unwrap();
        let mut request = tonic::Request::new(SubscribeRequest::default());
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", support::INTERNAL_TOKEN)
                .parse()
                .unwrap(),
        );
        client.subscribe(request).await.unwrap().into_inner()
    };
    let mut on_leaving = subscribe(leaving.port).await;
    let mut on_staying = subscribe(staying.port).await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &leaving.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let heard = tokio::time::timeout(Duration::from_secs(5), on_staying.message())
        .await
        .expect("the other replica relays the news")
        .unwrap()
        .unwrap();
    assert_eq!(heard.r#type, "replica.draining");
    assert_eq!(heard.replica, format!("core-{}", leaving.port));
    // The draining replica's own subscribers get the news, then the end of the stream.
    let mut last = None;
    while let Ok(Ok(Some(event))) =
        tokio::time::timeout(Duration::from_secs(5), on_leaving.message()).await
    {
        last = Some(event);
    }
    assert_eq!(last.map(|e| e.r#type).as_deref(), Some("replica.draining"));
}
