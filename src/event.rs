//! `ChatEvent`: the reply in the middle. Providers decode upstream replies into these events;
//! dialects encode them for the client. A non-stream reply is the same events folded (`Reply`).
//!
//! An event is one step of one choice, close to an OpenAI chunk's choice, so that a chunk
//! decodes to one event and encodes back to the same chunk.

/// Facts about a reply that every chunk repeats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// `chatcmpl-...` in the OpenAI dialect.
    pub id: String,
    pub created: i64,
    pub model: String,
    /// The upstream's own request id, when it sent one (native replies carry it).
    pub request_id: Option<String>,
}

// `Delta` is nearly every event: boxing it to shrink the rare ones would allocate per event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEvent {
    Delta(Delta),
    Usage(Usage),
    /// The upstream stopped the reply with an error (e.g. `data_inspection_failed`).
    Error(StreamError),
}

/// One step of one choice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    pub index: u32,
    /// The step announces the assistant role (the first chunk of a choice).
    pub role: bool,
    pub content: Option<String>,
    pub reasoning: Option<String>,
    pub tool_calls: Vec<ToolCallDelta>,
    pub finish_reason: Option<String>,
    /// Usage so far, where the upstream reports it on every step (DashScope's native stream);
    /// the final figures always come as a `ChatEvent::Usage`.
    pub usage: Option<Usage>,
    /// `logprobs` of this step as both dialects write it (`{"content": [{token, logprob,
    /// bytes, top_logprobs}]}`), carried as it came.
    pub logprobs: Option<serde_json::Value>,
    /// Omni audio output of this step: `{data (base64), id, expires_at}` or `{transcript}`.
    pub audio: Option<serde_json::Value>,
    /// DashScope's `search_info` (`enable_search` with `search_options.enable_source`).
    pub search_info: Option<serde_json::Value>,
}

/// A fragment of a tool call: the first carries id and name, later ones more arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolCallDelta {
    pub index: u32,
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: Option<String>,
}

/// Token counts as the upstream reported them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: Option<u64>,
    pub reasoning_tokens: Option<u64>,
    pub image_tokens: Option<u64>,
    pub audio_tokens: Option<u64>,
    /// Audio the model spoke (Omni output): `completion_tokens_details.audio_tokens`.
    pub output_audio_tokens: Option<u64>,
}

/// An error the upstream sent instead of the rest of the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    pub status: u16,
    pub code: String,
    /// The OpenAI-dialect `type`, when the upstream gave one.
    pub kind: Option<String>,
    pub message: String,
}

/// A whole reply: the events of a stream, folded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reply {
    pub meta: Meta,
    pub choices: Vec<Choice>,
    pub usage: Option<Usage>,
    pub search_info: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Choice {
    pub index: u32,
    pub content: String,
    pub reasoning: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: Option<String>,
    /// The steps' `logprobs.content` entries, in order.
    pub logprobs: Option<Vec<serde_json::Value>>,
    /// Omni audio output: the decoded bytes of every `audio.data`, in order.
    pub audio_data: Vec<u8>,
    /// The audio's other fields (`id`, `expires_at`, `transcript` joined).
    pub audio: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Choice {
    /// The audio as one `audio` object, its data base64 again; `None` without audio.
    pub fn audio_json(&self) -> Option<serde_json::Value> {
        use base64::Engine as _;
        let mut audio = self.audio.clone()?;
        if !self.audio_data.is_empty() {
            let data = base64::engine::general_purpose::STANDARD.encode(&self.audio_data);
            audio.insert("data".into(), serde_json::Value::String(data));
        }
        Some(serde_json::Value::Object(audio))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

impl Reply {
    pub fn new(meta: Meta) -> Self {
        Self {
            meta,
            ..Self::default()
        }
    }

    /// Adds one event; an error event is not part of a reply and is ignored here.
    pub fn apply(&mut self, event: &ChatEvent) {
        match event {
            ChatEvent::Delta(delta) => self.apply_delta(delta),
            ChatEvent::Usage(usage) => self.usage = Some(usage.clone()),
            ChatEvent::Error(_) => {}
        }
    }

    fn apply_delta(&mut self, delta: &Delta) {
        if delta.search_info.is_some() {
            self.search_info = delta.search_info.clone();
        }
        let choice = self.choice_mut(delta.index);
        if let Some(entries) = delta
            .logprobs
            .as_ref()
            .and_then(|l| l.get("content"))
            .and_then(serde_json::Value::as_array)
        {
            choice
                .logprobs
                .get_or_insert_with(Vec::new)
                .extend(entries.iter().cloned());
        }
        if let Some(serde_json::Value::Object(audio)) = &delta.audio {
            use base64::Engine as _;
            let out = choice.audio.get_or_insert_with(Default::default);
            for (key, value) in audio {
                match (key.as_str(), value) {
                    ("data", serde_json::Value::String(data)) => {
                        let bytes = base64::engine::general_purpose::STANDARD.decode(data);
                        choice.audio_data.extend(bytes.unwrap_or_default());
                    }
                    ("transcript", serde_json::Value::String(t)) => {
                        let joined = out
                            .entry("transcript")
                            .or_insert_with(|| serde_json::Value::String(String::new()));
                        if let serde_json::Value::String(joined) = joined {
                            joined.push_str(t);
                        }
                    }
                    (_, serde_json::Value::Null) => {}
                    _ => {
                        out.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        if let Some(content) = &delta.content {
            choice.content.push_str(content);
        }
        if let Some(reasoning) = &delta.reasoning {
            choice
                .reasoning
                .get_or_insert_with(String::new)
                .push_str(reasoning);
        }
        for call in &delta.tool_calls {
            let at = call.index as usize;
            if choice.tool_calls.len() <= at {
                choice.tool_calls.resize_with(at + 1, ToolCall::default);
            }
            let slot = &mut choice.tool_calls[at];
            if let Some(id) = call.id.as_deref().filter(|id| !id.is_empty()) {
                slot.id = id.to_string();
            }
            if let Some(name) = call.name.as_deref().filter(|n| !n.is_empty()) {
                slot.name = name.to_string();
            }
            if let Some(arguments) = &call.arguments {
                slot.arguments.push_str(arguments);
            }
        }
        if delta.finish_reason.is_some() {
            choice.finish_reason = delta.finish_reason.clone();
        }
    }

    fn choice_mut(&mut self, index: u32) -> &mut Choice {
        let at = match self.choices.iter().position(|c| c.index == index) {
            Some(at) => at,
            None => {
                self.choices.push(Choice {
                    index,
                    ..Choice::default()
                });
                self.choices.len() - 1
            }
        };
        &mut self.choices[at]
    }

    /// The events that rebuild this reply: per choice, one step with everything, then usage.
    pub fn events(&self) -> Vec<ChatEvent> {
        let mut events: Vec<ChatEvent> = self
            .choices
            .iter()
            .map(|c| {
                ChatEvent::Delta(Delta {
                    index: c.index,
                    role: true,
                    content: Some(c.content.clone()),
                    reasoning: c.reasoning.clone(),
                    tool_calls: c
                        .tool_calls
                        .iter()
                        .enumerate()
                        .map(|(i, t)| ToolCallDelta {
                            index: i as u32,
                            id: Some(t.id.clone()),
                            name: Some(t.name.clone()),
                            arguments: Some(t.arguments.clone()),
                        })
                        .collect(),
                    finish_reason: c.finish_reason.clone(),
                    usage: None,
                    logprobs: c
                        .logprobs
                        .as_ref()
                        .map(|entries| serde_json::json!({"content": entries})),
                    audio: c.audio_json(),
                    search_info: (c.index == 0).then(|| self.search_info.clone()).flatten(),
                })
            })
            .collect();
        events.extend(self.usage.clone().map(ChatEvent::Usage));
        events
    }
}

/// One step of a translated stream.
// Events are nearly every step: boxing them would allocate per event.
#[allow(clippy::large_enum_variant)]
pub enum Step {
    /// The reply's id, model and time, once, before its first event.
    Meta(Meta),
    Event(ChatEvent),
    /// The gateway gave up on the upstream mid-stream (timeout, broken connection).
    Fail(crate::error::GatewayError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(f: impl FnOnce(&mut Delta)) -> ChatEvent {
        let mut d = Delta::default();
        f(&mut d);
        ChatEvent::Delta(d)
    }

    #[test]
    fn streamed_steps_fold_into_a_reply() {
        let mut reply = Reply::new(Meta::default());
        let events = [
            delta(|d| {
                d.role = true;
                d.reasoning = Some("think".into());
            }),
            delta(|d| d.reasoning = Some("ing".into())),
            delta(|d| d.content = Some("hel".into())),
            delta(|d| d.content = Some("lo".into())),
            delta(|d| {
                d.tool_calls = vec![ToolCallDelta {
                    index: 0,
                    id: Some("call_1".into()),
                    name: Some("get_weather".into()),
                    arguments: Some("{\"loc".into()),
                }]
            }),
            delta(|d| {
                d.tool_calls = vec![ToolCallDelta {
                    index: 0,
                    id: Some(String::new()),
                    arguments: Some("\":1}".into()),
                    ..ToolCallDelta::default()
                }]
            }),
            delta(|d| d.finish_reason = Some("tool_calls".into())),
            ChatEvent::Usage(Usage {
                total_tokens: 3,
                ..Usage::default()
            }),
        ];
        for event in &events {
            reply.apply(event);
        }
        let choice = &reply.choices[0];
        assert_eq!(choice.content, "hello");
        assert_eq!(choice.reasoning.as_deref(), Some("thinking"));
        assert_eq!(
            choice.tool_calls,
            vec![ToolCall {
                id: "call_1".into(),
                name: "get_weather".into(),
                arguments: "{\"loc\":1}".into()
            }]
        );
        assert_eq!(choice.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(reply.usage.as_ref().map(|u| u.total_tokens), Some(3));

        let mut again = Reply::new(Meta::default());
        for event in reply.events() {
            again.apply(&event);
        }
        assert_eq!(again, reply);
    }
}
