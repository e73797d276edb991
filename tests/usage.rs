//! The usage ledger read through `GET /api/v1/usage`: every model call counted to the token
//! and priced to the micro-dollar across replicas, through both chat APIs, whole and streamed;
//! each key sees only itself, the internal token sees every key; CSV says what JSON says; the
//! embedded store keeps the ledger over a restart; bad requests are refused by name.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{
    Behaviour, CoreOptions, INTERNAL_TOKEN, Replicas, Stack, expect_data, expect_error,
    get_with_key, post_with_key, spawn_core_at, start_redis, wait_until_ready,
};

/// Prices in dollars per million tokens, as the providers file says them, and in
/// micro-dollars per million tokens, as the cost formula reads them.
const FLASH_47: (&str, [f64; 3], [u64; 3]) = (
    "zai/glm-4.7-flash",
    [0.6, 2.2, 0.11],
    [600_000, 2_200_000, 110_000],
);
const FLASH_45: (&str, [f64; 3], [u64; 3]) = (
    "zai/glm-4.5-flash",
    [1.25, 3.0, 1.25],
    [1_250_000, 3_000_000, 1_250_000],
);

fn write_providers(path: &Path, upstream_url: &str) {
    let model = |(id, [input, output, cached], _): (&str, [f64; 3], [u64; 3])| {
        format!(
            "{{ name = \"{}\", inputPricePerMTok = {input}, outputPricePerMTok = {output}, cachedInputPricePerMTok = {cached} }}",
            id.trim_start_matches("zai/")
        )
    };
    let text = format!(
        r#"
[[providers]]
name = "zai"
baseUrl = "{upstream_url}"
apiKeyEnv = "ZAI_API_KEY"
retry = {{ maxRetries = 0 }}
models = [{}, {}]
"#,
        model(FLASH_47),
        model(FLASH_45)
    );
    std::fs::write(path, text).expect("write the providers file");
}

/// The documented cost of one call: `ceil((uncached × input + cached × cachedInput +
/// completion × output) / 10⁶)` micro-dollars, prices in micro-dollars per million tokens.
fn cost(prices: [u64; 3], prompt: u64, completion: u64, cached: u64) -> u64 {
    let [input, output, cached_input] = prices;
    ((prompt - cached) * input + cached * cached_input + completion * output).div_ceil(1_000_000)
}

/// Figures as the usage API names them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Figures {
    requests: u64,
    errors: u64,
    prompt: u64,
    completion: u64,
    cached: u64,
    cost: u64,
}

impl Figures {
    fn from_json(value: &Value) -> Self {
        let n = |name: &str| {
            value[name]
                .as_u64()
                .unwrap_or_else(|| panic!("'{name}' is not an integer in {value}"))
        };
        Self {
            requests: n("requests"),
            errors: n("errors"),
            prompt: n("promptTokens"),
            completion: n("completionTokens"),
            cached: n("cachedTokens"),
            cost: n("costMicros"),
        }
    }

    fn add(&mut self, other: Figures) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.prompt += other.prompt;
        self.completion += other.completion;
        self.cached += other.cached;
        self.cost += other.cost;
    }
}

/// What the test expects the ledger to hold: per key id and per model.
#[derive(Debug, Default)]
struct Expected {
    by_key: BTreeMap<String, Figures>,
    by_model: BTreeMap<String, Figures>,
    total: Figures,
}

impl Expected {
    fn call(&mut self, key: &str, model: (&str, [f64; 3], [u64; 3]), usage: Option<[u64; 3]>) {
        let figures = match usage {
            Some([prompt, completion, cached]) => Figures {
                requests: 1,
                errors: 0,
                prompt,
                completion,
                cached,
                cost: cost(model.2, prompt, completion, cached),
            },
            None => Figures {
                requests: 1,
                errors: 1,
                ..Figures::default()
            },
        };
        self.by_key.entry(key.to_owned()).or_default().add(figures);
        self.by_model
            .entry(model.0.to_owned())
            .or_default()
            .add(figures);
        self.total.add(figures);
    }
}

/// A new key: its id and its secret.
async fn new_key(http: &reqwest::Client, edge: &str, name: &str) -> (String, String) {
    let response = post_with_key(
        http,
        format!("{edge}/api/v1/keys"),
        INTERNAL_TOKEN,
        &json!({"name": name}),
    )
    .await;
    let data = expect_data(response, 201).await;
    (
        data["id"].as_str().expect("key id").to_owned(),
        data["key"].as_str().expect("key secret").to_owned(),
    )
}

async fn usage(http: &reqwest::Client, edge: &str, query: &str, key: &str) -> Value {
    let response = get_with_key(http, format!("{edge}/api/v1/usage{query}"), key).await;
    expect_data(response, 200).await
}

/// Reads the usage until its total counts `requests` calls (settling finishes just after the
/// reply), then returns it.
async fn settled_usage(
    http: &reqwest::Client,
    edge: &str,
    query: &str,
    key: &str,
    requests: u64,
) -> Value {
    let started = Instant::now();
    loop {
        let data = usage(http, edge, query, key).await;
        let seen = data["totals"]["requests"].as_u64().unwrap_or(0);
        if seen >= requests || started.elapsed() > Duration::from_secs(10) {
            return data;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A model call through `edge`: a session turn or a chat completion, whole or streamed.
/// Answers whether it succeeded.
async fn call(
    http: &reqwest::Client,
    edge: &str,
    key: &str,
    model: &str,
    session_api: bool,
    stream: bool,
) -> bool {
    let response = if session_api {
        let created = post_with_key(
            http,
            format!("{edge}/api/v1/sessions"),
            key,
            &json!({"model": model, "messages": []}),
        )
        .await;
        let id = expect_data(created, 201).await["sessionId"]
            .as_str()
            .expect("session id")
            .to_owned();
        post_with_key(
            http,
            format!("{edge}/api/v1/sessions/{id}/messages"),
            key,
            &json!({"message": {"role": "user", "content": "how much?"}, "stream": stream}),
        )
        .await
    } else {
        post_with_key(
            http,
            format!("{edge}/v1/chat/completions"),
            key,
            &json!({"model": model, "messages": [{"role": "user", "content": "how much?"}], "stream": stream}),
        )
        .await
    };
    let status = response.status().as_u16();
    let body = response.text().await.expect("the answer's body");
    if stream && status == 200 {
        assert!(
            body.contains("event: done") || body.contains("[DONE]"),
            "the stream did not finish: {body}"
        );
        return !body.contains("event: error");
    }
    status == 200
}

fn rows_by<'a>(data: &'a Value, field: &str) -> BTreeMap<String, &'a Value> {
    data["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| (row[field].as_str().expect(field).to_owned(), row))
        .collect()
}

fn assert_totals_are_the_sum_of_rows(data: &Value) {
    let mut sum = Figures::default();
    for row in data["rows"].as_array().expect("rows") {
        sum.add(Figures::from_json(row));
    }
    assert_eq!(sum, Figures::from_json(&data["totals"]), "{data}");
}

/// Parses the CSV answer (no field here needs quoting) into header and lines.
fn parse_csv(text: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut lines = text.split("\r\n");
    let header = lines
        .next()
        .expect("a header line")
        .split(',')
        .map(str::to_owned)
        .collect();
    let rows = lines
        .filter(|line| !line.is_empty())
        .map(|line| line.split(',').map(str::to_owned).collect())
        .collect();
    (header, rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_across_replicas_adds_up_to_what_the_upstream_reported() {
    let redis = start_redis();
    let providers_dir = tempfile::tempdir().expect("temp dir");
    let providers = providers_dir.path().join("providers.toml");
    // The providers file names this test's own fake upstream, with prices for two models.
    let upstream = support::FakeUpstream::start().await;
    write_providers(&providers, &upstream.base_url());
    let env = vec![
        ("OPENCLAW_REDIS_URL".to_owned(), support::redis_url(&redis)),
        (
            "OPENCLAW_PROVIDERS_FILE".to_owned(),
            providers.display().to_string(),
        ),
    ];
    let replicas = Replicas::start(env).await;
    let http = &replicas.http;
    let edges = [replicas.edge(0), replicas.edge(1)];
    let (id1, key1) = new_key(http, &edges[0], "usage one").await;
    let (id2, key2) = new_key(http, &edges[1], "usage two").await;

    let mut expected = Expected::default();
    let mut n = 0u64;
    // Every combination of key, edge, API, streaming and model, each reporting its own usage.
    for (key_id, key) in [(&id1, &key1), (&id2, &key2)] {
        for (edge, session_api, stream, model) in [
            (0, true, false, FLASH_47),
            (1, true, true, FLASH_45),
            (0, false, false, FLASH_45),
            (1, false, true, FLASH_47),
            (1, true, false, FLASH_45),
            (0, false, true, FLASH_47),
        ] {
            n += 1;
            let (prompt, completion, cached) = (100 + 37 * n, 20 + 11 * n, 9 * n);
            upstream.then([Behaviour::ReplyCached {
                content: format!("reply number {n}"),
                prompt_tokens: prompt as u32,
                completion_tokens: completion as u32,
                cached_tokens: cached as u32,
            }]);
            assert!(
                call(http, &edges[edge], key, model.0, session_api, stream).await,
                "call {n} failed"
            );
            expected.call(key_id, model, Some([prompt, completion, cached]));
        }
    }
    // A call the upstream fails: a request and an error, no tokens, no cost.
    upstream.fail_times(1, 500);
    assert!(!call(http, &edges[0], &key2, FLASH_47.0, true, false).await);
    expected.call(&id2, FLASH_47, None);
    // A call with the internal token is the ledger's "internal" key.
    upstream.then([Behaviour::Reply {
        content: "internal".into(),
        prompt_tokens: 1000,
        completion_tokens: 1,
    }]);
    assert!(call(http, &edges[1], INTERNAL_TOKEN, FLASH_45.0, false, false).await);
    expected.call("internal", FLASH_45, Some([1000, 1, 0]));

    // Every key, grouped by key, through either edge.
    let requests = expected.total.requests;
    for edge in &edges {
        let data = settled_usage(http, edge, "?groupBy=key", INTERNAL_TOKEN, requests).await;
        assert_eq!(data["groupBy"], "key");
        assert_eq!(
            Figures::from_json(&data["totals"]),
            expected.total,
            "{data}"
        );
        let rows = rows_by(&data, "keyId");
        for (key_id, figures) in &expected.by_key {
            let row = rows
                .get(key_id)
                .unwrap_or_else(|| panic!("no row for {key_id}: {data}"));
            assert_eq!(Figures::from_json(row), *figures, "key {key_id}");
        }
        assert_totals_are_the_sum_of_rows(&data);
    }

    // Grouped by model: model and provider, to the token and the micro-dollar.
    let by_model = usage(http, &edges[1], "?groupBy=model", INTERNAL_TOKEN).await;
    let rows = rows_by(&by_model, "model");
    assert_eq!(rows.len(), expected.by_model.len(), "{by_model}");
    for (model, figures) in &expected.by_model {
        let row = rows
            .get(model)
            .unwrap_or_else(|| panic!("no row for {model}: {by_model}"));
        assert_eq!(row["provider"], "zai");
        assert_eq!(Figures::from_json(row), *figures, "model {model}");
    }
    assert_totals_are_the_sum_of_rows(&by_model);

    // Grouped by day (the default): the 30 days ending today, today holding everything.
    let by_day = usage(http, &edges[0], "", INTERNAL_TOKEN).await;
    assert_eq!(by_day["groupBy"], "day");
    let days = by_day["rows"].as_array().expect("rows");
    assert_eq!(days.len(), 30, "{by_day}");
    assert_eq!(days.last().unwrap()["day"], by_day["to"]);
    assert_eq!(days.first().unwrap()["day"], by_day["from"]);
    assert_eq!(Figures::from_json(days.last().unwrap()), expected.total);
    assert_totals_are_the_sum_of_rows(&by_day);

    // A key sees itself only, whatever it asks.
    for (key_id, key) in [(&id1, &key1), (&id2, &key2)] {
        let own = usage(http, &edges[1], "?groupBy=key", key).await;
        let rows = own["rows"].as_array().expect("rows");
        assert_eq!(rows.len(), 1, "{own}");
        assert_eq!(rows[0]["keyId"], key_id.as_str());
        assert_eq!(Figures::from_json(&own["totals"]), expected.by_key[key_id]);
        let named = usage(
            http,
            &edges[0],
            &format!("?groupBy=model&keyId={key_id}"),
            key,
        )
        .await;
        assert_eq!(
            Figures::from_json(&named["totals"]),
            expected.by_key[key_id]
        );
    }
    let other = get_with_key(
        http,
        format!("{}/api/v1/usage?keyId={id2}", edges[0]),
        &key1,
    )
    .await;
    let error = expect_error(other, 403, "FORBIDDEN").await;
    assert!(
        error["details"].as_str().unwrap().contains("keyId"),
        "{error}"
    );

    // The internal token names one key.
    let one = usage(
        http,
        &edges[1],
        &format!("?groupBy=key&keyId={id2}"),
        INTERNAL_TOKEN,
    )
    .await;
    assert_eq!(one["rows"].as_array().unwrap().len(), 1, "{one}");
    assert_eq!(Figures::from_json(&one["totals"]), expected.by_key[&id2]);

    // CSV says what JSON says.
    for group in ["model", "key", "day"] {
        let json = usage(
            http,
            &edges[0],
            &format!("?groupBy={group}"),
            INTERNAL_TOKEN,
        )
        .await;
        let response = replicas
            .http
            .get(format!("{}/api/v1/usage?groupBy={group}", edges[1]))
            .bearer_auth(INTERNAL_TOKEN)
            .header("accept", "text/csv")
            .send()
            .await
            .expect("CSV request");
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "text/csv; charset=utf-8"
        );
        let (header, lines) = parse_csv(&response.text().await.unwrap());
        let group_columns: Vec<&str> = match group {
            "model" => vec!["model", "provider"],
            "key" => vec!["keyId"],
            _ => vec!["day"],
        };
        let figure_columns = [
            "requests",
            "errors",
            "promptTokens",
            "completionTokens",
            "cachedTokens",
            "costMicros",
        ];
        let columns: Vec<&str> = group_columns
            .iter()
            .chain(figure_columns.iter())
            .copied()
            .collect();
        assert_eq!(header, columns);
        let rows = json["rows"].as_array().unwrap();
        assert_eq!(lines.len(), rows.len(), "one line per row");
        for (line, row) in lines.iter().zip(rows) {
            for (cell, column) in line.iter().zip(&columns) {
                let want = match &row[*column] {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                assert_eq!(cell, &want, "{group}: column {column} of {line:?} vs {row}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_keeps_the_ledger_over_a_restart() {
    let mut stack = Stack::embedded().await;
    let edge = stack.url("");
    let (id, key) = new_key(&stack.http, &edge, "embedded usage").await;
    for (i, stream) in [false, true, false].into_iter().enumerate() {
        stack.upstream.then([Behaviour::ReplyCached {
            content: "kept".into(),
            prompt_tokens: 300 + i as u32,
            completion_tokens: 40,
            cached_tokens: 100,
        }]);
        assert!(call(&stack.http, &edge, &key, FLASH_47.0, i != 1, stream).await);
    }
    let before = settled_usage(&stack.http, &edge, "?groupBy=model", &key, 3).await;
    assert_eq!(before["totals"]["requests"], 3, "{before}");
    assert_eq!(before["totals"]["promptTokens"], 903);
    assert_eq!(before["totals"]["cachedTokens"], 300);

    let port = stack.core.port;
    stack.core.kill();
    stack.core = spawn_core_at(
        &CoreOptions {
            redis_url: None,
            upstream: Some(stack.upstream.base_url()),
            data_dir: Some(stack.data_dir().to_path_buf()),
            env: Vec::new(),
        },
        port,
    );
    wait_until_ready(&stack.edge).await;
    let after = usage(&stack.http, &edge, "?groupBy=model", &key).await;
    assert_eq!(after["rows"], before["rows"]);
    assert_eq!(after["totals"], before["totals"]);
    let all = usage(&stack.http, &edge, "?groupBy=key", INTERNAL_TOKEN).await;
    let rows = rows_by(&all, "keyId");
    assert_eq!(rows[&id]["requests"], 3, "{all}");

    // And it goes on counting after the restart.
    assert!(call(&stack.http, &edge, &key, FLASH_47.0, true, false).await);
    let more = settled_usage(&stack.http, &edge, "", &key, 4).await;
    assert_eq!(more["totals"]["requests"], 4, "{more}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_by_name_and_change_nothing() {
    let stack = Stack::start().await;
    let edge = stack.url("");
    let (id1, key1) = new_key(&stack.http, &edge, "asker").await;
    let (id2, _key2) = new_key(&stack.http, &edge, "other").await;
    assert!(call(&stack.http, &edge, &key1, FLASH_47.0, true, false).await);
    let before = settled_usage(&stack.http, &edge, "?groupBy=key", INTERNAL_TOKEN, 1).await;

    for (query, field) in [
        ("?from=yesterday", "from"),
        ("?to=2026-13-01", "to"),
        ("?from=2026-12-05&to=2026-12-01", "from"),
        ("?from=2025-01-01&to=2026-12-01", "from"),
        ("?groupBy=week", "groupBy"),
    ] {
        let response = stack.get(&format!("/api/v1/usage{query}"), &key1).await;
        let error = expect_error(response, 400, "INVALID_REQUEST").await;
        let details = error["details"].as_str().unwrap();
        assert!(details.contains(&format!("'{field}'")), "{query}: {error}");
    }
    let other = stack
        .get(&format!("/api/v1/usage?keyId={id2}"), &key1)
        .await;
    expect_error(other, 403, "FORBIDDEN").await;
    let unknown = stack
        .get("/api/v1/usage?keyId=no-such-key", INTERNAL_TOKEN)
        .await;
    expect_error(unknown, 404, "NOT_FOUND").await;
    let anonymous = stack
        .http
        .get(stack.url("/api/v1/usage"))
        .send()
        .await
        .unwrap();
    expect_error(anonymous, 401, "UNAUTHORIZED").await;
    // Errors stay in the envelope when CSV was asked for.
    let csv_error = stack
        .http
        .get(stack.url("/api/v1/usage?groupBy=hour"))
        .bearer_auth(&key1)
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    expect_error(csv_error, 400, "INVALID_REQUEST").await;
    // Unknown parameters are ignored, as on every GET route.
    let ignored = stack.get("/api/v1/usage?colour=blue", &key1).await;
    expect_data(ignored, 200).await;

    let after = usage(&stack.http, &edge, "?groupBy=key", INTERNAL_TOKEN).await;
    assert_eq!(after["rows"], before["rows"]);
    assert_eq!(rows_by(&after, "keyId")[&id1]["requests"], 1);

    // The gRPC contract answers the same.
    let mut client = openclaw_gateway::proto::usage_service_client::UsageServiceClient::connect(
        format!("http://127.0.0.1:{}", stack.core.port),
    )
    .await
    .expect("connect to the core");
    let ask = |from: &str, key_id: &str, token: &str| {
        let mut request = tonic::Request::new(openclaw_gateway::proto::GetUsageRequest {
            from: from.into(),
            to: String::new(),
            group_by: "key".into(),
            key_id: key_id.into(),
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    };
    let report = client
        .get_usage(ask("", &id1, INTERNAL_TOKEN))
        .await
        .expect("usage over gRPC")
        .into_inner();
    assert_eq!(report.totals.unwrap().requests, 1);
    let refused = client.get_usage(ask("", &id2, &key1)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let invalid = client.get_usage(ask("soon", "", &key1)).await.unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);

    // The route is in the OpenAPI document with its parameters and both content types.
    let openapi: Value = stack
        .http
        .get(stack.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let operation = &openapi["paths"]["/api/v1/usage"]["get"];
    let params: Vec<&str> = operation["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for name in ["from", "to", "groupBy", "keyId"] {
        assert!(params.contains(&name), "{name} missing from {params:?}");
    }
    let content = &operation["responses"]["200"]["content"];
    assert!(content["application/json"].is_object(), "{operation}");
    assert!(content["text/csv"].is_object(), "{operation}");
}
