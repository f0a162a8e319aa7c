//! The metrics of issue #20 seen from outside: token latency per model, upstream attempt
//! outcomes and the ledger after a retried stream (an in-process gateway before the
//! simulator), and the Grafana dashboard naming only metric families the gateway exposes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{CLIENT_KEY, Sim};
use serde_json::{Value, json};

/// A streamed chat whose first upstream try gets a 503; its SSE body.
async fn streamed_with_a_retry(gw: &common::Gateway) -> String {
    let body = json!({
        "model": "qwen-plus",
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "count the gaps"}],
        "sim": {"fault": "503", "times": 1, "key": "metrics-1"},
    });
    let response = gw
        .http
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.unwrap_or_default();
    assert!(text.contains("data: [DONE]"), "{text}");
    text
}

/// `/metrics` of an in-process gateway, once its `wanted` series is at least 1.
async fn metrics_with(gw: &common::Gateway, wanted: &str) -> String {
    let wait = async {
        loop {
            let text = gw
                .http
                .get(gw.url("/metrics"))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .text()
                .await
                .unwrap_or_default();
            let value = text
                .lines()
                .find_map(|l| l.strip_prefix(wanted)?.trim().parse::<f64>().ok());
            if value.is_some_and(|v| v >= 1.0) {
                return text;
            }
            // The ledger writer runs on its own; ask again once it had a turn.
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("{wanted} never showed"))
}

fn value_of(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {metrics}"))
}

#[tokio::test]
async fn a_retried_stream_shows_in_the_latency_attempt_and_ledger_metrics() {
    let sim = Sim::start().await;
    let toml = common::config_for(&sim, "", "[retry]\nbackoff_ms = 1\nmax_backoff_ms = 1\n");
    let gw = common::Gateway::start(&toml).await;
    let sse = streamed_with_a_retry(&gw).await;
    let events = sse.matches("data: ").count() as f64;
    let metrics = metrics_with(&gw, "dashgate_usage_write_lag_seconds_count").await;
    let series = [
        (
            r#"dashgate_upstream_attempts_total{upstream="sim",outcome="503"}"#,
            1.0,
        ),
        (
            r#"dashgate_upstream_attempts_total{upstream="sim",outcome="ok"}"#,
            1.0,
        ),
        (
            r#"dashgate_model_time_to_first_token_seconds_count{model="qwen-plus"}"#,
            1.0,
        ),
        // One gap between each two events sent.
        (
            r#"dashgate_model_inter_token_seconds_count{model="qwen-plus"}"#,
            events - 1.0,
        ),
        ("dashgate_usage_write_lag_seconds_count", 1.0),
        ("dashgate_trace_spans_dropped_total", 0.0),
        ("dashgate_access_log_dropped_total", 0.0),
    ];
    for (name, expected) in series {
        assert_eq!(value_of(&metrics, name), expected, "{name}");
    }
    assert!(value_of(&metrics, "dashgate_usage_queue_depth") >= 0.0);
}

#[test]
fn the_dashboard_names_only_metrics_the_gateway_has() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/observability/grafana-dashboard.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{e}"));
    let dashboard: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    assert!(exprs.len() > 10, "{exprs:?}");
    // Families show once they have a series: one of each.
    use dashgate::config::{self, ProviderKind, UpstreamConfig};
    let metrics = dashgate::telemetry::Metrics::new();
    metrics.request("chat", "m", "u", 200, Duration::from_millis(1));
    metrics.first_token("chat", Duration::from_millis(1));
    metrics.stream_started();
    metrics.stream_ended("chat", Duration::from_millis(1));
    let usage = dashgate::event::Usage {
        prompt_tokens: 1,
        completion_tokens: 1,
        total_tokens: 2,
        ..Default::default()
    };
    metrics.usage("m", "u", &usage);
    metrics.retry("u", "503");
    metrics.limiter_error();
    metrics.ledger(dashgate::telemetry::LedgerOutcome::Written, 1);
    let observed = &metrics.observed;
    let (first, gap) = observed.token_histograms("m");
    first.observe(0.1);
    gap.observe(0.01);
    observed.attempt("u", None);
    observed.ledger_written(0);
    observed.image_saved("m", 1, 1);
    let upstream = UpstreamConfig::new("u", ProviderKind::Dashscope, "http://127.0.0.1:9");
    let upstream = dashgate::provider::Upstream::new(upstream, &config::MediaConfig::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let router =
        dashgate::route::Router::new(vec![Arc::new(upstream)], &config::CircuitConfig::default());
    let exposed = metrics.render(&router.gauges());
    let mut names = 0;
    for expr in &exprs {
        for (at, _) in expr.match_indices("dashgate_") {
            let name: String = expr[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let family = ["_bucket", "_total", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            assert!(
                exposed.contains(&format!("# TYPE {family} ")),
                "{name} (in {expr}) is not exposed"
            );
            names += 1;
        }
    }
    assert!(names >= exprs.len());
}
