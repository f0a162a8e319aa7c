//! The cache key: a SHA-256 over the caller's scope and the canonical request (every field the
//! upstream sees, object keys sorted, so the order a client wrote them in does not matter).
//! Whether the reply comes as a stream is not part of it: a stream can be answered from a
//! whole reply and the other way round.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::chat::Chat;

/// Fields whose value names media by address: what is behind a remote URL can change, so such
/// a request is not cached (data URLs and `fileid://` are content, and are).
const MEDIA_FIELDS: [&str; 5] = ["url", "image", "video", "audio", "data"];

/// The key for `chat` in `scope` under the media `policies` that process it, or `None` when
/// the request names remote media.
pub fn of(scope: &str, policies: &str, chat: &Chat) -> Option<[u8; 32]> {
    let mut value = serde_json::to_value(chat).ok()?;
    if let Value::Object(map) = &mut value {
        map.remove("stream");
        map.remove("stream_options");
    }
    let mut hasher = Sha256::new();
    hasher.update(b"dashgate-cache-v1\0");
    hasher.update(scope.as_bytes());
    hasher.update(b"\0");
    hasher.update(policies.as_bytes());
    hasher.update(b"\0");
    hash_value(&mut hasher, &value, "")?;
    Some(hasher.finalize().into())
}

/// Hashes a JSON value canonically, tagging each kind so that no two values collide; `None`
/// for a remote media address.
fn hash_value(hasher: &mut Sha256, value: &Value, field: &str) -> Option<()> {
    match value {
        Value::Null => hasher.update(b"n"),
        Value::Bool(b) => hasher.update(if *b { b"t" } else { b"f" }),
        Value::Number(n) => {
            hasher.update(b"#");
            hasher.update(n.to_string().as_bytes());
            hasher.update(b";");
        }
        Value::String(s) => {
            if MEDIA_FIELDS.contains(&field) && is_remote(s) {
                return None;
            }
            hasher.update(b"s");
            hasher.update((s.len() as u64).to_le_bytes());
            hasher.update(s.as_bytes());
        }
        Value::Array(items) => {
            hasher.update(b"[");
            hasher.update((items.len() as u64).to_le_bytes());
            for item in items {
                hash_value(hasher, item, field)?;
            }
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            hasher.update(b"{");
            hasher.update((keys.len() as u64).to_le_bytes());
            for key in keys {
                hasher.update((key.len() as u64).to_le_bytes());
                hasher.update(key.as_bytes());
                hash_value(hasher, &map[key.as_str()], key)?;
            }
        }
    }
    Some(())
}

fn is_remote(s: &str) -> bool {
    let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// The request does not sample: `seed` is set and `temperature` is not above zero. Anything
/// else may rightly answer differently each time, so it is cached only when configured.
pub fn deterministic(chat: &Chat) -> bool {
    chat.seed.is_some() && chat.temperature.is_none_or(|t| t <= 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(json: &str) -> Chat {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn field_order_and_stream_flag_do_not_change_the_key() {
        let a =
            chat(r#"{"model":"m","seed":1,"top_k":3,"messages":[{"role":"user","content":"hi"}]}"#);
        let b = chat(
            r#"{"top_k":3,"messages":[{"content":"hi","role":"user"}],"model":"m","seed":1,"stream":true}"#,
        );
        assert_eq!(of("k", "", &a), of("k", "", &b));
    }

    #[test]
    fn scope_and_every_parameter_change_the_key() {
        let a = chat(r#"{"model":"m","seed":1,"messages":[{"role":"user","content":"hi"}]}"#);
        let b = chat(r#"{"model":"m","seed":2,"messages":[{"role":"user","content":"hi"}]}"#);
        let c =
            chat(r#"{"model":"m","seed":1,"top_k":1,"messages":[{"role":"user","content":"hi"}]}"#);
        assert_ne!(of("k", "", &a), of("k", "", &b));
        assert_ne!(of("k", "", &a), of("k", "", &c));
        assert_ne!(of("k", "", &a), of("other", "", &a));
    }

    #[test]
    fn remote_media_is_not_cached_but_data_urls_are() {
        let remote = chat(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/a.jpg"}}]}]}"#,
        );
        let inline = chat(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}]}"#,
        );
        assert_eq!(of("k", "", &remote), None);
        assert!(of("k", "", &inline).is_some());
    }

    #[test]
    fn sampling_requests_are_not_deterministic() {
        let seeded = chat(r#"{"model":"m","seed":1,"messages":[]}"#);
        let cold = chat(r#"{"model":"m","seed":1,"temperature":0,"messages":[]}"#);
        let warm = chat(r#"{"model":"m","seed":1,"temperature":0.7,"messages":[]}"#);
        let unseeded = chat(r#"{"model":"m","temperature":0,"messages":[]}"#);
        assert!(deterministic(&seeded));
        assert!(deterministic(&cold));
        assert!(!deterministic(&warm));
        assert!(!deterministic(&unseeded));
    }
}
