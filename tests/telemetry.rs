//! Traces and the access log, end to end: the `dashgate` binary with `[telemetry]` set, the
//! simulator as its upstream (noting each `traceparent` it is sent), and a small OTLP/HTTP
//! receiver on loopback that decodes the protobuf export requests.

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use common::{CLIENT_KEY, Sim};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

const BIN: &str = env!("CARGO_BIN_EXE_dashgate");
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[derive(Default)]
struct Received {
    spans: Mutex<Vec<Span>>,
    arrived: tokio::sync::Notify,
}

/// An OTLP/HTTP trace receiver: `POST /v1/traces` with a protobuf body.
async fn receiver() -> (String, Arc<Received>) {
    async fn traces(State(received): State<Arc<Received>>, body: Bytes) -> &'static str {
        let request = ExportTraceServiceRequest::decode(body).unwrap_or_default();
        let spans = request
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans);
        received
            .spans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(spans);
        received.arrived.notify_waiters();
        ""
    }
    let received = Arc::new(Received::default());
    let app = axum::Router::new()
        .route("/v1/traces", post(traces))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), received)
}

impl Received {
    /// The spans so far, once one named `name` is among them.
    async fn wait_for(&self, name: &str) -> Vec<Span> {
        let wait = async {
            loop {
                let arrived = self.arrived.notified();
                {
                    let spans = self.spans.lock().unwrap_or_else(|p| p.into_inner());
                    if spans.iter().any(|s| s.name == name) {
                        return spans.clone();
                    }
                }
                arrived.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| panic!("no span {name} exported"))
    }
}

/// The binary serving `toml`, its address, and its stdout after the announcement line.
async fn gateway(
    dir: &std::path::Path,
    toml: &str,
) -> (Child, String, Lines<BufReader<ChildStdout>>) {
    std::fs::write(dir.join("dashgate.toml"), toml).unwrap_or_else(|e| panic!("{e}"));
    let mut child = tokio::process::Command::new(BIN)
        .args(["serve", "--config", "dashgate.toml"])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next_line().await.ok().flatten().unwrap_or_default();
    let url = first.trim().rsplit(' ').next().unwrap_or("").to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{first}");
    (child, url, lines)
}

fn config(sim: &Sim, telemetry: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[store]
url = "sqlite://dashgate.db"

[retry]
backoff_ms = 1
max_backoff_ms = 1

[telemetry]
{telemetry}

[[keys]]
name = "glass3"
key = "{CLIENT_KEY}"

[[upstreams]]
name = "sim"
provider = "dashscope"
base_url = "{sim}"
api_key = "{key}"
models = ["qwen-plus"]
"#,
        sim = sim.url(),
        key = common::UPSTREAM_KEY,
    )
}

/// A streamed chat whose first upstream try gets a 503: its SSE body and `x-request-id`.
async fn streamed_with_a_retry(url: &str, fault_key: &str) -> (String, String) {
    let body = json!({
        "model": "qwen-plus",
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "tell me about the trace"}],
        "sim": {"fault": "503", "times": 1, "key": fault_key},
    });
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status().as_u16(), 200);
    let id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = response.text().await.unwrap_or_default();
    assert!(text.contains("data: [DONE]"), "{text}");
    (text, id)
}

/// The usage chunk's (prompt, completion) tokens.
fn usage_of(sse: &str) -> (u64, u64) {
    sse.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find_map(|v| {
            let u = v.get("usage").filter(|u| !u.is_null())?;
            Some((
                u["prompt_tokens"].as_u64()?,
                u["completion_tokens"].as_u64()?,
            ))
        })
        .unwrap_or_else(|| panic!("no usage chunk in {sse}"))
}

fn attributes(span: &Span) -> HashMap<String, Value> {
    span.attributes
        .iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()?.value.as_ref()? {
                Any::StringValue(s) => json!(s),
                Any::IntValue(i) => json!(i),
                Any::BoolValue(b) => json!(b),
                Any::DoubleValue(d) => json!(d),
                _ => return None,
            };
            Some((kv.key.clone(), value))
        })
        .collect()
}

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("no access log line"))
        .ok()
        .flatten()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_streamed_request_with_a_retry_is_one_trace_joined_to_the_clients() {
    let sim = Sim::start().await;
    let (collector, received) = receiver().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let telemetry =
        format!("otlp_endpoint = \"{collector}\"\nsample_ratio = 1.0\nlog_format = \"json\"");
    let (_child, url, mut stdout) = gateway(dir.path(), &config(&sim, &telemetry)).await;
    let (sse, request_id) = streamed_with_a_retry(&url, "trace-1").await;
    let (prompt, completion) = usage_of(&sse);

    let spans = received.wait_for("dashgate.request").await;
    let hex = |b: &[u8]| hex::encode(b);
    let named = |name: &str| -> Vec<&Span> { spans.iter().filter(|s| s.name == name).collect() };
    let roots = named("dashgate.request");
    assert_eq!(roots.len(), 1, "{spans:#?}");
    let root = roots[0];
    for span in &spans {
        assert_eq!(hex(&span.trace_id), CLIENT_TRACE, "{}", span.name);
    }
    assert_eq!(hex(&root.parent_span_id), CLIENT_SPAN);
    for name in ["dashgate.admission", "dashgate.upstream", "dashgate.ledger"] {
        let children = named(name);
        assert!(!children.is_empty(), "no {name} in {spans:#?}");
        for child in children {
            assert_eq!(child.parent_span_id, root.span_id, "{name}");
        }
    }

    let root_attrs = attributes(root);
    let expect = [
        ("gen_ai.system", json!("dashscope")),
        ("gen_ai.operation.name", json!("chat")),
        ("gen_ai.request.model", json!("qwen-plus")),
        ("gen_ai.response.model", json!("qwen-plus")),
        ("gen_ai.usage.input_tokens", json!(prompt)),
        ("gen_ai.usage.output_tokens", json!(completion)),
        ("dashgate.key_name", json!("glass3")),
        ("dashgate.request_id", json!(request_id)),
        ("dashgate.route", json!("chat")),
        ("dashgate.streamed", json!(true)),
        ("dashgate.upstream", json!("sim")),
        ("http.response.status_code", json!(200)),
    ];
    for (key, value) in expect {
        assert_eq!(root_attrs.get(key), Some(&value), "{key} in {root_attrs:?}");
    }
    assert!(root_attrs.contains_key("dashgate.time_to_first_token_ms"));
    // The key itself is in no attribute of any span.
    for span in &spans {
        let text = format!("{:?}", span.attributes);
        assert!(!text.contains(CLIENT_KEY) && !text.contains(common::UPSTREAM_KEY));
    }

    let mut attempts = named("dashgate.upstream");
    attempts.sort_by_key(|s| s.start_time_unix_nano);
    assert_eq!(attempts.len(), 2, "{attempts:#?}");
    let first = attributes(attempts[0]);
    let second = attributes(attempts[1]);
    assert_eq!(first.get("dashgate.attempt"), Some(&json!(1)));
    assert_eq!(first.get("error.type"), Some(&json!("503")));
    assert_eq!(first.get("http.response.status_code"), Some(&json!(503)));
    assert_eq!(first.get("dashgate.circuit_state"), Some(&json!("closed")));
    assert_eq!(first.get("dashgate.retry_reason"), None);
    assert_eq!(second.get("dashgate.attempt"), Some(&json!(2)));
    assert_eq!(second.get("dashgate.retry_reason"), Some(&json!("503")));
    assert_eq!(second.get("http.response.status_code"), Some(&json!(200)));
    assert_eq!(
        second.get("gen_ai.request.model"),
        Some(&json!("qwen-plus"))
    );

    // The simulator saw the gateway's trace: each try carries its own attempt span's id.
    let seen = sim
        .stats
        .traceparents
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let sent: Vec<String> = attempts
        .iter()
        .map(|s| format!("00-{CLIENT_TRACE}-{}-01", hex(&s.span_id)))
        .collect();
    assert_eq!(seen, sent);

    // The access log line, field by field.
    let line = next_line(&mut stdout).await;
    let log: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(log["request_id"], json!(request_id));
    assert_eq!(log["trace_id"], json!(CLIENT_TRACE));
    assert_eq!(log["method"], "POST");
    assert_eq!(log["path"], "/v1/chat/completions");
    assert_eq!(log["route"], "chat");
    assert_eq!(log["key"], "glass3");
    assert_eq!(log["model"], "qwen-plus");
    assert_eq!(log["upstream"], "sim");
    assert_eq!(log["status"], 200);
    assert_eq!(log["stream"], true);
    assert_eq!(log["error"], Value::Null);
    assert_eq!(log["bytes_out"], json!(sse.len()));
    assert!(log["bytes_in"].as_u64().is_some_and(|b| b > 0), "{line}");
    assert_eq!(log["input_tokens"], json!(prompt));
    assert_eq!(log["output_tokens"], json!(completion));
    assert_eq!(log["total_tokens"], json!(prompt + completion));
    assert_eq!(log["tokens_estimated"], false);
    let latency = log["latency_ms"].as_f64().unwrap_or(-1.0);
    let ttfb = log["ttfb_ms"].as_f64().unwrap_or(-1.0);
    let ttft = log["ttft_ms"].as_f64().unwrap_or(-1.0);
    assert!(
        0.0 <= ttfb && ttfb <= latency && 0.0 <= ttft && ttft <= latency,
        "{line}"
    );
    assert!(
        log["ts"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{line}"
    );
    assert!(
        !line.contains(CLIENT_KEY) && !line.contains("tell me about"),
        "{line}"
    );
}

#[tokio::test]
async fn without_an_endpoint_the_clients_traceparent_is_passed_on_and_logged_as_text() {
    let sim = Sim::start().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (_child, url, mut stdout) =
        gateway(dir.path(), &config(&sim, "log_format = \"text\"")).await;
    let (sse, request_id) = streamed_with_a_retry(&url, "trace-2").await;
    let (prompt, completion) = usage_of(&sse);
    let seen = sim
        .stats
        .traceparents
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let client = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    assert_eq!(seen, vec![client.clone(), client]);

    let line = next_line(&mut stdout).await;
    let fields: HashMap<&str, &str> = line
        .split(' ')
        .filter_map(|pair| pair.split_once('='))
        .collect();
    assert_eq!(
        fields.get("request_id"),
        Some(&request_id.as_str()),
        "{line}"
    );
    assert_eq!(fields.get("trace_id"), Some(&CLIENT_TRACE), "{line}");
    assert_eq!(fields.get("key"), Some(&"glass3"), "{line}");
    assert_eq!(fields.get("model"), Some(&"qwen-plus"), "{line}");
    assert_eq!(fields.get("upstream"), Some(&"sim"), "{line}");
    assert_eq!(fields.get("status"), Some(&"200"), "{line}");
    assert_eq!(fields.get("stream"), Some(&"true"), "{line}");
    let prompt = prompt.to_string();
    let completion = completion.to_string();
    assert_eq!(fields.get("input_tokens"), Some(&prompt.as_str()), "{line}");
    assert_eq!(
        fields.get("output_tokens"),
        Some(&completion.as_str()),
        "{line}"
    );
    assert!(
        fields.contains_key("latency_ms") && fields.contains_key("ttft_ms"),
        "{line}"
    );
    assert!(!fields.contains_key("error"), "{line}");
}

#[tokio::test]
async fn a_refused_request_has_its_line_too() {
    let sim = Sim::start().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (_child, url, mut stdout) =
        gateway(dir.path(), &config(&sim, "log_format = \"json\"")).await;
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth("sk-nobody")
        .json(&common::ask("qwen-plus", "hi"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status().as_u16(), 401);
    let line = next_line(&mut stdout).await;
    let log: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(log["status"], 401);
    assert_eq!(log["route"], "chat");
    assert_eq!(log["key"], Value::Null);
    assert_eq!(log["trace_id"], Value::Null);
    assert!(!line.contains("sk-nobody"), "{line}");
}
