//! DashScope's native API (`/api/v1/services/aigc/{text,multimodal}-generation/generation`):
//! `{output, usage, request_id}` replies; with `X-DashScope-SSE: enable`, frames of
//! `id:N`, `event:result`, `:HTTP_STATUS/200`, `data:{...}`, each with the usage so far and
//! `finish_reason` `"null"` until the last; no `[DONE]`. `incremental_output` picks deltas or the
//! whole text so far; `result_format` `text` or `message`. Errors are `{request_id, code, message}`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

mod frames;

use super::playback::{Playback, StreamFault};
use super::reply::{meaning_hash, reply_for};
use super::{Knobs, SimState, authorized, uuid_from};
use frames::{frames, usage_json, whole_output, with_audio_usage};

pub(super) async fn text(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    generation(&state, &headers, &body, false).await
}

pub(super) async fn multimodal(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    generation(&state, &headers, &body, true).await
}

fn native_error(status: StatusCode, code: &str, message: &str, request_id: &str) -> Response {
    let body = json!({"request_id": request_id, "code": code, "message": message});
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(id) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-request-id", id);
    }
    response
}

/// How the client asked for its reply.
struct Format {
    text: bool,
    incremental: bool,
    multimodal: bool,
    /// Choices (`n`); with more than one, each carries its `index`.
    n: u64,
    /// `Some(top_logprobs)` when logprobs were asked for.
    logprobs: Option<usize>,
    /// Omni output: `message.audio` with base64 chunks and the transcript.
    audio: bool,
    /// `output.search_info`, on the first frame and the whole reply.
    search_info: Option<Value>,
    chunks: usize,
    created: i64,
}

async fn generation(
    state: &SimState,
    headers: &HeaderMap,
    body: &[u8],
    multimodal: bool,
) -> Response {
    state.stats.requests.fetch_add(1, Ordering::Relaxed);
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(body) else {
        let id = uuid_from(&super::reply::sha16(body));
        return native_error(
            StatusCode::BAD_REQUEST,
            "BadRequest.IllegalInput",
            "The input parameter requires json format.",
            &id,
        );
    };
    let input = request.get("input").cloned().unwrap_or(Value::Null);
    let messages: Vec<Value> = match (input.get("messages"), input.get("prompt")) {
        (Some(Value::Array(messages)), _) => messages.clone(),
        (None, Some(Value::String(prompt))) => vec![json!({"role": "user", "content": prompt})],
        _ => Vec::new(),
    };
    let mut meaning = Map::new();
    meaning.insert(
        "model".into(),
        request.get("model").cloned().unwrap_or(Value::Null),
    );
    meaning.insert("messages".into(), Value::Array(messages.clone()));
    let hash = meaning_hash(&meaning);
    let request_id = uuid_from(&hash);
    let bad = |code: &str, message: &str| {
        native_error(StatusCode::BAD_REQUEST, code, message, &request_id)
    };
    if !authorized(&state.options, headers) {
        return native_error(
            StatusCode::UNAUTHORIZED,
            "InvalidApiKey",
            "Invalid API-key provided.",
            &request_id,
        );
    }
    let model = match request.get("model").and_then(Value::as_str) {
        Some(model) if !model.is_empty() => model.to_string(),
        _ => {
            return bad(
                "BadRequest.EmptyModel",
                "Required parameter \"model\" missing from request.",
            );
        }
    };
    if messages.is_empty() {
        return bad(
            "InvalidParameter",
            "Either \"prompt\" or \"messages\" must exist and cannot both be none",
        );
    }
    if model.starts_with("missing-") {
        return native_error(
            StatusCode::NOT_FOUND,
            "ModelNotFound",
            "Model can not be found.",
            &request_id,
        );
    }
    let parameters = request
        .get("parameters")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let knobs: Knobs = parameters
        .get("sim")
        .or_else(|| request.get("sim"))
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    let latency = knobs.latency_ms.unwrap_or(state.options.latency_ms);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let fault = state.fault(&knobs);
    let wants_stream = headers
        .get("x-dashscope-sse")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("enable"));
    let refuse =
        |status, code: &str, message: &str| native_error(status, code, message, &request_id);
    match fault.as_deref() {
        Some("429") => {
            let mut response = refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "Throttling.RateQuota",
                "Requests rate limit exceeded, please try again later.",
            );
            if let Some(value) = knobs
                .retry_after
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v).ok())
            {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return response;
        }
        Some("500") => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "An internal error has occured, please try again later or contact service support.",
            );
        }
        Some("503") => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "ModelServingError",
                "Too many requests. Your requests are being throttled due to system capacity limits. Please try again later.",
            );
        }
        // A non-stream request: stall never answers; drop closes the connection unanswered.
        Some("stall") if !wants_stream => std::future::pending::<()>().await,
        Some("drop") if !wants_stream => {
            let cut = Playback::new(
                state,
                VecDeque::new(),
                &Knobs {
                    after: Some(0),
                    ..Knobs::default()
                },
                Some(StreamFault::Drop),
            );
            return cut.into_response();
        }
        _ => {}
    }
    // The reply logic reads OpenAI-shaped requests: parameters beside typed message parts.
    let mut shaped = parameters.clone();
    shaped.insert(
        "messages".into(),
        Value::Array(messages.iter().map(openai_message).collect()),
    );
    let (documents, document_tokens) = match super::files::documents(&state.files, &messages) {
        Ok(read) => read,
        Err(id) => {
            return native_error(
                StatusCode::BAD_REQUEST,
                "InvalidParameter",
                &format!("File [{id}] not found."),
                &request_id,
            );
        }
    };
    let mut reply = reply_for(&shaped, &hash);
    reply.content.push_str(&documents);
    reply.prompt_tokens += document_tokens;
    if knobs.echo_request {
        reply.content = String::from_utf8_lossy(body).into_owned();
        reply.tool_call = None;
        reply.reasoning = None;
    }
    let result_format = parameters.get("result_format").and_then(Value::as_str);
    let format = Format {
        text: result_format.map_or(!multimodal, |f| f == "text"),
        incremental: parameters
            .get("incremental_output")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        multimodal,
        n: parameters
            .get("n")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .clamp(1, 4),
        logprobs: super::extras::logprobs_wanted(&parameters),
        audio: super::extras::audio_wanted(&parameters),
        search_info: super::extras::search_info(&parameters, &reply.content),
        chunks: knobs.chunks.unwrap_or(state.options.chunks),
        created: knobs.created.unwrap_or(1_700_000_000),
    };
    let mut response = if wants_stream {
        let chunks = knobs.chunks.unwrap_or(state.options.chunks);
        let events = frames(
            &reply,
            &format,
            chunks,
            knobs.cached_tokens.unwrap_or(0),
            &request_id,
        );
        let fault = match fault.as_deref() {
            Some("stall") => Some(StreamFault::Stall),
            Some("drop") => Some(StreamFault::Drop),
            Some("inspection") => {
                let data = json!({"code": "DataInspectionFailed", "message": "Output data may contain inappropriate content.", "request_id": request_id});
                let frame = format!(
                    "id:{}\nevent:error\n:HTTP_STATUS/400\ndata:{data}\n\n",
                    knobs.after.unwrap_or(2) + 1
                );
                Some(StreamFault::Refusal(Bytes::from(frame)))
            }
            _ => None,
        };
        Playback::new(state, events, &knobs, fault).into_response()
    } else {
        let mut usage = usage_json(
            &reply,
            reply.completion_tokens,
            knobs.cached_tokens.unwrap_or(0),
        );
        if format.audio {
            with_audio_usage(&mut usage, &reply, reply.completion_tokens);
        }
        let body = json!({"output": whole_output(&reply, &format), "usage": usage, "request_id": request_id});
        let mut response = (StatusCode::OK, body.to_string()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    };
    if let Ok(id) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", id);
    }
    response
}

/// A native message with typed (OpenAI-shaped) content parts, for the reply logic.
fn openai_message(message: &Value) -> Value {
    let mut message = message.clone();
    if let Some(Value::Array(items)) = message.get_mut("content") {
        for item in items.iter_mut() {
            let part = if let Some(text) = item.get("text") {
                json!({"type": "text", "text": text})
            } else if let Some(image) = item.get("image") {
                json!({"type": "image_url", "image_url": {"url": image}})
            } else if let Some(Value::Array(frames)) = item.get("video") {
                json!({"type": "video", "video": frames})
            } else if let Some(video) = item.get("video") {
                json!({"type": "video_url", "video_url": {"url": video}})
            } else if let Some(audio) = item.get("audio") {
                json!({"type": "input_audio", "input_audio": {"data": audio}})
            } else {
                continue;
            };
            *item = part;
        }
    }
    message
}
