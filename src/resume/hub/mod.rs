//! The streams held resumable: stream id → its events so far, fed by a task that reads the
//! upstream whether or not a client is reading, and read by the client (and by a reconnect).
//!
//! A client that hangs up leaves the task running for the grace period; a reconnect within it
//! reads on from the event after the one it names. The task stops (and so cancels the upstream
//! call) when the grace period ends with no reader, or when a bound is reached with no reader.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::metrics::ResumeMetrics;
use super::stamp::{EventId, Stamper};
use crate::config::ResumeConfig;

mod feed;

use feed::{Reader, drive};

/// Counts each event as it goes out, with its id (the meter's bytes are the client's).
pub type Sent = Box<dyn FnMut(&[u8]) + Send>;

/// Numbers events and counts them, in that order.
struct Stamping {
    stamper: Stamper,
    sent: Sent,
}

impl Stamping {
    fn stamp(&mut self, chunk: Bytes) -> Vec<(Option<u64>, Bytes)> {
        let items = self.stamper.stamp(chunk);
        for (_, bytes) in &items {
            (self.sent)(bytes);
        }
        items
    }
}

pub struct Hub {
    pub(super) config: ResumeConfig,
    metrics: ResumeMetrics,
    streams: Mutex<HashMap<u64, Arc<Entry>>>,
    /// Bytes buffered by all streams.
    total: AtomicUsize,
}

struct Entry {
    id: u64,
    /// Who may resume it: the hash of key, endpoint and body.
    owner: [u8; 32],
    buf: Mutex<Buf>,
    /// Bumped after every event and at the end, for readers waiting on the next.
    changed: watch::Sender<()>,
    /// A reader took events, for the task waiting for room.
    consumed: Notify,
    /// Stops the task, dropping the upstream call.
    cancel: CancellationToken,
}

#[derive(Default)]
struct Buf {
    /// Events (with their number) and comments, in order; `base` is the first one's index.
    items: VecDeque<(Option<u64>, Bytes)>,
    base: u64,
    bytes: usize,
    /// The upstream's stream ended.
    done: bool,
    /// A reconnect may still take it up: while true, nothing is trimmed.
    resumable: bool,
    /// Reader id → the index of the next item it reads.
    readers: HashMap<u64, u64>,
    next_reader: u64,
    /// Bumped when the last reader leaves and when one comes back: a grace timer only acts if
    /// it is still the one it was started with.
    detached: u64,
    /// Gone from the hub: read to its end, expired, or dropped.
    finished: bool,
}

/// Why a reconnect was not served (the metric's label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Malformed,
    Elsewhere,
    Unknown,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::Elsewhere => "elsewhere",
            Refusal::Unknown => "unknown",
        }
    }
}

impl Entry {
    fn lock(&self) -> MutexGuard<'_, Buf> {
        // A poisoned lock only means a reader panicked mid-update; the buffer is still whole.
        self.buf.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Hub {
    pub fn new(config: ResumeConfig, metrics: ResumeMetrics) -> Result<Arc<Hub>, String> {
        config
            .check()
            .map_err(|(field, message)| format!("{field}: {message}"))?;
        Ok(Arc::new(Hub {
            config,
            metrics,
            streams: Mutex::new(HashMap::new()),
            total: AtomicUsize::new(0),
        }))
    }

    fn streams(&self) -> MutexGuard<'_, HashMap<u64, Arc<Entry>>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes buffered by all streams now.
    pub fn buffered_bytes(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Resumable streams held now.
    pub fn live(&self) -> usize {
        self.streams().len()
    }

    /// The client's stream for `source`, each event with its id; resumable when the grace
    /// period is on and the bounds leave room.
    pub fn serve(
        self: &Arc<Self>,
        owner: [u8; 32],
        source: BoxStream<'static, Bytes>,
        sent: Sent,
    ) -> BoxStream<'static, Bytes> {
        let stream = fastrand::u64(..);
        let stamper = Stamper::new(&self.config.instance, stream);
        let mut stamper = Stamping { stamper, sent };
        let entry = (self.config.grace_seconds > 0)
            .then(|| self.register(stream, owner))
            .flatten();
        let Some(entry) = entry else {
            // Not resumable: numbered as it passes, read at the client's pace, dropped with it.
            return source
                .map(move |chunk| {
                    let items = stamper.stamp(chunk);
                    match &items[..] {
                        [(_, one)] => one.clone(),
                        _ => items.into_iter().flat_map(|(_, b)| b).collect(),
                    }
                })
                .boxed();
        };
        let reader = self.join(&entry, 0);
        tokio::spawn(drive(self.clone(), entry, source, stamper));
        reader
    }

    fn register(&self, stream: u64, owner: [u8; 32]) -> Option<Arc<Entry>> {
        let mut streams = self.streams();
        if streams.len() >= self.config.max_streams {
            drop(streams);
            self.metrics.dropped("streams");
            return None;
        }
        let entry = Arc::new(Entry {
            id: stream,
            owner,
            buf: Mutex::new(Buf {
                resumable: true,
                ..Buf::default()
            }),
            changed: watch::channel(()).0,
            consumed: Notify::new(),
            cancel: CancellationToken::new(),
        });
        streams.insert(stream, entry.clone());
        self.metrics.live.set(streams.len() as i64);
        drop(streams);
        self.metrics.buffered();
        Some(entry)
    }

    fn unregister(&self, id: u64) {
        let mut streams = self.streams();
        streams.remove(&id);
        self.metrics.live.set(streams.len() as i64);
    }

    /// The rest of a stream for a reconnect that read up to `last_event_id`, if `owner` may
    /// have it.
    pub fn resume(
        self: &Arc<Self>,
        owner: [u8; 32],
        last_event_id: &str,
    ) -> Result<BoxStream<'static, Bytes>, Refusal> {
        let resumed = self.find(owner, last_event_id);
        match &resumed {
            Ok(_) => self.metrics.resumed(),
            Err(refusal) => self.metrics.refused(refusal.label()),
        }
        resumed
    }

    fn find(
        self: &Arc<Self>,
        owner: [u8; 32],
        last_event_id: &str,
    ) -> Result<BoxStream<'static, Bytes>, Refusal> {
        let id = EventId::parse(last_event_id).ok_or(Refusal::Malformed)?;
        if id.instance != self.config.instance {
            return Err(Refusal::Elsewhere);
        }
        let entry = self.streams().get(&id.stream).cloned();
        let entry = entry.ok_or(Refusal::Unknown)?;
        // Another key's, or another request's: no different from no stream at all.
        if entry.owner != owner {
            return Err(Refusal::Unknown);
        }
        let start = {
            let buf = entry.lock();
            if buf.finished || !buf.resumable {
                return Err(Refusal::Unknown);
            }
            if id.seq == 0 {
                buf.base
            } else {
                let at = buf.items.iter().position(|(seq, _)| *seq == Some(id.seq));
                buf.base + at.ok_or(Refusal::Unknown)? as u64 + 1
            }
        };
        Ok(self.join(&entry, start))
    }

    /// A new reader of `entry` from item `start`.
    fn join(self: &Arc<Self>, entry: &Arc<Entry>, start: u64) -> BoxStream<'static, Bytes> {
        let id = {
            let mut buf = entry.lock();
            let id = buf.next_reader;
            buf.next_reader += 1;
            buf.readers.insert(id, start);
            // A grace timer running since the last reader left no longer applies.
            buf.detached += 1;
            id
        };
        let reader = Reader::new(self.clone(), entry.clone(), id);
        futures_util::stream::unfold(reader, |mut reader| async move {
            let item = reader.next().await?;
            Some((item, reader))
        })
        .boxed()
    }

    /// A reader left: the stream ends with it when it was read to the end or can no longer be
    /// resumed; else the grace period starts.
    fn leave(self: &Arc<Self>, entry: &Arc<Entry>, reader: u64, at_end: bool) {
        let grace = Duration::from_secs(self.config.grace_seconds);
        let detached = {
            let mut buf = entry.lock();
            buf.readers.remove(&reader);
            if !buf.readers.is_empty() || buf.finished {
                return;
            }
            if at_end || !buf.resumable {
                self.finish(&mut buf);
                None
            } else {
                buf.detached += 1;
                Some(buf.detached)
            }
        };
        let Some(generation) = detached else {
            entry.cancel.cancel();
            self.unregister(entry.id);
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.expire(entry, generation);
            return;
        };
        let (hub, entry) = (self.clone(), entry.clone());
        runtime.spawn(async move {
            tokio::time::sleep(grace).await;
            hub.expire(&entry, generation);
        });
    }

    /// The grace period is over: unless a reader came back, the upstream call is cancelled.
    fn expire(&self, entry: &Entry, generation: u64) {
        {
            let mut buf = entry.lock();
            if buf.finished || buf.detached != generation || !buf.readers.is_empty() {
                return;
            }
            self.finish(&mut buf);
        }
        self.metrics.expired();
        entry.cancel.cancel();
        self.unregister(entry.id);
    }

    /// Marks a stream gone and lets its bytes go (the caller unregisters it).
    fn finish(&self, buf: &mut Buf) {
        buf.finished = true;
        buf.resumable = false;
        self.release(buf, buf.items.len());
    }

    /// Drops the first `count` items.
    fn release(&self, buf: &mut Buf, count: usize) {
        let mut freed = 0;
        for (_, bytes) in buf.items.drain(..count) {
            freed += bytes.len();
        }
        buf.base += count as u64;
        buf.bytes -= freed;
        let before = self.total.fetch_sub(freed, Ordering::Relaxed);
        self.metrics.bytes.set((before - freed) as i64);
    }

    /// Takes `bytes` more into the total; whether a bound is now passed, and which.
    fn take(&self, buf: &mut Buf, bytes: usize) -> Option<&'static str> {
        buf.bytes += bytes;
        let total = self.total.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.metrics.bytes.set(total as i64);
        if buf.bytes > self.config.max_stream_bytes {
            Some("stream_bytes")
        } else if total > self.config.max_total_bytes {
            Some("total_bytes")
        } else {
            None
        }
    }
}
