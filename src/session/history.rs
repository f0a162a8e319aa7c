//! A session's stored messages, what each is estimated to cost, and the two ways history is
//! made smaller: older camera frames become a text placeholder, the oldest turns are dropped.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::chat::{Content, Message, Part, Role};

/// What an image that is no longer sent becomes.
pub const PLACEHOLDER: &str = "[image omitted]";

/// One stored message with its estimated tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub message: Message,
    /// Its text (and tool calls), four bytes to a token.
    pub text_tokens: u64,
    /// Images (and video frame lists) it still holds.
    #[serde(default)]
    pub images: u32,
    /// The estimate for each of them, from the image policy's figures when it was sent.
    #[serde(default)]
    pub tokens_per_image: u64,
}

fn is_image(part: &Part) -> bool {
    matches!(part.kind.as_str(), "image_url" | "video" | "image")
}

fn text_bytes(message: &Message) -> usize {
    let content = match &message.content {
        Some(Content::Text(text)) => text.len(),
        Some(Content::Parts(parts)) => parts
            .iter()
            .filter_map(|p| p.fields.get("text").and_then(Value::as_str))
            .map(str::len)
            .sum(),
        None => 0,
    };
    let calls = message
        .tool_calls
        .as_ref()
        .map_or(0, |c| c.to_string().len());
    content + calls
}

fn estimate(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4).max(1)
}

impl Entry {
    pub fn new(message: Message, tokens_per_image: u64) -> Entry {
        let images = match &message.content {
            Some(Content::Parts(parts)) => parts.iter().filter(|p| is_image(p)).count(),
            _ => 0,
        };
        Entry {
            text_tokens: estimate(text_bytes(&message)),
            images: u32::try_from(images).unwrap_or(u32::MAX),
            tokens_per_image,
            message,
        }
    }

    pub fn tokens(&self) -> u64 {
        self.text_tokens + u64::from(self.images) * self.tokens_per_image
    }

    /// Replaces its images, the last `keep` excepted, with the placeholder; how many it replaced.
    fn omit_images(&mut self, keep: usize) -> usize {
        let Some(Content::Parts(parts)) = &mut self.message.content else {
            return 0;
        };
        let mut kept = 0;
        let mut omitted = 0;
        for part in parts.iter_mut().rev().filter(|p| is_image(p)) {
            if kept < keep {
                kept += 1;
                continue;
            }
            let mut fields = Map::new();
            fields.insert("text".into(), Value::String(PLACEHOLDER.into()));
            *part = Part {
                kind: "text".into(),
                fields,
            };
            omitted += 1;
        }
        if omitted > 0 {
            self.images = u32::try_from(kept).unwrap_or(u32::MAX);
            self.text_tokens = estimate(text_bytes(&self.message));
        }
        omitted
    }
}

/// Keeps the newest `keep` images of the conversation (the new turn's `turn_images` count
/// first: they are always sent) and turns older ones in `history` into the placeholder.
/// Returns how many it replaced.
pub fn omit_images(history: &mut [Entry], turn_images: usize, keep: usize) -> usize {
    let mut left = keep.saturating_sub(turn_images);
    let mut omitted = 0;
    for entry in history.iter_mut().rev() {
        let here = entry.images as usize;
        let keep_here = here.min(left);
        left -= keep_here;
        omitted += entry.omit_images(keep_here);
    }
    omitted
}

/// Drops the oldest messages of `history` until it and `turn_tokens` fit in `max_tokens`,
/// then any that would open the history without a user message (an answer without its
/// question). Returns how many it dropped.
pub fn trim_to_tokens(history: &mut Vec<Entry>, turn_tokens: u64, max_tokens: u64) -> usize {
    let mut total: u64 = history.iter().map(Entry::tokens).sum::<u64>() + turn_tokens;
    let mut drop = 0;
    while drop < history.len() && total > max_tokens {
        total -= history[drop].tokens();
        drop += 1;
    }
    if drop > 0 {
        while drop < history.len() && history[drop].message.role != Role::User {
            drop += 1;
        }
    }
    history.drain(..drop);
    drop
}

/// Drops the oldest entries, never the last `keep_last`, until the JSON of all fits in
/// `max_bytes`; then as `trim_to_tokens`. `None` when even the last ones do not fit.
pub fn trim_to_bytes(entries: &mut Vec<Entry>, keep_last: usize, max_bytes: usize) -> Option<()> {
    let sizes: Vec<usize> = entries
        .iter()
        .map(|e| serde_json::to_vec(e).map_or(usize::MAX, |v| v.len() + 1))
        .collect();
    let mut total: usize = sizes.iter().fold(0, |a, b| a.saturating_add(*b));
    let droppable = entries.len().saturating_sub(keep_last);
    let mut drop = 0;
    while drop < droppable && total > max_bytes {
        total = total.saturating_sub(sizes[drop]);
        drop += 1;
    }
    if total > max_bytes {
        return None;
    }
    if drop > 0 {
        while drop < droppable && entries[drop].message.role != Role::User {
            drop += 1;
        }
    }
    entries.drain(..drop);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(role: Role, content: Value) -> Message {
        serde_json::from_value(serde_json::json!({"role": role, "content": content}))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn frame_turn() -> Entry {
        let content = serde_json::json!([
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}},
            {"type": "text", "text": "what is this?"}
        ]);
        Entry::new(message(Role::User, content), 500)
    }

    #[test]
    fn older_frames_become_the_placeholder_and_cost_text() {
        let mut history = vec![frame_turn(), frame_turn()];
        assert_eq!(history[0].tokens(), 504);
        assert_eq!(omit_images(&mut history, 0, 1), 1);
        assert_eq!(history[0].images, 0);
        assert!(history[0].tokens() < 10);
        let text = serde_json::to_string(&history[0].message).unwrap_or_default();
        assert!(
            text.contains(PLACEHOLDER) && !text.contains("base64"),
            "{text}"
        );
        assert_eq!(history[1].images, 1);
        // A new turn with its own frame: no earlier one is kept.
        assert_eq!(omit_images(&mut history, 1, 1), 1);
        assert_eq!(history[1].images, 0);
    }

    #[test]
    fn the_oldest_go_first_and_history_starts_with_a_question() {
        let q = |t: &str| Entry::new(message(Role::User, Value::String(t.repeat(40))), 0);
        let a = |t: &str| Entry::new(message(Role::Assistant, Value::String(t.repeat(40))), 0);
        let mut history = vec![q("a"), a("b"), q("c"), a("d")];
        assert_eq!(history[0].tokens(), 10);
        assert_eq!(trim_to_tokens(&mut history, 10, 40), 1 + 1);
        assert_eq!(history.len(), 2);
        assert_eq!(history[0].message.role, Role::User);
        assert_eq!(trim_to_tokens(&mut history, 10, 1000), 0);
        assert_eq!(trim_to_tokens(&mut history, 100, 50), 2);
        assert!(history.is_empty());
    }

    #[test]
    fn bytes_trim_keeps_the_last_turn_or_says_it_cannot() {
        let q = |n: usize| Entry::new(message(Role::User, Value::String("x".repeat(n))), 0);
        let mut entries = vec![q(1000), q(1000), q(10)];
        assert_eq!(trim_to_bytes(&mut entries, 1, 1200), Some(()));
        assert_eq!(entries.len(), 2);
        let mut entries = vec![q(5000)];
        assert_eq!(trim_to_bytes(&mut entries, 1, 1200), None);
    }
}
