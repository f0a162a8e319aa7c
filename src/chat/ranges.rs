//! DashScope's ranges for the parameters that ride in `Chat::extra` (its compatible-mode and
//! native parameter tables): checked here so an upstream that would refuse them costs no round
//! trip, and a translated upstream that would not refuse them never sees them.

use serde_json::{Map, Value};

use super::Chat;
use crate::error::GatewayError;

pub(super) fn validate_extra(chat: &Chat) -> Result<(), GatewayError> {
    let extra = &chat.extra;
    if chat.tools.as_ref().is_some_and(|t| !t.is_empty()) && chat.n.is_some_and(|n| n != 1) {
        return Err(GatewayError::param(
            "n",
            "`n` must be 1 when `tools` are given",
        ));
    }
    for name in ["parallel_tool_calls", "enable_thinking", "logprobs"] {
        if let Some(v) = present(extra, name)
            && !v.is_boolean()
        {
            return Err(GatewayError::param(
                name,
                format!("`{name}` must be a boolean"),
            ));
        }
    }
    number(extra, "top_k", "an integer >= 0", |v| v.as_u64().is_some())?;
    number(extra, "repetition_penalty", "a number > 0", |v| {
        v.as_f64().is_some_and(|p| p > 0.0)
    })?;
    number(extra, "frequency_penalty", "a number in [-2, 2]", |v| {
        v.as_f64().is_some_and(|p| (-2.0..=2.0).contains(&p))
    })?;
    number(extra, "top_logprobs", "an integer in 0..=5", |v| {
        v.as_u64().is_some_and(|n| n <= 5)
    })?;
    number(extra, "thinking_budget", "an integer > 0", |v| {
        v.as_u64().is_some_and(|n| n > 0)
    })?;
    if let Some(choice) = present(extra, "tool_choice") {
        let ok = match choice {
            Value::String(s) => matches!(s.as_str(), "auto" | "none" | "required"),
            Value::Object(o) => {
                o.get("type").and_then(Value::as_str) == Some("function")
                    && o.get("function")
                        .and_then(|f| f.get("name"))
                        .and_then(Value::as_str)
                        .is_some_and(|n| !n.is_empty())
            }
            _ => false,
        };
        if !ok {
            return Err(GatewayError::param(
                "tool_choice",
                "`tool_choice` must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
            ));
        }
    }
    if let Some(format) = present(extra, "response_format") {
        let kind = format.get("type").and_then(Value::as_str);
        if !matches!(kind, Some("text" | "json_object" | "json_schema")) {
            return Err(GatewayError::param(
                "response_format.type",
                "`response_format.type` must be \"text\", \"json_object\" or \"json_schema\"",
            ));
        }
    }
    Ok(())
}

/// A field that is there and not `null` (an explicit `null` means "the default").
fn present<'a>(extra: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    extra.get(name).filter(|v| !v.is_null())
}

fn number(
    extra: &Map<String, Value>,
    name: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Result<(), GatewayError> {
    match present(extra, name) {
        Some(v) if !ok(v) => Err(GatewayError::param(
            name,
            format!("`{name}` must be {what}, got {v}"),
        )),
        _ => Ok(()),
    }
}
