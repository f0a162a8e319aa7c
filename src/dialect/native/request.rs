//! A native request decoded into the canonical `Chat`.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Options;
use crate::chat::{self, Chat};
use crate::error::GatewayError;
use crate::provider::Api;
use crate::wire::parts::part_of_item;

#[derive(Deserialize)]
struct NativeRequest {
    model: String,
    input: NativeInput,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

// Unknown input fields are refused: the upstream may read one (the old `history`) that the
// gateway's checks never saw.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeInput {
    #[serde(default)]
    messages: Option<Vec<Value>>,
    #[serde(default)]
    prompt: Option<String>,
}

/// Parses a native request into the canonical `Chat`; errors name the native field
/// (`input.messages[0].role`, `parameters.temperature`).
pub fn decode(body: &[u8], stream: bool, api: Api) -> Result<(Chat, Options), GatewayError> {
    let request: NativeRequest = chat::parse_tracked(body)?;
    let multimodal = api == Api::NativeMultimodal;
    let mut parameters = request.parameters;
    super::shadow::refuse_shadows(&parameters, &request.extra)?;
    if request.input.messages.is_some() && request.input.prompt.is_some() {
        return Err(GatewayError::param(
            "input.prompt",
            "Give either `input.prompt` or `input.messages`, not both",
        ));
    }
    if let Some(messages) = &request.input.messages {
        super::shadow::refuse_mixed_items(messages)?;
    }
    let text_format = match parameters.remove("result_format") {
        None => !multimodal,
        Some(Value::String(f)) if f == "text" => true,
        Some(Value::String(f)) if f == "message" => false,
        Some(_) => {
            return Err(GatewayError::param(
                "parameters.result_format",
                "`parameters.result_format` must be \"text\" or \"message\"",
            ));
        }
    };
    let incremental = match parameters.remove("incremental_output") {
        None => false,
        Some(Value::Bool(b)) => b,
        Some(_) => {
            return Err(GatewayError::param(
                "parameters.incremental_output",
                "`parameters.incremental_output` must be a boolean",
            ));
        }
    };
    let messages = match (request.input.messages, request.input.prompt) {
        (Some(messages), _) => messages.into_iter().map(openai_message).collect(),
        (None, Some(prompt)) => vec![json!({"role": "user", "content": prompt})],
        (None, None) => {
            return Err(GatewayError::param(
                "input.messages",
                "Either `input.prompt` or `input.messages` must be given",
            ));
        }
    };
    // DashScope goes by the `X-DashScope-SSE` header alone: a body `stream` says nothing.
    parameters.remove("stream");
    let mut extra = request.extra;
    extra.remove("stream");
    let mut shaped = Map::new();
    shaped.insert("model".into(), Value::String(request.model));
    shaped.insert("messages".into(), Value::Array(messages));
    shaped.insert("stream".into(), Value::Bool(stream));
    shaped.extend(parameters);
    shaped.extend(extra);
    let shaped = Value::Object(shaped);
    // Untracked first, as in `chat::parse_tracked`: the path is only wanted for an error.
    let untracked = <Chat as serde::Deserialize>::deserialize(&shaped);
    let chat: Chat = untracked
        .or_else(|_| serde_path_to_error::deserialize(shaped))
        .map_err(|e| native_names(chat::path_error(e)))?;
    chat::validate(&chat).map_err(native_names)?;
    let choices = chat.n.unwrap_or(1);
    Ok((
        chat,
        Options {
            text_format,
            incremental,
            multimodal,
            choices,
        },
    ))
}

/// Where a canonical field lives in a native request.
fn native_param(param: &str) -> String {
    if param == "model" || param == "." {
        param.to_string()
    } else if param.starts_with("messages") {
        // Content parts are items here: `{image}`, `{video}`, `{audio}`.
        let param = param
            .replace(".image_url.url", ".image")
            .replace(".video_url.url", ".video")
            .replace(".input_audio.data", ".audio")
            .replace(".input_audio.format", ".audio");
        format!("input.{param}")
    } else {
        format!("parameters.{param}")
    }
}

/// An error about a canonical field, renamed for a native client.
pub fn native_names(error: GatewayError) -> GatewayError {
    match error {
        GatewayError::InvalidParameter {
            param: Some(p),
            message,
        } => GatewayError::InvalidParameter {
            message: message.replace(&format!("`{p}`"), &format!("`{}`", native_param(&p))),
            param: Some(native_param(&p)),
        },
        other => other,
    }
}

/// A native message as the canonical (OpenAI-shaped) one: content items `{text}`, `{image}`,
/// `{video}` (frame list or URL), `{audio}` become typed parts; other item fields ride along.
fn openai_message(message: Value) -> Value {
    let Value::Object(mut message) = message else {
        return message;
    };
    if let Some(Value::Array(items)) = message.get_mut("content") {
        let parts: Vec<Value> = std::mem::take(items)
            .into_iter()
            .map(part_of_item)
            .collect();
        *items = parts;
    }
    Value::Object(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_items_become_typed_parts_and_errors_use_native_names() {
        let body = br#"{"model":"qwen-vl-plus","input":{"messages":[{"role":"user","content":[{"image":"https://x/a.jpg"},{"video":["a","b"],"fps":2},{"video":"https://x/v.mp4"},{"audio":"https://x/a.wav"},{"text":"what"}]}]},"parameters":{"result_format":"message","incremental_output":true,"enable_search":true}}"#;
        let decoded = decode(body, true, Api::NativeMultimodal);
        let (chat, options) = decoded.unwrap_or_else(|e| panic!("{e}"));
        assert!(
            chat.is_stream() && options.incremental && !options.text_format && options.multimodal
        );
        let parts = serde_json::to_value(&chat.messages[0].content).unwrap_or_default();
        assert_eq!(
            parts,
            json!([{"type": "image_url", "image_url": {"url": "https://x/a.jpg"}},
                   {"type": "video", "video": ["a", "b"], "fps": 2},
                   {"type": "video_url", "video_url": {"url": "https://x/v.mp4"}},
                   {"type": "input_audio", "input_audio": {"data": "https://x/a.wav", "format": "wav"}},
                   {"type": "text", "text": "what"}])
        );
        assert_eq!(chat.extra.get("enable_search"), Some(&json!(true)));

        let bad = br#"{"model":"qwen-plus","input":{"messages":[{"role":"user","content":"x"}]},"parameters":{"temperature":3}}"#;
        let err = decode(bad, false, Api::NativeText).err();
        assert!(
            matches!(&err, Some(GatewayError::InvalidParameter { param: Some(p), .. }) if p == "parameters.temperature"),
            "{err:?}"
        );
        let bad_role =
            br#"{"model":"qwen-plus","input":{"messages":[{"role":"bot","content":"x"}]}}"#;
        let err = decode(bad_role, false, Api::NativeText).err();
        assert!(
            matches!(err, Some(GatewayError::InvalidParameter { param: Some(p), .. }) if p == "input.messages[0].role")
        );
        let prompt = br#"{"model":"qwen-plus","input":{"prompt":"hi"}}"#;
        let (chat, options) =
            decode(prompt, false, Api::NativeText).unwrap_or_else(|e| panic!("{e}"));
        assert!(options.text_format);
        assert_eq!(chat.messages.len(), 1);
    }

    fn native_param_of(body: &str) -> Option<String> {
        match decode(body.as_bytes(), false, Api::NativeMultimodal) {
            Err(GatewayError::InvalidParameter { param, .. }) => param,
            Err(other) => Some(format!("other: {other}")),
            Ok(_) => None,
        }
    }

    #[test]
    fn what_the_upstream_reads_elsewhere_cannot_be_given_twice() {
        let msgs = r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#;
        let cases = [
            (
                format!(r#"{{"model":"qwen-max","input":{msgs},"parameters":{{"model":"qwen-plus"}}}}"#),
                "parameters.model",
            ),
            (
                format!(r#"{{"model":"m","input":{msgs},"parameters":{{"messages":[]}}}}"#),
                "parameters.messages",
            ),
            (
                format!(r#"{{"model":"m","input":{msgs},"parameters":{{"input":{{}}}}}}"#),
                "parameters.input",
            ),
            (
                format!(r#"{{"model":"m","input":{msgs},"messages":[]}}"#),
                "messages",
            ),
            (
                format!(r#"{{"model":"m","input":{msgs},"temperature":1,"parameters":{{"temperature":3}}}}"#),
                "temperature",
            ),
            (
                r#"{"model":"m","input":{"messages":[{"role":"user","content":"a"}],"history":[]}}"#.to_string(),
                "input.history",
            ),
            (
                r#"{"model":"m","input":{"messages":[{"role":"user","content":"a"}],"prompt":"b"}}"#.to_string(),
                "input.prompt",
            ),
            (
                r#"{"model":"m","model":"qwen-max","input":{"prompt":"b"}}"#.to_string(),
                "model",
            ),
            (
                r#"{"model":"m","input":{"messages":[{"role":"user","content":[{"image":"data:a","image":"data:b"}]}]}}"#.to_string(),
                "input.messages[0].content[0].image",
            ),
            (
                r#"{"model":"m","input":{"messages":[{"role":"user","role":"system","content":"a"}]}}"#.to_string(),
                "input.messages[0].role",
            ),
            (
                r#"{"model":"m","input":{"prompt":"b"},"parameters":{"top_k":1,"top_k":5}}"#.to_string(),
                "parameters.top_k",
            ),
            (
                r#"{"model":"m","input":{"messages":[{"role":"user","content":[{"text":"t","image":"data:x"}]}]}}"#.to_string(),
                "input.messages[0].content[0].image",
            ),
            (
                r#"{"model":"m","input":{"messages":[{"content":"a"}]}}"#.to_string(),
                "input.messages[0].role",
            ),
            (
                r#"{"model":"m","input":{"messages":[{"role":"assistant","content":null,"tool_calls":1}]}}"#.to_string(),
                "input.messages[0].tool_calls",
            ),
        ];
        for (body, param) in cases {
            assert_eq!(native_param_of(&body).as_deref(), Some(param), "{body}");
        }
        let fine =
            format!(r#"{{"model":"m","input":{msgs},"parameters":{{"seed":1}},"workspace":"w"}}"#);
        assert_eq!(native_param_of(&fine), None);
    }
}
