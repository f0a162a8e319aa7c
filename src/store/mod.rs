//! The store: client keys and the usage ledger, through `sqlx`'s `Any` driver on a SQLite file
//! (WAL, the embedded default) or PostgreSQL (several gateways sharing state). One schema and
//! one set of queries serve both: the SQL sticks to types and syntax both understand.

mod batches;
mod console;
mod devices;
mod files;
mod keys;
mod sessions;
mod usage;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions};

pub use batches::{BatchRecord, BatchResult};
pub use console::{Bucket, SeriesPoint, UsageRow};
pub use files::{FileRecord, StoredText};
pub use keys::{KeyChanges, KeyRecord, KeyStatus, NewKey, QuotaPeriod};
pub use sessions::SessionRecord;
pub use usage::{DeviceUsage, UsageFilter, UsageGroup, UsageTotals, group_column};

/// Embedded migrations, applied at start (PostgreSQL takes an advisory lock, so gateways
/// starting together do not race).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Db(#[from] sqlx::Error),
    #[error("store migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("a key named `{0}` exists already")]
    NameTaken(String),
    #[error("the store holds a value this gateway cannot read: {0}")]
    Corrupt(String),
}

/// Which database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Connects (a SQLite file is created when missing) and applies the migrations.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                let glue = if url.contains('?') { '&' } else { '?' };
                format!("{url}{glue}mode=rwc")
            }
            _ => url.to_string(),
        };
        let options = AnyConnectOptions::from_str(&url)?.disable_statement_logging();
        // In WAL mode, `synchronous = NORMAL` syncs at checkpoints rather than at every
        // commit: a crash of the gateway loses nothing; a power cut may lose the last commits.
        let pragmas = match backend {
            Backend::Sqlite => "PRAGMA synchronous = NORMAL",
            Backend::Postgres => "SELECT 1",
        };
        let pool = AnyPoolOptions::new()
            // SQLite has one writer at a time; a few readers serve the admin API and key lookups.
            .max_connections(match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => 8,
            })
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    sqlx::Executor::execute(conn, pragmas).await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        if backend == Backend::Sqlite {
            // WAL: readers (key lookups, the admin API) do not wait for the usage writer. The
            // mode is kept in the file, so once is enough; sqlx already sets a busy timeout
            // on each connection, so writers wait for each other instead of failing.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        MIGRATOR.run(&pool).await?;
        Ok(Store { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Unix milliseconds as RFC 3339 (UTC).
pub fn rfc3339(ms: i64) -> String {
    let format = &time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(format).ok())
        .unwrap_or_default()
}

/// An RFC 3339 time as Unix milliseconds.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let format = &time::format_description::well_known::Rfc3339;
    let t = time::OffsetDateTime::parse(text.trim(), format).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// The UTC day (`YYYY-MM-DD`) and month (`YYYY-MM`) of a time in Unix milliseconds.
pub fn day_of(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

/// The start, in Unix milliseconds, of the UTC day or month that holds `ms`.
pub fn period_start(period: QuotaPeriod, ms: i64) -> i64 {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let date = match period {
        QuotaPeriod::Total => return 0,
        QuotaPeriod::Day => t.date(),
        QuotaPeriod::Month => t.date().replace_day(1).unwrap_or(t.date()),
    };
    date.midnight().assume_utc().unix_timestamp() * 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_through_rfc3339() {
        let ms = parse_rfc3339("2026-12-01T10:30:00+08:00");
        assert_eq!(ms, Some(1_796_092_200_000));
        assert_eq!(rfc3339(1_796_092_200_000), "2026-12-01T02:30:00Z");
        assert_eq!(parse_rfc3339("tomorrow"), None);
    }

    #[test]
    fn days_and_periods_are_utc() {
        let ms = 1_796_092_200_000; // 2026-12-01T02:30:00Z
        assert_eq!(day_of(ms), "2026-12-01");
        assert_eq!(period_start(QuotaPeriod::Day, ms), 1_796_083_200_000);
        assert_eq!(period_start(QuotaPeriod::Month, ms), 1_796_083_200_000);
        assert_eq!(
            period_start(QuotaPeriod::Month, ms + 86_400_000),
            1_796_083_200_000
        );
        assert_eq!(period_start(QuotaPeriod::Total, ms), 0);
    }
}
