//! One error type for everything a client can be told, rendered in the client's dialect.
//!
//! Codes follow DashScope's compatible-mode error table (400, 401, 429,
//! 500, 503) where it has one; the gateway's own conditions (upstream unreachable, misconfigured
//! upstream credentials) get codes of their own that say whose fault it is.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

mod codes;

pub use codes::{ErrorShape, Limit, Rejection, native_of_openai, openai_of_native};

/// Everything that can go wrong between a client's request and the reply it gets.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("Incorrect API key provided.")]
    InvalidApiKey,
    /// A known key that may not be used now: "has expired", "is disabled", "was revoked".
    #[error("This API key {0}.")]
    KeyUnusable(&'static str),
    /// A per-key limit is reached; `Retry-After` says when the window turns over.
    #[error("{}", .limit.message())]
    RateLimited {
        limit: Limit,
        retry_after: HeaderValue,
    },
    #[error("No key `{0}`.")]
    KeyNotFound(String),
    #[error("No file `{0}`.")]
    FileNotFound(String),
    #[error("No session `{0}`.")]
    SessionNotFound(String),
    #[error("Session `{0}` has a turn running; send the next turn when its reply is complete.")]
    SessionBusy(String),
    #[error(
        "You have {0} live sessions, the most allowed; delete one (DELETE /v1/sessions/{{id}}) or let one expire."
    )]
    TooManySessions(u64),
    /// A reconnect's `Last-Event-ID` names no stream it may resume (docs/fleet.md).
    #[error(
        "Last-Event-ID `{0}` names no stream this gateway can resume for this key and request body (unknown, expired, read to its end, or dropped over a buffer bound); send the request again without Last-Event-ID for a new answer."
    )]
    StreamNotResumable(String),
    /// A reconnect's `Last-Event-ID` names a stream held by another gateway of the fleet: the
    /// load balancer must route by the id's first part (docs/fleet.md).
    #[error(
        "Last-Event-ID `{id}` names a stream held by gateway `{instance}`, and this is gateway `{here}`: route a request with Last-Event-ID to the gateway its id's first part names, or send the request again without Last-Event-ID for a new answer."
    )]
    StreamOnOtherGateway {
        id: String,
        instance: String,
        here: String,
    },
    #[error("The gateway's key store cannot be reached; try again shortly.")]
    StoreUnavailable,
    #[error("The gateway's rate limiter cannot be reached; try again shortly.")]
    LimitsUnavailable,
    #[error("{message}")]
    InvalidParameter {
        param: Option<String>,
        message: String,
    },
    #[error("The request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("The request body is larger than the limit of {limit} bytes.")]
    PayloadTooLarge { limit: usize },
    /// A document the request names is over a size cap of text extraction (decompressed
    /// bytes, worker memory); the message names the cap.
    #[error("{message}")]
    DocumentTooLarge { param: String, message: String },
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    #[error("This API key may not use the model `{0}`.")]
    ModelNotAllowed(String),
    #[error("No route for {0}.")]
    RouteNotFound(String),
    #[error("Method not allowed for {0}.")]
    MethodNotAllowed(String),
    #[error("Upstream `{upstream}` could not be reached.")]
    UpstreamUnreachable { upstream: String },
    #[error("Upstream `{upstream}` did not answer in time.")]
    UpstreamTimeout { upstream: String },
    #[error(
        "The gateway's credentials for upstream `{upstream}` were rejected; this is a gateway configuration problem."
    )]
    UpstreamAuth { upstream: String },
    #[error("Upstream `{upstream}` failed with status {status}: {message}")]
    UpstreamStatus {
        upstream: String,
        status: u16,
        message: String,
        retry_after: Option<HeaderValue>,
    },
    /// The upstream refused the request (4xx): the client's problem, told as the upstream said it.
    #[error("{}", .0.message)]
    UpstreamRejected(Box<Rejection>),
    #[error("Upstream `{upstream}` sent an invalid reply: {message}")]
    UpstreamProtocol { upstream: String, message: String },
    #[error("Every upstream serving `{0}` is at its concurrency limit; try again shortly.")]
    UpstreamBusy(String),
    #[error("Every upstream serving `{0}` is failing; try again later.")]
    NoHealthyUpstream(String),
    #[error("The gateway is shutting down.")]
    ShuttingDown,
    #[error("Internal gateway error.")]
    Internal,
}

impl GatewayError {
    /// Shorthand for a 400 that names the field at fault.
    pub fn param(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidParameter {
            param: Some(param.into()),
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidApiKey | Self::KeyUnusable(_) => StatusCode::UNAUTHORIZED,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::StoreUnavailable | Self::LimitsUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::InvalidParameter { .. } | Self::InvalidJson(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } | Self::DocumentTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::ModelNotFound(_)
            | Self::RouteNotFound(_)
            | Self::KeyNotFound(_)
            | Self::FileNotFound(_)
            | Self::SessionNotFound(_) => StatusCode::NOT_FOUND,
            Self::SessionBusy(_)
            | Self::TooManySessions(_)
            | Self::StreamNotResumable(_)
            | Self::StreamOnOtherGateway { .. } => StatusCode::CONFLICT,
            Self::ModelNotAllowed(_) => StatusCode::FORBIDDEN,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::UpstreamStatus { status: 503, .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamRejected(r) => {
                StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST)
            }
            Self::UpstreamUnreachable { .. }
            | Self::UpstreamAuth { .. }
            | Self::UpstreamStatus { .. }
            | Self::UpstreamProtocol { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamBusy(_) | Self::NoHealthyUpstream(_) | Self::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OpenAI-dialect `error.type`.
    pub fn kind(&self) -> &str {
        match self {
            Self::UpstreamUnreachable { .. }
            | Self::UpstreamTimeout { .. }
            | Self::UpstreamAuth { .. }
            | Self::UpstreamStatus { .. }
            | Self::UpstreamProtocol { .. }
            | Self::UpstreamBusy(_)
            | Self::NoHealthyUpstream(_) => "upstream_error",
            Self::Internal | Self::ShuttingDown => "internal_error",
            Self::StoreUnavailable | Self::LimitsUnavailable => "internal_error",
            Self::RateLimited { .. } => "rate_limit_error",
            Self::UpstreamRejected(r) => r.kind_or_default(),
            _ => "invalid_request_error",
        }
    }

    /// The OpenAI-dialect `error.code`.
    pub fn code(&self) -> &str {
        match self {
            Self::UpstreamRejected(r) => r.openai_code(),
            Self::InvalidApiKey | Self::KeyUnusable(_) => "invalid_api_key",
            Self::RateLimited { limit, .. } => limit.openai_code(),
            Self::StoreUnavailable => "store_unavailable",
            Self::KeyNotFound(_) => "key_not_found",
            Self::FileNotFound(_) => "file_not_found",
            Self::SessionNotFound(_) => "session_not_found",
            Self::SessionBusy(_) => "session_busy",
            Self::TooManySessions(_) => "too_many_sessions",
            Self::StreamNotResumable(_) => "stream_not_resumable",
            Self::StreamOnOtherGateway { .. } => "stream_on_other_gateway",
            Self::LimitsUnavailable => "limits_unavailable",
            Self::InvalidParameter { .. } => "invalid_parameter_error",
            Self::InvalidJson(_) => "invalid_json",
            Self::PayloadTooLarge { .. } | Self::DocumentTooLarge { .. } => "request_too_large",
            Self::ModelNotFound(_) => "model_not_found",
            Self::ModelNotAllowed(_) => "model_not_allowed",
            Self::RouteNotFound(_) => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::UpstreamUnreachable { .. } => "upstream_unreachable",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::UpstreamAuth { .. } => "upstream_auth_failed",
            Self::UpstreamStatus { status: 503, .. } => "upstream_overloaded",
            Self::UpstreamStatus { .. } => "upstream_error",
            Self::UpstreamProtocol { .. } => "upstream_invalid_response",
            Self::UpstreamBusy(_) => "upstream_busy",
            Self::NoHealthyUpstream(_) => "upstream_unavailable",
            Self::ShuttingDown => "gateway_shutting_down",
            Self::Internal => "internal_error",
        }
    }

    pub fn param_name(&self) -> Option<&str> {
        match self {
            Self::InvalidParameter { param, .. } => param.as_deref(),
            Self::DocumentTooLarge { param, .. } => Some(param),
            Self::ModelNotFound(_) | Self::ModelNotAllowed(_) => Some("model"),
            Self::StreamNotResumable(_) | Self::StreamOnOtherGateway { .. } => {
                Some("Last-Event-ID")
            }
            Self::UpstreamRejected(r) => r.param.as_deref(),
            _ => None,
        }
    }

    /// The OpenAI-dialect body: `{"error":{"message","type","param","code"},"request_id"}`.
    pub fn openai_body(&self, request_id: &str) -> Vec<u8> {
        #[derive(Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
            request_id: &'a str,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            message: String,
            #[serde(rename = "type")]
            kind: &'a str,
            param: Option<&'a str>,
            code: &'a str,
        }
        let body = Body {
            error: Inner {
                message: self.to_string(),
                kind: self.kind(),
                param: self.param_name(),
                code: self.code(),
            },
            request_id,
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// A complete OpenAI-dialect error response. An upstream's own OpenAI-shaped refusal
    /// travels byte for byte.
    pub fn into_openai_response(self, request_id: &str) -> Response {
        let body = self.upstream_body(ErrorShape::OpenAi);
        self.respond(body.unwrap_or_else(|| self.openai_body(request_id)))
    }

    /// The upstream's own refusal, when it is already in the client's dialect.
    fn upstream_body(&self, shape: ErrorShape) -> Option<Vec<u8>> {
        match self {
            Self::UpstreamRejected(r) if r.shape == shape => Some(r.body.to_vec()),
            _ => None,
        }
    }

    /// The response for this error with `body`: its status, and `Retry-After` where it has one.
    fn respond(&self, body: Vec<u8>) -> Response {
        let mut response = json_response(self.status(), body);
        if let Some(retry_after) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after.clone());
        }
        response
    }

    /// The upstream an error came from, if it came from one.
    pub fn upstream_name(&self) -> Option<&str> {
        match self {
            Self::UpstreamUnreachable { upstream }
            | Self::UpstreamTimeout { upstream }
            | Self::UpstreamAuth { upstream }
            | Self::UpstreamStatus { upstream, .. }
            | Self::UpstreamProtocol { upstream, .. } => Some(upstream),
            Self::UpstreamRejected(r) => Some(&r.upstream),
            _ => None,
        }
    }

    /// The native-dialect `code` (DashScope's code strings; the gateway's own in the same style).
    pub fn native_code(&self) -> &str {
        match self {
            Self::InvalidApiKey | Self::KeyUnusable(_) => "InvalidApiKey",
            Self::RateLimited { limit, .. } => limit.native_code(),
            Self::StoreUnavailable => "StoreUnavailable",
            Self::KeyNotFound(_) | Self::FileNotFound(_) | Self::SessionNotFound(_) => "NotFound",
            Self::SessionBusy(_) => "SessionBusy",
            Self::TooManySessions(_) => "TooManySessions",
            Self::StreamNotResumable(_) => "StreamNotResumable",
            Self::StreamOnOtherGateway { .. } => "StreamOnOtherGateway",
            Self::LimitsUnavailable => "LimitsUnavailable",
            Self::InvalidParameter { .. } => "InvalidParameter",
            Self::InvalidJson(_) => "BadRequest.IllegalInput",
            Self::PayloadTooLarge { .. } | Self::DocumentTooLarge { .. } => "BadRequest.TooLarge",
            Self::ModelNotFound(_) => "ModelNotFound",
            Self::ModelNotAllowed(_) => "Model.AccessDenied",
            Self::RouteNotFound(_) => "NotFound",
            Self::MethodNotAllowed(_) => "MethodNotAllowed",
            Self::UpstreamUnreachable { .. } => "UpstreamUnreachable",
            Self::UpstreamTimeout { .. } => "UpstreamTimeout",
            Self::UpstreamAuth { .. } => "UpstreamAuthFailed",
            Self::UpstreamStatus { status: 503, .. } => "UpstreamOverloaded",
            Self::UpstreamStatus { .. } => "UpstreamError",
            Self::UpstreamProtocol { .. } => "UpstreamInvalidResponse",
            Self::UpstreamRejected(r) => r.native_code(),
            Self::UpstreamBusy(_) => "UpstreamBusy",
            Self::NoHealthyUpstream(_) => "UpstreamUnavailable",
            Self::ShuttingDown => "GatewayShuttingDown",
            Self::Internal => "InternalError",
        }
    }

    /// The native-dialect body: `{"request_id","code","message"}`.
    pub fn native_body(&self, request_id: &str) -> Vec<u8> {
        #[derive(Serialize)]
        struct Body<'a> {
            request_id: &'a str,
            code: &'a str,
            message: String,
        }
        let body = Body {
            request_id,
            code: self.native_code(),
            message: self.to_string(),
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// A complete native-dialect error response; an upstream's own native refusal travels as is.
    pub fn into_native_response(self, request_id: &str) -> Response {
        // The upstream's refusal names the gateway's request id, as every other reply does.
        let body = self.upstream_body(ErrorShape::Native).map(|b| {
            crate::ids::IdRewriter::native(request_id)
                .apply(bytes::Bytes::from(b))
                .to_vec()
        });
        self.respond(body.unwrap_or_else(|| self.native_body(request_id)))
    }

    /// `Retry-After` as the upstream sent it, kept for the client (or the gateway's own).
    pub fn retry_after(&self) -> Option<&HeaderValue> {
        static ONE_SECOND: HeaderValue = HeaderValue::from_static("1");
        match self {
            Self::UpstreamBusy(_) | Self::StoreUnavailable | Self::LimitsUnavailable => {
                Some(&ONE_SECOND)
            }
            Self::RateLimited { retry_after, .. } => Some(retry_after),
            Self::UpstreamStatus { retry_after, .. } => retry_after.as_ref(),
            Self::UpstreamRejected(r) => r.retry_after.as_ref(),
            _ => None,
        }
    }
}

/// A JSON response with the given status; the request-id layer adds `x-request-id`.
pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Errors reached outside a dialect handler (unknown path, wrong method) render in OpenAI shape.
impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        self.into_openai_response("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_body_names_the_param() {
        let err = GatewayError::param("temperature", "temperature must be in [0, 2)");
        let body: serde_json::Value =
            serde_json::from_slice(&err.openai_body("req-1")).unwrap_or_default();
        assert_eq!(body["error"]["param"], "temperature");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], "invalid_parameter_error");
        assert_eq!(body["request_id"], "req-1");
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn upstream_503_stays_503_and_other_5xx_become_502() {
        let overloaded = GatewayError::UpstreamStatus {
            upstream: "a".into(),
            status: 503,
            message: String::new(),
            retry_after: None,
        };
        let failed = GatewayError::UpstreamStatus {
            upstream: "a".into(),
            status: 500,
            message: String::new(),
            retry_after: None,
        };
        assert_eq!(overloaded.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(failed.status(), StatusCode::BAD_GATEWAY);
    }
}
