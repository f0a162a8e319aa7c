//! Metrics in Prometheus text (`GET /metrics`). One registry per gateway instance. Labels name
//! routes, models, upstreams and statuses; never a key. The request path's own metrics are
//! here; every other module owns its metrics and registers them into this registry when the
//! gateway's state is built (`Metrics::registry_mut`), so this module imports none of them.

pub mod access_log;
pub mod batch;
pub mod observed;
pub mod otel;

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::event::Usage;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    model: String,
    upstream: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    model: String,
    upstream: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    upstream: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

/// Buckets from 1 ms to about a minute: LLM latencies span all of it.
fn latency_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ])
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    first_token: Family<RouteLabels, Histogram, fn() -> Histogram>,
    stream_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    tokens: Family<TokenLabels, Counter>,
    retries: Family<RetryLabels, Counter>,
    circuit: Family<UpstreamLabels, Gauge>,
    upstream_in_flight: Family<UpstreamLabels, Gauge>,
    streams: Gauge,
    limiter_errors: Counter,
    ledger: Family<LedgerLabels, Counter>,
    /// The model names a label may carry (the configured ones); any other is `other`, so a
    /// client cannot add series by inventing names.
    models: std::collections::HashSet<String>,
    /// Token latency per model, attempts, ledger queue, image savings (#20).
    pub observed: observed::Observed,
}

/// One upstream's gauges, read from the router when `/metrics` is asked for.
pub struct UpstreamGauges<'a> {
    pub upstream: &'a str,
    /// 0 closed, 1 half-open, 2 open.
    pub circuit: i64,
    pub in_flight: i64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LedgerLabels {
    outcome: &'static str,
}

/// What became of usage records.
#[derive(Debug, Clone, Copy)]
pub enum LedgerOutcome {
    /// Written to the store.
    Written,
    /// Put in the spill file while the store was down.
    Spilled,
    /// Lost: the queue was full, or the spill file could not be written or read.
    Lost,
    /// A write to the store failed (the records wait and are tried again).
    StoreError,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("dashgate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests by route, model, upstream and status",
            requests.clone(),
        );
        let duration = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "request_duration_seconds",
            "Time to the response head (for a stream: its first byte)",
            duration.clone(),
        );
        let first_token = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "time_to_first_token_seconds",
            "Time from the request to the first stream event sent to the client",
            first_token.clone(),
        );
        let stream_duration = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "stream_duration_seconds",
            "Whole streams, first byte in to last byte out",
            stream_duration.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "tokens",
            "Tokens the upstreams reported, by kind",
            tokens.clone(),
        );
        let retries = Family::<RetryLabels, Counter>::default();
        registry.register(
            "upstream_retries",
            "Retries before the first byte, by reason",
            retries.clone(),
        );
        let circuit = Family::<UpstreamLabels, Gauge>::default();
        registry.register(
            "upstream_circuit_state",
            "0 closed, 1 half-open, 2 open",
            circuit.clone(),
        );
        let upstream_in_flight = Family::<UpstreamLabels, Gauge>::default();
        registry.register(
            "upstream_in_flight",
            "Requests in flight per capped upstream",
            upstream_in_flight.clone(),
        );
        let streams = Gauge::default();
        registry.register(
            "streams_in_flight",
            "Streams being relayed now",
            streams.clone(),
        );
        let limiter_errors = Counter::default();
        registry.register(
            "limiter_errors",
            "Limit checks or token updates that could not reach Redis",
            limiter_errors.clone(),
        );
        let ledger = Family::<LedgerLabels, Counter>::default();
        registry.register(
            "usage_records",
            "Usage records by outcome: written, spilled (to the local file), lost, store_error",
            ledger.clone(),
        );
        let observed = observed::Observed::register(&mut registry);
        Self {
            observed,
            limiter_errors,
            ledger,
            models: Default::default(),
            registry,
            requests,
            duration,
            first_token,
            stream_duration,
            tokens,
            retries,
            circuit,
            upstream_in_flight,
            streams,
        }
    }

    /// Where the other modules register their metrics, before the state is shared.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    pub fn request(
        &self,
        route: &'static str,
        model: &str,
        upstream: &str,
        status: u16,
        elapsed: Duration,
    ) {
        let labels = RequestLabels {
            route,
            model: self.model_label(model).to_string(),
            upstream: upstream.to_string(),
            status,
        };
        self.requests.get_or_create(&labels).inc();
        self.duration
            .get_or_create(&RouteLabels { route })
            .observe(elapsed.as_secs_f64());
    }

    /// The model names labels may carry, from the configuration (`*` is not a name).
    pub fn with_models<'a>(mut self, names: impl IntoIterator<Item = &'a str>) -> Self {
        self.models = names
            .into_iter()
            .filter(|m| *m != "*" && !m.is_empty())
            .map(str::to_string)
            .collect();
        self
    }

    /// The label a model name is counted under: a configured name, `-`, or `other`.
    pub fn model_label<'a>(&self, model: &'a str) -> &'a str {
        // `-`: the request never named a model (refused before, or not a chat).
        if model == "-" || self.models.contains(model) {
            model
        } else {
            "other"
        }
    }

    pub fn first_token(&self, route: &'static str, elapsed: Duration) {
        self.first_token
            .get_or_create(&RouteLabels { route })
            .observe(elapsed.as_secs_f64());
    }

    pub fn stream_started(&self) {
        self.streams.inc();
    }

    pub fn stream_ended(&self, route: &'static str, elapsed: Duration) {
        self.streams.dec();
        self.stream_duration
            .get_or_create(&RouteLabels { route })
            .observe(elapsed.as_secs_f64());
    }

    pub fn usage(&self, model: &str, upstream: &str, usage: &Usage) {
        for (kind, count) in [
            ("prompt", Some(usage.prompt_tokens)),
            ("completion", Some(usage.completion_tokens)),
            ("cached", usage.cached_tokens),
            ("reasoning", usage.reasoning_tokens),
        ] {
            if let Some(count) = count.filter(|c| *c > 0) {
                let labels = TokenLabels {
                    model: self.model_label(model).to_string(),
                    upstream: upstream.to_string(),
                    kind,
                };
                self.tokens.get_or_create(&labels).inc_by(count);
            }
        }
    }

    pub fn limiter_error(&self) {
        self.limiter_errors.inc();
    }

    pub fn ledger(&self, outcome: LedgerOutcome, count: u64) {
        let outcome = match outcome {
            LedgerOutcome::Written => "written",
            LedgerOutcome::Spilled => "spilled",
            LedgerOutcome::Lost => "lost",
            LedgerOutcome::StoreError => "store_error",
        };
        self.ledger
            .get_or_create(&LedgerLabels { outcome })
            .inc_by(count);
    }

    pub fn retry(&self, upstream: &str, reason: &'static str) {
        let labels = RetryLabels {
            upstream: upstream.to_string(),
            reason,
        };
        self.retries.get_or_create(&labels).inc();
    }

    /// The Prometheus text, with the upstream gauges as read fresh from the router
    /// (`route::Router::gauges`).
    pub fn render(&self, upstreams: &[UpstreamGauges]) -> String {
        for gauges in upstreams {
            let labels = UpstreamLabels {
                upstream: gauges.upstream.to_string(),
            };
            self.circuit.get_or_create(&labels).set(gauges.circuit);
            self.upstream_in_flight
                .get_or_create(&labels)
                .set(gauges.in_flight);
        }
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            tracing::error!("metrics could not be encoded");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_text_has_the_families_and_no_keys() {
        let metrics = Metrics::new().with_models(["qwen-plus", "*"]);
        for invented in ["qwen-plus-x1", "qwen-plus-x2", "*"] {
            metrics.request("chat", invented, "bailian", 200, Duration::ZERO);
        }
        metrics.request(
            "chat",
            "qwen-plus",
            "bailian",
            200,
            Duration::from_millis(3),
        );
        metrics.retry("bailian", "503");
        metrics.usage(
            "qwen-plus",
            "bailian",
            &Usage {
                prompt_tokens: 5,
                completion_tokens: 7,
                total_tokens: 12,
                ..Usage::default()
            },
        );
        let text = metrics.render(&[]);
        assert!(text.contains(r#"dashgate_requests_total{route="chat",model="qwen-plus",upstream="bailian",status="200"} 1"#), "{text}");
        assert!(
            text.contains(r#"dashgate_upstream_retries_total{upstream="bailian",reason="503"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"dashgate_tokens_total{model="qwen-plus",upstream="bailian",kind="completion"} 7"#
            ),
            "{text}"
        );
        // Names a client made up share one series.
        assert!(text.contains(r#"dashgate_requests_total{route="chat",model="other",upstream="bailian",status="200"} 3"#), "{text}");
        assert!(!text.contains("qwen-plus-x1"), "{text}");
        assert!(
            text.contains("dashgate_request_duration_seconds_bucket"),
            "{text}"
        );
    }
}
