//! Server-side sessions, who may use them and how: an id the gateway refuses, a second turn
//! while one runs, a device's sessions across renewed tokens, native streams stored whole.

mod common;

use common::sessions::*;
use common::*;
use serde_json::{Value, json};

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

#[tokio::test]
async fn sessions_per_owner_and_their_size_are_capped() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sim = Sim::start().await;
    let url = fresh_store(Backend::Sqlite, dir.path()).await;
    let gw = gateway(
        &sim,
        &url,
        "max_sessions_per_owner = 1\nmax_session_bytes = 2000",
    )
    .await;
    let (status, body) = openai_turn(&gw, CLIENT_KEY, "one", json!("Hi"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = openai_turn(&gw, CLIENT_KEY, "two", json!("Hi"), json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(error_of(&body).0, "too_many_sessions", "{body}");
    // Another owner has its own count; the first session goes on.
    assert_eq!(
        openai_turn(&gw, OTHER_KEY, "two", json!("Hi"), json!({}))
            .await
            .0,
        200
    );
    assert_eq!(
        openai_turn(&gw, CLIENT_KEY, "one", json!("Again"), json!({}))
            .await
            .0,
        200
    );
    let response = gw
        .http
        .delete(gw.url("/v1/sessions/one"))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 204);
    // A turn larger than max_session_bytes is answered but not stored.
    let (status, body) =
        openai_turn(&gw, CLIENT_KEY, "two", json!("x".repeat(3000)), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(show(&gw, CLIENT_KEY, "two").await.0, 404);
    // Older turns make room for a new one.
    for _ in 0..5 {
        let (status, _) =
            openai_turn(&gw, CLIENT_KEY, "two", json!("y".repeat(300)), json!({})).await;
        assert_eq!(status, 200);
    }
    let (status, stored) = show(&gw, CLIENT_KEY, "two").await;
    assert_eq!(status, 200, "{stored}");
    let kept = stored["messages"].as_array().map_or(0, Vec::len);
    assert!((2..10).contains(&kept), "{stored}");
    assert_eq!(stored["messages"][0]["role"], "user", "{stored}");
}

#[tokio::test]
async fn an_unused_session_expires_after_its_ttl() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sim = Sim::start().await;
    let url = fresh_store(Backend::Sqlite, dir.path()).await;
    let gw = gateway(&sim, &url, "ttl_seconds = 1").await;
    assert_eq!(
        openai_turn(&gw, CLIENT_KEY, "brief", json!("Hi"), json!({}))
            .await
            .0,
        200
    );
    // Polled: the session is gone once a second has passed without a turn.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut ticker = tokio::time::interval(std::time::Duration::from_millis(50));
    loop {
        ticker.tick().await;
        let (status, body) = show(&gw, CLIENT_KEY, "brief").await;
        if status == 404 {
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "never expired: {body}"
        );
    }
    let (status, body) = openai_turn(
        &gw,
        CLIENT_KEY,
        "brief",
        json!("Hello again"),
        json!({"sim": {"echo_request": true}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(upstream_messages(&body).len(), 1, "{body}");
    assert_eq!(show(&gw, CLIENT_KEY, "brief").await.0, 200);
}
