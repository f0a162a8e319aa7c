//! `/v1/completions`: plain and fill-in-the-middle prompts, relayed to the upstream's
//! OpenAI-compatible `/completions` (no translation: only OpenAI-wire upstreams serve it).
//! Not a [`crate::pipeline::ClientDialect`] (there is no chat to decode, cache or keep in a
//! session), it takes the pipeline's admission, context, outcome and relays.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use tokio::time::Instant;

use super::{Compat, relay};
use crate::chat;
use crate::error::GatewayError;
use crate::ids::IdRewriter;
use crate::pipeline::reply::upstream_name;
use crate::pipeline::{self, Admitted, Entry, RequestContext, event_stream_response, outcome};
use crate::provider::Api;
use crate::relay::{Call, reserve_for, send_with_retries};
use crate::state::{AppState, RequestId};

const ROUTE: &str = "completions";

/// `POST /v1/completions`: plain and fill-in-the-middle prompts (Qwen coder models), relayed
/// to the upstream's OpenAI-compatible `/completions`.
pub async fn completions(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let entry = Entry {
        route: ROUTE,
        dialect: "openai",
        request_id: &request_id,
    };
    let result = match pipeline::admit(&state, &headers, body, entry).await {
        Ok(admitted) => {
            let meter = admitted.meter.clone();
            let result = walk(&state, &request_id, &headers, admitted, started).await;
            outcome::ended(&meter, &result);
            result
        }
        Err(error) => Err(error),
    };
    result.unwrap_or_else(|error| outcome::error_response(&Compat, error, &request_id))
}

async fn walk(
    state: &Arc<AppState>,
    request_id: &Arc<str>,
    headers: &HeaderMap,
    admitted: Admitted,
    started: Instant,
) -> Result<Response, GatewayError> {
    let Admitted {
        caller,
        body,
        meter,
    } = admitted;
    let request = chat::decode_completion(&body)?;
    let stream = request.is_stream();
    let ctx = RequestContext::new(
        state,
        request_id.clone(),
        started,
        ROUTE,
        caller,
        meter,
        &body,
        &request.model,
        stream,
    );
    ctx.caller.check_model(&request.model)?;
    if let Some(resumed) = ctx.reconnect(headers) {
        return resumed;
    }
    let call = Call {
        model: &request.model,
        stream,
        caller: &ctx.caller,
        headers,
        request_id,
        meter: &ctx.meter,
        reserve: reserve_for(state, body.len(), &Default::default(), request.max_tokens),
    };
    let upstreamed = send_with_retries(&state.attempts(), &call, |_| {
        (Api::Completions, body.clone())
    })
    .await?;
    let name = upstream_name(&upstreamed);
    ctx.meter.upstream(&name);
    let response = if stream && upstreamed.is_event_stream() {
        let events = relay::raw_events(
            upstreamed.into_events(),
            request_id.clone(),
            ctx.meter.clone(),
            true,
            IdRewriter::completion(request_id),
        );
        event_stream_response(events, ctx.tracker(state))
    } else {
        pipeline::reply::relay_whole(
            upstreamed,
            |body| relay::whole_body(body, IdRewriter::completion(request_id)),
            relay::whole_response,
            &ctx.meter,
        )
        .await?
    };
    Ok(pipeline::tagged(response, &request.model, &name))
}
