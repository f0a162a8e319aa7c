//! Who gets in, whose key goes upstream, and which upstream serves a model.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn a_missing_or_wrong_key_is_401_invalid_api_key() {
    let sim = Sim::start().await;
    let gw = Gateway::before(&sim).await;
    let url = gw.url("/v1/chat/completions");
    let missing = gw
        .http
        .post(&url)
        .json(&ask("qwen-plus", "hi"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let wrong = gw
        .http
        .post(&url)
        .bearer_auth("sk-nope")
        .json(&ask("qwen-plus", "hi"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for response in [missing, wrong] {
        assert_eq!(response.status().as_u16(), 401);
        let body = json_of(response).await;
        assert_eq!(
            error_of(&body),
            ("invalid_api_key", None, "invalid_request_error")
        );
    }
    let models = gw
        .http
        .get(gw.url("/v1/models"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .ok();
    assert_eq!(models, Some(401));
    assert_eq!(
        sim.requests(),
        0,
        "nothing may reach the upstream without a key"
    );
}

#[tokio::test]
async fn the_upstream_key_is_injected_and_the_client_key_stays_behind() {
    // The simulator accepts only the upstream key: a forwarded client key would be refused.
    let sim = Sim::start().await;
    let gw = Gateway::before(&sim).await;
    let response = gw
        .chat(&ask("qwen-plus", "hi"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(sim.requests(), 1);
}

#[tokio::test]
async fn passthrough_forwards_the_callers_own_bearer() {
    let sim = Sim::start().await;
    let toml = config_for(&sim, "", "")
        .replace("[server]", "[auth]\nmode = \"passthrough\"\n\n[server]")
        .replace(
            &format!("api_key = \"{UPSTREAM_KEY}\""),
            "api_key = \"sk-configured-but-unused\"",
        );
    let gw = Gateway::start(&toml).await;
    let url = gw.url("/v1/chat/completions");
    let own = gw
        .http
        .post(&url)
        .bearer_auth(UPSTREAM_KEY)
        .json(&ask("qwen-plus", "hi"))
        .send()
        .await;
    assert_eq!(own.map(|r| r.status().as_u16()).ok(), Some(200));
    // A bad caller token is the caller's problem in passthrough mode: the upstream's 401 as is.
    let bad = gw
        .http
        .post(&url)
        .bearer_auth("sk-bad")
        .json(&ask("qwen-plus", "hi"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bad.status().as_u16(), 401);
    assert_eq!(error_of(&json_of(bad).await).0, "invalid_api_key");
}

#[tokio::test]
async fn a_keys_allow_list_is_enforced() {
    let sim = Sim::start().await;
    let gw = Gateway::before(&sim).await;
    let url = gw.url("/v1/chat/completions");
    let allowed = gw
        .http
        .post(&url)
        .bearer_auth("sk-limited-test")
        .json(&ask("qwen-plus", "hi"))
        .send()
        .await;
    assert_eq!(allowed.map(|r| r.status().as_u16()).ok(), Some(200));
    let denied = gw
        .http
        .post(&url)
        .bearer_auth("sk-limited-test")
        .json(&ask("qwen-max", "hi"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(denied.status().as_u16(), 403);
    assert_eq!(
        error_of(&json_of(denied).await),
        ("model_not_allowed", Some("model"), "invalid_request_error")
    );
    assert_eq!(sim.requests(), 1);
}

#[tokio::test]
async fn a_model_no_upstream_serves_is_404_model_not_found() {
    let sim = Sim::start().await;
    let gw = Gateway::before(&sim).await;
    let response = gw
        .chat(&ask("qwen-unknown", "hi"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(
        error_of(&json_of(response).await),
        ("model_not_found", Some("model"), "invalid_request_error")
    );
}

#[tokio::test]
async fn traffic_is_split_by_weight_among_matching_upstreams() {
    let heavy = Sim::start().await;
    let light = Sim::start().await;
    let extra = format!(
        "[[upstreams]]\nname = \"light\"\nprovider = \"dashscope\"\nbase_url = \"{}\"\napi_key = \"{UPSTREAM_KEY}\"\nmodels = [\"*\"]\nweight = 1\n",
        light.url()
    );
    let gw = Gateway::start(&config_for(&heavy, "weight = 3", &extra)).await;
    let rounds = 400;
    for _ in 0..rounds {
        let status = gw
            .chat(&ask("qwen-plus", "hi"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .ok();
        assert_eq!(status, Some(200));
    }
    let share = heavy.requests() as f64 / rounds as f64;
    assert_eq!(heavy.requests() + light.requests(), rounds);
    // 3:1 over 400 draws: 0.75 expected, standard deviation about 0.022.
    assert!((0.6..0.9).contains(&share), "heavy upstream share {share}");
    // A model only the "*" upstream serves always goes there.
    let before = light.requests();
    let status = gw
        .chat(&ask("qwen-turbo", "hi"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .ok();
    assert_eq!((status, light.requests()), (Some(200), before + 1));
}

#[tokio::test]
async fn request_ids_are_made_kept_or_replaced() {
    let sim = Sim::start().await;
    let gw = Gateway::before(&sim).await;
    let id_of = |r: &reqwest::Response| {
        r.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let made = gw
        .chat(&ask("qwen-plus", "hi"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let made = id_of(&made).unwrap_or_default();
    assert_eq!(made.len(), 36, "{made}");
    let kept = gw
        .chat(&ask("qwen-plus", "hi"))
        .header("x-request-id", "glass-42.frame_7")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(id_of(&kept).as_deref(), Some("glass-42.frame_7"));
    let insane = gw
        .chat(&ask("qwen-plus", "hi"))
        .header("x-request-id", "a b<script>")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(id_of(&insane).as_deref(), Some("a b<script>"));
    assert!(id_of(&insane).is_some());
    // Errors, health and unknown paths carry one too; an error body repeats it.
    let error = gw
        .http
        .post(gw.url("/v1/chat/completions"))
        .header("x-request-id", "err-1")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(id_of(&error).as_deref(), Some("err-1"));
    assert_eq!(json_of(error).await["request_id"], "err-1");
    for path in ["/healthz", "/nowhere"] {
        let r = gw
            .http
            .get(gw.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(id_of(&r).is_some(), "{path}");
    }
    let unknown = gw
        .http
        .get(gw.url("/nowhere"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(unknown.status().as_u16(), 404);
    assert_eq!(json_of(unknown).await["error"]["code"], json!("not_found"));
}
