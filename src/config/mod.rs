//! Configuration: TOML file with `${VAR}` interpolation, or environment variables alone.
//! Parsed and validated once at start; every error names the key at fault.

mod auth;
mod batch;
mod cache;
mod files;
mod interpolate;
mod limits;
mod load;
mod media;
mod resilience;
mod resume;
mod server;
mod sessions;
mod telemetry;
#[cfg(test)]
mod tests;
mod upstream;
mod usage;
mod validate;

pub use auth::{AuthConfig, AuthMode, DevicesConfig, QuotaPeriod, StaticKey, split_signing_key};
pub use batch::BatchConfig;
pub use cache::{CacheConfig, CacheScope};
pub use files::FilesConfig;
pub use limits::{FailMode, LimitsConfig};
pub use load::{Source, load, load_with, parse};
pub use media::{MediaConfig, MediaOverride};
pub use resilience::{CircuitConfig, RetryConfig};
pub use resume::ResumeConfig;
pub use server::{ServerConfig, StoreConfig};
pub use sessions::SessionsConfig;
pub use telemetry::{LogFormat, TelemetryConfig};
pub use upstream::{ProviderKind, UpstreamConfig, UpstreamDialect};
pub use usage::{Price, UsageConfig};
pub use validate::validate;

use std::fmt;

use serde::Deserialize;

/// A config problem, always naming the key (or file position) at fault.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

/// Every problem a config has, reported at once (one per line).
#[derive(Debug, thiserror::Error)]
#[error("{}", lines(.0))]
pub struct ConfigErrors(pub Vec<ConfigError>);

fn lines(problems: &[ConfigError]) -> String {
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

impl From<ConfigError> for ConfigErrors {
    fn from(problem: ConfigError) -> Self {
        Self(vec![problem])
    }
}

impl std::ops::Deref for ConfigErrors {
    type Target = [ConfigError];
    fn deref(&self) -> &[ConfigError] {
        &self.0
    }
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A string that never shows in `Debug` output or logs.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub auth: AuthConfig,
    pub keys: Vec<StaticKey>,
    pub upstreams: Vec<UpstreamConfig>,
    pub retry: RetryConfig,
    pub circuit: CircuitConfig,
    pub media: MediaConfig,
    pub limits: LimitsConfig,
    pub usage: UsageConfig,
    pub files: FilesConfig,
    /// Prices per model, for the cost in each usage record.
    pub prices: std::collections::BTreeMap<String, Price>,
    pub telemetry: TelemetryConfig,
    /// The exact response cache (`docs/cache.md`).
    pub cache: CacheConfig,
    pub devices: DevicesConfig,
    /// Server-side sessions (`docs/fleet.md`).
    pub sessions: SessionsConfig,
    /// The Batch API (`docs/batch.md`).
    pub batch: BatchConfig,
    /// Resumable streams (`docs/fleet.md`).
    pub resume: ResumeConfig,
}
