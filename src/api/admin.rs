//! The admin JSON API under `/admin/api`, behind `Authorization: Bearer <admin_token>`; it does
//! not exist when no admin token is set. Times are Unix milliseconds.
//!
//! - `GET /admin/api/keys`, `POST /admin/api/keys`, `GET|PATCH|DELETE /admin/api/keys/{id}`
//!   (`DELETE` revokes; the record stays for the ledger)
//! - `GET /admin/api/usage?key=&model=&upstream=&from=&to=&group_by=key|model|upstream|day|account|device`
//!   (`account`, `device`: device fleets, docs/fleet.md; `-` groups requests without one)
//! - `POST /admin/api/devices/revoke {"account", "device_id"?}`: docs/fleet.md
//! - `GET /admin/api/usage/records?...&limit=N`
//! - `GET /admin/api/upstreams`: each upstream with its circuit state
//! - the console's own additions: `crate::api::console`; the web console itself: `/admin`

use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::{hash_key, key_prefix, mint_key};
use crate::error::{GatewayError, json_response};
use crate::state::{AppState, RequestId};
use crate::store::{KeyChanges, NewKey, StoreError, UsageFilter};

/// The admin routes, or `None` when no admin token is set.
pub fn routes(state: &Arc<AppState>) -> Option<Router<Arc<AppState>>> {
    if !state.console.enabled() {
        return None;
    }
    let router = Router::new()
        .route("/admin/api/keys", get(list_keys).post(create_key))
        .route(
            "/admin/api/keys/{id}",
            get(show_key).patch(update_key).delete(revoke_key),
        )
        .route("/admin/api/usage", get(usage))
        .route("/admin/api/usage/records", get(usage_records))
        .route("/admin/api/upstreams", get(upstreams))
        .route(
            "/admin/api/devices/revoke",
            axum::routing::post(super::device::revoke),
        )
        .merge(super::console::routes())
        .layer(middleware::from_fn_with_state(state.clone(), admin_only));
    Some(router.merge(super::console::pages::routes()))
}

async fn admin_only(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(id)): Extension<RequestId>,
    request: Request,
    next: Next,
) -> Response {
    // The admin token as Bearer, or a console session (with its CSRF token for changes).
    if state
        .console
        .admit(request.method(), request.headers())
        .is_none()
    {
        return GatewayError::InvalidApiKey.into_openai_response(&id);
    }
    next.run(request).await
}

type Answer = Result<Response, Response>;

fn ok(status: StatusCode, body: &impl Serialize) -> Response {
    json_response(status, serde_json::to_vec(body).unwrap_or_default())
}

fn fail(id: &str) -> impl Fn(StoreError) -> Response + '_ {
    move |e| {
        let error = match e {
            StoreError::NameTaken(name) => {
                GatewayError::param("name", format!("a key named `{name}` exists already"))
            }
            other => {
                tracing::warn!(error = %other, "admin: store failed");
                GatewayError::StoreUnavailable
            }
        };
        error.into_openai_response(id)
    }
}

/// A JSON body, or a 400 that names the field at fault.
fn body_of<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, GatewayError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        let message = e.into_inner().to_string();
        GatewayError::param(field, message)
    })
}

async fn list_keys(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(id)): Extension<RequestId>,
) -> Answer {
    let keys = state.store.list_keys().await.map_err(fail(&id))?;
    let keys = super::console::key_listing(&state, keys)
        .await
        .map_err(fail(&id))?;
    Ok(ok(StatusCode::OK, &json!({"object": "list", "data": keys})))
}

async fn show_key(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(id)): Extension<RequestId>,
    Path(key): Path<String>,
) -> Answer {
    match state.store.key(&key).await.map_err(fail(&id))? {
        Some(record) => Ok(ok(StatusCode::OK, &record)),
        None => Err(GatewayError::KeyNotFound(key).into_openai_response(&id)),
    }
}

/// Checks what a key is made with; the first problem names its field.
pub fn check_new_key(new: &NewKey) -> Result<(), GatewayError> {
    let name = new.name.trim();
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(GatewayError::param(
            "name",
            "must be 1 to 128 printable characters",
        ));
    }
    if new.name.starts_with("sk-") {
        return Err(GatewayError::param(
            "name",
            "must not look like a key (sk-...): names show in logs and listings",
        ));
    }
    check_models(new.models.as_deref())?;
    Ok(())
}

fn check_models(models: Option<&[String]>) -> Result<(), GatewayError> {
    let bad = models.is_some_and(|m| m.iter().any(|m| m.trim().is_empty() || m.contains(',')));
    if bad {
        return Err(GatewayError::param(
            "models",
            "model names must be non-empty and without commas",
        ));
    }
    Ok(())
}

async fn create_key(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(id)): Extension<RequestId>,
    body: axum::body::Bytes,
) -> Answer {
    let new: NewKey = body_of(&body).map_err(|e| e.into_openai_response(&id))?;
    check_new_key(&new).map_err(|e| e.into_openai_response(&id))?;
    let key = mint_key().map_err(|e| e.into_openai_response(&id))?;
    let hash = hex::encode(hash_key(&key));
    let record = state
        .store
        .create_key(&new, &hash, &key_prefix(&key))
        .await
        .map_err(fail(&id))?;
    let mut body = serde_json::to_value(&record).unwrap_or_default();
    // The only time the key is shown.
    body["key"] = json!(key);
    Ok(ok(StatusCode::CREATED, &body))
}

async fn update_key(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(id)): Extension<RequestId>,
    Path(key): Path<String>,
    body: axum::body::Bytes,
) -> Answer {
    let changes: KeyChanges = body_of(&body).map_err(|e| e.into_openai_response(&id))?;
    if let Some(models) = &changes.models {
        check_models(models.as_deref()).map_err(|e| e.into_openai_response(&id))?;
    }
    let updated = state
        .store
        .update_key(&key, &changes)
        .await
        .map_err(fail(&id))?;
    state.auth.forget_cached();
    match updated {
        Some(record) => Ok(ok(StatusCode::OK, &record)),
        None => Err(GatewayError::KeyNotFound(key).into_openai_response(&id)),
    }
}

async fn revoke_key(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(id)): Extension<RequestId>,
    Path(key): Path<String>,
) -> Answer {
    let revoked = state.store.revoke_key(&key).await.map_err(fail(&id))?;
    // Takes effect here at once; other gateways within `auth.key_cache_ms`.
    state.auth.forget_cached();
    match revoked {
        Some(record) => Ok(ok(StatusCode::OK, &record)),
        None => Err(GatewayError::KeyNotFound(key).into_openai_response(&id)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    key: Option<String>,
    model: Option<String>,
    upstream: Option<String>,
    from: Option<i64>,
    to: Option<i64>,
    group_by: Option<String>,
    limit: Option<u32>,
}

impl UsageQuery {
    fn filter(&self) -> UsageFilter {
        UsageFilter {
            key: self.key.clone(),
            model: self.model.clone(),
            upstream: self.upstream.clone(),
            from: self.from,
            to: self.to,
        }
    }
}

fn query_of(
    query: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<UsageQuery, GatewayError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| GatewayError::param("query", e.body_text()))
}

async fn usage(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(id)): Extension<RequestId>,
    query: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let query = query_of(query).map_err(|e| e.into_openai_response(&id))?;
    let filter = query.filter();
    let totals = state.store.usage_totals(&filter).await.map_err(fail(&id))?;
    let mut body = json!({"totals": totals});
    if let Some(by) = &query.group_by {
        let column = crate::store::group_column(by).ok_or_else(|| {
            GatewayError::param(
                "group_by",
                "must be key, model, upstream, day, account or device",
            )
            .into_openai_response(&id)
        })?;
        let groups = state
            .store
            .usage_grouped(column, &filter)
            .await
            .map_err(fail(&id))?;
        body["group_by"] = json!(by);
        body["groups"] = json!(groups);
    }
    Ok(ok(StatusCode::OK, &body))
}

async fn usage_records(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(id)): Extension<RequestId>,
    query: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let query = query_of(query).map_err(|e| e.into_openai_response(&id))?;
    let limit = query.limit.unwrap_or(100);
    let records = state
        .store
        .usage_records(&query.filter(), limit)
        .await
        .map_err(fail(&id))?;
    Ok(ok(
        StatusCode::OK,
        &json!({"object": "list", "data": records}),
    ))
}

async fn upstreams(State(state): State<Arc<AppState>>) -> Response {
    let data: Vec<_> = state
        .router
        .with_slots()
        .map(|(u, slot)| {
            let mut detail = crate::route::upstream_health(u, slot);
            detail["provider"] = json!(u.config.provider);
            detail["base_url"] = json!(u.config.base_url);
            detail["weight"] = json!(u.config.weight);
            detail
        })
        .collect();
    ok(StatusCode::OK, &json!({"object": "list", "data": data}))
}
