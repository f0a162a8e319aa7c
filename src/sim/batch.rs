//! DashScope's batch API in compatible mode (OpenAI's shape): `POST /compatible-mode/v1/batches`
//! over a file uploaded with purpose `batch`, `GET .../batches` and `.../batches/{id}`,
//! `POST .../batches/{id}/cancel`. Deterministic: a batch says `in_progress` until its
//! `--batch-polls`-th `GET`, which runs every line through the simulator's own chat endpoint and
//! ends it `completed`, with an output file (lines answered 200) and an error file (the rest)
//! read at `/compatible-mode/v1/files/{id}/content`. A cancel makes it `cancelling`; the next
//! `GET` says `cancelled`, with no results. A batch made with `metadata.sim_fault = "404"` is
//! lost: every `GET` of it is a 404 `not_found`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::{Value, json};

use super::{SimState, authorized, compat_error};

#[derive(Clone)]
struct SimBatch {
    object: Value,
    input_file_id: String,
    polls: u32,
}

#[derive(Default)]
pub struct SimBatches(Mutex<BTreeMap<String, SimBatch>>);

impl SimBatches {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SimBatch>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub fn routes() -> Router<Arc<SimState>> {
    Router::new()
        .route("/compatible-mode/v1/batches", get(list).post(create))
        .route("/compatible-mode/v1/batches/{id}", get(show))
        .route("/compatible-mode/v1/batches/{id}/cancel", post(cancel))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn bad(message: &str) -> Response {
    compat_error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "invalid_parameter_error",
        message,
        "sim-batches",
    )
}

fn not_found(id: &str) -> Response {
    compat_error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "not_found",
        &format!("Batch [{id}] not found."),
        "sim-batches",
    )
}

fn refused(headers: &HeaderMap, state: &SimState) -> Option<Response> {
    (!authorized(&state.options, headers)).then(|| {
        compat_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            "Incorrect API key provided. ",
            "sim-batches",
        )
    })
}

async fn create(State(state): State<Arc<SimState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = refused(&headers, &state) {
        return r;
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return bad("The request body is not valid JSON");
    };
    let field = |name: &str| {
        request
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let Some(input_file_id) = field("input_file_id") else {
        return bad("input_file_id is required");
    };
    match state.files.bytes_of(&input_file_id) {
        Some((purpose, _)) if purpose == "batch" => {}
        Some(_) => return bad("The input file's purpose must be batch"),
        None => return bad(&format!("File [{input_file_id}] not found.")),
    }
    let Some(endpoint) = field("endpoint") else {
        return bad("endpoint is required");
    };
    let window = field("completion_window").unwrap_or_else(|| "24h".into());
    let seq = state.batches.lock().len();
    let id = format!(
        "batch_sim{}",
        &super::reply::sha16(format!("{input_file_id}:{seq}").as_bytes())[..12]
    );
    let created = now();
    let object = json!({
        "id": id,
        "object": "batch",
        "endpoint": endpoint,
        "errors": null,
        "input_file_id": input_file_id,
        "completion_window": window,
        "status": "validating",
        "output_file_id": null,
        "error_file_id": null,
        "created_at": created,
        "in_progress_at": null,
        "expires_at": created + 86_400,
        "finalizing_at": null,
        "completed_at": null,
        "failed_at": null,
        "expired_at": null,
        "cancelling_at": null,
        "cancelled_at": null,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": request.get("metadata").cloned().unwrap_or(Value::Null),
    });
    let batch = SimBatch {
        object: object.clone(),
        input_file_id,
        polls: 0,
    };
    state.batches.lock().insert(id, batch);
    axum::Json(object).into_response()
}

async fn list(State(state): State<Arc<SimState>>, headers: HeaderMap) -> Response {
    if let Some(r) = refused(&headers, &state) {
        return r;
    }
    let data: Vec<Value> = state
        .batches
        .lock()
        .values()
        .map(|b| b.object.clone())
        .collect();
    axum::Json(json!({"object": "list", "data": data, "has_more": false})).into_response()
}

async fn show(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = refused(&headers, &state) {
        return r;
    }
    let batch = {
        let mut batches = state.batches.lock();
        let Some(batch) = batches.get_mut(&id) else {
            return not_found(&id);
        };
        // `metadata.sim_fault = "404"`: the batch is lost, as if DashScope had dropped it.
        if batch
            .object
            .pointer("/metadata/sim_fault")
            .and_then(Value::as_str)
            == Some("404")
        {
            return not_found(&id);
        }
        batch.polls += 1;
        let status = batch.object["status"].as_str().unwrap_or("").to_string();
        match status.as_str() {
            "cancelling" => {
                batch.object["status"] = json!("cancelled");
                batch.object["cancelled_at"] = json!(now());
                return axum::Json(batch.object.clone()).into_response();
            }
            "validating" | "in_progress" if batch.polls < state.options.batch_polls => {
                batch.object["status"] = json!("in_progress");
                batch.object["in_progress_at"] = json!(now());
                return axum::Json(batch.object.clone()).into_response();
            }
            "validating" | "in_progress" => batch.clone(),
            _ => return axum::Json(batch.object.clone()).into_response(),
        }
    };
    let object = run(&state, &headers, &id, batch).await;
    if let Some(kept) = state.batches.lock().get_mut(&id) {
        kept.object = object.clone();
    }
    axum::Json(object).into_response()
}

/// Answers every line, as the chat endpoint would, and ends the batch.
async fn run(state: &Arc<SimState>, headers: &HeaderMap, id: &str, batch: SimBatch) -> Value {
    let mut object = batch.object;
    let input = state
        .files
        .bytes_of(&batch.input_file_id)
        .map(|(_, b)| b)
        .unwrap_or_default();
    let (mut output, mut errors, mut good, mut bad) = (String::new(), String::new(), 0, 0);
    for (index, line) in String::from_utf8_lossy(&input).lines().enumerate() {
        let Ok(line) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let custom_id = line.get("custom_id").cloned().unwrap_or(Value::Null);
        let body = line.get("body").cloned().unwrap_or(Value::Null);
        let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        let response = super::compat::chat(State(state.clone()), headers.clone(), body).await;
        let status = response.status().as_u16();
        let request_id = (response.headers().get("x-request-id"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        let body = serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null);
        let out = json!({
            "id": format!("{id}-{index}"),
            "custom_id": custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body},
            "error": null,
        });
        let (file, count) = if status == 200 {
            (&mut output, &mut good)
        } else {
            (&mut errors, &mut bad)
        };
        file.push_str(&out.to_string());
        file.push('\n');
        *count += 1;
    }
    let now = now();
    for (text, field, kind) in [
        (output, "output_file_id", "output"),
        (errors, "error_file_id", "error"),
    ] {
        if text.is_empty() {
            continue;
        }
        let file_id = format!(
            "file-batch_{kind}-{}",
            &super::reply::sha16(text.as_bytes())[..12]
        );
        let name = format!("{id}_{kind}.jsonl");
        state
            .files
            .insert(&file_id, &name, "batch_output", Bytes::from(text));
        object[field] = json!(file_id);
    }
    object["status"] = json!("completed");
    object["in_progress_at"] = object["in_progress_at"]
        .as_i64()
        .map_or(json!(now), |t| json!(t));
    object["finalizing_at"] = json!(now);
    object["completed_at"] = json!(now);
    object["request_counts"] = json!({"total": good + bad, "completed": good, "failed": bad});
    object
}

async fn cancel(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = refused(&headers, &state) {
        return r;
    }
    let mut batches = state.batches.lock();
    let Some(batch) = batches.get_mut(&id) else {
        return not_found(&id);
    };
    if matches!(
        batch.object["status"].as_str(),
        Some("validating" | "in_progress")
    ) {
        batch.object["status"] = json!("cancelling");
        batch.object["cancelling_at"] = json!(now());
    }
    axum::Json(batch.object.clone()).into_response()
}
