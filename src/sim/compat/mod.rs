//! DashScope compatible mode (`/compatible-mode/v1/chat/completions`), shaped as the seeds show
//! the raw wire: `data: {json}\n\n` events, the role chunk first, content deltas, a finish chunk,
//! the usage chunk with empty `choices` only when `stream_options.include_usage` is set, and
//! `data: [DONE]`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

mod wire;

use super::playback::{Playback, StreamFault};
use super::reply::{Reply, meaning_hash, reply_for, tokens_of};
use super::{Knobs, SimState, authorized, compat_error, uuid_from};
use wire::Wire;

pub(super) async fn chat(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.stats.requests.fetch_add(1, Ordering::Relaxed);
    let parsed = serde_json::from_slice::<Value>(&body);
    let hash = match &parsed {
        Ok(Value::Object(request)) => meaning_hash(request),
        _ => hex::encode(Sha256::digest(&body)),
    };
    let request_id = uuid_from(&hash);
    let bad = |message: &str| {
        compat_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_parameter_error",
            message,
            &request_id,
        )
    };
    if !authorized(&state.options, &headers) {
        return compat_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            "Incorrect API key provided. ",
            &request_id,
        );
    }
    let Ok(Value::Object(request)) = parsed else {
        return bad(
            "<400> InternalError.Algo.InvalidParameter: The request body is not valid JSON",
        );
    };
    let model = match request.get("model").and_then(Value::as_str) {
        Some(model) if !model.is_empty() => model.to_string(),
        _ => return bad("<400> InternalError.Algo.InvalidParameter: Model not specified"),
    };
    if request
        .get("messages")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        return bad("<400> InternalError.Algo.InvalidParameter: Messages must not be empty");
    }
    if model.starts_with("missing-") {
        let message =
            format!("The model `{model}` does not exist or you do not have access to it.");
        return compat_error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            &message,
            &request_id,
        );
    }
    let knobs: Knobs = request
        .get("sim")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    let latency = knobs.latency_ms.unwrap_or(state.options.latency_ms);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let fault = state.fault(&knobs);
    let wants_stream = request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    match fault.as_deref() {
        Some("429") => {
            let mut response = compat_error(
                StatusCode::TOO_MANY_REQUESTS,
                "limit_requests",
                "limit_requests",
                "Requests rate limit exceeded, please try again later.",
                &request_id,
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
            return compat_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "internal_error",
                "An internal error has occured, please try again later or contact service support.",
                &request_id,
            );
        }
        Some("503") => {
            return compat_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ModelServingError",
                "ModelServingError",
                "The engine is currently overloaded, please try again later.",
                &request_id,
            );
        }
        // A non-stream request: stall never answers; drop closes the connection unanswered.
        Some("stall") if !wants_stream => std::future::pending::<()>().await,
        Some("drop") if !wants_stream => {
            let cut = Playback::new(
                &state,
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
    let messages = request.get("messages").and_then(Value::as_array);
    let (documents, document_tokens) =
        match super::files::documents(&state.files, messages.map_or(&[][..], Vec::as_slice)) {
            Ok(read) => read,
            Err(id) => {
                return compat_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "invalid_parameter_error",
                    &format!("File [{id}] not found."),
                    &request_id,
                );
            }
        };
    let reply = if knobs.echo_request {
        let content = String::from_utf8_lossy(&body).into_owned();
        Reply {
            completion_tokens: tokens_of(&content),
            prompt_tokens: tokens_of(&content),
            content,
            reasoning: None,
            tool_call: None,
            finish_reason: "stop",
        }
    } else {
        let mut reply = reply_for(&request, &hash);
        reply.content.push_str(&documents);
        reply.prompt_tokens += document_tokens;
        reply
    };
    let wire = Wire {
        id: format!("chatcmpl-{request_id}"),
        created: knobs.created.unwrap_or_else(now),
        model,
        n: request
            .get("n")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .clamp(1, 4),
        cached_tokens: knobs.cached_tokens.unwrap_or(0),
        logprobs: super::extras::logprobs_wanted(&request),
        audio: super::extras::audio_wanted(&request),
        chunks: knobs.chunks.unwrap_or(state.options.chunks),
        full_shape: knobs.full_shape,
    };
    let stream = request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut response = if stream {
        stream_reply(&state, &request, &knobs, fault.as_deref(), &wire, &reply)
    } else {
        let mut response = (StatusCode::OK, wire.completion(&reply).to_string()).into_response();
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

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn stream_reply(
    state: &SimState,
    request: &Map<String, Value>,
    knobs: &Knobs,
    fault: Option<&str>,
    wire: &Wire,
    reply: &Reply,
) -> Response {
    let include_usage = request
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let chunks = knobs.chunks.unwrap_or(state.options.chunks);
    let stream_fault = match fault {
        Some("stall") => Some(StreamFault::Stall),
        Some("drop") => Some(StreamFault::Drop),
        Some("inspection") => {
            // DashScope's mid-stream refusal in compatible mode: a plain `data:` error, no `[DONE]`.
            let error = json!({"error": {"message": "Output data may contain inappropriate content.",
                "type": "data_inspection_failed", "param": null, "code": "data_inspection_failed"}, "id": wire.id});
            Some(StreamFault::Refusal(Bytes::from(format!(
                "data: {error}\n\n"
            ))))
        }
        _ => None,
    };
    Playback::new(
        state,
        wire.events(reply, chunks, include_usage),
        knobs,
        stream_fault,
    )
    .into_response()
}

/// `GET .../models`, as DashScope's compatible mode answers it (with the key checked).
pub(super) async fn models(State(state): State<Arc<SimState>>, headers: HeaderMap) -> Response {
    state.stats.requests.fetch_add(1, Ordering::Relaxed);
    if !authorized(&state.options, &headers) {
        let request_id = uuid::Uuid::new_v4().to_string();
        return compat_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            "Incorrect API key provided. ",
            &request_id,
        );
    }
    const MODELS: &[&str] = &[
        "qwen-max",
        "qwen-plus",
        "qwen-turbo",
        "qwen-long",
        "qwen-vl-max",
        "qwen-vl-plus",
        "qwen-omni-turbo",
        "qwq-32b",
        "qwen3-235b-a22b",
        "qwen2.5-coder-32b-instruct",
    ];
    let data: Vec<Value> = MODELS
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 1_700_000_000, "owned_by": "system"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}
