//! Request metrics of the edge: counts and latency by route, method and
//! status, and requests in flight. Routes are labelled by their template
//! (`/api/v1/sessions/{sessionId}`), never by raw paths, so label sets stay small.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use openclaw_runtime::metrics::Handles;

/// Filled with the matched route's template once routing has happened.
#[derive(Clone, Default)]
pub(crate) struct RouteSlot(Arc<OnceLock<MatchedPath>>);

/// Route-level middleware: tells the outer middleware which route matched.
pub(crate) async fn remember_route(request: Request, next: Next) -> Response {
    if let (Some(slot), Some(path)) = (
        request.extensions().get::<RouteSlot>(),
        request.extensions().get::<MatchedPath>(),
    ) {
        let _ = slot.0.set(path.clone());
    }
    next.run(request).await
}

fn in_flight() -> metrics::Gauge {
    static GAUGE: Handles<(), metrics::Gauge> = Handles::new();
    GAUGE.get(&(), || {
        ((), metrics::gauge!("openclaw_http_requests_in_flight"))
    })
}

/// Counts a request as in flight until dropped.
pub(crate) struct InFlight;

impl InFlight {
    pub(crate) fn start() -> Self {
        in_flight().increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        in_flight().decrement(1.0);
    }
}

pub(crate) fn record(method: &Method, route: &RouteSlot, status: StatusCode, elapsed: Duration) {
    static SERIES: Handles<String, (metrics::Counter, metrics::Histogram)> = Handles::new();
    let route = route.0.get().map_or("unmatched", MatchedPath::as_str);
    let (count, duration) = SERIES.labelled(&[route, method.as_str(), status.as_str()], || {
        let labels = [
            ("route", route.to_owned()),
            ("method", method.as_str().to_owned()),
            ("status", status.as_str().to_owned()),
        ];
        (
            metrics::counter!("openclaw_http_requests_total", &labels),
            metrics::histogram!("openclaw_http_request_duration_seconds", &labels),
        )
    });
    count.increment(1);
    duration.record(elapsed.as_secs_f64());
}
