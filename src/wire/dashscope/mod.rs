//! DashScope's native format: what the gateway writes to native clients (`reply`), the request
//! it sends a DashScope upstream (`request`), and the replies it reads from one (`decode`).

mod decode;
mod reply;
mod request;

pub use decode::{Decoder, decode_reply};
pub use reply::{
    ErrorBody, Frame, FrameChoice, FrameOutput, FrameStep, Shape, UsageBody, encode_reply,
    usage_json,
};
pub use request::encode_request;
