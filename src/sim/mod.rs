//! `dashgate simulate`: a stand-in for DashScope, out of reach here, that follows its wire
//! formats (DashScope's compatible-mode reference and the glasses integration note) with deterministic replies, so tests and
//! benchmarks can assert on what the gateway did. Separate from the gateway's own code.
//!
//! Per-request knobs ride in a `"sim"` object in the request body (the gateway forwards unknown
//! fields untouched, so they work through it too):
//!
//! | knob | effect |
//! | --- | --- |
//! | `fault` | `"429"`, `"500"`, `"503"`: that error; `"stall"`: stop sending after `after` events and hang; `"drop"`: cut the connection after `after` events (`after: 0`: before any response); `"inspection"`: a mid-stream `data_inspection_failed` error event after `after` events |
//! | `times`, `key` | the fault applies to the first `times` requests naming `key` (default: every request) |
//! | `after` | events sent before a stream fault (default 2: the role chunk and one delta) |
//! | `retry_after` | a `Retry-After` header on the 429 (DashScope itself sends none) |
//! | `latency_ms`, `chunk_delay_ms`, `chunks` | per-request overrides of the command-line options |
//! | `echo_request` | reply with the request body exactly as received (JSON text) |
//! | `created`, `cached_tokens` | fix `created`; report cached prompt tokens |
//!
//! A model named `missing-...` does not exist (404 `model_not_found`). `GET /sim/stats` counts
//! requests and streams the client closed before their end.

mod batch;
mod compat;
mod completions;
mod extras;
mod files;
mod native;
mod playback;
pub mod reply;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Command-line options of `dashgate simulate`.
#[derive(clap::Args, Clone, Debug)]
pub struct Options {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// Delay before the first byte of every reply.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Delay between stream events.
    #[arg(long, default_value_t = 0)]
    pub chunk_delay_ms: u64,
    /// Content deltas per streamed reply (fewer if the reply is shorter).
    #[arg(long, default_value_t = 8)]
    pub chunks: usize,
    /// The only API key accepted; without it any non-empty bearer token is.
    #[arg(long, env = "DASHGATE_SIM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// A fault for every request that names none (`429`, `500`, `503`, `stall`, `drop`, ...):
    /// a broken upstream beside a healthy one.
    #[arg(long)]
    pub fault: Option<String>,
    /// With `--fault`: only the first N requests suffer it.
    #[arg(long)]
    pub fault_times: Option<u32>,
    /// A batch ends at this `GET` of it (the ones before say `in_progress`).
    #[arg(long, default_value_t = 2)]
    pub batch_polls: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            latency_ms: 0,
            chunk_delay_ms: 0,
            chunks: 8,
            api_key: None,
            fault: None,
            fault_times: None,
            batch_polls: 2,
        }
    }
}

/// Counters a test can read at `GET /sim/stats`.
#[derive(Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub streams_completed: AtomicU64,
    pub streams_closed_early: AtomicU64,
    /// Signalled each time a stream ends early because the client went away.
    pub stream_closed_early: tokio::sync::Notify,
    /// The `traceparent` header of every request that carried one, in arrival order.
    pub traceparents: Mutex<Vec<String>>,
}

/// Notes each request's `traceparent`, for tests of trace propagation.
async fn note_traceparent(
    State(stats): State<Arc<Stats>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(value) = request.headers().get("traceparent") {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match stats.traceparents.lock() {
            Ok(mut seen) => seen.push(value),
            Err(poisoned) => poisoned.into_inner().push(value),
        }
    }
    next.run(request).await
}

struct SimState {
    options: Options,
    stats: Arc<Stats>,
    fault_counts: Mutex<HashMap<String, u32>>,
    files: files::SimFiles,
    batches: batch::SimBatches,
}

/// The per-request `"sim"` knobs.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Knobs {
    fault: Option<String>,
    times: Option<u32>,
    key: Option<String>,
    after: Option<usize>,
    retry_after: Option<String>,
    latency_ms: Option<u64>,
    chunk_delay_ms: Option<u64>,
    chunks: Option<usize>,
    echo_request: bool,
    created: Option<i64>,
    cached_tokens: Option<u64>,
    /// Compatible-mode chunks in their full shape: every delta field present (`function_call`,
    /// `refusal`, `role`, `tool_calls` as `null`), `service_tier` too, as some DashScope
    /// deployments and SDK dumps write them.
    full_shape: bool,
}

impl SimState {
    /// The fault this request should suffer, counting `times` per `key`.
    fn fault(&self, knobs: &Knobs) -> Option<String> {
        let (fault, times, key) = match &knobs.fault {
            Some(fault) => (
                fault.clone(),
                knobs.times,
                knobs.key.clone().unwrap_or_else(|| fault.clone()),
            ),
            None => (
                self.options.fault.clone()?,
                self.options.fault_times,
                "--fault".to_string(),
            ),
        };
        let Some(times) = times else {
            return Some(fault);
        };
        let mut counts = self.fault_counts.lock().unwrap_or_else(|p| p.into_inner());
        let seen = counts.entry(key).or_insert(0);
        *seen += 1;
        (*seen <= times).then_some(fault)
    }
}

pub fn router(options: Options) -> (Router, Arc<Stats>) {
    let stats = Arc::new(Stats::default());
    let state = Arc::new(SimState {
        options,
        stats: stats.clone(),
        fault_counts: Mutex::new(HashMap::new()),
        files: files::SimFiles::default(),
        batches: batch::SimBatches::default(),
    });
    let router = Router::new()
        .route("/compatible-mode/v1/chat/completions", post(compat::chat))
        .route("/v1/chat/completions", post(compat::chat))
        .route(
            "/api/v1/services/aigc/text-generation/generation",
            post(native::text),
        )
        .route(
            "/api/v1/services/aigc/multimodal-generation/generation",
            post(native::multimodal),
        )
        .route(
            "/compatible-mode/v1/completions",
            post(completions::complete),
        )
        .route("/v1/completions", post(completions::complete))
        .route("/compatible-mode/v1/models", get(compat::models))
        .route("/v1/models", get(compat::models))
        .route("/sim/stats", get(stats_handler))
        .route(
            "/compatible-mode/v1/files",
            get(files::list).post(files::upload),
        )
        .route(
            "/compatible-mode/v1/files/{id}",
            get(files::show).delete(files::delete),
        )
        .route(
            "/compatible-mode/v1/files/{id}/content",
            get(files::content),
        )
        .merge(batch::routes())
        .layer(DefaultBodyLimit::max(256 * 1024 * 1024))
        .layer(axum::middleware::from_fn_with_state(
            stats.clone(),
            note_traceparent,
        ))
        .with_state(state);
    (router, stats)
}

pub async fn serve(
    listener: TcpListener,
    options: Options,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let (app, _) = router(options);
    axum::serve(listener.tap_io(crate::listen::no_delay), app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Starts a simulator on `options.listen` in the background; returns its address and counters.
pub async fn spawn(options: Options) -> std::io::Result<(SocketAddr, Arc<Stats>)> {
    let listener = TcpListener::bind(options.listen).await?;
    let addr = listener.local_addr()?;
    let (app, stats) = router(options);
    tokio::spawn(async move {
        let _ = axum::serve(listener.tap_io(crate::listen::no_delay), app).await;
    });
    Ok((addr, stats))
}

async fn stats_handler(State(state): State<Arc<SimState>>) -> Response {
    let s = &state.stats;
    axum::Json(json!({
        "requests": s.requests.load(Ordering::Relaxed),
        "streams_completed": s.streams_completed.load(Ordering::Relaxed),
        "streams_closed_early": s.streams_closed_early.load(Ordering::Relaxed),
    }))
    .into_response()
}

/// DashScope's own key check.
fn authorized(options: &Options, headers: &HeaderMap) -> bool {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    match &options.api_key {
        Some(key) => token == key,
        None => !token.is_empty(),
    }
}

/// A compatible-mode error as DashScope sends it:
/// `{"error":{"message","type","param","code"},"request_id"}` and the same `x-request-id`.
fn compat_error(
    status: StatusCode,
    kind: &str,
    code: &str,
    message: &str,
    request_id: &str,
) -> Response {
    let body = json!({
        "error": {"message": message, "type": kind, "param": null, "code": code},
        "request_id": request_id,
    });
    let mut response = (status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert("x-request-id", id);
    }
    response
}

/// A UUID-shaped id derived from the request bytes: replies are functions of the request.
fn uuid_from(hash: &str) -> String {
    let h = |range: std::ops::Range<usize>| hash.get(range).unwrap_or("0");
    format!(
        "{}-{}-{}-{}-{}",
        h(0..8),
        h(8..12),
        h(12..16),
        h(16..20),
        h(20..32)
    )
}
