//! The one mapping between OpenAI content parts (`{"type":"text"|"image_url"|...}`) and
//! DashScope's native content items (`{text}`, `{image}`, `{video}`, `{audio}`), both ways.
//! A part's or item's other fields (`fps`, `min_pixels`, ...) ride along.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value, json};

use crate::chat::Part;

/// The field that holds each part kind's payload, named after the kind.
pub const PART_FIELDS: [&str; 5] = ["text", "image_url", "video_url", "video", "input_audio"];
/// The keys of a native item that say what it is.
pub const ITEM_KEYS: [&str; 4] = ["text", "image", "video", "audio"];

/// A part as a native item, borrowed from the part: serialized, it is the item.
pub struct Item<'a>(pub &'a Part);

/// An OpenAI content part as a native item.
pub fn item_of_part(part: &Part) -> Item<'_> {
    Item(part)
}

impl Item<'_> {
    /// The item's key (`text`, `image`, ...) and its payload; `type` for kinds native has no
    /// item for.
    fn head(&self) -> (&str, Option<&Value>) {
        let fields = &self.0.fields;
        let url_of = |name: &str| fields.get(name).and_then(|v| v.get("url"));
        match self.0.kind.as_str() {
            "text" => ("text", fields.get("text")),
            "image_url" => ("image", url_of("image_url")),
            "video_url" => ("video", url_of("video_url")),
            "video" => ("video", fields.get("video")),
            "input_audio" => (
                "audio",
                fields.get("input_audio").and_then(|a| a.get("data")),
            ),
            _ => ("type", None),
        }
    }
}

impl Serialize for Item<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (key, payload) = self.head();
        let mut map = serializer.serialize_map(None)?;
        // A field of the item's own name (`image` beside `image_url`) is its value, in the
        // item's first place, as a map built by inserting would have it.
        let own = (!PART_FIELDS.contains(&key))
            .then(|| self.0.fields.get(key))
            .flatten();
        match own.or(payload) {
            Some(value) => map.serialize_entry(key, value)?,
            None if key == "type" => map.serialize_entry(key, &self.0.kind)?,
            None => map.serialize_entry(key, &Value::Null)?,
        }
        for (name, value) in &self.0.fields {
            if !PART_FIELDS.contains(&name.as_str()) && name != key {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

/// A native content item as an OpenAI content part; an item already typed stays as it is.
pub fn part_of_item(item: Value) -> Value {
    let Value::Object(mut item) = item else {
        return item;
    };
    if item.contains_key("type") {
        return Value::Object(item); // already a typed part
    }
    let mut part = Map::new();
    if let Some(text) = item.remove("text") {
        part.insert("type".into(), json!("text"));
        part.insert("text".into(), text);
    } else if let Some(image) = item.remove("image") {
        part.insert("type".into(), json!("image_url"));
        part.insert("image_url".into(), json!({"url": image}));
    } else if let Some(video) = item.remove("video") {
        if video.is_array() {
            part.insert("type".into(), json!("video"));
            part.insert("video".into(), video);
        } else {
            part.insert("type".into(), json!("video_url"));
            part.insert("video_url".into(), json!({"url": video}));
        }
    } else if let Some(audio) = item.remove("audio") {
        part.insert("type".into(), json!("input_audio"));
        // Compatible mode wants the `format` beside the data; a native item says it only in its
        // data URL's type or its URL's extension.
        let format = audio.as_str().and_then(audio_format);
        let input = match format {
            Some(format) => json!({"data": audio, "format": format}),
            None => json!({"data": audio}),
        };
        part.insert("input_audio".into(), input);
    }
    part.extend(item);
    Value::Object(part)
}

/// The audio format a native `{audio}` item names: `data:audio/wav;base64,...` or `.../a.mp3`.
fn audio_format(audio: &str) -> Option<String> {
    const KNOWN: &[&str] = &[
        "wav", "mp3", "aac", "amr", "flac", "m4a", "ogg", "opus", "webm", "pcm",
    ];
    let named = if let Some(rest) = audio.strip_prefix("data:") {
        let mime = rest.split([';', ',']).next().unwrap_or("");
        let sub = mime.strip_prefix("audio/")?;
        match sub.to_ascii_lowercase().as_str() {
            "mpeg" | "mp3" => "mp3".to_string(),
            "x-wav" | "wave" | "wav" => "wav".to_string(),
            "mp4" | "x-m4a" => "m4a".to_string(),
            other => other.to_string(),
        }
    } else {
        let path = audio.split(['?', '#']).next().unwrap_or("");
        let name = path.rsplit('/').next().unwrap_or("");
        name.rsplit_once('.')?.1.to_ascii_lowercase()
    };
    KNOWN.contains(&named.as_str()).then_some(named)
}
