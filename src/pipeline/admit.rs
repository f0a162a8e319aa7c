//! Admission: who is calling, within which limits, and the body read within its own.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use crate::auth::Caller;
use crate::error::GatewayError;
use crate::state::AppState;
use crate::usage::Meter;

/// An admitted request: who sent it, its body, and its meter.
pub struct Admitted {
    pub caller: Caller,
    pub body: Bytes,
    pub meter: Meter,
}

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
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    entry: Entry<'_>,
) -> Result<Admitted, GatewayError> {
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
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    entry: Entry<'_>,
    span: &tracing::Span,
) -> Result<Admitted, GatewayError> {
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
    let meter = Meter::new(
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
            Ok(Admitted {
                caller,
                body: bytes,
                meter,
            })
        }
        Err(error) => {
            span.record("error.type", error.code());
            super::outcome::refused(&meter, &error);
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
