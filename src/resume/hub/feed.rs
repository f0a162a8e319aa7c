//! The two ends of a held stream: the task that feeds it from the upstream, and the readers
//! (the client, then a reconnect) that take its events.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::watch;

use super::{Buf, Entry, Hub, Stamping};

/// Reads the upstream into the buffer, whether or not anyone is reading.
pub(super) async fn drive(
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
pub(super) fn trim(hub: &Hub, buf: &mut Buf) {
    let Some(&lowest) = buf.readers.values().min() else {
        return;
    };
    let count = lowest.saturating_sub(buf.base) as usize;
    if count > 0 {
        hub.release(buf, count.min(buf.items.len()));
    }
}

pub(super) struct Reader {
    hub: Arc<Hub>,
    entry: Arc<Entry>,
    id: u64,
    rx: watch::Receiver<()>,
    at_end: bool,
}

impl Reader {
    /// Reader `id` of `entry` (its place in the buffer is already registered).
    pub(super) fn new(hub: Arc<Hub>, entry: Arc<Entry>, id: u64) -> Reader {
        let rx = entry.changed.subscribe();
        Reader {
            hub,
            entry,
            id,
            rx,
            at_end: false,
        }
    }

    pub(super) async fn next(&mut self) -> Option<Bytes> {
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
