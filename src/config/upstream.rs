//! `[[upstreams]]`: where requests go, and how long each step may take.

use std::time::Duration;

use serde::Deserialize;

use super::{MediaOverride, Secret};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Alibaba Cloud Model Studio; `base_url` is the host root.
    Dashscope,
    /// Any OpenAI-compatible server; `base_url` ends in `/v1`.
    Openai,
}

/// Which of DashScope's dialects the gateway speaks to a `dashscope` upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamDialect {
    /// The client's own: no translation.
    #[default]
    Auto,
    /// Always compatible mode.
    Compatible,
    /// Always the native API.
    Native,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    pub provider: ProviderKind,
    #[serde(default)]
    pub dialect: UpstreamDialect,
    pub base_url: String,
    #[serde(default)]
    pub api_key: Option<Secret>,
    #[serde(default = "all_models")]
    pub models: Vec<String>,
    #[serde(default = "one")]
    pub weight: u32,
    /// Requests in flight at once (0: no cap); a full upstream is skipped, or 503 if all are.
    #[serde(default)]
    pub max_concurrency: u32,
    /// The gateway fetches image URLs and inlines them, for upstreams that cannot fetch.
    #[serde(default)]
    pub fetch_image_urls: bool,
    /// Changes to the `[media]` policy for this upstream.
    #[serde(default)]
    pub media: MediaOverride,
    /// Time to open the TCP (and TLS) connection.
    #[serde(default = "defaults::connect_ms")]
    pub connect_timeout_ms: u64,
    /// Time until the upstream's response headers arrive (for LLMs: time to first token).
    #[serde(default = "defaults::first_byte_ms")]
    pub first_byte_timeout_ms: u64,
    /// Longest silence allowed between two stream events.
    #[serde(default = "defaults::idle_ms")]
    pub idle_timeout_ms: u64,
    /// Whole request, first byte to last.
    #[serde(default = "defaults::request_ms")]
    pub request_timeout_ms: u64,
}

impl UpstreamConfig {
    /// An upstream with every optional setting at its default.
    pub fn new(name: &str, provider: ProviderKind, base_url: &str) -> Self {
        Self {
            name: name.into(),
            provider,
            dialect: UpstreamDialect::Auto,
            base_url: base_url.into(),
            api_key: None,
            models: all_models(),
            weight: 1,
            max_concurrency: 0,
            fetch_image_urls: false,
            media: MediaOverride::default(),
            connect_timeout_ms: defaults::connect_ms(),
            first_byte_timeout_ms: defaults::first_byte_ms(),
            idle_timeout_ms: defaults::idle_ms(),
            request_timeout_ms: defaults::request_ms(),
        }
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn first_byte_timeout(&self) -> Duration {
        Duration::from_millis(self.first_byte_timeout_ms)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

fn all_models() -> Vec<String> {
    vec!["*".into()]
}
fn one() -> u32 {
    1
}

/// Defaults sized for LLMs: a long prompt or a thinking model can take minutes.
mod defaults {
    pub fn connect_ms() -> u64 {
        5_000
    }
    pub fn first_byte_ms() -> u64 {
        120_000
    }
    pub fn idle_ms() -> u64 {
        120_000
    }
    pub fn request_ms() -> u64 {
        900_000
    }
}
