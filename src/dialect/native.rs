//! DashScope's native dialect (`../shared/seeds/002_*`): `POST /api/v1/services/aigc/
//! {text,multimodal}-generation/generation` with `{model, input: {messages | prompt},
//! parameters}`; SSE when `X-DashScope-SSE: enable`, framed `id:` / `event:result` /
//! `:HTTP_STATUS/200` / `data:`; replies `{output, usage, request_id}`; errors
//! `{request_id, code, message}`.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::time::Duration;
use tokio::time::Instant;

use super::sse;
use super::{StepEncoder, StreamTracker, UsageSink, encode_steps, event_stream_response};
use crate::chat::{self, Chat};
use crate::error::{GatewayError, json_response, native_of_openai};
use crate::event::{ChatEvent, Choice, Delta, Reply, ToolCall, ToolCallDelta, Usage};
use crate::provider::Api;
use crate::relay::{self, Dialect, Next, Outcome, Request, SseEvents, Step};
use crate::server::{AppState, RequestId};

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
    generation(&state, &request_id, &headers, body, Api::NativeText).await
}

/// `POST /api/v1/services/aigc/multimodal-generation/generation`.
pub async fn multimodal_generation(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    generation(&state, &request_id, &headers, body, Api::NativeMultimodal).await
}

async fn generation(
    state: &Arc<AppState>,
    request_id: &Arc<str>,
    headers: &HeaderMap,
    body: Body,
    api: Api,
) -> Response {
    match reply(state, request_id, headers, body, api).await {
        Ok(response) => response,
        Err(error) => {
            let upstream = error.upstream_name().unwrap_or("-").to_string();
            super::tagged(error.into_native_response(request_id), "-", &upstream)
        }
    }
}

async fn reply(
    state: &Arc<AppState>,
    request_id: &Arc<str>,
    headers: &HeaderMap,
    body: Body,
    api: Api,
) -> Result<Response, GatewayError> {
    let started = Instant::now();
    let caller = state.auth.authenticate(headers)?;
    let bytes = super::read_body(
        headers,
        body,
        state.config.server.max_body_bytes,
        state.body_timeout,
    )
    .await?;
    let (chat, options) = decode(&bytes, wants_stream(headers), api)?;
    let stream = chat.is_stream();
    let model = chat.model.clone();
    let route = if api == Api::NativeMultimodal {
        "native_multimodal"
    } else {
        "native_text"
    };
    let keepalive = state.config.server.sse_keepalive_ms;
    if stream && keepalive > 0 {
        // The head goes out now; the call runs inside the stream, which the client can drop.
        let (state2, request_id2, headers, model2) = (
            state.clone(),
            request_id.clone(),
            headers.clone(),
            model.clone(),
        );
        let first = async move {
            let request = Request {
                dialect: Dialect::Native,
                api,
                chat,
                original: bytes,
                caller: &caller,
                headers: &headers,
                request_id: &request_id2,
            };
            match relay::dispatch(&state2, request).await {
                Ok(outcome) => {
                    Ok(stream_of(&state2, outcome, request_id2.clone(), &model2, options).0)
                }
                Err(error) => Err(error_frame(
                    1,
                    error.status().as_u16(),
                    &error.native_body(&request_id2),
                )),
            }
        };
        let events = super::with_keepalive(first, Duration::from_millis(keepalive));
        let tracker = StreamTracker::new(state.metrics.clone(), route, started);
        return Ok(super::tagged(
            event_stream_response(events, tracker),
            &model,
            "-",
        ));
    }
    let request = Request {
        dialect: Dialect::Native,
        api,
        chat,
        original: bytes,
        caller: &caller,
        headers,
        request_id,
    };
    let outcome = relay::dispatch(state, request).await?;
    if stream {
        let (events, name) = stream_of(state, outcome, request_id.clone(), &model, options);
        let tracker = StreamTracker::new(state.metrics.clone(), route, started);
        return Ok(super::tagged(
            event_stream_response(events, tracker),
            &model,
            &name,
        ));
    }
    Ok(match outcome {
        Outcome::Raw(upstreamed) => {
            let name = upstreamed.lease.upstream.config.name.clone();
            let body = upstreamed.read_whole().await?;
            if let Some(u) = crate::provider::dashscope::decode_reply(&body)
                .ok()
                .and_then(|r| r.usage)
            {
                UsageSink::new(state.metrics.clone(), &model, &name).record(&u);
            }
            super::tagged(json_response(StatusCode::OK, body.to_vec()), &model, &name)
        }
        Outcome::Whole(reply, name) => {
            if let Some(usage) = &reply.usage {
                UsageSink::new(state.metrics.clone(), &model, &name).record(usage);
            }
            super::tagged(
                json_response(StatusCode::OK, encode_reply(&reply, options, request_id)),
                &model,
                &name,
            )
        }
        outcome @ Outcome::Steps(..) => {
            let (events, name) = stream_of(state, outcome, request_id.clone(), &model, options);
            let tracker = StreamTracker::new(state.metrics.clone(), route, started);
            super::tagged(event_stream_response(events, tracker), &model, &name)
        }
    })
}

/// The client's frames for an upstream's answer to a stream request, and the upstream's name.
fn stream_of(
    state: &Arc<AppState>,
    outcome: Outcome,
    request_id: Arc<str>,
    model: &str,
    options: Options,
) -> (BoxStream<'static, Bytes>, String) {
    let sink = |name: &str| UsageSink::new(state.metrics.clone(), model, name);
    match outcome {
        Outcome::Raw(upstreamed) => {
            let name = upstreamed.lease.upstream.config.name.clone();
            let usage = sink(&name);
            if upstreamed.is_event_stream() {
                return (
                    raw_frames(upstreamed.into_events(), request_id, usage).boxed(),
                    name,
                );
            }
            // Asked for a stream, the upstream answered whole: its reply as one frame.
            let events = futures_util::stream::once(async move {
                match upstreamed.read_whole().await {
                    Ok(body) => {
                        let data: Value = serde_json::from_slice(&body).unwrap_or_default();
                        result_frame(1, &data)
                    }
                    Err(error) => {
                        error_frame(1, error.status().as_u16(), &error.native_body(&request_id))
                    }
                }
            });
            (events.boxed(), name)
        }
        Outcome::Steps(steps, name) => {
            let encoder = FrameEncoder::new(request_id, options);
            (encode_steps(steps, encoder, sink(&name)).boxed(), name)
        }
        Outcome::Whole(reply, name) => {
            let mut steps: Vec<Step> = vec![Step::Meta(reply.meta.clone())];
            steps.extend(reply.events().into_iter().map(Step::Event));
            let encoder = FrameEncoder::new(request_id, options);
            let steps = futures_util::stream::iter(steps).boxed();
            (encode_steps(steps, encoder, sink(&name)).boxed(), name)
        }
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

#[derive(Deserialize)]
struct NativeRequest {
    model: String,
    input: NativeInput,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Deserialize)]
struct NativeInput {
    #[serde(default)]
    messages: Option<Vec<Value>>,
    #[serde(default)]
    prompt: Option<String>,
}

/// Parses a native request into the canonical `Chat`; errors name the native field
/// (`input.messages[0].role`, `parameters.temperature`).
pub fn decode(body: &[u8], stream: bool, api: Api) -> Result<(Chat, Options), GatewayError> {
    let mut json = serde_json::Deserializer::from_slice(body);
    let request: NativeRequest =
        serde_path_to_error::deserialize(&mut json).map_err(chat::path_error)?;
    json.end()
        .map_err(|e| GatewayError::InvalidJson(e.to_string()))?;
    let multimodal = api == Api::NativeMultimodal;
    let mut parameters = request.parameters;
    let text_format = match parameters.remove("result_format") {
        None => !multimodal,
        Some(Value::String(f)) if f == "text" => true,
        Some(Value::String(f)) if f == "message" => false,
        Some(_) => {
            return Err(GatewayError::param(
                "parameters.result_format",
                "`parameters.result_format` must be \"text\" or \"message\"",
            ));
        }
    };
    let incremental = match parameters.remove("incremental_output") {
        None => false,
        Some(Value::Bool(b)) => b,
        Some(_) => {
            return Err(GatewayError::param(
                "parameters.incremental_output",
                "`parameters.incremental_output` must be a boolean",
            ));
        }
    };
    let messages = match (request.input.messages, request.input.prompt) {
        (Some(messages), _) => messages.into_iter().map(openai_message).collect(),
        (None, Some(prompt)) => vec![json!({"role": "user", "content": prompt})],
        (None, None) => {
            return Err(GatewayError::param(
                "input.messages",
                "Either `input.prompt` or `input.messages` must be given",
            ));
        }
    };
    let mut shaped = Map::new();
    shaped.insert("model".into(), Value::String(request.model));
    shaped.insert("messages".into(), Value::Array(messages));
    shaped.insert("stream".into(), Value::Bool(stream));
    shaped.extend(parameters);
    shaped.extend(request.extra);
    let chat: Chat = serde_path_to_error::deserialize(Value::Object(shaped)).map_err(|e| {
        let path = e.path().to_string();
        GatewayError::param(
            native_param(&path),
            format!("Invalid `{}`: {}", native_param(&path), e.into_inner()),
        )
    })?;
    chat::validate(&chat).map_err(|e| match e {
        GatewayError::InvalidParameter {
            param: Some(p),
            message,
        } => GatewayError::InvalidParameter {
            message: message.replace(&format!("`{p}`"), &format!("`{}`", native_param(&p))),
            param: Some(native_param(&p)),
        },
        other => other,
    })?;
    let choices = chat.n.unwrap_or(1);
    Ok((
        chat,
        Options {
            text_format,
            incremental,
            multimodal,
            choices,
        },
    ))
}

/// Where a canonical field lives in a native request.
fn native_param(param: &str) -> String {
    if param == "model" || param == "." {
        param.to_string()
    } else if param.starts_with("messages") {
        format!("input.{param}")
    } else {
        format!("parameters.{param}")
    }
}

/// A native message as the canonical (OpenAI-shaped) one: content items `{text}`, `{image}`,
/// `{video}` (frame list or URL), `{audio}` become typed parts; other item fields ride along.
fn openai_message(message: Value) -> Value {
    let Value::Object(mut message) = message else {
        return message;
    };
    if let Some(Value::Array(items)) = message.get_mut("content") {
        let parts: Vec<Value> = std::mem::take(items).into_iter().map(openai_part).collect();
        *items = parts;
    }
    Value::Object(message)
}

fn openai_part(item: Value) -> Value {
    let Value::Object(mut item) = item else {
        return item;
    };
    if item.contains_key("type") {
        return Value::Object(item); // already a typed part
    }
    let mut part = Map::new();
    if let Some(text) = item.remove("text") {
        part.insert("type".into(), json!("text"));
        part.insert("text".into(), text);
    } else if let Some(image) = item.remove("image") {
        part.insert("type".into(), json!("image_url"));
        part.insert("image_url".into(), json!({"url": image}));
    } else if let Some(video) = item.remove("video") {
        if video.is_array() {
            part.insert("type".into(), json!("video"));
            part.insert("video".into(), video);
        } else {
            part.insert("type".into(), json!("video_url"));
            part.insert("video_url".into(), json!({"url": video}));
        }
    } else if let Some(audio) = item.remove("audio") {
        part.insert("type".into(), json!("input_audio"));
        part.insert("input_audio".into(), json!({"data": audio}));
    }
    part.extend(item);
    Value::Object(part)
}

/// The fast path for streams: native frames go to the client as they are. The stream ends
/// when the upstream closes it, after an error frame, or with the gateway's own error frame.
/// Every frame carries the usage so far; the last one's is counted.
fn raw_frames(
    events: SseEvents,
    request_id: Arc<str>,
    usage: UsageSink,
) -> impl Stream<Item = Bytes> {
    struct Relay {
        events: SseEvents,
        sent: u64,
        last: Option<Bytes>,
    }
    let relay = Relay {
        events,
        sent: 0,
        last: None,
    };
    futures_util::stream::unfold(Some(relay), move |state| {
        let request_id = request_id.clone();
        let usage = usage.clone();
        async move {
            let mut relay = state?;
            match relay.events.next().await {
                Next::Event(event) if sse::error_status(&event).is_some() => Some((event, None)),
                Next::Event(event) => {
                    relay.sent += 1;
                    relay.last = Some(event.clone());
                    Some((event, Some(relay)))
                }
                Next::End => {
                    let data = relay.last.as_deref().and_then(sse::data_of);
                    if let Some(Ok(reply)) = data.map(crate::provider::dashscope::decode_reply) {
                        if let Some(u) = reply.usage {
                            usage.record(&u);
                        }
                    }
                    None
                }
                Next::Fail(error) => {
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

fn result_frame(id: u64, data: &Value) -> Bytes {
    Bytes::from(format!(
        "id:{id}\nevent:result\n:HTTP_STATUS/200\ndata:{data}\n\n"
    ))
}

/// DashScope's error frame; `status:` repeats the status where the official SDKs read it.
fn error_frame(id: u64, status: u16, data: &[u8]) -> Bytes {
    let data = String::from_utf8_lossy(data);
    Bytes::from(format!(
        "id:{id}\nevent:error\n:HTTP_STATUS/{status}\nstatus:{status}\ndata:{data}\n\n"
    ))
}

/// Usage in the native shape.
pub fn usage_json(usage: &Usage) -> Value {
    let mut out = Map::new();
    out.insert("total_tokens".into(), json!(usage.total_tokens));
    out.insert("output_tokens".into(), json!(usage.completion_tokens));
    out.insert("input_tokens".into(), json!(usage.prompt_tokens));
    if let Some(cached) = usage.cached_tokens {
        out.insert(
            "prompt_tokens_details".into(),
            json!({"cached_tokens": cached}),
        );
    }
    if let Some(reasoning) = usage.reasoning_tokens {
        out.insert(
            "output_tokens_details".into(),
            json!({"reasoning_tokens": reasoning}),
        );
    }
    if let Some(image) = usage.image_tokens {
        out.insert("image_tokens".into(), json!(image));
    }
    if let Some(audio) = usage.audio_tokens {
        out.insert("audio_tokens".into(), json!(audio));
    }
    Value::Object(out)
}

/// Tool calls as a whole reply lists them.
fn whole_calls_json(calls: &[ToolCall]) -> Value {
    calls
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"function": {"name": t.name, "arguments": t.arguments}, "index": i, "id": t.id, "type": "function"}))
        .collect()
}

/// Tool calls as a stream frame carries them: fragments (name only on the first) when
/// incremental, the calls so far otherwise.
fn frame_calls_json(calls: &[ToolCallDelta]) -> Value {
    calls
        .iter()
        .map(|c| {
            let mut function = Map::new();
            if let Some(name) = &c.name {
                function.insert("name".into(), json!(name));
            }
            function.insert("arguments".into(), json!(c.arguments.as_deref().unwrap_or("")));
            json!({"index": c.index, "id": c.id.as_deref().unwrap_or(""), "type": "function", "function": function})
        })
        .collect()
}

/// The `output` of a whole native reply, keys in DashScope's order; with several choices
/// each carries its `index`.
fn whole_output(options: Options, choices: &[Choice]) -> Value {
    let first = choices.first().cloned().unwrap_or_default();
    if options.text_format {
        let finish = first.finish_reason.as_deref().unwrap_or("stop");
        return json!({"finish_reason": finish, "text": first.content});
    }
    let choices: Vec<Value> = choices
        .iter()
        .map(|choice| {
            let finish = choice.finish_reason.as_deref().unwrap_or("stop");
            let mut message = Map::new();
            message.insert("role".into(), json!("assistant"));
            message.insert("content".into(), content_json(options, &choice.content));
            if let Some(reasoning) = &choice.reasoning {
                message.insert("reasoning_content".into(), json!(reasoning));
            }
            if !choice.tool_calls.is_empty() {
                message.insert("tool_calls".into(), whole_calls_json(&choice.tool_calls));
            }
            let mut out = Map::new();
            out.insert("finish_reason".into(), json!(finish));
            if options.choices > 1 {
                out.insert("index".into(), json!(choice.index));
            }
            out.insert("message".into(), Value::Object(message));
            Value::Object(out)
        })
        .collect();
    json!({"choices": choices})
}

fn content_json(options: Options, content: &str) -> Value {
    if options.multimodal {
        json!([{"text": content}])
    } else {
        json!(content)
    }
}

/// The `output` of a stream frame, keys in DashScope's order.
fn frame_output(
    options: Options,
    index: u32,
    content: &str,
    reasoning: Option<&str>,
    calls: &[ToolCallDelta],
    finish: &str,
) -> Value {
    if options.text_format {
        return json!({"finish_reason": finish, "text": content});
    }
    let mut message = Map::new();
    message.insert("content".into(), content_json(options, content));
    if let Some(reasoning) = reasoning {
        message.insert("reasoning_content".into(), json!(reasoning));
    }
    message.insert("role".into(), json!("assistant"));
    if !calls.is_empty() {
        message.insert("tool_calls".into(), frame_calls_json(calls));
    }
    let mut choice = json!({"message": message, "finish_reason": finish});
    if options.choices > 1 {
        choice["index"] = json!(index);
    }
    json!({"choices": [choice]})
}

/// A whole reply in the native shape.
pub fn encode_reply(reply: &Reply, options: Options, request_id: &str) -> Vec<u8> {
    let body = json!({
        "output": whole_output(options, &reply.choices),
        "usage": reply.usage.as_ref().map(usage_json).unwrap_or(json!({})),
        "request_id": reply.meta.request_id.as_deref().unwrap_or(request_id),
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Encodes canonical steps as native frames, incremental or cumulative.
pub struct FrameEncoder {
    options: Options,
    request_id: String,
    frames: u64,
    /// The reply so far, for cumulative (`incremental_output: false`) frames.
    sofar: Reply,
    /// A finishing step held back until its usage arrives (OpenAI-compatible upstreams send
    /// usage after the finish).
    held: Option<Delta>,
    usage: Option<Usage>,
}

impl FrameEncoder {
    pub fn new(request_id: Arc<str>, options: Options) -> Self {
        Self {
            options,
            request_id: request_id.to_string(),
            frames: 0,
            sofar: Reply::default(),
            held: None,
            usage: None,
        }
    }

    fn frame(&mut self, delta: &Delta, usage: Option<&Usage>) -> Bytes {
        self.sofar.apply(&ChatEvent::Delta(delta.clone()));
        self.frames += 1;
        let finish = delta.finish_reason.as_deref().unwrap_or("null");
        let output = if self.options.incremental {
            let content = delta.content.as_deref().unwrap_or("");
            frame_output(
                self.options,
                delta.index,
                content,
                delta.reasoning.as_deref(),
                &delta.tool_calls,
                finish,
            )
        } else {
            let choice = self
                .sofar
                .choices
                .iter()
                .find(|c| c.index == delta.index)
                .cloned()
                .unwrap_or_default();
            let calls: Vec<ToolCallDelta> = choice
                .tool_calls
                .iter()
                .enumerate()
                .map(|(i, t)| ToolCallDelta {
                    index: i as u32,
                    id: Some(t.id.clone()),
                    name: Some(t.name.clone()),
                    arguments: Some(t.arguments.clone()),
                })
                .collect();
            frame_output(
                self.options,
                delta.index,
                &choice.content,
                choice.reasoning.as_deref(),
                &calls,
                finish,
            )
        };
        let mut data = Map::new();
        data.insert("output".into(), output);
        if let Some(usage) = usage {
            data.insert("usage".into(), usage_json(usage));
        }
        data.insert("request_id".into(), json!(self.request_id));
        result_frame(self.frames, &Value::Object(data))
    }

    fn flush_held(&mut self) -> Option<Bytes> {
        let held = self.held.take()?;
        let usage = self.usage.clone();
        Some(self.frame(&held, usage.as_ref()))
    }
}

fn join(a: Option<Bytes>, b: Bytes) -> Bytes {
    match a {
        None => b,
        Some(a) => Bytes::from([a.as_ref(), b.as_ref()].concat()),
    }
}

impl StepEncoder for FrameEncoder {
    fn step(&mut self, step: Step) -> Option<Bytes> {
        match step {
            Step::Meta(meta) => {
                if let Some(id) = meta.request_id {
                    self.request_id = id;
                }
                None
            }
            Step::Event(ChatEvent::Delta(delta)) => {
                if delta.finish_reason.is_some() && delta.usage.is_none() {
                    let earlier = self.flush_held();
                    self.held = Some(delta);
                    return earlier;
                }
                let earlier = self.flush_held();
                let usage = delta.usage.clone();
                Some(join(earlier, self.frame(&delta, usage.as_ref())))
            }
            Step::Event(ChatEvent::Usage(usage)) => {
                self.usage = Some(usage);
                self.flush_held()
            }
            Step::Event(ChatEvent::Error(error)) => {
                let earlier = self.flush_held();
                // A code from an OpenAI-dialect upstream (it came with a `type`) gets its native name.
                let code = match error.kind {
                    Some(_) => native_of_openai(&error.code, error.status),
                    None => &error.code,
                };
                let body =
                    json!({"request_id": self.request_id, "code": code, "message": error.message});
                let data = serde_json::to_vec(&body).unwrap_or_default();
                Some(join(
                    earlier,
                    error_frame(self.frames + 1, error.status, &data),
                ))
            }
            Step::Fail(error) => {
                let earlier = self.flush_held();
                let data = error.native_body(&self.request_id);
                Some(join(
                    earlier,
                    error_frame(self.frames + 1, error.status().as_u16(), &data),
                ))
            }
        }
    }

    fn finish(&mut self) -> Option<Bytes> {
        self.flush_held()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_items_become_typed_parts_and_errors_use_native_names() {
        let body = br#"{"model":"qwen-vl-plus","input":{"messages":[{"role":"user","content":[{"image":"https://x/a.jpg"},{"video":["a","b"],"fps":2},{"video":"https://x/v.mp4"},{"audio":"https://x/a.wav"},{"text":"what"}]}]},"parameters":{"result_format":"message","incremental_output":true,"enable_search":true}}"#;
        let decoded = decode(body, true, Api::NativeMultimodal);
        let (chat, options) = decoded.unwrap_or_else(|e| panic!("{e}"));
        assert!(
            chat.is_stream() && options.incremental && !options.text_format && options.multimodal
        );
        let parts = serde_json::to_value(&chat.messages[0].content).unwrap_or_default();
        assert_eq!(
            parts,
            json!([{"type": "image_url", "image_url": {"url": "https://x/a.jpg"}},
                   {"type": "video", "video": ["a", "b"], "fps": 2},
                   {"type": "video_url", "video_url": {"url": "https://x/v.mp4"}},
                   {"type": "input_audio", "input_audio": {"data": "https://x/a.wav"}},
                   {"type": "text", "text": "what"}])
        );
        assert_eq!(chat.extra.get("enable_search"), Some(&json!(true)));

        let bad = br#"{"model":"qwen-plus","input":{"messages":[{"role":"user","content":"x"}]},"parameters":{"temperature":3}}"#;
        let err = decode(bad, false, Api::NativeText).err();
        assert!(
            matches!(&err, Some(GatewayError::InvalidParameter { param: Some(p), .. }) if p == "parameters.temperature"),
            "{err:?}"
        );
        let bad_role =
            br#"{"model":"qwen-plus","input":{"messages":[{"role":"bot","content":"x"}]}}"#;
        let err = decode(bad_role, false, Api::NativeText).err();
        assert!(
            matches!(err, Some(GatewayError::InvalidParameter { param: Some(p), .. }) if p == "input.messages[0].role")
        );
        let prompt = br#"{"model":"qwen-plus","input":{"prompt":"hi"}}"#;
        let (chat, options) =
            decode(prompt, false, Api::NativeText).unwrap_or_else(|e| panic!("{e}"));
        assert!(options.text_format);
        assert_eq!(chat.messages.len(), 1);
    }

    #[test]
    fn cumulative_frames_carry_the_text_so_far_and_usage_waits_for_the_finish() {
        let options = Options {
            text_format: false,
            incremental: false,
            multimodal: false,
            choices: 1,
        };
        let mut encoder = FrameEncoder::new(Arc::from("rid"), options);
        let delta = |content: &str, finish: Option<&str>| {
            Step::Event(ChatEvent::Delta(Delta {
                content: Some(content.into()),
                finish_reason: finish.map(str::to_string),
                ..Delta::default()
            }))
        };
        let first = encoder.step(delta("Hel", None)).unwrap_or_default();
        let second = encoder.step(delta("lo", None)).unwrap_or_default();
        assert!(String::from_utf8_lossy(&first).starts_with("id:1\nevent:result\n:HTTP_STATUS/200\ndata:{\"output\":{\"choices\":[{\"message\":{\"content\":\"Hel\""));
        assert!(String::from_utf8_lossy(&second).contains("\"content\":\"Hello\""));
        assert!(
            encoder.step(delta("", Some("stop"))).is_none(),
            "the finish waits for usage"
        );
        let usage = Usage {
            prompt_tokens: 2,
            completion_tokens: 3,
            total_tokens: 5,
            ..Usage::default()
        };
        let last = encoder
            .step(Step::Event(ChatEvent::Usage(usage)))
            .unwrap_or_default();
        let last = String::from_utf8_lossy(&last);
        assert!(last.starts_with("id:3\n"), "{last}");
        assert!(last.contains(r#""finish_reason":"stop"}]},"usage":{"total_tokens":5,"output_tokens":3,"input_tokens":2},"request_id":"rid"}"#), "{last}");
        assert!(encoder.finish().is_none());
    }
}
