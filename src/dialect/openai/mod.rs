//! The OpenAI-compatible dialect (DashScope compatible mode): `/v1/chat/completions`,
//! `/v1/completions` and `/v1/models`, with their `/compatible-mode/v1/...` twins.
//!
//! Replies from an upstream of the same dialect are relayed as they came (the fast path);
//! translated replies are encoded here from canonical steps, in the key order DashScope uses.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use std::time::Duration;
use tokio::time::Instant;

mod completions;
mod models;
mod reply;

pub use reply::{ChunkEncoder, encode_completion, usage_json};

use super::scan::IdRewriter;
use super::sse;
use super::{StreamTracker, UsageSink, encode_steps, event_stream_response};
use crate::chat;
use crate::error::{GatewayError, json_response};
use crate::event::ChatEvent;
use crate::provider::Api;
use crate::relay::{ChatRequest, Dialect, Next, Outcome, SseEvents, Upstreamed};
use crate::state::{AppState, RequestId};
pub use completions::completions;
pub use models::{model, models, native_models};
use reply::{DONE, data_event, fill_meta};

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match chat_reply(&state, &request_id, &headers, body).await {
        Ok(response) => response,
        Err(error) => error_response(error, &request_id),
    }
}

/// An error in this dialect, tagged with the upstream it came from for the metrics.
fn error_response(error: GatewayError, request_id: &str) -> Response {
    let upstream = error.upstream_name().unwrap_or("-").to_string();
    super::tagged(error.into_openai_response(request_id), "-", &upstream)
}

async fn chat_reply(
    state: &Arc<AppState>,
    request_id: &Arc<str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, GatewayError> {
    let started = Instant::now();
    let entry = super::Entry {
        route: "chat",
        dialect: "openai",
        request_id,
    };
    let (caller, bytes, meter) = super::admit(state, headers, body, entry).await?;
    let result = metered_chat(state, request_id, headers, caller, bytes, &meter, started).await;
    if let Err(error) = &result {
        meter.failed(error.status().as_u16(), error);
    }
    result
}

async fn metered_chat(
    state: &Arc<AppState>,
    request_id: &Arc<str>,
    headers: &HeaderMap,
    caller: crate::auth::Caller,
    bytes: Bytes,
    meter: &UsageSink,
    started: Instant,
) -> Result<Response, GatewayError> {
    let mut chat = chat::decode(&bytes)?;
    meter.request(&chat.model, chat.is_stream());
    let ticket =
        crate::resume::Ticket::new(&state.resume, &caller, "chat", &bytes, chat.is_stream());
    if chat.is_stream()
        && let Some(resumed) = crate::resume::reconnect(&ticket, headers, meter)
    {
        return Ok(super::tagged(resumed?, &chat.model, "-"));
    }
    let session = state
        .sessions
        .begin(state, &caller, headers, &mut chat)
        .await?;
    let bytes = match &session {
        Some(_) => crate::session::rewrite_body(&bytes, &chat, false)?,
        None => bytes,
    };
    let shape = crate::session::Shape::OpenAi;
    let cache = crate::cache::consult(state, &caller, headers, &chat, meter).await?;
    let cache_label = cache.label();
    let include_usage = chat.wants_usage();
    let stream = chat.is_stream();
    let model = chat.model.clone();
    let keepalive = state.config.server.sse_keepalive_ms;
    if stream && keepalive > 0 {
        // The head goes out now; the call runs inside the stream, which the client can drop.
        let (state2, request_id2, headers, model2, meter2) = (
            state.clone(),
            request_id.clone(),
            headers.clone(),
            model.clone(),
            meter.clone(),
        );
        let first = async move {
            let request = ChatRequest {
                dialect: Dialect::OpenAi,
                api: Api::Chat,
                chat,
                original: bytes,
                caller: &caller,
                headers: &headers,
                request_id: &request_id2,
                meter: &meter2,
            };
            match cache.dispatch(&state2, request).await {
                Ok((outcome, media)) => {
                    meter2.media(media);
                    let stream = stream_of(outcome, request_id2.clone(), &model2, include_usage);
                    Ok(stream(&meter2).0)
                }
                Err(error) => {
                    meter2.failed(200, &error);
                    Err(data_event(&error.openai_body(&request_id2)))
                }
            }
        };
        let events = super::with_keepalive(first, Duration::from_millis(keepalive));
        let tracker = StreamTracker::new(state.metrics.clone(), "chat", started, meter);
        let tracker = tracker.resumable(ticket);
        let response = super::tagged(event_stream_response(events, tracker), &model, "-");
        let response = crate::cache::tag(response, cache_label);
        return Ok(crate::session::finish(session, response, shape).await);
    }
    let request = ChatRequest {
        dialect: Dialect::OpenAi,
        api: Api::Chat,
        chat,
        original: bytes,
        caller: &caller,
        headers,
        request_id,
        meter,
    };
    let (outcome, media) = cache.dispatch(state, request).await?;
    meter.media(media);
    let reply = Reply {
        request_id,
        started,
        model: &model,
        stream,
        include_usage,
        meter,
        ticket,
    };
    let response = reply_for(state, outcome, reply).await?;
    let response = super::with_media_headers(response, media);
    let response = crate::cache::tag(response, cache_label);
    Ok(crate::session::finish(session, response, shape).await)
}

/// What the reply to a chat request is made with.
struct Reply<'a> {
    request_id: &'a Arc<str>,
    started: Instant,
    model: &'a str,
    stream: bool,
    include_usage: bool,
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
        include_usage,
        meter,
        ticket,
    } = reply;
    let model = model.to_string();
    let as_stream = |outcome| {
        let (events, name) = stream_of(outcome, request_id.clone(), &model, include_usage)(meter);
        let tracker = StreamTracker::new(state.metrics.clone(), "chat", started, meter);
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
            let ids = IdRewriter::compat(request_id);
            let response = whole_response(upstreamed, ids, meter).await?;
            super::tagged(response, &model, &name)
        }
        Outcome::Whole(mut reply, name) => {
            meter.upstream(&name);
            if let Some(usage) = &reply.usage {
                meter.usage(usage);
            }
            fill_meta(&mut reply.meta, request_id, &model);
            let body = encode_completion(&reply);
            meter.sent(&body);
            super::tagged(json_response(StatusCode::OK, body), &model, &name)
        }
        // Only a stream request is translated into steps; relay them as a stream anyway.
        outcome @ Outcome::Steps(..) => as_stream(outcome),
    })
}

/// The client's event stream for an upstream's answer to a stream request, and the upstream's
/// name, metered by the meter it is given.
fn stream_of(
    outcome: Outcome,
    request_id: Arc<str>,
    model: &str,
    include_usage: bool,
) -> impl FnOnce(&UsageSink) -> (BoxStream<'static, Bytes>, String) {
    let model = model.to_string();
    move |meter| {
        let usage = meter.clone();
        let upstreamed = match outcome.try_into_steps() {
            Ok((steps, name)) => {
                usage.upstream(&name);
                let encoder = ChunkEncoder::new(request_id, model, include_usage);
                return (encode_steps(steps, encoder, usage).boxed(), name);
            }
            Err(upstreamed) => upstreamed,
        };
        let name = upstreamed.lease.upstream.config.name.clone();
        usage.upstream(&name);
        raw_stream(upstreamed, request_id, usage, include_usage, name)
    }
}

fn raw_stream(
    upstreamed: Upstreamed,
    request_id: Arc<str>,
    usage: UsageSink,
    include_usage: bool,
    name: String,
) -> (BoxStream<'static, Bytes>, String) {
    if upstreamed.is_event_stream() {
        let ids = IdRewriter::compat(&request_id);
        let events = raw_events(
            upstreamed.into_events(),
            request_id,
            usage,
            include_usage,
            ids,
        );
        return (events.boxed(), name);
    }
    // Asked for a stream, the upstream answered whole: its reply as one event.
    let events = futures_util::stream::once(async move {
        match upstreamed.read_whole().await {
            Ok(body) => {
                let body = IdRewriter::compat(&request_id).apply(body);
                if let Some(u) = crate::provider::openai::usage_of_completion(&body) {
                    usage.usage(&u);
                }
                let mut event = data_event(&body).to_vec();
                event.extend_from_slice(DONE);
                Bytes::from(event)
            }
            Err(error) => {
                usage.failed(200, &error);
                data_event(&error.openai_body(&request_id))
            }
        }
    });
    (events.boxed(), name)
}

/// Relays a non-stream upstream reply as it came, with its content type, counting its usage.
async fn whole_response(
    upstreamed: Upstreamed,
    mut ids: IdRewriter,
    usage: &UsageSink,
) -> Result<Response, GatewayError> {
    let content_type = upstreamed
        .response
        .headers()
        .get(header::CONTENT_TYPE)
        .filter(|v| !upstreamed.lease.upstream.scrubber.holds_key(v.as_bytes()))
        .cloned()
        .unwrap_or(HeaderValue::from_static("application/json"));
    let body = ids.apply(upstreamed.read_whole().await?);
    if let Some(u) = crate::provider::openai::usage_of_completion(&body) {
        usage.usage(&u);
    }
    usage.sent(&body);
    let mut response = Response::new(Body::from(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    Ok(response)
}

/// The fast path for streams: upstream events go to the client as they are, one by one. The
/// stream ends with `data: [DONE]`, or with an error event if the upstream failed mid-way (the
/// upstream's own, or the gateway's); nothing follows an error. The gateway asks every upstream
/// for usage; a client that did not ask does not get the usage chunk.
fn raw_events(
    events: SseEvents,
    request_id: Arc<str>,
    usage: UsageSink,
    include_usage: bool,
    ids: IdRewriter,
) -> impl Stream<Item = Bytes> {
    futures_util::stream::unfold(Some((events, usage, ids)), move |state| {
        let request_id = request_id.clone();
        async move {
            let (mut events, usage, mut ids) = state?;
            loop {
                match events.next().await {
                    Next::Event(event) if sse::is_done(&event) => return Some((event, None)),
                    Next::Event(event) if sse::is_error(&event) => {
                        usage.stream_error("upstream_error");
                        return Some((event, None));
                    }
                    Next::Event(event) => {
                        if take_usage(&event, &usage) && !include_usage {
                            continue;
                        }
                        let event = ids.apply(event);
                        return Some((event, Some((events, usage, ids))));
                    }
                    Next::End => return Some((Bytes::from_static(DONE), None)),
                    Next::Fail(error) => {
                        usage.failed(200, &error);
                        return Some((data_event(&error.openai_body(&request_id)), None));
                    }
                }
            }
        }
    })
}

/// Reads the usage chunk as it passes (only chunks that carry one are parsed); true when the
/// chunk carries nothing but usage.
fn take_usage(event: &[u8], usage: &UsageSink) -> bool {
    let Some(data) = sse::data_of(event) else {
        return false;
    };
    if !super::scan::may_carry_usage(data) {
        return false;
    }
    let Ok((_, events)) = crate::provider::openai::decode_chunk(data) else {
        return false;
    };
    let mut only_usage = !events.is_empty();
    for event in events {
        match event {
            ChatEvent::Usage(u) => usage.usage(&u),
            _ => only_usage = false,
        }
    }
    only_usage
}
