//! What every request handler shares (`AppState`, built once at start) and the request's
//! identity the middleware attaches: kept apart from the server so the handlers, the relay and
//! the routing can use it without importing the server that routes to them.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::limit::Limiter;
use crate::provider::Upstream;
use crate::route;
use crate::store::Store;
use crate::telemetry::Metrics;
use crate::usage::{Ledger, MeterContext};

/// What every request handler shares.
pub struct AppState {
    pub config: Arc<Config>,
    pub auth: Authenticator,
    pub router: route::Router,
    pub body_timeout: Duration,
    pub metrics: Arc<Metrics>,
    /// Client connections: open, and refused at the cap (`listen.rs`).
    pub connections: crate::listen::ConnectionMetrics,
    /// The Batch API's counters (`crate::batch`).
    pub batch_metrics: crate::telemetry::batch::BatchMetrics,
    /// Cancelled when shutdown begins.
    pub draining: CancellationToken,
    /// Images decoded at once, across all requests: bounds the memory camera frames take.
    pub media_limiter: Arc<tokio::sync::Semaphore>,
    /// Cancelled when the shutdown drain time is over: streams still running end with an error.
    pub abort: CancellationToken,
    pub store: Store,
    /// Where uploaded files' bytes are kept.
    pub files: crate::files::Files,
    pub limiter: Arc<Limiter>,
    /// The usage ledger and what else every request's meter reports to.
    pub meters: MeterContext,
    /// Who may open `/admin`: the admin token and the console's sessions.
    pub console: crate::console::Console,
    /// What the `"*"` upstreams serve, asked of them and cached, for `GET /v1/models`.
    pub model_lists: crate::provider::models::ModelLists,
    /// Where access log lines go; none when `telemetry.access_log = false`.
    pub access_log: Option<Arc<crate::telemetry::access_log::AccessLog>>,
    /// The exact response cache.
    pub cache: Arc<crate::cache::Cache>,
    /// Device tokens: signing keys and revocations (docs/fleet.md).
    pub devices: Arc<crate::device::Devices>,
    pub sessions: crate::session::Sessions,
    /// Streams held for a reconnect with `Last-Event-ID` (docs/fleet.md).
    pub resume: Arc<crate::resume::Hub>,
}

impl AppState {
    /// The parts an upstream call's tries draw on (`route::retry::send_with_retries`).
    pub fn attempts(&self) -> route::retry::Attempts<'_> {
        route::retry::Attempts {
            retry: &self.config.retry,
            router: &self.router,
            limiter: &self.limiter,
            mode: self.auth.mode(),
            abort: &self.abort,
            metrics: &self.metrics,
        }
    }

    /// Opens the store (applying its migrations) and starts the usage writer.
    pub async fn new(config: Config) -> Result<Self, String> {
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| Upstream::new(u.clone(), &config.media).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let store = Store::open(&config.store.url)
            .await
            .map_err(|e| format!("store.url: {e}"))?;
        let configured = (config.upstreams.iter().flat_map(|u| u.models.iter()))
            .chain(config.keys.iter().flat_map(|k| k.models.iter().flatten()))
            .chain(config.prices.keys());
        let mut metrics = Metrics::new().with_models(configured.map(String::as_str));
        // Each module's metrics, registered in this order (the order `/metrics` lists them).
        let registry = metrics.registry_mut();
        let connections = crate::listen::ConnectionMetrics::register(registry);
        let cache_metrics = crate::cache::CacheMetrics::default();
        cache_metrics.register(registry);
        let extract_metrics = crate::files::metrics::ExtractMetrics::default();
        extract_metrics.register(registry);
        let session_metrics = crate::session::SessionMetrics::default();
        session_metrics.register(registry);
        let batch_metrics = crate::telemetry::batch::BatchMetrics::default();
        batch_metrics.register(registry);
        let resume_metrics = crate::resume::ResumeMetrics::default();
        resume_metrics.register(registry);
        let metrics = Arc::new(metrics);
        let limiter = Arc::new(Limiter::new(
            &config.limits,
            store.clone(),
            metrics.clone(),
        )?);
        let ledger = Ledger::start(store.clone(), &config.usage, metrics.clone())?;
        let meters = MeterContext {
            ledger,
            limiter: limiter.clone(),
            metrics: metrics.clone(),
            prices: Arc::new(config.prices.clone()),
        };
        let key_cache = Duration::from_millis(config.auth.key_cache_ms);
        let console = crate::console::Console::open(&config, &store)
            .await
            .map_err(|e| format!("store.url: {e}"))?;
        let cache = crate::cache::Cache::new(&config.cache, cache_metrics)?;
        let devices = Arc::new(crate::device::Devices::open(&config.devices, &store).await?);
        crate::device::keep_refreshing(&devices, &store, config.devices.revocation_refresh_ms);
        let resume = crate::resume::Hub::new(config.resume.clone(), resume_metrics)?;
        Ok(Self {
            resume,
            cache,
            console,
            auth: Authenticator::new(
                config.auth.mode,
                &config.keys,
                Some(store.clone()),
                key_cache,
            )
            .with_devices(devices.clone()),
            devices,
            sessions: crate::session::Sessions::new(config.sessions.clone(), session_metrics),
            store,
            files: crate::files::Files::new(&config.files, extract_metrics)?,
            limiter,
            meters,
            model_lists: Default::default(),
            router: route::Router::new(upstreams, &config.circuit),
            body_timeout: Duration::from_millis(config.server.body_timeout_ms),
            metrics,
            connections,
            batch_metrics,
            draining: CancellationToken::new(),
            media_limiter: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
            abort: CancellationToken::new(),
            access_log: crate::telemetry::access_log::AccessLog::start(&config.telemetry),
            config: Arc::new(config),
        })
    }
}

/// The request id: made once per request, kept from the client when it sent a sane one.
#[derive(Clone)]
pub struct RequestId(pub Arc<str>);

/// What a handler learned about a request, for the metrics: set on the response.
#[derive(Clone)]
pub struct RouteInfo {
    pub model: String,
    pub upstream: String,
}
