//! Calling a model so that a flaky provider does not become the caller's
//! outage: each attempt has a timeout; connection errors, 429 and 5xx are
//! retried with exponential backoff and jitter (waiting at least what the
//! provider's `Retry-After` asks); a provider that keeps failing has its
//! circuit opened; and when a model cannot answer, the next model of its
//! ordered fallback list is asked. A streamed answer is retried only until
//! its first chunk has arrived: after that the caller may have seen it.
//!
//! Every attempt is a `provider_attempt` span (provider, model, attempt,
//! outcome, HTTP status, latency), a count in the metric
//! `openclaw_provider_attempts_total{provider,model,outcome}` with its latency in
//! `openclaw_provider_attempt_duration_seconds`, and a count in [`AttemptStats`]
//! (which system status shows). Retries, fallbacks and calls refused by an open
//! circuit have counters of their own.

use openclaw_runtime::metrics::Handles;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use rand::Rng as _;
use serde::Deserialize;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::circuit::{BreakerSettings, CircuitBreaker};
use super::{ChatCompletion, ChatRequest, Chunk, ChunkStream, Model, ModelCatalog, ProviderError};
use crate::error::ApiError;

/// How one provider's failed attempts are retried (`[providers.retry]` in the providers file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RetrySettings {
    /// Retries after the first attempt (so at most `1 + maxRetries` attempts per model).
    pub max_retries: u32,
    /// The wait before the first retry, in milliseconds; it doubles for each further retry.
    pub initial_backoff_ms: u64,
    /// The longest wait between two attempts, in milliseconds (before honouring `Retry-After`).
    pub max_backoff_ms: u64,
    /// A `Retry-After` longer than this (milliseconds) is not waited for: the
    /// next fallback model is asked, or the call fails.
    pub max_retry_after_ms: u64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            max_retries: 2,
            initial_backoff_ms: 200,
            max_backoff_ms: 5_000,
            max_retry_after_ms: 30_000,
        }
    }
}

impl RetrySettings {
    /// The wait before retry number `retry` (0 = the first): exponential, capped,
    /// with "equal jitter" (uniform in the upper half) so that callers that
    /// failed together do not retry together.
    pub fn backoff(&self, retry: u32) -> Duration {
        let base = self
            .initial_backoff_ms
            .saturating_mul(1u64 << retry.min(20))
            .min(self.max_backoff_ms);
        let half = base / 2;
        let jittered = half + rand::rng().random_range(0..=base - half);
        Duration::from_millis(jittered)
    }
}

/// Counters of one provider's attempts, for metrics and status.
#[derive(Debug, Default)]
pub struct AttemptStats {
    /// Attempts made (each retry is one more).
    pub attempts: AtomicU64,
    /// Attempts that failed (connection, timeout, 429, 5xx, bad answer, or a stream that broke).
    pub failures: AtomicU64,
    /// Attempts that were retries of a failed one.
    pub retries: AtomicU64,
    /// Calls handed on to a fallback model after this provider's model could not answer.
    pub fallbacks: AtomicU64,
    /// Calls refused at once because the circuit was open.
    pub rejected: AtomicU64,
}

/// The resilience state of one provider, shared by its models.
#[derive(Debug)]
pub struct ProviderGuard {
    pub name: String,
    pub retry: RetrySettings,
    /// Bound on one attempt (the whole answer, for a stream).
    pub timeout: Duration,
    pub breaker: CircuitBreaker,
    pub stats: AttemptStats,
}

impl ProviderGuard {
    pub fn new(
        name: impl Into<String>,
        retry: RetrySettings,
        timeout: Duration,
        breaker: BreakerSettings,
    ) -> Self {
        let name = name.into();
        Self {
            breaker: CircuitBreaker::new(name.clone(), breaker),
            name,
            retry,
            timeout,
            stats: AttemptStats::default(),
        }
    }
}

/// A model call that could not be answered: the last error, and who gave it.
#[derive(Debug)]
pub struct CallFailure {
    pub error: ProviderError,
    pub provider: String,
    pub model: String,
}

impl CallFailure {
    /// The caller's error; `request_id` names the call in the logs that keep the provider's words.
    pub fn into_api_error(self, request_id: Option<&str>) -> ApiError {
        self.error
            .into_api_error(&self.provider, &self.model, request_id)
    }
}

/// A stream whose first chunk has arrived: from here on it is never retried.
pub struct OpenStream {
    pub first: Chunk,
    pub rest: ChunkStream,
}

/// What a call produced, and which model (the asked one or a fallback) produced it.
pub struct Answered<T> {
    pub model: Arc<Model>,
    pub value: T,
}

enum Mode {
    Complete,
    Stream,
}

enum Outcome {
    Completed(ChatCompletion),
    Opened(OpenStream),
}

/// Retry or not: connection errors, 429 and 5xx are worth another try.
fn retriable(error: &ProviderError) -> bool {
    match error {
        ProviderError::Connect(_) => true,
        ProviderError::Status { status, .. } => *status == 429 || *status >= 500,
        _ => false,
    }
}

/// A failure of the provider itself (as opposed to a request it rightly refused).
fn provider_fault(error: &ProviderError) -> bool {
    match error {
        ProviderError::Status { status, .. } => *status == 429 || *status >= 500,
        ProviderError::CircuitOpen { .. } => false,
        _ => true,
    }
}

fn status_of(error: &ProviderError) -> u16 {
    match error {
        ProviderError::Status { status, .. } => *status,
        _ => 0,
    }
}

fn outcome_name(error: &ProviderError) -> &'static str {
    match error {
        ProviderError::Timeout(_) => "timeout",
        ProviderError::Connect(_) => "connect_error",
        ProviderError::Status { status: 429, .. } => "rate_limited",
        ProviderError::Status { status, .. } if *status >= 500 => "server_error",
        ProviderError::Status { .. } => "refused",
        ProviderError::BadResponse(_) => "bad_response",
        ProviderError::CircuitOpen { .. } => "circuit_open",
    }
}

impl ModelCatalog {
    /// Asks `model` (then its fallbacks) for a whole answer.
    pub async fn complete(
        &self,
        model: &Arc<Model>,
        request: ChatRequest,
    ) -> Result<Answered<ChatCompletion>, CallFailure> {
        let answered = self.call(model, request, Mode::Complete).await?;
        match answered.value {
            Outcome::Completed(completion) => Ok(Answered {
                model: answered.model,
                value: completion,
            }),
            Outcome::Opened(_) => unreachable!("a whole answer was asked for"),
        }
    }

    /// Asks `model` (then its fallbacks) for a streamed answer, and returns
    /// once its first chunk has arrived.
    pub async fn open_stream(
        &self,
        model: &Arc<Model>,
        request: ChatRequest,
    ) -> Result<Answered<OpenStream>, CallFailure> {
        let answered = self.call(model, request, Mode::Stream).await?;
        match answered.value {
            Outcome::Opened(stream) => Ok(Answered {
                model: answered.model,
                value: stream,
            }),
            Outcome::Completed(_) => unreachable!("a stream was asked for"),
        }
    }

    async fn call(
        &self,
        asked: &Arc<Model>,
        request: ChatRequest,
        mode: Mode,
    ) -> Result<Answered<Outcome>, CallFailure> {
        let deadline = Instant::now() + self.call_budget();
        let mut request = Arc::new(request);
        let mut model = asked.clone();
        let mut chain = asked.fallbacks.iter();
        loop {
            let error = match self.try_model(&model, &request, &mode, deadline).await {
                Ok(outcome) => {
                    return Ok(Answered {
                        model,
                        value: outcome,
                    });
                }
                Err(error) => error,
            };
            let budget_left = deadline.saturating_duration_since(Instant::now());
            // A fallback whose provider cannot honour the call's options is passed over:
            // an option is never dropped to get an answer.
            let next =
                if provider_fault(&error) || matches!(error, ProviderError::CircuitOpen { .. }) {
                    chain.find_map(|id| {
                        self.resolve_shared(id).filter(|next| {
                            let refused = next.provider.refuses(&request.sampling);
                            if let Some((field, _)) = refused {
                                tracing::warn!(
                                    from = %model.id,
                                    to = %next.id,
                                    field,
                                    "a fallback cannot honour a field of the call; passed over"
                                );
                            }
                            refused.is_none()
                        })
                    })
                } else {
                    None
                };
            let Some(next) = next.filter(|_| !budget_left.is_zero()) else {
                return Err(CallFailure {
                    error,
                    provider: model.provider.name().to_string(),
                    model: model.id.clone(),
                });
            };
            model.guard.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(
                "openclaw_provider_fallbacks_total",
                "from" => model.id.clone(),
                "to" => next.id.clone()
            )
            .increment(1);
            tracing::warn!(
                from = %model.id,
                to = %next.id,
                error = %error,
                "model could not answer; asking its fallback"
            );
            request = Arc::new(ChatRequest {
                model: next.upstream.clone(),
                ..(*request).clone()
            });
            model = next;
        }
    }

    /// Every attempt at one model: retried while worthwhile and the circuit allows.
    async fn try_model(
        &self,
        model: &Arc<Model>,
        request: &Arc<ChatRequest>,
        mode: &Mode,
        deadline: Instant,
    ) -> Result<Outcome, ProviderError> {
        let guard = &model.guard;
        let mut retry = 0u32;
        let mut last_error: Option<ProviderError> = None;
        loop {
            let permit = match guard.breaker.admit() {
                Ok(permit) => permit,
                Err(retry_in) => {
                    // This call's own failures opened the circuit: report what the provider said.
                    if let Some(error) = last_error {
                        return Err(error);
                    }
                    guard.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("openclaw_provider_circuit_rejections_total", "provider" => guard.name.clone())
                        .increment(1);
                    return Err(ProviderError::CircuitOpen { retry_in });
                }
            };
            let now = Instant::now();
            let timeout = guard.timeout.min(deadline.saturating_duration_since(now));
            if timeout.is_zero() {
                return Err(ProviderError::Timeout(guard.timeout));
            }
            guard.stats.attempts.fetch_add(1, Ordering::Relaxed);
            if retry > 0 {
                guard.stats.retries.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("openclaw_provider_retries_total", "provider" => guard.name.clone())
                    .increment(1);
            }
            let span = tracing::info_span!(
                "provider_attempt",
                provider = %guard.name,
                model = %model.id,
                attempt = retry + 1,
                stream = matches!(mode, Mode::Stream),
                outcome = tracing::field::Empty,
                http_status = tracing::field::Empty,
                latency_ms = tracing::field::Empty,
            );
            let result = attempt(model, request, mode, timeout)
                .instrument(span.clone())
                .await;
            let latency = now.elapsed();
            span.record("latency_ms", latency.as_millis() as u64);
            let outcome = match &result {
                Ok(_) => "ok",
                Err(error) => outcome_name(error),
            };
            span.record("outcome", outcome);
            static ATTEMPTS: Handles<String, (metrics::Counter, metrics::Histogram)> =
                Handles::new();
            let (attempts, duration) =
                ATTEMPTS.labelled(&[&guard.name, &model.id, outcome], || {
                    (
                        metrics::counter!(
                            "openclaw_provider_attempts_total",
                            "provider" => guard.name.clone(),
                            "model" => model.id.clone(),
                            "outcome" => outcome
                        ),
                        metrics::histogram!(
                            "openclaw_provider_attempt_duration_seconds",
                            "provider" => guard.name.clone(),
                            "outcome" => outcome
                        ),
                    )
                });
            attempts.increment(1);
            duration.record(latency.as_secs_f64());
            let error = match result {
                Ok(outcome) => {
                    permit.succeeded();
                    return Ok(outcome);
                }
                Err(error) => error,
            };
            span.record("http_status", status_of(&error));
            if provider_fault(&error) {
                guard.stats.failures.fetch_add(1, Ordering::Relaxed);
                permit.failed();
            } else {
                permit.neutral();
            }
            span.in_scope(|| tracing::warn!(error = %error, "provider attempt failed"));
            if !retriable(&error) || retry >= guard.retry.max_retries {
                return Err(error);
            }
            let mut wait = guard.retry.backoff(retry);
            if let ProviderError::Status {
                retry_after: Some(asked),
                ..
            } = &error
            {
                if *asked > Duration::from_millis(guard.retry.max_retry_after_ms) {
                    return Err(error);
                }
                wait = wait.max(*asked);
            }
            if Instant::now() + wait >= deadline {
                return Err(error);
            }
            tokio::time::sleep(wait).await;
            retry += 1;
            last_error = Some(error);
        }
    }
}

/// One attempt, bounded by `timeout` (for a stream: until its last chunk).
async fn attempt(
    model: &Arc<Model>,
    request: &ChatRequest,
    mode: &Mode,
    timeout: Duration,
) -> Result<Outcome, ProviderError> {
    let deadline = Instant::now() + timeout;
    let provider = &model.provider;
    let run = async {
        match mode {
            Mode::Complete => provider.complete(request).await.map(Outcome::Completed),
            Mode::Stream => {
                let mut stream = provider.stream(request).await?;
                match stream.next().await {
                    Some(Ok(first)) => Ok(Outcome::Opened(OpenStream {
                        first,
                        rest: guarded(stream, model.clone(), deadline, timeout),
                    })),
                    Some(Err(error)) => Err(error),
                    None => Err(ProviderError::BadResponse(
                        "the stream ended before any chunk".into(),
                    )),
                }
            }
        }
    };
    match tokio::time::timeout_at(deadline, run).await {
        Ok(result) => result,
        Err(_) => Err(ProviderError::Timeout(timeout)),
    }
}

/// The rest of an opened stream: still bounded by the attempt's deadline, and
/// a break in it still counts against the provider's circuit.
fn guarded(
    stream: ChunkStream,
    model: Arc<Model>,
    deadline: Instant,
    timeout: Duration,
) -> ChunkStream {
    Box::pin(futures::stream::unfold(
        Some((stream, model)),
        move |state| async move {
            let (mut stream, model) = state?;
            let item = match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(item)) => item,
                Ok(None) => return None,
                Err(_) => Err(ProviderError::Timeout(timeout)),
            };
            match item {
                Ok(chunk) => Some((Ok(chunk), Some((stream, model)))),
                Err(error) => {
                    let guard = &model.guard;
                    guard.stats.failures.fetch_add(1, Ordering::Relaxed);
                    guard.breaker.record_late_failure();
                    metrics::counter!(
                        "openclaw_provider_attempts_total",
                        "provider" => guard.name.clone(),
                        "model" => model.id.clone(),
                        "outcome" => "broken_stream"
                    )
                    .increment(1);
                    tracing::warn!(provider = %guard.name, model = %model.id, error = %error, "stream broke after its first chunk; not retried");
                    Some((Err(error), None))
                }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let settings = RetrySettings {
            max_retries: 5,
            initial_backoff_ms: 100,
            max_backoff_ms: 350,
            max_retry_after_ms: 1000,
        };
        for _ in 0..50 {
            let first = settings.backoff(0).as_millis();
            assert!((50..=100).contains(&first), "{first}");
            let second = settings.backoff(1).as_millis();
            assert!((100..=200).contains(&second), "{second}");
            let capped = settings.backoff(9).as_millis();
            assert!((175..=350).contains(&capped), "{capped}");
        }
    }

    #[test]
    fn only_connection_errors_429_and_5xx_are_retried() {
        let status = |status| ProviderError::Status {
            status,
            message: String::new(),
            retry_after: None,
        };
        assert!(retriable(&ProviderError::Connect("refused".into())));
        assert!(retriable(&status(429)));
        assert!(retriable(&status(503)));
        assert!(!retriable(&status(400)));
        assert!(!retriable(&ProviderError::Timeout(Duration::from_secs(1))));
        assert!(!provider_fault(&status(400)));
        assert!(provider_fault(&ProviderError::Timeout(
            Duration::from_secs(1)
        )));
    }
}
