//! Cheap, exact looks into relayed events: which compat chunk can carry usage (so only that one
//! is parsed), and the one request id written into relayed bodies.

use std::borrow::Cow;

use bytes::Bytes;
use memchr::memmem;

/// True when this JSON text may have an object under a `usage` key, so a real JSON read is
/// needed to know. Exact for any valid JSON: a key spelt with `\u` escapes sends the chunk to
/// the parser too; whitespace around the colon (`"usage": {`, Python's `json.dumps`) is
/// skipped. DashScope's `"usage":null` on every other chunk is not a candidate.
pub fn may_carry_usage(json: &[u8]) -> bool {
    static KEY: std::sync::LazyLock<memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memmem::Finder::new(b"\"usage\""));
    static ESCAPE: std::sync::LazyLock<memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memmem::Finder::new(b"\\u"));
    if ESCAPE.find(json).is_some() {
        return true;
    }
    KEY.find_iter(json).any(|at| {
        let mut rest = json[at + 7..]
            .iter()
            .skip_while(|b| b.is_ascii_whitespace());
        rest.next() == Some(&b':') && rest.find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
    })
}

/// Writes the gateway's request id over the upstream's in relayed events (`id` of compat
/// chunks as `chatcmpl-{id}`, `request_id` of native frames), so the header, the body, the
/// ledger and the logs name one id. The upstream's id is read once, by a JSON read of the
/// first event that has one; after that each event is searched for that quoted string.
pub struct IdRewriter {
    field: IdField,
    /// The upstream's id as quoted JSON text, with its searcher built once (not per event).
    from: Option<memmem::Finder<'static>>,
    to: Vec<u8>,
}

/// Which top-level key holds the upstream's id.
#[derive(Clone, Copy)]
enum IdField {
    Id,
    RequestId,
}

/// The one key read of an event; every other value is skipped without being built.
#[derive(serde::Deserialize)]
struct CompatId<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct NativeId<'a> {
    #[serde(borrow)]
    request_id: Option<Cow<'a, str>>,
}

impl IdRewriter {
    /// For compatible-mode chunks: `"id":"chatcmpl-..."`.
    pub fn compat(request_id: &str) -> Self {
        Self {
            field: IdField::Id,
            from: None,
            to: format!("\"chatcmpl-{request_id}\"").into_bytes(),
        }
    }

    /// For legacy completions: `"id":"cmpl-..."`.
    pub fn completion(request_id: &str) -> Self {
        Self {
            field: IdField::Id,
            from: None,
            to: format!("\"cmpl-{request_id}\"").into_bytes(),
        }
    }

    /// For native frames and replies: `"request_id":"..."`.
    pub fn native(request_id: &str) -> Self {
        Self {
            field: IdField::RequestId,
            from: None,
            to: format!("\"{request_id}\"").into_bytes(),
        }
    }

    /// The event (or whole body) with the id replaced; untouched when it has none.
    pub fn apply(&mut self, event: Bytes) -> Bytes {
        if self.from.is_none() {
            let id = self.upstream_id(&event);
            self.learn(id.as_deref());
        }
        self.replace(event)
    }

    /// [`apply`](Self::apply) for a body whose upstream id the caller has already read (the
    /// JSON string's value); `None`: the body has none.
    pub fn apply_known(&mut self, body: Bytes, id: Option<&str>) -> Bytes {
        if self.from.is_none() {
            self.learn(id);
        }
        self.replace(body)
    }

    /// Keeps the upstream's id as quoted JSON text, with its searcher.
    fn learn(&mut self, id: Option<&str>) {
        self.from = id
            .and_then(|id| serde_json::to_vec(id).ok())
            .map(|quoted| memmem::Finder::new(&quoted).into_owned());
    }

    fn replace(&self, event: Bytes) -> Bytes {
        let Some(from) = &self.from else {
            return event;
        };
        let needle = from.needle();
        if needle == self.to.as_slice() {
            return event;
        }
        let Some(at) = from.find(&event) else {
            return event;
        };
        let mut out = Vec::with_capacity(event.len() + self.to.len());
        out.extend_from_slice(&event[..at]);
        out.extend_from_slice(&self.to);
        out.extend_from_slice(&event[at + needle.len()..]);
        Bytes::from(out)
    }

    /// The id's value. Read into a one-key struct: a whole `Value` per reply cost a map insert
    /// and an allocation for every key of the body. A body whose key comes twice is not valid
    /// for this read and keeps its own id.
    fn upstream_id<'a>(&self, event: &'a [u8]) -> Option<Cow<'a, str>> {
        let json = match crate::sse::data_of(event) {
            Some(data) => data,
            None => event,
        };
        match self.field {
            IdField::Id => serde_json::from_slice::<CompatId>(json).ok()?.id,
            IdField::RequestId => serde_json::from_slice::<NativeId>(json).ok()?.request_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A usage chunk written with arbitrary whitespace and key order, as JSON text.
    fn shaped(rng: &mut fastrand::Rng, with_usage_object: bool) -> String {
        let ws = |rng: &mut fastrand::Rng| -> String {
            (0..rng.usize(0..3))
                .map(|_| [' ', '\n', '\t', '\r'][rng.usize(0..4)])
                .collect()
        };
        let usage = if with_usage_object {
            let mut fields = vec![
                format!("\"prompt_tokens\"{}:{}3", ws(rng), ws(rng)),
                format!("\"completion_tokens\"{}:{}5", ws(rng), ws(rng)),
                format!("\"total_tokens\"{}:{}8", ws(rng), ws(rng)),
            ];
            rng.shuffle(&mut fields);
            format!("{{{}{}}}", ws(rng), fields.join(&format!(",{}", ws(rng))))
        } else {
            "null".to_string()
        };
        let mut keys = vec![
            format!("\"id\"{}:{}\"chatcmpl-1\"", ws(rng), ws(rng)),
            format!("\"choices\"{}:{}[]", ws(rng), ws(rng)),
            format!("\"content_note\":\"the \\\"usage\\\": {{ text\\\"\""),
            format!("\"usage\"{}:{}{usage}", ws(rng), ws(rng)),
        ];
        rng.shuffle(&mut keys);
        format!(
            "{}{{{}{}}}",
            ws(rng),
            ws(rng),
            keys.join(&format!("{},", ws(rng)))
        )
    }

    #[test]
    fn usage_is_found_whatever_the_whitespace_and_key_order() {
        let mut rng = fastrand::Rng::with_seed(16);
        for _ in 0..2000 {
            for with_usage in [true, false] {
                let text = shaped(&mut rng, with_usage);
                let parsed: serde_json::Value =
                    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
                assert_eq!(parsed["usage"].is_object(), with_usage, "{text}");
                assert_eq!(may_carry_usage(text.as_bytes()), with_usage, "{text}");
            }
        }
        assert!(may_carry_usage(br#"{"\u0075sage":{"prompt_tokens":1}}"#));
    }

    #[test]
    fn the_upstream_id_is_replaced_once_it_is_known() {
        let mut ids = IdRewriter::compat("g1");
        let first = ids.apply(Bytes::from_static(
            b"data: {\"id\":\"chatcmpl-up\",\"choices\":[]}\n\n",
        ));
        assert_eq!(
            &first[..],
            b"data: {\"id\":\"chatcmpl-g1\",\"choices\":[]}\n\n"
        );
        let next = ids.apply(Bytes::from_static(b"data: {\"id\": \"chatcmpl-up\"}\n\n"));
        assert_eq!(&next[..], b"data: {\"id\": \"chatcmpl-g1\"}\n\n");
        let mut native = IdRewriter::native("g2");
        let frame = native.apply(Bytes::from_static(
            b"id:1\nevent:result\n:HTTP_STATUS/200\ndata:{\"output\":{},\"request_id\":\"up\"}\n\n",
        ));
        assert!(frame.ends_with(b"\"request_id\":\"g2\"}\n\n"));
    }

    #[test]
    fn only_the_top_level_id_is_taken_and_a_body_without_one_is_left_alone() {
        let mut ids = IdRewriter::compat("g3");
        let body = ids.apply(Bytes::from_static(
            b"{\"choices\":[{\"id\":\"inner\"}],\"id\":\"chatcmpl-\\u0075p\"}",
        ));
        // An id the upstream wrote with escapes is not found again as text: left as sent.
        assert_eq!(
            &body[..],
            b"{\"choices\":[{\"id\":\"inner\"}],\"id\":\"chatcmpl-\\u0075p\"}"
        );
        let mut plain = IdRewriter::compat("g4");
        let body = plain.apply(Bytes::from_static(
            b"{\"choices\":[{\"id\":\"inner\"}],\"id\":\"chatcmpl-up\"}",
        ));
        assert_eq!(
            &body[..],
            b"{\"choices\":[{\"id\":\"inner\"}],\"id\":\"chatcmpl-g4\"}"
        );
        let mut none = IdRewriter::native("g5");
        let body = Bytes::from_static(b"{\"output\":{\"request_id\":\"inner\"}}");
        assert_eq!(none.apply(body.clone()), body);
        assert_eq!(
            none.apply(Bytes::from_static(b"not json")),
            Bytes::from_static(b"not json")
        );
    }
}
