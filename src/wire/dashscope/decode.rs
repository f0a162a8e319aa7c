//! Replies in DashScope's native format as an upstream sends them: stream frames and whole
//! replies → `ChatEvent`s.

use serde::Deserialize;
use serde_json::Value;

use crate::event::{ChatEvent, Delta, Meta, Reply, ToolCallDelta, Usage};

#[derive(Deserialize)]
struct NativeReply {
    #[serde(default)]
    output: Option<Output>,
    #[serde(default)]
    usage: Option<NativeUsage>,
    #[serde(default)]
    request_id: Option<String>,
}

#[derive(Deserialize)]
struct Output {
    #[serde(default)]
    choices: Option<Vec<NativeChoice>>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    search_info: Option<Value>,
}

#[derive(Deserialize)]
struct NativeChoice {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    message: Option<NativeMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    logprobs: Option<Value>,
}

#[derive(Deserialize)]
struct NativeMessage {
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<NativeToolCall>>,
    #[serde(default)]
    audio: Option<Value>,
}

#[derive(Deserialize)]
struct NativeToolCall {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<NativeFunction>,
}

#[derive(Deserialize)]
struct NativeFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Deserialize, Default)]
struct NativeUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    total_tokens: Option<u64>,
    #[serde(default)]
    image_tokens: Option<u64>,
    #[serde(default)]
    audio_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<TokenDetails>,
    #[serde(default)]
    input_tokens_details: Option<TokenDetails>,
    #[serde(default)]
    output_tokens_details: Option<TokenDetails>,
}

#[derive(Deserialize, Default)]
struct TokenDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    reasoning_tokens: Option<u64>,
    #[serde(default)]
    image_tokens: Option<u64>,
    #[serde(default)]
    audio_tokens: Option<u64>,
}

impl From<NativeUsage> for Usage {
    fn from(u: NativeUsage) -> Self {
        let input = u
            .prompt_tokens_details
            .or(u.input_tokens_details)
            .unwrap_or_default();
        let output = u.output_tokens_details.unwrap_or_default();
        Usage {
            prompt_tokens: u.input_tokens,
            completion_tokens: u.output_tokens,
            total_tokens: u.total_tokens.unwrap_or(u.input_tokens + u.output_tokens),
            cached_tokens: input.cached_tokens,
            reasoning_tokens: output.reasoning_tokens,
            image_tokens: u.image_tokens.or(input.image_tokens),
            audio_tokens: u.audio_tokens.or(input.audio_tokens),
            output_audio_tokens: output.audio_tokens,
        }
    }
}

/// Text of native content: a string, or the `text` items of a list.
fn text_of(content: Option<Value>) -> Option<String> {
    match content? {
        Value::String(s) => Some(s),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(|i| i.get("text").and_then(Value::as_str))
                .collect(),
        ),
        _ => None,
    }
}

/// `finish_reason` as DashScope streams it: the string `"null"` until the end.
fn finished(reason: Option<String>) -> Option<String> {
    reason.filter(|r| r != "null")
}

/// Decodes native replies. Stateful for streams: the role is announced once per choice.
#[derive(Default)]
pub struct Decoder {
    announced: u64,
}

impl Decoder {
    /// One frame of a stream (incremental output), or a whole reply. Each frame's usage so far
    /// rides on its deltas; the final frame's usage also comes as a `Usage` event.
    pub fn decode(&mut self, data: &[u8]) -> Result<(Meta, Vec<ChatEvent>), String> {
        let reply: NativeReply = serde_json::from_slice(data).map_err(|e| e.to_string())?;
        let meta = Meta {
            request_id: reply.request_id,
            ..Meta::default()
        };
        let usage: Option<Usage> = reply.usage.map(Usage::from);
        let mut events = Vec::new();
        let mut done = false;
        if let Some(output) = reply.output {
            let choices = match (output.choices, output.text) {
                (Some(choices), _) => choices,
                (None, text) => vec![NativeChoice {
                    index: Some(0),
                    message: Some(NativeMessage {
                        content: text.map(Value::String),
                        reasoning_content: None,
                        tool_calls: None,
                        audio: None,
                    }),
                    finish_reason: output.finish_reason,
                    logprobs: None,
                }],
            };
            let mut search_info = output.search_info.filter(|s| !s.is_null());
            for (i, choice) in choices.into_iter().enumerate() {
                let index = choice.index.unwrap_or(i as u32);
                let bit = 1u64 << index.min(63);
                let role = self.announced & bit == 0;
                self.announced |= bit;
                let finish_reason = finished(choice.finish_reason);
                done |= finish_reason.is_some();
                let message = choice.message;
                let (content, reasoning, calls, audio) = match message {
                    Some(m) => (
                        text_of(m.content),
                        m.reasoning_content,
                        m.tool_calls.unwrap_or_default(),
                        m.audio.filter(|a| !a.is_null()),
                    ),
                    None => (None, None, Vec::new(), None),
                };
                events.push(ChatEvent::Delta(Delta {
                    index,
                    role,
                    content,
                    reasoning,
                    tool_calls: calls
                        .into_iter()
                        .enumerate()
                        .map(|(k, call)| ToolCallDelta {
                            index: call.index.unwrap_or(k as u32),
                            id: call.id,
                            name: call.function.as_ref().and_then(|f| f.name.clone()),
                            arguments: call.function.and_then(|f| f.arguments),
                        })
                        .collect(),
                    finish_reason,
                    usage: usage.clone(),
                    logprobs: choice.logprobs.filter(|l| !l.is_null()),
                    audio,
                    search_info: search_info.take(),
                }));
            }
        }
        if done {
            events.extend(usage.map(ChatEvent::Usage));
        }
        Ok((meta, events))
    }
}

/// Decodes a whole (non-stream) native reply.
pub fn decode_reply(body: &[u8]) -> Result<Reply, String> {
    let (meta, events) = Decoder::default().decode(body)?;
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
    fn a_thinking_frame_decodes() {
        let frame = br#"{"output":{"choices":[{"message":{"content":"","reasoning_content":"The","role":"assistant"},"finish_reason":"null"}]},"usage":{"total_tokens":290,"output_tokens":3,"input_tokens":287,"output_tokens_details":{"reasoning_tokens":1}},"request_id":"a1959ad1"}"#;
        let mut decoder = Decoder::default();
        let (meta, events) = decoder.decode(frame).unwrap_or_default();
        assert_eq!(meta.request_id.as_deref(), Some("a1959ad1"));
        let [ChatEvent::Delta(d)] = &events[..] else {
            panic!("{events:?}")
        };
        assert!(d.role && d.finish_reason.is_none());
        assert_eq!(
            (d.content.as_deref(), d.reasoning.as_deref()),
            (Some(""), Some("The"))
        );
        assert_eq!(d.usage.as_ref().and_then(|u| u.reasoning_tokens), Some(1));
        let (_, again) = decoder.decode(frame).unwrap_or_default();
        assert!(
            matches!(&again[..], [ChatEvent::Delta(d)] if !d.role),
            "role is announced once"
        );
    }

    #[test]
    fn the_final_frame_also_yields_usage_and_text_format_decodes() {
        let text = br#"{"output":{"finish_reason":"stop","text":"hi"},"usage":{"total_tokens":5,"output_tokens":1,"input_tokens":4},"request_id":"r"}"#;
        let reply = decode_reply(text).unwrap_or_default();
        assert_eq!(reply.choices[0].content, "hi");
        assert_eq!(reply.choices[0].finish_reason.as_deref(), Some("stop"));
        assert_eq!(
            reply.usage.map(|u| (u.prompt_tokens, u.total_tokens)),
            Some((4, 5))
        );
    }
}
