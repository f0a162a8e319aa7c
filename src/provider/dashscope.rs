//! DashScope's native API as an upstream speaks it (its native generation API reference):
//! `Chat` → `{model, input: {messages}, parameters}`, and native replies → `ChatEvent`s.

use bytes::Bytes;

use super::Api;
use crate::chat::Chat;
// The reply side of the format lives with the other wire formats.
pub use crate::wire::dashscope::{Decoder, decode_reply};

/// Whether a request belongs on the multimodal endpoint: a vision/audio model, or media in it.
pub fn is_multimodal(chat: &Chat) -> bool {
    let model = chat.model.as_str();
    let media_model = model.contains("-vl")
        || model.contains("vl-")
        || model.starts_with("qvq")
        || model.contains("omni")
        || model.contains("audio");
    media_model || chat.has_media()
}

/// The native request for `chat`, and the endpoint it goes to. Streams ask for deltas
/// (`incremental_output`) and `message` format: the gateway re-encodes for its client.
pub fn encode_request(chat: &Chat) -> (Api, Bytes) {
    let multimodal = is_multimodal(chat);
    let body = crate::wire::dashscope::encode_request(chat, multimodal);
    let api = if multimodal {
        Api::NativeMultimodal
    } else {
        Api::NativeText
    };
    (api, Bytes::from(body))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn requests_become_native_with_parameters() {
        let chat = crate::chat::decode(
            br#"{"model":"qwen-vl-plus","stream":true,"temperature":0.5,"enable_search":true,"messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/a.jpg"},"min_pixels":100},{"type":"text","text":"what"}]}]}"#,
        );
        let (api, body) = chat
            .map(|c| encode_request(&c))
            .unwrap_or((Api::Chat, Bytes::new()));
        assert_eq!(api, Api::NativeMultimodal);
        let body: Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(
            body["input"]["messages"],
            json!([{"role": "system", "content": [{"text": "be brief"}]},
                   {"role": "user", "content": [{"image": "https://x/a.jpg", "min_pixels": 100}, {"text": "what"}]}])
        );
        assert_eq!(
            body["parameters"],
            json!({"result_format": "message", "incremental_output": true, "temperature": 0.5, "enable_search": true})
        );
    }
}
