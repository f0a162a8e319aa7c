//! `[server]` and `[store]`: where the gateway listens, how long it waits for clients, where it keeps its store.

use std::net::SocketAddr;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    /// Same-dialect traffic skips the canonical round-trip; off only to compare the two paths.
    pub fast_path: bool,
    /// On shutdown, how long streams in flight may run on before they are closed.
    pub drain_timeout_ms: u64,
    /// SSE comments sent while waiting for the upstream's first byte (0: none), for device
    /// links that drop idle connections.
    pub sse_keepalive_ms: u64,
    /// Set by `serve --simulate`, never by the file: the in-process simulator is the only
    /// upstream and every response says so (`x-dashgate-upstream: simulator`).
    #[serde(skip)]
    pub simulate: bool,
    /// How long a client has to send a request's headers, counted from the connection's
    /// start or, on a kept-alive connection, from the end of the previous response (so it is
    /// also the idle keep-alive timeout); then the connection is closed.
    pub header_timeout_ms: u64,
    /// Open client connections at most (0: four fifths of the process's open-file limit);
    /// beyond it new connections are closed at once, logged and counted.
    pub max_connections: usize,
    /// The longest a request body may take to arrive in all (400 after it).
    pub body_timeout_ms: u64,
    /// The longest a request body may go without a byte arriving (400 after it): a body
    /// trickled in slower than that is cut off long before `body_timeout_ms`.
    pub body_idle_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 20 * 1024 * 1024,
            fast_path: true,
            drain_timeout_ms: 30_000,
            sse_keepalive_ms: 0,
            simulate: false,
            header_timeout_ms: 15_000,
            max_connections: 0,
            body_timeout_ms: 60_000,
            body_idle_timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub url: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://dashgate.db".into(),
        }
    }
}
