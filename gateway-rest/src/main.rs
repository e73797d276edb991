//! `openclaw-rest`: the REST edge as its own process.

use clap::Parser;
use gateway_rest::EdgeConfig;
use tokio::net::TcpListener;

/// OpenClaw Gateway REST edge: serves the JSON API and forwards every call to the core over gRPC.
#[derive(Debug, Parser)]
#[command(name = "openclaw-rest", version, about)]
struct Cli {
    /// Address to serve HTTP on.
    #[arg(long, env = "OPENCLAW_HTTP_ADDR", default_value = "0.0.0.0:18789")]
    http_addr: String,
    /// The core's gRPC endpoint(s), comma-separated; calls are balanced across them.
    #[arg(
        long = "core-url",
        env = "OPENCLAW_CORE_URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:50051"
    )]
    core_urls: Vec<String>,
    /// The largest request body accepted, in bytes.
    #[arg(long, env = "OPENCLAW_MAX_BODY_BYTES", default_value_t = EdgeConfig::default().max_body_bytes)]
    max_body_bytes: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let config = EdgeConfig {
        core_urls: cli.core_urls,
        max_body_bytes: cli.max_body_bytes,
        ..EdgeConfig::default()
    };
    let listener = TcpListener::bind(&cli.http_addr).await?;
    tracing::info!(
        addr = %listener.local_addr()?,
        core = ?config.core_urls,
        "openclaw-rest listening"
    );
    gateway_rest::serve(listener, config, shutdown_signal()).await?;
    tracing::info!("openclaw-rest stopped");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM, whichever comes first.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down; finishing requests in flight");
}
