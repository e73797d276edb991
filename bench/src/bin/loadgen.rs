//! The benchmark harness of `docs/benchmarks.md`: starts Redis, the fake upstream, the core,
//! the edge (and LiteLLM when given), drives every scenario open-loop at a sweep of rates,
//! repeats the whole run, and writes the medians as JSON, Markdown and an SVG chart.
//! `scripts/bench.sh` is the one command that builds and runs it.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use openclaw_bench::processes::Binaries;
use openclaw_bench::report;
use openclaw_bench::scenarios::{self, Plan};

#[derive(Parser)]
#[command(about = "Open-loop benchmark of the OpenClaw Gateway (docs/benchmarks.md)")]
struct Args {
    /// Where openclaw-gateway and openclaw-rest are (target/release, or target/debug for smoke).
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Whole runs; every figure reported is the median over them.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Requests per second of the sweep, in order; a sweep stops after the first saturated rate.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "250,500,1000,2000,3000,4000,6000"
    )]
    rates: Vec<f64>,
    /// Rates of the streaming scenario.
    #[arg(long, value_delimiter = ',', default_value = "100,400")]
    streaming_rates: Vec<f64>,
    /// Rates of the LiteLLM comparison (it saturates far below the gateway, so it starts lower).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "25,50,100,250,500,1000,2000"
    )]
    litellm_rates: Vec<f64>,
    /// Seconds of load per rate and target.
    #[arg(long, default_value_t = 3.0)]
    step_secs: f64,
    /// Most requests outstanding at once (the load generator's connection pool).
    #[arg(long, default_value_t = 512)]
    max_in_flight: usize,
    /// Only these scenarios (prefixes: s1, s2, s3, s4, s5, litellm, memory; s1c and s2c are
    /// scenarios 1 and 2 through a combined replica, included in s1 and s2).
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// LiteLLM's `litellm` executable (scripts/bench-litellm.sh --install prints it).
    #[arg(long)]
    litellm: Option<PathBuf>,
    /// Why LiteLLM is absent, for the document, when it is.
    #[arg(long)]
    litellm_missing: Option<String>,
    /// Streaming connections held open for the memory figure (0: skip).
    #[arg(long, default_value_t = 10_000)]
    streams: u64,
    /// Write the JSON here.
    #[arg(long, default_value = "docs/benchmarks.json")]
    json: PathBuf,
    /// Splice the generated tables into this Markdown file.
    #[arg(long, default_value = "docs/benchmarks.md")]
    markdown: PathBuf,
    /// Write the chart here.
    #[arg(long, default_value = "docs/benchmarks/latency-vs-throughput.svg")]
    svg: PathBuf,
    /// The command line to quote in the document.
    #[arg(long, default_value = "scripts/bench.sh")]
    command: String,
    /// Fail unless every scenario answered without errors (the CI smoke check).
    #[arg(long)]
    check: bool,
    /// Run without the stall probe (one sleeping real-time thread per CPU that notes when the
    /// machine itself stalls; see docs/benchmarks.md), e.g. to measure what the probe costs.
    #[arg(long)]
    no_stall_probe: bool,
}

fn shell(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU".to_string(), |s| s.trim().to_string());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or("?".into(), |kb| format!("{:.0} GiB", kb / 1024.0 / 1024.0));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{cores} cores ({model}), {memory} RAM, Linux {}",
        shell("uname", &["-r"])
    )
}

fn meta(args: &Args, runs: usize, elapsed: Duration) -> String {
    let litellm = match (&args.litellm, &args.litellm_missing) {
        (Some(path), _) => shell(&path.display().to_string(), &["--version"])
            .lines()
            .last()
            .unwrap_or("unknown")
            .to_string(),
        (None, Some(why)) => format!("not run: {why}"),
        (None, None) => "not run".into(),
    };
    format!(
        "Generated {} by `{}` in {:.0} s: {runs} run(s), every figure the median over them.\n\n\
         - Machine: {}; load generator, fake upstream, Redis, core and edge share it (nothing pinned).\n\
         - Versions: gateway {} (commit {}), {}, redis-server {}, LiteLLM {}.\n\
         - Load: open loop, constant rate, latency from each request's due time (coordinated omission corrected); {:.1} s per rate and target; at most {} requests in flight; rates {:?}.",
        shell("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        args.command,
        elapsed.as_secs_f64(),
        machine(),
        env!("CARGO_PKG_VERSION"),
        shell("git", &["rev-parse", "--short", "HEAD"]),
        shell("rustc", &["--version"]),
        shell("redis-server", &["--version"])
            .split_whitespace()
            .nth(2)
            .unwrap_or("?")
            .trim_start_matches("v="),
        litellm,
        args.step_secs,
        args.max_in_flight,
        args.rates,
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let work_dir = std::env::temp_dir().join(format!("openclaw-bench-{}", std::process::id()));
    let plan = Plan {
        binaries: Binaries::in_dir(&args.bin_dir)?,
        rates: args.rates.clone(),
        streaming_rates: args.streaming_rates.clone(),
        litellm_rates: args.litellm_rates.clone(),
        step: Duration::from_secs_f64(args.step_secs),
        max_in_flight: args.max_in_flight,
        only: args.only.clone(),
        litellm: args.litellm.clone(),
        streams: args.streams,
        work_dir: work_dir.clone(),
        stall_probe: !args.no_stall_probe,
    };
    let log = |line: &str| eprintln!("[{:>6.1}s] {line}", started.elapsed().as_secs_f64());
    let mut runs = Vec::new();
    for i in 0..args.repeats.max(1) {
        log(&format!("run {} of {}", i + 1, args.repeats.max(1)));
        runs.push(
            scenarios::run(&plan, &log)
                .await
                .with_context(|| format!("run {}", i + 1))?,
        );
    }
    let _ = std::fs::remove_dir_all(&work_dir);
    let summary = report::summarise(&runs);
    for verdict in &summary.verdicts {
        log(&format!(
            "{}: {} — {}",
            verdict.target,
            verdict.measured,
            if verdict.met { "met" } else { "MISSED" }
        ));
    }
    let meta = meta(&args, runs.len(), started.elapsed());
    for path in [&args.json, &args.markdown, &args.svg] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
    }
    std::fs::write(
        &args.json,
        serde_json::to_string_pretty(
            &serde_json::json!({"meta": meta, "summary": summary, "runs": runs}),
        )?,
    )?;
    let document =
        std::fs::read_to_string(&args.markdown).unwrap_or_else(|_| "# Benchmarks\n".into());
    std::fs::write(
        &args.markdown,
        report::splice(&document, &report::markdown(&summary, &meta)),
    )?;
    std::fs::write(&args.svg, report::chart(&summary))?;
    log(&format!(
        "wrote {}, {}, {}",
        args.json.display(),
        args.markdown.display(),
        args.svg.display()
    ));
    if args.check {
        let broken: Vec<String> = summary
            .rows
            .iter()
            .filter(|r| r.errors > 0.0 || r.achieved <= 0.0)
            .map(|r| {
                format!(
                    "{} {} at {}/s: {} errors, {:.0}/s",
                    r.scenario, r.target, r.rate, r.errors, r.achieved
                )
            })
            .collect();
        let streams_broken = summary
            .streams
            .as_ref()
            .is_some_and(|s| s.open < s.requested);
        if !broken.is_empty() || streams_broken || summary.rows.is_empty() {
            bail!(
                "the smoke run failed: {broken:?} streams: {:?}",
                summary.streams
            );
        }
        log("smoke check passed");
    }
    Ok(())
}
