//! The console's pages and sign-in: `GET /admin` (the single page), `/admin/assets/*` (embedded
//! in the binary, so the console works offline and behind a firewall), and `/admin/session`
//! (`POST` signs in with the admin token, `GET` tells whether the cookie is signed in,
//! `DELETE` signs out).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

use crate::console::{COOKIE, CSRF_HEADER, SESSION_TTL};
use crate::error::json_response;
use crate::state::AppState;

/// The console's files: name, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../console/app.js"),
    ),
    (
        "pages.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../console/pages.js"),
    ),
    (
        "charts.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../console/charts.js"),
    ),
    (
        "i18n.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../console/i18n.js"),
    ),
    (
        "playground.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../console/playground.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../../console/style.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../console/vendor/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../../../console/vendor/uPlot.min.css"),
    ),
];

const INDEX: &[u8] = include_bytes!("../../../console/index.html");

/// Nothing but the console's own origin; pictures may come from the camera or disk (blob/data).
const CSP: &str = "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob: mediastream:; \
    style-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
    form-action 'self'";

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin", get(index))
        .route("/admin/", get(index))
        .route("/admin/assets/{name}", get(asset))
        .route(
            "/admin/session",
            get(session).post(sign_in).delete(sign_out),
        )
}

fn page(content_type: &'static str, bytes: &'static [u8], cache: &'static str) -> Response {
    let mut response = Response::new(axum::body::Body::from(bytes));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX, "no-cache")
}

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        // Revalidated each load: the binary may be replaced under the same names.
        Some((_, content_type, bytes)) => page(content_type, bytes, "no-cache"),
        None => {
            let mut response = Response::new(axum::body::Body::from("not found"));
            *response.status_mut() = StatusCode::NOT_FOUND;
            response
        }
    }
}

fn unauthorized() -> Response {
    let body = json!({"error": {"message": "Not signed in.", "type": "invalid_request_error",
        "param": null, "code": "not_signed_in"}});
    json_response(StatusCode::UNAUTHORIZED, body.to_string().into_bytes())
}

fn signed_in(state: &AppState, csrf: &str) -> serde_json::Value {
    json!({
        "signed_in": true,
        "csrf": csrf,
        "token_source": state.console.source().map(|s| s.as_str()),
    })
}

/// Behind TLS (or a proxy that ended it) the cookie is marked `Secure`.
fn over_tls(headers: &HeaderMap, request_scheme: Option<&str>) -> bool {
    request_scheme == Some("https")
        || headers
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

fn cookie(value: &str, max_age: u64, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .ok()
}

async fn session(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match state.console.session_csrf(&headers) {
        Some(csrf) => json_response(
            StatusCode::OK,
            signed_in(&state, &csrf).to_string().into_bytes(),
        ),
        None => unauthorized(),
    }
}

#[derive(Deserialize)]
struct SignIn {
    token: String,
}

async fn sign_in(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let secure = over_tls(request.headers(), request.uri().scheme_str());
    let Ok(bytes) = axum::body::to_bytes(request.into_body(), 64 * 1024).await else {
        return unauthorized();
    };
    let Ok(SignIn { token }) = serde_json::from_slice::<SignIn>(&bytes) else {
        let body = json!({"error": {"message": "Send {\"token\": \"<admin token>\"}.",
            "type": "invalid_request_error", "param": "token", "code": "invalid_parameter"}});
        return json_response(StatusCode::BAD_REQUEST, body.to_string().into_bytes());
    };
    if !state.console.is_admin_token(token.trim()) {
        return unauthorized();
    }
    let Some((id, csrf)) = state.console.start_session() else {
        return json_response(StatusCode::INTERNAL_SERVER_ERROR, b"{}".to_vec());
    };
    let mut response = json_response(
        StatusCode::OK,
        signed_in(&state, &csrf).to_string().into_bytes(),
    );
    if let Some(value) = cookie(&id, SESSION_TTL.as_secs(), secure) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn sign_out(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let headers = request.headers();
    let Some(csrf) = state.console.session_csrf(headers) else {
        return unauthorized();
    };
    let sent = headers.get(CSRF_HEADER).map(HeaderValue::as_bytes);
    if sent != Some(csrf.as_bytes()) {
        return unauthorized();
    }
    state.console.end_session(headers);
    let secure = over_tls(headers, request.uri().scheme_str());
    let mut response = json_response(StatusCode::OK, br#"{"signed_in":false}"#.to_vec());
    if let Some(value) = cookie("", 0, secure) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}
