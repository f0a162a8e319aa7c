//! The OpenAI-compatible wire as an upstream speaks it (DashScope compatible mode, vLLM, ...):
//! `Chat` → request body, and chunks / completions → `ChatEvent`s.

use bytes::Bytes;

use crate::chat::Chat;
// The reply side of the format lives with the other wire formats.
pub use crate::wire::openai::{decode_chunk, decode_completion, usage_of_completion};

/// The request body for an OpenAI-compatible upstream. Streams always ask for usage: the
/// gateway meters every request.
pub fn encode_request(chat: &Chat) -> Bytes {
    let mut chat = chat.clone();
    if chat.is_stream() {
        let options = chat
            .stream_options
            .get_or_insert_with(|| crate::chat::StreamOptions {
                include_usage: None,
                extra: Default::default(),
            });
        options.include_usage = Some(true);
    }
    Bytes::from(serde_json::to_vec(&chat).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_request_always_asks_for_usage() {
        let chat = crate::chat::decode(br#"{"model":"m","stream":true,"messages":[{"role":"user","content":"x"}],"enable_search":true}"#);
        let body = chat.map(|c| encode_request(&c)).unwrap_or_default();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(json["stream_options"]["include_usage"], true);
        assert_eq!(json["enable_search"], true);
    }
}
