//! DashScope's native dialect (its native generation API reference): `POST /api/v1/services/aigc/
//! {text,multimodal}-generation/generation` with `{model, input: {messages | prompt},
//! parameters}`; SSE when `X-DashScope-SSE: enable`, framed `id:` / `event:result` /
//! `:HTTP_STATUS/200` / `data:`; replies `{output, usage, request_id}`; errors
//! `{request_id, code, message}`.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use std::time::Duration;
use tokio::time::Instant;

mod reply;
mod request;
mod shadow;

pub use reply::{FrameEncoder, encode_reply, usage_json};
pub use request::decode;

use super::scan::IdRewriter;
use super::sse;
use super::{StreamTracker, UsageSink, encode_steps, event_stream_response};
use crate::error::{GatewayError, json_response};
use crate::provider::Api;
use crate::relay::{ChatRequest, Dialect, Next, Outcome, SseEvents};
use crate::state::{AppState, RequestId};
use reply::{error_frame, result_frame};

/// How the native client wants its reply.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// `result_format: "text"` (`output.text`) rather than `"message"` (`output.choices`).
    pub text_format: bool,
    /// `incremental_output`: deltas rather than the whole text so far in each event.
    pub incremental: bool,
    /// The multimodal endpoint: message content is a list of `{text}` items.
    pub multimodal: bool,
    /// Choices asked for (`n`); with more than one, each carries its `index`.
    pub choices: u32,
}

/// `POST /api/v1/services/aigc/text-generation/generation`.
pub async fn text_generation(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    generation(&state, &request_id, &headers, body, Api::NativeText).await
}

/// `POST /api/v1/services/aigc/multimodal-generation/generation`.
pub async fn multimodal_generation(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    generation(&state, &request_id, &headers, body, Api::NativeMultimodal).await
}

async fn generation(
    state: &Arc<AppState>,
    request_id: &Arc<str>,
    headers: &HeaderMap,
    body: Body,
    api: Api,
) -> Response {
    match reply(state, request_id, headers, body, api).await {
        Ok(response) => response,
        Err(error) => {
            let upstream = error.upstream_name().unwrap_or("-").to_string();
            super::tagged(error.into_native_response(request_id), "-", &upstream)
        }
    }
}

async fn reply(
    state: &Arc<AppState>,
    request_id: &Arc<str>,
    headers: &HeaderMap,
    body: Body,
    api: Api,
) -> Result<Response, GatewayError> {
    let started = Instant::now();
    let route = if api == Api::NativeMultimodal {
        "native_multimodal"
    } else {
        "native_text"
    };
    let entry = super::Entry {
        route,
        dialect: "native",
        request_id,
    };
    let (caller, bytes, meter) = super::admit(state, headers, body, entry).await?;
    let result = metered(
        state, request_id, headers, caller, bytes, api, &meter, started,
    )
    .await;
    if let Err(error) = &result {
        meter.failed(error.status().as_u16(), error);
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn metered(
    state: &Arc<AppState>,
    request_id: &Arc<str>,
    headers: &HeaderMap,
    caller: crate::auth::Caller,
    bytes: Bytes,
    api: Api,
    meter: &UsageSink,
    started: Instant,
) -> Result<Response, GatewayError> {
    let route = if api == Api::NativeMultimodal {
        "native_multimodal"
    } else {
        "native_text"
    };
    let (mut chat, options) = decode(&bytes, wants_stream(headers), api)?;
    let stream = chat.is_stream();
    let model = chat.model.clone();
    meter.request(&model, stream);
    let ticket = crate::resume::Ticket::new(&state.resume, &caller, route, &bytes, stream);
    if stream && let Some(resumed) = crate::resume::reconnect(&ticket, headers, meter) {
        return Ok(super::tagged(resumed?, &model, "-"));
    }
    let session = state
        .sessions
        .begin(state, &caller, headers, &mut chat)
        .await?;
    let bytes = match &session {
        Some(_) => crate::session::rewrite_body(&bytes, &chat, true)?,
        None => bytes,
    };
    let shape = crate::session::Shape::Native {
        cumulative: !options.incremental,
    };
    let cache = crate::cache::consult(state, &caller, headers, &chat, meter).await?;
    let cache_label = cache.label();
    let keepalive = state.config.server.sse_keepalive_ms;
    if stream && keepalive > 0 {
        // The head goes out now; the call runs inside the stream, which the client can drop.
        let (state2, request_id2, headers, meter2) = (
            state.clone(),
            request_id.clone(),
            headers.clone(),
            meter.clone(),
        );
        let first = async move {
            let request = ChatRequest {
                dialect: Dialect::Native,
                api,
                chat,
                original: bytes,
                caller: &caller,
                headers: &headers,
                request_id: &request_id2,
                meter: &meter2,
            };
            match cache
                .dispatch(&state2, request)
                .await
                .map_err(request::native_names)
            {
                Ok((outcome, media)) => {
                    meter2.media(media);
                    Ok(stream_of(outcome, request_id2.clone(), options, &meter2).0)
                }
                Err(error) => {
                    meter2.failed(200, &error);
                    let status = error.status().as_u16();
                    Err(error_frame(1, status, &error.native_body(&request_id2)))
                }
            }
        };
        let events = super::with_keepalive(first, Duration::from_millis(keepalive));
        let tracker = StreamTracker::new(state.metrics.clone(), route, started, meter);
        let tracker = tracker.resumable(ticket);
        let response = super::tagged(event_stream_response(events, tracker), &model, "-");
        let response = crate::cache::tag(response, cache_label);
        return Ok(crate::session::finish(session, response, shape).await);
    }
    let request = ChatRequest {
        dialect: Dialect::Native,
        api,
        chat,
        original: bytes,
        caller: &caller,
        headers,
        request_id,
        meter,
    };
    let (outcome, media) = cache
        .dispatch(state, request)
        .await
        .map_err(request::native_names)?;
    meter.media(media);
    let reply = Reply {
        request_id,
        started,
        model: &model,
        stream,
        options,
        route,
        meter,
        ticket,
    };
    let response = reply_for(state, outcome, reply).await?;
    let response = super::with_media_headers(response, media);
    let response = crate::cache::tag(response, cache_label);
    Ok(crate::session::finish(session, response, shape).await)
}

/// What the reply to a generation request is made with.
struct Reply<'a> {
    request_id: &'a Arc<str>,
    started: Instant,
    model: &'a str,
    stream: bool,
    options: Options,
    route: &'static str,
    meter: &'a UsageSink,
    ticket: crate::resume::Ticket,
}

async fn reply_for(
    state: &Arc<AppState>,
    outcome: Outcome,
    reply: Reply<'_>,
) -> Result<Response, GatewayError> {
    let Reply {
        request_id,
        started,
        model,
        stream,
        options,
        route,
        meter,
        ticket,
    } = reply;
    let model = model.to_string();
    let as_stream = |outcome| {
        let (events, name) = stream_of(outcome, request_id.clone(), options, meter);
        let tracker = StreamTracker::new(state.metrics.clone(), route, started, meter);
        let tracker = tracker.resumable(ticket);
        super::tagged(event_stream_response(events, tracker), &model, &name)
    };
    if stream {
        return Ok(as_stream(outcome));
    }
    Ok(match outcome {
        Outcome::Raw(upstreamed) => {
            let name = upstreamed.lease.upstream.config.name.clone();
            meter.upstream(&name);
            let body = IdRewriter::native(request_id).apply(upstreamed.read_whole().await?);
            if let Some(u) = crate::provider::dashscope::decode_reply(&body)
                .ok()
                .and_then(|r| r.usage)
            {
                meter.usage(&u);
            }
            meter.sent(&body);
            super::tagged(json_response(StatusCode::OK, body.to_vec()), &model, &name)
        }
        Outcome::Whole(reply, name) => {
            meter.upstream(&name);
            if let Some(usage) = &reply.usage {
                meter.usage(usage);
            }
            let body = encode_reply(&reply, options, request_id);
            meter.sent(&body);
            super::tagged(json_response(StatusCode::OK, body), &model, &name)
        }
        outcome @ Outcome::Steps(..) => as_stream(outcome),
    })
}

/// The client's frames for an upstream's answer to a stream request, and the upstream's name.
fn stream_of(
    outcome: Outcome,
    request_id: Arc<str>,
    options: Options,
    meter: &UsageSink,
) -> (BoxStream<'static, Bytes>, String) {
    let usage = meter.clone();
    let upstreamed = match outcome.try_into_steps() {
        Ok((steps, name)) => {
            usage.upstream(&name);
            let encoder = FrameEncoder::new(request_id, options);
            return (encode_steps(steps, encoder, usage).boxed(), name);
        }
        Err(upstreamed) => upstreamed,
    };
    let name = upstreamed.lease.upstream.config.name.clone();
    usage.upstream(&name);
    if upstreamed.is_event_stream() {
        return (
            raw_frames(upstreamed.into_events(), request_id, usage).boxed(),
            name,
        );
    }
    // Asked for a stream, the upstream answered whole: its reply as one frame.
    let events = futures_util::stream::once(async move {
        match upstreamed.read_whole().await {
            Ok(body) => {
                let body = IdRewriter::native(&request_id).apply(body);
                if let Some(u) = crate::provider::dashscope::decode_reply(&body)
                    .ok()
                    .and_then(|r| r.usage)
                {
                    usage.usage(&u);
                }
                let data: Value = serde_json::from_slice(&body).unwrap_or_default();
                result_frame(1, &data)
            }
            Err(error) => {
                usage.failed(200, &error);
                error_frame(1, error.status().as_u16(), &error.native_body(&request_id))
            }
        }
    });
    (events.boxed(), name)
}

/// Native clients ask for a stream by header (the official SDKs send both).
fn wants_stream(headers: &HeaderMap) -> bool {
    let sse_header = headers
        .get("x-dashscope-sse")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("enable"));
    let accepts_sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    sse_header || accepts_sse
}

/// The fast path for streams: native frames go to the client as they are. The stream ends
/// when the upstream closes it, after an error frame, or with the gateway's own error frame.
/// Every frame carries the usage so far: the meter keeps the last one and reads it at the end,
/// also when the client hangs up.
fn raw_frames(
    events: SseEvents,
    request_id: Arc<str>,
    usage: UsageSink,
) -> impl Stream<Item = Bytes> {
    struct Relay {
        events: SseEvents,
        sent: u64,
        usage: UsageSink,
        ids: IdRewriter,
    }
    let relay = Relay {
        events,
        sent: 0,
        usage,
        ids: IdRewriter::native(&request_id),
    };
    futures_util::stream::unfold(Some(relay), move |state| {
        let request_id = request_id.clone();
        async move {
            let mut relay = state?;
            match relay.events.next().await {
                Next::Event(event) if sse::error_status(&event).is_some() => {
                    relay.usage.stream_error("upstream_error");
                    Some((relay.ids.apply(event), None))
                }
                Next::Event(event) => {
                    relay.sent += 1;
                    let event = relay.ids.apply(event);
                    relay.usage.native_frame(&event);
                    Some((event, Some(relay)))
                }
                Next::End => None,
                Next::Fail(error) => {
                    relay.usage.failed(200, &error);
                    let frame = error_frame(
                        relay.sent + 1,
                        error.status().as_u16(),
                        &error.native_body(&request_id),
                    );
                    Some((frame, None))
                }
            }
        }
    })
}
