//! The resumable streams' metrics: streams buffered, resumed, expired and dropped over a
//! bound, reconnects refused, and what the buffers hold now.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Default)]
pub struct ResumeMetrics {
    buffered: Counter,
    resumed: Counter,
    expired: Counter,
    dropped: Family<ReasonLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    pub(super) live: Gauge,
    pub(super) bytes: Gauge,
}

impl ResumeMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "resume_streams_buffered",
            "Streams held resumable (their events buffered for a reconnect)",
            self.buffered.clone(),
        );
        registry.register(
            "resume_streams_resumed",
            "Reconnects with Last-Event-ID served the rest of their stream",
            self.resumed.clone(),
        );
        registry.register(
            "resume_streams_expired",
            "Streams whose client did not come back within the grace period (upstream cancelled)",
            self.expired.clone(),
        );
        registry.register(
            "resume_streams_dropped",
            "Streams no longer resumable because a bound was reached: stream_bytes, total_bytes, streams",
            self.dropped.clone(),
        );
        registry.register(
            "resume_refused",
            "Reconnects refused: malformed, elsewhere (another gateway's id), unknown (or expired, or another key's or body's)",
            self.refused.clone(),
        );
        registry.register(
            "resume_streams_live",
            "Resumable streams held now",
            self.live.clone(),
        );
        registry.register(
            "resume_buffered_bytes",
            "Bytes of stream events buffered for reconnects now",
            self.bytes.clone(),
        );
    }

    pub(super) fn buffered(&self) {
        self.buffered.inc();
    }

    pub(super) fn resumed(&self) {
        self.resumed.inc();
    }

    pub(super) fn expired(&self) {
        self.expired.inc();
    }

    pub(super) fn dropped(&self, reason: &'static str) {
        self.dropped.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub(super) fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason }).inc();
    }
}
