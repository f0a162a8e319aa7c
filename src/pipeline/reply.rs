//! Whole replies, and what every response is marked with: the upstream's reply relayed as it
//! came or a translated one encoded; the image headers; the model and upstream for metrics.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;

use super::context::RequestContext;
use super::face::ClientDialect;
use super::stream::stream_response;
use crate::error::{GatewayError, json_response};
use crate::event::Usage;
use crate::relay::{Outcome, Upstreamed};
use crate::state::{AppState, RouteInfo};
use crate::transform::MediaStats;
use crate::usage::Meter;

/// The reply to a dispatched request: a stream when one was asked for (or the outcome is
/// steps), otherwise the whole reply, relayed or encoded.
pub async fn reply_for<D: ClientDialect>(
    state: &AppState,
    face: &D,
    outcome: Outcome,
    ctx: &RequestContext,
    options: D::Options,
) -> Result<Response, GatewayError> {
    if ctx.stream {
        return Ok(stream_response(state, face, outcome, ctx, options));
    }
    let meter = &ctx.meter;
    Ok(match outcome {
        Outcome::Raw(upstreamed) => {
            let name = upstream_name(&upstreamed);
            meter.upstream(&name);
            let response = relay_whole(
                upstreamed,
                |body| face.relay_whole(body, &ctx.request_id),
                |body, content_type| face.whole_response(body, content_type),
                meter,
            )
            .await?;
            tagged(response, &ctx.model, &name)
        }
        Outcome::Whole(mut reply, name) => {
            meter.upstream(&name);
            if let Some(usage) = &reply.usage {
                meter.usage(usage);
            }
            let body = face.encode_whole(&mut reply, &ctx.request_id, &ctx.model, options);
            meter.sent(&body);
            tagged(json_response(StatusCode::OK, body), &ctx.model, &name)
        }
        // Only a stream request is translated into steps; relay them as a stream anyway.
        outcome @ Outcome::Steps(..) => stream_response(state, face, outcome, ctx, options),
    })
}

/// Relays a non-stream upstream reply: `rewrite` writes the gateway's id in and reads the
/// usage, `respond` makes the response with the upstream's content type (never one that holds
/// the upstream key).
pub async fn relay_whole(
    upstreamed: Upstreamed,
    rewrite: impl FnOnce(Bytes) -> (Bytes, Option<Usage>),
    respond: impl FnOnce(Bytes, HeaderValue) -> Response,
    meter: &Meter,
) -> Result<Response, GatewayError> {
    let content_type = upstreamed
        .response
        .headers()
        .get(header::CONTENT_TYPE)
        .filter(|v| !upstreamed.lease.upstream.scrubber.holds_key(v.as_bytes()))
        .cloned()
        .unwrap_or(HeaderValue::from_static("application/json"));
    let (body, usage) = rewrite(upstreamed.read_whole().await?);
    if let Some(u) = usage {
        meter.usage(&u);
    }
    meter.sent(&body);
    Ok(respond(body, content_type))
}

/// The name of the upstream a raw reply came from.
pub fn upstream_name(upstreamed: &Upstreamed) -> String {
    upstreamed.lease.upstream.config.name.clone()
}

/// `x-dashgate-image-*`: what the image policy did to the request's images (summed).
pub fn with_media_headers(mut response: Response, media: Option<MediaStats>) -> Response {
    let Some(m) = media else { return response };
    let headers = response.headers_mut();
    for (name, value) in [
        ("x-dashgate-image-count", u64::from(m.images)),
        ("x-dashgate-image-original-bytes", m.original_bytes),
        ("x-dashgate-image-sent-bytes", m.sent_bytes),
        ("x-dashgate-image-tokens-before", m.tokens_before),
        ("x-dashgate-image-tokens-after", m.tokens_after),
        (
            "x-dashgate-image-metadata-stripped",
            u64::from(m.metadata_stripped),
        ),
        ("x-dashgate-image-resized", u64::from(m.resized)),
    ] {
        headers.insert(name, HeaderValue::from(value));
    }
    if m.relabelled > 0 {
        headers.insert(
            "x-dashgate-image-relabelled",
            HeaderValue::from(m.relabelled),
        );
    }
    response
}

/// Marks a response with the model and upstream it was for, for the request metrics.
pub fn tagged(mut response: Response, model: &str, upstream: &str) -> Response {
    response.extensions_mut().insert(RouteInfo {
        model: model.to_string(),
        upstream: upstream.to_string(),
    });
    response
}
