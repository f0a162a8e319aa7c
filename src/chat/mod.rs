//! `Chat`: the request in the middle. Close to the OpenAI-compatible shape the devices speak,
//! typed where the gateway reads or checks a field, and `extra` for everything else, which
//! travels through untouched (DashScope adds parameters often: `enable_search`, `skill`, ...).

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::GatewayError;

mod ranges;
mod strict;
mod validate;

pub use strict::refuse_duplicate_keys;
pub use validate::validate;
use validate::validate_sampling;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Chat {
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// A string, or an array of strings, token ids, or token-id arrays (`001_*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Chat {
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn wants_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// Whether any part is not text: decides the media pipeline and DashScope's multimodal
    /// endpoint alike.
    pub fn has_media(&self) -> bool {
        self.messages.iter().any(|m| {
            matches!(&m.content, Some(Content::Parts(parts)) if parts.iter().any(|p| p.kind != "text"))
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Message content: plain text, or a list of parts (text, image, video, audio).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

/// A content part; `kind` is its `type`, the rest stays as sent.
#[derive(Debug, Clone, Serialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

// Hand-written: with `#[serde(flatten)]` serde buffers every other field before building it,
// which copies a multi-megabyte base64 image twice over.
impl<'de> Deserialize<'de> for Part {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PartVisitor;
        impl<'de> Visitor<'de> for PartVisitor {
            type Value = Part;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a content part object")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Part, A::Error> {
                let mut kind = None;
                let mut fields = Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    if key == "type" {
                        if kind.is_some() {
                            return Err(de::Error::duplicate_field("type"));
                        }
                        kind = Some(map.next_value::<String>()?);
                    } else {
                        let value = map.next_value::<Value>()?;
                        fields.insert(key, value);
                    }
                }
                let kind = kind.ok_or_else(|| de::Error::missing_field("type"))?;
                Ok(Part { kind, fields })
            }
        }
        deserializer.deserialize_map(PartVisitor)
    }
}

// Hand-written so a wrong shape gets a clear message rather than serde's "did not match any
// variant of untagged enum".
impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ContentVisitor;
        impl<'de> Visitor<'de> for ContentVisitor {
            type Value = Content;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or an array of content parts")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Content, E> {
                Ok(Content::Text(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Content, E> {
                Ok(Content::Text(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content, A::Error> {
                let mut parts = Vec::with_capacity(seq.size_hint().unwrap_or(2));
                while let Some(part) = seq.next_element()? {
                    parts.push(part);
                }
                Ok(Content::Parts(parts))
            }
        }
        deserializer.deserialize_any(ContentVisitor)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionDef>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Parses a JSON body whose type errors name the field at fault. Valid bodies, nearly all of
/// them, are parsed once without tracking the path (tracking it costs about a third more on the
/// request path); a failed parse is repeated with tracking to name the field.
pub(crate) fn parse_tracked<T: serde::de::DeserializeOwned>(
    body: &[u8],
) -> Result<T, GatewayError> {
    // Checks read the parse below; the fast path relays the bytes. Both mean one thing only
    // when no key repeats.
    refuse_duplicate_keys(body)?;
    if let Ok(parsed) = serde_json::from_slice(body) {
        return Ok(parsed);
    }
    let mut json = serde_json::Deserializer::from_slice(body);
    let parsed: T = serde_path_to_error::deserialize(&mut json).map_err(path_error)?;
    json.end()
        .map_err(|e| GatewayError::InvalidJson(e.to_string()))?;
    Ok(parsed)
}

/// Parses an OpenAI-compatible request body; type errors name the field at fault.
pub fn decode(body: &[u8]) -> Result<Chat, GatewayError> {
    let chat: Chat = parse_tracked(body)?;
    validate(&chat)?;
    Ok(chat)
}

/// A `/v1/completions` request: only what the gateway checks is typed.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    /// A string or an array of strings; a fill-in-the-middle prompt carries Qwen's
    /// `<|fim_prefix|>...<|fim_suffix|>...<|fim_middle|>` markers, or a `suffix` field.
    pub prompt: Value,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub stop: Option<Value>,
}

impl CompletionRequest {
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }
}

/// Parses and checks a `/v1/completions` body.
pub fn decode_completion(body: &[u8]) -> Result<CompletionRequest, GatewayError> {
    let request: CompletionRequest = parse_tracked(body)?;
    if request.model.trim().is_empty() {
        return Err(GatewayError::param("model", "`model` must not be empty"));
    }
    let prompt_ok = match &request.prompt {
        Value::String(_) => true,
        Value::Array(items) => !items.is_empty() && items.iter().all(Value::is_string),
        _ => false,
    };
    if !prompt_ok {
        return Err(GatewayError::param(
            "prompt",
            "`prompt` must be a string or an array of strings",
        ));
    }
    validate_sampling(
        request.temperature,
        request.top_p,
        request.presence_penalty,
        request.n,
        request.max_tokens,
        request.stop.as_ref(),
    )?;
    Ok(request)
}

/// A serde error with its path, as the 400 the client gets.
pub(crate) fn path_error(e: serde_path_to_error::Error<serde_json::Error>) -> GatewayError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    if !inner.is_data() {
        return GatewayError::InvalidJson(inner.to_string());
    }
    let message = inner.to_string();
    let param = missing_field(&message)
        .map(|field| join_path(&path, field))
        .unwrap_or(path);
    let param = (param != ".").then_some(param);
    GatewayError::InvalidParameter {
        message: match &param {
            Some(p) => format!("Invalid `{p}`: {message}"),
            None => format!("Invalid request: {message}"),
        },
        param,
    }
}

fn missing_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next()
}

fn join_path(path: &str, field: &str) -> String {
    if path == "." || path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

#[cfg(test)]
mod tests;
