//! Several gateways and their shared parts: limits shared by two `dashgate serve` processes on
//! one Redis, Redis unreachable (fail open or closed), a SIGTERM in the middle of streams and a
//! restart (exactly one record per request), and a store outage mid-run (no record lost).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use dashgate::store::UsageFilter;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;

const BIN: &str = env!("CARGO_BIN_EXE_dashgate");
/// A safety net so a wedged process fails the test instead of hanging it.
const EXIT_WAIT: Duration = Duration::from_secs(15);

fn redis_url() -> String {
    std::env::var("DASHGATE_TEST_REDIS_URL")
        .unwrap_or_else(|_| panic!("DASHGATE_TEST_REDIS_URL is not set: run scripts/test.sh"))
}

/// `dashgate serve --config FILE` on port 0, in the config's directory, and the URL it announced.
async fn serve(config: &std::path::Path) -> (Child, String) {
    let cwd = config.parent().unwrap_or(std::path::Path::new("."));
    let config = config.display().to_string();
    announced(
        &["serve", "--config", &config, "--listen", "127.0.0.1:0"],
        cwd,
    )
    .await
}

fn write(dir: &tempfile::TempDir, name: &str, toml: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, toml).unwrap_or_else(|e| panic!("{e}"));
    path
}

fn minute() -> i64 {
    dashgate::store::now_ms() / 60_000
}

async fn chat(http: &reqwest::Client, base: &str, key: &str) -> u16 {
    http.post(format!("{base}/compatible-mode/v1/chat/completions"))
        .bearer_auth(key)
        .json(&ask("qwen-plus", "hi"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test]
async fn limits_are_shared_by_two_gateway_processes_on_one_redis() {
    let sim = Sim::start().await;
    let http = reqwest::Client::new();
    // Minutes are wall-clock windows: a run that straddles one is run again.
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        // A key name of its own, so runs sharing the Redis do not share counts.
        let name = format!("fleet-{}", uuid::Uuid::new_v4().simple());
        let toml = |n: u32| {
            format!(
                r#"
[store]
url = "sqlite://{dir}/gw{n}.db"

[usage]
spill_path = "{dir}/gw{n}.spill"
journal_path = "{dir}/gw{n}.journal"

[limits]
redis_url = "{redis}"
on_redis_error = "closed"

[[keys]]
name = "{name}"
key = "sk-shared-test"
rpm = 3

[[upstreams]]
name = "sim"
provider = "dashscope"
base_url = "{sim}"
api_key = "{UPSTREAM_KEY}"
"#,
                dir = dir.path().display(),
                redis = redis_url(),
                sim = sim.url(),
            )
        };
        let (_a, a) = serve(&write(&dir, "a.toml", &toml(1))).await;
        let (_b, b) = serve(&write(&dir, "b.toml", &toml(2))).await;
        let started = minute();
        let statuses = [
            chat(&http, &a, "sk-shared-test").await,
            chat(&http, &b, "sk-shared-test").await,
            chat(&http, &a, "sk-shared-test").await,
            chat(&http, &b, "sk-shared-test").await,
            chat(&http, &a, "sk-shared-test").await,
        ];
        if minute() != started {
            continue;
        }
        assert_eq!(statuses, [200, 200, 200, 429, 429]);
        return;
    }
    panic!("three runs in a row straddled a minute");
}

#[tokio::test]
async fn redis_unreachable_fails_open_or_closed_as_configured() {
    let sim = Sim::start().await;
    // A port nothing listens on.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("{e}"));
    for (mode, expected) in [("open", 200), ("closed", 503)] {
        let extra = format!(
            "[limits]\nredis_url = \"redis://{closed}\"\non_redis_error = \"{mode}\"\nredis_timeout_ms = 100\n\n[[keys]]\nname = \"capped\"\nkey = \"sk-capped-test\"\nrpm = 100\n"
        );
        let gw = Gateway::start(&config_for(&sim, "", &extra)).await;
        let status = chat(&gw.http, &format!("http://{}", gw.addr), "sk-capped-test").await;
        assert_eq!(status, expected, "{mode}");
        // A key without limits never needs Redis.
        assert_eq!(
            chat(&gw.http, &format!("http://{}", gw.addr), CLIENT_KEY).await,
            200
        );
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
            metrics.contains("dashgate_limiter_errors_total 1"),
            "{metrics}"
        );
    }
}

async fn sigterm_mid_stream_then_restart(backend: Backend) {
    const STREAMS: usize = 5;
    let sim = Sim::start().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store_url = fresh_store(backend, dir.path()).await;
    let toml = format!(
        r#"
[server]
drain_timeout_ms = 200

[store]
url = "{store_url}"

[usage]
spill_path = "{dir}/usage.spill"

[[keys]]
name = "glass3"
key = "{CLIENT_KEY}"

[[upstreams]]
name = "sim"
provider = "dashscope"
base_url = "{sim}"
api_key = "{UPSTREAM_KEY}"
"#,
        dir = dir.path().display(),
        sim = sim.url(),
    );
    let config = write(&dir, "dashgate.toml", &toml);
    let (mut gateway, url) = serve(&config).await;
    let http = reqwest::Client::new();
    let mut streams = Vec::new();
    for i in 0..STREAMS {
        let body = json!({
            "model": "qwen-plus",
            "messages": [{"role": "user", "content": format!("stream {i}")}],
            "stream": true,
            "sim": {"chunks": 50, "chunk_delay_ms": 100},
        });
        let response = http
            .post(format!("{url}/compatible-mode/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status(), 200);
        // Each is under way: its first event has arrived.
        streams.push(first_events(response, 1).await.1);
    }
    let pid = gateway.id().unwrap_or_else(|| panic!("no pid"));
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(killed.success());
    for mut rest in streams {
        use futures_util::StreamExt;
        let mut tail = String::new();
        while let Some(Ok(chunk)) = rest.next().await {
            tail.push_str(&String::from_utf8_lossy(&chunk));
        }
        assert!(tail.contains("gateway_shutting_down"), "{tail}");
    }
    let exit = tokio::time::timeout(EXIT_WAIT, gateway.wait()).await;
    assert!(matches!(exit, Ok(Ok(s)) if s.success()), "{exit:?}");
    // A restart on the same store writes nothing twice (and replays any spill).
    let (_again, url) = serve(&config).await;
    assert_eq!(chat(&http, &url, CLIENT_KEY).await, 200);
    let store = open_store(&store_url).await;
    let streamed = UsageFilter {
        key: Some("glass3".into()),
        ..UsageFilter::default()
    };
    let found = records(&store, &streamed, STREAMS + 1).await;
    let cut: Vec<_> = found
        .iter()
        .filter(|r| r.error_code.as_deref() == Some("gateway_shutting_down"))
        .collect();
    assert_eq!(cut.len(), STREAMS, "{found:#?}");
    assert!(
        cut.iter()
            .all(|r| r.stream && r.estimated && r.total_tokens > 0)
    );
}

mod sigterm_mid_stream_then_restart_leaves_one_record_per_request {
    #[tokio::test]
    async fn sqlite() {
        super::sigterm_mid_stream_then_restart(super::Backend::Sqlite).await
    }
    #[tokio::test]
    async fn postgres() {
        super::sigterm_mid_stream_then_restart(super::Backend::Postgres).await
    }
}

/// A TCP relay to a server that can be cut (every connection dropped, new ones refused) and
/// restored: a store outage without touching the shared database server.
struct Relay {
    addr: std::net::SocketAddr,
    up: Arc<AtomicBool>,
    cut: Arc<tokio::sync::Notify>,
}

impl Relay {
    async fn to(target: std::net::SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(tokio::sync::Notify::new());
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let cut = cut2.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.notified() => {}
                    }
                });
            }
        });
        Relay { addr, up, cut }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_store_outage_mid_run_loses_no_record() {
    let sim = Sim::start().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let direct = fresh_store(Backend::Postgres, dir.path()).await;
    let (host, rest) = direct
        .trim_start_matches("postgres://")
        .split_once('@')
        .map(|(_, r)| ("dashgate", r))
        .unwrap_or_else(|| panic!("{direct}"));
    let (server, database) = rest.split_once('/').unwrap_or_else(|| panic!("{rest}"));
    let target = tokio::net::lookup_host(server)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| panic!("{server}"));
    let relay = Relay::to(target).await;
    let through = format!("postgres://{host}@{}/{database}", relay.addr);
    let journal = dir.path().join("usage.journal");
    let extra = format!(
        "[store]\nurl = \"{through}\"\n\n[usage]\njournal_path = \"{}\"\n",
        journal.display()
    );
    let gw = Gateway::start(&config_for(&sim, "", &extra)).await;
    let store = open_store(&direct).await;
    let mine = UsageFilter {
        key: Some("glass3".into()),
        ..UsageFilter::default()
    };
    let base = format!("http://{}", gw.addr);
    for _ in 0..2 {
        assert_eq!(chat(&gw.http, &base, CLIENT_KEY).await, 200);
    }
    records(&store, &mine, 2).await;

    relay.cut();
    // Static keys need no store: the gateway keeps serving.
    for _ in 0..8 {
        assert_eq!(chat(&gw.http, &base, CLIENT_KEY).await, 200);
    }
    // Every record is in the journal on disk while the store is away.
    let lines = std::fs::read(&journal).unwrap_or_default();
    assert_eq!(lines.iter().filter(|b| **b == b'\n').count(), 10);
    relay.restore();
    records(&store, &mine, 10).await;
    let metrics = gw
        .http
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    assert!(!metrics.contains("outcome=\"lost\""), "{metrics}");
}

/// `dashgate keys ...` with this config; its exit code, stdout and stderr.
fn keys_command(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(BIN)
        .arg("keys")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn the_keys_command_mints_lists_and_revokes(backend: Backend) {
    let sim = Sim::start().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store_url = fresh_store(backend, dir.path()).await;
    let extra = format!("[store]\nurl = \"{store_url}\"\n");
    let config = write(&dir, "dashgate.toml", &config_for(&sim, "", &extra));
    let (code, key, _) = keys_command(
        &config,
        &[
            "create",
            "--name",
            "cli-glass",
            "--models",
            "qwen-plus",
            "--rpm",
            "5",
            "--token-quota",
            "1000",
            "--quota-period",
            "month",
            "--expires",
            "2099-01-01T00:00:00Z",
        ],
    );
    assert_eq!(code, 0);
    let key = key.trim().to_string();
    assert!(key.starts_with("sk-dg-") && key.len() == 54, "{key}");
    let (code, _, err) = keys_command(&config, &["create", "--name", "cli-glass"]);
    assert_eq!(code, 2, "a taken name is a usage error");
    assert!(err.contains("--name"), "{err}");
    let (code, _, err) = keys_command(&config, &["create", "--name", "x", "--expires", "soon"]);
    assert_eq!((code, err.contains("--expires")), (2, true), "{err}");

    let store = open_store(&store_url).await;
    let listed = store.list_keys().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(listed.len(), 1);
    let k = &listed[0];
    assert_eq!(k.models.as_deref(), Some(&["qwen-plus".to_string()][..]));
    assert_eq!((k.rpm, k.token_quota), (Some(5), Some(1000)));
    assert_eq!(k.quota_period, dashgate::store::QuotaPeriod::Month);
    assert_eq!(
        k.expires_at,
        dashgate::store::parse_rfc3339("2099-01-01T00:00:00Z")
    );
    let hash = hex::encode(dashgate::auth::hash_key(&key));
    assert!(store.key_by_hash(&hash).await.ok().flatten().is_some());

    let (code, table, _) = keys_command(&config, &["list"]);
    assert_eq!(code, 0);
    assert!(table.contains("cli-glass") && table.contains("active") && !table.contains(&key));

    let gw = Gateway::start(&config_for(&sim, "", &extra)).await;
    let base = format!("http://{}", gw.addr);
    assert_eq!(chat(&gw.http, &base, &key).await, 200);
    let (code, _, _) = keys_command(&config, &["revoke", "cli-glass"]);
    assert_eq!(code, 0);
    let (code, table, _) = keys_command(&config, &["list"]);
    assert!(code == 0 && table.contains("revoked"), "{table}");
    let (code, _, _) = keys_command(&config, &["revoke", "nobody"]);
    assert_eq!(code, 1);
}

mod the_keys_command_mints_lists_and_revokes {
    #[tokio::test]
    async fn sqlite() {
        super::the_keys_command_mints_lists_and_revokes(super::Backend::Sqlite).await
    }
    #[tokio::test]
    async fn postgres() {
        super::the_keys_command_mints_lists_and_revokes(super::Backend::Postgres).await
    }
}
