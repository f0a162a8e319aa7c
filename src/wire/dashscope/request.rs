//! The native request the gateway sends a DashScope upstream:
//! `{model, input: {messages}, parameters}`, borrowed from the canonical `Chat`.

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::{Map, Value};

use crate::chat::{Chat, Content, Message, Part, Role, Tool};
use crate::wire::parts::Item;

#[derive(Serialize)]
struct Request<'a> {
    model: &'a str,
    input: Input<'a>,
    parameters: Parameters<'a>,
}

#[derive(Serialize)]
struct Input<'a> {
    messages: Messages<'a>,
}

struct Messages<'a> {
    messages: &'a [Message],
    multimodal: bool,
}

impl Serialize for Messages<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.messages.iter().map(|m| NativeMessage {
            role: m.role,
            content: m.content.as_ref().map(|c| match c {
                Content::Text(text) if self.multimodal => {
                    NativeContent::TextItems([TextItem { text }])
                }
                Content::Text(text) => NativeContent::Text(text),
                Content::Parts(parts) => NativeContent::Items(Items(parts)),
            }),
            tool_calls: m.tool_calls.as_ref(),
            extra: &m.extra,
        }))
    }
}

#[derive(Serialize)]
struct NativeMessage<'a> {
    role: Role,
    content: Option<NativeContent<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<&'a Value>,
    #[serde(flatten)]
    extra: &'a Map<String, Value>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum NativeContent<'a> {
    TextItems([TextItem<'a>; 1]),
    Text(&'a str),
    Items(Items<'a>),
}

#[derive(Serialize)]
struct TextItem<'a> {
    text: &'a str,
}

/// Parts as native items, written straight from the parts.
struct Items<'a>(&'a [Part]);

impl Serialize for Items<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(Item))
    }
}

/// Every field of `Chat` is a parameter in the native dialect: the typed ones first, then the
/// rest as they came (enable_search, enable_thinking, response_format, ...).
#[derive(Serialize)]
struct Parameters<'a> {
    result_format: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    incremental_output: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<&'a Vec<Tool>>,
    #[serde(flatten)]
    rest: Rest<'a>,
}

/// The client's other fields, but for those already written in their typed place.
struct Rest<'a> {
    extra: &'a Map<String, Value>,
    written: &'a [&'a str],
}

impl Serialize for Rest<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in self.extra {
            if !self.written.contains(&key.as_str()) {
                map.serialize_entry(key, value)?;
            }
        }
        map.end()
    }
}

/// The native request body for `chat`. Streams ask for deltas (`incremental_output`) and
/// `message` format: the gateway re-encodes for its client. A client's own `result_format` or
/// `incremental_output` takes the gateway's place (and stays there).
pub fn encode_request(chat: &Chat, multimodal: bool) -> Vec<u8> {
    let message = Value::String("message".into());
    let yes = Value::Bool(true);
    let stream = chat.is_stream();
    let written: &[&str] = if stream {
        &["result_format", "incremental_output"]
    } else {
        &["result_format"]
    };
    let body = Request {
        model: &chat.model,
        input: Input {
            messages: Messages {
                messages: &chat.messages,
                multimodal,
            },
        },
        parameters: Parameters {
            result_format: chat.extra.get("result_format").unwrap_or(&message),
            incremental_output: stream
                .then(|| chat.extra.get("incremental_output").unwrap_or(&yes)),
            temperature: chat.temperature,
            top_p: chat.top_p,
            presence_penalty: chat.presence_penalty,
            n: chat.n,
            max_tokens: chat.max_tokens,
            seed: chat.seed,
            stop: chat.stop.as_ref(),
            tools: chat.tools.as_ref(),
            rest: Rest {
                extra: &chat.extra,
                written,
            },
        },
    };
    serde_json::to_vec(&body).unwrap_or_default()
}
