//! What both binaries share to run in production: one configuration model
//! (file → environment → flags), telemetry (logs, traces, OTLP), Prometheus
//! metrics with health probes on their own port, and graceful shutdown.

pub mod config_file;
pub mod metrics;
pub mod runtime;
pub mod shutdown;
pub mod telemetry;

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
