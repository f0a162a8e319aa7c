//! The usage ledger in the store: batched inserts, totals and groupings for the admin API.

use std::fmt::Write as _;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Backend, Store, StoreError, day_of};
use crate::usage_record::UsageRecord;

/// Which records a question is about; every field narrows it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageFilter {
    pub key: Option<String>,
    pub model: Option<String>,
    pub upstream: Option<String>,
    /// Unix milliseconds, inclusive.
    pub from: Option<i64>,
    /// Unix milliseconds, exclusive.
    pub to: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UsageTotals {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    pub estimated_requests: u64,
    pub cost: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageGroup {
    /// The key name, model, upstream or day this row sums up.
    pub group: String,
    #[serde(flatten)]
    pub totals: UsageTotals,
}

/// Totals of one device of one account (`-` for requests without one).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceUsage {
    pub account: String,
    pub device: String,
    #[serde(flatten)]
    pub totals: UsageTotals,
}

const COLUMNS: &str = "id, at, day, request_id, key_id, key_name, model, upstream, route, \
    dialect, stream, status, error_code, prompt_tokens, completion_tokens, total_tokens, \
    cached_tokens, reasoning_tokens, image_tokens, audio_tokens, estimated, ttft_ms, duration_ms, \
    bytes_in, bytes_out, images, image_original_bytes, image_sent_bytes, image_tokens_before, \
    image_tokens_after, cost, cache_hit, cache_prompt_tokens, cache_completion_tokens, account, \
    device";
const PER_ROW: usize = 36;
/// Rows per INSERT statement: a power of two up to this many, so a batch of any size is made
/// of at most seven statement shapes, each prepared once per connection and then reused from
/// sqlx's statement cache (a batch of 53 rows is 32 + 16 + 4 + 1). One statement is one trip
/// to the database (for SQLite, one hand-off to its worker thread), within both databases'
/// parameter limits.
const MAX_ROWS_PER_STATEMENT: usize = 64;
const SHAPES: usize = MAX_ROWS_PER_STATEMENT.trailing_zeros() as usize + 1;

/// The INSERT for `rows` rows (a power of two up to the maximum), built once per backend.
fn insert_sql_cached(rows: usize, backend: Backend) -> &'static str {
    static SQLITE: [OnceLock<String>; SHAPES] = [const { OnceLock::new() }; SHAPES];
    static POSTGRES: [OnceLock<String>; SHAPES] = [const { OnceLock::new() }; SHAPES];
    let cells = match backend {
        Backend::Sqlite => &SQLITE,
        Backend::Postgres => &POSTGRES,
    };
    cells[rows.trailing_zeros() as usize].get_or_init(|| insert_sql(rows, backend))
}

/// The rows of the next statement: the largest power of two up to the maximum that `left`
/// rows hold.
fn statement_rows(left: usize) -> usize {
    let capped = left.min(MAX_ROWS_PER_STATEMENT);
    1 << (usize::BITS - 1 - capped.leading_zeros())
}

/// `INSERT ... VALUES ($1, ...), ($37, ...), ...` for `rows` rows; SQLite gets anonymous `?`
/// placeholders, which it binds in order (its lookup of numbered names is linear in their
/// count, so a long numbered statement binds in quadratic time).
fn insert_sql(rows: usize, backend: Backend) -> String {
    let mut sql = format!("INSERT INTO usage_records ({COLUMNS}) VALUES ");
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for col in 0..PER_ROW {
            if col > 0 {
                sql.push_str(", ");
            }
            match backend {
                Backend::Sqlite => sql.push('?'),
                Backend::Postgres => {
                    let _ = write!(sql, "${}", row * PER_ROW + col + 1);
                }
            }
        }
        sql.push(')');
    }
    sql.push_str(" ON CONFLICT (id) DO NOTHING");
    sql
}

const SUMS: &str = "COUNT(*) AS requests, \
    CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT) AS prompt_tokens, \
    CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT) AS completion_tokens, \
    CAST(COALESCE(SUM(total_tokens), 0) AS BIGINT) AS total_tokens, \
    CAST(COALESCE(SUM(cached_tokens), 0) AS BIGINT) AS cached_tokens, \
    CAST(COALESCE(SUM(reasoning_tokens), 0) AS BIGINT) AS reasoning_tokens, \
    CAST(COALESCE(SUM(estimated), 0) AS BIGINT) AS estimated_requests, \
    CAST(COALESCE(SUM(cost), 0) AS DOUBLE PRECISION) AS cost";

fn n(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn totals_of(row: &AnyRow) -> Result<UsageTotals, StoreError> {
    Ok(UsageTotals {
        requests: u(row.try_get("requests")?),
        prompt_tokens: u(row.try_get("prompt_tokens")?),
        completion_tokens: u(row.try_get("completion_tokens")?),
        total_tokens: u(row.try_get("total_tokens")?),
        cached_tokens: u(row.try_get("cached_tokens")?),
        reasoning_tokens: u(row.try_get("reasoning_tokens")?),
        estimated_requests: u(row.try_get("estimated_requests")?),
        cost: row.try_get("cost")?,
    })
}

/// The WHERE clause of a filter, with its values in order.
pub(super) fn where_of(filter: &UsageFilter) -> (String, Vec<Value>) {
    let mut clauses = Vec::new();
    let mut values = Vec::new();
    let mut add = |clause: &str, value: Value| {
        values.push(value);
        clauses.push(clause.replace('?', &format!("${}", values.len())));
    };
    if let Some(key) = &filter.key {
        add("(key_name = ? OR key_id = ?)", Value::Text(key.clone()));
    }
    if let Some(model) = &filter.model {
        add("model = ?", Value::Text(model.clone()));
    }
    if let Some(upstream) = &filter.upstream {
        add("upstream = ?", Value::Text(upstream.clone()));
    }
    if let Some(from) = filter.from {
        add("at >= ?", Value::Int(from));
    }
    if let Some(to) = filter.to {
        add("at < ?", Value::Int(to));
    }
    if clauses.is_empty() {
        (String::new(), values)
    } else {
        (format!(" WHERE {}", clauses.join(" AND ")), values)
    }
}

pub(super) enum Value {
    Text(String),
    Int(i64),
}

pub(super) fn bind_all<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    values: Vec<Value>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for value in values {
        query = match value {
            Value::Text(t) => query.bind(t),
            Value::Int(i) => query.bind(i),
        };
    }
    query
}

/// The columns a grouping is by.
pub fn group_column(by: &str) -> Option<&'static str> {
    Some(match by {
        "key" => "key_name",
        "model" => "model",
        "upstream" => "upstream",
        "day" => "day",
        "account" => "account",
        "device" => "device",
        _ => return None,
    })
}

impl Store {
    /// Writes records in one transaction; a record already there (same id) is skipped.
    pub async fn insert_usage(&self, records: &[UsageRecord]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut left = records;
        while !left.is_empty() {
            let (chunk, rest) = left.split_at(statement_rows(left.len()));
            left = rest;
            let mut query = sqlx::query(insert_sql_cached(chunk.len(), self.backend));
            for r in chunk {
                query = query
                    .bind(&r.id)
                    .bind(r.at)
                    .bind(day_of(r.at))
                    .bind(&r.request_id)
                    .bind(r.key_id.as_deref())
                    .bind(&r.key_name)
                    .bind(&r.model)
                    .bind(&r.upstream)
                    .bind(&r.route)
                    .bind(&r.dialect)
                    .bind(i64::from(r.stream))
                    .bind(i64::from(r.status))
                    .bind(r.error_code.as_deref())
                    .bind(n(r.prompt_tokens))
                    .bind(n(r.completion_tokens))
                    .bind(n(r.total_tokens))
                    .bind(r.cached_tokens.map(n))
                    .bind(r.reasoning_tokens.map(n))
                    .bind(r.image_tokens.map(n))
                    .bind(r.audio_tokens.map(n))
                    .bind(i64::from(r.estimated))
                    .bind(r.ttft_ms.map(n))
                    .bind(n(r.duration_ms))
                    .bind(n(r.bytes_in))
                    .bind(n(r.bytes_out))
                    .bind(n(r.images))
                    .bind(n(r.image_original_bytes))
                    .bind(n(r.image_sent_bytes))
                    .bind(n(r.image_tokens_before))
                    .bind(n(r.image_tokens_after))
                    .bind(r.cost)
                    .bind(i64::from(r.cache_hit))
                    .bind(r.cache_prompt_tokens.map(n))
                    .bind(r.cache_completion_tokens.map(n))
                    .bind(r.account.as_deref())
                    .bind(r.device.as_deref());
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn usage_totals(&self, filter: &UsageFilter) -> Result<UsageTotals, StoreError> {
        let (clause, values) = where_of(filter);
        let sql = format!("SELECT {SUMS} FROM usage_records{clause}");
        let row = bind_all(sqlx::query(&sql), values)
            .fetch_one(&self.pool)
            .await?;
        totals_of(&row)
    }

    /// Totals per key name, model, upstream or day (`column` from [`group_column`]).
    pub async fn usage_grouped(
        &self,
        column: &'static str,
        filter: &UsageFilter,
    ) -> Result<Vec<UsageGroup>, StoreError> {
        let (clause, values) = where_of(filter);
        let sql = format!(
            "SELECT COALESCE({column}, '-') AS grp, {SUMS} FROM usage_records{clause} \
             GROUP BY {column} ORDER BY {column}"
        );
        let rows = bind_all(sqlx::query(&sql), values)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(UsageGroup {
                    group: row.try_get("grp")?,
                    totals: totals_of(row)?,
                })
            })
            .collect()
    }

    /// Totals per (account, device), accounts and devices in order.
    pub async fn usage_by_device(
        &self,
        filter: &UsageFilter,
    ) -> Result<Vec<DeviceUsage>, StoreError> {
        let (clause, values) = where_of(filter);
        let sql = format!(
            "SELECT COALESCE(account, '-') AS acct, COALESCE(device, '-') AS dev, {SUMS} \
             FROM usage_records{clause} GROUP BY account, device ORDER BY account, device"
        );
        let rows = bind_all(sqlx::query(&sql), values)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(DeviceUsage {
                    account: row.try_get("acct")?,
                    device: row.try_get("dev")?,
                    totals: totals_of(row)?,
                })
            })
            .collect()
    }

    /// The newest records first, at most `limit`.
    pub async fn usage_records(
        &self,
        filter: &UsageFilter,
        limit: u32,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        let (clause, values) = where_of(filter);
        let sql = format!(
            "SELECT * FROM usage_records{clause} ORDER BY at DESC, id LIMIT {}",
            limit.min(10_000)
        );
        let rows = bind_all(sqlx::query(&sql), values)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(record_of).collect()
    }

    /// Tokens a key used since `since_ms`: what its quota starts from.
    pub async fn tokens_since(&self, key_name: &str, since_ms: i64) -> Result<u64, StoreError> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(total_tokens), 0) AS BIGINT) AS used FROM usage_records \
             WHERE key_name = $1 AND at >= $2",
        )
        .bind(key_name)
        .bind(since_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok(u(row.try_get("used")?))
    }
}

fn record_of(row: &AnyRow) -> Result<UsageRecord, StoreError> {
    let opt = |name: &str| -> Result<Option<u64>, StoreError> {
        Ok(row.try_get::<Option<i64>, _>(name)?.map(u))
    };
    Ok(UsageRecord {
        id: row.try_get("id")?,
        at: row.try_get("at")?,
        request_id: row.try_get("request_id")?,
        key_id: row.try_get("key_id")?,
        key_name: row.try_get("key_name")?,
        model: row.try_get("model")?,
        upstream: row.try_get("upstream")?,
        route: row.try_get("route")?,
        dialect: row.try_get("dialect")?,
        stream: row.try_get::<i64, _>("stream")? != 0,
        status: u16::try_from(row.try_get::<i64, _>("status")?).unwrap_or(0),
        error_code: row.try_get("error_code")?,
        prompt_tokens: u(row.try_get("prompt_tokens")?),
        completion_tokens: u(row.try_get("completion_tokens")?),
        total_tokens: u(row.try_get("total_tokens")?),
        cached_tokens: opt("cached_tokens")?,
        reasoning_tokens: opt("reasoning_tokens")?,
        image_tokens: opt("image_tokens")?,
        audio_tokens: opt("audio_tokens")?,
        estimated: row.try_get::<i64, _>("estimated")? != 0,
        ttft_ms: opt("ttft_ms")?,
        duration_ms: u(row.try_get("duration_ms")?),
        bytes_in: u(row.try_get("bytes_in")?),
        bytes_out: u(row.try_get("bytes_out")?),
        images: u(row.try_get("images")?),
        image_original_bytes: u(row.try_get("image_original_bytes")?),
        image_sent_bytes: u(row.try_get("image_sent_bytes")?),
        image_tokens_before: u(row.try_get("image_tokens_before")?),
        image_tokens_after: u(row.try_get("image_tokens_after")?),
        cost: row.try_get("cost")?,
        cache_hit: row.try_get::<i64, _>("cache_hit")? != 0,
        cache_prompt_tokens: opt("cache_prompt_tokens")?,
        cache_completion_tokens: opt("cache_completion_tokens")?,
        account: row.try_get("account")?,
        device: row.try_get("device")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_cut_into_few_statement_shapes() {
        let cut = |mut left: usize| {
            let mut parts = Vec::new();
            while left > 0 {
                let rows = statement_rows(left);
                parts.push(rows);
                left -= rows;
            }
            parts
        };
        assert_eq!(cut(53), [32, 16, 4, 1]);
        assert_eq!(cut(64), [64]);
        assert_eq!(cut(130), [64, 64, 2]);
        let mut shapes: Vec<usize> = (1..=1000).flat_map(cut).collect();
        shapes.sort_unstable();
        shapes.dedup();
        assert_eq!(shapes, [1, 2, 4, 8, 16, 32, 64]);
        for rows in shapes {
            let sql = insert_sql_cached(rows, Backend::Sqlite);
            assert_eq!(sql.matches('?').count(), rows * PER_ROW);
            assert_eq!(
                insert_sql_cached(rows, Backend::Postgres),
                insert_sql(rows, Backend::Postgres)
            );
        }
    }
}
