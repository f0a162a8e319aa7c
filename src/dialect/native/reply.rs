//! Canonical steps encoded as native stream frames (the shapes are in `wire::dashscope`).

use std::sync::Arc;

use bytes::Bytes;

use super::Options;
use crate::dialect::StepEncoder;
use crate::error::native_of_openai;
use crate::event::{ChatEvent, Delta, Reply, ToolCallDelta, Usage};
use crate::relay::Step;
use crate::wire::Fragments;
use crate::wire::dashscope::{ErrorBody, Frame, FrameOutput, FrameStep, Shape};
// The shapes live with the wire format; this path stays for existing callers.
pub use crate::wire::dashscope::usage_json;

pub(super) fn result_frame(id: u64, data: &serde_json::Value) -> Bytes {
    result_frame_of(id, data.to_string().as_bytes())
}

/// A result frame around JSON already written.
fn result_frame_of(id: u64, data: &[u8]) -> Bytes {
    let head = format!("id:{id}\nevent:result\n:HTTP_STATUS/200\ndata:");
    let mut frame = Vec::with_capacity(head.len() + data.len() + 2);
    frame.extend_from_slice(head.as_bytes());
    frame.extend_from_slice(data);
    frame.extend_from_slice(b"\n\n");
    Bytes::from(frame)
}

/// DashScope's error frame; `status:` repeats the status where the official SDKs read it.
pub(super) fn error_frame(id: u64, status: u16, data: &[u8]) -> Bytes {
    let data = String::from_utf8_lossy(data);
    Bytes::from(format!(
        "id:{id}\nevent:error\n:HTTP_STATUS/{status}\nstatus:{status}\ndata:{data}\n\n"
    ))
}

/// The wire shape of the client's options.
fn shape(options: Options) -> Shape {
    Shape {
        text_format: options.text_format,
        multimodal: options.multimodal,
        choices: options.choices,
    }
}

/// A whole reply in the native shape.
pub fn encode_reply(reply: &Reply, options: Options, request_id: &str) -> Vec<u8> {
    crate::wire::dashscope::encode_reply(reply, shape(options), request_id)
}

/// Encodes canonical steps as native frames, incremental or cumulative.
pub struct FrameEncoder {
    options: Options,
    request_id: String,
    frames: u64,
    /// The reply so far, for cumulative (`incremental_output: false`) frames.
    sofar: Reply,
    /// A finishing step held back until its usage arrives (OpenAI-compatible upstreams send
    /// usage after the finish).
    held: Option<Delta>,
    usage: Option<Usage>,
    /// Frames with output so far, for the running usage of frames the upstream sent none for.
    tokens_so_far: u64,
}

impl FrameEncoder {
    pub fn new(request_id: Arc<str>, options: Options) -> Self {
        Self {
            options,
            request_id: request_id.to_string(),
            frames: 0,
            sofar: Reply::default(),
            held: None,
            usage: None,
            tokens_so_far: 0,
        }
    }

    fn frame(&mut self, delta: &Delta, usage: Option<&Usage>) -> Bytes {
        self.sofar.apply(&ChatEvent::Delta(delta.clone()));
        self.frames += 1;
        let finish = delta.finish_reason.as_deref().unwrap_or("null");
        // What a step carries beside text and tools rides on the frame either way: its
        // `logprobs` on the choice, Omni `audio` in the message, `search_info` on the output.
        let (logprobs, audio, search_info) = (
            delta.logprobs.as_ref(),
            delta.audio.as_ref(),
            delta.search_info.as_ref(),
        );
        let cumulative: Vec<ToolCallDelta>;
        let step = if self.options.incremental {
            FrameStep {
                index: delta.index,
                content: delta.content.as_deref().unwrap_or(""),
                reasoning: delta.reasoning.as_deref(),
                calls: Fragments(&delta.tool_calls),
                finish,
                logprobs,
                audio,
                search_info,
            }
        } else {
            let choice = self.sofar.choices.iter().find(|c| c.index == delta.index);
            cumulative = choice
                .map(|c| &c.tool_calls[..])
                .unwrap_or_default()
                .iter()
                .enumerate()
                .map(|(i, t)| ToolCallDelta {
                    index: i as u32,
                    id: Some(t.id.clone()),
                    name: Some(t.name.clone()),
                    arguments: Some(t.arguments.clone()),
                })
                .collect();
            FrameStep {
                index: delta.index,
                content: choice.map_or("", |c| c.content.as_str()),
                reasoning: choice.and_then(|c| c.reasoning.as_deref()),
                calls: Fragments(&cumulative),
                finish,
                logprobs,
                audio,
                search_info,
            }
        };
        if delta.content.as_deref().is_some_and(|c| !c.is_empty())
            || delta.reasoning.as_deref().is_some_and(|r| !r.is_empty())
            || delta.audio.is_some()
        {
            self.tokens_so_far += 1;
        }
        // DashScope puts the usage so far on every frame; an upstream that reports it only at
        // the end (compatible mode) gets a running count until its figures come.
        let running = Usage {
            completion_tokens: self.tokens_so_far,
            total_tokens: self.tokens_so_far,
            ..Usage::default()
        };
        let frame = Frame {
            output: FrameOutput::new(shape(self.options), step),
            usage: usage.unwrap_or(&running).into(),
            request_id: &self.request_id,
        };
        result_frame_of(self.frames, &serde_json::to_vec(&frame).unwrap_or_default())
    }

    fn flush_held(&mut self) -> Option<Bytes> {
        let held = self.held.take()?;
        let usage = self.usage.clone();
        Some(self.frame(&held, usage.as_ref()))
    }
}

fn join(a: Option<Bytes>, b: Bytes) -> Bytes {
    match a {
        None => b,
        Some(a) => Bytes::from([a.as_ref(), b.as_ref()].concat()),
    }
}

impl StepEncoder for FrameEncoder {
    fn step(&mut self, step: Step) -> Option<Bytes> {
        match step {
            // The upstream's own id is not the client's: the gateway's id stays.
            Step::Meta(_) => None,
            Step::Event(ChatEvent::Delta(delta)) => {
                if delta.finish_reason.is_some() && delta.usage.is_none() {
                    let earlier = self.flush_held();
                    self.held = Some(delta);
                    return earlier;
                }
                let earlier = self.flush_held();
                let usage = delta.usage.clone();
                Some(join(earlier, self.frame(&delta, usage.as_ref())))
            }
            Step::Event(ChatEvent::Usage(usage)) => {
                self.usage = Some(usage);
                self.flush_held()
            }
            Step::Event(ChatEvent::Error(error)) => {
                let earlier = self.flush_held();
                // A code from an OpenAI-dialect upstream (it came with a `type`) gets its native name.
                let code = match error.kind {
                    Some(_) => native_of_openai(&error.code, error.status),
                    None => &error.code,
                };
                let body = ErrorBody {
                    request_id: &self.request_id,
                    code,
                    message: &error.message,
                };
                let data = serde_json::to_vec(&body).unwrap_or_default();
                Some(join(
                    earlier,
                    error_frame(self.frames + 1, error.status, &data),
                ))
            }
            Step::Fail(error) => {
                let earlier = self.flush_held();
                let data = error.native_body(&self.request_id);
                Some(join(
                    earlier,
                    error_frame(self.frames + 1, error.status().as_u16(), &data),
                ))
            }
        }
    }

    fn finish(&mut self) -> Option<Bytes> {
        self.flush_held()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cumulative_frames_carry_the_text_so_far_and_usage_waits_for_the_finish() {
        let options = Options {
            text_format: false,
            incremental: false,
            multimodal: false,
            choices: 1,
        };
        let mut encoder = FrameEncoder::new(Arc::from("rid"), options);
        let delta = |content: &str, finish: Option<&str>| {
            Step::Event(ChatEvent::Delta(Delta {
                content: Some(content.into()),
                finish_reason: finish.map(str::to_string),
                ..Delta::default()
            }))
        };
        let first = encoder.step(delta("Hel", None)).unwrap_or_default();
        let second = encoder.step(delta("lo", None)).unwrap_or_default();
        assert!(String::from_utf8_lossy(&first).starts_with("id:1\nevent:result\n:HTTP_STATUS/200\ndata:{\"output\":{\"choices\":[{\"message\":{\"content\":\"Hel\""));
        assert!(String::from_utf8_lossy(&second).contains("\"content\":\"Hello\""));
        assert!(
            encoder.step(delta("", Some("stop"))).is_none(),
            "the finish waits for usage"
        );
        let usage = Usage {
            prompt_tokens: 2,
            completion_tokens: 3,
            total_tokens: 5,
            ..Usage::default()
        };
        let last = encoder
            .step(Step::Event(ChatEvent::Usage(usage)))
            .unwrap_or_default();
        let last = String::from_utf8_lossy(&last);
        assert!(last.starts_with("id:3\n"), "{last}");
        assert!(last.contains(r#""finish_reason":"stop"}]},"usage":{"total_tokens":5,"output_tokens":3,"input_tokens":2},"request_id":"rid"}"#), "{last}");
        assert!(encoder.finish().is_none());
    }
}
