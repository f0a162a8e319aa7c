//! The native reply as DashScope writes it: the whole `output` and `usage`, and every SSE frame
//! of a stream (usage so far on each, `finish_reason` `"null"` until the last).

use std::collections::VecDeque;

use axum::body::Bytes;
use serde_json::{Map, Value, json};

use super::super::reply::{Reply, pieces};
use super::Format;

pub(super) fn usage_json(reply: &Reply, output_tokens: u64, cached: u64) -> Value {
    let mut usage = json!({
        "total_tokens": reply.prompt_tokens + output_tokens,
        "output_tokens": output_tokens,
        "input_tokens": reply.prompt_tokens,
        "prompt_tokens_details": {"cached_tokens": cached},
    });
    if let Some(reasoning) = reply.reasoning_tokens() {
        usage["output_tokens_details"] = json!({"reasoning_tokens": reasoning});
    }
    usage
}

fn content_json(format: &Format, text: &str) -> Value {
    if format.multimodal {
        json!([{"text": text}])
    } else {
        json!(text)
    }
}

/// The `output` of a whole reply, keys in DashScope's order.
pub(super) fn whole_output(reply: &Reply, format: &Format) -> Value {
    if format.text {
        return json!({"finish_reason": reply.finish_reason, "text": reply.content});
    }
    let mut message = json!({"role": "assistant", "content": content_json(format, &reply.content)});
    if let Some(reasoning) = &reply.reasoning {
        message["reasoning_content"] = json!(reasoning);
    }
    if let Some(call) = &reply.tool_call {
        message["tool_calls"] = json!([{"function": {"name": call.name, "arguments": call.arguments}, "index": 0, "id": call.id, "type": "function"}]);
    }
    if format.audio {
        let mut audio = super::super::extras::audio_data(&reply.content, "sim", format.created);
        audio["transcript"] = json!(reply.content);
        message["audio"] = audio;
    }
    let choices: Vec<Value> = (0..format.n)
        .map(|index| {
            let mut choice = Map::new();
            choice.insert("finish_reason".into(), json!(reply.finish_reason));
            if format.n > 1 {
                choice.insert("index".into(), json!(index));
            }
            choice.insert("message".into(), message.clone());
            if let Some(top) = format.logprobs {
                let pieces = pieces(&reply.content, format.chunks);
                choice.insert(
                    "logprobs".into(),
                    super::super::extras::logprobs_of(&pieces, top),
                );
            }
            Value::Object(choice)
        })
        .collect();
    let mut output = json!({"choices": choices});
    if let Some(info) = &format.search_info {
        output["search_info"] = info.clone();
    }
    output
}

/// Omni output's usage: audio tokens beside the text ones, counted in the output.
pub(super) fn with_audio_usage(usage: &mut Value, reply: &Reply, text_tokens: u64) {
    let audio = super::super::extras::audio_tokens_of(&reply.content);
    let output = text_tokens + audio;
    usage["output_tokens"] = json!(output);
    usage["total_tokens"] = json!(reply.prompt_tokens + output);
    usage["output_tokens_details"] = json!({"audio_tokens": audio, "text_tokens": text_tokens});
}

/// One step of the stream: what it adds to the reply.
#[derive(Default)]
struct Step {
    content: String,
    reasoning: String,
    /// `(id, name, arguments fragment)`; id and name only on the first.
    tool: Option<(String, Option<String>, String)>,
    finish: bool,
}

/// Every frame of the stream, in order.
pub(super) fn frames(
    reply: &Reply,
    format: &Format,
    chunks: usize,
    cached: u64,
    request_id: &str,
) -> VecDeque<Bytes> {
    let mut steps: Vec<Step> = Vec::new();
    if let Some(reasoning) = &reply.reasoning {
        steps.extend(pieces(reasoning, chunks).into_iter().map(|r| Step {
            reasoning: r,
            ..Step::default()
        }));
    }
    steps.extend(pieces(&reply.content, chunks).into_iter().map(|c| Step {
        content: c,
        ..Step::default()
    }));
    if let Some(call) = &reply.tool_call {
        for (k, fragment) in pieces(&call.arguments, chunks.max(2))
            .into_iter()
            .enumerate()
        {
            let (id, name) = if k == 0 {
                (call.id.clone(), Some(call.name.clone()))
            } else {
                (String::new(), None)
            };
            steps.push(Step {
                tool: Some((id, name, fragment)),
                ..Step::default()
            });
        }
    }
    steps.push(Step {
        finish: true,
        ..Step::default()
    });

    let mut frames = VecDeque::new();
    for index in 0..format.n {
        let (mut content, mut reasoning, mut arguments) =
            (String::new(), String::new(), String::new());
        for step in &steps {
            content.push_str(&step.content);
            reasoning.push_str(&step.reasoning);
            if let Some((_, _, fragment)) = &step.tool {
                arguments.push_str(fragment);
            }
            let (shown, thought) = if format.incremental {
                (&step.content, &step.reasoning)
            } else {
                (&content, &reasoning)
            };
            let finish = if step.finish {
                reply.finish_reason
            } else {
                "null"
            };
            let output = if format.text {
                json!({"finish_reason": finish, "text": shown})
            } else {
                let mut message = Map::new();
                message.insert("content".into(), content_json(format, shown));
                if reply.reasoning.is_some() {
                    message.insert("reasoning_content".into(), json!(thought));
                }
                message.insert("role".into(), json!("assistant"));
                if let Some(call) = &reply.tool_call {
                    let call_json = match (&step.tool, format.incremental) {
                        (Some((id, name, fragment)), true) => {
                            let mut function = Map::new();
                            if let Some(name) = name {
                                function.insert("name".into(), json!(name));
                            }
                            function.insert("arguments".into(), json!(fragment));
                            Some(
                                json!({"index": 0, "id": id, "type": "function", "function": function}),
                            )
                        }
                        (_, false) if !arguments.is_empty() => Some(
                            json!({"index": 0, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": arguments}}),
                        ),
                        _ => None,
                    };
                    if let Some(call_json) = call_json {
                        message.insert("tool_calls".into(), json!([call_json]));
                    }
                }
                if format.audio && !step.content.is_empty() {
                    // Qwen-Omni: the text is also spoken, as base64 audio in the message.
                    let mut audio =
                        super::super::extras::audio_data(&step.content, "sim", format.created);
                    audio["transcript"] = json!(step.content);
                    message.insert("audio".into(), audio);
                }
                let mut choice = json!({"message": message, "finish_reason": finish});
                if format.n > 1 {
                    choice["index"] = json!(index);
                }
                if let Some(top) = format.logprobs.filter(|_| !step.content.is_empty()) {
                    choice["logprobs"] =
                        super::super::extras::logprobs_of(std::slice::from_ref(&step.content), top);
                }
                let mut output = json!({"choices": [choice]});
                if let (Some(info), true) = (&format.search_info, frames.is_empty()) {
                    output["search_info"] = info.clone();
                }
                output
            };
            // Usage so far: DashScope reports it on every frame.
            let so_far = if step.finish {
                reply.completion_tokens
            } else {
                ((content.chars().count() + reasoning.chars().count() + arguments.chars().count())
                    as u64)
                    .div_ceil(3)
            };
            let mut usage = usage_json(reply, so_far, cached);
            if format.audio {
                with_audio_usage(&mut usage, reply, so_far);
            }
            let data = json!({"output": output, "usage": usage, "request_id": request_id});
            let id = frames.len() + 1;
            frames.push_back(Bytes::from(format!(
                "id:{id}\nevent:result\n:HTTP_STATUS/200\ndata:{data}\n\n"
            )));
        }
    }
    frames
}
