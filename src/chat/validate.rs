//! The documented ranges and shapes (DashScope's compatible-mode parameter table), checked before a request costs
//! an upstream call; every failure names the field at fault.

use serde_json::Value;

use super::{Chat, Content, Message, Part, Role, Tool};
use crate::error::GatewayError;

/// Ranges and shapes from DashScope's compatible-mode parameter table.
pub fn validate(chat: &Chat) -> Result<(), GatewayError> {
    if chat.model.trim().is_empty() {
        return Err(GatewayError::param("model", "`model` must not be empty"));
    }
    if chat.messages.is_empty() {
        return Err(GatewayError::param(
            "messages",
            "`messages` must not be empty",
        ));
    }
    for (i, message) in chat.messages.iter().enumerate() {
        validate_message(i, message)?;
    }
    validate_sampling(
        chat.temperature,
        chat.top_p,
        chat.presence_penalty,
        chat.n,
        chat.max_tokens,
        chat.stop.as_ref(),
    )?;
    if let Some(tools) = &chat.tools {
        for (i, tool) in tools.iter().enumerate() {
            validate_tool(i, tool)?;
        }
    }
    super::ranges::validate_extra(chat)
}

fn check_range(
    value: Option<f64>,
    name: &str,
    range: &str,
    ok: impl Fn(f64) -> bool,
) -> Result<(), GatewayError> {
    match value {
        Some(v) if !ok(v) => Err(GatewayError::param(
            name,
            format!("`{name}` must be in {range}, got {v}"),
        )),
        _ => Ok(()),
    }
}

fn validate_message(i: usize, message: &Message) -> Result<(), GatewayError> {
    let at = |field: &str| format!("messages[{i}].{field}");
    if message.tool_calls.as_ref().is_some_and(|t| !t.is_array()) {
        return Err(GatewayError::param(
            at("tool_calls"),
            format!("`{}` must be an array of tool calls", at("tool_calls")),
        ));
    }
    let needs_content = match message.role {
        Role::Assistant => message.tool_calls.is_none(),
        _ => true,
    };
    let Some(content) = &message.content else {
        if needs_content {
            return Err(GatewayError::param(
                at("content"),
                format!("`{}` is required for this role", at("content")),
            ));
        }
        return Ok(());
    };
    if let Content::Parts(parts) = content {
        for (j, part) in parts.iter().enumerate() {
            validate_part(&format!("messages[{i}].content[{j}]"), part)?;
        }
    }
    Ok(())
}

/// The fields that make a part (or a native item) one kind of content: OpenAI's typed parts
/// and DashScope's native items.
const KIND_FIELDS: [&str; 7] = [
    "text",
    "image_url",
    "video_url",
    "video",
    "input_audio",
    "image",
    "audio",
];

/// Checks the shape of the part types DashScope documents; unknown types pass through, but
/// no part may carry another kind's field: `{"type":"text","text":..,"image":..}` is text to
/// the gateway's checks and an image to a reader that looks for `image`.
fn validate_part(at: &str, part: &Part) -> Result<(), GatewayError> {
    let field = |name: &str| part.fields.get(name);
    if let Some(other) = KIND_FIELDS
        .iter()
        .find(|k| **k != part.kind && part.fields.contains_key(**k))
    {
        return Err(GatewayError::param(
            format!("{at}.{other}"),
            format!(
                "`{at}.{other}`: a `{}` part may not also carry `{other}` (one kind per part)",
                part.kind
            ),
        ));
    }
    let url_of = |name: &str| -> Result<(), GatewayError> {
        match field(name) {
            Some(Value::Object(obj)) => match obj.get("url") {
                Some(Value::String(url)) if !url.is_empty() => Ok(()),
                _ => Err(GatewayError::param(
                    format!("{at}.{name}.url"),
                    format!("`{at}.{name}.url` must be a non-empty string"),
                )),
            },
            _ => Err(GatewayError::param(
                format!("{at}.{name}"),
                format!("`{at}.{name}` must be an object with a `url`"),
            )),
        }
    };
    match part.kind.as_str() {
        "text" => match field("text") {
            Some(Value::String(_)) => Ok(()),
            _ => Err(GatewayError::param(
                format!("{at}.text"),
                format!("`{at}.text` must be a string"),
            )),
        },
        "image_url" => url_of("image_url"),
        "video_url" => url_of("video_url"),
        "video" => match field("video") {
            Some(Value::Array(frames))
                if !frames.is_empty()
                    && frames
                        .iter()
                        .all(|f| f.as_str().is_some_and(|s| !s.is_empty())) =>
            {
                Ok(())
            }
            _ => Err(GatewayError::param(
                format!("{at}.video"),
                format!("`{at}.video` must be a non-empty array of image URLs"),
            )),
        },
        "input_audio" => match field("input_audio") {
            Some(Value::Object(audio))
                if audio
                    .get("data")
                    .and_then(Value::as_str)
                    .is_some_and(|d| !d.is_empty()) =>
            {
                Ok(())
            }
            _ => Err(GatewayError::param(
                format!("{at}.input_audio.data"),
                format!("`{at}.input_audio` must be an object with a non-empty `data`"),
            )),
        },
        _ => Ok(()),
    }
}

/// `stop`: a string, or an array of strings, of token ids, or of token-id arrays; strings and
/// token ids may not be mixed (`001_*`).
fn validate_stop(stop: &Value) -> Result<(), GatewayError> {
    let bad = || {
        GatewayError::param(
            "stop",
            "`stop` must be a string, or an array of strings, of token ids, or of token-id arrays",
        )
    };
    match stop {
        Value::String(_) => Ok(()),
        Value::Array(items) => {
            let is_id = |v: &Value| v.as_u64().is_some();
            let all_strings = items.iter().all(Value::is_string);
            let all_ids = items.iter().all(is_id);
            let all_id_lists = items.iter().all(|v| {
                v.as_array()
                    .is_some_and(|ids| !ids.is_empty() && ids.iter().all(is_id))
            });
            if all_strings || all_ids || all_id_lists {
                Ok(())
            } else {
                Err(bad())
            }
        }
        _ => Err(bad()),
    }
}

fn validate_tool(i: usize, tool: &Tool) -> Result<(), GatewayError> {
    let at = format!("tools[{i}]");
    if tool.kind != "function" {
        return Err(GatewayError::param(
            format!("{at}.type"),
            format!("`{at}.type` must be \"function\""),
        ));
    }
    let Some(function) = &tool.function else {
        return Err(GatewayError::param(
            format!("{at}.function"),
            format!("`{at}.function` is required"),
        ));
    };
    let name_ok = !function.name.is_empty()
        && function.name.len() <= 64
        && function
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !name_ok {
        return Err(GatewayError::param(
            format!("{at}.function.name"),
            format!("`{at}.function.name` must be 1-64 letters, digits, underscores or dashes"),
        ));
    }
    if let Some(parameters) = &function.parameters {
        if !parameters.is_object() {
            return Err(GatewayError::param(
                format!("{at}.function.parameters"),
                format!("`{at}.function.parameters` must be a JSON Schema object"),
            ));
        }
    }
    Ok(())
}

/// The sampling parameters both chat and completions take.
pub(super) fn validate_sampling(
    temperature: Option<f64>,
    top_p: Option<f64>,
    presence_penalty: Option<f64>,
    n: Option<u32>,
    max_tokens: Option<u32>,
    stop: Option<&Value>,
) -> Result<(), GatewayError> {
    check_range(temperature, "temperature", "[0, 2)", |t| {
        (0.0..2.0).contains(&t)
    })?;
    check_range(top_p, "top_p", "(0, 1]", |p| p > 0.0 && p <= 1.0)?;
    check_range(presence_penalty, "presence_penalty", "[-2, 2]", |p| {
        (-2.0..=2.0).contains(&p)
    })?;
    if let Some(n) = n {
        if !(1..=4).contains(&n) {
            return Err(GatewayError::param(
                "n",
                format!("`n` must be in 1..=4, got {n}"),
            ));
        }
    }
    if max_tokens == Some(0) {
        return Err(GatewayError::param(
            "max_tokens",
            "`max_tokens` must be at least 1",
        ));
    }
    if let Some(stop) = stop {
        validate_stop(stop)?;
    }
    Ok(())
}
