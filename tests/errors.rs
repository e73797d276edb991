//! Every failure answers in the guide's envelope with the right code and
//! status, says what to fix, and leaves stored state exactly as it was.

mod support;

use serde_json::{Value, json};
use support::{INTERNAL_TOKEN, Stack, expect_data, expect_error};

async fn post_raw(
    stack: &Stack,
    key: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    stack
        .http
        .post(stack.url(path))
        .bearer_auth(key)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn history(stack: &Stack, key: &str, id: &str) -> Value {
    let response = stack
        .get(&format!("/api/v1/sessions/{id}/messages"), key)
        .await;
    expect_data(response, 200).await["messages"].clone()
}

#[tokio::test]
async fn missing_garbage_and_revoked_keys_are_unauthorized() {
    let stack = Stack::start().await;
    let status = stack.url("/api/v1/system/status");
    let none = stack.http.get(&status).send().await.unwrap();
    let error = expect_error(none, 401, "UNAUTHORIZED").await;
    assert!(
        error["details"].as_str().unwrap().contains("Authorization"),
        "{error}"
    );
    let garbage = support::get_with_key(&stack.http, &status, "not-a-key").await;
    expect_error(garbage, 401, "UNAUTHORIZED").await;
    let scheme = stack
        .http
        .get(&status)
        .header("authorization", "Basic Zm9vOmJhcg==")
        .send()
        .await
        .unwrap();
    expect_error(scheme, 401, "UNAUTHORIZED").await;
    let lookalike = support::get_with_key(
        &stack.http,
        &status,
        "oc_0000000000000000000000000000000000000000",
    )
    .await;
    expect_error(lookalike, 401, "UNAUTHORIZED").await;

    // Revocation: the key works, is revoked, and then fails within seconds.
    let key = stack.create_key("to revoke").await;
    assert_eq!(
        support::get_with_key(&stack.http, &status, &key)
            .await
            .status(),
        200
    );
    let keys = stack.get("/api/v1/keys", INTERNAL_TOKEN).await;
    let keys = expect_data(keys, 200).await;
    let id = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "to revoke")
        .and_then(|k| k["id"].as_str())
        .unwrap()
        .to_string();
    let revoked = stack
        .http
        .delete(stack.url(&format!("/api/v1/keys/{id}")))
        .bearer_auth(INTERNAL_TOKEN)
        .send()
        .await
        .unwrap();
    let revoked = expect_data(revoked, 200).await;
    assert_eq!(revoked["revoked"], true);
    assert!(
        revoked.get("key").is_none() && !revoked.to_string().contains(&key),
        "the secret is never shown again"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let response = support::get_with_key(&stack.http, &status, &key).await;
        if response.status() == 401 {
            let error = expect_error(response, 401, "UNAUTHORIZED").await;
            assert!(
                error["details"].as_str().unwrap().contains("revoked"),
                "{error}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "revocation took effect within 5 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn key_administration_needs_the_internal_token() {
    let stack = Stack::start().await;
    let key = stack.create_key("ordinary").await;
    let response = stack
        .post("/api/v1/keys", &key, &json!({"name": "escalate"}))
        .await;
    expect_error(response, 403, "FORBIDDEN").await;
    let response = stack
        .http
        .get(stack.url("/api/v1/keys"))
        .send()
        .await
        .unwrap();
    expect_error(response, 401, "UNAUTHORIZED").await;
    let response = stack.get("/api/v1/keys/key_nope", INTERNAL_TOKEN).await;
    expect_error(response, 404, "NOT_FOUND").await;
    let response = stack
        .post("/api/v1/keys", INTERNAL_TOKEN, &json!({"name": ""}))
        .await;
    let error = expect_error(response, 400, "INVALID_REQUEST").await;
    assert!(
        error["details"].as_str().unwrap().contains("'name'"),
        "{error}"
    );
    let response = stack
        .post(
            "/api/v1/keys",
            INTERNAL_TOKEN,
            &json!({"name": "x", "scopes": ["root"]}),
        )
        .await;
    expect_error(response, 400, "INVALID_REQUEST").await;
}

#[tokio::test]
async fn a_key_without_the_scope_is_forbidden() {
    let stack = Stack::start().await;
    let key = support::create_key(
        &stack.http,
        &stack.url(""),
        "status only",
        json!({"scopes": ["status"]}),
    )
    .await;
    let response = stack
        .post("/api/v1/sessions", &key, &json!({"messages": []}))
        .await;
    let error = expect_error(response, 403, "FORBIDDEN").await;
    assert!(
        error["details"].as_str().unwrap().contains("sessions"),
        "{error}"
    );
    let response = stack.get("/api/v1/system/status", &key).await;
    expect_data(response, 200).await;
}

#[tokio::test]
async fn bad_input_is_invalid_request_and_changes_nothing() {
    let stack = Stack::start().await;
    let key = stack.create_key("bad input").await;
    let created = stack.post("/api/v1/sessions", &key, &json!({"messages": [{"role": "user", "content": "keep me"}], "context": {"sessionId": "kept"}})).await;
    expect_data(created, 201).await;
    let before = history(&stack, &key, "kept").await;
    let send = "/api/v1/sessions/kept/messages";

    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "malformed JSON",
            "application/json",
            b"{\"message\": {".to_vec(),
            400,
            "JSON",
        ),
        (
            "wrong type",
            "application/json",
            br#"{"message": {"role": "user", "content": 5}}"#.to_vec(),
            400,
            "message.content",
        ),
        (
            "empty content",
            "application/json",
            br#"{"message": {"role": "user", "content": "  "}}"#.to_vec(),
            400,
            "message.content",
        ),
        (
            "unknown role",
            "application/json",
            br#"{"message": {"role": "wizard", "content": "hi"}}"#.to_vec(),
            400,
            "role",
        ),
        (
            "assistant role on send",
            "application/json",
            br#"{"message": {"role": "assistant", "content": "hi"}}"#.to_vec(),
            400,
            "role",
        ),
        (
            "missing message",
            "application/json",
            br#"{}"#.to_vec(),
            400,
            "message",
        ),
        (
            "non-UTF-8",
            "application/json",
            b"{\"message\": {\"role\": \"user\", \"content\": \"\xff\xfe\"}}".to_vec(),
            400,
            "",
        ),
        (
            "not JSON",
            "text/plain",
            b"hello".to_vec(),
            415,
            "application/json",
        ),
        (
            "bad temperature",
            "application/json",
            br#"{"message": {"role": "user", "content": "hi"}, "temperature": 9}"#.to_vec(),
            400,
            "temperature",
        ),
        (
            "bad maxTokens",
            "application/json",
            br#"{"message": {"role": "user", "content": "hi"}, "maxTokens": 0}"#.to_vec(),
            400,
            "maxTokens",
        ),
        (
            "huge body",
            "application/json",
            format!(
                "{{\"message\": {{\"role\": \"user\", \"content\": \"{}\"}}}}",
                "a".repeat(3 << 20)
            )
            .into_bytes(),
            413,
            "",
        ),
    ];
    for (what, content_type, body, status, mention) in cases {
        let response = post_raw(&stack, &key, send, content_type, body).await;
        let error = expect_error(response, status, "INVALID_REQUEST").await;
        assert!(
            error["details"].as_str().unwrap().contains(mention),
            "{what}: details should mention {mention:?}: {error}"
        );
    }
    assert_eq!(
        history(&stack, &key, "kept").await,
        before,
        "bad input changed nothing"
    );
    assert!(
        stack.upstream.received().len() == 1,
        "no model call was made for bad input"
    );

    // Creating: unknown model (listing the known ones), bad session id.
    let response = stack
        .post(
            "/api/v1/sessions",
            &key,
            &json!({"model": "gpt-99", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    let error = expect_error(response, 400, "INVALID_REQUEST").await;
    assert!(
        error["details"]
            .as_str()
            .unwrap()
            .contains("zai/glm-4.5-flash"),
        "{error}"
    );
    let response = stack
        .post(
            "/api/v1/sessions",
            &key,
            &json!({"messages": [], "context": {"sessionId": "bad id/with slash"}}),
        )
        .await;
    let error = expect_error(response, 400, "INVALID_REQUEST").await;
    assert!(
        error["details"]
            .as_str()
            .unwrap()
            .contains("context.sessionId"),
        "{error}"
    );
    let response = stack
        .post("/api/v1/sessions", &key, &json!({"messages": "hello"}))
        .await;
    expect_error(response, 400, "INVALID_REQUEST").await;
    let response = stack
        .get(&format!("/api/v1/sessions/{}", "x".repeat(200)), &key)
        .await;
    expect_error(response, 400, "INVALID_REQUEST").await;
    let response = stack.get("/api/v1/sessions/no-such", &key).await;
    expect_error(response, 404, "NOT_FOUND").await;
}

#[tokio::test]
async fn the_version_header_unknown_routes_and_methods_answer_in_the_envelope() {
    let stack = Stack::start().await;
    let key = stack.create_key("headers").await;
    let response = stack
        .http
        .get(stack.url("/api/v1/system/status"))
        .bearer_auth(&key)
        .header("OpenClaw-Version", "2.0")
        .send()
        .await
        .unwrap();
    let error = expect_error(response, 400, "INVALID_REQUEST").await;
    assert!(
        error["details"].as_str().unwrap().contains("1.0"),
        "{error}"
    );

    let response = stack.get("/api/v1/nothing-here", &key).await;
    expect_error(response, 404, "NOT_FOUND").await;
    let response = stack
        .http
        .put(stack.url("/api/v1/system/status"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("allow"));
    expect_error(response, 405, "INVALID_REQUEST").await;

    // A request id is generated when absent and echoed when given.
    let response = stack.get("/api/v1/system/status", &key).await;
    assert!(!response.headers()["x-request-id"].is_empty());
    assert_eq!(response.headers()["openclaw-version"], "1.0");
}

#[tokio::test]
async fn an_unreachable_upstream_or_redis_is_a_clean_error() {
    let stack = Stack::start().await;
    let key = stack.create_key("deps").await;
    let created = stack
        .post("/api/v1/sessions", &key, &json!({"messages": []}))
        .await;
    let id = expect_data(created, 201).await["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    let mut stack = stack;
    if let Some(redis) = stack.redis.as_mut() {
        redis.kill();
    }
    let started = std::time::Instant::now();
    let response = stack
        .post(
            &format!("/api/v1/sessions/{id}/messages"),
            &key,
            &json!({"message": {"role": "user", "content": "anyone?"}}),
        )
        .await;
    let error = expect_error(response, 503, "UNAVAILABLE").await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "a dead Redis fails fast"
    );
    assert!(
        !error.to_string().to_lowercase().contains("redis://"),
        "{error}"
    );
}

#[tokio::test]
async fn an_unreachable_core_is_unavailable() {
    let mut stack = Stack::start().await;
    let key = stack.create_key("core down").await;
    stack.core.kill();
    let response = stack.get("/api/v1/system/status", &key).await;
    expect_error(response, 503, "UNAVAILABLE").await;
}

#[tokio::test]
async fn a_stalled_upstream_is_upstream_timeout() {
    let upstream = support::FakeUpstream::start().await;
    let redis = support::start_redis();
    let dir = tempfile::tempdir().unwrap();
    let core = support::spawn_core(&support::CoreOptions {
        redis_url: Some(support::redis_url(&redis)),
        upstream: Some(upstream.base_url()),
        data_dir: Some(dir.path().to_path_buf()),
        env: vec![("OPENCLAW_PROVIDER_TIMEOUT_MS".into(), "300".into())],
    });
    let edge = support::spawn_edge(&[&core]);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", edge.port);
    let key = support::create_key(&http, &base, "slow", json!({})).await;
    upstream.behave(support::Behaviour::Stall(std::time::Duration::from_secs(3)));
    let response = support::post_with_key(
        &http,
        format!("{base}/api/v1/sessions"),
        &key,
        &json!({"messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    expect_error(response, 504, "UPSTREAM_TIMEOUT").await;
}
