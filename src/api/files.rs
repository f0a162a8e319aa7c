//! `POST /v1/files` (multipart: `file`, `purpose` = `file-extract` or `batch`), `GET /v1/files`,
//! `GET /v1/files/{id}`, `DELETE /v1/files/{id}`, `GET /v1/files/{id}/content`, and the same
//! under `/compatible-mode/v1`. A key sees and uses only the files it uploaded.

use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Multipart, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::error::{GatewayError, json_response};
use crate::files::{cage, extract, new_id, owner_of, resolve};
use crate::state::{AppState, RequestId};
use crate::store::{FileRecord, now_ms};

pub fn routes(state: &Arc<AppState>) -> Router<Arc<AppState>> {
    // Multipart framing on top of the file itself.
    let limit = state.files.config.max_file_bytes.saturating_add(64 * 1024);
    let mut router = Router::new();
    for base in ["/v1/files", "/compatible-mode/v1/files"] {
        router = router
            .route(base, get(list).post(upload))
            .route(&format!("{base}/{{id}}"), get(show).delete(delete))
            .route(&format!("{base}/{{id}}/content"), get(content));
    }
    router.layer(DefaultBodyLimit::max(limit))
}

/// The OpenAI / DashScope file object.
fn file_json(file: &FileRecord) -> Value {
    json!({
        "id": file.id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": file.created_at / 1000,
        "filename": file.filename,
        "purpose": file.purpose,
        "status": "processed",
        "status_details": null,
    })
}

fn answer(result: Result<Response, GatewayError>, id: &str) -> Response {
    result.unwrap_or_else(|e| e.into_openai_response(id))
}

fn store_failed(e: crate::store::StoreError) -> GatewayError {
    tracing::warn!(error = %e, "files: store failed");
    GatewayError::StoreUnavailable
}

fn storage_failed(e: object_store::Error) -> GatewayError {
    tracing::warn!(error = %e, "files: storage failed");
    GatewayError::StoreUnavailable
}

async fn upload(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(id)): Extension<RequestId>,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    answer(upload_inner(&state, &headers, multipart).await, &id)
}

async fn upload_inner(
    state: &AppState,
    headers: &HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, GatewayError> {
    let caller = state.auth.authenticate(headers).await?;
    let mut multipart = multipart.map_err(|e| {
        GatewayError::param("file", format!("expected a multipart/form-data body: {e}"))
    })?;
    let limit = state.files.config.max_file_bytes;
    let (mut file, mut purpose) = (None, None);
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(GatewayError::PayloadTooLarge { limit });
            }
            Err(e) => return Err(GatewayError::param("file", e.body_text())),
        };
        match field.name() {
            Some("file") => {
                let filename = field.file_name().unwrap_or("").to_string();
                let bytes = field.bytes().await.map_err(|e| {
                    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        GatewayError::PayloadTooLarge { limit }
                    } else {
                        GatewayError::param("file", e.body_text())
                    }
                })?;
                file = Some((filename, bytes));
            }
            Some("purpose") => {
                purpose = Some(
                    field
                        .text()
                        .await
                        .map_err(|e| GatewayError::param("purpose", e.body_text()))?,
                );
            }
            _ => {} // other form fields are ignored, as upstream does
        }
    }
    let purpose = purpose.ok_or_else(|| GatewayError::param("purpose", "is required"))?;
    if purpose != "file-extract" && purpose != "batch" {
        return Err(GatewayError::param(
            "purpose",
            format!("`{purpose}` is not one of file-extract, batch"),
        ));
    }
    let (filename, bytes) = file.ok_or_else(|| GatewayError::param("file", "is required"))?;
    check_upload(&filename, &bytes, &purpose, limit)?;
    // Text is extracted for upstreams without a files API; opaque kinds only DashScope reads.
    let has_text = purpose == "file-extract"
        && !matches!(
            extract::kind_of(&filename, &bytes),
            Ok(extract::Kind::Opaque)
        );
    let record = FileRecord {
        id: new_id(&purpose),
        owner: owner_of(&caller),
        filename,
        purpose,
        bytes: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(&bytes)),
        created_at: now_ms(),
    };
    state
        .files
        .put(&record.id, bytes)
        .await
        .map_err(storage_failed)?;
    state.store.add_file(&record).await.map_err(store_failed)?;
    if has_text {
        // Extracted once, now; a refusal is kept too and told when the file is used, since a
        // `dashscope` upstream reads the file itself.
        let _ = cage::text(&state.files, &state.store, &record).await;
    }
    let body = serde_json::to_vec(&file_json(&record)).unwrap_or_default();
    Ok(json_response(StatusCode::OK, body))
}

fn check_upload(
    filename: &str,
    bytes: &Bytes,
    purpose: &str,
    limit: usize,
) -> Result<(), GatewayError> {
    if filename.is_empty() || filename.len() > 255 || filename.contains(['/', '\\', '\0']) {
        return Err(GatewayError::param(
            "file",
            "needs a file name of 1 to 255 characters, without slashes",
        ));
    }
    if bytes.is_empty() {
        return Err(GatewayError::param("file", "is empty"));
    }
    if bytes.len() > limit {
        return Err(GatewayError::PayloadTooLarge { limit });
    }
    if purpose == "batch" {
        let jsonl = filename.to_ascii_lowercase().ends_with(".jsonl");
        if !jsonl || std::str::from_utf8(bytes).is_err() {
            return Err(GatewayError::param(
                "file",
                "batch input must be a UTF-8 .jsonl file",
            ));
        }
        return Ok(());
    }
    extract::kind_of(filename, bytes)
        .map(|_| ())
        .map_err(|reason| GatewayError::param("file", reason))
}

async fn list(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(id)): Extension<RequestId>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let caller = state.auth.authenticate(&headers).await?;
        let files = state
            .store
            .files(&owner_of(&caller), 10_000)
            .await
            .map_err(store_failed)?;
        let data: Vec<Value> = files.iter().map(file_json).collect();
        let body = json!({"object": "list", "data": data, "has_more": false});
        Ok(json_response(
            StatusCode::OK,
            serde_json::to_vec(&body).unwrap_or_default(),
        ))
    };
    answer(result.await, &id)
}

/// The caller's file, or 404 (also when another key owns it: its existence is not told).
async fn owned(
    state: &AppState,
    headers: &HeaderMap,
    file_id: &str,
) -> Result<FileRecord, GatewayError> {
    let caller = state.auth.authenticate(headers).await?;
    state
        .store
        .file(file_id, &owner_of(&caller))
        .await
        .map_err(store_failed)?
        .ok_or_else(|| GatewayError::FileNotFound(file_id.to_string()))
}

async fn show(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(id)): Extension<RequestId>,
    headers: HeaderMap,
    Path(file_id): Path<String>,
) -> Response {
    let result = async {
        let file = owned(&state, &headers, &file_id).await?;
        Ok(json_response(
            StatusCode::OK,
            serde_json::to_vec(&file_json(&file)).unwrap_or_default(),
        ))
    };
    answer(result.await, &id)
}

async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(id)): Extension<RequestId>,
    headers: HeaderMap,
    Path(file_id): Path<String>,
) -> Response {
    let result = async {
        let file = owned(&state, &headers, &file_id).await?;
        state
            .store
            .delete_file(&file.id, &file.owner)
            .await
            .map_err(store_failed)?;
        if let Err(e) = state.files.delete(&file.id).await {
            // The record is gone, so nobody can reach the bytes; they are logged for cleanup.
            tracing::warn!(error = %e, file = %file.id, "file bytes not deleted");
        }
        resolve::forget_upstream_copies(&state.store, state.router.upstreams(), &file.id).await;
        let body = json!({"object": "file", "deleted": true, "id": file.id});
        Ok(json_response(
            StatusCode::OK,
            serde_json::to_vec(&body).unwrap_or_default(),
        ))
    };
    answer(result.await, &id)
}

async fn content(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(id)): Extension<RequestId>,
    headers: HeaderMap,
    Path(file_id): Path<String>,
) -> Response {
    let result = async {
        let file = owned(&state, &headers, &file_id).await?;
        let bytes = state.files.get(&file.id).await.map_err(storage_failed)?;
        let mut response = Response::new(axum::body::Body::from(bytes));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        Ok(response)
    };
    answer(result.await, &id)
}
