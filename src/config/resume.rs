//! `[resume]`: how long a stream whose client went away keeps running for a reconnect, and how
//! much of it the gateway may hold meanwhile.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResumeConfig {
    /// How long the upstream call of a stream whose client hung up keeps running, buffered,
    /// for a reconnect with `Last-Event-ID`; 0 cancels it at once (no resuming).
    pub grace_seconds: u64,
    /// This gateway's tag in every event id, for a load balancer to route a reconnect back to
    /// the gateway holding the stream: 1 to 32 letters, digits, `-` or `_`.
    pub instance: String,
    /// The most one stream may buffer; beyond, it is no longer resumable (and, with no client
    /// reading it, its upstream call is cancelled).
    pub max_stream_bytes: usize,
    /// The most all streams together may buffer.
    pub max_total_bytes: usize,
    /// Resumable streams held at once; streams beyond are served but not resumable.
    pub max_streams: usize,
}

impl Default for ResumeConfig {
    fn default() -> Self {
        Self {
            grace_seconds: 30,
            instance: "dg".into(),
            max_stream_bytes: 1 << 20,
            max_total_bytes: 64 << 20,
            max_streams: 4096,
        }
    }
}

impl ResumeConfig {
    /// Why the config cannot be used: the field, and what is wrong with it.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let tag_ok = (1..=32).contains(&self.instance.len())
            && (self.instance.bytes()).all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !tag_ok {
            let message = format!(
                "`{}` must be 1 to 32 letters, digits, `-` or `_`",
                self.instance
            );
            return Err(("resume.instance", message));
        }
        if self.grace_seconds > 3600 {
            return Err(("resume.grace_seconds", "must be at most 3600".into()));
        }
        Ok(())
    }
}
