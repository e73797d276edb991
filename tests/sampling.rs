//! Every request field reaches the provider or is refused, naming it: `stop`, `top_p`, `seed`,
//! the penalties, `logit_bias`, `user` and `response_format` (`json_schema` with `strict`)
//! arrive intact at an OpenAI-compatible upstream from `/v1` and from the sessions API (per
//! session and per send); an Anthropic provider gets what its API has and refuses the rest;
//! fields the gateway does not serve (`functions`, `audio`, a message's `audio`, anything unknown)
//! are 400 naming the field; and the offline simulator answers JSON modes with JSON.

mod support;

#[path = "support/anthropic.rs"]
mod fake_anthropic;

use serde_json::{Value, json};
use support::{
    CoreOptions, Offline, Process, Stack, create_key, expect_data, post_with_key, spawn_core,
    spawn_edge, wait_until_ready,
};

fn zai(upstream: &support::FakeUpstream) -> String {
    format!(
        r#"
        [[providers]]
        name = "zai"
        baseUrl = "{}"
        apiKeyEnv = "ZAI_API_KEY"
        retry = {{ maxRetries = 0 }}
        models = [{{ name = "glm-4.7-flash" }}]
        "#,
        upstream.base_url()
    )
}

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {"city": {"type": "string"}, "celsius": {"type": "number"}},
        "required": ["city", "celsius"],
        "additionalProperties": false
    })
}

async fn openai_error(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    let body: Value = response.json().await.unwrap();
    body["error"].clone()
}

#[tokio::test]
async fn every_v1_sampling_field_reaches_the_provider_intact() {
    let stack = Stack::with_providers(zai).await;
    let key = stack.create_key("fields").await;
    let response = stack
        .post(
            "/v1/chat/completions",
            &key,
            &json!({
                "model": "zai/glm-4.7-flash",
                "messages": [{"role": "user", "content": "Weather in Oslo?"}],
                "temperature": 0.3,
                "max_tokens": 100,
                "stop": ["\n\n", "END"],
                "top_p": 0.5,
                "seed": 1234,
                "presence_penalty": 0.25,
                "frequency_penalty": -0.5,
                "logit_bias": {"50256": -100, "11": 5},
                "user": "end-user-7",
                "response_format": {"type": "json_schema", "json_schema": {
                    "name": "weather", "description": "A forecast", "schema": schema(), "strict": true}}
            }),
        )
        .await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let sent = stack.upstream.received().pop().unwrap();
    assert_eq!(sent["temperature"], 0.3);
    assert_eq!(sent["max_tokens"], 100);
    assert_eq!(sent["stop"], json!(["\n\n", "END"]));
    assert_eq!(sent["top_p"], 0.5);
    assert_eq!(sent["seed"], 1234);
    assert_eq!(sent["presence_penalty"], 0.25);
    assert_eq!(sent["frequency_penalty"], -0.5);
    assert_eq!(sent["logit_bias"], json!({"11": 5.0, "50256": -100.0}));
    assert_eq!(sent["user"], "end-user-7");
    assert_eq!(
        sent["response_format"],
        json!({"type": "json_schema", "json_schema": {
            "name": "weather", "description": "A forecast", "schema": schema(), "strict": true}})
    );

    // A single stop string is a list of one; json_object passes as it is.
    let response = stack
        .post(
            "/v1/chat/completions",
            &key,
            &json!({
                "model": "zai/glm-4.7-flash",
                "messages": [{"role": "user", "content": "JSON please"}],
                "stop": "STOP",
                "response_format": {"type": "json_object"}
            }),
        )
        .await;
    assert_eq!(response.status(), 200);
    let sent = stack.upstream.received().pop().unwrap();
    assert_eq!(sent["stop"], json!(["STOP"]));
    assert_eq!(sent["response_format"], json!({"type": "json_object"}));
    assert!(
        sent.get("seed").is_none(),
        "nothing is sent that was not asked"
    );
}

#[tokio::test]
async fn a_session_keeps_its_sampling_defaults_and_a_send_overrides_them() {
    let stack = Stack::with_providers(zai).await;
    let key = stack.create_key("session-fields").await;
    let created = stack
        .post(
            "/api/v1/sessions",
            &key,
            &json!({
                "model": "zai/glm-4.7-flash",
                "messages": [{"role": "user", "content": "first"}],
                "topP": 0.4,
                "stop": ["##"],
                "user": "u-1",
                "responseFormat": {"type": "json_schema", "jsonSchema": {"name": "weather", "schema": schema()}}
            }),
        )
        .await;
    let id = expect_data(created, 201).await["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = stack.upstream.received().pop().unwrap();
    assert_eq!(first["top_p"], 0.4);
    assert_eq!(first["stop"], json!(["##"]));
    assert_eq!(first["user"], "u-1");
    assert_eq!(first["response_format"]["json_schema"]["schema"], schema());

    // A later send keeps the session's defaults, and its own fields win.
    let sent = stack
        .post(
            &format!("/api/v1/sessions/{id}/messages"),
            &key,
            &json!({"message": {"role": "user", "content": "second"}, "topP": 0.9, "seed": 7,
                    "presencePenalty": 1.5}),
        )
        .await;
    expect_data(sent, 200).await;
    let second = stack.upstream.received().pop().unwrap();
    assert_eq!(second["top_p"], 0.9);
    assert_eq!(second["seed"], 7);
    assert_eq!(second["presence_penalty"], 1.5);
    assert_eq!(second["stop"], json!(["##"]));
    assert_eq!(second["user"], "u-1");
    assert_eq!(second["response_format"]["type"], "json_schema");
}

#[tokio::test]
async fn fields_the_gateway_does_not_serve_are_refused_by_name() {
    let stack = Stack::with_providers(zai).await;
    let key = stack.create_key("refusals").await;
    let user = json!([{"role": "user", "content": "hi"}]);
    for (field, value) in [
        (
            "functions",
            json!([{"name": "f", "parameters": {"type": "object"}}]),
        ),
        ("function_call", json!("auto")),
        ("audio", json!({"voice": "alloy", "format": "wav"})),
        ("prediction", json!({"type": "content", "content": "x"})),
        ("modalities", json!(["text", "audio"])),
        ("no_such_field", json!(1)),
    ] {
        let mut body = json!({"model": "zai/glm-4.7-flash", "messages": user});
        body[field] = value;
        let error = openai_error(stack.post("/v1/chat/completions", &key, &body).await, 400).await;
        assert_eq!(error["param"], field, "{error}");
        assert_eq!(error["type"], "invalid_request_error");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(&format!("'{field}'")), "{message}");
        assert!(message.contains("supported:"), "says what is: {message}");
    }
    let error = openai_error(
        stack
            .post(
                "/v1/chat/completions",
                &key,
                &json!({"model": "zai/glm-4.7-flash",
                        "messages": [{"role": "user", "content": "hi", "audio": {"id": "a"}}]}),
            )
            .await,
        400,
    )
    .await;
    assert_eq!(error["param"], "messages[0].audio", "{error}");

    // Out of range: named in each surface's own spelling.
    let error = openai_error(
        stack
            .post(
                "/v1/chat/completions",
                &key,
                &json!({"model": "zai/glm-4.7-flash", "messages": user, "top_p": 2}),
            )
            .await,
        400,
    )
    .await;
    assert_eq!(error["param"], "top_p", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("'top_p'"),
        "{error}"
    );
    let error = openai_error(
        stack
            .post(
                "/v1/chat/completions",
                &key,
                &json!({"model": "zai/glm-4.7-flash", "messages": user,
                        "response_format": {"type": "json_schema", "json_schema": {"schema": schema()}}}),
            )
            .await,
        400,
    )
    .await;
    assert_eq!(
        error["param"], "response_format.json_schema.name",
        "{error}"
    );
    let created = stack
        .post(
            "/api/v1/sessions",
            &key,
            &json!({"model": "zai/glm-4.7-flash", "messages": [], "frequencyPenalty": 3}),
        )
        .await;
    let body: Value = created.json().await.unwrap();
    assert_eq!(body["error"]["code"], "INVALID_REQUEST", "{body}");
    assert!(
        body["error"]["details"]
            .as_str()
            .unwrap()
            .contains("'frequencyPenalty'"),
        "{body}"
    );
    assert!(
        stack.upstream.received().is_empty(),
        "nothing reached the model"
    );
}

#[tokio::test]
async fn the_simulator_answers_json_modes_with_json() {
    // A gateway without a providers file or a provider key answers with the simulator.
    let offline = Offline::start("offline").await;
    let response = offline.post("/v1/chat/completions", &json!({"model": "zai/glm-4.7-flash",
                "messages": [{"role": "user", "content": "Oslo"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "weather", "schema": schema(), "strict": true}}}))
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    let parsed: Value = serde_json::from_str(content).expect("the reply is JSON");
    assert!(parsed["city"].is_string(), "{parsed}");
    assert!(parsed["celsius"].is_number(), "{parsed}");
    assert_eq!(parsed.as_object().unwrap().len(), 2, "{parsed}");

    let response = offline
        .post(
            "/v1/chat/completions",
            &json!({"model": "zai/glm-4.7-flash",
                "messages": [{"role": "user", "content": "anything"}],
                "response_format": {"type": "json_object"}}),
        )
        .await;
    let body: Value = response.json().await.unwrap();
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        serde_json::from_str::<Value>(content).unwrap().is_object(),
        "{content}"
    );
}

struct ClaudeGateway {
    _core: Process,
    edge: Process,
    key: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn claude_gateway(fake: &fake_anthropic::FakeAnthropic) -> ClaudeGateway {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("providers.toml");
    std::fs::write(
        &path,
        format!(
            r#"
            [[providers]]
            name = "claude"
            kind = "anthropic"
            baseUrl = "{}"
            apiKeyEnv = "ANTHROPIC_API_KEY"
            models = [{{ name = "claude-sonnet-4-5" }}]
            "#,
            fake.base_url()
        ),
    )
    .unwrap();
    let core = spawn_core(&CoreOptions {
        redis_url: None,
        upstream: None,
        data_dir: Some(dir.path().to_path_buf()),
        env: vec![
            ("OPENCLAW_PROVIDERS_FILE".into(), path.display().to_string()),
            ("ANTHROPIC_API_KEY".into(), "sk-ant".into()),
        ],
    });
    let edge = spawn_edge(&[&core]);
    wait_until_ready(&edge).await;
    let http = reqwest::Client::new();
    let key = create_key(
        &http,
        &format!("http://127.0.0.1:{}", edge.port),
        "claude",
        json!({}),
    )
    .await;
    ClaudeGateway {
        _core: core,
        edge,
        key,
        http,
        _dir: dir,
    }
}

#[tokio::test]
async fn an_anthropic_model_gets_what_its_api_has_and_refuses_the_rest_by_name() {
    let fake = fake_anthropic::FakeAnthropic::start().await;
    let gateway = claude_gateway(&fake).await;
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", gateway.edge.port);
    let response = post_with_key(
        &gateway.http,
        &url,
        &gateway.key,
        &json!({"model": "claude/claude-sonnet-4-5",
                "messages": [{"role": "user", "content": "hi"}],
                "stop": ["END"], "top_p": 0.7, "user": "end-user-9"}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let sent = fake.received().pop().unwrap().body;
    assert_eq!(sent["stop_sequences"], json!(["END"]));
    assert_eq!(sent["top_p"], 0.7);
    assert_eq!(sent["metadata"], json!({"user_id": "end-user-9"}));

    for (field, value) in [
        ("seed", json!(1)),
        ("presence_penalty", json!(0.5)),
        ("frequency_penalty", json!(0.5)),
        ("logit_bias", json!({"1": 1})),
        ("response_format", json!({"type": "json_object"})),
    ] {
        let mut body = json!({"model": "claude/claude-sonnet-4-5",
                              "messages": [{"role": "user", "content": "hi"}]});
        body[field] = value;
        let error = openai_error(
            post_with_key(&gateway.http, &url, &gateway.key, &body).await,
            400,
        )
        .await;
        assert_eq!(error["param"], field, "{error}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("'{field}'")) && message.contains("'claude'"),
            "{message}"
        );
    }
    assert_eq!(
        fake.received().len(),
        1,
        "no refused call reached Anthropic"
    );
}
