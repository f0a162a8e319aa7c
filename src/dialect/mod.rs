//! What clients speak. `openai` is DashScope's compatible mode; the native dialect joins with
//! its own issue. `sse` is the event framing both share.

pub mod openai;
pub mod sse;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use std::time::Duration;

use crate::error::GatewayError;

/// Reads a request body up to `limit` bytes; more is 413, a stalled upload is 400.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, GatewayError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(GatewayError::PayloadTooLarge { limit });
    }
    let read = async {
        let mut stream = body.into_data_stream();
        let mut buf = BytesMut::with_capacity(declared.map_or(8 * 1024, |l| l as usize));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                GatewayError::InvalidJson(format!("request body could not be read: {e}"))
            })?;
            if buf.len() + chunk.len() > limit {
                return Err(GatewayError::PayloadTooLarge { limit });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| GatewayError::InvalidJson("the request body did not arrive in time".into()))?
}
