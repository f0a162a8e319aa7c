//! The codes behind the errors: per-key limits, an upstream's rejection in whichever shape it
//! came, and DashScope's pairing of compatible-mode and native codes.

use axum::http::HeaderValue;

/// The per-key limits a request can run into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    RequestsPerMinute,
    TokensPerMinute,
    TokenQuota,
}

impl Limit {
    pub(super) fn message(&self) -> &'static str {
        match self {
            Self::RequestsPerMinute => "This API key has reached its requests-per-minute limit.",
            Self::TokensPerMinute => "This API key has reached its tokens-per-minute limit.",
            Self::TokenQuota => "This API key has used up its token quota.",
        }
    }

    /// DashScope's compatible-mode codes for its own 429s; `insufficient_quota` as OpenAI says it.
    pub(super) fn openai_code(&self) -> &'static str {
        match self {
            Self::RequestsPerMinute => "limit_requests",
            Self::TokensPerMinute => "limit_tokens",
            Self::TokenQuota => "insufficient_quota",
        }
    }

    pub(super) fn native_code(&self) -> &'static str {
        match self {
            Self::RequestsPerMinute | Self::TokensPerMinute => "Throttling.RateQuota",
            Self::TokenQuota => "Throttling.AllocationQuota",
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::RequestsPerMinute => "rpm",
            Self::TokensPerMinute => "tpm",
            Self::TokenQuota => "quota",
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
    /// Which dialect's error JSON `body` is, if any: a client of that dialect gets it unchanged.
    pub shape: ErrorShape,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorShape {
    /// `{"error":{"message","type","param","code"}}`
    OpenAi,
    /// `{"code","message","request_id"}`
    Native,
    Other,
}

impl Rejection {
    pub(super) fn kind_or_default(&self) -> &str {
        match (self.shape, self.code.as_deref()) {
            (ErrorShape::Native, Some(code)) => openai_of_native(code).1,
            _ => self.kind.as_deref().unwrap_or("invalid_request_error"),
        }
    }

    pub(super) fn openai_code(&self) -> &str {
        match (self.shape, self.code.as_deref()) {
            (ErrorShape::Native, Some(code)) => openai_of_native(code).0,
            (_, Some(code)) => code,
            (_, None) => "upstream_rejected",
        }
    }

    pub(super) fn native_code(&self) -> &str {
        match (self.shape, self.code.as_deref()) {
            (ErrorShape::Native, Some(code)) => code,
            (_, Some(code)) => native_of_openai(code, self.status),
            (_, None) => native_of_status(self.status),
        }
    }
}

/// DashScope's native code for a compatible-mode code (their error table pairs them).
pub fn native_of_openai(code: &str, status: u16) -> &'static str {
    match code {
        "invalid_api_key" => "InvalidApiKey",
        "invalid_parameter_error" => "InvalidParameter",
        "model_not_found" => "ModelNotFound",
        "data_inspection_failed" => "DataInspectionFailed",
        "limit_requests" | "rate_limit_exceeded" => "Throttling.RateQuota",
        "limit_burst_rate" => "Throttling.BurstRate",
        "insufficient_quota" => "Throttling.AllocationQuota",
        "Arrearage" => "Arrearage",
        _ => native_of_status(status),
    }
}

fn native_of_status(status: u16) -> &'static str {
    match status {
        401 => "InvalidApiKey",
        403 => "AccessDenied",
        404 => "NotFound",
        413 => "BadRequest.TooLarge",
        429 => "Throttling",
        _ => "InvalidParameter",
    }
}

/// The compatible-mode `(code, type)` for a native code.
pub fn openai_of_native(code: &str) -> (&str, &'static str) {
    match code {
        "InvalidApiKey" => ("invalid_api_key", "invalid_request_error"),
        "InvalidParameter" => ("invalid_parameter_error", "invalid_request_error"),
        "ModelNotFound" => ("model_not_found", "invalid_request_error"),
        "DataInspectionFailed" => ("data_inspection_failed", "data_inspection_failed"),
        "Throttling.AllocationQuota" => ("insufficient_quota", "insufficient_quota"),
        "Throttling.BurstRate" => ("limit_burst_rate", "limit_burst_rate"),
        c if c.starts_with("Throttling") => ("limit_requests", "limit_requests"),
        c => (c, "invalid_request_error"),
    }
}
