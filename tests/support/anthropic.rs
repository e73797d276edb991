//! A fake of Anthropic's Messages API (`POST /v1/messages`, whole and streamed in its event
//! format), beside a minimal OpenAI-compatible endpoint (`POST /openai/chat/completions`),
//! both recording every request's path and query, headers and body. A test may script the next
//! Messages answers to call a tool ([`FakeAnthropic::answer_with_tool_use`]); after those it
//! echoes the last user turn again. Each test file that uses it uses a part of it.
#![allow(dead_code)]

use std::collections::VecDeque;
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
    /// The next answers, one a request, before the echo applies again.
    scripted: Mutex<VecDeque<ToolUse>>,
}

/// A scripted answer: [`TOOL_USE_TEXT`], then a call of the tool `name` with `input`.
#[derive(Clone, Debug)]
struct ToolUse {
    id: String,
    name: String,
    input: Value,
}

/// The text a scripted tool-use answer says before its call.
pub const TOOL_USE_TEXT: &str = "Let me check.";

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

    /// The next `/v1/messages` request not yet scripted is answered with [`TOOL_USE_TEXT`] and a
    /// `tool_use` block calling `name` with `input` (`stop_reason` "tool_use"), whole or
    /// streamed as the request asks; the input streams as `input_json_delta` fragments.
    pub fn answer_with_tool_use(&self, id: &str, name: &str, input: Value) {
        self.state.scripted.lock().unwrap().push_back(ToolUse {
            id: id.to_owned(),
            name: name.to_owned(),
            input,
        });
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
        Value::Array(blocks) => blocks.iter().flat_map(block_text).collect(),
        _ => Vec::new(),
    };
    format!("Claude heard: {}", text.join(" / "))
}

/// A block's text: a text block's, or a tool result's content (a string or text blocks).
fn block_text(block: &Value) -> Vec<&str> {
    match block["type"].as_str() {
        Some("tool_result") => match &block["content"] {
            Value::String(text) => vec![text.as_str()],
            Value::Array(blocks) => blocks.iter().filter_map(|b| b["text"].as_str()).collect(),
            _ => Vec::new(),
        },
        _ => block["text"].as_str().into_iter().collect(),
    }
}

/// `text` in at most `pieces` parts, none empty (cut at character boundaries).
fn fragments(text: &str, pieces: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let size = chars.len().div_ceil(pieces).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

/// The stream events of one content block at `index`: its start, its deltas, its stop.
fn block_events(index: usize, block: &Value) -> Vec<(&'static str, Value)> {
    let mut events = Vec::new();
    if block["type"] == "tool_use" {
        events.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}}),
        ));
        // As Anthropic does, an empty fragment first, then the input's JSON text in pieces.
        let mut pieces = vec![String::new()];
        pieces.extend(fragments(&block["input"].to_string(), 3));
        for piece in pieces {
            events.push((
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": piece}}),
            ));
        }
    } else {
        let text = block["text"].as_str().unwrap_or_default();
        events.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
        ));
        if index == 0 {
            events.push(("ping", json!({"type": "ping"})));
        }
        for word in text.split_inclusive(' ') {
            events.push((
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": word}}),
            ));
        }
    }
    events.push((
        "content_block_stop",
        json!({"type": "content_block_stop", "index": index}),
    ));
    events
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
    let scripted = state.scripted.lock().unwrap().pop_front();
    let (content, stop_reason) = match scripted {
        Some(call) => (
            vec![
                json!({"type": "text", "text": TOOL_USE_TEXT}),
                json!({"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}),
            ],
            "tool_use",
        ),
        None => (
            vec![json!({"type": "text", "text": echo(&body)})],
            "end_turn",
        ),
    };
    if body["stream"] == true {
        let mut events = vec![(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": body["model"], "stop_reason": null, "usage": {"input_tokens": INPUT, "cache_read_input_tokens": CACHE_READ, "cache_creation_input_tokens": CACHE_WRITE, "output_tokens": 1}}}),
        )];
        for (index, block) in content.iter().enumerate() {
            events.extend(block_events(index, block));
        }
        events.push((
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": {"output_tokens": OUTPUT}}),
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
        "content": content,
        "stop_reason": stop_reason,
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
