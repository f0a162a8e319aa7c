//! What types alone cannot check.

use std::collections::HashSet;

use super::*;

/// Checks what types alone cannot; every problem found is reported, each naming its key.
pub fn validate(config: &Config) -> Result<(), ConfigErrors> {
    let mut problems = Vec::new();
    validate_telemetry(&config.telemetry, &mut problems);
    if let Err((field, message)) = config.resume.check() {
        problems.push(ConfigError::new(field, message));
    }
    for (i, key) in config.devices.signing_keys.iter().enumerate() {
        if split_signing_key(key.expose()).is_none() {
            problems.push(ConfigError::new(
                format!("devices.signing_keys[{i}]"),
                "expected `id:secret` (id of letters, digits, - or _; secret of 16 characters or more)",
            ));
        }
    }
    if config.server.max_body_bytes == usize::MAX {
        problems.push(ConfigError::new(
            "DASHGATE_LISTEN",
            "not a socket address such as 127.0.0.1:8080",
        ));
    }
    if config.server.max_body_bytes < 1024 {
        problems.push(ConfigError::new(
            "server.max_body_bytes",
            "must be at least 1024",
        ));
    }
    let store = &config.store.url;
    if !["sqlite:", "postgres://", "postgresql://"]
        .iter()
        .any(|p| store.starts_with(p))
    {
        problems.push(ConfigError::new(
            "store.url",
            "must start with sqlite:, postgres:// or postgresql://",
        ));
    }
    let mut names = HashSet::new();
    let mut secrets = HashSet::new();
    for (i, key) in config.keys.iter().enumerate() {
        if key.name.trim().is_empty() {
            problems.push(ConfigError::new(
                format!("keys[{i}].name"),
                "must not be empty",
            ));
        }
        if !names.insert(key.name.as_str()) {
            problems.push(ConfigError::new(
                format!("keys[{i}].name"),
                format!("duplicate key name `{}`", key.name),
            ));
        }
        if key.key.is_empty() {
            problems.push(ConfigError::new(
                format!("keys[{i}].key"),
                "must not be empty",
            ));
        }
        if !secrets.insert(key.key.expose()) {
            problems.push(ConfigError::new(
                format!("keys[{i}].key"),
                "the same key is given twice",
            ));
        }
        if let Some(models) = &key.models {
            if models.iter().any(|m| m.trim().is_empty()) {
                problems.push(ConfigError::new(
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
        problems.push(ConfigError::new(
            "usage",
            "queue_records, batch_records and memory_records must be at least 1",
        ));
    }
    let batch = &config.batch;
    if batch.max_file_bytes == 0
        || batch.max_lines == 0
        || batch.max_active_per_key < 1
        || batch.workers == 0
        || batch.poll_ms == 0
        || batch.lease_ms == 0
    {
        problems.push(ConfigError::new(
            "batch",
            "max_file_bytes, max_lines, max_active_per_key, workers, poll_ms and lease_ms must be \
             at least 1",
        ));
    }
    let server = &config.server;
    if server.header_timeout_ms == 0
        || server.body_timeout_ms == 0
        || server.body_idle_timeout_ms == 0
    {
        problems.push(ConfigError::new(
            "server",
            "header_timeout_ms, body_timeout_ms and body_idle_timeout_ms must be at least 1",
        ));
    }
    if let Some(url) = &config.files.url {
        if !url.starts_with("s3://") {
            problems.push(ConfigError::new(
                "files.url",
                "must be an s3://bucket/prefix URL (unset: files are kept in files.dir)",
            ));
        }
    }
    if config.files.max_file_bytes == 0 || config.files.max_inline_tokens == 0 {
        problems.push(ConfigError::new(
            "files",
            "max_file_bytes and max_inline_tokens must be greater than 0",
        ));
    }
    if config.files.extract_memory_mb == 0 || config.files.extract_timeout_ms == 0 {
        problems.push(ConfigError::new(
            "files",
            "extract_memory_mb and extract_timeout_ms must be greater than 0",
        ));
    }
    if config.files.max_pdf_pages == 0 {
        problems.push(ConfigError::new(
            "files.max_pdf_pages",
            "must be greater than 0",
        ));
    }
    if let Some(url) = &config.limits.redis_url {
        if !(url.expose().starts_with("redis://") || url.expose().starts_with("rediss://")) {
            problems.push(ConfigError::new(
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
            problems.push(ConfigError::new(
                format!("prices.{model}"),
                "prices must be finite and not negative",
            ));
        }
    }
    if config.retry.attempts == 0 {
        problems.push(ConfigError::new(
            "retry.attempts",
            "must be at least 1 (1 means no retry)",
        ));
    }
    if config.circuit.failure_threshold == 0 {
        problems.push(ConfigError::new(
            "circuit.failure_threshold",
            "must be at least 1",
        ));
    }
    if config.upstreams.is_empty() {
        problems.push(ConfigError::new(
            "upstreams",
            "at least one [[upstreams]] entry is needed",
        ));
    }
    let mut names = HashSet::new();
    for (i, up) in config.upstreams.iter().enumerate() {
        let at = |field: &str| format!("upstreams[{i}].{field}");
        if up.name.trim().is_empty() {
            problems.push(ConfigError::new(at("name"), "must not be empty"));
        }
        if !names.insert(up.name.as_str()) {
            problems.push(ConfigError::new(
                at("name"),
                format!("duplicate upstream name `{}`", up.name),
            ));
        }
        match reqwest::Url::parse(&up.base_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                if url.query().is_some() {
                    problems.push(ConfigError::new(
                        at("base_url"),
                        "must not carry a query string",
                    ));
                }
            }
            Ok(_) => {
                problems.push(ConfigError::new(
                    at("base_url"),
                    "must be an http:// or https:// URL",
                ));
            }
            Err(e) => problems.push(ConfigError::new(at("base_url"), format!("not a URL: {e}"))),
        }
        if up.models.is_empty() || up.models.iter().any(|m| m.trim().is_empty()) {
            problems.push(ConfigError::new(
                at("models"),
                "must list at least one model name or \"*\"",
            ));
        }
        validate_media(&config.media.with(&up.media), &at("media"), &mut problems);
        if up.provider == ProviderKind::Openai && up.dialect == UpstreamDialect::Native {
            problems.push(ConfigError::new(
                at("dialect"),
                "only a dashscope upstream speaks the native dialect",
            ));
        }
        if up.weight == 0 {
            problems.push(ConfigError::new(at("weight"), "must be at least 1"));
        }
        for (field, value) in [
            ("connect_timeout_ms", up.connect_timeout_ms),
            ("first_byte_timeout_ms", up.first_byte_timeout_ms),
            ("idle_timeout_ms", up.idle_timeout_ms),
            ("request_timeout_ms", up.request_timeout_ms),
        ] {
            if value == 0 {
                problems.push(ConfigError::new(at(field), "must be greater than 0"));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(problems))
    }
}

fn validate_media(media: &MediaConfig, at: &str, problems: &mut Vec<ConfigError>) {
    let key = |k: &str| format!("{at}.{k}");
    if media.max_image_pixels < 4 * 28 * 28 {
        problems.push(ConfigError::new(
            key("max_image_pixels"),
            "must be at least 3136 (four 28x28 blocks)",
        ));
    }
    if !(1..=100).contains(&media.jpeg_quality) {
        problems.push(ConfigError::new(key("jpeg_quality"), "must be in 1..=100"));
    }
    if media.max_image_bytes == 0 || media.max_audio_bytes == 0 || media.fetch_max_bytes == 0 {
        problems.push(ConfigError::new(at, "size limits must be greater than 0"));
    }
    if media.max_decode_pixels == 0 {
        problems.push(ConfigError::new(
            key("max_decode_pixels"),
            "must be greater than 0",
        ));
    }
    if media
        .url_schemes
        .iter()
        .any(|s| s.is_empty() || s == "data")
    {
        problems.push(ConfigError::new(
            key("url_schemes"),
            "list schemes such as \"https\"; data: URLs are always allowed",
        ));
    }
}

fn validate_telemetry(t: &TelemetryConfig, problems: &mut Vec<ConfigError>) {
    if !(0.0..=1.0).contains(&t.sample_ratio) {
        problems.push(ConfigError::new(
            "telemetry.sample_ratio",
            "must be between 0.0 and 1.0",
        ));
    }
    if let Some(endpoint) = &t.otlp_endpoint {
        let ok = url::Url::parse(endpoint)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if !ok {
            problems.push(ConfigError::new(
                "telemetry.otlp_endpoint",
                "must be an http:// or https:// URL such as http://127.0.0.1:4318",
            ));
        }
    }
}
