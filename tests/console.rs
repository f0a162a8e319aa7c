//! The console and the first run: the bootstrap admin token (printed once, hash stored, gone
//! once replaced or once a token is configured), cookie sessions with CSRF, `serve --simulate`,
//! and the console's admin API (time buckets, the usage table and CSV, key status) on SQLite
//! and PostgreSQL alike.

mod common;

use std::path::Path;
use std::process::Stdio;

use common::{Backend, Gateway, fresh_store, open_store};
use dashgate::store::{Bucket, UsageFilter};
use dashgate::usage::UsageRecord;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_dashgate");

/// `dashgate serve` as a process in `dir`, its stdout read line by line, its stderr in a file.
struct Serve {
    child: tokio::process::Child,
    stdout: BufReader<tokio::process::ChildStdout>,
    url: String,
    stderr: std::path::PathBuf,
}

impl Serve {
    async fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Serve {
        let stderr = dir.join(format!("stderr-{}.log", uuid::Uuid::new_v4().simple()));
        let file = std::fs::File::create(&stderr).unwrap_or_else(|e| panic!("{e}"));
        let mut command = tokio::process::Command::new(BIN);
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .current_dir(dir)
            .env_remove("DASHSCOPE_API_KEY")
            .env_remove("DASHGATE_ADMIN_TOKEN")
            .env_remove("DASHGATE_STORE_URL")
            .env_remove("DASHGATE_LISTEN")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(file)
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap_or_else(|e| panic!("{BIN}: {e}"));
        let mut stdout = BufReader::new(child.stdout.take().unwrap_or_else(|| panic!("stdout")));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let url = line.trim().rsplit(' ').next().unwrap_or("").to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "first line: {line:?}");
        Serve {
            child,
            stdout,
            url,
            stderr,
        }
    }

    /// The token of the `admin token: ...` line, which follows the address line at once.
    async fn bootstrap_token(&mut self) -> String {
        for _ in 0..3 {
            let mut line = String::new();
            self.stdout
                .read_line(&mut line)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            if let Some(token) = line.trim().strip_prefix("admin token: ") {
                return token.to_string();
            }
        }
        panic!("no `admin token:` line");
    }

    /// Stops the process; returns the rest of its stdout and its whole stderr.
    async fn stop(mut self) -> (String, String) {
        let _ = self.child.kill().await;
        let mut rest = String::new();
        let _ = self.stdout.read_to_string(&mut rest).await;
        let log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        (rest, log)
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

async fn status_of(request: reqwest::RequestBuilder) -> u16 {
    request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .status()
        .as_u16()
}

/// Signs in; returns the session cookie (`name=value`), the whole Set-Cookie and the CSRF token.
async fn sign_in(url: &str, token: &str, tls: bool) -> (String, String, String) {
    let mut request = http()
        .post(format!("{url}/admin/session"))
        .json(&json!({"token": token}));
    if tls {
        request = request.header("x-forwarded-proto", "https");
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 200);
    let set = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body: Value = response.json().await.unwrap_or_else(|e| panic!("{e}"));
    let cookie = set.split(';').next().unwrap_or_default().to_string();
    (
        cookie,
        set,
        body["csrf"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test]
async fn a_first_run_prints_a_bootstrap_token_that_lasts_until_replaced_or_configured() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut serve = Serve::start(dir.path(), &[], &[]).await;
    let token = serve.bootstrap_token().await;
    let url = serve.url.clone();
    assert!(token.len() >= 32, "{token}");

    // The console page, then sign-in: a wrong token is refused; the cookie is locked down.
    let page = http()
        .get(format!("{url}/admin"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/html")
    );
    let wrong = http()
        .post(format!("{url}/admin/session"))
        .json(&json!({"token": "dga-wrong"}));
    assert_eq!(status_of(wrong).await, 401);
    let (cookie, set, csrf) = sign_in(&url, &token, false).await;
    for part in ["HttpOnly", "SameSite=Strict", "Path=/admin"] {
        assert!(set.contains(part), "{set}");
    }
    assert!(!set.contains("Secure"), "{set}");
    let (_, set_tls, _) = sign_in(&url, &token, true).await;
    assert!(set_tls.contains("; Secure"), "{set_tls}");

    // Reads need the cookie; changes need the cookie and the CSRF token.
    let keys = format!("{url}/admin/api/keys");
    assert_eq!(status_of(http().get(&keys)).await, 401);
    assert_eq!(
        status_of(http().get(&keys).header("cookie", &cookie)).await,
        200
    );
    let create = || {
        http()
            .post(&keys)
            .header("cookie", &cookie)
            .json(&json!({"name": "glass3-first"}))
    };
    assert_eq!(status_of(create()).await, 401);
    assert_eq!(
        status_of(create().header("x-dashgate-csrf", "forged")).await,
        401
    );
    assert_eq!(
        status_of(create().header("x-dashgate-csrf", &csrf)).await,
        201
    );

    // A restart with a key in the store prints no new token; the old one still works.
    let (rest, log) = serve.stop().await;
    assert!(log.contains("no upstream key is set"), "{log}");
    assert!(
        log.contains("DASHSCOPE_API_KEY") && log.contains("/admin"),
        "{log}"
    );
    assert!(!log.contains(&token), "the token is printed on stdout only");
    assert!(!rest.contains("admin token:"), "{rest}");
    let serve = Serve::start(dir.path(), &[], &[]).await;
    let url = serve.url.clone();
    let keys = format!("{url}/admin/api/keys");
    assert_eq!(status_of(http().get(&keys).bearer_auth(&token)).await, 200);
    let (rest, _) = serve.stop().await;
    assert!(!rest.contains("admin token:"), "{rest}");

    // Replaced through the console: the old token and its sessions stop working.
    let serve = Serve::start(dir.path(), &[], &[]).await;
    let url = serve.url.clone();
    let keys = format!("{url}/admin/api/keys");
    let (cookie, _, csrf) = sign_in(&url, &token, false).await;
    let replaced: Value = http()
        .post(format!("{url}/admin/api/admin-token"))
        .header("cookie", &cookie)
        .header("x-dashgate-csrf", &csrf)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let new_token = replaced["admin_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(new_token.len() >= 32 && new_token != token, "{replaced}");
    assert_eq!(status_of(http().get(&keys).bearer_auth(&token)).await, 401);
    assert_eq!(
        status_of(http().get(&keys).header("cookie", &cookie)).await,
        401
    );
    assert_eq!(
        status_of(http().get(&keys).bearer_auth(&new_token)).await,
        200
    );
    serve.stop().await;

    // A configured token ends the gateway-made one, and cannot be replaced from the console.
    let configured = "configured-admin-token-0123456789";
    let serve = Serve::start(dir.path(), &[], &[("DASHGATE_ADMIN_TOKEN", configured)]).await;
    let url = serve.url.clone();
    let keys = format!("{url}/admin/api/keys");
    assert_eq!(
        status_of(http().get(&keys).bearer_auth(&new_token)).await,
        401
    );
    assert_eq!(
        status_of(http().get(&keys).bearer_auth(configured)).await,
        200
    );
    let replace = http()
        .post(format!("{url}/admin/api/admin-token"))
        .bearer_auth(configured);
    assert_eq!(status_of(replace).await, 400);
    serve.stop().await;
    let serve = Serve::start(dir.path(), &[], &[]).await;
    let keys = format!("{}/admin/api/keys", serve.url);
    assert_eq!(
        status_of(http().get(&keys).bearer_auth(&new_token)).await,
        404
    );
    serve.stop().await;
}

#[tokio::test]
async fn no_bootstrap_token_when_keys_are_configured() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("dashgate.toml");
    std::fs::write(
        &config,
        "[[keys]]\nname = \"glass3\"\nkey = \"sk-glass3-demo\"\n\
         [[upstreams]]\nname = \"d\"\nprovider = \"dashscope\"\nbase_url = \"http://127.0.0.1:9\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let serve = Serve::start(dir.path(), &[], &[]).await;
    let admin = format!("{}/admin", serve.url);
    assert_eq!(status_of(http().get(&admin)).await, 404);
    let (rest, _) = serve.stop().await;
    assert!(!rest.contains("admin token:"), "{rest}");
}

#[tokio::test]
async fn serve_simulate_answers_from_the_simulator_and_says_so_on_every_response() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut serve = Serve::start(dir.path(), &["--simulate"], &[]).await;
    let token = serve.bootstrap_token().await;
    let url = serve.url.clone();
    let made: Value = http()
        .post(format!("{url}/admin/api/keys"))
        .bearer_auth(&token)
        .json(&json!({"name": "glass3"}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let key = made["key"].as_str().unwrap_or_default();
    let chat = http()
        .post(format!("{url}/compatible-mode/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "qwen-vl-plus", "messages": [{"role": "user", "content": "你好"}]}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(chat.status(), 200);
    let marked = |r: &reqwest::Response| {
        r.headers()
            .get("x-dashgate-upstream")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(marked(&chat).as_deref(), Some("simulator"));
    let body: Value = chat.json().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        body["choices"][0]["message"]["content"].is_string(),
        "{body}"
    );
    for request in [
        http().get(format!("{url}/healthz")),
        http().get(format!("{url}/admin")),
        http()
            .post(format!("{url}/compatible-mode/v1/chat/completions"))
            .bearer_auth("sk-unknown"),
    ] {
        let response = request.send().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(marked(&response).as_deref(), Some("simulator"));
    }
    let (_, log) = serve.stop().await;
    assert!(log.contains("SIMULATED"), "{log}");
    assert!(!log.contains("no upstream key is set"), "{log}");

    // Without --simulate, nothing says so.
    let serve = Serve::start(dir.path(), &[], &[]).await;
    let response = http()
        .get(format!("{}/healthz", serve.url))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(response.headers().get("x-dashgate-upstream").is_none());
    serve.stop().await;
}

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

on_both_stores!(usage_is_bucketed_tabled_and_exported_alike);

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
