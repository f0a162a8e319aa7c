//! The Batch API (`/v1/batches`, OpenAI's shape, docs/batch.md): batches made from files
//! uploaded with `purpose=batch`. A batch whose model a `dashscope` upstream serves is forwarded
//! to that upstream's batch API (`forward`); any other the gateway runs itself, line by line,
//! through the same path as a chat request (`runner`, `line`). Results land as gateway files,
//! read through `/v1/files/{id}/content`.

mod api;
mod forward;
mod line;
mod runner;
pub mod validate;

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

pub use api::routes;
// The Batch API's metrics are kept in telemetry: the AppState holds them, and batch reads the
// AppState, so a batch type there would close a loop (state -> batch -> relay -> state).
pub use crate::telemetry::batch::BatchMetrics;
pub use runner::start;

use crate::error::{GatewayError, json_response};
use crate::store::BatchRecord;

/// Who runs a batch.
pub const BY_GATEWAY: &str = "gateway";
pub const BY_UPSTREAM: &str = "upstream";

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("No batch `{0}`.")]
    NotFound(String),
    #[error("This key has {0} batches running, the most it may; wait for one to end.")]
    TooManyActive(i64),
    #[error("Batch `{id}` is {status}; only a batch still running can be cancelled.")]
    NotCancellable { id: String, status: String },
    /// Callers the gateway cannot act for again later (it runs and polls batches long after
    /// the request that made them): passthrough mode, device tokens.
    #[error("{0}")]
    Unsupported(&'static str),
    #[error(transparent)]
    Gateway(#[from] GatewayError),
}

impl BatchError {
    /// The OpenAI-dialect error response.
    pub fn into_response(self, request_id: &str) -> Response {
        let message = self.to_string();
        let (status, kind, code, param) = match self {
            BatchError::Gateway(e) => return e.into_openai_response(request_id),
            BatchError::NotFound(_) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "batch_not_found",
                Some("batch_id"),
            ),
            BatchError::TooManyActive(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "too_many_batches",
                None,
            ),
            BatchError::NotCancellable { .. } => (
                StatusCode::CONFLICT,
                "invalid_request_error",
                "batch_not_cancellable",
                Some("batch_id"),
            ),
            BatchError::Unsupported(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "batch_unsupported",
                None,
            ),
        };
        let body = json!({
            "error": {"message": message, "type": kind, "param": param, "code": code},
            "request_id": request_id,
        });
        json_response(status, serde_json::to_vec(&body).unwrap_or_default())
    }
}

fn store_failed(e: crate::store::StoreError) -> BatchError {
    tracing::warn!(error = %e, "batches: store failed");
    BatchError::Gateway(GatewayError::StoreUnavailable)
}

fn seconds(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |ms| json!(ms / 1000))
}

/// The OpenAI batch object.
pub fn batch_json(b: &BatchRecord) -> Value {
    let parse = |text: &Option<String>| {
        text.as_deref()
            .and_then(|t| serde_json::from_str::<Value>(t).ok())
            .unwrap_or(Value::Null)
    };
    json!({
        "id": b.id,
        "object": "batch",
        "endpoint": b.endpoint,
        "errors": parse(&b.errors),
        "input_file_id": b.input_file_id,
        "completion_window": b.completion_window,
        "status": b.status,
        "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id,
        "created_at": b.created_at / 1000,
        "in_progress_at": seconds(b.in_progress_at),
        "expires_at": b.expires_at / 1000,
        "finalizing_at": seconds(b.finalizing_at),
        "completed_at": seconds(b.completed_at),
        "failed_at": seconds(b.failed_at),
        "expired_at": seconds(b.expired_at),
        "cancelling_at": seconds(b.cancelling_at),
        "cancelled_at": seconds(b.cancelled_at),
        "request_counts": {"total": b.total, "completed": b.completed, "failed": b.failed},
        "metadata": parse(&b.metadata),
    })
}

/// The `errors` object of a batch that failed as a whole.
pub fn errors_of(code: &str, message: &str) -> String {
    json!({"object": "list", "data": [{"code": code, "message": message, "param": null, "line": null}]})
        .to_string()
}

/// A batch's `completion_window`: `24h` up to `336h` (14 days), as DashScope takes it; the
/// window in milliseconds.
pub fn window_ms(window: &str) -> Option<i64> {
    let hours: i64 = window.strip_suffix('h')?.parse().ok()?;
    (24..=336).contains(&hours).then_some(hours * 3_600_000)
}
