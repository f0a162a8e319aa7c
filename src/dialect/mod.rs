//! What clients speak: `openai` (DashScope's compatible mode) and `native` (DashScope's own
//! API). `sse` (re-exported from the crate root, where the providers read it too) is the event
//! framing both share.

pub mod native;
pub mod openai;
pub mod scan;
pub use crate::sse;

use axum::http::HeaderValue;
use axum::response::Response;
use futures_util::Stream;
use futures_util::stream::BoxStream;
use std::convert::Infallible;

use std::pin::Pin;
use std::sync::Arc;
use tokio::time::Instant;

use crate::event::ChatEvent;
use crate::relay::Step;
use crate::state::RouteInfo;
use crate::telemetry::Metrics;
use crate::transform::MediaStats;

/// Turns canonical steps into one dialect's stream events.
pub trait StepEncoder: Send + 'static {
    /// The event for one step, if it makes one.
    fn step(&mut self, step: Step) -> Option<Bytes>;
    /// The closing event after the last step, if the dialect has one.
    fn finish(&mut self) -> Option<Bytes>;
}

/// Where the tokens a reply used are counted: the request's meter.
pub type UsageSink = crate::usage::Meter;

/// Times a stream: its first event (time to first token), its whole life, and the count of
/// streams in flight. Dropped with the stream, also when the client hangs up.
pub struct StreamTracker {
    metrics: Arc<Metrics>,
    route: &'static str,
    started: Instant,
    first_sent: bool,
    meter: UsageSink,
    /// Per-model time to first token and between tokens; the last event's time.
    first_token: prometheus_client::metrics::histogram::Histogram,
    inter_token: prometheus_client::metrics::histogram::Histogram,
    last_event: Option<Instant>,
    /// Who may take the stream up again after a hang-up; without one, no event ids.
    resume: Option<crate::resume::Ticket>,
}

impl StreamTracker {
    pub fn new(
        metrics: Arc<Metrics>,
        route: &'static str,
        started: Instant,
        meter: &UsageSink,
    ) -> Self {
        metrics.stream_started();
        let model = meter.model();
        let (first_token, inter_token) = metrics
            .observed
            .token_histograms(metrics.model_label(&model));
        Self {
            metrics,
            route,
            started,
            first_sent: false,
            meter: meter.clone(),
            first_token,
            inter_token,
            last_event: None,
            resume: None,
        }
    }

    /// Numbers the stream's events and keeps it for a reconnect (docs/fleet.md).
    pub fn resumable(mut self, ticket: crate::resume::Ticket) -> Self {
        self.resume = Some(ticket);
        self
    }

    fn sent(&mut self, event: &[u8]) {
        self.meter.sent(event);
        // Keep-alive comments are not tokens.
        if event.starts_with(b":") {
            return;
        }
        let now = Instant::now();
        if !self.first_sent {
            self.first_sent = true;
            let elapsed = now - self.started;
            self.metrics.first_token(self.route, elapsed);
            self.first_token.observe(elapsed.as_secs_f64());
        }
        if let Some(last) = self.last_event.replace(now) {
            self.inter_token.observe((now - last).as_secs_f64());
        }
    }
}

impl Drop for StreamTracker {
    fn drop(&mut self) {
        self.metrics
            .stream_ended(self.route, self.started.elapsed());
    }
}

/// Encodes a translated stream event by event, as the steps arrive.
pub fn encode_steps<E: StepEncoder>(
    steps: BoxStream<'static, Step>,
    encoder: E,
    usage: UsageSink,
) -> impl Stream<Item = Bytes> + Send + 'static {
    futures_util::stream::unfold(Some((steps, encoder)), move |state| {
        let usage = usage.clone();
        async move {
            let (mut steps, mut encoder) = state?;
            loop {
                match steps.next().await {
                    Some(step) => {
                        match &step {
                            Step::Event(ChatEvent::Usage(u)) => usage.usage(u),
                            Step::Event(ChatEvent::Error(e)) => usage.stream_error(&e.code),
                            Step::Fail(e) => usage.failed(200, e),
                            _ => {}
                        }
                        if let Some(bytes) = encoder.step(step) {
                            return Some((bytes, Some((steps, encoder))));
                        }
                    }
                    None => return encoder.finish().map(|bytes| (bytes, None)),
                }
            }
        }
    })
}

/// An SSE response; dropping its body (the client hung up) drops the upstream call with it,
/// at once or, for a resumable stream, after the grace period.
pub fn event_stream_response(
    events: impl Stream<Item = Bytes> + Send + 'static,
    mut tracker: StreamTracker,
) -> Response {
    match tracker.resume.take() {
        Some(ticket) => {
            let sent = Box::new(move |bytes: &[u8]| tracker.sent(bytes));
            sse_response(ticket.serve(events.boxed(), sent))
        }
        None => sse_response(events.map(move |bytes| {
            tracker.sent(&bytes);
            bytes
        })),
    }
}

/// The response for a stream of SSE events.
pub fn sse_response(events: impl Stream<Item = Bytes> + Send + 'static) -> Response {
    let events = events.map(Ok::<_, Infallible>);
    let mut response = Response::new(Body::from_stream(events));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream;charset=UTF-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells a reverse proxy in front of the gateway not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// A stream whose head goes out at once: SSE comments (`: keep-alive`), the first right away
/// (the device sees at once that the gateway took the request), then every `every` until the
/// upstream's first event, or an error event in the client's dialect if the call failed. For
/// device links that drop idle connections.
pub fn with_keepalive(
    first: impl Future<Output = Result<BoxStream<'static, Bytes>, Bytes>> + Send + 'static,
    every: Duration,
) -> impl Stream<Item = Bytes> + Send + 'static {
    enum State<F> {
        Start(Pin<Box<F>>),
        /// Waiting for the upstream's response head.
        Waiting(Pin<Box<F>>, tokio::time::Interval),
        /// The head came; waiting for its first event.
        FirstEvent(BoxStream<'static, Bytes>, tokio::time::Interval),
        Streaming(BoxStream<'static, Bytes>),
        Done,
    }
    const KEEPALIVE: &[u8] = b": keep-alive\n\n";
    let keepalive = || Bytes::from_static(KEEPALIVE);
    let stream = futures_util::stream::unfold(
        State::Start(Box::pin(first)),
        move |state| async move {
            match state {
                State::Start(first) => {
                    let mut interval = tokio::time::interval_at(Instant::now() + every, every);
                    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    Some((Some(keepalive()), State::Waiting(first, interval)))
                }
                State::Waiting(mut first, mut interval) => tokio::select! {
                    biased;
                    result = &mut first => match result {
                        Ok(events) => Some((None, State::FirstEvent(events, interval))),
                        Err(error_event) => Some((Some(error_event), State::Done)),
                    },
                    _ = interval.tick() => Some((Some(keepalive()), State::Waiting(first, interval))),
                },
                State::FirstEvent(mut events, mut interval) => tokio::select! {
                    biased;
                    event = events.next() => event.map(|event| (Some(event), State::Streaming(events))),
                    _ = interval.tick() => Some((Some(keepalive()), State::FirstEvent(events, interval))),
                },
                State::Streaming(mut events) => events
                    .next()
                    .await
                    .map(|event| (Some(event), State::Streaming(events))),
                State::Done => None,
            }
        },
    );
    stream.filter_map(|event| async move { event })
}

/// `x-dashgate-image-*`: what the image policy did to the request's images (summed).
pub fn with_media_headers(mut response: Response, media: Option<MediaStats>) -> Response {
    let Some(m) = media else { return response };
    let headers = response.headers_mut();
    for (name, value) in [
        ("x-dashgate-image-count", u64::from(m.images)),
        ("x-dashgate-image-original-bytes", m.original_bytes),
        ("x-dashgate-image-sent-bytes", m.sent_bytes),
        ("x-dashgate-image-tokens-before", m.tokens_before),
        ("x-dashgate-image-tokens-after", m.tokens_after),
        (
            "x-dashgate-image-metadata-stripped",
            u64::from(m.metadata_stripped),
        ),
        ("x-dashgate-image-resized", u64::from(m.resized)),
    ] {
        headers.insert(name, HeaderValue::from(value));
    }
    if m.relabelled > 0 {
        headers.insert(
            "x-dashgate-image-relabelled",
            HeaderValue::from(m.relabelled),
        );
    }
    response
}

/// Marks a response with the model and upstream it was for, for the request metrics.
pub fn tagged(mut response: Response, model: &str, upstream: &str) -> Response {
    response.extensions_mut().insert(RouteInfo {
        model: model.to_string(),
        upstream: upstream.to_string(),
    });
    response
}

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use std::time::Duration;

use crate::error::GatewayError;

/// Where a request came in, for its usage record.
#[derive(Clone, Copy)]
pub struct Entry<'a> {
    pub route: &'static str,
    pub dialect: &'static str,
    pub request_id: &'a str,
}

/// Admission: the caller's key first (nothing is read for a stranger), then the key's limits,
/// then the body within its size and time limits. From the key on, the request has a meter:
/// a refused request is recorded too.
pub async fn admit(
    state: &crate::state::AppState,
    headers: &HeaderMap,
    body: Body,
    entry: Entry<'_>,
) -> Result<(crate::auth::Caller, Bytes, UsageSink), GatewayError> {
    let span = tracing::trace_span!(
        target: crate::telemetry::otel::TARGET,
        "dashgate.admission",
        dashgate.key_name = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    let admission = admit_in(state, headers, body, entry, &span);
    tracing::Instrument::instrument(admission, span.clone()).await
}

async fn admit_in(
    state: &crate::state::AppState,
    headers: &HeaderMap,
    body: Body,
    entry: Entry<'_>,
    span: &tracing::Span,
) -> Result<(crate::auth::Caller, Bytes, UsageSink), GatewayError> {
    let caller = match state.auth.authenticate(headers).await {
        Ok(caller) => caller,
        Err(error) => {
            span.record("error.type", error.code());
            return Err(error);
        }
    };
    span.record("dashgate.key_name", &*caller.name);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let meter = UsageSink::new(
        &state.meters,
        &caller,
        entry.request_id,
        entry.route,
        entry.dialect,
        declared,
    );
    let admitted = async {
        if !state.limiter.admit(&caller).await? {
            meter.unchecked();
        }
        let limit = state.config.server.max_body_bytes;
        let idle = Duration::from_millis(state.config.server.body_idle_timeout_ms);
        read_body(headers, body, limit, state.body_timeout, idle).await
    };
    match admitted.await {
        Ok(bytes) => {
            meter.received(bytes.len());
            Ok((caller, bytes, meter))
        }
        Err(error) => {
            span.record("error.type", error.code());
            meter.failed(error.status().as_u16(), &error);
            Err(error)
        }
    }
}

/// Reads a request body up to `limit` bytes; more is 413, an upload that takes longer than
/// `timeout` or goes `idle` without a byte is 400. The buffer grows with the bytes that
/// arrive: a declared length is a promise, not memory to set aside before anything came.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
    idle: Duration,
) -> Result<Bytes, GatewayError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(GatewayError::PayloadTooLarge { limit });
    }
    let read = async {
        let mut stream = body.into_data_stream();
        const FIRST_BUFFER: usize = 64 * 1024;
        let mut buf = BytesMut::with_capacity(declared.map_or(8 * 1024, |l| {
            usize::try_from(l).unwrap_or(FIRST_BUFFER).min(FIRST_BUFFER)
        }));
        loop {
            let next = tokio::time::timeout(idle, stream.next())
                .await
                .map_err(|_| {
                    GatewayError::InvalidJson(
                        "the request body stalled: no byte arrived in time".into(),
                    )
                })?;
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|e| {
                GatewayError::InvalidJson(format!("request body could not be read: {e}"))
            })?;
            if buf.len() + chunk.len() > limit {
                return Err(GatewayError::PayloadTooLarge { limit });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| GatewayError::InvalidJson("the request body did not arrive in time".into()))?
}
