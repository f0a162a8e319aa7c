//! Batch API helpers: JSONL files, uploads, batch calls, and bounded waits for a batch's state.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use dashgate::store::UsageFilter;
use serde_json::{Value, json};

use super::{CLIENT_KEY, Gateway, Sim, UPSTREAM_KEY, config_for, open_store, records};

/// A safety net so a stuck batch fails the test instead of hanging it.
pub const WAIT: Duration = Duration::from_secs(60);

/// One batch request line.
pub fn batch_line(custom_id: &str, model: &str, text: &str) -> String {
    json!({
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text}]},
    })
    .to_string()
}

/// A JSONL file of `count` lines for `model`, custom ids `req-1` ... `req-{count}`.
pub fn batch_file(model: &str, count: usize) -> Vec<u8> {
    let mut text = String::new();
    for n in 1..=count {
        text.push_str(&batch_line(
            &format!("req-{n}"),
            model,
            &format!("question {n}"),
        ));
        text.push('\n');
    }
    text.into_bytes()
}

/// The gateway's Batch and Files APIs as one client key sees them.
#[derive(Clone)]
pub struct Batches {
    pub http: reqwest::Client,
    /// `http://host:port`.
    pub base: String,
    pub key: String,
}

impl Batches {
    pub fn new(base: &str, key: &str) -> Batches {
        Batches {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_string(),
            key: key.to_string(),
        }
    }

    /// The same gateway as another key sees it.
    pub fn as_key(&self, key: &str) -> Batches {
        Batches {
            key: key.to_string(),
            ..self.clone()
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST /v1/files` with `purpose`.
    pub async fn upload_as(&self, name: &str, bytes: Vec<u8>, purpose: &str) -> reqwest::Response {
        let form = reqwest::multipart::Form::new()
            .text("purpose", purpose.to_string())
            .part(
                "file",
                reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()),
            );
        self.http
            .post(self.url("/v1/files"))
            .bearer_auth(&self.key)
            .multipart(form)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Uploads a batch input file; its id.
    pub async fn upload(&self, bytes: Vec<u8>) -> String {
        let response = self.upload_as("input.jsonl", bytes, "batch").await;
        assert_eq!(response.status(), 200);
        let file = super::json_of(response).await;
        file["id"].as_str().unwrap_or_default().to_string()
    }

    /// `POST /v1/batches` for `file_id`.
    pub async fn create_raw(&self, file_id: &str) -> reqwest::Response {
        let body = json!({
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": {"job": "test"},
        });
        self.http
            .post(self.url("/v1/batches"))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Uploads `bytes` and makes a batch of them; the batch object.
    pub async fn create(&self, bytes: Vec<u8>) -> Value {
        let file_id = self.upload(bytes).await;
        let response = self.create_raw(&file_id).await;
        let status = response.status();
        let batch = super::json_of(response).await;
        assert_eq!(status, 200, "{batch}");
        assert_eq!(batch["object"], "batch");
        assert_eq!(batch["input_file_id"], file_id.as_str());
        batch
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub async fn cancel(&self, id: &str) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/v1/batches/{id}/cancel")))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The batch object now.
    pub async fn batch(&self, id: &str) -> Value {
        let response = self.get(&format!("/v1/batches/{id}")).await;
        let status = response.status();
        let batch = super::json_of(response).await;
        assert_eq!(status, 200, "{batch}");
        batch
    }

    /// Polls the batch until `done` holds; the batch then. Fails after `WAIT`.
    pub async fn wait_until(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut ticker = tokio::time::interval(Duration::from_millis(20));
        loop {
            ticker.tick().await;
            let batch = self.batch(id).await;
            if done(&batch) {
                return batch;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "batch never got there: {batch:#}"
            );
        }
    }

    /// Waits for the batch to reach `status`.
    pub async fn wait_for(&self, id: &str, status: &str) -> Value {
        self.wait_until(id, |b| {
            let now = b["status"].as_str().unwrap_or("");
            assert!(
                now == status || !["completed", "failed", "expired", "cancelled"].contains(&now),
                "batch ended {now}, not {status}: {b:#}"
            );
            now == status
        })
        .await
    }

    /// A file's content, through `/v1/files/{id}/content`.
    pub async fn content(&self, file_id: &str) -> String {
        let response = self.get(&format!("/v1/files/{file_id}/content")).await;
        assert_eq!(response.status(), 200, "file {file_id}");
        response.text().await.unwrap_or_default()
    }

    /// The output file's lines, as JSON.
    pub async fn output_lines(&self, file_id: &str) -> Vec<Value> {
        let text = self.content(file_id).await;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

/// An OpenAI-compatible upstream without a batch API: the gateway runs its batches.
pub const PLAIN: &str = r#"
[[upstreams]]
name = "plain"
provider = "openai"
base_url = "{SIM}/v1"
api_key = "sk-upstream-test"
models = ["local-chat"]
"#;

pub async fn gateway(sim: &Sim, batch: &str) -> Gateway {
    Gateway::start(&config_for(
        sim,
        "",
        &format!("{PLAIN}\n[batch]\n{batch}\n"),
    ))
    .await
}

pub fn client(gw: &Gateway) -> Batches {
    Batches::new(&gw.url(""), CLIENT_KEY)
}

pub fn sim_with(latency_ms: u64, batch_polls: u32) -> dashgate::sim::Options {
    dashgate::sim::Options {
        api_key: Some(UPSTREAM_KEY.into()),
        latency_ms,
        batch_polls,
        ..Default::default()
    }
}

/// Every custom id `req-1` ... `req-{count}` once in the output file, each answered 200 with
/// a completion.
pub fn assert_answered_once(lines: &[Value], count: usize) {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for line in lines {
        let id = line["custom_id"].as_str().unwrap_or("").to_string();
        *seen.entry(id).or_default() += 1;
        assert_eq!(line["response"]["status_code"], 200, "{line}");
        assert_eq!(line["error"], Value::Null, "{line}");
        let body = &line["response"]["body"];
        assert_eq!(body["object"], "chat.completion", "{line}");
        assert!(body["usage"]["total_tokens"].as_u64() > Some(0), "{line}");
    }
    let expected: BTreeMap<String, usize> = (1..=count).map(|n| (format!("req-{n}"), 1)).collect();
    assert_eq!(seen, expected);
}

/// The ids of the ledger's records for `key`, once there are `count` of them.
pub async fn ledger_ids(store_url: &str, key: &str, count: usize) -> BTreeSet<String> {
    let store = open_store(store_url).await;
    let filter = UsageFilter {
        key: Some(key.into()),
        ..UsageFilter::default()
    };
    let found = records(&store, &filter, count).await;
    for r in &found {
        assert_eq!(r.route, "batch", "{r:?}");
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.total_tokens > 0, "{r:?}");
    }
    let ids: BTreeSet<String> = found.into_iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), count, "record ids repeat");
    ids
}

pub fn store_of(gw: &Gateway) -> String {
    format!("sqlite://{}/dashgate.db", gw.dir.path().display())
}
