//! The HTTP server: routes, request ids, health and metrics endpoints, graceful shutdown
//! (the shared state the handlers use is in `state.rs`).

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
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dialect::{native, openai};
use crate::error::{GatewayError, json_response};

pub use crate::listen::no_delay;
pub use crate::route::upstream_health;
pub use crate::state::{AppState, RequestId, RouteInfo};

const REQUEST_ID: &str = "x-request-id";

fn sane_request_id(value: &HeaderValue) -> Option<&str> {
    let id = value.to_str().ok()?;
    let ok = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    ok.then_some(id)
}

/// The route label of a path; anything unknown is one label, so clients cannot grow the set.
fn route_label(path: &str) -> Option<&'static str> {
    Some(match path {
        "/v1/chat/completions" | "/compatible-mode/v1/chat/completions" => "chat",
        "/v1/completions" | "/compatible-mode/v1/completions" => "completions",
        "/api/v1/services/aigc/text-generation/generation" => "native_text",
        "/api/v1/services/aigc/multimodal-generation/generation" => "native_multimodal",
        "/v1/models" | "/compatible-mode/v1/models" | "/api/v1/models" => "models",
        _ if path.starts_with("/v1/models/") || path.starts_with("/compatible-mode/v1/models/") => {
            "models"
        }
        "/healthz" | "/readyz" | "/metrics" => return None,
        _ if path.starts_with("/admin/") => "admin",
        _ if path.starts_with("/v1/files") || path.starts_with("/compatible-mode/v1/files") => {
            "files"
        }
        _ if path.starts_with("/v1/batches") || path.starts_with("/compatible-mode/v1/batches") => {
            "batches"
        }
        _ => "unmatched",
    })
}

/// Gives every request its id (and every response the header), logs it, and counts it.
async fn request_id(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let id: Arc<str> = match request.headers().get(REQUEST_ID).and_then(sane_request_id) {
        Some(id) => Arc::from(id),
        None => Arc::from(
            &*uuid::Uuid::new_v4()
                .hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer()),
        ),
    };
    request.extensions_mut().insert(RequestId(id.clone()));
    let started = std::time::Instant::now();
    let route = route_label(request.uri().path());
    // Copied only for the debug line: the request itself moves on.
    let logged = tracing::enabled!(tracing::Level::DEBUG)
        .then(|| (request.method().clone(), request.uri().path().to_owned()));
    // Routed requests get an access log line and a root span, both closed when the request is
    // wholly done (a stream's meter holds them to its end).
    let log = route.and_then(|route| {
        let log = crate::telemetry::access_log::RequestLog::start(
            state.access_log.clone(),
            request.method(),
            request.uri().path(),
            request.headers(),
            &id,
            route,
        )?;
        Some((log.clone(), log))
    });
    let mut response = match log {
        Some((log, scoped)) => {
            use tracing::Instrument;
            let span = log.span.clone();
            let response = crate::telemetry::access_log::scope(scoped, next.run(request))
                .instrument(span)
                .await;
            let info = response.extensions().get::<RouteInfo>();
            log.responded(
                response.status().as_u16(),
                info.map_or("-", |i| i.model.as_str()),
                info.map_or("-", |i| i.upstream.as_str()),
            );
            response
        }
        None => next.run(request).await,
    };
    let elapsed = started.elapsed();
    if let Some((method, path)) = logged {
        // For a stream this is the time to its head; the body may run on much longer.
        tracing::debug!(request_id = %id, %method, path, status = response.status().as_u16(),
            ms = elapsed.as_secs_f64() * 1e3, "request");
    }
    if let Some(route) = route {
        let info = response.extensions().get::<RouteInfo>();
        let model = info.map_or("-", |i| i.model.as_str());
        let upstream = info.map_or("-", |i| i.upstream.as_str());
        state
            .metrics
            .request(route, model, upstream, response.status().as_u16(), elapsed);
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

pub fn router(state: Arc<AppState>) -> Router {
    let mut app = Router::new();
    if let Some(admin) = crate::api::admin::routes(&state) {
        app = app.merge(admin);
    }
    app = app.merge(crate::api::files::routes(&state));
    app = app.merge(crate::api::sessions::routes());
    app = app.merge(crate::batch::routes());
    let app = app
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
        .route("/v1/models/{id}", get(openai::model))
        .route("/api/v1/models", get(openai::native_models))
        .route("/compatible-mode/v1/models/{id}", get(openai::model))
        .route("/v1/device-tokens", post(crate::api::device::mint))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), request_id));
    // Only under `serve --simulate`: a real gateway's responses pass no extra layer.
    let app = if state.config.server.simulate {
        app.layer(middleware::map_response(mark_simulated))
    } else {
        app
    };
    app.with_state(state)
}

/// Under `serve --simulate` every response says that no real upstream answered it.
async fn mark_simulated(mut response: Response) -> Response {
    response.headers_mut().insert(
        "x-dashgate-upstream",
        HeaderValue::from_static(crate::console::firstrun::SIMULATOR),
    );
    response
}

async fn healthz() -> Response {
    json_response(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())
}

/// Ready when some upstream can take traffic; the detail lists each upstream's circuit.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let upstreams: Vec<_> = (state.router.with_slots())
        .map(|(u, slot)| upstream_health(u, slot))
        .collect();
    let ready = state.router.any_admitting();
    let status = if state.draining.is_cancelled() || !ready {
        "unavailable"
    } else {
        "ready"
    };
    let code = if status == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({"status": status, "upstreams": upstreams});
    json_response(code, serde_json::to_vec(&body).unwrap_or_default())
}

async fn metrics(State(state): State<Arc<AppState>>, headers: axum::http::HeaderMap) -> Response {
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let (text, content_type) =
        crate::prom_text::negotiate(state.metrics.render(&state.router.gauges()), accept);
    let mut response = Response::new(axum::body::Body::from(text));
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    response
}

async fn not_found(Extension(RequestId(id)): Extension<RequestId>, request: Request) -> Response {
    let what = format!("{} {}", request.method(), request.uri().path());
    in_dialect_of(request.uri().path(), GatewayError::RouteNotFound(what), &id)
}

async fn method_not_allowed(
    Extension(RequestId(id)): Extension<RequestId>,
    request: Request,
) -> Response {
    let what = format!("{} {}", request.method(), request.uri().path());
    in_dialect_of(
        request.uri().path(),
        GatewayError::MethodNotAllowed(what),
        &id,
    )
}

/// Native paths (`/api/v1/...`) answer `{request_id, code, message}`; the rest in OpenAI's shape.
fn in_dialect_of(path: &str, error: GatewayError, id: &str) -> Response {
    if path.starts_with("/api/") {
        error.into_native_response(id)
    } else {
        error.into_openai_response(id)
    }
}

/// Serves until `shutdown` is cancelled, then drains: no new connections, readiness reports
/// unavailable, requests in flight finish; after `drain_timeout_ms` streams still running end
/// with an error event.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let drain = Duration::from_millis(state.config.server.drain_timeout_ms);
    let (draining, abort) = (state.draining.clone(), state.abort.clone());
    let signal = shutdown.clone();
    tokio::spawn(async move {
        signal.cancelled().await;
        draining.cancel();
        tokio::time::sleep(drain).await;
        abort.cancel();
    });
    let app = router(state.clone());
    let batches = crate::batch::start(state.clone());
    let connections = state.connections.clone();
    let served =
        crate::listen::serve(listener, app, &state.config.server, connections, shutdown).await;
    // Batch lines in flight finish (within the drain time) before the ledger closes.
    batches.stop(drain).await;
    // Every request is done and metered: what the writer holds goes to the store (or the
    // spill file) before the process ends.
    state.meters.ledger.close().await;
    state.store.close().await;
    served
}

/// Binds `config.server.listen` (or `addr`) and serves in the background; for tests and tools.
pub async fn spawn(config: Config, shutdown: CancellationToken) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(config.server.listen).await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(AppState::new(config).await.map_err(std::io::Error::other)?);
    tokio::spawn(async move {
        if let Err(e) = serve(listener, state, shutdown).await {
            tracing::error!(error = %e, "server stopped");
        }
    });
    Ok(addr)
}
