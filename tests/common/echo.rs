//! A purpose-built upstream for the security tests: it keeps every body it is sent, byte for
//! byte, and answers by the request's `model`: `ok` (a valid reply in the dialect of the path,
//! streamed when asked), or a failure mode that echoes the request's `Authorization` header
//! back, as a careless upstream or a proxy in front of one might: `e400` .. `e503` (error
//! status and body, the header in `x-echo` and `retry-after` too), `midstream` (an error event
//! after a good one), `garbage` (an unreadable stream line), `plain` (a non-JSON 200 body).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Default)]
pub struct Seen {
    pub bodies: Mutex<Vec<(String, Bytes)>>,
}

impl Seen {
    pub fn all(&self) -> Vec<(String, Bytes)> {
        self.bodies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

pub async fn start() -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let kept = seen.clone();
    let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
        let kept = kept.clone();
        async move {
            kept.bodies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((uri.path().to_string(), body.clone()));
            answer(uri.path(), &headers, &body)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, seen)
}

fn answer(path: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let native = path.starts_with("/api/v1/");
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let request: Value = serde_json::from_slice(body).unwrap_or_default();
    let model = request["model"].as_str().unwrap_or("ok").to_string();
    let stream = request["stream"] == json!(true)
        || headers
            .get("x-dashscope-sse")
            .is_some_and(|v| v == "enable");
    let sse = |events: String| ([("content-type", "text/event-stream")], events).into_response();
    let good = if native {
        format!(
            "id:1\nevent:result\n:HTTP_STATUS/200\ndata:{}\n\n",
            native_reply(&model)
        )
    } else {
        format!("data: {}\n\n", chunk(&model))
    };
    if let Some(code) = model.strip_prefix('e').and_then(|c| c.parse::<u16>().ok()) {
        let body = if native {
            json!({"code": "InvalidApiKey", "message": format!("Rejected {auth}"), "request_id": auth})
        } else {
            json!({"error": {"message": format!("Rejected {auth}"), "type": "invalid_request_error", "param": auth, "code": auth}})
        };
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
        let mut response = (status, body.to_string()).into_response();
        for name in ["x-echo", "retry-after", "content-type"] {
            if let Ok(v) = auth.parse() {
                response.headers_mut().insert(name, v);
            }
        }
        return response;
    }
    match model.as_str() {
        "midstream" if native => sse(format!(
            "{good}id:2\nevent:error\n:HTTP_STATUS/500\ndata:{}\n\n",
            json!({"code": "InternalError", "message": auth, "request_id": auth})
        )),
        "midstream" => sse(format!(
            "{good}data: {}\n\n",
            json!({"error": {"message": auth, "type": "server_error", "code": auth}})
        )),
        "garbage" => sse(format!("{good}data: unreadable {auth}\n\n")),
        "plain" => {
            let mut response = format!("upstream says {auth}").into_response();
            if let Ok(v) = format!("text/plain; echo={auth}").parse() {
                response.headers_mut().insert("content-type", v);
            }
            response
        }
        _ if stream && native => sse(good),
        _ if stream => sse(format!("{good}data: [DONE]\n\n")),
        _ if native => (
            [("content-type", "application/json")],
            native_reply(&model).to_string(),
        )
            .into_response(),
        _ => (
            [("content-type", "application/json")],
            completion(&model).to_string(),
        )
            .into_response(),
    }
}

fn native_reply(model: &str) -> Value {
    json!({"output": {"choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": model}}]},
           "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}, "request_id": "echo"})
}

fn completion(model: &str) -> Value {
    json!({"id": "echo", "object": "chat.completion", "created": 1, "model": model,
           "choices": [{"index": 0, "message": {"role": "assistant", "content": model}, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
}

fn chunk(model: &str) -> Value {
    json!({"id": "echo", "object": "chat.completion.chunk", "created": 1, "model": model,
           "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": null}]})
}
