//! The benchmark harness of `docs/benchmarks.md`: starts Redis, the fake upstream, the core,
//! the edge (and LiteLLM when given), drives every scenario open-loop at a sweep of rates,
//! repeats the whole run, and writes the medians as JSON, Markdown and an SVG chart.
//! `scripts/bench.sh` is the one command that builds and runs it.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use openclaw_bench::oha::Oha;
use openclaw_bench::processes::Binaries;
use openclaw_bench::report;
use openclaw_bench::scenarios::{self, Plan, Run};

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
    /// oha's executable (scripts/bench.sh installs a pinned version under target/tools): runs it
    /// beside our generator on scenario 2, open loop at every rate of the sweep (against the fake
    /// upstream alone, its own baseline, and then the gateway) and closed loop once per topology.
    /// Without it oha is not run, and the report says so.
    #[arg(long)]
    oha: Option<PathBuf>,
    /// Why oha is absent, for the document, when it is.
    #[arg(long)]
    oha_missing: Option<String>,
    /// oha's connections (`-c`), open and closed loop.
    #[arg(long, default_value_t = 64)]
    oha_connections: usize,
    /// The instruction counts of `scripts/profile.sh callgrind`, printed beside the tables when
    /// the file exists.
    #[arg(long, default_value = "docs/benchmarks/callgrind.md")]
    callgrind: PathBuf,
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
    /// Measure nothing: write the report again from the runs of this JSON (as loadgen wrote it,
    /// its meta line included), e.g. after a change to the report.
    #[arg(long)]
    from_json: Option<PathBuf>,
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

/// The CPU as `/proc/cpuinfo` names it: model name, then family, model, stepping, microcode and
/// clock (a VM often shows only a vendor's generic name).
fn cpu() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .take_while(|l| !l.trim().is_empty())
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let mut details = Vec::new();
    for (name, label) in [
        ("cpu family", "family"),
        ("model", "model"),
        ("stepping", "stepping"),
        ("microcode", "microcode"),
    ] {
        if let Some(value) = field(name) {
            details.push(format!("{label} {value}"));
        }
    }
    if let Some(mhz) = field("cpu MHz").and_then(|v| v.parse::<f64>().ok()) {
        details.push(format!("{mhz:.0} MHz"));
    }
    let model = field("model name").unwrap_or_else(|| "unknown CPU".into());
    if details.is_empty() {
        model
    } else {
        format!("{model}: {}", details.join(", "))
    }
}

/// This boot: its id (`/proc/sys/kernel/random/boot_id`) and how long it had been up.
fn boot() -> String {
    let id: String = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map_or("unknown".into(), |s| s.trim().chars().take(8).collect());
    let up = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or("?".into(), |s| format!("{:.0} min", s / 60.0));
    format!("boot {id} (up {up} when the run ended)")
}

fn machine() -> String {
    let model = cpu();
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
        "{cores} cores ({model}), {memory} RAM, Linux {} (`uname -r`), {}",
        shell("uname", &["-r"]),
        boot()
    )
}

fn meta(args: &Args, oha: Option<&Oha>, runs: usize, elapsed: Duration) -> String {
    let litellm = match (&args.litellm, &args.litellm_missing) {
        (Some(path), _) => shell(&path.display().to_string(), &["--version"])
            .lines()
            .last()
            .unwrap_or("unknown")
            .to_string(),
        (None, Some(why)) => format!("not run: {why}"),
        (None, None) => "not run".into(),
    };
    let oha = match (oha, &args.oha_missing) {
        (Some(oha), _) => format!(
            "oha {} (`{}`) beside our generator on scenario 2: open loop at every rate (`-q <rate> --latency-correction -c {}`), against the fake upstream alone and then the gateway (oha's overhead is the one minus the other), and closed loop (`-c {}`, no rate limit), each {:.1} s",
            oha.version,
            oha.path.display(),
            oha.connections,
            oha.connections,
            args.step_secs
        ),
        (None, Some(why)) => format!("oha not run: {why}"),
        (None, None) => "oha not run (no `--oha`)".into(),
    };
    format!(
        "Generated {} by `{}` in {:.0} s: {runs} run(s), every figure the median over them.\n\n\
         - Machine: {}; load generator, fake upstream, Redis, core and edge share it (nothing pinned).\n\
         - Versions: gateway {} (commit {}), {}, redis-server {}, LiteLLM {}.\n\
         - Load: open loop, constant rate, latency from each request's due time (coordinated omission corrected); {:.1} s per rate and target; at most {} requests in flight; rates {:?}.\n\
         - Second load generator: {oha}.",
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

/// Every run of the plan the arguments describe.
async fn measure(args: &Args, oha: Option<&Oha>, log: &dyn Fn(&str)) -> anyhow::Result<Vec<Run>> {
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
        oha: oha.cloned(),
    };
    let mut runs = Vec::new();
    for i in 0..args.repeats.max(1) {
        log(&format!("run {} of {}", i + 1, args.repeats.max(1)));
        runs.push(
            scenarios::run(&plan, log)
                .await
                .with_context(|| format!("run {}", i + 1))?,
        );
    }
    let _ = std::fs::remove_dir_all(&work_dir);
    Ok(runs)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let oha = match &args.oha {
        Some(path) => Some(
            Oha::new(path, args.oha_connections)
                .with_context(|| format!("--oha {}", path.display()))?,
        ),
        None => None,
    };
    let log = |line: &str| eprintln!("[{:>6.1}s] {line}", started.elapsed().as_secs_f64());
    let (runs, meta) = match &args.from_json {
        Some(path) => {
            let value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)
                .with_context(|| format!("reading {}", path.display()))?;
            let runs: Vec<Run> = serde_json::from_value(value["runs"].clone())
                .with_context(|| format!("the runs of {}", path.display()))?;
            let meta = value["meta"].as_str().unwrap_or_default().to_string();
            log(&format!(
                "{} run(s) read from {}, nothing measured",
                runs.len(),
                path.display()
            ));
            (runs, meta)
        }
        None => {
            let runs = measure(&args, oha.as_ref(), &log).await?;
            let meta = meta(&args, oha.as_ref(), runs.len(), started.elapsed());
            (runs, meta)
        }
    };
    let summary = report::summarise(&runs);
    for verdict in &summary.verdicts {
        log(&format!(
            "{}: {} — {}",
            verdict.target,
            verdict.measured,
            if verdict.met { "met" } else { "MISSED" }
        ));
    }
    let callgrind = std::fs::read_to_string(&args.callgrind)
        .ok()
        .and_then(|text| {
            let path = args.callgrind.display().to_string();
            let commit = shell(
                "git",
                &["log", "-1", "--format=%h %cs", "--", path.as_str()],
            );
            report::parse_callgrind(&path, &text, (commit != "unknown").then_some(commit))
        });
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
        report::splice(
            &document,
            &report::markdown(&summary, &meta, callgrind.as_ref()),
        ),
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
