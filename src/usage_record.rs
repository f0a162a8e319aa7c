//! One usage record per request: who, what, how much, how fast. A leaf (it imports nothing
//! of the gateway) so the store and the access log can write it without importing `usage`;
//! re-exported as `usage::UsageRecord`.

use serde::{Deserialize, Serialize};

/// A request as the ledger keeps it. Serialisable, for the spill file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// Made by the gateway, unique: writing a record twice (a replayed spill) keeps one.
    pub id: String,
    /// When the request came, Unix milliseconds.
    pub at: i64,
    pub request_id: String,
    /// The store's key id; `None` for a static key from the config or passthrough.
    pub key_id: Option<String>,
    pub key_name: String,
    pub model: String,
    pub upstream: String,
    /// `chat`, `completions`, `native_text`, `native_multimodal`.
    pub route: String,
    /// `openai` or `native`.
    pub dialect: String,
    pub stream: bool,
    /// The HTTP status the client got (200 for a stream that ended in an error event).
    pub status: u16,
    /// The error code, when the request failed or its stream ended in an error.
    pub error_code: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: Option<u64>,
    pub reasoning_tokens: Option<u64>,
    pub image_tokens: Option<u64>,
    pub audio_tokens: Option<u64>,
    /// The tokens are the gateway's estimate: the upstream's own figures never came (the
    /// client hung up first, or the upstream failed mid-stream).
    pub estimated: bool,
    pub ttft_ms: Option<u64>,
    pub duration_ms: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub images: u64,
    pub image_original_bytes: u64,
    pub image_sent_bytes: u64,
    pub image_tokens_before: u64,
    pub image_tokens_after: u64,
    /// From the `[prices]` table; `None` when the model has no price.
    pub cost: Option<f64>,
    /// Answered from the response cache: no upstream tokens; the original reply's figures are
    /// in `cache_prompt_tokens` and `cache_completion_tokens`.
    #[serde(default)]
    pub cache_hit: bool,
    #[serde(default)]
    pub cache_prompt_tokens: Option<u64>,
    #[serde(default)]
    pub cache_completion_tokens: Option<u64>,
    /// The caller's account and, for a device token, its device id (docs/fleet.md).
    #[serde(default)]
    pub account: Option<String>,
    #[serde(default)]
    pub device: Option<String>,
}
