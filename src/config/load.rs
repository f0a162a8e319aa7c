//! Where the configuration comes from: a TOML file, or the environment alone.

use std::path::Path;

use super::interpolate::interpolate;
use super::*;

/// Where the configuration comes from.
pub enum Source<'a> {
    /// `--config FILE`: the file must exist.
    File(&'a Path),
    /// No `--config`: `./dashgate.toml` if present, else defaults plus environment.
    Default,
}

/// Reads, interpolates and validates the configuration.
pub fn load(
    source: Source<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    load_with(source, env, |_| {})
}

/// [`load`], with `prepare` changing the config before it is validated (`serve --simulate`
/// brings its own upstream, so a file without `[[upstreams]]` is fine there).
pub fn load_with(
    source: Source<'_>,
    env: &dyn Fn(&str) -> Option<String>,
    prepare: impl FnOnce(&mut Config),
) -> Result<Config, ConfigErrors> {
    let path = match source {
        Source::File(path) => Some(path.to_path_buf()),
        Source::Default => {
            let local = Path::new("dashgate.toml");
            local.exists().then(|| local.to_path_buf())
        }
    };
    let config = match path {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ConfigError::new(path.display().to_string(), e.to_string()))?;
            parse(&text, &path.display().to_string(), env)?
        }
        None => from_env(env),
    };
    let mut config = config;
    prepare(&mut config);
    validate(&config)?;
    Ok(config)
}

/// Parses TOML text; `origin` names the file in messages.
pub fn parse(
    text: &str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut value: toml::Value = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|span| text[..span.start.min(text.len())].lines().count().max(1))
            .unwrap_or(1);
        ConfigError::new(format!("{origin} line {line}"), e.message().trim())
    })?;
    interpolate(&mut value, &mut String::new(), env)?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        let message = e.into_inner().message().trim().to_string();
        ConfigError::new(if key == "." { origin.into() } else { key }, message)
    })
}

/// The environment-only mode of interface.md.
pub(super) fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Config {
    let mut config = Config::default();
    if let Some(listen) = env("DASHGATE_LISTEN") {
        match listen.parse() {
            Ok(addr) => config.server.listen = addr,
            // Kept as a sentinel so validation reports the variable by name.
            Err(_) => config.server.max_body_bytes = usize::MAX,
        }
    }
    if let Some(url) = env("DASHGATE_STORE_URL") {
        config.store.url = url;
    }
    if let Some(token) = env("DASHGATE_ADMIN_TOKEN") {
        config.auth.admin_token = Some(Secret::new(token));
    }
    if let Some(mode) = env("DASHGATE_AUTH_MODE") {
        config.auth.mode = if mode == "passthrough" {
            AuthMode::Passthrough
        } else {
            AuthMode::Keys
        };
    }
    let base_url =
        env("DASHSCOPE_BASE_URL").unwrap_or_else(|| "https://dashscope.aliyuncs.com".into());
    let mut upstream = UpstreamConfig::new("dashscope", ProviderKind::Dashscope, &base_url);
    upstream.api_key = env("DASHSCOPE_API_KEY").map(Secret::new);
    config.upstreams.push(upstream);
    config
}
