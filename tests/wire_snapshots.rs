//! Snapshots (insta) of the wire formats the gateway writes, in both dialects: upstream
//! requests, whole replies and streams, each made from a DashScope example in
//! `tests/fixtures/wire/` (OpenAI-compatible examples as documented, native ones in DashScope's
//! documented shape). A change of key order, a field gained or lost, shows up as a snapshot
//! diff. Review with `cargo insta review`, or `INSTA_UPDATE=always` and read the diff; CI never
//! writes snapshots, it fails on a difference.

use std::sync::Arc;

use dashgate::dialect::StepEncoder;
use dashgate::dialect::native::{self, FrameEncoder, Options};
use dashgate::dialect::openai::{ChunkEncoder, encode_completion};
use dashgate::dialect::sse::{self, EventSplitter};
use dashgate::event::{ChatEvent, Meta, Reply};
use dashgate::provider::{Api, dashscope, openai};
use dashgate::relay::Step;

/// The gateway's id for the request, as each dialect's reply carries it.
const REQUEST_ID: &str = "req-0001";
/// Stands in for "now" where the gateway stamps a translated reply.
const NOW: i64 = 1_700_000_000;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/wire/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// JSON laid out one key a line, in the order written (serde_json keeps it), for readable diffs.
fn pretty(json: &[u8]) -> String {
    let value: serde_json::Value =
        serde_json::from_slice(json).unwrap_or_else(|e| panic!("not JSON ({e}): {json:?}"));
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

/// A stream as the client reads it, with "now" pinned: the `created` the gateway stamps on a
/// translated stream is the clock's.
fn text_of(events: &[bytes::Bytes]) -> String {
    let text: String = events.iter().map(|e| String::from_utf8_lossy(e)).collect();
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find("\"created\":") {
        let (head, tail) = rest.split_at(at + "\"created\":".len());
        out.push_str(head);
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        match tail[..digits].parse::<i64>() {
            Ok(t) if (t - now()).abs() < 86_400 => out.push_str(&NOW.to_string()),
            _ => out.push_str(&tail[..digits]),
        }
        rest = &tail[digits..];
    }
    out.push_str(rest);
    out
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The `data` of each event of an upstream stream, as the relay cuts them.
fn data_events(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut splitter = EventSplitter::default();
    splitter.push(stream);
    let mut out = Vec::new();
    while let Some(event) = splitter.next_event().or_else(|| splitter.finish()) {
        if let Some(data) = sse::data_of(&event) {
            out.push(data.to_vec());
        }
    }
    out
}

/// Steps of a stream decoded as the relay does: the first chunk's meta, then every event.
fn steps(chunks: &[Vec<u8>], mut decode: impl FnMut(&[u8]) -> (Meta, Vec<ChatEvent>)) -> Vec<Step> {
    let mut out = Vec::new();
    for data in chunks.iter().filter(|d| d.trim_ascii() != b"[DONE]") {
        let (meta, events) = decode(data);
        if out.is_empty() {
            out.push(Step::Meta(meta));
        }
        out.extend(events.into_iter().map(Step::Event));
    }
    out
}

fn encode(steps: Vec<Step>, mut encoder: impl StepEncoder) -> String {
    let mut events: Vec<_> = steps.into_iter().filter_map(|s| encoder.step(s)).collect();
    events.extend(encoder.finish());
    text_of(&events)
}

fn openai_chunks(steps: Vec<Step>) -> String {
    encode(
        steps,
        ChunkEncoder::new(Arc::from(REQUEST_ID), "qwen-plus".into(), true),
    )
}

fn native_frames(steps: Vec<Step>) -> String {
    encode(
        steps,
        FrameEncoder::new(Arc::from(REQUEST_ID), message_options(true)),
    )
}

fn message_options(incremental: bool) -> Options {
    Options {
        text_format: false,
        incremental,
        multimodal: false,
        choices: 1,
    }
}

/// A whole reply as a dialect sends it, with what the gateway fills in for translated ones.
fn in_both_dialects(mut reply: Reply) -> String {
    reply.meta.id = format!("chatcmpl-{REQUEST_ID}");
    if reply.meta.created == 0 {
        reply.meta.created = NOW;
    }
    if reply.meta.model.is_empty() {
        reply.meta.model = "qwen-plus".into();
    }
    format!(
        "# OpenAI-compatible\n{}\n# native\n{}\n",
        pretty(&encode_completion(&reply)),
        pretty(&native::encode_reply(
            &reply,
            message_options(false),
            REQUEST_ID
        )),
    )
}

fn to_each_upstream(chat: &dashgate::chat::Chat) -> String {
    let (api, native_body) = dashscope::encode_request(chat);
    format!(
        "# to a DashScope upstream ({api:?})\n{}\n# to an OpenAI-compatible upstream\n{}\n",
        pretty(&native_body),
        pretty(&openai::encode_request(chat)),
    )
}

#[test]
fn openai_request_to_each_upstream() {
    let chat =
        dashgate::chat::decode(&fixture("openai_request.json")).unwrap_or_else(|e| panic!("{e}"));
    insta::assert_snapshot!(to_each_upstream(&chat));
}

#[test]
fn native_request_to_each_upstream() {
    let (chat, _) = native::decode(&fixture("native_request.json"), true, Api::NativeText)
        .unwrap_or_else(|e| panic!("{e}"));
    insta::assert_snapshot!(to_each_upstream(&chat));
}

#[test]
fn openai_completion_in_both_dialects() {
    let reply = openai::decode_completion(&fixture("openai_completion.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    insta::assert_snapshot!(in_both_dialects(reply));
}

#[test]
fn native_reply_in_both_dialects() {
    let reply =
        dashscope::decode_reply(&fixture("native_reply.json")).unwrap_or_else(|e| panic!("{e}"));
    insta::assert_snapshot!(in_both_dialects(reply));
}

#[test]
fn openai_stream_in_both_dialects() {
    let chunks = data_events(&fixture("openai_stream.sse"));
    let decode = |d: &[u8]| openai::decode_chunk(d).unwrap_or_else(|e| panic!("{e}"));
    insta::assert_snapshot!(
        "openai_stream_as_openai",
        openai_chunks(steps(&chunks, decode))
    );
    insta::assert_snapshot!(
        "openai_stream_as_native",
        native_frames(steps(&chunks, decode))
    );
}

#[test]
fn native_stream_in_both_dialects() {
    let chunks = data_events(&fixture("native_stream.sse"));
    let decoded = |chunks: &[Vec<u8>]| {
        let mut decoder = dashscope::Decoder::default();
        steps(chunks, |d| {
            decoder.decode(d).unwrap_or_else(|e| panic!("{e}"))
        })
    };
    insta::assert_snapshot!("native_stream_as_openai", openai_chunks(decoded(&chunks)));
    insta::assert_snapshot!("native_stream_as_native", native_frames(decoded(&chunks)));
}

#[test]
fn openai_media_request_to_each_upstream() {
    let chat = dashgate::chat::decode(&fixture("openai_request_media.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    insta::assert_snapshot!(to_each_upstream(&chat));
}

#[test]
fn native_media_request_to_each_upstream() {
    let (chat, _) = native::decode(
        &fixture("native_request_media.json"),
        true,
        Api::NativeMultimodal,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    insta::assert_snapshot!(to_each_upstream(&chat));
}

/// The native reply in the shapes a native client can ask for: text format, the multimodal
/// endpoint's item lists, several choices (each with its `index`).
#[test]
fn native_reply_in_each_native_shape() {
    let reply =
        dashscope::decode_reply(&fixture("native_reply.json")).unwrap_or_else(|e| panic!("{e}"));
    let mut out = String::new();
    for (name, text_format, multimodal, choices) in [
        ("text format", true, false, 1),
        ("multimodal", false, true, 1),
        ("two choices", false, false, 2),
    ] {
        let options = Options {
            text_format,
            incremental: false,
            multimodal,
            choices,
        };
        let body = native::encode_reply(&reply, options, REQUEST_ID);
        out.push_str(&format!("# {name}\n{}\n", pretty(&body)));
    }
    insta::assert_snapshot!(out);
}

/// Cumulative (`incremental_output: false`), text-format and multimodal frames of both
/// upstream streams.
#[test]
fn streams_in_each_native_shape() {
    let openai = data_events(&fixture("openai_stream.sse"));
    let native_chunks = data_events(&fixture("native_stream.sse"));
    let mut out = String::new();
    for (name, text_format, incremental, multimodal) in [
        ("cumulative", false, false, false),
        ("text format", true, true, false),
        ("multimodal", false, true, true),
    ] {
        let options = Options {
            text_format,
            incremental,
            multimodal,
            choices: 1,
        };
        let decode = |d: &[u8]| openai::decode_chunk(d).unwrap_or_else(|e| panic!("{e}"));
        let from_openai = encode(
            steps(&openai, decode),
            FrameEncoder::new(Arc::from(REQUEST_ID), options),
        );
        let mut decoder = dashscope::Decoder::default();
        let from_native = encode(
            steps(&native_chunks, |d| {
                decoder.decode(d).unwrap_or_else(|e| panic!("{e}"))
            }),
            FrameEncoder::new(Arc::from(REQUEST_ID), options),
        );
        out.push_str(&format!(
            "# {name}, from an OpenAI-compatible upstream\n{from_openai}# {name}, from a native upstream\n{from_native}"
        ));
    }
    insta::assert_snapshot!(out);
}

/// Errors in both dialects: the gateway's own (as a body and mid-stream) and an upstream's
/// mid-stream error event.
#[test]
fn errors_in_both_dialects() {
    let own = dashgate::error::GatewayError::param("temperature", "`temperature` must be below 2");
    let upstream = ChatEvent::Error(dashgate::event::StreamError {
        status: 400,
        code: "data_inspection_failed".into(),
        kind: Some("data_inspection_failed".into()),
        message: "Output data may contain inappropriate content.".into(),
    });
    let native_upstream = ChatEvent::Error(dashgate::event::StreamError {
        status: 400,
        code: "DataInspectionFailed".into(),
        kind: None,
        message: "Output data may contain inappropriate content.".into(),
    });
    let stream = |encoder: &mut dyn FnMut(Step) -> Option<bytes::Bytes>| {
        let events: Vec<_> = [
            Step::Event(upstream.clone()),
            Step::Event(native_upstream.clone()),
            Step::Fail(dashgate::error::GatewayError::param("stop", "bad stop")),
        ]
        .into_iter()
        .filter_map(encoder)
        .collect();
        text_of(&events)
    };
    let mut chunks = ChunkEncoder::new(Arc::from(REQUEST_ID), "qwen-plus".into(), true);
    let mut frames = FrameEncoder::new(Arc::from(REQUEST_ID), message_options(true));
    insta::assert_snapshot!(format!(
        "# OpenAI-compatible body\n{}\n# native body\n{}\n# OpenAI-compatible stream\n{}# native stream\n{}",
        pretty(&own.openai_body(REQUEST_ID)),
        pretty(&own.native_body(REQUEST_ID)),
        stream(&mut |s| chunks.step(s)),
        stream(&mut |s| frames.step(s)),
    ));
}
