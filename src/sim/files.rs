//! DashScope's files API (`/compatible-mode/v1/files`): upload (multipart `file` and
//! `purpose`), list, get, delete and content, held in memory. A system message naming
//! `fileid://ID` makes the reply say what it read: one line per file, `[file ID NAME: first
//! words]`, and the file's text counts as prompt tokens, as DashScope bills it. An unknown id
//! is a 400, as upstream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

use super::{SimState, authorized, compat_error};
use crate::files::extract;

pub struct SimFile {
    filename: String,
    purpose: String,
    bytes: Bytes,
    created_at: i64,
}

#[derive(Default)]
pub struct SimFiles(Mutex<HashMap<String, SimFile>>);

impl SimFiles {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SimFile>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SimFiles {
    /// Keeps a file the simulator made itself (a batch's results).
    pub(super) fn insert(&self, id: &str, filename: &str, purpose: &str, bytes: Bytes) {
        let created_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let file = SimFile {
            filename: filename.into(),
            purpose: purpose.into(),
            bytes,
            created_at,
        };
        self.lock().insert(id.to_string(), file);
    }

    /// A file's purpose and bytes.
    pub(super) fn bytes_of(&self, id: &str) -> Option<(String, Bytes)> {
        let files = self.lock();
        let f = files.get(id)?;
        Some((f.purpose.clone(), f.bytes.clone()))
    }
}

fn object(id: &str, f: &SimFile) -> Value {
    json!({
        "id": id,
        "bytes": f.bytes.len(),
        "created_at": f.created_at,
        "filename": f.filename,
        "object": "file",
        "purpose": f.purpose,
        "status": "processed",
        "status_details": null,
    })
}

fn refused(headers: &HeaderMap, state: &SimState) -> Option<Response> {
    (!authorized(&state.options, headers)).then(|| {
        compat_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            "Incorrect API key provided. ",
            "sim-files",
        )
    })
}

fn not_found(id: &str) -> Response {
    compat_error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "not_found",
        &format!("File [{id}] not found."),
        "sim-files",
    )
}

pub async fn upload(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    mut multipart: Multipart,
) -> Response {
    if let Some(r) = refused(&headers, &state) {
        return r;
    }
    let (mut file, mut purpose) = (None, None);
    while let Ok(Some(field)) = multipart.next_field().await {
        match field.name() {
            Some("file") => {
                let name = field.file_name().unwrap_or("file").to_string();
                file = field.bytes().await.ok().map(|b| (name, b));
            }
            Some("purpose") => purpose = field.text().await.ok(),
            _ => {}
        }
    }
    let (Some((filename, bytes)), Some(purpose)) = (file, purpose) else {
        return compat_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_parameter_error",
            "file and purpose are required",
            "sim-files",
        );
    };
    let kind = if purpose == "batch" { "batch" } else { "fe" };
    let id = format!("file-{kind}-sim{}", &super::reply::sha16(&bytes)[..12]);
    let created_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let f = SimFile {
        filename,
        purpose,
        bytes,
        created_at,
    };
    let body = object(&id, &f);
    state.files.lock().insert(id, f);
    axum::Json(body).into_response()
}

pub async fn list(State(state): State<Arc<SimState>>, headers: HeaderMap) -> Response {
    if let Some(r) = refused(&headers, &state) {
        return r;
    }
    let files = state.files.lock();
    let data: Vec<Value> = files.iter().map(|(id, f)| object(id, f)).collect();
    axum::Json(json!({"object": "list", "data": data, "has_more": false})).into_response()
}

pub async fn show(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = refused(&headers, &state) {
        return r;
    }
    match state.files.lock().get(&id) {
        Some(f) => axum::Json(object(&id, f)).into_response(),
        None => not_found(&id),
    }
}

pub async fn delete(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = refused(&headers, &state) {
        return r;
    }
    match state.files.lock().remove(&id) {
        Some(_) => axum::Json(json!({"object": "file", "deleted": true, "id": id})).into_response(),
        None => not_found(&id),
    }
}

pub async fn content(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = refused(&headers, &state) {
        return r;
    }
    match state.files.lock().get(&id) {
        Some(f) => f.bytes.clone().into_response(),
        None => not_found(&id),
    }
}

/// What the model "read": a line per file named in a system message, and the prompt tokens
/// the files' text adds. `Err` carries an id the simulator does not have.
pub fn documents(files: &SimFiles, messages: &[Value]) -> Result<(String, u64), String> {
    let files = files.lock();
    let mut lines = String::new();
    let mut tokens = 0;
    for m in messages {
        if m.get("role").and_then(Value::as_str) != Some("system") {
            continue;
        }
        let Some(text) = m.get("content").and_then(Value::as_str) else {
            continue;
        };
        if !text.trim_start().starts_with("fileid://") {
            continue;
        }
        for id in text
            .split(',')
            .filter_map(|r| r.trim().strip_prefix("fileid://"))
        {
            let f = files.get(id).ok_or_else(|| id.to_string())?;
            let body = extract::kind_of(&f.filename, &f.bytes)
                .and_then(|kind| extract::text_of(kind, &f.bytes))
                .unwrap_or_default();
            tokens += super::reply::tokens_of(&body);
            let start: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
            let start: String = start.chars().take(60).collect();
            lines.push_str(&format!("\n[file {id} {}: {start}]", f.filename));
        }
    }
    Ok((lines, tokens))
}
