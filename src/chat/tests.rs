//! Unit tests of request decoding: the field at fault named in each error.

use super::*;

fn param_of(body: &str) -> Option<String> {
    match decode(body.as_bytes()) {
        Err(GatewayError::InvalidParameter { param, .. }) => param,
        Err(other) => Some(format!("other: {other}")),
        Ok(_) => None,
    }
}

const OK: &str = r#"{"model":"qwen-plus","messages":[{"role":"user","content":"hi"}]"#;

fn with(extra: &str) -> String {
    format!("{OK},{extra}}}")
}

#[test]
fn seed_request_decodes_and_keeps_unknown_fields() {
    let chat = decode(with(r#""enable_search":true,"skill":[{"type":"ppt"}]"#).as_bytes());
    let chat = chat.map_err(|e| e.to_string());
    assert_eq!(chat.as_ref().ok().map(|c| c.extra.len()), Some(2));
}

#[test]
fn each_documented_range_names_its_param() {
    assert_eq!(
        param_of(&with(r#""temperature":2"#)).as_deref(),
        Some("temperature")
    );
    assert_eq!(
        param_of(&with(r#""temperature":-0.1"#)).as_deref(),
        Some("temperature")
    );
    assert_eq!(param_of(&with(r#""temperature":1.99"#)), None);
    assert_eq!(param_of(&with(r#""top_p":0"#)).as_deref(), Some("top_p"));
    assert_eq!(param_of(&with(r#""top_p":1"#)), None);
    assert_eq!(
        param_of(&with(r#""presence_penalty":2.5"#)).as_deref(),
        Some("presence_penalty")
    );
    assert_eq!(param_of(&with(r#""n":5"#)).as_deref(), Some("n"));
    assert_eq!(param_of(&with(r#""n":0"#)).as_deref(), Some("n"));
    assert_eq!(
        param_of(&with(r#""max_tokens":0"#)).as_deref(),
        Some("max_tokens")
    );
    assert_eq!(
        param_of(&with(r#""max_tokens":"ten""#)).as_deref(),
        Some("max_tokens")
    );
    assert_eq!(
        param_of(&with(r#""stop":["a",1]"#)).as_deref(),
        Some("stop")
    );
    assert_eq!(param_of(&with(r#""stop":[[1,2],[3]]"#)), None);
    assert_eq!(
        param_of(&with(r#""stop":{"a":1}"#)).as_deref(),
        Some("stop")
    );
}

#[test]
fn messages_are_checked() {
    assert_eq!(
        param_of(r#"{"model":"m","messages":[]}"#).as_deref(),
        Some("messages")
    );
    assert_eq!(param_of(r#"{"model":"m"}"#).as_deref(), Some("messages"));
    assert_eq!(
        param_of(r#"{"messages":[{"role":"user","content":"x"}]}"#).as_deref(),
        Some("model")
    );
    assert_eq!(
        param_of(r#"{"model":"m","messages":[{"role":"bot","content":"x"}]}"#).as_deref(),
        Some("messages[0].role")
    );
    assert_eq!(
        param_of(r#"{"model":"m","messages":[{"role":"user"}]}"#).as_deref(),
        Some("messages[0].content")
    );
    assert_eq!(
        param_of(r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]}"#).as_deref(),
        Some("messages[0].content[0].image_url.url")
    );
    assert_eq!(
        param_of(
            r#"{"model":"m","messages":[{"role":"assistant","content":null,"tool_calls":[]}]}"#
        ),
        None
    );
}

#[test]
fn tools_are_checked() {
    let tool = |t: &str| with(&format!(r#""tools":[{t}]"#));
    assert_eq!(
        param_of(&tool(
            r#"{"type":"function","function":{"name":"get_current_time","parameters":{}}}"#
        )),
        None
    );
    assert_eq!(
        param_of(&tool(r#"{"type":"retrieval"}"#)).as_deref(),
        Some("tools[0].type")
    );
    assert_eq!(
        param_of(&tool(
            r#"{"type":"function","function":{"name":"has space"}}"#
        ))
        .as_deref(),
        Some("tools[0].function.name")
    );
    assert_eq!(
        param_of(&tool(
            r#"{"type":"function","function":{"name":"f","parameters":[]}}"#
        ))
        .as_deref(),
        Some("tools[0].function.parameters")
    );
}

#[test]
fn malformed_json_is_not_a_param_error() {
    assert!(matches!(
        decode(b"{\"model\":"),
        Err(GatewayError::InvalidJson(_))
    ));
    assert!(matches!(
        decode(format!("{OK}}} x").as_bytes()),
        Err(GatewayError::InvalidJson(_))
    ));
}

#[test]
fn a_part_keeps_its_fields_in_order_and_needs_a_type() {
    let json = br#"{"role":"user","content":[{"image_url":{"url":"data:x"},"type":"image_url","detail":"low"}]}"#;
    let message: Message = serde_json::from_slice(json).unwrap();
    let Some(Content::Parts(parts)) = message.content else {
        panic!("parts expected");
    };
    assert_eq!(parts[0].kind, "image_url");
    let keys: Vec<_> = parts[0].fields.keys().map(String::as_str).collect();
    assert_eq!(keys, ["image_url", "detail"]);
    let back = serde_json::to_string(&parts[0]).unwrap();
    assert_eq!(
        back,
        r#"{"type":"image_url","image_url":{"url":"data:x"},"detail":"low"}"#
    );

    let body = br#"{"model":"m","messages":[{"role":"user","content":[{"text":"hi"}]}]}"#;
    let error = decode(body).unwrap_err().to_string();
    assert!(
        error.contains("messages[0].content[0]") && error.contains("`type`"),
        "{error}"
    );
    let body =
        br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","type":"text"}]}]}"#;
    let error = decode(body).unwrap_err().to_string();
    assert!(
        error.contains("`messages[0].content[0].type` is given more than once"),
        "{error}"
    );
}

#[test]
fn repeated_keys_mixed_parts_and_odd_tool_calls_are_refused() {
    let gps_first = r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/jpeg;base64,R1BT","url":"data:image/jpeg;base64,Q0xFQU4="}}]}]}"#;
    assert_eq!(
        param_of(gps_first).as_deref(),
        Some("messages[0].content[0].image_url.url")
    );
    let twice =
        r#"{"model":"qwen-plus","messages":[{"role":"user","content":"x"}],"model":"qwen-max"}"#;
    assert_eq!(param_of(twice).as_deref(), Some("model"));
    let mixed = r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"x","image_url":{"url":"data:x"}}]}]}"#;
    assert_eq!(
        param_of(mixed).as_deref(),
        Some("messages[0].content[0].image_url")
    );
    let calls = r#"{"model":"m","messages":[{"role":"assistant","content":null,"tool_calls":1}]}"#;
    assert_eq!(param_of(calls).as_deref(), Some("messages[0].tool_calls"));
}
