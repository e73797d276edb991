//! Anthropic's Messages API as a provider kind (`kind = "anthropic"`), against a fake that
//! speaks its wire format: the sessions API and the OpenAI-compatible surface answered by a
//! Claude model, whole and streamed; the request as Anthropic wants it (system prompt lifted
//! out, alternating roles, `max_tokens`, `x-api-key`, `anthropic-version`); its usage read
//! back; a fallback from an OpenAI-compatible model to the Claude one; and a provider's extra
//! headers and query parameters (Azure OpenAI's `api-key` and `api-version`).

mod support;

#[path = "support/anthropic.rs"]
mod fake_anthropic;

use serde_json::{Value, json};
use support::{
    CoreOptions, FakeUpstream, Process, create_key, expect_data, post_with_key, spawn_core,
    spawn_edge, wait_until_ready,
};

use fake_anthropic::{CACHE_READ, CACHE_WRITE, FakeAnthropic, INPUT, OUTPUT};

const CLAUDE: &str = "claude/claude-sonnet-4-5";

struct Gateway {
    _core: Process,
    edge: Process,
    http: reqwest::Client,
    key: String,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// An embedded gateway reading `providers` (a providers file) with `env` set on its core.
    async fn start(providers: String, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("providers.toml");
        std::fs::write(&path, providers).unwrap();
        let mut vars = vec![(
            "OPENCLAW_PROVIDERS_FILE".to_string(),
            path.display().to_string(),
        )];
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let core = spawn_core(&CoreOptions {
            redis_url: None,
            upstream: None,
            data_dir: Some(dir.path().to_path_buf()),
            env: vars,
        });
        let edge = spawn_edge(&[&core]);
        wait_until_ready(&edge).await;
        let http = reqwest::Client::new();
        let key = create_key(&http, &url(&edge, ""), "claude", json!({})).await;
        Self {
            _core: core,
            edge,
            http,
            key,
            _dir: dir,
        }
    }

    async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        post_with_key(&self.http, url(&self.edge, path), &self.key, body).await
    }
}

fn url(edge: &Process, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", edge.port)
}

fn claude_provider(fake: &FakeAnthropic) -> String {
    format!(
        r#"
        [[providers]]
        name = "claude"
        kind = "anthropic"
        baseUrl = "{}"
        apiKeyEnv = "ANTHROPIC_API_KEY"
        retry = {{ maxRetries = 0 }}
        models = [{{ name = "claude-sonnet-4-5", inputPricePerMTok = 3.0, outputPricePerMTok = 15.0 }}]
        "#,
        fake.base_url()
    )
}

/// The `data` of every `event: <name>` in a server-sent-events body, in order.
fn events(body: &str, name: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in body.lines() {
        if let Some(event) = line.strip_prefix("event:") {
            current = event.trim().to_owned();
        } else if let Some(data) = line.strip_prefix("data:")
            && current == name
        {
            out.push(serde_json::from_str(data.trim()).unwrap_or(Value::Null));
        }
    }
    out
}

#[tokio::test]
async fn a_session_talks_to_a_claude_model_whole_and_streamed() {
    let fake = FakeAnthropic::start().await;
    let gateway = Gateway::start(
        claude_provider(&fake),
        &[("ANTHROPIC_API_KEY", "sk-ant-test-secret")],
    )
    .await;

    let created = gateway
        .post(
            "/api/v1/sessions",
            &json!({"model": CLAUDE, "messages": [{"role": "system", "content": "Be brief."}]}),
        )
        .await;
    let id = expect_data(created, 201).await["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();

    let reply = gateway
        .post(
            &format!("/api/v1/sessions/{id}/messages"),
            &json!({"message": {"role": "user", "content": "Hello Claude"}, "maxTokens": 200}),
        )
        .await;
    let data = expect_data(reply, 200).await;
    assert_eq!(data["message"]["content"], "Claude heard: Hello Claude");
    assert_eq!(data["model"], CLAUDE);
    // Every prompt token Anthropic read counts: fresh, from the cache and into it.
    assert_eq!(
        data["usage"]["promptTokens"],
        INPUT + CACHE_READ + CACHE_WRITE,
        "{data}"
    );
    assert_eq!(data["usage"]["completionTokens"], OUTPUT, "{data}");

    let sent = fake.received();
    assert_eq!(sent.len(), 1);
    let first = &sent[0];
    assert_eq!(first.uri, "/v1/messages");
    assert_eq!(first.headers["x-api-key"], "sk-ant-test-secret");
    assert_eq!(first.headers["anthropic-version"], "2023-06-01");
    assert!(
        first.headers.get("authorization").is_none(),
        "Anthropic takes its key in x-api-key only"
    );
    assert_eq!(first.body["model"], "claude-sonnet-4-5");
    assert_eq!(first.body["system"], "Be brief.");
    assert_eq!(first.body["max_tokens"], 200);
    assert_eq!(
        first.body["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "Hello Claude"}]}])
    );

    // Streamed: the deltas arrive as the fake sends them, and the stored history holds the
    // whole answer after the first one.
    let streamed = gateway
        .post(
            &format!("/api/v1/sessions/{id}/messages"),
            &json!({"message": {"role": "user", "content": "Again"}, "stream": true}),
        )
        .await;
    assert_eq!(streamed.status(), 200);
    let body = streamed.text().await.unwrap();
    let text: String = events(&body, "delta")
        .iter()
        .map(|d| d["content"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(text, "Claude heard: Again", "{body}");
    assert_eq!(events(&body, "done").len(), 1, "{body}");
    let second = &fake.received()[1];
    assert_eq!(second.body["stream"], true);
    // The history alternates, the earlier answer included.
    let roles: Vec<&str> = second.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user"]);

    let history = gateway
        .http
        .get(url(
            &gateway.edge,
            &format!("/api/v1/sessions/{id}/messages"),
        ))
        .bearer_auth(&gateway.key)
        .send()
        .await
        .unwrap();
    let history = expect_data(history, 200).await;
    let last = history["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["content"], "Claude heard: Again");
}

#[tokio::test]
async fn the_openai_surface_answers_with_a_claude_model() {
    let fake = FakeAnthropic::start().await;
    let gateway = Gateway::start(
        claude_provider(&fake),
        &[("ANTHROPIC_API_KEY", "sk-ant-test-secret")],
    )
    .await;
    let whole = gateway
        .post(
            "/v1/chat/completions",
            &json!({"model": CLAUDE, "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Ping"}
            ]}),
        )
        .await;
    assert_eq!(whole.status(), 200);
    let whole: Value = whole.json().await.unwrap();
    assert_eq!(
        whole["choices"][0]["message"]["content"],
        "Claude heard: Ping"
    );
    assert_eq!(whole["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        whole["usage"]["prompt_tokens"],
        INPUT + CACHE_READ + CACHE_WRITE
    );

    let streamed = gateway
        .post(
            "/v1/chat/completions",
            &json!({"model": CLAUDE, "stream": true,
                    "stream_options": {"include_usage": true},
                    "messages": [{"role": "user", "content": "Pong"}]}),
        )
        .await;
    assert_eq!(streamed.status(), 200);
    let body = streamed.text().await.unwrap();
    let text: String = body
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .filter_map(|chunk| {
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, "Claude heard: Pong", "{body}");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
}

#[tokio::test]
async fn a_failing_openai_compatible_model_falls_back_to_a_claude_model() {
    let fake = FakeAnthropic::start().await;
    let upstream = FakeUpstream::start().await;
    upstream.behave(support::Behaviour::Fail {
        status: 500,
        message: "the primary is down".into(),
    });
    let providers = format!(
        r#"
        [[providers]]
        name = "primary"
        baseUrl = "{}"
        retry = {{ maxRetries = 0 }}
        models = [{{ name = "gpt-like", fallbacks = ["{CLAUDE}"] }}]
        {}
        "#,
        upstream.base_url(),
        claude_provider(&fake)
    );
    let gateway = Gateway::start(providers, &[("ANTHROPIC_API_KEY", "sk-ant-test-secret")]).await;
    let response = gateway
        .post(
            "/v1/chat/completions",
            &json!({"model": "primary/gpt-like", "messages": [{"role": "user", "content": "Anyone?"}]}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Claude heard: Anyone?"
    );
    assert_eq!(
        body["model"], CLAUDE,
        "the answering model is named: {body}"
    );
    assert_eq!(upstream.received().len(), 1, "the primary was asked first");
    assert_eq!(fake.received().len(), 1);
}

#[tokio::test]
async fn an_anthropic_refusal_reaches_the_client_as_an_upstream_error_naming_the_provider() {
    let fake = FakeAnthropic::start().await;
    fake.fail(400, "invalid_request_error");
    let gateway = Gateway::start(
        claude_provider(&fake),
        &[("ANTHROPIC_API_KEY", "sk-ant-test-secret")],
    )
    .await;
    let response = gateway
        .post(
            "/v1/chat/completions",
            &json!({"model": CLAUDE, "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    // The provider and its status are named; its own words stay in the gateway's logs.
    assert!(
        message.contains("'claude' answered 400") && !message.contains("scripted"),
        "{body}"
    );
    assert_eq!(body["error"]["type"], "server_error");
}

#[tokio::test]
async fn a_provider_sends_its_extra_headers_and_query_parameters() {
    let fake = FakeAnthropic::start().await;
    let providers = format!(
        r#"
        [[providers]]
        name = "azure"
        baseUrl = "{}"
        headers = {{ "api-key" = {{ env = "AZURE_OPENAI_KEY" }}, "x-team" = "search" }}
        query = {{ "api-version" = "2024-10-21" }}
        models = [{{ name = "gpt-4o" }}]
        "#,
        fake.openai_base_url()
    );
    let gateway = Gateway::start(providers, &[("AZURE_OPENAI_KEY", "azure-secret")]).await;
    let response = gateway
        .post(
            "/v1/chat/completions",
            &json!({"model": "azure/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let sent = fake.received();
    assert_eq!(
        sent[0].uri,
        "/openai/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(sent[0].headers["api-key"], "azure-secret");
    assert_eq!(sent[0].headers["x-team"], "search");
    assert!(sent[0].headers.get("authorization").is_none());
}

#[tokio::test]
async fn a_header_naming_an_unset_variable_stops_the_start_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("providers.toml");
    std::fs::write(
        &path,
        r#"
        [[providers]]
        name = "azure"
        baseUrl = "http://127.0.0.1:9/openai"
        headers = { "api-key" = { env = "AZURE_OPENAI_KEY_UNSET" } }
        models = [{ name = "gpt-4o" }]
        "#,
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_openclaw-gateway"))
        .arg("serve")
        .env_clear()
        .env("OPENCLAW_PROVIDERS_FILE", &path)
        .env("OPENCLAW_DATA_DIR", dir.path())
        .env("OPENCLAW_GRPC_ADDR", "127.0.0.1:0")
        .env("OPENCLAW_METRICS_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("AZURE_OPENAI_KEY_UNSET") && stderr.contains("api-key"),
        "{stderr}"
    );
}
