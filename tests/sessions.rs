//! Server-side sessions (`x-dashgate-session`): the device sends only its new turn and the
//! upstream gets the stored history with it, trimmed to the token budget, older frames as a
//! placeholder and no GPS anywhere; sessions belong to their key; GET and DELETE; both
//! dialects; SQLite and PostgreSQL. What the upstream received is read from the simulator's
//! `echo_request` reply (the request body as the simulator got it).

mod common;

use base64::Engine;
use common::sessions::*;
use common::*;
use serde_json::{Value, json};

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
