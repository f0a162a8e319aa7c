//! How a request ended, recorded in one place: every failure the pipeline or a dialect's
//! relay meets goes through here to the request's meter (its usage record, the metrics), so
//! both dialects leave the same codes in the ledger.

use axum::response::Response;

use super::ClientDialect;
use crate::error::GatewayError;
use crate::usage::Meter;

/// The request failed before its response head went out; the client gets `error` whole.
pub fn refused(meter: &Meter, error: &GatewayError) {
    record(meter, error.status().as_u16(), error);
}

/// The walk's result: a failure is recorded, a response is left to its stream or body.
pub fn ended(meter: &Meter, result: &Result<Response, GatewayError>) {
    if let Err(error) = result {
        refused(meter, error);
    }
}

/// The request failed after the head went out (status 200 already sent): the client gets an
/// error event in its dialect instead of the rest of the stream.
pub fn failed_in_stream(meter: &Meter, error: &GatewayError) {
    record(meter, 200, error);
}

/// The upstream ended the stream with an error event of its own (`code`), relayed as it came.
pub fn stream_error(meter: &Meter, code: &str) {
    meter.stream_error(code);
}

/// The one call that marks a request failed.
fn record(meter: &Meter, status: u16, error: &GatewayError) {
    meter.failed(status, error);
}

/// An error in the client's dialect, tagged with the upstream it came from for the metrics.
pub fn error_response<D: ClientDialect>(
    face: &D,
    error: GatewayError,
    request_id: &str,
) -> Response {
    let upstream = error.upstream_name().unwrap_or("-").to_string();
    super::reply::tagged(face.error_response(error, request_id), "-", &upstream)
}
