//! Per-call telemetry of the core: a span for every gRPC call carrying the
//! request id and continuing the caller's trace (W3C `traceparent` in the
//! metadata), and metrics of calls by method and status.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use openclaw_runtime::metrics::Handles;
use openclaw_runtime::telemetry;
use tower::{Layer, Service};
use tracing::Instrument as _;

tokio::task_local! {
    /// The `x-request-id` of the gRPC call this task serves.
    static REQUEST_ID: String;
}

/// The request id of the call being served, if it has one: what the core names when it tells a
/// caller that the details of a failure are in its logs.
pub(crate) fn request_id() -> Option<String> {
    REQUEST_ID
        .try_with(|id| id.clone())
        .ok()
        .filter(|id| !id.is_empty())
}

/// `work`, to be spawned to finish a call's work in a task of its own, keeping the call's
/// request id (a task-local does not follow a spawn by itself).
pub(crate) fn carrying_request_id<F: std::future::Future>(
    work: F,
) -> impl std::future::Future<Output = F::Output> {
    let id = REQUEST_ID.try_with(Clone::clone).unwrap_or_default();
    REQUEST_ID.scope(id, work)
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ObserveLayer;

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Observe { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
}

/// A call's method label, written only when a span is recorded.
struct MethodLabel<'a>(&'a str);

impl std::fmt::Display for MethodLabel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&method_label(self.0))
    }
}

/// `/openclaw.v1.SessionService/SendMessage` → `SessionService/SendMessage`.
fn method_label(path: &str) -> String {
    let path = path.trim_start_matches('/');
    match path.split_once('/') {
        Some((service, method)) => {
            let service = service.rsplit('.').next().unwrap_or(service);
            format!("{service}/{method}")
        }
        None => path.to_string(),
    }
}

fn in_flight() -> metrics::Gauge {
    static GAUGE: Handles<(), metrics::Gauge> = Handles::new();
    GAUGE.get(&(), || {
        ((), metrics::gauge!("openclaw_grpc_requests_in_flight"))
    })
}

struct InFlight;

impl InFlight {
    fn start() -> Self {
        in_flight().increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        in_flight().decrement(1.0);
    }
}

impl<S, B, R> Service<http::Request<B>> for Observe<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let (request_id, span) = call_span(&path, request.headers());
        // The ready service handles this call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(
            REQUEST_ID
                .scope(request_id, async move {
                    let in_flight = InFlight::start();
                    let started = Instant::now();
                    let outcome = inner.call(request).await;
                    drop(in_flight);
                    // Errors answer in the headers ("trailers-only"); success reports OK in trailers.
                    let status = match &outcome {
                        Ok(response) => response
                            .headers()
                            .get("grpc-status")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("Ok"),
                        Err(_) => "Transport",
                    };
                    record(&path, status, started);
                    outcome
                })
                .instrument(span),
        )
    }
}

/// A call's request id (`x-request-id`, empty without one) and its span, continuing the
/// caller's trace.
fn call_span(path: &str, headers: &http::HeaderMap) -> (String, tracing::Span) {
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let span = tracing::info_span!(
        "grpc",
        method = %MethodLabel(path),
        request_id = %request_id
    );
    telemetry::adopt(&span, &telemetry::HeaderSource(headers));
    (request_id, span)
}

/// Counts a finished call and its duration under its method and status (a gRPC status code's
/// number, `Ok`, or `Transport`).
fn record(path: &str, status: &str, started: Instant) {
    static SERIES: Handles<String, (metrics::Counter, metrics::Histogram)> = Handles::new();
    let (count, duration) = SERIES.labelled(&[path, status], || {
        let status = match status.parse::<i32>() {
            Ok(code) => format!("{:?}", tonic::Code::from(code)),
            Err(_) => status.to_owned(),
        };
        let labels = [("method", method_label(path)), ("status", status)];
        (
            metrics::counter!("openclaw_grpc_requests_total", &labels),
            metrics::histogram!("openclaw_grpc_request_duration_seconds", &labels),
        )
    });
    count.increment(1);
    duration.record(started.elapsed().as_secs_f64());
}

/// A call made directly by the edge of this process (`gateway_rest::DirectCalls`), observed as
/// [`Observe`] observes a gRPC call: the same span, request id, metrics and in-flight gauge.
#[cfg(feature = "rest")]
pub(crate) async fn observed<R, T, F>(
    path: &'static str,
    request: tonic::Request<R>,
    call: impl FnOnce(tonic::Request<R>) -> F,
) -> Result<tonic::Response<T>, tonic::Status>
where
    F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let (request_id, span) = call_span(path, request.metadata().as_ref());
    REQUEST_ID
        .scope(request_id, async move {
            let in_flight = InFlight::start();
            let started = Instant::now();
            let outcome = call(request).await;
            drop(in_flight);
            match &outcome {
                Ok(_) => record(path, "Ok", started),
                Err(status) => record(path, &(status.code() as i32).to_string(), started),
            }
            outcome
        })
        .instrument(span)
        .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn methods_are_labelled_without_the_package() {
        assert_eq!(
            super::method_label("/openclaw.v1.SessionService/SendMessage"),
            "SessionService/SendMessage"
        );
        assert_eq!(
            super::method_label("/grpc.health.v1.Health/Check"),
            "Health/Check"
        );
    }
}
