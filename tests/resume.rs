//! Resumable streams: every event carries an id; a client cut off mid-stream reconnects with
//! `Last-Event-ID` and gets the rest of the same upstream call: one call, one usage record.

mod common;

use std::time::Duration;

use common::resumable::{
    CHAT, NATIVE, cut_after, events_of, full_id, glass3, id_of, metric, openai_text, rest_of,
    resume, slow_chat, store_of,
};
use common::{CLIENT_KEY, Gateway, Sim, ask, config_for, error_of, json_of, records};
use serde_json::json;

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
    // A request after it makes the second record: the reconnect made none in between.
    let marker = gw
        .chat(&ask("qwen-plus", "marker"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(marker.status().as_u16(), 200);
    let found = records(&store_of(&gw).await, &glass3(), 2).await;
    assert!(found.iter().any(|r| !r.stream), "{found:#?}");
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
    let native = resume(&gw, NATIVE, CLIENT_KEY, &native, "dg.00000000000000ff.2").await;
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

/// Two streams held: one small, stalled upstream (all it will send is buffered), then one
/// that grows past `max_total_bytes` and is dropped, while the first stays resumable.
#[tokio::test]
async fn the_total_buffer_bound_drops_the_stream_that_passes_it() {
    let sim = Sim::start().await;
    let extra = "[resume]\nmax_total_bytes = 2500\n";
    let gw = Gateway::start(&config_for(&sim, "", extra)).await;
    let mut small = ask("qwen-plus", "small and stalled");
    small["stream"] = json!(true);
    small["sim"] = json!({"fault": "stall", "after": 3});
    // All three events it will ever send have been read, so they are all buffered.
    let held = cut_after(&gw, CHAT, &small, false, 3).await;
    let mut big = slow_chat("a long answer that passes the total");
    big["sim"] = json!({"chunks": 60, "chunk_delay_ms": 20});
    let first = cut_after(&gw, CHAT, &big, false, 1).await;
    let closed = tokio::time::timeout(
        Duration::from_secs(20),
        sim.stats.stream_closed_early.notified(),
    )
    .await;
    assert!(closed.is_ok(), "the upstream call went on past the total");
    let late = resume(&gw, CHAT, CLIENT_KEY, &big, &full_id(&first[0])).await;
    assert_eq!(late.status().as_u16(), 409);
    let dropped = r#"dashgate_resume_streams_dropped_total{reason="total_bytes"}"#;
    assert_eq!(metric(&gw, dropped).await, 1.0);
    // The first stream is still there: its third event again, after the second.
    let mut again = resume(&gw, CHAT, CLIENT_KEY, &small, &full_id(&held[1])).await;
    assert_eq!(again.status().as_u16(), 200);
    let mut text = String::new();
    while events_of(&text).is_empty() {
        let chunk = tokio::time::timeout(Duration::from_secs(20), again.chunk()).await;
        match chunk {
            Ok(Ok(Some(bytes))) => text.push_str(&String::from_utf8_lossy(&bytes)),
            other => panic!("no event: {other:?}"),
        }
    }
    assert_eq!(events_of(&text)[0], held[2]);
    assert_eq!(sim.requests(), 2);
}

/// With `max_streams` held, the next stream is served but not kept: its hang-up cancels it.
#[tokio::test]
async fn a_stream_beyond_max_streams_is_served_but_not_resumable() {
    let sim = Sim::start().await;
    let gw = Gateway::start(&config_for(&sim, "", "[resume]\nmax_streams = 1\n")).await;
    let mut held = ask("qwen-plus", "the one held");
    held["stream"] = json!(true);
    held["sim"] = json!({"fault": "stall", "after": 2});
    cut_after(&gw, CHAT, &held, false, 2).await;
    let body = slow_chat("one too many");
    let first = cut_after(&gw, CHAT, &body, false, 2).await;
    assert_eq!(id_of(&first[1]).1, 2, "ids on it all the same");
    let closed = tokio::time::timeout(
        Duration::from_secs(20),
        sim.stats.stream_closed_early.notified(),
    )
    .await;
    assert!(
        closed.is_ok(),
        "the stream beyond the bound outlived its client"
    );
    let late = resume(&gw, CHAT, CLIENT_KEY, &body, &full_id(&first[1])).await;
    assert_eq!(late.status().as_u16(), 409);
    let dropped = r#"dashgate_resume_streams_dropped_total{reason="streams"}"#;
    assert_eq!(metric(&gw, dropped).await, 1.0);
    assert_eq!(metric(&gw, "dashgate_resume_streams_live").await, 1.0);
}
