//! Real parts for end-to-end tests: a `redis-server` per test, a fake
//! OpenAI-compatible upstream that records what it receives, and the
//! gateway's own binaries as child processes on free ports.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Json, Router, routing::post};
use serde_json::{Value, json};

pub const INTERNAL_TOKEN: &str = "test-internal-token-0123456789";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on loopback")
}

fn wait_for_port(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
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
    name: String,
}

impl Process {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
}

#[derive(Default)]
struct UpstreamState {
    received: Mutex<Vec<Value>>,
    authorization: Mutex<Vec<String>>,
    behaviour: Mutex<Option<Behaviour>>,
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

    /// Every request body received, in order.
    pub fn received(&self) -> Vec<Value> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn authorization_headers(&self) -> Vec<String> {
        self.state.authorization.lock().unwrap().clone()
    }
}

async fn chat(
    State(state): State<Arc<UpstreamState>>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Value>,
) -> impl IntoResponse {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    state.authorization.lock().unwrap().push(auth);
    state.received.lock().unwrap().push(body.clone());
    let behaviour = state.behaviour.lock().unwrap().clone();
    let last_user = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_string();
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
        }) => reply(content, prompt_tokens, completion_tokens),
        Some(Behaviour::Fail { status, message }) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            Json(json!({"error": {"message": message, "type": "server_error"}})),
        ),
        Some(Behaviour::Stall(wait)) => {
            tokio::time::sleep(wait).await;
            reply(format!("echo: {last_user}"), 10, 5)
        }
        None => reply(format!("echo: {last_user}"), 10, 5),
    }
}

// ---------------------------------------------------------------- the gateway

fn binary(name: &str) -> PathBuf {
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

pub fn spawn_core(options: &CoreOptions) -> Process {
    spawn_core_at(options, free_port())
}

/// A core listening on `port`: a replica restarted where the edge expects it.
pub fn spawn_core_at(options: &CoreOptions, port: u16) -> Process {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_openclaw-gateway"));
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "RUST_LOG",
            std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("OPENCLAW_GRPC_ADDR", format!("127.0.0.1:{port}"))
        .env("OPENCLAW_INTERNAL_TOKEN", INTERNAL_TOKEN)
        .env("OPENCLAW_REPLICA_ID", format!("core-{port}"))
        .stdout(Stdio::null());
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
        name: "core".into(),
    }
}

pub fn spawn_edge(cores: &[&Process]) -> Process {
    let port = free_port();
    let urls: Vec<String> = cores
        .iter()
        .map(|c| format!("http://127.0.0.1:{}", c.port))
        .collect();
    let mut child = Command::new(binary("openclaw-rest"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "RUST_LOG",
            std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("OPENCLAW_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("OPENCLAW_CORE_URL", urls.join(","))
        .stdout(Stdio::null())
        .spawn()
        .expect("start openclaw-rest");
    wait_for_port(port, "openclaw-rest", &mut child);
    Process {
        child,
        port,
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
        let upstream = FakeUpstream::start().await;
        let data_dir = tempfile::tempdir().expect("temp dir");
        let core = spawn_core(&CoreOptions {
            redis_url,
            upstream: Some(upstream.base_url()),
            data_dir: Some(data_dir.path().to_path_buf()),
            env: Vec::new(),
        });
        let edge = spawn_edge(&[&core]);
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

    /// Generates an API key through the REST key administration API.
    pub async fn create_key(&self, name: &str) -> String {
        create_key(&self.http, &self.url(""), name, json!({})).await
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
