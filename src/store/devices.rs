//! Device token revocations: one row per revoked device (or whole account, device `''`).

use sqlx::Row;

use super::{Store, StoreError, now_ms};

impl Store {
    /// Every revocation: `(account, device, revoked_at)`.
    pub async fn device_revocations(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT account, device_id, revoked_at FROM device_revocations")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("account")?,
                    r.try_get("device_id")?,
                    r.try_get("revoked_at")?,
                ))
            })
            .collect()
    }

    /// Refuses the tokens of a device (or, with `device` empty, of the account) issued up to
    /// now; returns the time written.
    pub async fn revoke_devices(&self, account: &str, device: &str) -> Result<i64, StoreError> {
        let at = now_ms();
        sqlx::query(
            "INSERT INTO device_revocations (account, device_id, revoked_at) VALUES ($1, $2, $3) \
             ON CONFLICT (account, device_id) DO UPDATE SET revoked_at = excluded.revoked_at",
        )
        .bind(account)
        .bind(device)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(at)
    }

    /// Writes a setting unless it exists (the first of several gateways starting together wins).
    pub async fn insert_setting_once(&self, name: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO console_settings (name, value, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(value)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
