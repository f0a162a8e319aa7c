//! The sessions' metrics: turns by outcome, and what trimming took out of history.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Default)]
pub struct SessionMetrics {
    turns: Family<OutcomeLabels, Counter>,
    dropped: Counter,
    omitted: Counter,
}

impl SessionMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "session_turns",
            "Session turns by outcome: stored, busy, too_many (refused), too_large, conflict, \
             store_error, incomplete (not stored)",
            self.turns.clone(),
        );
        registry.register(
            "session_messages_dropped",
            "History messages left out of a turn for the token budget",
            self.dropped.clone(),
        );
        registry.register(
            "session_images_omitted",
            "Earlier images replaced by the placeholder",
            self.omitted.clone(),
        );
    }

    pub fn turn(&self, outcome: &'static str) {
        self.turns.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub fn trimmed(&self, omitted: usize, dropped: usize) {
        self.omitted.inc_by(omitted as u64);
        self.dropped.inc_by(dropped as u64);
    }
}
