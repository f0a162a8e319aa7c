//! Requests are checked before they cost an upstream call; errors name the field at fault.

mod common;

use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn each_documented_parameter_is_checked_and_named() {
    let sim = Sim::start().await;
    let gw = Gateway::before(&sim).await;
    let with = |field: &str, value: Value| {
        let mut body = ask("qwen-plus", "hi");
        body[field] = value;
        body
    };
    let cases = [
        (with("temperature", json!(2.0)), "temperature"),
        (with("temperature", json!("hot")), "temperature"),
        (with("top_p", json!(0)), "top_p"),
        (with("top_p", json!(1.5)), "top_p"),
        (with("presence_penalty", json!(-2.5)), "presence_penalty"),
        (with("n", json!(5)), "n"),
        (with("max_tokens", json!(0)), "max_tokens"),
        (with("seed", json!(-1)), "seed"),
        (with("stop", json!(["你好", 104307])), "stop"),
        (with("stream", json!("yes")), "stream"),
        (with("messages", json!([])), "messages"),
        (
            with("messages", json!([{"role": "robot", "content": "hi"}])),
            "messages[0].role",
        ),
        (
            with("messages", json!([{"role": "user"}])),
            "messages[0].content",
        ),
        (
            with(
                "messages",
                json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": ""}}]}]),
            ),
            "messages[0].content[0].image_url.url",
        ),
        (
            with(
                "messages",
                json!([{"role": "user", "content": [{"type": "video", "video": []}]}]),
            ),
            "messages[0].content[0].video",
        ),
        (
            with(
                "tools",
                json!([{"type": "function", "function": {"name": "get weather"}}]),
            ),
            "tools[0].function.name",
        ),
        (
            with("tools", json!([{"type": "function"}])),
            "tools[0].function",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi"}]}),
            "model",
        ),
    ];
    for (body, param) in cases {
        let response = gw
            .chat(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status().as_u16(), 400, "{param}");
        let error = json_of(response).await;
        assert_eq!(
            error_of(&error),
            (
                "invalid_parameter_error",
                Some(param),
                "invalid_request_error"
            ),
            "{error}"
        );
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(param)),
            "{error}"
        );
    }
    // Values inside the documented ranges pass.
    let fine = json!({"model": "qwen-plus", "messages": [{"role": "user", "content": "hi"}], "temperature": 0, "top_p": 1,
        "presence_penalty": 2, "n": 4, "max_tokens": 1, "stop": [[108386, 103924]], "seed": 42});
    assert_eq!(
        gw.chat(&fine)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .ok(),
        Some(200)
    );
    assert_eq!(
        sim.requests(),
        1,
        "only the valid request may reach the upstream"
    );
}

#[tokio::test]
async fn malformed_json_is_400_invalid_json() {
    let sim = Sim::start().await;
    let gw = Gateway::before(&sim).await;
    for body in [&b"{\"model\": \"qwen-plus\", "[..], b"not json", b""] {
        let response = gw
            .http
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status().as_u16(), 400);
        assert_eq!(error_of(&json_of(response).await).0, "invalid_json");
    }
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_with_a_json_body() {
    let sim = Sim::start().await;
    let gw = Gateway::before(&sim).await; // max_body_bytes = 65536
    let big = ask("qwen-plus", &"x".repeat(70_000));
    let declared = gw.chat(&big).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(declared.status().as_u16(), 413);
    assert_eq!(error_of(&json_of(declared).await).0, "request_too_large");
    // Without a Content-Length (chunked upload) the limit holds while reading.
    let bytes = serde_json::to_vec(&big).unwrap_or_default();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(8192).map(|c| Ok(c.to_vec())).collect();
    let chunked = gw
        .http
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(chunked.status().as_u16(), 413);
    assert_eq!(error_of(&json_of(chunked).await).0, "request_too_large");
    assert_eq!(sim.requests(), 0);
}
