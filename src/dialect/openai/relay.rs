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
    // One read for the id and the usage; a body of another shape gets each read on its own.
    if let Some((id, usage)) = crate::wire::openai::id_and_usage_of_completion(&body) {
        return (ids.apply_known(body, id.as_deref()), usage);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const USAGE: &str = r#""usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}"#;

    #[test]
    fn a_whole_reply_gets_the_gateways_id_and_gives_its_usage_in_one_read() {
        let body = format!(r#"{{"id":"chatcmpl-up","choices":[{{"id":"x"}}],{USAGE}}}"#);
        let (out, usage) = whole_body(Bytes::from(body), IdRewriter::compat("g1"));
        let expected = format!(r#"{{"id":"chatcmpl-g1","choices":[{{"id":"x"}}],{USAGE}}}"#);
        assert_eq!(out, Bytes::from(expected));
        let usage = usage.unwrap_or_default();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (3, 5));
    }

    #[test]
    fn a_reply_of_another_shape_still_gives_its_usage_and_keeps_what_cannot_be_rewritten() {
        // An id that is not a string: nothing to rewrite, the usage still counts.
        let body = format!(r#"{{"id":7,{USAGE}}}"#);
        let (out, usage) = whole_body(Bytes::from(body.clone()), IdRewriter::compat("g2"));
        assert_eq!(out, Bytes::from(body));
        assert_eq!(usage.map(|u| u.total_tokens), Some(8));
        // No id at all, and a body that is not JSON.
        let body = format!(r#"{{{USAGE}}}"#);
        let (out, usage) = whole_body(Bytes::from(body.clone()), IdRewriter::compat("g3"));
        assert_eq!(
            (out, usage.map(|u| u.total_tokens)),
            (Bytes::from(body), Some(8))
        );
        let (out, usage) = whole_body(Bytes::from_static(b"oops"), IdRewriter::compat("g4"));
        assert_eq!((out, usage), (Bytes::from_static(b"oops"), None));
    }
}
