//! Keys in the store, the admin API, per-key limits in process, and the usage ledger: each
//! test runs against a SQLite file and against PostgreSQL.

mod common;

use std::time::Duration;

use common::*;
use dashgate::store::{NewKey, Store, UsageFilter};
use serde_json::{Value, json};

const ADMIN: &str = "admin-token-for-tests-0123";

/// Runs a test body once per store backend.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await
            }
            #[tokio::test]
            async fn postgres() {
                super::$name(super::Backend::Postgres).await
            }
        }
    )*};
}

on_both_stores!(
    store_keys_get_in_until_revoked_disabled_or_expired,
    a_revoke_on_one_gateway_reaches_another_within_the_cache_bound,
    every_request_leaves_one_record_with_its_figures,
    a_client_that_hangs_up_still_leaves_a_record,
    limits_refuse_with_429_and_retry_after_in_both_dialects,
    a_token_quota_survives_a_restart_through_the_ledger,
);

struct Env {
    sim: Sim,
    gateway: Gateway,
    store: Store,
    url: String,
    _dir: tempfile::TempDir,
}

impl Env {
    async fn start(backend: Backend, extra: &str) -> Env {
        let sim = Sim::start().await;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let url = fresh_store(backend, dir.path()).await;
        let gateway = Gateway::start(&gateway_toml(&sim, &url, extra)).await;
        let store = open_store(&url).await;
        Env {
            sim,
            gateway,
            store,
            url,
            _dir: dir,
        }
    }

    fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.gateway
            .http
            .request(method, self.gateway.url(path))
            .bearer_auth(ADMIN)
    }

    async fn create_key(&self, body: Value) -> Value {
        let response = self
            .admin(reqwest::Method::POST, "/admin/api/keys")
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status(), 201);
        json_of(response).await
    }

    async fn chat_with(&self, key: &str, body: &Value) -> reqwest::Response {
        self.gateway
            .http
            .post(self.gateway.url("/compatible-mode/v1/chat/completions"))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

fn gateway_toml(sim: &Sim, store_url: &str, extra: &str) -> String {
    let base = config_for(sim, "", extra);
    format!(
        "{base}\n[store]\nurl = \"{store_url}\"\n",
        base = base.replace(
            "[server]\n",
            &format!("[auth]\nadmin_token = \"{ADMIN}\"\n\n[server]\n")
        )
    )
}

fn by_key(name: &str) -> UsageFilter {
    UsageFilter {
        key: Some(name.into()),
        ..UsageFilter::default()
    }
}

async fn store_keys_get_in_until_revoked_disabled_or_expired(backend: Backend) {
    let env = Env::start(backend, "").await;
    let made = env
        .create_key(json!({"name": "glass-7", "models": ["qwen-plus"]}))
        .await;
    let key = made["key"].as_str().unwrap_or_default().to_string();
    assert!(key.starts_with("sk-dg-") && key.len() >= 6 + 32, "{made}");
    let id = made["id"].as_str().unwrap_or_default().to_string();
    // Only the hash is kept: the key itself appears nowhere in the store.
    let listed = env
        .store
        .list_keys()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(listed.len(), 1);
    assert!(!format!("{listed:?}").contains(&key[10..]));

    let ok = env.chat_with(&key, &ask("qwen-plus", "hi")).await;
    assert_eq!(ok.status(), 200);
    let denied = env.chat_with(&key, &ask("qwen-max", "hi")).await;
    assert_eq!(denied.status(), 403);

    let disable = env
        .admin(reqwest::Method::PATCH, &format!("/admin/api/keys/{id}"))
        .json(&json!({"disabled": true}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(disable.status(), 200);
    let refused = env.chat_with(&key, &ask("qwen-plus", "hi")).await;
    assert_eq!(refused.status(), 401);
    let body = json_of(refused).await;
    assert_eq!(error_of(&body).0, "invalid_api_key");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("disabled")
    );

    let enable = env
        .admin(reqwest::Method::PATCH, &format!("/admin/api/keys/{id}"))
        .json(&json!({"disabled": false, "modles": []}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(enable.status(), 400, "unknown fields are refused by name");
    let (code, param, _) = {
        let body = json_of(enable).await;
        let e = error_of(&body);
        (e.0.to_string(), e.1.map(str::to_string), ())
    };
    assert_eq!(code, "invalid_parameter_error");
    assert!(param.is_some());

    let revoke = env
        .admin(reqwest::Method::DELETE, "/admin/api/keys/glass-7")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(revoke.status(), 200);
    assert!(json_of(revoke).await["revoked_at"].is_i64());
    let missing = env
        .admin(reqwest::Method::DELETE, "/admin/api/keys/nobody")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(missing.status(), 404);

    // An expired key, straight into the store.
    let expired = NewKey {
        name: "old".into(),
        expires_at: Some(dashgate::store::now_ms() - 1000),
        ..NewKey::default()
    };
    let old_key = "sk-dg-expired-test-key-0000000000000000";
    let hash = hex::encode(dashgate::auth::hash_key(old_key));
    env.store
        .create_key(&expired, &hash, "sk-dg-expi")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let refused = env.chat_with(old_key, &ask("qwen-plus", "hi")).await;
    assert_eq!(refused.status(), 401);
    assert!(
        json_of(refused).await["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("expired")
    );
    let listed = env
        .admin(reqwest::Method::GET, "/admin/api/keys")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let listed = json_of(listed).await;
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(2));
    assert!(!listed.to_string().contains(&key));
}

async fn a_revoke_on_one_gateway_reaches_another_within_the_cache_bound(backend: Backend) {
    let env = Env::start(backend, "").await;
    let other = Gateway::start(
        &gateway_toml(&env.sim, &env.url, "").replace("[auth]\n", "[auth]\nkey_cache_ms = 300\n"),
    )
    .await;
    let made = env.create_key(json!({"name": "roaming"})).await;
    let key = made["key"].as_str().unwrap_or_default().to_string();
    let on_other = |gw: &Gateway| {
        gw.http
            .post(gw.url("/compatible-mode/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&ask("qwen-plus", "hi"))
            .send()
    };
    assert_eq!(
        on_other(&other).await.map(|r| r.status().as_u16()).ok(),
        Some(200)
    );
    let revoke = env
        .admin(reqwest::Method::DELETE, "/admin/api/keys/roaming")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(revoke.status(), 200);
    // At once where it was revoked...
    assert_eq!(
        env.chat_with(&key, &ask("qwen-plus", "hi")).await.status(),
        401
    );
    // ...and on the other gateway once its cached lookup (300 ms) runs out.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    loop {
        ticker.tick().await;
        let status = on_other(&other).await.map(|r| r.status().as_u16()).ok();
        if status == Some(401) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {status:?}");
    }
}

async fn every_request_leaves_one_record_with_its_figures(backend: Backend) {
    let prices = "[prices.qwen-plus]\ninput_per_million = 2.0\noutput_per_million = 8.0\n";
    let env = Env::start(backend, prices).await;
    let gw = &env.gateway;

    // Whole reply.
    let whole = json_of(
        gw.chat(&ask("qwen-plus", "one"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    let usage = whole["usage"].clone();

    // A stream whose client did not ask for usage: it gets none, the ledger does.
    let mut body = ask("qwen-plus", "two");
    body["stream"] = json!(true);
    let events = data_events(
        gw.chat(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(
        events.iter().all(|e| !e.contains("\"usage\":{")),
        "{events:?}"
    );

    // A native stream.
    let native = gw
        .http
        .post(gw.url("/api/v1/services/aigc/text-generation/generation"))
        .bearer_auth(CLIENT_KEY)
        .header("X-DashScope-SSE", "enable")
        .json(&json!({"model": "qwen-max", "input": {"messages": [{"role": "user", "content": "three"}]}, "parameters": {"incremental_output": true}}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(native.status(), 200);
    let _ = native.text().await;

    // A refused one.
    let bad = gw
        .chat(&json!({"model": "qwen-plus", "messages": "no"}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bad.status(), 400);
    // A refused native one: its reply has DashScope's code, its record the same code as above.
    let bad_native = gw
        .http
        .post(gw.url("/api/v1/services/aigc/text-generation/generation"))
        .bearer_auth(CLIENT_KEY)
        .json(&json!({"model": "qwen-plus", "input": {"messages": "no"}}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bad_native.status(), 400);
    assert_eq!(json_of(bad_native).await["code"], "InvalidParameter");

    let found = records(&env.store, &by_key("glass3"), 5).await;
    let find = |route: &str, stream: bool, status: u16| {
        found
            .iter()
            .find(|r| r.route == route && r.stream == stream && r.status == status)
            .unwrap_or_else(|| panic!("no {route} record: {found:#?}"))
    };
    let first = find("chat", false, 200);
    assert_eq!(first.model, "qwen-plus");
    assert_eq!(first.upstream, "sim");
    assert_eq!(first.dialect, "openai");
    assert_eq!(Some(first.prompt_tokens), usage["prompt_tokens"].as_u64());
    assert_eq!(
        Some(first.completion_tokens),
        usage["completion_tokens"].as_u64()
    );
    assert_eq!(Some(first.total_tokens), usage["total_tokens"].as_u64());
    assert!(!first.estimated && first.bytes_in > 0 && first.bytes_out > 0);
    let cost = (first.prompt_tokens as f64 * 2.0 + first.completion_tokens as f64 * 8.0) / 1e6;
    assert!(
        first.cost.is_some_and(|c| (c - cost).abs() < 1e-12),
        "{first:?}"
    );

    let streamed = find("chat", true, 200);
    assert!(
        streamed.total_tokens > 0 && !streamed.estimated,
        "{streamed:?}"
    );
    assert!(streamed.ttft_ms.is_some());

    let native = find("native_text", true, 200);
    assert_eq!(native.dialect, "native");
    assert!(
        native.total_tokens > 0 && native.cost.is_none(),
        "{native:?}"
    );

    let refused = find("chat", false, 400);
    assert_eq!(
        refused.error_code.as_deref(),
        Some("invalid_parameter_error")
    );
    assert_eq!(refused.total_tokens, 0);
    let refused_native = find("native_text", false, 400);
    assert_eq!(
        refused_native.error_code.as_deref(),
        Some("invalid_parameter_error")
    );

    // The admin API sums them up.
    let usage = env
        .admin(reqwest::Method::GET, "/admin/api/usage?group_by=model")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let usage = json_of(usage).await;
    assert_eq!(usage["totals"]["requests"], 5);
    let sum: u64 = found.iter().map(|r| r.total_tokens).sum();
    assert_eq!(usage["totals"]["total_tokens"].as_u64(), Some(sum));
    let models: Vec<&str> = usage["groups"]
        .as_array()
        .map(|g| g.iter().filter_map(|g| g["group"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(models, ["", "qwen-max", "qwen-plus"], "{usage}");
    let by_day = env
        .admin(
            reqwest::Method::GET,
            "/admin/api/usage?group_by=day&key=glass3",
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let by_day = json_of(by_day).await;
    assert_eq!(by_day["groups"][0]["requests"], 5, "{by_day}");
    let bad = env
        .admin(reqwest::Method::GET, "/admin/api/usage?group_by=colour")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bad.status(), 400);
    let upstreams = env
        .admin(reqwest::Method::GET, "/admin/api/upstreams")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(json_of(upstreams).await["data"][0]["circuit"], "closed");
}

async fn a_client_that_hangs_up_still_leaves_a_record(backend: Backend) {
    // No grace period: the stream ends with the client (a resumed one has one record too).
    let env = Env::start(backend, "[resume]\ngrace_seconds = 0\n").await;
    let gw = &env.gateway;
    let slow = json!({"chunks": 40, "chunk_delay_ms": 40});
    let mut body = ask("qwen-plus", "a long answer please");
    body["stream"] = json!(true);
    body["sim"] = slow.clone();
    let response = gw
        .chat(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (_events, rest) = first_events(response, 3).await;
    drop(rest);
    let native = gw
        .http
        .post(gw.url("/api/v1/services/aigc/text-generation/generation"))
        .bearer_auth(CLIENT_KEY)
        .header("X-DashScope-SSE", "enable")
        .json(&json!({"model": "qwen-plus", "input": {"messages": [{"role": "user", "content": "a long answer please"}]}, "parameters": {"incremental_output": true, "sim": slow}}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (_events, rest) = first_events(native, 3).await;
    drop(rest);
    let found = records(&env.store, &by_key("glass3"), 2).await;
    // The compatible-mode usage comes only at the end: an estimate, marked as one.
    let openai = found.iter().find(|r| r.dialect == "openai");
    assert!(
        openai.is_some_and(|r| r.estimated && r.prompt_tokens > 0 && r.completion_tokens > 0),
        "{found:#?}"
    );
    // Native frames carry the usage so far: the upstream's own figures.
    let native = found.iter().find(|r| r.dialect == "native");
    assert!(
        native.is_some_and(|r| !r.estimated && r.total_tokens > 0),
        "{found:#?}"
    );
    assert_eq!(
        env.sim
            .stats
            .streams_completed
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

async fn limits_refuse_with_429_and_retry_after_in_both_dialects(backend: Backend) {
    let keys = r#"
[[keys]]
name = "slow-lane"
key = "sk-rpm-test"
rpm = 2

[[keys]]
name = "thin"
key = "sk-tpm-test"
tpm = 1
"#;
    let env = Env::start(backend, keys).await;
    for _ in 0..2 {
        assert_eq!(
            env.chat_with("sk-rpm-test", &ask("qwen-plus", "hi"))
                .await
                .status(),
            200
        );
    }
    let limited = env.chat_with("sk-rpm-test", &ask("qwen-plus", "hi")).await;
    assert_eq!(limited.status(), 429);
    let wait: u64 = limited
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(error_of(&json_of(limited).await).0, "limit_requests");
    let native = env
        .gateway
        .http
        .post(
            env.gateway
                .url("/api/v1/services/aigc/text-generation/generation"),
        )
        .bearer_auth("sk-rpm-test")
        .json(&json!({"model": "qwen-plus", "input": {"prompt": "hi"}}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(native.status(), 429);
    assert_eq!(json_of(native).await["code"], "Throttling.RateQuota");

    // One request spends the minute's single token; the next is refused.
    assert_eq!(
        env.chat_with("sk-tpm-test", &ask("qwen-plus", "hi"))
            .await
            .status(),
        200
    );
    records(&env.store, &by_key("thin"), 1).await;
    let limited = env.chat_with("sk-tpm-test", &ask("qwen-plus", "hi")).await;
    assert_eq!(limited.status(), 429);
    assert_eq!(error_of(&json_of(limited).await).0, "limit_tokens");
    // Refused requests are recorded too, with no tokens.
    let slow = records(&env.store, &by_key("slow-lane"), 4).await;
    assert_eq!(slow.iter().filter(|r| r.status == 429).count(), 2);
}

async fn a_token_quota_survives_a_restart_through_the_ledger(backend: Backend) {
    let keys = "[[keys]]\nname = \"metered\"\nkey = \"sk-quota-test\"\ntoken_quota = 5\nquota_period = \"day\"\n";
    let env = Env::start(backend, keys).await;
    let ok = env
        .chat_with("sk-quota-test", &ask("qwen-plus", "a question long enough"))
        .await;
    assert_eq!(ok.status(), 200);
    let spent = records(&env.store, &by_key("metered"), 1).await;
    assert!(spent[0].total_tokens >= 5, "{spent:?}");
    let limited = env
        .chat_with("sk-quota-test", &ask("qwen-plus", "hi"))
        .await;
    assert_eq!(limited.status(), 429);
    assert_eq!(error_of(&json_of(limited).await).0, "insufficient_quota");
    // A new gateway on the same store starts from the ledger, not from zero.
    let again = Gateway::start(&gateway_toml(&env.sim, &env.url, keys)).await;
    let refused = again
        .http
        .post(again.url("/compatible-mode/v1/chat/completions"))
        .bearer_auth("sk-quota-test")
        .json(&ask("qwen-plus", "hi"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(refused.status(), 429);
}

#[tokio::test]
async fn the_admin_api_needs_its_token_and_is_absent_without_one() {
    let env = Env::start(Backend::Sqlite, "").await;
    let url = env.gateway.url("/admin/api/keys");
    for token in [None, Some("wrong-token"), Some(CLIENT_KEY)] {
        let mut request = env.gateway.http.get(&url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status(), 401, "{token:?}");
    }
    let sim = Sim::start().await;
    let plain = Gateway::before(&sim).await;
    let response = plain
        .http
        .get(plain.url("/admin/api/keys"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 404);
}
