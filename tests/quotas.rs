//! Per-key quotas on what a key keeps stored (docs/quotas.md): each quota at its limit, one
//! over (403 QUOTA_EXCEEDED naming the quota, its value and the usage, and nothing stored
//! changed), a PATCH of the key's quotas taking effect, the same on the embedded store, the
//! gRPC status, and creates racing on two cores over one real Redis for the last slot.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{CoreOptions, FakeUpstream, INTERNAL_TOKEN, Stack, expect_data, expect_error};

/// A key with `quotas`; returns its secret and id.
async fn key_with(http: &reqwest::Client, base: &str, quotas: Value) -> (String, String) {
    let response = http
        .post(format!("{base}/api/v1/keys"))
        .bearer_auth(INTERNAL_TOKEN)
        .json(&json!({"name": "quota test", "quotas": quotas}))
        .send()
        .await
        .unwrap();
    let data = expect_data(response, 201).await;
    (
        data["key"].as_str().unwrap().to_string(),
        data["id"].as_str().unwrap().to_string(),
    )
}

async fn patch_quotas(http: &reqwest::Client, base: &str, id: &str, quotas: Value) -> Value {
    let response = http
        .patch(format!("{base}/api/v1/keys/{id}"))
        .bearer_auth(INTERNAL_TOKEN)
        .json(&json!({"quotas": quotas}))
        .send()
        .await
        .unwrap();
    expect_data(response, 200).await
}

/// Asserts a 403 QUOTA_EXCEEDED naming `quota`, its `limit` and `used`; returns the error.
async fn expect_quota(response: reqwest::Response, quota: &str, limit: u64, used: u64) -> Value {
    let error = expect_error(response, 403, "QUOTA_EXCEEDED").await;
    assert_eq!(
        error["quota"],
        json!({"name": quota, "limit": limit, "used": used}),
        "{error}"
    );
    let details = error["details"].as_str().unwrap();
    assert!(
        details.contains(quota),
        "the details name the quota: {details}"
    );
    assert!(
        details.contains(&limit.to_string()),
        "the details name its value: {details}"
    );
    error
}

async fn create_session(stack: &Stack, key: &str, content: &str) -> reqwest::Response {
    stack
        .post(
            "/api/v1/sessions",
            key,
            &json!({"messages": [{"role": "user", "content": content}]}),
        )
        .await
}

async fn session_ids(stack: &Stack, key: &str) -> Vec<String> {
    let data = expect_data(stack.get("/api/v1/sessions?pageSize=200", key).await, 200).await;
    let mut ids: Vec<String> = data["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sessionId"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

async fn history(stack: &Stack, key: &str, id: &str) -> Vec<String> {
    let data = expect_data(
        stack
            .get(
                &format!("/api/v1/sessions/{id}/messages?pageSize=1000"),
                key,
            )
            .await,
        200,
    )
    .await;
    data["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect()
}

async fn status_quotas(stack: &Stack, key: &str) -> Value {
    let data = expect_data(stack.get("/api/v1/system/status", key).await, 200).await;
    data["resources"]["quotas"].clone()
}

async fn send(stack: &Stack, key: &str, id: &str, content: &str) -> reqwest::Response {
    stack
        .post(
            &format!("/api/v1/sessions/{id}/messages"),
            key,
            &json!({"message": {"role": "user", "content": content}}),
        )
        .await
}

/// maxSessions: the last slot is taken, one more is refused and stores nothing; deleting a
/// session frees a slot; a PATCH raising the quota applies at once; status shows the usage.
async fn sessions_quota(stack: &Stack) {
    let base = stack.url("");
    let (key, id) = key_with(&stack.http, &base, json!({"maxSessions": 2})).await;
    let first = expect_data(create_session(stack, &key, "one").await, 201).await;
    expect_data(create_session(stack, &key, "two").await, 201).await;
    let before = session_ids(stack, &key).await;
    assert_eq!(before.len(), 2);
    let sent_upstream = stack.upstream.received().len();

    let refused = expect_quota(
        create_session(stack, &key, "three").await,
        "maxSessions",
        2,
        2,
    )
    .await;
    assert!(
        refused["details"]
            .as_str()
            .unwrap()
            .contains("delete sessions"),
        "the details say what to do: {refused}"
    );
    // A named session too.
    let named = stack
        .post(
            "/api/v1/sessions",
            &key,
            &json!({"messages": [{"role": "user", "content": "x"}], "context": {"sessionId": "named-one"}}),
        )
        .await;
    expect_quota(named, "maxSessions", 2, 2).await;
    assert_eq!(session_ids(stack, &key).await, before, "nothing stored");
    assert!(
        stack.upstream.received().len() <= sent_upstream + 2,
        "at most the refused creates' own calls"
    );
    // Continuing an existing session is no new session.
    let existing = first["sessionId"].as_str().unwrap();
    expect_data(send(stack, &key, existing, "more").await, 200).await;

    let quotas = status_quotas(stack, &key).await;
    assert_eq!(quotas["maxSessions"]["limit"], 2, "{quotas}");
    assert_eq!(quotas["maxSessions"]["used"], 2, "{quotas}");
    assert_eq!(quotas["maxSessions"]["per"], "key", "{quotas}");
    assert_eq!(
        quotas["maxMessagesPerSession"]["used"],
        Value::Null,
        "{quotas}"
    );

    // A deleted session frees its slot.
    let deleted = stack
        .http
        .delete(stack.url(&format!("/api/v1/sessions/{existing}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success());
    expect_data(create_session(stack, &key, "three").await, 201).await;
    expect_quota(
        create_session(stack, &key, "four").await,
        "maxSessions",
        2,
        2,
    )
    .await;

    // A raised quota applies to the next create.
    let patched = patch_quotas(&stack.http, &base, &id, json!({"maxSessions": 3})).await;
    assert_eq!(patched["quotas"]["maxSessions"], 3, "{patched}");
    expect_data(create_session(stack, &key, "four").await, 201).await;
    expect_quota(
        create_session(stack, &key, "five").await,
        "maxSessions",
        3,
        3,
    )
    .await;
    assert_eq!(session_ids(stack, &key).await.len(), 3);
}

/// maxMessagesPerSession and maxSessionBytes: a turn that would pass either is refused whole,
/// the history stays as it was, and the session's lock is free for the next turn at once.
async fn per_session_quotas(stack: &Stack) {
    let base = stack.url("");
    // The fake model answers "echo: <message>".
    let (key, id) = key_with(&stack.http, &base, json!({"maxMessagesPerSession": 4})).await;
    let created = expect_data(create_session(stack, &key, "hello").await, 201).await;
    let session = created["sessionId"].as_str().unwrap().to_string();
    expect_data(send(stack, &key, &session, "again").await, 200).await;
    let full = history(stack, &key, &session).await;
    assert_eq!(full.len(), 4);
    let refused = expect_quota(
        send(stack, &key, &session, "one more").await,
        "maxMessagesPerSession",
        4,
        4,
    )
    .await;
    assert!(
        refused["details"].as_str().unwrap().contains("new session"),
        "{refused}"
    );
    assert_eq!(history(stack, &key, &session).await, full, "nothing stored");
    let quotas = status_quotas(stack, &key).await;
    assert_eq!(quotas["maxMessagesPerSession"]["limit"], 4, "{quotas}");
    // The refused turn released the session's lock: a raised quota lets the next turn in now.
    patch_quotas(&stack.http, &base, &id, json!({"maxMessagesPerSession": 6})).await;
    expect_data(send(stack, &key, &session, "one more").await, 200).await;
    assert_eq!(history(stack, &key, &session).await.len(), 6);
    // First messages over the quota: refused before anything is stored.
    let many = stack
        .post(
            "/api/v1/sessions",
            &key,
            &json!({"messages": (0..7).map(|i| json!({"role": "user", "content": format!("m{i}")})).collect::<Vec<_>>()}),
        )
        .await;
    expect_quota(many, "maxMessagesPerSession", 6, 0).await;
    assert_eq!(session_ids(stack, &key).await, vec![session.clone()]);

    // Bytes: "xxxxx" + "echo: xxxxx" is 16 bytes.
    let (key, _) = key_with(&stack.http, &base, json!({"maxSessionBytes": 30})).await;
    let created = expect_data(create_session(stack, &key, "xxxxx").await, 201).await;
    let session = created["sessionId"].as_str().unwrap().to_string();
    // 5 + 11 more would make 32.
    expect_quota(
        send(stack, &key, &session, "yyyyy").await,
        "maxSessionBytes",
        30,
        16,
    )
    .await;
    assert_eq!(
        history(stack, &key, &session).await,
        ["xxxxx", "echo: xxxxx"],
        "nothing stored"
    );
    // 1 + 7 more makes 24: fits.
    expect_data(send(stack, &key, &session, "z").await, 200).await;
    expect_quota(
        send(stack, &key, &session, "zzz").await,
        "maxSessionBytes",
        30,
        24,
    )
    .await;
    assert_eq!(history(stack, &key, &session).await.len(), 4);
}

/// maxMessageBytes: a message over it is refused before anything is stored or sent, wherever
/// it enters (a new session, a send, a cron agentTurn), naming the message.
async fn message_bytes_quota(stack: &Stack) {
    let base = stack.url("");
    let (key, _) = key_with(&stack.http, &base, json!({"maxMessageBytes": 8})).await;
    let upstream_before = stack.upstream.received().len();
    let long = stack
        .post(
            "/api/v1/sessions",
            &key,
            &json!({"messages": [{"role": "system", "content": "short"}, {"role": "user", "content": "ünïcödé!"}]}),
        )
        .await;
    // "ünïcödé!" is 8 characters but 12 bytes.
    let error = expect_quota(long, "maxMessageBytes", 8, 12).await;
    assert!(
        error["details"].as_str().unwrap().contains("messages[1]"),
        "names the message: {error}"
    );
    assert!(session_ids(stack, &key).await.is_empty(), "nothing stored");
    assert_eq!(
        stack.upstream.received().len(),
        upstream_before,
        "nothing sent"
    );

    let created = expect_data(create_session(stack, &key, "12345678").await, 201).await;
    let session = created["sessionId"].as_str().unwrap().to_string();
    let before = history(stack, &key, &session).await;
    let error = expect_quota(
        send(stack, &key, &session, "123456789").await,
        "maxMessageBytes",
        8,
        9,
    )
    .await;
    assert!(
        error["details"]
            .as_str()
            .unwrap()
            .contains("message.content"),
        "{error}"
    );
    assert_eq!(history(stack, &key, &session).await, before);

    let job = stack
        .post(
            "/api/v1/cron/jobs",
            &key,
            &json!({"name": "long", "schedule": {"kind": "every", "everyMs": 60000}, "payload": {"kind": "agentTurn", "message": "123456789"}}),
        )
        .await;
    let error = expect_quota(job, "maxMessageBytes", 8, 9).await;
    assert!(
        error["details"]
            .as_str()
            .unwrap()
            .contains("payload.message"),
        "{error}"
    );
}

async fn job_count(stack: &Stack, key: &str) -> usize {
    let data = expect_data(stack.get("/api/v1/cron/jobs", key).await, 200).await;
    data["jobs"].as_array().unwrap().len()
}

fn job(name: &str) -> Value {
    json!({"name": name, "schedule": {"kind": "every", "everyMs": 3_600_000}, "payload": {"kind": "systemEvent", "text": "tick"}})
}

/// maxCronJobs: the last slot is taken, one more is refused and stores nothing.
async fn cron_jobs_quota(stack: &Stack) {
    let base = stack.url("");
    let (key, id) = key_with(&stack.http, &base, json!({"maxCronJobs": 1})).await;
    expect_data(stack.post("/api/v1/cron/jobs", &key, &job("a")).await, 201).await;
    let refused = expect_quota(
        stack.post("/api/v1/cron/jobs", &key, &job("b")).await,
        "maxCronJobs",
        1,
        1,
    )
    .await;
    assert!(
        refused["details"].as_str().unwrap().contains("delete jobs"),
        "{refused}"
    );
    assert_eq!(job_count(stack, &key).await, 1, "nothing stored");
    let quotas = status_quotas(stack, &key).await;
    assert_eq!(
        quotas["maxCronJobs"],
        json!({"limit": 1, "used": 1, "unit": "jobs", "per": "key"})
    );
    patch_quotas(&stack.http, &base, &id, json!({"maxCronJobs": 2})).await;
    expect_data(stack.post("/api/v1/cron/jobs", &key, &job("b")).await, 201).await;
    assert_eq!(job_count(stack, &key).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_quota_on_redis() {
    let stack = Stack::start().await;
    sessions_quota(&stack).await;
    per_session_quotas(&stack).await;
    message_bytes_quota(&stack).await;
    cron_jobs_quota(&stack).await;
    // Every refusal was counted, by quota.
    let metrics = reqwest::get(format!(
        "http://127.0.0.1:{}/metrics",
        stack.core.metrics_port
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    for quota in [
        "maxSessions",
        "maxMessagesPerSession",
        "maxSessionBytes",
        "maxMessageBytes",
        "maxCronJobs",
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("openclaw_quota_refusals_total")
                    && l.contains(&format!("quota=\"{quota}\""))),
            "refusals of {quota} counted"
        );
    }
    for quota in ["maxSessions", "maxCronJobs"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("openclaw_quota_usage_ratio")
                    && l.contains(&format!("quota=\"{quota}\""))),
            "how full {quota} is, observed at creates: {metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_quota_on_the_embedded_store() {
    let stack = Stack::embedded().await;
    sessions_quota(&stack).await;
    per_session_quotas(&stack).await;
    message_bytes_quota(&stack).await;
    cron_jobs_quota(&stack).await;
}

/// The key API carries quotas on create, read and PATCH; bad values are refused naming the
/// field, and a key's read shows its own values and the ones in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_api_carries_quotas() {
    let stack = Stack::embedded().await;
    let base = stack.url("");
    for (field, bad) in [
        ("maxSessions", json!(0)),
        ("maxCronJobs", json!(0)),
        ("maxMessageBytes", json!(-1)),
        ("sessionIdleTtlSeconds", json!(u64::MAX)),
    ] {
        let response = stack
            .http
            .post(format!("{base}/api/v1/keys"))
            .bearer_auth(INTERNAL_TOKEN)
            .json(&json!({"name": "bad", "quotas": {field: bad}}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 400, "{field}: {body}");
        assert!(
            body["error"]["details"].as_str().unwrap().contains(field),
            "the refusal names {field}: {body}"
        );
    }
    let (_, id) = key_with(
        &stack.http,
        &base,
        json!({"maxSessions": 5, "sessionIdleTtlSeconds": 0}),
    )
    .await;
    let read = expect_data(
        stack
            .http
            .get(format!("{base}/api/v1/keys/{id}"))
            .bearer_auth(INTERNAL_TOKEN)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(read["quotas"]["maxSessions"], 5, "{read}");
    assert_eq!(read["quotas"]["sessionIdleTtlSeconds"], 0, "{read}");
    assert_eq!(
        read["quotas"]["maxCronJobs"],
        Value::Null,
        "default: {read}"
    );
    assert_eq!(read["effectiveQuotas"]["maxSessions"], 5, "{read}");
    assert_eq!(
        read["effectiveQuotas"]["maxCronJobs"], 100,
        "the default: {read}"
    );
    assert_eq!(
        read["effectiveQuotas"]["maxMessageBytes"], 1_048_576,
        "{read}"
    );
    // PATCH changes what it names and keeps the rest.
    let patched = patch_quotas(&stack.http, &base, &id, json!({"maxCronJobs": 7})).await;
    assert_eq!(patched["quotas"]["maxCronJobs"], 7, "{patched}");
    assert_eq!(patched["quotas"]["maxSessions"], 5, "{patched}");
    let response = stack
        .http
        .patch(format!("{base}/api/v1/keys/{id}"))
        .bearer_auth(INTERNAL_TOKEN)
        .json(&json!({"quotas": {"maxMessagesPerSession": 0}}))
        .send()
        .await
        .unwrap();
    let error = expect_error(response, 400, "INVALID_REQUEST").await;
    assert!(
        error["details"]
            .as_str()
            .unwrap()
            .contains("quotas.maxMessagesPerSession"),
        "{error}"
    );
    let listed = expect_data(
        stack
            .http
            .get(format!("{base}/api/v1/keys"))
            .bearer_auth(INTERNAL_TOKEN)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    let mine = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap();
    assert_eq!(
        mine["quotas"]["maxCronJobs"], 7,
        "the failed PATCH changed nothing"
    );
    assert_eq!(mine["quotas"]["maxMessagesPerSession"], Value::Null);
}

/// A gRPC caller over a quota gets RESOURCE_EXHAUSTED with ErrorInfo QUOTA_EXCEEDED and the
/// figures in its metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_callers_get_resource_exhausted_naming_the_quota() {
    use openclaw_gateway::proto::{
        ChatMessage, CreateSessionRequest, session_service_client::SessionServiceClient,
    };
    use tonic_types::StatusExt as _;

    let stack = Stack::start().await;
    let (key, _) = key_with(&stack.http, &stack.url(""), json!({"maxSessions": 1})).await;
    let mut client = SessionServiceClient::connect(format!("http://127.0.0.1:{}", stack.core.port))
        .await
        .unwrap();
    let request = || {
        let mut request = tonic::Request::new(CreateSessionRequest {
            messages: vec![ChatMessage {
                role: "user".into(),
                content: "hi".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        request
    };
    client.create_session(request()).await.unwrap();
    let status = client.create_session(request()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    let details = status.get_error_details();
    let info = details.error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "QUOTA_EXCEEDED");
    assert_eq!(info.metadata["quota"], "maxSessions");
    assert_eq!(info.metadata["limit"], "1");
    assert_eq!(info.metadata["used"], "1");
}

/// Creates racing on two cores over one Redis for the last slots: exactly the quota succeeds,
/// for sessions and for cron jobs, and the rest are refused with QUOTA_EXCEEDED.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn creates_racing_on_two_replicas_take_exactly_the_quota() {
    const QUOTA: u64 = 3;
    const TRIES: usize = 16;
    let redis = support::start_redis();
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let options = CoreOptions::shared(&redis, &upstream, dir.path());
    let (core_a, core_b) = (support::spawn_core(&options), support::spawn_core(&options));
    let (edge_a, edge_b) = (
        support::spawn_edge(&[&core_a]),
        support::spawn_edge(&[&core_b]),
    );
    support::wait_until_ready(&edge_a).await;
    support::wait_until_ready(&edge_b).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let bases = [
        format!("http://127.0.0.1:{}", edge_a.port),
        format!("http://127.0.0.1:{}", edge_b.port),
    ];
    let (key, _) = key_with(
        &http,
        &bases[0],
        json!({"maxSessions": QUOTA, "maxCronJobs": QUOTA}),
    )
    .await;

    let outcomes = |path: &'static str, body: Value| {
        let (http, key, bases) = (&http, &key, &bases);
        futures::future::join_all((0..TRIES).map(move |i| {
            let body = body.clone();
            async move {
                let response =
                    support::post_with_key(http, format!("{}{path}", bases[i % 2]), key, &body)
                        .await;
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap();
                (status, body)
            }
        }))
    };
    let sessions = outcomes(
        "/api/v1/sessions",
        json!({"messages": [{"role": "user", "content": "race"}]}),
    )
    .await;
    let jobs = outcomes("/api/v1/cron/jobs", job("race")).await;
    for (what, results) in [("sessions", &sessions), ("cron jobs", &jobs)] {
        let won = results.iter().filter(|(s, _)| *s == 201).count();
        assert_eq!(
            won as u64, QUOTA,
            "{what}: exactly the quota wins: {results:?}"
        );
        for (status, body) in results.iter().filter(|(s, _)| *s != 201) {
            assert_eq!(*status, 403, "{what}: {body}");
            assert_eq!(body["error"]["code"], "QUOTA_EXCEEDED", "{body}");
            assert_eq!(body["error"]["quota"]["used"], QUOTA, "{body}");
        }
    }
    // What the two replicas agree is stored.
    for base in &bases {
        let listed = expect_data(
            support::get_with_key(&http, format!("{base}/api/v1/sessions"), &key).await,
            200,
        )
        .await;
        assert_eq!(listed["sessions"].as_array().unwrap().len() as u64, QUOTA);
        let listed = expect_data(
            support::get_with_key(&http, format!("{base}/api/v1/cron/jobs"), &key).await,
            200,
        )
        .await;
        assert_eq!(listed["jobs"].as_array().unwrap().len() as u64, QUOTA);
    }
}

/// A full owner index holding entries of sessions that are gone (expired from Redis, or a
/// delete that stopped halfway) does not refuse forever: the create finds them dead, drops
/// them and takes the slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_index_entries_do_not_hold_slots_forever() {
    let stack = Stack::start().await;
    let (key, id) = key_with(&stack.http, &stack.url(""), json!({"maxSessions": 2})).await;
    let a = expect_data(create_session(&stack, &key, "a").await, 201).await;
    expect_data(create_session(&stack, &key, "b").await, 201).await;
    let gone = a["sessionId"].as_str().unwrap();
    // The session's keys vanish as a Redis TTL would take them; its index entry stays, and is
    // made older than any create in progress could be.
    let redis = redis::Client::open(support::redis_url(stack.redis.as_ref().unwrap())).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let base = format!("oc:s:{{{id}/{gone}}}");
    let _: () = redis::cmd("DEL")
        .arg(format!("{base}:meta"))
        .arg(format!("{base}:msgs"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("ZADD")
        .arg(format!("oc:o:{id}:sessions"))
        .arg("XX")
        .arg(1_000)
        .arg(gone)
        .query_async(&mut conn)
        .await
        .unwrap();
    // Listed long ago, too: the note of its recent listing has lapsed.
    let _: () = redis::cmd("ZREM")
        .arg(format!("{{oc:o:{id}:sessions}}:listed"))
        .arg(gone)
        .query_async(&mut conn)
        .await
        .unwrap();
    expect_data(create_session(&stack, &key, "c").await, 201).await;
    let index: u64 = redis::cmd("ZCARD")
        .arg(format!("oc:o:{id}:sessions"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(index, 2, "the dead entry was dropped, the new one added");
    expect_quota(create_session(&stack, &key, "d").await, "maxSessions", 2, 2).await;
}

/// The OpenAI-compatible surface stores into a session when asked to (`OpenClaw-Session-Id`):
/// its quotas apply there too, in OpenAI's error shape with status 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_calls_that_store_are_held_to_the_quotas() {
    let stack = Stack::start().await;
    let (key, _) = key_with(
        &stack.http,
        &stack.url(""),
        json!({"maxSessions": 1, "maxMessageBytes": 16}),
    )
    .await;
    let complete = |session: &'static str, content: &'static str| {
        stack
            .http
            .post(stack.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .header("OpenClaw-Session-Id", session)
            .json(&json!({"model": "zai/glm-4.7-flash", "messages": [{"role": "user", "content": content}]}))
            .send()
    };
    assert_eq!(complete("first", "hello").await.unwrap().status(), 200);
    let refused = complete("second", "hello").await.unwrap();
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["type"], "permission_error", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maxSessions"),
        "{body}"
    );
    let long = complete("first", "this is longer than sixteen bytes")
        .await
        .unwrap();
    assert_eq!(long.status(), 403);
    let body: Value = long.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maxMessageBytes"),
        "{body}"
    );
    assert_eq!(session_ids(&stack, &key).await, ["first"]);
    assert_eq!(
        history(&stack, &key, "first").await.len(),
        2,
        "nothing stored"
    );
}

/// A session stored before sessions counted their bytes has the count computed once, from its
/// messages, by its next turn: the quota holds for it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_stored_before_byte_counts_is_counted_from_its_messages() {
    let stack = Stack::start().await;
    let (key, id) = key_with(&stack.http, &stack.url(""), json!({"maxSessionBytes": 40})).await;
    // "xxxxx" + "echo: xxxxx": 16 bytes.
    let created = expect_data(create_session(&stack, &key, "xxxxx").await, 201).await;
    let session = created["sessionId"].as_str().unwrap().to_string();
    let redis = redis::Client::open(support::redis_url(stack.redis.as_ref().unwrap())).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let meta = format!("oc:s:{{{id}/{session}}}:meta");
    let removed: u64 = redis::cmd("HDEL")
        .arg(&meta)
        .arg("bytes")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(removed, 1, "the count is kept in the session's meta hash");
    // 16 + "yyyyyyyyyy" + "echo: yyyyyyyyyy" = 42 > 40.
    expect_quota(
        send(&stack, &key, &session, "yyyyyyyyyy").await,
        "maxSessionBytes",
        40,
        16,
    )
    .await;
    // 16 + 3 + 9 = 28 fits, and stores the count.
    expect_data(send(&stack, &key, &session, "zzz").await, 200).await;
    let bytes: Option<u64> = redis::cmd("HGET")
        .arg(&meta)
        .arg("bytes")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(bytes, Some(28));
}

/// The dashboard's key page shows a key's quotas (marking defaults) and what it keeps against
/// those counted per key, and its edit form sets the key's own quotas, which apply at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_and_edits_quotas() {
    let stack = Stack::start().await;
    let base = stack.url("");
    let (key, id) = key_with(&stack.http, &base, json!({"maxSessions": 2})).await;
    expect_data(create_session(&stack, &key, "hi").await, 201).await;
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed_in = browser
        .post(stack.url("/dashboard/login"))
        .form(&[("credential", INTERNAL_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let stack = &stack;
    let page = |path: String| {
        let (browser, cookie) = (&browser, &cookie);
        async move {
            browser
                .get(stack.url(&path))
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let list = page("/dashboard/settings/keys".into()).await;
    let card = &list[list
        .find(&format!("data-key-id=\"{id}\""))
        .expect("the key's card")..];
    let card = &card[..card.find("</li>").unwrap()];
    assert!(
        card.contains("Sessions: 1 / 2"),
        "sessions against the quota: {card}"
    );
    assert!(
        card.contains("Cron jobs: 0 / 100"),
        "cron jobs against the default: {card}"
    );
    assert!(
        card.contains("100 (default)"),
        "defaults are marked: {card}"
    );
    assert!(
        card.contains("16 MiB (default)") && card.contains("30 d (default)"),
        "sizes and times are shown in their units: {card}"
    );

    let form = page(format!("/dashboard/settings/keys/{id}")).await;
    assert!(
        form.contains("name=\"maxSessions\"") && form.contains("value=\"2\""),
        "the form shows the key's own quota: {form}"
    );
    let at = form.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    let csrf = form[at..].split('"').next().unwrap().to_string();
    let saved = browser
        .post(stack.url(&format!("/dashboard/settings/keys/{id}")))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("maxSessions", "1"),
            ("maxCronJobs", "5"),
            ("sessionIdleTtlSeconds", "0"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(saved.status(), 303, "{}", saved.text().await.unwrap());
    let read = expect_data(
        stack
            .http
            .get(format!("{base}/api/v1/keys/{id}"))
            .bearer_auth(INTERNAL_TOKEN)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(
        read["quotas"],
        json!({"maxSessions": 1, "maxMessagesPerSession": null, "maxSessionBytes": null,
               "maxMessageBytes": null, "maxCronJobs": 5, "sessionIdleTtlSeconds": 0}),
        "{read}"
    );
    expect_quota(
        create_session(stack, &key, "more").await,
        "maxSessions",
        1,
        1,
    )
    .await;
    // A bad value is refused and changes nothing.
    let bad = browser
        .post(stack.url(&format!("/dashboard/settings/keys/{id}")))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str()), ("maxSessions", "0")])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(
        bad.text()
            .await
            .unwrap()
            .contains("Sessions must be a whole number of at least 1")
    );
}
