//! The exact response cache around the upstream call: consulted before dispatch, a hit
//! answered from it, a miss dispatched and kept as it goes by (the cache itself is `cache/`).

use axum::http::HeaderMap;

use crate::auth::Caller;
use crate::cache::Consult;
use crate::chat::Chat;
use crate::error::GatewayError;
use crate::relay::{self, ChatRequest, Outcome};
use crate::state::AppState;
use crate::transform::MediaStats;
use crate::usage::Meter;

/// What the cache says about this request (nothing, a hit, or a miss to keep).
pub async fn consult(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    chat: &Chat,
    meter: &Meter,
) -> Result<Consult, GatewayError> {
    (state.cache)
        .consult(caller, headers, chat, meter, &state.router)
        .await
}

/// The request's outcome: the kept reply on a hit; otherwise the upstream's through
/// [`relay::dispatch`], kept as it goes by (a stream once it ended whole).
pub async fn dispatch(
    state: &AppState,
    mut consult: Consult,
    request: ChatRequest<'_>,
) -> Result<(Outcome, Option<MediaStats>), GatewayError> {
    if let Some(reply) = consult.take_hit() {
        return Ok((
            Outcome::Whole(reply, crate::cache::UPSTREAM.to_string()),
            None,
        ));
    }
    let dialect = request.dialect;
    let (outcome, media) = relay::dispatch(state, request).await?;
    if !consult.keeps() {
        return Ok((outcome, media));
    }
    // Only canonical replies are kept, so a miss is answered the way a hit will be.
    let outcome = match relay::canonical(outcome, dialect).await? {
        Outcome::Whole(reply, name) => {
            consult.keep_whole(&reply);
            Outcome::Whole(reply, name)
        }
        Outcome::Steps(steps, name) => Outcome::Steps(consult.keep_steps(steps), name),
        raw @ Outcome::Raw(_) => raw,
    };
    Ok((outcome, media))
}
