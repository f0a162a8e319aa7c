//! The timing of a stream: time to first token, between tokens, its whole life, and the
//! streams in flight.

use std::sync::Arc;

use tokio::time::Instant;

use crate::resume::Ticket;
use crate::telemetry::Metrics;
use crate::usage::Meter;

/// Times a stream: its first event (time to first token), its whole life, and the count of
/// streams in flight. Dropped with the stream, also when the client hangs up.
pub struct StreamTracker {
    metrics: Arc<Metrics>,
    route: &'static str,
    started: Instant,
    first_sent: bool,
    meter: Meter,
    /// Per-model time to first token and between tokens; the last event's time.
    first_token: prometheus_client::metrics::histogram::Histogram,
    inter_token: prometheus_client::metrics::histogram::Histogram,
    last_event: Option<Instant>,
    /// Who may take the stream up again after a hang-up; without one, no event ids.
    resume: Option<Ticket>,
}

impl StreamTracker {
    pub fn new(
        metrics: Arc<Metrics>,
        route: &'static str,
        started: Instant,
        meter: &Meter,
    ) -> Self {
        metrics.stream_started();
        let model = meter.model();
        let (first_token, inter_token) = metrics
            .observed
            .token_histograms(metrics.model_label(&model));
        Self {
            metrics,
            route,
            started,
            first_sent: false,
            meter: meter.clone(),
            first_token,
            inter_token,
            last_event: None,
            resume: None,
        }
    }

    /// Numbers the stream's events and keeps it for a reconnect (docs/fleet.md).
    pub fn resumable(mut self, ticket: Ticket) -> Self {
        self.resume = Some(ticket);
        self
    }

    /// The ticket, taken out for serving the stream.
    pub(super) fn take_ticket(&mut self) -> Option<Ticket> {
        self.resume.take()
    }

    pub(super) fn sent(&mut self, event: &[u8]) {
        self.meter.sent(event);
        // Keep-alive comments are not tokens.
        if event.starts_with(b":") {
            return;
        }
        let now = Instant::now();
        if !self.first_sent {
            self.first_sent = true;
            let elapsed = now - self.started;
            self.metrics.first_token(self.route, elapsed);
            self.first_token.observe(elapsed.as_secs_f64());
        }
        if let Some(last) = self.last_event.replace(now) {
            self.inter_token.observe((now - last).as_secs_f64());
        }
    }
}

impl Drop for StreamTracker {
    fn drop(&mut self) {
        self.metrics
            .stream_ended(self.route, self.started.elapsed());
    }
}
