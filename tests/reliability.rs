//! Upstream failures turned into as few client-visible failures as possible: the fault matrix
//! (fault × stream or not × one or two upstreams), retries, failover, the circuit breaker,
//! concurrency caps, cancellation, graceful drain, keep-alives and metrics.

mod common;

use std::time::Duration;

use common::*;
use dashgate::sim;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const RETRY: &str = "[retry]\nattempts = 3\nbackoff_ms = 10\nmax_backoff_ms = 50\n";
const TIMEOUTS: &str = "first_byte_timeout_ms = 300\nidle_timeout_ms = 500\n";

/// A gateway whose first upstream (`a`) is broken as `fault` says, optionally beside a healthy
/// `b` that a request reaches only by failing over (`a` carries nearly all the weight).
async fn cell_gateway(fault: &str, two: bool) -> (Option<Sim>, Sim, Gateway) {
    let healthy = Sim::start().await;
    let mut options = sim::Options {
        api_key: Some(UPSTREAM_KEY.into()),
        ..Default::default()
    };
    let broken = match fault {
        "refused" => None,
        "slow first token" => {
            options.latency_ms = 5_000;
            Some(Sim::with(options).await)
        }
        "500 once" => {
            options.fault = Some("500".into());
            options.fault_times = Some(1);
            Some(Sim::with(options).await)
        }
        "stall mid-stream" | "drop mid-stream" => {
            options.fault = Some(fault.split(' ').next().unwrap_or("").into());
            Some(Sim::with(options).await)
        }
        other => {
            options.fault = Some(other.into());
            Some(Sim::with(options).await)
        }
    };
    let a_url = match &broken {
        Some(sim) => sim.url(),
        None => {
            let closed = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr());
            format!("http://{}", closed.unwrap_or_else(|e| panic!("{e}")))
        }
    };
    let b = if two {
        format!(
            "[[upstreams]]\nname = \"b\"\nprovider = \"dashscope\"\nbase_url = \"{}\"\napi_key = \"{UPSTREAM_KEY}\"\nmodels = [\"*\"]\nweight = 1\n{TIMEOUTS}",
            healthy.url()
        )
    } else {
        String::new()
    };
    let toml = format!(
        "[[keys]]\nname = \"k\"\nkey = \"{CLIENT_KEY}\"\n\n[[upstreams]]\nname = \"a\"\nprovider = \"dashscope\"\nbase_url = \"{a_url}\"\napi_key = \"{UPSTREAM_KEY}\"\nmodels = [\"*\"]\nweight = 1000000\n{TIMEOUTS}\n{b}\n{RETRY}"
    );
    let gateway = Gateway::start(&format!("[server]\nlisten = \"127.0.0.1:0\"\n{toml}")).await;
    (broken, healthy, gateway)
}

/// What the client saw, in a few words: `200 [DONE]`, `502 upstream_unreachable`,
/// `200 +2 events, error upstream_timeout`.
async fn seen(gw: &Gateway, stream: bool) -> String {
    let mut body = ask("qwen-plus", "hello there");
    if stream {
        body["stream"] = json!(true);
    }
    let response = gw
        .chat(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = response.status().as_u16();
    if status != 200 {
        return format!("{status} {}", error_of(&json_of(response).await).0);
    }
    if !stream {
        let reply = json_of(response).await;
        return format!(
            "200 {}",
            reply["choices"][0]["finish_reason"].as_str().unwrap_or("?")
        );
    }
    let events = data_events(response).await;
    match events.last().map(String::as_str) {
        Some("[DONE]") => "200 [DONE]".into(),
        Some(last) => {
            let error: Value = serde_json::from_str(last).unwrap_or_default();
            let before = events.len() - 1;
            format!(
                "200 +{before} events, error {}",
                error["error"]["code"].as_str().unwrap_or("?")
            )
        }
        None => "200 empty".into(),
    }
}

#[tokio::test]
async fn the_fault_matrix() {
    // (fault, one upstream: non-stream, stream; two upstreams: non-stream, stream)
    let table: [(&str, [&str; 4]); 7] = [
        (
            "429",
            [
                "429 limit_requests",
                "429 limit_requests",
                "200 stop",
                "200 [DONE]",
            ],
        ),
        (
            "500 once",
            ["200 stop", "200 [DONE]", "200 stop", "200 [DONE]"],
        ),
        (
            "503",
            [
                "503 upstream_overloaded",
                "503 upstream_overloaded",
                "200 stop",
                "200 [DONE]",
            ],
        ),
        (
            "refused",
            [
                "502 upstream_unreachable",
                "502 upstream_unreachable",
                "200 stop",
                "200 [DONE]",
            ],
        ),
        (
            "slow first token",
            [
                "504 upstream_timeout",
                "504 upstream_timeout",
                "200 stop",
                "200 [DONE]",
            ],
        ),
        (
            "stall mid-stream",
            [
                "504 upstream_timeout",
                "200 +2 events, error upstream_timeout",
                "200 stop",
                "200 +2 events, error upstream_timeout",
            ],
        ),
        (
            "drop mid-stream",
            [
                "502 upstream_invalid_response",
                "200 +2 events, error upstream_invalid_response",
                "502 upstream_invalid_response",
                "200 +2 events, error upstream_invalid_response",
            ],
        ),
    ];
    let mut failures = Vec::new();
    println!(
        "| fault | 1 upstream, JSON | 1 upstream, stream | 2 upstreams, JSON | 2 upstreams, stream |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for (fault, expected) in table {
        let mut row = Vec::new();
        for (k, (two, stream)) in [(false, false), (false, true), (true, false), (true, true)]
            .into_iter()
            .enumerate()
        {
            let (_broken, _healthy, gw) = cell_gateway(fault, two).await;
            let got = seen(&gw, stream).await;
            if got != expected[k] {
                failures.push(format!(
                    "{fault} two={two} stream={stream}: got `{got}`, want `{}`",
                    expected[k]
                ));
            }
            row.push(got);
        }
        println!("| {fault} | {} |", row.join(" | "));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn retries_stop_at_a_client_error_and_honour_a_short_retry_after() {
    let sim = Sim::start().await;
    let gw = Gateway::start(
        &config_for(&sim, "", "[retry]\nattempts = 2\n")
            .replace("\"qwen-max\"]", "\"qwen-max\", \"missing-model\"]"),
    )
    .await;
    let refused = gw
        .chat(&ask("missing-model", "x"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .ok();
    assert_eq!(
        (refused, sim.requests()),
        (Some(404), 1),
        "a client's 4xx is never retried"
    );
    let mut body = ask("qwen-plus", "x");
    body["sim"] = json!({"fault": "429", "retry_after": "1"});
    let response = gw
        .chat(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_eq!(
        sim.requests(),
        3,
        "one retry after the upstream's Retry-After"
    );
    body["sim"] = json!({"fault": "429", "retry_after": "30"});
    let long = gw
        .chat(&body)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .ok();
    assert_eq!(
        (long, sim.requests()),
        (Some(429), 4),
        "a long Retry-After goes back to the client at once"
    );
}

#[tokio::test]
async fn a_failing_upstream_opens_its_circuit_and_traffic_goes_elsewhere() {
    let healthy = Sim::start().await;
    let broken = Sim::with(sim::Options {
        api_key: Some(UPSTREAM_KEY.into()),
        fault: Some("503".into()),
        ..Default::default()
    })
    .await;
    let extra = format!(
        "[[upstreams]]\nname = \"b\"\nprovider = \"dashscope\"\nbase_url = \"{}\"\napi_key = \"{UPSTREAM_KEY}\"\nmodels = [\"*\"]\n\n[circuit]\nfailure_threshold = 2\nopen_ms = 600000\n{RETRY}",
        healthy.url()
    );
    let gw = Gateway::start(&config_for(&broken, "weight = 1000000", &extra)).await;
    for _ in 0..6 {
        let status = gw
            .chat(&ask("qwen-plus", "x"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .ok();
        assert_eq!(
            status,
            Some(200),
            "every request fails over to the healthy upstream"
        );
    }
    assert_eq!(
        broken.requests(),
        2,
        "after two failures the open circuit keeps traffic away"
    );
    assert_eq!(healthy.requests(), 6);
    let ready = json_of(
        gw.http
            .get(gw.url("/readyz"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(ready["upstreams"][0]["circuit"], "open");
    assert_eq!(ready["upstreams"][1]["circuit"], "closed");
    assert_eq!(ready["status"], "ready");
    let metrics = gw
        .http
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    assert!(
        metrics.contains(r#"dashgate_upstream_circuit_state{upstream="sim"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"dashgate_upstream_retries_total{upstream="sim",reason="503"} 2"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_full_upstream_is_503_upstream_busy_until_a_slot_frees() {
    let sim = Sim::start().await;
    // No grace period: the slot frees as the client leaves, not after it.
    let no_grace = "[resume]\ngrace_seconds = 0\n";
    let gw = Gateway::start(&config_for(&sim, "max_concurrency = 1", no_grace)).await;
    let mut body = ask("qwen-plus", "x");
    body["stream"] = json!(true);
    body["sim"] = json!({"fault": "stall", "after": 1});
    let held = gw
        .chat(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (_, open_stream) = first_events(held, 1).await;
    let busy = gw
        .chat(&ask("qwen-plus", "x"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(busy.status().as_u16(), 503);
    assert_eq!(
        busy.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_eq!(error_of(&json_of(busy).await).0, "upstream_busy");
    drop(open_stream);
    sim.stats.stream_closed_early.notified().await;
    let free = gw
        .chat(&ask("qwen-plus", "x"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .ok();
    assert_eq!(free, Some(200));
}

async fn hang_up_after_one_event(response: reqwest::Response, sim: &Sim) {
    assert_eq!(response.status().as_u16(), 200);
    let (_, open_stream) = first_events(response, 1).await;
    drop(open_stream);
    let closed = tokio::time::timeout(
        Duration::from_secs(20),
        sim.stats.stream_closed_early.notified(),
    )
    .await;
    assert!(
        closed.is_ok(),
        "the upstream stream stayed open after the client left"
    );
}

#[tokio::test]
async fn a_client_hanging_up_cancels_native_and_translated_streams_too() {
    let sim = Sim::start().await;
    // No grace period: the upstream call goes as the client leaves.
    let extra = "[resume]\ngrace_seconds = 0\n\n[[upstreams]]\nname = \"native\"\nprovider = \"dashscope\"\ndialect = \"native\"\nbase_url = \"{SIM}\"\napi_key = \"sk-upstream-test\"\nmodels = [\"via-native\"]\n";
    let gw = Gateway::start(&config_for(&sim, "", extra)).await;
    let native = json!({"model": "qwen-plus", "input": {"prompt": "x"}, "parameters": {"incremental_output": true, "sim": {"fault": "stall", "after": 2}}});
    let response = gw
        .http
        .post(gw.url("/api/v1/services/aigc/text-generation/generation"))
        .bearer_auth(CLIENT_KEY)
        .header("X-DashScope-SSE", "enable")
        .json(&native)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    hang_up_after_one_event(response, &sim).await;
    let mut translated = ask("via-native", "x");
    translated["stream"] = json!(true);
    translated["sim"] = json!({"fault": "stall", "after": 2});
    let response = gw
        .chat(&translated)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    hang_up_after_one_event(response, &sim).await;
}

#[tokio::test]
async fn shutdown_lets_streams_finish_then_cuts_the_rest_with_an_error_event() {
    let sim = Sim::start().await;
    let toml = config_for(&sim, "", "").replace(
        "max_body_bytes = 65536",
        "max_body_bytes = 65536\ndrain_timeout_ms = 300",
    );
    let mut config =
        dashgate::config::parse(&toml, "t", &|_| None).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    keep_in(&mut config, dir.path());
    let shutdown = CancellationToken::new();
    let addr = dashgate::server::spawn(config, shutdown.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let http = reqwest::Client::new();
    let post = |body: Value| {
        http.post(format!("http://{addr}/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .json(&body)
            .send()
    };
    let mut finishing = ask("qwen-plus", "a short answer");
    finishing["stream"] = json!(true);
    finishing["sim"] = json!({"chunk_delay_ms": 20, "chunks": 4});
    let mut stuck = ask("qwen-plus", "a stuck answer");
    stuck["stream"] = json!(true);
    stuck["sim"] = json!({"fault": "stall", "after": 2});
    let finishing = post(finishing).await.unwrap_or_else(|e| panic!("{e}"));
    let stuck = post(stuck).await.unwrap_or_else(|e| panic!("{e}"));
    let (first, finishing_rest) = first_events(finishing, 1).await;
    let (_, stuck_rest) = first_events(stuck, 2).await;
    shutdown.cancel();
    // New connections are refused while the old ones drain.
    let late = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if reqwest::Client::new()
                .get(format!("http://{addr}/healthz"))
                .send()
                .await
                .is_err()
            {
                break;
            }
            tokio::task::yield_now().await;
        }
    });
    assert!(
        late.await.is_ok(),
        "the gateway kept accepting after shutdown began"
    );
    let rest = |s: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>| async move {
        use futures_util::StreamExt;
        let chunks: Vec<_> = s.collect().await;
        chunks
            .into_iter()
            .filter_map(Result::ok)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect::<String>()
    };
    let finished = rest(finishing_rest).await;
    assert!(
        first[0].contains("assistant") && finished.ends_with("data: [DONE]\n\n"),
        "{finished}"
    );
    let cut = rest(stuck_rest).await;
    assert!(cut.contains(r#""code":"gateway_shutting_down""#), "{cut}");
    assert!(!cut.contains("[DONE]"));
}

#[tokio::test]
async fn keep_alive_comments_precede_the_first_token_and_carry_late_errors() {
    let sim = Sim::start().await;
    let toml = config_for(&sim, "", "[retry]\nattempts = 1\n").replace(
        "max_body_bytes = 65536",
        "max_body_bytes = 65536\nsse_keepalive_ms = 50",
    );
    let gw = Gateway::start(&toml).await;
    let mut body = ask("qwen-plus", "slow");
    body["stream"] = json!(true);
    body["sim"] = json!({"latency_ms": 200});
    let text = gw
        .chat(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    let text = common::plain_ids(&text);
    assert!(text.starts_with(": keep-alive\n\n"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
    let content: String = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(content, "echo: slow");
    // A failure after the head went out arrives as an error event, in the client's dialect.
    body["sim"] = json!({"fault": "503"});
    let text = gw
        .chat(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    assert!(
        text.starts_with(": keep-alive\n\n") && text.contains(r#""code":"upstream_overloaded""#),
        "{text}"
    );
    let native = json!({"model": "qwen-plus", "input": {"prompt": "x"}, "parameters": {"sim": {"fault": "503"}}});
    let text = gw
        .http
        .post(gw.url("/api/v1/services/aigc/text-generation/generation"))
        .bearer_auth(CLIENT_KEY)
        .header("X-DashScope-SSE", "enable")
        .json(&native)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    assert!(
        text.contains("event:error\n:HTTP_STATUS/503\nstatus:503\n")
            && text.contains("UpstreamOverloaded"),
        "{text}"
    );
}

#[tokio::test]
async fn metrics_count_requests_tokens_and_streams_without_keys() {
    let sim = Sim::start().await;
    let gw = Gateway::before(&sim).await;
    let mut stream = ask("qwen-plus", "count me");
    stream["stream"] = json!(true);
    let events = data_events(
        gw.chat(&stream)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let _ = gw
        .chat(&ask("qwen-plus", "and me"))
        .send()
        .await
        .map(|r| r.status());
    let _ = gw
        .chat(&ask("nobody-serves-this", "x"))
        .send()
        .await
        .map(|r| r.status());
    let text = gw
        .http
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    for expected in [
        r#"dashgate_requests_total{route="chat",model="qwen-plus",upstream="sim",status="200"} 2"#,
        r#"dashgate_requests_total{route="chat",model="-",upstream="-",status="404"} 1"#,
        r#"dashgate_time_to_first_token_seconds_count{route="chat"} 1"#,
        r#"dashgate_stream_duration_seconds_count{route="chat"} 1"#,
        r#"dashgate_tokens_total{model="qwen-plus",upstream="sim",kind="prompt"}"#,
        r#"dashgate_tokens_total{model="qwen-plus",upstream="sim",kind="completion"}"#,
        "dashgate_streams_in_flight 0",
        r#"dashgate_upstream_circuit_state{upstream="sim"} 0"#,
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
    assert!(!text.contains(CLIENT_KEY) && !text.contains(UPSTREAM_KEY));
}
