//! Standalone Redis against a Redis Cluster under the same gateway (docs/capacity.md): latency
//! and throughput of send-message and `/v1/chat/completions` on each, the Redis commands per
//! request, and what one Redis node sustains. `scripts/bench.sh --redis-topologies` builds and
//! runs it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use openclaw_bench::processes::Binaries;
use openclaw_bench::redis_topology::Layout;
use openclaw_bench::scenarios::Plan;
use openclaw_bench::topologies::{self, Comparison};

#[derive(Parser)]
#[command(about = "Standalone Redis against a Redis Cluster under the gateway (docs/capacity.md)")]
struct Args {
    /// Where openclaw-gateway and openclaw-rest are.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Whole runs (each: every layout in turn); every run is reported.
    #[arg(long, default_value_t = 2)]
    repeats: usize,
    /// Requests per second of the latency steps.
    #[arg(long, value_delimiter = ',', default_value = "1000,2000")]
    rates: Vec<f64>,
    /// Seconds of load per rate and target.
    #[arg(long, default_value_t = 3.0)]
    step_secs: f64,
    /// Primaries of the cluster (no replicas).
    #[arg(long, default_value_t = 3)]
    primaries: usize,
    /// Rate of the windows that count Redis commands per request.
    #[arg(long, default_value_t = 300.0)]
    count_rate: f64,
    /// Seconds of each counting window.
    #[arg(long, default_value_t = 3.0)]
    count_secs: f64,
    /// `redis-benchmark` repetitions of each shard-capacity setting (0: none).
    #[arg(long, default_value_t = 2)]
    capacity_runs: usize,
    /// Write the JSON here.
    #[arg(long, default_value = "docs/benchmarks/redis-topologies.json")]
    json: PathBuf,
    /// Write the Markdown here.
    #[arg(long, default_value = "docs/benchmarks/redis-topologies.md")]
    markdown: PathBuf,
    /// Only write the Markdown again from a JSON this program wrote (no measurement).
    #[arg(long)]
    render: Option<PathBuf>,
    /// The command line to quote.
    #[arg(long, default_value = "scripts/bench.sh --redis-topologies")]
    command: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(json) = &args.render {
        let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(json)?)?;
        let runs: Vec<Vec<topologies::LayoutRun>> = serde_json::from_value(saved["runs"].clone())?;
        let meta = saved["meta"].as_str().unwrap_or_default();
        let markdown = topologies::markdown(&runs, meta);
        std::fs::write(
            &args.markdown,
            format!("# Standalone Redis against a Redis Cluster (generated)\n\n{markdown}"),
        )?;
        println!("{markdown}");
        return Ok(());
    }
    let started = Instant::now();
    let work_dir = std::env::temp_dir().join(format!("openclaw-topologies-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)?;
    let plan = Plan {
        binaries: Binaries::in_dir(&args.bin_dir)?,
        rates: args.rates.clone(),
        streaming_rates: Vec::new(),
        litellm_rates: Vec::new(),
        step: Duration::from_secs_f64(args.step_secs),
        max_in_flight: 512,
        only: None,
        litellm: None,
        streams: 0,
        work_dir: work_dir.clone(),
        stall_probe: true,
        oha: None,
    };
    let comparison = Comparison {
        layouts: vec![Layout::Standalone, Layout::Cluster(args.primaries)],
        count_rate: args.count_rate,
        count_window: Duration::from_secs_f64(args.count_secs),
        idle_window: Duration::from_secs(3),
        capacity_runs: args.capacity_runs,
    };
    let log = |line: &str| eprintln!("[{:>6.1}s] {line}", started.elapsed().as_secs_f64());
    let mut runs = Vec::new();
    for i in 0..args.repeats.max(1) {
        log(&format!("run {} of {}", i + 1, args.repeats.max(1)));
        runs.push(
            topologies::run(&plan, &comparison, &log)
                .await
                .with_context(|| format!("run {}", i + 1))?,
        );
    }
    let _ = std::fs::remove_dir_all(&work_dir);
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let meta = format!(
        "Generated {date} by `{}` in {:.0} s (commit {commit}): {} run(s), each: standalone Redis, then a {}-primary Redis Cluster, under one core, one edge, one combined replica (idle) and the fake upstream; {:.1} s per rate and target; commands counted at {}/s for {:.1} s per endpoint.",
        args.command,
        started.elapsed().as_secs_f64(),
        runs.len(),
        args.primaries,
        args.step_secs,
        args.count_rate,
        args.count_secs,
    );
    let markdown = topologies::markdown(&runs, &meta);
    println!("{markdown}");
    for path in [&args.json, &args.markdown] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
    }
    std::fs::write(
        &args.json,
        serde_json::to_string_pretty(&serde_json::json!({"meta": meta, "runs": runs}))?,
    )?;
    std::fs::write(
        &args.markdown,
        format!("# Standalone Redis against a Redis Cluster (generated)\n\n{markdown}"),
    )?;
    log(&format!(
        "wrote {}, {}",
        args.json.display(),
        args.markdown.display()
    ));
    Ok(())
}
