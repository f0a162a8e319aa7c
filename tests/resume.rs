//! Resumable streams: every event carries an id; a client cut off mid-stream reconnects with
//! `Last-Event-ID` and gets the rest of the same upstream call: one call, one usage record.

mod common;

use std::time::Duration;

use common::{CLIENT_KEY, Gateway, Sim, ask, config_for, error_of, json_of, open_store, records};
use dashgate::store::UsageFilter;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NATIVE: &str = "/api/v1/services/aigc/text-generation/generation";
const CHAT: &str = "/compatible-mode/v1/chat/completions";

/// A stream request over a raw socket: sends it, reads `count` events (comments skipped) and
/// hangs up. The events, and the socket is gone.
async fn cut_after(
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
fn decoded_body(raw: &[u8]) -> String {
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
fn events_of(text: &str) -> Vec<String> {
    let mut events: Vec<String> = text.split("\n\n").map(str::to_string).collect();
    events.pop(); // what follows the last blank line is not complete
    events.retain(|e| e.lines().any(|l| !l.starts_with(':') && !l.is_empty()));
    events
}

/// An event's id, split into its stream part and its number.
fn id_of(event: &str) -> (String, u64) {
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

fn full_id(event: &str) -> String {
    let (stream, seq) = id_of(event);
    format!("{stream}.{seq}")
}

/// The resumed rest of a stream.
async fn resume(
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

async fn rest_of(response: reqwest::Response) -> Vec<String> {
    assert_eq!(response.status().as_u16(), 200);
    events_of(&response.text().await.unwrap_or_default())
}

/// The text of OpenAI chunks' deltas.
fn openai_text(events: &[String]) -> String {
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

fn slow_chat(text: &str) -> Value {
    let mut body = ask("qwen-plus", text);
    body["stream"] = json!(true);
    body["sim"] = json!({"chunks": 30, "chunk_delay_ms": 30});
    body
}

fn glass3() -> UsageFilter {
    UsageFilter {
        key: Some("glass3".into()),
        ..UsageFilter::default()
    }
}

async fn store_of(gw: &Gateway) -> dashgate::store::Store {
    open_store(&format!("sqlite://{}/dashgate.db", gw.dir.path().display())).await
}

async fn metric(gw: &Gateway, name: &str) -> f64 {
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

#[tokio::test]
async fn an_openai_stream_cut_mid_way_resumes_with_the_rest_of_the_same_call() {
    let sim = Sim::start().await;
    let gw = Gateway::before(&sim).await;
    let body = slow_chat("a long answer to resume");
    let first = cut_after(&gw, CHAT, &body, false, 4).await;
    let (stream, _) = id_of(&first[0]);
    let seqs: Vec<u64> = first.iter().map(|e| id_of(e).1).collect();
    assert_eq!(seqs, [1, 2, 3, 4], "{first:?}");
    let rest = rest_of(resume(&gw, CHAT, CLIENT_KEY, &body, &full_id(&first[3])).await).await;
    for (i, event) in rest.iter().enumerate() {
        assert_eq!(id_of(event), (stream.clone(), 5 + i as u64), "{rest:?}");
    }
    assert!(
        rest.last().is_some_and(|e| e.ends_with("data: [DONE]")),
        "{rest:?}"
    );
    assert_eq!(sim.requests(), 1, "a second upstream call");
    let store = store_of(&gw).await;
    let found = records(&store, &glass3(), 1).await;
    assert!(
        found[0].stream && !found[0].estimated && found[0].total_tokens > 0,
        "{found:#?}"
    );
    // What the two parts make is the answer a whole stream gives.
    let whole = gw
        .chat(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let whole = events_of(&whole.text().await.unwrap_or_default());
    let mut parts = first.clone();
    parts.extend(rest);
    assert_eq!(openai_text(&parts), openai_text(&whole));
    assert!(!openai_text(&whole).is_empty());
    records(&store, &glass3(), 2).await;
    assert_eq!(metric(&gw, "dashgate_resume_streams_resumed").await, 1.0);
}

#[tokio::test]
async fn a_native_stream_cut_mid_way_resumes_with_native_ids() {
    let sim = Sim::start().await;
    let gw = Gateway::before(&sim).await;
    let body = json!({"model": "qwen-plus", "input": {"prompt": "a long native answer"},
        "parameters": {"incremental_output": true, "sim": {"chunks": 30, "chunk_delay_ms": 30}}});
    let first = cut_after(&gw, NATIVE, &body, true, 3).await;
    // DashScope's framing, its own `id:` line (no space) in its place, numbered from 1.
    assert!(
        first[0].starts_with("id:") && !first[0].starts_with("id: "),
        "{}",
        first[0]
    );
    assert!(first[0].contains("\nevent:result\n"), "{}", first[0]);
    let (stream, _) = id_of(&first[0]);
    let rest = rest_of(resume(&gw, NATIVE, CLIENT_KEY, &body, &full_id(&first[2])).await).await;
    assert!(!rest.is_empty());
    for (i, event) in rest.iter().enumerate() {
        assert_eq!(id_of(event), (stream.clone(), 4 + i as u64), "{rest:?}");
    }
    let last = rest.last().map_or("", String::as_str);
    assert!(last.contains(r#""finish_reason":"stop""#), "{last}");
    assert_eq!(sim.requests(), 1, "a second upstream call");
    let found = records(&store_of(&gw).await, &glass3(), 1).await;
    assert!(
        found[0].dialect == "native" && !found[0].estimated,
        "{found:#?}"
    );
}

#[tokio::test]
async fn another_key_or_another_body_cannot_resume_a_stream() {
    let sim = Sim::start().await;
    let gw = Gateway::before(&sim).await;
    let body = slow_chat("mine only");
    let first = cut_after(&gw, CHAT, &body, false, 2).await;
    let last = full_id(&first[1]);
    let stranger = resume(&gw, CHAT, "sk-limited-test", &body, &last).await;
    assert_eq!(stranger.status().as_u16(), 409);
    let refusal = json_of(stranger).await;
    assert_eq!(error_of(&refusal).0, "stream_not_resumable");
    assert_eq!(error_of(&refusal).1, Some("Last-Event-ID"));
    let other_body = resume(&gw, CHAT, CLIENT_KEY, &slow_chat("not mine"), &last).await;
    assert_eq!(other_body.status().as_u16(), 409);
    let unknown = resume(&gw, CHAT, CLIENT_KEY, &body, "dg.00000000000000ff.2").await;
    assert_eq!(unknown.status().as_u16(), 409);
    let native = json!({"model": "qwen-plus", "input": {"prompt": "x"}});
    let native = resume(
        &gw,
        NATIVE,
        CLIENT_KEY,
        &native,
        "elsewhere.00000000000000ff.2",
    )
    .await;
    assert_eq!(native.status().as_u16(), 409);
    assert_eq!(json_of(native).await["code"], "StreamNotResumable");
    // None of that spent an upstream call; the owner still can resume.
    let rest = rest_of(resume(&gw, CHAT, CLIENT_KEY, &body, &last).await).await;
    assert!(
        rest.last().is_some_and(|e| e.ends_with("data: [DONE]")),
        "{rest:?}"
    );
    assert_eq!(sim.requests(), 1);
}

#[tokio::test]
async fn the_grace_period_ending_cancels_the_upstream_call() {
    let sim = Sim::start().await;
    let gw = Gateway::start(&config_for(&sim, "", "[resume]\ngrace_seconds = 1\n")).await;
    let mut body = ask("qwen-plus", "never finishes");
    body["stream"] = json!(true);
    body["sim"] = json!({"fault": "stall", "after": 2});
    let first = cut_after(&gw, CHAT, &body, false, 2).await;
    let closed = tokio::time::timeout(
        Duration::from_secs(20),
        sim.stats.stream_closed_early.notified(),
    )
    .await;
    assert!(
        closed.is_ok(),
        "the upstream call outlived the grace period"
    );
    let late = resume(&gw, CHAT, CLIENT_KEY, &body, &full_id(&first[1])).await;
    assert_eq!(late.status().as_u16(), 409);
    assert_eq!(metric(&gw, "dashgate_resume_streams_expired").await, 1.0);
    assert_eq!(metric(&gw, "dashgate_resume_buffered_bytes").await, 0.0);
}

#[tokio::test]
async fn a_stream_over_its_buffer_bound_is_dropped_and_its_upstream_cancelled() {
    let sim = Sim::start().await;
    let extra = "[resume]\nmax_stream_bytes = 1500\n";
    let gw = Gateway::start(&config_for(&sim, "", extra)).await;
    let mut body = slow_chat("a long answer that will not fit");
    body["sim"] = json!({"chunks": 60, "chunk_delay_ms": 20});
    let first = cut_after(&gw, CHAT, &body, false, 1).await;
    let closed = tokio::time::timeout(
        Duration::from_secs(20),
        sim.stats.stream_closed_early.notified(),
    )
    .await;
    assert!(closed.is_ok(), "the upstream call went on past the bound");
    let late = resume(&gw, CHAT, CLIENT_KEY, &body, &full_id(&first[0])).await;
    assert_eq!(late.status().as_u16(), 409);
    assert!(metric(&gw, "dashgate_resume_streams_dropped").await >= 1.0);
}

#[tokio::test]
async fn translated_and_cached_streams_carry_ids_too() {
    let sim = Sim::start().await;
    let extra = "[cache]\nenabled = true\n\n[[upstreams]]\nname = \"native\"\nprovider = \"dashscope\"\ndialect = \"native\"\nbase_url = \"{SIM}\"\napi_key = \"sk-upstream-test\"\nmodels = [\"via-native\"]\n";
    let gw = Gateway::start(&config_for(&sim, "", extra)).await;
    // Seeded, at temperature 0: a request the cache keeps.
    let body = json!({"model": "via-native", "seed": 7, "temperature": 0, "stream": true,
        "messages": [{"role": "user", "content": "translated"}]});
    let mut ids = Vec::new();
    for _ in 0..2 {
        let response = gw
            .chat(&body)
            .header("x-dashgate-cache", "on")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let events = events_of(&response.text().await.unwrap_or_default());
        assert!(events.len() >= 2, "{events:?}");
        let seqs: Vec<u64> = events.iter().map(|e| id_of(e).1).collect();
        assert_eq!(
            seqs,
            (1..=events.len() as u64).collect::<Vec<_>>(),
            "{events:?}"
        );
        ids.push(id_of(&events[0]).0);
    }
    assert_ne!(ids[0], ids[1], "every stream has its own id");
    assert_eq!(sim.requests(), 1, "the second came from the cache");
    // A translated stream resumes like any other.
    let body = json!({"model": "via-native", "messages": [{"role": "user", "content": "cut"}],
        "stream": true, "sim": {"chunks": 20, "chunk_delay_ms": 30}});
    let first = cut_after(&gw, CHAT, &body, false, 3).await;
    let rest = rest_of(resume(&gw, CHAT, CLIENT_KEY, &body, &full_id(&first[2])).await).await;
    assert_eq!(id_of(&rest[0]).1, 4);
    assert!(
        rest.last().is_some_and(|e| e.ends_with("data: [DONE]")),
        "{rest:?}"
    );
    assert_eq!(sim.requests(), 2);
}

#[tokio::test]
async fn with_no_grace_period_a_hang_up_cancels_at_once_and_ids_stay() {
    let sim = Sim::start().await;
    let gw = Gateway::start(&config_for(&sim, "", "[resume]\ngrace_seconds = 0\n")).await;
    let body = slow_chat("no resuming");
    let first = cut_after(&gw, CHAT, &body, false, 2).await;
    assert_eq!(id_of(&first[1]).1, 2);
    let closed = tokio::time::timeout(
        Duration::from_secs(20),
        sim.stats.stream_closed_early.notified(),
    )
    .await;
    assert!(
        closed.is_ok(),
        "the upstream stream stayed open after the client left"
    );
    let late = resume(&gw, CHAT, CLIENT_KEY, &body, &full_id(&first[1])).await;
    assert_eq!(late.status().as_u16(), 409);
}
