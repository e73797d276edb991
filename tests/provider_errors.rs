//! What a model provider says when it refuses a call stays with the operators: tenants are told
//! which provider answered which status, and the request id under which the gateway logged the
//! provider's own words, whichever way they asked (the guide's API, OpenAI's `/v1`, whole or
//! streamed).

mod support;

use serde_json::json;
use support::{Behaviour, Stack, expect_data};

/// What a provider's refusal might carry: an account id and a fragment of the key.
const PROVIDER_SECRET: &str = "acct_9f3e2b sk-live-4c8d****7a1f";

async fn refusing_stack() -> (Stack, String, String) {
    let stack = Stack::start().await;
    let key = stack.create_key("refused").await;
    let created = stack
        .post(
            "/api/v1/sessions",
            &key,
            &json!({"messages": [{"role": "system", "content": "Be brief"}]}),
        )
        .await;
    let id = expect_data(created, 201).await["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    stack.upstream.behave(Behaviour::Fail {
        status: 401,
        message: format!("Invalid API key for {PROVIDER_SECRET}"),
    });
    (stack, key, id)
}

/// The answer's headers and its body, as text.
async fn answered(
    stack: &Stack,
    key: &str,
    path: &str,
    body: serde_json::Value,
) -> (String, String) {
    let response = stack
        .http
        .post(stack.url(path))
        .bearer_auth(key)
        .header("x-request-id", "req-provider-refusal-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let headers = format!("{:?}", response.headers());
    let text = response.text().await.unwrap();
    assert!(
        status.is_client_error() || status.is_server_error() || text.contains("error"),
        "the call failed: {status} {text}"
    );
    (headers, text)
}

#[tokio::test]
async fn a_provider_refusal_reaches_tenants_as_its_status_and_the_request_id_only() {
    let (stack, key, id) = refusing_stack().await;
    let message = json!({"message": {"role": "user", "content": "hi"}});
    let mut streamed = message.clone();
    streamed["stream"] = json!(true);
    let chat =
        json!({"model": "zai/glm-4.7-flash", "messages": [{"role": "user", "content": "hi"}]});
    let mut chat_streamed = chat.clone();
    chat_streamed["stream"] = json!(true);
    let messages = format!("/api/v1/sessions/{id}/messages");
    for (what, path, body) in [
        ("a turn", messages.as_str(), message),
        ("a streamed turn", messages.as_str(), streamed),
        ("a /v1 completion", "/v1/chat/completions", chat),
        (
            "a streamed /v1 completion",
            "/v1/chat/completions",
            chat_streamed,
        ),
    ] {
        let (headers, answer) = answered(&stack, &key, path, body).await;
        assert!(!headers.contains("acct_9f3e2b"), "{what}: {headers}");
        assert!(
            !answer.contains("acct_9f3e2b") && !answer.contains("sk-live"),
            "{what} showed the provider's words: {answer}"
        );
        assert!(
            !answer.contains("Invalid API key for"),
            "{what} showed the provider's words: {answer}"
        );
        assert!(
            answer.contains("401") && answer.contains("zai"),
            "{what} names the provider and its status: {answer}"
        );
        assert!(
            answer.contains("req-provider-refusal-1"),
            "{what} names the request id: {answer}"
        );
    }
}
