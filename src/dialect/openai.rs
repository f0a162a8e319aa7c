//! The OpenAI-compatible dialect (DashScope compatible mode): `/v1/chat/completions` and
//! `/v1/models`, with their `/compatible-mode/v1/...` twins.
//!
//! Same-dialect traffic takes the fast path: the request is parsed to check it, but the bytes
//! the client sent are the bytes the upstream gets, and the upstream's reply events are the
//! bytes the client gets.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::json;
use tokio::time::Instant;

use super::sse::{EventSplitter, is_done, is_error};
use crate::chat;
use crate::error::{GatewayError, json_response};
use crate::provider::{self, Call, ReadError, Upstream};
use crate::server::{AppState, RequestId};

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match relay(&state, &request_id, &headers, body).await {
        Ok(response) => response,
        Err(error) => error.into_openai_response(&request_id),
    }
}

async fn relay(
    state: &AppState,
    request_id: &Arc<str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, GatewayError> {
    let caller = state.auth.authenticate(headers)?;
    let limits = &state.config.server;
    let bytes = super::read_body(headers, body, limits.max_body_bytes, state.body_timeout).await?;
    let chat = chat::decode(&bytes)?;
    caller.check_model(&chat.model)?;
    let upstream = state.router.pick(&chat.model)?;
    let started = Instant::now();
    let response = upstream
        .post_chat(Call {
            body: bytes,
            request_id,
            mode: state.auth.mode(),
            passthrough_token: caller.passthrough_token.as_deref(),
            client_headers: headers,
        })
        .await?;
    let deadline = started + upstream.config.request_timeout();
    let is_event_stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if chat.is_stream() && is_event_stream {
        return Ok(stream_response(
            upstream.clone(),
            response,
            request_id.clone(),
            deadline,
        ));
    }
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let idle = upstream.config.idle_timeout();
    let read = provider::read_limited(response, provider::MAX_REPLY_BYTES, idle);
    let body = match tokio::time::timeout_at(deadline, read).await {
        Err(_) | Ok(Err(ReadError::Timeout)) => return Err(upstream.timeout()),
        Ok(Err(ReadError::TooLarge)) => return Err(protocol_error(upstream, "reply too large")),
        Ok(Err(ReadError::Broken)) => {
            return Err(protocol_error(upstream, "connection broke mid-reply"));
        }
        Ok(Ok(body)) => body,
    };
    let mut response = Response::new(Body::from(body));
    let content_type = content_type.unwrap_or(HeaderValue::from_static("application/json"));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    Ok(response)
}

fn protocol_error(upstream: &Upstream, message: &str) -> GatewayError {
    GatewayError::UpstreamProtocol {
        upstream: upstream.config.name.clone(),
        message: message.into(),
    }
}

/// Forwards the upstream's SSE events one by one as they arrive. The stream always ends with
/// `data: [DONE]`, or with an error event if the upstream failed mid-way. Dropping this body
/// (the client hung up) drops the upstream response and so closes its connection.
fn stream_response(
    upstream: Arc<Upstream>,
    response: reqwest::Response,
    request_id: Arc<str>,
    deadline: Instant,
) -> Response {
    let events = relay_events(upstream, response, request_id, deadline);
    let mut response = Response::new(Body::from_stream(events.map(Ok::<_, Infallible>)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream;charset=UTF-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells a reverse proxy in front of the gateway not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

struct Relay {
    upstream: Arc<Upstream>,
    body: futures_util::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    splitter: EventSplitter,
    request_id: Arc<str>,
    deadline: Instant,
    idle: Duration,
    state: Phase,
}

#[derive(PartialEq, Eq)]
enum Phase {
    Open,
    /// The upstream closed cleanly; flush what is left, then `[DONE]` if it was missing.
    Closing,
    Done,
}

fn relay_events(
    upstream: Arc<Upstream>,
    response: reqwest::Response,
    request_id: Arc<str>,
    deadline: Instant,
) -> impl Stream<Item = Bytes> {
    let idle = upstream.config.idle_timeout();
    let relay = Relay {
        upstream,
        body: response.bytes_stream().boxed(),
        splitter: EventSplitter::default(),
        request_id,
        deadline,
        idle,
        state: Phase::Open,
    };
    futures_util::stream::unfold(relay, |mut relay| async move {
        let event = relay.next_event().await?;
        Some((event, relay))
    })
}

impl Relay {
    async fn next_event(&mut self) -> Option<Bytes> {
        loop {
            match self.state {
                Phase::Done => return None,
                Phase::Closing => {
                    self.state = Phase::Done;
                    return match self.splitter.finish() {
                        Some(event) if is_done(&event) || is_error(&event) => Some(event),
                        Some(event) => {
                            self.state = Phase::Closing;
                            self.splitter = EventSplitter::default();
                            Some(event)
                        }
                        None => Some(Bytes::from_static(b"data: [DONE]\n\n")),
                    };
                }
                Phase::Open => {}
            }
            if let Some(event) = self.splitter.next_event() {
                // After `[DONE]` or the upstream's own error event nothing more is relayed: a
                // made-up `[DONE]` after an error would tell the client the answer was complete.
                if is_done(&event) || is_error(&event) {
                    self.state = Phase::Done;
                }
                return Some(event);
            }
            let wait = self
                .idle
                .min(self.deadline.saturating_duration_since(Instant::now()));
            match tokio::time::timeout(wait, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.splitter.push(&chunk),
                Ok(None) => self.state = Phase::Closing,
                Ok(Some(Err(e))) => {
                    tracing::warn!(upstream = %self.upstream.config.name, error = %e, "upstream stream broke");
                    return Some(self.fail(protocol_error(&self.upstream, "the stream broke off")));
                }
                Err(_) => return Some(self.fail(self.upstream.timeout())),
            }
        }
    }

    /// Ends the stream with an error the OpenAI SDKs raise: a `data:` event with an `error` object.
    fn fail(&mut self, error: GatewayError) -> Bytes {
        self.state = Phase::Done;
        let mut event = b"data: ".to_vec();
        event.extend_from_slice(&error.openai_body(&self.request_id));
        event.extend_from_slice(b"\n\n");
        Bytes::from(event)
    }
}

/// `GET /v1/models`: the models this key may use, as an OpenAI list.
pub async fn models(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
) -> Response {
    let caller = match state.auth.authenticate(&headers) {
        Ok(caller) => caller,
        Err(error) => return error.into_openai_response(&request_id),
    };
    let mut names: Vec<&str> = state.router.named_models().into_iter().collect();
    if let Some(allowed) = &caller.models {
        names = allowed
            .iter()
            .map(String::as_str)
            .filter(|m| state.router.serves(m))
            .collect();
        names.sort_unstable();
        names.dedup();
    }
    let data: Vec<_> = names
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "dashgate"}))
        .collect();
    let body = json!({"object": "list", "data": data});
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&body).unwrap_or_default(),
    )
}
