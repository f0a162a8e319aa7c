//! Cutting a stream over a raw socket and taking it up again with `Last-Event-ID`, for the
//! resumable-stream tests (docs/fleet.md, "Resuming a stream").

use std::time::Duration;

use dashgate::store::UsageFilter;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{CLIENT_KEY, Gateway, ask, open_store};

pub const NATIVE: &str = "/api/v1/services/aigc/text-generation/generation";
pub const CHAT: &str = "/compatible-mode/v1/chat/completions";

/// A stream request over a raw socket: sends it, reads `count` events (comments skipped) and
/// hangs up. The events, and the socket is gone.
pub async fn cut_after(
    gw: &Gateway,
    path: &str,
    body: &Value,
    native: bool,
    count: usize,
) -> Vec<String> {
    let mut socket = tokio::net::TcpStream::connect(gw.addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let body = serde_json::to_vec(body).unwrap_or_default();
    let sse = if native {
        "X-DashScope-SSE: enable\r\n"
    } else {
        ""
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {CLIENT_KEY}\r\n\
         Content-Type: application/json\r\n{sse}Content-Length: {}\r\n\r\n",
        body.len()
    );
    socket
        .write_all(head.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    socket
        .write_all(&body)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let events = events_of(&decoded_body(&raw));
        if events.len() >= count {
            drop(socket);
            return events.into_iter().take(count).collect();
        }
        let read = tokio::time::timeout(Duration::from_secs(20), socket.read(&mut buf)).await;
        match read {
            Ok(Ok(n)) if n > 0 => raw.extend_from_slice(&buf[..n]),
            other => panic!(
                "stream ended early: {other:?}: {}",
                String::from_utf8_lossy(&raw)
            ),
        }
    }
}

/// The body so far of a chunked HTTP/1.1 response.
pub fn decoded_body(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let Some((head, mut rest)) = text.split_once("\r\n\r\n") else {
        return String::new();
    };
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].strip_prefix("\r\n").unwrap_or("");
    }
    body
}

/// The complete events of an SSE text, comments left out.
pub fn events_of(text: &str) -> Vec<String> {
    let mut events: Vec<String> = text.split("\n\n").map(str::to_string).collect();
    events.pop(); // what follows the last blank line is not complete
    events.retain(|e| e.lines().any(|l| !l.starts_with(':') && !l.is_empty()));
    events
}

/// An event's id, split into its stream part and its number.
pub fn id_of(event: &str) -> (String, u64) {
    let id = event
        .lines()
        .find_map(|l| l.strip_prefix("id:"))
        .unwrap_or_else(|| panic!("no id: {event}"))
        .trim();
    let (stream, seq) = id.rsplit_once('.').unwrap_or_else(|| panic!("{id}"));
    (
        stream.to_string(),
        seq.parse().unwrap_or_else(|_| panic!("{id}")),
    )
}

pub fn full_id(event: &str) -> String {
    let (stream, seq) = id_of(event);
    format!("{stream}.{seq}")
}

/// The resumed rest of a stream.
pub async fn resume(
    gw: &Gateway,
    path: &str,
    key: &str,
    body: &Value,
    last: &str,
) -> reqwest::Response {
    gw.http
        .post(gw.url(path))
        .bearer_auth(key)
        .header("X-DashScope-SSE", "enable")
        .header("Last-Event-ID", last)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

pub async fn rest_of(response: reqwest::Response) -> Vec<String> {
    assert_eq!(response.status().as_u16(), 200);
    events_of(&response.text().await.unwrap_or_default())
}

/// The text of OpenAI chunks' deltas.
pub fn openai_text(events: &[String]) -> String {
    let data = |e: &String| {
        e.lines()
            .find_map(|l| l.strip_prefix("data: "))
            .map(str::to_string)
    };
    events
        .iter()
        .filter_map(data)
        .filter_map(|d| serde_json::from_str::<Value>(&d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

pub fn slow_chat(text: &str) -> Value {
    let mut body = ask("qwen-plus", text);
    body["stream"] = json!(true);
    body["sim"] = json!({"chunks": 30, "chunk_delay_ms": 30});
    body
}

pub fn glass3() -> UsageFilter {
    UsageFilter {
        key: Some("glass3".into()),
        ..UsageFilter::default()
    }
}

pub async fn store_of(gw: &Gateway) -> dashgate::store::Store {
    open_store(&format!("sqlite://{}/dashgate.db", gw.dir.path().display())).await
}

pub async fn metric(gw: &Gateway, name: &str) -> f64 {
    let text = gw
        .http
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let text = text.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
