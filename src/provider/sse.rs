//! An upstream's successful reply as it is read back: event by event for a stream (idle and
//! whole-request timeouts, shutdown), or whole within the deadline; every byte scrubbed.

use std::time::Duration;

use axum::http::header;
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::GatewayError;
use crate::provider::{self, ReadError, Upstream};
use crate::sse::EventSplitter;

/// What holds an upstream for one reply and hears how reading it went: the router's lease
/// (`route::Lease`, its concurrency slot and circuit). The provider reads the reply; what a
/// failure means for the upstream's health is routing's call.
pub trait Held {
    fn upstream(&self) -> &std::sync::Arc<Upstream>;
    fn report(&self, outcome: Result<(), &GatewayError>);
}

/// An upstream's successful response head, with what the rest of the reply needs.
pub struct Upstreamed<L> {
    pub response: provider::UpstreamResponse,
    /// Holds the upstream's concurrency slot until the reply is done.
    pub lease: L,
    pub deadline: Instant,
    /// Cancelled when the shutdown drain time is over.
    pub abort: CancellationToken,
}

impl<L: Held> Upstreamed<L> {
    pub fn is_event_stream(&self) -> bool {
        is_event_stream(&self.response)
    }

    pub fn into_events(self) -> SseEvents<L> {
        SseEvents::new(self)
    }

    pub async fn read_whole(self) -> Result<Bytes, GatewayError> {
        let upstream = self.lease.upstream().clone();
        let body = read_whole(self.response, &upstream, self.deadline).await;
        if let Err(error) = &body {
            self.lease.report(Err(error));
        }
        body
    }
}

pub fn is_event_stream<B>(response: &axum::http::Response<B>) -> bool {
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
    response: provider::UpstreamResponse,
    upstream: &Upstream,
    deadline: Instant,
) -> Result<Bytes, GatewayError> {
    let idle = upstream.config.idle_timeout();
    let read = provider::read_limited(response, provider::MAX_REPLY_BYTES, idle);
    match tokio::time::timeout_at(deadline, read).await {
        Err(_) | Ok(Err(ReadError::Timeout)) => Err(upstream.timeout()),
        Ok(Err(ReadError::TooLarge)) => Err(protocol_error(upstream, "reply too large")),
        Ok(Err(ReadError::Broken)) => Err(protocol_error(upstream, "connection broke mid-reply")),
        Ok(Ok(body)) => Ok(upstream.scrubber.scrub(body)),
    }
}

/// An upstream SSE body, event by event, with the idle and whole-request timeouts applied.
pub struct SseEvents<L> {
    lease: L,
    body: provider::PooledBody,
    splitter: EventSplitter,
    deadline: Instant,
    idle: Duration,
    /// One timer for the whole stream, re-armed only when it fires early (an event came since
    /// it was set): arming a timer per event showed in the stream profile.
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    last_read: Instant,
    abort: std::pin::Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    ended: bool,
}

/// What reading the next upstream event gave.
pub enum Next {
    Event(Bytes),
    /// The upstream closed the stream; a partial last event, if any, comes first as `Event`.
    End,
    Fail(GatewayError),
}

impl<L: Held> SseEvents<L> {
    fn new(upstreamed: Upstreamed<L>) -> Self {
        let idle = upstreamed.lease.upstream().config.idle_timeout();
        let now = Instant::now();
        let deadline = upstreamed.deadline;
        Self {
            idle,
            body: upstreamed.response.into_body(),
            lease: upstreamed.lease,
            splitter: EventSplitter::default(),
            deadline,
            timer: Box::pin(tokio::time::sleep_until((now + idle).min(deadline))),
            last_read: now,
            abort: Box::pin(upstreamed.abort.cancelled_owned()),
            ended: false,
        }
    }

    pub fn upstream(&self) -> &Upstream {
        self.lease.upstream()
    }

    pub async fn next(&mut self) -> Next {
        loop {
            let scrubber = &self.lease.upstream().scrubber;
            if let Some(event) = self.splitter.next_event() {
                return Next::Event(scrubber.scrub(event));
            }
            if self.ended {
                return match self.splitter.finish() {
                    Some(event) => Next::Event(scrubber.scrub(event)),
                    None => Next::End,
                };
            }
            let read = tokio::select! {
                biased;
                _ = self.abort.as_mut() => return Next::Fail(GatewayError::ShuttingDown),
                read = self.body.frame() => Ok(read),
                _ = self.timer.as_mut() => {
                    let due = (self.last_read + self.idle).min(self.deadline);
                    if Instant::now() < due {
                        self.timer.as_mut().reset(due);
                        continue;
                    }
                    Err(())
                }
            };
            if read.is_ok() {
                self.last_read = Instant::now();
            }
            let upstream = self.lease.upstream();
            match read {
                Ok(Some(Ok(frame))) => {
                    if let Some(chunk) = frame.data_ref() {
                        self.splitter.push(chunk);
                    }
                }
                Ok(None) => self.ended = true,
                Ok(Some(Err(e))) => {
                    tracing::warn!(upstream = %upstream.config.name, error = %e, "upstream stream broke");
                    let error = protocol_error(upstream, "the stream broke off");
                    self.lease.report(Err(&error));
                    return Next::Fail(error);
                }
                Err(_) => {
                    let error = upstream.timeout();
                    self.lease.report(Err(&error));
                    return Next::Fail(error);
                }
            }
        }
    }
}
