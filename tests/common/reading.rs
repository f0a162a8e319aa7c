//! How an upstream may read a request body: a JSON parser that keeps the first of repeated
//! keys, one that keeps the last (serde_json), and what each finds as the model and messages
//! in either dialect. The property tests compare these readings with what the gateway checked.

use std::fmt;

use dashgate::chat::{Chat, Content};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// A JSON value whose objects keep the first value of a repeated key.
pub struct FirstWins(pub Value);

impl<'de> de::Deserialize<'de> for FirstWins {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FirstWins;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E>(self, v: bool) -> Result<FirstWins, E> {
                Ok(FirstWins(Value::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<FirstWins, E> {
                Ok(FirstWins(Value::from(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<FirstWins, E> {
                Ok(FirstWins(Value::from(v)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<FirstWins, E> {
                Ok(FirstWins(Value::from(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<FirstWins, E> {
                Ok(FirstWins(Value::String(v.to_string())))
            }
            fn visit_unit<E>(self) -> Result<FirstWins, E> {
                Ok(FirstWins(Value::Null))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FirstWins, A::Error> {
                let mut items = Vec::new();
                while let Some(FirstWins(v)) = seq.next_element()? {
                    items.push(v);
                }
                Ok(FirstWins(Value::Array(items)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FirstWins, A::Error> {
                let mut out = Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    let FirstWins(v) = map.next_value()?;
                    out.entry(key).or_insert(v);
                }
                Ok(FirstWins(Value::Object(out)))
            }
        }
        d.deserialize_any(V)
    }
}

/// The body as a first-wins and as a last-wins reader sees it.
pub fn readings(body: &[u8]) -> Vec<Value> {
    let first = serde_json::from_slice::<FirstWins>(body).map(|f| f.0);
    let last = serde_json::from_slice::<Value>(body);
    first.into_iter().chain(last).collect()
}

/// A message as compared: role, and text or (kind, value) parts.
pub type Read = (String, Result<String, Vec<(String, String)>>);

fn typed(part: &Map<String, Value>, kind: &str) -> (String, String) {
    let value = match kind {
        "text" => part.get("text").cloned(),
        "image_url" | "video_url" => part.get(kind).and_then(|v| v.get("url")).cloned(),
        "input_audio" => part.get(kind).and_then(|v| v.get("data")).cloned(),
        _ => part.get(kind).cloned(),
    };
    (
        kind.to_string(),
        value.map(|v| v.to_string()).unwrap_or_default(),
    )
}

/// A native item as the upstream reads it: the first kind key it has.
fn native_item(item: &Map<String, Value>) -> (String, String) {
    if let Some(Value::String(kind)) = item.get("type") {
        return typed(item, kind);
    }
    let value = |k: &str| item.get(k).map(|v| v.to_string()).unwrap_or_default();
    if item.contains_key("text") {
        ("text".into(), value("text"))
    } else if item.contains_key("image") {
        ("image_url".into(), value("image"))
    } else if let Some(video) = item.get("video") {
        let kind = if video.is_array() {
            "video"
        } else {
            "video_url"
        };
        (kind.into(), value("video"))
    } else if item.contains_key("audio") {
        ("input_audio".into(), value("audio"))
    } else {
        (String::new(), String::new())
    }
}

/// Model and messages as an upstream reads them from `v`.
pub fn upstream_reads(v: &Value, native: bool) -> (Option<String>, Vec<Read>) {
    let model = v.get("model").and_then(Value::as_str).map(str::to_string);
    let messages = if native {
        match (v.pointer("/input/messages"), v.pointer("/input/prompt")) {
            (Some(m), _) => m.clone(),
            (None, Some(p)) => serde_json::json!([{"role": "user", "content": p}]),
            _ => Value::Null,
        }
    } else {
        v.get("messages").cloned().unwrap_or_default()
    };
    let read = messages
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    let role = m
                        .get("role")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    let content = match m.get("content") {
                        Some(Value::String(s)) => Ok(s.clone()),
                        Some(Value::Array(items)) => Err(items
                            .iter()
                            .filter_map(Value::as_object)
                            .map(|p| match (native, p.get("type")) {
                                (true, _) => native_item(p),
                                (false, Some(Value::String(k))) => typed(p, k),
                                _ => (String::new(), String::new()),
                            })
                            .collect()),
                        _ => Ok(String::new()),
                    };
                    (role, content)
                })
                .collect()
        })
        .unwrap_or_default();
    (model, read)
}

/// Model and messages as the gateway checked them.
pub fn checked(chat: &Chat) -> (Option<String>, Vec<Read>) {
    let messages = chat
        .messages
        .iter()
        .map(|m| {
            let role = serde_json::to_value(m.role)
                .ok()
                .and_then(|r| r.as_str().map(str::to_string))
                .unwrap_or_default();
            let content = match &m.content {
                Some(Content::Text(s)) => Ok(s.clone()),
                Some(Content::Parts(parts)) => {
                    Err(parts.iter().map(|p| typed(&p.fields, &p.kind)).collect())
                }
                None => Ok(String::new()),
            };
            (role, content)
        })
        .collect();
    (Some(chat.model.clone()), messages)
}
