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

use super::config::ResumeConfig;
use super::metrics::ResumeMetrics;
use super::stamp::{EventId, Stamper};

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
        let reader = Reader {
            hub: self.clone(),
            entry: entry.clone(),
            id,
            rx: entry.changed.subscribe(),
            at_end: false,
        };
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

/// Reads the upstream into the buffer, whether or not anyone is reading.
async fn drive(
    hub: Arc<Hub>,
    entry: Arc<Entry>,
    mut source: BoxStream<'static, Bytes>,
    mut stamper: Stamping,
) {
    let room = hub.config.max_stream_bytes;
    loop {
        // Past a bound the stream is only the client's: it waits for the client to read.
        loop {
            let consumed = entry.consumed.notified();
            let waits = {
                let buf = entry.lock();
                !buf.resumable && buf.bytes > room
            };
            if !waits {
                break;
            }
            tokio::select! {
                _ = consumed => {}
                _ = entry.cancel.cancelled() => return,
            }
        }
        let next = tokio::select! {
            biased;
            _ = entry.cancel.cancelled() => return,
            next = source.next() => next,
        };
        let Some(chunk) = next else { break };
        let items = stamper.stamp(chunk);
        let size = items.iter().map(|(_, b)| b.len()).sum();
        let dropped = {
            let mut buf = entry.lock();
            if buf.finished {
                return;
            }
            buf.items.extend(items);
            let over = hub.take(&mut buf, size).filter(|_| buf.resumable);
            if over.is_some() {
                buf.resumable = false;
                if buf.readers.is_empty() {
                    hub.finish(&mut buf);
                } else {
                    trim(&hub, &mut buf);
                }
            }
            over.map(|reason| (reason, buf.finished))
        };
        entry.changed.send_modify(|_| {});
        if let Some((reason, finished)) = dropped {
            hub.metrics.dropped(reason);
            hub.unregister(entry.id);
            if finished {
                // Nobody is reading: the upstream call goes with the buffer.
                return;
            }
        }
    }
    entry.lock().done = true;
    entry.changed.send_modify(|_| {});
}

/// Drops what every reader has read, once the stream is no longer resumable.
fn trim(hub: &Hub, buf: &mut Buf) {
    let Some(&lowest) = buf.readers.values().min() else {
        return;
    };
    let count = lowest.saturating_sub(buf.base) as usize;
    if count > 0 {
        hub.release(buf, count.min(buf.items.len()));
    }
}

struct Reader {
    hub: Arc<Hub>,
    entry: Arc<Entry>,
    id: u64,
    rx: watch::Receiver<()>,
    at_end: bool,
}

impl Reader {
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            {
                let mut buf = self.entry.lock();
                let at = *buf.readers.get(&self.id)?;
                let index = at.saturating_sub(buf.base) as usize;
                if index < buf.items.len() {
                    // Everything buffered goes out as one chunk: an upstream burst of events
                    // stays one write to the client, as it was before the ids.
                    let item = match buf.items.len() - index {
                        1 => buf.items[index].1.clone(),
                        _ => {
                            let ready = buf.items.range(index..);
                            let size = ready.clone().map(|(_, b)| b.len()).sum();
                            let mut joined = bytes::BytesMut::with_capacity(size);
                            for (_, bytes) in ready {
                                joined.extend_from_slice(bytes);
                            }
                            joined.freeze()
                        }
                    };
                    let next = buf.base + buf.items.len() as u64;
                    buf.readers.insert(self.id, next);
                    if !buf.resumable {
                        trim(&self.hub, &mut buf);
                        self.entry.consumed.notify_one();
                    }
                    return Some(item);
                }
                if buf.done {
                    self.at_end = true;
                    return None;
                }
                if buf.finished {
                    return None;
                }
            }
            self.rx.changed().await.ok()?;
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.hub.leave(&self.entry, self.id, self.at_end);
    }
}
