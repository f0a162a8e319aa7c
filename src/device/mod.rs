//! Device fleets: accounts own keys; an account's backend mints short-lived device tokens
//! (`POST /v1/device-tokens`, in `crate::api::device`), which the gateway verifies with no
//! store lookup. Revocations (one device, or a whole account) live in the store and are read
//! into memory every `devices.revocation_refresh_ms`: that interval bounds how late another
//! gateway honours one.

pub mod token;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::error::GatewayError;
use crate::store::{Store, StoreError};
use token::{Claims, Refused, SigningKey};

/// The store setting that holds the signing key the gateway made itself.
const GENERATED_KEY_SETTING: &str = "device_signing_key";

/// `(account, device)` → revoked at (Unix ms); an empty device stands for the whole account.
type Revocations = HashMap<(String, String), i64>;

/// Signing keys and the revocations seen so far.
pub struct Devices {
    /// The first signs; all verify (a rotation keeps the old one listed second for a while).
    keys: Vec<SigningKey>,
    revoked: RwLock<Revocations>,
    pub max_ttl_seconds: u64,
}

impl Devices {
    /// Keys from `[devices] signing_keys`, or, when none are set, one made once and kept in
    /// the store (so every gateway on that store shares it).
    pub async fn open(
        config: &crate::config::DevicesConfig,
        store: &Store,
    ) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (i, text) in config.signing_keys.iter().enumerate() {
            keys.push(SigningKey::parse(text.expose()).ok_or_else(|| {
                format!(
                    "devices.signing_keys[{i}]: expected `id:secret` (id of letters, digits, - or _; secret of 16 characters or more)"
                )
            })?);
        }
        if keys.is_empty() {
            keys.push(
                generated_key(store)
                    .await
                    .map_err(|e| format!("store.url: {e}"))?,
            );
        }
        let devices = Self {
            keys,
            revoked: RwLock::new(HashMap::new()),
            max_ttl_seconds: config.max_ttl_seconds,
        };
        devices
            .refresh(store)
            .await
            .map_err(|e| format!("store.url: {e}"))?;
        Ok(devices)
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.keys[0]
    }

    fn key(&self, kid: &str) -> Option<&SigningKey> {
        self.keys.iter().find(|k| k.id == kid)
    }

    /// Reads the revocations from the store.
    pub async fn refresh(&self, store: &Store) -> Result<(), StoreError> {
        let rows = store.device_revocations().await?;
        let map = rows
            .into_iter()
            .map(|(a, d, at)| ((a, d), at))
            .collect::<Revocations>();
        if let Ok(mut revoked) = self.revoked.write() {
            *revoked = map;
        }
        Ok(())
    }

    fn revoked(&self, claims: &Claims) -> bool {
        let Ok(revoked) = self.revoked.read() else {
            return false;
        };
        if revoked.is_empty() {
            return false;
        }
        let before = |device: &str| {
            revoked
                .get(&(claims.account.clone(), device.to_string()))
                .is_some_and(|&at| claims.issued_ms <= at)
        };
        before("") || before(&claims.device)
    }

    /// What a live device token says: its signature, expiry and revocations checked. The
    /// caller it stands for is made by `auth` (`Caller::of_device`).
    pub fn verify(&self, token: &str, now_ms: i64) -> Result<Claims, GatewayError> {
        let claims = match token::verify(token, |kid| self.key(kid), now_ms) {
            Ok(claims) => claims,
            Err(Refused::Invalid) => return Err(GatewayError::InvalidApiKey),
            Err(Refused::Expired) => return Err(GatewayError::KeyUnusable("has expired")),
        };
        if self.revoked(&claims) {
            return Err(GatewayError::KeyUnusable("was revoked"));
        }
        Ok(claims)
    }
}

async fn generated_key(store: &Store) -> Result<SigningKey, StoreError> {
    if let Some(text) = store.setting(GENERATED_KEY_SETTING).await? {
        if let Some(key) = SigningKey::parse(&text) {
            return Ok(key);
        }
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let text = format!("gen:{}", hex::encode(bytes));
    // Two gateways starting together: the first write wins, both read it back.
    store
        .insert_setting_once(GENERATED_KEY_SETTING, &text)
        .await?;
    let text = store.setting(GENERATED_KEY_SETTING).await?.unwrap_or(text);
    SigningKey::parse(&text).ok_or_else(|| StoreError::Corrupt(GENERATED_KEY_SETTING.into()))
}

/// Reads the revocations every `every_ms` while the gateway's state lives; a failed read keeps
/// the last list (and is logged), so a store outage does not un-revoke anything.
pub fn keep_refreshing(devices: &Arc<Devices>, store: &Store, every_ms: u64) {
    let devices = Arc::downgrade(devices);
    let store = store.clone();
    let every = std::time::Duration::from_millis(every_ms.max(100));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(devices) = devices.upgrade() else {
                return;
            };
            if let Err(e) = devices.refresh(&store).await {
                tracing::warn!(error = %e, "device revocations not refreshed");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use crate::config::{parse, validate};

    #[test]
    fn a_malformed_signing_key_is_a_config_error_naming_it() {
        let text = "[devices]\nsigning_keys = [\"k1:0123456789abcdef\", \"k2:short\"]\n";
        let config = parse(text, "t.toml", &|_| None).map_err(|e| e.to_string());
        let err = config.map(|c| validate(&c).map_err(|e| e[0].key.clone()));
        assert_eq!(err, Ok(Err("devices.signing_keys[1]".to_string())));
    }
}
