//! The OpenAI-compatible dialect (DashScope compatible mode): `/v1/chat/completions`,
//! `/v1/completions` and `/v1/models`, with their `/compatible-mode/v1/...` twins.
//!
//! Replies from an upstream of the same dialect are relayed as they came (the fast path);
//! translated replies are encoded here from canonical steps, in the key order DashScope uses.
//! Chat requests run through [`crate::pipeline::handle`]; [`Compat`] is this dialect's face.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

mod completions;
mod models;
mod relay;
mod reply;

pub use reply::{ChunkEncoder, encode_completion, usage_json};

use crate::chat::{self, Chat};
use crate::error::GatewayError;
use crate::event::{Reply, Usage};
use crate::ids::IdRewriter;
use crate::pipeline::ClientDialect;
use crate::provider::Api;
use crate::relay::{Dialect, SseEvents};
use crate::session::Shape;
use crate::state::{AppState, RequestId};
use crate::usage::Meter;
pub use completions::completions;
pub use models::{model, models, native_models};
use reply::{data_event, fill_meta};

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    crate::pipeline::handle(state, request_id, headers, body, Compat).await
}

/// The OpenAI-compatible chat face; its option is `stream_options.include_usage`.
#[derive(Clone, Copy)]
pub struct Compat;

impl ClientDialect for Compat {
    type Options = bool;
    type Encoder = ChunkEncoder;

    fn route(&self) -> &'static str {
        "chat"
    }

    fn label(&self) -> &'static str {
        "openai"
    }

    fn wire(&self) -> (Dialect, Api) {
        (Dialect::OpenAi, Api::Chat)
    }

    fn decode(&self, body: &[u8], _: &HeaderMap) -> Result<(Chat, bool), GatewayError> {
        let chat = chat::decode(body)?;
        let include_usage = chat.wants_usage();
        Ok((chat, include_usage))
    }

    fn session(&self, _: bool) -> (bool, Shape) {
        (false, Shape::OpenAi)
    }

    fn error_response(&self, error: GatewayError, request_id: &str) -> Response {
        error.into_openai_response(request_id)
    }

    fn error_event(&self, error: &GatewayError, request_id: &str, _: u64) -> Bytes {
        data_event(&error.openai_body(request_id))
    }

    fn encoder(&self, request_id: Arc<str>, model: String, include_usage: bool) -> ChunkEncoder {
        ChunkEncoder::new(request_id, model, include_usage)
    }

    fn encode_whole(&self, reply: &mut Reply, request_id: &str, model: &str, _: bool) -> Vec<u8> {
        fill_meta(&mut reply.meta, request_id, model);
        encode_completion(reply)
    }

    fn relay_whole(&self, body: Bytes, request_id: &str) -> (Bytes, Option<Usage>) {
        relay::whole_body(body, IdRewriter::compat(request_id))
    }

    fn whole_response(&self, body: Bytes, content_type: HeaderValue) -> Response {
        relay::whole_response(body, content_type)
    }

    fn whole_event(&self, body: &Bytes) -> Bytes {
        relay::whole_event(body)
    }

    fn relay_stream(
        &self,
        events: SseEvents,
        request_id: Arc<str>,
        meter: Meter,
        include_usage: bool,
    ) -> BoxStream<'static, Bytes> {
        let ids = IdRewriter::compat(&request_id);
        relay::raw_events(events, request_id, meter, include_usage, ids).boxed()
    }
}
