//! Canonical steps encoded as compatible-mode chunks (the shapes are in `wire::openai`).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::dialect::StepEncoder;
use crate::error::openai_of_native;
use crate::event::{ChatEvent, Meta, StreamError};
use crate::relay::Step;
use crate::wire::openai::{Chunk, ChunkChoice, ErrorBody, ErrorDetail};
// The encoding itself lives with the wire format; these paths stay for existing callers.
pub use crate::wire::openai::{encode_completion, usage_json};

pub(super) const DONE: &[u8] = b"data: [DONE]\n\n";

/// One SSE `data:` event around a JSON payload: a chunk, a whole reply sent as a stream, or an
/// error.
pub(super) fn data_event(json: &[u8]) -> Bytes {
    let mut event = Vec::with_capacity(json.len() + 8);
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(json);
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

/// Fills what a translated reply's upstream did not say: DashScope's native replies carry
/// no id, time or model.
pub(super) fn fill_meta(meta: &mut Meta, request_id: &str, model: &str) {
    // Always the gateway's id, whatever the upstream called its reply: one id per request.
    meta.id = format!("chatcmpl-{request_id}");
    if meta.created == 0 {
        meta.created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
    }
    if meta.model.is_empty() {
        meta.model = model.to_string();
    }
}

/// Encodes canonical steps as compatible-mode chunks.
pub struct ChunkEncoder {
    meta: Meta,
    request_id: Arc<str>,
    model: String,
    include_usage: bool,
    failed: bool,
}

impl ChunkEncoder {
    pub fn new(request_id: Arc<str>, model: String, include_usage: bool) -> Self {
        Self {
            meta: Meta::default(),
            request_id,
            model,
            include_usage,
            failed: false,
        }
    }

    fn chunk(&self, chunk: &Chunk<'_>) -> Bytes {
        data_event(&serde_json::to_vec(chunk).unwrap_or_default())
    }
}

impl StepEncoder for ChunkEncoder {
    fn step(&mut self, step: Step) -> Option<Bytes> {
        match step {
            Step::Meta(meta) => {
                self.meta = meta;
                fill_meta(&mut self.meta, &self.request_id, &self.model);
                None
            }
            Step::Event(ChatEvent::Delta(delta)) => {
                if self.meta.id.is_empty() {
                    fill_meta(&mut self.meta, &self.request_id, &self.model);
                }
                let choice = [ChunkChoice::of(&delta)];
                let search_info = delta.search_info.as_ref();
                Some(self.chunk(&Chunk::step(&self.meta, &choice, search_info)))
            }
            Step::Event(ChatEvent::Usage(usage)) => {
                // The gateway always asks for usage; a client that did not ask does not see it.
                self.include_usage
                    .then(|| self.chunk(&Chunk::usage(&self.meta, &usage)))
            }
            Step::Event(ChatEvent::Error(error)) => {
                self.failed = true;
                Some(data_event(&stream_error_json(&error, &self.request_id)))
            }
            Step::Fail(error) => {
                self.failed = true;
                Some(data_event(&error.openai_body(&self.request_id)))
            }
        }
    }

    fn finish(&mut self) -> Option<Bytes> {
        (!self.failed).then(|| Bytes::from_static(DONE))
    }
}

/// An upstream's mid-stream error as DashScope's compatible mode sends one.
fn stream_error_json(error: &StreamError, request_id: &str) -> Vec<u8> {
    let (code, kind) = match &error.kind {
        Some(kind) => (error.code.as_str(), kind.as_str()),
        None => openai_of_native(&error.code),
    };
    let body = ErrorBody {
        error: ErrorDetail {
            message: &error.message,
            kind,
            param: None,
            code,
        },
        request_id,
    };
    serde_json::to_vec(&body).unwrap_or_default()
}
