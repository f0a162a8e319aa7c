//! Who is calling: gateway-issued keys (hashed, compared in constant time) or passthrough.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{AuthMode, StaticKey};
use crate::error::GatewayError;

/// A client that got in.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's name, for logs and usage; never the key itself.
    pub name: Arc<str>,
    /// Model allow-list; `None` allows all.
    pub models: Option<Arc<[String]>>,
    /// In passthrough mode, the caller's own bearer token, to forward upstream.
    pub passthrough_token: Option<String>,
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
}

pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl Authenticator {
    pub fn new(mode: AuthMode, static_keys: &[StaticKey]) -> Self {
        let keys = static_keys
            .iter()
            .map(|k| {
                let hash = hash_key(k.key.expose());
                let caller = Caller {
                    name: Arc::from(k.name.as_str()),
                    models: k.models.as_ref().map(|m| Arc::from(m.as_slice())),
                    passthrough_token: None,
                };
                (hash, KeyEntry { hash, caller })
            })
            .collect();
        Self { mode, keys }
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Checks `Authorization: Bearer <key>`; a missing or unknown key is 401 `invalid_api_key`.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, GatewayError> {
        let token = bearer(headers).ok_or(GatewayError::InvalidApiKey)?;
        match self.mode {
            AuthMode::Passthrough => Ok(Caller {
                name: Arc::from("passthrough"),
                models: None,
                passthrough_token: Some(token.to_string()),
            }),
            AuthMode::Keys => {
                // The map is keyed by the hash, so lookup time says nothing about the key's
                // bytes; the final comparison is constant-time all the same.
                let hash = hash_key(token);
                match self.keys.get(&hash) {
                    Some(entry) if bool::from(entry.hash.ct_eq(&hash)) => Ok(entry.caller.clone()),
                    _ => Err(GatewayError::InvalidApiKey),
                }
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
        };
        Authenticator::new(AuthMode::Keys, &[key])
    }

    #[test]
    fn known_key_gets_in_with_its_allow_list() {
        let caller = table().authenticate(&headers("Bearer sk-glass3-demo"));
        let caller = caller.map_err(|e| e.to_string());
        assert_eq!(caller.as_ref().map(|c| c.name.as_ref()), Ok("glass"));
        assert!(
            caller
                .as_ref()
                .is_ok_and(|c| c.may_use("qwen-plus") && !c.may_use("qwen-max"))
        );
    }

    #[test]
    fn wrong_missing_or_malformed_keys_are_refused() {
        for value in [
            "Bearer sk-glass3-dem",
            "sk-glass3-demo",
            "Bearer ",
            "Basic sk-glass3-demo",
            "",
        ] {
            assert!(
                matches!(
                    table().authenticate(&headers(value)),
                    Err(GatewayError::InvalidApiKey)
                ),
                "{value}"
            );
        }
    }

    #[test]
    fn passthrough_keeps_the_callers_token() {
        let auth = Authenticator::new(AuthMode::Passthrough, &[]);
        let caller = auth.authenticate(&headers("bearer sk-callers-own"));
        assert_eq!(
            caller.ok().and_then(|c| c.passthrough_token),
            Some("sk-callers-own".into())
        );
    }
}
