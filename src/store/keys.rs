//! Client keys in the store: only the SHA-256 of a key is kept, with its name and limits.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, StoreError, now_ms};

// Configured per key as well as stored with it: the type is the config's.
pub use crate::config::QuotaPeriod;

/// A key as the store holds it (never the key itself).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    /// The first characters of the key, to tell keys apart in listings.
    pub prefix: String,
    pub models: Option<Vec<String>>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub token_quota: Option<u64>,
    pub quota_period: QuotaPeriod,
    /// Unix milliseconds.
    pub expires_at: Option<i64>,
    pub disabled: bool,
    pub revoked_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// The account (docs/fleet.md) the key belongs to; it may mint device tokens for it.
    pub account: Option<String>,
}

/// Whether a key may be used, decided in one place for auth, the admin API, the console and
/// the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    Active,
    Revoked,
    Disabled,
    Expired,
}

impl KeyStatus {
    /// As the admin API, the console and `keys list` show it.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Revoked => "revoked",
            KeyStatus::Disabled => "disabled",
            KeyStatus::Expired => "expired",
        }
    }

    /// Why an unusable key is refused, as the client reads it ("the key ...").
    pub fn refusal(self) -> Option<&'static str> {
        match self {
            KeyStatus::Active => None,
            KeyStatus::Revoked => Some("was revoked"),
            KeyStatus::Disabled => Some("is disabled"),
            KeyStatus::Expired => Some("has expired"),
        }
    }
}

impl KeyRecord {
    /// Revocation wins over disabling, which wins over expiry.
    pub fn status_at(&self, now_ms: i64) -> KeyStatus {
        if self.revoked_at.is_some() {
            KeyStatus::Revoked
        } else if self.disabled {
            KeyStatus::Disabled
        } else if self.expires_at.is_some_and(|t| t <= now_ms) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }
}

/// What a new key is made with.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub name: String,
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub rpm: Option<u64>,
    #[serde(default)]
    pub tpm: Option<u64>,
    #[serde(default)]
    pub token_quota: Option<u64>,
    #[serde(default)]
    pub quota_period: QuotaPeriod,
    #[serde(default)]
    pub expires_at: Option<i64>,
    #[serde(default)]
    pub account: Option<String>,
}

/// Changes to a key; an absent field stays as it is, `null` clears it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyChanges {
    #[serde(default, with = "change")]
    pub models: Option<Option<Vec<String>>>,
    #[serde(default, with = "change")]
    pub rpm: Option<Option<u64>>,
    #[serde(default, with = "change")]
    pub tpm: Option<Option<u64>>,
    #[serde(default, with = "change")]
    pub token_quota: Option<Option<u64>>,
    #[serde(default)]
    pub quota_period: Option<QuotaPeriod>,
    #[serde(default, with = "change")]
    pub expires_at: Option<Option<i64>>,
    #[serde(default)]
    pub disabled: Option<bool>,
}

/// `Option<Option<T>>` from JSON: absent → `None`, `null` → `Some(None)`.
mod change {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Option::<T>::deserialize(deserializer).map(Some)
    }
}

const COLUMNS: &str = "id, name, key_prefix, models, rpm, tpm, token_quota, quota_period, \
    expires_at, disabled, revoked_at, created_at, updated_at, account";

fn to_i64(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

fn from_i64(v: Option<i64>) -> Option<u64> {
    v.map(|v| u64::try_from(v).unwrap_or(0))
}

fn key_of(row: &AnyRow) -> Result<KeyRecord, StoreError> {
    let models: Option<String> = row.try_get("models")?;
    let period: String = row.try_get("quota_period")?;
    Ok(KeyRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        prefix: row.try_get("key_prefix")?,
        models: models.map(|m| m.split(',').map(str::to_string).collect()),
        rpm: from_i64(row.try_get("rpm")?),
        tpm: from_i64(row.try_get("tpm")?),
        token_quota: from_i64(row.try_get("token_quota")?),
        quota_period: QuotaPeriod::parse(&period)
            .ok_or_else(|| StoreError::Corrupt(format!("quota_period `{period}`")))?,
        expires_at: row.try_get("expires_at")?,
        disabled: row.try_get::<i64, _>("disabled")? != 0,
        revoked_at: row.try_get("revoked_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        account: row.try_get("account")?,
    })
}

impl Store {
    /// Stores a key under its hash. The caller made the key and shows it once.
    pub async fn create_key(
        &self,
        new: &NewKey,
        key_hash: &str,
        prefix: &str,
    ) -> Result<KeyRecord, StoreError> {
        let now = now_ms();
        let id = format!("key_{}", uuid::Uuid::new_v4().simple());
        let result = sqlx::query(
            "INSERT INTO api_keys (id, name, key_hash, key_prefix, models, rpm, tpm, token_quota, \
             quota_period, expires_at, disabled, revoked_at, created_at, updated_at, account) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, NULL, $11, $11, $12)",
        )
        .bind(&id)
        .bind(&new.name)
        .bind(key_hash)
        .bind(prefix)
        .bind(new.models.as_ref().map(|m| m.join(",")))
        .bind(to_i64(new.rpm))
        .bind(to_i64(new.tpm))
        .bind(to_i64(new.token_quota))
        .bind(new.quota_period.as_str())
        .bind(new.expires_at)
        .bind(now)
        .bind(new.account.as_deref())
        .execute(&self.pool)
        .await;
        match result {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::NameTaken(new.name.clone()));
            }
            other => other?,
        };
        self.key(&id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("a new key vanished".into()))
    }

    /// Every key, revoked ones included, oldest first.
    pub async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM api_keys ORDER BY created_at, name"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_of).collect()
    }

    /// A key by id or, failing that, by name.
    pub async fn key(&self, id_or_name: &str) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM api_keys WHERE id = $1 OR name = $1 \
             ORDER BY CASE WHEN id = $1 THEN 0 ELSE 1 END LIMIT 1"
        ))
        .bind(id_or_name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(key_of).transpose()
    }

    /// The key whose SHA-256 (hex) is `key_hash`.
    pub async fn key_by_hash(&self, key_hash: &str) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM api_keys WHERE key_hash = $1"
        ))
        .bind(key_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(key_of).transpose()
    }

    /// Applies `changes`; `None` when there is no such key.
    pub async fn update_key(
        &self,
        id_or_name: &str,
        changes: &KeyChanges,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let Some(mut key) = self.key(id_or_name).await? else {
            return Ok(None);
        };
        if let Some(models) = &changes.models {
            key.models = models.clone();
        }
        if let Some(v) = changes.rpm {
            key.rpm = v;
        }
        if let Some(v) = changes.tpm {
            key.tpm = v;
        }
        if let Some(v) = changes.token_quota {
            key.token_quota = v;
        }
        if let Some(v) = changes.quota_period {
            key.quota_period = v;
        }
        if let Some(v) = changes.expires_at {
            key.expires_at = v;
        }
        if let Some(v) = changes.disabled {
            key.disabled = v;
        }
        sqlx::query(
            "UPDATE api_keys SET models = $2, rpm = $3, tpm = $4, token_quota = $5, \
             quota_period = $6, expires_at = $7, disabled = $8, updated_at = $9 WHERE id = $1",
        )
        .bind(&key.id)
        .bind(key.models.as_ref().map(|m| m.join(",")))
        .bind(to_i64(key.rpm))
        .bind(to_i64(key.tpm))
        .bind(to_i64(key.token_quota))
        .bind(key.quota_period.as_str())
        .bind(key.expires_at)
        .bind(i64::from(key.disabled))
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        self.key(&key.id).await
    }

    /// Marks a key revoked (kept for the ledger's sake); `None` when there is no such key.
    pub async fn revoke_key(&self, id_or_name: &str) -> Result<Option<KeyRecord>, StoreError> {
        let Some(key) = self.key(id_or_name).await? else {
            return Ok(None);
        };
        let now = now_ms();
        sqlx::query(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2), updated_at = $2 \
             WHERE id = $1",
        )
        .bind(&key.id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        self.key(&key.id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_wins_over_disabling_which_wins_over_expiry() {
        let mut key = KeyRecord {
            id: "k".into(),
            name: "glass".into(),
            prefix: "sk-".into(),
            models: None,
            rpm: None,
            tpm: None,
            token_quota: None,
            quota_period: QuotaPeriod::default(),
            expires_at: Some(100),
            disabled: false,
            revoked_at: None,
            created_at: 0,
            updated_at: 0,
            account: None,
        };
        assert_eq!(key.status_at(99), KeyStatus::Active);
        assert_eq!(key.status_at(100), KeyStatus::Expired);
        key.disabled = true;
        assert_eq!(key.status_at(100), KeyStatus::Disabled);
        key.revoked_at = Some(1);
        assert_eq!(key.status_at(100).refusal(), Some("was revoked"));
    }
}
