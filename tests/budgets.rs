//! Spend budgets end to end (docs/budgets.md), on real processes: Redis, cores and edges, and a
//! fake upstream that reports fixed usage for a priced model. A burst over two edges and two
//! cores stops within one call's cost of a key's budget, each threshold is announced once, a
//! new period starts from zero, the refusal's shape on REST, `/v1` and gRPC, reads carrying on
//! for a refused key, and the single-process (embedded) gateway.

mod support;

use std::collections::BTreeMap;

use chrono::Datelike as _;
use std::time::Duration;

use serde_json::{Value, json};
use support::{
    Behaviour, CoreOptions, FakeUpstream, INTERNAL_TOKEN, Process, expect_data, expect_error,
};

/// The priced model: $1 per million prompt tokens and $2 per million completion tokens, so a
/// token costs 1 or 2 micro-dollars.
const MODEL: &str = "zai/priced";
/// The usage the fake upstream reports for every call: 10 prompt and 5 completion tokens, so
/// every answered call costs 10 × 1 + 5 × 2 = 20 µ$.
const PROMPT: u32 = 10;
const COMPLETION: u32 = 5;
const CALL_COST: u64 = 20;
/// The completion tokens each call reserves (`maxTokens`): its most costs the prompt's estimate
/// + 50 × 2 µ$, at least 100 µ$, above what the upstream reports, so the bound is exact.
const MAX_TOKENS: u32 = 50;

fn providers(upstream: &FakeUpstream) -> String {
    format!(
        r#"
        [[providers]]
        name = "zai"
        baseUrl = "{}"
        apiKeyEnv = "ZAI_API_KEY"
        models = [
            {{ name = "priced", upstream = "glm-4.7-flash", inputPricePerMTok = 1.0, outputPricePerMTok = 2.0 }},
            {{ name = "cheap", upstream = "glm-4.7-flash", inputPricePerMTok = 0.0, outputPricePerMTok = 0.0, fallbacks = ["zai/priced"] }},
            {{ name = "free", upstream = "glm-4.7-flash" }},
        ]
        "#,
        upstream.base_url()
    )
}

/// Cores on one Redis (or one embedded core), each behind its own edge, reading the priced
/// providers file.
struct Deployment {
    redis: Option<Process>,
    upstream: FakeUpstream,
    dir: tempfile::TempDir,
    cores: Vec<Process>,
    edges: Vec<Process>,
    http: reqwest::Client,
}

impl Deployment {
    /// `cores` cores on one Redis with `env`, and two edges balancing over all of them.
    async fn start(cores: usize, env: &[(&str, &str)]) -> Self {
        let redis = support::start_redis();
        let mut deployment = Self::prepare(Some(redis)).await;
        for _ in 0..cores {
            deployment.add_core(env);
        }
        let refs: Vec<&Process> = deployment.cores.iter().collect();
        let edges: Vec<Process> = (0..2).map(|_| support::spawn_edge(&refs)).collect();
        for edge in &edges {
            support::wait_until_ready(edge).await;
        }
        deployment.edges = edges;
        deployment
    }

    /// One embedded core (no Redis) and its edge.
    async fn embedded(env: &[(&str, &str)]) -> Self {
        let mut deployment = Self::prepare(None).await;
        deployment.add_core(env);
        let edge = support::spawn_edge(&[&deployment.cores[0]]);
        support::wait_until_ready(&edge).await;
        deployment.edges = vec![edge];
        deployment
    }

    async fn prepare(redis: Option<Process>) -> Self {
        let upstream = FakeUpstream::start().await;
        upstream.behave(Behaviour::Reply {
            content: "fine".into(),
            prompt_tokens: PROMPT,
            completion_tokens: COMPLETION,
        });
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("providers.toml"), providers(&upstream))
            .expect("write the providers file");
        Self {
            redis,
            upstream,
            dir,
            cores: Vec::new(),
            edges: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("HTTP client"),
        }
    }

    /// Starts one more core on the deployment's Redis with `env`; answers its index.
    fn add_core(&mut self, env: &[(&str, &str)]) -> usize {
        let mut options = CoreOptions {
            redis_url: self.redis.as_ref().map(support::redis_url),
            upstream: Some(self.upstream.base_url()),
            data_dir: Some(self.dir.path().to_path_buf()),
            env: vec![(
                "OPENCLAW_PROVIDERS_FILE".into(),
                self.dir.path().join("providers.toml").display().to_string(),
            )],
        };
        options
            .env
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.cores.push(support::spawn_core(&options));
        self.cores.len() - 1
    }

    fn edge(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.edges[i % self.edges.len()].port)
    }

    /// A key with `budget` and limits no test here comes near; answers its secret and id.
    async fn key(&self, budget: Value) -> (String, String) {
        let response = self
            .http
            .post(format!("{}/api/v1/keys", self.edge(0)))
            .bearer_auth(INTERNAL_TOKEN)
            .json(&json!({
                "name": "budget test",
                "budget": budget,
                "limits": {"requestsPerMinute": 100000, "tokensPerMinute": 100000000, "contextTokensPerMinute": 100000000},
            }))
            .send()
            .await
            .expect("create a key");
        let data = expect_data(response, 201).await;
        (
            data["key"].as_str().expect("secret").to_string(),
            data["id"].as_str().expect("id").to_string(),
        )
    }

    /// The key as the key administration API shows it (with `budget` and `budgetSpend`).
    async fn shown(&self, edge: usize, id: &str) -> Value {
        let response = self
            .http
            .get(format!("{}/api/v1/keys/{id}", self.edge(edge)))
            .bearer_auth(INTERNAL_TOKEN)
            .send()
            .await
            .expect("get the key");
        expect_data(response, 200).await
    }

    /// A new session asked "hi" with `maxTokens` 50: every such call reserves the same most.
    async fn ask(&self, edge: usize, key: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/api/v1/sessions", self.edge(edge)))
            .bearer_auth(key)
            .json(&json!({
                "model": MODEL,
                "messages": [{"role": "user", "content": "hi"}],
                "maxTokens": MAX_TOKENS,
            }))
            .send()
            .await
            .expect("create a session")
    }
}

fn micros(value: &Value) -> u64 {
    value
        .as_u64()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("not a micro-dollar figure: {value}"))
}

/// The next UTC midnight, as the error's `resetsAt` writes it.
fn next_utc_midnight(offset_days: i64) -> String {
    let today = (chrono::Utc::now() + chrono::Duration::days(offset_days)).date_naive();
    (today + chrono::Duration::days(1))
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Budget events of `key_id` by type and threshold sentence, read from the start of the stream.
async fn budget_events(core_port: u16, key_id: &str) -> Vec<openclaw_gateway::proto::Event> {
    support::all_events(core_port)
        .await
        .into_iter()
        .filter(|e| e.key_id == key_id && e.r#type.starts_with("budget."))
        .collect()
}

/// Eight clients hammer one key through both edges (so both cores decide) until each is
/// refused with nothing in flight. The bound, exact because every call reserves its most
/// (`cost`, the same for every call here) before it runs and costs less than that:
///
///   limit − cost < final spend ≤ limit,  and  final spend = answered calls × 20 µ$.
///
/// The upper bound holds because admission (one Redis script) refuses whenever settled spend
/// + reservations of calls in flight + this call's most would pass the limit; the lower one
/// because a client stops only on a refusal that saw no call in flight (`reservedMicros` 0),
/// so settled spend alone was already above limit − cost then, and spend never decreases.
/// Each threshold crossed is announced exactly once, whichever replica settled the crossing
/// call, and the limit itself is not reached (so no `budget.exceeded`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_over_two_replicas_stops_within_one_call_of_the_budget() {
    const LIMIT: u64 = 2_000;
    let deployment = Deployment::start(2, &[]).await;
    let (key, id) = deployment
        .key(json!({"limitMicros": LIMIT, "period": "day", "thresholds": [0.25, 0.5, 0.75]}))
        .await;
    let deployment = std::sync::Arc::new(deployment);
    let mut clients = Vec::new();
    for client in 0..8 {
        let (deployment, key) = (deployment.clone(), key.clone());
        clients.push(tokio::spawn(async move {
            let mut answered = 0u64;
            for _ in 0..400 {
                let response = deployment.ask(client, &key).await;
                match response.status().as_u16() {
                    201 | 200 => answered += 1,
                    402 => {
                        let error = expect_error(response, 402, "BUDGET_EXCEEDED").await;
                        let budget = &error["budget"];
                        assert_eq!(budget["scope"], "key", "{error}");
                        assert_eq!(micros(&budget["limitMicros"]), LIMIT, "{error}");
                        let most = micros(&budget["costMicros"]);
                        let (spent, reserved) = (
                            micros(&budget["spentMicros"]),
                            micros(&budget["reservedMicros"]),
                        );
                        assert!(spent + reserved + most > LIMIT, "refused within: {error}");
                        if reserved == 0 {
                            return (answered, most);
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    other => panic!(
                        "a call got {other}: {}",
                        response.text().await.unwrap_or_default()
                    ),
                }
            }
            panic!("client {client} was never refused with nothing in flight");
        }));
    }
    let mut answered = 0;
    let mut most = 0;
    for client in clients {
        let (n, cost) = client.await.expect("a client");
        answered += n;
        most = most.max(cost);
    }
    assert!(
        most >= 2 * u64::from(MAX_TOKENS),
        "the most a call costs: {most}"
    );
    let shown = deployment.shown(1, &id).await;
    let spend = &shown["budgetSpend"];
    let spent = micros(&spend["spentMicros"]);
    assert_eq!(spent, answered * CALL_COST, "{shown}");
    assert!(spent <= LIMIT, "spent {spent} of {LIMIT}");
    assert!(
        spent > LIMIT - most,
        "spent {spent}: more than one call's most ({most}) short of {LIMIT}"
    );
    assert_eq!(micros(&spend["limitMicros"]), LIMIT);
    assert_eq!(spend["resetsAt"], next_utc_midnight(0), "{shown}");

    let events = budget_events(deployment.cores[0].port, &id).await;
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for event in &events {
        let threshold = ["25%", "50%", "75%"]
            .into_iter()
            .find(|t| event.text.contains(&format!("({t} threshold")))
            .unwrap_or("?");
        *counts
            .entry((event.r#type.clone(), threshold.to_string()))
            .or_default() += 1;
    }
    let want: BTreeMap<(String, String), usize> = ["25%", "50%", "75%"]
        .into_iter()
        .map(|t| (("budget.threshold".to_string(), t.to_string()), 1))
        .collect();
    assert_eq!(counts, want, "{events:#?}");
}

/// A core whose clock is a day ahead (`OPENCLAW_SPEND_CLOCK_OFFSET_SECONDS`) is in the next
/// daily period on the same Redis: it admits the key and counts from zero, while the
/// unshifted cores still refuse it; each core shows the key's spend in its own period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_period_starts_the_budget_again() {
    let mut deployment = Deployment::start(1, &[]).await;
    // A zero budget refuses every priced call, and names the most a call costs.
    let (key, id) = deployment
        .key(json!({"limitMicros": 0, "period": "day", "timeZone": "UTC"}))
        .await;
    let error = expect_error(deployment.ask(0, &key).await, 402, "BUDGET_EXCEEDED").await;
    let most = micros(&error["budget"]["costMicros"]);
    // Room for one call's most, not for a second after the first's 20 µ$.
    let response = deployment
        .http
        .patch(format!("{}/api/v1/keys/{id}", deployment.edge(0)))
        .bearer_auth(INTERNAL_TOKEN)
        .json(&json!({"budget": {"limitMicros": most + 10, "period": "day", "timeZone": "UTC", "thresholds": [0.1]}}))
        .send()
        .await
        .unwrap();
    expect_data(response, 200).await;
    assert_eq!(deployment.ask(0, &key).await.status(), 201);
    let error = expect_error(deployment.ask(0, &key).await, 402, "BUDGET_EXCEEDED").await;
    assert_eq!(error["resetsAt"], next_utc_midnight(0), "{error}");
    assert_eq!(micros(&error["budget"]["spentMicros"]), CALL_COST);

    let shifted = deployment.add_core(&[("OPENCLAW_SPEND_CLOCK_OFFSET_SECONDS", "86400")]);
    let edge = support::spawn_edge(&[&deployment.cores[shifted]]);
    support::wait_until_ready(&edge).await;
    let tomorrow = format!("http://127.0.0.1:{}", edge.port);
    let response = deployment
        .http
        .post(format!("{tomorrow}/api/v1/sessions"))
        .bearer_auth(&key)
        .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "maxTokens": MAX_TOKENS}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    expect_error(deployment.ask(0, &key).await, 402, "BUDGET_EXCEEDED").await;

    let shown = expect_data(
        deployment
            .http
            .get(format!("{tomorrow}/api/v1/keys/{id}"))
            .bearer_auth(INTERNAL_TOKEN)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(micros(&shown["budgetSpend"]["spentMicros"]), CALL_COST);
    assert_eq!(
        shown["budgetSpend"]["resetsAt"],
        next_utc_midnight(1),
        "{shown}"
    );
    let today = deployment.shown(0, &id).await;
    assert_eq!(micros(&today["budgetSpend"]["spentMicros"]), CALL_COST);
    assert_eq!(today["budgetSpend"]["resetsAt"], next_utc_midnight(0));
    // The threshold is announced once in each period.
    let events = budget_events(deployment.cores[0].port, &id).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.r#type == "budget.threshold")
            .count(),
        2,
        "{events:#?}"
    );
}

/// A refused key sees BUDGET_EXCEEDED (402) with `resetsAt` and `budget` on REST, OpenAI's
/// error shape on `/v1`, and RESOURCE_EXHAUSTED with the reason and figures on gRPC; nothing
/// is asked of the upstream; its reads (session, history, status) carry on.
async fn a_refused_key_reads_on(deployment: &Deployment) {
    let (key, id) = deployment
        .key(json!({"limitMicros": 1_000_000, "period": "month", "timeZone": "UTC"}))
        .await;
    let created = expect_data(deployment.ask(0, &key).await, 201).await;
    let session = created["sessionId"]
        .as_str()
        .expect("sessionId")
        .to_string();
    // Lower the limit to what is spent: the next call cannot fit.
    let response = deployment
        .http
        .patch(format!("{}/api/v1/keys/{id}", deployment.edge(0)))
        .bearer_auth(INTERNAL_TOKEN)
        .json(&json!({"budget": {"limitMicros": CALL_COST, "period": "month", "timeZone": "UTC"}}))
        .send()
        .await
        .unwrap();
    let shown = expect_data(response, 200).await;
    assert_eq!(micros(&shown["budgetSpend"]["spentMicros"]), CALL_COST);
    let asked = deployment.upstream.received().len();

    let response = deployment
        .http
        .post(format!(
            "{}/api/v1/sessions/{session}/messages",
            deployment.edge(0)
        ))
        .bearer_auth(&key)
        .json(&json!({"message": {"role": "user", "content": "again"}}))
        .send()
        .await
        .unwrap();
    let error = expect_error(response, 402, "BUDGET_EXCEEDED").await;
    let month_end = {
        let today = chrono::Utc::now().date_naive();
        let first = chrono::NaiveDate::from_ymd_opt(
            today.year() + i32::from(today.month() == 12),
            today.month() % 12 + 1,
            1,
        )
        .unwrap();
        first
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    assert_eq!(error["resetsAt"], month_end, "{error}");
    let budget = &error["budget"];
    assert_eq!(budget["scope"], "key");
    assert_eq!(budget["period"], "month");
    assert_eq!(budget["resetsAt"], month_end);
    assert_eq!(micros(&budget["limitMicros"]), CALL_COST);
    assert_eq!(micros(&budget["spentMicros"]), CALL_COST);
    assert_eq!(micros(&budget["reservedMicros"]), 0);
    assert!(micros(&budget["costMicros"]) > 0, "{error}");

    let response = deployment
        .http
        .post(format!("{}/v1/chat/completions", deployment.edge(0)))
        .bearer_auth(&key)
        .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 402);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "insufficient_quota", "{body}");
    assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("resets at")),
        "{body}"
    );

    {
        use openclaw_gateway::proto::{
            ChatMessage, SendMessageRequest, session_service_client::SessionServiceClient,
        };
        use tonic_types::StatusExt as _;
        let mut client =
            SessionServiceClient::connect(format!("http://127.0.0.1:{}", deployment.cores[0].port))
                .await
                .unwrap();
        let mut request = tonic::Request::new(SendMessageRequest {
            session_id: session.clone(),
            message: Some(ChatMessage {
                role: "user".into(),
                content: "over gRPC".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        let status = client.send_message(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        let details = status.get_error_details();
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "BUDGET_EXCEEDED");
        assert_eq!(info.metadata["scope"], "key");
        assert_eq!(info.metadata["limitMicros"], CALL_COST.to_string());
        assert_eq!(info.metadata["spentMicros"], CALL_COST.to_string());
        assert_eq!(info.metadata["period"], "month");
        assert_eq!(info.metadata["resetsAt"], month_end);
    }
    assert_eq!(
        deployment.upstream.received().len(),
        asked,
        "a refused call reaches no model"
    );

    for path in [
        format!("/api/v1/sessions/{session}"),
        format!("/api/v1/sessions/{session}/messages"),
        "/api/v1/sessions".to_string(),
        "/api/v1/system/status".to_string(),
    ] {
        let response = deployment
            .http
            .get(format!("{}{path}", deployment.edge(0)))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        expect_data(response, 200).await;
    }
    let history = expect_data(
        deployment
            .http
            .get(format!(
                "{}/api/v1/sessions/{session}/messages",
                deployment.edge(0)
            ))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(
        history["messages"].as_array().map(Vec::len),
        Some(2),
        "the refused turn stored nothing: {history}"
    );

    // Spend past the limit (here: the limit lowered below it) still lets free models answer.
    let response = deployment
        .http
        .patch(format!("{}/api/v1/keys/{id}", deployment.edge(0)))
        .bearer_auth(INTERNAL_TOKEN)
        .json(&json!({"budget": {"limitMicros": CALL_COST / 2, "period": "month", "timeZone": "UTC"}}))
        .send()
        .await
        .unwrap();
    expect_data(response, 200).await;
    let response = deployment
        .http
        .post(format!("{}/api/v1/sessions", deployment.edge(0)))
        .bearer_auth(&key)
        .json(&json!({"model": "zai/free", "messages": [{"role": "user", "content": "free?"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_reads_on_with_redis() {
    a_refused_key_reads_on(&Deployment::start(1, &[]).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_reads_on_in_a_single_process() {
    a_refused_key_reads_on(&Deployment::embedded(&[]).await).await;
}

/// GET /api/v1/system/status as `key` sees it.
async fn status(deployment: &Deployment, key: &str) -> Value {
    let response = deployment
        .http
        .get(format!("{}/api/v1/system/status", deployment.edge(0)))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    expect_data(response, 200).await
}

/// The status shows the caller's budget and its spend this period beside the guide's fields;
/// a key without a budget sees null; the internal token sees the gateway-wide budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_callers_budget_and_spend() {
    let deployment = Deployment::start(
        1,
        &[
            ("OPENCLAW_GATEWAY_BUDGET_MICROS", "5000000"),
            ("OPENCLAW_GATEWAY_BUDGET_THRESHOLDS", "0.5,0.9"),
        ],
    )
    .await;
    let (key, _) = deployment
        .key(json!({"limitMicros": 1_000_000, "period": "week", "timeZone": "Europe/Berlin", "thresholds": [0.8]}))
        .await;
    expect_data(deployment.ask(0, &key).await, 201).await;
    let shown = status(&deployment, &key).await;
    for field in [
        "gateway",
        "version",
        "uptime",
        "resources",
        "dependencies",
        "storage",
    ] {
        assert!(!shown[field].is_null(), "{field} is kept: {shown}");
    }
    let budget = &shown["budget"];
    assert_eq!(micros(&budget["limitMicros"]), 1_000_000, "{shown}");
    assert_eq!(budget["period"], "week");
    assert_eq!(budget["timeZone"], "Europe/Berlin");
    assert_eq!(micros(&budget["spentMicros"]), CALL_COST);
    assert_eq!(budget["thresholds"], json!([0.8]));
    let start =
        chrono::DateTime::parse_from_rfc3339(budget["periodStart"].as_str().unwrap()).unwrap();
    let end = chrono::DateTime::parse_from_rfc3339(budget["resetsAt"].as_str().unwrap()).unwrap();
    let berlin: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
    let local = start.with_timezone(&berlin);
    assert_eq!(
        (local.weekday(), local.format("%H:%M").to_string()),
        (chrono::Weekday::Mon, "00:00".to_string()),
        "a week starts on Monday at Berlin's midnight: {budget}"
    );
    assert!(
        end - start >= chrono::Duration::hours(167) && end - start <= chrono::Duration::hours(169)
    );
    assert!(
        shown["gatewayBudget"].is_null(),
        "keys do not see the gateway's budget"
    );

    let (plain, _) = deployment.key(Value::Null).await;
    assert!(status(&deployment, &plain).await["budget"].is_null());

    let operators = status(&deployment, INTERNAL_TOKEN).await;
    let gateway = &operators["gatewayBudget"];
    assert_eq!(micros(&gateway["limitMicros"]), 5_000_000, "{operators}");
    assert_eq!(gateway["period"], "month");
    assert_eq!(gateway["timeZone"], "UTC");
    assert_eq!(gateway["thresholds"], json!([0.5, 0.9]));
    assert_eq!(micros(&gateway["spentMicros"]), CALL_COST);
}

/// A call is reserved at the dearest prices among its model and the fallbacks that may answer
/// for it: a free model whose fallback is priced does not slip past a budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_reserves_what_its_dearest_fallback_would_cost() {
    let deployment = Deployment::start(1, &[]).await;
    let (key, _) = deployment
        .key(json!({"limitMicros": 0, "period": "day"}))
        .await;
    let response = deployment
        .http
        .post(format!("{}/api/v1/sessions", deployment.edge(0)))
        .bearer_auth(&key)
        .json(&json!({"model": "zai/cheap", "messages": [{"role": "user", "content": "hi"}], "maxTokens": MAX_TOKENS}))
        .send()
        .await
        .unwrap();
    let error = expect_error(response, 402, "BUDGET_EXCEEDED").await;
    assert!(
        micros(&error["budget"]["costMicros"]) >= 2 * u64::from(MAX_TOKENS),
        "{error}"
    );
}

/// The gateway-wide budget (`OPENCLAW_GATEWAY_BUDGET_MICROS`) holds every key's calls
/// together, over two cores and two edges, with the same exact bound as a key's:
///
///   limit − cost < the gateway's spend ≤ limit,  spend = answered calls × 20 µ$,
///
/// refusing with `scope: "gateway"`. A key refused by the gateway keeps no reservation of its
/// own (it is given back), the key's own budget still refuses first when it is the smaller,
/// the gateway's threshold is announced once (to the internal token), and the internal
/// token's calls are not counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_budget_holds_every_key_together() {
    const LIMIT: u64 = 1_500;
    let deployment = Deployment::start(
        2,
        &[
            ("OPENCLAW_GATEWAY_BUDGET_MICROS", "1500"),
            ("OPENCLAW_GATEWAY_BUDGET_PERIOD", "day"),
            ("OPENCLAW_GATEWAY_BUDGET_THRESHOLDS", "0.5"),
        ],
    )
    .await;
    // The internal token is not held to the gateway's budget, nor counted in it.
    let response = deployment
        .http
        .post(format!("{}/v1/chat/completions", deployment.edge(0)))
        .bearer_auth(INTERNAL_TOKEN)
        .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (budgeted, budgeted_id) = deployment
        .key(json!({"limitMicros": 1_000_000, "period": "day"}))
        .await;
    let (plain, _) = deployment.key(Value::Null).await;
    let deployment = std::sync::Arc::new(deployment);
    let mut clients = Vec::new();
    for client in 0..8 {
        let deployment = deployment.clone();
        let key = if client % 2 == 0 {
            budgeted.clone()
        } else {
            plain.clone()
        };
        clients.push(tokio::spawn(async move {
            let mut answered = 0u64;
            for _ in 0..400 {
                let response = deployment.ask(client, &key).await;
                match response.status().as_u16() {
                    201 => answered += 1,
                    402 => {
                        let error = expect_error(response, 402, "BUDGET_EXCEEDED").await;
                        let budget = &error["budget"];
                        assert_eq!(budget["scope"], "gateway", "{error}");
                        assert_eq!(micros(&budget["limitMicros"]), LIMIT, "{error}");
                        assert_eq!(budget["period"], "day", "{error}");
                        let most = micros(&budget["costMicros"]);
                        if micros(&budget["reservedMicros"]) == 0 {
                            return (answered, most);
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    other => panic!(
                        "a call got {other}: {}",
                        response.text().await.unwrap_or_default()
                    ),
                }
            }
            panic!("client {client} was never refused with nothing in flight");
        }));
    }
    let (mut answered, mut most) = (0, 0);
    let mut budgeted_answered = 0;
    for (client, handle) in clients.into_iter().enumerate() {
        let (n, cost) = handle.await.expect("a client");
        answered += n;
        most = most.max(cost);
        if client % 2 == 0 {
            budgeted_answered += n;
        }
    }
    let operators = status(&deployment, INTERNAL_TOKEN).await;
    let spent = micros(&operators["gatewayBudget"]["spentMicros"]);
    assert_eq!(spent, answered * CALL_COST, "{operators}");
    assert!(spent <= LIMIT, "spent {spent} of {LIMIT}");
    assert!(
        spent > LIMIT - most,
        "spent {spent}: more than {most} short of {LIMIT}"
    );

    // The key's own spend counts its answered calls only, and it holds no reservation of the
    // calls the gateway refused: at its own limit, its refusal shows nothing reserved.
    let shown = deployment.shown(0, &budgeted_id).await;
    let own = micros(&shown["budgetSpend"]["spentMicros"]);
    assert_eq!(own, budgeted_answered * CALL_COST, "{shown}");
    let response = deployment
        .http
        .patch(format!("{}/api/v1/keys/{budgeted_id}", deployment.edge(0)))
        .bearer_auth(INTERNAL_TOKEN)
        .json(&json!({"budget": {"limitMicros": own, "period": "day"}}))
        .send()
        .await
        .unwrap();
    expect_data(response, 200).await;
    // Every replica reads the changed key within its key cache's lifetime (2 s).
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let error = expect_error(deployment.ask(1, &budgeted).await, 402, "BUDGET_EXCEEDED").await;
    assert_eq!(error["budget"]["scope"], "key", "{error}");
    assert_eq!(micros(&error["budget"]["reservedMicros"]), 0, "{error}");

    let events = support::all_events(deployment.cores[1].port).await;
    let gateway: Vec<_> = events
        .iter()
        .filter(|e| e.key_id == "@gateway" && e.r#type.starts_with("budget."))
        .collect();
    assert_eq!(gateway.len(), 1, "{events:#?}");
    assert_eq!(gateway[0].r#type, "budget.threshold");
    assert!(
        gateway[0].text.contains("(50% threshold"),
        "{}",
        gateway[0].text
    );
}

/// Streamed answers are charged like whole ones: the usage reported at the stream's end, on the
/// session API and on `/v1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_answers_are_charged_their_reported_usage() {
    let deployment = Deployment::start(1, &[]).await;
    let (key, id) = deployment
        .key(json!({"limitMicros": 1_000_000, "period": "day"}))
        .await;
    let created = expect_data(deployment.ask(0, &key).await, 201).await;
    let session = created["sessionId"].as_str().unwrap().to_string();
    let response = deployment
        .http
        .post(format!(
            "{}/api/v1/sessions/{session}/messages",
            deployment.edge(0)
        ))
        .bearer_auth(&key)
        .json(&json!({"message": {"role": "user", "content": "stream it"}, "stream": true, "maxTokens": MAX_TOKENS}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert!(body.contains("fine"), "{body}");
    let response = deployment
        .http
        .post(format!("{}/v1/chat/completions", deployment.edge(0)))
        .bearer_auth(&key)
        .json(
            &json!({"model": MODEL, "stream": true, "max_tokens": MAX_TOKENS,
            "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert!(body.contains("[DONE]"), "{body}");
    // Settling follows the reply by a moment.
    let mut spent = 0;
    for _ in 0..50 {
        spent = micros(&deployment.shown(0, &id).await["budgetSpend"]["spentMicros"]);
        if spent >= 3 * CALL_COST {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(spent, 3 * CALL_COST);
}

/// A single-process gateway (embedded store) holds the gateway-wide budget too: a budget of 0
/// refuses every priced call with `scope: "gateway"`, while free models still answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_budget_holds_in_a_single_process() {
    let deployment = Deployment::embedded(&[("OPENCLAW_GATEWAY_BUDGET_MICROS", "0")]).await;
    let (key, _) = deployment.key(Value::Null).await;
    let error = expect_error(deployment.ask(0, &key).await, 402, "BUDGET_EXCEEDED").await;
    assert_eq!(error["budget"]["scope"], "gateway", "{error}");
    assert_eq!(error["budget"]["period"], "month", "{error}");
    let response = deployment
        .http
        .post(format!("{}/api/v1/sessions", deployment.edge(0)))
        .bearer_auth(&key)
        .json(&json!({"model": "zai/free", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
}

/// A cron `agentTurn` run of a key over its budget is recorded `skipped`, naming the budget,
/// and nothing is asked of the model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_run_over_budget_is_skipped() {
    let deployment = Deployment::start(1, &[]).await;
    let (key, _) = deployment
        .key(json!({"limitMicros": 0, "period": "day"}))
        .await;
    let base = deployment.edge(0);
    let job = expect_data(
        support::post_with_key(
            &deployment.http,
            format!("{base}/api/v1/cron/jobs"),
            &key,
            &json!({"name": "over budget", "schedule": {"kind": "every", "everyMs": 3600000},
                "payload": {"kind": "agentTurn", "message": "hi", "model": MODEL}}),
        )
        .await,
        201,
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();
    let started = support::post_with_key(
        &deployment.http,
        format!("{base}/api/v1/cron/jobs/{id}/run"),
        &key,
        &json!({}),
    )
    .await;
    expect_data(started, 202).await;
    let mut runs = Value::Null;
    for _ in 0..100 {
        let response = support::get_with_key(
            &deployment.http,
            format!("{base}/api/v1/cron/jobs/{id}/runs"),
            &key,
        )
        .await;
        runs = expect_data(response, 200).await["runs"].clone();
        if runs[0]["status"] != "running" && !runs[0].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(runs[0]["status"], "skipped", "{runs}");
    assert!(
        runs[0].to_string().contains("BUDGET_EXCEEDED") || runs[0].to_string().contains("budget"),
        "{runs}"
    );
    assert!(deployment.upstream.received().is_empty());
}

/// A provider that reports more than was reserved takes the spend past the limit by the
/// excess: the call is still recorded at its real cost, `budget.exceeded` is announced once,
/// and the next priced call is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_costing_more_than_reserved_is_recorded_and_announced_once() {
    let deployment = Deployment::start(1, &[]).await;
    let (key, id) = deployment
        .key(json!({"limitMicros": 1_000, "period": "day", "thresholds": [0.5]}))
        .await;
    // 10 × 1 + 1000 × 2 = 2010 µ$, far above the reservation for maxTokens 50.
    deployment.upstream.behave(Behaviour::Reply {
        content: "long".into(),
        prompt_tokens: PROMPT,
        completion_tokens: 1_000,
    });
    expect_data(deployment.ask(0, &key).await, 201).await;
    let mut spent = 0;
    for _ in 0..50 {
        spent = micros(&deployment.shown(0, &id).await["budgetSpend"]["spentMicros"]);
        if spent > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(spent, 2_010);
    let error = expect_error(deployment.ask(0, &key).await, 402, "BUDGET_EXCEEDED").await;
    assert_eq!(micros(&error["budget"]["spentMicros"]), 2_010, "{error}");
    let events = budget_events(deployment.cores[0].port, &id).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.r#type.as_str()).collect();
    assert_eq!(
        kinds,
        ["budget.threshold", "budget.exceeded"],
        "{events:#?}"
    );
    assert!(
        events[1]
            .text
            .contains("$0.00201 of its $0.001 daily budget"),
        "{}",
        events[1].text
    );
}

/// With Redis unreachable and `OPENCLAW_RATE_LIMIT_REDIS_DOWN=open`, each of N replicas admits
/// budgeted calls against its 1/N share of the limit, from zero in its memory: together they
/// spend at most the limit while Redis is away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_open_each_replica_spends_at_most_its_share() {
    const LIMIT: u64 = 600;
    let mut deployment = Deployment::start(
        2,
        &[
            ("OPENCLAW_RATE_LIMIT_REDIS_DOWN", "open"),
            ("OPENCLAW_CORE_REPLICAS", "2"),
            ("OPENCLAW_REDIS_TIMEOUT_MS", "300"),
        ],
    )
    .await;
    let (key, _) = deployment
        .key(json!({"limitMicros": LIMIT, "period": "day"}))
        .await;
    // Each core verifies the key while Redis is up, so it has it cached when Redis dies.
    for core in &deployment.cores {
        use openclaw_gateway::proto::{
            GetStatusRequest, system_service_client::SystemServiceClient,
        };
        let mut client = SystemServiceClient::connect(format!("http://127.0.0.1:{}", core.port))
            .await
            .unwrap();
        let mut request = tonic::Request::new(GetStatusRequest {});
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        client.get_status(request).await.unwrap();
    }
    deployment.redis.as_mut().expect("redis").kill();
    let mut answered = 0u64;
    let mut statuses = BTreeMap::new();
    for i in 0..60 {
        let response = deployment
            .http
            .post(format!("{}/v1/chat/completions", deployment.edge(i)))
            .bearer_auth(&key)
            .json(&json!({"model": MODEL, "max_tokens": MAX_TOKENS,
                "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        *statuses.entry(status).or_insert(0) += 1;
        match status {
            200 => answered += 1,
            402 => {
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["error"]["type"], "insufficient_quota", "{body}");
            }
            other => panic!("{other}: {}", response.text().await.unwrap_or_default()),
        }
    }
    assert!(answered >= 1, "{statuses:?}");
    assert!(
        answered * CALL_COST <= LIMIT,
        "{answered} calls of {CALL_COST} µ$ passed {LIMIT} µ$: {statuses:?}"
    );
}

/// A gateway budget the core cannot read stops it at start, naming the variable at fault.
#[test]
fn an_invalid_gateway_budget_is_refused_at_start_by_name() {
    for (variable, value) in [
        ("OPENCLAW_GATEWAY_BUDGET_TIME_ZONE", "Mars/Base"),
        ("OPENCLAW_GATEWAY_BUDGET_THRESHOLDS", "0.5,1.5"),
    ] {
        let options = CoreOptions {
            env: vec![
                ("OPENCLAW_GATEWAY_BUDGET_MICROS".into(), "1000".into()),
                (variable.into(), value.into()),
            ],
            ..CoreOptions::default()
        };
        let (code, output) = support::run_core_to_exit(&options, &[], Duration::from_secs(20));
        assert!(
            code.is_some_and(|c| c != 0),
            "{variable}: {code:?}\n{output}"
        );
        assert!(
            output.contains(&format!("{variable} is invalid")),
            "{output}"
        );
    }
}

/// On a Redis Cluster every budget script touches one slot: a key's budget under the key's
/// hash tag, the gateway's under `{@gateway}`. Two cores stop a key at its budget, with the
/// key's and the gateway's spend equal to the answered calls' cost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_hold_on_a_redis_cluster() {
    const LIMIT: u64 = 400;
    let cluster = support::redis_topologies::RedisCluster::start(3, 0);
    let mut deployment = Deployment::prepare(None).await;
    let seeds = cluster.seeds();
    let env = [
        ("OPENCLAW_REDIS_CLUSTER_NODES", seeds.as_str()),
        ("OPENCLAW_GATEWAY_BUDGET_MICROS", "1000000"),
    ];
    deployment.add_core(&env);
    deployment.add_core(&env);
    let refs: Vec<&Process> = deployment.cores.iter().collect();
    let edges: Vec<Process> = (0..2).map(|_| support::spawn_edge(&refs)).collect();
    for edge in &edges {
        support::wait_until_ready(edge).await;
    }
    deployment.edges = edges;
    let (key, id) = deployment
        .key(json!({"limitMicros": LIMIT, "period": "day", "thresholds": [0.5]}))
        .await;
    let mut answered = 0;
    let most = loop {
        let response = deployment.ask(answered as usize, &key).await;
        if response.status() == 201 {
            answered += 1;
            assert!(answered * CALL_COST <= LIMIT, "admitted past the budget");
            continue;
        }
        let error = expect_error(response, 402, "BUDGET_EXCEEDED").await;
        assert_eq!(error["budget"]["scope"], "key", "{error}");
        if micros(&error["budget"]["reservedMicros"]) == 0 {
            break micros(&error["budget"]["costMicros"]);
        }
    };
    let spent = micros(&deployment.shown(0, &id).await["budgetSpend"]["spentMicros"]);
    assert_eq!(spent, answered * CALL_COST);
    assert!(
        spent <= LIMIT && spent > LIMIT - most,
        "spent {spent}, most {most}"
    );
    let operators = status(&deployment, INTERNAL_TOKEN).await;
    assert_eq!(
        micros(&operators["gatewayBudget"]["spentMicros"]),
        spent,
        "{operators}"
    );
    let events = budget_events(deployment.cores[0].port, &id).await;
    assert_eq!(events.len(), 1, "{events:#?}");
}
