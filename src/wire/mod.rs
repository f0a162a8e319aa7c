//! The wire formats the gateway writes, and the upstream replies it reads, as typed structs:
//! one module per format. Encoding borrows from the canonical model (`event`, `chat`) and
//! allocates no map per event; a struct's field order is the key order on the wire.
//!
//! Imports only the canonical model: dialects, providers, the cache and batches build on it.

use serde::{Serialize, Serializer};

use crate::event::ToolCallDelta;

pub mod dashscope;
pub mod openai;
pub mod parts;

/// Tool-call fragments as a stream step carries them, in both dialects: `id` and `arguments`
/// always (empty when the step has none), the `name` only where the upstream gave it.
#[derive(Clone, Copy)]
pub struct Fragments<'a>(pub &'a [ToolCallDelta]);

impl Fragments<'_> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Serialize)]
struct Fragment<'a> {
    index: u32,
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FragmentFunction<'a>,
}

#[derive(Serialize)]
struct FragmentFunction<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

impl Serialize for Fragments<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|c| Fragment {
            index: c.index,
            id: c.id.as_deref().unwrap_or(""),
            kind: "function",
            function: FragmentFunction {
                name: c.name.as_deref(),
                arguments: c.arguments.as_deref().unwrap_or(""),
            },
        }))
    }
}
