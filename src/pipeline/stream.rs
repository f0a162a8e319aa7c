//! Stream replies, built the same way for both dialects: translated steps encoded event by
//! event, or the upstream's own events relayed; the keep-alive head; the SSE response.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;

use super::context::RequestContext;
use super::face::{ClientDialect, StepEncoder};
use super::outcome;
use super::reply::{tagged, upstream_name};
use super::tracker::StreamTracker;
use crate::cache::Consult;
use crate::chat::Chat;
use crate::event::ChatEvent;
use crate::relay::{ChatRequest, Outcome, Step};
use crate::sse::sse_response;
use crate::state::AppState;
use crate::usage::Meter;

/// The client's stream for an outcome, tagged with the upstream it came from.
pub fn stream_response<D: ClientDialect>(
    state: &AppState,
    face: &D,
    outcome: Outcome,
    ctx: &RequestContext,
    options: D::Options,
) -> Response {
    let (events, name) = stream_of(face, outcome, ctx, options);
    let response = event_stream_response(events, ctx.tracker(state));
    tagged(response, &ctx.model, &name)
}

/// A stream request under `server.sse_keepalive_ms`: the head goes out now and the call runs
/// inside the stream, which the client can drop.
#[allow(clippy::too_many_arguments)]
pub fn keepalive_response<D: ClientDialect>(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    face: &D,
    ctx: RequestContext,
    cache: Consult,
    chat: Chat,
    body: Bytes,
    options: D::Options,
    every: Duration,
) -> Response {
    let tracker = ctx.tracker(state);
    let model = ctx.model.clone();
    let (state, headers, face) = (state.clone(), headers.clone(), face.clone());
    let first = async move {
        let (dialect, api) = face.wire();
        let request = ChatRequest {
            dialect,
            api,
            chat,
            original: body,
            caller: &ctx.caller,
            headers: &headers,
            request_id: &ctx.request_id,
            meter: &ctx.meter,
        };
        match super::cached::dispatch(&state, cache, request).await {
            Ok((outcome, media)) => {
                ctx.meter.media(media);
                Ok(stream_of(&face, outcome, &ctx, options).0)
            }
            Err(error) => {
                let error = face.dispatch_error(error);
                outcome::failed_in_stream(&ctx.meter, &error);
                Err(face.error_event(&error, &ctx.request_id, 1))
            }
        }
    };
    let events = with_keepalive(first, every);
    tagged(event_stream_response(events, tracker), &model, "-")
}

/// The client's events for an upstream's answer to a stream request, and the upstream's name.
fn stream_of<D: ClientDialect>(
    face: &D,
    outcome: Outcome,
    ctx: &RequestContext,
    options: D::Options,
) -> (BoxStream<'static, Bytes>, String) {
    let meter = ctx.meter.clone();
    let request_id = ctx.request_id.clone();
    let upstreamed = match outcome.try_into_steps() {
        Ok((steps, name)) => {
            meter.upstream(&name);
            let encoder = face.encoder(request_id, ctx.model.clone(), options);
            return (encode_steps(steps, encoder, meter).boxed(), name);
        }
        Err(upstreamed) => upstreamed,
    };
    let name = upstream_name(&upstreamed);
    meter.upstream(&name);
    if upstreamed.is_event_stream() {
        let events = face.relay_stream(upstreamed.into_events(), request_id, meter, options);
        return (events, name);
    }
    // Asked for a stream, the upstream answered whole: its reply as one event.
    let face = face.clone();
    let events = futures_util::stream::once(async move {
        match upstreamed.read_whole().await {
            Ok(body) => {
                let (body, usage) = face.relay_whole(body, &request_id);
                if let Some(u) = usage {
                    meter.usage(&u);
                }
                face.whole_event(&body)
            }
            Err(error) => {
                outcome::failed_in_stream(&meter, &error);
                face.error_event(&error, &request_id, 1)
            }
        }
    });
    (events.boxed(), name)
}

/// Encodes a translated stream event by event, as the steps arrive.
pub fn encode_steps<E: StepEncoder>(
    steps: BoxStream<'static, Step>,
    encoder: E,
    usage: Meter,
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
                            Step::Event(ChatEvent::Error(e)) => {
                                outcome::stream_error(&usage, &e.code)
                            }
                            Step::Fail(e) => outcome::failed_in_stream(&usage, e),
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
    match tracker.take_ticket() {
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
