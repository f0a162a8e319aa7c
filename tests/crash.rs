//! No usage record lost to a crash: the gateway binary is SIGKILLed mid-load (and after a store
//! outage), restarted on the same journal and store, and every request the client saw complete
//! has its record.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use dashgate::store::UsageFilter;
use futures_util::StreamExt;
use tokio::process::Child;

/// A safety net so a broken writer fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(30);

fn write_config(dir: &std::path::Path, sim: &str) -> String {
    let toml = format!(
        r#"
[store]
url = "sqlite://{dir}/dashgate.db"

[usage]
journal_path = "{dir}/usage.journal"

[[keys]]
name = "glass3"
key = "{CLIENT_KEY}"

[[upstreams]]
name = "sim"
provider = "dashscope"
base_url = "{sim}"
api_key = "{UPSTREAM_KEY}"
models = ["qwen-plus"]
"#,
        dir = dir.display()
    );
    let path = dir.join("dashgate.toml");
    std::fs::write(&path, toml).unwrap_or_else(|e| panic!("{e}"));
    path.display().to_string()
}

async fn serve(config: &str, dir: &std::path::Path) -> (Child, String) {
    announced(
        &["serve", "--config", config, "--listen", "127.0.0.1:0"],
        dir,
    )
    .await
}

/// Sends `total` requests, `parallel` at a time, and SIGKILLs the gateway once `kill_after`
/// have completed; the request ids of those the client saw complete (status 200, whole body).
async fn load_then_kill(
    url: &str,
    gateway: &mut Child,
    total: usize,
    parallel: usize,
    kill_after: usize,
) -> HashSet<String> {
    let http = reqwest::Client::new();
    let calls = futures_util::stream::iter(0..total)
        .map(|n| {
            let http = http.clone();
            let url = format!("{url}/compatible-mode/v1/chat/completions");
            async move {
                let response = http
                    .post(url)
                    .bearer_auth(CLIENT_KEY)
                    .json(&ask("qwen-plus", &format!("request {n}")))
                    .send()
                    .await
                    .ok()?;
                let id = response
                    .headers()
                    .get("x-request-id")?
                    .to_str()
                    .ok()?
                    .to_string();
                let ok = response.status() == 200;
                let body = response.bytes().await.ok()?;
                (ok && body.ends_with(b"}")).then_some(id)
            }
        })
        .buffer_unordered(parallel);
    futures_util::pin_mut!(calls);
    let mut completed = HashSet::new();
    let mut killed = false;
    while let Some(outcome) = calls.next().await {
        if let Some(id) = outcome {
            completed.insert(id);
        }
        if !killed && completed.len() >= kill_after {
            gateway.start_kill().unwrap_or_else(|e| panic!("{e}"));
            killed = true;
        }
    }
    assert!(killed, "only {} completed", completed.len());
    let _ = gateway.wait().await;
    completed
}

/// Waits until every id in `expected` has a record; the number of records found.
async fn all_recorded(store_url: &str, expected: &HashSet<String>) -> usize {
    let store = open_store(store_url).await;
    let filter = UsageFilter {
        key: Some("glass3".into()),
        ..UsageFilter::default()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    loop {
        ticker.tick().await;
        let found = store
            .usage_records(&filter, 100_000)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let ids: HashSet<&str> = found.iter().map(|r| r.request_id.as_str()).collect();
        let missing = expected
            .iter()
            .filter(|id| !ids.contains(id.as_str()))
            .count();
        if missing == 0 {
            let unique: HashSet<&str> = found.iter().map(|r| r.id.as_str()).collect();
            assert_eq!(unique.len(), found.len(), "a record written twice");
            return found.len();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{missing} of {} completed requests have no usage record",
            expected.len()
        );
    }
}

#[tokio::test]
async fn sigkill_mid_load_loses_no_record() {
    let sim = Sim::start().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = write_config(dir.path(), &sim.url());
    let (mut gateway, url) = serve(&config, dir.path()).await;
    let completed = load_then_kill(&url, &mut gateway, 600, 16, 300).await;
    // A new process on the same journal ships what the killed one had not.
    let (_gateway, _) = serve(&config, dir.path()).await;
    let store_url = format!("sqlite://{}/dashgate.db", dir.path().display());
    let found = all_recorded(&store_url, &completed).await;
    assert!(found >= completed.len());
}

#[tokio::test]
async fn a_store_outage_then_sigkill_loses_no_record() {
    use sqlx::Connection;
    let sim = Sim::start().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = write_config(dir.path(), &sim.url());
    let store_url = format!("sqlite://{}/dashgate.db", dir.path().display());
    let (mut gateway, url) = serve(&config, dir.path()).await;
    // The store's write lock held: every write of the gateway's writer fails.
    let mut lock = sqlx::sqlite::SqliteConnection::connect(&store_url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    sqlx::Executor::execute(&mut lock, "BEGIN IMMEDIATE")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let completed = load_then_kill(&url, &mut gateway, 300, 8, 200).await;
    sqlx::Executor::execute(&mut lock, "ROLLBACK")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    drop(lock);
    let (_gateway, _) = serve(&config, dir.path()).await;
    let found = all_recorded(&store_url, &completed).await;
    assert!(found >= completed.len());
}
