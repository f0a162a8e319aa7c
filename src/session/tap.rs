//! The reply on its way to the client, read as it passes to learn the assistant's answer; the
//! turn is stored when the reply completed. A stream's closing event (`[DONE]`, or the native
//! frame with a `finish_reason`) is held until the turn is stored, so a client that sends its
//! next turn as soon as it has read the reply finds the last one stored and the session free.

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde_json::{Value, json};

use super::Turn;
use crate::chat::{Content, Message, Role};
use crate::event::{ChatEvent, Reply};
use crate::sse::{self, EventSplitter};

/// The shape of the reply the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    OpenAi,
    /// `cumulative`: each frame holds the whole text so far (`incremental_output` off).
    Native {
        cumulative: bool,
    },
}

/// Reads a reply's events and folds them into the answer.
struct Reader {
    shape: Shape,
    splitter: EventSplitter,
    native: crate::provider::dashscope::Decoder,
    reply: Reply,
    done: bool,
    failed: bool,
}

impl Reader {
    /// Feeds a chunk of the stream; true when it completed the reply.
    fn feed(&mut self, chunk: &[u8]) -> bool {
        self.splitter.push(chunk);
        while let Some(event) = self.splitter.next_event() {
            self.event(&event);
        }
        self.done && !self.failed
    }

    fn event(&mut self, event: &[u8]) {
        if self.done || self.failed {
            return;
        }
        if sse::is_error(event) || event.windows(11).any(|w| w == b"event:error") {
            self.failed = true;
            return;
        }
        let Some(data) = sse::data_of(event) else {
            return;
        };
        let events = match self.shape {
            Shape::OpenAi if sse::is_done(event) => {
                self.done = true;
                return;
            }
            Shape::OpenAi => crate::provider::openai::decode_chunk(data).map(|(_, e)| e),
            Shape::Native { .. } => self.native.decode(data).map(|(_, e)| e),
        };
        let Ok(events) = events else { return };
        for event in events {
            if let ChatEvent::Delta(delta) = &event {
                if matches!(self.shape, Shape::Native { cumulative: true })
                    && delta.content.is_some()
                    && let Some(choice) = self.reply.choices.iter_mut().find(|c| c.index == 0)
                {
                    choice.content.clear();
                }
                if self.shape != Shape::OpenAi
                    && delta.index == 0
                    && delta.finish_reason.as_deref().is_some_and(|r| r != "null")
                {
                    self.done = true;
                }
            }
            if matches!(event, ChatEvent::Error(_)) {
                self.failed = true;
            }
            self.reply.apply(&event);
        }
    }
}

/// The assistant message of a reply's first choice: its text and tool calls.
fn answer_of(reply: &Reply) -> Option<Message> {
    let choice = reply.choices.iter().find(|c| c.index == 0)?;
    let tool_calls = (!choice.tool_calls.is_empty()).then(|| {
        Value::Array(
            choice
                .tool_calls
                .iter()
                .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
                .collect(),
        )
    });
    Some(Message {
        role: Role::Assistant,
        content: Some(Content::Text(choice.content.clone())),
        tool_calls,
        extra: Default::default(),
    })
}

impl Turn {
    /// The response with the turn stored when its reply completes. A refusal stores nothing.
    pub async fn finish(self, response: Response, shape: Shape) -> Response {
        if response.status() != StatusCode::OK {
            return response;
        }
        let is_stream = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let (parts, body) = response.into_parts();
        if !is_stream {
            // A whole reply is in memory already (the dialects read it whole, within the
            // upstream's bounds): no other limit here.
            let bytes = match axum::body::to_bytes(body, usize::MAX).await {
                Ok(bytes) => bytes,
                Err(_) => {
                    let mut failed = Response::new(Body::empty());
                    *failed.status_mut() = StatusCode::BAD_GATEWAY;
                    return failed;
                }
            };
            let reply = match shape {
                Shape::OpenAi => crate::provider::openai::decode_completion(&bytes),
                Shape::Native { .. } => crate::provider::dashscope::decode_reply(&bytes),
            };
            if let Some(answer) = reply.ok().as_ref().and_then(answer_of) {
                self.commit(answer).await;
            }
            return Response::from_parts(parts, Body::from(bytes));
        }
        let reader = Reader {
            shape,
            splitter: EventSplitter::default(),
            native: Default::default(),
            reply: Reply::default(),
            done: false,
            failed: false,
        };
        let inner: BoxStream<'static, Result<Bytes, axum::Error>> = body.into_data_stream().boxed();
        let events = futures_util::stream::unfold(
            (inner, reader, Some(self)),
            |(mut inner, mut reader, mut turn)| async move {
                let chunk = match inner.next().await {
                    Some(Ok(chunk)) => chunk,
                    Some(Err(e)) => return Some((Err(e), (inner, reader, None))),
                    None => return None,
                };
                if reader.feed(&chunk)
                    && let Some(turn) = turn.take()
                {
                    if let Some(answer) = answer_of(&reader.reply) {
                        turn.commit(answer).await;
                    }
                }
                Some((Ok(chunk), (inner, reader, turn)))
            },
        );
        Response::from_parts(parts, Body::from_stream(events))
    }
}
