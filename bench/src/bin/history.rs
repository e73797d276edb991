//! What a turn costs as a session's history grows (docs/benchmarks.md, docs/context-windows.md):
//! send-message latency (p50/p99) and the bytes Redis sends back per turn, on sessions holding
//! 10, 100 and 1,000 turns, with a model whose context window holds about 100 turns of them.
//! A turn reads only the tail of its history that fits the window, so from 100 turns on the
//! bytes per turn stay flat instead of growing with the history.
//! `scripts/bench.sh --history` builds and runs it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use openclaw_bench::processes::{self, Binaries, INTERNAL_TOKEN, free_port, spawn_listening};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "send-message cost against history length (docs/context-windows.md)")]
struct Args {
    /// Where openclaw-gateway and openclaw-rest are.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// History lengths (turns) to measure.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    turns: Vec<usize>,
    /// Sessions of each length; sends go round-robin over them.
    #[arg(long, default_value_t = 20)]
    sessions: usize,
    /// Sends measured at each length (one at a time).
    #[arg(long, default_value_t = 400)]
    sends: usize,
    /// The benchmark model's context window (tokens).
    #[arg(long, default_value_t = 8192)]
    context_window: u32,
    /// The completion each send reserves (maxTokens).
    #[arg(long, default_value_t = 256)]
    max_tokens: u32,
}

/// A stored user message: about 30 tokens (cl100k_base).
fn user_message(n: usize) -> String {
    format!(
        "Turn {n}: note that order {n} holds {} units at {} euros each, to ship on day {} from depot {}.",
        n % 17 + 1,
        n * 3 % 101,
        n % 28 + 1,
        n % 5
    )
}

/// A stored reply: about 25 tokens.
fn reply(n: usize) -> String {
    format!(
        "Recorded order {n}: the units, their price and the shipping day are noted for the invoice."
    )
}

fn history(turns: usize) -> Vec<Value> {
    let mut messages =
        vec![json!({"role": "system", "content": "You keep an order book. Be exact."})];
    for n in 0..turns {
        messages.push(json!({"role": "user", "content": user_message(n)}));
        messages.push(json!({"role": "assistant", "content": reply(n)}));
    }
    messages
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

async fn redis_output_bytes(redis: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("stats").query_async(redis).await?;
    info.lines()
        .find_map(|line| line.strip_prefix("total_net_output_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .context("INFO stats has no total_net_output_bytes")
}

struct Row {
    turns: usize,
    p50: Duration,
    p99: Duration,
    bytes_per_send: f64,
    whole_history_bytes: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let binaries = Binaries::in_dir(&args.bin_dir)?;
    let work_dir = std::env::temp_dir().join(format!("openclaw-history-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)?;
    let redis_process = processes::redis()?;
    let upstream = processes::upstream(&binaries)?;
    let providers = work_dir.join("providers.toml");
    std::fs::write(
        &providers,
        format!(
            r#"
defaultModel = "bench/history"

[[providers]]
name = "bench"
baseUrl = "http://127.0.0.1:{}/v1"
models = [{{ name = "history", upstream = "glm-4.7-flash", contextWindow = {} }}]
"#,
            upstream.port, args.context_window
        ),
    )?;
    let grpc_port = free_port()?;
    let mut core = Command::new(&binaries.core);
    core.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .env("OPENCLAW_GRPC_ADDR", format!("127.0.0.1:{grpc_port}"))
        .env(
            "OPENCLAW_METRICS_ADDR",
            format!("127.0.0.1:{}", free_port()?),
        )
        .env(
            "OPENCLAW_REDIS_URL",
            format!("redis://127.0.0.1:{}", redis_process.port),
        )
        .env("OPENCLAW_INTERNAL_TOKEN", INTERNAL_TOKEN)
        .env("OPENCLAW_PROVIDERS_FILE", &providers)
        .env("OPENCLAW_DATA_DIR", &work_dir)
        .stderr(Stdio::null());
    let core = spawn_listening("core", core, grpc_port, Duration::from_secs(30))?;
    let edge = processes::edge(&binaries, core.port)?;
    let base = format!("http://127.0.0.1:{}", edge.port);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    // Ready: the edge reaches the core.
    let started = Instant::now();
    while !http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the edge never became ready");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let created: Value = http
        .post(format!("{base}/api/v1/keys"))
        .bearer_auth(INTERNAL_TOKEN)
        .json(&json!({
            "name": "history benchmark",
            "limits": {
                "requestsPerMinute": 1_000_000_000u64,
                "tokensPerMinute": 1_000_000_000_000u64,
                "contextTokensPerMinute": 1_000_000_000_000u64,
            }
        }))
        .send()
        .await?
        .json()
        .await?;
    let key = created["data"]["key"]
        .as_str()
        .with_context(|| format!("creating the benchmark key: {created}"))?
        .to_string();
    let mut redis = redis::Client::open(format!("redis://127.0.0.1:{}", redis_process.port))?
        .get_multiplexed_async_connection()
        .await?;

    let mut rows = Vec::new();
    for &turns in &args.turns {
        let body = json!({"model": "bench/history", "messages": history(turns), "maxTokens": args.max_tokens});
        let mut sessions = Vec::new();
        for _ in 0..args.sessions {
            let created: Value = http
                .post(format!("{base}/api/v1/sessions"))
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await?
                .json()
                .await?;
            let id = created["data"]["sessionId"]
                .as_str()
                .with_context(|| format!("creating a session: {created}"))?;
            sessions.push(id.to_string());
        }
        // What reading the whole history (the turn's read before bounded tails) returns.
        let pattern = format!("oc:s:{{*/{}}}:msgs", sessions[0]);
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query_async(&mut redis)
            .await?;
        let list = keys.first().context("the session's history list")?;
        let whole: Vec<String> = redis::cmd("LRANGE")
            .arg(list)
            .arg(0)
            .arg(-1)
            .query_async(&mut redis)
            .await?;
        let whole_history_bytes = whole.iter().map(|m| m.len() as u64).sum();
        let send = |session: String, n: usize| {
            let http = http.clone();
            let url = format!("{base}/api/v1/sessions/{session}/messages");
            let key = key.clone();
            async move {
                let started = Instant::now();
                let response = http
                    .post(url)
                    .bearer_auth(key)
                    .json(
                        &json!({"message": {"role": "user", "content": user_message(100_000 + n)}}),
                    )
                    .send()
                    .await?;
                let status = response.status();
                let value: Value = response.json().await?;
                if !status.is_success() {
                    bail!("a send failed: {status} {value}");
                }
                Ok::<_, anyhow::Error>((started.elapsed(), value))
            }
        };
        // Warm up: one send per session.
        for (n, session) in sessions.iter().enumerate() {
            send(session.clone(), n).await?;
        }
        let before = redis_output_bytes(&mut redis).await?;
        let mut latencies = Vec::with_capacity(args.sends);
        for n in 0..args.sends {
            let (took, _) = send(sessions[n % sessions.len()].clone(), n).await?;
            latencies.push(took);
        }
        let after = redis_output_bytes(&mut redis).await?;
        latencies.sort();
        let row = Row {
            turns,
            p50: percentile(&latencies, 0.50),
            p99: percentile(&latencies, 0.99),
            // The reply to one INFO command (about 1.3 KB) is in the delta too: 3 bytes a send.
            bytes_per_send: after.saturating_sub(before) as f64 / args.sends as f64,
            whole_history_bytes,
        };
        println!(
            "{} turns: p50 {:.2} ms, p99 {:.2} ms, Redis bytes out per send {:.0}, whole history {} bytes",
            row.turns,
            row.p50.as_secs_f64() * 1000.0,
            row.p99.as_secs_f64() * 1000.0,
            row.bytes_per_send,
            row.whole_history_bytes
        );
        rows.push(row);
    }
    println!();
    println!(
        "| turns stored | send-message p50 ms | p99 ms | Redis bytes out per send | the whole history (bytes) |"
    );
    println!("|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {:.2} | {:.2} | {:.0} | {} |",
            row.turns,
            row.p50.as_secs_f64() * 1000.0,
            row.p99.as_secs_f64() * 1000.0,
            row.bytes_per_send,
            row.whole_history_bytes
        );
    }
    println!(
        "\ncontext window {} tokens, maxTokens {}, {} sessions per length, {} sends one at a time",
        args.context_window, args.max_tokens, args.sessions, args.sends
    );
    drop((edge, core, upstream, redis_process));
    let _ = std::fs::remove_dir_all(&work_dir);
    Ok(())
}
