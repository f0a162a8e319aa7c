//! `[batch]`: the Batch API's bounds and its runner (docs/batch.md).

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Largest input file a batch may be made from (the upload itself is bounded by
    /// `files.max_file_bytes`).
    pub max_file_bytes: usize,
    /// Lines one batch may have.
    pub max_lines: usize,
    /// Batches one key may have running at once; one more is a 429.
    pub max_active_per_key: i64,
    /// Lines the gateway runs at once, across every batch it runs itself.
    pub workers: usize,
    /// How often the runner looks for work, and polls an upstream's batches.
    pub poll_ms: u64,
    /// How long a runner holds a batch without renewing; another gateway on the same store
    /// takes it up after that (a gateway that stops cleanly lets go at once).
    pub lease_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_file_bytes: 64 * 1024 * 1024,
            max_lines: 50_000,
            max_active_per_key: 10,
            workers: 4,
            poll_ms: 5_000,
            lease_ms: 60_000,
        }
    }
}
