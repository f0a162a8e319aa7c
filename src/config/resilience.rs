//! `[retry]` and `[circuit]`: how failures upstream are retried and isolated.

use std::time::Duration;

use serde::Deserialize;

/// Retries happen only before the first byte has gone to the client.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Tries per request, across upstreams (1: no retry).
    pub attempts: u32,
    /// Time allowed for all tries before the first byte.
    pub budget_ms: u64,
    /// First backoff; it doubles with each retry, with full jitter.
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// The longest `Retry-After` the gateway waits out itself; a longer one goes back to the
    /// client, which can decide better whether to wait.
    pub max_retry_after_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 3,
            budget_ms: 30_000,
            backoff_ms: 100,
            max_backoff_ms: 2_000,
            max_retry_after_ms: 2_000,
        }
    }
}

impl RetryConfig {
    pub fn budget(&self) -> Duration {
        Duration::from_millis(self.budget_ms)
    }
}

/// A circuit breaker per upstream, fed by real traffic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitConfig {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// How long an open circuit refuses traffic before one probe request is let through.
    pub open_ms: u64,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_ms: 30_000,
        }
    }
}
