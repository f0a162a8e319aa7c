//! Reading upstream bodies whole, within limits.

use std::time::Duration;

use axum::http;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;

/// Why a body could not be read whole.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    TooLarge,
    Timeout,
    Broken,
}

/// The declared `Content-Length` of a response.
pub fn content_length<B>(response: &http::Response<B>) -> Option<u64> {
    response
        .headers()
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Reads a whole body, refusing more than `limit` bytes or a gap longer than `idle`.
pub async fn read_limited<B>(
    response: http::Response<B>,
    limit: usize,
    idle: Duration,
) -> Result<Bytes, ReadError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    if content_length(&response).is_some_and(|len| len > limit as u64) {
        return Err(ReadError::TooLarge);
    }
    let mut body = response.into_body();
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(ReadError::Timeout),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(ReadError::Broken),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(chunk) = frame.into_data() else {
            continue; // trailers
        };
        // Most replies arrive in one piece: keep it without copying.
        match first.take() {
            None if buf.is_empty() => first = Some(chunk),
            previous => {
                if let Some(previous) = previous {
                    buf.extend_from_slice(&previous);
                }
                buf.extend_from_slice(&chunk);
            }
        }
        if first.as_ref().map_or(buf.len(), Bytes::len) > limit {
            return Err(ReadError::TooLarge);
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}
