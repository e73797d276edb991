//! The REST listener's settings, as both command lines carry them: `openclaw-rest`, and
//! `openclaw-gateway serve` (used with `--http-addr`, a combined replica). They live here, not in
//! the edge, so a core built without the edge keeps the same command line and configuration file
//! keys, and can refuse `--http-addr` by name instead of not knowing the other settings.

use std::path::PathBuf;

/// The largest request body accepted by default, in bytes (larger ones get 413).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// The largest total size of a request's headers by default, in bytes (larger ones get 431).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// How long a client may take by default to send its request headers, in milliseconds.
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;

/// What the REST listener accepts from clients: the settings an edge has whether it runs as its
/// own process (`openclaw-rest`) or inside a combined replica (`openclaw-gateway serve
/// --http-addr`). The edge turns them into its configuration (`gateway_rest::EdgeConfig::from_args`).
#[derive(Debug, Clone, clap::Args)]
pub struct EdgeArgs {
    /// The largest request body accepted, in bytes.
    #[arg(long, env = "OPENCLAW_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// The largest total size of a request's headers, in bytes (larger: 431).
    #[arg(long, env = "OPENCLAW_MAX_HEADER_BYTES", default_value_t = DEFAULT_MAX_HEADER_BYTES)]
    pub max_header_bytes: usize,
    /// How long a client may take to send its request headers (and finish the TLS handshake)
    /// before the connection is closed, in milliseconds.
    #[arg(
        long,
        env = "OPENCLAW_HEADER_READ_TIMEOUT_MS",
        default_value_t = DEFAULT_HEADER_READ_TIMEOUT_MS
    )]
    pub header_read_timeout_ms: u64,
    /// The load balancers or proxies in front of the edge, as IP addresses or CIDR blocks
    /// (comma-separated). Only a request from one of them has its `X-Forwarded-For` read (from
    /// the right, past every trusted proxy) for the client's address; any other request is known
    /// by its peer address. Empty: `X-Forwarded-For` is never believed.
    #[arg(
        long = "trusted-proxies",
        env = "OPENCLAW_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,
    /// PEM certificate chain (leaf first) for HTTPS on the REST address; with --tls-key.
    /// Absent: plain HTTP (for TLS terminated in front of the edge).
    #[arg(long, env = "OPENCLAW_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "OPENCLAW_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}
