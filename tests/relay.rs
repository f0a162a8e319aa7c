//! The OpenAI-compatible relay: replies, streams, pass-through fields and media parts.

mod common;

use common::*;
use serde_json::{Value, json};

fn fixed(mut body: Value) -> Value {
    body["sim"] = json!({"created": 1_700_000_000});
    body
}

/// The upstream's reply with its `chatcmpl-...` id replaced by the gateway's request id.
fn with_gateway_id(direct: &str, request_id: &str) -> String {
    let start = direct.find("\"chatcmpl-").map_or(0, |at| at + 1);
    let end = direct[start..].find('"').map_or(start, |len| start + len);
    direct.replace(&direct[start..end], &format!("chatcmpl-{request_id}"))
}

#[tokio::test]
async fn non_stream_reply_is_the_upstreams_bytes() {
    let sim = Sim::start().await;
    let gw = Gateway::before(&sim).await;
    let body = fixed(ask("qwen-plus", "你是谁?"));
    let via_gateway = gw.chat(&body).send().await.map(|r| r.status()).ok();
    assert_eq!(via_gateway, Some(reqwest::StatusCode::OK));
    let through = gw
        .chat(&body)
        .header("x-request-id", "r-1")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .bytes()
        .await
        .ok();
    let direct = reqwest::Client::new()
        .post(format!("{}/compatible-mode/v1/chat/completions", sim.url()))
        .bearer_auth(UPSTREAM_KEY)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    assert!(through.is_some());
    // The same bytes, but for the id: the gateway's request id is the reply's.
    let direct = with_gateway_id(&direct, "r-1");
    assert_eq!(through, Some(direct.into()));
    let reply: Value = serde_json::from_slice(&through.unwrap_or_default()).unwrap_or_default();
    assert_eq!(reply["choices"][0]["message"]["content"], "echo: 你是谁?");
    assert_eq!(reply["object"], "chat.completion");
}

#[tokio::test]
async fn stream_is_forwarded_byte_for_byte_and_ends_with_done() {
    let sim = Sim::start().await;
    let gw = Gateway::before(&sim).await;
    let mut body = fixed(ask("qwen-plus", "stream me"));
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let through = gw
        .chat(&body)
        .header("x-request-id", "r-2")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        through
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream;charset=UTF-8")
    );
    let through = common::plain_ids(&through.text().await.unwrap_or_default());
    let direct = reqwest::Client::new()
        .post(format!("{}/compatible-mode/v1/chat/completions", sim.url()))
        .bearer_auth(UPSTREAM_KEY)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    assert_eq!(through, with_gateway_id(&direct, "r-2"));
    assert!(through.ends_with("data: [DONE]\n\n"), "{through}");
}

#[tokio::test]
async fn stream_events_reach_the_client_before_the_upstream_finishes() {
    let sim = Sim::start().await;
    let gw = Gateway::before(&sim).await;
    // The simulator sends three events and then hangs: a buffering gateway would show nothing.
    let mut body = ask("qwen-plus", "one two three four five six");
    body["stream"] = json!(true);
    body["sim"] = json!({"fault": "stall", "after": 3});
    let response = gw
        .chat(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        first_events(response, 3),
    )
    .await;
    let (events, _open_stream) = read.unwrap_or_else(|_| panic!("events were held back"));
    assert!(events[0].contains(r#""role":"assistant""#), "{}", events[0]);
    assert!(events[1].contains(r#""content":"#));
}

#[tokio::test]
async fn a_client_that_hangs_up_closes_the_upstream_stream() {
    let sim = Sim::start().await;
    // No grace period: the upstream call goes at once (tests/resume.rs has the one after it).
    let gw = Gateway::start(&config_for(&sim, "", "[resume]\ngrace_seconds = 0\n")).await;
    let mut body = ask("qwen-plus", "long answer");
    body["stream"] = json!(true);
    body["sim"] = json!({"fault": "stall", "after": 2});
    let response = gw
        .chat(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (events, open_stream) = first_events(response, 2).await;
    assert_eq!(events.len(), 2);
    drop(open_stream);
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        sim.stats.stream_closed_early.notified(),
    )
    .await;
    assert!(
        closed.is_ok(),
        "the upstream stream stayed open after the client left"
    );
}

#[tokio::test]
async fn include_usage_is_honoured() {
    let sim = Sim::start().await;
    let gw = Gateway::before(&sim).await;
    let mut body = ask("qwen-plus", "count me");
    body["stream"] = json!(true);
    let without = data_events(
        gw.chat(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert!(
        without.iter().all(|d| !d.contains(r#""usage":{"#)),
        "{without:?}"
    );
    assert_eq!(without.last().map(String::as_str), Some("[DONE]"));

    body["stream_options"] = json!({"include_usage": true});
    let with = data_events(
        gw.chat(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    let usage: Value = serde_json::from_str(&with[with.len() - 2]).unwrap_or_default();
    assert_eq!(usage["choices"], json!([]));
    let u = &usage["usage"];
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(
            u["prompt_tokens"].as_u64().unwrap_or(0) + u["completion_tokens"].as_u64().unwrap_or(0)
        )
    );
}

/// A small clean JPEG: within every budget, so it must travel byte for byte.
fn small_jpeg_url() -> String {
    use base64::Engine;
    let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 3, y as u8 * 5, 90]));
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .unwrap_or_else(|e| panic!("{e}"));
    let b64 = base64::engine::general_purpose::STANDARD.encode(out.into_inner());
    format!("data:image/jpeg;base64,{b64}")
}

#[tokio::test]
async fn unknown_fields_and_media_parts_reach_the_upstream_intact() {
    let sim = Sim::start().await;
    let gw = Gateway::before(&sim).await;
    let body = json!({
        "model": "qwen-vl-plus",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": small_jpeg_url()}},
                {"type": "image_url", "image_url": {"url": "https://dashscope.oss-cn-beijing.aliyuncs.com/images/dog_and_girl.jpeg", "detail": "high"}},
                {"type": "video", "video": ["https://img.alicdn.com/a.jpg", "https://img.alicdn.com/b.jpg"]},
                {"type": "video_url", "video_url": {"url": "https://example.com/clip.mp4"}},
                {"type": "input_audio", "input_audio": {"data": "data:;base64,UklGRg==", "format": "wav"}},
                {"type": "text", "text": "这是什么"}
            ]}
        ],
        "enable_search": true,
        "search_options": {"forced_search": true},
        "skill": [{"type": "ppt", "mode": "general", "template_id": "news_01"}],
        "translation_options": {"source_lang": "auto", "target_lang": "English"},
        "vl_high_resolution_images": true,
        "modalities": ["text"],
        "temperature": 0.7,
        "seed": 18446744073709551615u64,
        "sim": {"echo_request": true}
    });
    let reply = json_of(
        gw.chat(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    let received: Value = serde_json::from_str(
        reply["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or(""),
    )
    .unwrap_or_default();
    assert_eq!(received, body);
}

#[tokio::test]
async fn both_paths_serve_chat_and_models() {
    let sim = Sim::start().await;
    let gw = Gateway::before(&sim).await;
    for path in [
        "/v1/chat/completions",
        "/compatible-mode/v1/chat/completions",
    ] {
        let r = gw
            .http
            .post(gw.url(path))
            .bearer_auth(CLIENT_KEY)
            .json(&ask("qwen-max", "hi"))
            .send()
            .await;
        assert_eq!(r.map(|r| r.status().as_u16()).ok(), Some(200), "{path}");
    }
    for path in ["/v1/models", "/compatible-mode/v1/models"] {
        let r = gw
            .http
            .get(gw.url(path))
            .bearer_auth(CLIENT_KEY)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let list = json_of(r).await;
        let ids: Vec<&str> = list["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["id"].as_str())
            .collect();
        assert_eq!(ids, vec!["qwen-max", "qwen-plus", "qwen-vl-plus"], "{path}");
        assert_eq!(list["object"], "list");
    }
    let limited = gw
        .http
        .get(gw.url("/v1/models"))
        .bearer_auth("sk-limited-test")
        .send()
        .await;
    let list = json_of(limited.unwrap_or_else(|e| panic!("{e}"))).await;
    assert_eq!(list["data"][0]["id"], "qwen-plus");
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn openai_provider_calls_base_url_chat_completions() {
    let sim = Sim::start().await;
    let extra = format!(
        "[[upstreams]]\nname = \"vllm\"\nprovider = \"openai\"\nbase_url = \"{{SIM}}/v1\"\napi_key = \"{UPSTREAM_KEY}\"\nmodels = [\"local-qwen\"]\n"
    );
    let gw = Gateway::start(&config_for(&sim, "", &extra)).await;
    let mut body = ask("local-qwen", "hello");
    body["stream"] = json!(true);
    let events = data_events(
        gw.chat(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    let text: String = events
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text, "echo: hello");
}

#[tokio::test]
async fn health_and_readiness_answer_without_a_key() {
    let sim = Sim::start().await;
    let gw = Gateway::before(&sim).await;
    let health = json_of(
        gw.http
            .get(gw.url("/healthz"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(health["status"], "ok");
    let ready = json_of(
        gw.http
            .get(gw.url("/readyz"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["upstreams"][0]["name"], "sim");
}
