//! Streamed replies end to end: server-sent events on REST, a server stream on
//! gRPC; the same stored turn and usage as a whole reply; a client that leaves
//! mid-stream; a stream that breaks.

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use openclaw_gateway::proto::session_service_client::SessionServiceClient;
use openclaw_gateway::proto::{self, stream_event::Event};
use serde_json::{Value, json};
use support::{Behaviour, Stack, expect_data, expect_error};

/// One server-sent event: its name and its data as JSON.
#[derive(Debug, Clone)]
struct Sse {
    event: String,
    data: Value,
    at: Instant,
}

/// Reads server-sent events off a response as they arrive.
struct Events {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl Events {
    fn new(response: reqwest::Response) -> Self {
        Self {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = "message".to_string();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(name) = line.strip_prefix("event:") {
                        event = name.trim().to_string();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                return Some(Sse {
                    event,
                    data,
                    at: Instant::now(),
                });
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.body.next())
                .await
                .expect("an event within 20 s")?
                .expect("the stream reads");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    async fn all(mut self) -> Vec<Sse> {
        let mut out = Vec::new();
        while let Some(event) = self.next().await {
            out.push(event);
        }
        out
    }
}

async fn create(stack: &Stack, key: &str) -> String {
    let response = stack
        .post(
            "/api/v1/sessions",
            key,
            &json!({"messages": [{"role": "system", "content": "Be brief"}]}),
        )
        .await;
    expect_data(response, 201).await["sessionId"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn send_streamed(stack: &Stack, key: &str, id: &str, content: &str) -> reqwest::Response {
    stack
        .post(
            &format!("/api/v1/sessions/{id}/messages"),
            key,
            &json!({"message": {"role": "user", "content": content}, "stream": true}),
        )
        .await
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

fn text_of(events: &[Sse]) -> String {
    events
        .iter()
        .filter(|e| e.event == "delta")
        .map(|e| e.data["content"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_streamed_send_arrives_as_deltas_then_done_and_stores_what_a_whole_send_would() {
    let stack = Stack::start().await;
    let key = stack.create_key("stream").await;
    let id = create(&stack, &key).await;

    let response = send_streamed(&stack, &key, &id, "hello there").await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert!(headers.contains_key("x-request-id"));
    assert!(headers.contains_key("x-ratelimit-remaining-requests"));
    let events = Events::new(response).all().await;
    let deltas = events.iter().filter(|e| e.event == "delta").count();
    assert!(deltas >= 2, "the reply came in pieces: {events:?}");
    let done = events.last().unwrap();
    assert_eq!(done.event, "done", "{events:?}");
    assert_eq!(text_of(&events), "echo: hello there");
    assert_eq!(done.data["sessionId"], id.as_str());
    assert_eq!(done.data["message"]["content"], "echo: hello there");
    assert_eq!(done.data["message"]["role"], "assistant");
    assert_eq!(
        done.data["usage"],
        json!({"promptTokens": 10, "completionTokens": 5, "totalTokens": 15}),
        "the usage the provider reported at the end of its stream"
    );
    assert_eq!(done.data["model"], "zai/glm-4.7-flash");
    assert_eq!(done.data["finishReason"], "stop");

    let sent = stack.upstream.received();
    assert_eq!(sent[0]["stream"], true);
    assert_eq!(sent[0]["stream_options"]["include_usage"], true);

    // A whole send right after stores the same shape of turn.
    let whole = stack
        .post(
            &format!("/api/v1/sessions/{id}/messages"),
            &key,
            &json!({"message": {"role": "user", "content": "again"}}),
        )
        .await;
    let whole = expect_data(whole, 200).await;
    assert_eq!(whole["usage"], done.data["usage"]);
    let stored = history(&stack, &key, &id).await;
    let turns: Vec<(&str, &str)> = stored
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(
        turns,
        [
            ("system", "Be brief"),
            ("user", "hello there"),
            ("assistant", "echo: hello there"),
            ("user", "again"),
            ("assistant", "echo: again"),
        ]
    );
    // The streamed call saw the same history a whole one would have.
    assert_eq!(sent[0]["messages"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn accept_event_stream_asks_for_a_stream_and_stream_false_overrides_it() {
    let stack = Stack::embedded().await;
    let key = stack.create_key("accept").await;
    let id = create(&stack, &key).await;
    let url = stack.url(&format!("/api/v1/sessions/{id}/messages"));

    let streamed = stack
        .http
        .post(&url)
        .bearer_auth(&key)
        .header("accept", "text/event-stream")
        .json(&json!({"message": {"role": "user", "content": "one"}}))
        .send()
        .await
        .unwrap();
    let events = Events::new(streamed).all().await;
    assert_eq!(events.last().unwrap().event, "done");
    assert_eq!(text_of(&events), "echo: one");

    let whole = stack
        .http
        .post(&url)
        .bearer_auth(&key)
        .header("accept", "text/event-stream")
        .json(&json!({"message": {"role": "user", "content": "two"}, "stream": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        expect_data(whole, 200).await["message"]["content"],
        "echo: two"
    );
}

#[tokio::test]
async fn the_first_piece_reaches_the_client_while_the_model_is_still_writing() {
    let stack = Stack::start().await;
    let key = stack.create_key("ttfb").await;
    let id = create(&stack, &key).await;
    stack.upstream.behave(Behaviour::Stream {
        chunks: vec!["Hello".into(), ", ".into(), "world".into()],
        delay: Duration::from_millis(400),
        prompt_tokens: 7,
        completion_tokens: 3,
    });
    let started = Instant::now();
    let response = send_streamed(&stack, &key, &id, "hi").await;
    let events = Events::new(response).all().await;
    let first = events.iter().find(|e| e.event == "delta").unwrap();
    let done = events.last().unwrap();
    assert_eq!(first.data["content"], "Hello");
    assert_eq!(done.event, "done");
    assert_eq!(done.data["message"]["content"], "Hello, world");
    assert_eq!(
        done.data["usage"],
        json!({"promptTokens": 7, "completionTokens": 3, "totalTokens": 10})
    );
    let first_at = first.at - started;
    let done_at = done.at - started;
    // The upstream sent its first piece at ~400 ms and its last at ~1200 ms.
    assert!(
        first_at + Duration::from_millis(500) < done_at,
        "first piece at {first_at:?}, done at {done_at:?}: pieces must be forwarded as they arrive"
    );
    assert!(done_at >= Duration::from_millis(1100), "{done_at:?}");
}

#[tokio::test]
async fn grpc_stream_message_sends_deltas_then_the_stored_reply() {
    let stack = Stack::start().await;
    let key = stack.create_key("grpc").await;
    let id = create(&stack, &key).await;
    let mut client = SessionServiceClient::connect(format!("http://127.0.0.1:{}", stack.core.port))
        .await
        .unwrap();
    let mut request = tonic::Request::new(proto::SendMessageRequest {
        session_id: id.clone(),
        message: Some(proto::ChatMessage {
            role: "user".into(),
            content: "over grpc".into(),
            ..Default::default()
        }),
        options: None,
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    let response = client.stream_message(request).await.unwrap();
    assert!(
        response
            .metadata()
            .get("x-ratelimit-remaining-requests")
            .is_some()
    );
    let mut stream = response.into_inner();
    let mut text = String::new();
    let mut done = None;
    while let Some(event) = stream.next().await {
        match event.unwrap().event.unwrap() {
            Event::Delta(delta) => {
                assert!(done.is_none(), "no delta after done");
                assert!(!delta.content.is_empty());
                text.push_str(&delta.content);
            }
            Event::Done(response) => done = Some(response),
        }
    }
    let done = done.expect("a done event");
    let reply = done.reply.unwrap();
    assert_eq!(done.session_id, id);
    assert_eq!(text, "echo: over grpc");
    assert_eq!(reply.message.unwrap().content, text);
    assert_eq!(reply.usage.unwrap().total_tokens, 15);
    let stored = history(&stack, &key, &id).await;
    assert_eq!(stored.last().unwrap()["content"], "echo: over grpc");
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_still_gets_the_whole_turn_stored() {
    let stack = Stack::start().await;
    let key = stack.create_key("leave").await;
    let id = create(&stack, &key).await;
    let chunks: Vec<String> = ["one ", "two ", "three ", "four ", "five"]
        .map(String::from)
        .to_vec();
    stack.upstream.behave(Behaviour::Stream {
        chunks: chunks.clone(),
        delay: Duration::from_millis(200),
        prompt_tokens: 9,
        completion_tokens: 5,
    });
    let response = send_streamed(&stack, &key, &id, "count").await;
    let mut events = Events::new(response);
    let first = events.next().await.unwrap();
    assert_eq!(first.event, "delta");
    assert_eq!(first.data["content"], "one ");
    drop(events); // the client hangs up after the first piece

    // The core reads the model's answer to its end and stores the turn whole.
    let deadline = Instant::now() + Duration::from_secs(10);
    let stored = loop {
        let stored = history(&stack, &key, &id).await;
        if stored.len() == 3 || Instant::now() > deadline {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(stored.len(), 3, "system, user, assistant: {stored:?}");
    assert_eq!(stored[1]["content"], "count");
    assert_eq!(stored[2]["content"], chunks.concat());

    // The session is not left locked: the next send is answered at once.
    stack.upstream.behave(Behaviour::Stall(Duration::ZERO));
    let next = stack
        .post(
            &format!("/api/v1/sessions/{id}/messages"),
            &key,
            &json!({"message": {"role": "user", "content": "still there?"}}),
        )
        .await;
    assert_eq!(
        expect_data(next, 200).await["message"]["content"],
        "echo: still there?"
    );
}

#[tokio::test]
async fn a_client_that_leaves_before_the_first_piece_still_gets_the_turn_stored() {
    let stack = Stack::start().await;
    let key = stack.create_key("early").await;
    let id = create(&stack, &key).await;
    stack.upstream.behave(Behaviour::Stream {
        chunks: vec!["slow ".into(), "answer".into()],
        delay: Duration::from_millis(700),
        prompt_tokens: 4,
        completion_tokens: 2,
    });
    let url = stack.url(&format!("/api/v1/sessions/{id}/messages"));
    let request = stack
        .http
        .post(&url)
        .bearer_auth(&key)
        .json(&json!({"message": {"role": "user", "content": "wait"}, "stream": true}))
        .send();
    // The client gives up while the model has not written anything yet.
    assert!(
        tokio::time::timeout(Duration::from_millis(250), request)
            .await
            .is_err()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let stored = loop {
        let stored = history(&stack, &key, &id).await;
        if stored.len() == 3 || Instant::now() > deadline {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(stored.len(), 3, "{stored:?}");
    assert_eq!(stored[2]["content"], "slow answer");
    stack.upstream.behave(Behaviour::Stall(Duration::ZERO));
    let next = support::post_with_key(
        &stack.http,
        &url,
        &key,
        &json!({"message": {"role": "user", "content": "next"}}),
    )
    .await;
    assert_eq!(
        expect_data(next, 200).await["message"]["content"],
        "echo: next",
        "the lock was released"
    );
}

#[tokio::test]
async fn a_model_that_fails_before_its_first_piece_answers_an_ordinary_error() {
    let stack = Stack::start().await;
    let key = stack.create_key("fails").await;
    let id = create(&stack, &key).await;
    stack.upstream.behave(Behaviour::Fail {
        status: 400,
        message: "bad request".into(),
    });
    let response = send_streamed(&stack, &key, &id, "hi").await;
    let error = expect_error(response, 502, "UPSTREAM_ERROR").await;
    assert!(
        error["details"].as_str().unwrap().contains("zai"),
        "{error}"
    );
    assert_eq!(history(&stack, &key, &id).await.len(), 1, "nothing stored");

    let missing = send_streamed(&stack, &key, "no-such-session", "hi").await;
    expect_error(missing, 404, "NOT_FOUND").await;
}

#[tokio::test]
async fn a_stream_that_breaks_midway_ends_with_an_error_event_and_stores_nothing() {
    let stack = Stack::with_providers(|upstream| {
        format!(
            r#"
            [[providers]]
            name = "zai"
            baseUrl = "{}"
            apiKeyEnv = "ZAI_API_KEY"
            timeoutMs = 1000
            models = [{{ name = "glm-4.7-flash" }}]
            "#,
            upstream.base_url()
        )
    })
    .await;
    let key = stack.create_key("breaks").await;
    let id = create(&stack, &key).await;
    stack.upstream.behave(Behaviour::StallMidStream {
        after: 1,
        stall: Duration::from_secs(5),
    });
    let response = send_streamed(&stack, &key, &id, "tell me").await;
    assert_eq!(response.status(), 200);
    let events = Events::new(response).all().await;
    assert_eq!(events[0].event, "delta");
    let last = events.last().unwrap();
    assert_eq!(last.event, "error", "{events:?}");
    assert_eq!(last.data["code"], "UPSTREAM_TIMEOUT");
    assert!(last.data["details"].as_str().is_some_and(|d| !d.is_empty()));
    assert_eq!(
        stack.upstream.received().len(),
        1,
        "never retried after the first piece"
    );
    assert_eq!(history(&stack, &key, &id).await.len(), 1, "nothing stored");

    // The lock was given back.
    stack.upstream.behave(Behaviour::Stall(Duration::ZERO));
    let events = Events::new(send_streamed(&stack, &key, &id, "again").await)
        .all()
        .await;
    assert_eq!(events.last().unwrap().event, "done");
}
