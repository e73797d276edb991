//! Safe retries: a send repeated with the same X-Request-ID for the same
//! session is answered from its record, without calling the model or counting
//! against limits; a concurrent repeat waits for the first instead of running.

mod support;

use std::time::Duration;

use openclaw_gateway::proto::session_service_client::SessionServiceClient;
use openclaw_gateway::proto::{self, stream_event::Event};
use serde_json::{Value, json};
use support::{Behaviour, Stack, expect_data, expect_error};

async fn create(stack: &Stack, key: &str) -> String {
    let response = stack
        .post("/api/v1/sessions", key, &json!({"messages": []}))
        .await;
    expect_data(response, 201).await["sessionId"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn send(
    stack: &Stack,
    key: &str,
    id: &str,
    content: &str,
    request_id: Option<&str>,
) -> reqwest::Response {
    let mut request = stack
        .http
        .post(stack.url(&format!("/api/v1/sessions/{id}/messages")))
        .bearer_auth(key)
        .json(&json!({"message": {"role": "user", "content": content}}));
    if let Some(request_id) = request_id {
        request = request.header("x-request-id", request_id);
    }
    request.send().await.unwrap()
}

async fn history(stack: &Stack, key: &str, id: &str) -> Vec<Value> {
    let response = stack
        .get(&format!("/api/v1/sessions/{id}/messages"), key)
        .await;
    expect_data(response, 200).await["messages"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn a_repeated_request_id_returns_the_stored_result_without_calling_the_model_or_charging() {
    let stack = Stack::start().await;
    let key = support::create_key(
        &stack.http,
        &stack.url(""),
        "retry",
        json!({"limits": {"requestsPerMinute": 4}}),
    )
    .await;
    let id = create(&stack, &key).await; // request 1 of 4

    let first = send(&stack, &key, &id, "pay once", Some("req-1")).await; // 2 of 4
    assert!(first.headers().get("openclaw-idempotent-replay").is_none());
    assert_eq!(first.headers()["x-request-id"], "req-1");
    let first = expect_data(first, 200).await;
    assert_eq!(first["message"]["content"], "echo: pay once");

    stack.upstream.behave(Behaviour::Reply {
        content: "a different answer".into(),
        prompt_tokens: 1,
        completion_tokens: 1,
    });
    for _ in 0..5 {
        let again = send(&stack, &key, &id, "pay once", Some("req-1")).await;
        assert_eq!(again.headers()["openclaw-idempotent-replay"], "true");
        assert_eq!(again.headers()["x-request-id"], "req-1");
        let again = expect_data(again, 200).await;
        assert_eq!(again, first, "the same message, usage and model");
    }
    assert_eq!(stack.upstream.received().len(), 1, "the model ran once");
    assert_eq!(history(&stack, &key, &id).await.len(), 2, "one turn stored"); // 3 of 4

    // The replays were not counted: two more requests are admitted, not one.
    expect_data(send(&stack, &key, &id, "new", Some("req-2")).await, 200).await; // 4 of 4
    let over = send(&stack, &key, &id, "over", Some("req-3")).await;
    expect_error(over, 429, "RATE_LIMIT_EXCEEDED").await;
}

#[tokio::test]
async fn concurrent_duplicates_wait_for_the_first_instead_of_running_twice() {
    let stack = Stack::start().await;
    let key = stack.create_key("concurrent").await;
    let id = create(&stack, &key).await;
    stack
        .upstream
        .behave(Behaviour::Stall(Duration::from_millis(600)));
    let sends = (0..6).map(|_| {
        let (stack, key, id) = (&stack, &key, &id);
        async move {
            let response = send(stack, key, id, "only once", Some("dup-1")).await;
            expect_data(response, 200).await
        }
    });
    let answers = futures::future::join_all(sends).await;
    for answer in &answers {
        assert_eq!(answer, &answers[0]);
    }
    assert_eq!(answers[0]["message"]["content"], "echo: only once");
    assert_eq!(stack.upstream.received().len(), 1, "the model ran once");
    let stored = history(&stack, &key, &id).await;
    assert_eq!(stored.len(), 2, "one turn stored: {stored:?}");
}

#[tokio::test]
async fn a_streamed_send_is_replayed_whole_or_streamed() {
    let stack = Stack::start().await;
    let key = stack.create_key("streamed").await;
    let id = create(&stack, &key).await;
    let url = stack.url(&format!("/api/v1/sessions/{id}/messages"));
    let body = json!({"message": {"role": "user", "content": "stream it"}, "stream": true});
    let streamed = stack
        .http
        .post(&url)
        .bearer_auth(&key)
        .header("x-request-id", "stream-1")
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(streamed.contains("event: done"), "{streamed}");

    let whole = send(&stack, &key, &id, "stream it", Some("stream-1")).await;
    assert_eq!(whole.headers()["openclaw-idempotent-replay"], "true");
    let whole = expect_data(whole, 200).await;
    assert_eq!(whole["message"]["content"], "echo: stream it");
    assert_eq!(whole["usage"]["totalTokens"], 15);

    let replayed = stack
        .http
        .post(&url)
        .bearer_auth(&key)
        .header("x-request-id", "stream-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.headers()["openclaw-idempotent-replay"], "true");
    let replayed = replayed.text().await.unwrap();
    assert_eq!(
        replayed.matches("event: delta").count(),
        1,
        "the whole text in one piece: {replayed}"
    );
    assert!(
        replayed.contains(r#""content":"echo: stream it""#),
        "{replayed}"
    );
    assert!(replayed.contains("event: done"), "{replayed}");
    assert_eq!(stack.upstream.received().len(), 1);
    assert_eq!(history(&stack, &key, &id).await.len(), 2);
}

#[tokio::test]
async fn a_request_id_names_one_send_of_one_session() {
    let stack = Stack::embedded().await;
    let key = stack.create_key("scope").await;
    let (a, b) = (create(&stack, &key).await, create(&stack, &key).await);
    expect_data(send(&stack, &key, &a, "hello", Some("same")).await, 200).await;

    // Another message under a used id is refused, not answered with the old result.
    let reused = send(&stack, &key, &a, "something else", Some("same")).await;
    let error = expect_error(reused, 409, "CONFLICT").await;
    assert!(
        error["details"].as_str().unwrap().contains("X-Request-ID"),
        "{error}"
    );

    // The same id in another session is another send.
    expect_data(send(&stack, &key, &b, "hello", Some("same")).await, 200).await;
    assert_eq!(history(&stack, &key, &b).await.len(), 2);

    // Without an X-Request-ID every send runs (the edge's generated ids are no keys).
    for _ in 0..2 {
        expect_data(send(&stack, &key, &a, "hello", None).await, 200).await;
    }
    assert_eq!(history(&stack, &key, &a).await.len(), 6);
    assert_eq!(stack.upstream.received().len(), 4);
}

#[tokio::test]
async fn a_failed_send_is_not_recorded_so_its_retry_runs() {
    let stack = Stack::start().await;
    let key = stack.create_key("failed").await;
    let id = create(&stack, &key).await;
    stack.upstream.behave(Behaviour::Fail {
        status: 400,
        message: "no".into(),
    });
    expect_error(
        send(&stack, &key, &id, "try", Some("f-1")).await,
        502,
        "UPSTREAM_ERROR",
    )
    .await;
    stack.upstream.behave(Behaviour::Stall(Duration::ZERO));
    let retried = send(&stack, &key, &id, "try", Some("f-1")).await;
    assert!(
        retried
            .headers()
            .get("openclaw-idempotent-replay")
            .is_none()
    );
    assert_eq!(
        expect_data(retried, 200).await["message"]["content"],
        "echo: try"
    );
    assert_eq!(history(&stack, &key, &id).await.len(), 2);
}

#[tokio::test]
async fn a_grpc_caller_repeating_its_request_id_gets_the_recorded_stream() {
    let stack = Stack::start().await;
    let key = stack.create_key("grpc").await;
    let id = create(&stack, &key).await;
    let mut client = SessionServiceClient::connect(format!("http://127.0.0.1:{}", stack.core.port))
        .await
        .unwrap();
    let request = || {
        let mut request = tonic::Request::new(proto::SendMessageRequest {
            session_id: id.clone(),
            message: Some(proto::ChatMessage {
                role: "user".into(),
                content: "via grpc".into(),
                ..Default::default()
            }),
            options: None,
        });
        let metadata = request.metadata_mut();
        metadata.insert("authorization", format!("Bearer {key}").parse().unwrap());
        metadata.insert("x-request-id", "grpc-1".parse().unwrap());
        request
    };
    let first = client.send_message(request()).await.unwrap().into_inner();
    let response = client.stream_message(request()).await.unwrap();
    assert_eq!(
        response
            .metadata()
            .get("openclaw-idempotent-replay")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let mut stream = response.into_inner();
    let mut events = Vec::new();
    while let Some(event) = futures::StreamExt::next(&mut stream).await {
        events.push(event.unwrap().event.unwrap());
    }
    match events.as_slice() {
        [Event::Delta(delta), Event::Done(done)] => {
            assert_eq!(delta.content, "echo: via grpc");
            assert_eq!(done, &first);
        }
        other => panic!("expected one delta and done, got {other:?}"),
    }
    assert_eq!(stack.upstream.received().len(), 1);
}
