//! Admission decisions per second and decision latency of the shared rate
//! limiter against a local `redis-server` (started here on a free port), for
//! 1 key and for 10,000 distinct keys.
//!
//! Run: `cargo bench --bench limits_admission` (prints figures; asserts nothing).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use openclaw_gateway::limits::{Charge, Decision, LimitBackend, Quota, RedisLimits};
use openclaw_gateway::store::{RedisConfig, SharedConnection};

const QUOTA: Quota = Quota {
    requests: u64::MAX / 4,
    tokens: u64::MAX / 4,
    context: u64::MAX / 4,
};
const CHARGE: Charge = Charge {
    tokens: 120,
    context: 20,
    cost_micros: 0,
};

struct Redis(std::process::Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> (Redis, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Redis(child), port)
}

async fn run(
    limits: Arc<RedisLimits>,
    keys: usize,
    concurrency: usize,
    total: usize,
) -> (f64, Histogram<u64>) {
    let started = Instant::now();
    let per_task = total / concurrency;
    let tasks = (0..concurrency).map(|t| {
        let limits = limits.clone();
        tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).unwrap();
            for i in 0..per_task {
                let key = format!("bench-{}", (t * per_task + i) % keys);
                let reservation = format!("{t}-{i}");
                let begun = Instant::now();
                let decision = limits
                    .admit(&key, QUOTA, CHARGE, &reservation)
                    .await
                    .unwrap();
                hist.record(begun.elapsed().as_micros() as u64).unwrap();
                assert!(matches!(decision, Decision::Admitted(_)));
            }
            hist
        })
    });
    let mut hist = Histogram::<u64>::new(3).unwrap();
    for task in futures::future::join_all(tasks).await {
        hist.add(task.unwrap()).unwrap();
    }
    let rate = (per_task * concurrency) as f64 / started.elapsed().as_secs_f64();
    (rate, hist)
}

#[tokio::main]
async fn main() {
    let (_redis, port) = start_redis();
    let conn = SharedConnection::open(&RedisConfig::standalone(
        format!("redis://127.0.0.1:{port}"),
        Duration::from_secs(1),
    ))
    .await
    .unwrap();
    let limits = Arc::new(RedisLimits::new(conn));
    // Warm up: load the script, fill the connection.
    run(limits.clone(), 1, 8, 2_000).await;

    println!("rate-limit admission against redis-server on loopback (one multiplexed connection)");
    println!("| keys | concurrency | decisions/s | p50 µs | p99 µs | p99.9 µs |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for keys in [1, 10_000] {
        for concurrency in [1, 64] {
            let total = if concurrency == 1 { 10_000 } else { 100_000 };
            let (rate, hist) = run(limits.clone(), keys, concurrency, total).await;
            println!(
                "| {keys} | {concurrency} | {rate:.0} | {} | {} | {} |",
                hist.value_at_quantile(0.50),
                hist.value_at_quantile(0.99),
                hist.value_at_quantile(0.999)
            );
        }
    }
}
