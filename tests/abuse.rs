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
