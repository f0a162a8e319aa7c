//! Canonical replies encoded as native JSON and native stream frames.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::Options;
use crate::dialect::StepEncoder;
use crate::error::native_of_openai;
use crate::event::{ChatEvent, Choice, Delta, Reply, ToolCall, ToolCallDelta, Usage};
use crate::relay::Step;

pub(super) fn result_frame(id: u64, data: &Value) -> Bytes {
    Bytes::from(format!(
        "id:{id}\nevent:result\n:HTTP_STATUS/200\ndata:{data}\n\n"
    ))
}

/// DashScope's error frame; `status:` repeats the status where the official SDKs read it.
pub(super) fn error_frame(id: u64, status: u16, data: &[u8]) -> Bytes {
    let data = String::from_utf8_lossy(data);
    Bytes::from(format!(
        "id:{id}\nevent:error\n:HTTP_STATUS/{status}\nstatus:{status}\ndata:{data}\n\n"
    ))
}

/// Usage in the native shape.
pub fn usage_json(usage: &Usage) -> Value {
    let mut out = Map::new();
    out.insert("total_tokens".into(), json!(usage.total_tokens));
    out.insert("output_tokens".into(), json!(usage.completion_tokens));
    out.insert("input_tokens".into(), json!(usage.prompt_tokens));
    if let Some(cached) = usage.cached_tokens {
        out.insert(
            "prompt_tokens_details".into(),
            json!({"cached_tokens": cached}),
        );
    }
    let mut output = Map::new();
    for (name, value) in [
        ("reasoning_tokens", usage.reasoning_tokens),
        ("audio_tokens", usage.output_audio_tokens),
    ] {
        if let Some(value) = value {
            output.insert(name.into(), json!(value));
        }
    }
    if !output.is_empty() {
        out.insert("output_tokens_details".into(), Value::Object(output));
    }
    if let Some(image) = usage.image_tokens {
        out.insert("image_tokens".into(), json!(image));
    }
    if let Some(audio) = usage.audio_tokens {
        out.insert("audio_tokens".into(), json!(audio));
    }
    Value::Object(out)
}

/// Tool calls as a whole reply lists them.
fn whole_calls_json(calls: &[ToolCall]) -> Value {
    calls
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"function": {"name": t.name, "arguments": t.arguments}, "index": i, "id": t.id, "type": "function"}))
        .collect()
}

/// Tool calls as a stream frame carries them: fragments (name only on the first) when
/// incremental, the calls so far otherwise.
fn frame_calls_json(calls: &[ToolCallDelta]) -> Value {
    calls
        .iter()
        .map(|c| {
            let mut function = Map::new();
            if let Some(name) = &c.name {
                function.insert("name".into(), json!(name));
            }
            function.insert("arguments".into(), json!(c.arguments.as_deref().unwrap_or("")));
            json!({"index": c.index, "id": c.id.as_deref().unwrap_or(""), "type": "function", "function": function})
        })
        .collect()
}

/// The `output` of a whole native reply, keys in DashScope's order; with several choices
/// each carries its `index`.
fn whole_output(options: Options, choices: &[Choice]) -> Value {
    let first = choices.first().cloned().unwrap_or_default();
    if options.text_format {
        let finish = first.finish_reason.as_deref().unwrap_or("stop");
        return json!({"finish_reason": finish, "text": first.content});
    }
    let choices: Vec<Value> = choices
        .iter()
        .map(|choice| {
            let finish = choice.finish_reason.as_deref().unwrap_or("stop");
            let mut message = Map::new();
            message.insert("role".into(), json!("assistant"));
            message.insert("content".into(), content_json(options, &choice.content));
            if let Some(reasoning) = &choice.reasoning {
                message.insert("reasoning_content".into(), json!(reasoning));
            }
            if !choice.tool_calls.is_empty() {
                message.insert("tool_calls".into(), whole_calls_json(&choice.tool_calls));
            }
            if let Some(audio) = choice.audio_json() {
                message.insert("audio".into(), audio);
            }
            let mut out = Map::new();
            out.insert("finish_reason".into(), json!(finish));
            if options.choices > 1 {
                out.insert("index".into(), json!(choice.index));
            }
            out.insert("message".into(), Value::Object(message));
            if let Some(logprobs) = &choice.logprobs {
                out.insert("logprobs".into(), json!({"content": logprobs}));
            }
            Value::Object(out)
        })
        .collect();
    json!({"choices": choices})
}

fn content_json(options: Options, content: &str) -> Value {
    if options.multimodal {
        json!([{"text": content}])
    } else {
        json!(content)
    }
}

/// The `output` of a stream frame, keys in DashScope's order.
fn frame_output(
    options: Options,
    index: u32,
    content: &str,
    reasoning: Option<&str>,
    calls: &[ToolCallDelta],
    finish: &str,
) -> Value {
    if options.text_format {
        return json!({"finish_reason": finish, "text": content});
    }
    let mut message = Map::new();
    message.insert("content".into(), content_json(options, content));
    if let Some(reasoning) = reasoning {
        message.insert("reasoning_content".into(), json!(reasoning));
    }
    message.insert("role".into(), json!("assistant"));
    if !calls.is_empty() {
        message.insert("tool_calls".into(), frame_calls_json(calls));
    }
    let mut choice = json!({"message": message, "finish_reason": finish});
    if options.choices > 1 {
        choice["index"] = json!(index);
    }
    json!({"choices": [choice]})
}

/// A whole reply in the native shape.
pub fn encode_reply(reply: &Reply, options: Options, request_id: &str) -> Vec<u8> {
    let mut output = whole_output(options, &reply.choices);
    if let Some(info) = &reply.search_info {
        output["search_info"] = info.clone();
    }
    let body = json!({
        "output": output,
        "usage": reply.usage.as_ref().map(usage_json).unwrap_or(json!({})),
        // The gateway's id, also when the upstream named its own: one id per request.
        "request_id": request_id,
    });
    serde_json::to_vec(&body).unwrap_or_default()
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
        let output = if self.options.incremental {
            let content = delta.content.as_deref().unwrap_or("");
            frame_output(
                self.options,
                delta.index,
                content,
                delta.reasoning.as_deref(),
                &delta.tool_calls,
                finish,
            )
        } else {
            let choice = self
                .sofar
                .choices
                .iter()
                .find(|c| c.index == delta.index)
                .cloned()
                .unwrap_or_default();
            let calls: Vec<ToolCallDelta> = choice
                .tool_calls
                .iter()
                .enumerate()
                .map(|(i, t)| ToolCallDelta {
                    index: i as u32,
                    id: Some(t.id.clone()),
                    name: Some(t.name.clone()),
                    arguments: Some(t.arguments.clone()),
                })
                .collect();
            frame_output(
                self.options,
                delta.index,
                &choice.content,
                choice.reasoning.as_deref(),
                &calls,
                finish,
            )
        };
        let mut output = output;
        with_step_extras(&mut output, delta);
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
        let mut data = Map::new();
        data.insert("output".into(), output);
        data.insert("usage".into(), usage_json(usage.unwrap_or(&running)));
        data.insert("request_id".into(), json!(self.request_id));
        result_frame(self.frames, &Value::Object(data))
    }

    fn flush_held(&mut self) -> Option<Bytes> {
        let held = self.held.take()?;
        let usage = self.usage.clone();
        Some(self.frame(&held, usage.as_ref()))
    }
}

/// What a step carries beside text and tools: its `logprobs` on the choice, Omni `audio` in
/// the message, `search_info` on the output.
fn with_step_extras(output: &mut Value, delta: &Delta) {
    if let Some(info) = &delta.search_info {
        output["search_info"] = info.clone();
    }
    let Some(choice) = output.get_mut("choices").and_then(|c| c.get_mut(0)) else {
        return;
    };
    if let Some(audio) = &delta.audio {
        choice["message"]["audio"] = audio.clone();
    }
    if let Some(logprobs) = &delta.logprobs {
        choice["logprobs"] = logprobs.clone();
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
                let body =
                    json!({"request_id": self.request_id, "code": code, "message": error.message});
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
