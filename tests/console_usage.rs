//! The console's admin API over the usage ledger: time buckets with latency percentiles, the
//! day × key × model table and its CSV, and each key's status and last use, the same on SQLite
//! and PostgreSQL.

mod common;

use common::{Backend, Gateway, fresh_store, open_store};
use dashgate::store::{Bucket, UsageFilter};
use dashgate::usage::UsageRecord;
use serde_json::{Value, json};

const HOUR: i64 = 3_600_000;
/// 2026-12-01T00:00:00Z.
const DAY0: i64 = 1_796_083_200_000;

fn record(at: i64, key: &str, model: &str, status: u16, duration: u64, ttft: u64) -> UsageRecord {
    UsageRecord {
        id: uuid::Uuid::new_v4().to_string(),
        at,
        request_id: "r".into(),
        key_name: key.into(),
        model: model.into(),
        upstream: "sim".into(),
        route: "chat".into(),
        dialect: "openai".into(),
        status,
        prompt_tokens: 10,
        completion_tokens: 5,
        total_tokens: 15,
        cached_tokens: Some(2),
        image_tokens: Some(7),
        ttft_ms: Some(ttft),
        duration_ms: duration,
        cost: Some(0.5),
        ..UsageRecord::default()
    }
}

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
    usage_is_bucketed_tabled_and_exported_alike,
    usage_per_account_and_device_through_the_admin_api,
);

async fn usage_is_bucketed_tabled_and_exported_alike(backend: Backend) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let url = fresh_store(backend, dir.path()).await;
    let store = open_store(&url).await;
    let mut records = Vec::new();
    // Hour 0: ten requests of glass3 on qwen-plus, durations 10..=100, one failed.
    for i in 1..=10u64 {
        let status = if i == 10 { 500 } else { 200 };
        records.push(record(
            DAY0 + 60_000 * i as i64,
            "glass3",
            "qwen-plus",
            status,
            i * 10,
            i,
        ));
    }
    // Hour 2: one request of a key whose name needs quoting in CSV; next day: one more.
    records.push(record(
        DAY0 + 2 * HOUR + 5,
        "=cam,1",
        "qwen-vl-plus",
        200,
        7,
        3,
    ));
    records.push(record(
        DAY0 + 24 * HOUR + 5,
        "glass3",
        "qwen-plus",
        200,
        40,
        4,
    ));
    store
        .insert_usage(&records)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let all = UsageFilter {
        from: Some(DAY0),
        to: Some(DAY0 + 48 * HOUR),
        ..UsageFilter::default()
    };
    let series = store
        .usage_series(&all, Bucket::Hour)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let buckets: Vec<(i64, u64, u64)> =
        series.iter().map(|p| (p.t, p.requests, p.errors)).collect();
    assert_eq!(
        buckets,
        vec![
            (DAY0, 10, 1),
            (DAY0 + 2 * HOUR, 1, 0),
            (DAY0 + 24 * HOUR, 1, 0)
        ]
    );
    assert_eq!(series[0].total_tokens, 150);
    assert_eq!(series[0].latency_p50_ms, Some(50));
    assert_eq!(series[0].latency_p99_ms, Some(100));
    assert_eq!(series[0].ttft_p50_ms, Some(5));
    let days = store
        .usage_series(&all, Bucket::Day)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        days.iter().map(|p| p.requests).collect::<Vec<_>>(),
        vec![11, 1]
    );
    let one_key = UsageFilter {
        key: Some("glass3".into()),
        ..all.clone()
    };
    let series = store
        .usage_series(&one_key, Bucket::Day)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        series.iter().map(|p| p.requests).collect::<Vec<_>>(),
        vec![10, 1]
    );

    let table = store
        .usage_table(&all)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let rows: Vec<(&str, &str, &str, u64)> = table
        .iter()
        .map(|r| (r.day.as_str(), r.key.as_str(), r.model.as_str(), r.requests))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("2026-12-02", "glass3", "qwen-plus", 1),
            ("2026-12-01", "=cam,1", "qwen-vl-plus", 1),
            ("2026-12-01", "glass3", "qwen-plus", 10),
        ]
    );
    let day1 = &table[2];
    assert_eq!(
        (
            day1.errors,
            day1.prompt_tokens,
            day1.cached_tokens,
            day1.image_tokens,
            day1.audio_tokens
        ),
        (1, 100, 20, 70, 0)
    );
    assert!((day1.cost - 5.0).abs() < 1e-9, "{}", day1.cost);
    store.close().await;

    // The same through the admin API of a gateway on that store: the CSV, and key status.
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = \"{url}\"\n[auth]\nadmin_token = \"admin-token-for-tests-0123\"\n\
         [[upstreams]]\nname = \"sim\"\nprovider = \"dashscope\"\nbase_url = \"http://127.0.0.1:9\"\n"
    );
    let gateway = Gateway::start(&toml).await;
    let admin = |path: &str| {
        gateway
            .http
            .get(gateway.url(path))
            .bearer_auth("admin-token-for-tests-0123")
    };
    let csv = admin(&format!("/admin/api/usage/export.csv?from={DAY0}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/csv")
    );
    let csv = csv.text().await.unwrap_or_else(|e| panic!("{e}"));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(lines[0].starts_with("day,key,model,requests,errors,prompt_tokens,cached_tokens"));
    assert_eq!(
        lines[2],
        "2026-12-01,\"'=cam,1\",qwen-vl-plus,1,0,10,2,5,0,7,0,15,0.5"
    );
    let series: Value = admin(&format!("/admin/api/usage/series?bucket=day&from={DAY0}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(series["data"][0]["requests"], 11, "{series}");
    let bad = admin("/admin/api/usage/series?bucket=fortnight");
    let bad: Value = bad
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bad["error"]["param"], "bucket", "{bad}");

    let created = gateway
        .http
        .post(gateway.url("/admin/api/keys"))
        .bearer_auth("admin-token-for-tests-0123")
        .json(&json!({"name": "glass3", "rpm": 5}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(created.status(), 201);
    let keys: Value = admin("/admin/api/keys")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let key = &keys["data"][0];
    assert_eq!(key["status"], "active", "{keys}");
    assert_eq!(key["last_used_at"], DAY0 + 24 * HOUR + 5, "{keys}");
}

async fn usage_per_account_and_device_through_the_admin_api(backend: Backend) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let url = fresh_store(backend, dir.path()).await;
    let store = open_store(&url).await;
    let on = |account: Option<&str>, device: Option<&str>, at: i64| UsageRecord {
        account: account.map(String::from),
        device: device.map(String::from),
        ..record(at, "k", "qwen-plus", 200, 10, 1)
    };
    let records = vec![
        on(Some("acme"), Some("glass-2"), DAY0 + 1),
        on(Some("acme"), Some("glass-1"), DAY0 + 2),
        on(Some("acme"), Some("glass-1"), DAY0 + 3),
        on(Some("beta"), Some("glass-1"), DAY0 + 4),
        on(None, None, DAY0 + 5),
        // Outside the range asked for.
        on(Some("acme"), Some("glass-1"), DAY0 + 48 * HOUR),
    ];
    store
        .insert_usage(&records)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    store.close().await;
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = \"{url}\"\n[auth]\nadmin_token = \"admin-token-for-tests-0123\"\n\
         [[upstreams]]\nname = \"sim\"\nprovider = \"dashscope\"\nbase_url = \"http://127.0.0.1:9\"\n"
    );
    let gateway = Gateway::start(&toml).await;
    let path = format!(
        "/admin/api/usage/devices?from={DAY0}&to={}",
        DAY0 + 24 * HOUR
    );
    let response = gateway
        .http
        .get(gateway.url(&path))
        .bearer_auth("admin-token-for-tests-0123")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap_or_else(|e| panic!("{e}"));
    let rows: Vec<(String, String, u64, u64)> = body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|r| {
            (
                r["account"].as_str().unwrap_or("").to_string(),
                r["device"].as_str().unwrap_or("").to_string(),
                r["requests"].as_u64().unwrap_or(0),
                r["total_tokens"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let row = |a: &str, d: &str, n: u64| (a.to_string(), d.to_string(), n, 15 * n);
    let mut expected = vec![
        row("acme", "glass-1", 2),
        row("acme", "glass-2", 1),
        row("beta", "glass-1", 1),
        row("-", "-", 1),
    ];
    // Where the database sorts the requests without an account (NULL) differs: first or last.
    if rows.first().is_some_and(|r| r.0 == "-") {
        expected.rotate_right(1);
    }
    assert_eq!(rows, expected, "{body}");
    // Without the admin token: nothing.
    let response = gateway
        .http
        .get(gateway.url(&path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 401);
}
