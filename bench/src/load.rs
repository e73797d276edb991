//! Open-loop, constant-rate load. Request `i` is due at `start + i / rate`, whatever happened to
//! the earlier ones; its latency runs from that due time, not from when it was sent, so time
//! spent queueing behind a slow system is counted (the coordinated-omission correction of wrk2
//! and vegeta). A dedicated thread keeps the schedule (`std::thread::sleep` is precise to tens
//! of microseconds; tokio's timer wheel rounds to a millisecond), and at most `max_in_flight`
//! requests are outstanding: when they are all taken the schedule waits, and the wait shows in
//! the latency of every request that was due meanwhile.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::Semaphore;

/// One request's extra figures (streaming): when each token arrived.
#[derive(Debug, Default)]
pub struct Sample {
    pub tokens_at: Vec<Instant>,
}

pub type Call = Pin<Box<dyn Future<Output = Result<Sample, String>> + Send>>;

/// A histogram of microseconds, up to 100 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds")
}

/// What one constant-rate run measured.
pub struct Outcome {
    pub rate: f64,
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Successful requests, µs from due time to the end of the response.
    pub latency: Histogram<u64>,
    /// Streaming: µs from due time to the first token.
    pub first_token: Histogram<u64>,
    /// Streaming: µs between consecutive tokens.
    pub token_gap: Histogram<u64>,
    /// The first request's due time.
    pub started: Instant,
    /// From the first due time to the last answer.
    pub elapsed: Duration,
    /// The slowest successful requests, slowest first. Where in a run they fall tells a stall
    /// (one moment) from a slow path (spread out); how late they were sent tells a stall of the
    /// load generator from one of the target.
    pub slowest: Vec<Slow>,
    /// Every successful request's due time and the end of its response.
    pub spans: Vec<(Instant, Instant)>,
}

/// One of the slowest requests of a run.
#[derive(Debug, Clone, Copy)]
pub struct Slow {
    /// When it was due, from the run's start.
    pub due: Duration,
    /// From its due time to the end of its response.
    pub latency: Duration,
    /// From its due time to when the load generator handed it to the runtime.
    pub sent_late: Duration,
}

/// How many of the slowest requests an [`Outcome`] names.
const SLOWEST: usize = 5;

impl Outcome {
    pub fn achieved(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-3)
    }
}

struct Collected {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    latency: Histogram<u64>,
    first_token: Histogram<u64>,
    token_gap: Histogram<u64>,
    last: Instant,
    slowest: Vec<Slow>,
    spans: Vec<(Instant, Instant)>,
}

/// Runs `call(i, due)` at `rate` per second for `duration`; waits up to `drain` for the last
/// answers (those still missing count as errors).
pub async fn open_loop<F>(
    rate: f64,
    duration: Duration,
    max_in_flight: usize,
    drain: Duration,
    call: F,
) -> Outcome
where
    F: Fn(u64, Instant) -> Call + Send + Sync + 'static,
{
    let total = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    let start = Instant::now() + Duration::from_millis(20);
    let collected = Arc::new(Mutex::new(Collected {
        ok: 0,
        errors: 0,
        first_error: None,
        latency: histogram(),
        first_token: histogram(),
        token_gap: histogram(),
        last: start,
        slowest: Vec::with_capacity(SLOWEST + 1),
        spans: Vec::with_capacity(usize::try_from(total).unwrap_or(0)),
    }));
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let handle = tokio::runtime::Handle::current();
    let scheduler = {
        let collected = collected.clone();
        let permits = permits.clone();
        std::thread::spawn(move || {
            for i in 0..total {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let Ok(permit) = handle.block_on(permits.clone().acquire_owned()) else {
                    return;
                };
                let request = call(i, due);
                let collected = collected.clone();
                let sent_late = due.elapsed();
                handle.spawn(async move {
                    let result = request.await;
                    let done = Instant::now();
                    let micros = |d: Duration| (d.as_micros() as u64).max(1);
                    let mut c = collected.lock().unwrap_or_else(|e| e.into_inner());
                    match result {
                        Ok(sample) => {
                            c.ok += 1;
                            c.spans.push((due, done));
                            c.latency.saturating_record(micros(done - due));
                            let latency = done - due;
                            if c.slowest.len() < SLOWEST
                                || c.slowest.last().is_some_and(|s| s.latency < latency)
                            {
                                c.slowest.push(Slow {
                                    due: due - start,
                                    latency,
                                    sent_late,
                                });
                                c.slowest.sort_by_key(|s| std::cmp::Reverse(s.latency));
                                c.slowest.truncate(SLOWEST);
                            }
                            if let Some(first) = sample.tokens_at.first() {
                                c.first_token.saturating_record(micros(
                                    first.saturating_duration_since(due),
                                ));
                            }
                            for pair in sample.tokens_at.windows(2) {
                                c.token_gap.saturating_record(micros(
                                    pair[1].saturating_duration_since(pair[0]),
                                ));
                            }
                        }
                        Err(error) => {
                            c.errors += 1;
                            c.first_error.get_or_insert(error);
                        }
                    }
                    if done > c.last {
                        c.last = done;
                    }
                    drop(permit);
                });
            }
        })
    };
    let _ = tokio::task::spawn_blocking(move || scheduler.join()).await;
    let _ = tokio::time::timeout(drain, permits.acquire_many(max_in_flight as u32)).await;
    let mut c = collected.lock().unwrap_or_else(|e| e.into_inner());
    let missing = total.saturating_sub(c.ok + c.errors);
    Outcome {
        rate,
        sent: total,
        ok: c.ok,
        errors: c.errors + missing,
        first_error: c.first_error.clone().or_else(|| {
            (missing > 0).then(|| format!("{missing} requests unanswered after the drain"))
        }),
        latency: c.latency.clone(),
        first_token: c.first_token.clone(),
        token_gap: c.token_gap.clone(),
        started: start,
        elapsed: c.last.saturating_duration_since(start),
        slowest: c.slowest.clone(),
        spans: std::mem::take(&mut c.spans),
    }
}
