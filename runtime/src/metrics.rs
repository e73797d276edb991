//! Prometheus metrics and health probes on a port of their own
//! (`OPENCLAW_METRICS_ADDR`), so scraping and probing never compete with API
//! traffic: `GET /metrics`, `GET /livez`, `GET /readyz`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use axum::serve::ListenerExt as _;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets in seconds: sub-millisecond gateway work up to two-minute model calls.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];

/// Installs the process-wide recorder (once; later calls return the same handle).
pub fn recorder() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::debug!("a metrics recorder was already installed");
            }
            handle
        })
        .clone()
}

/// Answers whether the process can take traffic now.
pub type ReadinessCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Serves `/metrics`, `/livez` and `/readyz` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ready: ReadinessCheck,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let handle = recorder();
    let upkeep = handle.clone();
    // Histograms are kept as summaries of recent samples; trim them now and then.
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let app = Router::new()
        .route("/metrics", get(move || std::future::ready(handle.render())))
        .route("/livez", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    match ready().await {
                        Ok(()) => (StatusCode::OK, "ready".to_string()),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
                    }
                }
            }),
        );
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::trace!(%error, "could not set TCP_NODELAY");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// Binds the metrics address, naming it in the error, and installs the
/// recorder now, so no metric emitted before the server task runs is lost.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context as _;
    recorder();
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr} (set OPENCLAW_METRICS_ADDR)"))
}

/// Metric handles by their label values, each series registered once. `metrics::counter!` and
/// its kin look the series up in the recorder on every call (building the key, hashing its
/// labels, taking the registry's lock): a metric recorded on every request keeps its handles
/// here instead, and a later call costs one read lock and one hash of the labels.
pub struct Handles<K, H> {
    map: std::sync::OnceLock<std::sync::RwLock<std::collections::HashMap<K, H>>>,
}

impl<K: std::hash::Hash + Eq, H: Clone> Handles<K, H> {
    pub const fn new() -> Self {
        Self {
            map: std::sync::OnceLock::new(),
        }
    }

    /// The handles for `key`, registered by `register` the first time (with the process-wide
    /// recorder installed first, so a handle is never one of the no-op recorder's).
    pub fn get<Q>(&self, key: &Q, register: impl FnOnce() -> (K, H)) -> H
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let map = self.map.get_or_init(Default::default);
        if let Some(handles) = map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
        {
            return handles.clone();
        }
        recorder();
        let (key, handles) = register();
        map.write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key)
            .or_insert(handles)
            .clone()
    }
}

impl<H: Clone> Handles<String, H> {
    /// The handles for a series named by its label values, in a fixed order; the key is built
    /// in a buffer of the thread's, so a known series costs no allocation.
    pub fn labelled(&self, values: &[&str], register: impl FnOnce() -> H) -> H {
        thread_local! {
            static KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        KEY.with_borrow_mut(|key| {
            key.clear();
            for value in values {
                key.push_str(value);
                // A separator no label value holds.
                key.push('\u{1f}');
            }
            self.get(key.as_str(), || (key.clone(), register()))
        })
    }
}

impl<K: std::hash::Hash + Eq, H: Clone> Default for Handles<K, H> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod handle_tests {
    use super::*;

    #[test]
    fn a_series_is_registered_once_and_counts_every_call() {
        static COUNTS: Handles<(String, u16), metrics::Counter> = Handles::new();
        let handle = recorder();
        let mut registered = 0;
        for _ in 0..3 {
            COUNTS
                .get(&("/v1/test".to_string(), 200), || {
                    registered += 1;
                    (
                        ("/v1/test".to_string(), 200),
                        metrics::counter!("openclaw_handles_test_total", "route" => "/v1/test"),
                    )
                })
                .increment(1);
        }
        assert_eq!(registered, 1);
        let text = handle.render();
        assert!(
            text.contains("openclaw_handles_test_total{route=\"/v1/test\"} 3"),
            "{text}"
        );
    }
}
