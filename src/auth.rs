//! Who is calling: gateway-issued keys (hashed, compared in constant time) or passthrough.
//! Keys come from the config (`[[keys]]`) and from the store; store lookups are cached for
//! `auth.key_cache_ms`, which bounds how late a revoke made elsewhere takes effect here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{AuthMode, StaticKey};
use crate::error::GatewayError;
use crate::store::{KeyRecord, QuotaPeriod, Store, now_ms};

/// A key's limits; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub token_quota: Option<u64>,
    pub quota_period: QuotaPeriod,
}

impl Limits {
    pub fn any(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some() || self.token_quota.is_some()
    }
}

/// A client that got in.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's name, for logs and usage; never the key itself.
    pub name: Arc<str>,
    /// The store's id of the key; `None` for a key from the config and in passthrough mode.
    pub id: Option<Arc<str>>,
    /// Model allow-list; `None` allows all.
    pub models: Option<Arc<[String]>>,
    pub limits: Limits,
    /// In passthrough mode, the caller's own bearer token, to forward upstream.
    pub passthrough_token: Option<String>,
    /// The account the key or device token belongs to (docs/fleet.md).
    pub account: Option<Arc<str>>,
    /// The device id of a device token.
    pub device: Option<Arc<str>>,
    /// A device's account-wide limits and the name they are counted under, shared by all the
    /// account's devices.
    pub account_limits: Option<(Arc<str>, Limits)>,
}

impl Caller {
    pub fn may_use(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|m| m == model))
    }

    pub fn check_model(&self, model: &str) -> Result<(), GatewayError> {
        if self.may_use(model) {
            Ok(())
        } else {
            Err(GatewayError::ModelNotAllowed(model.to_string()))
        }
    }
}

struct KeyEntry {
    hash: [u8; 32],
    caller: Caller,
}

/// The keys that may call the gateway, held only as SHA-256 hashes.
pub struct Authenticator {
    mode: AuthMode,
    keys: HashMap<[u8; 32], KeyEntry>,
    store: Option<Store>,
    /// Store lookups by hash, found or not (`None`), for `key_cache_ms`.
    cache: moka::sync::Cache<[u8; 32], Option<Arc<KeyRecord>>>,
    /// Device tokens' verifier; `None` until the gateway sets one up.
    devices: Option<Arc<crate::device::Devices>>,
}

impl Caller {
    /// A device's caller: named `account/device` (its limiter counters and ledger key name),
    /// with the account's shared limits counted under `account:NAME` beside its own.
    fn of_device(claims: crate::device::token::Claims) -> Caller {
        let account_limits = Limits {
            rpm: claims.account_rpm,
            tpm: claims.account_tpm,
            ..Limits::default()
        };
        let account: Arc<str> = Arc::from(claims.account.as_str());
        Caller {
            name: Arc::from(format!("{}/{}", claims.account, claims.device)),
            id: None,
            models: claims.models.map(Arc::from),
            limits: Limits {
                rpm: claims.rpm,
                tpm: claims.tpm,
                ..Limits::default()
            },
            passthrough_token: None,
            account_limits: account_limits
                .any()
                .then(|| (Arc::from(format!("account:{account}")), account_limits)),
            account: Some(account),
            device: Some(Arc::from(claims.device.as_str())),
        }
    }

    fn of_record(key: &KeyRecord) -> Caller {
        Caller {
            name: Arc::from(key.name.as_str()),
            id: Some(Arc::from(key.id.as_str())),
            models: key.models.as_ref().map(|m| Arc::from(m.as_slice())),
            limits: Limits {
                rpm: key.rpm,
                tpm: key.tpm,
                token_quota: key.token_quota,
                quota_period: key.quota_period,
            },
            passthrough_token: None,
            account: key.account.as_deref().map(Arc::from),
            device: None,
            account_limits: None,
        }
    }
}

pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A new client key: `sk-dg-` and 192 random bits, hex.
pub fn mint_key() -> Result<String, GatewayError> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|_| GatewayError::Internal)?;
    Ok(format!("sk-dg-{}", hex::encode(bytes)))
}

/// What listings show of a key: enough to tell keys apart, far too little to guess one.
pub fn key_prefix(key: &str) -> String {
    key.chars().take(10).collect()
}

impl Authenticator {
    pub fn new(
        mode: AuthMode,
        static_keys: &[StaticKey],
        store: Option<Store>,
        cache_for: Duration,
    ) -> Self {
        let keys = static_keys
            .iter()
            .map(|k| {
                let hash = hash_key(k.key.expose());
                let caller = Caller {
                    name: Arc::from(k.name.as_str()),
                    id: None,
                    models: k.models.as_ref().map(|m| Arc::from(m.as_slice())),
                    limits: Limits {
                        rpm: k.rpm.map(u64::from),
                        tpm: k.tpm,
                        token_quota: k.token_quota,
                        quota_period: k.quota_period,
                    },
                    passthrough_token: None,
                    account: k.account.as_deref().map(Arc::from),
                    device: None,
                    account_limits: None,
                };
                (hash, KeyEntry { hash, caller })
            })
            .collect();
        let cache = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(cache_for.max(Duration::from_millis(1)))
            .build();
        Self {
            mode,
            keys,
            store,
            cache,
            devices: None,
        }
    }

    /// Accepts device tokens signed with `devices`' keys.
    pub fn with_devices(mut self, devices: Arc<crate::device::Devices>) -> Self {
        self.devices = Some(devices);
        self
    }

    /// Forgets every cached store lookup: after a change made on this gateway, it holds at once.
    pub fn forget_cached(&self) {
        self.cache.invalidate_all();
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Checks `Authorization: Bearer <key>`; a missing or unknown key is 401 `invalid_api_key`.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, GatewayError> {
        let token = bearer(headers).ok_or(GatewayError::InvalidApiKey)?;
        if self.mode == AuthMode::Passthrough {
            return Ok(Caller {
                name: Arc::from("passthrough"),
                id: None,
                models: None,
                limits: Limits::default(),
                passthrough_token: Some(token.to_string()),
                account: None,
                device: None,
                account_limits: None,
            });
        }
        if token.starts_with(crate::device::token::PREFIX) {
            return match &self.devices {
                Some(devices) => devices.verify(token, now_ms()).map(Caller::of_device),
                None => Err(GatewayError::InvalidApiKey),
            };
        }
        // Maps are keyed by the hash, so lookup time says nothing about the key's bytes; the
        // final comparison is constant-time all the same.
        let hash = hash_key(token);
        if let Some(entry) = self.keys.get(&hash) {
            if bool::from(entry.hash.ct_eq(&hash)) {
                return Ok(entry.caller.clone());
            }
        }
        let record = match self.cache.get(&hash) {
            Some(cached) => cached,
            None => self.look_up(hash).await?,
        };
        let Some(record) = record else {
            return Err(GatewayError::InvalidApiKey);
        };
        if let Some(why) = record.status_at(now_ms()).refusal() {
            return Err(GatewayError::KeyUnusable(why));
        }
        Ok(Caller::of_record(&record))
    }

    /// The caller a key hash stands for, as `authenticate` would give it: a batch the gateway
    /// runs long after its request (docs/batch.md) acts for its key again after a restart.
    pub async fn caller_by_hash(&self, hash: [u8; 32]) -> Result<Caller, GatewayError> {
        if let Some(entry) = self.keys.get(&hash) {
            return Ok(entry.caller.clone());
        }
        let record = match self.cache.get(&hash) {
            Some(cached) => cached,
            None => self.look_up(hash).await?,
        };
        let record = record.ok_or(GatewayError::InvalidApiKey)?;
        if let Some(why) = record.status_at(now_ms()).refusal() {
            return Err(GatewayError::KeyUnusable(why));
        }
        Ok(Caller::of_record(&record))
    }

    async fn look_up(&self, hash: [u8; 32]) -> Result<Option<Arc<KeyRecord>>, GatewayError> {
        let Some(store) = &self.store else {
            return Ok(None);
        };
        match store.key_by_hash(&hex::encode(hash)).await {
            Ok(found) => {
                let found = found.map(Arc::new);
                self.cache.insert(hash, found.clone());
                Ok(found)
            }
            Err(e) => {
                tracing::warn!(error = %e, "key lookup failed");
                Err(GatewayError::StoreUnavailable)
            }
        }
    }
}

/// The token of an `Authorization: Bearer ...` header (scheme matched case-insensitively).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use axum::http::HeaderValue;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(auth) {
            h.insert(header::AUTHORIZATION, v);
        }
        h
    }

    fn table() -> Authenticator {
        let key = StaticKey {
            name: "glass".into(),
            key: Secret::new("sk-glass3-demo"),
            models: Some(vec!["qwen-plus".into()]),
            rpm: None,
            tpm: None,
            token_quota: None,
            quota_period: QuotaPeriod::Total,
            account: None,
        };
        Authenticator::new(AuthMode::Keys, &[key], None, Duration::from_secs(5))
    }

    #[test]
    fn minted_keys_are_long_random_and_prefixed() {
        let (a, b) = (mint_key().ok(), mint_key().ok());
        assert!(
            a.as_deref()
                .is_some_and(|k| k.starts_with("sk-dg-") && k.len() == 54)
        );
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn known_key_gets_in_with_its_allow_list() {
        let caller = table()
            .authenticate(&headers("Bearer sk-glass3-demo"))
            .await;
        let caller = caller.map_err(|e| e.to_string());
        assert_eq!(caller.as_ref().map(|c| c.name.as_ref()), Ok("glass"));
        assert!(
            caller
                .as_ref()
                .is_ok_and(|c| c.may_use("qwen-plus") && !c.may_use("qwen-max"))
        );
    }

    #[tokio::test]
    async fn wrong_missing_or_malformed_keys_are_refused() {
        for value in [
            "Bearer sk-glass3-dem",
            "sk-glass3-demo",
            "Bearer ",
            "Basic sk-glass3-demo",
            "",
        ] {
            assert!(
                matches!(
                    table().authenticate(&headers(value)).await,
                    Err(GatewayError::InvalidApiKey)
                ),
                "{value}"
            );
        }
    }

    #[tokio::test]
    async fn passthrough_keeps_the_callers_token() {
        let auth = Authenticator::new(AuthMode::Passthrough, &[], None, Duration::from_secs(5));
        let caller = auth.authenticate(&headers("bearer sk-callers-own")).await;
        assert_eq!(
            caller.ok().and_then(|c| c.passthrough_token),
            Some("sk-callers-own".into())
        );
    }
}
