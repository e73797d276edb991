//! Real parts for end-to-end tests: a `redis-server` per test, a fake
//! OpenAI-compatible upstream that records what it receives, and the
//! gateway's own binaries as child processes on free ports.
#![allow(dead_code)]

pub mod fault_proxy;
pub mod otlp;
pub mod redis_topologies;

use std::fmt::Display;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::serve::ListenerExt as _;
use axum::{Json, Router, routing::post};
use futures::StreamExt as _;
use serde::Serialize;
use serde_json::{Value, json};

pub const INTERNAL_TOKEN: &str = "test-internal-token-0123456789";

/// A loopback port nothing listens on, never the same twice in this test process: the
/// kernel may hand a released port out again, and two servers started by concurrent tests
/// on one port would answer each other's clients.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port on loopback");
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

/// Whether something listens on loopback `port`. A connection to a port nobody listens on can
/// still succeed: Linux may pick the target port as the ephemeral source port and connect the
/// socket to itself (TCP simultaneous open), so only a connection whose two ends differ counts.
pub fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port))
        .is_ok_and(|stream| stream.local_addr().ok() != stream.peer_addr().ok())
}

fn wait_for_port(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if listening(port) {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening on port {port}: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not listen on port {port} within 20 s");
}

/// A child process killed when the guard drops.
pub struct Process {
    child: Child,
    pub port: u16,
    /// The metrics and probe port (`/metrics`, `/livez`, `/readyz`) of gateway processes.
    pub metrics_port: u16,
    name: String,
}

impl Process {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `within` for the process to exit by itself; its exit code, if it did.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private `redis-server` on a free port, keeping nothing on disk.
pub fn start_redis() -> Process {
    let port = free_port();
    let mut child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed for these tests (apt-get install redis-server)");
    wait_for_port(port, "redis-server", &mut child);
    Process {
        child,
        port,
        metrics_port: 0,
        name: "redis".into(),
    }
}

pub fn redis_url(redis: &Process) -> String {
    format!("redis://127.0.0.1:{}", redis.port)
}

// ---------------------------------------------------------------- fake upstream

/// What the fake upstream does with the next requests.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Answers with this text and this usage.
    Reply {
        content: String,
        prompt_tokens: u32,
        completion_tokens: u32,
    },
    /// Answers `{"error": {...}}` with this HTTP status.
    Fail { status: u16, message: String },
    /// Waits this long, then replies normally.
    Stall(Duration),
    /// Answers 429 with this `Retry-After` header (seconds or an HTTP date).
    RateLimited { retry_after: String },
    /// Streams these pieces (a stream request), `delay` apart, the first after
    /// `delay` too; a whole request gets them joined. Usage as given.
    Stream {
        chunks: Vec<String>,
        delay: Duration,
        prompt_tokens: u32,
        completion_tokens: u32,
    },
    /// Streams the echo reply word by word, but stops for `stall` after the
    /// first `after` pieces (the connection stays open), then goes on.
    StallMidStream { after: usize, stall: Duration },
    /// Like `Reply` (whole, or streamed word by word), and reports `cached_tokens` of the
    /// prompt as read from the provider's cache (`usage.prompt_tokens_details.cached_tokens`).
    ReplyCached {
        content: String,
        prompt_tokens: u32,
        completion_tokens: u32,
        cached_tokens: u32,
    },
    /// Answers `content` word by word (streamed, or whole) with, when the request asks for
    /// `logprobs`, each word's log probability (`logprobs.content`, OpenAI's shape: word i has
    /// logprob -(i+1)/10 and, asked for `top_logprobs` n, n alternatives).
    ReplyLogprobs { content: String },
    /// Answers with these tool calls (id, function name, arguments as JSON text) and no text,
    /// `finish_reason` "tool_calls". Streamed (a stream request): per call a first piece with
    /// its index, id, type and name (empty arguments), then its arguments in two or more
    /// fragments, then the finish chunk, the usage chunk when asked, `[DONE]`.
    ToolCalls {
        calls: Vec<(String, String, String)>,
        prompt_tokens: u32,
        completion_tokens: u32,
    },
}

#[derive(Default)]
struct UpstreamState {
    received: Mutex<Vec<Value>>,
    received_at: Mutex<Vec<Instant>>,
    authorization: Mutex<Vec<String>>,
    traceparents: Mutex<Vec<String>>,
    behaviour: Mutex<Option<Behaviour>>,
    /// Behaviours for the next requests, one each, before `behaviour` applies again.
    script: Mutex<std::collections::VecDeque<Behaviour>>,
}

/// An OpenAI-compatible chat-completions server on a free port, in this test process.
#[derive(Clone)]
pub struct FakeUpstream {
    pub addr: SocketAddr,
    state: Arc<UpstreamState>,
}

impl FakeUpstream {
    pub async fn start() -> Self {
        let state = Arc::new(UpstreamState::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake upstream");
        let addr = listener.local_addr().expect("fake upstream address");
        tokio::spawn(async move {
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state }
    }

    /// The base URL to configure as the provider's (`ZAI_BASE_URL`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn behave(&self, behaviour: Behaviour) {
        *self.state.behaviour.lock().unwrap() = Some(behaviour);
    }

    /// The next requests get these behaviours, one each, in order; then
    /// the `behave` one (or the default echo) again.
    pub fn then(&self, behaviours: impl IntoIterator<Item = Behaviour>) {
        self.state.script.lock().unwrap().extend(behaviours);
    }

    /// The next `times` requests fail with `status`; later ones are answered.
    pub fn fail_times(&self, times: usize, status: u16) {
        self.then((0..times).map(|i| Behaviour::Fail {
            status,
            message: format!("scripted failure {}", i + 1),
        }));
    }

    /// When each request arrived, in order.
    pub fn received_at(&self) -> Vec<Instant> {
        self.state.received_at.lock().unwrap().clone()
    }

    /// Every request body received, in order.
    pub fn received(&self) -> Vec<Value> {
        self.state.received.lock().unwrap().clone()
    }

    /// The `traceparent` header of every request (empty when absent).
    pub fn traceparents(&self) -> Vec<String> {
        self.state.traceparents.lock().unwrap().clone()
    }

    pub fn authorization_headers(&self) -> Vec<String> {
        self.state.authorization.lock().unwrap().clone()
    }
}

async fn chat(
    State(state): State<Arc<UpstreamState>>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Value>,
) -> axum::response::Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    state.authorization.lock().unwrap().push(auth);
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    state.traceparents.lock().unwrap().push(traceparent);
    state.received.lock().unwrap().push(body.clone());
    state.received_at.lock().unwrap().push(Instant::now());
    let scripted = state.script.lock().unwrap().pop_front();
    let behaviour = scripted.or_else(|| state.behaviour.lock().unwrap().clone());
    let streamed = body["stream"] == true;
    let include_usage = body["stream_options"]["include_usage"] == true;
    let last_user = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_string();
    let echo_words =
        |text: String| -> Vec<String> { text.split_inclusive(' ').map(str::to_string).collect() };
    if streamed {
        let model = body["model"].clone();
        let sse = |chunks: Vec<String>,
                   delay: Duration,
                   prompt: u32,
                   completion: u32,
                   stall: Option<(usize, Duration)>| {
            stream_reply(
                model.clone(),
                chunks,
                delay,
                (prompt, completion),
                include_usage,
                stall,
            )
        };
        if let Some(Behaviour::ReplyCached {
            content,
            prompt_tokens,
            completion_tokens,
            cached_tokens,
        }) = behaviour.clone()
        {
            return with_cached_usage(
                stream_reply(
                    model.clone(),
                    echo_words(content),
                    Duration::ZERO,
                    (prompt_tokens, completion_tokens),
                    include_usage,
                    None,
                ),
                cached_tokens,
            )
            .await;
        }
        if let Some(Behaviour::ReplyLogprobs { content }) = behaviour.clone() {
            return stream_logprobs(model.clone(), &content, &body);
        }
        if let Some(Behaviour::ToolCalls {
            calls,
            prompt_tokens,
            completion_tokens,
        }) = behaviour.clone()
        {
            return stream_tool_calls(
                model.clone(),
                &calls,
                (prompt_tokens, completion_tokens),
                include_usage,
            );
        }
        match behaviour.clone() {
            None => {
                return sse(
                    echo_words(format!("echo: {last_user}")),
                    Duration::ZERO,
                    10,
                    5,
                    None,
                );
            }
            Some(Behaviour::Reply {
                content,
                prompt_tokens,
                completion_tokens,
            }) => {
                return sse(
                    echo_words(content),
                    Duration::ZERO,
                    prompt_tokens,
                    completion_tokens,
                    None,
                );
            }
            Some(Behaviour::Stall(wait)) => {
                tokio::time::sleep(wait).await;
                return sse(
                    echo_words(format!("echo: {last_user}")),
                    Duration::ZERO,
                    10,
                    5,
                    None,
                );
            }
            Some(Behaviour::Stream {
                chunks,
                delay,
                prompt_tokens,
                completion_tokens,
            }) => return sse(chunks, delay, prompt_tokens, completion_tokens, None),
            Some(Behaviour::StallMidStream { after, stall }) => {
                return sse(
                    echo_words(format!("echo: {last_user}")),
                    Duration::ZERO,
                    10,
                    5,
                    Some((after, stall)),
                );
            }
            Some(
                Behaviour::Fail { .. }
                | Behaviour::RateLimited { .. }
                | Behaviour::ReplyCached { .. }
                | Behaviour::ReplyLogprobs { .. }
                | Behaviour::ToolCalls { .. },
            ) => {}
        }
    }
    let reply = |content: String, prompt: u32, completion: u32| {
        (
            StatusCode::OK,
            Json(json!({
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
            })),
        )
    };
    match behaviour {
        Some(Behaviour::Reply {
            content,
            prompt_tokens,
            completion_tokens,
        }) => reply(content, prompt_tokens, completion_tokens).into_response(),
        Some(Behaviour::Fail { status, message }) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            Json(json!({"error": {"message": message, "type": "server_error"}})),
        )
            .into_response(),
        Some(Behaviour::Stall(wait)) => {
            tokio::time::sleep(wait).await;
            reply(format!("echo: {last_user}"), 10, 5).into_response()
        }
        Some(Behaviour::RateLimited { retry_after }) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", retry_after)],
            Json(json!({"error": {"message": "slow down", "type": "rate_limit_error"}})),
        )
            .into_response(),
        Some(Behaviour::Stream {
            chunks,
            prompt_tokens,
            completion_tokens,
            ..
        }) => reply(chunks.concat(), prompt_tokens, completion_tokens).into_response(),
        Some(Behaviour::StallMidStream { .. }) | None => {
            reply(format!("echo: {last_user}"), 10, 5).into_response()
        }
        Some(Behaviour::ReplyCached {
            content,
            prompt_tokens,
            completion_tokens,
            cached_tokens,
        }) => {
            let (status, Json(mut answer)) = reply(content, prompt_tokens, completion_tokens);
            answer["usage"]["prompt_tokens_details"] = json!({"cached_tokens": cached_tokens});
            (status, Json(answer)).into_response()
        }
        Some(Behaviour::ReplyLogprobs { content }) => {
            let (status, Json(mut answer)) = reply(content.clone(), 10, 5);
            let tokens: Vec<Value> = content
                .split_inclusive(' ')
                .enumerate()
                .map(|(i, word)| token_logprob(i, word, &body))
                .collect();
            if body["logprobs"] == true {
                answer["choices"][0]["logprobs"] = json!({"content": tokens, "refusal": null});
            }
            (status, Json(answer)).into_response()
        }
        Some(Behaviour::ToolCalls {
            calls,
            prompt_tokens,
            completion_tokens,
        }) => {
            let (status, Json(mut answer)) = reply(String::new(), prompt_tokens, completion_tokens);
            let tool_calls: Vec<Value> = calls
                .iter()
                .map(|(id, name, arguments)| {
                    json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}})
                })
                .collect();
            answer["choices"][0]["message"] =
                json!({"role": "assistant", "content": null, "tool_calls": tool_calls});
            answer["choices"][0]["finish_reason"] = json!("tool_calls");
            (status, Json(answer)).into_response()
        }
    }
}

/// Word `i`'s log probability entry, with as many alternatives as the request's
/// `top_logprobs` asks.
fn token_logprob(i: usize, word: &str, request: &Value) -> Value {
    let top = request["top_logprobs"].as_u64().unwrap_or(0);
    let logprob = -((i + 1) as f64) / 10.0;
    let alternatives: Vec<Value> = (0..top)
        .map(|k| json!({"token": format!("alt{k}"), "logprob": logprob - 1.0 - k as f64, "bytes": format!("alt{k}").into_bytes()}))
        .collect();
    json!({"token": word, "logprob": logprob, "bytes": word.as_bytes(), "top_logprobs": alternatives})
}

/// [`Behaviour::ReplyLogprobs`] streamed: one chunk per word, each with its log probability.
fn stream_logprobs(model: Value, content: &str, request: &Value) -> axum::response::Response {
    let chunk = |delta: Value, logprobs: Value, finish: Value| {
        let event = json!({
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
        });
        format!("data: {event}\n\n")
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
        Value::Null,
    )];
    for (i, word) in content.split_inclusive(' ').enumerate() {
        let logprobs = if request["logprobs"] == true {
            json!({"content": [token_logprob(i, word, request)]})
        } else {
            Value::Null
        };
        events.push(chunk(json!({"content": word}), logprobs, Value::Null));
    }
    events.push(chunk(json!({}), Value::Null, json!("stop")));
    events.push("data: [DONE]\n\n".to_string());
    event_stream_response(events)
}

/// A `text/event-stream` answer of `events`, each already framed (`data: ...\n\n`).
fn event_stream_response(events: Vec<String>) -> axum::response::Response {
    let body = futures::stream::iter(
        events
            .into_iter()
            .map(|text| Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(text))),
    );
    (
        StatusCode::OK,
        [("content-type", "text/event-stream")],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

/// `text` in `parts` fragments (at least two when it has two characters), cut at character
/// boundaries.
fn fragments(text: &str, parts: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let size = chars.len().div_ceil(parts.max(1)).max(1);
    chars
        .chunks(size)
        .map(|piece| piece.iter().collect())
        .collect()
}

/// A streamed answer that calls `calls` (id, name, arguments), as OpenAI streams one: a role
/// chunk, then for each call a first piece (index, id, type, name, empty arguments) and its
/// arguments in three fragments, a finish chunk ("tool_calls"), the usage chunk when asked,
/// `[DONE]`.
fn stream_tool_calls(
    model: Value,
    calls: &[(String, String, String)],
    (prompt, completion): (u32, u32),
    include_usage: bool,
) -> axum::response::Response {
    let chunk = |delta: Value, finish: Value| {
        let event = json!({
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        format!("data: {event}\n\n")
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": null}),
        Value::Null,
    )];
    for (index, (id, name, arguments)) in calls.iter().enumerate() {
        events.push(chunk(
            json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                                   "function": {"name": name, "arguments": ""}}]}),
            Value::Null,
        ));
        for piece in fragments(arguments, 3) {
            events.push(chunk(
                json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}),
                Value::Null,
            ));
        }
    }
    events.push(chunk(json!({}), json!("tool_calls")));
    if include_usage {
        let usage = json!({
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "created": 0,
            "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        });
        events.push(format!("data: {usage}\n\n"));
    }
    events.push("data: [DONE]\n\n".to_string());
    event_stream_response(events)
}

/// A streamed answer whose usage chunk also reports `cached` prompt tokens read from the
/// provider's cache: the whole stream, rewritten (the tests using it need no pacing).
async fn with_cached_usage(
    answer: axum::response::Response,
    cached: u32,
) -> axum::response::Response {
    let (parts, body) = answer.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .expect("the fake's own stream");
    let text = String::from_utf8_lossy(&bytes)
        .split("\n\n")
        .map(|event| {
            let Some(data) = event.strip_prefix("data: ") else {
                return event.to_string();
            };
            match serde_json::from_str::<Value>(data) {
                Ok(mut chunk) if chunk["usage"].is_object() => {
                    chunk["usage"]["prompt_tokens_details"] = json!({"cached_tokens": cached});
                    format!("data: {chunk}")
                }
                _ => event.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n\n");
    axum::response::Response::from_parts(parts, axum::body::Body::from(text))
}

/// An OpenAI streamed answer: a role chunk, the pieces (each `delay` after
/// the previous, pausing `stall.1` after `stall.0` of them), a finish chunk,
/// the usage chunk when asked, `[DONE]`.
fn stream_reply(
    model: Value,
    chunks: Vec<String>,
    delay: Duration,
    (prompt, completion): (u32, u32),
    include_usage: bool,
    stall: Option<(usize, Duration)>,
) -> axum::response::Response {
    let chunk = move |delta: Value, finish: Value| {
        let event = json!({
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        format!("data: {event}\n\n")
    };
    let mut events: Vec<(Duration, String)> = vec![(
        Duration::ZERO,
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
    )];
    for (i, piece) in chunks.iter().enumerate() {
        let mut wait = delay;
        if let Some((after, pause)) = stall
            && i == after
        {
            wait += pause;
        }
        events.push((wait, chunk(json!({"content": piece}), Value::Null)));
    }
    events.push((Duration::ZERO, chunk(json!({}), json!("stop"))));
    if include_usage {
        let usage = json!({
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "created": 0,
            "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        });
        events.push((Duration::ZERO, format!("data: {usage}\n\n")));
    }
    events.push((Duration::ZERO, "data: [DONE]\n\n".to_string()));
    let body = futures::stream::iter(events).then(|(wait, text)| async move {
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(text))
    });
    (
        StatusCode::OK,
        [("content-type", "text/event-stream")],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

// ---------------------------------------------------------------- the gateway

pub fn binary(name: &str) -> PathBuf {
    // Both binaries land in the same target folder; `cargo test --workspace` builds them.
    let core = PathBuf::from(env!("CARGO_BIN_EXE_openclaw-gateway"));
    let path = core.with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` so the edge binary is built",
        path.display()
    );
    path
}

/// Settings for a core process.
#[derive(Clone, Default)]
pub struct CoreOptions {
    pub redis_url: Option<String>,
    pub upstream: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub env: Vec<(String, String)>,
}

impl CoreOptions {
    /// A core on `redis`, answered by `upstream`, with its data in `dir`: what replicas of one
    /// deployment share.
    pub fn shared(redis: &Process, upstream: &FakeUpstream, dir: &Path) -> Self {
        Self {
            redis_url: Some(redis_url(redis)),
            upstream: Some(upstream.base_url()),
            data_dir: Some(dir.to_path_buf()),
            env: Vec::new(),
        }
    }
}

pub fn spawn_core(options: &CoreOptions) -> Process {
    spawn_core_at(options, free_port())
}

/// A core listening on `port`: a replica restarted where the edge expects it.
pub fn spawn_core_at(options: &CoreOptions, port: u16) -> Process {
    spawn_core_logging(options, port, Stdio::inherit())
}

/// A core whose log lines (stderr) go to `stderr`.
pub fn spawn_core_logging(options: &CoreOptions, port: u16, stderr: Stdio) -> Process {
    let metrics_port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_openclaw-gateway"));
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "RUST_LOG",
            std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("OPENCLAW_GRPC_ADDR", format!("127.0.0.1:{port}"))
        .env("OPENCLAW_METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
        .env("OPENCLAW_INTERNAL_TOKEN", INTERNAL_TOKEN)
        .env("OPENCLAW_REPLICA_ID", format!("core-{port}"))
        .stdout(Stdio::null())
        .stderr(stderr);
    if let Some(url) = &options.redis_url {
        cmd.env("OPENCLAW_REDIS_URL", url);
    }
    if let Some(upstream) = &options.upstream {
        cmd.env("ZAI_BASE_URL", upstream)
            .env("ZAI_API_KEY", "upstream-secret-key");
    }
    if let Some(dir) = &options.data_dir {
        cmd.env("OPENCLAW_DATA_DIR", dir).current_dir(dir);
    }
    for (k, v) in &options.env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start openclaw-gateway serve");
    wait_for_port(port, "openclaw-gateway serve", &mut child);
    Process {
        child,
        port,
        metrics_port,
        name: "core".into(),
    }
}

pub fn spawn_edge(cores: &[&Process]) -> Process {
    spawn_edge_with(cores, &[])
}

/// An edge with extra environment variables.
pub fn spawn_edge_with(cores: &[&Process], env: &[(&str, &str)]) -> Process {
    spawn_edge_logging(cores, env, Stdio::inherit())
}

/// An edge whose log lines (stderr) go to `stderr`.
pub fn spawn_edge_logging(cores: &[&Process], env: &[(&str, &str)], stderr: Stdio) -> Process {
    let urls: Vec<String> = cores
        .iter()
        .map(|c| format!("http://127.0.0.1:{}", c.port))
        .collect();
    spawn_edge_to(&urls, free_port(), env, stderr)
}

/// An edge on `port` calling the cores at `urls`: one restarted where its clients expect it,
/// or one reaching its cores through something in between.
pub fn spawn_edge_to(urls: &[String], port: u16, env: &[(&str, &str)], stderr: Stdio) -> Process {
    let metrics_port = free_port();
    let mut child = Command::new(binary("openclaw-rest"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "RUST_LOG",
            std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("OPENCLAW_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("OPENCLAW_METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
        .env("OPENCLAW_CORE_URL", urls.join(","))
        // Lets the cores believe the client addresses this edge forwards.
        .env("OPENCLAW_INTERNAL_TOKEN", INTERNAL_TOKEN)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start openclaw-rest");
    wait_for_port(port, "openclaw-rest", &mut child);
    Process {
        child,
        port,
        metrics_port,
        name: "edge".into(),
    }
}

/// A whole deployment: Redis (optional), one core, one edge, a fake upstream.
pub struct Stack {
    pub upstream: FakeUpstream,
    pub redis: Option<Process>,
    pub core: Process,
    pub edge: Process,
    pub http: reqwest::Client,
    pub data_dir: tempfile::TempDir,
}

impl Stack {
    /// Redis-backed stack.
    pub async fn start() -> Self {
        let redis = start_redis();
        let url = redis_url(&redis);
        Self::with(Some(redis), Some(url)).await
    }

    /// Embedded-store stack (no Redis).
    pub async fn embedded() -> Self {
        Self::with(None, None).await
    }

    async fn with(redis: Option<Process>, redis_url: Option<String>) -> Self {
        Self::configured(redis, redis_url, |_, _| Vec::new(), &[]).await
    }

    /// Redis-backed stack whose edge sits behind a load balancer on loopback
    /// (`OPENCLAW_TRUSTED_PROXIES=127.0.0.1`): a test's `X-Forwarded-For` names the client.
    pub async fn behind_proxy() -> Self {
        let redis = start_redis();
        let url = redis_url(&redis);
        Self::configured(
            Some(redis),
            Some(url),
            |_, _| Vec::new(),
            &[("OPENCLAW_TRUSTED_PROXIES", "127.0.0.1")],
        )
        .await
    }

    /// Redis-backed stack whose core reads the providers file `providers`
    /// writes, given the fake upstream (`OPENCLAW_PROVIDERS_FILE`).
    pub async fn with_providers(providers: impl FnOnce(&FakeUpstream) -> String) -> Self {
        let redis = start_redis();
        let url = redis_url(&redis);
        Self::configured(
            Some(redis),
            Some(url),
            |upstream, dir| {
                let path = dir.join("providers.toml");
                std::fs::write(&path, providers(upstream)).expect("write the providers file");
                vec![(
                    "OPENCLAW_PROVIDERS_FILE".to_string(),
                    path.display().to_string(),
                )]
            },
            &[],
        )
        .await
    }

    /// Redis-backed stack whose core also has the environment `env` returns, given the fake
    /// upstream (set after the defaults, so it may replace them).
    pub async fn with_core_env(env: impl FnOnce(&FakeUpstream) -> Vec<(String, String)>) -> Self {
        let redis = start_redis();
        let url = redis_url(&redis);
        Self::configured(Some(redis), Some(url), |upstream, _| env(upstream), &[]).await
    }

    async fn configured(
        redis: Option<Process>,
        redis_url: Option<String>,
        env: impl FnOnce(&FakeUpstream, &Path) -> Vec<(String, String)>,
        edge_env: &[(&str, &str)],
    ) -> Self {
        let upstream = FakeUpstream::start().await;
        let data_dir = tempfile::tempdir().expect("temp dir");
        let env = env(&upstream, data_dir.path());
        let core = spawn_core(&CoreOptions {
            redis_url,
            upstream: Some(upstream.base_url()),
            data_dir: Some(data_dir.path().to_path_buf()),
            env,
        });
        let edge = spawn_edge_with(&[&core], edge_env);
        wait_until_ready(&edge).await;
        Self {
            upstream,
            redis,
            core,
            edge,
            http: reqwest::Client::new(),
            data_dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.edge.port)
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// `POST path` with a bearer key and a JSON body.
    pub async fn post(
        &self,
        path: &str,
        key: impl Display,
        body: &(impl Serialize + ?Sized),
    ) -> reqwest::Response {
        post_with_key(&self.http, self.url(path), key, body).await
    }

    /// `GET path` with a bearer key.
    pub async fn get(&self, path: &str, key: impl Display) -> reqwest::Response {
        get_with_key(&self.http, self.url(path), key).await
    }

    /// Generates an API key through the REST key administration API.
    pub async fn create_key(&self, name: &str) -> String {
        create_key(&self.http, &self.url(""), name, json!({})).await
    }
}

/// Two cores and two edges (each edge balancing over both cores) on state shared through the
/// Redis that `env` points them at, with a fake upstream: what the Redis topology tests run on.
pub struct Replicas {
    pub upstream: FakeUpstream,
    pub cores: Vec<Process>,
    pub edges: Vec<Process>,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Replicas {
    /// Starts them with `env` on every core, and returns once both edges are ready.
    pub async fn start(env: Vec<(String, String)>) -> Self {
        let upstream = FakeUpstream::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let options = CoreOptions {
            redis_url: None,
            upstream: Some(upstream.base_url()),
            data_dir: Some(dir.path().to_path_buf()),
            env,
        };
        let cores: Vec<Process> = (0..2).map(|_| spawn_core(&options)).collect();
        let refs: Vec<&Process> = cores.iter().collect();
        let edges: Vec<Process> = (0..2).map(|_| spawn_edge(&refs)).collect();
        for edge in &edges {
            wait_until_ready(edge).await;
        }
        Self {
            upstream,
            cores,
            edges,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("HTTP client"),
            _dir: dir,
        }
    }

    /// The base URL of edge `i` (modulo the number of edges).
    pub fn edge(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.edges[i % self.edges.len()].port)
    }

    /// Sends `text` to `session` through edge `edge`.
    pub async fn send(
        &self,
        edge: usize,
        key: &str,
        session: &str,
        text: &str,
    ) -> reqwest::Response {
        post_with_key(
            &self.http,
            format!("{}/api/v1/sessions/{session}/messages", self.edge(edge)),
            key,
            &json!({"message": {"role": "user", "content": text}}),
        )
        .await
    }

    /// Keeps sending turns to `session` through both edges, from the moment a Redis primary
    /// was killed (`killed_at`), until `successes` have been answered after it answers again.
    /// Every answer must be a success or the contract's UNAVAILABLE (never leaking a Redis
    /// error), each within `send_bound`, and service must resume within `resume_bound`.
    pub async fn talk_through_failover(
        &self,
        key: &str,
        session: &str,
        killed_at: Instant,
        successes: usize,
        (send_bound, resume_bound): (Duration, Duration),
    ) -> Failover {
        let mut seen = Failover::default();
        let mut n = 0;
        while seen.acknowledged.len() < successes {
            assert!(
                killed_at.elapsed() < resume_bound,
                "service did not resume within {resume_bound:?} of the kill: {:?}",
                seen.answers
            );
            n += 1;
            let text = format!("during {n}");
            let started = Instant::now();
            let response = self.send(n, key, session, &text).await;
            let took = started.elapsed();
            seen.slowest = seen.slowest.max(took);
            let status = response.status().as_u16();
            *seen.answers.entry(status).or_default() += 1;
            match status {
                200 => {
                    seen.acknowledged.push(text);
                    seen.resumed_after.get_or_insert(killed_at.elapsed());
                }
                503 => {
                    let error = expect_error(response, 503, "UNAVAILABLE").await;
                    assert!(
                        !error
                            .to_string()
                            .to_ascii_lowercase()
                            .contains("redis error"),
                        "an UNAVAILABLE leaks the Redis error: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => panic!(
                    "during the failover a send got {other}: {}",
                    response.text().await.unwrap_or_default()
                ),
            }
            assert!(
                took < send_bound,
                "a send took {took:?} during the failover"
            );
        }
        seen
    }

    /// The contents of `session`'s messages, oldest first, read through edge `edge`.
    pub async fn history(&self, edge: usize, key: &str, session: &str) -> Vec<String> {
        let response = get_with_key(
            &self.http,
            format!(
                "{}/api/v1/sessions/{session}/messages?pageSize=500",
                self.edge(edge)
            ),
            key,
        )
        .await;
        let data = expect_data(response, 200).await;
        data["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["content"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

/// What the sends during a failover met ([`Replicas::talk_through_failover`]).
#[derive(Debug, Default)]
pub struct Failover {
    /// The turns answered with success, in order.
    pub acknowledged: Vec<String>,
    /// How many answers of each HTTP status.
    pub answers: std::collections::BTreeMap<u16, usize>,
    /// The slowest answer.
    pub slowest: Duration,
    /// From the kill to the first success.
    pub resumed_after: Option<Duration>,
}

/// `GET url` with a bearer key.
pub async fn get_with_key(
    http: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    key: impl Display,
) -> reqwest::Response {
    http.get(url)
        .bearer_auth(key)
        .send()
        .await
        .expect("GET with a key")
}

/// `POST url` with a bearer key and a JSON body.
pub async fn post_with_key(
    http: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    key: impl Display,
    body: &(impl Serialize + ?Sized),
) -> reqwest::Response {
    http.post(url)
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("POST with a key")
}

/// The OpenAI Python SDK version the tests prove (scripts/test.sh installs the same).
pub const OPENAI_SDK: &str = "openai==3.57.0";

/// Makes sure `python3 -c "import openai"` works, installing the pinned SDK if needed.
pub async fn ensure_openai_sdk() {
    let present = tokio::process::Command::new("python3")
        .args(["-c", "import openai"])
        .stderr(Stdio::null())
        .status()
        .await
        .expect("python3 must be installed for this test");
    if present.success() {
        return;
    }
    let install = tokio::process::Command::new("python3")
        .args(["-m", "pip", "install", "-q", OPENAI_SDK])
        .status()
        .await
        .expect("run pip");
    assert!(install.success(), "pip install {OPENAI_SDK} failed");
}

/// A gateway whose models the offline simulator answers (no provider key, embedded store), with
/// a key of its own.
pub struct Offline {
    pub http: reqwest::Client,
    /// `http://127.0.0.1:<edge port>`.
    pub base: String,
    pub key: String,
    _edge: Process,
    _core: Process,
    _dir: tempfile::TempDir,
}

impl Offline {
    pub async fn start(key_name: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let core = spawn_core(&CoreOptions {
            redis_url: None,
            upstream: None,
            data_dir: Some(dir.path().to_path_buf()),
            env: Vec::new(),
        });
        let edge = spawn_edge(&[&core]);
        wait_until_ready(&edge).await;
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{}", edge.port);
        let key = create_key(&http, &base, key_name, json!({})).await;
        Self {
            http,
            base,
            key,
            _edge: edge,
            _core: core,
            _dir: dir,
        }
    }

    /// `POST path` with the key.
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        post_with_key(&self.http, format!("{}{path}", self.base), &self.key, body).await
    }
}

/// Waits until `edge` answers `GET /readyz` with 200: the channel its requests take has reached
/// a core. An accepting REST port alone does not mean a first request gets through.
pub async fn wait_until_ready(edge: &Process) {
    let url = format!("http://127.0.0.1:{}/readyz", edge.port);
    wait_for_status(&url, 200, Duration::from_secs(20)).await;
}

/// Polls `GET url` until it answers `want`, failing the test after `within`; returns how long
/// that took.
pub async fn wait_for_status(url: &str, want: u16, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let status = reqwest::get(url).await.map_or(0, |r| r.status().as_u16());
        if status == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{url} did not answer {want} within {within:?} (last {status})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn create_key(http: &reqwest::Client, base: &str, name: &str, extra: Value) -> String {
    let mut body = json!({"name": name});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let response = http
        .post(format!("{base}/api/v1/keys"))
        .bearer_auth(INTERNAL_TOKEN)
        .json(&body)
        .send()
        .await
        .expect("create key request");
    assert_eq!(response.status(), 201, "creating a key");
    let body: Value = response.json().await.expect("key JSON");
    body["data"]["key"]
        .as_str()
        .expect("the new key's secret")
        .to_string()
}

/// Asserts the guide's error envelope and returns its `error` object.
pub async fn expect_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "HTTP status");
    assert!(
        response.headers().contains_key("x-request-id"),
        "X-Request-ID on an error"
    );
    let body: Value = response
        .json()
        .await
        .expect("an error must be a JSON envelope");
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(
        body["error"]["details"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    assert!(body["timestamp"].as_str().is_some(), "{body}");
    body["error"].clone()
}

/// Asserts the success envelope and returns `data`.
pub async fn expect_data(response: reqwest::Response, status: u16) -> Value {
    let got = response.status().as_u16();
    let body: Value = response.json().await.expect("a JSON envelope");
    assert_eq!(got, status, "{body}");
    assert_eq!(body["success"], true, "{body}");
    assert!(body["timestamp"].as_str().is_some(), "{body}");
    body["data"].clone()
}

/// Every event the internal token sees, from the start of the stream, until none comes for a while.
pub async fn all_events(core_port: u16) -> Vec<openclaw_gateway::proto::Event> {
    let mut client = openclaw_gateway::proto::event_service_client::EventServiceClient::connect(
        format!("http://127.0.0.1:{core_port}"),
    )
    .await
    .expect("connect to the core");
    let mut request = tonic::Request::new(openclaw_gateway::proto::SubscribeRequest {
        after_id: "0".into(),
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", INTERNAL_TOKEN).parse().unwrap(),
    );
    let mut stream = client
        .subscribe(request)
        .await
        .expect("subscribe")
        .into_inner();
    let mut out = Vec::new();
    while let Ok(Ok(Some(event))) =
        tokio::time::timeout(Duration::from_millis(1500), stream.message()).await
    {
        out.push(event);
    }
    out
}

/// Runs `openclaw-gateway serve` (with `args` before `serve`'s own, e.g. `--print-config`) with
/// `options`, expecting it to exit by itself within `within`: its exit code (`None` when it
/// was still running, and was killed) and everything it wrote to stdout and stderr.
pub fn run_core_to_exit(
    options: &CoreOptions,
    args: &[&str],
    within: Duration,
) -> (Option<i32>, String) {
    let port = free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out.log");
    let file = std::fs::File::create(&out).expect("create the output file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_openclaw-gateway"));
    cmd.args(args)
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .env("OPENCLAW_GRPC_ADDR", format!("127.0.0.1:{port}"))
        .env(
            "OPENCLAW_METRICS_ADDR",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("OPENCLAW_INTERNAL_TOKEN", INTERNAL_TOKEN)
        .env(
            "OPENCLAW_DATA_DIR",
            options.data_dir.as_deref().unwrap_or(dir.path()),
        )
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("clone the output file"))
        .stderr(file);
    if let Some(url) = &options.redis_url {
        cmd.env("OPENCLAW_REDIS_URL", url);
    }
    if let Some(upstream) = &options.upstream {
        cmd.env("ZAI_BASE_URL", upstream)
            .env("ZAI_API_KEY", "upstream-secret-key");
    }
    for (k, v) in &options.env {
        cmd.env(k, v);
    }
    let mut process = Process {
        child: cmd.spawn().expect("start openclaw-gateway serve"),
        port,
        metrics_port: 0,
        name: "core".into(),
    };
    let code = process.wait_exit(within);
    process.kill();
    (code, std::fs::read_to_string(&out).unwrap_or_default())
}
