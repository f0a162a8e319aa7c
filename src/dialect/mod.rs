//! What clients speak: `openai` (DashScope's compatible mode) and `native` (DashScope's own
//! API). Each is a face of the one pipeline ([`crate::pipeline::ClientDialect`]) plus its axum
//! handlers; `sse` (re-exported from the crate root, where the providers read it too) is the
//! event framing both share.

pub mod native;
pub mod openai;
pub use crate::pipeline::StepEncoder;
pub use crate::sse;
