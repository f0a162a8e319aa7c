//! What the pipeline knows of a request once it is admitted and decoded, made once and passed
//! down the walk.

use std::sync::Arc;

use axum::http::HeaderMap;
use axum::response::Response;
use tokio::time::Instant;

use super::tracker::StreamTracker;
use crate::auth::Caller;
use crate::error::GatewayError;
use crate::resume::Ticket;
use crate::state::AppState;
use crate::usage::Meter;

/// One request on its way through the pipeline.
pub struct RequestContext {
    pub request_id: Arc<str>,
    /// When the gateway took the request (before admission), for its latency metrics.
    pub started: Instant,
    /// The route label of metrics, usage records and resume tickets.
    pub route: &'static str,
    pub caller: Caller,
    pub meter: Meter,
    /// Who may take the stream up again after a hang-up.
    pub ticket: Ticket,
    pub model: String,
    pub stream: bool,
}

impl RequestContext {
    /// The context of a request of `model`; `body` is the body as the client sent it (a
    /// reconnect must send the same). The meter learns the model here.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        state: &AppState,
        request_id: Arc<str>,
        started: Instant,
        route: &'static str,
        caller: Caller,
        meter: Meter,
        body: &[u8],
        model: &str,
        stream: bool,
    ) -> RequestContext {
        meter.request(model, stream);
        let ticket = Ticket::new(&state.resume, &caller, route, body, stream);
        RequestContext {
            request_id,
            started,
            route,
            caller,
            meter,
            ticket,
            model: model.to_string(),
            stream,
        }
    }

    /// For a stream request with `Last-Event-ID`: the rest of the stream it names (or why
    /// not), tagged for the metrics.
    pub fn reconnect(&self, headers: &HeaderMap) -> Option<Result<Response, GatewayError>> {
        if !self.stream {
            return None;
        }
        let resumed = crate::resume::reconnect(&self.ticket, headers)?;
        if resumed.is_ok() {
            // The stream's own request makes the one usage record.
            self.meter.no_record();
        }
        Some(resumed.map(|response| super::reply::tagged(response, &self.model, "-")))
    }

    /// The timer of this request's stream, resumable by its ticket.
    pub fn tracker(&self, state: &AppState) -> StreamTracker {
        StreamTracker::new(state.metrics.clone(), self.route, self.started, &self.meter)
            .resumable(self.ticket.clone())
    }
}
