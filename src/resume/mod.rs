//! Resumable streams (docs/fleet.md, "Resuming a stream"): every event a stream client gets
//! carries an id; a client that lost the connection sends the same request again with
//! `Last-Event-ID` and gets the rest of the same upstream call, which kept running for the
//! grace period with its events buffered. One upstream call, one usage record.

mod hub;
mod metrics;
mod stamp;

use std::sync::Arc;

use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use sha2::{Digest, Sha256};

pub use crate::config::ResumeConfig;
pub use hub::{Hub, Refusal};
pub use metrics::ResumeMetrics;
pub use stamp::{EventId, Stamper};

use crate::auth::Caller;
use crate::error::GatewayError;

/// What a stream is resumable by: the hub, and who may take it up (key, endpoint, body).
#[derive(Clone)]
pub struct Ticket {
    hub: Arc<Hub>,
    owner: [u8; 32],
}

impl Ticket {
    /// `route` names the endpoint; `body` is the request body as the client sent it. Only a
    /// stream is resumable: for a whole reply nothing is hashed (a body with camera frames is
    /// megabytes).
    pub fn new(hub: &Arc<Hub>, caller: &Caller, route: &str, body: &[u8], stream: bool) -> Ticket {
        if !stream {
            return Ticket {
                hub: hub.clone(),
                owner: [0; 32],
            };
        }
        let mut hash = Sha256::new();
        let mut field = |bytes: &[u8]| {
            // Length-prefixed, so no two different field lists hash alike.
            hash.update((bytes.len() as u64).to_le_bytes());
            hash.update(bytes);
        };
        field(caller.name.as_bytes());
        field(caller.id.as_deref().unwrap_or("").as_bytes());
        field(caller.account.as_deref().unwrap_or("").as_bytes());
        field(caller.device.as_deref().unwrap_or("").as_bytes());
        field(caller.passthrough_token.as_deref().unwrap_or("").as_bytes());
        field(route.as_bytes());
        field(body);
        Ticket {
            hub: hub.clone(),
            owner: hash.finalize().into(),
        }
    }

    /// The client's stream for `source`, every event with an id, kept for a reconnect.
    /// `sent` counts each event as it goes out, id included.
    pub fn serve(
        self,
        source: BoxStream<'static, Bytes>,
        sent: hub::Sent,
    ) -> BoxStream<'static, Bytes> {
        self.hub.serve(self.owner, source, sent)
    }
}

/// The `Last-Event-ID` a reconnecting client sent.
pub fn last_event_id(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("last-event-id")?;
    Some(value.to_str().unwrap_or(""))
}

/// For a stream request with `Last-Event-ID`: the rest of the stream it names, or an error
/// saying it cannot be resumed (never a second upstream call: the client already showed part
/// of an answer, and a new one would not continue it). `None` without the header. The caller
/// keeps a resumed reconnect from making a usage record: the stream's own request makes it.
pub fn reconnect(ticket: &Ticket, headers: &HeaderMap) -> Option<Result<Response, GatewayError>> {
    let last = last_event_id(headers)?;
    Some(match ticket.hub.resume(ticket.owner, last) {
        Ok(rest) => Ok(crate::sse::sse_response(rest)),
        Err(Refusal::Elsewhere) => {
            let instance = EventId::parse(last).map(|id| id.instance);
            Err(GatewayError::StreamOnOtherGateway {
                id: shown(last),
                instance: shown(&instance.unwrap_or_default()),
                here: ticket.hub.config.instance.clone(),
            })
        }
        Err(_) => Err(GatewayError::StreamNotResumable(shown(last))),
    })
}

/// A client's id as an error message may quote it: bounded, so a megabyte header is not echoed.
fn shown(text: &str) -> String {
    text.chars().take(80).collect()
}
