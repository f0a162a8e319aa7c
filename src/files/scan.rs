//! Every `fileid://` a request names, wherever it stands. Only a system message that lists
//! references is resolved (`resolve`), but an upstream may honour a reference anywhere, and
//! the id may be the upstream's own id of another caller's document: so every reference is
//! looked up among the caller's files before anything goes upstream.

use serde_json::Value;

use crate::chat::{Chat, Content};

/// A reference found outside the resolved system-message lists: the message (if it is in
/// one) and the id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loose {
    pub message: Option<usize>,
    pub id: String,
}

const SCHEME: &[u8] = b"fileid://";

/// The ids after each `fileid://` (any letter case) in `text`.
pub fn ids_in(text: &str) -> impl Iterator<Item = &str> {
    let bytes = text.as_bytes();
    // `://` first: a multi-megabyte base64 image has no colon, so this is one fast scan.
    memchr::memmem::find_iter(bytes, b"://").filter_map(move |at| {
        let start = at.checked_sub(SCHEME.len() - 3)?;
        if !bytes[start..at + 3].eq_ignore_ascii_case(SCHEME) {
            return None;
        }
        let rest = &text[at + 3..];
        let end = rest
            .find(|c: char| c.is_whitespace() || ",;\"'<>()[]{}\\".contains(c))
            .unwrap_or(rest.len());
        Some(&rest[..end])
    })
}

fn walk<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::String(s) => out.extend(ids_in(s)),
        Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
        Value::Object(map) => map.iter().for_each(|(k, v)| {
            out.extend(ids_in(k));
            walk(v, out);
        }),
        _ => {}
    }
}

/// Every reference in `chat` outside the messages in `resolved` (their lists are checked
/// where they are resolved).
pub fn loose_refs(chat: &Chat, resolved: &[usize]) -> Vec<Loose> {
    let mut found = Vec::new();
    for (i, message) in chat.messages.iter().enumerate() {
        if resolved.contains(&i) {
            continue;
        }
        let mut ids = Vec::new();
        match &message.content {
            Some(Content::Text(text)) => ids.extend(ids_in(text)),
            Some(Content::Parts(parts)) => {
                for part in parts {
                    part.fields.values().for_each(|v| walk(v, &mut ids));
                }
            }
            None => {}
        }
        if let Some(calls) = &message.tool_calls {
            walk(calls, &mut ids);
        }
        message.extra.values().for_each(|v| walk(v, &mut ids));
        found.extend(ids.into_iter().map(|id| Loose {
            message: Some(i),
            id: id.to_string(),
        }));
    }
    let mut ids = Vec::new();
    chat.extra.values().for_each(|v| walk(v, &mut ids));
    if let Some(stop) = &chat.stop {
        walk(stop, &mut ids);
    }
    let tools = chat
        .tools
        .as_ref()
        .and_then(|t| serde_json::to_value(t).ok());
    if let Some(tools) = &tools {
        walk(tools, &mut ids);
    }
    found.extend(ids.into_iter().map(|id| Loose {
        message: None,
        id: id.to_string(),
    }));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_found_anywhere_and_in_any_case() {
        let ids: Vec<&str> =
            ids_in("see FileID://file-a, fileid://b,fileid://c\nand fileid://").collect();
        assert_eq!(ids, ["file-a", "b", "c", ""]);
        assert_eq!(ids_in("https://x/a.jpg").count(), 0);
        let chat: Chat = serde_json::from_value(serde_json::json!({
            "model": "qwen-long",
            "messages": [
                {"role": "system", "content": "fileid://mine"},
                {"role": "user", "content": "read fileid://file-upstream-123"},
                {"role": "user", "content": [{"type": "text", "text": "and fileid://p"}]}
            ],
            "metadata": {"doc": "fileid://e"}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let ids: Vec<(Option<usize>, String)> = loose_refs(&chat, &[0])
            .into_iter()
            .map(|l| (l.message, l.id))
            .collect();
        assert_eq!(
            ids,
            [
                (Some(1), "file-upstream-123".to_string()),
                (Some(2), "p".to_string()),
                (None, "e".to_string())
            ]
        );
    }
}
