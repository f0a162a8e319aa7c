//! Device fleets: device tokens minted by an account's key (or the admin token), verified,
//! expired, forged, rotated and revoked; per-device and per-account limits (in process and on
//! Redis); the ledger's account and device columns and the admin API's groupings.

mod common;

use std::time::Duration;

use common::*;
use dashgate::device::token::{self, Claims, SigningKey};
use dashgate::store::{UsageFilter, now_ms};
use serde_json::{Value, json};

const ADMIN: &str = "admin-token-for-tests-0123";
const BACKEND_KEY: &str = "sk-acme-backend-key";
const K1: &str = "k1:first-signing-secret-0123456789";
const K2: &str = "k2:second-signing-secret-0123456789";

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
    a_minted_token_gets_in_and_the_ledger_names_account_and_device,
    revoking_a_device_or_an_account_reaches_every_gateway_within_the_refresh_bound,
);

/// A gateway with the admin token, an account key for `account` (limits in `key_extra`) and
/// `extra` appended to the config.
fn toml(sim: &Sim, store_url: &str, account: &str, key_extra: &str, extra: &str) -> String {
    let keys = format!(
        "[[keys]]\nname = \"{account}-backend\"\nkey = \"{BACKEND_KEY}\"\naccount = \"{account}\"\n\
         models = [\"qwen-plus\", \"qwen-max\"]\n{key_extra}\n"
    );
    let base = config_for(sim, "", &format!("{keys}\n{extra}"));
    let base = base.replace(
        "[server]\n",
        &format!("[auth]\nadmin_token = \"{ADMIN}\"\n\n[server]\n"),
    );
    format!("{base}\n[store]\nurl = \"{store_url}\"\n")
}

async fn mint(gw: &Gateway, bearer: &str, body: Value) -> (u16, Value) {
    let response = gw
        .http
        .post(gw.url("/v1/device-tokens"))
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = response.status().as_u16();
    (status, json_of(response).await)
}

async fn token_for(gw: &Gateway, body: Value) -> String {
    let (status, answer) = mint(gw, BACKEND_KEY, body).await;
    assert_eq!(status, 200, "{answer}");
    answer["token"].as_str().unwrap_or_default().to_string()
}

async fn chat(gw: &Gateway, token: &str, model: &str) -> (u16, Value) {
    let response = gw
        .http
        .post(gw.url("/compatible-mode/v1/chat/completions"))
        .bearer_auth(token)
        .json(&ask(model, "hi"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = response.status().as_u16();
    (status, json_of(response).await)
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

async fn a_minted_token_gets_in_and_the_ledger_names_account_and_device(backend: Backend) {
    let sim = Sim::start().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let url = fresh_store(backend, dir.path()).await;
    let gw = Gateway::start(&toml(&sim, &url, "acme", "", "")).await;

    let (status, answer) = mint(
        &gw,
        BACKEND_KEY,
        json!({"device_id": "glass-1", "ttl_seconds": 600, "models": ["qwen-plus"]}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["device_id"], "glass-1");
    let token = answer["token"].as_str().unwrap_or_default().to_string();
    assert!(token.starts_with("dgt_"), "{answer}");
    let expires = dashgate::store::parse_rfc3339(answer["expires_at"].as_str().unwrap_or(""));
    assert!(
        expires.is_some_and(|at| at > now_ms() + 590_000 && at <= now_ms() + 600_000),
        "{answer}"
    );

    assert_eq!(chat(&gw, &token, "qwen-plus").await.0, 200);
    // The token's own allow-list, narrower than the account key's.
    let (status, body) = chat(&gw, &token, "qwen-max").await;
    assert_eq!((status, error_of(&body).0), (403, "model_not_allowed"));
    // A model the account key may not use cannot be put in a token.
    let (status, _) = mint(
        &gw,
        BACKEND_KEY,
        json!({"device_id": "glass-2", "ttl_seconds": 60, "models": ["qwen-vl-plus"]}),
    )
    .await;
    assert_eq!(status, 403);
    // A key with no account, and a device token, cannot mint.
    let body = json!({"device_id": "glass-3", "ttl_seconds": 60});
    assert_eq!(mint(&gw, CLIENT_KEY, body.clone()).await.0, 401);
    assert_eq!(mint(&gw, &token, body.clone()).await.0, 401);
    // Too long a life, a bad device id: refused naming the field.
    let (status, answer) = mint(
        &gw,
        BACKEND_KEY,
        json!({"device_id": "glass-3", "ttl_seconds": 86_401}),
    )
    .await;
    assert_eq!((status, error_of(&answer).1), (400, Some("ttl_seconds")));
    let (status, answer) = mint(
        &gw,
        BACKEND_KEY,
        json!({"device_id": "a b", "ttl_seconds": 60}),
    )
    .await;
    assert_eq!((status, error_of(&answer).1), (400, Some("device_id")));
    // The admin token mints for a named account.
    let (status, answer) = mint(
        &gw,
        ADMIN,
        json!({"account": "globex", "device_id": "cam-9", "ttl_seconds": 60}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let globex = answer["token"].as_str().unwrap_or_default().to_string();
    assert_eq!(chat(&gw, &globex, "qwen-max").await.0, 200);

    let store = open_store(&url).await;
    let found = records(&store, &UsageFilter::default(), 3).await;
    let mut seen: Vec<_> = found
        .iter()
        .map(|r| {
            (
                r.key_name.clone(),
                r.account.clone(),
                r.device.clone(),
                r.status,
            )
        })
        .collect();
    seen.sort();
    let named = |k: &str, a: &str, d: &str, s: u16| {
        (k.to_string(), Some(a.to_string()), Some(d.to_string()), s)
    };
    assert_eq!(
        seen,
        vec![
            named("acme/glass-1", "acme", "glass-1", 200),
            named("acme/glass-1", "acme", "glass-1", 403),
            named("globex/cam-9", "globex", "cam-9", 200),
        ]
    );

    for (by, groups) in [
        ("account", json!(["acme", "globex"])),
        ("device", json!(["cam-9", "glass-1"])),
    ] {
        let response = gw
            .http
            .get(gw.url(&format!("/admin/api/usage?group_by={by}")))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let body = json_of(response).await;
        let names: Vec<Value> = body["groups"]
            .as_array()
            .map(|g| g.iter().map(|g| g["group"].clone()).collect())
            .unwrap_or_default();
        assert_eq!(Value::from(names), groups, "{body}");
        assert_eq!(
            body["groups"][0]["requests"],
            if by == "account" { 2 } else { 1 }
        );
    }
}

#[tokio::test]
async fn expired_forged_and_rotated_tokens() {
    let sim = Sim::start().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let url = fresh_store(Backend::Sqlite, dir.path()).await;
    let with_keys = |keys: &str| {
        toml(
            &sim,
            &url,
            "acme",
            "",
            &format!("[devices]\nsigning_keys = [{keys}]\n"),
        )
    };
    let old = Gateway::start(&with_keys(&format!("\"{K1}\""))).await;
    let k1_token = token_for(&old, json!({"device_id": "g1", "ttl_seconds": 600})).await;
    assert_eq!(chat(&old, &k1_token, "qwen-plus").await.0, 200);

    let claims = |issued: i64, expires: i64| Claims {
        account: "acme".into(),
        device: "g1".into(),
        issued_ms: issued,
        expires_ms: expires,
        models: None,
        rpm: None,
        tpm: None,
        account_rpm: None,
        account_tpm: None,
    };
    let k1 = SigningKey::parse(K1).unwrap_or_else(|| panic!("K1"));
    let now = now_ms();
    let expired = token::sign(&k1, &claims(now - 120_000, now - 60_000));
    let (status, body) = chat(&old, &expired, "qwen-plus").await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("expired")),
        "{body}"
    );
    // Signed with a key the gateway does not hold.
    let stranger = SigningKey::new("k1", b"not-the-gateways-secret".to_vec());
    let forged = token::sign(&stranger, &claims(now, now + 60_000));
    assert_eq!(chat(&old, &forged, "qwen-plus").await.0, 401);

    // Rotation: k2 signs, k1 still verifies; once k1 is dropped its tokens stop working.
    let rotating = Gateway::start(&with_keys(&format!("\"{K2}\", \"{K1}\""))).await;
    assert_eq!(chat(&rotating, &k1_token, "qwen-plus").await.0, 200);
    let k2_token = token_for(&rotating, json!({"device_id": "g1", "ttl_seconds": 600})).await;
    assert!(k2_token.starts_with("dgt_k2."), "{k2_token}");
    let rotated = Gateway::start(&with_keys(&format!("\"{K2}\""))).await;
    assert_eq!(chat(&rotated, &k2_token, "qwen-plus").await.0, 200);
    assert_eq!(chat(&rotated, &k1_token, "qwen-plus").await.0, 401);
}

async fn revoking_a_device_or_an_account_reaches_every_gateway_within_the_refresh_bound(
    backend: Backend,
) {
    let sim = Sim::start().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let url = fresh_store(backend, dir.path()).await;
    let here = Gateway::start(&toml(&sim, &url, "acme", "", "")).await;
    // No signing keys configured: both use the one the first made and kept in the store.
    let there = Gateway::start(&toml(
        &sim,
        &url,
        "acme",
        "",
        "[devices]\nrevocation_refresh_ms = 200\n",
    ))
    .await;
    let one = token_for(&here, json!({"device_id": "d1", "ttl_seconds": 600})).await;
    let two = token_for(&here, json!({"device_id": "d2", "ttl_seconds": 600})).await;
    assert_eq!(chat(&there, &one, "qwen-plus").await.0, 200);

    let revoke = |body: Value| {
        here.http
            .post(here.url("/admin/api/devices/revoke"))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
    };
    let response = revoke(json!({"account": "acme", "device_id": "d1"}))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 200);
    // At once where it was revoked; the other device is untouched.
    assert_eq!(chat(&here, &one, "qwen-plus").await.0, 401);
    assert_eq!(chat(&here, &two, "qwen-plus").await.0, 200);
    refused_soon(&there, &one).await;
    assert_eq!(chat(&there, &two, "qwen-plus").await.0, 200);

    // The whole account; a token minted afterwards (the device enrolled again) works.
    let response = revoke(json!({"account": "acme"}))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 200);
    assert_eq!(chat(&here, &two, "qwen-plus").await.0, 401);
    refused_soon(&there, &two).await;
    // Issued strictly after the revocation (the clock's millisecond must move on).
    let start = now_ms();
    while now_ms() == start {
        tokio::task::yield_now().await;
    }
    let again = token_for(&here, json!({"device_id": "d2", "ttl_seconds": 600})).await;
    assert_eq!(chat(&there, &again, "qwen-plus").await.0, 200);
}

/// Polls `gw` until it refuses `token`; the deadline only keeps a broken refresh from hanging.
async fn refused_soon(gw: &Gateway, token: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    loop {
        ticker.tick().await;
        let (status, _) = chat(gw, token, "qwen-plus").await;
        if status == 401 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {status}");
    }
}

/// Account rpm 3 shared by its devices, device rpm 2 each: the first device gets 2, the
/// second 1 (the account's third), then both are refused.
async fn limits_per_device_and_per_account(extra: &str) {
    let sim = Sim::start().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let url = fresh_store(Backend::Sqlite, dir.path()).await;
    // Redis is shared by every test: an account of its own.
    let account = unique("acct");
    let gw = Gateway::start(&toml(&sim, &url, &account, "rpm = 3", extra)).await;
    let one = token_for(
        &gw,
        json!({"device_id": "d1", "ttl_seconds": 600, "rpm": 2}),
    )
    .await;
    let two = token_for(
        &gw,
        json!({"device_id": "d2", "ttl_seconds": 600, "rpm": 2}),
    )
    .await;
    let mut statuses = Vec::new();
    for token in [&one, &one, &one, &two, &two] {
        statuses.push(chat(&gw, token, "qwen-plus").await.0);
    }
    assert_eq!(statuses, [200, 200, 429, 200, 429]);
}

#[tokio::test]
async fn limits_per_device_and_per_account_in_process() {
    limits_per_device_and_per_account("").await;
}

#[tokio::test]
async fn limits_per_device_and_per_account_on_redis() {
    let redis = std::env::var("DASHGATE_TEST_REDIS_URL")
        .unwrap_or_else(|_| panic!("DASHGATE_TEST_REDIS_URL is not set: run scripts/test.sh"));
    limits_per_device_and_per_account(&format!(
        "[limits]\nredis_url = \"{redis}\"\non_redis_error = \"closed\"\n"
    ))
    .await;
}

/// A store key made through the admin API with an account mints for that account.
#[tokio::test]
async fn a_store_key_with_an_account_mints_for_it() {
    let sim = Sim::start().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let url = fresh_store(Backend::Sqlite, dir.path()).await;
    let gw = Gateway::start(&toml(&sim, &url, "acme", "", "")).await;
    let response = gw
        .http
        .post(gw.url("/admin/api/keys"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "initech-backend", "account": "initech"}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 201);
    let made = json_of(response).await;
    assert_eq!(made["account"], "initech", "{made}");
    let key = made["key"].as_str().unwrap_or_default().to_string();
    let (status, answer) = mint(&gw, &key, json!({"device_id": "d1", "ttl_seconds": 60})).await;
    assert_eq!(
        (status, &answer["account"]),
        (200, &json!("initech")),
        "{answer}"
    );
    let token = answer["token"].as_str().unwrap_or_default().to_string();
    assert_eq!(chat(&gw, &token, "qwen-plus").await.0, 200);
}
