//! `POST /compatible-mode/v1/completions`: plain prompts and fill-in-the-middle (Qwen coder:
//! `<|fim_prefix|>...<|fim_suffix|>...<|fim_middle|>`, or a `suffix` field). The answer is
//! `echo: <prompt>` for a plain prompt and `fim prefix=<P chars> suffix=<S chars>` for FIM.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::playback::Playback;
use super::reply::{pieces, tokens_of};
use super::{Knobs, SimState, authorized, compat_error, uuid_from};

/// The middle a FIM prompt asks for, described by the sizes of what surrounds it.
fn answer(prompt: &str, suffix: Option<&str>) -> String {
    if let Some(rest) = prompt.strip_prefix("<|fim_prefix|>") {
        if let Some((prefix, rest)) = rest.split_once("<|fim_suffix|>") {
            let suffix = rest.strip_suffix("<|fim_middle|>").unwrap_or(rest);
            return format!(
                "fim prefix={} suffix={}",
                prefix.chars().count(),
                suffix.chars().count()
            );
        }
    }
    match suffix {
        Some(suffix) => format!(
            "fim prefix={} suffix={}",
            prompt.chars().count(),
            suffix.chars().count()
        ),
        None => format!("echo: {prompt}"),
    }
}

pub(super) async fn complete(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.stats.requests.fetch_add(1, Ordering::Relaxed);
    let request_id = uuid_from(&hex::encode(Sha256::digest(&body)));
    if !authorized(&state.options, &headers) {
        let message = "Incorrect API key provided. ";
        return compat_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            message,
            &request_id,
        );
    }
    let request = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(request)) => request,
        _ => {
            let message = "The request body is not valid JSON";
            return compat_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_parameter_error",
                message,
                &request_id,
            );
        }
    };
    let prompt = match request.get("prompt") {
        Some(Value::String(p)) => p.clone(),
        Some(Value::Array(items)) => items
            .first()
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        _ => {
            let message = "prompt is required";
            return compat_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_parameter_error",
                message,
                &request_id,
            );
        }
    };
    let knobs: Knobs = request
        .get("sim")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    let text = answer(&prompt, request.get("suffix").and_then(Value::as_str));
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let created = knobs.created.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    });
    let (prompt_tokens, completion_tokens) = (tokens_of(&prompt), tokens_of(&text));
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens});
    let id = format!("cmpl-{request_id}");
    let object = |choices: Value, usage: Value| json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": choices, "usage": usage});
    let mut response = if request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        let include_usage = request
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut events = VecDeque::new();
        let frame = |v: Value| Bytes::from(format!("data: {v}\n\n"));
        for piece in pieces(&text, knobs.chunks.unwrap_or(state.options.chunks)) {
            let choice =
                json!([{"text": piece, "index": 0, "logprobs": null, "finish_reason": null}]);
            events.push_back(frame(object(choice, Value::Null)));
        }
        let finish = json!([{"text": "", "index": 0, "logprobs": null, "finish_reason": "stop"}]);
        events.push_back(frame(object(finish, Value::Null)));
        if include_usage {
            events.push_back(frame(object(json!([]), usage)));
        }
        events.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
        Playback::new(&state, events, &knobs, None).into_response()
    } else {
        let choice = json!([{"text": text, "index": 0, "logprobs": null, "finish_reason": "stop"}]);
        let mut response = (StatusCode::OK, object(choice, usage).to_string()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fim_prompts_are_recognised_both_ways() {
        assert_eq!(
            answer(
                "<|fim_prefix|>def f():<|fim_suffix|>return 1<|fim_middle|>",
                None
            ),
            "fim prefix=8 suffix=8"
        );
        assert_eq!(
            answer("def f():", Some("return 1")),
            "fim prefix=8 suffix=8"
        );
        assert_eq!(answer("hello", None), "echo: hello");
    }
}
