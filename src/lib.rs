//! dashgate: a gateway between device and app clients and DashScope (Qwen) or any
//! OpenAI-compatible upstream. See `docs/architecture.md` for the plan of the house.

pub mod api;
pub mod auth;
pub mod batch;
pub mod cache;
pub mod chat;
pub mod config;
pub mod console;
pub mod device;
pub mod dialect;
pub mod error;
pub mod event;
pub mod fetch;
pub mod files;
pub mod ids;
pub mod limit;
pub mod listen;
pub mod media;
pub mod pipeline;
pub mod prom_text;
pub mod provider;
pub mod relay;
pub mod resume;
pub mod route;
pub mod server;
pub mod session;
pub mod sim;
pub mod sse;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod transform;
pub mod usage;
pub mod usage_record;
pub mod wire;
