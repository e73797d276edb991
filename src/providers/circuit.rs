//! A circuit breaker per provider: after `failureThreshold` failed attempts in
//! a row the provider is left alone for `openMs` (calls fail fast, or go to a
//! fallback model); then one probe is let through (half-open), and its outcome
//! closes the circuit again or reopens it.
//!
//! The state sits behind a `std` mutex that is never held across an await:
//! every transition is a few comparisons.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

/// How a provider's breaker trips and recovers (`[providers.breaker]` in the providers file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct BreakerSettings {
    /// Failed attempts in a row that open the circuit; 0 never opens it.
    pub failure_threshold: u32,
    /// How long an open circuit refuses calls before letting a probe through, in milliseconds.
    pub open_ms: u64,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open {
        until: Instant,
    },
    /// One probe is out; everyone else waits for its outcome.
    HalfOpen,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    consecutive_failures: u32,
}

/// The three states, as status and metrics name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half-open",
        }
    }
}

#[derive(Debug)]
pub struct CircuitBreaker {
    provider: String,
    settings: BreakerSettings,
    state: Mutex<State>,
}

/// Leave to make one attempt. Report its outcome with [`Permit::succeeded`] or
/// [`Permit::failed`]; a permit dropped without either (the caller went away)
/// hands a half-open probe slot back, so the circuit cannot stick half-open.
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    settled: bool,
}

impl CircuitBreaker {
    pub fn new(provider: impl Into<String>, settings: BreakerSettings) -> Self {
        Self {
            provider: provider.into(),
            settings,
            state: Mutex::new(State {
                phase: Phase::Closed,
                consecutive_failures: 0,
            }),
        }
    }

    /// The `openclaw_provider_circuit_state` gauge: 0 closed, 1 open, 2 half-open.
    fn publish(&self, phase: Phase) {
        let value = match phase {
            Phase::Closed => 0.0,
            Phase::Open { .. } => 1.0,
            Phase::HalfOpen => 2.0,
        };
        metrics::gauge!("openclaw_provider_circuit_state", "provider" => self.provider.clone())
            .set(value);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic cannot leave the state half-updated: every write is one assignment.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn open_for(&self) -> Duration {
        Duration::from_millis(self.settings.open_ms)
    }

    /// A permit for one attempt, or how long the circuit stays open.
    pub fn admit(&self) -> Result<Permit<'_>, Duration> {
        let now = Instant::now();
        let mut state = self.lock();
        let probe = match state.phase {
            Phase::Closed => false,
            Phase::Open { until } if now < until => return Err(until - now),
            Phase::Open { .. } => {
                state.phase = Phase::HalfOpen;
                self.publish(state.phase);
                tracing::info!(provider = %self.provider, "circuit half-open: probing the provider");
                true
            }
            // The probe's outcome will decide within one attempt's timeout.
            Phase::HalfOpen => return Err(Duration::from_secs(1)),
        };
        Ok(Permit {
            breaker: self,
            probe,
            settled: false,
        })
    }

    pub fn state(&self) -> CircuitState {
        match self.lock().phase {
            Phase::Closed => CircuitState::Closed,
            Phase::Open { until } if Instant::now() >= until => CircuitState::HalfOpen,
            Phase::Open { .. } => CircuitState::Open,
            Phase::HalfOpen => CircuitState::HalfOpen,
        }
    }

    fn record_success(&self) {
        let mut state = self.lock();
        state.consecutive_failures = 0;
        if state.phase != Phase::Closed {
            state.phase = Phase::Closed;
            self.publish(state.phase);
            tracing::info!(provider = %self.provider, "circuit closed: the provider answers again");
        }
    }

    fn record_failure(&self, probe: bool) {
        let mut state = self.lock();
        state.consecutive_failures = state.consecutive_failures.saturating_add(1);
        let threshold = self.settings.failure_threshold;
        let trips = probe
            || (threshold > 0
                && state.phase == Phase::Closed
                && state.consecutive_failures >= threshold);
        if trips {
            state.phase = Phase::Open {
                until: Instant::now() + self.open_for(),
            };
            self.publish(state.phase);
            tracing::warn!(
                provider = %self.provider,
                failures = state.consecutive_failures,
                open_ms = self.settings.open_ms,
                "circuit open: calls to the provider are paused"
            );
        }
    }

    /// Records a failure seen after an attempt was already reported a success
    /// (a stream that broke after its first chunk).
    pub fn record_late_failure(&self) {
        self.record_failure(false);
    }

    fn abandon_probe(&self) {
        let mut state = self.lock();
        if state.phase == Phase::HalfOpen {
            // Let the next caller probe at once.
            state.phase = Phase::Open {
                until: Instant::now(),
            };
        }
    }
}

impl Permit<'_> {
    pub fn succeeded(mut self) {
        self.settled = true;
        self.breaker.record_success();
    }

    pub fn failed(mut self) {
        self.settled = true;
        self.breaker.record_failure(self.probe);
    }

    /// Neither a success nor a failure of the provider (say, it refused a bad request).
    pub fn neutral(mut self) {
        self.settled = true;
        if self.probe {
            // The provider answered, so it is up.
            self.breaker.record_success();
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.settled && self.probe {
            self.breaker.abandon_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32, open_ms: u64) -> CircuitBreaker {
        CircuitBreaker::new(
            "test",
            BreakerSettings {
                failure_threshold: threshold,
                open_ms,
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_the_threshold_and_probes_after_the_pause() {
        let b = breaker(3, 1000);
        for _ in 0..2 {
            b.admit().expect("closed").failed();
        }
        assert_eq!(b.state(), CircuitState::Closed);
        b.admit().expect("closed").failed();
        assert_eq!(b.state(), CircuitState::Open);
        let wait = b.admit().expect_err("open");
        assert!(wait <= Duration::from_millis(1000));

        tokio::time::advance(Duration::from_millis(1001)).await;
        let probe = b.admit().expect("half-open lets one probe through");
        assert!(b.admit().is_err(), "only one probe at a time");
        probe.failed();
        assert_eq!(b.state(), CircuitState::Open, "a failed probe reopens");

        tokio::time::advance(Duration::from_millis(1001)).await;
        b.admit().expect("probe").succeeded();
        assert_eq!(b.state(), CircuitState::Closed);
        b.admit().expect("closed again").failed();
        assert_eq!(b.state(), CircuitState::Closed, "the count restarted");
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_count_and_an_abandoned_probe_frees_the_slot() {
        let b = breaker(2, 500);
        b.admit().expect("closed").failed();
        b.admit().expect("closed").succeeded();
        b.admit().expect("closed").failed();
        assert_eq!(b.state(), CircuitState::Closed);
        b.admit().expect("closed").failed();
        assert_eq!(b.state(), CircuitState::Open);
        tokio::time::advance(Duration::from_millis(501)).await;
        drop(b.admit().expect("probe"));
        b.admit()
            .expect("the abandoned probe's slot is free")
            .neutral();
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn a_zero_threshold_never_opens() {
        let b = breaker(0, 500);
        for _ in 0..100 {
            b.admit().expect("closed").failed();
        }
        assert_eq!(b.state(), CircuitState::Closed);
    }
}
