//! The usage ledger: one record per request. The request path appends the record to the
//! journal (`journal.rs`, one `write(2)`, never a wait on the store) and wakes the background
//! writer, which ships the journal to the store in batches, in order. While the store is down
//! records wait in the journal on disk, not in memory; at start the journal is replayed (a
//! record written twice is kept once, by its id), so neither a crash nor a store outage
//! followed by a crash loses a record. Nothing is dropped without the
//! `dashgate_usage_records_total{outcome="lost"}` counter saying so.

mod journal;
mod meter;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use crate::usage_record::UsageRecord;
pub use journal::Journal;
pub use meter::{Meter, MeterContext};

use crate::config::UsageConfig;
use crate::store::{Backend, Store};
use crate::telemetry::{LedgerOutcome, Metrics};

/// The writer reads the journal this many bytes at a time at most.
const READ_BYTES: usize = 4 << 20;
/// Once this much of the active journal is in the store, it is sealed and a fresh one begun.
const SEAL_BYTES: u64 = 16 << 20;

/// The request path's handle on the writer.
pub struct Ledger {
    journal: Arc<Journal>,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    closing: CancellationToken,
    /// Resolved when the writer has stopped (an error: it panicked).
    writer: tokio::sync::Mutex<Option<oneshot::Receiver<()>>>,
}

impl Ledger {
    /// Opens the journal and starts the writer, which first ships what an earlier run left
    /// (a sealed journal, an old spill file, the journal itself).
    pub fn start(
        store: Store,
        config: &UsageConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Ledger>, String> {
        let journal = Journal::open(&config.journal_path, config.journal_max_bytes)
            .map_err(|e| format!("usage.journal_path {}: {e}", config.journal_path.display()))?;
        let journal = Arc::new(journal);
        let wake = Arc::new(Notify::new());
        let closing = CancellationToken::new();
        let store_backend = store.backend();
        let writer = Writer {
            store,
            journal: journal.clone(),
            wake: wake.clone(),
            batch: config.batch_records,
            linger: Duration::from_millis(config.flush_ms),
            spill: config.spill_path.clone(),
            read_at: 0,
            metrics: metrics.clone(),
            failures: 0,
        };
        let handle = spawn_writer(writer, store_backend, closing.clone())?;
        if config.journal_fsync_ms > 0 {
            let (journal, every) = (
                journal.clone(),
                Duration::from_millis(config.journal_fsync_ms),
            );
            let stop = closing.clone();
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(every);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = ticker.tick() => {}
                    }
                    let journal = journal.clone();
                    let synced = tokio::task::spawn_blocking(move || journal.sync()).await;
                    if let Ok(Err(e)) = synced {
                        tracing::error!(error = %e, "usage journal fsync failed");
                    }
                }
            });
        }
        Ok(Arc::new(Ledger {
            journal,
            wake,
            metrics,
            closing,
            writer: tokio::sync::Mutex::new(Some(handle)),
        }))
    }

    /// Journals a record and wakes the writer; never waits on the store. A record that cannot
    /// be journaled (disk full, `journal_max_bytes` reached) is lost, counted and logged.
    pub fn record(&self, record: UsageRecord) {
        let mut line = Vec::with_capacity(640);
        let appended = match serde_json::to_writer(&mut line, &record) {
            Ok(()) => {
                line.push(b'\n');
                self.journal.append(&line).map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        match appended {
            Ok(()) => {
                self.metrics.observed.ledger_queued();
                self.wake.notify_one();
            }
            Err(error) => {
                self.metrics.ledger(LedgerOutcome::Lost, 1);
                tracing::error!(request_id = record.request_id, error, "usage record lost");
            }
        }
    }

    /// Ships what is journaled and stops the writer; what the store does not take in time
    /// stays in the journal for the next start. For shutdown, after the last request is done.
    pub async fn close(&self) {
        self.closing.cancel();
        if let Some(stopped) = self.writer.lock().await.take() {
            if stopped.await.is_err() {
                tracing::error!("usage writer failed");
            }
        }
        let journal = self.journal.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || journal.sync()).await {
            tracing::error!(error = %e, "usage journal fsync failed");
        }
    }
}

/// SQLite: the writer runs on a thread of its own, in a runtime of its own. Its work between
/// trips to the database (parsing journal lines, binding 36 values a row) is CPU, and a gateway
/// pinned to one core has one runtime worker: on it, a batch would hold up every request behind
/// it, where the kernel interleaves a thread with them. (The pool's SQLite connections are
/// threads of their own already, tied to no runtime.) Postgres connections are sockets
/// registered with the runtime that opened them, so its writer stays a task of the main runtime.
fn spawn_writer(
    writer: Writer,
    backend: Backend,
    closing: CancellationToken,
) -> Result<oneshot::Receiver<()>, String> {
    let (stopped, on_stop) = oneshot::channel();
    if backend == Backend::Postgres {
        tokio::spawn(async move {
            writer.run(closing).await;
            let _ = stopped.send(());
        });
        return Ok(on_stop);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("the usage writer's runtime: {e}"))?;
    std::thread::Builder::new()
        .name("usage-writer".into())
        .spawn(move || {
            runtime.block_on(writer.run(closing));
            let _ = stopped.send(());
        })
        .map_err(|e| format!("the usage writer's thread: {e}"))?;
    Ok(on_stop)
}

/// A ledger dropped without `close` (a test's gateway, a runtime torn down) still stops its
/// writer thread, after the same final write `close` gives it.
impl Drop for Ledger {
    fn drop(&mut self) {
        self.closing.cancel();
    }
}

struct Writer {
    store: Store,
    journal: Arc<Journal>,
    wake: Arc<Notify>,
    batch: usize,
    linger: Duration,
    /// An old spill file (from before the journal): shipped at start, then deleted.
    spill: PathBuf,
    /// How far into the active journal the store has everything.
    read_at: u64,
    metrics: Arc<Metrics>,
    /// Failed writes in a row, for the backoff.
    failures: u32,
}

/// The last tries at shutdown get this long; what is left stays in the journal.
const FINAL_WRITE: Duration = Duration::from_secs(5);

impl Writer {
    async fn run(mut self, closing: CancellationToken) {
        let mut next_try = Instant::now();
        loop {
            if self.ship_all().await {
                self.failures = 0;
                tokio::select! {
                    biased;
                    _ = closing.cancelled() => break,
                    _ = self.wake.notified() => {}
                }
                // Let a batch gather before writing it.
                if !self.linger.is_zero() {
                    tokio::select! {
                        biased;
                        _ = closing.cancelled() => break,
                        _ = tokio::time::sleep(self.linger) => {}
                    }
                }
            } else {
                self.failures += 1;
                let backoff = 100u64 << self.failures.min(6);
                next_try = next_try.max(Instant::now()) + Duration::from_millis(backoff.min(5_000));
                tokio::select! {
                    biased;
                    _ = closing.cancelled() => break,
                    _ = tokio::time::sleep_until(next_try) => {}
                }
                next_try = Instant::now();
            }
        }
        let _ = tokio::time::timeout(FINAL_WRITE, self.ship_all()).await;
    }

    /// Ships the sealed journal, an old spill file, then the active journal; false when the
    /// store failed (what was not shipped waits on disk).
    async fn ship_all(&mut self) -> bool {
        let sealed = self.journal.sealed_path().to_path_buf();
        if !self.ship_file(&sealed, 0, true).await {
            return false;
        }
        let spill = self.spill.clone();
        if !self.ship_file(&spill, 0, true).await {
            return false;
        }
        loop {
            let end = self.journal.written();
            if self.read_at >= end {
                break;
            }
            let path = self.journal.path().to_path_buf();
            match self.ship_range(&path, self.read_at).await {
                Some(next) if next > self.read_at => self.read_at = next,
                Some(_) => break,
                None => return false,
            }
        }
        if self.read_at >= SEAL_BYTES {
            if let Err(e) = self.journal.seal() {
                tracing::error!(error = %e, "usage journal cannot be sealed");
                return true;
            }
            // Everything sealed up to `read_at` is in the store; the rest is shipped next.
            let sealed_from = self.read_at;
            self.read_at = 0;
            return self.ship_file(&sealed, sealed_from, true).await;
        }
        true
    }

    /// Ships a whole file from `from` and deletes it; true when it is gone (or was never there).
    async fn ship_file(&mut self, path: &Path, mut from: u64, delete: bool) -> bool {
        if !path.exists() {
            return true;
        }
        loop {
            let len = std::fs::metadata(path).map_or(0, |m| m.len());
            if from >= len {
                break;
            }
            match self.ship_range(path, from).await {
                Some(next) if next > from => from = next,
                Some(_) => break,
                None => return false,
            }
        }
        if delete {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::error!(error = %e, path = %path.display(), "shipped usage file not removed; its records are skipped when replayed");
            } else {
                tracing::info!(path = %path.display(), "usage records from an earlier journal written");
            }
        }
        true
    }

    /// Ships the whole lines from `from` on, batch by batch; the offset reached, or `None`
    /// when the store failed before any progress.
    async fn ship_range(&mut self, path: &Path, from: u64) -> Option<u64> {
        let read = {
            let path = path.to_path_buf();
            tokio::task::spawn_blocking(move || journal::read_lines(&path, from, READ_BYTES)).await
        };
        let text = match read {
            Ok(Ok(text)) => text,
            Ok(Err(e)) => {
                tracing::error!(error = %e, path = %path.display(), "usage journal unreadable");
                return None;
            }
            Err(_) => return None,
        };
        if text.is_empty() {
            return Some(from);
        }
        let mut at = from;
        let mut batch: Vec<UsageRecord> = Vec::with_capacity(self.batch);
        let mut batch_end = at;
        for line in text.split_inclusive(|b| *b == b'\n') {
            batch_end += line.len() as u64;
            let body = line.strip_suffix(b"\n").unwrap_or(line);
            if body.is_empty() {
                continue;
            }
            // The line checked as UTF-8 in one pass: from bytes, serde_json checks each string
            // on its own, about a tenth of the writer's work.
            let parsed = std::str::from_utf8(body)
                .map_err(|e| e.to_string())
                .and_then(|text| {
                    serde_json::from_str::<UsageRecord>(text).map_err(|e| e.to_string())
                });
            match parsed {
                Ok(r) => batch.push(r),
                Err(e) => {
                    // A line torn by a crash mid-write.
                    self.metrics.ledger(LedgerOutcome::Lost, 1);
                    tracing::error!(error = %e, "usage record lost: unreadable journal line");
                }
            }
            if batch.len() == self.batch {
                if !self.write(&batch).await {
                    return (at > from).then_some(at);
                }
                batch.clear();
                at = batch_end;
            }
        }
        if !batch.is_empty() && !self.write(&batch).await {
            return (at > from).then_some(at);
        }
        Some(batch_end)
    }

    async fn write(&self, batch: &[UsageRecord]) -> bool {
        match self.store.insert_usage(batch).await {
            Ok(()) => {
                self.metrics
                    .ledger(LedgerOutcome::Written, batch.len() as u64);
                if let Some(oldest) = batch.iter().map(|r| r.at).min() {
                    self.metrics.observed.ledger_written(oldest);
                }
                self.metrics.observed.ledger_shipped(batch.len());
                true
            }
            Err(e) => {
                self.metrics.ledger(LedgerOutcome::StoreError, 1);
                if self.failures == 0 {
                    tracing::warn!(error = %e, "usage records wait in the journal: store write failed");
                }
                false
            }
        }
    }
}
