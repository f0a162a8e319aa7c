//! The HTTP client for chat calls: hyper's pooled client with rustls, without reqwest's layers.
//! The request path showed reqwest's cost in the profile (its redirect and retry services, and
//! a `Url` re-parsed into a `Uri` on every call, about a tenth of the gateway's CPU per
//! request); chat calls need none of it. Prebuilt `Uri`s and header values leave only the
//! request itself to make per call.

use std::time::Duration;

use axum::http;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// A chat call's response; its body streams from the upstream's connection.
pub type UpstreamResponse = http::Response<hyper::body::Incoming>;

pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A pooled HTTP/1.1 and HTTP/2 (by ALPN) client that trusts the system's roots.
pub fn build(connect_timeout: Duration) -> Result<HttpClient, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_platform_verifier(rustls::crypto::aws_lc_rs::default_provider())
        .map_err(|e| format!("TLS set-up: {e}"))?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https))
}

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
