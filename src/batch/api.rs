//! `POST /v1/batches`, `GET /v1/batches`, `GET /v1/batches/{id}`,
//! `POST /v1/batches/{id}/cancel`, and the same under `/compatible-mode/v1`. A key sees only
//! its own batches (another's is a 404, its existence untold).

use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{BY_GATEWAY, BY_UPSTREAM, BatchError, batch_json, store_failed, validate};
use crate::auth::Caller;
use crate::config::{AuthMode, ProviderKind};
use crate::error::{GatewayError, json_response};
use crate::state::{AppState, RequestId};
use crate::store::{BatchRecord, now_ms};

/// A create request is a few ids and some metadata.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// OpenAI's bounds on `metadata`.
const MAX_METADATA_PAIRS: usize = 16;
const MAX_METADATA_KEY: usize = 64;
const MAX_METADATA_VALUE: usize = 512;

pub fn routes() -> Router<Arc<AppState>> {
    let mut router = Router::new();
    for base in ["/v1/batches", "/compatible-mode/v1/batches"] {
        router = router
            .route(base, get(list).post(create))
            .route(&format!("{base}/{{id}}"), get(show))
            .route(&format!("{base}/{{id}}/cancel"), post(cancel));
    }
    router.layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
}

fn answer(result: Result<Value, BatchError>, id: &str) -> Response {
    match result {
        Ok(body) => json_response(
            StatusCode::OK,
            serde_json::to_vec(&body).unwrap_or_default(),
        ),
        Err(e) => e.into_response(id),
    }
}

/// The caller, and the hash of its key (kept to act for it again after a restart).
async fn caller_of(state: &AppState, headers: &HeaderMap) -> Result<(Caller, String), BatchError> {
    let caller = state.auth.authenticate(headers).await?;
    if state.auth.mode() == AuthMode::Passthrough {
        return Err(BatchError::Unsupported(
            "The Batch API needs `auth.mode = \"keys\"`: the gateway runs and polls a batch \
             long after the request that made it, without the client's token.",
        ));
    }
    if caller.device.is_some() {
        return Err(BatchError::Unsupported(
            "Device tokens cannot make batches; use the account's API key.",
        ));
    }
    let token = crate::auth::bearer(headers).ok_or(GatewayError::InvalidApiKey)?;
    Ok((caller, hex::encode(crate::auth::hash_key(token))))
}

#[derive(Deserialize)]
struct CreateBody {
    input_file_id: Option<Value>,
    endpoint: Option<Value>,
    completion_window: Option<Value>,
    metadata: Option<Value>,
}

fn string_field(value: Option<Value>, name: &str) -> Result<String, GatewayError> {
    match value {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(_) => Err(GatewayError::param(
            name,
            format!("`{name}` must be a string"),
        )),
        None => Err(GatewayError::param(name, format!("`{name}` is required"))),
    }
}

fn metadata_of(value: Option<Value>) -> Result<Option<Map<String, Value>>, GatewayError> {
    let map = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(GatewayError::param("metadata", "must be an object")),
    };
    if map.len() > MAX_METADATA_PAIRS {
        return Err(GatewayError::param(
            "metadata",
            format!("may have at most {MAX_METADATA_PAIRS} pairs"),
        ));
    }
    for (key, value) in &map {
        let ok = key.len() <= MAX_METADATA_KEY
            && value
                .as_str()
                .is_some_and(|v| v.len() <= MAX_METADATA_VALUE);
        if !ok {
            return Err(GatewayError::param(
                "metadata",
                format!(
                    "`{key}`: keys of at most {MAX_METADATA_KEY} characters, string values of \
                     at most {MAX_METADATA_VALUE}"
                ),
            ));
        }
    }
    Ok(Some(map))
}

async fn create(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(id)): Extension<RequestId>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(create_inner(&state, &headers, &body).await, &id)
}

async fn create_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, BatchError> {
    let (caller, key_hash) = caller_of(state, headers).await?;
    let metrics = &state.batch_metrics;
    let request: CreateBody =
        serde_json::from_slice(body).map_err(|e| GatewayError::InvalidJson(e.to_string()))?;
    let input_file_id = string_field(request.input_file_id, "input_file_id")?;
    let endpoint = string_field(request.endpoint, "endpoint")?;
    if endpoint != validate::ENDPOINT {
        return Err(GatewayError::param(
            "endpoint",
            format!(
                "`{endpoint}` is not supported; batches run {}",
                validate::ENDPOINT
            ),
        )
        .into());
    }
    let window = string_field(request.completion_window, "completion_window")?;
    let window_ms = super::window_ms(&window).ok_or_else(|| {
        GatewayError::param("completion_window", "must be `24h` to `336h`, in hours")
    })?;
    let metadata = metadata_of(request.metadata)?;
    let owner = crate::files::owner_of(&caller);
    let file = (state.store.file(&input_file_id, &owner).await)
        .map_err(store_failed)?
        .ok_or_else(|| GatewayError::FileNotFound(input_file_id.clone()))?;
    if file.purpose != "batch" {
        return Err(GatewayError::param(
            "input_file_id",
            format!(
                "file `{input_file_id}` was uploaded with purpose `{}`, not `batch`",
                file.purpose
            ),
        )
        .into());
    }
    let limit = state.config.batch.max_file_bytes;
    if file.bytes > limit as u64 {
        metrics.refused("too_large");
        return Err(GatewayError::param(
            "input_file_id",
            format!(
                "the file has {} bytes; a batch may have at most {limit}",
                file.bytes
            ),
        )
        .into());
    }
    let active = state
        .store
        .active_batches(&owner)
        .await
        .map_err(store_failed)?;
    if active >= state.config.batch.max_active_per_key {
        metrics.refused("too_many_active");
        return Err(BatchError::TooManyActive(active));
    }
    let bytes = state.files.get(&file.id).await.map_err(|e| {
        tracing::warn!(error = %e, "batches: file storage failed");
        GatewayError::StoreUnavailable
    })?;
    let lines = validate::lines(&bytes, state.config.batch.max_lines).inspect_err(|_| {
        metrics.refused("invalid");
    })?;
    let (upstream, route) = route_of(state, &caller, &lines).inspect_err(|_| {
        metrics.refused("invalid");
    })?;
    let now = now_ms();
    let mut record = BatchRecord {
        id: format!("batch_{}", uuid::Uuid::now_v7()),
        owner,
        key_hash: Some(key_hash),
        endpoint,
        input_file_id,
        completion_window: window,
        route: route.into(),
        model: lines.first().map(|l| l.model.clone()).unwrap_or_default(),
        upstream: upstream.config.name.clone(),
        status: "validating".into(),
        total: lines.len() as i64,
        metadata: metadata.map(|m| Value::Object(m).to_string()),
        created_at: now,
        expires_at: now + window_ms,
        ..BatchRecord::default()
    };
    if route == BY_UPSTREAM {
        super::forward::create(&upstream, &file.filename, bytes, &mut record).await?;
    }
    state.store.add_batch(&record).await.map_err(store_failed)?;
    metrics.created(route);
    Ok(batch_json(&record))
}

/// The upstream the batch's model goes to, and so who runs it: the first upstream serving
/// the first line's model decides. Every line's model must be one the key may use; forwarded,
/// one model for the whole file, as DashScope's batch API takes it.
fn route_of(
    state: &AppState,
    caller: &Caller,
    lines: &[validate::Line],
) -> Result<(Arc<crate::provider::Upstream>, &'static str), GatewayError> {
    let bad = |number: usize, message: String| {
        GatewayError::param(
            "input_file_id",
            format!("line {number}: body.model: {message}"),
        )
    };
    for line in lines {
        if !caller.may_use(&line.model) {
            return Err(bad(
                line.number,
                format!("this API key may not use the model `{}`", line.model),
            ));
        }
        if state.router.serving(&line.model).next().is_none() {
            return Err(bad(
                line.number,
                format!("no upstream serves the model `{}`", line.model),
            ));
        }
    }
    let Some(first) = lines.first() else {
        return Err(GatewayError::param(
            "input_file_id",
            "the file holds no requests",
        ));
    };
    let Some(upstream) = state.router.serving(&first.model).next().cloned() else {
        return Err(bad(
            first.number,
            format!("no upstream serves the model `{}`", first.model),
        ));
    };
    if upstream.config.provider != ProviderKind::Dashscope {
        return Ok((upstream, BY_GATEWAY));
    }
    if let Some(other) = lines.iter().find(|l| l.model != first.model) {
        return Err(bad(
            other.number,
            format!(
                "a batch for a DashScope upstream has one model; line {} asks for `{}`",
                first.number, first.model
            ),
        ));
    }
    Ok((upstream, BY_UPSTREAM))
}

#[derive(Deserialize)]
struct ListQuery {
    after: Option<String>,
    limit: Option<u32>,
}

async fn list(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(id)): Extension<RequestId>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let result = async {
        let (caller, _) = caller_of(&state, &headers).await?;
        let Query(query) = query.map_err(|e| GatewayError::param("limit", e.body_text()))?;
        let limit = query.limit.unwrap_or(20).clamp(1, 100);
        let owner = crate::files::owner_of(&caller);
        let mut found = (state
            .store
            .batches(&owner, query.after.as_deref(), limit + 1)
            .await)
            .map_err(store_failed)?;
        let has_more = found.len() > limit as usize;
        found.truncate(limit as usize);
        let mut data = Vec::with_capacity(found.len());
        for batch in &mut found {
            live_counts(&state, batch).await?;
            data.push(batch_json(batch));
        }
        Ok(json!({
            "object": "list",
            "data": data,
            "first_id": found.first().map(|b| b.id.clone()),
            "last_id": found.last().map(|b| b.id.clone()),
            "has_more": has_more,
        }))
    };
    answer(result.await, &id)
}

/// A batch the gateway is running counts its answered lines as they are kept.
async fn live_counts(state: &AppState, batch: &mut BatchRecord) -> Result<(), BatchError> {
    let running = matches!(
        batch.status.as_str(),
        "in_progress" | "cancelling" | "finalizing"
    );
    if batch.route == BY_GATEWAY && running {
        let (completed, failed) =
            (state.store.batch_counts(&batch.id).await).map_err(store_failed)?;
        batch.completed = completed;
        batch.failed = failed;
    }
    Ok(())
}

async fn owned(
    state: &AppState,
    headers: &HeaderMap,
    batch_id: &str,
) -> Result<BatchRecord, BatchError> {
    let (caller, _) = caller_of(state, headers).await?;
    let owner = crate::files::owner_of(&caller);
    let mut batch = (state.store.batch(batch_id, Some(&owner)).await)
        .map_err(store_failed)?
        .ok_or_else(|| BatchError::NotFound(batch_id.to_string()))?;
    live_counts(state, &mut batch).await?;
    Ok(batch)
}

async fn show(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(id)): Extension<RequestId>,
    headers: HeaderMap,
    Path(batch_id): Path<String>,
) -> Response {
    let result = async { Ok(batch_json(&owned(&state, &headers, &batch_id).await?)) };
    answer(result.await, &id)
}

/// Marks the batch `cancelling`; the runner stops it (and tells a forwarding upstream), keeps
/// what was answered, and marks it `cancelled`.
async fn cancel(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(id)): Extension<RequestId>,
    headers: HeaderMap,
    Path(batch_id): Path<String>,
) -> Response {
    let result = async {
        let batch = owned(&state, &headers, &batch_id).await?;
        let moved = (state
            .store
            .cancel_batch(&batch.id, &batch.owner, now_ms())
            .await)
            .map_err(store_failed)?;
        if !moved && !matches!(batch.status.as_str(), "cancelling" | "cancelled") {
            return Err(BatchError::NotCancellable {
                id: batch.id,
                status: batch.status,
            });
        }
        Ok(batch_json(&owned(&state, &headers, &batch_id).await?))
    };
    answer(result.await, &id)
}
