//! What `dashgate serve` says and does on a first run: the simulator as the only upstream for
//! `--simulate`, the one line that says no upstream key is set and how to set one, and the
//! lines that hand out the bootstrap admin token.

use std::net::SocketAddr;

use crate::config::{AuthMode, Config, ProviderKind, Secret, UpstreamConfig};

/// The upstream name (and `x-dashgate-upstream` value) of the in-process simulator.
pub const SIMULATOR: &str = "simulator";

/// Makes the simulator at `addr` the only upstream, serving every model.
pub fn use_simulator(config: &mut Config, addr: SocketAddr, api_key: &str) {
    let mut upstream = UpstreamConfig::new(
        SIMULATOR,
        ProviderKind::Dashscope,
        &format!("http://{addr}"),
    );
    upstream.api_key = Some(Secret::new(api_key));
    config.upstreams = vec![upstream];
    config.server.simulate = true;
}

/// One line when no upstream has a key to call it with and one of them is DashScope (in `keys`
/// mode the gateway brings the upstream's key, so every call there would fail; a local
/// OpenAI-compatible server may well need none).
pub fn missing_key_hint(config: &Config, addr: SocketAddr) -> Option<String> {
    let keyless = config.auth.mode == AuthMode::Keys
        && !config.server.simulate
        && config.upstreams.iter().all(|u| u.api_key.is_none())
        && config
            .upstreams
            .iter()
            .any(|u| u.provider == ProviderKind::Dashscope);
    keyless.then(|| {
        format!(
            "no upstream key is set: export DASHSCOPE_API_KEY=sk-... (or set api_key under \
             [[upstreams]] in dashgate.toml) and restart, or run `dashgate serve --simulate` to \
             try everything against the built-in simulator; console: http://{addr}/admin"
        )
    })
}

/// The stdout lines for a fresh bootstrap token: where to use it, then the token on its own.
pub fn bootstrap_lines(addr: SocketAddr, token: &str) -> [String; 2] {
    [
        format!(
            "first run: sign in to the console at http://{addr}/admin with the one-time admin \
             token below (shown only now, only its hash is stored), then replace it there"
        ),
        format!("admin token: {token}"),
    ]
}
