//! Field-by-field fidelity to DashScope's two dialects: the stream switch, error shapes under
//! native paths, one request id, usage read by parsing, `/metrics` negotiation, the models
//! list, lenient image labels, the high-resolution budget, parameter ranges and the fields
//! translation must keep (logprobs, search info, reasoning with tools, Omni audio).

mod common;

use common::*;
use serde_json::{Value, json};

const TEXT_API: &str = "/api/v1/services/aigc/text-generation/generation";

/// A gateway over the three-upstream matrix (`common::UPSTREAMS`), all on one simulator.
async fn matrix() -> (Sim, Gateway) {
    let sim = Sim::start().await;
    let gw = Gateway::start(&config_for(&sim, "", UPSTREAMS)).await;
    (sim, gw)
}

fn native_post(gw: &Gateway, body: &Value) -> reqwest::RequestBuilder {
    gw.http
        .post(gw.url(TEXT_API))
        .bearer_auth(CLIENT_KEY)
        .json(body)
}

async fn send(request: reqwest::RequestBuilder) -> reqwest::Response {
    request.send().await.unwrap_or_else(|e| panic!("{e}"))
}

fn content_type(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn the_sse_header_alone_decides_whether_a_native_reply_streams() {
    let (_sim, gw) = matrix().await;
    for model in ["qwen-plus", "via-compat", "via-openai"] {
        let body = |stream: bool| json!({"model": model, "input": {"prompt": "hi"}, "parameters": {"stream": stream}});
        let no_header = send(native_post(&gw, &body(true))).await;
        assert_eq!(no_header.status(), 200, "{model}");
        assert!(
            content_type(&no_header).starts_with("application/json"),
            "{model}: stream:true without the header must be JSON"
        );
        assert_eq!(json_of(no_header).await["output"]["text"], "echo: hi");
        let header = send(native_post(&gw, &body(false)).header("X-DashScope-SSE", "enable")).await;
        assert!(
            content_type(&header).starts_with("text/event-stream"),
            "{model}: the header asks for SSE whatever parameters.stream says"
        );
        assert!(
            header
                .text()
                .await
                .unwrap_or_default()
                .contains("event:result")
        );
    }
}

#[tokio::test]
async fn unknown_and_wrong_method_native_paths_answer_in_the_native_shape() {
    let (_sim, gw) = matrix().await;
    let cases = [
        (gw.http.get(gw.url(TEXT_API)), 405, "MethodNotAllowed"),
        (
            gw.http.post(gw.url("/api/v1/services/nothing/here")),
            404,
            "NotFound",
        ),
    ];
    for (request, status, code) in cases {
        let response = send(
            request
                .bearer_auth(CLIENT_KEY)
                .header("x-request-id", "r-4"),
        )
        .await;
        assert_eq!(response.status().as_u16(), status);
        let body = json_of(response).await;
        assert_eq!(body["code"], code, "{body}");
        assert_eq!(body["request_id"], "r-4", "{body}");
        assert!(
            body["message"].is_string() && body.get("error").is_none(),
            "{body}"
        );
    }
    // OpenAI paths keep OpenAI's shape.
    let response = send(gw.http.get(gw.url("/v1/nothing"))).await;
    assert!(json_of(response).await["error"]["message"].is_string());
}

/// The header, the body and the ledger name the same id, on the fast path and translated.
#[tokio::test]
async fn one_request_id_in_header_body_and_ledger_on_every_path() {
    let (_sim, gw) = matrix().await;
    let header_id = |r: &reqwest::Response| {
        r.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut ids = Vec::new();
    for model in ["qwen-plus", "via-native", "via-openai"] {
        // OpenAI client, JSON and stream.
        let r = send(gw.chat(&ask(model, "hi"))).await;
        let id = header_id(&r);
        assert_eq!(json_of(r).await["id"], format!("chatcmpl-{id}"), "{model}");
        ids.push(id);
        let mut body = ask(model, "hi");
        body["stream"] = json!(true);
        let r = send(gw.chat(&body)).await;
        let id = header_id(&r);
        for event in data_events(r).await.iter().filter(|e| *e != "[DONE]") {
            let chunk: Value = serde_json::from_str(event).unwrap_or_default();
            assert_eq!(chunk["id"], format!("chatcmpl-{id}"), "{model}: {event}");
        }
        ids.push(id);
    }
    for model in ["qwen-plus", "via-compat", "via-openai"] {
        // Native client, JSON and stream.
        let body = json!({"model": model, "input": {"prompt": "hi"}});
        let r = send(native_post(&gw, &body)).await;
        let id = header_id(&r);
        assert_eq!(json_of(r).await["request_id"], id.as_str(), "{model}");
        ids.push(id);
        let r = send(native_post(&gw, &body).header("X-DashScope-SSE", "enable")).await;
        let id = header_id(&r);
        let text = r.text().await.unwrap_or_default();
        for frame in text.split("\n\n").filter(|f| !f.is_empty()) {
            let data = frame
                .lines()
                .last()
                .unwrap_or("")
                .trim_start_matches("data:");
            let data: Value = serde_json::from_str(data).unwrap_or_default();
            assert_eq!(data["request_id"], id.as_str(), "{model}: {frame}");
        }
        ids.push(id);
    }
    let store = open_store(&format!("sqlite://{}/dashgate.db", gw.dir.path().display())).await;
    let recorded = records(&store, &Default::default(), ids.len()).await;
    let mut recorded: Vec<String> = recorded.into_iter().map(|r| r.request_id).collect();
    recorded.sort();
    ids.sort();
    assert_eq!(recorded, ids);
}

#[tokio::test]
async fn metrics_are_prometheus_text_unless_openmetrics_is_asked_for() {
    let (_sim, gw) = matrix().await;
    let _ = send(gw.chat(&ask("qwen-plus", "hi"))).await;
    let plain = send(gw.http.get(gw.url("/metrics"))).await;
    assert_eq!(
        content_type(&plain),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = plain.text().await.unwrap_or_default();
    assert!(!text.contains("# EOF"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("# TYPE ") && l.ends_with("_total counter")),
        "{text}"
    );
    let om = send(gw.http.get(gw.url("/metrics")).header(
        "accept",
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    ))
    .await;
    assert!(content_type(&om).starts_with("application/openmetrics-text"));
    assert!(om.text().await.unwrap_or_default().ends_with("# EOF\n"));
}

/// An OpenAI-compatible server that writes its JSON as Python's `json.dumps` does (a space
/// after every colon and comma), with usage in its last chunk.
async fn pythonic_upstream() -> String {
    let chunk = |delta: &str, finish: &str| {
        format!(
            "data: {{\"id\": \"chatcmpl-py\", \"object\": \"chat.completion.chunk\", \"created\": 1, \"model\": \"py\", \"choices\": [{{\"index\": 0, \"delta\": {delta}, \"finish_reason\": {finish}}}], \"usage\": null}}\n\n"
        )
    };
    let body = [
        chunk(r#"{"role": "assistant", "content": "he"}"#, "null"),
        chunk(r#"{"content": "llo"}"#, "\"stop\""),
        "data: {\"id\": \"chatcmpl-py\", \"object\": \"chat.completion.chunk\", \"created\": 1, \"model\": \"py\", \"choices\": [], \"usage\": {\"prompt_tokens\": 3, \"completion_tokens\": 2, \"total_tokens\": 5, \"prompt_tokens_details\": {\"cached_tokens\": 2}}}\n\n".to_string(),
        "data: [DONE]\n\n".to_string(),
    ]
    .concat();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            let body = body.clone();
            async move { ([("content-type", "text/event-stream")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/v1")
}

#[tokio::test]
async fn usage_written_with_spaces_is_read_and_hidden_from_a_client_that_did_not_ask() {
    let sim = Sim::start().await;
    let upstream = pythonic_upstream().await;
    let extra = format!(
        "[[upstreams]]\nname = \"py\"\nprovider = \"openai\"\nbase_url = \"{upstream}\"\napi_key = \"k\"\nmodels = [\"py\"]\n"
    );
    let gw = Gateway::start(&config_for(&sim, "", &extra)).await;
    let mut body = ask("py", "hi");
    body["stream"] = json!(true);
    let events = data_events(send(gw.chat(&body)).await).await;
    assert!(
        events.iter().all(|e| !e.contains("\"usage\": {")),
        "the client did not ask for usage: {events:?}"
    );
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let store = open_store(&format!("sqlite://{}/dashgate.db", gw.dir.path().display())).await;
    let record = records(&store, &Default::default(), 1).await.remove(0);
    assert_eq!(
        (
            record.prompt_tokens,
            record.completion_tokens,
            record.cached_tokens,
            record.estimated
        ),
        (3, 2, Some(2), false)
    );
}

/// DashScope's documented ranges, refused before any upstream call, naming the field.
#[tokio::test]
async fn out_of_range_parameters_are_refused_naming_the_field_in_both_dialects() {
    let (sim, gw) = matrix().await;
    let tool =
        json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"n": 2, "tools": tool}), "n"),
        (json!({"top_k": -1}), "top_k"),
        (json!({"repetition_penalty": 0}), "repetition_penalty"),
        (json!({"top_logprobs": 6, "logprobs": true}), "top_logprobs"),
        (
            json!({"tool_choice": "bogus", "tools": tool}),
            "tool_choice",
        ),
        (json!({"parallel_tool_calls": "yes"}), "parallel_tool_calls"),
        (
            json!({"response_format": {"type": "nonsense"}}),
            "response_format.type",
        ),
        (json!({"enable_thinking": "maybe"}), "enable_thinking"),
        (json!({"frequency_penalty": 9}), "frequency_penalty"),
        (json!({"thinking_budget": 0}), "thinking_budget"),
    ];
    let before = sim.requests();
    for (fields, param) in &cases {
        for model in ["qwen-plus", "via-native", "via-openai"] {
            let mut body = ask(model, "hi");
            if let (Some(b), Some(f)) = (body.as_object_mut(), fields.as_object()) {
                b.extend(f.clone());
            }
            let r = send(gw.chat(&body)).await;
            assert_eq!(r.status(), 400, "{model} {fields}");
            let body = json_of(r).await;
            assert_eq!(error_of(&body).1, Some(*param), "{model} {fields}: {body}");
            let native = json!({"model": model, "input": {"prompt": "hi"}, "parameters": fields});
            let r = send(native_post(&gw, &native)).await;
            assert_eq!(r.status(), 400, "native {model} {fields}");
            let body = json_of(r).await;
            assert_eq!(body["code"], "InvalidParameter");
            let named = format!("parameters.{param}");
            assert!(
                body["message"].as_str().is_some_and(|m| m.contains(&named)),
                "native {model} {fields}: {body}"
            );
        }
    }
    assert_eq!(sim.requests(), before, "nothing out of range went upstream");
    // In range, all of them pass.
    let mut body = ask("qwen-plus", "hi");
    let fine = json!({"top_k": 0, "repetition_penalty": 1.05, "top_logprobs": 5, "logprobs": true,
        "tool_choice": "auto", "tools": tool, "parallel_tool_calls": true, "n": 1,
        "response_format": {"type": "json_object"}, "enable_thinking": false,
        "frequency_penalty": -2, "thinking_budget": 1});
    if let (Some(b), Some(f)) = (body.as_object_mut(), fine.as_object()) {
        b.extend(f.clone());
    }
    let r = send(gw.chat(&body)).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
}

#[tokio::test]
async fn a_wildcard_upstream_lists_what_it_serves_filtered_by_the_key() {
    let sim = Sim::start().await;
    let extra = r#"
[[upstreams]]
name = "everything"
provider = "dashscope"
base_url = "{SIM}"
api_key = "sk-upstream-test"
models = ["*"]
"#;
    let gw = Gateway::start(&config_for(&sim, "", extra)).await;
    let ids = |list: &Value| -> Vec<String> {
        list["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["id"].as_str().map(str::to_string))
            .collect()
    };
    let before = sim.requests();
    for path in ["/v1/models", "/compatible-mode/v1/models"] {
        let list = json_of(send(gw.http.get(gw.url(path)).bearer_auth(CLIENT_KEY)).await).await;
        let ids = ids(&list);
        for id in ["qwen-plus", "qwen-turbo", "qwen-omni-turbo", "qwq-32b"] {
            assert!(
                ids.iter().any(|i| i == id),
                "{path}: {id} missing from {ids:?}"
            );
        }
        assert!(
            list["data"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|m| m["object"] == "model")
        );
    }
    assert_eq!(sim.requests() - before, 1, "the upstream's list is cached");
    let limited = json_of(
        send(
            gw.http
                .get(gw.url("/v1/models"))
                .bearer_auth("sk-limited-test"),
        )
        .await,
    )
    .await;
    assert_eq!(ids(&limited), ["qwen-plus"]);
    let one = json_of(
        send(
            gw.http
                .get(gw.url("/v1/models/qwen-turbo"))
                .bearer_auth(CLIENT_KEY),
        )
        .await,
    )
    .await;
    assert_eq!(
        (&one["id"], &one["object"]),
        (&json!("qwen-turbo"), &json!("model")),
        "{one}"
    );
    assert!(
        one["owned_by"].is_string() && one["created"].is_number(),
        "{one}"
    );
    let hidden = send(
        gw.http
            .get(gw.url("/compatible-mode/v1/models/qwen-turbo"))
            .bearer_auth("sk-limited-test"),
    )
    .await;
    assert_eq!(hidden.status(), 404);
    assert_eq!(error_of(&json_of(hidden).await).0, "model_not_found");
    let unknown = send(
        gw.http
            .get(gw.url("/v1/models/nope"))
            .bearer_auth(CLIENT_KEY),
    )
    .await;
    assert_eq!(unknown.status(), 404);
}
