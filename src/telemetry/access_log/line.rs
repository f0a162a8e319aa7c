//! One access log line: its fields in order, written as JSON (derived) or as `key=value`
//! text (by hand, from the same fields).

use std::fmt::Write as _;

/// One access log line, in its fields' order. Written straight from borrowed fields: a
/// `json!` map here cost a map insert per key on every request.
#[derive(serde::Serialize)]
pub(super) struct Line<'a> {
    pub(super) ts: String,
    pub(super) request_id: &'a str,
    pub(super) trace_id: Option<&'a str>,
    pub(super) method: &'a str,
    pub(super) path: &'a str,
    pub(super) route: &'static str,
    pub(super) key: Option<&'a str>,
    pub(super) model: Option<&'a str>,
    pub(super) upstream: Option<&'a str>,
    pub(super) status: u16,
    pub(super) stream: Option<bool>,
    pub(super) error: Option<&'a str>,
    pub(super) bytes_in: Option<u64>,
    pub(super) bytes_out: Option<u64>,
    pub(super) input_tokens: Option<u64>,
    pub(super) output_tokens: Option<u64>,
    pub(super) total_tokens: Option<u64>,
    pub(super) tokens_estimated: Option<bool>,
    pub(super) latency_ms: f64,
    pub(super) ttfb_ms: Option<f64>,
    pub(super) ttft_ms: Option<u64>,
}

/// One value of a text line.
enum Text<'a> {
    Str(&'a str),
    Int(u64),
    Float(f64),
    Bool(bool),
}

impl Line<'_> {
    /// The fields as `key=value` pairs (logfmt), in the JSON line's order; absent values are
    /// left out, strings with spaces or quotes are quoted as JSON strings.
    pub(super) fn text(&self) -> String {
        use Text::{Bool, Float, Int, Str};
        let pairs: [(&str, Option<Text>); 21] = [
            ("ts", Some(Str(&self.ts))),
            ("request_id", Some(Str(self.request_id))),
            ("trace_id", self.trace_id.map(Str)),
            ("method", Some(Str(self.method))),
            ("path", Some(Str(self.path))),
            ("route", Some(Str(self.route))),
            ("key", self.key.map(Str)),
            ("model", self.model.map(Str)),
            ("upstream", self.upstream.map(Str)),
            ("status", Some(Int(u64::from(self.status)))),
            ("stream", self.stream.map(Bool)),
            ("error", self.error.map(Str)),
            ("bytes_in", self.bytes_in.map(Int)),
            ("bytes_out", self.bytes_out.map(Int)),
            ("input_tokens", self.input_tokens.map(Int)),
            ("output_tokens", self.output_tokens.map(Int)),
            ("total_tokens", self.total_tokens.map(Int)),
            ("tokens_estimated", self.tokens_estimated.map(Bool)),
            ("latency_ms", Some(Float(self.latency_ms))),
            ("ttfb_ms", self.ttfb_ms.map(Float)),
            ("ttft_ms", self.ttft_ms.map(Int)),
        ];
        let mut line = String::with_capacity(320);
        for (key, value) in pairs {
            let Some(value) = value else { continue };
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(key);
            line.push('=');
            let _ = match value {
                Str(s) if !s.is_empty() && !s.contains([' ', '"', '=', '\\']) => {
                    line.push_str(s);
                    Ok(())
                }
                Str(s) => write!(line, "{}", serde_json::Value::from(s)),
                Int(n) => write!(line, "{n}"),
                // As a JSON number is written (1.0, not 1); NaN cannot occur (durations).
                Float(f) => match serde_json::Number::from_f64(f) {
                    Some(n) => write!(line, "{n}"),
                    None => write!(line, "null"),
                },
                Bool(b) => write!(line, "{b}"),
            };
        }
        line.push('\n');
        line
    }
}
