//! Batches forwarded to a `dashscope` upstream's batch API: the input goes up as a file
//! (purpose `batch`), the batch is made there, and each runner round polls it, mirroring its
//! status and counts. When it ends, its output and error files come down as gateway files and
//! each output line's usage goes into the ledger, once (a fixed record id per line).

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};

use super::runner::{caller_of, keep_file, settle};
use super::{BY_UPSTREAM, BatchError};
use crate::auth::{Caller, Limits};
use crate::config::AuthMode;
use crate::error::GatewayError;
use crate::provider::Upstream;
use crate::state::AppState;
use crate::store::{BatchRecord, StoreError, now_ms};
use crate::usage::Meter;

const ENDED: [&str; 4] = ["completed", "failed", "expired", "cancelled"];

/// An upstream's status in OpenAI's words; anything else is still running.
fn status_of(object: &Value) -> &str {
    match object.get("status").and_then(Value::as_str) {
        Some(
            s @ ("validating" | "in_progress" | "finalizing" | "completed" | "failed" | "expired"
            | "cancelling" | "cancelled"),
        ) => s,
        _ => "in_progress",
    }
}

/// Uploads the input and makes the batch upstream; the record takes its id and status.
pub async fn create(
    upstream: &Upstream,
    filename: &str,
    bytes: Bytes,
    record: &mut BatchRecord,
) -> Result<(), BatchError> {
    let file_id = upstream
        .upload_file(filename, bytes, "batch", AuthMode::Keys, None)
        .await?;
    let mut body = json!({
        "input_file_id": file_id,
        "endpoint": record.endpoint,
        "completion_window": record.completion_window,
    });
    if let Some(metadata) = record
        .metadata
        .as_deref()
        .and_then(|m| serde_json::from_str::<Value>(m).ok())
    {
        body["metadata"] = metadata;
    }
    let object = upstream.create_batch(&body).await?;
    let id =
        object
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| GatewayError::UpstreamProtocol {
                upstream: upstream.config.name.clone(),
                message: "the batch answer has no id".into(),
            })?;
    record.upstream_batch_id = Some(id.to_string());
    record.status = status_of(&object).to_string();
    Ok(())
}

fn upstream_of(state: &AppState, name: &str) -> Option<Arc<Upstream>> {
    (state.router.upstreams().iter())
        .find(|u| u.config.name == name)
        .cloned()
}

/// One poll: the upstream's status and counts mirrored; at its end, the results kept.
pub async fn step(state: &Arc<AppState>, mut batch: BatchRecord) -> Result<(), StoreError> {
    let Some(upstream_id) = batch.upstream_batch_id.clone() else {
        return Ok(());
    };
    let Some(upstream) = upstream_of(state, &batch.upstream) else {
        batch.errors = Some(super::errors_of(
            "upstream_gone",
            &format!("upstream `{}` is no longer configured", batch.upstream),
        ));
        return settle(state, &mut batch, "failed").await.map(|_| ());
    };
    if batch.status == "cancelling" {
        // Asked again each round until the upstream says it ended; a second ask is harmless.
        if let Err(e) = upstream.cancel_batch(&upstream_id).await {
            tracing::debug!(batch = %batch.id, error = %e, "batch cancel upstream failed");
        }
    }
    let polled = upstream.get_batch(&upstream_id).await;
    let object = match polled {
        Ok(object) => object,
        // The upstream no longer knows it: no later poll will either.
        Err(GatewayError::UpstreamRejected(r)) if r.status == 404 => {
            let message = format!(
                "upstream `{}` no longer knows batch `{upstream_id}`",
                batch.upstream
            );
            batch.errors = Some(super::errors_of("upstream_batch_missing", &message));
            return settle(state, &mut batch, "failed").await.map(|_| ());
        }
        // Past its window with the upstream still not answering: it will not end there now.
        Err(e) if now_ms() > batch.expires_at => {
            let message = format!("the upstream was not reachable by the batch's end: {e}");
            batch.errors = Some(super::errors_of("upstream_unreachable", &message));
            return settle(state, &mut batch, "expired").await.map(|_| ());
        }
        Err(e) => {
            // The next round tries again.
            tracing::warn!(batch = %batch.id, error = %e, "batch poll failed");
            return Ok(());
        }
    };
    let status = status_of(&object).to_string();
    if let Some(counts) = object.get("request_counts") {
        let count = |name: &str| counts.get(name).and_then(Value::as_i64);
        batch.total = count("total").unwrap_or(batch.total);
        batch.completed = count("completed").unwrap_or(batch.completed);
        batch.failed = count("failed").unwrap_or(batch.failed);
    }
    if let Some(errors) = object.get("errors").filter(|e| !e.is_null()) {
        batch.errors = Some(errors.to_string());
    }
    if !ENDED.contains(&status.as_str()) {
        // A cancel asked here stays `cancelling` until the upstream says it is done.
        let next = if batch.status == "cancelling" {
            "cancelling"
        } else {
            status.as_str()
        };
        settle(state, &mut batch, next).await?;
        return Ok(());
    }
    let file = |name: &str| object.get(name).and_then(Value::as_str).map(str::to_string);
    let limit = state.config.batch.max_file_bytes.saturating_mul(4);
    let mut outputs = Vec::new();
    for (field, suffix) in [("output_file_id", "output"), ("error_file_id", "error")] {
        let Some(id) = file(field) else { continue };
        match upstream.file_content(&id, limit).await {
            Ok(bytes) => outputs.push((suffix, bytes)),
            Err(e) => {
                tracing::warn!(batch = %batch.id, error = %e, "batch results not fetched");
                return Ok(()); // the next round tries again
            }
        }
    }
    for (suffix, bytes) in outputs {
        if suffix == "output" && !batch.usage_recorded {
            record_usage(state, &batch, &bytes).await;
        }
        let name = format!("{}_{suffix}.jsonl", batch.id);
        let kept = keep_file(state, &batch.owner, name, bytes).await?;
        match suffix {
            "output" => batch.output_file_id = Some(kept),
            _ => batch.error_file_id = Some(kept),
        }
    }
    batch.usage_recorded = true;
    state.batch_metrics.lines(
        BY_UPSTREAM,
        u64::try_from(batch.completed).unwrap_or(0),
        u64::try_from(batch.failed).unwrap_or(0),
    );
    if !settle(state, &mut batch, &status).await? {
        // A cancel raced the end: the batch ended all the same.
        if let Some(mut again) = state.store.batch(&batch.id, None).await? {
            again.output_file_id = batch.output_file_id;
            again.error_file_id = batch.error_file_id;
            again.usage_recorded = true;
            (again.total, again.completed, again.failed) =
                (batch.total, batch.completed, batch.failed);
            settle(state, &mut again, &status).await?;
        }
    }
    Ok(())
}

/// A ledger record per output line, from the usage in its response body.
async fn record_usage(state: &AppState, batch: &BatchRecord, output: &[u8]) {
    // A key deleted since still gets its batch's usage, under its name.
    let caller = caller_of(state, batch).await.unwrap_or_else(|| Caller {
        name: Arc::from(batch.owner.as_str()),
        id: None,
        models: None,
        limits: Limits::default(),
        passthrough_token: None,
        account: None,
        device: None,
        account_limits: None,
    });
    for (index, line) in output.split(|b| *b == b'\n').enumerate() {
        let Ok(parsed) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        let Some(body) = parsed.pointer("/response/body") else {
            continue;
        };
        let body_bytes = serde_json::to_vec(body).unwrap_or_default();
        let Some(usage) = crate::wire::openai::usage_of_completion(&body_bytes) else {
            continue;
        };
        let request_id = (parsed
            .pointer("/response/request_id")
            .and_then(Value::as_str))
        .unwrap_or(&batch.id);
        let custom_id = parsed
            .get("custom_id")
            .and_then(Value::as_str)
            .unwrap_or("");
        let meter = Meter::new(&state.meters, &caller, request_id, "batch", "openai", 0);
        // Keyed by custom id (unique in the file), else the line's place.
        let key = if custom_id.is_empty() {
            format!("#{index}")
        } else {
            custom_id.to_string()
        };
        meter.set_id(format!("{}:{key}", batch.id));
        meter.request(&batch.model, false);
        meter.upstream(&batch.upstream);
        meter.usage(&usage);
        meter.sent(&body_bytes);
    }
}
