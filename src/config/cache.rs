//! `[cache]`: who may use the exact response cache, where it lives, and what it keeps.

use serde::Deserialize;

use super::Secret;

/// Whose replies a cached entry may answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheScope {
    /// Each key has its own entries: a reply never crosses keys.
    #[default]
    Key,
    /// One set of entries for every key (identical requests of different tenants share).
    Shared,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Allows the cache for every key and model.
    pub enabled: bool,
    /// Allows it for these models (any key).
    pub models: Vec<String>,
    /// Allows it for these key names (any model).
    pub keys: Vec<String>,
    /// Where allowed, consult it also for requests without `x-dashgate-cache` (then `off`
    /// opts a request out); otherwise a request asks with `on` or `refresh`.
    pub default_on: bool,
    pub scope: CacheScope,
    /// How long an entry lives.
    pub ttl_secs: u64,
    /// A reply larger than this (its encoded JSON) is not kept.
    pub max_entry_bytes: usize,
    /// The in-process cache's bound, in bytes of kept replies.
    pub max_bytes: u64,
    /// Keep entries in Redis (shared by every gateway using it) instead of in this process.
    pub redis_url: Option<Secret>,
    /// A Redis call slower than this counts as a miss (the request goes upstream).
    pub redis_timeout_ms: u64,
    /// Also cache requests that sample (`temperature > 0`, or no `seed`).
    pub sampled: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            models: Vec::new(),
            keys: Vec::new(),
            default_on: false,
            scope: CacheScope::Key,
            ttl_secs: 300,
            max_entry_bytes: 1 << 20,
            max_bytes: 64 << 20,
            redis_url: None,
            redis_timeout_ms: 200,
            sampled: false,
        }
    }
}

impl CacheConfig {
    /// The config allows the cache for this key and model.
    pub fn allows(&self, key_name: &str, model: &str) -> bool {
        self.enabled
            || self.models.iter().any(|m| m == model)
            || self.keys.iter().any(|k| k == key_name)
    }
}
