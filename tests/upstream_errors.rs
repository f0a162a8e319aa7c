//! What the client sees when the upstream fails, refuses, stalls or cannot be reached.

mod common;

use common::*;
use serde_json::{Value, json};

fn faulty(fault: Value) -> Value {
    let mut body = ask("qwen-plus", "hi");
    body["sim"] = fault;
    body
}

#[tokio::test]
async fn upstream_429_stays_429_with_retry_after_and_its_body() {
    let sim = Sim::start().await;
    let gw = Gateway::before(&sim).await;
    let response = gw
        .chat(&faulty(json!({"fault": "429", "retry_after": "7"})))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("7")
    );
    let body = json_of(response).await;
    assert_eq!(error_of(&body), ("limit_requests", None, "limit_requests"));
}

#[tokio::test]
async fn upstream_5xx_becomes_502_or_503_with_an_error_body() {
    let sim = Sim::start().await;
    let gw = Gateway::before(&sim).await;
    for (fault, status, code) in [
        ("500", 502, "upstream_error"),
        ("503", 503, "upstream_overloaded"),
    ] {
        let response = gw
            .chat(&faulty(json!({"fault": fault})))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status().as_u16(), status, "{fault}");
        let body = json_of(response).await;
        assert_eq!(error_of(&body), (code, None, "upstream_error"));
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("`sim`")),
            "{body}"
        );
    }
}

#[tokio::test]
async fn an_unreachable_upstream_is_502() {
    let sim = Sim::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("{e}"));
    let extra = format!(
        "[[upstreams]]\nname = \"dead\"\nprovider = \"dashscope\"\nbase_url = \"http://{closed}\"\nmodels = [\"qwen-dead\"]\n"
    );
    let gw = Gateway::start(&config_for(&sim, "", &extra)).await;
    let response = gw
        .chat(&ask("qwen-dead", "hi"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status().as_u16(), 502);
    assert_eq!(
        error_of(&json_of(response).await),
        ("upstream_unreachable", None, "upstream_error")
    );
}

#[tokio::test]
async fn an_upstream_slower_than_its_first_byte_timeout_is_504() {
    let sim = Sim::start().await;
    let gw = Gateway::start(&config_for(&sim, "first_byte_timeout_ms = 200", "")).await;
    let response = gw
        .chat(&faulty(json!({"latency_ms": 10_000})))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status().as_u16(), 504);
    assert_eq!(
        error_of(&json_of(response).await),
        ("upstream_timeout", None, "upstream_error")
    );
}

#[tokio::test]
async fn an_upstream_refusing_the_gateways_key_is_the_gateways_fault() {
    let sim = Sim::start().await;
    let toml = config_for(&sim, "", "").replace(
        &format!("api_key = \"{UPSTREAM_KEY}\""),
        "api_key = \"sk-revoked\"",
    );
    let gw = Gateway::start(&toml).await;
    let response = gw
        .chat(&ask("qwen-plus", "hi"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status().as_u16(), 502);
    let body = json_of(response).await;
    assert_eq!(
        error_of(&body),
        ("upstream_auth_failed", None, "upstream_error")
    );
    assert!(
        !body.to_string().contains("sk-revoked"),
        "the upstream key leaked: {body}"
    );
}

#[tokio::test]
async fn an_upstream_4xx_reaches_the_client_as_sent() {
    let sim = Sim::start().await;
    let gw = Gateway::start(
        &config_for(&sim, "", "").replace("\"qwen-max\"]", "\"qwen-max\", \"missing-model\"]"),
    )
    .await;
    let response = gw
        .chat(&ask("missing-model", "hi"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status().as_u16(), 404);
    let body = json_of(response).await;
    assert_eq!(
        error_of(&body),
        ("model_not_found", None, "invalid_request_error")
    );
    assert!(body["request_id"].is_string());
}

async fn stream_with(gw: &Gateway, fault: Value) -> Vec<String> {
    let mut body = faulty(fault);
    body["stream"] = json!(true);
    let response = gw
        .chat(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status().as_u16(), 200);
    data_events(response).await
}

#[tokio::test]
async fn a_stream_dropped_mid_way_ends_with_an_error_event() {
    let sim = Sim::start().await;
    let gw = Gateway::before(&sim).await;
    let events = stream_with(&gw, json!({"fault": "drop", "after": 2})).await;
    assert_eq!(events.len(), 3, "{events:?}");
    let last: Value = serde_json::from_str(&events[2]).unwrap_or_default();
    assert_eq!(last["error"]["code"], "upstream_invalid_response");
}

#[tokio::test]
async fn a_stream_that_stalls_past_the_idle_timeout_ends_with_an_error_event() {
    let sim = Sim::start().await;
    let gw = Gateway::start(&config_for(&sim, "idle_timeout_ms = 300", "")).await;
    let events = stream_with(&gw, json!({"fault": "stall", "after": 2})).await;
    assert_eq!(events.len(), 3, "{events:?}");
    let last: Value = serde_json::from_str(&events[2]).unwrap_or_default();
    assert_eq!(last["error"]["code"], "upstream_timeout");
    assert!(!events.iter().any(|e| e == "[DONE]"));
}

#[tokio::test]
async fn an_upstreams_mid_stream_error_event_is_relayed() {
    let sim = Sim::start().await;
    let gw = Gateway::before(&sim).await;
    let events = stream_with(&gw, json!({"fault": "inspection", "after": 2})).await;
    let last: Value = serde_json::from_str(&events[2]).unwrap_or_default();
    assert_eq!(last["error"]["code"], "data_inspection_failed");
}

#[tokio::test]
async fn nothing_follows_an_upstreams_error_event() {
    let sim = Sim::start().await;
    let gw = Gateway::before(&sim).await;
    let events = stream_with(&gw, json!({"fault": "inspection", "after": 3})).await;
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(events[3].starts_with(r#"{"error""#), "{events:?}");
}

#[tokio::test]
async fn an_upstream_that_closes_without_answering_is_not_called_unreachable() {
    let sim = Sim::start().await;
    let gw = Gateway::before(&sim).await;
    let mut body = faulty(json!({"fault": "drop", "after": 0}));
    body["stream"] = json!(true);
    let response = gw
        .chat(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status().as_u16(), 502);
    assert_eq!(
        error_of(&json_of(response).await).0,
        "upstream_invalid_response"
    );
}

#[tokio::test]
async fn a_wrong_method_is_405_method_not_allowed() {
    let sim = Sim::start().await;
    let gw = Gateway::before(&sim).await;
    let response = gw
        .http
        .get(gw.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(error_of(&json_of(response).await).0, "method_not_allowed");
}
