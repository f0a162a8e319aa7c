//! One reading for every reader: a JSON body whose objects repeat a key means one thing to a
//! parser that keeps the first value and another to one that keeps the last. The gateway's
//! checks read one of them and the fast path relays the bytes as sent, so a body with a
//! repeated key anywhere is refused (400 naming the key's path) before anything reads it.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::error::GatewayError;

/// One step of a path into the body.
enum Step {
    Key(String),
    Index(usize),
}

/// Where the repeated key was found, collected innermost first as the error unwinds.
#[derive(Default)]
struct Found {
    path: Vec<Step>,
}

/// Refuses a body that repeats a key in any object; malformed JSON is left to the typed
/// parse that follows (it names the problem better).
pub fn refuse_duplicate_keys(body: &[u8]) -> Result<(), GatewayError> {
    let mut found: Option<Found> = None;
    let mut json = serde_json::Deserializer::from_slice(body);
    let scanned = Scan { found: &mut found }.deserialize(&mut json);
    match (scanned, found) {
        (Err(_), Some(found)) => {
            let param = render(&found.path);
            Err(GatewayError::param(
                param.clone(),
                format!("`{param}` is given more than once; each key may appear once"),
            ))
        }
        _ => Ok(()),
    }
}

/// `a.b[0].c` from steps collected innermost first.
fn render(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path.iter().rev() {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

struct Scan<'f> {
    found: &'f mut Option<Found>,
}

impl<'de> DeserializeSeed<'de> for Scan<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// A key, borrowed from the body when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Above this many keys an object's keys are looked up in a hash set, not scanned.
const LINEAR_KEYS: usize = 16;

impl<'de> Visitor<'de> for Scan<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_i128<E>(self, _: i128) -> Result<(), E> {
        Ok(())
    }
    fn visit_u128<E>(self, _: u128) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        loop {
            match seq.next_element_seed(Scan {
                found: &mut *self.found,
            }) {
                Ok(Some(())) => index += 1,
                Ok(None) => return Ok(()),
                Err(e) => {
                    if let Some(found) = self.found.as_mut() {
                        found.path.push(Step::Index(index));
                    }
                    return Err(e);
                }
            }
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys: Vec<Cow<'de, str>> = Vec::new();
        let mut many: Option<std::collections::HashSet<Cow<'de, str>>> = None;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let repeated = match &mut many {
                Some(set) => !set.insert(key.clone()),
                None => keys.contains(&key),
            };
            if repeated {
                *self.found = Some(Found {
                    path: vec![Step::Key(key.into_owned())],
                });
                return Err(de::Error::custom("duplicate key"));
            }
            if let Err(e) = map.next_value_seed(Scan {
                found: &mut *self.found,
            }) {
                if let Some(found) = self.found.as_mut() {
                    found.path.push(Step::Key(key.into_owned()));
                }
                return Err(e);
            }
            if many.is_none() {
                keys.push(key);
                if keys.len() > LINEAR_KEYS {
                    many = Some(keys.drain(..).collect());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(body: &str) -> Option<String> {
        match refuse_duplicate_keys(body.as_bytes()) {
            Err(GatewayError::InvalidParameter { param, .. }) => param,
            Err(other) => Some(format!("other: {other}")),
            Ok(()) => None,
        }
    }

    #[test]
    fn a_repeated_key_is_named_by_its_path_at_any_depth() {
        assert_eq!(
            param(r#"{"model":"a","model":"b"}"#).as_deref(),
            Some("model")
        );
        assert_eq!(
            param(r#"{"messages":[{"role":"user"},{"content":[{"type":"image_url","image_url":{"url":"x","url":"y"}}]}]}"#).as_deref(),
            Some("messages[1].content[0].image_url.url")
        );
        // An escaped spelling of the same key is the same key.
        assert_eq!(
            param(r#"{"image":1,"im\u0061ge":2}"#).as_deref(),
            Some("image")
        );
        // Past the linear scan, the hash set still finds it.
        let many: Vec<String> = (0..40).map(|i| format!(r#""k{i}":{i}"#)).collect();
        let body = format!(r#"{{"p":{{{},"k3":0}}}}"#, many.join(","));
        assert_eq!(param(&body).as_deref(), Some("p.k3"));
    }

    #[test]
    fn distinct_keys_and_malformed_bodies_pass_to_the_typed_parse() {
        assert_eq!(param(r#"{"a":{"a":1},"b":[{"a":1},{"a":2}]}"#), None);
        assert_eq!(param(r#"{"a":"#), None);
        assert_eq!(param(""), None);
    }
}
