//! Canonical replies encoded as compatible-mode JSON and chunks, in the key order DashScope uses.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::dialect::StepEncoder;
use crate::error::openai_of_native;
use crate::event::{ChatEvent, Delta, Meta, Reply, StreamError, Usage};
use crate::relay::Step;

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

    fn chunk(&self, choices: Value, usage: Value) -> Bytes {
        let chunk = json!({
            "choices": choices,
            "object": "chat.completion.chunk",
            "usage": usage,
            "created": self.meta.created,
            "system_fingerprint": null,
            "model": self.meta.model,
            "id": self.meta.id,
        });
        data_event(&serde_json::to_vec(&chunk).unwrap_or_default())
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
                let choice = json!({
                    "delta": delta_json(&delta),
                    "finish_reason": delta.finish_reason,
                    "index": delta.index,
                    "logprobs": delta.logprobs,
                });
                let chunk = self.chunk(json!([choice]), Value::Null);
                Some(match &delta.search_info {
                    Some(info) => with_search_info(&chunk, info),
                    None => chunk,
                })
            }
            Step::Event(ChatEvent::Usage(usage)) => {
                // The gateway always asks for usage; a client that did not ask does not see it.
                self.include_usage
                    .then(|| self.chunk(json!([]), usage_json(&usage)))
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

/// The `delta` of a chunk: `content` when there is some (or `null` beside a role), then
/// `reasoning_content`, `tool_calls`, `role`, as DashScope orders them.
fn delta_json(delta: &Delta) -> Value {
    let mut out = Map::new();
    match &delta.content {
        Some(content) => {
            out.insert("content".into(), json!(content));
        }
        // DashScope sends `"content":null` beside a role or reasoning that comes without text.
        None if delta.role || delta.reasoning.is_some() => {
            out.insert("content".into(), Value::Null);
        }
        None => {}
    }
    if let Some(reasoning) = &delta.reasoning {
        out.insert("reasoning_content".into(), json!(reasoning));
    }
    if !delta.tool_calls.is_empty() {
        let calls: Vec<Value> = delta
            .tool_calls
            .iter()
            .map(|call| {
                let mut function = Map::new();
                if let Some(name) = &call.name {
                    function.insert("name".into(), json!(name));
                }
                function.insert("arguments".into(), json!(call.arguments.as_deref().unwrap_or("")));
                json!({"index": call.index, "id": call.id.as_deref().unwrap_or(""), "type": "function", "function": function})
            })
            .collect();
        out.insert("tool_calls".into(), Value::Array(calls));
    }
    if let Some(audio) = &delta.audio {
        out.insert("audio".into(), audio.clone());
    }
    if delta.role {
        out.insert("role".into(), json!("assistant"));
    }
    Value::Object(out)
}

/// A chunk event with DashScope's `search_info` added at the top level (OpenAI has no place
/// for it; the SDKs keep unknown fields).
fn with_search_info(event: &Bytes, info: &Value) -> Bytes {
    let Some(data) = crate::sse::data_of(event) else {
        return event.clone();
    };
    let Ok(Value::Object(mut chunk)) = serde_json::from_slice::<Value>(data) else {
        return event.clone();
    };
    chunk.insert("search_info".into(), info.clone());
    data_event(&serde_json::to_vec(&chunk).unwrap_or_default())
}

/// Usage in the compatible-mode shape, details only where the upstream gave them.
pub fn usage_json(usage: &Usage) -> Value {
    let mut out = Map::new();
    out.insert("prompt_tokens".into(), json!(usage.prompt_tokens));
    out.insert("completion_tokens".into(), json!(usage.completion_tokens));
    out.insert("total_tokens".into(), json!(usage.total_tokens));
    let mut prompt = Map::new();
    for (name, value) in [
        ("cached_tokens", usage.cached_tokens),
        ("image_tokens", usage.image_tokens),
        ("audio_tokens", usage.audio_tokens),
    ] {
        if let Some(value) = value {
            prompt.insert(name.into(), json!(value));
        }
    }
    if !prompt.is_empty() {
        out.insert("prompt_tokens_details".into(), Value::Object(prompt));
    }
    let mut completion = Map::new();
    for (name, value) in [
        ("reasoning_tokens", usage.reasoning_tokens),
        ("audio_tokens", usage.output_audio_tokens),
    ] {
        if let Some(value) = value {
            completion.insert(name.into(), json!(value));
        }
    }
    if !completion.is_empty() {
        out.insert(
            "completion_tokens_details".into(),
            Value::Object(completion),
        );
    }
    Value::Object(out)
}

/// An upstream's mid-stream error as DashScope's compatible mode sends one.
fn stream_error_json(error: &StreamError, request_id: &str) -> Vec<u8> {
    let (code, kind) = match &error.kind {
        Some(kind) => (error.code.as_str(), kind.as_str()),
        None => openai_of_native(&error.code),
    };
    let body = json!({
        "error": {"message": error.message, "type": kind, "param": null, "code": code},
        "request_id": request_id,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// A whole reply in the compatible-mode shape.
pub fn encode_completion(reply: &Reply) -> Vec<u8> {
    let choices: Vec<Value> = reply
        .choices
        .iter()
        .map(|c| {
            let mut message = if c.tool_calls.is_empty() {
                json!({"role": "assistant", "content": c.content})
            } else {
                let calls: Vec<Value> = c
                    .tool_calls
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        json!({"function": {"arguments": t.arguments, "name": t.name}, "id": t.id, "index": i, "type": "function"})
                    })
                    .collect();
                json!({"content": c.content, "role": "assistant", "tool_calls": calls})
            };
            // Thinking models reason before a tool call too: the reasoning stays with it.
            if let Some(reasoning) = &c.reasoning {
                message["reasoning_content"] = json!(reasoning);
            }
            if let Some(audio) = c.audio_json() {
                message["audio"] = audio;
            }
            let logprobs = c.logprobs.as_ref().map(|l| json!({"content": l}));
            json!({"message": message, "finish_reason": c.finish_reason, "index": c.index, "logprobs": logprobs})
        })
        .collect();
    let body = json!({
        "choices": choices,
        "object": "chat.completion",
        "usage": reply.usage.as_ref().map(usage_json),
        "created": reply.meta.created,
        "system_fingerprint": null,
        "model": reply.meta.model,
        "id": reply.meta.id,
    });
    let mut body = body;
    if let Some(info) = &reply.search_info {
        body["search_info"] = info.clone();
    }
    serde_json::to_vec(&body).unwrap_or_default()
}
