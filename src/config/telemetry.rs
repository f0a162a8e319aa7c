//! `[telemetry]`: traces and the access log.

use serde::Deserialize;

/// Trace export and the access log (docs/observability.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/HTTP (protobuf) collector, e.g. `http://127.0.0.1:4318` (`/v1/traces` is added
    /// when the URL has no path). Unset: no traces.
    pub otlp_endpoint: Option<String>,
    /// Share of traces kept (0.0 to 1.0); a client's sampled `traceparent` is followed.
    pub sample_ratio: f64,
    /// The access log's lines: `json` or `text`.
    pub log_format: LogFormat,
    /// One access log line per request on stdout.
    pub access_log: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sample_ratio: 1.0,
            log_format: LogFormat::Text,
            access_log: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}
