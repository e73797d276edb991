//! Upstream resilience, configured per provider in the providers file:
//! retries with backoff on connection errors, 429 (honouring Retry-After) and
//! 5xx; no retry of a refused request or after a stream's first piece; a
//! circuit breaker that opens and closes again; an ordered fallback list.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Behaviour, FakeUpstream, Stack, expect_data, expect_error, free_port};

/// One zai provider on the fake upstream, with these extra settings.
fn zai(upstream: &FakeUpstream, settings: &str) -> String {
    format!(
        r#"
        [[providers]]
        name = "zai"
        baseUrl = "{}"
        apiKeyEnv = "ZAI_API_KEY"
        {settings}
        models = [{{ name = "glm-4.7-flash" }}]
        "#,
        upstream.base_url()
    )
}

async fn create(stack: &Stack, key: &str, model: &str) -> String {
    let response = stack
        .post(
            "/api/v1/sessions",
            key,
            &json!({"model": model, "messages": []}),
        )
        .await;
    expect_data(response, 201).await["sessionId"]
        .as_str()
        .unwrap()
        .to_string()
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

fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

async fn core_metrics(stack: &Stack) -> String {
    stack
        .http
        .get(format!(
            "http://127.0.0.1:{}/metrics",
            stack.core.metrics_port
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn server_errors_are_retried_with_growing_backoff_until_one_succeeds() {
    let stack = Stack::with_providers(|upstream| {
        zai(
            upstream,
            "retry = { maxRetries = 3, initialBackoffMs = 200, maxBackoffMs = 2000 }",
        )
    })
    .await;
    let key = stack.create_key("retry").await;
    let id = create(&stack, &key, "zai/glm-4.7-flash").await;
    stack.upstream.fail_times(2, 503);
    let data = expect_data(send(&stack, &key, &id, "eventually").await, 200).await;
    assert_eq!(data["message"]["content"], "echo: eventually");
    let gaps = gaps(&stack.upstream.received_at());
    assert_eq!(gaps.len(), 2, "three attempts");
    // Equal jitter: the n-th wait is within [b/2, b] for b = 200 ms, 400 ms.
    assert!(gaps[0] >= Duration::from_millis(100), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(200), "{gaps:?}");

    let metrics = core_metrics(&stack).await;
    assert!(
        metrics.contains("openclaw_provider_attempts_total"),
        "every attempt is counted: {metrics}"
    );
    assert!(metrics.contains("outcome=\"server_error\""), "{metrics}");
    assert!(
        metrics.contains("openclaw_provider_retries_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_429_is_retried_no_sooner_than_its_retry_after() {
    let stack = Stack::with_providers(|upstream| {
        zai(
            upstream,
            "retry = { maxRetries = 2, initialBackoffMs = 10, maxBackoffMs = 20 }",
        )
    })
    .await;
    let key = stack.create_key("429").await;
    let id = create(&stack, &key, "zai/glm-4.7-flash").await;
    stack.upstream.then([Behaviour::RateLimited {
        retry_after: "1".into(),
    }]);
    let data = expect_data(send(&stack, &key, &id, "patience").await, 200).await;
    assert_eq!(data["message"]["content"], "echo: patience");
    let gaps = gaps(&stack.upstream.received_at());
    assert_eq!(gaps.len(), 1);
    assert!(gaps[0] >= Duration::from_millis(950), "{gaps:?}");

    // A Retry-After longer than the provider allows is not waited for.
    stack.upstream.then([Behaviour::RateLimited {
        retry_after: "120".into(),
    }]);
    let started = Instant::now();
    let error = expect_error(send(&stack, &key, &id, "no").await, 502, "UPSTREAM_ERROR").await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        error["details"].as_str().unwrap().contains("429"),
        "{error}"
    );
}

#[tokio::test]
async fn retries_stop_at_the_limit_and_a_refused_request_is_never_retried() {
    let stack = Stack::with_providers(|upstream| {
        zai(
            upstream,
            "retry = { maxRetries = 2, initialBackoffMs = 10, maxBackoffMs = 20 }\nbreaker = { failureThreshold = 0 }",
        )
    })
    .await;
    let key = stack.create_key("limit").await;
    let id = create(&stack, &key, "zai/glm-4.7-flash").await;
    stack.upstream.behave(Behaviour::Fail {
        status: 500,
        message: "down".into(),
    });
    expect_error(send(&stack, &key, &id, "a").await, 502, "UPSTREAM_ERROR").await;
    assert_eq!(stack.upstream.received().len(), 3, "1 attempt + 2 retries");

    stack.upstream.behave(Behaviour::Fail {
        status: 400,
        message: "your request is wrong".into(),
    });
    expect_error(send(&stack, &key, &id, "b").await, 502, "UPSTREAM_ERROR").await;
    assert_eq!(stack.upstream.received().len(), 4, "a 400 is not retried");
}

#[tokio::test]
async fn the_circuit_opens_after_repeated_failures_and_closes_after_a_good_probe() {
    let stack = Stack::with_providers(|upstream| {
        zai(
            upstream,
            "retry = { maxRetries = 0 }\nbreaker = { failureThreshold = 2, openMs = 1500 }",
        )
    })
    .await;
    let key = stack.create_key("breaker").await;
    let id = create(&stack, &key, "zai/glm-4.7-flash").await;
    stack.upstream.behave(Behaviour::Fail {
        status: 502,
        message: "bad gateway".into(),
    });
    for _ in 0..2 {
        expect_error(send(&stack, &key, &id, "x").await, 502, "UPSTREAM_ERROR").await;
    }
    assert_eq!(stack.upstream.received().len(), 2);

    // Open: refused at once, without calling the provider.
    stack.upstream.behave(Behaviour::Stall(Duration::ZERO));
    let refused = send(&stack, &key, &id, "x").await;
    assert!(refused.headers().contains_key("retry-after"));
    let error = expect_error(refused, 503, "UNAVAILABLE").await;
    assert!(
        error["details"].as_str().unwrap().contains("paused"),
        "{error}"
    );
    assert_eq!(
        stack.upstream.received().len(),
        2,
        "the provider was left alone"
    );
    let metrics = core_metrics(&stack).await;
    assert!(
        metrics.contains("openclaw_provider_circuit_state{provider=\"zai\"} 1"),
        "{metrics}"
    );
    let status = stack.get("/api/v1/system/status", &key).await;
    let status = expect_data(status, 200).await;
    let zai = status["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "zai")
        .cloned()
        .unwrap();
    assert_eq!(zai["status"], "degraded", "{status}");
    assert!(
        zai["detail"].as_str().unwrap().contains("Circuit open"),
        "{zai}"
    );

    // After the pause one probe goes through; its success closes the circuit.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    expect_data(send(&stack, &key, &id, "probe").await, 200).await;
    expect_data(send(&stack, &key, &id, "closed").await, 200).await;
    assert_eq!(stack.upstream.received().len(), 4);
    let metrics = core_metrics(&stack).await;
    assert!(
        metrics.contains("openclaw_provider_circuit_state{provider=\"zai\"} 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_unreachable_provider_falls_back_to_the_next_model_in_order() {
    let dead = format!("http://127.0.0.1:{}/v1", free_port());
    let second = FakeUpstream::start().await;
    let second_url = second.base_url();
    let stack = Stack::with_providers(move |upstream| {
        format!(
            r#"
            defaultModel = "dead/model-a"

            [[providers]]
            name = "dead"
            baseUrl = "{dead}"
            connectTimeoutMs = 500
            retry = {{ maxRetries = 1, initialBackoffMs = 10 }}
            models = [{{ name = "model-a", fallbacks = ["slow/model-b", "zai/glm-4.7-flash"] }}]

            [[providers]]
            name = "slow"
            baseUrl = "{second_url}"
            timeoutMs = 500
            models = [{{ name = "model-b" }}]

            [[providers]]
            name = "zai"
            baseUrl = "{}"
            apiKeyEnv = "ZAI_API_KEY"
            models = [{{ name = "glm-4.7-flash" }}]
            "#,
            upstream.base_url()
        )
    })
    .await;
    second.behave(Behaviour::Stall(Duration::from_secs(5)));
    let key = stack.create_key("fallback").await;
    let id = create(&stack, &key, "dead/model-a").await;
    let data = expect_data(send(&stack, &key, &id, "anyone?").await, 200).await;
    assert_eq!(data["model"], "zai/glm-4.7-flash", "{data}");
    assert_eq!(data["message"]["content"], "echo: anyone?");
    assert_eq!(
        second.received().len(),
        1,
        "the stalled fallback timed out once"
    );
    assert_eq!(second.received()[0]["model"], "model-b");
    assert_eq!(stack.upstream.received()[0]["model"], "glm-4.7-flash");

    // The session keeps its model; the next turn tries it first again.
    let session: Value = stack
        .get(&format!("/api/v1/sessions/{id}"), &key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(session["data"]["model"], "dead/model-a");

    // The declared default model serves a request that names none.
    let response = stack
        .post(
            "/api/v1/sessions",
            &key,
            &json!({"messages": [{"role": "user", "content": "default?"}]}),
        )
        .await;
    let data = expect_data(response, 201).await;
    assert_eq!(data["model"], "zai/glm-4.7-flash");

    let metrics = core_metrics(&stack).await;
    assert!(
        metrics.contains("openclaw_provider_fallbacks_total"),
        "{metrics}"
    );
    assert!(metrics.contains("outcome=\"connect_error\""), "{metrics}");
    assert!(metrics.contains("outcome=\"timeout\""), "{metrics}");
}

#[tokio::test]
async fn a_stream_is_retried_before_its_first_piece() {
    let stack = Stack::with_providers(|upstream| {
        zai(
            upstream,
            "retry = { maxRetries = 2, initialBackoffMs = 10, maxBackoffMs = 20 }",
        )
    })
    .await;
    let key = stack.create_key("stream-retry").await;
    let id = create(&stack, &key, "zai/glm-4.7-flash").await;
    stack.upstream.fail_times(1, 500);
    let text = stack
        .post(
            &format!("/api/v1/sessions/{id}/messages"),
            &key,
            &json!({"message": {"role": "user", "content": "retry me"}, "stream": true}),
        )
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains("event: done"), "{text}");
    assert!(!text.contains("event: error"), "{text}");
    assert_eq!(stack.upstream.received().len(), 2);
}
