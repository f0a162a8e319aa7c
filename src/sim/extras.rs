//! What the simulator adds to a reply when a request asks for it, in both dialects' shapes:
//! `logprobs` (with `top_logprobs` alternatives), Qwen-Omni audio output (`modalities`
//! with `"audio"`: base64 chunks of deterministic 16-bit PCM, and the transcript), and
//! `search_info` (`enable_search` with `search_options.enable_source`).

use base64::Engine as _;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// Audio tokens per 480 bytes (10 ms of 24 kHz 16-bit mono) of simulated speech.
const AUDIO_BYTES_PER_TOKEN: usize = 480;

/// `Some(top_logprobs)` when the request asks for logprobs.
pub fn logprobs_wanted(request: &Map<String, Value>) -> Option<usize> {
    (request.get("logprobs") == Some(&Value::Bool(true))).then(|| {
        request
            .get("top_logprobs")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .min(5) as usize
    })
}

/// One `logprobs.content` entry for a piece of text: deterministic, the piece most likely.
pub fn logprob_entry(piece: &str, top: usize) -> Value {
    let seed = Sha256::digest(piece.as_bytes());
    let logprob = -f64::from(seed[0]) / 1000.0;
    let alternatives: Vec<Value> = (0..top)
        .map(|k| {
            let token = if k == 0 {
                piece.to_string()
            } else {
                format!("{piece}~{k}")
            };
            json!({"token": token, "bytes": token.as_bytes(), "logprob": logprob - k as f64})
        })
        .collect();
    json!({"token": piece, "bytes": piece.as_bytes(), "logprob": logprob, "top_logprobs": alternatives})
}

/// `{"content": [entries]}` for these pieces.
pub fn logprobs_of(pieces: &[String], top: usize) -> Value {
    let entries: Vec<Value> = pieces.iter().map(|p| logprob_entry(p, top)).collect();
    json!({"content": entries})
}

/// Whether the request asks for spoken output (`modalities` names `"audio"`).
pub fn audio_wanted(request: &Map<String, Value>) -> bool {
    request
        .get("modalities")
        .and_then(Value::as_array)
        .is_some_and(|m| m.iter().any(|v| v == "audio"))
}

/// The simulated speech of a piece of text: 10 ms of PCM per character, from its hash.
pub fn speech_of(piece: &str) -> Vec<u8> {
    let seed = Sha256::digest(piece.as_bytes());
    let len = piece.chars().count().max(1) * AUDIO_BYTES_PER_TOKEN;
    (0..len).map(|i| seed[i % seed.len()]).collect()
}

pub fn audio_tokens_of(text: &str) -> u64 {
    text.chars().count().max(1) as u64
}

/// The `audio` object of a data chunk, as Qwen-Omni streams it.
pub fn audio_data(piece: &str, id: &str, created: i64) -> Value {
    let data = base64::engine::general_purpose::STANDARD.encode(speech_of(piece));
    json!({"data": data, "expires_at": created + 86_400, "id": format!("audio_{id}")})
}

/// `search_info` when the request asks for its sources (`search_options.enable_source`).
pub fn search_info(request: &Map<String, Value>, text: &str) -> Option<Value> {
    let search = request.get("enable_search") == Some(&Value::Bool(true));
    let source = request
        .get("search_options")
        .and_then(|o| o.get("enable_source"))
        == Some(&Value::Bool(true));
    (search && source).then(|| {
        json!({"search_results": [{"site_name": "Simulated Source", "icon": "https://example.com/icon.png",
            "index": 1, "title": format!("About {text}"), "url": "https://example.com/search/1"}]})
    })
}

/// A compatible-mode chunk in its full shape: keys `id, choices, created, model, object,
/// service_tier, system_fingerprint, usage`; each delta with `content, function_call, refusal,
/// role, tool_calls`, the missing ones `null`.
pub fn full_shape(chunk: &Value) -> Value {
    let mut choices = chunk["choices"].as_array().cloned().unwrap_or_default();
    for choice in &mut choices {
        let delta = choice["delta"].as_object().cloned().unwrap_or_default();
        let mut full = Map::new();
        for key in ["content", "function_call", "refusal", "role", "tool_calls"] {
            full.insert(key.into(), delta.get(key).cloned().unwrap_or(Value::Null));
        }
        for (key, value) in delta {
            full.entry(key).or_insert(value);
        }
        choice["delta"] = Value::Object(full);
    }
    json!({"id": chunk["id"], "choices": choices, "created": chunk["created"], "model": chunk["model"],
        "object": chunk["object"], "service_tier": null, "system_fingerprint": null, "usage": chunk["usage"]})
}
