//! The metrics issue #20 added to the registry: token latency per model, upstream attempt
//! outcomes, the usage ledger's queue, what the image policy saved, and the telemetry
//! pipeline's own drops. Label values are model and upstream names from the config's routes
//! and fixed words; never a key.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::error::GatewayError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    upstream: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SavingLabels {
    model: String,
    unit: &'static str,
}

/// 1 ms to a minute, like the other latency histograms.
fn first_token_buckets() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ])
}

/// Gaps between tokens are short: 100 µs to 5 s.
fn inter_token_buckets() -> Histogram {
    Histogram::new([
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0,
    ])
}

pub struct Observed {
    first_token: Family<ModelLabels, Histogram, fn() -> Histogram>,
    inter_token: Family<ModelLabels, Histogram, fn() -> Histogram>,
    attempts: Family<AttemptLabels, Counter>,
    ledger_depth: Gauge,
    ledger_lag: Histogram,
    image_saved: Family<SavingLabels, Counter>,
}

impl Observed {
    pub fn register(registry: &mut Registry) -> Observed {
        let first_token = Family::new_with_constructor(first_token_buckets as fn() -> Histogram);
        registry.register(
            "model_time_to_first_token_seconds",
            "Time from the request to the first stream event sent to the client, by model",
            first_token.clone(),
        );
        let inter_token = Family::new_with_constructor(inter_token_buckets as fn() -> Histogram);
        registry.register(
            "model_inter_token_seconds",
            "Time between consecutive stream events sent to the client, by model",
            inter_token.clone(),
        );
        let attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "upstream_attempts",
            "Calls to upstreams by outcome: ok, unreachable, timeout, 429, 4xx, 503, 5xx, protocol, other",
            attempts.clone(),
        );
        let ledger_depth = Gauge::default();
        registry.register(
            "usage_queue_depth",
            "Usage records journaled by this process and not yet in the store",
            ledger_depth.clone(),
        );
        let ledger_lag = Histogram::new([
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0,
        ]);
        registry.register(
            "usage_write_lag_seconds",
            "From a request's start to its usage record being in the store (oldest of each batch)",
            ledger_lag.clone(),
        );
        let image_saved = Family::<SavingLabels, Counter>::default();
        registry.register(
            "image_policy_saved",
            "What the image policy took off camera frames before the upstream: unit bytes or tokens",
            image_saved.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Finished spans dropped because the export queue was full",
            super::otel::SPANS_DROPPED.clone(),
        );
        registry.register(
            "trace_spans_exported",
            "Spans handed to the OTLP exporter",
            super::otel::SPANS_EXPORTED.clone(),
        );
        registry.register(
            "trace_export_errors",
            "OTLP export requests that failed",
            super::otel::EXPORT_ERRORS.clone(),
        );
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because stdout was not keeping up",
            super::access_log::LINES_DROPPED.clone(),
        );
        Observed {
            first_token,
            inter_token,
            attempts,
            ledger_depth,
            ledger_lag,
            image_saved,
        }
    }

    /// The histograms a stream of `model` observes, taken once per stream (not per event).
    pub fn token_histograms(&self, model: &str) -> (Histogram, Histogram) {
        let labels = ModelLabels {
            model: model.to_string(),
        };
        (
            self.first_token.get_or_create(&labels).clone(),
            self.inter_token.get_or_create(&labels).clone(),
        )
    }

    /// One call to an upstream: `None` is a success.
    pub fn attempt(&self, upstream: &str, error: Option<&GatewayError>) {
        let labels = AttemptLabels {
            upstream: upstream.to_string(),
            outcome: error.map_or("ok", outcome),
        };
        self.attempts.get_or_create(&labels).inc();
    }

    /// A record was journaled: one more waits for the store.
    pub fn ledger_queued(&self) {
        self.ledger_depth.inc();
    }

    /// `n` records reached the store. Records replayed from an earlier run's journal were never
    /// counted in, so the gauge stops at zero rather than going below it.
    pub fn ledger_shipped(&self, n: usize) {
        let n = n as i64;
        let now = self.ledger_depth.get();
        self.ledger_depth.dec_by(n.min(now.max(0)));
    }

    /// A batch was written; `oldest_at` is its oldest record's start, Unix milliseconds.
    pub fn ledger_written(&self, oldest_at: i64) {
        let lag_ms = (crate::store::now_ms() - oldest_at).max(0);
        self.ledger_lag.observe(lag_ms as f64 / 1e3);
    }

    pub fn image_saved(&self, model: &str, bytes: u64, tokens: u64) {
        for (unit, count) in [("bytes", bytes), ("tokens", tokens)] {
            let labels = SavingLabels {
                model: model.to_string(),
                unit,
            };
            self.image_saved.get_or_create(&labels).inc_by(count);
        }
    }
}

/// A short word for how an upstream call ended (also a span's `error.type`).
pub fn outcome(error: &GatewayError) -> &'static str {
    match error {
        GatewayError::UpstreamUnreachable { .. } => "unreachable",
        GatewayError::UpstreamTimeout { .. } => "timeout",
        GatewayError::UpstreamRejected(r) if r.status == 429 => "429",
        GatewayError::UpstreamRejected(_) | GatewayError::UpstreamAuth { .. } => "4xx",
        GatewayError::UpstreamStatus { status: 503, .. } => "503",
        GatewayError::UpstreamStatus { .. } => "5xx",
        GatewayError::UpstreamProtocol { .. } => "protocol",
        _ => "other",
    }
}
