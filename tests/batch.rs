//! The Batch API's checks and controls (docs/batch.md): a bad line named by number, the size and
//! line bounds, cancel on both routes, failed lines in the error file, tenant isolation, the
//! list. The 100-line batches and the restart are in tests/batch_durable.rs.

mod common;

use std::collections::BTreeSet;

use common::batches::*;
use common::*;
use serde_json::Value;

const OTHER_KEY: &str = "sk-limited-test";

/// Creates a batch of `text`; the error response's status and body.
async fn refused(api: &Batches, text: &str) -> (u16, Value) {
    let file_id = api.upload(text.as_bytes().to_vec()).await;
    let response = api.create_raw(&file_id).await;
    (response.status().as_u16(), json_of(response).await)
}

#[tokio::test]
async fn a_bad_line_is_a_400_naming_its_number() {
    let sim = Sim::start().await;
    let gw = gateway(&sim, "").await;
    let api = client(&gw);
    let good = |n: usize| batch_line(&format!("req-{n}"), "qwen-plus", "hi");
    let file = |bad_line: &str| {
        let mut lines: Vec<String> = (1..=9).map(good).collect();
        lines[6] = bad_line.to_string();
        lines.join("\n")
    };
    let cases = [
        ("{\"custom_id\": \"x\", ", "line 7: not a batch request"),
        (
            &good(7).replace("\"POST\"", "\"GET\""),
            "line 7: method must be \"POST\"",
        ),
        (
            &good(7).replace("/v1/chat/completions", "/v1/embeddings"),
            "line 7: url must be",
        ),
        (
            &good(2),
            "line 7: custom_id `req-2` is used already on line 2",
        ),
        (
            &good(7).replace("\"model\":\"qwen-plus\",", ""),
            "line 7: body.model is required",
        ),
        (
            &good(7).replace("qwen-plus", "no-such-model"),
            "line 7: body.model: no upstream serves the model `no-such-model`",
        ),
        (
            &good(7).replace("qwen-plus", "local-chat"),
            "line 7: body.model: a batch for a DashScope upstream has one model",
        ),
        (
            &good(7).replace("\"messages\":[", "\"stream\":true,\"messages\":["),
            "line 7: body.stream",
        ),
    ];
    for (line, message) in cases {
        let (status, body) = refused(&api, &file(line)).await;
        assert_eq!(status, 400, "{line}: {body}");
        let said = body["error"]["message"].as_str().unwrap_or("");
        assert!(said.starts_with(message), "{line}: {said}");
        assert_eq!(error_of(&body).1, Some("input_file_id"), "{body}");
        assert_eq!(error_of(&body).2, "invalid_request_error", "{body}");
    }
    // Not a batch file at all.
    let response = api
        .upload_as("notes.txt", b"hello".to_vec(), "file-extract")
        .await;
    let file_id = json_of(response).await["id"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let response = api.create_raw(&file_id).await;
    assert_eq!(response.status(), 400);
    let body = json_of(response).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("not `batch`")
    );
    let response = api.create_raw("file-batch-nope").await;
    assert_eq!(response.status(), 404);
    // Nothing was made.
    let list = json_of(api.get("/v1/batches").await).await;
    assert_eq!(list["data"], serde_json::json!([]), "{list}");
}

#[tokio::test]
async fn the_file_size_and_line_count_are_bounded() {
    let sim = Sim::start().await;
    let bounds = "max_file_bytes = 1500\nmax_lines = 5\n\n[files]\nmax_file_bytes = 4000";
    let gw = gateway(&sim, bounds).await;
    let api = client(&gw);
    let six = String::from_utf8(batch_file("qwen-plus", 6)).unwrap_or_default();
    assert!(six.len() < 1500);
    let (status, body) = refused(&api, &six).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["message"],
        "line 6: a batch may have at most 5 requests"
    );
    let big = String::from_utf8(batch_file("qwen-plus", 20)).unwrap_or_default();
    let (status, body) = refused(&api, &big).await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or("");
    let expected = format!(
        "the file has {} bytes; a batch may have at most 1500",
        big.len()
    );
    assert!(message.contains(&expected), "{message}");
    // Past the upload bound, the file is not even kept.
    let huge = batch_file("qwen-plus", 40);
    assert!(huge.len() > 4000);
    let response = api.upload_as("huge.jsonl", huge, "batch").await;
    assert_eq!(response.status(), 413);
    let body = json_of(response).await;
    assert_eq!(error_of(&body).0, "request_too_large", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("4000"),
        "{body}"
    );
    // Five lines are fine.
    api.create(batch_file("qwen-plus", 5)).await;
    let metrics = reqwest::get(gw.url("/metrics")).await;
    let text = metrics.unwrap_or_else(|e| panic!("{e}")).text().await;
    let text = text.unwrap_or_default();
    assert!(
        text.contains("batches_refused_total{reason=\"too_large\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_cancel_stops_a_gateway_run_batch_and_keeps_what_was_answered() {
    let sim = Sim::with(sim_with(100, 2)).await;
    let gw = gateway(&sim, "workers = 1\npoll_ms = 50").await;
    let api = client(&gw);
    let batch = api.create(batch_file("local-chat", 100)).await;
    let id = batch["id"].as_str().unwrap_or_default();
    let response = api.cancel(id).await;
    assert_eq!(response.status(), 200);
    let cancelling = json_of(response).await;
    // The runner may have seen it already.
    let now = cancelling["status"].as_str().unwrap_or("");
    assert!(["cancelling", "cancelled"].contains(&now), "{cancelling:#}");
    assert!(cancelling["cancelling_at"].as_i64().is_some());
    let done = api.wait_for(id, "cancelled").await;
    assert!(done["cancelled_at"].as_i64().is_some(), "{done:#}");
    let answered = done["request_counts"]["completed"].as_u64().unwrap_or(0);
    assert!(answered < 100, "{done:#}");
    if let Some(output) = done["output_file_id"].as_str() {
        assert_eq!(api.output_lines(output).await.len() as u64, answered);
    }
    // Cancelling again says what it is; an ended batch cannot be cancelled.
    assert_eq!(json_of(api.cancel(id).await).await["status"], "cancelled");
    let quick = api.create(batch_file("local-chat", 1)).await;
    let quick = quick["id"].as_str().unwrap_or_default();
    api.wait_for(quick, "completed").await;
    let response = api.cancel(quick).await;
    assert_eq!(response.status(), 409);
    assert_eq!(
        error_of(&json_of(response).await).0,
        "batch_not_cancellable"
    );
}

#[tokio::test]
async fn a_cancel_is_forwarded_to_a_dashscope_upstream() {
    // The simulator's batch would run only at its millionth poll.
    let sim = Sim::with(sim_with(0, 1_000_000)).await;
    let gw = gateway(&sim, "poll_ms = 50").await;
    let api = client(&gw);
    let batch = api.create(batch_file("qwen-plus", 10)).await;
    let id = batch["id"].as_str().unwrap_or_default();
    api.wait_for(id, "in_progress").await;
    assert_eq!(api.cancel(id).await.status(), 200);
    let done = api.wait_for(id, "cancelled").await;
    assert_eq!(done["output_file_id"], Value::Null, "{done:#}");
    assert_eq!(done["request_counts"]["completed"], 0);
}

#[tokio::test]
async fn another_key_gets_a_404_for_this_keys_batch() {
    let sim = Sim::start().await;
    let gw = gateway(&sim, "poll_ms = 50").await;
    let api = client(&gw);
    let other = api.as_key(OTHER_KEY);
    let batch = api.create(batch_file("qwen-plus", 3)).await;
    let id = batch["id"].as_str().unwrap_or_default();
    let done = api.wait_for(id, "completed").await;
    let response = other.get(&format!("/v1/batches/{id}")).await;
    assert_eq!(response.status(), 404);
    let body = json_of(response).await;
    assert_eq!(
        error_of(&body),
        ("batch_not_found", Some("batch_id"), "invalid_request_error")
    );
    assert_eq!(other.cancel(id).await.status(), 404);
    let output = done["output_file_id"].as_str().unwrap_or_default();
    let response = other.get(&format!("/v1/files/{output}/content")).await;
    assert_eq!(response.status(), 404);
    let list = json_of(other.get("/v1/batches").await).await;
    assert_eq!(list["data"], serde_json::json!([]), "{list}");
    // Nor may it make a batch of this key's file.
    let input = batch["input_file_id"].as_str().unwrap_or_default();
    assert_eq!(other.create_raw(input).await.status(), 404);
    // Without a key, nothing.
    let response = reqwest::get(gw.url(&format!("/v1/batches/{id}"))).await;
    assert_eq!(response.map(|r| r.status().as_u16()).ok(), Some(401));
}

#[tokio::test]
async fn the_list_is_newest_first_in_pages() {
    let sim = Sim::start().await;
    let gw = gateway(&sim, "").await;
    let api = client(&gw);
    let mut made = Vec::new();
    for _ in 0..3 {
        let batch = api.create(batch_file("local-chat", 1)).await;
        made.push(batch["id"].as_str().unwrap_or_default().to_string());
    }
    made.reverse();
    let ids = |list: &Value| -> Vec<String> {
        let data = list["data"].as_array().cloned().unwrap_or_default();
        data.iter()
            .map(|b| b["id"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let page = json_of(api.get("/v1/batches?limit=2").await).await;
    assert_eq!(page["object"], "list");
    assert_eq!(ids(&page), made[..2], "{page:#}");
    assert_eq!(page["has_more"], true);
    assert_eq!(page["first_id"], made[0].as_str());
    let last = page["last_id"].as_str().unwrap_or_default();
    let rest = json_of(api.get(&format!("/v1/batches?limit=2&after={last}")).await).await;
    assert_eq!(ids(&rest), made[2..], "{rest:#}");
    assert_eq!(rest["has_more"], false);
    // The same under the compatible-mode prefix.
    let all = json_of(api.get("/compatible-mode/v1/batches").await).await;
    assert_eq!(ids(&all), made);
}

/// Ten lines, the 3rd and 7th of which the upstream fails with a 500 every time.
fn with_failures(model: &str) -> Vec<u8> {
    let mut text = String::new();
    for n in 1..=10 {
        let mut line: Value =
            serde_json::from_str(&batch_line(&format!("req-{n}"), model, "hi")).unwrap_or_default();
        if n == 3 || n == 7 {
            line["body"]["sim"] = serde_json::json!({"fault": "500"});
        }
        text.push_str(&line.to_string());
        text.push('\n');
    }
    text.into_bytes()
}

#[tokio::test]
async fn failed_lines_go_to_the_error_file_on_both_routes() {
    let sim = Sim::start().await;
    let gw = gateway(&sim, "poll_ms = 50").await;
    let api = client(&gw);
    for model in ["qwen-plus", "local-chat"] {
        let batch = api.create(with_failures(model)).await;
        let id = batch["id"].as_str().unwrap_or_default();
        let done = api.wait_for(id, "completed").await;
        let counts = &done["request_counts"];
        assert_eq!(
            (&counts["total"], &counts["completed"], &counts["failed"]),
            (&10.into(), &8.into(), &2.into()),
            "{model}: {done:#}"
        );
        let output = done["output_file_id"].as_str().unwrap_or_default();
        let good = api.output_lines(output).await;
        let ids: BTreeSet<&str> = good
            .iter()
            .filter_map(|l| l["custom_id"].as_str())
            .collect();
        assert_eq!(ids.len(), 8, "{model}");
        assert!(!ids.contains("req-3") && !ids.contains("req-7"), "{model}");
        let errors = done["error_file_id"].as_str().unwrap_or_default();
        let bad = api.output_lines(errors).await;
        let ids: Vec<&str> = bad.iter().filter_map(|l| l["custom_id"].as_str()).collect();
        assert_eq!(ids, ["req-3", "req-7"], "{model}");
        for line in &bad {
            let status = line["response"]["status_code"].as_u64().unwrap_or(0);
            assert!(status >= 500, "{model}: {line}");
            assert!(
                line["response"]["body"]["error"].is_object(),
                "{model}: {line}"
            );
        }
    }
}

#[tokio::test]
async fn the_create_request_is_checked_field_by_field_and_active_batches_are_capped() {
    // The simulator's batches stay in progress: the first one holds the key's only place.
    let sim = Sim::with(sim_with(0, 1_000_000)).await;
    let gw = gateway(&sim, "poll_ms = 50\nmax_active_per_key = 1").await;
    let api = client(&gw);
    let file_id = api.upload(batch_file("qwen-plus", 2)).await;
    let post = |body: Value| {
        api.http
            .post(gw.url("/v1/batches"))
            .bearer_auth(CLIENT_KEY)
            .json(&body)
            .send()
    };
    let good = serde_json::json!({
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    });
    let with = |field: &str, value: Value| {
        let mut body = good.clone();
        body[field] = value;
        body
    };
    let pairs: serde_json::Map<String, Value> = (0..17)
        .map(|n| (format!("k{n}"), Value::from("v")))
        .collect();
    let cases = [
        (with("input_file_id", Value::Null), "input_file_id"),
        (with("endpoint", "/v1/embeddings".into()), "endpoint"),
        (with("completion_window", "1h".into()), "completion_window"),
        (with("completion_window", 24.into()), "completion_window"),
        (with("metadata", Value::Object(pairs)), "metadata"),
        (with("metadata", serde_json::json!({"n": 1})), "metadata"),
    ];
    for (body, field) in cases {
        let response = post(body.clone()).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status(), 400, "{body}");
        let error = json_of(response).await;
        assert_eq!(error_of(&error).1, Some(field), "{body}: {error}");
    }
    let first = json_of(post(good.clone()).await.unwrap_or_else(|e| panic!("{e}"))).await;
    assert_eq!(first["status"], "validating", "{first}");
    let response = post(good.clone()).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 429);
    let error = json_of(response).await;
    assert_eq!(
        error_of(&error),
        ("too_many_batches", None, "rate_limit_error")
    );
    // Once it ends, there is room again.
    let id = first["id"].as_str().unwrap_or_default();
    assert_eq!(api.cancel(id).await.status(), 200);
    api.wait_for(id, "cancelled").await;
    let response = post(good).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn passthrough_mode_has_no_batches_and_says_why() {
    let sim = Sim::start().await;
    let toml =
        config_for(&sim, "", "").replace("[server]", "[auth]\nmode = \"passthrough\"\n\n[server]");
    let gw = Gateway::start(&toml).await;
    let api = Batches::new(&gw.url(""), UPSTREAM_KEY);
    let response = api.create_raw("file-batch-any").await;
    assert_eq!(response.status(), 400);
    let body = json_of(response).await;
    assert_eq!(error_of(&body).0, "batch_unsupported", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("auth.mode"), "{message}");
    assert_eq!(api.get("/v1/batches").await.status(), 400);
}

#[tokio::test]
async fn a_batch_its_upstream_lost_fails_naming_why() {
    let sim = Sim::start().await;
    let gw = gateway(&sim, "poll_ms = 50").await;
    let api = client(&gw);
    let file_id = api.upload(batch_file("qwen-plus", 2)).await;
    let body = serde_json::json!({
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "metadata": {"sim_fault": "404"},
    });
    let response = (api.http.post(gw.url("/v1/batches")).bearer_auth(CLIENT_KEY))
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let batch = json_of(response).await;
    let id = batch["id"].as_str().unwrap_or_default();
    let failed = api.wait_for(id, "failed").await;
    assert!(failed["failed_at"].as_i64().is_some(), "{failed:#}");
    let error = &failed["errors"]["data"][0];
    assert_eq!(error["code"], "upstream_batch_missing", "{failed:#}");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or("")
            .contains("no longer knows")
    );
}
