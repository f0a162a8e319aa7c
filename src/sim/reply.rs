//! The simulator's deterministic answer to a chat request (OpenAI-shaped `messages`).
//!
//! - the reply echoes the last user text: `echo: <text>`, then one line per media part it
//!   received (`[image_url data:image/jpeg chars=N sha256=<16 hex>]`, `[video frames=4]`, ...);
//! - with `tools` offered and a user message last, it calls the first tool, filling string
//!   parameters with the user text;
//! - with a tool result last, it answers `tool result: <content>`;
//! - `max_tokens` and `stop` cut the reply as a model would (`finish_reason` `length`/`stop`);
//! - `enable_thinking: true` adds reasoning before the answer (or the tool call):
//!   `thinking about: <text>`.

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

pub struct Reply {
    pub content: String,
    pub reasoning: Option<String>,
    pub tool_call: Option<ToolCall>,
    pub finish_reason: &'static str,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// Rough token count: about three characters a token, at least one.
pub fn tokens_of(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(3).max(1)
}

pub fn sha16(data: &[u8]) -> String {
    hex::encode(&Sha256::digest(data)[..8])
}

pub fn reply_for(request: &Map<String, Value>, request_hash: &str) -> Reply {
    let empty = Vec::new();
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let prompt_tokens = messages
        .iter()
        .map(|m| 3 + content_text(m.get("content")).map_or(0, |t| tokens_of(&t)))
        .sum::<u64>()
        .max(1);
    let last = messages.last();
    let role = last
        .and_then(|m| m.get("role"))
        .and_then(Value::as_str)
        .unwrap_or("user");
    let text = last
        .and_then(|m| content_text(m.get("content")))
        .unwrap_or_default();
    let tools = request
        .get("tools")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty());

    if let (Some(tools), "user") = (tools, role) {
        let function = &tools[0]["function"];
        let name = function["name"].as_str().unwrap_or("tool").to_string();
        let arguments = arguments_for(&function["parameters"], &text);
        let id = format!("call_{}", &request_hash[..22.min(request_hash.len())]);
        // A thinking model reasons before it calls a tool too.
        let reasoning = thinking(request).then(|| format!("thinking about: {text}"));
        return Reply {
            completion_tokens: tokens_of(&arguments) + reasoning.as_deref().map_or(0, tokens_of),
            content: String::new(),
            reasoning,
            tool_call: Some(ToolCall {
                id,
                name,
                arguments,
            }),
            finish_reason: "tool_calls",
            prompt_tokens,
        };
    }
    let mut content = if role == "tool" {
        format!("tool result: {text}")
    } else {
        format!("echo: {text}")
    };
    if let Some(Value::Array(parts)) = last.and_then(|m| m.get("content")) {
        for part in parts {
            if let Some(line) = describe_media(part) {
                content.push('\n');
                content.push_str(&line);
            }
        }
    }
    let mut finish_reason = "stop";
    if let Some(stop) = first_stop_hit(request.get("stop"), &content) {
        content.truncate(stop);
    }
    if let Some(max) = request.get("max_tokens").and_then(Value::as_u64) {
        if tokens_of(&content) > max {
            content = content.chars().take((max * 3) as usize).collect();
            finish_reason = "length";
        }
    }
    let reasoning = thinking(request).then(|| format!("thinking about: {text}"));
    Reply {
        completion_tokens: tokens_of(&content) + reasoning.as_deref().map_or(0, tokens_of),
        content,
        reasoning,
        tool_call: None,
        finish_reason,
        prompt_tokens,
    }
}

fn thinking(request: &Map<String, Value>) -> bool {
    request
        .get("enable_thinking")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

impl Reply {
    pub fn reasoning_tokens(&self) -> Option<u64> {
        self.reasoning.as_deref().map(tokens_of)
    }
}

/// A hash of what a request means (model and messages, object keys sorted), so the same
/// question gets the same ids however its JSON was laid out.
pub fn meaning_hash(request: &Map<String, Value>) -> String {
    fn canonical(value: &Value, out: &mut String) {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for key in keys {
                    out.push_str(&Value::String(key.clone()).to_string());
                    out.push(':');
                    canonical(&map[key], out);
                    out.push(',');
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for item in items {
                    canonical(item, out);
                    out.push(',');
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut text = String::new();
    canonical(request.get("model").unwrap_or(&Value::Null), &mut text);
    canonical(request.get("messages").unwrap_or(&Value::Null), &mut text);
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The text of a message's content: the string, or its text parts joined by spaces.
fn content_text(content: Option<&Value>) -> Option<String> {
    match content? {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        _ => None,
    }
}

fn describe_media(part: &Value) -> Option<String> {
    let kind = part.get("type")?.as_str()?;
    let describe_url = |url: &str| {
        if let Some(rest) = url.strip_prefix("data:") {
            let mime = rest.split([';', ',']).next().unwrap_or("");
            format!(
                "data:{mime} chars={} sha256={}",
                url.len(),
                sha16(url.as_bytes())
            )
        } else {
            url.to_string()
        }
    };
    match kind {
        "image_url" | "video_url" => {
            let url = part.get(kind)?.get("url")?.as_str()?;
            Some(format!("[{kind} {}]", describe_url(url)))
        }
        "video" => {
            let frames = part.get("video")?.as_array()?.len();
            Some(format!("[video frames={frames}]"))
        }
        "input_audio" => {
            let audio = part.get("input_audio")?;
            let data = audio.get("data")?.as_str()?;
            let format = audio.get("format").and_then(Value::as_str).unwrap_or("?");
            Some(format!(
                "[input_audio format={format} {}]",
                describe_url(data)
            ))
        }
        _ => None,
    }
}

fn arguments_for(parameters: &Value, text: &str) -> String {
    let mut args = Map::new();
    if let Some(props) = parameters.get("properties").and_then(Value::as_object) {
        for (name, schema) in props {
            let value = match schema.get("type").and_then(Value::as_str) {
                Some("number" | "integer") => json!(1),
                Some("boolean") => json!(true),
                Some("string") | None => json!(text),
                _ => Value::Null,
            };
            args.insert(name.clone(), value);
        }
    }
    Value::Object(args).to_string()
}

fn first_stop_hit(stop: Option<&Value>, content: &str) -> Option<usize> {
    let words: Vec<&str> = match stop? {
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => return None,
    };
    words
        .iter()
        .filter(|w| !w.is_empty())
        .filter_map(|w| content.find(w))
        .min()
}

/// Cuts `content` into `count` nearly equal pieces on character boundaries.
pub fn pieces(content: &str, count: usize) -> Vec<String> {
    let chars: Vec<char> = content.chars().collect();
    if chars.is_empty() {
        return Vec::new();
    }
    let count = count.clamp(1, chars.len());
    let size = chars.len().div_ceil(count);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn echoes_text_and_describes_media() {
        let r = reply_for(
            &request(json!({"messages":[{"role":"user","content":[
            {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}},
            {"type":"video","video":["a","b"]},
            {"type":"text","text":"what is this"}]}]})),
            "h",
        );
        assert_eq!(
            r.content,
            format!(
                "echo: what is this\n[image_url data:image/png chars=26 sha256={}]\n[video frames=2]",
                sha16(b"data:image/png;base64,AAAA")
            )
        );
    }

    #[test]
    fn calls_the_first_tool_then_reads_its_result() {
        let tools = json!([{"type":"function","function":{"name":"get_current_weather","parameters":{"type":"object","properties":{"location":{"type":"string"}}}}}]);
        let first = reply_for(
            &request(json!({"tools": tools, "messages":[{"role":"user","content":"杭州"}]})),
            "0123456789abcdef0123456789",
        );
        let call = first
            .tool_call
            .as_ref()
            .map(|c| (c.name.as_str(), c.arguments.as_str(), c.id.len()));
        assert_eq!(
            call,
            Some(("get_current_weather", r#"{"location":"杭州"}"#, 27))
        );
        assert_eq!(first.finish_reason, "tool_calls");
        let second = reply_for(
            &request(
                json!({"tools": tools, "messages":[{"role":"user","content":"杭州"},{"role":"tool","content":"rain"}]}),
            ),
            "h",
        );
        assert_eq!(second.content, "tool result: rain");
    }

    #[test]
    fn max_tokens_and_stop_cut_the_reply() {
        let long = reply_for(
            &request(
                json!({"max_tokens":2,"messages":[{"role":"user","content":"a long question indeed"}]}),
            ),
            "h",
        );
        assert_eq!(
            (long.content.as_str(), long.finish_reason),
            ("echo: ", "length")
        );
        let stopped = reply_for(
            &request(json!({"stop":"long","messages":[{"role":"user","content":"a long one"}]})),
            "h",
        );
        assert_eq!(
            (stopped.content.as_str(), stopped.finish_reason),
            ("echo: a ", "stop")
        );
    }

    #[test]
    fn thinking_comes_first_and_ids_follow_the_meaning() {
        let r = reply_for(
            &request(
                json!({"enable_thinking": true, "messages":[{"role":"user","content":"why"}]}),
            ),
            "h",
        );
        assert_eq!(r.reasoning.as_deref(), Some("thinking about: why"));
        let a = meaning_hash(&request(
            json!({"model":"m","messages":[{"role":"user","content":"x"}]}),
        ));
        let b = meaning_hash(&request(
            json!({"messages":[{"content":"x","role":"user"}],"stream":true,"model":"m"}),
        ));
        assert_eq!(a, b);
    }

    #[test]
    fn pieces_cover_the_text() {
        assert_eq!(pieces("我是通义千问", 3), vec!["我是", "通义", "千问"]);
        assert_eq!(pieces("ab", 5), vec!["a", "b"]);
        assert!(pieces("", 3).is_empty());
    }
}
