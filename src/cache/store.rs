//! Where cached replies live: in this process (moka, bounded in bytes) or in Redis (shared by
//! every gateway pointed at it). A backend that fails only makes a miss.

use std::time::Duration;

use bytes::Bytes;
use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

use crate::config::CacheConfig;

pub enum Backend {
    Local(moka::sync::Cache<[u8; 32], Bytes>),
    Redis(RedisBackend),
}

pub struct RedisBackend {
    client: redis::Client,
    /// Connected on first use, so a gateway starts while Redis is still coming up.
    connection: OnceCell<ConnectionManager>,
    timeout: Duration,
    ttl: Duration,
}

impl Backend {
    pub fn new(config: &CacheConfig) -> Result<Self, String> {
        let ttl = Duration::from_secs(config.ttl_secs.max(1));
        if let Some(url) = &config.redis_url {
            let client = redis::Client::open(url.expose())
                .map_err(|e| format!("cache.redis_url: {}", e.category()))?;
            return Ok(Backend::Redis(RedisBackend {
                client,
                connection: OnceCell::new(),
                timeout: Duration::from_millis(config.redis_timeout_ms.max(1)),
                ttl,
            }));
        }
        let local = moka::sync::Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|_key: &[u8; 32], value: &Bytes| {
                u32::try_from(value.len() + 32).unwrap_or(u32::MAX)
            })
            .time_to_live(ttl)
            .build();
        Ok(Backend::Local(local))
    }

    pub async fn get(&self, key: &[u8; 32]) -> Option<Bytes> {
        match self {
            Backend::Local(cache) => cache.get(key),
            Backend::Redis(redis) => redis.get(key).await,
        }
    }

    pub async fn put(&self, key: [u8; 32], value: Bytes) {
        match self {
            Backend::Local(cache) => cache.insert(key, value),
            Backend::Redis(redis) => redis.put(&key, value).await,
        }
    }

    /// Bytes held in this process (Redis keeps its own count).
    pub fn held_bytes(&self) -> Option<u64> {
        match self {
            Backend::Local(cache) => {
                cache.run_pending_tasks();
                Some(cache.weighted_size())
            }
            Backend::Redis(_) => None,
        }
    }
}

fn redis_key(key: &[u8; 32]) -> String {
    format!("dashgate:cache:{}", hex::encode(key))
}

impl RedisBackend {
    async fn connection(&self) -> Option<ConnectionManager> {
        let connect = self
            .connection
            .get_or_try_init(|| self.client.get_connection_manager());
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(connection)) => Some(connection.clone()),
            Ok(Err(e)) => {
                tracing::warn!(error = %e.category(), "cache: redis unreachable");
                None
            }
            Err(_) => None,
        }
    }

    async fn get(&self, key: &[u8; 32]) -> Option<Bytes> {
        let mut connection = self.connection().await?;
        let mut cmd = redis::cmd("GET");
        cmd.arg(redis_key(key));
        let got = tokio::time::timeout(
            self.timeout,
            cmd.query_async::<Option<Vec<u8>>>(&mut connection),
        )
        .await;
        match got {
            Ok(Ok(value)) => value.map(Bytes::from),
            Ok(Err(e)) => {
                tracing::warn!(error = %e.category(), "cache: redis GET failed");
                None
            }
            Err(_) => None,
        }
    }

    async fn put(&self, key: &[u8; 32], value: Bytes) {
        let Some(mut connection) = self.connection().await else {
            return;
        };
        let mut cmd = redis::cmd("SET");
        cmd.arg(redis_key(key))
            .arg(value.as_ref())
            .arg("PX")
            .arg(u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX));
        let set = tokio::time::timeout(self.timeout, cmd.query_async::<()>(&mut connection)).await;
        if let Ok(Err(e)) = set {
            tracing::warn!(error = %e.category(), "cache: redis SET failed");
        }
    }
}
