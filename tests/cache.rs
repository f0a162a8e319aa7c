//! The exact response cache: hits and misses in both dialects, a stream replayed with the
//! original's content, the ledger's record of a hit, tenant isolation, the sampling bypass,
//! and two gateways sharing one Redis.

mod common;

use common::{CLIENT_KEY, Gateway, Sim, config_for, json_of, open_store, records};
use dashgate::store::UsageFilter;
use serde_json::{Value, json};

const NATIVE_TEXT: &str = "/api/v1/services/aigc/text-generation/generation";

/// A second static key, for isolation.
const OTHER_KEY: &str = "sk-other-test";

fn cached_config(sim: &Sim, cache: &str) -> String {
    let extra = format!(
        "[[keys]]\nname = \"other\"\nkey = \"{OTHER_KEY}\"\n\n[cache]\nenabled = true\n{cache}\n"
    );
    config_for(sim, "", &extra)
}

/// A request the cache takes: not sampling (`seed` set, `temperature` 0).
fn seeded(text: &str) -> Value {
    json!({"model": "qwen-plus", "seed": 7, "temperature": 0,
           "messages": [{"role": "user", "content": text}]})
}

async fn send_openai(
    gw: &Gateway,
    key: &str,
    body: &Value,
    mode: Option<&str>,
) -> reqwest::Response {
    let mut request = gw
        .http
        .post(gw.url("/compatible-mode/v1/chat/completions"))
        .bearer_auth(key)
        .json(body);
    if let Some(mode) = mode {
        request = request.header("x-dashgate-cache", mode);
    }
    request.send().await.unwrap_or_else(|e| panic!("{e}"))
}

fn cache_header(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("x-dashgate-cache")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The `data:` payloads of an SSE body (either dialect's framing).
async fn payloads(response: reqwest::Response) -> Vec<Value> {
    let text = response.text().await.unwrap_or_default();
    text.split("\n\n")
        .filter_map(|event| event.lines().find_map(|l| l.strip_prefix("data:")))
        .map(str::trim)
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect()
}

/// An OpenAI stream's text, its deltas joined.
fn openai_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

#[tokio::test]
async fn an_identical_openai_request_is_a_hit_and_its_ledger_record_says_so() {
    let sim = Sim::start().await;
    let gw = Gateway::start(&cached_config(&sim, "")).await;
    let first = send_openai(&gw, CLIENT_KEY, &seeded("what is this"), Some("on")).await;
    assert_eq!(cache_header(&first).as_deref(), Some("miss"));
    let first = json_of(first).await;
    let second = send_openai(&gw, CLIENT_KEY, &seeded("what is this"), Some("on")).await;
    assert_eq!(second.status().as_u16(), 200);
    assert_eq!(cache_header(&second).as_deref(), Some("hit"));
    let second = json_of(second).await;
    assert_eq!(sim.requests(), 1, "the hit went upstream");
    assert_eq!(second["choices"], first["choices"]);
    assert_eq!(second["usage"], first["usage"]);
    assert_ne!(second["id"], first["id"], "a hit has its own id");

    let store = open_store(&format!("sqlite://{}/dashgate.db", gw.dir.path().display())).await;
    let found = records(&store, &UsageFilter::default(), 2).await;
    let (hit, miss) = (&found[0], &found[1]);
    assert!(hit.cache_hit && !miss.cache_hit, "{found:#?}");
    assert_eq!(hit.upstream, "cache");
    assert_eq!(
        (hit.prompt_tokens, hit.completion_tokens, hit.total_tokens),
        (0, 0, 0)
    );
    assert!(!hit.estimated);
    assert_eq!(hit.cache_prompt_tokens, Some(miss.prompt_tokens));
    assert_eq!(hit.cache_completion_tokens, Some(miss.completion_tokens));
    assert!(miss.prompt_tokens > 0);
}

#[tokio::test]
async fn an_openai_stream_is_replayed_with_the_original_content() {
    let sim = Sim::start().await;
    let gw = Gateway::start(&cached_config(&sim, "")).await;
    let mut body = seeded("describe the frame in some words");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let original = send_openai(&gw, CLIENT_KEY, &body, Some("on")).await;
    assert_eq!(cache_header(&original).as_deref(), Some("miss"));
    let original = payloads(original).await;
    let replay = send_openai(&gw, CLIENT_KEY, &body, Some("on")).await;
    assert_eq!(cache_header(&replay).as_deref(), Some("hit"));
    assert!(
        replay.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .is_ok_and(|c| c.starts_with("text/event-stream"))
    );
    let replay = payloads(replay).await;
    assert_eq!(sim.requests(), 1);
    assert_eq!(openai_text(&replay), openai_text(&original));
    assert!(!openai_text(&replay).is_empty());
    let usage = |chunks: &[Value]| {
        chunks
            .iter()
            .rev()
            .find(|c| c["usage"].is_object())
            .map(|c| c["usage"].clone())
    };
    assert_eq!(usage(&replay), usage(&original));
    let finish = |chunks: &[Value]| {
        chunks.iter().find_map(|c| {
            c["choices"][0]["finish_reason"]
                .as_str()
                .map(str::to_string)
        })
    };
    assert_eq!(finish(&replay), finish(&original));

    // The same request as JSON is answered from the stream's reply.
    body["stream"] = json!(false);
    body.as_object_mut().map(|b| b.remove("stream_options"));
    let whole = send_openai(&gw, CLIENT_KEY, &body, Some("on")).await;
    assert_eq!(cache_header(&whole).as_deref(), Some("hit"));
    let whole = json_of(whole).await;
    assert_eq!(
        whole["choices"][0]["message"]["content"].as_str(),
        Some(openai_text(&original).as_str())
    );
    assert_eq!(sim.requests(), 1);
}

async fn send_native(gw: &Gateway, body: &Value, stream: bool) -> reqwest::Response {
    let mut request = gw
        .http
        .post(gw.url(NATIVE_TEXT))
        .bearer_auth(CLIENT_KEY)
        .header("x-dashgate-cache", "on")
        .json(body);
    if stream {
        request = request.header("X-DashScope-SSE", "enable");
    }
    request.send().await.unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn native_requests_hit_as_json_and_as_a_stream() {
    let sim = Sim::start().await;
    let gw = Gateway::start(&cached_config(&sim, "")).await;
    let body = json!({"model": "qwen-plus",
        "input": {"messages": [{"role": "user", "content": "a native question"}]},
        "parameters": {"seed": 3, "temperature": 0, "result_format": "message", "incremental_output": true}});
    let miss = send_native(&gw, &body, false).await;
    assert_eq!(cache_header(&miss).as_deref(), Some("miss"));
    let miss = json_of(miss).await;
    let hit = send_native(&gw, &body, false).await;
    assert_eq!(cache_header(&hit).as_deref(), Some("hit"));
    let hit = json_of(hit).await;
    assert_eq!(sim.requests(), 1);
    assert_eq!(hit["output"], miss["output"]);
    assert_eq!(hit["usage"], miss["usage"]);
    assert!(hit["request_id"].is_string());

    let text = |frames: &[Value]| -> String {
        frames
            .iter()
            .filter_map(|f| f["output"]["choices"][0]["message"]["content"].as_str())
            .collect()
    };
    // A second question, first as a stream: the replay carries the same text.
    let mut body = body;
    body["input"]["messages"][0]["content"] = json!("a streamed native question");
    let original = send_native(&gw, &body, true).await;
    assert_eq!(cache_header(&original).as_deref(), Some("miss"));
    let original = payloads(original).await;
    let replay = send_native(&gw, &body, true).await;
    assert_eq!(cache_header(&replay).as_deref(), Some("hit"));
    let replay = payloads(replay).await;
    assert_eq!(sim.requests(), 2);
    assert!(text(&original).contains("a streamed native question"));
    assert_eq!(text(&replay), text(&original));
    let last_usage = |frames: &[Value]| frames.last().map(|f| f["usage"].clone());
    assert_eq!(last_usage(&replay), last_usage(&original));
}

#[tokio::test]
async fn replies_do_not_cross_keys_unless_the_scope_is_shared() {
    let sim = Sim::start().await;
    let gw = Gateway::start(&cached_config(&sim, "")).await;
    let body = seeded("same words, two tenants");
    let mine = send_openai(&gw, CLIENT_KEY, &body, Some("on")).await;
    assert_eq!(cache_header(&mine).as_deref(), Some("miss"));
    let theirs = send_openai(&gw, OTHER_KEY, &body, Some("on")).await;
    assert_eq!(cache_header(&theirs).as_deref(), Some("miss"));
    assert_eq!(sim.requests(), 2);

    let sim = Sim::start().await;
    let gw = Gateway::start(&cached_config(&sim, "scope = \"shared\"")).await;
    let mine = send_openai(&gw, CLIENT_KEY, &body, Some("on")).await;
    assert_eq!(cache_header(&mine).as_deref(), Some("miss"));
    let theirs = send_openai(&gw, OTHER_KEY, &body, Some("on")).await;
    assert_eq!(cache_header(&theirs).as_deref(), Some("hit"));
    assert_eq!(sim.requests(), 1);
}

#[tokio::test]
async fn sampling_opted_out_and_unconfigured_requests_go_upstream() {
    let sim = Sim::start().await;
    let gw = Gateway::start(&cached_config(&sim, "")).await;
    let warm = json!({"model": "qwen-plus", "seed": 7, "temperature": 0.7,
                      "messages": [{"role": "user", "content": "sampled"}]});
    let unseeded = json!({"model": "qwen-plus", "temperature": 0,
                          "messages": [{"role": "user", "content": "sampled"}]});
    for body in [&warm, &warm, &unseeded, &unseeded] {
        let response = send_openai(&gw, CLIENT_KEY, body, Some("on")).await;
        assert_eq!(cache_header(&response), None, "{body}");
    }
    // Without the header (and `default_on` unset), and with `off`: not consulted.
    let body = seeded("not asked");
    for mode in [None, Some("off"), None] {
        let response = send_openai(&gw, CLIENT_KEY, &body, mode).await;
        assert_eq!(cache_header(&response), None);
    }
    assert_eq!(sim.requests(), 7);
    // `refresh` goes upstream and keeps the new reply.
    let response = send_openai(&gw, CLIENT_KEY, &body, Some("refresh")).await;
    assert_eq!(cache_header(&response).as_deref(), Some("miss"));
    let response = send_openai(&gw, CLIENT_KEY, &body, Some("on")).await;
    assert_eq!(cache_header(&response).as_deref(), Some("hit"));
    assert_eq!(sim.requests(), 8);
    // A bad header value names the header.
    let response = send_openai(&gw, CLIENT_KEY, &body, Some("always")).await;
    assert_eq!(response.status().as_u16(), 400);
    let error = json_of(response).await;
    assert_eq!(error["error"]["param"], "x-dashgate-cache");

    // `sampled = true` takes sampling requests too.
    let gw = Gateway::start(&cached_config(&sim, "sampled = true")).await;
    send_openai(&gw, CLIENT_KEY, &warm, Some("on")).await;
    let again = send_openai(&gw, CLIENT_KEY, &warm, Some("on")).await;
    assert_eq!(cache_header(&again).as_deref(), Some("hit"));

    // A gateway whose config allows the cache for one model only.
    let extra = "[cache]\nmodels = [\"qwen-max\"]\ndefault_on = true\n";
    let gw = Gateway::start(&config_for(&sim, "", extra)).await;
    let other_model = send_openai(&gw, CLIENT_KEY, &body, None).await;
    assert_eq!(cache_header(&other_model), None);
    let mut max = body.clone();
    max["model"] = json!("qwen-max");
    let allowed = send_openai(&gw, CLIENT_KEY, &max, None).await;
    assert_eq!(cache_header(&allowed).as_deref(), Some("miss"));
}

#[tokio::test]
async fn a_reply_larger_than_the_entry_bound_is_not_kept() {
    let sim = Sim::start().await;
    let gw = Gateway::start(&cached_config(&sim, "max_entry_bytes = 64")).await;
    let body = seeded("a reply that does not fit in sixty-four bytes of JSON");
    for _ in 0..2 {
        let response = send_openai(&gw, CLIENT_KEY, &body, Some("on")).await;
        assert_eq!(cache_header(&response).as_deref(), Some("miss"));
    }
    assert_eq!(sim.requests(), 2);
    let metrics = gw
        .http
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let metrics = metrics.text().await.unwrap_or_default();
    assert!(
        metrics.contains("dashgate_cache_lookups_total{outcome=\"too_large\"} 2"),
        "{metrics}"
    );
}

fn redis_url() -> String {
    std::env::var("DASHGATE_TEST_REDIS_URL")
        .unwrap_or_else(|_| panic!("DASHGATE_TEST_REDIS_URL is not set: run scripts/test.sh"))
}

/// A metric's value in a gateway's `/metrics`.
async fn metric(gw: &Gateway, line_start: &str) -> f64 {
    let text = gw
        .http
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn two_gateways_share_one_redis_cache() {
    let sim = Sim::start().await;
    let cache = format!("redis_url = \"{}\"", redis_url());
    let a = Gateway::start(&cached_config(&sim, &cache)).await;
    let b = Gateway::start(&cached_config(&sim, &cache)).await;
    // The Redis is shared with other test runs: a question of this run only.
    let body = seeded(&format!("shared question {}", uuid::Uuid::new_v4()));
    let first = send_openai(&a, CLIENT_KEY, &body, Some("on")).await;
    assert_eq!(cache_header(&first).as_deref(), Some("miss"));
    let first = json_of(first).await;
    // Kept off the reply's path: wait for gateway A to say it stored the entry.
    let stored = "dashgate_cache_bytes_total{direction=\"stored\"} ";
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut ticker = tokio::time::interval(std::time::Duration::from_millis(20));
    while metric(&a, stored).await == 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gateway A never stored the reply"
        );
        ticker.tick().await;
    }
    let second = send_openai(&b, CLIENT_KEY, &body, Some("on")).await;
    assert_eq!(cache_header(&second).as_deref(), Some("hit"));
    let second = json_of(second).await;
    assert_eq!(second["choices"], first["choices"]);
    assert_eq!(sim.requests(), 1);
}

fn frame(shade: u8) -> String {
    use base64::Engine as _;
    let img = image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([shade, (x * 4) as u8, (y * 5) as u8])
    });
    let mut jpeg = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut jpeg, image::ImageFormat::Jpeg)
        .unwrap_or_else(|e| panic!("{e}"));
    let b64 = base64::engine::general_purpose::STANDARD.encode(jpeg.into_inner());
    format!("data:image/jpeg;base64,{b64}")
}

fn with_image(url: &str) -> Value {
    json!({"model": "qwen-vl-plus", "seed": 1, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": url}}]}]})
}

#[tokio::test]
async fn a_repeated_camera_frame_hits_and_a_remote_image_is_not_cached() {
    let sim = Sim::start().await;
    let gw = Gateway::start(&cached_config(&sim, "")).await;
    let (a, b) = (frame(10), frame(200));
    let first = send_openai(&gw, CLIENT_KEY, &with_image(&a), Some("on")).await;
    assert_eq!(cache_header(&first).as_deref(), Some("miss"));
    let first = json_of(first).await;
    let again = send_openai(&gw, CLIENT_KEY, &with_image(&a), Some("on")).await;
    assert_eq!(cache_header(&again).as_deref(), Some("hit"));
    assert_eq!(json_of(again).await["choices"], first["choices"]);
    let other = send_openai(&gw, CLIENT_KEY, &with_image(&b), Some("on")).await;
    assert_eq!(cache_header(&other).as_deref(), Some("miss"));
    assert_eq!(sim.requests(), 2);
    let remote = send_openai(
        &gw,
        CLIENT_KEY,
        &with_image("https://127.0.0.1:9/a.jpg"),
        Some("on"),
    )
    .await;
    assert_eq!(cache_header(&remote), None);
}

#[tokio::test]
async fn a_stream_with_keepalives_hits_and_keeps_usage_from_a_client_that_did_not_ask() {
    let sim = Sim::start().await;
    let config = cached_config(&sim, "").replace(
        "max_body_bytes = 65536",
        "max_body_bytes = 65536\nsse_keepalive_ms = 60000",
    );
    let gw = Gateway::start(&config).await;
    let mut body = seeded("a stream behind keep-alives");
    body["stream"] = json!(true);
    let original = send_openai(&gw, CLIENT_KEY, &body, Some("on")).await;
    assert_eq!(cache_header(&original).as_deref(), Some("miss"));
    let original = payloads(original).await;
    let replay = send_openai(&gw, CLIENT_KEY, &body, Some("on")).await;
    assert_eq!(cache_header(&replay).as_deref(), Some("hit"));
    let replay = payloads(replay).await;
    assert_eq!(sim.requests(), 1);
    assert!(openai_text(&original).contains("a stream behind keep-alives"));
    assert_eq!(openai_text(&replay), openai_text(&original));
    for chunk in original.iter().chain(&replay) {
        assert!(chunk.get("usage").is_none_or(Value::is_null), "{chunk}");
    }
}
