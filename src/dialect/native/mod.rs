//! DashScope's native dialect (its native generation API reference): `POST /api/v1/services/aigc/
//! {text,multimodal}-generation/generation` with `{model, input: {messages | prompt},
//! parameters}`; SSE when `X-DashScope-SSE: enable`, framed `id:` / `event:result` /
//! `:HTTP_STATUS/200` / `data:`; replies `{output, usage, request_id}`; errors
//! `{request_id, code, message}`. Requests run through [`crate::pipeline::handle`];
//! [`Native`] is this dialect's face.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde_json::Value;

mod relay;
mod reply;
mod request;
mod shadow;

pub use reply::{FrameEncoder, encode_reply, usage_json};
pub use request::decode;

use crate::chat::Chat;
use crate::error::{GatewayError, json_response};
use crate::event::{Reply, Usage};
use crate::pipeline::ClientDialect;
use crate::provider::Api;
use crate::relay::{Dialect, SseEvents};
use crate::session::Shape;
use crate::state::{AppState, RequestId};
use crate::usage::Meter;
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
    let face = Native(Api::NativeText);
    crate::pipeline::handle(state, request_id, headers, body, face).await
}

/// `POST /api/v1/services/aigc/multimodal-generation/generation`.
pub async fn multimodal_generation(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let face = Native(Api::NativeMultimodal);
    crate::pipeline::handle(state, request_id, headers, body, face).await
}

/// The native face, for one of its two generation endpoints.
#[derive(Clone, Copy)]
pub struct Native(pub Api);

impl ClientDialect for Native {
    type Options = Options;
    type Encoder = FrameEncoder;

    fn route(&self) -> &'static str {
        if self.0 == Api::NativeMultimodal {
            "native_multimodal"
        } else {
            "native_text"
        }
    }

    fn label(&self) -> &'static str {
        "native"
    }

    fn wire(&self) -> (Dialect, Api) {
        (Dialect::Native, self.0)
    }

    fn decode(&self, body: &[u8], headers: &HeaderMap) -> Result<(Chat, Options), GatewayError> {
        decode(body, wants_stream(headers), self.0)
    }

    fn dispatch_error(&self, error: GatewayError) -> GatewayError {
        request::native_names(error)
    }

    fn session(&self, options: Options) -> (bool, Shape) {
        let cumulative = !options.incremental;
        (true, Shape::Native { cumulative })
    }

    fn error_response(&self, error: GatewayError, request_id: &str) -> Response {
        error.into_native_response(request_id)
    }

    fn error_event(&self, error: &GatewayError, request_id: &str, seq: u64) -> Bytes {
        error_frame(seq, error.status().as_u16(), &error.native_body(request_id))
    }

    fn encoder(&self, request_id: Arc<str>, _: String, options: Options) -> FrameEncoder {
        FrameEncoder::new(request_id, options)
    }

    fn encode_whole(&self, reply: &mut Reply, id: &str, _: &str, options: Options) -> Vec<u8> {
        encode_reply(reply, options, id)
    }

    fn relay_whole(&self, body: Bytes, request_id: &str) -> (Bytes, Option<Usage>) {
        relay::whole_body(body, request_id)
    }

    fn whole_response(&self, body: Bytes, _: HeaderValue) -> Response {
        json_response(StatusCode::OK, body.to_vec())
    }

    fn whole_event(&self, body: &Bytes) -> Bytes {
        let data: Value = serde_json::from_slice(body).unwrap_or_default();
        result_frame(1, &data)
    }

    fn relay_stream(
        &self,
        events: SseEvents,
        request_id: Arc<str>,
        meter: Meter,
        _: Options,
    ) -> BoxStream<'static, Bytes> {
        relay::raw_frames(events, request_id, meter).boxed()
    }
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
