//! Encodes STEPS (default 10000) canonical stream steps with each dialect's encoder, plus as
//! many whole replies, and prints the bytes written and the wall time. Meant to run under
//! `valgrind --tool=callgrind` (instruction counts are repeatable on a shared machine):
//! `valgrind --tool=callgrind target/debug/examples/encode 10000`.

use std::sync::Arc;
use std::time::Instant;

use dashgate::dialect::StepEncoder;
use dashgate::dialect::native::{self, FrameEncoder, Options};
use dashgate::dialect::openai::{ChunkEncoder, encode_completion};
use dashgate::event::{ChatEvent, Delta, Meta, Reply, Usage};
use dashgate::relay::Step;

fn delta(i: usize) -> Step {
    Step::Event(ChatEvent::Delta(Delta {
        role: i == 0,
        content: Some(format!("token {i} ")),
        ..Delta::default()
    }))
}

fn usage() -> Usage {
    Usage {
        prompt_tokens: 12,
        completion_tokens: 10_000,
        total_tokens: 10_012,
        cached_tokens: Some(4),
        ..Usage::default()
    }
}

fn run(name: &str, steps: usize, mut encoder: impl StepEncoder) {
    let started = Instant::now();
    let mut bytes = 0;
    bytes += encoder
        .step(Step::Meta(Meta {
            id: "chatcmpl-1".into(),
            created: 1_700_000_000,
            model: "qwen-plus".into(),
            request_id: None,
        }))
        .map_or(0, |b| b.len());
    for i in 0..steps {
        bytes += encoder.step(delta(i)).map_or(0, |b| b.len());
    }
    bytes += encoder
        .step(Step::Event(ChatEvent::Usage(usage())))
        .map_or(0, |b| b.len());
    bytes += encoder.finish().map_or(0, |b| b.len());
    println!(
        "{name}: {steps} steps, {bytes} bytes, {:?}",
        started.elapsed()
    );
}

fn main() {
    let steps: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    run(
        "openai chunks",
        steps,
        ChunkEncoder::new(Arc::from("req-1"), "qwen-plus".into(), true),
    );
    let options = Options {
        text_format: false,
        incremental: true,
        multimodal: false,
        choices: 1,
    };
    run(
        "native frames",
        steps,
        FrameEncoder::new(Arc::from("req-1"), options),
    );

    let mut reply = Reply::new(Meta {
        id: "chatcmpl-1".into(),
        created: 1_700_000_000,
        model: "qwen-plus".into(),
        request_id: None,
    });
    for i in 0..20 {
        if let Step::Event(event) = delta(i) {
            reply.apply(&event);
        }
    }
    reply.apply(&ChatEvent::Usage(usage()));
    let started = Instant::now();
    let mut bytes = 0;
    for _ in 0..steps {
        bytes += encode_completion(&reply).len();
        bytes += native::encode_reply(
            &reply,
            Options {
                incremental: false,
                ..options
            },
            "req-1",
        )
        .len();
    }
    println!(
        "whole replies: {steps} x 2, {bytes} bytes, {:?}",
        started.elapsed()
    );
}
