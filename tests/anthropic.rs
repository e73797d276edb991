//! Anthropic's Messages API as a provider kind (`kind = "anthropic"`), against a fake that
//! speaks its wire format: the sessions API and the OpenAI-compatible surface answered by a
//! Claude model, whole and streamed; the request as Anthropic wants it (system prompt lifted
//! out, alternating roles, `max_tokens`, `x-api-key`, `anthropic-version`); its usage read
//! back; a fallback from an OpenAI-compatible model to the Claude one; and a provider's extra
//! headers and query parameters (Azure OpenAI's `api-key` and `api-version`); and tool calling
//! through a Claude model (OpenAI's tools, tool choice and tool messages as Anthropic's `tools`,
//! `tool_choice`, `tool_use` and `tool_result` blocks, and its tool use read back), whole and
//! streamed, on `/v1`, through the sessions API and across a fallback.

mod support;

#[path = "support/anthropic.rs"]
mod fake_anthropic;

use serde_json::{Value, json};
use support::{
    CoreOptions, FakeUpstream, Process, create_key, expect_data, post_with_key, spawn_core,
    spawn_edge, wait_until_ready,
};

use fake_anthropic::{
    CACHE_READ, CACHE_WRITE, FakeAnthropic, INPUT, OUTPUT, Received, TOOL_USE_TEXT,
};

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

// ---- tool calling -----------------------------------------------------------------------------

const CALL_ID: &str = "toolu_01A09q90qw90lq917835lq9";

/// The arguments' JSON Schema of the `get_weather` tool every tool test offers.
fn weather_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "The city"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
        },
        "required": ["city"]
    })
}

/// The input the fake's model calls `get_weather` with.
fn weather_input() -> Value {
    json!({"city": "Paris", "unit": "celsius"})
}

/// `get_weather` as OpenAI's `tools` spell it (both surfaces take that shape).
fn weather_tools() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": weather_schema()
    }}])
}

/// `get_weather` as Anthropic's `tools` spell it.
fn anthropic_weather_tools() -> Value {
    json!([{
        "name": "get_weather",
        "description": "The current weather in a city",
        "input_schema": weather_schema()
    }])
}

/// The roles of a Messages request, which must alternate starting with the user.
fn assert_alternates(request: &Received) {
    let roles: Vec<&str> = request.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    for (i, role) in roles.iter().enumerate() {
        let want = if i % 2 == 0 { "user" } else { "assistant" };
        assert_eq!(*role, want, "roles must alternate: {roles:?}");
    }
}

/// The second request of a tool loop: the question, the assistant's text and `tool_use` block,
/// then a user turn holding the `tool_result` for the call.
fn assert_tool_round_trip(second: &Received, question: &str, result: &str) {
    assert_alternates(second);
    assert_eq!(
        second.body["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": question}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": TOOL_USE_TEXT},
                {"type": "tool_use", "id": CALL_ID, "name": "get_weather", "input": weather_input()}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": CALL_ID, "content": result}
            ]}
        ]),
        "{}",
        second.body
    );
    // Anthropic refuses tool_use/tool_result blocks in a request that defines no tools.
    assert_eq!(second.body["tools"], anthropic_weather_tools());
}

/// The data of every `data:` line of an OpenAI-style stream but `[DONE]`, as JSON.
fn stream_chunks(body: &str) -> Vec<Value> {
    body.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str::<Value>(data).expect("a chunk is JSON"))
        .collect()
}

#[tokio::test]
async fn a_claude_model_calls_a_tool_and_answers_with_its_result_on_v1() {
    let fake = FakeAnthropic::start().await;
    fake.answer_with_tool_use(CALL_ID, "get_weather", weather_input());
    let gateway = Gateway::start(
        claude_provider(&fake),
        &[("ANTHROPIC_API_KEY", "sk-ant-test-secret")],
    )
    .await;
    let question = json!({"role": "user", "content": "Weather in Paris?"});

    let first = gateway
        .post(
            "/v1/chat/completions",
            &json!({"model": CLAUDE, "messages": [question],
                    "tools": weather_tools(),
                    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                    "parallel_tool_calls": false}),
        )
        .await;
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    let choice = &first["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{first}");
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], TOOL_USE_TEXT, "{first}");
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{first}");
    assert_eq!(calls[0]["id"], CALL_ID);
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let arguments: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, weather_input());

    let sent = fake.received();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].body["tools"], anthropic_weather_tools());
    assert_eq!(sent[0].body["tools"][0]["input_schema"], weather_schema());
    assert_eq!(
        sent[0].body["tool_choice"],
        json!({"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true})
    );
    assert_eq!(
        sent[0].body["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]}])
    );

    // The client runs the tool and sends the assistant message back with its result. (Its
    // role, content and tool calls: the reply's `"refusal": null` is refused on the way back,
    // see `an_assistant_message_sent_back_verbatim_is_taken`.)
    let assistant = json!({
        "role": choice["message"]["role"],
        "content": choice["message"]["content"],
        "tool_calls": choice["message"]["tool_calls"],
    });
    let second = gateway
        .post(
            "/v1/chat/completions",
            &json!({"model": CLAUDE, "tools": weather_tools(), "messages": [
                question,
                assistant,
                {"role": "tool", "tool_call_id": CALL_ID, "content": "18 C and sunny"}
            ]}),
        )
        .await;
    let status = second.status();
    let second: Value = second.json().await.unwrap();
    assert_eq!(status, 200, "{second}");
    assert_eq!(
        second["choices"][0]["message"]["content"], "Claude heard: 18 C and sunny",
        "{second}"
    );
    assert_eq!(second["choices"][0]["finish_reason"], "stop");
    assert!(second["choices"][0]["message"].get("tool_calls").is_none());

    let sent = fake.received();
    assert_eq!(sent.len(), 2);
    assert_tool_round_trip(&sent[1], "Weather in Paris?", "18 C and sunny");
    assert!(
        sent[1].body.get("tool_choice").is_none(),
        "none was asked for: {}",
        sent[1].body
    );
}

#[tokio::test]
async fn a_claude_model_streams_its_tool_call_on_v1() {
    let fake = FakeAnthropic::start().await;
    fake.answer_with_tool_use(CALL_ID, "get_weather", weather_input());
    let gateway = Gateway::start(
        claude_provider(&fake),
        &[("ANTHROPIC_API_KEY", "sk-ant-test-secret")],
    )
    .await;
    let question = json!({"role": "user", "content": "Weather in Paris?"});

    let first = gateway
        .post(
            "/v1/chat/completions",
            &json!({"model": CLAUDE, "stream": true, "messages": [question],
                    "tools": weather_tools(),
                    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                    "parallel_tool_calls": false}),
        )
        .await;
    assert_eq!(first.status(), 200);
    let body = first.text().await.unwrap();
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    let chunks = stream_chunks(&body);
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, TOOL_USE_TEXT, "{body}");
    let pieces: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert!(
        pieces.len() >= 3,
        "the call's head, then its arguments in pieces: {body}"
    );
    // The first piece opens the call; the others add to its arguments only.
    assert_eq!(pieces[0]["id"], CALL_ID, "{body}");
    assert_eq!(pieces[0]["type"], "function", "{body}");
    assert_eq!(pieces[0]["function"]["name"], "get_weather", "{body}");
    let (mut id, mut name, mut arguments) = (String::new(), String::new(), String::new());
    for piece in &pieces {
        assert_eq!(piece["index"], 0, "one call: {body}");
        if let Some(piece_id) = piece["id"].as_str() {
            assert!(id.is_empty(), "the id comes once: {body}");
            id.push_str(piece_id);
        }
        if let Some(piece_name) = piece["function"]["name"].as_str() {
            name.push_str(piece_name);
        }
        arguments.push_str(piece["function"]["arguments"].as_str().unwrap_or_default());
    }
    assert!(
        pieces[1..]
            .iter()
            .filter(|p| !p["function"]["arguments"]
                .as_str()
                .unwrap_or_default()
                .is_empty())
            .count()
            >= 2,
        "the arguments come in several pieces: {body}"
    );
    assert_eq!(id, CALL_ID);
    assert_eq!(name, "get_weather");
    let arguments: Value = serde_json::from_str(&arguments).unwrap();
    assert_eq!(arguments, weather_input());
    let finishes: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finishes, [&json!("tool_calls")], "{body}");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls", "{body}");

    let sent = fake.received();
    assert_eq!(sent[0].body["stream"], true);
    assert_eq!(sent[0].body["tools"], anthropic_weather_tools());
    assert_eq!(
        sent[0].body["tool_choice"],
        json!({"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true})
    );

    // The assembled call goes back with its result, and the answer streams as text.
    let assistant = json!({"role": "assistant", "content": text, "tool_calls": [
        {"id": id, "type": "function", "function": {"name": name, "arguments": arguments.to_string()}}
    ]});
    let second = gateway
        .post(
            "/v1/chat/completions",
            &json!({"model": CLAUDE, "stream": true, "tools": weather_tools(), "messages": [
                question,
                assistant,
                {"role": "tool", "tool_call_id": CALL_ID, "content": "18 C and sunny"}
            ]}),
        )
        .await;
    assert_eq!(second.status(), 200);
    let body = second.text().await.unwrap();
    let chunks = stream_chunks(&body);
    let answer: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(answer, "Claude heard: 18 C and sunny", "{body}");
    assert!(
        chunks
            .iter()
            .all(|c| c["choices"][0]["delta"].get("tool_calls").is_none()),
        "{body}"
    );
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop",
        "{body}"
    );

    let sent = fake.received();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].body["stream"], true);
    assert_tool_round_trip(&sent[1], "Weather in Paris?", "18 C and sunny");
}

#[tokio::test]
async fn a_session_with_a_claude_model_runs_a_tool_loop() {
    let fake = FakeAnthropic::start().await;
    fake.answer_with_tool_use(CALL_ID, "get_weather", weather_input());
    let gateway = Gateway::start(
        claude_provider(&fake),
        &[("ANTHROPIC_API_KEY", "sk-ant-test-secret")],
    )
    .await;

    let created = gateway
        .post(
            "/api/v1/sessions",
            &json!({"model": CLAUDE,
                    "messages": [{"role": "user", "content": "Weather in Paris?"}],
                    "tools": weather_tools(),
                    "toolChoice": "auto"}),
        )
        .await;
    let created = expect_data(created, 201).await;
    let id = created["sessionId"].as_str().unwrap().to_owned();
    let message = &created["message"];
    assert_eq!(message["role"], "assistant", "{created}");
    assert_eq!(message["content"], TOOL_USE_TEXT, "{created}");
    let calls = message["toolCalls"].as_array().expect("toolCalls");
    assert_eq!(calls.len(), 1, "{created}");
    assert_eq!(calls[0]["id"], CALL_ID);
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let arguments: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, weather_input());

    let sent = fake.received();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].body["tools"], anthropic_weather_tools());
    assert_eq!(sent[0].body["tool_choice"], json!({"type": "auto"}));

    let reply = gateway
        .post(
            &format!("/api/v1/sessions/{id}/messages"),
            &json!({"message": {"role": "tool", "content": "18 C and sunny", "toolCallId": CALL_ID}}),
        )
        .await;
    let reply = expect_data(reply, 200).await;
    assert_eq!(
        reply["message"]["content"], "Claude heard: 18 C and sunny",
        "{reply}"
    );
    assert_eq!(reply["finishReason"], "stop", "{reply}");
    assert!(reply["message"].get("toolCalls").is_none(), "{reply}");

    let sent = fake.received();
    assert_eq!(sent.len(), 2);
    // The session's tools and tool choice stay its defaults.
    assert_eq!(sent[1].body["tool_choice"], json!({"type": "auto"}));
    assert_tool_round_trip(&sent[1], "Weather in Paris?", "18 C and sunny");

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
    let messages = history["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        ["user", "assistant", "tool", "assistant"],
        "{history}"
    );
    assert_eq!(messages[0]["content"], "Weather in Paris?");
    assert_eq!(messages[1]["content"], TOOL_USE_TEXT);
    assert_eq!(messages[1]["toolCalls"][0]["id"], CALL_ID, "{history}");
    assert_eq!(messages[1]["toolCalls"][0]["type"], "function");
    assert_eq!(
        messages[1]["toolCalls"][0]["function"]["name"],
        "get_weather"
    );
    let stored: Value = serde_json::from_str(
        messages[1]["toolCalls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(stored, weather_input());
    assert_eq!(messages[2]["toolCallId"], CALL_ID, "{history}");
    assert_eq!(messages[2]["content"], "18 C and sunny");
    assert_eq!(messages[3]["content"], "Claude heard: 18 C and sunny");
    assert!(messages[3].get("toolCalls").is_none(), "{history}");
}

#[tokio::test]
async fn a_fallback_to_a_claude_model_carries_the_tools() {
    let fake = FakeAnthropic::start().await;
    fake.answer_with_tool_use(CALL_ID, "get_weather", weather_input());
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
            &json!({"model": "primary/gpt-like",
                    "messages": [{"role": "user", "content": "Weather in Paris?"}],
                    "tools": weather_tools(),
                    "tool_choice": "required"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["model"], CLAUDE,
        "the answering model is named: {body}"
    );
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{body}");
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{body}");
    assert_eq!(calls[0]["id"], CALL_ID);
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let arguments: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, weather_input());

    // The primary was asked first, in OpenAI's shape; the fallback got Anthropic's.
    let primary = upstream.received();
    assert_eq!(primary.len(), 1, "the primary was asked first");
    assert_eq!(primary[0]["tools"], weather_tools());
    assert_eq!(primary[0]["tool_choice"], "required");
    let sent = fake.received();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].uri, "/v1/messages");
    assert_eq!(sent[0].body["model"], "claude-sonnet-4-5");
    assert_eq!(sent[0].body["tools"], anthropic_weather_tools());
    assert_eq!(sent[0].body["tool_choice"], json!({"type": "any"}));
}

/// The documented tool loop appends the assistant message as the reply gave it; the reply carries
/// `"refusal": null`, which OpenAI's API takes on an assistant message (its SDKs send it back).
#[tokio::test]
async fn an_assistant_message_sent_back_verbatim_is_taken() {
    let fake = FakeAnthropic::start().await;
    fake.answer_with_tool_use(CALL_ID, "get_weather", weather_input());
    let gateway = Gateway::start(
        claude_provider(&fake),
        &[("ANTHROPIC_API_KEY", "sk-ant-test-secret")],
    )
    .await;
    let question = json!({"role": "user", "content": "Weather in Paris?"});
    let first = gateway
        .post(
            "/v1/chat/completions",
            &json!({"model": CLAUDE, "messages": [question], "tools": weather_tools()}),
        )
        .await;
    let first: Value = first.json().await.unwrap();
    let assistant = first["choices"][0]["message"].clone();
    let second = gateway
        .post(
            "/v1/chat/completions",
            &json!({"model": CLAUDE, "tools": weather_tools(), "messages": [
                question,
                assistant,
                {"role": "tool", "tool_call_id": CALL_ID, "content": "18 C and sunny"}
            ]}),
        )
        .await;
    let status = second.status();
    let second: Value = second.json().await.unwrap();
    assert_eq!(status, 200, "{second}");
    assert_eq!(
        second["choices"][0]["message"]["content"],
        "Claude heard: 18 C and sunny"
    );
}

/// Images travel as Anthropic image blocks: a URL as a `url` source, a data URL as `base64`.
#[tokio::test]
async fn images_reach_a_claude_model_as_image_blocks() {
    let fake = FakeAnthropic::start().await;
    let gateway = Gateway::start(
        claude_provider(&fake),
        &[("ANTHROPIC_API_KEY", "sk-ant-test-secret")],
    )
    .await;
    let answered = gateway
        .post(
            "/v1/chat/completions",
            &json!({"model": CLAUDE, "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}}
            ]}]}),
        )
        .await;
    assert_eq!(answered.status(), 200);
    let sent = fake.received();
    assert_eq!(
        sent[0].body["messages"][0]["content"],
        json!([
            {"type": "text", "text": "What is in these?"},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
        ])
    );
}
