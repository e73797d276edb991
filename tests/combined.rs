//! A combined replica (`openclaw-gateway serve --http-addr`) serves the REST API from the core's
//! own process. Seen from outside it is one more replica: the same answers and errors, gRPC on
//! its gRPC address, and state (sessions, keys, limits) shared exactly with split edges and
//! cores on the same Redis.

mod support;

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use support::{CoreOptions, FakeUpstream, Process, expect_data, expect_error};

/// A combined replica: the core's process serving gRPC on `Process::port` and the REST API on
/// the returned port.
fn spawn_combined(options: &CoreOptions) -> (Process, u16) {
    let http_port = support::free_port();
    let mut options = options.clone();
    options.env.push((
        "OPENCLAW_HTTP_ADDR".into(),
        format!("127.0.0.1:{http_port}"),
    ));
    let replica = support::spawn_core_logging(&options, support::free_port(), Stdio::inherit());
    // The REST listener is bound right after the gRPC one.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !support::listening(http_port) {
        assert!(
            std::time::Instant::now() < deadline,
            "the combined replica did not listen on its REST port {http_port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (replica, http_port)
}

#[tokio::test]
async fn a_combined_replica_answers_as_the_guide_says_and_shares_state_with_split_replicas() {
    let redis = support::start_redis();
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let options = CoreOptions::shared(&redis, &upstream, dir.path());
    let (replica, http_port) = spawn_combined(&options);
    let core = support::spawn_core(&options);
    let edge = support::spawn_edge(&[&core]);
    let http = reqwest::Client::new();
    let combined = format!("http://127.0.0.1:{http_port}");
    let split = format!("http://127.0.0.1:{}", edge.port);

    // A key made through the combined replica, with room for exactly four requests a minute.
    let key = support::create_key(
        &http,
        &combined,
        "combined",
        json!({"limits": {"requestsPerMinute": 4}}),
    )
    .await;

    // The guide's first example, unchanged.
    let created = http
        .post(format!("{combined}/api/v1/sessions"))
        .header("Content-Type", "application/json")
        .bearer_auth(&key)
        .json(&json!({
            "model": "zai/glm-4.7-flash",
            "messages": [{"role": "user", "content": "Hello"}]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.headers()["x-ratelimit-remaining-requests"], "3");
    let created = expect_data(created, 201).await;
    let id = created["sessionId"].as_str().unwrap().to_string();
    assert_eq!(created["model"], "zai/glm-4.7-flash");
    assert!(created["message"]["content"].as_str().is_some());

    // Bad input gets the contract's error, and what is stored stays as it was.
    let refused = support::post_with_key(
        &http,
        format!("{combined}/api/v1/sessions/{id}/messages"),
        &key,
        &json!({"message": {"role": "user", "content": 7}}),
    )
    .await;
    let error = expect_error(refused, 400, "INVALID_REQUEST").await;
    assert!(
        error["details"].as_str().unwrap().contains("content"),
        "{error}"
    );
    let unknown = support::get_with_key(
        &http,
        format!("{combined}/api/v1/system/status"),
        "oc_not-a-real-key",
    )
    .await;
    expect_error(unknown, 401, "UNAUTHORIZED").await;

    // The session goes on through a split edge and core, and back: one history.
    for (base, text) in [(&split, "second"), (&combined, "third")] {
        let sent = support::post_with_key(
            &http,
            format!("{base}/api/v1/sessions/{id}/messages"),
            &key,
            &json!({"message": {"role": "user", "content": text}}),
        )
        .await;
        expect_data(sent, 200).await;
    }
    let last = upstream.received().pop().unwrap();
    assert_eq!(
        last["messages"].as_array().unwrap().len(),
        5,
        "the combined replica saw the turn stored through the split pair: {last}"
    );

    // One window for the key across both kinds of replica: the fourth request is the last.
    let history = support::get_with_key(
        &http,
        format!("{split}/api/v1/sessions/{id}/messages"),
        &key,
    )
    .await;
    assert_eq!(history.headers()["x-ratelimit-remaining-requests"], "0");
    let history = expect_data(history, 200).await;
    assert_eq!(
        history["messages"].as_array().unwrap().len(),
        6,
        "{history}"
    );
    let over = support::post_with_key(
        &http,
        format!("{combined}/api/v1/sessions/{id}/messages"),
        &key,
        &json!({"message": {"role": "user", "content": "fourth"}}),
    )
    .await;
    expect_error(over, 429, "RATE_LIMIT_EXCEEDED").await;

    // Internal services still reach the replica over gRPC.
    let mut system = openclaw_gateway::proto::system_service_client::SystemServiceClient::connect(
        format!("http://127.0.0.1:{}", replica.port),
    )
    .await
    .unwrap();
    let mut request = tonic::Request::new(openclaw_gateway::proto::GetStatusRequest {});
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", support::INTERNAL_TOKEN)
            .parse()
            .unwrap(),
    );
    let status = system.get_status(request).await.unwrap().into_inner();
    assert_eq!(status.gateway, "running");
}

#[tokio::test]
async fn a_combined_replica_streams_and_drains_on_sigterm() {
    let redis = support::start_redis();
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut replica, http_port) = spawn_combined(&CoreOptions {
        env: vec![("OPENCLAW_DRAIN_TIMEOUT_MS".into(), "5000".into())],
        ..CoreOptions::shared(&redis, &upstream, dir.path())
    });
    let base = format!("http://127.0.0.1:{http_port}");
    let http = reqwest::Client::new();
    let key = support::create_key(&http, &base, "streams", json!({})).await;
    upstream.behave(support::Behaviour::Stream {
        chunks: vec!["one ".into(), "two ".into(), "three".into()],
        delay: Duration::from_millis(20),
        prompt_tokens: 5,
        completion_tokens: 3,
    });

    let streamed = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({
            "model": "zai/glm-4.7-flash",
            "stream": true,
            "messages": [{"role": "user", "content": "count"}]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 200);
    assert_eq!(
        streamed.headers()["content-type"],
        "text/event-stream",
        "{:?}",
        streamed.headers()
    );
    let text = streamed.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let content: String = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .filter_map(|data| serde_json::from_str::<serde_json::Value>(data).ok())
        .filter_map(|chunk| {
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(content, "one two three");

    // SIGTERM: both listeners drain and the process exits cleanly.
    let terminated = std::process::Command::new("kill")
        .args(["-TERM", &replica.pid().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    assert_eq!(
        replica.wait_exit(Duration::from_secs(10)),
        Some(0),
        "the combined replica exits 0 after draining"
    );
}

#[tokio::test]
async fn a_combined_replica_serves_v1_completions_and_counts_the_calls_its_edge_makes() {
    let redis = support::start_redis();
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let options = CoreOptions::shared(&redis, &upstream, dir.path());
    let (replica, http_port) = spawn_combined(&options);
    let http = reqwest::Client::new();
    let combined = format!("http://127.0.0.1:{http_port}");
    let key = support::create_key(
        &http,
        &combined,
        "combined-v1",
        json!({"limits": {"requestsPerMinute": 3}}),
    )
    .await;
    let v1 = format!("{combined}/v1/chat/completions");
    let complete = |body: serde_json::Value| {
        let request = http.post(&v1).bearer_auth(&key).json(&body);
        async move { request.send().await.unwrap() }
    };

    // OpenAI's shape, the rate limit's headers, the provider's answer.
    let answered = complete(json!({
        "model": "zai/glm-4.7-flash",
        "messages": [{"role": "user", "content": "Hello from the combined replica"}]
    }))
    .await;
    assert_eq!(answered.status(), 200);
    assert_eq!(answered.headers()["x-ratelimit-remaining-requests"], "2");
    let answer: serde_json::Value = answered.json().await.unwrap();
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "echo: Hello from the combined replica"
    );

    // A refusal from the core reaches the client as OpenAI's error, naming the field (a
    // request refused as invalid is not counted against the limit).
    let refused = complete(json!({
        "model": "zai/no-such-model",
        "messages": [{"role": "user", "content": "Hello"}]
    }))
    .await;
    assert!(refused.status().is_client_error(), "{}", refused.status());
    let refused: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(refused["error"]["param"], "model", "{refused}");

    // A session's turn, then the limit, through the same direct calls.
    let created = support::post_with_key(
        &http,
        format!("{combined}/api/v1/sessions"),
        &key,
        &json!({"messages": [{"role": "system", "content": "Be brief"}]}),
    )
    .await;
    let id = expect_data(created, 201).await["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    let sent = support::post_with_key(
        &http,
        format!("{combined}/api/v1/sessions/{id}/messages"),
        &key,
        &json!({"message": {"role": "user", "content": "a turn"}}),
    )
    .await;
    assert_eq!(
        expect_data(sent, 200).await["message"]["content"],
        "echo: a turn"
    );
    let over = complete(json!({
        "model": "zai/glm-4.7-flash",
        "messages": [{"role": "user", "content": "one too many"}]
    }))
    .await;
    assert_eq!(over.status(), 429);
    assert_eq!(upstream.received().len(), 2);

    // Every call the edge made is counted as a call of the core's API.
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", replica.metrics_port))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "openclaw_grpc_requests_total{method=\"CompletionService/Complete\",status=\"Ok\"} 1",
        "openclaw_grpc_requests_total{method=\"SessionService/SendMessage\",status=\"Ok\"} 1",
        "openclaw_grpc_requests_total{method=\"SessionService/CreateSession\",status=\"Ok\"} 1",
        "openclaw_grpc_requests_total{method=\"CompletionService/Complete\",status=\"ResourceExhausted\"} 1",
    ] {
        assert!(
            metrics.contains(series),
            "the replica counts {series}:\n{metrics}"
        );
    }
}
