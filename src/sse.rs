//! Server-sent events: cutting an upstream byte stream into whole events, so each one is
//! forwarded the moment its blank line arrives, and never half of one.

use bytes::{Bytes, BytesMut};

/// Splits a byte stream into complete SSE events (each returned with its blank-line end).
#[derive(Default)]
pub struct EventSplitter {
    buf: BytesMut,
    /// Bytes of `buf` already searched for an event end.
    scanned: usize,
}

impl EventSplitter {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete event, if one has arrived.
    pub fn next_event(&mut self) -> Option<Bytes> {
        let end = self.find_end()?;
        self.scanned = 0;
        Some(self.buf.split_to(end).freeze())
    }

    /// Whatever is left when the stream ends, completed with a blank line.
    pub fn finish(&mut self) -> Option<Bytes> {
        if self.buf.iter().all(|b| b.is_ascii_whitespace()) {
            self.buf.clear();
            return None;
        }
        let mut rest = std::mem::take(&mut self.buf);
        while rest.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            rest.truncate(rest.len() - 1);
        }
        rest.extend_from_slice(b"\n\n");
        Some(rest.freeze())
    }

    /// End of the first event: a line break followed by an empty line (`\n\n`, `\r\n\r\n`,
    /// `\r\r`, or mixes), as the SSE spec allows.
    fn find_end(&mut self) -> Option<usize> {
        let buf = &self.buf[..];
        // Resume a little early: the previous scan may have stopped inside `\r\n\r\n`.
        let mut i = self.scanned.saturating_sub(3);
        while let Some(pos) = memchr::memchr2(b'\n', b'\r', &buf[i..]) {
            let at = i + pos;
            let after = if buf[at] == b'\r' && buf.get(at + 1) == Some(&b'\n') {
                at + 2
            } else {
                at + 1
            };
            if at + 1 == buf.len() && buf[at] == b'\r' {
                break; // a lone `\r` at the end may still become `\r\n`
            }
            match (buf.get(after), buf.get(after + 1)) {
                (Some(b'\n'), _) => return Some(after + 1),
                (Some(b'\r'), Some(b'\n')) => return Some(after + 2),
                (Some(b'\r'), Some(_)) => return Some(after + 1),
                (Some(b'\r'), None) | (None, _) => break,
                _ => i = after,
            }
        }
        self.scanned = buf.len();
        None
    }
}

/// Whether an event's data is the OpenAI end marker `[DONE]`.
pub fn is_done(event: &[u8]) -> bool {
    data_of(event).is_some_and(|d| d.trim_ascii() == b"[DONE]")
}

/// Whether an event carries an OpenAI-shaped error object (`data: {"error":...}`), as DashScope
/// sends when it stops a stream mid-way.
pub fn is_error(event: &[u8]) -> bool {
    data_of(event).is_some_and(|d| {
        let d = d.trim_ascii_start();
        d.starts_with(b"{") && d[1..].trim_ascii_start().starts_with(b"\"error\"")
    })
}

/// For a native error frame (`event:error`), its status: from `:HTTP_STATUS/NNN` (DashScope) or
/// `status:NNN`, else 500.
pub fn error_status(event: &[u8]) -> Option<u16> {
    let mut lines = event
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    if !lines.clone().any(|l| l.trim_ascii() == b"event:error") {
        return None;
    }
    let status = lines.find_map(|l| {
        let value = l
            .strip_prefix(b":HTTP_STATUS/")
            .or_else(|| l.strip_prefix(b"status:"))?;
        std::str::from_utf8(value).ok()?.trim().parse().ok()
    });
    Some(status.unwrap_or(500))
}

/// The payload of an event's first `data:` line.
pub fn data_of(event: &[u8]) -> Option<&[u8]> {
    event
        .split(|b| *b == b'\n')
        .find_map(|line| line.strip_prefix(b"data:"))
        .map(|d| d.strip_prefix(b" ").unwrap_or(d))
        .map(|d| d.strip_suffix(b"\r").unwrap_or(d))
}

/// The HTTP response for a stream of SSE events (a fresh stream, or a resumed one's rest).
pub fn sse_response(
    events: impl futures_util::Stream<Item = Bytes> + Send + 'static,
) -> axum::response::Response {
    use axum::http::{HeaderValue, header};
    use futures_util::StreamExt;
    let events = events.map(Ok::<_, std::convert::Infallible>);
    let mut response = axum::response::Response::new(axum::body::Body::from_stream(events));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(chunks: &[&[u8]]) -> Vec<Bytes> {
        let mut s = EventSplitter::default();
        let mut out = Vec::new();
        for chunk in chunks {
            s.push(chunk);
            while let Some(e) = s.next_event() {
                out.push(e);
            }
        }
        out.extend(s.finish());
        out
    }

    #[test]
    fn events_are_cut_at_blank_lines_whatever_the_chunking() {
        let wire = b"data: {\"a\":1}\n\ndata: {\"b\":2}\r\n\r\n: comment\n\ndata: [DONE]\n\n";
        let whole = split_all(&[wire]);
        assert_eq!(whole.len(), 4);
        for size in 1..wire.len() {
            let pieces: Vec<&[u8]> = wire.chunks(size).collect();
            assert_eq!(split_all(&pieces), whole, "chunk size {size}");
        }
        assert!(is_done(&whole[3]));
        assert!(!is_error(&whole[0]));
        assert!(is_error(
            b"data: { \"error\": {\"code\":\"data_inspection_failed\"}}\n\n"
        ));
        assert_eq!(data_of(&whole[1]), Some(&b"{\"b\":2}"[..]));
    }

    #[test]
    fn native_framing_stays_one_event() {
        let wire =
            b"id:1\nevent:result\n:HTTP_STATUS/200\ndata:{\"output\":{}}\n\nid:2\nevent:result\n";
        let events = split_all(&[wire]);
        assert_eq!(events.len(), 2);
        assert_eq!(data_of(&events[0]), Some(&b"{\"output\":{}}"[..]));
        assert_eq!(error_status(&events[0]), None);
        assert_eq!(
            error_status(b"id:1\nevent:error\n:HTTP_STATUS/429\ndata:{}\n\n"),
            Some(429)
        );
        assert_eq!(&events[1][..], b"id:2\nevent:result\n\n");
    }

    #[test]
    fn trailing_partial_event_is_completed() {
        assert_eq!(
            split_all(&[b"data: x"]),
            vec![Bytes::from_static(b"data: x\n\n")]
        );
        assert!(
            split_all(&[b"\n\n"])
                .iter()
                .all(|e| e.trim_ascii().is_empty())
        );
    }
}
