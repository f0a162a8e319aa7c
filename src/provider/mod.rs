//! What upstreams speak, and how to call them. A `dashscope` upstream has both DashScope
//! dialects (`{base_url}/compatible-mode/v1/...` and `{base_url}/api/v1/...`); an `openai`
//! upstream has the OpenAI-compatible one at `{base_url}/...`. The wire codecs live in
//! `openai.rs` and `dashscope.rs`.

mod batches;
mod client;
pub mod dashscope;
mod files;
pub mod models;
pub mod openai;
mod pool;
pub mod scrub;
pub mod sse;

use std::time::Duration;

use axum::http::{self, HeaderMap, HeaderValue, Method, Uri, header};
use bytes::Bytes;
use http_body_util::Full;
use serde_json::Value;

pub use client::{ReadError, read_limited};
pub use pool::{PooledBody, UpstreamResponse};

use crate::config::{AuthMode, ProviderKind, UpstreamConfig};
use crate::error::{ErrorShape, GatewayError, Rejection};

/// Upper bound on an upstream's non-stream reply; replies are text, so this is generous.
pub const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;
/// Upper bound on an upstream's error body we read to relay its message.
const MAX_ERROR_BYTES: usize = 256 * 1024;

/// The upstream endpoints the gateway calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// OpenAI-compatible `/chat/completions`.
    Chat,
    /// OpenAI-compatible `/completions` (plain and fill-in-the-middle prompts).
    Completions,
    /// DashScope native `/api/v1/services/aigc/text-generation/generation`.
    NativeText,
    /// DashScope native `/api/v1/services/aigc/multimodal-generation/generation`.
    NativeMultimodal,
}

impl Api {
    pub fn is_native(self) -> bool {
        matches!(self, Api::NativeText | Api::NativeMultimodal)
    }
}

/// One configured upstream with its own connection pool.
pub struct Upstream {
    pub config: UpstreamConfig,
    /// The `[media]` policy with this upstream's overrides.
    pub media: crate::config::MediaConfig,
    /// Fetches image URLs for an upstream that cannot (`fetch_image_urls`).
    pub fetcher: Option<crate::fetch::Fetcher>,
    /// For chat calls, the hot path.
    pool: std::sync::Arc<pool::Pool>,
    /// For file uploads (multipart).
    files_client: reqwest::Client,
    /// Endpoints by `Api` in origin form (`/path`), parsed once; `None` where the provider has
    /// no such endpoint.
    uris: [Option<Uri>; 4],
    /// `Bearer {api_key}`, made once and marked sensitive (kept out of debug output).
    authorization: Option<HeaderValue>,
    /// Takes the key out of everything read back from this upstream.
    pub scrubber: scrub::Scrubber,
}

/// How long an unused upstream connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

const USER_AGENT: &str = concat!("dashgate/", env!("CARGO_PKG_VERSION"));

impl Upstream {
    pub fn new(config: UpstreamConfig, media: &crate::config::MediaConfig) -> Result<Self, String> {
        let base = config.base_url.trim_end_matches('/');
        let paths: [Option<String>; 4] = match config.provider {
            ProviderKind::Dashscope => [
                Some(format!("{base}/compatible-mode/v1/chat/completions")),
                Some(format!("{base}/compatible-mode/v1/completions")),
                Some(format!(
                    "{base}/api/v1/services/aigc/text-generation/generation"
                )),
                Some(format!(
                    "{base}/api/v1/services/aigc/multimodal-generation/generation"
                )),
            ],
            ProviderKind::Openai => [
                Some(format!("{base}/chat/completions")),
                Some(format!("{base}/completions")),
                None,
                None,
            ],
        };
        let origin: Uri = base.parse().map_err(|e| format!("{}: {e}", config.name))?;
        let mut uris: [Option<Uri>; 4] = Default::default();
        for (slot, url) in uris.iter_mut().zip(paths) {
            if let Some(url) = url {
                let url: Uri = url.parse().map_err(|e| format!("{}: {e}", config.name))?;
                let path = url.path_and_query().map_or("/", |p| p.as_str());
                *slot = Some(path.parse().map_err(|e| format!("{}: {e}", config.name))?);
            }
        }
        let authorization = match &config.api_key {
            Some(key) => {
                let mut value = HeaderValue::try_from(format!("Bearer {}", key.expose()))
                    .map_err(|_| format!("{}: api_key is not a valid header value", config.name))?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let pool = pool::Pool::new(&origin, config.connect_timeout(), POOL_IDLE_TIMEOUT)
            .map_err(|e| format!("{}: {e}", config.name))?;
        let files_client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .tcp_nodelay(true)
            // The upstream key must never follow a redirect to another host.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT)
            .build()
            .map_err(|e| format!("{}: {e}", config.name))?;
        let media = media.with(&config.media);
        let fetcher = match config.fetch_image_urls {
            true => Some(
                crate::fetch::Fetcher::new(&media).map_err(|e| format!("{}: {e}", config.name))?,
            ),
            false => None,
        };
        let scrubber = scrub::Scrubber::new(config.api_key.as_ref().map(|k| k.expose()));
        Ok(Self {
            scrubber,
            media,
            fetcher,
            config,
            pool: std::sync::Arc::new(pool),
            files_client,
            uris,
            authorization,
        })
    }

    pub fn serves(&self, model: &str) -> bool {
        self.config.models.iter().any(|m| m == "*" || m == model)
    }

    /// Whether this upstream speaks DashScope's native API.
    pub fn has_native(&self) -> bool {
        self.config.provider == ProviderKind::Dashscope
    }

    /// Posts a request and waits for the response head (the first byte, for LLMs the first
    /// token). Non-2xx answers come back as the matching `GatewayError`.
    pub async fn send(
        &self,
        api: Api,
        call: Outgoing<'_>,
    ) -> Result<UpstreamResponse, GatewayError> {
        let uri =
            self.uris[api as usize]
                .clone()
                .ok_or_else(|| GatewayError::UpstreamProtocol {
                    upstream: self.config.name.clone(),
                    message: format!("this provider has no {api:?} endpoint"),
                })?;
        let mut request = http::Request::new(Full::new(call.body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        if let Ok(id) = HeaderValue::from_str(call.request_id) {
            headers.insert("x-request-id", id);
        }
        if api.is_native() && call.stream {
            // DashScope's native API streams only when asked by header.
            headers.insert("x-dashscope-sse", HeaderValue::from_static("enable"));
            headers.insert(
                header::ACCEPT,
                HeaderValue::from_static("text/event-stream"),
            );
        }
        let authorization = match call.mode {
            AuthMode::Keys => self.authorization.clone(),
            AuthMode::Passthrough => call.passthrough_token.and_then(|token| {
                let mut value = HeaderValue::try_from(format!("Bearer {token}")).ok()?;
                value.set_sensitive(true);
                Some(value)
            }),
        };
        if let Some(value) = authorization {
            headers.insert(header::AUTHORIZATION, value);
        }
        if self.config.provider == ProviderKind::Dashscope {
            // DashScope feature switches ride on X-DashScope-* headers (data inspection, ...);
            // the SSE switch is the gateway's to set.
            for (name, value) in call.client_headers {
                if name.as_str().starts_with("x-dashscope-") && name != "x-dashscope-sse" {
                    headers.append(name, value.clone());
                }
            }
        }
        if let Some(value) = crate::telemetry::otel::upstream_traceparent(call.client_headers) {
            headers.insert("traceparent", value);
        }
        let sent =
            tokio::time::timeout(self.config.first_byte_timeout(), self.pool.send(request)).await;
        let response = match sent {
            Err(_) => return Err(self.timeout()),
            Ok(Err(e @ pool::SendError::Connect(_))) => {
                tracing::warn!(upstream = %self.config.name, error = %e, "upstream unreachable");
                return Err(GatewayError::UpstreamUnreachable {
                    upstream: self.config.name.clone(),
                });
            }
            // Connected, but the answer never came: the upstream may have seen (and billed) the
            // request, so this is not reported as unreachable.
            Ok(Err(e)) => {
                tracing::warn!(upstream = %self.config.name, error = %e, "upstream closed without answering");
                return Err(GatewayError::UpstreamProtocol {
                    upstream: self.config.name.clone(),
                    message: "the connection closed before a response".into(),
                });
            }
            Ok(Ok(response)) => response,
        };
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self.failure(response, call.mode).await)
    }

    pub fn timeout(&self) -> GatewayError {
        GatewayError::UpstreamTimeout {
            upstream: self.config.name.clone(),
        }
    }

    /// Maps a non-2xx upstream answer: 4xx is the client's (kept as sent, but an upstream 401
    /// in keys mode is the gateway's own misconfiguration); 503 stays 503, other 5xx are 502.
    async fn failure<B>(&self, response: http::Response<B>, mode: AuthMode) -> GatewayError
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
    {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .filter(|v| !self.scrubber.holds_key(v.as_bytes()))
            .cloned();
        let idle = self.config.idle_timeout();
        let body = read_limited(response, MAX_ERROR_BYTES, idle)
            .await
            .unwrap_or_default();
        let body = self.scrubber.scrub(body);
        let parsed = ErrorFields::parse(&body);
        let upstream = self.config.name.clone();
        tracing::warn!(upstream = %upstream, status, code = parsed.code.as_deref().unwrap_or(""), "upstream refused");
        match status {
            401 | 403 if mode == AuthMode::Keys => GatewayError::UpstreamAuth { upstream },
            400..=499 => GatewayError::UpstreamRejected(Box::new(Rejection {
                upstream,
                status,
                message: parsed.message.unwrap_or_else(|| {
                    format!("upstream refused the request with status {status}")
                }),
                kind: parsed.kind,
                code: parsed.code,
                param: parsed.param,
                retry_after,
                shape: parsed.shape,
                body,
            })),
            _ => GatewayError::UpstreamStatus {
                upstream,
                status,
                message: parsed.message.unwrap_or_default(),
                retry_after,
            },
        }
    }
}

/// One try of a chat call, as it goes to the upstream: what to send and on whose behalf (the
/// client's side, the same for every try, is `route::retry::Call`).
pub struct Outgoing<'a> {
    pub body: Bytes,
    pub stream: bool,
    pub request_id: &'a str,
    pub mode: AuthMode,
    pub passthrough_token: Option<&'a str>,
    pub client_headers: &'a HeaderMap<HeaderValue>,
}

/// The fields of an upstream error body, whichever shape it came in: OpenAI
/// `{"error":{...}}`, DashScope native `{"code","message"}`, vLLM `{"object":"error",...}`,
/// or any of those framed as an SSE `data:` line (DashScope does that for early stream errors).
#[derive(Debug)]
struct ErrorFields {
    message: Option<String>,
    kind: Option<String>,
    code: Option<String>,
    param: Option<String>,
    shape: ErrorShape,
}

impl ErrorFields {
    fn parse(body: &[u8]) -> Self {
        let text = String::from_utf8_lossy(body);
        let json = text
            .lines()
            .find_map(|line| line.strip_prefix("data:"))
            .unwrap_or(&text)
            .trim();
        let Ok(Value::Object(outer)) = serde_json::from_str::<Value>(json) else {
            let snippet: String = text.trim().chars().take(300).collect();
            return Self {
                message: (!snippet.is_empty()).then_some(snippet),
                kind: None,
                code: None,
                param: None,
                shape: ErrorShape::Other,
            };
        };
        let string = |v: Option<&Value>| match v {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let framed = text.trim_start().starts_with("data:") || text.trim_start().starts_with("id:");
        let shape = if framed {
            ErrorShape::Other
        } else if outer.get("error").is_some_and(Value::is_object) {
            ErrorShape::OpenAi
        } else if outer.get("code").is_some_and(Value::is_string) && outer.contains_key("message") {
            ErrorShape::Native
        } else {
            ErrorShape::Other
        };
        let fields = outer
            .get("error")
            .and_then(Value::as_object)
            .unwrap_or(&outer);
        Self {
            message: string(fields.get("message")),
            kind: string(fields.get("type")),
            code: string(fields.get("code")),
            param: string(fields.get("param")),
            shape,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_of_every_shape_are_understood() {
        let openai = ErrorFields::parse(br#"{"error":{"message":"Incorrect API key provided. ","type":"invalid_request_error","param":null,"code":"invalid_api_key"},"request_id":"x"}"#);
        assert_eq!(openai.code.as_deref(), Some("invalid_api_key"));
        assert_eq!(openai.shape, ErrorShape::OpenAi);
        let native = ErrorFields::parse(br#"{"code":"Throttling.RateQuota","message":"Requests rate limit exceeded","request_id":"x"}"#);
        assert_eq!(native.code.as_deref(), Some("Throttling.RateQuota"));
        assert_eq!(native.shape, ErrorShape::Native);
        let framed = ErrorFields::parse(b"data: {\"error\":{\"code\":\"data_inspection_failed\",\"message\":\"bad\",\"type\":\"data_inspection_failed\"}}\n\n");
        assert_eq!(framed.code.as_deref(), Some("data_inspection_failed"));
        assert_eq!(framed.shape, ErrorShape::Other);
        let native_framed = ErrorFields::parse(b"id:1\nevent:error\n:HTTP_STATUS/429\ndata:{\"code\":\"Throttling.AllocationQuota\",\"message\":\"Allocated quota exceeded\"}");
        assert_eq!(
            native_framed.code.as_deref(),
            Some("Throttling.AllocationQuota")
        );
        let plain = ErrorFields::parse(b"Bad Gateway");
        assert_eq!(plain.message.as_deref(), Some("Bad Gateway"));
    }
}
