//! Fields of a native request that would make the gateway's checks read one value and the
//! upstream another. The upstream reads `model` and `input.messages` where they stand and each
//! parameter in `parameters`; the decoder folds all of them into one canonical `Chat`, where a
//! `parameters.model` or a top-level `temperature` would land on the checked field. Such
//! requests are refused (400 naming the field) rather than guessed at, and so is a content item
//! holding two kinds at once (`{"text":..,"image":..}`), which one reader takes as text and
//! another as an image.

use serde_json::{Map, Value};

use crate::error::GatewayError;
use crate::wire::parts::{ITEM_KEYS, PART_FIELDS};

/// Names a native parameter may not have: they are the request's own structure, read from
/// elsewhere by the upstream. (`stream` is not among them: DashScope and the gateway both go by
/// the `X-DashScope-SSE` header alone, so a body `stream` means nothing to either reader.)
const STRUCTURE: [&str; 5] = ["model", "messages", "input", "prompt", "parameters"];

/// Canonical fields the decoder reads from `parameters`: the same names at the top level of a
/// native body are not parameters to the upstream, but would be checked as if they were.
const TYPED_PARAMETERS: [&str; 10] = [
    "stream_options",
    "temperature",
    "top_p",
    "presence_penalty",
    "n",
    "max_tokens",
    "seed",
    "stop",
    "tools",
    "messages",
];

/// Refuses `parameters.model` and its kind, and top-level keys that would stand in for a
/// parameter.
pub fn refuse_shadows(
    parameters: &Map<String, Value>,
    top: &Map<String, Value>,
) -> Result<(), GatewayError> {
    if let Some(name) = STRUCTURE.iter().find(|k| parameters.contains_key(**k)) {
        let param = format!("parameters.{name}");
        return Err(GatewayError::param(
            param.clone(),
            format!(
                "`{param}` is not a parameter: the request's `{name}` is given where the API places it"
            ),
        ));
    }
    let shadowing = top.keys().find(|k| {
        STRUCTURE.contains(&k.as_str())
            || TYPED_PARAMETERS.contains(&k.as_str())
            || parameters.contains_key(k.as_str())
    });
    if let Some(name) = shadowing {
        return Err(GatewayError::param(
            name.clone(),
            format!("`{name}` belongs in `parameters` (or `input`) in a native request"),
        ));
    }
    Ok(())
}

/// Refuses a content item that carries more than one kind of content.
pub fn refuse_mixed_items(messages: &[Value]) -> Result<(), GatewayError> {
    for (i, message) in messages.iter().enumerate() {
        let Some(Value::Array(items)) = message.get("content") else {
            continue;
        };
        for (j, item) in items.iter().enumerate() {
            let Value::Object(item) = item else {
                continue;
            };
            // The keys that make an item one kind: native item keys, then typed OpenAI parts'.
            let mut kinds = ITEM_KEYS
                .iter()
                .chain(PART_FIELDS.iter().filter(|k| !ITEM_KEYS.contains(k)))
                .filter(|k| item.contains_key(**k));
            if let (Some(first), Some(second)) = (kinds.next(), kinds.next()) {
                let param = format!("input.messages[{i}].content[{j}].{second}");
                return Err(GatewayError::param(
                    param.clone(),
                    format!(
                        "`{param}`: an item holds one of text, image, video or audio, not both `{first}` and `{second}`"
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    fn param_of(r: Result<(), GatewayError>) -> Option<String> {
        match r {
            Err(GatewayError::InvalidParameter { param, .. }) => param,
            _ => None,
        }
    }

    #[test]
    fn structure_in_parameters_and_parameters_at_the_top_are_refused() {
        for name in STRUCTURE {
            let parameters = map(json!({ name: "qwen-plus" }));
            assert_eq!(
                param_of(refuse_shadows(&parameters, &Map::new())),
                Some(format!("parameters.{name}"))
            );
        }
        let parameters = map(json!({"temperature": 0.5, "enable_search": true}));
        let top = map(json!({"enable_search": false}));
        assert_eq!(
            param_of(refuse_shadows(&parameters, &top)).as_deref(),
            Some("enable_search")
        );
        let top = map(json!({"temperature": 3}));
        assert_eq!(
            param_of(refuse_shadows(&Map::new(), &top)).as_deref(),
            Some("temperature")
        );
        let top = map(json!({"workspace": "w"}));
        assert_eq!(param_of(refuse_shadows(&parameters, &top)), None);
    }

    #[test]
    fn an_item_with_two_kinds_is_refused() {
        let messages = vec![json!({"role": "user", "content": [
            {"text": "hi"},
            {"image": "data:image/jpeg;base64,AAAA", "text": "caption"}
        ]})];
        assert_eq!(
            param_of(refuse_mixed_items(&messages)).as_deref(),
            Some("input.messages[0].content[1].image")
        );
        let messages = vec![json!({"role": "user", "content": [
            {"image": "https://x/a.jpg", "image_url": {"url": "https://x/b.jpg"}}
        ]})];
        assert!(param_of(refuse_mixed_items(&messages)).is_some());
        let fine = vec![json!({"role": "user", "content": [
            {"image": "https://x/a.jpg"}, {"text": "what"},
            {"type": "image_url", "image_url": {"url": "https://x/b.jpg"}}
        ]})];
        assert_eq!(param_of(refuse_mixed_items(&fine)), None);
    }
}
