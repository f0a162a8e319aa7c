//! The way through, shared by both dialects: route the request, call the upstream in the
//! dialect it speaks, and hand the reply back raw (client and upstream speak the same dialect:
//! the fast path) or as canonical steps for the client's dialect to encode.

use std::collections::VecDeque;
use std::time::Duration;

use axum::http::{HeaderMap, header};
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::auth::Caller;
use crate::chat::Chat;
use crate::config::UpstreamDialect;
use crate::dialect::sse::{self, EventSplitter};
use crate::error::GatewayError;
use crate::event::{ChatEvent, Meta, Reply, StreamError};
use crate::provider::{self, Api, ReadError, Upstream};
use crate::route::Lease;
use crate::server::AppState;
use crate::transform::{self, MediaStats, Prepared};
use tokio_util::sync::CancellationToken;

/// The two dialects of DashScope, as clients and upstreams speak them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI-compatible (DashScope compatible mode).
    OpenAi,
    /// DashScope native (`/api/v1/services/aigc/...`).
    Native,
}

/// A decoded client request on its way upstream.
pub struct Request<'a> {
    pub dialect: Dialect,
    /// The client's endpoint; on the fast path the upstream gets the same one.
    pub api: Api,
    pub chat: Chat,
    /// The client's body, forwarded unchanged on the fast path.
    pub original: Bytes,
    pub caller: &'a Caller,
    pub headers: &'a HeaderMap,
    pub request_id: &'a str,
    /// The request's meter: admission's reservation is settled through it.
    pub meter: &'a crate::usage::Meter,
}

/// What came back.
pub enum Outcome {
    /// The upstream's reply in the client's own dialect, to relay as it is.
    Raw(Upstreamed),
    /// A translated stream, from the named upstream.
    Steps(BoxStream<'static, Step>, String),
    /// A translated whole reply, from the named upstream.
    Whole(Reply, String),
}

/// An upstream's successful response head, with what the rest of the reply needs.
pub struct Upstreamed {
    pub response: provider::UpstreamResponse,
    /// Holds the upstream's concurrency slot until the reply is done.
    pub lease: Lease,
    pub deadline: Instant,
    /// Cancelled when the shutdown drain time is over.
    pub abort: CancellationToken,
}

impl Upstreamed {
    pub fn is_event_stream(&self) -> bool {
        is_event_stream(&self.response)
    }

    pub fn into_events(self) -> SseEvents {
        SseEvents::new(self)
    }

    pub async fn read_whole(self) -> Result<Bytes, GatewayError> {
        let upstream = self.lease.upstream.clone();
        let body = read_whole(self.response, &upstream, self.deadline).await;
        if body.is_err() {
            self.lease.circuit.record_failure();
        }
        body
    }
}

/// Where a stream client's events come from.
pub enum StreamSource {
    /// The upstream's own events, in the client's dialect.
    Raw(Upstreamed),
    /// Canonical steps to encode, and the upstream's name.
    Steps(BoxStream<'static, Step>, String),
}

impl Outcome {
    /// The outcome for a client that asked for a stream: a whole translated reply becomes steps.
    pub fn into_stream_source(self) -> StreamSource {
        match self {
            Outcome::Raw(upstreamed) => StreamSource::Raw(upstreamed),
            Outcome::Steps(steps, name) => StreamSource::Steps(steps, name),
            Outcome::Whole(reply, name) => {
                let mut steps = vec![Step::Meta(reply.meta.clone())];
                steps.extend(reply.events().into_iter().map(Step::Event));
                StreamSource::Steps(futures_util::stream::iter(steps).boxed(), name)
            }
        }
    }
}

/// One step of a translated stream.
// Events are nearly every step: boxing them would allocate per event.
#[allow(clippy::large_enum_variant)]
pub enum Step {
    /// The reply's id, model and time, once, before its first event.
    Meta(Meta),
    Event(ChatEvent),
    /// The gateway gave up on the upstream mid-stream (timeout, broken connection).
    Fail(GatewayError),
}

/// Failures worth another try, before the first byte: the upstream was unreachable, slow,
/// overloaded or failing; never a client's 4xx other than 429.
fn retryable(error: &GatewayError) -> bool {
    match error {
        GatewayError::UpstreamUnreachable { .. } | GatewayError::UpstreamTimeout { .. } => true,
        GatewayError::UpstreamStatus { status, .. } => matches!(status, 500 | 502 | 503 | 504),
        GatewayError::UpstreamRejected(r) => r.status == 429,
        _ => false,
    }
}

/// Failures that say the upstream is unhealthy for this model, and so count against its
/// circuit: unreachable, slow, 502/503/504, a broken reply. A 429 is a busy upstream, and a
/// 500 is DashScope's answer to one request (`InternalError.Algo`), not word on its health:
/// neither counts (a 500 is still retried).
fn counts_against(error: &GatewayError) -> bool {
    match error {
        GatewayError::UpstreamUnreachable { .. }
        | GatewayError::UpstreamTimeout { .. }
        | GatewayError::UpstreamProtocol { .. } => true,
        GatewayError::UpstreamStatus { status, .. } => matches!(status, 502..=504),
        _ => false,
    }
}

/// A short label for metrics and logs.
fn reason(error: &GatewayError) -> &'static str {
    match error {
        GatewayError::UpstreamUnreachable { .. } => "unreachable",
        GatewayError::UpstreamTimeout { .. } => "timeout",
        GatewayError::UpstreamRejected(_) => "429",
        GatewayError::UpstreamStatus { status: 503, .. } => "503",
        GatewayError::UpstreamStatus { .. } => "5xx",
        _ => "other",
    }
}

/// The client's side of a call, the same for every try.
pub struct Call<'a> {
    pub model: &'a str,
    pub stream: bool,
    pub caller: &'a Caller,
    pub headers: &'a HeaderMap,
    pub request_id: &'a str,
    pub meter: &'a crate::usage::Meter,
    /// Tokens to reserve against the key's TPM and quota at admission.
    pub reserve: u64,
}

/// Sends to an upstream for `call.model`, retrying and failing over before the first byte:
/// `body_for` gives the endpoint and body for the upstream taken.
pub async fn send_with_retries(
    state: &AppState,
    call: &Call<'_>,
    mut body_for: impl FnMut(&Upstream) -> (Api, Bytes),
) -> Result<Upstreamed, GatewayError> {
    let retry = &state.config.retry;
    let budget_end = Instant::now() + retry.budget();
    let mut tried: Vec<usize> = Vec::new();
    let mut last_error: Option<GatewayError> = None;
    for attempt in 1..=retry.attempts {
        let lease = match state.router.take(call.model, &tried) {
            Ok(lease) => lease,
            Err(error) => return Err(last_error.unwrap_or(error)),
        };
        if attempt == 1 && !call.meter.is_unchecked() {
            // Admission: nothing the gateway refused before this point counted.
            let reservation = state.limiter.reserve(call.caller, call.reserve).await?;
            call.meter.reserved(reservation);
            let account = state
                .limiter
                .reserve_account(call.caller, call.reserve)
                .await?;
            call.meter.account_reserved(account);
        }
        let upstream = lease.upstream.clone();
        let (api, body) = body_for(&upstream);
        let started = Instant::now();
        let span = attempt_span(&upstream, call, attempt, last_error.as_ref());
        let send = upstream.send(
            api,
            provider::Call {
                body,
                stream: call.stream,
                request_id: call.request_id,
                mode: state.auth.mode(),
                passthrough_token: call.caller.passthrough_token.as_deref(),
                client_headers: call.headers,
            },
        );
        let sent = tokio::select! {
            biased;
            _ = state.abort.cancelled() => return Err(GatewayError::ShuttingDown),
            sent = tracing::Instrument::instrument(send, span.clone()) => sent,
        };
        state
            .metrics
            .observed
            .attempt(&upstream.config.name, sent.as_ref().err());
        record_attempt(&span, &sent);
        drop(span);
        let error = match sent {
            Ok(response) => {
                if let Some(log) = crate::telemetry::access_log::current() {
                    log.upstream_chosen(provider_name(&upstream));
                }
                lease.circuit.record_success();
                return Ok(Upstreamed {
                    response,
                    lease,
                    deadline: started + upstream.config.request_timeout(),
                    abort: state.abort.clone(),
                });
            }
            Err(error) => error,
        };
        if counts_against(&error) {
            lease.circuit.record_failure();
        }
        if !retryable(&error) || attempt == retry.attempts {
            return Err(error);
        }
        tried.push(lease.index);
        drop(lease);
        // Another upstream can take it at once; the same one gets its backoff, or the wait
        // its Retry-After asks for.
        let wait = if state.router.has_fresh(call.model, &tried) {
            Duration::ZERO
        } else {
            match retry_after(&error) {
                Some(wait) if wait.as_millis() > u128::from(retry.max_retry_after_ms) => {
                    return Err(error);
                }
                Some(wait) => wait,
                None => backoff(retry, attempt),
            }
        };
        if Instant::now() + wait > budget_end {
            return Err(error);
        }
        tracing::info!(upstream = %upstream.config.name, reason = reason(&error), attempt, "retrying");
        state.metrics.retry(&upstream.config.name, reason(&error));
        tokio::time::sleep(wait).await;
        last_error = Some(error);
    }
    Err(last_error.unwrap_or(GatewayError::Internal))
}

/// The span of one upstream call: which upstream, which try, its circuit, and why the try
/// before it failed.
fn attempt_span(
    upstream: &Upstream,
    call: &Call<'_>,
    attempt: u32,
    previous: Option<&GatewayError>,
) -> tracing::Span {
    use tracing::field::Empty;
    let span = tracing::trace_span!(
        target: crate::telemetry::otel::TARGET,
        "dashgate.upstream",
        otel.kind = "client",
        otel.status_code = Empty,
        dashgate.upstream = %upstream.config.name,
        dashgate.attempt = i64::from(attempt),
        dashgate.circuit_state = upstream.slot.circuit.state().as_str(),
        dashgate.retry_reason = Empty,
        gen_ai.system = provider_name(upstream),
        gen_ai.operation.name = "chat",
        gen_ai.request.model = call.model,
        dashgate.streamed = call.stream,
        http.response.status_code = Empty,
        error.type = Empty,
    );
    if let Some(previous) = previous {
        span.record("dashgate.retry_reason", reason(previous));
    }
    span
}

fn record_attempt(span: &tracing::Span, sent: &Result<provider::UpstreamResponse, GatewayError>) {
    if span.is_disabled() {
        return;
    }
    match sent {
        Ok(response) => span.record(
            "http.response.status_code",
            i64::from(response.status().as_u16()),
        ),
        Err(error) => {
            let status = match error {
                GatewayError::UpstreamStatus { status, .. } => Some(*status),
                GatewayError::UpstreamRejected(r) => Some(r.status),
                _ => None,
            };
            if let Some(status) = status {
                span.record("http.response.status_code", i64::from(status));
            }
            span.record("otel.status_code", "ERROR");
            span.record("error.type", crate::telemetry::observed::outcome(error))
        }
    };
}

/// `gen_ai.system` for an upstream.
fn provider_name(upstream: &Upstream) -> &'static str {
    match upstream.config.provider {
        crate::config::ProviderKind::Dashscope => "dashscope",
        crate::config::ProviderKind::Openai => "openai",
    }
}

/// Full-jitter exponential backoff.
fn backoff(retry: &crate::config::RetryConfig, attempt: u32) -> Duration {
    let ceiling = retry
        .backoff_ms
        .saturating_mul(1u64 << (attempt - 1).min(16))
        .min(retry.max_backoff_ms);
    Duration::from_millis(fastrand::u64(0..=ceiling))
}

/// An upstream's `Retry-After` in seconds.
fn retry_after(error: &GatewayError) -> Option<Duration> {
    let seconds: u64 = error.retry_after()?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds))
}

/// The dialect an upstream is spoken to for a client of `client` dialect.
fn wire_for(upstream: &Upstream, client: Dialect) -> Dialect {
    if !upstream.has_native() {
        return Dialect::OpenAi;
    }
    match upstream.config.dialect {
        UpstreamDialect::Auto => client,
        UpstreamDialect::Compatible => Dialect::OpenAi,
        UpstreamDialect::Native => Dialect::Native,
    }
}

pub async fn dispatch(
    state: &AppState,
    request: Request<'_>,
) -> Result<(Outcome, Option<MediaStats>), GatewayError> {
    request.caller.check_model(&request.chat.model)?;
    let call = Call {
        model: &request.chat.model,
        stream: request.chat.is_stream(),
        caller: request.caller,
        headers: request.headers,
        request_id: request.request_id,
        meter: request.meter,
        reserve: 0,
    };
    let variants = if transform::has_media(&request.chat) {
        let span = tracing::trace_span!(
            target: crate::telemetry::otel::TARGET,
            "dashgate.media",
            dashgate.images = tracing::field::Empty,
            dashgate.image_original_bytes = tracing::field::Empty,
            dashgate.image_sent_bytes = tracing::field::Empty,
        );
        let variants =
            tracing::Instrument::instrument(prepare_media(state, &request), span.clone()).await?;
        if let Some(stats) = variants.first().map(|v| v.prepared.stats) {
            span.record("dashgate.images", i64::from(stats.images));
            span.record("dashgate.image_original_bytes", stats.original_bytes as i64);
            span.record("dashgate.image_sent_bytes", stats.sent_bytes as i64);
        }
        variants
    } else {
        Vec::new()
    };
    let fast_path = state.config.server.fast_path;
    // Every stream is metered from the upstream's own usage, also for a client that did not
    // ask for it (the usage chunk is then kept from it).
    let ask_usage =
        request.dialect == Dialect::OpenAi && call.stream && !request.chat.wants_usage();
    // Bodies are made once per media variant and dialect, whichever upstream a retry lands on.
    // One set per variant, and a last one for the request as it came.
    let mut bodies: Vec<[Option<(Api, Bytes)>; 3]> = vec![[None, None, None]; variants.len() + 1];
    // Documents named as `fileid://`: each upstream gets its own rewrite of the request.
    let files = crate::files::resolve::prepare(state, &request.chat, request.caller).await?;
    let mut file_bodies: std::collections::HashMap<String, (Api, Bytes)> = Default::default();
    let image_stats = variants
        .first()
        .map(|v| v.prepared.stats)
        .unwrap_or_default();
    let call = Call {
        reserve: reserve_for(
            state,
            request.original.len(),
            &image_stats,
            request.chat.max_tokens,
        ),
        ..call
    };
    let upstreamed = send_with_retries(state, &call, |upstream| {
        let wire = wire_for(upstream, request.dialect);
        let at = variant_of(&variants, upstream).min(variants.len());
        let (chat, prepared) = match variants.get(at) {
            Some(v) => (v.chat.as_ref().unwrap_or(&request.chat), Some(&v.prepared)),
            None => (&request.chat, None),
        };
        let rewrites = files.as_ref().and_then(|f| f.get(&upstream.config.name));
        if let Some(rewrites) = rewrites {
            return file_bodies
                .entry(upstream.config.name.clone())
                .or_insert_with(|| {
                    let chat = crate::files::resolve::apply(chat, rewrites);
                    match wire {
                        Dialect::OpenAi => (Api::Chat, provider::openai::encode_request(&chat)),
                        Dialect::Native => provider::dashscope::encode_request(&chat),
                    }
                })
                .clone();
        }
        let changed = prepared.is_some_and(|p| !p.replacements.is_empty());
        let slot = match (wire == request.dialect && fast_path, wire) {
            (true, _) => 2,
            (false, Dialect::OpenAi) => 0,
            (false, Dialect::Native) => 1,
        };
        bodies[at][slot]
            .get_or_insert_with(|| match slot {
                2 if !changed && ask_usage => (request.api, asking_usage(&request.original, chat)),
                2 if !changed => (request.api, request.original.clone()),
                2 => {
                    let replacements = prepared.map_or(&[][..], |p| &p.replacements[..]);
                    let native = request.dialect == Dialect::Native;
                    let body = transform::apply_to_body(&request.original, replacements, native);
                    // Never the original when the edit did not apply: it still holds what the
                    // media stage removed. The checked request, encoded, instead.
                    let body = body.unwrap_or_else(|| match request.dialect {
                        Dialect::OpenAi => provider::openai::encode_request(chat),
                        Dialect::Native => provider::dashscope::encode_request(chat).1,
                    });
                    let body = if ask_usage {
                        asking_usage(&body, chat)
                    } else {
                        body
                    };
                    (request.api, body)
                }
                0 => (Api::Chat, provider::openai::encode_request(chat)),
                _ => provider::dashscope::encode_request(chat),
            })
            .clone()
    })
    .await?;
    let media = variants
        .get(variant_of(&variants, &upstreamed.lease.upstream))
        .map(|v| v.prepared.stats)
        .filter(|stats| stats.images > 0);
    let wire = wire_for(&upstreamed.lease.upstream, request.dialect);
    if wire == request.dialect && fast_path {
        return Ok((Outcome::Raw(upstreamed), media));
    }
    let name = upstreamed.lease.upstream.config.name.clone();
    if call.stream && upstreamed.is_event_stream() {
        let steps = decode_stream(upstreamed.into_events(), wire).boxed();
        return Ok((Outcome::Steps(steps, name), media));
    }
    let upstream = upstreamed.lease.upstream.clone();
    let body = upstreamed.read_whole().await?;
    let reply = match wire {
        Dialect::OpenAi => provider::openai::decode_completion(&body),
        Dialect::Native => provider::dashscope::decode_reply(&body),
    };
    reply
        .map(|reply| (Outcome::Whole(reply, name), media))
        .map_err(|e| protocol_error(&upstream, &format!("unreadable reply: {e}")))
}

/// The tokens a request may use, reserved at admission: its prompt estimated from its text
/// bytes (four to a token) and its images' tokens, and its `max_tokens` or the configured
/// default.
pub fn reserve_for(
    state: &AppState,
    body_bytes: usize,
    images: &MediaStats,
    max_tokens: Option<u32>,
) -> u64 {
    let image_text = images.original_bytes.saturating_mul(4) / 3;
    let text = (body_bytes as u64).saturating_sub(image_text) / 4;
    let completion = max_tokens.map_or(state.config.limits.reserve_completion_tokens, u64::from);
    text + images.tokens_after + completion
}

/// An OpenAI-dialect stream request body that asks for the usage chunk. Without
/// `stream_options` the field is put in front, bytes otherwise untouched; with one (that does
/// not ask), the request is encoded anew.
fn asking_usage(body: &Bytes, chat: &Chat) -> Bytes {
    const FIELD: &[u8] = br#""stream_options":{"include_usage":true},"#;
    let start = body.iter().position(|b| !b.is_ascii_whitespace());
    match start {
        Some(i) if chat.stream_options.is_none() && body[i] == b'{' => {
            let mut out = Vec::with_capacity(body.len() + FIELD.len());
            out.extend_from_slice(&body[..=i]);
            out.extend_from_slice(FIELD);
            out.extend_from_slice(&body[i + 1..]);
            Bytes::from(out)
        }
        _ => provider::openai::encode_request(chat),
    }
}

/// A request as one media policy made it.
struct Variant {
    media: crate::config::MediaConfig,
    fetches: bool,
    /// The request with new URLs, when the policy changed any (a camera frame is megabytes:
    /// no copy when nothing changed).
    chat: Option<Chat>,
    prepared: Prepared,
}

/// The variant an upstream's policy makes (an index past the end: no media, the request as is).
fn variant_of(variants: &[Variant], upstream: &Upstream) -> usize {
    variants
        .iter()
        .position(|v| v.media == upstream.media && v.fetches == upstream.fetcher.is_some())
        .unwrap_or(usize::MAX)
}

/// Runs the transform stage once per distinct media policy among the upstreams serving the
/// model (almost always one); a text-only request needs none.
async fn prepare_media(
    state: &AppState,
    request: &Request<'_>,
) -> Result<Vec<Variant>, GatewayError> {
    let mut variants: Vec<Variant> = Vec::new();
    if !transform::has_media(&request.chat) {
        return Ok(variants);
    }
    for upstream in state.router.serving(&request.chat.model) {
        if variant_of(&variants, upstream) != usize::MAX {
            continue;
        }
        let limiter = &state.media_limiter;
        let prepared = transform::prepare(
            &request.chat,
            &upstream.media,
            upstream.fetcher.as_ref(),
            limiter,
        )
        .await?;
        let chat = (!prepared.replacements.is_empty()).then(|| {
            let mut chat = request.chat.clone();
            transform::apply_to_chat(&mut chat, &prepared.replacements);
            chat
        });
        variants.push(Variant {
            media: upstream.media.clone(),
            fetches: upstream.fetcher.is_some(),
            chat,
            prepared,
        });
    }
    Ok(variants)
}

pub fn is_event_stream<B>(response: &axum::http::Response<B>) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

pub fn protocol_error(upstream: &Upstream, message: &str) -> GatewayError {
    GatewayError::UpstreamProtocol {
        upstream: upstream.config.name.clone(),
        message: message.into(),
    }
}

/// Reads a whole upstream body within the request's deadline.
pub async fn read_whole(
    response: provider::UpstreamResponse,
    upstream: &Upstream,
    deadline: Instant,
) -> Result<Bytes, GatewayError> {
    let idle = upstream.config.idle_timeout();
    let read = provider::read_limited(response, provider::MAX_REPLY_BYTES, idle);
    match tokio::time::timeout_at(deadline, read).await {
        Err(_) | Ok(Err(ReadError::Timeout)) => Err(upstream.timeout()),
        Ok(Err(ReadError::TooLarge)) => Err(protocol_error(upstream, "reply too large")),
        Ok(Err(ReadError::Broken)) => Err(protocol_error(upstream, "connection broke mid-reply")),
        Ok(Ok(body)) => Ok(upstream.scrubber.scrub(body)),
    }
}

/// An upstream SSE body, event by event, with the idle and whole-request timeouts applied.
pub struct SseEvents {
    lease: Lease,
    body: provider::PooledBody,
    splitter: EventSplitter,
    deadline: Instant,
    idle: Duration,
    /// One timer for the whole stream, re-armed only when it fires early (an event came since
    /// it was set): arming a timer per event showed in the stream profile.
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    last_read: Instant,
    abort: std::pin::Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    ended: bool,
}

/// What reading the next upstream event gave.
pub enum Next {
    Event(Bytes),
    /// The upstream closed the stream; a partial last event, if any, comes first as `Event`.
    End,
    Fail(GatewayError),
}

impl SseEvents {
    fn new(upstreamed: Upstreamed) -> Self {
        let idle = upstreamed.lease.upstream.config.idle_timeout();
        let now = Instant::now();
        let deadline = upstreamed.deadline;
        Self {
            idle,
            body: upstreamed.response.into_body(),
            lease: upstreamed.lease,
            splitter: EventSplitter::default(),
            deadline,
            timer: Box::pin(tokio::time::sleep_until((now + idle).min(deadline))),
            last_read: now,
            abort: Box::pin(upstreamed.abort.cancelled_owned()),
            ended: false,
        }
    }

    pub fn upstream(&self) -> &Upstream {
        &self.lease.upstream
    }

    pub async fn next(&mut self) -> Next {
        loop {
            let scrubber = &self.lease.upstream.scrubber;
            if let Some(event) = self.splitter.next_event() {
                return Next::Event(scrubber.scrub(event));
            }
            if self.ended {
                return match self.splitter.finish() {
                    Some(event) => Next::Event(scrubber.scrub(event)),
                    None => Next::End,
                };
            }
            let read = tokio::select! {
                biased;
                _ = self.abort.as_mut() => return Next::Fail(GatewayError::ShuttingDown),
                read = self.body.frame() => Ok(read),
                _ = self.timer.as_mut() => {
                    let due = (self.last_read + self.idle).min(self.deadline);
                    if Instant::now() < due {
                        self.timer.as_mut().reset(due);
                        continue;
                    }
                    Err(())
                }
            };
            if read.is_ok() {
                self.last_read = Instant::now();
            }
            let upstream = &self.lease.upstream;
            match read {
                Ok(Some(Ok(frame))) => {
                    if let Some(chunk) = frame.data_ref() {
                        self.splitter.push(chunk);
                    }
                }
                Ok(None) => self.ended = true,
                Ok(Some(Err(e))) => {
                    tracing::warn!(upstream = %upstream.config.name, error = %e, "upstream stream broke");
                    self.lease.circuit.record_failure();
                    return Next::Fail(protocol_error(upstream, "the stream broke off"));
                }
                Err(_) => {
                    self.lease.circuit.record_failure();
                    return Next::Fail(upstream.timeout());
                }
            }
        }
    }
}

/// Decodes an upstream stream of either dialect into canonical steps.
fn decode_stream(events: SseEvents, wire: Dialect) -> impl Stream<Item = Step> {
    struct State {
        events: SseEvents,
        wire: Dialect,
        native: provider::dashscope::Decoder,
        pending: VecDeque<Step>,
        meta_sent: bool,
        done: bool,
    }
    let state = State {
        events,
        wire,
        native: provider::dashscope::Decoder::default(),
        pending: VecDeque::new(),
        meta_sent: false,
        done: false,
    };
    futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(step) = s.pending.pop_front() {
                return Some((step, s));
            }
            if s.done {
                return None;
            }
            let event = match s.events.next().await {
                Next::Event(event) => event,
                Next::End => return None,
                Next::Fail(error) => {
                    s.done = true;
                    return Some((Step::Fail(error), s));
                }
            };
            if sse::is_done(&event) {
                return None;
            }
            let Some(data) = sse::data_of(&event) else {
                continue; // a comment or keep-alive
            };
            if let Some(status) = sse::error_status(&event) {
                // A native error frame: `event:error`, `:HTTP_STATUS/NNN`, `data:{code,message}`.
                s.done = true;
                let fields: serde_json::Value = serde_json::from_slice(data).unwrap_or_default();
                let text = |k: &str| {
                    fields
                        .get(k)
                        .and_then(|v| v.as_str())
                        .unwrap_or("")
                        .to_string()
                };
                let error = StreamError {
                    status,
                    code: text("code"),
                    kind: None,
                    message: text("message"),
                };
                return Some((Step::Event(ChatEvent::Error(error)), s));
            }
            let decoded = match s.wire {
                Dialect::OpenAi => provider::openai::decode_chunk(data),
                Dialect::Native => s.native.decode(data),
            };
            match decoded {
                Ok((meta, events)) => {
                    if !s.meta_sent {
                        s.meta_sent = true;
                        s.pending.push_back(Step::Meta(meta));
                    }
                    for event in events {
                        s.done |= matches!(event, ChatEvent::Error(_));
                        s.pending.push_back(Step::Event(event));
                    }
                }
                Err(e) => {
                    s.done = true;
                    let error =
                        protocol_error(s.events.upstream(), &format!("unreadable event: {e}"));
                    return Some((Step::Fail(error), s));
                }
            }
        }
    })
}

/// A fast-path outcome as canonical steps or a canonical reply (the response cache keeps only
/// those); `dialect` is the client's, which the fast path's upstream spoke.
pub async fn canonical(outcome: Outcome, dialect: Dialect) -> Result<Outcome, GatewayError> {
    let Outcome::Raw(upstreamed) = outcome else {
        return Ok(outcome);
    };
    let name = upstreamed.lease.upstream.config.name.clone();
    if upstreamed.is_event_stream() {
        let steps = decode_stream(upstreamed.into_events(), dialect).boxed();
        return Ok(Outcome::Steps(steps, name));
    }
    let upstream = upstreamed.lease.upstream.clone();
    let body = upstreamed.read_whole().await?;
    let reply = match dialect {
        Dialect::OpenAi => provider::openai::decode_completion(&body),
        Dialect::Native => provider::dashscope::decode_reply(&body),
    };
    reply
        .map(|reply| Outcome::Whole(reply, name))
        .map_err(|e| protocol_error(&upstream, &format!("unreadable reply: {e}")))
}
