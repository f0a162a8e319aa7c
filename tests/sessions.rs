//! Server-side sessions (`x-dashgate-session`): the device sends only its new turn and the
//! upstream gets the stored history with it, trimmed to the token budget, older frames as a
//! placeholder and no GPS anywhere; sessions belong to their key; GET and DELETE; both
//! dialects; SQLite and PostgreSQL. What the upstream received is read from the simulator's
//! `echo_request` reply (the request body as the simulator got it).

mod common;

use base64::Engine;
use common::*;
use serde_json::{Value, json};

const OTHER_KEY: &str = "sk-other-test";

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await
            }
            #[tokio::test]
            async fn postgres() {
                super::$name(super::Backend::Postgres).await
            }
        }
    )*};
}

on_both_stores!(three_turns_the_device_sends_one_the_upstream_gets_all);

async fn gateway(sim: &Sim, store_url: &str, sessions: &str) -> Gateway {
    let extra = format!(
        "[[keys]]\nname = \"other\"\nkey = \"{OTHER_KEY}\"\n\n[store]\nurl = \"{store_url}\"\n\n\
         [sessions]\n{sessions}\n"
    );
    Gateway::start(&config_for(sim, "", &extra)).await
}

/// One turn in the OpenAI dialect: status and body (a stream's deltas joined as the content).
async fn openai_turn(
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
async fn native_turn(
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

async fn show(gw: &Gateway, key: &str, session: &str) -> (u16, Value) {
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

fn answer(body: &Value) -> String {
    body["choices"][0]["message"]["content"]
        .as_str()
        .or_else(|| body["output"]["choices"][0]["message"]["content"].as_str())
        .unwrap_or_else(|| panic!("no answer in {body}"))
        .to_string()
}

/// The messages the upstream got, from an `echo_request` answer.
fn upstream_messages(body: &Value) -> Vec<Value> {
    let got: Value = serde_json::from_str(&answer(body)).unwrap_or_else(|e| panic!("{e}: {body}"));
    let messages = got.get("messages").or_else(|| got["input"].get("messages"));
    messages
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_else(|| panic!("no messages upstream: {got}"))
}

fn text_of(message: &Value) -> String {
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

async fn three_turns_the_device_sends_one_the_upstream_gets_all(backend: Backend) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sim = Sim::start().await;
    let gw = gateway(&sim, &fresh_store(backend, dir.path()).await, "").await;
    // Turn 1, OpenAI dialect, whole reply.
    let (status, first) =
        openai_turn(&gw, CLIENT_KEY, "walk-1", json!("Where am I?"), json!({})).await;
    assert_eq!(status, 200, "{first}");
    let first_answer = answer(&first);
    // Turn 2, OpenAI dialect, streamed.
    let (status, second) = openai_turn(
        &gw,
        CLIENT_KEY,
        "walk-1",
        json!("And what is that tower?"),
        json!({"stream": true}),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    let second_answer = answer(&second);
    assert!(!second_answer.is_empty());
    // Turn 3, native dialect: the simulator answers with what it received.
    let (status, third) = native_turn(
        &gw,
        CLIENT_KEY,
        "walk-1",
        "How tall is it?",
        json!({"echo_request": true}),
    )
    .await;
    assert_eq!(status, 200, "{third}");
    let got = upstream_messages(&third);
    let texts: Vec<String> = got.iter().map(text_of).collect();
    let roles: Vec<&str> = got
        .iter()
        .map(|m| m["role"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        roles,
        ["user", "assistant", "user", "assistant", "user"],
        "{texts:?}"
    );
    assert_eq!(texts[0], "Where am I?");
    assert_eq!(texts[1], first_answer);
    assert_eq!(texts[2], "And what is that tower?");
    assert_eq!(texts[3], second_answer);
    assert_eq!(texts[4], "How tall is it?");
    // The stored session: six messages, the third answer last.
    let (status, stored) = show(&gw, CLIENT_KEY, "walk-1").await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["id"], "walk-1");
    assert_eq!(
        stored["messages"].as_array().map(Vec::len),
        Some(6),
        "{stored}"
    );
    assert!(
        stored["token_estimate"].as_i64().unwrap_or(0) > 0,
        "{stored}"
    );
    assert!(stored["updated_at"].as_i64().unwrap_or(0) > 0, "{stored}");
    // Another key: no such session, and the same id is a session of its own.
    let (status, other) = show(&gw, OTHER_KEY, "walk-1").await;
    assert_eq!(status, 404, "{other}");
    assert_eq!(error_of(&other).0, "session_not_found");
    let (status, theirs) = openai_turn(
        &gw,
        OTHER_KEY,
        "walk-1",
        json!("Hello"),
        json!({"sim": {"echo_request": true}}),
    )
    .await;
    assert_eq!(status, 200, "{theirs}");
    assert_eq!(upstream_messages(&theirs).len(), 1, "{theirs}");
    let delete = |key: &'static str| {
        gw.http
            .delete(gw.url("/compatible-mode/v1/sessions/walk-1"))
            .bearer_auth(key)
            .send()
    };
    let response = delete(OTHER_KEY).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 204);
    let response = delete(OTHER_KEY).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 404);
    assert_eq!(show(&gw, CLIENT_KEY, "walk-1").await.0, 200);
    let response = delete(CLIENT_KEY).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 204);
    assert_eq!(show(&gw, CLIENT_KEY, "walk-1").await.0, 404);
    // A new turn after DELETE starts afresh.
    let (_, fresh) = openai_turn(
        &gw,
        CLIENT_KEY,
        "walk-1",
        json!("Hi"),
        json!({"sim": {"echo_request": true}}),
    )
    .await;
    assert_eq!(upstream_messages(&fresh).len(), 1, "{fresh}");
}

#[tokio::test]
async fn history_is_trimmed_oldest_first_to_the_token_budget() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sim = Sim::start().await;
    let url = fresh_store(Backend::Sqlite, dir.path()).await;
    // 160 bytes of text: 40 tokens a question.
    let gw = gateway(&sim, &url, "max_history_tokens = 100").await;
    let question = |tag: &str| format!("{tag}{}", ".".repeat(159));
    let short = json!({"max_tokens": 2});
    for tag in ["A", "B"] {
        let (status, body) =
            openai_turn(&gw, CLIENT_KEY, "t", json!(question(tag)), short.clone()).await;
        assert_eq!(status, 200, "{body}");
    }
    let (_, stored) = show(&gw, CLIENT_KEY, "t").await;
    let estimate = stored["token_estimate"].as_u64().unwrap_or(0);
    assert!(estimate > 80 && estimate < 100, "{stored}");
    let (status, body) = openai_turn(
        &gw,
        CLIENT_KEY,
        "t",
        json!(question("C")),
        json!({"sim": {"echo_request": true}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let got = upstream_messages(&body);
    let firsts: Vec<String> = got
        .iter()
        .map(|m| {
            text_of(m)
                .chars()
                .next()
                .map(String::from)
                .unwrap_or_default()
        })
        .collect();
    let roles: Vec<&str> = got
        .iter()
        .map(|m| m["role"].as_str().unwrap_or(""))
        .collect();
    // A and its answer went; the history starts with a question.
    assert_eq!(roles, ["user", "assistant", "user"], "{firsts:?}");
    assert_eq!(firsts[0], "B");
    assert_eq!(firsts[2], "C");
}

fn gps_frame() -> String {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/corpus/image/exif.jpg"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(bytes.windows(3).any(|w| w == b"GPS"));
    format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

fn carries_gps(text: &str) -> bool {
    // The frames travel as base64: look into every data URL.
    text.split("base64,").skip(1).any(|rest| {
        let b64: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
            .collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_default();
        bytes.windows(3).any(|w| w == b"GPS")
    })
}

#[tokio::test]
async fn earlier_frames_become_a_placeholder_and_no_gps_is_stored() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sim = Sim::start().await;
    let url = fresh_store(Backend::Sqlite, dir.path()).await;
    let gw = gateway(&sim, &url, "keep_images = 1").await;
    let frame = |text: &str| json!([{"type": "image_url", "image_url": {"url": gps_frame()}}, {"type": "text", "text": text}]);
    let (status, body) =
        openai_turn(&gw, CLIENT_KEY, "cam", frame("What is this?"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (_, stored) = show(&gw, CLIENT_KEY, "cam").await;
    let stored_text = stored.to_string();
    assert!(
        stored_text.contains("base64,"),
        "the frame is kept: {stored_text:.300}"
    );
    assert!(!carries_gps(&stored_text), "GPS stored");
    // The second frame: the first one is now the placeholder, upstream and in the store.
    let (status, body) = openai_turn(
        &gw,
        CLIENT_KEY,
        "cam",
        frame("And this?"),
        json!({"sim": {"echo_request": true}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let got = upstream_messages(&body);
    assert_eq!(got.len(), 3);
    assert_eq!(
        text_of(&got[0]),
        format!("{}What is this?", dashgate::session::PLACEHOLDER)
    );
    let sent = Value::Array(got.clone()).to_string();
    assert_eq!(sent.matches("base64,").count(), 1, "one frame upstream");
    assert!(!carries_gps(&sent), "GPS sent upstream");
    let (_, stored) = show(&gw, CLIENT_KEY, "cam").await;
    let stored_text = stored.to_string();
    assert!(stored_text.contains(dashgate::session::PLACEHOLDER));
    assert!(!carries_gps(&stored_text), "GPS stored");
}

#[tokio::test]
async fn a_bad_id_is_400_and_a_turn_while_one_runs_is_409() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sim = Sim::start().await;
    let url = fresh_store(Backend::Sqlite, dir.path()).await;
    let gw = gateway(&sim, &url, "").await;
    let (status, body) = openai_turn(&gw, CLIENT_KEY, "no spaces", json!("Hi"), json!({})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_of(&body).1, Some("x-dashgate-session"), "{body}");
    let (status, body) = native_turn(&gw, CLIENT_KEY, &"x".repeat(129), "Hi", json!({})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "InvalidParameter", "{body}");
    // A stream that stalls after two events keeps its turn running.
    let stalled = gw
        .http
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("x-dashgate-session", "busy")
        .json(&json!({"model": "qwen-plus", "stream": true, "messages": [{"role": "user", "content": "Hi"}],
                      "sim": {"fault": "stall", "after": 2}}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stalled.status(), 200);
    let (status, body) = native_turn(&gw, CLIENT_KEY, "busy", "Hi again", json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "SessionBusy", "{body}");
    let metrics = gw
        .http
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    assert!(
        metrics.contains("session_turns_total{outcome=\"busy\"} 1"),
        "{metrics}"
    );
    // Hung up: the session is free again (the gateway notices the hang-up soon after), and
    // nothing of the unfinished turn was stored.
    drop(stalled);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut ticker = tokio::time::interval(std::time::Duration::from_millis(20));
    loop {
        ticker.tick().await;
        let (status, body) = native_turn(
            &gw,
            CLIENT_KEY,
            "busy",
            "Hi again",
            json!({"echo_request": true}),
        )
        .await;
        if status == 409 && tokio::time::Instant::now() < deadline {
            continue;
        }
        assert_eq!(status, 200, "{body}");
        assert_eq!(upstream_messages(&body).len(), 1, "{body}");
        break;
    }
}

async fn device_token(gw: &Gateway, device: &str) -> String {
    let response = gw
        .http
        .post(gw.url("/v1/device-tokens"))
        .bearer_auth("sk-acme-backend")
        .json(&json!({"device_id": device, "ttl_seconds": 600}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let body = json_of(response).await;
    body["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token: {body}"))
        .to_string()
}

#[tokio::test]
async fn a_device_keeps_its_sessions_across_tokens_and_no_one_else_sees_them() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sim = Sim::start().await;
    let url = fresh_store(Backend::Sqlite, dir.path()).await;
    let account =
        "[[keys]]\nname = \"acme-backend\"\nkey = \"sk-acme-backend\"\naccount = \"acme\"\n";
    let extra = format!("{account}\n[store]\nurl = \"{url}\"\n");
    let gw = Gateway::start(&config_for(&sim, "", &extra)).await;
    let first = device_token(&gw, "glass-1").await;
    let (status, body) = openai_turn(&gw, &first, "d", json!("Hello"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    // A renewed token of the same device continues the session.
    let renewed = device_token(&gw, "glass-1").await;
    assert_ne!(renewed, first);
    let (status, body) = openai_turn(
        &gw,
        &renewed,
        "d",
        json!("Again"),
        json!({"sim": {"echo_request": true}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(upstream_messages(&body).len(), 3, "{body}");
    // Another device of the account, and the account's own key: not theirs.
    let other = device_token(&gw, "glass-2").await;
    assert_eq!(show(&gw, &other, "d").await.0, 404);
    assert_eq!(show(&gw, "sk-acme-backend", "d").await.0, 404);
    assert_eq!(show(&gw, &renewed, "d").await.0, 200);
}

#[tokio::test]
async fn a_native_stream_is_stored_once_whole_in_either_output_mode() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sim = Sim::start().await;
    let url = fresh_store(Backend::Sqlite, dir.path()).await;
    let gw = gateway(&sim, &url, "").await;
    for (session, incremental) in [("cumulative", false), ("incremental", true)] {
        let body = json!({"model": "qwen-plus", "input": {"messages": [{"role": "user", "content": "Tell me"}]},
                          "parameters": {"result_format": "message", "incremental_output": incremental}});
        let response = gw
            .http
            .post(gw.url("/api/v1/services/aigc/text-generation/generation"))
            .bearer_auth(CLIENT_KEY)
            .header("x-dashgate-session", session)
            .header("x-dashscope-sse", "enable")
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status(), 200);
        let mut text = String::new();
        let body = response.text().await.unwrap_or_default();
        let frames = body.lines().filter_map(|l| l.strip_prefix("data:"));
        for data in frames {
            let frame: Value = serde_json::from_str(data).unwrap_or_default();
            let piece = frame["output"]["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or("");
            if incremental {
                text.push_str(piece);
            } else if !piece.is_empty() {
                text = piece.to_string();
            }
        }
        assert!(!text.is_empty());
        let (status, stored) = show(&gw, CLIENT_KEY, session).await;
        assert_eq!(status, 200, "{stored}");
        assert_eq!(stored["messages"][1]["role"], "assistant", "{stored}");
        assert_eq!(
            stored["messages"][1]["content"], text,
            "{session}: {stored}"
        );
    }
}
