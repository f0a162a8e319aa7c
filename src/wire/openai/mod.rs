//! The OpenAI-compatible format: what the gateway writes to its clients (`encode`) and what it
//! reads from OpenAI-compatible upstreams (`decode`).

mod decode;
mod encode;

pub use decode::{
    decode_chunk, decode_completion, id_and_usage_of_completion, usage_of_completion,
};
pub use encode::Logprobs;
pub use encode::{
    Chunk, ChunkChoice, ErrorBody, ErrorDetail, UsageBody, encode_completion, usage_json,
};
