//! The `openclaw-gateway` command line: `serve` runs the gRPC core (with
//! `--http-addr`, the REST API too, in the same process), `dev` (the default,
//! so plain `cargo run`) runs the core and the REST edge in one process with a
//! ready-to-paste API key.
//!
//! The REST edge is in the binary only with the `rest` feature (on by default); built without
//! it, the command line is the same and `serve --http-addr` and `dev` are refused at start-up
//! (see [`edge`]).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use openclaw_runtime::rest_listener::EdgeArgs;
use openclaw_runtime::{config_file, metrics, runtime::RuntimeArgs, shutdown::Shutdown, telemetry};
use tokio::net::TcpListener;

use crate::auth::{generate_key, hash_secret};
use crate::config::{CoreConfig, Secret};
use crate::server::{self, CoreApi, Gateway};

#[derive(Debug, Parser)]
#[command(
    name = "openclaw-gateway",
    version,
    about = "OpenClaw Gateway: sessions, models and schedules over gRPC and REST"
)]
pub struct Cli {
    /// TOML file with any setting by flag name (flags and environment win over it).
    #[arg(long, env = "OPENCLAW_CONFIG", global = true)]
    config: Option<std::path::PathBuf>,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long, global = true)]
    print_config: bool,
    #[command(flatten)]
    runtime: RuntimeArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gRPC core (one replica of many, sharing state through Redis); with
    /// --http-addr, also the REST API.
    Serve(ServeArgs),
    /// Run the core and the REST edge in one process, for local use.
    Dev(DevArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Also serve the REST API on this address, its edge calling this core in-process (a
    /// combined replica: no separate `openclaw-rest`, no network hop between the two).
    #[arg(long, env = "OPENCLAW_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    #[command(flatten)]
    edge: EdgeArgs,
    #[command(flatten)]
    core: CoreConfig,
}

#[derive(Debug, clap::Args)]
struct DevArgs {
    /// Address of the REST API.
    #[arg(long, env = "OPENCLAW_HTTP_ADDR", default_value = "127.0.0.1:18789")]
    http_addr: SocketAddr,
    #[command(flatten)]
    core: CoreConfig,
}

/// Reads the configuration (flags, environment, `.env`, configuration file),
/// then runs the chosen command on a multi-threaded runtime.
pub fn main() -> anyhow::Result<()> {
    // Both steps set environment variables, so they run before any thread exists.
    // `.env` fills in what the environment does not set (the guide keeps the internal token there).
    let _ = dotenvy::dotenv();
    config_file::apply(&Cli::command())?;
    // clap reads environment variables when a command is built, so build it after the file applied.
    let command = Cli::command();
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut matches = command.clone().get_matches_from(&args);
    if matches.subcommand().is_none() {
        // Plain `openclaw-gateway` (and so `cargo run`) means `dev`.
        args.insert(1, "dev".into());
        matches = command.clone().get_matches_from(&args);
    }
    let cli = Cli::from_arg_matches(&matches)?;
    if cli.print_config {
        print!("{}", config_file::render(&command, &matches));
        return Ok(());
    }
    let command = cli.command.context("no command given")?;
    cli.runtime.build()?.block_on(async move {
        match command {
            Command::Serve(args) => serve(args).await,
            Command::Dev(args) => dev(args).await,
        }
    })
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = &args.core;
    let mut telemetry = telemetry::init("openclaw-gateway", config.json_logs());
    let tls = server::grpc_tls(config)?;
    // The REST side's settings are checked before anything starts.
    let edge_config = args
        .http_addr
        .is_some()
        .then(|| edge::for_serve(&args.edge))
        .transpose()?;
    let gateway = server::build(config).await?;
    config.check_production(gateway.models.any_simulated())?;
    let listener = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("binding the gRPC address {}", config.grpc_addr))?;
    let http = match args.http_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the REST address {addr}"))?,
        ),
        None => None,
    };
    let metrics_listener = metrics::bind(config.metrics_addr).await?;
    tracing::info!(
        addr = %listener.local_addr()?,
        rest = ?http.as_ref().map(TcpListener::local_addr).transpose()?,
        metrics = %metrics_listener.local_addr()?,
        replica = %gateway.replica,
        profile = ?config.profile,
        tls = tls.is_some(),
        "core listening (gRPC)"
    );
    let shutdown = Shutdown::new();
    shutdown.on_signals();
    tokio::spawn(metrics::serve(
        metrics_listener,
        server::readiness_check(gateway.clone()),
        shutdown.wait(),
    ));
    let api = CoreApi::start(gateway).await?;
    let rest = http.zip(edge_config);
    let outcome = shutdown
        .drain_within(
            run_replica(api, listener, tls, rest, &shutdown),
            config.drain_timeout(),
        )
        .await;
    tracing::info!("core stopped");
    telemetry.shutdown();
    outcome
}

/// Serves the core's gRPC API on `grpc` and, given `rest`, the REST API on its listener, its
/// edge calling this core in-process, until `shutdown` fires; then both drain.
async fn run_replica(
    api: CoreApi,
    grpc: TcpListener,
    tls: Option<tonic::transport::ServerTlsConfig>,
    rest: Option<(TcpListener, edge::EdgeConfig)>,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let Some((http, edge_config)) = rest else {
        return api.serve(grpc, tls, shutdown.wait()).await;
    };
    let rest = edge::serve(&api, http, edge_config, shutdown.wait());
    // Either failing stops the replica: a REST API without its gRPC side (or the reverse) is not
    // a replica anyone configured.
    tokio::try_join!(api.serve(grpc, tls, shutdown.wait()), rest).map(|((), ())| ())
}

/// The REST edge in this process: a combined replica's REST side, calling the core in-process.
#[cfg(feature = "rest")]
mod edge {
    use openclaw_runtime::rest_listener::EdgeArgs;
    use tokio::net::TcpListener;

    use crate::server::CoreApi;

    pub(super) use gateway_rest::EdgeConfig;

    /// The edge of `serve --http-addr`, from the REST listener's settings.
    pub(super) fn for_serve(args: &EdgeArgs) -> anyhow::Result<EdgeConfig> {
        EdgeConfig::from_args(args)
    }

    /// The edge of `dev`: every setting at its default.
    pub(super) fn for_dev() -> anyhow::Result<EdgeConfig> {
        Ok(EdgeConfig::default())
    }

    /// Serves the REST API on `http`, its calls going straight to `api`, until `stop` resolves;
    /// then readiness turns false and the requests in flight finish.
    pub(super) fn serve<F>(
        api: &CoreApi,
        http: TcpListener,
        mut config: EdgeConfig,
        stop: F,
    ) -> impl Future<Output = anyhow::Result<()>> + use<F>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        config.in_process_core = Some(api.in_process());
        let draining = config.draining.clone();
        let on_drain = async move {
            stop.await;
            draining.store(true, std::sync::atomic::Ordering::SeqCst);
        };
        gateway_rest::serve(http, config, on_drain)
    }
}

/// A binary built without the REST edge (no `rest` feature): whatever asks for the REST API is
/// refused where its edge would be configured, before anything is bound, rather than the flag
/// being ignored and a gRPC-only core started in its place.
#[cfg(not(feature = "rest"))]
mod edge {
    use openclaw_runtime::rest_listener::EdgeArgs;
    use tokio::net::TcpListener;

    use crate::server::CoreApi;

    /// There is no edge to configure: no value of this type exists, so no REST side can start.
    pub(super) enum EdgeConfig {}

    pub(super) fn for_serve(_: &EdgeArgs) -> anyhow::Result<EdgeConfig> {
        Err(refusal(
            "--http-addr (OPENCLAW_HTTP_ADDR) asks `serve` for the REST API",
        ))
    }

    pub(super) fn for_dev() -> anyhow::Result<EdgeConfig> {
        Err(refusal(
            "`dev` (what `openclaw-gateway` runs without a command) serves the REST API",
        ))
    }

    pub(super) fn serve(
        _: &CoreApi,
        _: TcpListener,
        config: EdgeConfig,
        _: impl Future<Output = ()>,
    ) -> std::future::Ready<anyhow::Result<()>> {
        match config {}
    }

    fn refusal(asked: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "{asked}, but this openclaw-gateway was built without the REST edge (cargo feature \
             `rest`). Run `openclaw-gateway serve` (gRPC only) with `openclaw-rest --core-url \
             http://<this core's gRPC address>` beside it, or use a build with default features \
             (`cargo build -p openclaw-gateway`), which serves REST in this process."
        )
    }
}

async fn dev(mut args: DevArgs) -> anyhow::Result<()> {
    let edge_config = edge::for_dev()?;
    let mut telemetry = telemetry::init("openclaw-gateway", args.core.json_logs());
    let token_file = args.core.data_dir.join("internal-token");
    if args.core.internal_token.is_none() {
        args.core.internal_token = Some(local_secret(&token_file, || {
            format!("ocit_{}", uuid::Uuid::new_v4().simple())
        })?);
    }
    let gateway = server::build(&args.core).await?;
    // In dev everything listens on loopback; a taken gRPC or metrics port
    // falls back to a free one (the REST port is the one people paste).
    let grpc = bind_loopback(args.core.grpc_addr.port(), "gRPC").await?;
    metrics::recorder();
    let metrics_listener = bind_loopback(args.core.metrics_addr.port(), "metrics").await?;
    let http = TcpListener::bind(args.http_addr).await.with_context(|| {
        format!(
            "binding the REST address {} (set --http-addr to another port)",
            args.http_addr
        )
    })?;
    let grpc_addr = grpc.local_addr()?;
    let http_addr = http.local_addr()?;
    let key = dev_key(&gateway, &args.core.data_dir.join("dev-key")).await?;

    let metrics_addr = metrics_listener.local_addr()?;
    let shutdown = Shutdown::new();
    shutdown.on_signals();
    tokio::spawn(metrics::serve(
        metrics_listener,
        server::readiness_check(gateway.clone()),
        shutdown.wait(),
    ));
    let store = gateway.store.name();
    let simulated = gateway.models.any_simulated();
    let api = CoreApi::start(gateway).await?;

    let base = format!("http://{http_addr}");
    println!();
    println!("  OpenClaw Gateway is running (development mode)");
    println!("  REST API   {base}/api/v1      (OpenAPI: {base}/openapi.json)");
    println!("  dashboard  {base}/dashboard   (sign in with the internal token or your key)");
    println!("  gRPC core  {grpc_addr}");
    println!("  store      {store}");
    if simulated {
        println!("  models     OFFLINE SIMULATOR (set ZAI_API_KEY for real answers)");
    }
    println!("  internal   token in {}", token_file.display());
    println!("  metrics    http://{metrics_addr}/metrics");
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

    let rest = Some((http, edge_config));
    let outcome = shutdown
        .drain_within(
            run_replica(api, grpc, None, rest, &shutdown),
            args.core.drain_timeout(),
        )
        .await;
    telemetry.shutdown();
    outcome
}

/// Binds `127.0.0.1:port`, or a free loopback port when that one is taken.
async fn bind_loopback(port: u16, what: &str) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await {
        Ok(listener) => Ok(listener),
        Err(err) => {
            let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
            tracing::warn!(port, error = %err, fallback = %listener.local_addr()?, "the {what} port is taken; using a free one");
            Ok(listener)
        }
    }
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
    let generated = generate_key(
        "local development".into(),
        Vec::new(),
        Default::default(),
        Default::default(),
    );
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

#[cfg(all(test, not(feature = "rest")))]
mod tests {
    use clap::Parser as _;

    use super::{Cli, Command, edge};

    /// Built without the edge, the command line still takes every REST setting, and asking for
    /// the REST API is refused with what to run instead.
    #[test]
    fn without_the_edge_the_rest_api_is_refused_with_the_way_to_get_one() {
        let cli = Cli::try_parse_from([
            "openclaw-gateway",
            "serve",
            "--http-addr",
            "127.0.0.1:0",
            "--max-body-bytes",
            "2048",
            "--tls-cert",
            "cert.pem",
            "--tls-key",
            "key.pem",
        ])
        .expect("the REST settings parse as they do with the edge");
        let Some(Command::Serve(args)) = cli.command else {
            panic!("serve parsed as another command");
        };
        // No `else`: this build has no edge configuration to return, so only Err is possible.
        let Err(refused) = edge::for_serve(&args.edge);
        let refused = refused.to_string();
        for expected in [
            "--http-addr",
            "without the REST edge",
            "openclaw-rest",
            "default features",
        ] {
            assert!(refused.contains(expected), "{expected}: {refused}");
        }
        let Err(refused) = edge::for_dev();
        let refused = refused.to_string();
        for expected in ["`dev`", "without the REST edge", "openclaw-rest"] {
            assert!(refused.contains(expected), "{expected}: {refused}");
        }
    }
}
