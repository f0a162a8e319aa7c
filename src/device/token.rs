//! Device tokens: `dgt_<kid>.<payload>.<mac>`, the payload a compact JSON naming the account,
//! the device, the expiry and optional limits, the MAC an HMAC-SHA256 over `<kid>.<payload>`
//! with the signing key `kid` names. Verified with no store lookup: a map lookup by kid, one
//! HMAC, one constant-time compare, one small JSON parse.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// What every device token starts with: tells it from a key before any work is done.
pub const PREFIX: &str = "dgt_";

/// What a token says. Field names are short: the token travels on every request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Account.
    #[serde(rename = "a")]
    pub account: String,
    /// Device id.
    #[serde(rename = "d")]
    pub device: String,
    /// Issued at, Unix milliseconds (revocations refuse tokens issued before them).
    #[serde(rename = "i")]
    pub issued_ms: i64,
    /// Expires at, Unix milliseconds.
    #[serde(rename = "e")]
    pub expires_ms: i64,
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// The device's own limits.
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// The account's limits (of the key that minted the token), shared by all its devices.
    #[serde(rename = "ar", default, skip_serializing_if = "Option::is_none")]
    pub account_rpm: Option<u64>,
    #[serde(rename = "at", default, skip_serializing_if = "Option::is_none")]
    pub account_tpm: Option<u64>,
}

/// A signing key: its id (in the token, so two keys can be live during a rotation) and secret.
#[derive(Clone)]
pub struct SigningKey {
    pub id: String,
    secret: Vec<u8>,
}

impl SigningKey {
    pub fn new(id: impl Into<String>, secret: impl Into<Vec<u8>>) -> Self {
        Self {
            id: id.into(),
            secret: secret.into(),
        }
    }

    /// `id:secret` as written in `[devices] signing_keys` (the rules in the config's
    /// `split_signing_key`, which the validator checks with).
    pub fn parse(text: &str) -> Option<Self> {
        let (id, secret) = crate::config::split_signing_key(text)?;
        Some(Self::new(id, secret.as_bytes()))
    }

    fn mac(&self, signed: &[u8]) -> [u8; 32] {
        // HMAC takes keys of any length; the error branch cannot happen.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(signed);
        mac.finalize().into_bytes().into()
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not a device token at all, or its signature does not hold.
    Invalid,
    Expired,
}

/// Signs claims into a token.
pub fn sign(key: &SigningKey, claims: &Claims) -> String {
    let payload = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signed = format!("{}.{payload}", key.id);
    let mac = B64.encode(key.mac(signed.as_bytes()));
    format!("{PREFIX}{signed}.{mac}")
}

/// Checks a token's signature (with whichever live key it names) and expiry.
pub fn verify<'k>(
    token: &str,
    keys: impl Fn(&str) -> Option<&'k SigningKey>,
    now_ms: i64,
) -> Result<Claims, Refused> {
    let rest = token.strip_prefix(PREFIX).ok_or(Refused::Invalid)?;
    let (signed, mac) = rest.rsplit_once('.').ok_or(Refused::Invalid)?;
    let (kid, payload) = signed.split_once('.').ok_or(Refused::Invalid)?;
    let key = keys(kid).ok_or(Refused::Invalid)?;
    let mut given = [0u8; 32];
    match B64.decode_slice(mac, &mut given) {
        Ok(32) => {}
        _ => return Err(Refused::Invalid),
    }
    if !bool::from(key.mac(signed.as_bytes()).ct_eq(&given)) {
        return Err(Refused::Invalid);
    }
    let json = B64.decode(payload).map_err(|_| Refused::Invalid)?;
    let claims: Claims = serde_json::from_slice(&json).map_err(|_| Refused::Invalid)?;
    if claims.expires_ms <= now_ms {
        return Err(Refused::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            account: "acme".into(),
            device: "glass-1".into(),
            issued_ms: 1_000,
            expires_ms: 61_000,
            models: Some(vec!["qwen-plus".into()]),
            rpm: Some(5),
            tpm: None,
            account_rpm: None,
            account_tpm: None,
        }
    }

    #[test]
    fn signed_tokens_verify_with_either_live_key_until_they_expire() {
        let (old, new) = (
            SigningKey::new("k1", b"0123456789abcdef".to_vec()),
            SigningKey::new("k2", b"fedcba9876543210".to_vec()),
        );
        let live = |kid: &str| [&old, &new].into_iter().find(|k| k.id == kid);
        for key in [&old, &new] {
            let token = sign(key, &claims());
            assert_eq!(verify(&token, live, 2_000), Ok(claims()));
            assert_eq!(verify(&token, live, 61_000), Err(Refused::Expired));
        }
        // A key no longer live: its tokens stop working.
        let only_new = |kid: &str| (kid == "k2").then_some(&new);
        assert_eq!(
            verify(&sign(&old, &claims()), only_new, 2_000),
            Err(Refused::Invalid)
        );
    }

    #[test]
    fn tampered_or_malformed_tokens_are_refused() {
        let key = SigningKey::new("k1", b"0123456789abcdef".to_vec());
        let live = |kid: &str| (kid == "k1").then_some(&key);
        let token = sign(&key, &claims());
        let mut other = claims();
        other.account = "other".into();
        let forged_payload = B64.encode(serde_json::to_vec(&other).unwrap_or_default());
        let parts: Vec<&str> = token.split('.').collect();
        let forged = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
        for bad in [
            forged.as_str(),
            "dgt_k1.x.y",
            "dgt_",
            "sk-dg-abc",
            &token[..token.len() - 2],
        ] {
            assert_eq!(verify(bad, live, 2_000), Err(Refused::Invalid), "{bad}");
        }
        assert!(SigningKey::parse("k1:short").is_none());
        assert!(SigningKey::parse("k 1:0123456789abcdef").is_none());
        assert!(SigningKey::parse("k1:0123456789abcdef").is_some());
    }
}
