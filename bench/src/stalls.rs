//! Stalls of the machine itself, seen by a probe that does nothing but sleep.
//!
//! One thread per CPU, pinned to it and (where the process may) real-time (`SCHED_FIFO`), sleeps
//! 1 ms at a time and notes how late it wakes. A real-time thread preempts every ordinary process
//! the moment its timer fires, so no load generator, gateway, Redis or upstream can hold it back;
//! when it wakes a millisecond or more late, nothing in user space ran on that CPU meanwhile: the
//! hypervisor had taken the virtual CPU away, or the kernel ran something it would not interrupt
//! (a kernel thread such as DAMON's `kdamond`, an interrupt). A request in flight during such a
//! window waited for it whatever it was talking to, so the window says how much of a step's tail
//! belongs to the machine and not to the system under test.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the probe sleeps at a time.
const PERIOD: Duration = Duration::from_millis(1);
/// How late a wake-up must be to count as a stall.
pub const STALL: Duration = Duration::from_millis(1);

/// A window in which one CPU ran no user-space thread.
#[derive(Debug, Clone, Copy)]
pub struct Stall {
    pub cpu: usize,
    /// When the probe should have woken.
    pub from: Instant,
    /// When it did.
    pub until: Instant,
}

impl Stall {
    pub fn length(&self) -> Duration {
        self.until - self.from
    }

    /// Whether the stall falls (partly) between `start` and `end`.
    pub fn overlaps(&self, start: Instant, end: Instant) -> bool {
        self.from < end && start < self.until
    }
}

/// The running probe; [`Probe::stop`] returns what it saw.
pub struct Probe {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    seen: Arc<Mutex<Vec<Stall>>>,
    /// Whether the threads run real-time (they do when the process may set `SCHED_FIFO`).
    pub realtime: bool,
}

impl Probe {
    pub fn start() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let realtime = Arc::new(AtomicBool::new(true));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let threads = (0..cpus)
            .map(|cpu| {
                let (stop, seen, realtime, ready) = (
                    stop.clone(),
                    seen.clone(),
                    realtime.clone(),
                    ready_tx.clone(),
                );
                std::thread::Builder::new()
                    .name(format!("stall-probe-{cpu}"))
                    .spawn(move || {
                        if !pin_realtime(cpu) {
                            realtime.store(false, Ordering::Relaxed);
                        }
                        let _ = ready.send(());
                        watch(cpu, &stop, &seen);
                    })
                    .expect("spawn a stall probe thread")
            })
            .collect::<Vec<_>>();
        for _ in 0..cpus {
            let _ = ready_rx.recv();
        }
        Self {
            stop,
            threads,
            seen,
            realtime: realtime.load(Ordering::Relaxed),
        }
    }

    pub fn stop(self) -> Vec<Stall> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            let _ = thread.join();
        }
        let mut seen = std::mem::take(&mut *self.seen.lock().unwrap_or_else(|e| e.into_inner()));
        seen.sort_by_key(|s| s.from);
        seen
    }
}

fn watch(cpu: usize, stop: &AtomicBool, seen: &Mutex<Vec<Stall>>) {
    while !stop.load(Ordering::Relaxed) {
        let due = Instant::now() + PERIOD;
        std::thread::sleep(PERIOD);
        let woke = Instant::now();
        if woke.saturating_duration_since(due) >= STALL {
            seen.lock().unwrap_or_else(|e| e.into_inner()).push(Stall {
                cpu,
                from: due,
                until: woke,
            });
        }
    }
}

/// Pins the calling thread to `cpu` and makes it real-time; false where either is refused.
fn pin_realtime(cpu: usize) -> bool {
    // SAFETY: plain system calls on the calling thread with initialised arguments.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let pinned = libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) == 0;
        let param = libc::sched_param { sched_priority: 1 };
        let realtime = libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0;
        pinned && realtime
    }
}

/// What the probe saw during one step, and the latency of the requests none of it touched.
pub struct Seen {
    pub stalls: Vec<Stall>,
    /// Requests in flight (from due time to answer) during a stall.
    pub hit: u64,
    /// The latency, µs, of every other request.
    pub clear: hdrhistogram::Histogram<u64>,
}

/// Sorts `spans` (due time, end of answer) by whether a stall between `start` and `end` touched
/// them.
pub fn split(
    mut stalls: Vec<Stall>,
    start: Instant,
    end: Instant,
    spans: &[(Instant, Instant)],
) -> Seen {
    stalls.retain(|s| s.overlaps(start, end));
    let mut clear = crate::load::histogram();
    let mut hit = 0;
    for &(due, done) in spans {
        if stalls.iter().any(|s| s.overlaps(due, done)) {
            hit += 1;
        } else {
            clear.saturating_record((done - due).as_micros().max(1) as u64);
        }
    }
    Seen { stalls, hit, clear }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_in_flight_during_a_stall_are_set_apart() {
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        let stalls = vec![
            // Inside the step.
            Stall {
                cpu: 0,
                from: at(10),
                until: at(14),
            },
            // Before the step: not counted, touches nothing.
            Stall {
                cpu: 1,
                from: at(0),
                until: at(2),
            },
        ];
        let spans = [
            (at(5), at(6)),   // done before the stall
            (at(9), at(11)),  // answered during it
            (at(12), at(13)), // due and answered within it
            (at(13), at(20)), // due during it
            (at(14), at(15)), // due as it ended
            (at(3), at(4)),
        ];
        let seen = split(stalls, at(3), at(30), &spans);
        assert_eq!(seen.stalls.len(), 1);
        assert_eq!(seen.hit, 3);
        assert_eq!(seen.clear.len(), 3);
        assert_eq!(seen.clear.max(), seen.clear.highest_equivalent(1000));
    }

    #[test]
    fn the_probe_watches_every_cpu_and_stops_when_asked() {
        let probe = Probe::start();
        assert_eq!(
            probe.threads.len(),
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
        std::thread::sleep(Duration::from_millis(20));
        let seen = probe.stop();
        assert!(seen.windows(2).all(|w| w[0].from <= w[1].from), "{seen:?}");
    }
}
