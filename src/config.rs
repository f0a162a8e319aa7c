//! Configuration: TOML file with `${VAR}` interpolation, or environment variables alone.
//! Parsed and validated once at start; every error names the key at fault.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// A config problem, always naming the key (or file position) at fault.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A string that never shows in `Debug` output or logs.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub auth: AuthConfig,
    pub keys: Vec<StaticKey>,
    pub upstreams: Vec<UpstreamConfig>,
    pub retry: RetryConfig,
    pub circuit: CircuitConfig,
    pub media: MediaConfig,
    pub limits: LimitsConfig,
    pub usage: UsageConfig,
    pub files: FilesConfig,
    /// Prices per model, for the cost in each usage record.
    pub prices: std::collections::BTreeMap<String, Price>,
    pub telemetry: TelemetryConfig,
    /// The exact response cache (`docs/cache.md`).
    pub cache: crate::cache::CacheConfig,
    pub devices: DevicesConfig,
    /// Server-side sessions (`docs/fleet.md`).
    pub sessions: crate::session::SessionsConfig,
}

/// Device tokens (docs/fleet.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevicesConfig {
    /// `id:secret` each; the first signs new tokens, all verify. Empty: one is made and kept
    /// in the store.
    pub signing_keys: Vec<Secret>,
    /// The longest `ttl_seconds` a token may be minted with.
    pub max_ttl_seconds: u64,
    /// How often revocations are read from the store: how late another gateway honours one.
    pub revocation_refresh_ms: u64,
}

impl Default for DevicesConfig {
    fn default() -> Self {
        Self {
            signing_keys: Vec::new(),
            max_ttl_seconds: 86_400,
            revocation_refresh_ms: 5_000,
        }
    }
}

/// Trace export and the access log (docs/observability.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/HTTP (protobuf) collector, e.g. `http://127.0.0.1:4318` (`/v1/traces` is added
    /// when the URL has no path). Unset: no traces.
    pub otlp_endpoint: Option<String>,
    /// Share of traces kept (0.0 to 1.0); a client's sampled `traceparent` is followed.
    pub sample_ratio: f64,
    /// The access log's lines: `json` or `text`.
    pub log_format: LogFormat,
    /// One access log line per request on stdout.
    pub access_log: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sample_ratio: 1.0,
            log_format: LogFormat::Text,
            access_log: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

/// Where per-key limits are counted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Shared counters for all gateways (`redis://host:port/db`); unset: in this process.
    pub redis_url: Option<Secret>,
    /// What a request gets while Redis cannot be reached: `open` lets it through (logged and
    /// counted), `closed` refuses it with 503.
    pub on_redis_error: FailMode,
    /// The longest a limit check waits for Redis.
    pub redis_timeout_ms: u64,
    /// Completion tokens reserved at admission for a request without `max_tokens`.
    pub reserve_completion_tokens: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            on_redis_error: FailMode::Open,
            redis_timeout_ms: 250,
            reserve_completion_tokens: 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    Open,
    Closed,
}

/// The usage ledger's writer: batches, and where records wait while the store is down.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// Records queued between the request path and the writer.
    pub queue_records: usize,
    /// Records written per transaction at most.
    pub batch_records: usize,
    /// How long the writer lets records gather before it writes them: fewer, larger
    /// transactions under load (0: write each as it comes).
    pub flush_ms: u64,
    /// Records held in memory while the store is down; beyond this they go to the spill file.
    pub memory_records: usize,
    /// The spill file of gateways from before the journal: shipped at start if present.
    pub spill_path: std::path::PathBuf,
    /// The journal every record is appended to before it goes to the store (JSON lines).
    pub journal_path: std::path::PathBuf,
    /// How often what was journaled is fsynced (for power loss; a crash loses nothing
    /// either way); 0: never, the kernel writes it back in its own time.
    pub journal_fsync_ms: u64,
    /// The journal's size limit: records beyond it (a very long store outage) are lost.
    pub journal_max_bytes: u64,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            queue_records: 65_536,
            batch_records: 500,
            flush_ms: 50,
            memory_records: 100_000,
            spill_path: "dashgate-usage.spill".into(),
            journal_path: "dashgate-usage.journal".into(),
            journal_fsync_ms: 1000,
            journal_max_bytes: 1 << 30,
        }
    }
}

/// Files uploaded through `/v1/files`, and documents named as `fileid://` in system messages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    /// Where file bytes are kept, when `url` is unset (created when missing).
    pub dir: std::path::PathBuf,
    /// S3-compatible object storage instead (`s3://bucket/prefix`: Alibaba OSS, S3, MinIO);
    /// credentials and endpoint from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_ENDPOINT`, `AWS_REGION`.
    pub url: Option<String>,
    /// Largest upload.
    pub max_file_bytes: usize,
    /// Documents put into the system message for an upstream without a files API may come to
    /// at most this many tokens (estimated); more is a 400.
    pub max_inline_tokens: u64,
    /// Text extraction's cage: bytes a DOCX's text part, or all of a PDF's streams, may
    /// decompress to.
    pub max_extract_bytes: u64,
    /// Address space an extraction worker may add to its own at start, in MiB.
    pub extract_memory_mb: u64,
    /// The program run as the extraction worker (`PROG extract-worker`); unset: this executable.
    pub extract_worker: Option<std::path::PathBuf>,
    /// Characters of text one document may give.
    pub max_text_chars: usize,
    /// How long one extraction may take before the request is refused.
    pub extract_timeout_ms: u64,
    /// Extractions running at once, across all requests (more wait for a slot).
    pub max_extractions: usize,
    /// Pages a PDF may have; counted before any text is extracted, more is a 400.
    pub max_pdf_pages: usize,
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            dir: "dashgate-files".into(),
            url: None,
            max_file_bytes: 64 * 1024 * 1024,
            max_inline_tokens: 120_000,
            max_extract_bytes: 32 * 1024 * 1024,
            extract_memory_mb: 256,
            extract_worker: None,
            max_text_chars: 2_000_000,
            extract_timeout_ms: 10_000,
            max_extractions: 2,
            max_pdf_pages: 500,
        }
    }
}

/// A model's price, in any currency, per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_million: f64,
    pub output_per_million: f64,
    /// Cached prompt tokens, when cheaper (default: the input price).
    #[serde(default)]
    pub cached_input_per_million: Option<f64>,
}

/// What media parts may be, and what happens to camera frames before they go upstream.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Pixel budget per image; larger ones are downscaled (default: DashScope's own cap).
    pub max_image_pixels: u64,
    /// Decoded size limit per image.
    pub max_image_bytes: usize,
    /// EXIF, GPS, XMP and comments never leave the gateway.
    pub strip_metadata: bool,
    /// Downscale and re-encode an image over budget (else refuse it).
    pub reencode: bool,
    pub jpeg_quality: u8,
    /// Frames in one `video` frame list.
    pub max_video_frames: usize,
    /// Decoded size limit per inline audio clip.
    pub max_audio_bytes: usize,
    /// URL schemes media parts may use besides `data:`.
    pub url_schemes: Vec<String>,
    /// Fetching image URLs for upstreams that cannot (`fetch_image_urls` on the upstream).
    pub fetch_max_bytes: usize,
    pub fetch_timeout_ms: u64,
    pub fetch_max_redirects: usize,
    /// Hosts or IP addresses fetched even though they are private, loopback or link-local.
    pub fetch_allow: Vec<String>,
    /// The largest image (width x height, from its header) the gateway agrees to decode,
    /// against decompression bombs.
    pub max_decode_pixels: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            max_image_pixels: 1_003_520,
            max_image_bytes: 10 * 1024 * 1024,
            strip_metadata: true,
            reencode: true,
            jpeg_quality: 85,
            max_video_frames: 512,
            max_audio_bytes: 10 * 1024 * 1024,
            url_schemes: vec!["https".into(), "http".into(), "oss".into()],
            fetch_max_bytes: 10 * 1024 * 1024,
            fetch_timeout_ms: 10_000,
            fetch_max_redirects: 3,
            fetch_allow: Vec::new(),
            max_decode_pixels: 25_000_000,
        }
    }
}

/// Per-upstream changes to `[media]`; unset keys keep the global value.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaOverride {
    pub max_image_pixels: Option<u64>,
    pub max_image_bytes: Option<usize>,
    pub strip_metadata: Option<bool>,
    pub reencode: Option<bool>,
    pub jpeg_quality: Option<u8>,
}

impl MediaConfig {
    /// This policy with an upstream's overrides applied.
    pub fn with(&self, over: &MediaOverride) -> MediaConfig {
        let mut out = self.clone();
        if let Some(v) = over.max_image_pixels {
            out.max_image_pixels = v;
        }
        if let Some(v) = over.max_image_bytes {
            out.max_image_bytes = v;
        }
        if let Some(v) = over.strip_metadata {
            out.strip_metadata = v;
        }
        if let Some(v) = over.reencode {
            out.reencode = v;
        }
        if let Some(v) = over.jpeg_quality {
            out.jpeg_quality = v;
        }
        out
    }
}

/// Retries happen only before the first byte has gone to the client.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Tries per request, across upstreams (1: no retry).
    pub attempts: u32,
    /// Time allowed for all tries before the first byte.
    pub budget_ms: u64,
    /// First backoff; it doubles with each retry, with full jitter.
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// The longest `Retry-After` the gateway waits out itself; a longer one goes back to the
    /// client, which can decide better whether to wait.
    pub max_retry_after_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 3,
            budget_ms: 30_000,
            backoff_ms: 100,
            max_backoff_ms: 2_000,
            max_retry_after_ms: 2_000,
        }
    }
}

impl RetryConfig {
    pub fn budget(&self) -> Duration {
        Duration::from_millis(self.budget_ms)
    }
}

/// A circuit breaker per upstream, fed by real traffic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitConfig {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// How long an open circuit refuses traffic before one probe request is let through.
    pub open_ms: u64,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_ms: 30_000,
        }
    }
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Only gateway-issued keys get in; the upstream's own key is injected.
    #[default]
    Keys,
    /// The caller's bearer token is forwarded upstream as-is.
    Passthrough,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// Guards `/admin`; empty or absent means there is no admin API.
    pub admin_token: Option<Secret>,
    /// How long a key looked up in the store is trusted: the bound on how late another
    /// gateway sees a revoke (the gateway that revokes sees it at once).
    pub key_cache_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::Keys,
            admin_token: None,
            key_cache_ms: 5_000,
        }
    }
}

/// A client key written in the config, beside the keys kept in the store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticKey {
    pub name: String,
    pub key: Secret,
    pub models: Option<Vec<String>>,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    /// Tokens this key may use in all, or per `quota_period`.
    pub token_quota: Option<u64>,
    #[serde(default)]
    pub quota_period: crate::store::QuotaPeriod,
    /// The account (a customer of a device maker) this key belongs to; it may mint device
    /// tokens for that account.
    #[serde(default)]
    pub account: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Alibaba Cloud Model Studio; `base_url` is the host root.
    Dashscope,
    /// Any OpenAI-compatible server; `base_url` ends in `/v1`.
    Openai,
}

/// Which of DashScope's dialects the gateway speaks to a `dashscope` upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamDialect {
    /// The client's own: no translation.
    #[default]
    Auto,
    /// Always compatible mode.
    Compatible,
    /// Always the native API.
    Native,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    pub provider: ProviderKind,
    #[serde(default)]
    pub dialect: UpstreamDialect,
    pub base_url: String,
    #[serde(default)]
    pub api_key: Option<Secret>,
    #[serde(default = "all_models")]
    pub models: Vec<String>,
    #[serde(default = "one")]
    pub weight: u32,
    /// Requests in flight at once (0: no cap); a full upstream is skipped, or 503 if all are.
    #[serde(default)]
    pub max_concurrency: u32,
    /// The gateway fetches image URLs and inlines them, for upstreams that cannot fetch.
    #[serde(default)]
    pub fetch_image_urls: bool,
    /// Changes to the `[media]` policy for this upstream.
    #[serde(default)]
    pub media: MediaOverride,
    /// Time to open the TCP (and TLS) connection.
    #[serde(default = "defaults::connect_ms")]
    pub connect_timeout_ms: u64,
    /// Time until the upstream's response headers arrive (for LLMs: time to first token).
    #[serde(default = "defaults::first_byte_ms")]
    pub first_byte_timeout_ms: u64,
    /// Longest silence allowed between two stream events.
    #[serde(default = "defaults::idle_ms")]
    pub idle_timeout_ms: u64,
    /// Whole request, first byte to last.
    #[serde(default = "defaults::request_ms")]
    pub request_timeout_ms: u64,
}

impl UpstreamConfig {
    /// An upstream with every optional setting at its default.
    pub fn new(name: &str, provider: ProviderKind, base_url: &str) -> Self {
        Self {
            name: name.into(),
            provider,
            dialect: UpstreamDialect::Auto,
            base_url: base_url.into(),
            api_key: None,
            models: all_models(),
            weight: 1,
            max_concurrency: 0,
            fetch_image_urls: false,
            media: MediaOverride::default(),
            connect_timeout_ms: defaults::connect_ms(),
            first_byte_timeout_ms: defaults::first_byte_ms(),
            idle_timeout_ms: defaults::idle_ms(),
            request_timeout_ms: defaults::request_ms(),
        }
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn first_byte_timeout(&self) -> Duration {
        Duration::from_millis(self.first_byte_timeout_ms)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

fn all_models() -> Vec<String> {
    vec!["*".into()]
}
fn one() -> u32 {
    1
}

/// Defaults sized for LLMs: a long prompt or a thinking model can take minutes.
mod defaults {
    pub fn connect_ms() -> u64 {
        5_000
    }
    pub fn first_byte_ms() -> u64 {
        120_000
    }
    pub fn idle_ms() -> u64 {
        120_000
    }
    pub fn request_ms() -> u64 {
        900_000
    }
}

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
) -> Result<Config, ConfigError> {
    load_with(source, env, |_| {})
}

/// [`load`], with `prepare` changing the config before it is validated (`serve --simulate`
/// brings its own upstream, so a file without `[[upstreams]]` is fine there).
pub fn load_with(
    source: Source<'_>,
    env: &dyn Fn(&str) -> Option<String>,
    prepare: impl FnOnce(&mut Config),
) -> Result<Config, ConfigError> {
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

/// Replaces `${VAR}` in every string; `${VAR:-default}` gives a fallback for an unset variable.
fn interpolate(
    value: &mut toml::Value,
    path: &mut String,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match value {
        toml::Value::String(s) if s.contains("${") => *s = expand(s, path, env)?,
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                interpolate(item, path, env)?;
                path.truncate(len);
            }
        }
        toml::Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                interpolate(item, path, env)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand(s: &str, key: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| ConfigError::new(key, "unterminated `${` in string"))?;
        let inner = &after[..end];
        let (name, fallback) = match inner.split_once(":-") {
            Some((name, fallback)) => (name, Some(fallback)),
            None => (inner, None),
        };
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(ConfigError::new(
                key,
                format!("`${{{inner}}}` is not a valid variable reference"),
            ));
        }
        match (env(name), fallback) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(f)) => out.push_str(f),
            (None, None) => {
                return Err(ConfigError::new(
                    key,
                    format!("environment variable {name} is not set"),
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The environment-only mode of interface.md.
fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Config {
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

/// Checks what types alone cannot; the first problem found is reported.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    validate_telemetry(&config.telemetry)?;
    for (i, key) in config.devices.signing_keys.iter().enumerate() {
        if crate::device::token::SigningKey::parse(key.expose()).is_none() {
            return Err(ConfigError::new(
                format!("devices.signing_keys[{i}]"),
                "expected `id:secret` (id of letters, digits, - or _; secret of 16 characters or more)",
            ));
        }
    }
    if config.server.max_body_bytes == usize::MAX {
        return Err(ConfigError::new(
            "DASHGATE_LISTEN",
            "not a socket address such as 127.0.0.1:8080",
        ));
    }
    if config.server.max_body_bytes < 1024 {
        return Err(ConfigError::new(
            "server.max_body_bytes",
            "must be at least 1024",
        ));
    }
    let store = &config.store.url;
    if !["sqlite:", "postgres://", "postgresql://"]
        .iter()
        .any(|p| store.starts_with(p))
    {
        return Err(ConfigError::new(
            "store.url",
            "must start with sqlite:, postgres:// or postgresql://",
        ));
    }
    let mut names = HashSet::new();
    let mut secrets = HashSet::new();
    for (i, key) in config.keys.iter().enumerate() {
        if key.name.trim().is_empty() {
            return Err(ConfigError::new(
                format!("keys[{i}].name"),
                "must not be empty",
            ));
        }
        if !names.insert(key.name.as_str()) {
            return Err(ConfigError::new(
                format!("keys[{i}].name"),
                format!("duplicate key name `{}`", key.name),
            ));
        }
        if key.key.is_empty() {
            return Err(ConfigError::new(
                format!("keys[{i}].key"),
                "must not be empty",
            ));
        }
        if !secrets.insert(key.key.expose()) {
            return Err(ConfigError::new(
                format!("keys[{i}].key"),
                "the same key is given twice",
            ));
        }
        if let Some(models) = &key.models {
            if models.iter().any(|m| m.trim().is_empty()) {
                return Err(ConfigError::new(
                    format!("keys[{i}].models"),
                    "model names must not be empty",
                ));
            }
        }
    }
    if config.usage.queue_records == 0
        || config.usage.batch_records == 0
        || config.usage.memory_records == 0
    {
        return Err(ConfigError::new(
            "usage",
            "queue_records, batch_records and memory_records must be at least 1",
        ));
    }
    let server = &config.server;
    if server.header_timeout_ms == 0
        || server.body_timeout_ms == 0
        || server.body_idle_timeout_ms == 0
    {
        return Err(ConfigError::new(
            "server",
            "header_timeout_ms, body_timeout_ms and body_idle_timeout_ms must be at least 1",
        ));
    }
    if let Some(url) = &config.files.url {
        if !url.starts_with("s3://") {
            return Err(ConfigError::new(
                "files.url",
                "must be an s3://bucket/prefix URL (unset: files are kept in files.dir)",
            ));
        }
    }
    if config.files.max_file_bytes == 0 || config.files.max_inline_tokens == 0 {
        return Err(ConfigError::new(
            "files",
            "max_file_bytes and max_inline_tokens must be greater than 0",
        ));
    }
    if config.files.extract_memory_mb == 0 || config.files.extract_timeout_ms == 0 {
        return Err(ConfigError::new(
            "files",
            "extract_memory_mb and extract_timeout_ms must be greater than 0",
        ));
    }
    if config.files.max_pdf_pages == 0 {
        return Err(ConfigError::new(
            "files.max_pdf_pages",
            "must be greater than 0",
        ));
    }
    if let Some(url) = &config.limits.redis_url {
        if !(url.expose().starts_with("redis://") || url.expose().starts_with("rediss://")) {
            return Err(ConfigError::new(
                "limits.redis_url",
                "must start with redis:// or rediss://",
            ));
        }
    }
    for (model, price) in &config.prices {
        let prices = [
            price.input_per_million,
            price.output_per_million,
            price.cached_input_per_million.unwrap_or(0.0),
        ];
        if prices.iter().any(|p| !p.is_finite() || *p < 0.0) {
            return Err(ConfigError::new(
                format!("prices.{model}"),
                "prices must be finite and not negative",
            ));
        }
    }
    if config.retry.attempts == 0 {
        return Err(ConfigError::new(
            "retry.attempts",
            "must be at least 1 (1 means no retry)",
        ));
    }
    if config.circuit.failure_threshold == 0 {
        return Err(ConfigError::new(
            "circuit.failure_threshold",
            "must be at least 1",
        ));
    }
    if config.upstreams.is_empty() {
        return Err(ConfigError::new(
            "upstreams",
            "at least one [[upstreams]] entry is needed",
        ));
    }
    let mut names = HashSet::new();
    for (i, up) in config.upstreams.iter().enumerate() {
        let at = |field: &str| format!("upstreams[{i}].{field}");
        if up.name.trim().is_empty() {
            return Err(ConfigError::new(at("name"), "must not be empty"));
        }
        if !names.insert(up.name.as_str()) {
            return Err(ConfigError::new(
                at("name"),
                format!("duplicate upstream name `{}`", up.name),
            ));
        }
        match reqwest::Url::parse(&up.base_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                if url.query().is_some() {
                    return Err(ConfigError::new(
                        at("base_url"),
                        "must not carry a query string",
                    ));
                }
            }
            Ok(_) => {
                return Err(ConfigError::new(
                    at("base_url"),
                    "must be an http:// or https:// URL",
                ));
            }
            Err(e) => return Err(ConfigError::new(at("base_url"), format!("not a URL: {e}"))),
        }
        if up.models.is_empty() || up.models.iter().any(|m| m.trim().is_empty()) {
            return Err(ConfigError::new(
                at("models"),
                "must list at least one model name or \"*\"",
            ));
        }
        validate_media(&config.media.with(&up.media), &at("media"))?;
        if up.provider == ProviderKind::Openai && up.dialect == UpstreamDialect::Native {
            return Err(ConfigError::new(
                at("dialect"),
                "only a dashscope upstream speaks the native dialect",
            ));
        }
        if up.weight == 0 {
            return Err(ConfigError::new(at("weight"), "must be at least 1"));
        }
        for (field, value) in [
            ("connect_timeout_ms", up.connect_timeout_ms),
            ("first_byte_timeout_ms", up.first_byte_timeout_ms),
            ("idle_timeout_ms", up.idle_timeout_ms),
            ("request_timeout_ms", up.request_timeout_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::new(at(field), "must be greater than 0"));
            }
        }
    }
    Ok(())
}

fn validate_media(media: &MediaConfig, at: &str) -> Result<(), ConfigError> {
    let key = |k: &str| format!("{at}.{k}");
    if media.max_image_pixels < 4 * 28 * 28 {
        return Err(ConfigError::new(
            key("max_image_pixels"),
            "must be at least 3136 (four 28x28 blocks)",
        ));
    }
    if !(1..=100).contains(&media.jpeg_quality) {
        return Err(ConfigError::new(key("jpeg_quality"), "must be in 1..=100"));
    }
    if media.max_image_bytes == 0 || media.max_audio_bytes == 0 || media.fetch_max_bytes == 0 {
        return Err(ConfigError::new(at, "size limits must be greater than 0"));
    }
    if media.max_decode_pixels == 0 {
        return Err(ConfigError::new(
            key("max_decode_pixels"),
            "must be greater than 0",
        ));
    }
    if media
        .url_schemes
        .iter()
        .any(|s| s.is_empty() || s == "data")
    {
        return Err(ConfigError::new(
            key("url_schemes"),
            "list schemes such as \"https\"; data: URLs are always allowed",
        ));
    }
    Ok(())
}

fn validate_telemetry(t: &TelemetryConfig) -> Result<(), ConfigError> {
    if !(0.0..=1.0).contains(&t.sample_ratio) {
        return Err(ConfigError::new(
            "telemetry.sample_ratio",
            "must be between 0.0 and 1.0",
        ));
    }
    if let Some(endpoint) = &t.otlp_endpoint {
        let ok = url::Url::parse(endpoint)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if !ok {
            return Err(ConfigError::new(
                "telemetry.otlp_endpoint",
                "must be an http:// or https:// URL such as http://127.0.0.1:4318",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    const MINIMAL: &str = r#"
[[upstreams]]
name = "a"
provider = "dashscope"
base_url = "http://127.0.0.1:1"
api_key = "${UP_KEY}"
"#;

    #[test]
    fn interpolates_variables_in_strings() {
        let config =
            parse(MINIMAL, "t.toml", &env_of(&[("UP_KEY", "sk-up")])).map_err(|e| e.to_string());
        let config = config.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.upstreams[0].api_key.as_ref().map(Secret::expose),
            Some("sk-up")
        );
        assert_eq!(config.upstreams[0].models, vec!["*".to_string()]);
    }

    #[test]
    fn unset_variable_is_an_error_naming_it_and_the_key() {
        let err = parse(MINIMAL, "t.toml", &env_of(&[]))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("upstreams[0].api_key: environment variable UP_KEY is not set")
        );
    }

    #[test]
    fn fallback_is_used_for_unset_variable() {
        let text = MINIMAL.replace("${UP_KEY}", "${UP_KEY:-none}");
        let config = parse(&text, "t.toml", &env_of(&[])).map_err(|e| e.to_string());
        assert_eq!(
            config
                .ok()
                .and_then(|c| c.upstreams[0].api_key.clone())
                .map(|s| s.0),
            Some("none".into())
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let text = format!("{MINIMAL}\nweigth = 2\n");
        let err = parse(&text, "t.toml", &env_of(&[("UP_KEY", "k")]))
            .err()
            .map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(
            err.starts_with("upstreams[0].weigth: unknown field `weigth`"),
            "{err}"
        );
    }

    #[test]
    fn bad_listen_address_is_named() {
        let text = format!("[server]\nlisten = \"nowhere\"\n{MINIMAL}");
        let err = parse(&text, "t.toml", &env_of(&[("UP_KEY", "k")]))
            .err()
            .map(|e| e.key);
        assert_eq!(err.as_deref(), Some("server.listen"));
    }

    #[test]
    fn validation_names_the_field() {
        let text = MINIMAL.replace("http://127.0.0.1:1", "ftp://x");
        let config = parse(&text, "t.toml", &env_of(&[("UP_KEY", "k")])).map_err(|e| e.to_string());
        let err = config.ok().and_then(|c| validate(&c).err()).map(|e| e.key);
        assert_eq!(err.as_deref(), Some("upstreams[0].base_url"));
    }

    #[test]
    fn zero_decode_and_pdf_page_caps_are_refused() {
        for (section, key) in [
            (
                "[media]\nmax_decode_pixels = 0",
                "upstreams[0].media.max_decode_pixels",
            ),
            ("[files]\nmax_pdf_pages = 0", "files.max_pdf_pages"),
        ] {
            let text = format!("{section}\n{MINIMAL}");
            let config = parse(&text, "t.toml", &env_of(&[("UP_KEY", "k")]));
            let err = config.ok().and_then(|c| validate(&c).err()).map(|e| e.key);
            assert_eq!(err.as_deref(), Some(key));
        }
    }

    #[test]
    fn syntax_error_names_the_line() {
        let err = parse("[server]\nlisten = \n", "t.toml", &env_of(&[]))
            .err()
            .map(|e| e.key);
        assert_eq!(err.as_deref(), Some("t.toml line 2"));
    }

    #[test]
    fn environment_only_mode_makes_one_dashscope_upstream() {
        let config = from_env(&env_of(&[
            ("DASHSCOPE_API_KEY", "sk-x"),
            ("DASHGATE_LISTEN", "127.0.0.1:9999"),
        ]));
        assert_eq!(config.server.listen.port(), 9999);
        assert_eq!(config.upstreams.len(), 1);
        assert_eq!(config.upstreams[0].provider, ProviderKind::Dashscope);
        assert_eq!(
            config.upstreams[0].base_url,
            "https://dashscope.aliyuncs.com"
        );
        assert!(validate(&config).is_ok());
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let config = parse(MINIMAL, "t.toml", &env_of(&[("UP_KEY", "sk-very-secret")]))
            .map_err(|e| e.to_string());
        assert!(!format!("{config:?}").contains("sk-very-secret"));
    }
}
