//! `[auth]`, `[[keys]]` and `[devices]`: who may call the gateway.

use serde::{Deserialize, Serialize};

use super::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Only gateway-issued keys get in; the upstream's own key is injected.
    #[default]
    Keys,
    /// The caller's bearer token is forwarded upstream as-is.
    Passthrough,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// Guards `/admin`; empty or absent means there is no admin API.
    pub admin_token: Option<Secret>,
    /// How long a key looked up in the store is trusted: the bound on how late another
    /// gateway sees a revoke (the gateway that revokes sees it at once).
    pub key_cache_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::Keys,
            admin_token: None,
            key_cache_ms: 5_000,
        }
    }
}

/// A client key written in the config, beside the keys kept in the store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticKey {
    pub name: String,
    pub key: Secret,
    pub models: Option<Vec<String>>,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    /// Tokens this key may use in all, or per `quota_period`.
    pub token_quota: Option<u64>,
    #[serde(default)]
    pub quota_period: QuotaPeriod,
    /// The account (a customer of a device maker) this key belongs to; it may mint device
    /// tokens for that account.
    #[serde(default)]
    pub account: Option<String>,
}

/// Device tokens (docs/fleet.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevicesConfig {
    /// `id:secret` each; the first signs new tokens, all verify. Empty: one is made and kept
    /// in the store.
    pub signing_keys: Vec<Secret>,
    /// The longest `ttl_seconds` a token may be minted with.
    pub max_ttl_seconds: u64,
    /// How often revocations are read from the store: how late another gateway honours one.
    pub revocation_refresh_ms: u64,
}

/// Splits a `[devices] signing_keys` entry, `id:secret`, into its id and secret: the id is 1 to
/// 32 letters, digits, `-` or `_`, the secret 16 characters or more. Here so the validator
/// checks entries with no import of the device module, which parses them with it.
pub fn split_signing_key(text: &str) -> Option<(&str, &str)> {
    let (id, secret) = text.split_once(':')?;
    let id_ok = !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret.len() >= 16).then_some((id, secret))
}

impl Default for DevicesConfig {
    fn default() -> Self {
        Self {
            signing_keys: Vec::new(),
            max_ttl_seconds: 86_400,
            revocation_refresh_ms: 5_000,
        }
    }
}

/// The span a token quota counts over (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaPeriod {
    #[default]
    Total,
    Day,
    Month,
}

impl QuotaPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Total => "total",
            Self::Day => "day",
            Self::Month => "month",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "total" => Some(Self::Total),
            "day" => Some(Self::Day),
            "month" => Some(Self::Month),
            _ => None,
        }
    }
}
