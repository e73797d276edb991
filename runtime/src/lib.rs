//! What the core (`openclaw-gateway`) and the REST edge (`openclaw-rest`) both run on in
//! production: one configuration model (file → environment → flags), telemetry (logs, traces,
//! OTLP, trace context across hops), Prometheus metrics with health probes on their own port,
//! the Tokio runtime, graceful shutdown, and TLS material.
//!
//! Both processes depend on this crate and it depends on neither, so the core builds without the
//! edge (and the edge without the core).

pub mod config_file;
pub mod forwarding;
pub mod metrics;
pub mod redact;
pub mod rest_listener;
pub mod runtime;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

/// How strict the process is about its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Friendly defaults: readable logs, the offline simulator, an embedded store.
    #[default]
    Development,
    /// Refuses unsafe settings at start-up, and logs JSON.
    Production,
}
