//! DashScope compatible mode (`/compatible-mode/v1/chat/completions`), shaped as the seeds show
//! the raw wire: `data: {json}\n\n` events, the role chunk first, content deltas, a finish chunk,
//! the usage chunk with empty `choices` only when `stream_options.include_usage` is set, and
//! `data: [DONE]`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::reply::{Reply, pieces, reply_for, tokens_of};
use super::{Knobs, SimState, Stats, authorized, compat_error, uuid_from};

pub(super) async fn chat(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.stats.requests.fetch_add(1, Ordering::Relaxed);
    let hash = hex::encode(Sha256::digest(&body));
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
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(&body) else {
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
        _ => {}
    }
    let reply = if knobs.echo_request {
        let content = String::from_utf8_lossy(&body).into_owned();
        Reply {
            completion_tokens: tokens_of(&content),
            prompt_tokens: tokens_of(&content),
            content,
            tool_call: None,
            finish_reason: "stop",
        }
    } else {
        reply_for(&request, &hash)
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

/// The fields every reply object repeats.
struct Wire {
    id: String,
    created: i64,
    model: String,
    n: u64,
    cached_tokens: u64,
}

impl Wire {
    fn usage(&self, reply: &Reply) -> Value {
        let completion = reply.completion_tokens * self.n;
        json!({
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": reply.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        })
    }

    fn completion(&self, reply: &Reply) -> Value {
        let choices: Vec<Value> = (0..self.n)
            .map(|index| {
                let message = match &reply.tool_call {
                    Some(call) => json!({
                        "content": "",
                        "role": "assistant",
                        "tool_calls": [{
                            "function": {"arguments": call.arguments, "name": call.name},
                            "id": call.id, "index": 0, "type": "function",
                        }],
                    }),
                    None => json!({"role": "assistant", "content": reply.content}),
                };
                json!({"message": message, "finish_reason": reply.finish_reason, "index": index, "logprobs": null})
            })
            .collect();
        json!({
            "choices": choices,
            "object": "chat.completion",
            "usage": self.usage(reply),
            "created": self.created,
            "system_fingerprint": null,
            "model": self.model,
            "id": self.id,
        })
    }

    fn chunk(&self, choices: Value, usage: Value) -> Bytes {
        let chunk = json!({
            "choices": choices,
            "object": "chat.completion.chunk",
            "usage": usage,
            "created": self.created,
            "system_fingerprint": null,
            "model": self.model,
            "id": self.id,
        });
        Bytes::from(format!("data: {chunk}\n\n"))
    }

    /// Every event of the stream, in order.
    fn events(&self, reply: &Reply, chunks: usize, include_usage: bool) -> VecDeque<Bytes> {
        let mut events = VecDeque::new();
        for index in 0..self.n {
            match &reply.tool_call {
                Some(call) => {
                    // As DashScope streams tool calls: the head carries id and name with the first
                    // fragment of the arguments; later deltas carry `"id":""` and more arguments.
                    let fragments = pieces(&call.arguments, chunks.max(2));
                    for (k, fragment) in fragments.iter().enumerate() {
                        let delta = if k == 0 {
                            json!({"content": null, "tool_calls": [{"index": 0, "id": call.id, "type": "function",
                                "function": {"name": call.name, "arguments": fragment}}], "role": "assistant"})
                        } else {
                            json!({"tool_calls": [{"function": {"arguments": fragment}, "index": 0, "id": "", "type": "function"}]})
                        };
                        let choice = json!([{"delta": delta, "finish_reason": null, "index": index, "logprobs": null}]);
                        events.push_back(self.chunk(choice, Value::Null));
                    }
                    let finish = json!([{"finish_reason": "tool_calls", "delta": {}, "index": index, "logprobs": null}]);
                    events.push_back(self.chunk(finish, Value::Null));
                }
                None => {
                    let role = json!([{"delta": {"content": "", "role": "assistant"}, "index": index, "logprobs": null, "finish_reason": null}]);
                    events.push_back(self.chunk(role, Value::Null));
                    for piece in pieces(&reply.content, chunks) {
                        let delta = json!([{"delta": {"content": piece}, "finish_reason": null, "index": index, "logprobs": null}]);
                        events.push_back(self.chunk(delta, Value::Null));
                    }
                    let finish = json!([{"delta": {"content": ""}, "finish_reason": reply.finish_reason, "index": index, "logprobs": null}]);
                    events.push_back(self.chunk(finish, Value::Null));
                }
            }
        }
        if include_usage {
            events.push_back(self.chunk(json!([]), self.usage(reply)));
        }
        events.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
        events
    }
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
        Some("inspection") => Some(StreamFault::Inspection(wire.id.clone())),
        _ => None,
    };
    let playback = Playback {
        events: wire.events(reply, chunks, include_usage),
        sent: 0,
        fault: stream_fault.map(|f| (knobs.after.unwrap_or(2), f)),
        delay: Duration::from_millis(knobs.chunk_delay_ms.unwrap_or(state.options.chunk_delay_ms)),
        guard: CloseGuard {
            stats: state.stats.clone(),
            finished: false,
        },
    };
    let body = futures_util::stream::unfold(playback, |mut p| async move {
        let item = p.next().await?;
        Some((item, p))
    });
    let mut response = Response::new(Body::from_stream(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream;charset=UTF-8"),
    );
    response
}

enum StreamFault {
    Stall,
    Drop,
    Inspection(String),
}

struct Playback {
    events: VecDeque<Bytes>,
    sent: usize,
    fault: Option<(usize, StreamFault)>,
    delay: Duration,
    guard: CloseGuard,
}

impl Playback {
    async fn next(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        if let Some((after, _)) = &self.fault {
            if self.sent == *after {
                let (_, fault) = self.fault.take()?;
                self.events.clear();
                match fault {
                    StreamFault::Stall => std::future::pending::<()>().await,
                    StreamFault::Drop => {
                        // Let the server flush the events already sent (it flushes while the body
                        // is pending), so the cut lands mid-stream. With none sent, cutting at once
                        // closes the connection before any response.
                        if self.sent > 0 {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        return Some(Err(std::io::Error::other("simulated connection drop")));
                    }
                    StreamFault::Inspection(id) => {
                        // DashScope's mid-stream refusal: a plain `data:` error, no `[DONE]`.
                        let error = json!({"error": {"message": "Output data may contain inappropriate content.",
                            "type": "data_inspection_failed", "param": null, "code": "data_inspection_failed"}, "id": id});
                        self.guard.finished = true;
                        return Some(Ok(Bytes::from(format!("data: {error}\n\n"))));
                    }
                }
            }
        }
        let Some(event) = self.events.pop_front() else {
            self.guard.finished = true;
            return None;
        };
        if self.sent > 0 && !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.sent += 1;
        Some(Ok(event))
    }
}

/// Counts streams the client closed before their end (dropped bodies) and streams completed.
struct CloseGuard {
    stats: Arc<Stats>,
    finished: bool,
}

impl Drop for CloseGuard {
    fn drop(&mut self) {
        if self.finished {
            self.stats.streams_completed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats
                .streams_closed_early
                .fetch_add(1, Ordering::Relaxed);
            self.stats.stream_closed_early.notify_one();
        }
    }
}

pub(super) async fn models() -> Response {
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
