//! Camera frames and other media parts: checked before they go upstream, metadata stripped,
//! oversized frames downscaled, URLs fetched for upstreams that cannot, safely. Images are
//! made in the tests; the simulator's `echo_request` shows what reached the upstream.

mod common;

use std::io::Cursor;

use base64::Engine;
use common::*;
use serde_json::{Value, json};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn encode(img: &image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format)
        .unwrap_or_else(|e| panic!("{e}"));
    out.into_inner()
}

/// A picture with some structure (flat colour compresses to nothing).
fn picture(width: u32, height: u32) -> image::DynamicImage {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x * y) % 239) as u8])
    });
    image::DynamicImage::ImageRgb8(img)
}

/// A JPEG with an APP1 Exif segment carrying GPS tags spliced in after SOI.
fn jpeg_with_gps(width: u32, height: u32) -> Vec<u8> {
    let jpeg = encode(&picture(width, height), image::ImageFormat::Jpeg);
    // TIFF header (big-endian), IFD0 with one entry: the GPS IFD pointer (tag 0x8825).
    let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec();
    tiff.extend_from_slice(&[0, 1, 0x88, 0x25, 0, 4, 0, 0, 0, 1, 0, 0, 0, 26, 0, 0, 0, 0]);
    // GPS IFD: GPSLatitudeRef = 'N'.
    tiff.extend_from_slice(&[0, 1, 0, 1, 0, 2, 0, 0, 0, 2, b'N', 0, 0, 0, 0, 0, 0, 0]);
    tiff.extend_from_slice(b"GPS 31.2304N 121.4737E");
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let len = (app1.len() + 2) as u16;
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xff, 0xe1]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn data_url(mime: &str, bytes: &[u8]) -> String {
    format!("data:{mime};base64,{}", B64.encode(bytes))
}

fn with_image(url: &str) -> Value {
    json!({"model": "qwen-vl-plus", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "what is this"}]}],
        "sim": {"echo_request": true}})
}

/// The request the upstream received, and the response's headers.
async fn through(gw: &Gateway, body: &Value) -> (Value, reqwest::header::HeaderMap) {
    let response = gw.chat(body).send().await.unwrap_or_else(|e| panic!("{e}"));
    let headers = response.headers().clone();
    let status = response.status();
    let reply = json_of(response).await;
    assert_eq!(status, 200, "{reply}");
    let seen = serde_json::from_str(
        reply["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or(""),
    )
    .unwrap_or_default();
    (seen, headers)
}

fn header(headers: &reqwest::header::HeaderMap, name: &str) -> u64 {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn sent_image(seen: &Value) -> (String, Vec<u8>) {
    let url = seen["messages"][0]["content"][0]["image_url"]["url"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let payload = url.split_once(',').map(|(_, p)| p).unwrap_or("");
    let bytes = B64.decode(payload).unwrap_or_default();
    (url, bytes)
}

async fn gateway(extra: &str) -> (Sim, Gateway) {
    let sim = Sim::start().await;
    let toml =
        config_for(&sim, "", extra).replace("max_body_bytes = 65536", "max_body_bytes = 67108864");
    let gw = Gateway::start(&toml).await;
    (sim, gw)
}

#[tokio::test]
async fn a_huge_png_is_downscaled_to_the_pixel_budget() {
    let (_sim, gw) = gateway("[media]\nmax_image_bytes = 41943040\n").await;
    let png = encode(&picture(2800, 2100), image::ImageFormat::Png);
    let (seen, headers) = through(&gw, &with_image(&data_url("image/png", &png))).await;
    let (_, sent) = sent_image(&seen);
    let img =
        image::load_from_memory(&sent).unwrap_or_else(|e| panic!("the upstream got no image: {e}"));
    let (w, h) = (img.width(), img.height());
    assert!(w % 28 == 0 && h % 28 == 0, "{w}x{h}");
    assert!(u64::from(w) * u64::from(h) <= 1_003_520, "{w}x{h}");
    assert!(
        (f64::from(w) / f64::from(h) - 4.0 / 3.0).abs() < 0.05,
        "aspect kept: {w}x{h}"
    );
    assert_eq!(header(&headers, "x-dashgate-image-count"), 1);
    assert_eq!(header(&headers, "x-dashgate-image-resized"), 1);
    assert_eq!(
        header(&headers, "x-dashgate-image-original-bytes"),
        png.len() as u64
    );
    assert_eq!(
        header(&headers, "x-dashgate-image-sent-bytes"),
        sent.len() as u64
    );
    assert!(
        header(&headers, "x-dashgate-image-tokens-after")
            < header(&headers, "x-dashgate-image-tokens-before")
    );
    // The usage record carries the same figures.
    let store = open_store(&format!("sqlite://{}/dashgate.db", gw.dir.path().display())).await;
    let found = records(&store, &dashgate::store::UsageFilter::default(), 1).await;
    let r = &found[0];
    assert_eq!(r.images, 1);
    assert_eq!(r.image_original_bytes, png.len() as u64);
    assert_eq!(r.image_sent_bytes, sent.len() as u64);
    assert_eq!(
        r.image_tokens_before,
        header(&headers, "x-dashgate-image-tokens-before")
    );
    assert_eq!(
        r.image_tokens_after,
        header(&headers, "x-dashgate-image-tokens-after")
    );
    // And the savings metric.
    let metrics = gw
        .http
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    let saved_bytes = png.len() as u64 - sent.len() as u64;
    let saved_tokens = header(&headers, "x-dashgate-image-tokens-before")
        - header(&headers, "x-dashgate-image-tokens-after");
    for line in [
        format!(
            r#"dashgate_image_policy_saved_total{{model="qwen-vl-plus",unit="bytes"}} {saved_bytes}"#
        ),
        format!(
            r#"dashgate_image_policy_saved_total{{model="qwen-vl-plus",unit="tokens"}} {saved_tokens}"#
        ),
    ] {
        assert!(metrics.contains(&line), "{line} not in {metrics}");
    }
}

#[tokio::test]
async fn gps_never_leaves_the_gateway() {
    let (_sim, gw) = gateway("").await;
    let jpeg = jpeg_with_gps(640, 480);
    assert!(jpeg.windows(6).any(|w| w == b"Exif\0\0"));
    let (seen, headers) = through(&gw, &with_image(&data_url("image/jpeg", &jpeg))).await;
    let (url, sent) = sent_image(&seen);
    assert!(url.starts_with("data:image/jpeg;base64,"), "{url:.40}");
    assert!(
        !sent.windows(6).any(|w| w == b"Exif\0\0"),
        "EXIF reached the upstream"
    );
    assert!(
        !sent.windows(3).any(|w| w == b"GPS"),
        "GPS reached the upstream"
    );
    let img = image::load_from_memory(&sent).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (img.width(), img.height()),
        (640, 480),
        "stripped, not resized"
    );
    assert!(header(&headers, "x-dashgate-image-sent-bytes") < jpeg.len() as u64);
    assert_eq!(header(&headers, "x-dashgate-image-metadata-stripped"), 1);
    assert_eq!(header(&headers, "x-dashgate-image-resized"), 0);
}

#[tokio::test]
async fn a_clean_frame_within_budget_goes_through_byte_identical() {
    let (_sim, gw) = gateway("").await;
    let url = data_url(
        "image/jpeg",
        &encode(&picture(1024, 768), image::ImageFormat::Jpeg),
    );
    let (seen, headers) = through(&gw, &with_image(&url)).await;
    assert_eq!(sent_image(&seen).0, url);
    assert_eq!(
        header(&headers, "x-dashgate-image-original-bytes"),
        header(&headers, "x-dashgate-image-sent-bytes")
    );
    let untouched = [
        "x-dashgate-image-metadata-stripped",
        "x-dashgate-image-resized",
    ];
    assert!(
        untouched
            .iter()
            .all(|h| headers.contains_key(*h) && header(&headers, h) == 0)
    );
}

#[tokio::test]
async fn a_native_image_item_gets_the_same_care() {
    let (_sim, gw) = gateway("").await;
    let jpeg = jpeg_with_gps(320, 240);
    let body = json!({"model": "qwen-vl-plus", "input": {"messages": [{"role": "user", "content": [
        {"image": data_url("image/jpeg", &jpeg)}, {"text": "what"}]}]},
        "parameters": {"sim": {"echo_request": true}}});
    let response = gw
        .http
        .post(gw.url("/api/v1/services/aigc/multimodal-generation/generation"))
        .bearer_auth(CLIENT_KEY)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(header(response.headers(), "x-dashgate-image-count"), 1);
    let reply = json_of(response).await;
    let echoed = reply["output"]["choices"][0]["message"]["content"][0]["text"]
        .as_str()
        .unwrap_or("");
    let seen: Value = serde_json::from_str(echoed).unwrap_or_default();
    let url = seen["input"]["messages"][0]["content"][0]["image"]
        .as_str()
        .unwrap_or("");
    let sent = B64
        .decode(url.split_once(',').map_or("", |(_, p)| p))
        .unwrap_or_default();
    assert!(
        !sent.is_empty() && !sent.windows(6).any(|w| w == b"Exif\0\0"),
        "{url:.60}"
    );
    assert_eq!(
        seen["input"]["messages"][0]["content"][1],
        json!({"text": "what"}),
        "the rest is untouched"
    );
}

/// A refused part: 400 naming the message and part, in the client's dialect.
async fn refused(gw: &Gateway, content: Value) -> (Option<String>, String) {
    let body = json!({"model": "qwen-vl-plus", "messages": [{"role": "user", "content": content}]});
    let response = gw
        .chat(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 400);
    let body = json_of(response).await;
    (
        body["error"]["param"].as_str().map(str::to_string),
        body["error"]["message"].as_str().unwrap_or("").to_string(),
    )
}

#[tokio::test]
async fn bad_parts_are_refused_naming_the_message_and_part() {
    let (sim, gw) = gateway("[media]\nmax_video_frames = 4\n").await;
    let png = encode(&picture(64, 64), image::ImageFormat::Png);
    let text = json!({"type": "text", "text": "x"});
    let image = |url: String| json!({"type": "image_url", "image_url": {"url": url}});
    let lying = refused(
        &gw,
        json!([text, image(data_url("image/png", b"not an image at all"))]),
    )
    .await;
    assert_eq!(
        lying.0.as_deref(),
        Some("messages[0].content[1].image_url.url"),
        "{}",
        lying.1
    );
    let full = data_url("image/png", &png);
    let truncated = refused(&gw, json!([image(full[..full.len() - 7].to_string())])).await;
    assert_eq!(
        truncated.0.as_deref(),
        Some("messages[0].content[0].image_url.url"),
        "{}",
        truncated.1
    );
    let frames = json!({"type": "video", "video": ["https://a/1.jpg", "https://a/2.jpg", "https://a/3.jpg", "https://a/4.jpg", "https://a/5.jpg"]});
    let over = refused(&gw, json!([frames])).await;
    assert_eq!(
        over.0.as_deref(),
        Some("messages[0].content[0].video"),
        "{}",
        over.1
    );
    let ftp = refused(&gw, json!([image("ftp://example.com/a.jpg".into())])).await;
    assert_eq!(
        ftp.0.as_deref(),
        Some("messages[0].content[0].image_url.url")
    );
    let audio = json!({"type": "input_audio", "input_audio": {"data": "data:audio/wav;base64,UklGRg==", "format": "midi"}});
    assert_eq!(
        refused(&gw, json!([audio])).await.0.as_deref(),
        Some("messages[0].content[0].input_audio.format")
    );
    assert_eq!(sim.requests(), 0, "nothing refused reached the upstream");
}

#[tokio::test]
async fn a_native_bad_part_names_the_native_field() {
    let (_sim, gw) = gateway("").await;
    let body = json!({"model": "qwen-vl-plus", "input": {"messages": [{"role": "user", "content": [
        {"text": "x"}, {"image": "data:image/png;base64,!!!not-base64!!!"}]}]}});
    let response = gw
        .http
        .post(gw.url("/api/v1/services/aigc/multimodal-generation/generation"))
        .bearer_auth(CLIENT_KEY)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 400);
    let body = json_of(response).await;
    assert_eq!(body["code"], "InvalidParameter");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("input.messages[0].content[1]")),
        "{body}"
    );
}

/// A tiny image server on loopback, for the fetch tests.
async fn image_server(bytes: Vec<u8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let app = axum::Router::new().route(
        "/frame.jpg",
        axum::routing::get(move || {
            let bytes = bytes.clone();
            async move { ([("content-type", "image/jpeg")], bytes) }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/frame.jpg")
}

#[tokio::test]
async fn urls_are_fetched_for_upstreams_that_cannot_and_private_addresses_refused() {
    let jpeg = jpeg_with_gps(200, 150);
    let url = image_server(jpeg.clone()).await;
    // Fetching on, loopback not allowed: the SSRF guard refuses.
    let sim = Sim::start().await;
    let guarded = Gateway::start(&config_for(&sim, "fetch_image_urls = true", "")).await;
    let (param, message) = refused(
        &guarded,
        json!([{"type": "image_url", "image_url": {"url": url}}]),
    )
    .await;
    assert_eq!(
        param.as_deref(),
        Some("messages[0].content[0].image_url.url")
    );
    assert!(
        message.contains("private, loopback or link-local"),
        "{message}"
    );
    assert!(refused(&guarded, json!([{"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest/meta-data/"}}])).await.1.contains("private"));
    // Loopback allow-listed: fetched, inlined, and cleaned like any frame.
    let allowed = config_for(
        &sim,
        "fetch_image_urls = true",
        "[media]\nfetch_allow = [\"127.0.0.1\"]\n",
    );
    let gw = Gateway::start(&allowed).await;
    let (seen, _) = through(&gw, &with_image(&url)).await;
    let (sent_url, sent) = sent_image(&seen);
    assert!(
        sent_url.starts_with("data:image/jpeg;base64,"),
        "{sent_url:.60}"
    );
    assert!(!sent.windows(6).any(|w| w == b"Exif\0\0"));
    // Without fetching, a URL goes to the upstream as it is.
    let plain = Gateway::before(&sim).await;
    let (seen, _) = through(&plain, &with_image(&url)).await;
    assert_eq!(sent_image(&seen).0, url);
}

/// The glasses' fixed `data:image/png;base64,...` template on a JPEG frame: DashScope reads the
/// bytes, so the gateway does too, and sends the frame under its true type.
#[tokio::test]
async fn a_mislabelled_frame_is_sent_under_its_true_type_and_the_response_says_so() {
    let (_sim, gw) = gateway("").await;
    let jpeg = encode(&picture(320, 240), image::ImageFormat::Jpeg);
    let response = gw
        .chat(&with_image(&data_url("image/png", &jpeg)))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let headers = response.headers().clone();
    assert_eq!(response.status(), 200);
    let reply = json_of(response).await;
    let seen: Value = serde_json::from_str(
        reply["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or(""),
    )
    .unwrap_or_default();
    let (url, sent) = sent_image(&seen);
    assert!(url.starts_with("data:image/jpeg;base64,"), "{url:.40}");
    assert_eq!(sent, jpeg, "the same bytes, relabelled");
    assert_eq!(header(&headers, "x-dashgate-image-relabelled"), 1);
    // Correctly labelled frames carry no such header.
    let (_, headers) = through(&gw, &with_image(&data_url("image/jpeg", &jpeg))).await;
    assert!(headers.get("x-dashgate-image-relabelled").is_none());
}

#[tokio::test]
async fn high_resolution_requests_keep_the_high_resolution_pixel_budget() {
    let (_sim, gw) = gateway("").await;
    // 1.47 MP: over the default budget (1,003,520), well within the high-resolution one.
    let jpeg = encode(&picture(1400, 1050), image::ImageFormat::Jpeg);
    let mut body = with_image(&data_url("image/jpeg", &jpeg));
    let (seen, _) = through(&gw, &body).await;
    let (_, sent) = sent_image(&seen);
    let img = image::load_from_memory(&sent).unwrap_or_else(|e| panic!("{e}"));
    assert!(u64::from(img.width()) * u64::from(img.height()) <= 1_003_520);
    body["vl_high_resolution_images"] = json!(true);
    let (seen, headers) = through(&gw, &body).await;
    let (_, sent) = sent_image(&seen);
    assert_eq!(
        sent, jpeg,
        "within the high-resolution budget the frame goes as it came"
    );
    assert_eq!(seen["vl_high_resolution_images"], true);
    assert!(header(&headers, "x-dashgate-image-tokens-after") > 1_280);
}

/// Every decode slot taken (bombs in flight): a clean frame within budget still completes,
/// because it needs no decode and never queues for one; a frame that does need one waits for
/// a slot and completes once one frees.
#[tokio::test]
async fn a_clean_frame_does_not_wait_behind_decodes_in_flight() {
    let media = dashgate::config::MediaConfig::default();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(2));
    let held = slots
        .clone()
        .acquire_many_owned(2)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let chat_of = |url: String| -> dashgate::chat::Chat {
        serde_json::from_value(with_image(&url)).unwrap_or_else(|e| panic!("{e}"))
    };
    let clean = chat_of(data_url(
        "image/jpeg",
        &encode(&picture(64, 48), image::ImageFormat::Jpeg),
    ));
    let big = chat_of(data_url(
        "image/jpeg",
        &encode(&picture(1200, 1000), image::ImageFormat::Jpeg),
    ));
    let heavy = {
        let (media, slots) = (media.clone(), slots.clone());
        tokio::spawn(async move {
            dashgate::transform::prepare(&big, &media, None, &slots)
                .await
                .map(|p| p.stats.tokens_after)
                .map_err(|e| e.to_string())
        })
    };
    // Completes while no slot is free (the safety net only keeps a regression from hanging).
    let done = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        dashgate::transform::prepare(&clean, &media, None, &slots),
    )
    .await;
    assert!(
        matches!(done, Ok(Ok(_))),
        "the clean frame waited for a decode slot"
    );
    assert!(!heavy.is_finished(), "the big frame waits for a slot");
    drop(held);
    let tokens = heavy.await.unwrap_or_else(|e| panic!("{e}"));
    assert!(tokens.as_ref().is_ok_and(|t| *t > 0), "{tokens:?}");
}

#[tokio::test]
async fn a_gif_bomb_is_refused_with_400_naming_the_limit() {
    let (_sim, gw) = gateway("").await;
    // 35 bytes declaring an 8000×8000 screen.
    let mut bomb = b"GIF89a".to_vec();
    bomb.extend_from_slice(&8000u16.to_le_bytes());
    bomb.extend_from_slice(&8000u16.to_le_bytes());
    bomb.extend_from_slice(&[
        0, 0, 0, 0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0, 2, 2, 0x4C, 0x01, 0, 0x3B,
    ]);
    let response = gw
        .chat(&with_image(&data_url("image/gif", &bomb)))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 400);
    let body = json_of(response).await;
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("max_decode_pixels"), "{body}");
}

#[tokio::test]
async fn the_decode_pixel_ceiling_is_configurable() {
    let (_sim, gw) = gateway("[media]\nmax_decode_pixels = 10000\n").await;
    // 120x120 = 14400 pixels, over the configured 10000 (far under the 25 MP default).
    let big = encode(&picture(120, 120), image::ImageFormat::Png);
    let response = gw
        .chat(&with_image(&data_url("image/png", &big)))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 400);
    let body = json_of(response).await;
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("max_decode_pixels"), "{body}");
    assert!(message.contains("120x120"), "{body}");
    // 64x64 = 4096 pixels fits and goes through.
    let small = encode(&picture(64, 64), image::ImageFormat::Png);
    let (seen, _) = through(&gw, &with_image(&data_url("image/png", &small))).await;
    let (url, _) = sent_image(&seen);
    assert!(url.starts_with("data:image/"), "{seen}");
}
