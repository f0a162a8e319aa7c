//! One line of a batch the gateway runs: the key's limits, then the same way through as a
//! non-stream chat request (`relay::dispatch`), metered into the ledger under a record id fixed
//! per (batch, line), so a line run again after a restart is still one record.

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::validate::Line;
use crate::auth::Caller;
use crate::error::{GatewayError, Limit};
use crate::provider::Api;
use crate::relay::{self, ChatRequest, Dialect, Outcome};
use crate::state::AppState;
use crate::store::BatchResult;
use crate::usage::Meter;

/// Longest wait for the key's limits between two tries.
const MAX_LIMIT_WAIT: Duration = Duration::from_secs(10);

/// The ledger id of a line's record.
pub fn record_id(batch_id: &str, line: usize) -> String {
    format!("{batch_id}:{line}")
}

/// An output file line: `{"id","custom_id","response":{"status_code","request_id","body"},"error"}`.
pub fn output_line(request_id: &str, custom_id: &str, status: u16, body: Value) -> String {
    json!({
        "id": request_id,
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": body},
        "error": null,
    })
    .to_string()
}

/// Runs a line; `None` when `stop` came first (the line is left for the next run).
pub async fn run(
    state: &Arc<AppState>,
    caller: &Caller,
    batch_id: &str,
    line: &Line,
    stop: &CancellationToken,
) -> Option<BatchResult> {
    let request_id = format!("batch_req_{}", uuid::Uuid::new_v4().simple());
    // A key over its rate limits waits rather than failing the line: a batch is not in a
    // hurry. A spent token quota does not come back by waiting: that line fails.
    let checked = loop {
        match state.limiter.admit(caller).await {
            Ok(checked) => break checked,
            Err(GatewayError::RateLimited { retry_after, limit }) if limit != Limit::TokenQuota => {
                let secs = retry_after
                    .to_str()
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(1);
                let wait = Duration::from_secs(secs.max(1)).min(MAX_LIMIT_WAIT);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => return None,
                }
            }
            Err(e) => return Some(failed(line, &request_id, &e)),
        }
    };
    let meter = Meter::new(
        &state.meters,
        caller,
        &request_id,
        "batch",
        "openai",
        line.body.len(),
    );
    meter.set_id(record_id(batch_id, line.number));
    if !checked {
        meter.unchecked();
    }
    let answered = tokio::select! {
        answered = answer(state, caller, line, &request_id, &meter) => answered,
        // Cut off: nothing of the line is kept, the record neither (the next run makes it).
        _ = stop.cancelled() => {
            std::mem::forget(meter);
            return None;
        }
    };
    let result = match answered {
        Ok(body) => BatchResult {
            line: line.number as i64,
            custom_id: line.custom_id.clone(),
            ok: true,
            output: output_line(&request_id, &line.custom_id, 200, body),
        },
        Err(e) => {
            meter.failed(e.status().as_u16(), &e);
            failed(line, &request_id, &e)
        }
    };
    // The record is journaled when the meter goes, before the answer is kept: a line with an
    // answer always has its record.
    drop(meter);
    Some(result)
}

fn failed(line: &Line, request_id: &str, e: &GatewayError) -> BatchResult {
    let body = serde_json::from_slice::<Value>(&e.openai_body(request_id)).unwrap_or(Value::Null);
    BatchResult {
        line: line.number as i64,
        custom_id: line.custom_id.clone(),
        ok: false,
        output: output_line(request_id, &line.custom_id, e.status().as_u16(), body),
    }
}

async fn answer(
    state: &Arc<AppState>,
    caller: &Caller,
    line: &Line,
    request_id: &str,
    meter: &Meter,
) -> Result<Value, GatewayError> {
    let chat = crate::chat::decode(&line.body)?;
    meter.request(&chat.model, false);
    let headers = HeaderMap::new();
    let request = ChatRequest {
        dialect: Dialect::OpenAi,
        api: Api::Chat,
        chat,
        original: line.body.clone(),
        caller,
        headers: &headers,
        request_id,
        meter,
    };
    let (outcome, media) = relay::dispatch(state, request).await?;
    meter.media(media);
    let body = match outcome {
        Outcome::Raw(upstreamed) => {
            meter.upstream(&upstreamed.lease.upstream.config.name);
            let body = upstreamed.read_whole().await?;
            if let Some(usage) = crate::wire::openai::usage_of_completion(&body) {
                meter.usage(&usage);
            }
            body.to_vec()
        }
        Outcome::Whole(mut reply, name) => {
            meter.upstream(&name);
            if let Some(usage) = &reply.usage {
                meter.usage(usage);
            }
            reply.meta.id = format!("chatcmpl-{request_id}");
            if reply.meta.model.is_empty() {
                reply.meta.model = meter.model();
            }
            crate::wire::openai::encode_completion(&reply)
        }
        // Only a stream request is answered in steps, and batch lines never stream.
        Outcome::Steps(_, name) => {
            return Err(GatewayError::UpstreamProtocol {
                upstream: name,
                message: "a stream for a whole request".into(),
            });
        }
    };
    meter.sent(&body);
    serde_json::from_slice::<Value>(&body).map_err(|e| GatewayError::UpstreamProtocol {
        upstream: "-".into(),
        message: format!("the reply is not JSON: {e}"),
    })
}
