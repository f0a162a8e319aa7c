//! The way through, shared by both dialects: route the request, call the upstream in the
//! dialect it speaks, and hand the reply back raw (client and upstream speak the same dialect:
//! the fast path) or as canonical steps for the client's dialect to encode.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, header};
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;

use crate::auth::Caller;
use crate::chat::Chat;
use crate::config::UpstreamDialect;
use crate::dialect::sse::{self, EventSplitter};
use crate::error::GatewayError;
use crate::event::{ChatEvent, Meta, Reply, StreamError};
use crate::provider::{self, Api, Call, ReadError, Upstream};
use crate::server::AppState;

/// The two dialects of DashScope, as clients and upstreams speak them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI-compatible (DashScope compatible mode).
    OpenAi,
    /// DashScope native (`/api/v1/services/aigc/...`).
    Native,
}

/// A decoded client request on its way upstream.
pub struct Request<'a> {
    pub dialect: Dialect,
    /// The client's endpoint; on the fast path the upstream gets the same one.
    pub api: Api,
    pub chat: Chat,
    /// The client's body, forwarded unchanged on the fast path.
    pub original: Bytes,
    pub caller: &'a Caller,
    pub headers: &'a HeaderMap,
    pub request_id: &'a str,
}

/// What came back.
pub enum Outcome {
    /// The upstream's reply in the client's own dialect, to relay as it is.
    Raw {
        response: reqwest::Response,
        upstream: Arc<Upstream>,
        deadline: Instant,
    },
    /// A translated stream.
    Steps(BoxStream<'static, Step>),
    /// A translated whole reply.
    Whole(Reply),
}

/// One step of a translated stream.
pub enum Step {
    /// The reply's id, model and time, once, before its first event.
    Meta(Meta),
    Event(ChatEvent),
    /// The gateway gave up on the upstream mid-stream (timeout, broken connection).
    Fail(GatewayError),
}

/// The dialect an upstream is spoken to for a client of `client` dialect.
fn wire_for(upstream: &Upstream, client: Dialect) -> Dialect {
    if !upstream.has_native() {
        return Dialect::OpenAi;
    }
    match upstream.config.dialect {
        UpstreamDialect::Auto => client,
        UpstreamDialect::Compatible => Dialect::OpenAi,
        UpstreamDialect::Native => Dialect::Native,
    }
}

pub async fn dispatch(state: &AppState, request: Request<'_>) -> Result<Outcome, GatewayError> {
    request.caller.check_model(&request.chat.model)?;
    let upstream = state.router.pick(&request.chat.model)?.clone();
    let wire = wire_for(&upstream, request.dialect);
    let stream = request.chat.is_stream();
    let fast = wire == request.dialect && state.config.server.fast_path;
    let (api, body) = match (fast, wire) {
        (true, _) => (request.api, request.original),
        (false, Dialect::OpenAi) => (Api::Chat, provider::openai::encode_request(&request.chat)),
        (false, Dialect::Native) => provider::dashscope::encode_request(&request.chat),
    };
    let started = Instant::now();
    let response = upstream
        .send(
            api,
            Call {
                body,
                stream,
                request_id: request.request_id,
                mode: state.auth.mode(),
                passthrough_token: request.caller.passthrough_token.as_deref(),
                client_headers: request.headers,
            },
        )
        .await?;
    let deadline = started + upstream.config.request_timeout();
    if fast {
        return Ok(Outcome::Raw {
            response,
            upstream,
            deadline,
        });
    }
    if stream && is_event_stream(&response) {
        return Ok(Outcome::Steps(
            decode_stream(response, upstream, wire, deadline).boxed(),
        ));
    }
    let body = read_whole(response, &upstream, deadline).await?;
    let reply = match wire {
        Dialect::OpenAi => provider::openai::decode_completion(&body),
        Dialect::Native => provider::dashscope::decode_reply(&body),
    };
    reply
        .map(Outcome::Whole)
        .map_err(|e| protocol_error(&upstream, &format!("unreadable reply: {e}")))
}

pub fn is_event_stream(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

pub fn protocol_error(upstream: &Upstream, message: &str) -> GatewayError {
    GatewayError::UpstreamProtocol {
        upstream: upstream.config.name.clone(),
        message: message.into(),
    }
}

/// Reads a whole upstream body within the request's deadline.
pub async fn read_whole(
    response: reqwest::Response,
    upstream: &Upstream,
    deadline: Instant,
) -> Result<Bytes, GatewayError> {
    let idle = upstream.config.idle_timeout();
    let read = provider::read_limited(response, provider::MAX_REPLY_BYTES, idle);
    match tokio::time::timeout_at(deadline, read).await {
        Err(_) | Ok(Err(ReadError::Timeout)) => Err(upstream.timeout()),
        Ok(Err(ReadError::TooLarge)) => Err(protocol_error(upstream, "reply too large")),
        Ok(Err(ReadError::Broken)) => Err(protocol_error(upstream, "connection broke mid-reply")),
        Ok(Ok(body)) => Ok(body),
    }
}

/// An upstream SSE body, event by event, with the idle and whole-request timeouts applied.
pub struct SseEvents {
    upstream: Arc<Upstream>,
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    splitter: EventSplitter,
    deadline: Instant,
    idle: Duration,
    ended: bool,
}

/// What reading the next upstream event gave.
pub enum Next {
    Event(Bytes),
    /// The upstream closed the stream; a partial last event, if any, comes first as `Event`.
    End,
    Fail(GatewayError),
}

impl SseEvents {
    pub fn new(response: reqwest::Response, upstream: Arc<Upstream>, deadline: Instant) -> Self {
        Self {
            idle: upstream.config.idle_timeout(),
            upstream,
            body: response.bytes_stream().boxed(),
            splitter: EventSplitter::default(),
            deadline,
            ended: false,
        }
    }

    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    pub async fn next(&mut self) -> Next {
        loop {
            if let Some(event) = self.splitter.next_event() {
                return Next::Event(event);
            }
            if self.ended {
                return match self.splitter.finish() {
                    Some(event) => Next::Event(event),
                    None => Next::End,
                };
            }
            let wait = self
                .idle
                .min(self.deadline.saturating_duration_since(Instant::now()));
            match tokio::time::timeout(wait, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.splitter.push(&chunk),
                Ok(None) => self.ended = true,
                Ok(Some(Err(e))) => {
                    tracing::warn!(upstream = %self.upstream.config.name, error = %e, "upstream stream broke");
                    return Next::Fail(protocol_error(&self.upstream, "the stream broke off"));
                }
                Err(_) => return Next::Fail(self.upstream.timeout()),
            }
        }
    }
}

/// Decodes an upstream stream of either dialect into canonical steps.
fn decode_stream(
    response: reqwest::Response,
    upstream: Arc<Upstream>,
    wire: Dialect,
    deadline: Instant,
) -> impl Stream<Item = Step> {
    struct State {
        events: SseEvents,
        wire: Dialect,
        native: provider::dashscope::Decoder,
        pending: VecDeque<Step>,
        meta_sent: bool,
        done: bool,
    }
    let state = State {
        events: SseEvents::new(response, upstream, deadline),
        wire,
        native: provider::dashscope::Decoder::default(),
        pending: VecDeque::new(),
        meta_sent: false,
        done: false,
    };
    futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(step) = s.pending.pop_front() {
                return Some((step, s));
            }
            if s.done {
                return None;
            }
            let event = match s.events.next().await {
                Next::Event(event) => event,
                Next::End => return None,
                Next::Fail(error) => {
                    s.done = true;
                    return Some((Step::Fail(error), s));
                }
            };
            if sse::is_done(&event) {
                return None;
            }
            let Some(data) = sse::data_of(&event) else {
                continue; // a comment or keep-alive
            };
            if let Some(status) = sse::error_status(&event) {
                // A native error frame: `event:error`, `:HTTP_STATUS/NNN`, `data:{code,message}`.
                s.done = true;
                let fields: serde_json::Value = serde_json::from_slice(data).unwrap_or_default();
                let text = |k: &str| {
                    fields
                        .get(k)
                        .and_then(|v| v.as_str())
                        .unwrap_or("")
                        .to_string()
                };
                let error = StreamError {
                    status,
                    code: text("code"),
                    kind: None,
                    message: text("message"),
                };
                return Some((Step::Event(ChatEvent::Error(error)), s));
            }
            let decoded = match s.wire {
                Dialect::OpenAi => provider::openai::decode_chunk(data),
                Dialect::Native => s.native.decode(data),
            };
            match decoded {
                Ok((meta, events)) => {
                    if !s.meta_sent {
                        s.meta_sent = true;
                        s.pending.push_back(Step::Meta(meta));
                    }
                    for event in events {
                        s.done |= matches!(event, ChatEvent::Error(_));
                        s.pending.push_back(Step::Event(event));
                    }
                }
                Err(e) => {
                    s.done = true;
                    let error =
                        protocol_error(s.events.upstream(), &format!("unreadable event: {e}"));
                    return Some((Step::Fail(error), s));
                }
            }
        }
    })
}
