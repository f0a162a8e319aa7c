//! Batches and the answers to their lines (docs/batch.md). Statuses are OpenAI's words; times
//! are Unix milliseconds.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Default)]
pub struct BatchRecord {
    pub id: String,
    pub owner: String,
    pub key_hash: Option<String>,
    pub endpoint: String,
    pub input_file_id: String,
    pub completion_window: String,
    /// `gateway` or `upstream`.
    pub route: String,
    pub model: String,
    pub upstream: String,
    pub upstream_batch_id: Option<String>,
    pub status: String,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub total: i64,
    pub completed: i64,
    pub failed: i64,
    /// JSON text.
    pub metadata: Option<String>,
    /// JSON text.
    pub errors: Option<String>,
    pub usage_recorded: bool,
    pub created_at: i64,
    pub in_progress_at: Option<i64>,
    pub finalizing_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub expired_at: Option<i64>,
    pub cancelling_at: Option<i64>,
    pub cancelled_at: Option<i64>,
    pub expires_at: i64,
}

/// A line's answer, as the output (or error) file holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchResult {
    pub line: i64,
    pub custom_id: String,
    pub ok: bool,
    pub output: String,
}

const COLUMNS: &str = "id, owner, key_hash, endpoint, input_file_id, completion_window, route, \
    model, upstream, upstream_batch_id, status, output_file_id, error_file_id, total, completed, \
    failed, metadata, errors, usage_recorded, created_at, in_progress_at, finalizing_at, \
    completed_at, failed_at, expired_at, cancelling_at, cancelled_at, expires_at";

fn batch_of(row: &AnyRow) -> Result<BatchRecord, StoreError> {
    Ok(BatchRecord {
        id: row.try_get("id")?,
        owner: row.try_get("owner")?,
        key_hash: row.try_get("key_hash")?,
        endpoint: row.try_get("endpoint")?,
        input_file_id: row.try_get("input_file_id")?,
        completion_window: row.try_get("completion_window")?,
        route: row.try_get("route")?,
        model: row.try_get("model")?,
        upstream: row.try_get("upstream")?,
        upstream_batch_id: row.try_get("upstream_batch_id")?,
        status: row.try_get("status")?,
        output_file_id: row.try_get("output_file_id")?,
        error_file_id: row.try_get("error_file_id")?,
        total: row.try_get("total")?,
        completed: row.try_get("completed")?,
        failed: row.try_get("failed")?,
        metadata: row.try_get("metadata")?,
        errors: row.try_get("errors")?,
        usage_recorded: row.try_get::<i64, _>("usage_recorded")? != 0,
        created_at: row.try_get("created_at")?,
        in_progress_at: row.try_get("in_progress_at")?,
        finalizing_at: row.try_get("finalizing_at")?,
        completed_at: row.try_get("completed_at")?,
        failed_at: row.try_get("failed_at")?,
        expired_at: row.try_get("expired_at")?,
        cancelling_at: row.try_get("cancelling_at")?,
        cancelled_at: row.try_get("cancelled_at")?,
        expires_at: row.try_get("expires_at")?,
    })
}

/// Statuses a runner still has work in.
pub const ACTIVE: &str = "('validating', 'in_progress', 'finalizing', 'cancelling')";

impl Store {
    pub async fn add_batch(&self, b: &BatchRecord) -> Result<(), StoreError> {
        let placeholders: Vec<String> = (1..=28).map(|i| format!("${i}")).collect();
        sqlx::query(&format!(
            "INSERT INTO batches ({COLUMNS}) VALUES ({})",
            placeholders.join(", ")
        ))
        .bind(&b.id)
        .bind(&b.owner)
        .bind(&b.key_hash)
        .bind(&b.endpoint)
        .bind(&b.input_file_id)
        .bind(&b.completion_window)
        .bind(&b.route)
        .bind(&b.model)
        .bind(&b.upstream)
        .bind(&b.upstream_batch_id)
        .bind(&b.status)
        .bind(&b.output_file_id)
        .bind(&b.error_file_id)
        .bind(b.total)
        .bind(b.completed)
        .bind(b.failed)
        .bind(&b.metadata)
        .bind(&b.errors)
        .bind(i64::from(b.usage_recorded))
        .bind(b.created_at)
        .bind(b.in_progress_at)
        .bind(b.finalizing_at)
        .bind(b.completed_at)
        .bind(b.failed_at)
        .bind(b.expired_at)
        .bind(b.cancelling_at)
        .bind(b.cancelled_at)
        .bind(b.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Writes back what a runner changed (everything but the creation fields), if the batch
    /// is still in status `was`: a cancel that came in meanwhile is not overwritten. False when
    /// it was not.
    pub async fn update_batch(&self, b: &BatchRecord, was: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE batches SET upstream_batch_id = $2, status = $3, output_file_id = $4, \
             error_file_id = $5, total = $6, completed = $7, failed = $8, errors = $9, \
             usage_recorded = $10, in_progress_at = $11, finalizing_at = $12, \
             completed_at = $13, failed_at = $14, expired_at = $15, cancelling_at = $16, \
             cancelled_at = $17 WHERE id = $1 AND status = $18",
        )
        .bind(&b.id)
        .bind(&b.upstream_batch_id)
        .bind(&b.status)
        .bind(&b.output_file_id)
        .bind(&b.error_file_id)
        .bind(b.total)
        .bind(b.completed)
        .bind(b.failed)
        .bind(&b.errors)
        .bind(i64::from(b.usage_recorded))
        .bind(b.in_progress_at)
        .bind(b.finalizing_at)
        .bind(b.completed_at)
        .bind(b.failed_at)
        .bind(b.expired_at)
        .bind(b.cancelling_at)
        .bind(b.cancelled_at)
        .bind(was)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Asks for a cancel: only a batch still running moves to `cancelling`; true when it did.
    pub async fn cancel_batch(&self, id: &str, owner: &str, now: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE batches SET status = 'cancelling', cancelling_at = $3 \
             WHERE id = $1 AND owner = $2 AND status IN ('validating', 'in_progress')",
        )
        .bind(id)
        .bind(owner)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// A batch of `owner`'s; `None` as owner for the runner.
    pub async fn batch(
        &self,
        id: &str,
        owner: Option<&str>,
    ) -> Result<Option<BatchRecord>, StoreError> {
        // Two statements rather than `$2 IS NULL`: PostgreSQL cannot type an unused parameter.
        let row = match owner {
            Some(owner) => {
                sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM batches WHERE id = $1 AND owner = $2"
                ))
                .bind(id)
                .bind(owner)
                .fetch_optional(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!("SELECT {COLUMNS} FROM batches WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?
            }
        };
        row.as_ref().map(batch_of).transpose()
    }

    /// The owner's batches, newest first, those created before `after`'s when it is given.
    /// Ids are time-ordered (UUIDv7), so two made in one millisecond still list in order.
    pub async fn batches(
        &self,
        owner: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<BatchRecord>, StoreError> {
        let limit = limit.clamp(1, 100);
        let rows = match after {
            Some(after) => {
                sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM batches WHERE owner = $1 AND (created_at < \
                     (SELECT created_at FROM batches WHERE id = $2) OR (created_at = \
                     (SELECT created_at FROM batches WHERE id = $2) AND id < $2)) \
                     ORDER BY created_at DESC, id DESC LIMIT {limit}"
                ))
                .bind(owner)
                .bind(after)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM batches WHERE owner = $1 \
                     ORDER BY created_at DESC, id DESC LIMIT {limit}"
                ))
                .bind(owner)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(batch_of).collect()
    }

    /// How many of the owner's batches are still running.
    pub async fn active_batches(&self, owner: &str) -> Result<i64, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT COUNT(*) AS n FROM batches WHERE owner = $1 AND status IN {ACTIVE}"
        ))
        .bind(owner)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("n")?)
    }

    /// Ids of running batches that no other runner holds now.
    pub async fn runnable_batches(
        &self,
        runner: &str,
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT id FROM batches WHERE status IN {ACTIVE} \
             AND (lease_until IS NULL OR lease_until < $2 OR lease_owner = $1) \
             ORDER BY created_at LIMIT 100"
        ))
        .bind(runner)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
    }

    /// Takes (or renews) the lease on a batch; false when another runner holds it.
    pub async fn lease_batch(
        &self,
        id: &str,
        runner: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE batches SET lease_owner = $2, lease_until = $4 WHERE id = $1 \
             AND (lease_until IS NULL OR lease_until < $3 OR lease_owner = $2)",
        )
        .bind(id)
        .bind(runner)
        .bind(now)
        .bind(until)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Lets go of a lease, so a restarted gateway takes the batch up at once.
    pub async fn release_batch(&self, id: &str, runner: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE batches SET lease_owner = NULL, lease_until = NULL \
             WHERE id = $1 AND lease_owner = $2",
        )
        .bind(id)
        .bind(runner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Lets go of every lease a runner holds (it is stopping).
    pub async fn release_batches(&self, runner: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE batches SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1",
        )
        .bind(runner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Keeps a line's answer; the first one kept wins (a line run twice is answered once).
    pub async fn add_batch_result(
        &self,
        batch_id: &str,
        r: &BatchResult,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO batch_results (batch_id, line, custom_id, ok, output, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (batch_id, line) DO NOTHING",
        )
        .bind(batch_id)
        .bind(r.line)
        .bind(&r.custom_id)
        .bind(i64::from(r.ok))
        .bind(&r.output)
        .bind(super::now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The lines answered so far, in line order.
    pub async fn batch_results(&self, batch_id: &str) -> Result<Vec<BatchResult>, StoreError> {
        let rows = sqlx::query(
            "SELECT line, custom_id, ok, output FROM batch_results WHERE batch_id = $1 \
             ORDER BY line",
        )
        .bind(batch_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(BatchResult {
                    line: r.try_get("line")?,
                    custom_id: r.try_get("custom_id")?,
                    ok: r.try_get::<i64, _>("ok")? != 0,
                    output: r.try_get("output")?,
                })
            })
            .collect()
    }

    /// Answered lines: (succeeded, failed).
    pub async fn batch_counts(&self, batch_id: &str) -> Result<(i64, i64), StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(CASE WHEN ok = 1 THEN 1 END) AS good, COUNT(*) AS n \
             FROM batch_results WHERE batch_id = $1",
        )
        .bind(batch_id)
        .fetch_one(&self.pool)
        .await?;
        let good: i64 = row.try_get("good")?;
        let n: i64 = row.try_get("n")?;
        Ok((good, n - good))
    }
}
