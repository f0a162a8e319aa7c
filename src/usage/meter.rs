//! The meter of one request: filled in as the request goes (model, upstream, usage, bytes,
//! first token), and turned into a usage record when the last handle on it is dropped: after
//! a whole reply, at the end of a stream, or when the client hangs up mid-stream.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use tokio::time::Instant;

use super::{Ledger, UsageRecord};
use crate::auth::{Caller, Limits};
use crate::config::Price;
use crate::error::GatewayError;
use crate::event::{ChatEvent, Usage};
use crate::limit::Limiter;
use crate::telemetry::Metrics;
use crate::transform::MediaStats;

/// What every meter reports to.
#[derive(Clone)]
pub struct MeterContext {
    pub ledger: Arc<Ledger>,
    pub limiter: Arc<Limiter>,
    pub metrics: Arc<Metrics>,
    pub prices: Arc<BTreeMap<String, Price>>,
}

#[derive(Clone)]
pub struct Meter(Arc<Inner>);

struct Inner {
    context: MeterContext,
    caller: Arc<str>,
    limits: Limits,
    /// A device's account-wide limits, spent beside its own.
    account_limits: Option<(Arc<str>, Limits)>,
    started: Instant,
    state: Mutex<State>,
    // Counted per stream event: atomics, not the lock.
    bytes_out: AtomicU64,
    events_out: AtomicU64,
    first_event_ms: OnceLock<u64>,
    /// The request's access log line and root span, finished with the record.
    log: Option<Arc<crate::telemetry::access_log::RequestLog>>,
}

#[derive(Default)]
struct State {
    record: UsageRecord,
    usage: Option<Usage>,
    /// The last native frame relayed as it came: its usage is the reply's so far.
    last_native_frame: Option<Bytes>,
    /// What admission reserved against the key's limits, settled when the record is made.
    reservation: Option<crate::limit::Reservation>,
    /// A device's account reservation (docs/fleet.md).
    account_reservation: Option<crate::limit::Reservation>,
    /// The shared limiter was unreachable on arrival and let the request through.
    unchecked: bool,
    /// Answered from the response cache.
    cache_hit: bool,
    /// A reconnect served from a resumed stream: that stream's request makes the record.
    no_record: bool,
}

impl Meter {
    pub fn new(
        context: &MeterContext,
        caller: &Caller,
        request_id: &str,
        route: &'static str,
        dialect: &'static str,
        bytes_in: usize,
    ) -> Meter {
        let record = UsageRecord {
            // Time-ordered, so the ledger's primary key grows at one end (no random page
            // writes in its index).
            id: uuid::Uuid::now_v7().to_string(),
            at: crate::store::now_ms(),
            request_id: request_id.to_string(),
            key_id: caller.id.as_deref().map(str::to_string),
            key_name: caller.name.to_string(),
            account: caller.account.as_deref().map(str::to_string),
            device: caller.device.as_deref().map(str::to_string),
            upstream: "-".into(),
            route: route.into(),
            dialect: dialect.into(),
            status: 200,
            bytes_in: bytes_in as u64,
            ..UsageRecord::default()
        };
        Meter(Arc::new(Inner {
            context: context.clone(),
            caller: caller.name.clone(),
            limits: caller.limits,
            account_limits: caller.account_limits.clone(),
            started: Instant::now(),
            state: Mutex::new(State {
                record,
                ..State::default()
            }),
            bytes_out: AtomicU64::new(0),
            events_out: AtomicU64::new(0),
            first_event_ms: OnceLock::new(),
            log: crate::telemetry::access_log::current(),
        }))
    }

    fn with(&self, f: impl FnOnce(&mut State)) {
        // A poisoned lock only means another handle panicked mid-update; the record is
        // still worth keeping.
        let mut state = match self.0.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut state);
    }

    pub fn request(&self, model: &str, stream: bool) {
        self.with(|s| {
            s.record.model = model.to_string();
            s.record.stream = stream;
        });
    }

    /// A fixed record id instead of a fresh one: a batch line's record stays one record however
    /// often the line runs (the ledger keeps the first of an id).
    pub fn set_id(&self, id: String) {
        self.with(|s| s.record.id = id);
    }

    /// The request body's size, once it is read.
    pub fn received(&self, bytes: usize) {
        self.with(|s| s.record.bytes_in = bytes as u64);
    }

    pub fn upstream(&self, name: &str) {
        self.with(|s| s.record.upstream = name.to_string());
    }

    /// The model asked for, once known.
    pub fn model(&self) -> String {
        let mut model = String::new();
        self.with(|s| model.clone_from(&s.record.model));
        model
    }

    pub fn media(&self, media: Option<MediaStats>) {
        let Some(m) = media else { return };
        self.with(|s| {
            let metrics = &self.0.context.metrics;
            metrics.observed.image_saved(
                metrics.model_label(&s.record.model),
                m.original_bytes.saturating_sub(m.sent_bytes),
                m.tokens_before.saturating_sub(m.tokens_after),
            );
            let r = &mut s.record;
            r.images = u64::from(m.images);
            r.image_original_bytes = m.original_bytes;
            r.image_sent_bytes = m.sent_bytes;
            r.image_tokens_before = m.tokens_before;
            r.image_tokens_after = m.tokens_after;
        });
    }

    /// The upstream's own figures; a later report replaces an earlier one.
    pub fn usage(&self, usage: &Usage) {
        self.with(|s| s.usage = Some(usage.clone()));
    }

    /// The limiter let the request through without checking it (fail open).
    pub fn unchecked(&self) {
        self.with(|s| s.unchecked = true);
    }

    pub fn is_unchecked(&self) -> bool {
        let mut unchecked = false;
        self.with(|s| unchecked = s.unchecked);
        unchecked
    }

    /// The request was admitted with this reservation.
    pub fn reserved(&self, reservation: Option<crate::limit::Reservation>) {
        self.with(|s| s.reservation = reservation);
    }

    /// A device's account was admitted with this reservation.
    pub fn account_reserved(&self, reservation: Option<crate::limit::Reservation>) {
        self.with(|s| s.account_reservation = reservation);
    }

    pub fn native_frame(&self, frame: &Bytes) {
        self.with(|s| s.last_native_frame = Some(frame.clone()));
    }

    /// The reply came from the response cache: the record keeps its usage for reference only.
    pub fn cache_hit(&self) {
        self.with(|s| s.cache_hit = true);
    }

    /// This request makes no usage record: it resumed a stream another request is billed for.
    pub fn no_record(&self) {
        self.with(|s| s.no_record = true);
    }

    /// The request failed with `error`, answered with `status` (200 when its stream had begun).
    /// Every failure of either dialect is recorded through here or `stream_error`, by the
    /// gateway's own code: a native client's failure leaves the same code in the ledger as an
    /// OpenAI client's (its reply still carries DashScope's native code).
    pub fn failed(&self, status: u16, error: &GatewayError) {
        self.record_failure(status, error.code());
    }

    /// A stream that had begun ended with an error event carrying `code` (the upstream's own
    /// event relayed as it came is `upstream_error`).
    pub fn stream_error(&self, code: &str) {
        self.record_failure(200, code);
    }

    fn record_failure(&self, status: u16, code: &str) {
        self.with(|s| {
            s.record.status = status;
            s.record.error_code = Some(code.to_string());
        });
    }

    /// Bytes sent to the client; the first event that is not a comment is the first token.
    pub fn sent(&self, bytes: &[u8]) {
        let inner = &self.0;
        inner
            .bytes_out
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if !bytes.starts_with(b":") {
            inner.events_out.fetch_add(1, Ordering::Relaxed);
            inner
                .first_event_ms
                .get_or_init(|| inner.started.elapsed().as_millis() as u64);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let state = match self.state.get_mut() {
            Ok(state) => std::mem::take(state),
            Err(poisoned) => std::mem::take(poisoned.into_inner()),
        };
        let no_record = state.no_record;
        let mut record = state.record;
        record.duration_ms = self.started.elapsed().as_millis() as u64;
        record.bytes_out = *self.bytes_out.get_mut();
        let events_out = *self.events_out.get_mut();
        if record.stream {
            record.ttft_ms = self.first_event_ms.get().copied();
        }
        let usage = state.usage.or_else(|| {
            let frame = state.last_native_frame?;
            let data = crate::sse::data_of(&frame)?;
            let decoded = crate::provider::dashscope::Decoder::default().decode(data);
            // Mid-stream frames carry the usage so far on their delta; the last one on its own.
            decoded.ok()?.1.into_iter().find_map(|event| match event {
                ChatEvent::Usage(u) => Some(u),
                ChatEvent::Delta(d) => d.usage,
                _ => None,
            })
        });
        let usage = if state.cache_hit {
            record.cache_hit = true;
            record.cache_prompt_tokens = usage.as_ref().map(|u| u.prompt_tokens);
            record.cache_completion_tokens = usage.as_ref().map(|u| u.completion_tokens);
            None
        } else {
            usage
        };
        match usage {
            Some(u) => {
                record.prompt_tokens = u.prompt_tokens;
                record.completion_tokens = u.completion_tokens;
                record.total_tokens = u.total_tokens;
                record.cached_tokens = u.cached_tokens;
                record.reasoning_tokens = u.reasoning_tokens;
                record.image_tokens = u.image_tokens;
                // Audio heard and audio spoken (Omni output), together.
                record.audio_tokens = match (u.audio_tokens, u.output_audio_tokens) {
                    (None, None) => None,
                    (heard, spoken) => Some(heard.unwrap_or(0) + spoken.unwrap_or(0)),
                };
                self.context
                    .metrics
                    .usage(&record.model, &record.upstream, &u);
            }
            // Something went upstream and no figures came back: the client hung up, or the
            // upstream failed mid-way. The gateway's estimate, marked as one.
            None if record.upstream != "-" && !record.cache_hit => {
                let text_bytes = record
                    .bytes_in
                    .saturating_sub(record.image_original_bytes * 4 / 3);
                record.prompt_tokens = text_bytes / 4 + record.image_tokens_after;
                // Every content event carries at least one token.
                record.completion_tokens = events_out;
                record.total_tokens = record.prompt_tokens + record.completion_tokens;
                record.estimated = true;
            }
            None => {}
        }
        record.cost = self.context.prices.get(&record.model).map(|p| {
            let cached = record.cached_tokens.unwrap_or(0).min(record.prompt_tokens);
            let fresh = record.prompt_tokens - cached;
            let cached_price = p.cached_input_per_million.unwrap_or(p.input_per_million);
            (fresh as f64 * p.input_per_million
                + cached as f64 * cached_price
                + record.completion_tokens as f64 * p.output_per_million)
                / 1e6
        });
        self.context.limiter.settle(
            &self.caller,
            &self.limits,
            state.reservation,
            record.total_tokens,
        );
        if let Some((name, limits)) = &self.account_limits {
            let reservation = state.account_reservation;
            (self.context.limiter).settle(name, limits, reservation, record.total_tokens);
        }
        let Some(log) = &self.log else {
            if !no_record {
                self.context.ledger.record(record);
            }
            return;
        };
        log.metered(&record);
        if no_record {
            return;
        }
        let span = tracing::trace_span!(target: crate::telemetry::otel::TARGET, parent: &log.span,
            "dashgate.ledger", dashgate.request_id = record.request_id.as_str());
        let _entered = span.enter();
        self.context.ledger.record(record);
    }
}
