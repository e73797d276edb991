//! Rate limits hold across every replica: N cores and M edges on one Redis
//! admit exactly a key's limit, reserve tokens before the model is called and
//! settle them to what the provider reports, and fail the configured way when
//! Redis is away.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Behaviour, CoreOptions, FakeUpstream, Process, expect_data, expect_error};

struct Cluster {
    redis: Process,
    upstream: FakeUpstream,
    cores: Vec<Process>,
    edges: Vec<Process>,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Cluster {
    async fn start(cores: usize, edges: usize, env: &[(&str, &str)]) -> Self {
        let redis = support::start_redis();
        let upstream = FakeUpstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let options = CoreOptions {
            redis_url: Some(support::redis_url(&redis)),
            upstream: Some(upstream.base_url()),
            data_dir: Some(dir.path().to_path_buf()),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let cores: Vec<Process> = (0..cores).map(|_| support::spawn_core(&options)).collect();
        let refs: Vec<&Process> = cores.iter().collect();
        let edges: Vec<Process> = (0..edges).map(|_| support::spawn_edge(&refs)).collect();
        for edge in &edges {
            support::wait_until_ready(edge).await;
        }
        Self {
            redis,
            upstream,
            cores,
            edges,
            _dir: dir,
            http: reqwest::Client::new(),
        }
    }

    fn edge(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.edges[i % self.edges.len()].port)
    }

    async fn key(&self, limits: Value) -> String {
        support::create_key(
            &self.http,
            &self.edge(0),
            "limited",
            json!({"limits": limits}),
        )
        .await
    }

    async fn status(&self, key: &str) -> Value {
        let response = self
            .http
            .get(format!("{}/api/v1/system/status", self.edge(0)))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        expect_data(response, 200).await
    }
}

fn signal(process: &Process, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &process.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_concurrent_requests_across_replicas_admit_exactly_the_limit() {
    let cluster = Cluster::start(3, 2, &[]).await;
    let key = cluster.key(json!({"requestsPerMinute": 50})).await;
    let requests = (0..200).map(|i| {
        let (http, url, key) = (cluster.http.clone(), cluster.edge(i), key.clone());
        tokio::spawn(async move {
            http.get(format!("{url}/api/v1/sessions"))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
        })
    });
    let responses: Vec<reqwest::Response> = futures::future::join_all(requests)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let admitted = responses.iter().filter(|r| r.status() == 200).count();
    let limited = responses.iter().filter(|r| r.status() == 429).count();
    println!("admitted {admitted}, limited {limited} of 200 across 3 cores and 2 edges");
    // The sliding window admits at most the limit in any 60 s: exactly 50 here.
    assert_eq!(admitted, 50);
    assert_eq!(limited, 150);

    let denied = responses.into_iter().find(|r| r.status() == 429).unwrap();
    let retry_header: u64 = denied.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(denied.headers()["x-ratelimit-remaining-requests"], "0");
    assert_eq!(denied.headers()["x-ratelimit-limit-requests"], "50");
    let error = expect_error(denied, 429, "RATE_LIMIT_EXCEEDED").await;
    let retry_after = error["retryAfter"]
        .as_u64()
        .expect("retryAfter is an integer");
    assert!((1..=60).contains(&retry_after), "{error}");
    assert_eq!(retry_after, retry_header);
    assert_eq!(
        error["details"],
        format!("Try again in {retry_after} seconds")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_the_remaining_quota() {
    let cluster = Cluster::start(1, 1, &[]).await;
    let key = cluster.key(json!({"requestsPerMinute": 10, "tokensPerMinute": 5000, "contextTokensPerMinute": 3000})).await;
    let response = support::get_with_key(
        &cluster.http,
        format!("{}/api/v1/sessions", cluster.edge(0)),
        &key,
    )
    .await;
    let headers = response.headers();
    assert_eq!(headers["x-ratelimit-limit-requests"], "10");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "9");
    assert_eq!(headers["x-ratelimit-limit-tokens"], "5000");
    assert_eq!(headers["x-ratelimit-remaining-tokens"], "5000");
    assert_eq!(headers["x-ratelimit-limit-context"], "3000");
    let reset: u64 = headers["x-ratelimit-reset-requests"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&reset));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_reservations_bound_a_burst_and_settle_to_reported_usage() {
    let cluster = Cluster::start(2, 2, &[]).await;
    // Each call reserves its prompt (9 tokens for one short user message,
    // counted with cl100k_base) plus maxTokens 100: 109 tokens.
    let key = cluster.key(json!({"tokensPerMinute": 1000})).await;
    cluster
        .upstream
        .behave(Behaviour::Stall(Duration::from_millis(1500)));
    let calls = (0..20).map(|i| {
        let (http, url, key) = (cluster.http.clone(), cluster.edge(i), key.clone());
        tokio::spawn(async move {
            http.post(format!("{url}/api/v1/sessions"))
                .bearer_auth(&key)
                .json(&json!({"messages": [{"role": "user", "content": "hi"}], "maxTokens": 100}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    });
    let statuses: Vec<u16> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let admitted = statuses.iter().filter(|s| **s == 201).count();
    assert_eq!(
        admitted, 9,
        "floor(1000 / 109) reservations fit: {statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 11);

    // Settled: the upstream reported 10 prompt + 5 completion tokens per call.
    let status = cluster.status(&key).await;
    assert_eq!(status["resources"]["tokenUsage"], 9 * 15, "{status}");
    assert_eq!(status["resources"]["contextUsage"], 9 * 10, "{status}");
    assert_eq!(status["resources"]["tokenLimit"], 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_call_burns_no_tokens_and_overreporting_counts_in_full() {
    let cluster = Cluster::start(1, 1, &[]).await;
    let key = cluster.key(json!({"tokensPerMinute": 100000})).await;
    cluster.upstream.behave(Behaviour::Fail {
        status: 500,
        message: "down".into(),
    });
    let url = format!("{}/api/v1/sessions", cluster.edge(0));
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "maxTokens": 50});
    let failed = support::post_with_key(&cluster.http, &url, &key, &body).await;
    expect_error(failed, 502, "UPSTREAM_ERROR").await;
    let status = cluster.status(&key).await;
    assert_eq!(status["resources"]["tokenUsage"], 0, "{status}");
    assert_eq!(
        status["resources"]["requestUsage"], 2,
        "the failed call and this status count as requests"
    );

    cluster.upstream.behave(Behaviour::Reply {
        content: "long".into(),
        prompt_tokens: 300,
        completion_tokens: 700,
    });
    let ok = support::post_with_key(&cluster.http, &url, &key, &body).await;
    let data = expect_data(ok, 201).await;
    assert_eq!(data["usage"]["completionTokens"], 700);
    let status = cluster.status(&key).await;
    assert_eq!(
        status["resources"]["tokenUsage"], 1000,
        "more than the 59 reserved counts in full"
    );
    assert_eq!(status["resources"]["contextUsage"], 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_read_on_another_replica_right_after_an_answer_is_the_settled_usage() {
    // Two cores, each edge pinned to one of them: every answer comes from core 0 and every
    // read of usage from core 1. The provider reports 1000 tokens where 59 are reserved (a
    // short prompt plus maxTokens 50), so a read that overtook the settling would be off by
    // 941 per answer.
    let mut cluster = Cluster::start(2, 0, &[]).await;
    cluster.edges = vec![
        support::spawn_edge(&[&cluster.cores[0]]),
        support::spawn_edge(&[&cluster.cores[1]]),
    ];
    let key = cluster.key(json!({"tokensPerMinute": 1_000_000})).await;
    cluster.upstream.behave(Behaviour::Reply {
        content: "answer".into(),
        prompt_tokens: 300,
        completion_tokens: 700,
    });
    let body = json!({
        "model": "zai/glm-4.7-flash",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 50,
    });
    for turn in 1..=25u64 {
        let answered = support::post_with_key(
            &cluster.http,
            format!("{}/v1/chat/completions", cluster.edge(0)),
            &key,
            &body,
        )
        .await;
        assert_eq!(answered.status(), 200, "{}", answered.text().await.unwrap());
        let usage = support::get_with_key(
            &cluster.http,
            format!("{}/api/v1/system/status", cluster.edge(1)),
            &key,
        )
        .await;
        let status = expect_data(usage, 200).await;
        assert_eq!(
            status["resources"]["tokenUsage"],
            1000 * turn,
            "after answer {turn}: {status}"
        );
        assert_eq!(status["resources"]["contextUsage"], 300 * turn, "{status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_larger_than_a_whole_limit_is_invalid_not_queued() {
    let cluster = Cluster::start(1, 1, &[]).await;
    let key = cluster.key(json!({"tokensPerMinute": 500})).await;
    let response = support::post_with_key(
        &cluster.http,
        format!("{}/api/v1/sessions", cluster.edge(0)),
        &key,
        &json!({"messages": [{"role": "user", "content": "hi"}], "maxTokens": 1000}),
    )
    .await;
    let error = expect_error(response, 400, "INVALID_REQUEST").await;
    assert!(
        error["details"].as_str().unwrap().contains("maxTokens"),
        "{error}"
    );
    assert!(cluster.upstream.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_changed_through_key_administration_and_apply_at_once() {
    let cluster = Cluster::start(2, 1, &[]).await;
    let base = cluster.edge(0);
    let created = support::post_with_key(
        &cluster.http,
        format!("{base}/api/v1/keys"),
        support::INTERNAL_TOKEN,
        &json!({"name": "tunable", "limits": {"requestsPerMinute": 2}}),
    )
    .await;
    let created = expect_data(created, 201).await;
    assert_eq!(created["limits"]["requestsPerMinute"], 2);
    assert_eq!(
        created["limits"]["tokensPerMinute"],
        Value::Null,
        "unset limits take the defaults"
    );
    let (id, key) = (
        created["id"].as_str().unwrap(),
        created["key"].as_str().unwrap(),
    );
    let list = format!("{base}/api/v1/sessions");
    for expected in [200, 200, 429] {
        assert_eq!(
            support::get_with_key(&cluster.http, &list, key)
                .await
                .status(),
            expected
        );
    }
    let patched = cluster
        .http
        .patch(format!("{base}/api/v1/keys/{id}"))
        .bearer_auth(support::INTERNAL_TOKEN)
        .json(&json!({"limits": {"requestsPerMinute": 5}}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        expect_data(patched, 200).await["limits"]["requestsPerMinute"],
        5
    );
    // The key cache lives 2 s per replica; within seconds the new limit holds everywhere.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let statuses: Vec<u16> = futures::future::join_all((0..4).map(|_| async {
        support::get_with_key(&cluster.http, &list, key)
            .await
            .status()
            .as_u16()
    }))
    .await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        3,
        "5 minus the 2 already used: {statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_fails_closed_within_the_timeout_and_recovers() {
    let cluster = Cluster::start(1, 1, &[("OPENCLAW_REDIS_TIMEOUT_MS", "300")]).await;
    let key = cluster.key(json!({})).await;
    let url = format!("{}/api/v1/sessions", cluster.edge(0));
    assert_eq!(
        support::get_with_key(&cluster.http, &url, &key)
            .await
            .status(),
        200
    );
    signal(&cluster.redis, "-STOP");
    let started = Instant::now();
    let response = support::get_with_key(&cluster.http, &url, &key).await;
    let waited = started.elapsed();
    let error = expect_error(response, 503, "UNAVAILABLE").await;
    println!("paused Redis answered UNAVAILABLE after {waited:?}");
    assert!(
        waited < Duration::from_secs(2),
        "no request waits past the Redis timeout: {waited:?}"
    );
    assert!(!error.to_string().contains("redis://"));
    signal(&cluster.redis, "-CONT");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = support::get_with_key(&cluster.http, &url, &key)
            .await
            .status();
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "recovered after Redis came back (last {status})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_redis_fails_open_to_each_replicas_share_when_configured() {
    let mut cluster = Cluster::start(
        2,
        1,
        &[
            ("OPENCLAW_RATE_LIMIT_REDIS_DOWN", "open"),
            ("OPENCLAW_CORE_REPLICAS", "2"),
            ("OPENCLAW_REDIS_TIMEOUT_MS", "300"),
        ],
    )
    .await;
    let key = cluster.key(json!({"requestsPerMinute": 10})).await;
    let status_url = format!("{}/api/v1/system/status", cluster.edge(0));
    // Verify the key on each core while Redis is up, straight over gRPC (the
    // edge may send a call to either), so each has it cached when Redis dies.
    for core in &cluster.cores {
        use openclaw_gateway::proto::{
            GetStatusRequest, system_service_client::SystemServiceClient,
        };
        let mut client = SystemServiceClient::connect(format!("http://127.0.0.1:{}", core.port))
            .await
            .unwrap();
        let mut request = tonic::Request::new(GetStatusRequest {});
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        client.get_status(request).await.unwrap();
    }
    cluster.redis.kill();
    let mut statuses = Vec::new();
    let mut degraded = None;
    for _ in 0..30 {
        let response = support::get_with_key(&cluster.http, &status_url, &key).await;
        statuses.push(response.status().as_u16());
        if response.status() == 200 {
            degraded = Some(response.json::<Value>().await.unwrap());
        }
    }
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    println!("with Redis down, {admitted} of 30 admitted by 2 cores at 10/min shared");
    assert!(
        (1..=10).contains(&admitted),
        "each core admits at most 10/2: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    let data = &degraded.unwrap()["data"];
    assert_eq!(data["gateway"], "degraded");
    assert!(
        data["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "rate-limiter" && d["status"] == "degraded")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_callers_get_resource_exhausted_with_retry_info_and_the_figures() {
    use openclaw_gateway::proto::{GetStatusRequest, system_service_client::SystemServiceClient};
    use tonic_types::StatusExt;

    let cluster = Cluster::start(1, 1, &[]).await;
    let key = cluster.key(json!({"requestsPerMinute": 1})).await;
    let mut client =
        SystemServiceClient::connect(format!("http://127.0.0.1:{}", cluster.cores[0].port))
            .await
            .unwrap();
    let request = || {
        let mut request = tonic::Request::new(GetStatusRequest {});
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        request
    };
    let ok = client.get_status(request()).await.unwrap();
    assert_eq!(
        ok.metadata().get("x-ratelimit-remaining-requests").unwrap(),
        "0"
    );
    let status = client.get_status(request()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    let details = status.get_error_details();
    assert_eq!(details.error_info().unwrap().reason, "RATE_LIMIT_EXCEEDED");
    let delay = details.retry_info().unwrap().retry_delay.unwrap();
    assert!(delay >= Duration::from_secs(1));
    assert_eq!(
        status.metadata().get("x-ratelimit-limit-requests").unwrap(),
        "1"
    );
    assert!(status.metadata().get("retry-after").is_some());
}
