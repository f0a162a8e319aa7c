//! Cost of authenticating one request: a device token (HMAC check, JSON claims, deny-list
//! look, no store) against a store key's SQLite query (the path a key takes when its cached
//! lookup has run out) and a cached store key. Bounded: `ITERATIONS` (default 20000)
//! per row. `cargo run --release --example device_auth`.

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, header};
use dashgate::auth::{Authenticator, hash_key, key_prefix, mint_key};
use dashgate::config::{AuthMode, DevicesConfig, Secret};
use dashgate::device::Devices;
use dashgate::device::token::{self, Claims};
use dashgate::store::{NewKey, Store, now_ms};

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
        headers.insert(header::AUTHORIZATION, v);
    }
    headers
}

async fn time(label: &str, n: u32, auth: &Authenticator, headers: &HeaderMap) {
    let start = Instant::now();
    let mut ok = 0u32;
    for _ in 0..n {
        ok += u32::from(auth.authenticate(headers).await.is_ok());
    }
    let per = start.elapsed() / n;
    println!("| {label} | {:.2} µs | {ok}/{n} |", per.as_secs_f64() * 1e6);
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u32 = std::env::var("ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir()?;
    let store = Store::open(&format!("sqlite://{}/bench.db", dir.path().display())).await?;
    let key = mint_key()?;
    let new = NewKey {
        name: "bench".into(),
        ..NewKey::default()
    };
    store
        .create_key(&new, &hex::encode(hash_key(&key)), &key_prefix(&key))
        .await?;
    let config = DevicesConfig {
        signing_keys: vec![Secret::new("k1:bench-signing-secret-0123456789")],
        ..DevicesConfig::default()
    };
    let devices = std::sync::Arc::new(Devices::open(&config, &store).await?);
    // A deny list of 1,000 revoked devices, so the look is not of an empty map.
    for i in 0..1000 {
        store.revoke_devices("acme", &format!("old-{i}")).await?;
    }
    devices.refresh(&store).await?;
    let claims = Claims {
        account: "acme".into(),
        device: "glass-00042".into(),
        issued_ms: now_ms(),
        expires_ms: now_ms() + 3_600_000,
        models: Some(vec!["qwen-plus".into(), "qwen-vl-plus".into()]),
        rpm: Some(60),
        tpm: Some(100_000),
        account_rpm: Some(6000),
        account_tpm: None,
    };
    let device_token = token::sign(devices.signing_key(), &claims);

    let tokens = Authenticator::new(AuthMode::Keys, &[], Some(store.clone()), Duration::ZERO)
        .with_devices(devices.clone());
    let cached = Authenticator::new(
        AuthMode::Keys,
        &[],
        Some(store.clone()),
        Duration::from_secs(600),
    );
    println!("| path | per request | accepted |\n| --- | --- | --- |");
    time(
        "device token (no store)",
        n,
        &tokens,
        &bearer(&device_token),
    )
    .await;
    // What a key costs when its cached lookup has run out: the store query itself.
    let hash = hex::encode(hash_key(&key));
    let start = Instant::now();
    let mut ok = 0u32;
    for _ in 0..n {
        ok += u32::from(matches!(store.key_by_hash(&hash).await, Ok(Some(_))));
    }
    let per = start.elapsed() / n;
    let us = per.as_secs_f64() * 1e6;
    println!("| store key, SQLite lookup (uncached) | {us:.2} µs | {ok}/{n} |");
    time("store key, cached lookup", n, &cached, &bearer(&key)).await;
    println!("token length: {} bytes", device_token.len());
    Ok(())
}
