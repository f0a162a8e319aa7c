//! Circuit breakers: one per (upstream, model), fed only by failures that speak of the
//! upstream's health. A model the upstream keeps failing opens only its own circuit, never
//! the upstream's other models.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::CircuitConfig;

/// A circuit breaker: opens after `threshold` consecutive failures, refuses traffic for
/// `open_for`, then lets one probe through (half-open); the probe's result closes or re-opens it.
pub struct Circuit {
    threshold: u32,
    open_for: Duration,
    epoch: Instant,
    failures: AtomicU32,
    /// When the circuit opened, in ms since `epoch` plus one (0: closed).
    opened_at: AtomicU64,
    /// When the current half-open probe started, same clock (0: none).
    probe_at: AtomicU64,
    /// The order of the last failure among all circuits (0: never); panic mode picks the
    /// oldest. A sequence, not a clock: two failures in one millisecond still have an order.
    pub(super) last_failure: AtomicU64,
}

/// Counts failures process-wide, to order them.
static FAILURES: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

impl Circuit {
    pub fn new(config: &CircuitConfig) -> Self {
        Self {
            threshold: config.failure_threshold,
            open_for: Duration::from_millis(config.open_ms),
            epoch: Instant::now(),
            failures: AtomicU32::new(0),
            opened_at: AtomicU64::new(0),
            probe_at: AtomicU64::new(0),
            last_failure: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    pub fn state(&self) -> CircuitState {
        let opened = self.opened_at.load(Ordering::Acquire);
        if opened == 0 {
            CircuitState::Closed
        } else if self.now().saturating_sub(opened) < self.open_for.as_millis() as u64 {
            CircuitState::Open
        } else {
            CircuitState::HalfOpen
        }
    }

    /// Whether a request could go now (without claiming the half-open probe).
    pub(super) fn may_admit(&self) -> bool {
        match self.state() {
            CircuitState::Closed => true,
            CircuitState::Open => false,
            CircuitState::HalfOpen => self.probe_free(self.probe_at.load(Ordering::Acquire)),
        }
    }

    /// A probe that never reported back (its client left before the answer) frees its slot
    /// after a minute, or `open_for` if longer.
    fn probe_free(&self, probe_at: u64) -> bool {
        let expiry = self.open_for.max(Duration::from_secs(60)).as_millis() as u64;
        probe_at == 0 || self.now().saturating_sub(probe_at) >= expiry
    }

    /// Claims admission; in half-open state only one probe at a time gets it.
    pub(super) fn admit(&self) -> bool {
        match self.state() {
            CircuitState::Closed => true,
            CircuitState::Open => false,
            CircuitState::HalfOpen => {
                let seen = self.probe_at.load(Ordering::Acquire);
                self.probe_free(seen)
                    && self
                        .probe_at
                        .compare_exchange(seen, self.now(), Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
            }
        }
    }

    pub fn record_success(&self) {
        self.failures.store(0, Ordering::Release);
        self.opened_at.store(0, Ordering::Release);
        self.probe_at.store(0, Ordering::Release);
    }

    pub fn record_failure(&self) {
        let order = FAILURES.fetch_add(1, Ordering::AcqRel) + 1;
        self.last_failure.store(order, Ordering::Release);
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let probing = self.probe_at.swap(0, Ordering::AcqRel) != 0;
        if probing || failures >= self.threshold {
            let now = self.now();
            if self.opened_at.swap(now, Ordering::AcqRel) == 0 || probing {
                tracing::warn!(failures, "circuit opened");
            }
        }
    }
}

/// Models are client-named (a `"*"` upstream serves any name): the map is bounded, and a
/// model not asked for in an hour is forgotten (its circuit starts closed again).
const MAX_MODELS: u64 = 10_000;

pub struct Circuits {
    config: CircuitConfig,
    by_model: moka::sync::Cache<String, Arc<Circuit>>,
}

impl Circuits {
    pub fn new(config: &CircuitConfig) -> Self {
        Self {
            config: config.clone(),
            by_model: moka::sync::Cache::builder()
                .max_capacity(MAX_MODELS)
                .time_to_idle(Duration::from_secs(3600))
                .build(),
        }
    }

    /// The circuit for `model`, made closed on first use.
    pub fn for_model(&self, model: &str) -> Arc<Circuit> {
        self.by_model
            .get_with_by_ref(model, || Arc::new(Circuit::new(&self.config)))
    }

    /// The upstream as a whole: closed while some model's circuit is (or none was ever
    /// opened), open only when every model seen is open.
    pub fn state(&self) -> CircuitState {
        let mut seen_half_open = false;
        let mut seen_any = false;
        for (_, circuit) in self.by_model.iter() {
            seen_any = true;
            match circuit.state() {
                CircuitState::Closed => return CircuitState::Closed,
                CircuitState::HalfOpen => seen_half_open = true,
                CircuitState::Open => {}
            }
        }
        match (seen_any, seen_half_open) {
            (false, _) => CircuitState::Closed,
            (true, true) => CircuitState::HalfOpen,
            (true, false) => CircuitState::Open,
        }
    }

    /// Models whose circuit is not closed, with its state, for the health views.
    pub fn not_closed(&self) -> Vec<(String, CircuitState)> {
        let mut out: Vec<_> = self
            .by_model
            .iter()
            .map(|(model, c)| (model.as_ref().clone(), c.state()))
            .filter(|(_, s)| *s != CircuitState::Closed)
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_circuit_opens_after_consecutive_failures_and_probes_once() {
        let circuit = Circuit::new(&CircuitConfig {
            failure_threshold: 2,
            open_ms: 0,
        });
        circuit.record_failure();
        assert_eq!(circuit.state(), CircuitState::Closed);
        circuit.record_success();
        circuit.record_failure();
        assert_eq!(
            circuit.state(),
            CircuitState::Closed,
            "a success resets the count"
        );
        circuit.record_failure();
        // open_ms = 0: open turns half-open at once; one probe is admitted, a second is not.
        assert_eq!(circuit.state(), CircuitState::HalfOpen);
        assert!(circuit.admit());
        assert!(!circuit.admit());
        circuit.record_failure();
        assert_eq!(
            circuit.state(),
            CircuitState::HalfOpen,
            "a failed probe re-opens"
        );
        assert!(circuit.admit());
        circuit.record_success();
        assert_eq!(circuit.state(), CircuitState::Closed);

        let slow = Circuit::new(&CircuitConfig {
            failure_threshold: 1,
            open_ms: 60_000,
        });
        slow.record_failure();
        assert_eq!(slow.state(), CircuitState::Open);
        assert!(!slow.admit());
    }
}
