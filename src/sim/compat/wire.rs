//! The compatible-mode reply as DashScope writes it: the whole completion, and the stream's
//! chunks (role first, deltas, finish, the usage chunk with empty `choices` when asked, `[DONE]`).

use std::collections::VecDeque;

use axum::body::Bytes;
use serde_json::{Value, json};

use super::super::reply::{Reply, pieces};

/// The fields every reply object repeats.
pub(super) struct Wire {
    pub(super) id: String,
    pub(super) created: i64,
    pub(super) model: String,
    pub(super) n: u64,
    pub(super) cached_tokens: u64,
    /// `Some(top_logprobs)` when logprobs were asked for.
    pub(super) logprobs: Option<usize>,
    /// Omni output: the text comes as the audio's transcript, with base64 audio chunks.
    pub(super) audio: bool,
    pub(super) chunks: usize,
    pub(super) full_shape: bool,
}

impl Wire {
    fn usage(&self, reply: &Reply) -> Value {
        let completion = reply.completion_tokens * self.n;
        let mut usage = json!({
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": reply.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        });
        if let Some(reasoning) = reply.reasoning_tokens() {
            usage["completion_tokens_details"] = json!({"reasoning_tokens": reasoning * self.n});
        }
        if self.audio {
            let audio = super::super::extras::audio_tokens_of(&reply.content) * self.n;
            let text = reply.completion_tokens * self.n;
            usage["completion_tokens"] = json!(text + audio);
            usage["total_tokens"] = json!(reply.prompt_tokens + text + audio);
            usage["completion_tokens_details"] =
                json!({"audio_tokens": audio, "text_tokens": text});
        }
        usage
    }

    fn audio_id(&self) -> &str {
        self.id.trim_start_matches("chatcmpl-")
    }

    pub(super) fn completion(&self, reply: &Reply) -> Value {
        let choices: Vec<Value> = (0..self.n)
            .map(|index| {
                let message = match &reply.tool_call {
                    Some(call) => {
                        let mut message = json!({
                            "content": "",
                            "role": "assistant",
                            "tool_calls": [{
                                "function": {"arguments": call.arguments, "name": call.name},
                                "id": call.id, "index": 0, "type": "function",
                            }],
                        });
                        if let Some(reasoning) = &reply.reasoning {
                            message["reasoning_content"] = json!(reasoning);
                        }
                        message
                    }
                    None => {
                        let mut message = json!({"role": "assistant", "content": reply.content});
                        if let Some(reasoning) = &reply.reasoning {
                            message["reasoning_content"] = json!(reasoning);
                        }
                        if self.audio {
                            let mut audio =
                                super::super::extras::audio_data(&reply.content, self.audio_id(), self.created);
                            audio["transcript"] = json!(reply.content);
                            message["audio"] = audio;
                        }
                        message
                    }
                };
                let logprobs = self.logprobs.map_or(Value::Null, |top| {
                    super::super::extras::logprobs_of(&pieces(&reply.content, self.chunks), top)
                });
                json!({"message": message, "finish_reason": reply.finish_reason, "index": index, "logprobs": logprobs})
            })
            .collect();
        json!({
            "choices": choices,
            "object": "chat.completion",
            "usage": self.usage(reply),
            "created": self.created,
            "system_fingerprint": null,
            "model": self.model,
            "id": self.id,
        })
    }

    fn chunk(&self, choices: Value, usage: Value) -> Bytes {
        let chunk = json!({
            "choices": choices,
            "object": "chat.completion.chunk",
            "usage": usage,
            "created": self.created,
            "system_fingerprint": null,
            "model": self.model,
            "id": self.id,
        });
        let chunk = if self.full_shape {
            super::super::extras::full_shape(&chunk)
        } else {
            chunk
        };
        Bytes::from(format!("data: {chunk}\n\n"))
    }

    /// One chunk for one choice, keys in the order DashScope sends them.
    fn choice_chunk(&self, index: u64, delta: Value, finish_reason: Value) -> Bytes {
        let choice = json!([{"delta": delta, "finish_reason": finish_reason, "index": index, "logprobs": null}]);
        self.chunk(choice, Value::Null)
    }

    /// Every event of the stream, in order.
    pub(super) fn events(
        &self,
        reply: &Reply,
        chunks: usize,
        include_usage: bool,
    ) -> VecDeque<Bytes> {
        let mut events = VecDeque::new();
        for index in 0..self.n {
            match &reply.tool_call {
                Some(call) => {
                    if let Some(reasoning) = &reply.reasoning {
                        let role =
                            json!({"content": null, "reasoning_content": "", "role": "assistant"});
                        events.push_back(self.choice_chunk(index, role, Value::Null));
                        for piece in pieces(reasoning, chunks) {
                            let delta = json!({"content": null, "reasoning_content": piece});
                            events.push_back(self.choice_chunk(index, delta, Value::Null));
                        }
                    }
                    // As DashScope streams tool calls: the head carries id and name with the first
                    // fragment of the arguments; later deltas carry `"id":""` and more arguments.
                    let fragments = pieces(&call.arguments, chunks.max(2));
                    for (k, fragment) in fragments.iter().enumerate() {
                        let delta = if k == 0 {
                            json!({"content": null, "tool_calls": [{"index": 0, "id": call.id, "type": "function",
                                "function": {"name": call.name, "arguments": fragment}}], "role": "assistant"})
                        } else {
                            json!({"tool_calls": [{"index": 0, "id": "", "type": "function", "function": {"arguments": fragment}}]})
                        };
                        events.push_back(self.choice_chunk(index, delta, Value::Null));
                    }
                    events.push_back(self.choice_chunk(index, json!({}), json!("tool_calls")));
                }
                None => {
                    let role = match &reply.reasoning {
                        Some(_) => {
                            json!({"content": null, "reasoning_content": "", "role": "assistant"})
                        }
                        None => json!({"content": "", "role": "assistant"}),
                    };
                    events.push_back(self.choice_chunk(index, role, Value::Null));
                    if let Some(reasoning) = &reply.reasoning {
                        for piece in pieces(reasoning, chunks) {
                            let delta = json!({"content": null, "reasoning_content": piece});
                            events.push_back(self.choice_chunk(index, delta, Value::Null));
                        }
                    }
                    for piece in pieces(&reply.content, chunks) {
                        if self.audio {
                            // Qwen-Omni: the text is the audio's transcript, then its sound.
                            let transcript =
                                json!({"content": null, "audio": {"transcript": piece}});
                            events.push_back(self.choice_chunk(index, transcript, Value::Null));
                            let data = super::super::extras::audio_data(
                                &piece,
                                self.audio_id(),
                                self.created,
                            );
                            let delta = json!({"content": null, "audio": data});
                            events.push_back(self.choice_chunk(index, delta, Value::Null));
                            continue;
                        }
                        let mut chunk = json!([{"delta": {"content": piece}, "finish_reason": null, "index": index, "logprobs": null}]);
                        if let Some(top) = self.logprobs {
                            chunk[0]["logprobs"] = super::super::extras::logprobs_of(
                                std::slice::from_ref(&piece),
                                top,
                            );
                        }
                        events.push_back(self.chunk(chunk, Value::Null));
                    }
                    let finish = json!(reply.finish_reason);
                    events.push_back(self.choice_chunk(index, json!({"content": ""}), finish));
                }
            }
        }
        if include_usage {
            events.push_back(self.chunk(json!([]), self.usage(reply)));
        }
        events.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
        events
    }
}
