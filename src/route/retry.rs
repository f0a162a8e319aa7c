//! Retries and failover before the first byte: which failures are worth another try, which
//! count against an upstream's circuit, the backoff between tries, and the span of each try.

use std::time::Duration;

use axum::http::HeaderMap;
use bytes::Bytes;
use tokio::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::auth::Caller;
use crate::config::{AuthMode, RetryConfig};
use crate::error::GatewayError;
use crate::limit::Limiter;
use crate::provider::{self, Api, Upstream};
use crate::telemetry::Metrics;

use super::{Router, Upstreamed};

/// What the tries of one call draw on: the gateway's shared parts, borrowed (built by
/// `AppState::attempts`).
pub struct Attempts<'a> {
    pub retry: &'a RetryConfig,
    pub router: &'a Router,
    pub limiter: &'a Limiter,
    pub mode: AuthMode,
    pub abort: &'a CancellationToken,
    pub metrics: &'a Metrics,
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
    state: &Attempts<'_>,
    call: &Call<'_>,
    mut body_for: impl FnMut(&Upstream) -> (Api, Bytes),
) -> Result<Upstreamed, GatewayError> {
    let retry = state.retry;
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
        // The (upstream, model) circuit this try goes through: one atomic read, where the
        // upstream's overall state would scan every model's circuit on each try.
        let circuit = lease.circuit.state();
        let span = attempt_span(&upstream, call, attempt, circuit, last_error.as_ref());
        let send = upstream.send(
            api,
            provider::Outgoing {
                body,
                stream: call.stream,
                request_id: call.request_id,
                mode: state.mode,
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
                lease.report(Ok(()));
                return Ok(Upstreamed {
                    response,
                    lease,
                    deadline: started + upstream.config.request_timeout(),
                    abort: state.abort.clone(),
                });
            }
            Err(error) => error,
        };
        lease.report(Err(&error));
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
    circuit: super::CircuitState,
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
        dashgate.circuit_state = circuit.as_str(),
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
fn backoff(retry: &RetryConfig, attempt: u32) -> Duration {
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
