//! Helpers of the session tests (tests/sessions.rs, tests/sessions_access.rs): one turn in
//! either dialect, the stored session, and what the simulator's `echo_request` answer says the
//! upstream received.

use serde_json::{Value, json};

use super::*;

pub const OTHER_KEY: &str = "sk-other-test";

pub async fn gateway(sim: &Sim, store_url: &str, sessions: &str) -> Gateway {
    let extra = format!(
        "[[keys]]\nname = \"other\"\nkey = \"{OTHER_KEY}\"\n\n[store]\nurl = \"{store_url}\"\n\n\
         [sessions]\n{sessions}\n"
    );
    Gateway::start(&config_for(sim, "", &extra)).await
}

/// One turn in the OpenAI dialect: status and body (a stream's deltas joined as the content).
pub async fn openai_turn(
    gw: &Gateway,
    key: &str,
    session: &str,
    content: Value,
    extra: Value,
) -> (u16, Value) {
    let mut body =
        json!({"model": "qwen-vl-plus", "messages": [{"role": "user", "content": content}]});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let stream = body["stream"] == json!(true);
    let response = gw
        .http
        .post(gw.url("/compatible-mode/v1/chat/completions"))
        .bearer_auth(key)
        .header("x-dashgate-session", session)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = response.status().as_u16();
    if !stream {
        return (status, json_of(response).await);
    }
    let mut text = String::new();
    for data in data_events(response).await {
        let chunk: Value = serde_json::from_str(&data).unwrap_or_default();
        text.push_str(
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or(""),
        );
    }
    (status, json!({"choices": [{"message": {"content": text}}]}))
}

/// One native turn (non-stream): status and body.
pub async fn native_turn(
    gw: &Gateway,
    key: &str,
    session: &str,
    text: &str,
    sim: Value,
) -> (u16, Value) {
    let body = json!({"model": "qwen-plus", "input": {"messages": [{"role": "user", "content": text}]},
                      "parameters": {"result_format": "message", "sim": sim}});
    let response = gw
        .http
        .post(gw.url("/api/v1/services/aigc/text-generation/generation"))
        .bearer_auth(key)
        .header("x-dashgate-session", session)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = response.status().as_u16();
    (status, json_of(response).await)
}

pub async fn show(gw: &Gateway, key: &str, session: &str) -> (u16, Value) {
    let response = gw
        .http
        .get(gw.url(&format!("/v1/sessions/{session}")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = response.status().as_u16();
    (status, json_of(response).await)
}

pub fn answer(body: &Value) -> String {
    body["choices"][0]["message"]["content"]
        .as_str()
        .or_else(|| body["output"]["choices"][0]["message"]["content"].as_str())
        .unwrap_or_else(|| panic!("no answer in {body}"))
        .to_string()
}

/// The messages the upstream got, from an `echo_request` answer.
pub fn upstream_messages(body: &Value) -> Vec<Value> {
    let got: Value = serde_json::from_str(&answer(body)).unwrap_or_else(|e| panic!("{e}: {body}"));
    let messages = got.get("messages").or_else(|| got["input"].get("messages"));
    messages
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_else(|| panic!("no messages upstream: {got}"))
}

pub fn text_of(message: &Value) -> String {
    match &message["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}
