//! `GET /v1/models` and `GET /v1/models/{id}`: the models this key may use, in OpenAI's shape.
//! Named models come from the config; a `"*"` upstream is asked what it serves (cached, see
//! `provider::models`), and the key's allow-list filters the whole.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value, json};

use crate::auth::Caller;
use crate::error::{GatewayError, json_response};
use crate::server::{AppState, RequestId};

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
