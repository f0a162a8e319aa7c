//! `[limits]`: where per-key limits are counted.

use serde::Deserialize;

use super::Secret;

/// Where per-key limits are counted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Shared counters for all gateways (`redis://host:port/db`); unset: in this process.
    pub redis_url: Option<Secret>,
    /// What a request gets while Redis cannot be reached: `open` lets it through (logged and
    /// counted), `closed` refuses it with 503.
    pub on_redis_error: FailMode,
    /// The longest a limit check waits for Redis.
    pub redis_timeout_ms: u64,
    /// Completion tokens reserved at admission for a request without `max_tokens`.
    pub reserve_completion_tokens: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            on_redis_error: FailMode::Open,
            redis_timeout_ms: 250,
            reserve_completion_tokens: 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    Open,
    Closed,
}
