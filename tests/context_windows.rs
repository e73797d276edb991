//! A session whose history grows to three times its model's context window keeps working, and
//! the provider never receives more than the window: with the `window` strategy (the system
//! prompt and the latest whole turns that fit are sent) and with `summarize` (the model
//! summarises older turns; the summary is stored in the history, marked, and sent in their
//! place). Real processes: a core and an edge, on Redis (a real `redis-server`) or on the
//! embedded store, and an OpenAI-compatible upstream in this process that records every
//! request it receives. Each request is measured again here, with cl100k_base as the gateway
//! counts.

mod support;

use std::path::Path;

use serde_json::{Value, json};
use support::{
    Behaviour, CoreOptions, FakeUpstream, Process, expect_data, expect_error, spawn_core,
    spawn_edge, start_redis, wait_until_ready,
};

/// The test model's context window: small, so a few dozen turns are three windows' worth.
const WINDOW: u64 = 1000;
/// The session's maxTokens: the completion every turn reserves.
const MAX_TOKENS: u64 = 100;
const MODEL: &str = "small/tiny";
const SYSTEM_PROMPT: &str = "You are a careful bookkeeping assistant. Keep every figure exact.";
/// What the upstream answers every call with (turns and summaries alike).
const REPLY: &str = "Noted: I have recorded that item with its price and its warehouse, and I will keep it in mind.";
const SUMMARY_INSTRUCTION_START: &str = "You compact a conversation";

fn count_text(text: &str) -> u64 {
    tiktoken_rs::cl100k_base_singleton()
        .encode_ordinary(text)
        .len() as u64
}

/// A chat request's prompt tokens as OpenAI counts chat formats (and as the gateway does):
/// 3 to prime the reply, and per message 4 plus its role plus its content.
fn prompt_tokens(messages: &[Value]) -> u64 {
    3 + messages
        .iter()
        .map(|m| {
            4 + count_text(m["role"].as_str().unwrap()) + count_text(m["content"].as_str().unwrap())
        })
        .sum::<u64>()
}

/// The user message of turn `n`: about 60 tokens, each naming its turn.
fn turn_message(n: usize) -> String {
    format!(
        "Turn {n}: please remember that item number {n} costs {} euros and ships from warehouse {}. \
         It was ordered by the purchasing team for the spring inventory and must be invoiced \
         before the end of the quarter, together with the other items of this order.",
        n * 7 + 3,
        n % 5
    )
}

struct Deployment {
    upstream: FakeUpstream,
    _redis: Option<Process>,
    core: Process,
    edge: Process,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Deployment {
    async fn start(on_redis: bool) -> Self {
        let upstream = FakeUpstream::start().await;
        upstream.behave(Behaviour::Reply {
            content: REPLY.into(),
            prompt_tokens: 500,
            completion_tokens: count_text(REPLY) as u32,
        });
        let dir = tempfile::tempdir().expect("temp dir");
        let providers = dir.path().join("providers.toml");
        write_providers(&providers, &upstream);
        let redis = on_redis.then(start_redis);
        let core = spawn_core(&CoreOptions {
            redis_url: redis.as_ref().map(support::redis_url),
            upstream: None,
            data_dir: Some(dir.path().to_path_buf()),
            env: vec![
                (
                    "OPENCLAW_PROVIDERS_FILE".into(),
                    providers.display().to_string(),
                ),
                (
                    "OPENCLAW_DEFAULT_REQUESTS_PER_MINUTE".into(),
                    "100000".into(),
                ),
            ],
        });
        let edge = spawn_edge(&[&core]);
        wait_until_ready(&edge).await;
        Self {
            upstream,
            _redis: redis,
            core,
            edge,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.edge.port)
    }

    async fn key(&self) -> String {
        support::create_key(&self.http, &self.url(""), "context windows", json!({})).await
    }

    async fn post(&self, path: &str, key: &str, body: Value) -> reqwest::Response {
        support::post_with_key(&self.http, self.url(path), key, &body).await
    }

    async fn get(&self, path: &str, key: &str) -> reqwest::Response {
        support::get_with_key(&self.http, self.url(path), key).await
    }
}

fn write_providers(path: &Path, upstream: &FakeUpstream) {
    let text = format!(
        r#"
defaultModel = "{MODEL}"

[[providers]]
name = "small"
baseUrl = "{}"
retry = {{ maxRetries = 0 }}
models = [{{ name = "tiny", contextWindow = {WINDOW} }}]
"#,
        upstream.base_url()
    );
    std::fs::write(path, text).expect("write the providers file");
}

/// Every upstream request fits the window: its prompt plus the completion it reserves.
fn assert_within_window(requests: &[Value]) {
    for (i, request) in requests.iter().enumerate() {
        let messages = request["messages"].as_array().expect("messages");
        let reserved = request["max_tokens"]
            .as_u64()
            .expect("max_tokens is always sent");
        let used = prompt_tokens(messages);
        assert!(
            used + reserved <= WINDOW,
            "request {i} sent {used} prompt tokens and reserved {reserved}: more than the window of {WINDOW}: {request}"
        );
    }
}

fn is_summary_request(request: &Value) -> bool {
    request["messages"][0]["content"]
        .as_str()
        .is_some_and(|c| c.starts_with(SUMMARY_INSTRUCTION_START))
}

/// The session's whole history through the history endpoint.
async fn history(deployment: &Deployment, key: &str, id: &str) -> Vec<Value> {
    let data = expect_data(
        deployment
            .get(
                &format!("/api/v1/sessions/{id}/messages?pageSize=1000"),
                key,
            )
            .await,
        200,
    )
    .await;
    assert!(data.get("nextPageToken").is_none(), "{data}");
    data["messages"].as_array().expect("messages").clone()
}

/// Sends three windows' worth of turns (a few streamed) to a new session of `strategy`;
/// returns the session id and the history tokens sent, in turns.
async fn long_conversation(deployment: &Deployment, key: &str, strategy: &str) -> (String, usize) {
    let created = expect_data(
        deployment
            .post(
                "/api/v1/sessions",
                key,
                json!({
                    "model": MODEL,
                    "messages": [{"role": "system", "content": SYSTEM_PROMPT}],
                    "context": {"strategy": strategy},
                    "maxTokens": MAX_TOKENS,
                }),
            )
            .await,
        201,
    )
    .await;
    assert_eq!(created["context"]["strategy"], strategy, "{created}");
    let id = created["sessionId"].as_str().unwrap().to_string();
    let mut stored = count_text(SYSTEM_PROMPT) + 5;
    let mut turns = 0;
    while stored < 3 * WINDOW {
        let message = turn_message(turns);
        let streamed = turns % 7 == 3;
        let response = deployment
            .post(
                &format!("/api/v1/sessions/{id}/messages"),
                key,
                json!({"message": {"role": "user", "content": message}, "stream": streamed}),
            )
            .await;
        assert_eq!(response.status(), 200, "turn {turns}");
        if streamed {
            let body = response.text().await.unwrap();
            assert!(body.contains("event: done"), "turn {turns}: {body}");
        } else {
            let data = expect_data(response, 200).await;
            assert_eq!(data["message"]["content"], REPLY, "turn {turns}");
        }
        stored += count_text(&message) + 5 + count_text(REPLY) + 5;
        turns += 1;
    }
    (id, turns)
}

/// The requests that answered turns (not summaries), each checked to end with its turn's
/// message and begin with the system prompt.
fn turn_requests(requests: &[Value], turns: usize) -> Vec<Value> {
    let answered: Vec<Value> = requests
        .iter()
        .filter(|r| !is_summary_request(r))
        .cloned()
        .collect();
    assert_eq!(answered.len(), turns, "one upstream request per turn");
    for (n, request) in answered.iter().enumerate() {
        let messages = request["messages"].as_array().unwrap();
        assert_eq!(messages[0]["role"], "system");
        assert_eq!(messages[0]["content"], SYSTEM_PROMPT, "turn {n}");
        let last = messages.last().unwrap();
        assert_eq!(last["role"], "user");
        assert_eq!(last["content"], turn_message(n), "turn {n}");
        assert_eq!(request["max_tokens"], MAX_TOKENS, "turn {n}");
    }
    answered
}

async fn window_strategy(on_redis: bool) {
    let deployment = Deployment::start(on_redis).await;
    let key = deployment.key().await;
    let (id, turns) = long_conversation(&deployment, &key, "window").await;
    let requests = deployment.upstream.received();
    assert_within_window(&requests);
    assert!(
        !requests.iter().any(is_summary_request),
        "the window strategy never summarises"
    );
    let answered = turn_requests(&requests, turns);
    let last = answered.last().unwrap()["messages"]
        .as_array()
        .unwrap()
        .clone();
    // The oldest turns were left out; the latest sent whole: a question before its reply.
    assert!(
        !last.iter().any(|m| m["content"] == turn_message(0)),
        "the first turn no longer fits"
    );
    assert!(
        last.len() > 4,
        "recent turns are still sent: {}",
        last.len()
    );
    assert_eq!(
        last[1]["role"], "user",
        "the history sent starts with a question"
    );
    for pair in last[1..last.len() - 1].chunks(2) {
        assert_eq!(pair[0]["role"], "user");
        assert_eq!(pair[1]["role"], "assistant");
        assert_eq!(pair[1]["content"], REPLY);
    }
    // A request that uses most of the window: the window is used, not wasted.
    let fullest = answered
        .iter()
        .map(|r| prompt_tokens(r["messages"].as_array().unwrap()) + MAX_TOKENS)
        .max()
        .unwrap();
    assert!(fullest > WINDOW * 3 / 4, "{fullest}");
    // Nothing was lost: the whole history stays readable.
    let stored = history(&deployment, &key, &id).await;
    assert_eq!(stored.len(), 1 + 2 * turns);
    assert!(stored.iter().all(|m| m.get("summary").is_none()));
    let session = expect_data(
        deployment
            .get(&format!("/api/v1/sessions/{id}"), &key)
            .await,
        200,
    )
    .await;
    assert_eq!(session["context"]["strategy"], "window");
    assert_eq!(session["messageCount"], 1 + 2 * turns as u64);
}

async fn summarize_strategy(on_redis: bool) {
    let deployment = Deployment::start(on_redis).await;
    let key = deployment.key().await;
    let (id, turns) = long_conversation(&deployment, &key, "summarize").await;
    let requests = deployment.upstream.received();
    assert_within_window(&requests);
    let answered = turn_requests(&requests, turns);
    let summary_calls = requests.iter().filter(|r| is_summary_request(r)).count();

    // The summarising calls were admitted against the key's limits like its own sends: the
    // create, every turn and every summary (and this read, depending on when it is counted).
    let read = deployment
        .get(&format!("/api/v1/sessions/{id}"), &key)
        .await;
    let header = |name: &str| -> u64 { read.headers()[name].to_str().unwrap().parse().unwrap() };
    let used = header("x-ratelimit-limit-requests") - header("x-ratelimit-remaining-requests");
    let counted = (1 + turns + summary_calls) as u64;
    assert!(
        used == counted || used == counted + 1,
        "{used} requests counted for 1 create, {turns} turns and {summary_calls} summaries"
    );

    // The summaries are stored in the history, marked, as system messages.
    let stored = history(&deployment, &key, &id).await;
    let marked: Vec<(usize, &Value)> = stored
        .iter()
        .enumerate()
        .filter(|(_, m)| m.get("summary").is_some())
        .collect();
    let summaries = marked.len();
    assert!(
        summaries >= 2,
        "three windows need repeated compaction: {summaries}"
    );
    assert!(summary_calls >= summaries, "each summary is the model's");
    assert_eq!(stored.len(), 1 + 2 * turns + summaries);
    let mut previous_to = 0;
    for (index, message) in &marked {
        assert_eq!(message["role"], "system");
        let content = message["content"].as_str().unwrap();
        assert!(
            content.contains(REPLY),
            "the model's summary is stored: {content}"
        );
        let (from, to) = (
            message["summary"]["from"].as_u64().unwrap(),
            message["summary"]["to"].as_u64().unwrap(),
        );
        assert_eq!(
            from, 1,
            "a summary stands for everything after the system prompt"
        );
        assert!(to > previous_to && to as usize <= *index, "{message}");
        assert_eq!(
            stored[to as usize]["role"], "user",
            "the turns kept start with a question"
        );
        previous_to = to;
    }
    // A re-summarising call carries the summary so far.
    let resummarised = requests
        .iter()
        .filter(|r| is_summary_request(r))
        .skip(1)
        .all(|r| {
            r["messages"][1]["content"]
                .as_str()
                .is_some_and(|c| c.starts_with("The summary so far:"))
        });
    assert!(resummarised);

    // The turns after a compaction send the latest summary right after the system prompt,
    // then the turns it does not stand for.
    let (last_index, last_summary) = marked.last().unwrap();
    let last = answered.last().unwrap()["messages"].as_array().unwrap();
    assert_eq!(last[1]["role"], "system");
    assert_eq!(last[1]["content"], last_summary["content"]);
    let kept_from = last_summary["summary"]["to"].as_u64().unwrap() as usize;
    // Stored since the summary, less the last turn (its question is the request's last message).
    let expected: Vec<&Value> = stored[kept_from..stored.len() - 2]
        .iter()
        .enumerate()
        .filter(|(i, _)| kept_from + i != *last_index)
        .map(|(_, m)| m)
        .collect();
    let sent: Vec<&Value> = last[2..last.len() - 1].iter().collect();
    assert_eq!(
        sent.len(),
        expected.len(),
        "every turn after the summary is sent"
    );
    for (sent, stored) in sent.iter().zip(&expected) {
        assert_eq!(sent["role"], stored["role"]);
        assert_eq!(sent["content"], stored["content"]);
    }
    assert!(
        !last.iter().any(|m| m["content"] == turn_message(0)),
        "the first turn is summarised, not sent"
    );
    let session = expect_data(
        deployment
            .get(&format!("/api/v1/sessions/{id}"), &key)
            .await,
        200,
    )
    .await;
    assert_eq!(session["context"]["strategy"], "summarize");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_strategy_on_redis() {
    window_strategy(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_strategy_on_the_embedded_store() {
    window_strategy(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summarize_strategy_on_redis() {
    summarize_strategy(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summarize_strategy_on_the_embedded_store() {
    summarize_strategy(false).await;
}

/// What cannot work is refused before the model is asked, naming the field and what to do:
/// an unknown strategy, a strategy changed on an existing session, a message that cannot fit
/// the window even alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_the_field_and_the_remedy() {
    let deployment = Deployment::start(true).await;
    let key = deployment.key().await;
    let error = expect_error(
        deployment
            .post(
                "/api/v1/sessions",
                &key,
                json!({"messages": [{"role": "user", "content": "hi"}], "context": {"strategy": "forget"}}),
            )
            .await,
        400,
        "INVALID_REQUEST",
    )
    .await;
    let details = error["details"].as_str().unwrap();
    assert!(
        details.contains("window") && details.contains("summarize"),
        "{error}"
    );
    assert!(error.to_string().contains("context.strategy"), "{error}");

    let created = expect_data(
        deployment
            .post(
                "/api/v1/sessions",
                &key,
                json!({"messages": [{"role": "system", "content": SYSTEM_PROMPT}], "maxTokens": MAX_TOKENS}),
            )
            .await,
        201,
    )
    .await;
    assert_eq!(created["context"]["strategy"], "window", "the default");
    let id = created["sessionId"].as_str().unwrap();
    let error = expect_error(
        deployment
            .post(
                "/api/v1/sessions",
                &key,
                json!({"context": {"sessionId": id, "strategy": "summarize"}}),
            )
            .await,
        400,
        "INVALID_REQUEST",
    )
    .await;
    assert!(error.to_string().contains("context.strategy"), "{error}");

    let huge = "tally ".repeat(1200);
    let before = deployment.upstream.received().len();
    let error = expect_error(
        deployment
            .post(
                &format!("/api/v1/sessions/{id}/messages"),
                &key,
                json!({"message": {"role": "user", "content": huge}}),
            )
            .await,
        400,
        "INVALID_REQUEST",
    )
    .await;
    let details = error["details"].as_str().unwrap();
    assert!(details.contains(&WINDOW.to_string()), "{error}");
    assert!(details.contains("maxTokens"), "{error}");
    assert_eq!(
        deployment.upstream.received().len(),
        before,
        "the model is not asked"
    );
    // Nothing was stored, and the session still answers.
    assert_eq!(history(&deployment, &key, id).await.len(), 1);
    let data = expect_data(
        deployment
            .post(
                &format!("/api/v1/sessions/{id}/messages"),
                &key,
                json!({"message": {"role": "user", "content": "a short one"}}),
            )
            .await,
        200,
    )
    .await;
    assert_eq!(data["message"]["content"], REPLY);

    // A new session whose first messages exceed the window: its first turn sends what fits.
    let mut messages = vec![json!({"role": "system", "content": SYSTEM_PROMPT})];
    for n in 0..30 {
        messages.push(json!({"role": "user", "content": turn_message(n)}));
        messages.push(json!({"role": "assistant", "content": REPLY}));
    }
    messages.push(json!({"role": "user", "content": "What does item 29 cost?"}));
    expect_data(
        deployment
            .post(
                "/api/v1/sessions",
                &key,
                json!({"messages": messages, "maxTokens": MAX_TOKENS}),
            )
            .await,
        201,
    )
    .await;
    let requests = deployment.upstream.received();
    assert_within_window(&requests);
    let first = requests.last().unwrap()["messages"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(first[0]["content"], SYSTEM_PROMPT);
    assert_eq!(first[1]["role"], "user");
    assert_eq!(first.last().unwrap()["content"], "What does item 29 cost?");
}

/// Over gRPC: the strategy is chosen on CreateSession, read back on GetSession, and an unknown
/// one is INVALID_ARGUMENT with the field in the status's BadRequest details.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_sessions_carry_their_strategy() {
    use openclaw_gateway::proto;
    use openclaw_gateway::proto::session_service_client::SessionServiceClient;
    use tonic_types::StatusExt as _;

    let deployment = Deployment::start(false).await;
    let key = deployment.key().await;
    let mut client =
        SessionServiceClient::connect(format!("http://127.0.0.1:{}", deployment.core.port))
            .await
            .unwrap();
    let authorized = |body: proto::CreateSessionRequest| {
        let mut request = tonic::Request::new(body);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        request
    };
    let system = proto::ChatMessage {
        role: "system".into(),
        content: SYSTEM_PROMPT.into(),
        ..Default::default()
    };
    let created = client
        .create_session(authorized(proto::CreateSessionRequest {
            messages: vec![system.clone()],
            context: Some(proto::SessionContext {
                session_id: String::new(),
                strategy: "summarize".into(),
            }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let session = created.session.unwrap();
    assert_eq!(session.context_strategy, "summarize");
    let mut get = tonic::Request::new(proto::GetSessionRequest {
        session_id: session.session_id.clone(),
    });
    get.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    let read = client.get_session(get).await.unwrap().into_inner();
    assert_eq!(read.context_strategy, "summarize");

    let refused = client
        .create_session(authorized(proto::CreateSessionRequest {
            messages: vec![system],
            context: Some(proto::SessionContext {
                session_id: String::new(),
                strategy: "everything".into(),
            }),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let details = refused.get_error_details();
    let violation = details
        .bad_request()
        .and_then(|bad| bad.field_violations.first())
        .expect("a field violation");
    assert_eq!(violation.field, "context.strategy");
}
