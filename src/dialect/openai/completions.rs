//! `/v1/completions`: plain and fill-in-the-middle prompts, relayed to the upstream's
//! OpenAI-compatible `/completions` (no translation: only OpenAI-wire upstreams serve it).

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use tokio::time::Instant;

use super::{error_response, raw_events, whole_response};
use crate::chat;
use crate::dialect::scan::IdRewriter;
use crate::dialect::{self, StreamTracker, UsageSink, event_stream_response};
use crate::error::GatewayError;
use crate::provider::Api;
use crate::relay;
use crate::state::{AppState, RequestId};

/// `POST /v1/completions`: plain and fill-in-the-middle prompts (Qwen coder models), relayed
/// to the upstream's OpenAI-compatible `/completions`.
pub async fn completions(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match completion_reply(&state, &request_id, &headers, body).await {
        Ok(response) => response,
        Err(error) => error_response(error, &request_id),
    }
}

async fn completion_reply(
    state: &Arc<AppState>,
    request_id: &Arc<str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, GatewayError> {
    let started = Instant::now();
    let entry = dialect::Entry {
        route: "completions",
        dialect: "openai",
        request_id,
    };
    let (caller, bytes, meter) = dialect::admit(state, headers, body, entry).await?;
    let result = metered_completion(state, request_id, headers, &caller, bytes, &meter, started);
    let result = result.await;
    if let Err(error) = &result {
        meter.failed(error.status().as_u16(), error);
    }
    result
}

async fn metered_completion(
    state: &Arc<AppState>,
    request_id: &Arc<str>,
    headers: &HeaderMap,
    caller: &crate::auth::Caller,
    bytes: Bytes,
    meter: &UsageSink,
    started: Instant,
) -> Result<Response, GatewayError> {
    let request = chat::decode_completion(&bytes)?;
    meter.request(&request.model, request.is_stream());
    caller.check_model(&request.model)?;
    let stream = request.is_stream();
    let ticket = crate::resume::Ticket::new(&state.resume, caller, "completions", &bytes, stream);
    if stream && let Some(resumed) = crate::resume::reconnect(&ticket, headers, meter) {
        return Ok(dialect::tagged(resumed?, &request.model, "-"));
    }
    let call = relay::Call {
        model: &request.model,
        stream,
        caller,
        headers,
        request_id,
        meter,
        reserve: relay::reserve_for(state, bytes.len(), &Default::default(), request.max_tokens),
    };
    let upstreamed =
        relay::send_with_retries(state, &call, |_| (Api::Completions, bytes.clone())).await?;
    let name = upstreamed.lease.upstream.config.name.clone();
    meter.upstream(&name);
    let response = if stream && upstreamed.is_event_stream() {
        let tracker = StreamTracker::new(state.metrics.clone(), "completions", started, meter)
            .resumable(ticket);
        let events = raw_events(
            upstreamed.into_events(),
            request_id.clone(),
            meter.clone(),
            true,
            IdRewriter::completion(request_id),
        );
        event_stream_response(events, tracker)
    } else {
        whole_response(upstreamed, IdRewriter::completion(request_id), meter).await?
    };
    Ok(dialect::tagged(response, &request.model, &name))
}
