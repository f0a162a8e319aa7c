//! Plays a planned stream: events with delays between them, and the faults the knobs ask for.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;

use super::{Knobs, SimState, Stats};

pub(super) enum StreamFault {
    Stall,
    Drop,
    /// The dialect's own mid-stream refusal event (`data_inspection_failed`), then the end.
    Refusal(Bytes),
}

pub(super) struct Playback {
    pub events: VecDeque<Bytes>,
    pub sent: usize,
    pub fault: Option<(usize, StreamFault)>,
    pub delay: Duration,
    pub guard: CloseGuard,
}

impl Playback {
    /// A stream of `events`, paced and faulted as the options and knobs say.
    pub fn new(
        state: &SimState,
        events: VecDeque<Bytes>,
        knobs: &Knobs,
        fault: Option<StreamFault>,
    ) -> Self {
        Self {
            events,
            sent: 0,
            fault: fault.map(|f| (knobs.after.unwrap_or(2), f)),
            delay: Duration::from_millis(
                knobs.chunk_delay_ms.unwrap_or(state.options.chunk_delay_ms),
            ),
            guard: CloseGuard {
                stats: state.stats.clone(),
                finished: false,
            },
        }
    }

    pub fn into_response(self) -> Response {
        let body = futures_util::stream::unfold(self, |mut p| async move {
            let item = p.next().await?;
            Some((item, p))
        });
        let mut response = Response::new(Body::from_stream(body));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream;charset=UTF-8"),
        );
        response
    }

    pub async fn next(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        if let Some((after, _)) = &self.fault {
            if self.sent == *after {
                let (_, fault) = self.fault.take()?;
                self.events.clear();
                match fault {
                    StreamFault::Stall => std::future::pending::<()>().await,
                    StreamFault::Drop => {
                        // Let the server flush the events already sent (it flushes while the body
                        // is pending), so the cut lands mid-stream. With none sent, cutting at once
                        // closes the connection before any response.
                        if self.sent > 0 {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        return Some(Err(std::io::Error::other("simulated connection drop")));
                    }
                    StreamFault::Refusal(event) => {
                        self.guard.finished = true;
                        return Some(Ok(event));
                    }
                }
            }
        }
        let Some(event) = self.events.pop_front() else {
            self.guard.finished = true;
            return None;
        };
        if self.sent > 0 && !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.sent += 1;
        Some(Ok(event))
    }
}

/// Counts streams the client closed before their end (dropped bodies) and streams completed.
pub(super) struct CloseGuard {
    pub stats: Arc<Stats>,
    pub finished: bool,
}

impl Drop for CloseGuard {
    fn drop(&mut self) {
        if self.finished {
            self.stats.streams_completed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats
                .streams_closed_early
                .fetch_add(1, Ordering::Relaxed);
            self.stats.stream_closed_early.notify_one();
        }
    }
}
