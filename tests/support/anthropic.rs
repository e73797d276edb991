//! A fake of Anthropic's Messages API (`POST /v1/messages`, whole and streamed in its event
//! format), beside a minimal OpenAI-compatible endpoint (`POST /openai/chat/completions`),
//! both recording every request's path and query, headers and body. Each test file that uses
//! it uses a part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Value,
}

#[derive(Default)]
struct FakeState {
    received: Mutex<Vec<Received>>,
    /// Answer the next requests with this status and an Anthropic error body.
    failing: Mutex<Option<(u16, String)>>,
}

/// The usage every Messages answer reports: 11 fresh input tokens, 7 read from the cache,
/// 3 written to it, 5 output tokens.
pub const INPUT: u64 = 11;
pub const CACHE_READ: u64 = 7;
pub const CACHE_WRITE: u64 = 3;
pub const OUTPUT: u64 = 5;

#[derive(Clone)]
pub struct FakeAnthropic {
    pub addr: SocketAddr,
    state: Arc<FakeState>,
}

impl FakeAnthropic {
    pub async fn start() -> Self {
        let state = Arc::new(FakeState::default());
        let app = Router::new()
            .route("/v1/messages", post(messages))
            .route("/openai/chat/completions", post(openai))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Anthropic API");
        let addr = listener.local_addr().expect("its address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state }
    }

    /// The `baseUrl` of an Anthropic provider: up to, not including, `/v1/messages`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The `baseUrl` of an OpenAI-compatible provider served here.
    pub fn openai_base_url(&self) -> String {
        format!("http://{}/openai", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Every later request fails with `status` and an error of `kind`.
    pub fn fail(&self, status: u16, kind: &str) {
        *self.state.failing.lock().unwrap() = Some((status, kind.to_owned()));
    }
}

fn record(state: &FakeState, uri: &Uri, headers: &HeaderMap, body: &Value) {
    state.received.lock().unwrap().push(Received {
        uri: uri.to_string(),
        headers: headers.clone(),
        body: body.clone(),
    });
}

/// The text of the last user message's blocks, answered back.
fn echo(body: &Value) -> String {
    let last = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .cloned()
        .unwrap_or(Value::Null);
    let text: Vec<&str> = match &last["content"] {
        Value::String(text) => vec![text.as_str()],
        Value::Array(blocks) => blocks.iter().filter_map(|b| b["text"].as_str()).collect(),
        _ => Vec::new(),
    };
    format!("Claude heard: {}", text.join(" / "))
}

async fn messages(
    State(state): State<Arc<FakeState>>,
    uri: Uri,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record(&state, &uri, &headers, &body);
    if let Some((status, kind)) = state.failing.lock().unwrap().clone() {
        return (
            StatusCode::from_u16(status).unwrap(),
            Json(json!({"type": "error", "error": {"type": kind, "message": format!("scripted {kind}")}})),
        )
            .into_response();
    }
    let text = echo(&body);
    if body["stream"] == true {
        let words: Vec<String> = text.split_inclusive(' ').map(str::to_owned).collect();
        let mut events = vec![
            (
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": body["model"], "stop_reason": null, "usage": {"input_tokens": INPUT, "cache_read_input_tokens": CACHE_READ, "cache_creation_input_tokens": CACHE_WRITE, "output_tokens": 1}}}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            ("ping", json!({"type": "ping"})),
        ];
        for word in words {
            events.push((
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}}),
            ));
        }
        events.push((
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
        events.push((
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": OUTPUT}}),
        ));
        events.push(("message_stop", json!({"type": "message_stop"})));
        let stream: String = events
            .into_iter()
            .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
            .collect();
        return ([("content-type", "text/event-stream")], stream).into_response();
    }
    Json(json!({
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {"input_tokens": INPUT, "cache_read_input_tokens": CACHE_READ, "cache_creation_input_tokens": CACHE_WRITE, "output_tokens": OUTPUT}
    }))
    .into_response()
}

async fn openai(
    State(state): State<Arc<FakeState>>,
    uri: Uri,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record(&state, &uri, &headers, &body);
    Json(json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "from the OpenAI-compatible endpoint"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
    }))
    .into_response()
}
