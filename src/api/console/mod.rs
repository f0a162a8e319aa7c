//! The admin API the console needs beyond keys and totals, behind the same gate as the rest of
//! `/admin/api` (see `docs/admin.md`):
//!
//! - `GET /admin/api/usage/series?bucket=minute|hour|day&from=&to=&key=&model=&upstream=`
//! - `GET /admin/api/usage/table?...` (day × key × model) and `GET /admin/api/usage/export.csv?...`
//! - `GET /admin/api/usage/devices?...`: totals per account and device (docs/fleet.md)
//! - `POST /admin/api/admin-token`: replaces a gateway-made admin token, shows the new one once
//! - `GET /admin/api/files`, `DELETE /admin/api/files/{id}`: every owner's uploaded files
//!
//! The console's pages and sign-in: `pages`.

pub mod pages;

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde_json::json;

use crate::console::{TokenSource, random_hex};
use crate::error::{GatewayError, json_response};
use crate::state::{AppState, RequestId};
use crate::store::{Bucket, KeyRecord, StoreError, UsageFilter, now_ms};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin/api/usage/series", get(series))
        .route("/admin/api/usage/table", get(table))
        .route("/admin/api/usage/devices", get(devices))
        .route("/admin/api/usage/export.csv", get(export_csv))
        .route("/admin/api/admin-token", post(replace_admin_token))
        .route("/admin/api/files", get(files))
        .route("/admin/api/files/{id}", delete(delete_file))
}

type Answer = Result<Response, Response>;

fn ok(body: &serde_json::Value) -> Response {
    json_response(StatusCode::OK, body.to_string().into_bytes())
}

fn store_failed(id: &str) -> impl Fn(StoreError) -> Response + '_ {
    move |e| {
        tracing::warn!(error = %e, "admin: store failed");
        GatewayError::StoreUnavailable.into_openai_response(id)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeriesQuery {
    bucket: Option<String>,
    key: Option<String>,
    model: Option<String>,
    upstream: Option<String>,
    from: Option<i64>,
    to: Option<i64>,
}

impl SeriesQuery {
    fn filter(&self) -> UsageFilter {
        UsageFilter {
            key: self.key.clone().filter(|k| !k.is_empty()),
            model: self.model.clone().filter(|m| !m.is_empty()),
            upstream: self.upstream.clone().filter(|u| !u.is_empty()),
            from: self.from,
            to: self.to,
        }
    }
}

type Q = Result<Query<SeriesQuery>, axum::extract::rejection::QueryRejection>;

fn query_of(query: Q) -> Result<SeriesQuery, GatewayError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| GatewayError::param("query", e.body_text()))
}

async fn series(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(id)): Extension<RequestId>,
    query: Q,
) -> Answer {
    let query = query_of(query).map_err(|e| e.into_openai_response(&id))?;
    let name = query.bucket.as_deref().unwrap_or("hour");
    let bucket = Bucket::parse(name).ok_or_else(|| {
        GatewayError::param("bucket", "must be minute, hour or day").into_openai_response(&id)
    })?;
    let points = state
        .store
        .usage_series(&query.filter(), bucket)
        .await
        .map_err(store_failed(&id))?;
    Ok(ok(
        &json!({"bucket": name, "bucket_ms": bucket.ms(), "data": points}),
    ))
}

async fn table(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(id)): Extension<RequestId>,
    query: Q,
) -> Answer {
    let query = query_of(query).map_err(|e| e.into_openai_response(&id))?;
    let rows = state
        .store
        .usage_table(&query.filter())
        .await
        .map_err(store_failed(&id))?;
    Ok(ok(&json!({"object": "list", "data": rows})))
}

async fn devices(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(id)): Extension<RequestId>,
    query: Q,
) -> Answer {
    let query = query_of(query).map_err(|e| e.into_openai_response(&id))?;
    let rows = state
        .store
        .usage_by_device(&query.filter())
        .await
        .map_err(store_failed(&id))?;
    Ok(ok(&json!({"object": "list", "data": rows})))
}

/// A CSV field: quoted when it holds a separator, a quote or a line break; a leading `=`, `+`,
/// `-` or `@` is defused so a spreadsheet does not run it as a formula.
fn csv_field(out: &mut String, text: &str) {
    let risky = text.starts_with(['=', '+', '-', '@']);
    if risky || text.contains([',', '"', '\n', '\r']) {
        out.push('"');
        if risky {
            out.push('\'');
        }
        out.push_str(&text.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(text);
    }
}

async fn export_csv(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(id)): Extension<RequestId>,
    query: Q,
) -> Answer {
    let query = query_of(query).map_err(|e| e.into_openai_response(&id))?;
    let rows = state
        .store
        .usage_table(&query.filter())
        .await
        .map_err(store_failed(&id))?;
    let mut out = String::from(
        "day,key,model,requests,errors,prompt_tokens,cached_tokens,completion_tokens,\
         reasoning_tokens,image_tokens,audio_tokens,total_tokens,cost\n",
    );
    for r in &rows {
        for text in [&r.day, &r.key, &r.model] {
            csv_field(&mut out, text);
            out.push(',');
        }
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{}",
            r.requests,
            r.errors,
            r.prompt_tokens,
            r.cached_tokens,
            r.completion_tokens,
            r.reasoning_tokens,
            r.image_tokens,
            r.audio_tokens,
            r.total_tokens,
            r.cost
        );
    }
    let mut response = Response::new(axum::body::Body::from(out));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"dashgate-usage.csv\""),
    );
    Ok(response)
}

async fn replace_admin_token(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(id)): Extension<RequestId>,
) -> Answer {
    if state.console.source() == Some(TokenSource::Config) {
        return Err(GatewayError::param(
            "admin_token",
            "the admin token is set in the config (auth.admin_token); change it there",
        )
        .into_openai_response(&id));
    }
    let token = random_hex(24)
        .map(|h| format!("dga-{h}"))
        .ok_or_else(|| GatewayError::Internal.into_openai_response(&id))?;
    state
        .console
        .replace_token(&state.store, &token, TokenSource::Console)
        .await
        .map_err(store_failed(&id))?;
    tracing::info!("admin token replaced through the console; the old one no longer works");
    // The only time this token is shown.
    Ok(ok(
        &json!({"admin_token": token, "token_source": "console"}),
    ))
}

async fn files(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(id)): Extension<RequestId>,
) -> Answer {
    let files = state
        .store
        .all_files(1000)
        .await
        .map_err(store_failed(&id))?;
    Ok(ok(&json!({"object": "list", "data": files})))
}

async fn delete_file(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(id)): Extension<RequestId>,
    Path(file_id): Path<String>,
) -> Answer {
    let owner = state
        .store
        .file_owner(&file_id)
        .await
        .map_err(store_failed(&id))?
        .ok_or_else(|| GatewayError::FileNotFound(file_id.clone()).into_openai_response(&id))?;
    state
        .store
        .delete_file(&file_id, &owner)
        .await
        .map_err(store_failed(&id))?;
    if let Err(e) = state.files.delete(&file_id).await {
        tracing::warn!(error = %e, file = %file_id, "file bytes not deleted");
    }
    crate::files::resolve::forget_upstream_copies(&state.store, state.router.upstreams(), &file_id)
        .await;
    Ok(ok(
        &json!({"object": "file", "deleted": true, "id": file_id}),
    ))
}

/// The key listing with what the console shows beside each key: its status and last use.
pub async fn key_listing(
    state: &AppState,
    keys: Vec<KeyRecord>,
) -> Result<Vec<serde_json::Value>, StoreError> {
    let last_used = state.store.last_used().await?;
    let now = now_ms();
    Ok(keys
        .into_iter()
        .map(|key| {
            let status = key.status_at(now).as_str();
            let last = last_used.get(&key.name).copied();
            let mut value = serde_json::to_value(&key).unwrap_or_default();
            value["status"] = json!(status);
            value["last_used_at"] = json!(last);
            value
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::csv_field;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        let mut out = String::new();
        for text in ["plain", "a,b", "say \"hi\"", "=HYPERLINK(1)"] {
            csv_field(&mut out, text);
            out.push('|');
        }
        assert_eq!(out, "plain|\"a,b\"|\"say \"\"hi\"\"\"|\"'=HYPERLINK(1)\"|");
    }
}
