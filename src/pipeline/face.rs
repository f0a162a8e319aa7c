//! What a client dialect brings to the pipeline: everything in which the OpenAI-compatible and
//! the native API differ, and nothing the two share.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream::BoxStream;

use crate::chat::Chat;
use crate::error::GatewayError;
use crate::event::{Reply, Usage};
use crate::provider::Api;
use crate::relay::{Dialect, SseEvents, Step};
use crate::session::Shape;
use crate::usage::Meter;

/// Turns canonical steps into one dialect's stream events.
pub trait StepEncoder: Send + 'static {
    /// The event for one step, if it makes one.
    fn step(&mut self, step: Step) -> Option<Bytes>;
    /// The closing event after the last step, if the dialect has one.
    fn finish(&mut self) -> Option<Bytes>;
}

/// One client dialect, as [`super::handle`] runs it. A value of it is the endpoint (the native
/// face knows whether it is the text or the multimodal one).
pub trait ClientDialect: Clone + Send + Sync + 'static {
    /// How the client wants its reply, read with the request (`include_usage`, native options).
    type Options: Copy + Send + Sync + 'static;
    /// The translated stream's encoder.
    type Encoder: StepEncoder;

    /// The route label of metrics, usage records and resume tickets.
    fn route(&self) -> &'static str;
    /// The dialect's name in the usage record.
    fn label(&self) -> &'static str;
    /// The dialect and endpoint the request goes upstream as.
    fn wire(&self) -> (Dialect, Api);

    /// The canonical chat and the reply options, from the client's body and headers.
    fn decode(
        &self,
        body: &[u8],
        headers: &HeaderMap,
    ) -> Result<(Chat, Self::Options), GatewayError>;
    /// An error from routing or the upstream, renamed to the fields the client sent.
    fn dispatch_error(&self, error: GatewayError) -> GatewayError {
        error
    }
    /// For a session turn: whether the body is rewritten in native shape, and the reply's shape.
    fn session(&self, options: Self::Options) -> (bool, Shape);

    /// An error as the whole response.
    fn error_response(&self, error: GatewayError, request_id: &str) -> Response;
    /// An error as the last event of a stream whose head went out; `seq` numbers it.
    fn error_event(&self, error: &GatewayError, request_id: &str, seq: u64) -> Bytes;

    /// The encoder of a translated stream.
    fn encoder(&self, request_id: Arc<str>, model: String, options: Self::Options)
    -> Self::Encoder;
    /// A translated whole reply's body.
    fn encode_whole(
        &self,
        reply: &mut Reply,
        request_id: &str,
        model: &str,
        options: Self::Options,
    ) -> Vec<u8>;

    /// A raw whole reply as relayed: the gateway's request id written in, and its usage.
    fn relay_whole(&self, body: Bytes, request_id: &str) -> (Bytes, Option<Usage>);
    /// The response for a relayed whole reply; `content_type` is the upstream's.
    fn whole_response(&self, body: Bytes, content_type: HeaderValue) -> Response;
    /// A relayed whole reply as the one event of a stream (the upstream did not stream).
    fn whole_event(&self, body: &Bytes) -> Bytes;
    /// The raw stream relay: upstream events to the client as they are, metered.
    fn relay_stream(
        &self,
        events: SseEvents,
        request_id: Arc<str>,
        meter: Meter,
        options: Self::Options,
    ) -> BoxStream<'static, Bytes>;
}
