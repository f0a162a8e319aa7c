//! The HTTP server: routes, shared state, request ids, graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::dialect::{native, openai};
use crate::error::{GatewayError, json_response};
use crate::provider::Upstream;
use crate::route;

/// What every request handler shares.
pub struct AppState {
    pub config: Arc<Config>,
    pub auth: Authenticator,
    pub router: route::Router,
    pub body_timeout: Duration,
}

impl AppState {
    pub fn new(config: Config) -> Result<Self, String> {
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| Upstream::new(u.clone()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            auth: Authenticator::new(config.auth.mode, &config.keys),
            router: route::Router::new(upstreams),
            body_timeout: Duration::from_secs(300),
            config: Arc::new(config),
        })
    }
}

/// The request id: made once per request, kept from the client when it sent a sane one.
#[derive(Clone)]
pub struct RequestId(pub Arc<str>);

const REQUEST_ID: &str = "x-request-id";

fn sane_request_id(value: &HeaderValue) -> Option<&str> {
    let id = value.to_str().ok()?;
    let ok = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    ok.then_some(id)
}

async fn request_id(mut request: Request, next: Next) -> Response {
    let id: Arc<str> = match request.headers().get(REQUEST_ID).and_then(sane_request_id) {
        Some(id) => Arc::from(id),
        None => Arc::from(uuid::Uuid::new_v4().to_string()),
    };
    request.extensions_mut().insert(RequestId(id.clone()));
    let started = std::time::Instant::now();
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let mut response = next.run(request).await;
    // For a stream this is the time to its head; the body may run on much longer.
    tracing::debug!(request_id = %id, %method, path, status = response.status().as_u16(),
        ms = started.elapsed().as_secs_f64() * 1e3, "request");
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route(
            "/compatible-mode/v1/chat/completions",
            post(openai::chat_completions),
        )
        .route("/v1/completions", post(openai::completions))
        .route("/compatible-mode/v1/completions", post(openai::completions))
        .route(
            "/api/v1/services/aigc/text-generation/generation",
            post(native::text_generation),
        )
        .route(
            "/api/v1/services/aigc/multimodal-generation/generation",
            post(native::multimodal_generation),
        )
        .route("/v1/models", get(openai::models))
        .route("/compatible-mode/v1/models", get(openai::models))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}

async fn healthz() -> Response {
    json_response(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let upstreams: Vec<_> = state
        .router
        .upstreams()
        .iter()
        .map(|u| json!({"name": u.config.name, "models": u.config.models}))
        .collect();
    let body = json!({"status": "ready", "upstreams": upstreams});
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&body).unwrap_or_default(),
    )
}

async fn not_found(Extension(RequestId(id)): Extension<RequestId>, request: Request) -> Response {
    let what = format!("{} {}", request.method(), request.uri().path());
    GatewayError::RouteNotFound(what).into_openai_response(&id)
}

async fn method_not_allowed(
    Extension(RequestId(id)): Extension<RequestId>,
    request: Request,
) -> Response {
    let what = format!("{} {}", request.method(), request.uri().path());
    GatewayError::MethodNotAllowed(what).into_openai_response(&id)
}

/// Serves until `shutdown` is cancelled; requests in flight are allowed to finish.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = router(state);
    axum::serve(listener.tap_io(no_delay), app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Small SSE writes must leave at once: with Nagle's algorithm on, an event waits for the
/// client's delayed ACK (about 40 ms on Linux).
pub fn no_delay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

/// Binds `config.server.listen` (or `addr`) and serves in the background; for tests and tools.
pub async fn spawn(config: Config, shutdown: CancellationToken) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(config.server.listen).await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(AppState::new(config).map_err(std::io::Error::other)?);
    tokio::spawn(async move {
        if let Err(e) = serve(listener, state, shutdown).await {
            tracing::error!(error = %e, "server stopped");
        }
    });
    Ok(addr)
}
