//! `GET /v1/models` and `GET /v1/models/{id}`: the models this key may use, in OpenAI's shape;
//! and `GET /api/v1/models` (`page_no`, `page_size`, `model`), the same list as DashScope's
//! native API and its SDK's `Models.list()` / `Models.get()` read it.
//! Named models come from the config; a `"*"` upstream is asked what it serves (cached, see
//! `provider::models`), and the key's allow-list filters the whole.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value, json};

use crate::auth::Caller;
use crate::error::{GatewayError, json_response};
use crate::state::{AppState, RequestId};

/// `GET /v1/models`.
pub async fn models(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
) -> Response {
    let caller = match state.auth.authenticate(&headers).await {
        Ok(caller) => caller,
        Err(error) => return error.into_openai_response(&request_id),
    };
    let data: Vec<Value> = available(&state, &caller)
        .await
        .into_values()
        .map(Value::Object)
        .collect();
    let body = json!({"object": "list", "data": data});
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&body).unwrap_or_default(),
    )
}

/// `GET /v1/models/{id}`: one model, or 404 `model_not_found` (also for one the key may not use).
pub async fn model(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let caller = match state.auth.authenticate(&headers).await {
        Ok(caller) => caller,
        Err(error) => return error.into_openai_response(&request_id),
    };
    match available(&state, &caller).await.remove(&id) {
        Some(entry) => json_response(
            StatusCode::OK,
            serde_json::to_vec(&Value::Object(entry)).unwrap_or_default(),
        ),
        None => GatewayError::ModelNotFound(id).into_openai_response(&request_id),
    }
}

/// `GET /api/v1/models`: `{request_id, output: {models: [{model, ...}], page_no, page_size,
/// total}}`, one page; `model=NAME` narrows it to that model.
pub async fn native_models(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let caller = match state.auth.authenticate(&headers).await {
        Ok(caller) => caller,
        Err(error) => return error.into_native_response(&request_id),
    };
    let number = |name: &str, default: usize| {
        query
            .get(name)
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(default)
    };
    let (page_no, page_size) = (number("page_no", 1), number("page_size", 10).min(100));
    let mut found = available(&state, &caller).await;
    if let Some(name) = query.get("model") {
        found.retain(|id, _| id == name);
    }
    let total = found.len();
    let models: Vec<Value> = found
        .into_iter()
        .skip((page_no - 1).saturating_mul(page_size))
        .take(page_size)
        .map(|(id, mut entry)| {
            entry.remove("object");
            entry.remove("id");
            let mut model = Map::new();
            model.insert("model".into(), json!(id));
            model.insert("name".into(), json!(id));
            model.extend(entry);
            Value::Object(model)
        })
        .collect();
    let body = json!({"request_id": &*request_id, "output": {"models": models,
        "page_no": page_no, "page_size": page_size, "total": total}});
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&body).unwrap_or_default(),
    )
}

/// The caller's models by id. An upstream that cannot be asked leaves its `"*"` unlisted;
/// an allow-list then still names what routes.
async fn available(state: &AppState, caller: &Caller) -> BTreeMap<String, Map<String, Value>> {
    let entry = |id: &str| -> Map<String, Value> {
        let value = json!({"id": id, "object": "model", "created": 0, "owned_by": "dashgate"});
        value.as_object().cloned().unwrap_or_default()
    };
    let mut found: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut unlisted_wildcard = false;
    let token = caller.passthrough_token.as_deref();
    for upstream in state.router.upstreams() {
        for name in upstream.config.models.iter().filter(|m| *m != "*") {
            found.entry(name.clone()).or_insert_with(|| entry(name));
        }
        if !upstream.config.models.iter().any(|m| m == "*") {
            continue;
        }
        match state.model_lists.of(upstream, token).await {
            Ok(list) => {
                for model in list.iter() {
                    if let Some(id) = model.get("id").and_then(Value::as_str) {
                        let mut model = model.clone();
                        model.insert("object".into(), json!("model"));
                        found.entry(id.to_string()).or_insert(model);
                    }
                }
            }
            Err(error) => {
                tracing::warn!(upstream = %upstream.config.name, error = %error, "model list unavailable");
                unlisted_wildcard = true;
            }
        }
    }
    if let Some(allowed) = &caller.models {
        found.retain(|id, _| allowed.iter().any(|a| a == id));
        if unlisted_wildcard {
            for id in allowed.iter().filter(|m| state.router.serves(m)) {
                found.entry(id.clone()).or_insert_with(|| entry(id));
            }
        }
    }
    found
}
