//! The property of issue 14: for requests built from a grammar of the documented fields, with
//! adversarial duplicates and shadows mixed in, the model and messages an upstream reads equal
//! the ones the gateway checked, whichever way it resolves a repeated key, or the request is
//! refused. Checked at the decoder (many cases) and end to end through an upstream that keeps
//! the bytes it gets (fewer). `DASHGATE_FUZZ_CASES` and `DASHGATE_FUZZ_SEED` make longer runs.

mod common;

use base64::Engine;
use common::reading::{checked, readings, upstream_reads};
use common::*;
use dashgate::error::GatewayError;
use dashgate::provider::Api;

fn cases(default: usize) -> usize {
    std::env::var("DASHGATE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rng() -> fastrand::Rng {
    let seed = std::env::var("DASHGATE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(14);
    fastrand::Rng::with_seed(seed)
}

/// A JSON object written by hand, so keys may repeat.
#[derive(Default)]
struct Obj(Vec<(String, String)>);

impl Obj {
    fn put(&mut self, key: &str, raw: impl Into<String>) -> &mut Self {
        self.0.push((key.to_string(), raw.into()));
        self
    }
    fn render(&self, rng: &mut fastrand::Rng) -> String {
        let fields: Vec<String> = self
            .0
            .iter()
            .map(|(k, v)| {
                // Now and then a key spelled with an escape: the same key to every parser.
                let key = if rng.u8(..) < 12 && !k.is_empty() {
                    format!("\"\\u{:04x}{}\"", k.as_bytes()[0], &k[1..])
                } else {
                    serde_json::to_string(k).unwrap_or_default()
                };
                format!("{key}:{v}")
            })
            .collect();
        format!("{{{}}}", fields.join(","))
    }
}

fn s(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

/// qwen-plus twice: the key of the end-to-end test may use only that one.
const MODELS: [&str; 4] = ["qwen-plus", "qwen-plus", "qwen-max", "qwen-vl-plus"];

/// The camera frame with Exif (its description says GPS), as a data URL.
fn gps_frame() -> String {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/corpus/image/exif.jpg"
    ))
    .unwrap_or_default();
    format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// One adversarial chance in `n`.
fn odd(rng: &mut fastrand::Rng, n: u32) -> bool {
    rng.u32(..n) == 0
}

fn part(rng: &mut fastrand::Rng, native: bool, frame: &str) -> String {
    let mut p = Obj::default();
    let url = if rng.bool() {
        frame.to_string()
    } else {
        "https://example.com/a.jpg".to_string()
    };
    match (rng.u8(..4), native) {
        (0 | 1, true) => p.put("text", s("what is this")),
        (2, true) => p.put("image", s(&url)),
        (_, true) => p.put("video", format!("[{},{}]", s(&url), s(&url))),
        (0 | 1, false) => p.put("type", s("text")).put("text", s("what is this")),
        (_, false) => p
            .put("type", s("image_url"))
            .put("image_url", Obj(vec![("url".into(), s(&url))]).render(rng)),
    };
    if odd(rng, 8) {
        // A second kind in the same item.
        if native {
            p.put("image", s(frame))
        } else {
            p.put("image_url", format!("{{\"url\":{}}}", s(frame)))
        };
    }
    if odd(rng, 8) {
        let key = p.0[rng.usize(..p.0.len())].0.clone();
        p.put(&key, s(frame));
    }
    p.render(rng)
}

fn message(rng: &mut fastrand::Rng, native: bool, frame: &str) -> String {
    let mut m = Obj::default();
    let role = ["system", "user", "assistant"][rng.usize(..3)];
    if !odd(rng, 20) {
        m.put("role", s(role));
    }
    if rng.bool() {
        m.put("content", s("hello"));
    } else {
        let parts: Vec<String> = (0..rng.usize(1..3))
            .map(|_| part(rng, native, frame))
            .collect();
        m.put("content", format!("[{}]", parts.join(",")));
    }
    if odd(rng, 15) {
        m.put("role", s("system"));
    }
    if odd(rng, 20) {
        m.put("tool_calls", "1");
    }
    m.render(rng)
}

/// A request in `native` or OpenAI shape, adversarial now and then.
fn request(rng: &mut fastrand::Rng, native: bool, frame: &str) -> String {
    let model = MODELS[rng.usize(..MODELS.len())];
    let other = MODELS[rng.usize(..MODELS.len())];
    let messages: Vec<String> = (0..rng.usize(1..4))
        .map(|_| message(rng, native, frame))
        .collect();
    let messages = format!("[{}]", messages.join(","));
    let mut top = Obj::default();
    if odd(rng, 8) {
        top.put("model", s(other));
    }
    top.put("model", s(model));
    if native {
        let mut input = Obj::default();
        input.put("messages", messages.clone());
        if odd(rng, 12) {
            input.put(["messages", "prompt", "history"][rng.usize(..3)], s("x"));
        }
        let mut parameters = Obj::default();
        if rng.bool() {
            parameters.put("result_format", s("message"));
        }
        if odd(rng, 6) {
            match rng.u8(..4) {
                0 => parameters.put("model", s(other)),
                1 => parameters.put("messages", messages.clone()),
                2 => parameters.put("input", format!("{{\"messages\":{messages}}}")),
                _ => parameters
                    .put("temperature", "0.5")
                    .put("temperature", "1.5"),
            };
        }
        top.put("input", input.render(rng));
        top.put("parameters", parameters.render(rng));
        if odd(rng, 10) {
            top.put(
                ["messages", "temperature", "stream"][rng.usize(..3)],
                s("x"),
            );
        }
    } else {
        top.put("messages", messages);
        if odd(rng, 10) {
            top.put("messages", "[{\"role\":\"user\",\"content\":\"other\"}]");
        }
    }
    if odd(rng, 10) {
        top.put("model", s(other));
    }
    top.render(rng)
}

#[test]
fn what_an_upstream_reads_is_what_the_decoder_checked_or_refused() {
    let mut rng = rng();
    let frame = gps_frame();
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..cases(3000) {
        let native = rng.bool();
        let body = request(&mut rng, native, &frame);
        let decoded = if native {
            dashgate::dialect::native::decode(body.as_bytes(), false, Api::NativeMultimodal)
                .map(|(chat, _)| chat)
        } else {
            dashgate::chat::decode(body.as_bytes())
        };
        match decoded {
            Ok(chat) => {
                accepted += 1;
                let want = checked(&chat);
                for reading in readings(body.as_bytes()) {
                    assert_eq!(upstream_reads(&reading, native), want, "{body}");
                }
            }
            Err(GatewayError::InvalidParameter { .. } | GatewayError::InvalidJson(_)) => {
                refused += 1
            }
            Err(other) => panic!("not a 400: {other}: {body}"),
        }
    }
    println!("decoder: {accepted} accepted, {refused} refused");
    assert!(
        accepted > 0 && refused > 0,
        "{accepted} accepted, {refused} refused"
    );
}

#[tokio::test]
async fn what_the_upstream_gets_end_to_end_is_the_checked_model_and_clean_frames() {
    let (addr, seen) = echo::start().await;
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[[keys]]
name = "limited"
key = "sk-limited-test"
models = ["qwen-plus"]
[[upstreams]]
name = "echo"
provider = "dashscope"
base_url = "http://{addr}"
api_key = "sk-upstream-echo"
"#
    );
    let gw = Gateway::start(&toml).await;
    let mut rng = rng();
    let frame = gps_frame();
    let mut accepted = 0;
    // The checked-in adversarial requests first (the issue's own among them), then generated.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/request");
    let mut fixed: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .collect();
    fixed.sort();
    let generated = cases(150) / 3;
    for i in 0..fixed.len() + generated {
        let (native, body) = match fixed.get(i) {
            Some(body) => (body.contains("\"input\""), body.clone()),
            None => {
                let native = rng.bool();
                (native, request(&mut rng, native, &frame))
            }
        };
        let path = if native {
            "/api/v1/services/aigc/multimodal-generation/generation"
        } else {
            "/compatible-mode/v1/chat/completions"
        };
        let before = seen.all().len();
        let response = gw
            .http
            .post(gw.url(path))
            .bearer_auth("sk-limited-test")
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let status = response.status().as_u16();
        assert!(matches!(status, 200 | 400 | 403), "{status}: {body}");
        let got = seen.all();
        if status != 200 {
            assert_eq!(got.len(), before, "refused, yet sent upstream: {body}");
            continue;
        }
        accepted += 1;
        let (_, sent) = &got[got.len() - 1];
        for reading in readings(sent) {
            let (model, messages) = upstream_reads(&reading, native);
            assert_eq!(model.as_deref(), Some("qwen-plus"), "{body}");
            for (_, content) in messages {
                for (_, value) in content.err().unwrap_or_default() {
                    let url: String = serde_json::from_str(&value).unwrap_or_default();
                    let payload = url.strip_prefix("data:image/jpeg;base64,").unwrap_or("");
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(payload)
                        .unwrap_or_default();
                    assert!(!bytes.windows(3).any(|w| w == b"GPS"), "GPS sent: {body}");
                }
            }
        }
    }
    println!("end to end: {accepted} accepted");
    assert!(accepted > 0);
}
