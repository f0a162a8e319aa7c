//! The fast path: an upstream of the client's own dialect relayed as it came, its ids
//! rewritten and its usage read on the way.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::Stream;

use super::reply::{DONE, data_event};
use crate::event::{ChatEvent, Usage};
use crate::ids::IdRewriter;
use crate::pipeline::outcome;
use crate::relay::{Next, SseEvents};
use crate::sse;
use crate::usage::Meter;

/// A whole reply with the gateway's id written in (by `ids`), and the usage it reports.
pub fn whole_body(body: Bytes, mut ids: IdRewriter) -> (Bytes, Option<Usage>) {
    let body = ids.apply(body);
    let usage = crate::provider::openai::usage_of_completion(&body);
    (body, usage)
}

/// A relayed whole reply, with the upstream's content type.
pub fn whole_response(body: Bytes, content_type: HeaderValue) -> Response {
    let mut response = Response::new(Body::from(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    response
}

/// A whole reply as the one event of a stream, closed with `[DONE]`.
pub fn whole_event(body: &Bytes) -> Bytes {
    let mut event = data_event(body).to_vec();
    event.extend_from_slice(DONE);
    Bytes::from(event)
}

/// Upstream events go to the client as they are, one by one. The stream ends with
/// `data: [DONE]`, or with an error event if the upstream failed mid-way (the upstream's own,
/// or the gateway's); nothing follows an error. The gateway asks every upstream for usage; a
/// client that did not ask does not get the usage chunk.
pub fn raw_events(
    events: SseEvents,
    request_id: Arc<str>,
    usage: Meter,
    include_usage: bool,
    ids: IdRewriter,
) -> impl Stream<Item = Bytes> + Send + 'static {
    futures_util::stream::unfold(Some((events, usage, ids)), move |state| {
        let request_id = request_id.clone();
        async move {
            let (mut events, usage, mut ids) = state?;
            loop {
                match events.next().await {
                    Next::Event(event) if sse::is_done(&event) => return Some((event, None)),
                    Next::Event(event) if sse::is_error(&event) => {
                        outcome::stream_error(&usage, "upstream_error");
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
                        outcome::failed_in_stream(&usage, &error);
                        return Some((data_event(&error.openai_body(&request_id)), None));
                    }
                }
            }
        }
    })
}

/// Reads the usage chunk as it passes (only chunks that carry one are parsed); true when the
/// chunk carries nothing but usage.
fn take_usage(event: &[u8], usage: &Meter) -> bool {
    let Some(data) = sse::data_of(event) else {
        return false;
    };
    if !crate::ids::may_carry_usage(data) {
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
