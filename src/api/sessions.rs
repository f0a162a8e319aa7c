//! `GET /v1/sessions/{id}` (the stored conversation) and `DELETE /v1/sessions/{id}`, also
//! under `/compatible-mode/v1`. A caller sees only its own sessions: any other is 404.

use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;

use crate::error::{GatewayError, json_response};
use crate::session::{Entry, check_id, owner_of, store_failed};
use crate::state::{AppState, RequestId};

pub fn routes() -> Router<Arc<AppState>> {
    let mut router = Router::new();
    for base in ["/v1/sessions", "/compatible-mode/v1/sessions"] {
        router = router.route(
            &format!("{base}/{{id}}"),
            axum::routing::get(show).delete(delete),
        );
    }
    router
}

async fn show(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let shown = async {
        check_id(&id)?;
        let caller = state.auth.authenticate(&headers).await?;
        let fresh_since = state.sessions.fresh_since();
        let record = state
            .store
            .session(&owner_of(&caller), &id, fresh_since)
            .await
            .map_err(store_failed)?
            .ok_or_else(|| GatewayError::SessionNotFound(id.clone()))?;
        let entries: Vec<Entry> = serde_json::from_str(&record.messages)
            .map_err(|e| store_failed(crate::store::StoreError::Corrupt(e.to_string())))?;
        let messages: Vec<_> = entries.into_iter().map(|e| e.message).collect();
        let body = json!({
            "id": record.id,
            "object": "session",
            "messages": messages,
            "token_estimate": record.tokens,
            "created_at": record.created_at / 1000,
            "updated_at": record.updated_at / 1000,
        });
        Ok::<_, GatewayError>(json_response(StatusCode::OK, body.to_string().into_bytes()))
    };
    shown
        .await
        .unwrap_or_else(|e| e.into_openai_response(&request_id))
}

async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let deleted = async {
        check_id(&id)?;
        let caller = state.auth.authenticate(&headers).await?;
        let found = state
            .store
            .delete_session(&owner_of(&caller), &id)
            .await
            .map_err(store_failed)?;
        if !found {
            return Err(GatewayError::SessionNotFound(id.clone()));
        }
        let mut response = Response::new(axum::body::Body::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        Ok(response)
    };
    deleted
        .await
        .unwrap_or_else(|e| e.into_openai_response(&request_id))
}
