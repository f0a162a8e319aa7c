//! `[sessions]`: how much conversation the gateway keeps per session, and for how long.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// The history sent upstream with a new turn, in estimated tokens (the new turn itself is
    /// always sent): older messages are dropped first.
    pub max_history_tokens: u64,
    /// Images kept in the conversation, newest first (the new turn's count); older camera
    /// frames become a short text placeholder.
    pub keep_images: usize,
    /// Live sessions one owner (a key, or a device) may have; a new one beyond is refused.
    pub max_sessions_per_owner: u64,
    /// A session's stored size (its messages as JSON); older messages are dropped to fit.
    pub max_session_bytes: usize,
    /// A session not used for this long is gone.
    pub ttl_seconds: u64,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            max_history_tokens: 8000,
            keep_images: 1,
            max_sessions_per_owner: 100,
            max_session_bytes: 4 << 20,
            ttl_seconds: 86_400,
        }
    }
}

impl SessionsConfig {
    pub fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl_seconds.saturating_mul(1000)).unwrap_or(i64::MAX)
    }
}
