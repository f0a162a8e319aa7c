//! A batch's input, checked whole before anything runs: every line
//! `{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}`, custom ids unique,
//! each body a chat request the gateway would take. The first bad line is the answer, by number.

use std::collections::HashMap;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use crate::error::GatewayError;

/// The only endpoint batches run (DashScope's batch API takes the same).
pub const ENDPOINT: &str = "/v1/chat/completions";

/// Longest custom id, as OpenAI bounds it.
const MAX_CUSTOM_ID: usize = 512;

/// One request of a batch.
#[derive(Debug, Clone)]
pub struct Line {
    /// 1-based, counting blank lines too, so it matches the client's editor.
    pub number: usize,
    pub custom_id: String,
    pub model: String,
    /// The request body, as JSON.
    pub body: Bytes,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    custom_id: Option<Value>,
    method: Option<Value>,
    url: Option<Value>,
    body: Option<Value>,
}

fn bad(number: usize, message: impl std::fmt::Display) -> GatewayError {
    GatewayError::param("input_file_id", format!("line {number}: {message}"))
}

/// The lines of a batch file, or a 400 naming the first bad one.
pub fn lines(bytes: &[u8], max_lines: usize) -> Result<Vec<Line>, GatewayError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| GatewayError::param("input_file_id", "the file is not UTF-8 text"))?;
    let mut out = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        if raw.trim().is_empty() {
            continue;
        }
        if out.len() == max_lines {
            return Err(bad(
                number,
                format!("a batch may have at most {max_lines} requests"),
            ));
        }
        let line = line(number, raw)?;
        if let Some(first) = seen.insert(line.custom_id.clone(), number) {
            return Err(bad(
                number,
                format!(
                    "custom_id `{}` is used already on line {first}; each must be unique",
                    line.custom_id
                ),
            ));
        }
        out.push(line);
    }
    if out.is_empty() {
        return Err(GatewayError::param(
            "input_file_id",
            "the file holds no requests",
        ));
    }
    Ok(out)
}

fn line(number: usize, raw: &str) -> Result<Line, GatewayError> {
    let parsed: Raw =
        serde_json::from_str(raw).map_err(|e| bad(number, format!("not a batch request: {e}")))?;
    let custom_id = match parsed.custom_id {
        Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_CUSTOM_ID => id,
        Some(Value::String(_)) => {
            return Err(bad(
                number,
                format!("custom_id must have 1 to {MAX_CUSTOM_ID} characters"),
            ));
        }
        Some(_) => return Err(bad(number, "custom_id must be a string")),
        None => return Err(bad(number, "custom_id is required")),
    };
    match parsed.method.as_ref().and_then(Value::as_str) {
        Some("POST") => {}
        _ => return Err(bad(number, "method must be \"POST\"")),
    }
    match parsed.url.as_ref().and_then(Value::as_str) {
        Some(ENDPOINT) => {}
        _ => return Err(bad(number, format!("url must be \"{ENDPOINT}\""))),
    }
    let body = match parsed.body {
        Some(body @ Value::Object(_)) => body,
        Some(_) => return Err(bad(number, "body must be an object")),
        None => return Err(bad(number, "body is required")),
    };
    let model = match body.get("model") {
        Some(Value::String(model)) if !model.trim().is_empty() => model.clone(),
        _ => return Err(bad(number, "body.model is required")),
    };
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err(bad(
            number,
            "body.stream: a batch request is answered whole",
        ));
    }
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    // The chat checks every request meets, so a line cannot fail later for what was plain now.
    crate::chat::decode(&bytes).map_err(|e| match e.param_name() {
        Some(param) => bad(number, format!("body.{param}: {e}")),
        None => bad(number, format!("body: {e}")),
    })?;
    Ok(Line {
        number,
        custom_id,
        model,
        body: bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: &str) -> String {
        format!(
            r#"{{"custom_id":"{id}","method":"POST","url":"/v1/chat/completions","body":{{"model":"qwen-plus","messages":[{{"role":"user","content":"hi"}}]}}}}"#
        )
    }

    fn message(e: GatewayError) -> String {
        e.to_string()
    }

    #[test]
    fn good_lines_are_numbered_as_in_the_file() {
        let text = format!("{}\n\n{}\n", request("a"), request("b"));
        let lines = lines(text.as_bytes(), 10).unwrap_or_default();
        let numbers: Vec<usize> = lines.iter().map(|l| l.number).collect();
        assert_eq!(numbers, [1, 3]);
        assert_eq!(lines[1].custom_id, "b");
    }

    #[test]
    fn the_first_bad_line_is_named() {
        let text = format!(
            "{}\n{}\n{{\"custom_id\":\"c\"}}\n",
            request("a"),
            request("b")
        );
        let e = lines(text.as_bytes(), 10).map(|_| ()).map_err(message);
        assert_eq!(e, Err("line 3: method must be \"POST\"".into()));
        let text = format!("{}\n{}\n", request("a"), request("a"));
        let e = lines(text.as_bytes(), 10).map(|_| ()).map_err(message);
        let e = e.err().unwrap_or_default();
        assert!(
            e.starts_with("line 2: custom_id `a` is used already on line 1"),
            "{e}"
        );
        let e = lines(b"{not json\n", 10).map(|_| ()).map_err(message);
        assert!(
            e.err()
                .unwrap_or_default()
                .starts_with("line 1: not a batch request")
        );
    }

    #[test]
    fn a_body_the_gateway_would_refuse_is_refused_up_front() {
        let text = request("a").replace(
            r#""messages":[{"role":"user","content":"hi"}]"#,
            r#""messages":[]"#,
        );
        let e = lines(text.as_bytes(), 10).map(|_| ()).map_err(message);
        assert!(e.err().unwrap_or_default().starts_with("line 1: body"));
    }

    #[test]
    fn the_line_count_is_bounded() {
        let text = format!("{}\n{}\n{}\n", request("a"), request("b"), request("c"));
        let e = lines(text.as_bytes(), 2).map(|_| ()).map_err(message);
        assert_eq!(e, Err("line 3: a batch may have at most 2 requests".into()));
    }
}
