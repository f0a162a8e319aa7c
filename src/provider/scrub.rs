//! The upstream key never goes back out. An upstream, or a proxy in front of it, may echo the
//! request's `Authorization` header in an error body, an error event or a garbled stream line;
//! every byte the gateway reads from an upstream passes through here before a client, a log
//! line or a metric can see it.

use bytes::Bytes;
use memchr::memmem::Finder;

/// What stands where the key was.
const REDACTED: &[u8] = b"[redacted]";

/// Keys shorter than this are not searched for: a two-letter "key" (a local server's
/// placeholder such as `k` or `none`) matches ordinary words, and replacing it would corrupt every
/// reply (`"tokens"` became `"to[redacted]ens"`) while protecting nothing.
const MIN_SCRUBBED_KEY: usize = 8;

/// Finds and replaces one upstream's key.
pub struct Scrubber {
    key: Option<Finder<'static>>,
}

impl Scrubber {
    pub fn new(key: Option<&str>) -> Self {
        let key = key
            .filter(|k| k.len() >= MIN_SCRUBBED_KEY)
            .map(|k| Finder::new(k.as_bytes()).into_owned());
        Self { key }
    }

    /// `bytes` without the key; the same buffer (no copy) when it holds none.
    pub fn scrub(&self, bytes: Bytes) -> Bytes {
        let Some(finder) = &self.key else {
            return bytes;
        };
        if finder.find(&bytes).is_none() {
            return bytes;
        }
        let needle = finder.needle().len();
        let mut out = Vec::with_capacity(bytes.len());
        let mut at = 0;
        for found in finder.find_iter(&bytes) {
            out.extend_from_slice(&bytes[at..found]);
            out.extend_from_slice(REDACTED);
            at = found + needle;
        }
        out.extend_from_slice(&bytes[at..]);
        Bytes::from(out)
    }

    /// Whether `bytes` hold the key (a header that does is dropped, not edited).
    pub fn holds_key(&self, bytes: &[u8]) -> bool {
        self.key.as_ref().is_some_and(|f| f.find(bytes).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_copy_of_the_key_is_replaced_and_clean_bytes_are_not_copied() {
        let scrubber = Scrubber::new(Some("sk-upkey"));
        let out = scrubber.scrub(Bytes::from_static(
            b"{\"m\":\"Bearer sk-upkey sk-upkeysk-upkey\"}",
        ));
        assert_eq!(
            &out[..],
            b"{\"m\":\"Bearer [redacted] [redacted][redacted]\"}"
        );
        let clean = Bytes::from_static(b"nothing here");
        let same = scrubber.scrub(clean.clone());
        assert_eq!(same.as_ptr(), clean.as_ptr());
        assert!(scrubber.holds_key(b"x sk-upkey"));
        assert!(!Scrubber::new(None).holds_key(b"sk-upkey"));
    }

    #[test]
    fn a_placeholder_key_too_short_to_be_a_secret_leaves_replies_alone() {
        let scrubber = Scrubber::new(Some("k"));
        let reply = Bytes::from_static(b"{\"usage\":{\"prompt_tokens\":3}}");
        assert_eq!(scrubber.scrub(reply.clone()), reply);
    }
}
