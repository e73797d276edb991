//! The `openclaw-gateway` command line: `serve` runs the gRPC core, `dev`
//! (the default, so plain `cargo run`) runs the core and the REST edge in one
//! process with a ready-to-paste API key.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use crate::auth::{generate_key, hash_secret};
use crate::config::{CoreConfig, Secret};
use crate::gateway::Gateway;
use crate::server;
use crate::shutdown::Shutdown;

#[derive(Debug, Parser)]
#[command(
    name = "openclaw-gateway",
    version,
    about = "OpenClaw Gateway: sessions, models and schedules over gRPC and REST"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gRPC core (one replica of many, sharing state through Redis).
    Serve {
        #[command(flatten)]
        core: CoreConfig,
    },
    /// Run the core and the REST edge in one process, for local use.
    Dev(DevArgs),
}

#[derive(Debug, clap::Args)]
struct DevArgs {
    /// Address of the REST API.
    #[arg(long, env = "OPENCLAW_HTTP_ADDR", default_value = "127.0.0.1:18789")]
    http_addr: SocketAddr,
    #[command(flatten)]
    core: CoreConfig,
}

pub async fn run() -> anyhow::Result<()> {
    // `.env` fills in what the environment does not set (the guide keeps the internal token there).
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    crate::telemetry::init();
    let command = match cli.command {
        Some(command) => command,
        None => Cli::parse_from(["openclaw-gateway", "dev"])
            .command
            .context("parsing the default dev command")?,
    };
    match command {
        Command::Serve { core } => serve(core).await,
        Command::Dev(args) => dev(args).await,
    }
}

async fn serve(config: CoreConfig) -> anyhow::Result<()> {
    let gateway = server::build(&config).await?;
    let listener = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("binding the gRPC address {}", config.grpc_addr))?;
    tracing::info!(addr = %listener.local_addr()?, replica = %gateway.replica, "core listening (gRPC)");
    let shutdown = Shutdown::new();
    shutdown.on_signals();
    server::run(listener, gateway, shutdown.wait()).await
}

async fn dev(mut args: DevArgs) -> anyhow::Result<()> {
    let token_file = args.core.data_dir.join("internal-token");
    if args.core.internal_token.is_none() {
        args.core.internal_token = Some(local_secret(&token_file, || {
            format!("ocit_{}", uuid::Uuid::new_v4().simple())
        })?);
    }
    let gateway = server::build(&args.core).await?;
    // In dev the core listens on loopback only.
    let grpc_addr = SocketAddr::from(([127, 0, 0, 1], args.core.grpc_addr.port()));
    let grpc = TcpListener::bind(grpc_addr).await.with_context(|| {
        format!("binding the gRPC address {grpc_addr} (set --grpc-addr to another port)")
    })?;
    let http = TcpListener::bind(args.http_addr).await.with_context(|| {
        format!(
            "binding the REST address {} (set --http-addr to another port)",
            args.http_addr
        )
    })?;
    let grpc_addr = grpc.local_addr()?;
    let http_addr = http.local_addr()?;
    let key = dev_key(&gateway, &args.core.data_dir.join("dev-key")).await?;

    let shutdown = Shutdown::new();
    shutdown.on_signals();
    let core = tokio::spawn(server::run(grpc, gateway.clone(), shutdown.wait()));
    let edge = tokio::spawn(gateway_rest::serve(
        http,
        gateway_rest::EdgeConfig {
            core_urls: vec![format!("http://{grpc_addr}")],
            ..Default::default()
        },
        shutdown.wait(),
    ));

    let base = format!("http://{http_addr}");
    println!();
    println!("  OpenClaw Gateway is running (development mode)");
    println!("  REST API   {base}/api/v1      (OpenAPI: {base}/openapi.json)");
    println!("  gRPC core  {grpc_addr}");
    println!("  store      {}", gateway.store.name());
    if gateway.models.any_simulated() {
        println!("  models     OFFLINE SIMULATOR (set ZAI_API_KEY for real answers)");
    }
    println!("  internal   token in {}", token_file.display());
    println!();
    println!("  Your API key: {key}");
    println!();
    println!("  Try it:");
    println!("  curl -X POST {base}/api/v1/sessions \\");
    println!("    -H \"Content-Type: application/json\" \\");
    println!("    -H \"Authorization: Bearer {key}\" \\");
    println!(
        "    -d '{{\"model\": \"zai/glm-4.7-flash\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'"
    );
    println!();

    let (core, edge) = tokio::join!(core, edge);
    core.context("core task")??;
    edge.context("edge task")??;
    Ok(())
}

/// Reads a secret kept in the data folder, creating it on first use (mode 0600).
fn local_secret(path: &Path, make: impl FnOnce() -> String) -> anyhow::Result<Secret> {
    if let Ok(existing) = std::fs::read_to_string(path) {
        let existing = existing.trim();
        if !existing.is_empty() {
            return Ok(Secret::new(existing));
        }
    }
    let value = make();
    write_private(path, &value)?;
    Ok(Secret::new(value))
}

fn write_private(path: &Path, value: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    use std::io::Write;
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(value.as_bytes())?;
    Ok(())
}

/// The local development key: reused while it is valid, otherwise generated and remembered.
async fn dev_key(gateway: &Arc<Gateway>, path: &Path) -> anyhow::Result<String> {
    if let Ok(existing) = std::fs::read_to_string(path) {
        let existing = existing.trim().to_string();
        if let Ok(Some(record)) = gateway.store.key_by_hash(&hash_secret(&existing)).await
            && !record.is_revoked()
        {
            return Ok(existing);
        }
    }
    let generated = generate_key("local development".into(), Vec::new(), Default::default());
    let mut generated = generated;
    generated.record.scopes = crate::auth::SCOPES.iter().map(|s| s.to_string()).collect();
    gateway
        .store
        .insert_key(&generated.record)
        .await
        .context("storing the development API key")?;
    write_private(path, &generated.secret)?;
    Ok(generated.secret)
}
