//! 100-line batches through both routes (docs/batch.md) — forwarded to a `dashscope`
//! upstream's batch API (the simulator's), and run by the gateway itself against an
//! OpenAI-compatible upstream, with the gateway binary SIGKILLed in the middle and restarted on
//! the same store — every line answered once, one ledger record per line; and two gateways on
//! one PostgreSQL store running one batch once.

mod common;

use std::collections::BTreeSet;

use common::batches::*;
use common::*;
use serde_json::Value;

#[tokio::test]
async fn a_forwarded_batch_of_100_lines_is_answered_once_each_and_metered_once() {
    let sim = Sim::with(sim_with(0, 3)).await;
    let gw = gateway(&sim, "poll_ms = 50").await;
    let api = client(&gw);
    let batch = api.create(batch_file("qwen-plus", 100)).await;
    let id = batch["id"].as_str().unwrap_or_default();
    assert_eq!(batch["endpoint"], "/v1/chat/completions");
    assert_eq!(batch["metadata"]["job"], "test");
    let done = api.wait_for(id, "completed").await;
    assert_eq!(done["request_counts"]["total"], 100, "{done:#}");
    assert_eq!(done["request_counts"]["completed"], 100);
    assert_eq!(done["request_counts"]["failed"], 0);
    assert!(done["completed_at"].as_i64() >= done["created_at"].as_i64());
    assert_eq!(done["error_file_id"], Value::Null, "{done:#}");
    let output = done["output_file_id"].as_str().unwrap_or_default();
    let lines = api.output_lines(output).await;
    assert_eq!(lines.len(), 100);
    assert_answered_once(&lines, 100);
    // One record per line, keyed by its custom id; polling the finished batch adds none.
    let ids = ledger_ids(&store_of(&gw), "glass3", 100).await;
    let expected: BTreeSet<String> = (1..=100).map(|n| format!("{id}:req-{n}")).collect();
    assert_eq!(ids, expected);
    assert_eq!(api.batch(id).await["status"], "completed");
    ledger_ids(&store_of(&gw), "glass3", 100).await;
}

fn write_config(dir: &std::path::Path, sim: &str) -> String {
    let toml = format!(
        r#"
[store]
url = "sqlite://{dir}/dashgate.db"

[usage]
journal_path = "{dir}/usage.journal"
spill_path = "{dir}/usage.spill"

[files]
dir = "{dir}/files"

# Two lines at a time against a slow upstream: the kill comes with most lines left. A short
# lease: the restarted gateway takes the batch the killed one held soon after.
[batch]
workers = 2
poll_ms = 50
lease_ms = 1000

[[keys]]
name = "glass3"
key = "{CLIENT_KEY}"
{plain}
"#,
        dir = dir.display(),
        plain = PLAIN.replace("{SIM}", sim),
    );
    let path = dir.join("dashgate.toml");
    std::fs::write(&path, toml).unwrap_or_else(|e| panic!("{e}"));
    path.display().to_string()
}

#[tokio::test]
async fn a_gateway_run_batch_survives_a_kill_and_restart_answering_each_line_once() {
    // 50 ms a line, two at a time: about 2.5 s for the batch, so the kill lands well inside it.
    let sim = Sim::with(sim_with(50, 2)).await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = write_config(dir.path(), &sim.url());
    let args = ["serve", "--config", &config, "--listen", "127.0.0.1:0"];
    let (mut first, url) = announced(&args, dir.path()).await;
    let api = Batches::new(&url, CLIENT_KEY);
    let batch = api.create(batch_file("local-chat", 100)).await;
    let id = batch["id"].as_str().unwrap_or_default().to_string();
    let some = api
        .wait_until(&id, |b| {
            b["request_counts"]["completed"].as_i64() >= Some(6)
        })
        .await;
    first.start_kill().unwrap_or_else(|e| panic!("{e}"));
    let _ = first.wait().await;
    let answered = some["request_counts"]["completed"].as_i64().unwrap_or(0);
    assert_eq!(some["status"], "in_progress", "{some:#}");
    assert!(answered < 100, "the batch ended before the kill: {some:#}");

    let (_second, url) = announced(&args, dir.path()).await;
    let api = Batches::new(&url, CLIENT_KEY);
    let done = api.wait_for(&id, "completed").await;
    assert_eq!(done["request_counts"]["completed"], 100, "{done:#}");
    assert_eq!(done["request_counts"]["failed"], 0);
    assert_eq!(done["error_file_id"], Value::Null);
    let output = done["output_file_id"].as_str().unwrap_or_default();
    let lines = api.output_lines(output).await;
    assert_eq!(lines.len(), 100);
    assert_answered_once(&lines, 100);
    // Lines answered before the kill were not asked again: at most the two in flight were.
    let asked = sim.requests();
    assert!((100..=102).contains(&asked), "{asked} upstream requests");
    let store = format!("sqlite://{}/dashgate.db", dir.path().display());
    let ids = ledger_ids(&store, "glass3", 100).await;
    let expected: BTreeSet<String> = (1..=100).map(|n| format!("{id}:{n}")).collect();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn two_gateways_on_one_postgres_store_run_a_batch_once() {
    let sim = Sim::with(sim_with(5, 2)).await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = fresh_store(Backend::Postgres, dir.path()).await;
    // A fleet shares its file storage as it shares its store: either may run the batch.
    let batch = format!(
        "workers = 2\npoll_ms = 50\n\n[store]\nurl = \"{store}\"\n\n[files]\ndir = \"{}\"",
        dir.path().join("files").display()
    );
    let (one, two) = (gateway(&sim, &batch).await, gateway(&sim, &batch).await);
    let api = client(&one);
    let made = api.create(batch_file("local-chat", 30)).await;
    let id = made["id"].as_str().unwrap_or_default();
    // Either gateway answers for it; only the one holding the lease runs it.
    let done = client(&two).wait_for(id, "completed").await;
    let output = done["output_file_id"].as_str().unwrap_or_default();
    assert_answered_once(&api.output_lines(output).await, 30);
    assert_eq!(sim.requests(), 30);
    let ids = ledger_ids(&store, "glass3", 30).await;
    let expected: BTreeSet<String> = (1..=30).map(|n| format!("{id}:{n}")).collect();
    assert_eq!(ids, expected);
    // A forwarded one, a cancel and the list, on PostgreSQL too.
    let forwarded = api.create(batch_file("qwen-plus", 3)).await;
    let forwarded = forwarded["id"].as_str().unwrap_or_default();
    api.wait_for(forwarded, "completed").await;
    let list = json_of(api.get("/v1/batches?limit=1").await).await;
    assert_eq!(list["data"][0]["id"], forwarded, "{list:#}");
    assert_eq!(list["has_more"], true);
    let response = api.cancel(forwarded).await;
    assert_eq!(response.status(), 409);
}

#[tokio::test]
async fn a_clean_stop_lets_go_of_a_batch_so_the_next_gateway_takes_it_at_once() {
    let sim = Sim::with(sim_with(50, 2)).await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = format!("sqlite://{}/dashgate.db", dir.path().display());
    // A lease far longer than the test: only letting go of it hands the batch on in time. The
    // store and files are shared; each gateway has its own usage journal, kept past its stop.
    let config = |n: usize| {
        format!(
            "workers = 2\npoll_ms = 50\nlease_ms = 3600000\n\n[store]\nurl = \"{store}\"\n\n\
             [files]\ndir = \"{dir}/files\"\n\n[usage]\njournal_path = \"{dir}/usage-{n}.journal\"",
            dir = dir.path().display()
        )
    };
    let first = gateway(&sim, &config(1)).await;
    let made = client(&first).create(batch_file("local-chat", 100)).await;
    let id = made["id"].as_str().unwrap_or_default().to_string();
    let some = client(&first)
        .wait_until(&id, |b| {
            b["request_counts"]["completed"].as_i64() >= Some(6)
        })
        .await;
    assert_eq!(some["status"], "in_progress", "{some:#}");
    drop(first);
    let second = gateway(&sim, &config(2)).await;
    let done = client(&second).wait_for(&id, "completed").await;
    let output = done["output_file_id"].as_str().unwrap_or_default();
    assert_answered_once(&client(&second).output_lines(output).await, 100);
    // Lines in flight at the stop finished there (within the drain time): none ran twice.
    assert_eq!(sim.requests(), 100);
    let ids = ledger_ids(&store, "glass3", 100).await;
    let expected: BTreeSet<String> = (1..=100).map(|n| format!("{id}:{n}")).collect();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn a_forwarded_batch_is_polled_on_by_the_next_gateway_and_metered_once() {
    // The simulator ends the batch at its 20th poll: after the first gateway stops.
    let sim = Sim::with(sim_with(0, 20)).await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = format!("sqlite://{}/dashgate.db", dir.path().display());
    let config = |n: usize| {
        format!(
            "poll_ms = 50\nlease_ms = 3600000\n\n[store]\nurl = \"{store}\"\n\n\
             [files]\ndir = \"{dir}/files\"\n\n[usage]\njournal_path = \"{dir}/usage-{n}.journal\"",
            dir = dir.path().display()
        )
    };
    let first = gateway(&sim, &config(1)).await;
    let made = client(&first).create(batch_file("qwen-plus", 5)).await;
    let id = made["id"].as_str().unwrap_or_default().to_string();
    client(&first).wait_for(&id, "in_progress").await;
    drop(first);
    let second = gateway(&sim, &config(2)).await;
    let done = client(&second).wait_for(&id, "completed").await;
    let output = done["output_file_id"].as_str().unwrap_or_default();
    assert_answered_once(&client(&second).output_lines(output).await, 5);
    let ids = ledger_ids(&store, "glass3", 5).await;
    let expected: BTreeSet<String> = (1..=5).map(|n| format!("{id}:req-{n}")).collect();
    assert_eq!(ids, expected);
}
