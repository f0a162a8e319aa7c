//! `[usage]` and `[prices]`: the ledger's writer and what a token costs.

use serde::Deserialize;

/// The usage ledger's writer: batches, and where records wait while the store is down.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// Records queued between the request path and the writer.
    pub queue_records: usize,
    /// Records written per transaction at most.
    pub batch_records: usize,
    /// How long the writer lets records gather before it writes them: fewer, larger
    /// transactions under load (0: write each as it comes).
    pub flush_ms: u64,
    /// Records held in memory while the store is down; beyond this they go to the spill file.
    pub memory_records: usize,
    /// The spill file of gateways from before the journal: shipped at start if present.
    pub spill_path: std::path::PathBuf,
    /// The journal every record is appended to before it goes to the store (JSON lines).
    pub journal_path: std::path::PathBuf,
    /// How often what was journaled is fsynced (for power loss; a crash loses nothing
    /// either way); 0: never, the kernel writes it back in its own time.
    pub journal_fsync_ms: u64,
    /// The journal's size limit: records beyond it (a very long store outage) are lost.
    pub journal_max_bytes: u64,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            queue_records: 65_536,
            batch_records: 500,
            flush_ms: 50,
            memory_records: 100_000,
            spill_path: "dashgate-usage.spill".into(),
            journal_path: "dashgate-usage.journal".into(),
            journal_fsync_ms: 1000,
            journal_max_bytes: 1 << 30,
        }
    }
}

/// A model's price, in any currency, per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_million: f64,
    pub output_per_million: f64,
    /// Cached prompt tokens, when cheaper (default: the input price).
    #[serde(default)]
    pub cached_input_per_million: Option<f64>,
}
