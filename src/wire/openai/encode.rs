//! What the gateway writes in the OpenAI-compatible format: chunks, whole completions, usage
//! and error bodies, as borrowing structs. Field order is the key order on the wire
//! (DashScope's compatible mode); a key absent today is skipped, a key sent as `null` is an
//! `Option` without a skip.

use serde::Serialize;
use serde_json::Value;

use crate::event::{Choice, Delta, Meta, Reply, ToolCall, Usage};
use crate::wire::Fragments;

/// `{"error":{"message","type","param","code"},"request_id"}`: the gateway's own errors and an
/// upstream's mid-stream error alike.
#[derive(Serialize)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
    pub request_id: &'a str,
}

#[derive(Serialize)]
pub struct ErrorDetail<'a> {
    pub message: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub param: Option<&'a str>,
    pub code: &'a str,
}

/// Usage in the compatible-mode shape, details only where the upstream gave them.
#[derive(Serialize)]
pub struct UsageBody {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(skip_serializing_if = "Option::is_none")]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Serialize)]
struct PromptDetails {
    #[serde(skip_serializing_if = "Option::is_none")]
    cached_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    audio_tokens: Option<u64>,
}

#[derive(Serialize)]
struct CompletionDetails {
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    audio_tokens: Option<u64>,
}

impl From<&Usage> for UsageBody {
    fn from(usage: &Usage) -> Self {
        let prompt = (usage.cached_tokens.is_some()
            || usage.image_tokens.is_some()
            || usage.audio_tokens.is_some())
        .then_some(PromptDetails {
            cached_tokens: usage.cached_tokens,
            image_tokens: usage.image_tokens,
            audio_tokens: usage.audio_tokens,
        });
        let completion = (usage.reasoning_tokens.is_some() || usage.output_audio_tokens.is_some())
            .then_some(CompletionDetails {
                reasoning_tokens: usage.reasoning_tokens,
                audio_tokens: usage.output_audio_tokens,
            });
        Self {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.total_tokens,
            prompt_tokens_details: prompt,
            completion_tokens_details: completion,
        }
    }
}

/// Usage in the compatible-mode shape, as a JSON value (for callers that build on it).
pub fn usage_json(usage: &Usage) -> Value {
    serde_json::to_value(UsageBody::from(usage)).unwrap_or_default()
}

/// One `chat.completion.chunk`: one choice's step, or (no choices) the usage.
#[derive(Serialize)]
pub struct Chunk<'a> {
    choices: &'a [ChunkChoice<'a>],
    object: &'static str,
    usage: Option<UsageBody>,
    created: i64,
    system_fingerprint: Option<()>,
    model: &'a str,
    id: &'a str,
    /// DashScope's `search_info` at the top level (OpenAI has no place for it; the SDKs keep
    /// unknown fields).
    #[serde(skip_serializing_if = "Option::is_none")]
    search_info: Option<&'a Value>,
}

#[derive(Serialize)]
pub struct ChunkChoice<'a> {
    delta: DeltaBody<'a>,
    finish_reason: Option<&'a str>,
    index: u32,
    logprobs: Option<&'a Value>,
}

/// The `delta` of a chunk: `content` when there is some (or `null` beside a role), then
/// `reasoning_content`, `tool_calls`, `audio`, `role`, as DashScope orders them.
#[derive(Serialize)]
struct DeltaBody<'a> {
    /// `Some(None)` is the `"content":null` DashScope sends beside a role or reasoning that
    /// comes without text.
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Fragments::is_empty")]
    tool_calls: Fragments<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    audio: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
}

impl<'a> ChunkChoice<'a> {
    pub fn of(delta: &'a Delta) -> Self {
        let content = match &delta.content {
            Some(content) => Some(Some(content.as_str())),
            None if delta.role || delta.reasoning.is_some() => Some(None),
            None => None,
        };
        Self {
            delta: DeltaBody {
                content,
                reasoning_content: delta.reasoning.as_deref(),
                tool_calls: Fragments(&delta.tool_calls),
                audio: delta.audio.as_ref(),
                role: delta.role.then_some("assistant"),
            },
            finish_reason: delta.finish_reason.as_deref(),
            index: delta.index,
            logprobs: delta.logprobs.as_ref(),
        }
    }
}

impl<'a> Chunk<'a> {
    /// A chunk with one choice's step.
    pub fn step(
        meta: &'a Meta,
        choice: &'a [ChunkChoice<'a>],
        search_info: Option<&'a Value>,
    ) -> Self {
        Self::new(meta, choice, None, search_info)
    }

    /// The usage chunk: no choices.
    pub fn usage(meta: &'a Meta, usage: &Usage) -> Self {
        Self::new(meta, &[], Some(usage.into()), None)
    }

    fn new(
        meta: &'a Meta,
        choices: &'a [ChunkChoice<'a>],
        usage: Option<UsageBody>,
        search_info: Option<&'a Value>,
    ) -> Self {
        Self {
            choices,
            object: "chat.completion.chunk",
            usage,
            created: meta.created,
            system_fingerprint: None,
            model: &meta.model,
            id: &meta.id,
            search_info,
        }
    }
}

/// A whole `chat.completion`.
#[derive(Serialize)]
struct Completion<'a> {
    choices: Vec<CompletionChoice<'a>>,
    object: &'static str,
    usage: Option<UsageBody>,
    created: i64,
    system_fingerprint: Option<()>,
    model: &'a str,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    search_info: Option<&'a Value>,
}

#[derive(Serialize)]
struct CompletionChoice<'a> {
    message: Message<'a>,
    finish_reason: Option<&'a str>,
    index: u32,
    logprobs: Option<Logprobs<'a>>,
}

#[derive(Serialize)]
pub struct Logprobs<'a> {
    pub content: &'a [Value],
}

/// The reply's message. DashScope orders the keys differently when the message calls tools.
#[derive(Serialize)]
#[serde(untagged)]
enum Message<'a> {
    Text {
        role: &'static str,
        content: &'a str,
        // Thinking models reason before a tool call too: the reasoning stays with it.
        #[serde(skip_serializing_if = "Option::is_none")]
        reasoning_content: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        audio: Option<Value>,
    },
    Tools {
        content: &'a str,
        role: &'static str,
        tool_calls: Vec<WholeCall<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reasoning_content: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        audio: Option<Value>,
    },
}

#[derive(Serialize)]
struct WholeCall<'a> {
    function: WholeFunction<'a>,
    id: &'a str,
    index: usize,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct WholeFunction<'a> {
    arguments: &'a str,
    name: &'a str,
}

fn whole_calls(calls: &[ToolCall]) -> Vec<WholeCall<'_>> {
    calls
        .iter()
        .enumerate()
        .map(|(index, t)| WholeCall {
            function: WholeFunction {
                arguments: &t.arguments,
                name: &t.name,
            },
            id: &t.id,
            index,
            kind: "function",
        })
        .collect()
}

fn completion_choice(c: &Choice) -> CompletionChoice<'_> {
    let (reasoning_content, audio) = (c.reasoning.as_deref(), c.audio_json());
    let message = if c.tool_calls.is_empty() {
        Message::Text {
            role: "assistant",
            content: &c.content,
            reasoning_content,
            audio,
        }
    } else {
        Message::Tools {
            content: &c.content,
            role: "assistant",
            tool_calls: whole_calls(&c.tool_calls),
            reasoning_content,
            audio,
        }
    };
    CompletionChoice {
        message,
        finish_reason: c.finish_reason.as_deref(),
        index: c.index,
        logprobs: c.logprobs.as_deref().map(|content| Logprobs { content }),
    }
}

/// A whole reply in the compatible-mode shape.
pub fn encode_completion(reply: &Reply) -> Vec<u8> {
    let body = Completion {
        choices: reply.choices.iter().map(completion_choice).collect(),
        object: "chat.completion",
        usage: reply.usage.as_ref().map(UsageBody::from),
        created: reply.meta.created,
        system_fingerprint: None,
        model: &reply.meta.model,
        id: &reply.meta.id,
        search_info: reply.search_info.as_ref(),
    };
    serde_json::to_vec(&body).unwrap_or_default()
}
