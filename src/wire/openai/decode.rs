//! Replies in the OpenAI-compatible format as an upstream sends them (DashScope compatible
//! mode, vLLM, ...): chunks and whole completions → `ChatEvent`s.

use serde::Deserialize;

use crate::event::{ChatEvent, Delta, Meta, Reply, StreamError, ToolCallDelta, Usage};

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    created: Option<i64>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<WireError>,
    /// DashScope's search sources, as a translated native reply carries them.
    #[serde(default)]
    search_info: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct WireChoice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Option<WireMessage>,
    #[serde(default)]
    message: Option<WireMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    logprobs: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
    #[serde(default)]
    audio: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct WireToolCall {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<WireFunction>,
}

#[derive(Deserialize)]
struct WireFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Deserialize, Default)]
pub(crate) struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<Details>,
    #[serde(default)]
    completion_tokens_details: Option<Details>,
}

#[derive(Deserialize, Default)]
struct Details {
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    reasoning_tokens: Option<u64>,
    #[serde(default)]
    image_tokens: Option<u64>,
    #[serde(default)]
    audio_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<String>,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        let prompt = u.prompt_tokens_details.unwrap_or_default();
        let completion = u.completion_tokens_details.unwrap_or_default();
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens,
            cached_tokens: prompt.cached_tokens,
            reasoning_tokens: completion.reasoning_tokens,
            image_tokens: prompt.image_tokens,
            audio_tokens: prompt.audio_tokens,
            output_audio_tokens: completion.audio_tokens,
        }
    }
}

fn delta_of(index: u32, mut message: WireMessage, finish_reason: Option<String>) -> Delta {
    let audio = message.audio.take();
    Delta {
        index,
        role: message.role.is_some(),
        content: message.content,
        reasoning: message.reasoning_content,
        tool_calls: message
            .tool_calls
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, call)| {
                let function = call.function;
                ToolCallDelta {
                    index: call.index.unwrap_or(i as u32),
                    id: call.id,
                    name: function.as_ref().and_then(|f| f.name.clone()),
                    arguments: function.and_then(|f| f.arguments),
                }
            })
            .collect(),
        finish_reason,
        usage: None,
        logprobs: None,
        audio: audio.filter(|a| !a.is_null()),
        search_info: None,
    }
}

fn meta_of(chunk: &Chunk) -> Meta {
    Meta {
        id: chunk.id.clone().unwrap_or_default(),
        created: chunk.created.unwrap_or_default(),
        model: chunk.model.clone().unwrap_or_default(),
        request_id: None,
    }
}

/// Decodes one stream chunk (the JSON of a `data:` line).
pub fn decode_chunk(data: &[u8]) -> Result<(Meta, Vec<ChatEvent>), String> {
    let chunk: Chunk = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    let meta = meta_of(&chunk);
    let mut events = Vec::with_capacity(chunk.choices.len() + 1);
    if let Some(error) = chunk.error {
        events.push(ChatEvent::Error(StreamError {
            status: 400,
            code: match error.code {
                Some(serde_json::Value::String(code)) => code,
                Some(other) => other.to_string(),
                None => "upstream_error".into(),
            },
            kind: error.kind,
            message: error.message.unwrap_or_default(),
        }));
        return Ok((meta, events));
    }
    let mut search_info = chunk.search_info.filter(|s| !s.is_null());
    for choice in chunk.choices {
        let message = choice.delta.or(choice.message);
        let mut delta = match message {
            Some(message) => delta_of(choice.index, message, choice.finish_reason),
            None => Delta {
                index: choice.index,
                finish_reason: choice.finish_reason,
                ..Delta::default()
            },
        };
        delta.logprobs = choice.logprobs.filter(|l| !l.is_null());
        delta.search_info = search_info.take();
        events.push(ChatEvent::Delta(delta));
    }
    if let Some(usage) = chunk.usage {
        events.push(ChatEvent::Usage(usage.into()));
    }
    Ok((meta, events))
}

/// Only the usage of a whole completion: everything else is skipped over without being built
/// (the fast path relays the reply as it came and only meters it).
pub fn usage_of_completion(body: &[u8]) -> Option<Usage> {
    #[derive(Deserialize)]
    struct UsageOnly {
        #[serde(default)]
        usage: Option<WireUsage>,
    }
    serde_json::from_slice::<UsageOnly>(body)
        .ok()?
        .usage
        .map(Usage::from)
}

/// A whole completion's top-level `id` and its usage, in one read (the relay's fast path
/// needs both). `None` when the body is not an object of that shape (an `id` that is not a
/// string, a key given twice): the caller then reads each on its own.
pub fn id_and_usage_of_completion(body: &[u8]) -> Option<(Option<String>, Option<Usage>)> {
    #[derive(Deserialize)]
    struct IdAndUsage<'a> {
        #[serde(borrow, default)]
        id: Option<std::borrow::Cow<'a, str>>,
        #[serde(default)]
        usage: Option<WireUsage>,
    }
    let read = serde_json::from_slice::<IdAndUsage>(body).ok()?;
    Some((
        read.id.map(|id| id.into_owned()),
        read.usage.map(Usage::from),
    ))
}

/// Decodes a whole (non-stream) completion.
pub fn decode_completion(body: &[u8]) -> Result<Reply, String> {
    let (meta, events) = decode_chunk(body)?;
    let mut reply = Reply::new(meta);
    for event in &events {
        reply.apply(event);
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_chunks_decode() {
        let role = br#"{"choices":[{"delta":{"content":"","role":"assistant"},"index":0,"logprobs":null,"finish_reason":null}],"object":"chat.completion.chunk","usage":null,"created":1715931028,"system_fingerprint":null,"model":"qwen-plus","id":"chatcmpl-3bb05cf5cd819fbca5f0b8d67a025022"}"#;
        let (meta, events) = decode_chunk(role).unwrap_or_default();
        assert_eq!(meta.id, "chatcmpl-3bb05cf5cd819fbca5f0b8d67a025022");
        assert_eq!(meta.created, 1715931028);
        assert!(
            matches!(&events[..], [ChatEvent::Delta(d)] if d.role && d.content.as_deref() == Some(""))
        );

        let usage = br#"{"id":"chatcmpl-e30f5ae7","choices":[],"created":1735113344,"model":"qwen-plus","object":"chat.completion.chunk","usage":{"completion_tokens":17,"prompt_tokens":22,"total_tokens":39,"completion_tokens_details":{"reasoning_tokens":5},"prompt_tokens_details":{"audio_tokens":null,"cached_tokens":0}}}"#;
        let (_, events) = decode_chunk(usage).unwrap_or_default();
        let expected = Usage {
            prompt_tokens: 22,
            completion_tokens: 17,
            total_tokens: 39,
            cached_tokens: Some(0),
            reasoning_tokens: Some(5),
            ..Usage::default()
        };
        assert_eq!(events, vec![ChatEvent::Usage(expected)]);

        let tool = br#"{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":" \"x\"}"},"index":0,"id":"","type":"function"}]},"index":0}],"object":"chat.completion.chunk","usage":null,"created":1,"system_fingerprint":null,"model":"qwen-plus","id":"c"}"#;
        let (_, events) = decode_chunk(tool).unwrap_or_default();
        let ChatEvent::Delta(d) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(d.tool_calls[0].arguments.as_deref(), Some(" \"x\"}"));
        assert!(!d.role);
    }

    #[test]
    fn usage_alone_is_read_from_a_whole_completion() {
        let body = br#"{"choices":[{"message":{"role":"assistant","content":"hi"},"finish_reason":"stop","index":0,"logprobs":null}],"object":"chat.completion","usage":{"prompt_tokens":3019,"completion_tokens":104,"total_tokens":3123,"prompt_tokens_details":{"cached_tokens":2048}},"created":1735120033,"system_fingerprint":null,"model":"qwen-plus","id":"chatcmpl-6ada9ed2"}"#;
        let usage = usage_of_completion(body);
        assert_eq!(
            usage.map(|u| (u.prompt_tokens, u.total_tokens, u.cached_tokens)),
            Some((3019, 3123, Some(2048)))
        );
        assert_eq!(usage_of_completion(b"not json"), None);
    }

    #[test]
    fn mid_stream_error_decodes_to_an_error_event() {
        let data = br#"{"error":{"message":"Output data may contain inappropriate content.","type":"data_inspection_failed","code":"data_inspection_failed"},"id":"chatcmpl-1"}"#;
        let (_, events) = decode_chunk(data).unwrap_or_default();
        assert!(matches!(&events[..], [ChatEvent::Error(e)] if e.code == "data_inspection_failed"));
    }
}
