//! Server-side sessions (`crate::session`): one row per (owner, id), its messages as JSON.

use sqlx::Row;

use super::{Store, StoreError};

#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    pub owner: String,
    pub id: String,
    /// JSON array of the stored entries.
    pub messages: String,
    pub tokens: i64,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Store {
    /// The session, if it was used at `fresh_since` or later (an older one has expired).
    pub async fn session(
        &self,
        owner: &str,
        id: &str,
        fresh_since: i64,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT owner, id, messages, tokens, version, created_at, updated_at FROM sessions \
             WHERE owner = $1 AND id = $2 AND updated_at >= $3",
        )
        .bind(owner)
        .bind(id)
        .bind(fresh_since)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(SessionRecord {
            owner: row.try_get("owner")?,
            id: row.try_get("id")?,
            messages: row.try_get("messages")?,
            tokens: row.try_get("tokens")?,
            version: row.try_get("version")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        }))
    }

    /// Live sessions of `owner`; expired ones (of every owner) are deleted on the way.
    pub async fn count_sessions(&self, owner: &str, fresh_since: i64) -> Result<u64, StoreError> {
        sqlx::query("DELETE FROM sessions WHERE updated_at < $1")
            .bind(fresh_since)
            .execute(&self.pool)
            .await?;
        let row = sqlx::query("SELECT COUNT(*) AS n FROM sessions WHERE owner = $1")
            .bind(owner)
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(row.try_get::<i64, _>("n")?).unwrap_or(0))
    }

    /// Stores a turn: a new session when `version` is 0, else only over that version. False
    /// when another turn got there first. A row under the same id last used before
    /// `fresh_since` has expired and is replaced.
    pub async fn put_session(
        &self,
        record: &SessionRecord,
        fresh_since: i64,
    ) -> Result<bool, StoreError> {
        let bytes = i64::try_from(record.messages.len()).unwrap_or(i64::MAX);
        let done = if record.version == 0 {
            // An expired row under the same id is gone for good: the session starts anew.
            sqlx::query("DELETE FROM sessions WHERE owner = $1 AND id = $2 AND updated_at < $3")
                .bind(&record.owner)
                .bind(&record.id)
                .bind(fresh_since)
                .execute(&self.pool)
                .await?;
            sqlx::query(
                "INSERT INTO sessions (owner, id, messages, tokens, bytes, version, created_at, \
                 updated_at) VALUES ($1, $2, $3, $4, $5, 1, $6, $7) ON CONFLICT DO NOTHING",
            )
            .bind(&record.owner)
            .bind(&record.id)
            .bind(&record.messages)
            .bind(record.tokens)
            .bind(bytes)
            .bind(record.created_at)
            .bind(record.updated_at)
            .execute(&self.pool)
            .await?
        } else {
            sqlx::query(
                "UPDATE sessions SET messages = $1, tokens = $2, bytes = $3, version = version + 1, \
                 updated_at = $4 WHERE owner = $5 AND id = $6 AND version = $7",
            )
            .bind(&record.messages)
            .bind(record.tokens)
            .bind(bytes)
            .bind(record.updated_at)
            .bind(&record.owner)
            .bind(&record.id)
            .bind(record.version)
            .execute(&self.pool)
            .await?
        };
        Ok(done.rows_affected() == 1)
    }

    /// Deletes a session; false when there was none.
    pub async fn delete_session(&self, owner: &str, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM sessions WHERE owner = $1 AND id = $2")
            .bind(owner)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
