//! The Batch API's metrics: batches made by route, lines answered by outcome, lines running,
//! batches refused by reason. Re-exported as `batch::BatchMetrics`; here, not in `batch/`,
//! because the AppState holds them while the batch code reads the AppState.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LineLabels {
    route: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Default)]
pub struct BatchMetrics {
    created: Family<RouteLabels, Counter>,
    lines: Family<LineLabels, Counter>,
    running: Gauge,
    refused: Family<ReasonLabels, Counter>,
}

impl BatchMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "batches_created",
            "Batches made, by route (gateway: run by this gateway; upstream: forwarded)",
            self.created.clone(),
        );
        registry.register(
            "batch_lines",
            "Batch lines answered, by route and outcome (ok, failed)",
            self.lines.clone(),
        );
        registry.register(
            "batch_lines_running",
            "Batch lines this gateway is running now",
            self.running.clone(),
        );
        registry.register(
            "batches_refused",
            "Batch creations refused, by reason (invalid, too_large, too_many_active)",
            self.refused.clone(),
        );
    }

    pub fn created(&self, route: &'static str) {
        self.created.get_or_create(&RouteLabels { route }).inc();
    }

    pub fn lines(&self, route: &'static str, ok: u64, failed: u64) {
        let labels = |outcome| LineLabels { route, outcome };
        self.lines.get_or_create(&labels("ok")).inc_by(ok);
        self.lines.get_or_create(&labels("failed")).inc_by(failed);
    }

    pub fn running(&self, delta: i64) {
        self.running.inc_by(delta);
    }

    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason }).inc();
    }
}
