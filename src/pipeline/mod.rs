//! The one request pipeline, generic over the client's dialect: admission → decode → resume
//! → session → cache → dispatch → reply → image headers, cache and session marks. A dialect
//! brings only what differs ([`ClientDialect`]); how a request ended is recorded in
//! [`outcome`]. The walk, file by file, is written out in docs/architecture.md.

pub mod admit;
pub mod cached;
pub mod context;
pub mod face;
pub mod outcome;
pub mod reply;
pub mod stream;
pub mod tracker;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::Response;
use tokio::time::Instant;

pub use admit::{Admitted, Entry, admit, read_body};
pub use context::RequestContext;
pub use face::{ClientDialect, StepEncoder};
pub use reply::{tagged, with_media_headers};
pub use stream::{encode_steps, event_stream_response, with_keepalive};
pub use tracker::StreamTracker;

use crate::error::GatewayError;
use crate::relay::ChatRequest;
use crate::state::AppState;

/// Answers one chat request of `face`'s dialect.
pub async fn handle<D: ClientDialect>(
    state: Arc<AppState>,
    request_id: Arc<str>,
    headers: HeaderMap,
    body: Body,
    face: D,
) -> Response {
    let started = Instant::now();
    let entry = Entry {
        route: face.route(),
        dialect: face.label(),
        request_id: &request_id,
    };
    // A refused admission is recorded by admission itself (the meter starts with the key).
    let result = match admit(&state, &headers, body, entry).await {
        Ok(admitted) => {
            let meter = admitted.meter.clone();
            // Boxed: the walk's state is large, and a future held inline is moved (copied)
            // through each layer of the router on every request.
            let result = Box::pin(walk(
                &state,
                &headers,
                &face,
                &request_id,
                started,
                admitted,
            ))
            .await;
            outcome::ended(&meter, &result);
            result
        }
        Err(error) => Err(error),
    };
    result.unwrap_or_else(|error| outcome::error_response(&face, error, &request_id))
}

/// An admitted request, from its body to its response.
async fn walk<D: ClientDialect>(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    face: &D,
    request_id: &Arc<str>,
    started: Instant,
    admitted: Admitted,
) -> Result<Response, GatewayError> {
    let Admitted {
        caller,
        body,
        meter,
    } = admitted;
    let (mut chat, options) = face.decode(&body, headers)?;
    let (model, stream) = (chat.model.clone(), chat.is_stream());
    let ctx = RequestContext::new(
        state,
        request_id.clone(),
        started,
        face.route(),
        caller,
        meter,
        &body,
        &model,
        stream,
    );
    if let Some(resumed) = ctx.reconnect(headers) {
        return resumed;
    }
    let session = state
        .sessions
        .begin(
            &state.store,
            state.router.upstreams(),
            &state.config.media,
            &state.media_limiter,
            &ctx.caller,
            headers,
            &mut chat,
        )
        .await?;
    let (native_body, shape) = face.session(options);
    let body = match &session {
        Some(_) => crate::session::rewrite_body(&body, &chat, native_body)?,
        None => body,
    };
    let cache = cached::consult(state, &ctx.caller, headers, &chat, &ctx.meter).await?;
    let cache_label = cache.label();
    let keepalive = state.config.server.sse_keepalive_ms;
    let response = if stream && keepalive > 0 {
        let every = Duration::from_millis(keepalive);
        stream::keepalive_response(state, headers, face, ctx, cache, chat, body, options, every)
    } else {
        let (dialect, api) = face.wire();
        let request = ChatRequest {
            dialect,
            api,
            chat,
            original: body,
            caller: &ctx.caller,
            headers,
            request_id,
            meter: &ctx.meter,
        };
        let (outcome, media) = cached::dispatch(state, cache, request)
            .await
            .map_err(|e| face.dispatch_error(e))?;
        ctx.meter.media(media);
        let response = reply::reply_for(state, face, outcome, &ctx, options).await?;
        with_media_headers(response, media)
    };
    let response = crate::cache::tag(response, cache_label);
    Ok(crate::session::finish(session, response, shape).await)
}
