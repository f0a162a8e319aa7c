//! The usage ledger: one record per request, handed from the request path to a background
//! writer through a bounded queue (never a wait on the request path), written to the store in
//! batches. While the store is down, records wait in memory up to `usage.memory_records`, then
//! in the spill file; they are written when it is back. Nothing is dropped without the
//! `dashgate_usage_records_total{outcome="lost"}` counter saying so.

mod meter;
mod record;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use meter::{Meter, MeterContext};
pub use record::UsageRecord;

use crate::config::UsageConfig;
use crate::store::Store;
use crate::telemetry::{LedgerOutcome, Metrics};

/// The request path's handle on the writer.
pub struct Ledger {
    queue: mpsc::Sender<UsageRecord>,
    metrics: Arc<Metrics>,
    closing: CancellationToken,
    writer: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Ledger {
    /// Starts the writer; records spilled by an earlier run are written first.
    pub fn start(store: Store, config: &UsageConfig, metrics: Arc<Metrics>) -> Arc<Ledger> {
        let (queue, receiver) = mpsc::channel(config.queue_records);
        let closing = CancellationToken::new();
        let writer = Writer {
            store,
            receiver,
            pending: VecDeque::new(),
            batch: config.batch_records,
            linger: Duration::from_millis(config.flush_ms),
            memory: config.memory_records,
            spill: config.spill_path.clone(),
            spill_waiting: spill_exists(&config.spill_path),
            metrics: metrics.clone(),
            failures: 0,
        };
        let handle = tokio::spawn(writer.run(closing.clone()));
        Arc::new(Ledger {
            queue,
            metrics,
            closing,
            writer: tokio::sync::Mutex::new(Some(handle)),
        })
    }

    /// Queues a record; never waits. A full queue (the writer far behind) loses the record,
    /// counted and logged.
    pub fn record(&self, record: UsageRecord) {
        let sent = self.queue.try_send(record);
        let depth = self.queue.max_capacity() - self.queue.capacity();
        self.metrics.observed.ledger_depth(depth);
        if let Err(e) = sent {
            self.metrics.ledger(LedgerOutcome::Lost, 1);
            let request_id = match &e {
                mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => {
                    r.request_id.clone()
                }
            };
            tracing::error!(
                request_id,
                "usage record lost: the ledger queue is full or closed"
            );
        }
    }

    /// Writes what is queued and stops the writer: to the store if it can be reached, else to
    /// the spill file. For shutdown, after the last request is done.
    pub async fn close(&self) {
        self.closing.cancel();
        if let Some(handle) = self.writer.lock().await.take() {
            if let Err(e) = handle.await {
                tracing::error!(error = %e, "usage writer failed");
            }
        }
    }
}

fn spill_exists(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() > 0)
}

struct Writer {
    store: Store,
    receiver: mpsc::Receiver<UsageRecord>,
    pending: VecDeque<UsageRecord>,
    batch: usize,
    linger: Duration,
    memory: usize,
    spill: PathBuf,
    /// The spill file holds records not yet in the store.
    spill_waiting: bool,
    metrics: Arc<Metrics>,
    /// Failed writes in a row, for the backoff.
    failures: u32,
}

/// The last tries at shutdown get this long before what is left goes to the spill file.
const FINAL_WRITE: Duration = Duration::from_secs(5);

impl Writer {
    async fn run(mut self, closing: CancellationToken) {
        let mut next_try = Instant::now();
        let mut incoming = Vec::with_capacity(self.batch);
        loop {
            let waiting = !self.pending.is_empty() || self.spill_waiting;
            tokio::select! {
                biased;
                _ = closing.cancelled() => break,
                n = self.receiver.recv_many(&mut incoming, self.batch) => {
                    if n == 0 {
                        break;
                    }
                    self.pending.extend(incoming.drain(..));
                    // Let a batch gather (or fill) before writing it.
                    let until = Instant::now() + self.linger;
                    while self.pending.len() < self.batch && !self.linger.is_zero() {
                        let room = self.batch - self.pending.len();
                        tokio::select! {
                            biased;
                            _ = closing.cancelled() => break,
                            _ = tokio::time::sleep_until(until) => break,
                            n = self.receiver.recv_many(&mut incoming, room) => {
                                if n == 0 {
                                    break;
                                }
                                self.pending.extend(incoming.drain(..));
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(next_try), if waiting => {}
            }
            if Instant::now() < next_try {
                self.bound_memory().await;
                continue;
            }
            if self.write_all().await {
                self.failures = 0;
            } else {
                self.failures += 1;
                let backoff = 100u64 << self.failures.min(6);
                next_try = Instant::now() + Duration::from_millis(backoff.min(5_000));
                self.bound_memory().await;
            }
        }
        self.finish().await;
    }

    /// Writes the spilled records, then the pending ones; false when the store failed.
    async fn write_all(&mut self) -> bool {
        if self.spill_waiting && !self.replay_spill().await {
            return false;
        }
        while !self.pending.is_empty() {
            let n = self.pending.len().min(self.batch);
            let batch: Vec<UsageRecord> = self.pending.iter().take(n).cloned().collect();
            if !self.write(&batch).await {
                return false;
            }
            self.pending.drain(..n);
        }
        true
    }

    async fn write(&self, batch: &[UsageRecord]) -> bool {
        match self.store.insert_usage(batch).await {
            Ok(()) => {
                self.metrics
                    .ledger(LedgerOutcome::Written, batch.len() as u64);
                if let Some(oldest) = batch.iter().map(|r| r.at).min() {
                    self.metrics.observed.ledger_written(oldest);
                }
                self.metrics.observed.ledger_depth(self.receiver.len());
                true
            }
            Err(e) => {
                self.metrics.ledger(LedgerOutcome::StoreError, 1);
                if self.failures == 0 {
                    tracing::warn!(error = %e, pending = self.pending.len(), "usage records wait: store write failed");
                }
                false
            }
        }
    }

    /// Beyond `memory` records, the oldest go to the spill file.
    async fn bound_memory(&mut self) {
        if self.pending.len() <= self.memory {
            return;
        }
        let excess = self.pending.len() - self.memory;
        let spill: Vec<UsageRecord> = self.pending.drain(..excess).collect();
        self.append_spill(&spill).await;
    }

    async fn append_spill(&mut self, records: &[UsageRecord]) {
        let mut text = Vec::with_capacity(records.len() * 512);
        for r in records {
            if serde_json::to_writer(&mut text, r).is_ok() {
                text.push(b'\n');
            }
        }
        let written = async {
            let mut file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.spill)
                .await?;
            file.write_all(&text).await?;
            file.sync_data().await
        };
        match written.await {
            Ok(()) => {
                self.spill_waiting = true;
                self.metrics
                    .ledger(LedgerOutcome::Spilled, records.len() as u64);
            }
            Err(e) => {
                self.metrics
                    .ledger(LedgerOutcome::Lost, records.len() as u64);
                tracing::error!(error = %e, path = %self.spill.display(), lost = records.len(),
                    "usage records lost: the spill file cannot be written");
            }
        }
    }

    /// Writes the spill file's records to the store and empties it. A record already written
    /// (a replay cut short) is skipped by its id.
    async fn replay_spill(&mut self) -> bool {
        let text = match tokio::fs::read(&self.spill).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.spill_waiting = false;
                return true;
            }
            Err(e) => {
                tracing::error!(error = %e, path = %self.spill.display(), "spill file unreadable");
                return false;
            }
        };
        let mut records = Vec::new();
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<UsageRecord>(line) {
                Ok(r) => records.push(r),
                Err(e) => {
                    // A line cut short by a crash mid-write.
                    self.metrics.ledger(LedgerOutcome::Lost, 1);
                    tracing::error!(error = %e, "usage record lost: unreadable spill line");
                }
            }
        }
        for chunk in records.chunks(self.batch) {
            if !self.write(chunk).await {
                return false;
            }
        }
        if let Err(e) = tokio::fs::write(&self.spill, b"").await {
            tracing::error!(error = %e, "spill file written but not emptied; its records are skipped when replayed");
        }
        tracing::info!(records = records.len(), "spilled usage records written");
        self.spill_waiting = false;
        true
    }

    async fn finish(mut self) {
        self.receiver.close();
        while let Some(r) = self.receiver.recv().await {
            self.pending.push_back(r);
        }
        let written = tokio::time::timeout(FINAL_WRITE, self.write_all()).await;
        if !matches!(written, Ok(true)) && !self.pending.is_empty() {
            let rest: Vec<UsageRecord> = self.pending.drain(..).collect();
            tracing::warn!(
                records = rest.len(),
                "store unreachable at shutdown: records spilled"
            );
            self.append_spill(&rest).await;
        }
    }
}
