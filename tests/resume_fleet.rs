//! Resumable streams across the gateway's paths and a fleet: ids on every event of translated
//! streams (either way between the dialects) and of cache replays, and a reconnect that lands
//! on another gateway than the one holding its stream.

mod common;

use common::resumable::{
    CHAT, NATIVE, cut_after, events_of, full_id, id_of, metric, rest_of, resume,
};
use common::{CLIENT_KEY, Gateway, Sim, UPSTREAMS, config_for, error_of, json_of};
use serde_json::{Value, json};

/// A whole stream's events, comments left out; `native` asks in DashScope's dialect.
async fn whole_stream(gw: &Gateway, path: &str, body: &Value, native: bool) -> Vec<String> {
    let mut request = gw
        .http
        .post(gw.url(path))
        .bearer_auth(CLIENT_KEY)
        .header("x-dashgate-cache", "on")
        .json(body);
    if native {
        request = request.header("X-DashScope-SSE", "enable");
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status().as_u16(), 200);
    let events = events_of(&response.text().await.unwrap_or_default());
    // A cache replay of a native stream may be one frame with the whole text.
    assert!(!events.is_empty());
    events
}

/// Every event has an id of one stream, numbered 1, 2, 3, ... in order; that stream's id.
fn numbered_from_one(events: &[String]) -> String {
    let (stream, _) = id_of(&events[0]);
    for (i, event) in events.iter().enumerate() {
        assert_eq!(id_of(event), (stream.clone(), i as u64 + 1), "{events:?}");
    }
    stream
}

fn cache_and_upstreams() -> String {
    format!("[cache]\nenabled = true\n{UPSTREAMS}")
}

#[tokio::test]
async fn openai_streams_from_a_native_upstream_and_from_the_cache_carry_ids() {
    let sim = Sim::start().await;
    let gw = Gateway::start(&config_for(&sim, "", &cache_and_upstreams())).await;
    // Seeded, at temperature 0: a request the cache keeps.
    let body = json!({"model": "via-native", "seed": 7, "temperature": 0, "stream": true,
        "messages": [{"role": "user", "content": "translated"}]});
    let upstreamed = numbered_from_one(&whole_stream(&gw, CHAT, &body, false).await);
    let replayed = numbered_from_one(&whole_stream(&gw, CHAT, &body, false).await);
    assert_ne!(upstreamed, replayed, "every stream has its own id");
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
async fn native_streams_from_an_openai_upstream_and_from_the_cache_carry_ids() {
    let sim = Sim::start().await;
    let gw = Gateway::start(&config_for(&sim, "", &cache_and_upstreams())).await;
    let body = json!({"model": "via-openai", "input": {"prompt": "translated the other way"},
        "parameters": {"incremental_output": true, "seed": 7, "temperature": 0}});
    let events = whole_stream(&gw, NATIVE, &body, true).await;
    // DashScope's framing: the `id:` line (no space) first, then `event:result`.
    for event in &events {
        assert!(
            event.starts_with("id:dg.") && event.contains("\nevent:result\n"),
            "{event}"
        );
    }
    assert!(events.len() >= 2, "{events:?}");
    let upstreamed = numbered_from_one(&events);
    let replayed = whole_stream(&gw, NATIVE, &body, true).await;
    assert!(replayed[0].starts_with("id:dg."), "{replayed:?}");
    let replayed = numbered_from_one(&replayed);
    assert_ne!(upstreamed, replayed);
    assert_eq!(sim.requests(), 1, "the second came from the cache");
    let body = json!({"model": "via-openai", "input": {"prompt": "cut the other way"},
        "parameters": {"incremental_output": true, "sim": {"chunks": 20, "chunk_delay_ms": 30}}});
    let first = cut_after(&gw, NATIVE, &body, true, 3).await;
    let rest = rest_of(resume(&gw, NATIVE, CLIENT_KEY, &body, &full_id(&first[2])).await).await;
    for (i, event) in rest.iter().enumerate() {
        assert_eq!(id_of(event).1, 4 + i as u64, "{rest:?}");
    }
    let last = rest.last().map_or("", String::as_str);
    assert!(last.contains(r#""finish_reason":"stop""#), "{last}");
    assert_eq!(sim.requests(), 2);
}

/// Two gateways behind one (imagined) load balancer: the id names the one holding the stream;
/// a reconnect sent to the other is told so, in its dialect, and spends no upstream call.
#[tokio::test]
async fn a_reconnect_on_another_gateway_is_told_which_gateway_holds_the_stream() {
    let sim = Sim::start().await;
    let tagged = |tag: &str| config_for(&sim, "", &format!("[resume]\ninstance = \"{tag}\"\n"));
    let gw_a = Gateway::start(&tagged("gw-a")).await;
    let gw_b = Gateway::start(&tagged("gw-b")).await;
    let mut body = json!({"model": "qwen-plus", "stream": true,
        "messages": [{"role": "user", "content": "held by a"}]});
    body["sim"] = json!({"chunks": 20, "chunk_delay_ms": 30});
    let first = cut_after(&gw_a, CHAT, &body, false, 2).await;
    let last = full_id(&first[1]);
    assert!(last.starts_with("gw-a."), "{last}");
    let wrong = resume(&gw_b, CHAT, CLIENT_KEY, &body, &last).await;
    assert_eq!(wrong.status().as_u16(), 409);
    let wrong = json_of(wrong).await;
    assert_eq!(error_of(&wrong).0, "stream_on_other_gateway");
    assert_eq!(error_of(&wrong).1, Some("Last-Event-ID"));
    let message = wrong["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("`gw-a`") && message.contains("`gw-b`"),
        "{message}"
    );
    let native = json!({"model": "qwen-plus", "input": {"prompt": "x"}});
    let wrong = resume(&gw_b, NATIVE, CLIENT_KEY, &native, &last).await;
    assert_eq!(wrong.status().as_u16(), 409);
    assert_eq!(json_of(wrong).await["code"], "StreamOnOtherGateway");
    let elsewhere = r#"dashgate_resume_refused_total{reason="elsewhere"}"#;
    assert_eq!(metric(&gw_b, elsewhere).await, 2.0);
    // Routed by its tag, the reconnect gets the rest of the one upstream call.
    let rest = rest_of(resume(&gw_a, CHAT, CLIENT_KEY, &body, &last).await).await;
    assert_eq!(id_of(&rest[0]).1, 3);
    assert!(
        rest.last().is_some_and(|e| e.ends_with("data: [DONE]")),
        "{rest:?}"
    );
    assert_eq!(sim.requests(), 1);
}
