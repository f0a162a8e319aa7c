//! The cache's metrics: lookups by outcome, bytes kept and served, bytes held in process.

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
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Clone, Default)]
pub struct CacheMetrics {
    lookups: Family<OutcomeLabels, Counter>,
    bytes: Family<DirectionLabels, Counter>,
    held: Gauge,
}

impl CacheMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "cache_lookups",
            "Response cache lookups by outcome (hit, miss, too_large: a reply not kept)",
            self.lookups.clone(),
        );
        registry.register(
            "cache_bytes",
            "Response cache bytes stored and served",
            self.bytes.clone(),
        );
        registry.register(
            "cache_held_bytes",
            "Bytes the in-process response cache holds",
            self.held.clone(),
        );
    }

    pub fn hit(&self, bytes: usize) {
        self.lookups
            .get_or_create(&OutcomeLabels { outcome: "hit" })
            .inc();
        self.add("served", bytes);
    }

    pub fn miss(&self) {
        self.lookups
            .get_or_create(&OutcomeLabels { outcome: "miss" })
            .inc();
    }

    pub fn too_large(&self) {
        let labels = OutcomeLabels {
            outcome: "too_large",
        };
        self.lookups.get_or_create(&labels).inc();
    }

    pub fn stored(&self, bytes: usize, held: Option<u64>) {
        self.add("stored", bytes);
        if let Some(held) = held {
            self.held.set(i64::try_from(held).unwrap_or(i64::MAX));
        }
    }

    fn add(&self, direction: &'static str, bytes: usize) {
        let labels = DirectionLabels { direction };
        self.bytes.get_or_create(&labels).inc_by(bytes as u64);
    }
}
