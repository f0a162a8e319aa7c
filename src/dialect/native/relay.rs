//! The fast path: native frames from a native upstream relayed as they came, their ids
//! rewritten and their usage read on the way.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;

use super::reply::error_frame;
use crate::event::Usage;
use crate::ids::IdRewriter;
use crate::pipeline::outcome;
use crate::relay::{Next, SseEvents};
use crate::sse;
use crate::usage::Meter;

/// A whole reply with the gateway's id written in, and the usage it reports.
pub fn whole_body(body: Bytes, request_id: &str) -> (Bytes, Option<Usage>) {
    let body = IdRewriter::native(request_id).apply(body);
    let usage = crate::provider::dashscope::decode_reply(&body)
        .ok()
        .and_then(|r| r.usage);
    (body, usage)
}

/// The stream ends when the upstream closes it, after an error frame, or with the gateway's
/// own error frame. Every frame carries the usage so far: the meter keeps the last one and
/// reads it at the end, also when the client hangs up.
pub fn raw_frames(
    events: SseEvents,
    request_id: Arc<str>,
    usage: Meter,
) -> impl Stream<Item = Bytes> + Send + 'static {
    struct Relay {
        events: SseEvents,
        sent: u64,
        usage: Meter,
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
                    outcome::stream_error(&relay.usage, "upstream_error");
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
                    outcome::failed_in_stream(&relay.usage, &error);
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
