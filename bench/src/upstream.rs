//! A fast fake OpenAI-compatible chat-completions server: a fixed answer after a configurable
//! delay, or a stream of a configurable number of tokens at a configurable interval. The
//! settings change at run time (`POST /admin/settings`), so one upstream serves every scenario.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

/// What the upstream does; every field may change while it serves.
#[derive(Debug, Default)]
pub struct Settings {
    /// Wait before the answer (whole) or before the first token (streamed), µs.
    pub delay_us: AtomicU64,
    /// Tokens in a streamed answer.
    pub tokens: AtomicU64,
    /// Wait between two streamed tokens, µs.
    pub token_interval_us: AtomicU64,
}

/// The JSON form of [`Settings`] for `POST /admin/settings`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingsPatch {
    pub delay_us: u64,
    pub tokens: u64,
    pub token_interval_us: u64,
}

impl Settings {
    pub fn new(patch: SettingsPatch) -> Self {
        let settings = Self::default();
        settings.apply(patch);
        settings
    }

    pub fn apply(&self, patch: SettingsPatch) {
        self.delay_us.store(patch.delay_us, Ordering::Relaxed);
        self.tokens.store(patch.tokens, Ordering::Relaxed);
        self.token_interval_us
            .store(patch.token_interval_us, Ordering::Relaxed);
    }
}

/// The whole answer: the same bytes every time, so the upstream costs as little as it can.
const COMPLETION: &str = concat!(
    r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1767225600,"model":"glm-4.7-flash","#,
    r#""choices":[{"index":0,"message":{"role":"assistant","content":"Hello! This answer comes from the benchmark's fake upstream."},"finish_reason":"stop"}],"#,
    r#""usage":{"prompt_tokens":24,"completion_tokens":12,"total_tokens":36}}"#
);

const CHUNK_HEAD: &str = r#"data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1767225600,"model":"glm-4.7-flash","choices":[{"index":0,"delta":"#;

pub fn router(settings: Arc<Settings>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/admin/settings", post(configure))
        .with_state(settings)
}

async fn models() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"object":"list","data":[{"id":"glm-4.7-flash","object":"model","created":0,"owned_by":"bench"}]}"#,
    )
        .into_response()
}

async fn configure(
    State(settings): State<Arc<Settings>>,
    axum::Json(patch): axum::Json<SettingsPatch>,
) -> StatusCode {
    settings.apply(patch);
    StatusCode::NO_CONTENT
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn chat(State(settings): State<Arc<Settings>>, body: Bytes) -> Response {
    let delay = Duration::from_micros(settings.delay_us.load(Ordering::Relaxed));
    // A byte search instead of a JSON parse: the upstream must stay cheap beside the gateway.
    let streamed = contains(&body, b"\"stream\":true") || contains(&body, b"\"stream\": true");
    if !streamed {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        return ([(header::CONTENT_TYPE, "application/json")], COMPLETION).into_response();
    }
    let include_usage =
        contains(&body, b"\"include_usage\":true") || contains(&body, b"\"include_usage\": true");
    let tokens = settings.tokens.load(Ordering::Relaxed);
    let interval = Duration::from_micros(settings.token_interval_us.load(Ordering::Relaxed));
    stream(tokens, delay, interval, include_usage)
}

/// A role chunk at once, `tokens` content chunks (the first after `delay`, then one every
/// `interval`), a finish chunk, the usage chunk when asked, `[DONE]`.
fn stream(tokens: u64, delay: Duration, interval: Duration, include_usage: bool) -> Response {
    enum Step {
        Role,
        Token(u64),
        Finish,
        Usage,
        Done,
        End,
    }
    let body = futures::stream::unfold(Step::Role, move |step| async move {
        let (text, next) = match step {
            Step::Role => (
                format!(
                    "{CHUNK_HEAD}{{\"role\":\"assistant\",\"content\":\"\"}},\"finish_reason\":null}}]}}\n\n"
                ),
                if tokens == 0 {
                    Step::Finish
                } else {
                    Step::Token(0)
                },
            ),
            Step::Token(i) => {
                let wait = if i == 0 { delay } else { interval };
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                (
                    format!(
                        "{CHUNK_HEAD}{{\"content\":\"tok{i} \"}},\"finish_reason\":null}}]}}\n\n"
                    ),
                    if i + 1 < tokens {
                        Step::Token(i + 1)
                    } else {
                        Step::Finish
                    },
                )
            }
            Step::Finish => (
                format!("{CHUNK_HEAD}{{}},\"finish_reason\":\"stop\"}}]}}\n\n"),
                if include_usage {
                    Step::Usage
                } else {
                    Step::Done
                },
            ),
            Step::Usage => (
                format!(
                    "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1767225600,\"model\":\"glm-4.7-flash\",\"choices\":[],\"usage\":{{\"prompt_tokens\":24,\"completion_tokens\":{tokens},\"total_tokens\":{}}}}}\n\n",
                    24 + tokens
                ),
                Step::Done,
            ),
            Step::Done => ("data: [DONE]\n\n".to_string(), Step::End),
            Step::End => return None,
        };
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(text)), next))
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(body),
    )
        .into_response()
}
