//! `openclaw-rest`: the REST edge as its own process.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use gateway_rest::tls::CoreTls;
use gateway_rest::{EdgeArgs, EdgeConfig};
use openclaw_runtime::tls::TlsFiles;
use openclaw_runtime::{
    Profile, config_file, metrics, runtime::RuntimeArgs, shutdown::Shutdown, telemetry,
};
use tokio::net::TcpListener;

/// The same allocator as the core (see its `main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// OpenClaw Gateway REST edge: serves the JSON API and forwards every call to the core over gRPC.
#[derive(Debug, Parser)]
#[command(name = "openclaw-rest", version, about)]
struct Cli {
    /// TOML file with any of these settings by flag name (flags and environment win over it).
    #[arg(long, env = "OPENCLAW_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    print_config: bool,
    /// `production` refuses unsafe settings and logs JSON.
    #[arg(
        long,
        env = "OPENCLAW_PROFILE",
        value_enum,
        default_value = "development"
    )]
    profile: Profile,
    /// Address to serve HTTP on.
    #[arg(long, env = "OPENCLAW_HTTP_ADDR", default_value = "0.0.0.0:18789")]
    http_addr: SocketAddr,
    /// The core's gRPC endpoint(s), comma-separated; calls are balanced across them.
    /// Host names are re-resolved every few seconds (a headless Service lists every core).
    #[arg(
        long = "core-url",
        env = "OPENCLAW_CORE_URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:50051"
    )]
    core_urls: Vec<String>,
    #[command(flatten)]
    edge: EdgeArgs,
    /// PEM file of the CA that signed the cores' certificates, for https:// core URLs.
    #[arg(long, env = "OPENCLAW_CORE_CA")]
    core_ca: Option<std::path::PathBuf>,
    /// PEM client certificate the edge presents to cores that require mutual TLS; with
    /// --core-client-key.
    #[arg(long, env = "OPENCLAW_CORE_CLIENT_CERT")]
    core_client_cert: Option<std::path::PathBuf>,
    /// PEM private key of --core-client-cert.
    #[arg(long, env = "OPENCLAW_CORE_CLIENT_KEY")]
    core_client_key: Option<std::path::PathBuf>,
    /// The cores' internal token. The edge never sends it: it proves with a hash of it that the
    /// client addresses it forwards are its clients' (the cores' brute-force guard counts
    /// failed sign-ins by them). Without it every client of this edge counts as the edge.
    #[arg(long, env = "OPENCLAW_INTERNAL_TOKEN", hide_env_values = true)]
    internal_token: Option<String>,
    /// Address of the Prometheus metrics and probe endpoints (/metrics, /livez, /readyz).
    #[arg(long, env = "OPENCLAW_METRICS_ADDR", default_value = "0.0.0.0:9465")]
    metrics_addr: SocketAddr,
    /// On SIGTERM, how long requests in flight may take to finish before the process exits.
    #[arg(long, env = "OPENCLAW_DRAIN_TIMEOUT_MS", default_value_t = 30_000)]
    drain_timeout_ms: u64,
    /// `text` or `json` log lines (production defaults to json).
    #[arg(long, env = "OPENCLAW_LOG_FORMAT")]
    log_format: Option<String>,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

fn main() -> anyhow::Result<()> {
    use clap::FromArgMatches as _;
    config_file::apply(&Cli::command())?;
    // clap reads environment variables when a command is built, so build it after the file applied.
    let command = Cli::command();
    let matches = command.clone().get_matches();
    let cli = Cli::from_arg_matches(&matches)?;
    if cli.print_config {
        print!("{}", config_file::render(&command, &matches));
        return Ok(());
    }
    cli.runtime.build()?.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let json = cli
        .log_format
        .as_deref()
        .map_or(cli.profile == Profile::Production, |f| f == "json");
    let mut telemetry = telemetry::init("openclaw-rest", json);
    let shutdown = Shutdown::new();
    shutdown.on_signals();
    let mut config = EdgeConfig {
        core_urls: cli.core_urls.clone(),
        core_tls: CoreTls {
            ca: cli.core_ca.clone(),
            client: TlsFiles::from_pair(
                cli.core_client_cert.clone(),
                cli.core_client_key.clone(),
                ("OPENCLAW_CORE_CLIENT_CERT", "OPENCLAW_CORE_CLIENT_KEY"),
            )?,
        },
        ..EdgeConfig::from_args(&cli.edge)?
    };
    match cli.internal_token.as_deref() {
        Some(token) if !token.trim().is_empty() => {
            config.forwarding.proof = gateway_rest::client_address::Forwarding::proof_for(token);
        }
        _ => tracing::warn!(
            "OPENCLAW_INTERNAL_TOKEN is not set on this edge: cores cannot believe the client \
             addresses it forwards and count every client of this edge as one address"
        ),
    }
    let draining = config.draining.clone();
    let listener = TcpListener::bind(cli.http_addr).await?;
    let metrics_listener = metrics::bind(cli.metrics_addr).await?;
    tracing::info!(
        addr = %listener.local_addr()?,
        tls = config.tls.is_some(),
        metrics = %metrics_listener.local_addr()?,
        core = ?openclaw_runtime::redact::urls(&config.core_urls),
        "openclaw-rest listening"
    );
    tokio::spawn(metrics::serve(
        metrics_listener,
        gateway_rest::readiness_check(&config)?,
        shutdown.wait(),
    ));
    let flag = shutdown.clone();
    let on_drain = async move {
        flag.wait().await;
        draining.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let drain_bound = Duration::from_millis(cli.drain_timeout_ms);
    let outcome = shutdown
        .drain_within(gateway_rest::serve(listener, config, on_drain), drain_bound)
        .await;
    tracing::info!("openclaw-rest stopped");
    telemetry.shutdown();
    outcome
}
