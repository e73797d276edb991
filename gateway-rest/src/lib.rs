//! OpenClaw Gateway's REST edge: the guide's JSON API over HTTP, translated into the core's
//! `openclaw.v1` gRPC API.
//!
//! The edge decides nothing. Authentication, limits, validation and state live in the core; the
//! edge checks only the JSON shape, forwards the caller's identity as gRPC metadata, and renders
//! the core's answer (or error) into the guide's envelope.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use openclaw_runtime::metrics::ReadinessCheck;
use openclaw_runtime::rest_listener;
use openclaw_runtime::tls::TlsFiles;

pub mod proto;
pub mod request_bodies;

pub mod client_address;
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

pub use core_client::{CoreService, DirectCalls, Unary};
pub use openclaw_runtime::rest_listener::EdgeArgs;
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
    pub tls: Option<TlsFiles>,
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
    /// Which peers' `X-Forwarded-For` is believed, and the proof that makes the core believe
    /// the client address this edge forwards.
    pub forwarding: client_address::Forwarding,
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
            header_read_timeout: Duration::from_millis(
                rest_listener::DEFAULT_HEADER_READ_TIMEOUT_MS,
            ),
            max_header_bytes: rest_listener::DEFAULT_MAX_HEADER_BYTES,
            max_body_bytes: rest_listener::DEFAULT_MAX_BODY_BYTES,
            core_timeout: Duration::from_secs(180),
            draining: Arc::default(),
            forwarding: client_address::Forwarding::default(),
            in_process_core: None,
        }
    }
}

impl EdgeConfig {
    /// The edge configuration the REST listener's settings make, everything else at its default.
    pub fn from_args(args: &EdgeArgs) -> anyhow::Result<Self> {
        Ok(Self {
            tls: TlsFiles::from_pair(
                args.tls_cert.clone(),
                args.tls_key.clone(),
                ("OPENCLAW_TLS_CERT", "OPENCLAW_TLS_KEY"),
            )?,
            header_read_timeout: Duration::from_millis(args.header_read_timeout_ms),
            max_header_bytes: args.max_header_bytes,
            max_body_bytes: args.max_body_bytes,
            forwarding: client_address::Forwarding {
                trusted_proxies: client_address::Forwarding::parse_trusted(&args.trusted_proxies)?,
                proof: None,
            },
            ..Self::default()
        })
    }
}

/// The edge's readiness for the metrics port's `/readyz`: not draining, and a core answers.
pub fn readiness_check(config: &EdgeConfig) -> anyhow::Result<ReadinessCheck> {
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
