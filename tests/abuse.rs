//! One client must not hurt the others: circuit isolation per (upstream, model), limits that
//! count only admitted requests and hold under concurrency.

mod common;

use common::*;
use serde_json::json;

const RETRY: &str = "[retry]\nattempts = 3\nbackoff_ms = 1\nmax_backoff_ms = 2\n\n[circuit]\nfailure_threshold = 2\nopen_ms = 600000\n";

#[tokio::test]
async fn a_model_that_always_fails_never_takes_a_healthy_model_on_the_same_upstream_down() {
    let sim = Sim::start().await;
    let gw = Gateway::start(&config_for(&sim, "", RETRY)).await;
    for fault in ["500", "503"] {
        for round in 0..4 {
            let mut broken = ask("qwen-max", "x");
            broken["sim"] = json!({"fault": fault});
            let status = gw
                .chat(&broken)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .ok();
            assert!(
                status.is_some_and(|s| s >= 500),
                "{fault} round {round}: {status:?}"
            );
            let healthy = gw.chat(&ask("qwen-plus", "x")).send().await;
            let status = healthy.as_ref().map(|r| r.status().as_u16()).ok();
            assert_eq!(
                status,
                Some(200),
                "{fault} round {round}: the healthy model is served"
            );
        }
    }
    // The failing model is still tried (panic mode), not refused by its open circuit.
    let mut broken = ask("qwen-max", "x");
    broken["sim"] = json!({"fault": "503"});
    let before = sim.requests();
    let response = gw
        .chat(&broken)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        sim.requests() > before,
        "an open circuit alone never refuses"
    );
    let body = json_of(response).await;
    assert_ne!(error_of(&body).0, "upstream_unavailable", "{body}");
}

fn key_toml(name: &str, key: &str, limits: &str) -> String {
    format!("[[keys]]\nname = \"{name}\"\nkey = \"{key}\"\nmodels = [\"qwen-plus\"]\n{limits}\n")
}

async fn send(gw: &Gateway, key: &str, body: &serde_json::Value) -> u16 {
    gw.http
        .post(gw.url("/compatible-mode/v1/chat/completions"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test]
async fn refused_requests_do_not_count_against_rpm() {
    let sim = Sim::start().await;
    let keys = key_toml("two-a-minute", "sk-two-test", "rpm = 2");
    let gw = Gateway::start(&config_for(&sim, "", &keys)).await;
    // Refused by the allow-list (403) and by validation (400): neither is admitted.
    for _ in 0..2 {
        assert_eq!(send(&gw, "sk-two-test", &ask("qwen-max", "x")).await, 403);
        let invalid = json!({"model": "qwen-plus", "messages": [], "temperature": 9});
        assert_eq!(send(&gw, "sk-two-test", &invalid).await, 400);
    }
    assert_eq!(sim.requests(), 0);
    for n in 0..2 {
        assert_eq!(
            send(&gw, "sk-two-test", &ask("qwen-plus", "x")).await,
            200,
            "valid request {n} after four refused ones"
        );
    }
}

/// 30 concurrent streams on a small quota: the tokens spent stay within the quota plus one
/// request's own use (the documented bound).
async fn concurrent_streams_hold_the_quota(limits: &str, name: &str) {
    let sim = Sim::start().await;
    let quota = 200;
    let keys = key_toml(
        name,
        "sk-quota-test",
        &format!("token_quota = {quota}\nquota_period = \"day\""),
    );
    let gw = Gateway::start(&config_for(&sim, "", &format!("{limits}\n{keys}"))).await;
    let mut body = ask("qwen-plus", "tell me a story");
    body["stream"] = json!(true);
    body["sim"] = json!({"chunk_delay_ms": 5, "chunks": 8});
    let calls = (0..30).map(|_| async {
        let response = gw
            .http
            .post(gw.url("/compatible-mode/v1/chat/completions"))
            .bearer_auth("sk-quota-test")
            .json(&body)
            .send()
            .await;
        match response {
            Ok(r) => {
                let status = r.status().as_u16();
                let _ = r.bytes().await;
                status
            }
            Err(_) => 0,
        }
    });
    let statuses = futures_util::future::join_all(calls).await;
    let admitted = statuses.iter().filter(|&&s| s == 200).count();
    assert!(admitted >= 1, "{statuses:?}");
    assert_eq!(
        admitted + statuses.iter().filter(|&&s| s == 429).count(),
        30
    );
    let store = open_store(&format!("sqlite://{}/dashgate.db", gw.dir.path().display())).await;
    let filter = dashgate::store::UsageFilter {
        key: Some(name.into()),
        ..Default::default()
    };
    let found = records(&store, &filter, 30).await;
    let spent: u64 = found.iter().map(|r| r.total_tokens).sum();
    let largest = found.iter().map(|r| r.total_tokens).max().unwrap_or(0);
    assert!(
        spent <= quota + largest,
        "spent {spent} on a quota of {quota} (largest request {largest}), {admitted} admitted"
    );
}

#[tokio::test]
async fn concurrent_streams_hold_a_local_quota() {
    concurrent_streams_hold_the_quota("", "quota-local").await;
}

#[tokio::test]
async fn concurrent_streams_hold_a_redis_quota() {
    let redis = std::env::var("DASHGATE_TEST_REDIS_URL")
        .unwrap_or_else(|_| panic!("DASHGATE_TEST_REDIS_URL is not set: run scripts/test.sh"));
    // A key name of its own, so runs sharing the Redis do not share counts.
    let name = format!("quota-{}", uuid::Uuid::new_v4().simple());
    let limits = format!("[limits]\nredis_url = \"{redis}\"\non_redis_error = \"closed\"\n");
    concurrent_streams_hold_the_quota(&limits, &name).await;
}

/// A gateway whose `[server]` table gets `settings` too.
async fn gateway_with(sim: &Sim, settings: &str) -> Gateway {
    let toml = config_for(sim, "", "").replace(
        "max_body_bytes = 65536",
        &format!("max_body_bytes = 65536\n{settings}"),
    );
    Gateway::start(&toml).await
}

/// Reads what the server sends until it closes the connection; the safety net only keeps a
/// server that never closes from hanging the test.
async fn until_closed(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        stream.read_to_end(&mut seen),
    )
    .await;
    assert!(read.is_ok(), "the connection was never closed");
    String::from_utf8_lossy(&seen).into_owned()
}

async fn connect(gw: &Gateway, first_bytes: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(gw.addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    stream
        .write_all(first_bytes)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    stream
}

#[tokio::test]
async fn slow_headers_are_cut_off_while_normal_requests_are_served() {
    let sim = Sim::start().await;
    let gw = gateway_with(&sim, "header_timeout_ms = 300").await;
    let mut slow = Vec::new();
    for _ in 0..20 {
        slow.push(connect(&gw, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n").await);
    }
    assert_eq!(
        gw.chat(&ask("qwen-plus", "x"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .ok(),
        Some(200)
    );
    for stream in &mut slow {
        let seen = until_closed(stream).await;
        assert!(!seen.contains(" 200 "), "{seen}");
    }
}

#[tokio::test]
async fn a_body_that_stalls_is_refused_with_400() {
    let sim = Sim::start().await;
    let gw = gateway_with(&sim, "body_idle_timeout_ms = 300").await;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CLIENT_KEY}\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n{{\"model\":"
    );
    let mut stalled = Vec::new();
    for _ in 0..10 {
        stalled.push(connect(&gw, head.as_bytes()).await);
    }
    assert_eq!(
        gw.chat(&ask("qwen-plus", "x"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .ok(),
        Some(200)
    );
    for stream in &mut stalled {
        let seen = until_closed(stream).await;
        assert!(seen.starts_with("HTTP/1.1 400"), "{seen}");
        assert!(seen.contains("stalled"), "{seen}");
    }
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_and_counted() {
    let sim = Sim::start().await;
    let gw = gateway_with(&sim, "max_connections = 3").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(&gw, b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await);
    }
    let mut over = connect(&gw, b"").await;
    let seen = until_closed(&mut over).await;
    assert_eq!(seen, "", "closed without an answer");
    drop(held);
    // The held connections' slots free as the server sees them go.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let metrics = loop {
        let answer = gw.http.get(gw.url("/metrics")).send().await;
        if let Ok(r) = answer {
            break r.text().await.unwrap_or_default();
        }
        assert!(tokio::time::Instant::now() < deadline, "never served again");
        tokio::task::yield_now().await;
    };
    assert!(
        metrics.contains("dashgate_client_connections_refused_total 1"),
        "{metrics}"
    );
}
