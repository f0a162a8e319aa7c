//! File metadata in the store, and the ids upstreams gave the files the gateway sent them.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, StoreError, now_ms};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileRecord {
    pub id: String,
    pub owner: String,
    pub filename: String,
    pub purpose: String,
    pub bytes: u64,
    pub sha256: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// What text extraction gave for a file.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredText {
    Text(String),
    /// The refusal, as the files module wrote it (JSON).
    Refused(String),
}

pub(super) fn file_of(row: &AnyRow) -> Result<FileRecord, StoreError> {
    Ok(FileRecord {
        id: row.try_get("id")?,
        owner: row.try_get("owner")?,
        filename: row.try_get("filename")?,
        purpose: row.try_get("purpose")?,
        bytes: u64::try_from(row.try_get::<i64, _>("bytes")?).unwrap_or(0),
        sha256: row.try_get("sha256")?,
        created_at: row.try_get("created_at")?,
    })
}

pub(super) const COLUMNS: &str = "id, owner, filename, purpose, bytes, sha256, created_at";

impl Store {
    pub async fn add_file(&self, file: &FileRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO files (id, owner, filename, purpose, bytes, sha256, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&file.id)
        .bind(&file.owner)
        .bind(&file.filename)
        .bind(&file.purpose)
        .bind(i64::try_from(file.bytes).unwrap_or(i64::MAX))
        .bind(&file.sha256)
        .bind(file.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A file that `owner` uploaded and has not deleted.
    pub async fn file(&self, id: &str, owner: &str) -> Result<Option<FileRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM files WHERE id = $1 AND owner = $2 AND deleted_at IS NULL"
        ))
        .bind(id)
        .bind(owner)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(file_of).transpose()
    }

    /// The owner's files, newest first.
    pub async fn files(&self, owner: &str, limit: u32) -> Result<Vec<FileRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM files WHERE owner = $1 AND deleted_at IS NULL \
             ORDER BY created_at DESC, id LIMIT {}",
            limit.min(10_000)
        ))
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(file_of).collect()
    }

    /// Marks a file deleted; false when the owner has no such file.
    pub async fn delete_file(&self, id: &str, owner: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE files SET deleted_at = $3 WHERE id = $1 AND owner = $2 AND deleted_at IS NULL",
        )
        .bind(id)
        .bind(owner)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        // The text goes with the file (a refusal too: nothing is left to refuse).
        sqlx::query("DELETE FROM file_texts WHERE file_id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The text (or refusal) kept for a file, if it was extracted.
    pub async fn file_text(&self, file_id: &str) -> Result<Option<StoredText>, StoreError> {
        let row = sqlx::query("SELECT text, refusal FROM file_texts WHERE file_id = $1")
            .bind(file_id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let text: Option<String> = row.try_get("text")?;
        let refusal: Option<String> = row.try_get("refusal")?;
        Ok(match (text, refusal) {
            (Some(text), _) => Some(StoredText::Text(text)),
            (None, Some(refusal)) => Some(StoredText::Refused(refusal)),
            (None, None) => None,
        })
    }

    /// Keeps a file's text or refusal; the first one kept wins.
    pub async fn set_file_text(&self, file_id: &str, kept: &StoredText) -> Result<(), StoreError> {
        let (text, refusal) = match kept {
            StoredText::Text(text) => (Some(text.as_str()), None),
            StoredText::Refused(refusal) => (None, Some(refusal.as_str())),
        };
        sqlx::query(
            "INSERT INTO file_texts (file_id, text, refusal, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (file_id) DO NOTHING",
        )
        .bind(file_id)
        .bind(text)
        .bind(refusal)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn upstream_file(
        &self,
        file_id: &str,
        upstream: &str,
    ) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT upstream_file_id FROM upstream_files WHERE file_id = $1 AND upstream = $2",
        )
        .bind(file_id)
        .bind(upstream)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get("upstream_file_id")).transpose()?)
    }

    /// Remembers an upstream's id for a file; the first one kept wins (two gateways uploading
    /// at once leave one mapping).
    pub async fn set_upstream_file(
        &self,
        file_id: &str,
        upstream: &str,
        upstream_file_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO upstream_files (file_id, upstream, upstream_file_id, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (file_id, upstream) DO NOTHING",
        )
        .bind(file_id)
        .bind(upstream)
        .bind(upstream_file_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every upstream copy of a file, to delete them with it.
    pub async fn upstream_files_of(
        &self,
        file_id: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let rows =
            sqlx::query("SELECT upstream, upstream_file_id FROM upstream_files WHERE file_id = $1")
                .bind(file_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("upstream")?, r.try_get("upstream_file_id")?)))
            .collect()
    }
}
