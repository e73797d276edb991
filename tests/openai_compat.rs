//! The OpenAI-compatible surface: the official OpenAI Python SDK works against
//! the gateway unchanged (whole and streamed), `/v1` answers in OpenAI's
//! shapes and errors, the same keys and limits apply, and a session can be
//! bound to record the turns.

mod support;

use serde_json::{Value, json};
use support::{Stack, ensure_openai_sdk, expect_data};

const SDK_SCRIPT: &str = r#"
import json, os, sys
import openai
from openai import OpenAI

base, key = os.environ["GATEWAY_BASE"], os.environ["GATEWAY_KEY"]
client = OpenAI(base_url=base, api_key=key, max_retries=0)
out = {"version": openai.__version__}

out["models"] = [m.id for m in client.models.list().data]

whole = client.chat.completions.create(
    model="zai/glm-4.7-flash",
    messages=[{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hello SDK"}],
    max_tokens=50,
    temperature=0.2,
)
out["whole"] = {
    "id": whole.id,
    "object": whole.object,
    "model": whole.model,
    "role": whole.choices[0].message.role,
    "content": whole.choices[0].message.content,
    "finish": whole.choices[0].finish_reason,
    "usage": whole.usage.model_dump(exclude_none=True),
}

pieces, usage, finish, ids = [], None, None, set()
stream = client.chat.completions.create(
    model="glm-4.7-flash",
    messages=[{"role": "user", "content": "Stream SDK please"}],
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    ids.add(chunk.id)
    if chunk.usage is not None:
        usage = chunk.usage.model_dump(exclude_none=True)
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
out["stream"] = {"pieces": pieces, "usage": usage, "finish": finish, "ids": len(ids)}

try:
    OpenAI(base_url=base, api_key="oc_not_a_key", max_retries=0).chat.completions.create(
        model="zai/glm-4.7-flash", messages=[{"role": "user", "content": "x"}])
    out["auth_error"] = None
except openai.AuthenticationError as e:
    out["auth_error"] = {"status": e.status_code, "type": e.type, "code": e.code, "message": e.message}

try:
    client.chat.completions.create(model="nope/none", messages=[{"role": "user", "content": "x"}])
    out["model_error"] = None
except openai.BadRequestError as e:
    out["model_error"] = {"status": e.status_code, "code": e.code, "param": e.param, "message": e.message}

raw = client.chat.completions.with_raw_response.create(
    model="zai/glm-4.7-flash",
    messages=[{"role": "user", "content": "Remember me"}],
    extra_headers={"OpenClaw-Session-Id": "sdk-chat"},
)
bound = raw.parse()
out["bound"] = {"session": raw.headers.get("openclaw-session-id"), "content": bound.choices[0].message.content}

print(json.dumps(out))
"#;

#[tokio::test]
async fn the_official_openai_python_sdk_works_unchanged_whole_and_streamed() {
    ensure_openai_sdk().await;
    let stack = Stack::start().await;
    let key = stack.create_key("sdk").await;
    let output = tokio::process::Command::new("python3")
        .args(["-c", SDK_SCRIPT])
        .env("GATEWAY_BASE", stack.url("/v1"))
        .env("GATEWAY_KEY", &key)
        .output()
        .await
        .expect("run python3");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the SDK script failed:\n{stderr}");
    let out: Value = serde_json::from_slice(&output.stdout).expect("the script prints JSON");

    assert_eq!(out["models"][0], "zai/glm-4.7-flash", "{out}");
    assert!(out["models"].as_array().unwrap().len() >= 3, "{out}");

    let whole = &out["whole"];
    assert!(whole["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["model"], "zai/glm-4.7-flash");
    assert_eq!(whole["role"], "assistant");
    assert_eq!(whole["content"], "echo: Hello SDK");
    assert_eq!(whole["finish"], "stop");
    assert_eq!(
        whole["usage"],
        json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})
    );

    let stream = &out["stream"];
    let pieces: Vec<&str> = stream["pieces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(pieces.len() >= 2, "streamed in pieces: {stream}");
    assert_eq!(pieces.concat(), "echo: Stream SDK please");
    assert_eq!(stream["finish"], "stop");
    assert_eq!(stream["ids"], 1, "one id for every chunk");
    assert_eq!(
        stream["usage"],
        json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})
    );

    assert_eq!(out["auth_error"]["status"], 401, "{out}");
    assert_eq!(out["auth_error"]["type"], "authentication_error");
    assert_eq!(out["model_error"]["status"], 400, "{out}");
    assert_eq!(out["model_error"]["code"], "model_not_found");
    assert_eq!(out["model_error"]["param"], "model");

    assert_eq!(out["bound"]["session"], "sdk-chat");
    let history = stack.get("/api/v1/sessions/sdk-chat/messages", &key).await;
    let messages = expect_data(history, 200).await["messages"].clone();
    assert_eq!(messages[0]["content"], "Remember me");
    assert_eq!(messages[1]["content"], "echo: Remember me");

    // The model heard exactly what the SDK sent, options included.
    let sent = &stack.upstream.received()[0];
    assert_eq!(sent["model"], "glm-4.7-flash");
    assert_eq!(sent["max_tokens"], 50);
    assert_eq!(sent["messages"][0]["role"], "system");
}

async fn complete(stack: &Stack, key: &str, body: Value) -> reqwest::Response {
    stack.post("/v1/chat/completions", key, &body).await
}

async fn openai_error(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    let body: Value = response.json().await.unwrap();
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    assert!(error.get("param").is_some(), "{body}");
    assert!(error["code"].is_string(), "{body}");
    assert!(body.get("success").is_none(), "not the envelope: {body}");
    error.clone()
}

#[tokio::test]
async fn v1_errors_are_openai_shaped_and_the_same_limits_apply() {
    let stack = Stack::start().await;
    let key = support::create_key(
        &stack.http,
        &stack.url(""),
        "limited",
        json!({"limits": {"requestsPerMinute": 2}}),
    )
    .await;
    let hello =
        json!({"model": "zai/glm-4.7-flash", "messages": [{"role": "user", "content": "hi"}]});

    let unauthenticated = stack
        .http
        .post(stack.url("/v1/chat/completions"))
        .json(&hello)
        .send()
        .await
        .unwrap();
    let error = openai_error(unauthenticated, 401).await;
    assert_eq!(error["type"], "authentication_error");

    let malformed = stack
        .http
        .post(stack.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(
        openai_error(malformed, 400).await["type"],
        "invalid_request_error"
    );

    let no_model = complete(
        &stack,
        &key,
        json!({"messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    let error = openai_error(no_model, 400).await;
    assert_eq!(error["param"], "model");

    let last_not_user = complete(
        &stack,
        &key,
        json!({"model": "zai/glm-4.7-flash", "messages": [{"role": "assistant", "content": "x"}]}),
    )
    .await;
    openai_error(last_not_user, 400).await;

    // Refused requests above did not reach the limiter's count of admitted
    // ones past validation; two answered completions use up the key's 2.
    let mut answered = 0;
    let mut limited = None;
    for _ in 0..4 {
        let response = complete(&stack, &key, hello.clone()).await;
        if response.status() == 200 {
            answered += 1;
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["object"], "chat.completion");
        } else {
            limited = Some(response);
            break;
        }
    }
    assert!(answered <= 2, "{answered}");
    let limited = limited.expect("the key's request limit applies on /v1");
    assert!(limited.headers().contains_key("retry-after"));
    assert!(limited.headers().contains_key("x-ratelimit-limit-requests"));
    let error = openai_error(limited, 429).await;
    assert_eq!(error["type"], "rate_limit_error");
    assert_eq!(error["code"], "rate_limit_exceeded");
}

#[tokio::test]
async fn a_streamed_completion_is_openai_chunks_ending_with_done() {
    let stack = Stack::start().await;
    let key = stack.create_key("chunks").await;
    let response = complete(
        &stack,
        &key,
        json!({
            "model": "zai/glm-4.7-flash",
            "messages": [{"role": "user", "content": "chunk me"}],
            "stream": true,
            "stream_options": {"include_usage": true},
        }),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = response.text().await.unwrap();
    let data: Vec<&str> = text
        .split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .collect();
    assert_eq!(*data.last().unwrap(), "[DONE]", "{text}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], chunks[0]["id"]);
        assert_eq!(chunk["model"], "zai/glm-4.7-flash");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "echo: chunk me");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(finish["usage"], Value::Null);
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})
    );
}

#[tokio::test]
async fn a_bound_session_records_the_conversation_the_client_keeps() {
    let stack = Stack::embedded().await;
    let key = stack.create_key("bound").await;
    let bound = |body: Value| {
        stack
            .http
            .post(stack.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .header("OpenClaw-Session-Id", "my-chat")
            .json(&body)
            .send()
    };
    let first = bound(json!({
        "model": "zai/glm-4.7-flash",
        "messages": [{"role": "developer", "content": "Be brief"}, {"role": "user", "content": "one"}],
    }))
    .await
    .unwrap();
    assert_eq!(first.headers()["openclaw-session-id"], "my-chat");
    let first: Value = first.json().await.unwrap();
    let reply = first["choices"][0]["message"]["content"].clone();
    assert_eq!(reply, "echo: one");

    // The client sends the whole conversation again, as OpenAI clients do; streamed this time.
    let second = bound(json!({
        "model": "zai/glm-4.7-flash",
        "stream": true,
        "messages": [
            {"role": "developer", "content": "Be brief"},
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": reply},
            {"role": "user", "content": "two"},
        ],
    }))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(second.ends_with("data: [DONE]\n\n"), "{second}");

    let history = stack.get("/api/v1/sessions/my-chat/messages", &key).await;
    let messages = expect_data(history, 200).await["messages"].clone();
    let turns: Vec<(&str, &str)> = messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(
        turns,
        [
            ("system", "Be brief"),
            ("user", "one"),
            ("assistant", "echo: one"),
            ("user", "two"),
            ("assistant", "echo: two"),
        ]
    );
    // The model saw what the client sent, not the stored history twice.
    assert_eq!(
        stack.upstream.received()[1]["messages"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
}
