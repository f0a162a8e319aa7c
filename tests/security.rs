//! Hostile devices, as issue 14 found them: what goes upstream is what the gateway checked,
//! the upstream key never comes back, client URLs are never fetched through an environment
//! proxy, and invented model names do not grow the metrics.

mod common;

use common::*;
use serde_json::{Value, json};

const ECHO_KEY: &str = "sk-upstream-echo-secret-0123456789";

/// A gateway in front of the echoing upstream, one try per request.
async fn echo_gateway() -> (Gateway, std::sync::Arc<echo::Seen>) {
    echo_gateway_speaking("auto").await
}

/// The same, with the upstream spoken to in `dialect` (`auto`: the client's own).
async fn echo_gateway_speaking(dialect: &str) -> (Gateway, std::sync::Arc<echo::Seen>) {
    let (addr, seen) = echo::start().await;
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[retry]
attempts = 1

[circuit]
failure_threshold = 100000

[[keys]]
name = "glass3"
key = "{CLIENT_KEY}"

[[keys]]
name = "limited"
key = "sk-limited-test"
models = ["qwen-plus"]

[[upstreams]]
name = "echo"
provider = "dashscope"
dialect = "{dialect}"
base_url = "http://{addr}"
api_key = "{ECHO_KEY}"
"#
    );
    (Gateway::start(&toml).await, seen)
}

fn native_url(gw: &Gateway) -> String {
    gw.url("/api/v1/services/aigc/text-generation/generation")
}

#[tokio::test]
async fn a_native_parameter_cannot_stand_in_for_the_checked_model() {
    let sim = Sim::start().await;
    let gw = Gateway::before(&sim).await;
    // The key may use only qwen-plus; the upstream reads the top-level qwen-max.
    let body = json!({"model": "qwen-max", "input": {"messages": [{"role": "user", "content": "hi"}]},
                      "parameters": {"model": "qwen-plus"}});
    let response = gw
        .http
        .post(native_url(&gw))
        .bearer_auth("sk-limited-test")
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = response.status();
    let reply = json_of(response).await;
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .is_some_and(|m| m.contains("parameters.model")),
        "{reply}"
    );
    assert_eq!(sim.requests(), 0);
}

#[tokio::test]
async fn a_repeated_image_url_never_reaches_the_upstream() {
    let (gw, seen) = echo_gateway().await;
    // The GPS copy first: a first-wins reader would take it, the gateway's parser the last.
    let body = r#"{"model":"qwen-vl-plus","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/jpeg;base64,R1BTIDMxLjIgMTIxLjQ=","url":"https://example.com/clean.jpg"}}]}]}"#;
    let response = gw
        .http
        .post(gw.url("/compatible-mode/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = response.status();
    let reply = json_of(response).await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(
        reply["error"]["param"], "messages[0].content[0].image_url.url",
        "{reply}"
    );
    assert!(seen.all().is_empty());
}

/// Everything a client gets back: status line, headers and body, as text.
async fn everything(response: reqwest::Response) -> String {
    let mut out = format!("{}\n", response.status());
    for (name, value) in response.headers() {
        out.push_str(&format!(
            "{name}: {}\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    out.push_str(&response.text().await.unwrap_or_default());
    out
}

#[tokio::test]
async fn the_upstream_key_is_scrubbed_from_every_failure_in_both_dialects() {
    // Relayed as they come (`auto`), and translated both ways.
    for dialect in ["auto", "compatible", "native"] {
        key_stays_in(dialect).await;
    }
}

async fn key_stays_in(upstream_dialect: &str) {
    let (gw, seen) = echo_gateway_speaking(upstream_dialect).await;
    let modes = [
        "e400",
        "e404",
        "e422",
        "e429",
        "e500",
        "e502",
        "e503",
        "midstream",
        "garbage",
        "plain",
    ];
    let mut leaks = Vec::new();
    for mode in modes {
        for stream in [false, true] {
            let openai = gw.chat(&json!({"model": mode, "stream": stream,
                "messages": [{"role": "user", "content": "hi"}]}));
            let mut native = gw.http.post(native_url(&gw)).bearer_auth(CLIENT_KEY).json(
                &json!({"model": mode, "input": {"messages": [{"role": "user", "content": "hi"}]}}),
            );
            if stream {
                native = native.header("x-dashscope-sse", "enable");
            }
            for (dialect, request) in [("openai", openai), ("native", native)] {
                let text = everything(request.send().await.unwrap_or_else(|e| panic!("{e}"))).await;
                if text.contains(ECHO_KEY) {
                    leaks.push(format!(
                        "{dialect} to {upstream_dialect} {mode} stream={stream}:\n{text}"
                    ));
                }
            }
        }
    }
    // The upstream did get the key (and echoed it): the scrubbing is what kept it in.
    assert!(seen.all().len() >= modes.len() * 4);
    assert!(leaks.is_empty(), "{}", leaks.join("\n---\n"));
}

#[tokio::test]
async fn an_environment_proxy_is_not_a_way_past_the_fetch_guard() {
    // A "proxy" that would answer any absolute-URI request with an image.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let proxy = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().fallback(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async { ([("content-type", "image/png")], vec![0u8; 8]) }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    // nextest runs each test in a process of its own: this environment is this test's alone.
    unsafe {
        std::env::set_var("HTTP_PROXY", format!("http://{proxy}"));
        std::env::set_var("http_proxy", format!("http://{proxy}"));
        std::env::remove_var("NO_PROXY");
        std::env::remove_var("no_proxy");
    }
    let sim = Sim::start().await;
    let gw = Gateway::start(&config_for(&sim, "fetch_image_urls = true", "")).await;
    for url in [
        format!("http://localhost:{}/img.png", proxy.port()),
        "http://metadata.google.internal/computeMetadata/v1/".to_string(),
    ] {
        let body = json!({"model": "qwen-vl-plus", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}]}]});
        // The test's own client must not take the proxy either.
        let direct = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let response = direct
            .post(gw.url("/compatible-mode/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let status = response.status();
        let reply = json_of(response).await;
        assert_eq!(status, 400, "{url}: {reply}");
        assert_eq!(
            reply["error"]["param"],
            "messages[0].content[0].image_url.url"
        );
    }
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the proxy was used"
    );
}

#[tokio::test]
async fn invented_model_names_do_not_add_metric_series() {
    let (gw, _seen) = echo_gateway().await;
    for i in 0..20 {
        // Streams too: the per-model token latency families are labelled the same way.
        let mut body = ask(&format!("made-up-model-{i}"), "hi");
        body["stream"] = json!(i % 2 == 1);
        let response = gw
            .chat(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status(), 200);
        let _ = response.text().await;
    }
    let metrics = gw
        .http
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    assert!(!metrics.contains("made-up-model"), "{metrics}");
    assert!(
        metrics.contains(
            r#"dashgate_requests_total{route="chat",model="other",upstream="echo",status="200"} 20"#
        ),
        "{metrics}"
    );
}

/// The body the echo upstream got last, parsed.
fn last_seen(seen: &echo::Seen) -> Value {
    seen.all()
        .last()
        .and_then(|(_, b)| serde_json::from_slice(b).ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_native_request_the_gateway_accepts_reaches_the_upstream_as_checked() {
    let (gw, seen) = echo_gateway().await;
    let body = json!({"model": "qwen-plus", "input": {"messages": [{"role": "user", "content": "hi"}]},
                      "parameters": {"temperature": 0.5}});
    let response = gw
        .http
        .post(native_url(&gw))
        .bearer_auth("sk-limited-test")
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 200);
    assert_eq!(last_seen(&seen)["model"], "qwen-plus");
}

#[tokio::test]
async fn the_smaller_points_name_their_field() {
    let (gw, seen) = echo_gateway().await;
    let native = |body: &'static str| {
        gw.http
            .post(gw.url("/api/v1/services/aigc/multimodal-generation/generation"))
            .bearer_auth(CLIENT_KEY)
            .header("content-type", "application/json")
            .body(body)
    };
    let cases = [
        (
            native(r#"{"model":"m","input":{"messages":[{"content":[{"text":"hi"}]}]}}"#),
            "input.messages[0].role",
        ),
        (
            native(
                r#"{"model":"m","input":{"messages":[{"role":"user","content":[{"text":"hi"}],"content":[{"text":"x"}]}]}}"#,
            ),
            "input.messages[0].content",
        ),
        (
            native(
                r#"{"model":"m","input":{"messages":[{"role":"user","content":[{"text":"hi"}]}]},"parameters":{"seed":1,"seed":2}}"#,
            ),
            "parameters.seed",
        ),
        (
            native(
                r#"{"model":"m","input":{"messages":[{"role":"user","content":[{"text":"hi","image":"data:image/png;base64,AAAA"}]}]}}"#,
            ),
            "input.messages[0].content[0].image",
        ),
    ];
    for (request, param) in cases {
        let response = request.send().await.unwrap_or_else(|e| panic!("{e}"));
        let status = response.status();
        let reply = json_of(response).await;
        assert_eq!(status, 400, "{param}: {reply}");
        assert!(
            reply["message"].as_str().is_some_and(|m| m.contains(param)),
            "{param}: {reply}"
        );
    }
    let calls = json!({"model": "m", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": null, "tool_calls": 1},
        {"role": "user", "content": "again"}]});
    let response = gw
        .chat(&calls)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 400);
    let reply = json_of(response).await;
    assert_eq!(reply["error"]["param"], "messages[1].tool_calls", "{reply}");
    assert!(seen.all().is_empty(), "refused requests went upstream");
}

#[tokio::test]
async fn a_typed_image_part_in_a_native_request_is_cleaned_too() {
    use base64::Engine;
    let (gw, seen) = echo_gateway().await;
    let jpeg = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/corpus/image/exif.jpg"
    ))
    .unwrap_or_default();
    assert!(jpeg.windows(3).any(|w| w == b"GPS"));
    let b64 = base64::engine::general_purpose::STANDARD;
    let url = format!("data:image/jpeg;base64,{}", b64.encode(&jpeg));
    // An OpenAI-style part where the native API has `{image}` items.
    let body = json!({"model": "qwen-vl-plus", "input": {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"text": "what is this"}]}]}});
    let response = gw
        .http
        .post(gw.url("/api/v1/services/aigc/multimodal-generation/generation"))
        .bearer_auth(CLIENT_KEY)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 200);
    let sent = last_seen(&seen);
    let part = &sent["input"]["messages"][0]["content"][0];
    let sent_url = part["image_url"]["url"]
        .as_str()
        .or(part["image"].as_str())
        .unwrap_or_default();
    let payload = sent_url.split_once(',').map_or("", |(_, p)| p);
    let bytes = b64.decode(payload).unwrap_or_default();
    assert!(!bytes.is_empty(), "{sent}");
    assert!(!bytes.windows(3).any(|w| w == b"GPS"), "GPS went upstream");
}
