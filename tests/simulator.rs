//! The simulator follows DashScope's compatible-mode wire format (DashScope's compatible-mode reference):
//! tests here talk to it directly, so what the gateway is tested against is itself checked.

mod common;

use common::*;
use serde_json::{Value, json};

fn post(sim: &Sim, body: &Value, key: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(format!("{}/compatible-mode/v1/chat/completions", sim.url()))
        .bearer_auth(key)
        .json(body)
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

const CHUNK_KEYS: [&str; 7] = [
    "choices",
    "object",
    "usage",
    "created",
    "system_fingerprint",
    "model",
    "id",
];

#[tokio::test]
async fn stream_has_role_chunk_deltas_finish_usage_and_done() {
    let sim = Sim::start().await;
    let body = json!({"model": "qwen-plus", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "你是谁?"}]});
    let response = post(&sim, &body, UPSTREAM_KEY)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream;charset=UTF-8")
    );
    let text = response.text().await.unwrap_or_default();
    assert!(
        text.split_inclusive("\n\n")
            .all(|e| e.starts_with("data: ") && e.ends_with("\n\n")),
        "{text}"
    );
    let events = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.trim_start_matches("data: "))
        .collect::<Vec<_>>();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap_or_default())
        .collect();
    let id = chunks[0]["id"].as_str().unwrap_or("");
    assert!(id.starts_with("chatcmpl-") && id.len() == 45, "{id}");
    for chunk in &chunks {
        assert_eq!(keys(chunk), CHUNK_KEYS);
        assert_eq!(
            (
                chunk["id"].as_str(),
                &chunk["object"],
                &chunk["system_fingerprint"]
            ),
            (Some(id), &json!("chat.completion.chunk"), &Value::Null)
        );
        assert_eq!(chunk["created"], chunks[0]["created"]);
    }
    let first = &chunks[0]["choices"][0];
    assert_eq!(
        first,
        &json!({"delta": {"content": "", "role": "assistant"}, "index": 0, "logprobs": null, "finish_reason": null})
    );
    let (finish, usage) = (&chunks[chunks.len() - 2], &chunks[chunks.len() - 1]);
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(finish["choices"][0]["delta"], json!({"content": ""}));
    assert_eq!(finish["usage"], Value::Null);
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        keys(&usage["usage"]),
        [
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "prompt_tokens_details"
        ]
    );
    let text: String = chunks[1..chunks.len() - 2]
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "echo: 你是谁?");
    assert!(
        chunks[1..chunks.len() - 2]
            .iter()
            .all(|c| c["choices"][0]["logprobs"].is_null() && c["usage"].is_null())
    );
}

#[tokio::test]
async fn non_stream_reply_has_the_seed_shape_and_is_deterministic() {
    let sim = Sim::start().await;
    let body = ask("qwen-plus", "你是谁?");
    let a = json_of(
        post(&sim, &body, UPSTREAM_KEY)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    let b = json_of(
        post(&sim, &body, UPSTREAM_KEY)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(keys(&a), CHUNK_KEYS);
    assert_eq!(a["object"], "chat.completion");
    assert_eq!(
        a["choices"][0],
        json!({"message": {"role": "assistant", "content": "echo: 你是谁?"}, "finish_reason": "stop", "index": 0, "logprobs": null})
    );
    let u = &a["usage"];
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(
            u["prompt_tokens"].as_u64().unwrap_or(0) + u["completion_tokens"].as_u64().unwrap_or(0)
        )
    );
    assert_eq!(u["prompt_tokens_details"], json!({"cached_tokens": 0}));
    assert_eq!((&a["id"], &a["choices"]), (&b["id"], &b["choices"]));
}

#[tokio::test]
async fn tool_calls_stream_as_dashscope_sends_them() {
    let sim = Sim::start().await;
    let tools = json!([{"type": "function", "function": {"name": "get_current_weather", "description": "天气",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}]);
    let mut body = json!({"model": "qwen-plus", "tools": tools, "messages": [{"role": "user", "content": "杭州"}]});
    let whole = json_of(
        post(&sim, &body, UPSTREAM_KEY)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    let call = &whole["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(whole["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        call["function"],
        json!({"arguments": "{\"location\":\"杭州\"}", "name": "get_current_weather"})
    );
    assert!(
        call["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("call_") && id.len() == 27)
    );

    body["stream"] = json!(true);
    let events = data_events(
        post(&sim, &body, UPSTREAM_KEY)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    let chunks: Vec<Value> = events
        .iter()
        .filter_map(|e| serde_json::from_str(e).ok())
        .collect();
    let head = &chunks[0]["choices"][0]["delta"];
    assert_eq!(head["role"], "assistant");
    let head_id = head["tool_calls"][0]["id"].as_str().unwrap_or("");
    assert!(
        head_id.starts_with("call_") && head_id.len() == 27,
        "{head_id}"
    );
    assert_eq!(
        head["tool_calls"][0]["function"]["name"],
        "get_current_weather"
    );
    let arguments: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        arguments,
        call["function"]["arguments"].as_str().unwrap_or("")
    );
    assert!(
        chunks[1..chunks.len() - 1]
            .iter()
            .all(|c| c["choices"][0]["delta"]["tool_calls"][0]["id"] == "")
    );
    assert_eq!(
        chunks[chunks.len() - 1]["choices"][0]["finish_reason"],
        "tool_calls"
    );
}

#[tokio::test]
async fn errors_have_dashscopes_shape_and_codes() {
    let sim = Sim::start().await;
    let cases = [
        (
            post(&sim, &ask("qwen-plus", "hi"), "sk-wrong"),
            (401, "invalid_api_key", "invalid_request_error"),
        ),
        (
            post(&sim, &ask("missing-model", "hi"), UPSTREAM_KEY),
            (404, "model_not_found", "invalid_request_error"),
        ),
        (
            post(
                &sim,
                &json!({"model": "qwen-plus", "messages": []}),
                UPSTREAM_KEY,
            ),
            (400, "invalid_parameter_error", "invalid_request_error"),
        ),
        (
            post(
                &sim,
                &json!({"model": "qwen-plus", "messages": [{"role": "user", "content": "x"}], "sim": {"fault": "429"}}),
                UPSTREAM_KEY,
            ),
            (429, "limit_requests", "limit_requests"),
        ),
        (
            post(
                &sim,
                &json!({"model": "qwen-plus", "messages": [{"role": "user", "content": "x"}], "sim": {"fault": "500"}}),
                UPSTREAM_KEY,
            ),
            (500, "internal_error", "internal_error"),
        ),
        (
            post(
                &sim,
                &json!({"model": "qwen-plus", "messages": [{"role": "user", "content": "x"}], "sim": {"fault": "503"}}),
                UPSTREAM_KEY,
            ),
            (503, "ModelServingError", "ModelServingError"),
        ),
    ];
    for (request, (status, code, kind)) in cases {
        let response = request.send().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status().as_u16(), status);
        let header_id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = json_of(response).await;
        assert_eq!(keys(&body), ["error", "request_id"]);
        assert_eq!(keys(&body["error"]), ["message", "type", "param", "code"]);
        assert_eq!(
            (
                body["error"]["code"].as_str(),
                body["error"]["type"].as_str()
            ),
            (Some(code), Some(kind))
        );
        assert_eq!(body["request_id"].as_str(), header_id.as_deref());
    }
}

#[tokio::test]
async fn a_fault_can_be_limited_to_the_first_requests() {
    let sim = Sim::start().await;
    let mut body = ask("qwen-plus", "hi");
    body["sim"] = json!({"fault": "500", "times": 1, "key": "once"});
    let first = post(&sim, &body, UPSTREAM_KEY)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .ok();
    let second = post(&sim, &body, UPSTREAM_KEY)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .ok();
    assert_eq!((first, second), (Some(500), Some(200)));
}

#[tokio::test]
async fn models_are_listed_in_openai_shape() {
    let sim = Sim::start().await;
    let list = reqwest::Client::new()
        .get(format!("{}/compatible-mode/v1/models", sim.url()))
        .bearer_auth(UPSTREAM_KEY)
        .send()
        .await;
    let list = json_of(list.unwrap_or_else(|e| panic!("{e}"))).await;
    assert_eq!(list["object"], "list");
    assert_eq!(
        keys(&list["data"][0]),
        ["id", "object", "created", "owned_by"]
    );
}
