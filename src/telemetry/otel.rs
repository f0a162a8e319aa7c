//! OpenTelemetry traces: the OTLP/HTTP pipeline behind `[telemetry] otlp_endpoint`, the
//! `tracing` layer that turns the gateway's spans into OTel spans, and W3C `traceparent` in
//! and out. Off (no layer, spans disabled at their call sites) unless an endpoint is set.
//!
//! Export never touches the request path: a finished span is put in a bounded queue with
//! `try_send` (a full queue drops it, counted in `dashgate_trace_spans_dropped_total`) and a
//! thread of its own batches and sends them.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, Span, SpanData, SpanExporter};
use prometheus_client::metrics::counter::Counter;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::TelemetryConfig;

/// The target every exported span is made with: the OTel layer listens to it alone, and the
/// log filter (`DASHGATE_LOG`, `info` by default) never enables its `trace`-level spans.
pub const TARGET: &str = "dashgate::otel";

/// Spans waiting for the exporter, at most.
const QUEUE_SPANS: usize = 4096;
/// Spans per export request, at most.
const BATCH_SPANS: usize = 512;
/// How long a span waits for its batch to fill before the batch is sent anyway.
const EXPORT_EVERY: Duration = Duration::from_millis(500);

/// Spans the full queue turned away; shared by every gateway in the process.
pub static SPANS_DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);
/// Spans handed to the exporter (sent or failed).
pub static SPANS_EXPORTED: LazyLock<Counter> = LazyLock::new(Counter::default);
/// Export requests the collector did not take.
pub static EXPORT_ERRORS: LazyLock<Counter> = LazyLock::new(Counter::default);

/// Keeps the pipeline alive; dropping it sends what is queued and stops the export thread.
pub struct Guard {
    provider: SdkTracerProvider,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "trace export did not shut down cleanly");
        }
    }
}

/// The collector URL: `/v1/traces` when the configured one names no path.
pub fn traces_url(endpoint: &str) -> String {
    match url::Url::parse(endpoint) {
        Ok(url) if url.path() == "/" || url.path().is_empty() => {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        }
        _ => endpoint.to_string(),
    }
}

/// The gateway's subscriber: logs on stderr filtered by `logs` (`DASHGATE_LOG`), and the trace
/// layer when an endpoint is set. The trace layer filters on its own, so the log level never
/// decides what is traced; without an endpoint there is no trace layer, and the `trace`-level
/// spans of [`TARGET`] are disabled where they are made.
pub fn dispatch(
    config: &TelemetryConfig,
    logs: tracing_subscriber::EnvFilter,
) -> Result<(tracing::Dispatch, Option<Guard>), String> {
    use tracing_subscriber::prelude::*;
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(logs);
    let registry = tracing_subscriber::registry().with(logs);
    Ok(match layer(config)? {
        Some((traces, guard)) => (registry.with(traces).into(), Some(guard)),
        None => (registry.into(), None),
    })
}

/// The `tracing` layer for `config`, or none when no endpoint is set.
pub fn layer<S>(
    config: &TelemetryConfig,
) -> Result<
    Option<(
        impl tracing_subscriber::Layer<S> + Send + Sync + 'static,
        Guard,
    )>,
    String,
>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
{
    use tracing_subscriber::Layer as _;
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(None);
    };
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(traces_url(endpoint))
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("telemetry.otlp_endpoint: {e}"))?;
    let provider = SdkTracerProvider::builder()
        .with_span_processor(Queued::start(exporter))
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(
            Resource::builder_empty()
                .with_service_name("dashgate")
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        )
        .build();
    let tracer = provider.tracer("dashgate");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_level(false)
        .with_tracked_inactivity(false)
        .with_filter(
            tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::TRACE),
        );
    Ok(Some((layer, Guard { provider })))
}

/// A span processor with a bounded queue and a thread of its own.
#[derive(Debug)]
struct Queued {
    queue: SyncSender<Message>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

enum Message {
    Span(Box<SpanData>),
    /// Send what is queued, then answer.
    Flush(SyncSender<()>),
}

impl Queued {
    fn start<E: SpanExporter + 'static>(exporter: E) -> Queued {
        let (queue, receiver) = mpsc::sync_channel(QUEUE_SPANS);
        let thread = std::thread::Builder::new()
            .name("dashgate-otlp".into())
            .spawn(move || export_loop(exporter, receiver))
            .ok();
        Queued {
            queue,
            thread: Mutex::new(thread),
        }
    }
}

fn export_loop<E: SpanExporter>(exporter: E, receiver: Receiver<Message>) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(BATCH_SPANS);
    let mut oldest: Option<Instant> = None;
    let send = |batch: &mut Vec<SpanData>| {
        if batch.is_empty() {
            return;
        }
        let count = batch.len() as u64;
        let spans = std::mem::replace(batch, Vec::with_capacity(BATCH_SPANS));
        SPANS_EXPORTED.inc_by(count);
        if let Err(e) = futures_executor::block_on(exporter.export(spans)) {
            EXPORT_ERRORS.inc();
            tracing::warn!(error = %e, spans = count, "trace export failed");
        }
    };
    loop {
        let wait = oldest.map_or(EXPORT_EVERY, |t| EXPORT_EVERY.saturating_sub(t.elapsed()));
        match receiver.recv_timeout(wait) {
            Ok(Message::Span(span)) => {
                oldest.get_or_insert_with(Instant::now);
                batch.push(*span);
                if batch.len() >= BATCH_SPANS {
                    send(&mut batch);
                    oldest = None;
                }
            }
            Ok(Message::Flush(done)) => {
                send(&mut batch);
                oldest = None;
                let _ = done.send(());
            }
            Err(RecvTimeoutError::Timeout) => {
                send(&mut batch);
                oldest = None;
            }
            Err(RecvTimeoutError::Disconnected) => {
                send(&mut batch);
                break;
            }
        }
    }
    let _ = exporter.shutdown();
}

impl opentelemetry_sdk::trace::SpanProcessor for Queued {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if let Err(TrySendError::Full(_)) = self.queue.try_send(Message::Span(Box::new(span))) {
            SPANS_DROPPED.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        let (done, wait) = mpsc::sync_channel(1);
        self.queue
            .send(Message::Flush(done))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        wait.recv_timeout(Duration::from_secs(10))
            .map_err(|_| OTelSdkError::Timeout(Duration::from_secs(10)))
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.force_flush()?;
        let thread = match self.thread.lock() {
            Ok(mut thread) => thread.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        // The thread ends once every sender is gone; the provider drops this processor
        // after shutdown, so it is not joined here (that would wait on ourselves).
        drop(thread);
        Ok(())
    }
}

/// The client's `traceparent` header, when it is a well-formed W3C one.
pub fn client_context(headers: &HeaderMap) -> Option<SpanContext> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    parse_traceparent(value)
}

/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`; all-zero ids are invalid.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    use opentelemetry::trace::{SpanId, TraceId, TraceState};
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let span_id = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2 || version == "ff" || trace_id.len() != 32 || span_id.len() != 16 {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = u8::from_str_radix(flags.get(..2)?, 16).ok()?;
    let context = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

/// Makes the client's trace (if it sent one) the parent of the request's span.
pub fn adopt_client_trace(span: &tracing::Span, headers: &HeaderMap) {
    if span.is_disabled() {
        return;
    }
    if let Some(parent) = client_context(headers) {
        let _ = span.set_parent(Context::new().with_remote_span_context(parent));
    }
}

/// The trace id of `span` (32 hex digits), when it is exported; else the client's own.
pub fn trace_id(span: &tracing::Span, headers: &HeaderMap) -> Option<String> {
    if !span.is_disabled() {
        let context = span.context();
        let span_context = context.span().span_context().clone();
        if span_context.is_valid() {
            return Some(span_context.trace_id().to_string());
        }
    }
    client_context(headers).map(|c| c.trace_id().to_string())
}

/// The `traceparent` for an upstream call: the current span's when traces are on (the
/// upstream's work joins the gateway's trace), else the client's own, passed through.
pub fn upstream_traceparent(client_headers: &HeaderMap) -> Option<HeaderValue> {
    let span = tracing::Span::current();
    if !span.is_disabled() {
        let context = span.context();
        let sc = context.span().span_context().clone();
        if sc.is_valid() {
            let value = format!(
                "00-{}-{}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags().to_u8()
            );
            return HeaderValue::from_str(&value).ok();
        }
    }
    let value = client_headers.get("traceparent")?;
    parse_traceparent(value.to_str().ok()?).map(|_| value.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span_enabled(config: &TelemetryConfig) -> bool {
        let filter = tracing_subscriber::EnvFilter::new("info");
        let (dispatch, _guard) = dispatch(config, filter).expect("subscriber");
        tracing::dispatcher::with_default(&dispatch, || {
            !tracing::trace_span!(target: TARGET, "dashgate.test").is_disabled()
        })
    }

    #[test]
    fn spans_are_made_only_when_an_endpoint_is_set() {
        let mut config = TelemetryConfig::default();
        assert!(!span_enabled(&config), "no endpoint: spans disabled");
        config.otlp_endpoint = Some("http://127.0.0.1:9".into());
        assert!(span_enabled(&config), "with an endpoint: spans made");
    }

    #[test]
    fn traceparent_parsing_takes_only_w3c_values() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = parse_traceparent(good).expect("valid");
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(context.is_sampled());
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_traces_path_is_added_to_a_bare_endpoint() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://127.0.0.1:4318/"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector/custom/traces"),
            "http://collector/custom/traces"
        );
    }
}
