//! What the gateway writes in DashScope's native format: stream frame payloads
//! (`{output, usage, request_id}`), whole replies, usage and error bodies, as borrowing structs.
//! Field order is DashScope's key order; a key absent today is skipped.

use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::event::{Choice, Reply, ToolCall, Usage};
use crate::wire::Fragments;
use crate::wire::openai::Logprobs;

/// How the client asked for its reply, as far as the shape of `output` goes.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// `result_format: "text"` (`output.text`) rather than `"message"` (`output.choices`).
    pub text_format: bool,
    /// The multimodal endpoint: message content is a list of `{text}` items.
    pub multimodal: bool,
    /// Choices asked for (`n`); with more than one, each carries its `index`.
    pub choices: u32,
}

impl Shape {
    fn index(self, index: u32) -> Option<u32> {
        (self.choices > 1).then_some(index)
    }
}

/// `{"request_id","code","message"}`: the gateway's own errors and an upstream's mid-stream
/// error alike.
#[derive(Serialize)]
pub struct ErrorBody<'a> {
    pub request_id: &'a str,
    pub code: &'a str,
    pub message: &'a str,
}

/// Usage in the native shape.
#[derive(Serialize)]
pub struct UsageBody {
    total_tokens: u64,
    output_tokens: u64,
    input_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_tokens_details: Option<Cached>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_tokens_details: Option<OutputDetails>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    audio_tokens: Option<u64>,
}

#[derive(Serialize)]
struct Cached {
    cached_tokens: u64,
}

#[derive(Serialize)]
struct OutputDetails {
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    audio_tokens: Option<u64>,
}

impl From<&Usage> for UsageBody {
    fn from(usage: &Usage) -> Self {
        let output = (usage.reasoning_tokens.is_some() || usage.output_audio_tokens.is_some())
            .then_some(OutputDetails {
                reasoning_tokens: usage.reasoning_tokens,
                audio_tokens: usage.output_audio_tokens,
            });
        Self {
            total_tokens: usage.total_tokens,
            output_tokens: usage.completion_tokens,
            input_tokens: usage.prompt_tokens,
            prompt_tokens_details: usage
                .cached_tokens
                .map(|cached_tokens| Cached { cached_tokens }),
            output_tokens_details: output,
            image_tokens: usage.image_tokens,
            audio_tokens: usage.audio_tokens,
        }
    }
}

/// Usage in the native shape, as a JSON value (for callers that build on it).
pub fn usage_json(usage: &Usage) -> Value {
    serde_json::to_value(UsageBody::from(usage)).unwrap_or_default()
}

/// Message content: a list of `{text}` items on the multimodal endpoint, a string otherwise.
#[derive(Serialize)]
#[serde(untagged)]
enum Content<'a> {
    Items([TextItem<'a>; 1]),
    Text(&'a str),
}

#[derive(Serialize)]
struct TextItem<'a> {
    text: &'a str,
}

impl<'a> Content<'a> {
    fn of(shape: Shape, text: &'a str) -> Self {
        if shape.multimodal {
            Content::Items([TextItem { text }])
        } else {
            Content::Text(text)
        }
    }
}

/// The payload of one stream frame.
#[derive(Serialize)]
pub struct Frame<'a> {
    pub output: FrameOutput<'a>,
    pub usage: UsageBody,
    pub request_id: &'a str,
}

/// What one step says, in the frame's terms: the text so far or the delta, per the client's
/// `incremental_output`.
pub struct FrameStep<'a> {
    pub index: u32,
    pub content: &'a str,
    pub reasoning: Option<&'a str>,
    pub calls: Fragments<'a>,
    pub finish: &'a str,
    pub logprobs: Option<&'a Value>,
    pub audio: Option<&'a Value>,
    pub search_info: Option<&'a Value>,
}

/// The `output` of a stream frame.
#[derive(Serialize)]
#[serde(untagged)]
pub enum FrameOutput<'a> {
    Text {
        finish_reason: &'a str,
        text: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        search_info: Option<&'a Value>,
    },
    Message {
        choices: [FrameChoice<'a>; 1],
        #[serde(skip_serializing_if = "Option::is_none")]
        search_info: Option<&'a Value>,
    },
}

#[derive(Serialize)]
pub struct FrameChoice<'a> {
    message: FrameMessage<'a>,
    finish_reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<&'a Value>,
}

#[derive(Serialize)]
struct FrameMessage<'a> {
    content: Content<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    role: &'static str,
    #[serde(skip_serializing_if = "Fragments::is_empty")]
    tool_calls: Fragments<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    audio: Option<&'a Value>,
}

impl<'a> FrameOutput<'a> {
    pub fn new(shape: Shape, step: FrameStep<'a>) -> Self {
        if shape.text_format {
            return FrameOutput::Text {
                finish_reason: step.finish,
                text: step.content,
                search_info: step.search_info,
            };
        }
        let message = FrameMessage {
            content: Content::of(shape, step.content),
            reasoning_content: step.reasoning,
            role: "assistant",
            tool_calls: step.calls,
            audio: step.audio,
        };
        FrameOutput::Message {
            choices: [FrameChoice {
                message,
                finish_reason: step.finish,
                index: shape.index(step.index),
                logprobs: step.logprobs,
            }],
            search_info: step.search_info,
        }
    }
}

/// A whole native reply.
#[derive(Serialize)]
struct Whole<'a> {
    output: WholeOutput<'a>,
    usage: UsageOrEmpty,
    request_id: &'a str,
}

/// A whole reply's usage, `{}` when the upstream gave none.
struct UsageOrEmpty(Option<UsageBody>);

impl Serialize for UsageOrEmpty {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        match &self.0 {
            Some(usage) => usage.serialize(serializer),
            None => serializer.serialize_map(Some(0))?.end(),
        }
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum WholeOutput<'a> {
    Text {
        finish_reason: &'a str,
        text: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        search_info: Option<&'a Value>,
    },
    Message {
        choices: Vec<WholeChoice<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        search_info: Option<&'a Value>,
    },
}

#[derive(Serialize)]
struct WholeChoice<'a> {
    finish_reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u32>,
    message: WholeMessage<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<Logprobs<'a>>,
}

#[derive(Serialize)]
struct WholeMessage<'a> {
    role: &'static str,
    content: Content<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WholeCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    audio: Option<Value>,
}

#[derive(Serialize)]
struct WholeCall<'a> {
    function: WholeFunction<'a>,
    index: usize,
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct WholeFunction<'a> {
    name: &'a str,
    arguments: &'a str,
}

fn whole_calls(calls: &[ToolCall]) -> Vec<WholeCall<'_>> {
    calls
        .iter()
        .enumerate()
        .map(|(index, t)| WholeCall {
            function: WholeFunction {
                name: &t.name,
                arguments: &t.arguments,
            },
            index,
            id: &t.id,
            kind: "function",
        })
        .collect()
}

fn whole_choice(shape: Shape, choice: &Choice) -> WholeChoice<'_> {
    WholeChoice {
        finish_reason: choice.finish_reason.as_deref().unwrap_or("stop"),
        index: shape.index(choice.index),
        message: WholeMessage {
            role: "assistant",
            content: Content::of(shape, &choice.content),
            reasoning_content: choice.reasoning.as_deref(),
            tool_calls: whole_calls(&choice.tool_calls),
            audio: choice.audio_json(),
        },
        logprobs: choice
            .logprobs
            .as_deref()
            .map(|content| Logprobs { content }),
    }
}

/// A whole reply in the native shape, under the gateway's request id (also when the upstream
/// named its own: one id per request).
pub fn encode_reply(reply: &Reply, shape: Shape, request_id: &str) -> Vec<u8> {
    let search_info = reply.search_info.as_ref();
    let output = if shape.text_format {
        let first = reply.choices.first();
        WholeOutput::Text {
            finish_reason: first
                .and_then(|c| c.finish_reason.as_deref())
                .unwrap_or("stop"),
            text: first.map_or("", |c| c.content.as_str()),
            search_info,
        }
    } else {
        WholeOutput::Message {
            choices: reply
                .choices
                .iter()
                .map(|c| whole_choice(shape, c))
                .collect(),
            search_info,
        }
    };
    let body = Whole {
        output,
        usage: UsageOrEmpty(reply.usage.as_ref().map(UsageBody::from)),
        request_id,
    };
    serde_json::to_vec(&body).unwrap_or_default()
}
