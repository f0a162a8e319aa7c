//! The access log: one line per request on stdout (JSON or `key=value` text, per
//! `[telemetry] log_format`), written when the request is wholly done (for a stream: its last
//! event, or the client hanging up). The same per-request handle carries the request's root
//! span, so the meter fills both at once. No key, no header, no message content: names,
//! figures and ids only.
//!
//! Lines go to a writer thread through a bounded queue: a stalled stdout drops lines
//! (`dashgate_access_log_dropped_total`), it never holds a request.

use std::io::Write as _;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use axum::http::{HeaderMap, Method};
use prometheus_client::metrics::counter::Counter;
use tracing::field::Empty;

mod line;

use line::Line;

use super::otel;
use crate::config::{LogFormat, TelemetryConfig};
use crate::usage_record::UsageRecord;

/// Lines a full queue turned away.
pub static LINES_DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

const QUEUE_LINES: usize = 8192;

/// Where finished lines go.
pub struct AccessLog {
    format: LogFormat,
    queue: SyncSender<String>,
}

impl AccessLog {
    /// The log for `config`, with its writer thread; none when `access_log = false`.
    pub fn start(config: &TelemetryConfig) -> Option<Arc<AccessLog>> {
        if !config.access_log {
            return None;
        }
        let (queue, lines) = mpsc::sync_channel::<String>(QUEUE_LINES);
        let spawned = std::thread::Builder::new()
            .name("dashgate-access-log".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(std::io::stdout());
                while let Ok(line) = lines.recv() {
                    let _ = out.write_all(line.as_bytes());
                    // Flushed when nothing else waits: lines leave at once when idle, in
                    // batches under load.
                    while let Ok(line) = lines.try_recv() {
                        let _ = out.write_all(line.as_bytes());
                    }
                    let _ = out.flush();
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "access log disabled: cannot start its writer");
            return None;
        }
        Some(Arc::new(AccessLog {
            format: config.log_format,
            queue,
        }))
    }

    fn write(&self, line: String) {
        if let Err(TrySendError::Full(_)) = self.queue.try_send(line) {
            LINES_DROPPED.inc();
        }
    }
}

tokio::task_local! {
    static CURRENT: Arc<RequestLog>;
}

/// Runs `work` (the request's handler) with `log` as the current request's.
pub async fn scope<F: Future>(log: Arc<RequestLog>, work: F) -> F::Output {
    CURRENT.scope(log, work).await
}

/// The handle of the request being handled, if any (the handler's task only).
pub fn current() -> Option<Arc<RequestLog>> {
    CURRENT.try_with(Arc::clone).ok()
}

/// One request's log line and root span, until the last holder (the middleware, the meter)
/// lets go.
pub struct RequestLog {
    /// The request's root span (disabled when traces are off).
    pub span: tracing::Span,
    sink: Option<Arc<AccessLog>>,
    request_id: Arc<str>,
    trace_id: Option<String>,
    method: Method,
    path: String,
    route: &'static str,
    started: Instant,
    fields: Mutex<Fields>,
}

#[derive(Default)]
struct Fields {
    status: u16,
    /// Time to the response head.
    head_ms: Option<f64>,
    model: Option<String>,
    upstream: Option<String>,
    metered: Option<Metered>,
}

/// What the meter knew at the end.
struct Metered {
    key_name: String,
    stream: bool,
    error_code: Option<String>,
    bytes_in: u64,
    bytes_out: u64,
    input_tokens: u64,
    output_tokens: u64,
    total_tokens: u64,
    estimated: bool,
    ttft_ms: Option<u64>,
}

impl RequestLog {
    /// Opens the request's span (a child of the client's trace, when it sent a
    /// `traceparent`) and its log entry; none when there is neither a log nor a trace to
    /// fill.
    pub fn start(
        sink: Option<Arc<AccessLog>>,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        request_id: &Arc<str>,
        route: &'static str,
    ) -> Option<Arc<RequestLog>> {
        let span = tracing::trace_span!(
            target: otel::TARGET,
            "dashgate.request",
            otel.kind = "server",
            otel.status_code = Empty,
            http.request.method = %method,
            url.path = path,
            dashgate.route = route,
            dashgate.request_id = &**request_id,
            http.response.status_code = Empty,
            dashgate.key_name = Empty,
            dashgate.upstream = Empty,
            dashgate.streamed = Empty,
            dashgate.time_to_first_token_ms = Empty,
            gen_ai.system = Empty,
            gen_ai.provider.name = Empty,
            gen_ai.operation.name = Empty,
            gen_ai.request.model = Empty,
            gen_ai.response.model = Empty,
            gen_ai.usage.input_tokens = Empty,
            gen_ai.usage.output_tokens = Empty,
            error.type = Empty,
        );
        if sink.is_none() && span.is_disabled() {
            return None;
        }
        otel::adopt_client_trace(&span, headers);
        let trace_id = otel::trace_id(&span, headers);
        Some(Arc::new(RequestLog {
            span,
            sink,
            request_id: request_id.clone(),
            trace_id,
            method: method.clone(),
            path: path.to_string(),
            route,
            started: Instant::now(),
            fields: Mutex::new(Fields::default()),
        }))
    }

    fn with(&self, f: impl FnOnce(&mut Fields)) {
        let mut fields = match self.fields.lock() {
            Ok(fields) => fields,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut fields);
    }

    /// The response head went out.
    pub fn responded(&self, status: u16, model: &str, upstream: &str) {
        let head_ms = self.started.elapsed().as_secs_f64() * 1e3;
        self.span
            .record("http.response.status_code", i64::from(status));
        if status >= 500 {
            self.span.record("otel.status_code", "ERROR");
        }
        self.with(|f| {
            f.status = status;
            f.head_ms = Some(head_ms);
            if model != "-" {
                f.model.get_or_insert_with(|| model.to_string());
            }
            if upstream != "-" {
                f.upstream.get_or_insert_with(|| upstream.to_string());
            }
        });
    }

    /// An upstream took the request.
    pub fn upstream_chosen(&self, provider: &'static str) {
        self.span.record("gen_ai.system", provider);
        self.span.record("gen_ai.provider.name", provider);
    }

    /// The meter's final figures (called once, as the meter is dropped).
    pub fn metered(&self, record: &UsageRecord) {
        let span = &self.span;
        if !span.is_disabled() {
            span.record("dashgate.key_name", record.key_name.as_str());
            span.record("dashgate.streamed", record.stream);
            if !record.model.is_empty() {
                span.record("gen_ai.request.model", record.model.as_str());
                // The gateway asks the upstream for the model the client named.
                span.record("gen_ai.response.model", record.model.as_str());
            }
            span.record(
                "gen_ai.operation.name",
                if self.route == "completions" {
                    "text_completion"
                } else {
                    "chat"
                },
            );
            if record.upstream != "-" {
                span.record("dashgate.upstream", record.upstream.as_str());
                span.record("gen_ai.usage.input_tokens", record.prompt_tokens as i64);
                span.record(
                    "gen_ai.usage.output_tokens",
                    record.completion_tokens as i64,
                );
            }
            if let Some(ttft) = record.ttft_ms {
                span.record("dashgate.time_to_first_token_ms", ttft as i64);
            }
            if let Some(code) = &record.error_code {
                span.record("error.type", code.as_str());
                span.record("otel.status_code", "ERROR");
            }
        }
        if self.sink.is_none() {
            return;
        }
        let metered = Metered {
            key_name: record.key_name.clone(),
            stream: record.stream,
            error_code: record.error_code.clone(),
            bytes_in: record.bytes_in,
            bytes_out: record.bytes_out,
            input_tokens: record.prompt_tokens,
            output_tokens: record.completion_tokens,
            total_tokens: record.total_tokens,
            estimated: record.estimated,
            ttft_ms: record.ttft_ms,
        };
        let model = (!record.model.is_empty()).then(|| record.model.clone());
        let upstream = (record.upstream != "-").then(|| record.upstream.clone());
        self.with(|f| {
            f.metered = Some(metered);
            if model.is_some() {
                f.model = model;
            }
            if upstream.is_some() {
                f.upstream = upstream;
            }
        });
    }

    fn line(&self, format: LogFormat, fields: &Fields) -> String {
        let latency_ms = self.started.elapsed().as_secs_f64() * 1e3;
        let m = fields.metered.as_ref();
        let ts = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let round = |ms: f64| (ms * 1000.0).round() / 1000.0;
        let line = Line {
            ts,
            request_id: &self.request_id,
            trace_id: self.trace_id.as_deref(),
            method: self.method.as_str(),
            path: &self.path,
            route: self.route,
            key: m.map(|m| m.key_name.as_str()),
            model: fields.model.as_deref(),
            upstream: fields.upstream.as_deref(),
            status: fields.status,
            stream: m.map(|m| m.stream),
            error: m.and_then(|m| m.error_code.as_deref()),
            bytes_in: m.map(|m| m.bytes_in),
            bytes_out: m.map(|m| m.bytes_out),
            input_tokens: m.map(|m| m.input_tokens),
            output_tokens: m.map(|m| m.output_tokens),
            total_tokens: m.map(|m| m.total_tokens),
            tokens_estimated: m.map(|m| m.estimated),
            latency_ms: round(latency_ms),
            ttfb_ms: fields.head_ms.map(round),
            ttft_ms: m.and_then(|m| m.ttft_ms),
        };
        match format {
            LogFormat::Json => {
                let mut out = Vec::with_capacity(512);
                if serde_json::to_writer(&mut out, &line).is_err() {
                    return String::new();
                }
                out.push(b'\n');
                // serde_json writes only valid UTF-8.
                String::from_utf8(out).unwrap_or_default()
            }
            LogFormat::Text => line.text(),
        }
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let Some(sink) = &self.sink else { return };
        let fields = match self.fields.get_mut() {
            Ok(fields) => std::mem::take(fields),
            Err(poisoned) => std::mem::take(poisoned.into_inner()),
        };
        sink.write(self.line(sink.format, &fields));
    }
}

#[cfg(test)]
mod tests;
