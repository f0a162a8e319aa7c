//! Text extraction's metrics: extractions run, refusals by the limit that refused them, and
//! the extraction workers alive now.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Default)]
pub struct ExtractMetrics {
    extractions: Family<OutcomeLabels, Counter>,
    refusals: Family<ReasonLabels, Counter>,
    workers: Gauge,
}

impl ExtractMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "file_extractions",
            "Document text extractions run, by outcome (text, refused, failed)",
            self.extractions.clone(),
        );
        registry.register(
            "file_extract_refusals",
            "Documents refused by text extraction, by the limit (decompressed_bytes, memory, \
             timeout, pages, text_chars, unreadable)",
            self.refusals.clone(),
        );
        registry.register(
            "file_extract_workers",
            "Extraction worker processes alive now",
            self.workers.clone(),
        );
    }

    pub(super) fn extracted(&self, outcome: &'static str) {
        self.extractions
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub(super) fn refused(&self, reason: &str) {
        // Reasons come from the worker's answer: only the known ones make a series.
        let known = [
            "decompressed_bytes",
            "memory",
            "timeout",
            "pages",
            "text_chars",
        ];
        let reason = if known.contains(&reason) {
            reason
        } else {
            "unreadable"
        };
        self.refusals
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts a worker alive until the guard is dropped (after it was reaped).
    pub(super) fn worker(&self) -> WorkerGuard {
        self.workers.inc();
        WorkerGuard(self.workers.clone())
    }
}

pub(super) struct WorkerGuard(Gauge);

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
