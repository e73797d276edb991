//! Scheduling lag of cron jobs: how long after its due time a run starts (both
//! read from Redis's clock), with 10,000 `every` jobs spread over their period,
//! on 3 core replicas (real `openclaw-gateway serve` processes) sharing a local
//! `redis-server` started here. Also checks the run history for duplicates and
//! gaps, the exactly-once property under load.
//!
//! Run: `cargo bench --bench cron_lag` (prints figures; asserts nothing).
//! Knobs: `CRON_BENCH_JOBS` (10000), `CRON_BENCH_EVERY_MS` (30000),
//! `CRON_BENCH_SECONDS` (measured time, 60), `CRON_BENCH_REPLICAS` (3).

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use hdrhistogram::Histogram;
use openclaw_gateway::proto::cron_service_client::CronServiceClient;
use openclaw_gateway::proto::{CreateJobRequest, ListRunsRequest, Payload, Schedule};
use tonic::transport::Channel;

const TOKEN: &str = "bench-internal-token-0123456789";

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_for(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn authorized<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {TOKEN}").parse().expect("ascii"),
    );
    request
}

fn millis(ts: Option<&prost_types::Timestamp>) -> Option<i64> {
    ts.map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

#[tokio::main]
async fn main() {
    let jobs = env_or("CRON_BENCH_JOBS", 10_000) as usize;
    let every_ms = env_or("CRON_BENCH_EVERY_MS", 30_000) as i64;
    let measured = Duration::from_secs(env_or("CRON_BENCH_SECONDS", 60));
    let replicas = env_or("CRON_BENCH_REPLICAS", 3) as usize;

    let redis_port = free_port();
    let _redis = Guard(
        Command::new("redis-server")
            .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed"),
    );
    wait_for(redis_port);
    let data = tempfile::tempdir().expect("temp dir");
    let mut cores = Vec::new();
    let mut ports = Vec::new();
    for i in 0..replicas {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_openclaw-gateway"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .env("OPENCLAW_GRPC_ADDR", format!("127.0.0.1:{port}"))
            .env(
                "OPENCLAW_METRICS_ADDR",
                format!("127.0.0.1:{}", free_port()),
            )
            .env(
                "OPENCLAW_REDIS_URL",
                format!("redis://127.0.0.1:{redis_port}"),
            )
            .env("OPENCLAW_INTERNAL_TOKEN", TOKEN)
            .env("OPENCLAW_REPLICA_ID", format!("bench-core-{i}"))
            .env("OPENCLAW_DATA_DIR", data.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("start openclaw-gateway serve");
        cores.push(Guard(child));
        ports.push(port);
    }
    for port in &ports {
        wait_for(*port);
    }
    let channel = Channel::balance_list(
        ports
            .iter()
            .map(|p| Channel::from_shared(format!("http://127.0.0.1:{p}")).expect("url")),
    );
    let client = CronServiceClient::new(channel);

    // Due times spread evenly over one period, starting a few seconds from now
    // (after every job exists), so the load is steady.
    let now = chrono::Utc::now().timestamp_millis();
    let first_due = now + 5_000 + (jobs as i64 / 2_000) * 1_000;
    let started = Instant::now();
    let ids: Vec<String> = futures::stream::iter(0..jobs)
        .map(|i| {
            let mut client = client.clone();
            async move {
                let request = CreateJobRequest {
                    name: format!("bench-{i}"),
                    schedule: Some(Schedule {
                        kind: "every".into(),
                        every_ms: Some(every_ms),
                        anchor_ms: Some(first_due + (i as i64 * every_ms) / jobs as i64),
                        ..Default::default()
                    }),
                    payload: Some(Payload {
                        kind: "systemEvent".into(),
                        text: Some(format!("bench job {i}")),
                        ..Default::default()
                    }),
                    enabled: Some(true),
                };
                client
                    .create_job(authorized(request))
                    .await
                    .expect("create job")
                    .into_inner()
                    .id
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    println!(
        "created {} jobs (every {} ms) in {:.1} s on {replicas} replicas",
        ids.len(),
        every_ms,
        started.elapsed().as_secs_f64()
    );
    let wait_until_first = (first_due - chrono::Utc::now().timestamp_millis()).max(0) as u64;
    tokio::time::sleep(Duration::from_millis(wait_until_first) + measured).await;
    let window_end = first_due + measured.as_millis() as i64;

    let mut lag = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).expect("histogram");
    let (mut ok, mut skipped, mut other, mut duplicates, mut gaps) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let histories: Vec<Vec<openclaw_gateway::proto::Run>> = futures::stream::iter(ids.clone())
        .map(|id| {
            let mut client = client.clone();
            async move {
                client
                    .list_runs(authorized(ListRunsRequest {
                        job_id: id,
                        page_size: 500,
                        page_token: String::new(),
                    }))
                    .await
                    .expect("list runs")
                    .into_inner()
                    .runs
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for runs in histories {
        let mut due: Vec<i64> = Vec::new();
        for run in runs {
            let Some(scheduled) = millis(run.scheduled_at.as_ref()) else {
                continue;
            };
            if scheduled >= window_end {
                continue; // outside the measured window
            }
            due.push(scheduled);
            match run.status.as_str() {
                "ok" => {
                    ok += 1;
                    if let Some(started) = millis(run.started_at.as_ref()) {
                        lag.saturating_record((started - scheduled).max(1) as u64);
                    }
                }
                "skipped" => skipped += 1,
                _ => other += 1,
            }
        }
        due.sort_unstable();
        for pair in due.windows(2) {
            if pair[1] == pair[0] {
                duplicates += 1;
            } else if pair[1] - pair[0] != every_ms {
                gaps += 1;
            }
        }
    }
    println!(
        "measured {:.0} s: {ok} runs ok, {skipped} skipped, {other} other; {duplicates} duplicate due times, {gaps} gaps",
        measured.as_secs_f64()
    );
    println!(
        "scheduling lag (due time -> start, Redis clock): p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
        lag.value_at_quantile(0.50),
        lag.value_at_quantile(0.90),
        lag.value_at_quantile(0.99),
        lag.max()
    );
}
