//! Per-key limits: requests per minute, tokens per minute, a token quota (in all, per UTC day
//! or month). Counted in this process by default, or in Redis when `[limits] redis_url` is set,
//! so that every gateway sharing it shares the counts.
//!
//! Minutes are fixed windows (the wall-clock minute). A request is checked on arrival (the
//! key's requests this minute under its RPM, its tokens this minute under its TPM, its tokens
//! in the quota period under its quota) without counting; it is counted and its tokens
//! reserved only when it is admitted, right before it goes upstream (`reserve.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::HeaderValue;
use redis::aio::ConnectionManager;

use crate::auth::{Caller, Limits};
use crate::config::{FailMode, LimitsConfig};
use crate::error::{GatewayError, Limit};
use crate::store::{QuotaPeriod, Store, now_ms, period_start};
use crate::telemetry::Metrics;

mod account;
mod reserve;
pub use reserve::Reservation;

pub enum Limiter {
    Local(Local),
    Redis(Box<Shared>),
}

impl Limiter {
    /// The limiter the config asks for; connecting to Redis is lazy, so a Redis that is down
    /// at start is handled like one that goes down later.
    pub fn new(config: &LimitsConfig, store: Store, metrics: Arc<Metrics>) -> Result<Self, String> {
        let Some(url) = &config.redis_url else {
            return Ok(Limiter::Local(Local::new(store)));
        };
        let client = redis::Client::open(url.expose())
            .map_err(|e| format!("limits.redis_url: {}", e.category()))?;
        Ok(Limiter::Redis(Box::new(Shared {
            client,
            connection: Arc::new(tokio::sync::OnceCell::new()),
            store,
            timeout: Duration::from_millis(config.redis_timeout_ms),
            on_error: config.on_redis_error,
            metrics,
            script: redis::Script::new(ADMIT_SCRIPT),
            spend_script: Arc::new(redis::Script::new(SPEND_SCRIPT)),
        })))
    }

    /// Checks the request against the key's limits, counting nothing (a request is counted
    /// when admitted: `reserve`), or says which limit it ran into and when to try again.
    /// `Ok(false)`: the shared limiter could not be reached and lets the request through
    /// unchecked (admission then does not try it again).
    pub async fn admit(&self, caller: &Caller) -> Result<bool, GatewayError> {
        let checked = self.admit_one(caller).await?;
        // A device's account after the device itself (docs/fleet.md).
        match account::of(caller) {
            Some(account) => Ok(self.admit_one(&account).await? && checked),
            None => Ok(checked),
        }
    }

    async fn admit_one(&self, caller: &Caller) -> Result<bool, GatewayError> {
        if !caller.limits.any() {
            return Ok(true);
        }
        match self {
            Limiter::Local(local) => local.admit(caller).await.map(|_| true),
            Limiter::Redis(shared) => shared.check(caller, now_ms(), -1).await,
        }
    }
}

fn minute_now(now_ms: i64) -> u64 {
    u64::try_from(now_ms / 60_000).unwrap_or(0)
}

/// The id of the quota period that holds `now_ms`: its start.
fn period_id(period: QuotaPeriod, now_ms: i64) -> i64 {
    period_start(period, now_ms)
}

/// Seconds until the current minute ends, at least 1.
fn seconds_to_next_minute(now_ms: i64) -> u64 {
    let left = 60_000 - now_ms.rem_euclid(60_000);
    u64::try_from((left + 999) / 1000).unwrap_or(60).max(1)
}

/// Seconds until the quota period ends (a total quota never turns over: a day, as a hint).
fn seconds_to_next_period(period: QuotaPeriod, now_ms: i64) -> u64 {
    let start = period_start(period, now_ms);
    let end = match period {
        QuotaPeriod::Total | QuotaPeriod::Day => start + 86_400_000,
        QuotaPeriod::Month => {
            // Day 1 of the next month: 32 days on from day 1 always lands in it.
            period_start(QuotaPeriod::Month, start + 32 * 86_400_000)
        }
    };
    let end = if period == QuotaPeriod::Total {
        now_ms + 86_400_000
    } else {
        end
    };
    u64::try_from((end - now_ms + 999) / 1000)
        .unwrap_or(1)
        .max(1)
}

fn limited(limit: Limit, seconds: u64) -> GatewayError {
    GatewayError::RateLimited {
        limit,
        retry_after: HeaderValue::from(seconds),
    }
}

/// One key's counters in this process. Lock-free: a window that turned over is reset by
/// whichever request sees it first.
#[derive(Default)]
struct Counters {
    minute: AtomicU64,
    requests: AtomicU64,
    tokens: AtomicU64,
    /// The quota period the count below is for (its start, + 1 so 0 means "not loaded").
    period: AtomicU64,
    quota_used: AtomicU64,
    /// Held while a period's starting count is read from the ledger, so concurrent first
    /// requests ask once and none of them counts against a figure about to be replaced.
    loading: tokio::sync::Mutex<()>,
}

impl Counters {
    fn roll_minute(&self, minute: u64) {
        let seen = self.minute.load(Ordering::Acquire);
        if seen != minute
            && self
                .minute
                .compare_exchange(seen, minute, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.requests.store(0, Ordering::Release);
            self.tokens.store(0, Ordering::Release);
        }
    }
}

pub struct Local {
    counters: moka::sync::Cache<Arc<str>, Arc<Counters>>,
    store: Store,
}

impl Local {
    fn new(store: Store) -> Self {
        Self {
            counters: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_idle(Duration::from_secs(48 * 3600))
                .build(),
            store,
        }
    }

    fn counters(&self, name: &Arc<str>) -> Arc<Counters> {
        self.counters
            .get_with_by_ref(name, || Arc::new(Counters::default()))
    }

    async fn admit(&self, caller: &Caller) -> Result<(), GatewayError> {
        let now = now_ms();
        let c = self.counters(&caller.name);
        c.roll_minute(minute_now(now));
        let limits = &caller.limits;
        if let Some(tpm) = limits.tpm {
            if c.tokens.load(Ordering::Acquire) >= tpm {
                return Err(limited(Limit::TokensPerMinute, seconds_to_next_minute(now)));
            }
        }
        if let Some(quota) = limits.token_quota {
            self.load_period(caller, &c, now).await;
            if c.quota_used.load(Ordering::Acquire) >= quota {
                let wait = seconds_to_next_period(limits.quota_period, now);
                return Err(limited(Limit::TokenQuota, wait));
            }
        }
        if let Some(rpm) = limits.rpm {
            if c.requests.load(Ordering::Acquire) >= rpm {
                return Err(limited(
                    Limit::RequestsPerMinute,
                    seconds_to_next_minute(now),
                ));
            }
        }
        Ok(())
    }

    /// On the first request of a quota period in this process, the ledger says what was used.
    async fn load_period(&self, caller: &Caller, c: &Counters, now: i64) {
        let limits = &caller.limits;
        let period = u64::try_from(period_id(limits.quota_period, now)).unwrap_or(0) + 1;
        if c.period.load(Ordering::Acquire) == period {
            return;
        }
        let _loading = c.loading.lock().await;
        if c.period.load(Ordering::Acquire) == period {
            return;
        }
        let since = period_start(limits.quota_period, now);
        let used = match self.store.tokens_since(&caller.name, since).await {
            Ok(used) => used,
            Err(e) => {
                tracing::warn!(error = %e, key = %caller.name, "quota start unknown");
                0
            }
        };
        // The count first, then the period that says it is loaded: a request that sees the
        // period reads this count, never the one it replaces.
        c.quota_used.store(used, Ordering::Release);
        c.period.store(period, Ordering::Release);
    }
}

/// Counters in Redis: one script run (one round trip) per admitted request.
pub struct Shared {
    client: redis::Client,
    connection: Arc<tokio::sync::OnceCell<ConnectionManager>>,
    store: Store,
    timeout: Duration,
    on_error: FailMode,
    metrics: Arc<Metrics>,
    script: redis::Script,
    spend_script: Arc<redis::Script>,
}

/// KEYS: tokens this minute, tokens this quota period. ARGV: tokens (negative: given back),
/// add to the minute (0/1), add to the quota (0/1). A missing quota counter is left alone: it
/// is seeded from the ledger, which will hold these tokens too.
const SPEND_SCRIPT: &str = r#"
local tokens = tonumber(ARGV[1])
if ARGV[2] == '1' then
  redis.call('INCRBY', KEYS[1], tokens)
  redis.call('EXPIRE', KEYS[1], 120)
end
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('INCRBY', KEYS[2], tokens)
end
return 0
"#;

/// The shared connection, made on first use (and re-made by the manager after a failure).
async fn connect(
    cell: Arc<tokio::sync::OnceCell<ConnectionManager>>,
    client: redis::Client,
    timeout: Duration,
) -> Result<ConnectionManager, redis::RedisError> {
    let manager = cell
        .get_or_try_init(|| async {
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1);
            ConnectionManager::new_with_config(client, config).await
        })
        .await?;
    Ok(manager.clone())
}

/// KEYS: requests this minute, tokens this minute, tokens this quota period.
/// ARGV: rpm, tpm, quota (0: none), quota seed (-1: none known), quota TTL seconds, tokens to
/// reserve (-1: only check, count nothing).
/// Returns 0 (admitted), 1 (rpm), 2 (tpm), 3 (quota), or 4 (quota counter missing: seed it).
const ADMIT_SCRIPT: &str = r#"
local rpm, tpm, quota = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if tpm > 0 and tonumber(redis.call('GET', KEYS[2]) or '0') >= tpm then return 2 end
if quota > 0 then
  local used = redis.call('GET', KEYS[3])
  if not used then
    local seed = tonumber(ARGV[4])
    if seed < 0 then return 4 end
    redis.call('SET', KEYS[3], seed, 'EX', tonumber(ARGV[5]), 'NX')
    used = redis.call('GET', KEYS[3])
  end
  if tonumber(used) >= quota then return 3 end
end
if rpm > 0 and tonumber(redis.call('GET', KEYS[1]) or '0') >= rpm then return 1 end
local reserve = tonumber(ARGV[6])
if reserve < 0 then return 0 end
if rpm > 0 and redis.call('INCR', KEYS[1]) == 1 then redis.call('EXPIRE', KEYS[1], 120) end
if reserve > 0 and tpm > 0 then
  redis.call('INCRBY', KEYS[2], reserve)
  redis.call('EXPIRE', KEYS[2], 120)
end
if reserve > 0 and quota > 0 then redis.call('INCRBY', KEYS[3], reserve) end
return 0
"#;

/// Keys are per gateway key name, per window; the name is hashed so that a key name never
/// shows in Redis.
fn redis_keys(name: &str, limits: &Limits, now: i64) -> [String; 3] {
    let tag = hex::encode(&crate::auth::hash_key(name)[..12]);
    let minute = minute_now(now);
    let period = period_id(limits.quota_period, now);
    [
        format!("dashgate:{{{tag}}}:r:{minute}"),
        format!("dashgate:{{{tag}}}:t:{minute}"),
        format!(
            "dashgate:{{{tag}}}:q:{}:{period}",
            limits.quota_period.as_str()
        ),
    ]
}

/// A quota counter outlives its period by a day; a total quota's lives 400 days from its first
/// use, then it is seeded again from the ledger.
fn quota_ttl(period: QuotaPeriod, now: i64) -> u64 {
    match period {
        QuotaPeriod::Total => 400 * 86_400,
        _ => seconds_to_next_period(period, now) + 86_400,
    }
}

impl Shared {
    fn connection(
        &self,
    ) -> impl Future<Output = Result<ConnectionManager, redis::RedisError>> + Send + 'static {
        connect(self.connection.clone(), self.client.clone(), self.timeout)
    }

    async fn run(&self, keys: &[String; 3], argv: [i64; 6]) -> Result<i64, redis::RedisError> {
        let mut connection = self.connection().await?;
        let mut invocation = self.script.key(&keys[0]);
        invocation.key(&keys[1]).key(&keys[2]);
        for arg in argv {
            invocation.arg(arg);
        }
        invocation.invoke_async(&mut connection).await
    }

    /// Runs the admission script (`reserve` < 0: only check); `Ok(false)` when Redis could not
    /// be reached and the request goes anyway.
    async fn check(&self, caller: &Caller, now: i64, reserve: i64) -> Result<bool, GatewayError> {
        let limits = &caller.limits;
        let keys = redis_keys(&caller.name, limits, now);
        let cap = |v: Option<u64>| v.map_or(0, |v| i64::try_from(v).unwrap_or(i64::MAX));
        let ttl = i64::try_from(quota_ttl(limits.quota_period, now)).unwrap_or(i64::MAX);
        let mut argv = [
            cap(limits.rpm),
            cap(limits.tpm),
            cap(limits.token_quota),
            -1,
            ttl,
            reserve,
        ];
        let attempt = async {
            let mut verdict = self.run(&keys, argv).await?;
            if verdict == 4 {
                // No gateway has counted this period yet: start from the ledger.
                let since = period_start(limits.quota_period, now);
                let used = self.store.tokens_since(&caller.name, since).await;
                argv[3] = used.map_or(0, |u| i64::try_from(u).unwrap_or(i64::MAX));
                verdict = self.run(&keys, argv).await?;
            }
            Ok::<_, redis::RedisError>(verdict)
        };
        let verdict = match tokio::time::timeout(self.timeout * 4, attempt).await {
            Ok(Ok(verdict)) => verdict,
            Ok(Err(e)) => return self.failed(&e.to_string()).map(|_| false),
            Err(_) => return self.failed("timed out").map(|_| false),
        };
        match verdict {
            1 => Err(limited(
                Limit::RequestsPerMinute,
                seconds_to_next_minute(now),
            )),
            2 => Err(limited(Limit::TokensPerMinute, seconds_to_next_minute(now))),
            3 => Err(limited(
                Limit::TokenQuota,
                seconds_to_next_period(limits.quota_period, now),
            )),
            _ => Ok(true),
        }
    }

    fn failed(&self, error: &str) -> Result<(), GatewayError> {
        self.metrics.limiter_error();
        tracing::warn!(error, fail = ?self.on_error, "rate limiter unreachable");
        match self.on_error {
            FailMode::Open => Ok(()),
            FailMode::Closed => Err(GatewayError::LimitsUnavailable),
        }
    }

    /// Adds `tokens` (negative: gives them back) to the windows `keys` name, in the background.
    fn spend_keys(&self, keys: [String; 3], limits: &Limits, tokens: i64) {
        let (connection, metrics, timeout) =
            (self.connection(), self.metrics.clone(), self.timeout);
        let script = self.spend_script.clone();
        let (minute, quota) = (limits.tpm.is_some(), limits.token_quota.is_some());
        let work = async move {
            let mut connection = connection.await?;
            let [_, tokens_key, quota_key] = keys;
            script
                .key(tokens_key)
                .key(quota_key)
                .arg(tokens)
                .arg(i64::from(minute))
                .arg(i64::from(quota))
                .invoke_async::<i64>(&mut connection)
                .await
        };
        tokio::spawn(async move {
            match tokio::time::timeout(timeout * 4, work).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    metrics.limiter_error();
                    tracing::warn!(error = %e, "tokens not added to the shared limits");
                }
                Err(_) => {
                    metrics.limiter_error();
                    tracing::warn!("tokens not added to the shared limits: timed out");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_turn_over_on_the_minute_and_the_utc_period() {
        assert_eq!(seconds_to_next_minute(60_000), 60);
        assert_eq!(seconds_to_next_minute(119_500), 1);
        let ms = 1_764_556_200_000; // 2026-12-01T02:30:00Z
        assert_eq!(seconds_to_next_period(QuotaPeriod::Day, ms), 77_400);
        assert_eq!(
            seconds_to_next_period(QuotaPeriod::Month, ms),
            31 * 86_400 - 9_000
        );
    }
}
