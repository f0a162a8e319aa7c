//! Event ids: `<instance>.<stream>.<seq>` — the gateway's tag (for the load balancer), the
//! stream's random id (for the hub), and the event's number in the stream from 1 (for the
//! reconnect to say where it stopped). Comments (keep-alives) are not events and get none.

use bytes::Bytes;

use crate::sse::EventSplitter;

/// An event id, read back from `Last-Event-ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventId {
    pub instance: String,
    pub stream: u64,
    pub seq: u64,
}

impl EventId {
    pub fn parse(text: &str) -> Option<EventId> {
        let mut parts = text.trim().rsplitn(3, '.');
        let seq = parts.next()?.parse().ok()?;
        let stream = u64::from_str_radix(parts.next()?, 16).ok()?;
        let instance = parts.next()?.to_string();
        Some(EventId {
            instance,
            stream,
            seq,
        })
    }
}

/// Numbers one stream's events as they pass.
pub struct Stamper {
    /// `<instance>.<stream>.`
    prefix: String,
    seq: u64,
}

impl Stamper {
    pub fn new(instance: &str, stream: u64) -> Self {
        Self {
            prefix: format!("{instance}.{stream:016x}."),
            seq: 0,
        }
    }

    /// The last number given.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// `chunk`'s events, each with its id: a native frame's own `id:` line (DashScope numbers
    /// frames from 1, as this does) gets the full id in its place; an OpenAI event gets an
    /// `id: ` line in front. With the number each event was given (none for a comment).
    pub fn stamp(&mut self, chunk: Bytes) -> Vec<(Option<u64>, Bytes)> {
        let mut splitter = EventSplitter::default();
        splitter.push(&chunk);
        let mut out = Vec::with_capacity(1);
        while let Some(event) = splitter.next_event() {
            out.push(self.one(event));
        }
        out.extend(splitter.finish().map(|event| self.one(event)));
        out
    }

    fn one(&mut self, event: Bytes) -> (Option<u64>, Bytes) {
        let lines = || event.split(|b| *b == b'\n');
        let is_comment = |l: &[u8]| l.is_empty() || l == b"\r" || l.starts_with(b":");
        if lines().all(is_comment) {
            return (None, event);
        }
        self.seq += 1;
        let mut out = Vec::with_capacity(event.len() + self.prefix.len() + 24);
        let own = lines().position(|l| l.starts_with(b"id:"));
        match own {
            Some(at) => {
                for (i, line) in lines().enumerate() {
                    if i > 0 {
                        out.push(b'\n');
                    }
                    if i == at {
                        out.extend_from_slice(b"id:");
                        self.push_id(&mut out);
                        if line.ends_with(b"\r") {
                            out.push(b'\r');
                        }
                    } else {
                        out.extend_from_slice(line);
                    }
                }
            }
            None => {
                out.extend_from_slice(b"id: ");
                self.push_id(&mut out);
                out.push(b'\n');
                out.extend_from_slice(&event);
            }
        }
        (Some(self.seq), Bytes::from(out))
    }

    fn push_id(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.prefix.as_bytes());
        out.extend_from_slice(self.seq.to_string().as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_events_get_an_id_line_and_comments_none() {
        let mut s = Stamper::new("gw1", 0xab);
        let out = s.stamp(Bytes::from_static(
            b": keep-alive\n\ndata: {\"a\":1}\n\ndata: [DONE]\n\n",
        ));
        let texts: Vec<_> = out.iter().map(|(_, b)| b.clone()).collect();
        assert_eq!(&texts[0][..], b": keep-alive\n\n");
        assert_eq!(
            &texts[1][..],
            b"id: gw1.00000000000000ab.1\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(
            &texts[2][..],
            b"id: gw1.00000000000000ab.2\ndata: [DONE]\n\n"
        );
        assert_eq!(out[0].0, None);
        assert_eq!(out[2].0, Some(2));
    }

    #[test]
    fn native_frames_keep_their_shape_with_the_full_id() {
        let mut s = Stamper::new("dg", 7);
        let out = s.stamp(Bytes::from_static(
            b"id:1\nevent:result\n:HTTP_STATUS/200\ndata:{}\n\n",
        ));
        assert_eq!(
            &out[0].1[..],
            b"id:dg.0000000000000007.1\nevent:result\n:HTTP_STATUS/200\ndata:{}\n\n"
        );
    }

    #[test]
    fn ids_read_back() {
        let id = EventId::parse("gw-1.00000000000000ab.12");
        assert_eq!(
            id,
            Some(EventId {
                instance: "gw-1".into(),
                stream: 0xab,
                seq: 12
            })
        );
        assert_eq!(EventId::parse("12"), None);
        assert_eq!(EventId::parse("a.zz.1"), None);
    }
}
