//! One error type for everything a client can be told, rendered in the client's dialect.
//!
//! Codes follow DashScope's compatible-mode error table (`../shared/seeds/001_*`: 400, 401, 429,
//! 500, 503) where it has one; the gateway's own conditions (upstream unreachable, misconfigured
//! upstream credentials) get codes of their own that say whose fault it is.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Everything that can go wrong between a client's request and the reply it gets.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("Incorrect API key provided.")]
    InvalidApiKey,
    #[error("{message}")]
    InvalidParameter {
        param: Option<String>,
        message: String,
    },
    #[error("The request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("The request body is larger than the limit of {limit} bytes.")]
    PayloadTooLarge { limit: usize },
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
            Self::InvalidApiKey => StatusCode::UNAUTHORIZED,
            Self::InvalidParameter { .. } | Self::InvalidJson(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::ModelNotFound(_) | Self::RouteNotFound(_) => StatusCode::NOT_FOUND,
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
            | Self::UpstreamProtocol { .. } => "upstream_error",
            Self::Internal => "internal_error",
            Self::UpstreamRejected(r) => r.kind_or_default(),
            _ => "invalid_request_error",
        }
    }

    /// The OpenAI-dialect `error.code`.
    pub fn code(&self) -> &str {
        match self {
            Self::UpstreamRejected(r) => r.code.as_deref().unwrap_or("upstream_rejected"),
            Self::InvalidApiKey => "invalid_api_key",
            Self::InvalidParameter { .. } => "invalid_parameter_error",
            Self::InvalidJson(_) => "invalid_json",
            Self::PayloadTooLarge { .. } => "request_too_large",
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
            Self::Internal => "internal_error",
        }
    }

    pub fn param_name(&self) -> Option<&str> {
        match self {
            Self::InvalidParameter { param, .. } => param.as_deref(),
            Self::ModelNotFound(_) | Self::ModelNotAllowed(_) => Some("model"),
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
        let body = match &self {
            Self::UpstreamRejected(r) if r.openai_shaped => r.body.to_vec(),
            _ => self.openai_body(request_id),
        };
        let mut response = json_response(self.status(), body);
        if let Some(retry_after) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after.clone());
        }
        response
    }

    /// `Retry-After` as the upstream sent it, kept for the client.
    pub fn retry_after(&self) -> Option<&HeaderValue> {
        match self {
            Self::UpstreamStatus { retry_after, .. } => retry_after.as_ref(),
            Self::UpstreamRejected(r) => r.retry_after.as_ref(),
            _ => None,
        }
    }
}

/// An upstream's 4xx, parsed from whichever error shape it used.
#[derive(Debug)]
pub struct Rejection {
    pub upstream: String,
    pub status: u16,
    pub message: String,
    pub kind: Option<String>,
    pub code: Option<String>,
    pub param: Option<String>,
    pub retry_after: Option<HeaderValue>,
    /// The body as received.
    pub body: bytes::Bytes,
    /// Whether `body` is already `{"error":{...}}` JSON that can be forwarded unchanged.
    pub openai_shaped: bool,
}

impl Rejection {
    fn kind_or_default(&self) -> &str {
        self.kind.as_deref().unwrap_or("invalid_request_error")
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
