//! OpenClaw Gateway's REST edge: the guide's JSON API over HTTP, translated into the core's
//! `openclaw.v1` gRPC API.
//!
//! The edge decides nothing. Authentication, limits, validation and state live in the core; the
//! edge checks only the JSON shape, forwards the caller's identity as gRPC metadata, and renders
//! the core's answer (or error) into the guide's envelope.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

pub mod ops;
pub mod proto;
pub mod redact;
pub mod request_bodies;

mod core_client;
mod core_pool;
mod dashboard;
mod envelope;
mod error;
mod extract;
mod headers;
mod observe;
mod openapi;
mod routes;
mod server;
mod timestamp;
pub mod tls;

pub use core_client::CoreService;
pub use server::serve;

/// How the edge reaches the core and what it accepts from clients.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// The core replicas' gRPC endpoints (`http://host:port`, or `https://host:port` with
    /// `core_tls`); calls are balanced across them.
    pub core_urls: Vec<String>,
    /// How the edge trusts (and, for mutual TLS, proves itself to) `https://` cores.
    pub core_tls: tls::CoreTls,
    /// The public listener's certificate and key; absent, it serves plain HTTP.
    pub tls: Option<tls::TlsFiles>,
    /// How long a client may take to send a request's headers (and, with TLS, to finish the
    /// handshake) before its connection is closed: slow clients cannot hold connections open.
    pub header_read_timeout: Duration,
    /// The largest total size of a request's headers, in bytes; larger ones get 431.
    pub max_header_bytes: usize,
    /// The largest request body accepted, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// How long the edge waits for the core on one call (model calls included).
    pub core_timeout: Duration,
    /// Set when the process starts draining: readiness turns false and new
    /// requests are refused with UNAVAILABLE while those in flight finish.
    pub draining: Arc<AtomicBool>,
    /// The core running in this same process (a combined replica): calls go straight to its
    /// gRPC service, with no socket, no HTTP/2 framing and no extra task in between.
    /// `core_urls` and `core_tls` are then unused.
    pub in_process_core: Option<CoreService>,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            core_urls: vec!["http://127.0.0.1:50051".into()],
            core_tls: tls::CoreTls::default(),
            tls: None,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_body_bytes: 1024 * 1024,
            core_timeout: Duration::from_secs(180),
            draining: Arc::default(),
            in_process_core: None,
        }
    }
}

/// What the REST listener accepts from clients: the settings an edge has whether it runs as its
/// own process (`openclaw-rest`) or inside a combined replica (`openclaw-gateway serve
/// --http-addr`).
#[derive(Debug, Clone, clap::Args)]
pub struct EdgeArgs {
    /// The largest request body accepted, in bytes.
    #[arg(long, env = "OPENCLAW_MAX_BODY_BYTES", default_value_t = EdgeConfig::default().max_body_bytes)]
    pub max_body_bytes: usize,
    /// The largest total size of a request's headers, in bytes (larger: 431).
    #[arg(long, env = "OPENCLAW_MAX_HEADER_BYTES", default_value_t = EdgeConfig::default().max_header_bytes)]
    pub max_header_bytes: usize,
    /// How long a client may take to send its request headers (and finish the TLS handshake)
    /// before the connection is closed, in milliseconds.
    #[arg(
        long,
        env = "OPENCLAW_HEADER_READ_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub header_read_timeout_ms: u64,
    /// PEM certificate chain (leaf first) for HTTPS on the REST address; with --tls-key.
    /// Absent: plain HTTP (for TLS terminated in front of the edge).
    #[arg(long, env = "OPENCLAW_TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "OPENCLAW_TLS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,
}

impl EdgeArgs {
    /// The edge configuration these settings make, everything else at its default.
    pub fn config(&self) -> anyhow::Result<EdgeConfig> {
        Ok(EdgeConfig {
            tls: tls::TlsFiles::from_pair(
                self.tls_cert.clone(),
                self.tls_key.clone(),
                ("OPENCLAW_TLS_CERT", "OPENCLAW_TLS_KEY"),
            )?,
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            max_header_bytes: self.max_header_bytes,
            max_body_bytes: self.max_body_bytes,
            ..EdgeConfig::default()
        })
    }
}

/// The edge's readiness for the metrics port's `/readyz`: not draining, and a core answers.
pub fn readiness_check(config: &EdgeConfig) -> anyhow::Result<ops::metrics::ReadinessCheck> {
    let core = core_client::CoreClient::new(config)?;
    let draining = config.draining.clone();
    Ok(Arc::new(move || {
        let core = core.clone();
        let draining = draining.clone();
        Box::pin(async move {
            if draining.load(std::sync::atomic::Ordering::SeqCst) {
                Err("draining".to_string())
            } else if core.healthy().await {
                Ok(())
            } else {
                Err("no core answers".to_string())
            }
        })
    }))
}
