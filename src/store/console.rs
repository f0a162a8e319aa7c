//! What the console asks the store beyond the admin API's basics: its settings (the gateway's
//! own admin token hash), time-bucketed usage for charts, the day × key × model table, the last
//! use of each key, and every owner's files. The SQL is the same on SQLite and PostgreSQL:
//! integer division of BIGINT milliseconds buckets the time axis on both.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;

use super::files::{COLUMNS as FILE_COLUMNS, file_of};
use super::usage::{bind_all, u, where_of};
use super::{FileRecord, Store, StoreError, UsageFilter, now_ms};

/// The width of a chart's time bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Minute,
    Hour,
    Day,
}

impl Bucket {
    pub fn parse(text: &str) -> Option<Bucket> {
        Some(match text {
            "minute" => Bucket::Minute,
            "hour" => Bucket::Hour,
            "day" => Bucket::Day,
            _ => return None,
        })
    }

    pub fn ms(self) -> i64 {
        match self {
            Bucket::Minute => 60_000,
            Bucket::Hour => 3_600_000,
            Bucket::Day => 86_400_000,
        }
    }
}

/// One bucket of a usage chart.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SeriesPoint {
    /// Start of the bucket, Unix milliseconds (UTC).
    pub t: i64,
    pub requests: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cost: f64,
    pub latency_p50_ms: Option<u64>,
    pub latency_p99_ms: Option<u64>,
    pub ttft_p50_ms: Option<u64>,
    pub ttft_p99_ms: Option<u64>,
}

/// One row of the usage table: a day, a key and a model, every token kind and the cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageRow {
    pub day: String,
    pub key: String,
    pub model: String,
    pub requests: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    pub reasoning_tokens: u64,
    pub image_tokens: u64,
    pub audio_tokens: u64,
    pub total_tokens: u64,
    pub cost: f64,
}

/// Records read for latency percentiles at most: a chart of a busy week stays bounded.
const LATENCY_ROWS: u32 = 200_000;

fn sum(column: &str) -> String {
    format!("CAST(COALESCE(SUM({column}), 0) AS BIGINT) AS {column}")
}

/// The `q`-quantile (0..=1) of sorted values, nearest rank.
fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

impl Store {
    pub async fn setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT value FROM console_settings WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("value")).transpose()?)
    }

    pub async fn set_setting(&self, name: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO console_settings (name, value, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(value)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn delete_setting(&self, name: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM console_settings WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Keys in the store, revoked ones included.
    pub async fn key_count(&self) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM api_keys")
            .fetch_one(&self.pool)
            .await?;
        Ok(u(row.try_get("n")?))
    }

    /// When each key name last made a request (Unix milliseconds).
    pub async fn last_used(&self) -> Result<BTreeMap<String, i64>, StoreError> {
        let rows =
            sqlx::query("SELECT key_name, MAX(at) AS last FROM usage_records GROUP BY key_name")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("key_name")?, r.try_get("last")?)))
            .collect()
    }

    /// Usage per time bucket: sums in SQL, latency percentiles from the records' durations.
    pub async fn usage_series(
        &self,
        filter: &UsageFilter,
        bucket: Bucket,
    ) -> Result<Vec<SeriesPoint>, StoreError> {
        let width = bucket.ms();
        let (clause, values) = where_of(filter);
        let sql = format!(
            "SELECT (at / {width}) * {width} AS t, COUNT(*) AS requests, \
             CAST(COALESCE(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), 0) AS BIGINT) AS errors, \
             {}, {}, {}, CAST(COALESCE(SUM(cost), 0) AS DOUBLE PRECISION) AS cost \
             FROM usage_records{clause} GROUP BY (at / {width}) ORDER BY t",
            sum("prompt_tokens"),
            sum("completion_tokens"),
            sum("total_tokens"),
        );
        let rows = bind_all(sqlx::query(&sql), values)
            .fetch_all(&self.pool)
            .await?;
        let mut points = rows
            .iter()
            .map(|r| {
                Ok(SeriesPoint {
                    t: r.try_get("t")?,
                    requests: u(r.try_get("requests")?),
                    errors: u(r.try_get("errors")?),
                    prompt_tokens: u(r.try_get("prompt_tokens")?),
                    completion_tokens: u(r.try_get("completion_tokens")?),
                    total_tokens: u(r.try_get("total_tokens")?),
                    cost: r.try_get("cost")?,
                    ..SeriesPoint::default()
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;

        let (clause, values) = where_of(filter);
        let sql = format!(
            "SELECT (at / {width}) * {width} AS t, duration_ms, ttft_ms FROM usage_records{clause} \
             ORDER BY at DESC LIMIT {LATENCY_ROWS}"
        );
        let rows = bind_all(sqlx::query(&sql), values)
            .fetch_all(&self.pool)
            .await?;
        let mut times: BTreeMap<i64, (Vec<u64>, Vec<u64>)> = BTreeMap::new();
        for r in &rows {
            let entry = times.entry(r.try_get("t")?).or_default();
            entry.0.push(u(r.try_get("duration_ms")?));
            if let Some(ttft) = r.try_get::<Option<i64>, _>("ttft_ms")? {
                entry.1.push(u(ttft));
            }
        }
        for point in &mut points {
            if let Some((durations, ttfts)) = times.get_mut(&point.t) {
                durations.sort_unstable();
                ttfts.sort_unstable();
                point.latency_p50_ms = quantile(durations, 0.5);
                point.latency_p99_ms = quantile(durations, 0.99);
                point.ttft_p50_ms = quantile(ttfts, 0.5);
                point.ttft_p99_ms = quantile(ttfts, 0.99);
            }
        }
        Ok(points)
    }

    /// Usage per day, key and model, newest day first.
    pub async fn usage_table(&self, filter: &UsageFilter) -> Result<Vec<UsageRow>, StoreError> {
        let (clause, values) = where_of(filter);
        let sums = [
            "prompt_tokens",
            "cached_tokens",
            "completion_tokens",
            "reasoning_tokens",
            "image_tokens",
            "audio_tokens",
            "total_tokens",
        ]
        .map(sum)
        .join(", ");
        let sql = format!(
            "SELECT day, key_name, model, COUNT(*) AS requests, \
             CAST(COALESCE(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), 0) AS BIGINT) AS errors, \
             {sums}, CAST(COALESCE(SUM(cost), 0) AS DOUBLE PRECISION) AS cost \
             FROM usage_records{clause} GROUP BY day, key_name, model \
             ORDER BY day DESC, key_name, model"
        );
        let rows = bind_all(sqlx::query(&sql), values)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(UsageRow {
                    day: r.try_get("day")?,
                    key: r.try_get("key_name")?,
                    model: r.try_get("model")?,
                    requests: u(r.try_get("requests")?),
                    errors: u(r.try_get("errors")?),
                    prompt_tokens: u(r.try_get("prompt_tokens")?),
                    cached_tokens: u(r.try_get("cached_tokens")?),
                    completion_tokens: u(r.try_get("completion_tokens")?),
                    reasoning_tokens: u(r.try_get("reasoning_tokens")?),
                    image_tokens: u(r.try_get("image_tokens")?),
                    audio_tokens: u(r.try_get("audio_tokens")?),
                    total_tokens: u(r.try_get("total_tokens")?),
                    cost: r.try_get("cost")?,
                })
            })
            .collect()
    }

    /// Every owner's files not deleted, newest first.
    pub async fn all_files(&self, limit: u32) -> Result<Vec<FileRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {FILE_COLUMNS} FROM files WHERE deleted_at IS NULL \
             ORDER BY created_at DESC, id LIMIT {}",
            limit.min(10_000)
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(file_of).collect()
    }

    /// The owner of a file not deleted, whoever it is.
    pub async fn file_owner(&self, id: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT owner FROM files WHERE id = $1 AND deleted_at IS NULL")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("owner")).transpose()?)
    }
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), Some(50));
        assert_eq!(quantile(&v, 0.99), Some(99));
        assert_eq!(quantile(&[7], 0.99), Some(7));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
