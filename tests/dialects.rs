//! Both dialects, both ways: every client dialect against every upstream dialect, stream and
//! not, for text, images, tool calls and thinking; and the fast path proven byte-equal to the
//! canonical round-trip.

mod common;

use common::*;
use serde_json::{Value, json};

/// (model, what the upstream speaks); `qwen-plus` goes to an `auto` upstream: the client's own.
const ROUTES: [(&str, &str); 4] = [
    ("qwen-plus", "same"),
    ("via-compat", "compatible"),
    ("via-native", "native"),
    ("via-openai", "openai"),
];

#[derive(Clone, Copy, Debug)]
enum Kind {
    Text,
    Image,
    Tools,
    Thinking,
}

/// What a client made of the reply, whatever dialect it came in.
#[derive(Debug, Default, PartialEq)]
struct Folded {
    content: String,
    reasoning: String,
    tool: Option<(String, String)>,
    finish: String,
    usage: Option<(u64, u64, u64)>,
    reasoning_tokens: Option<u64>,
}

fn expected(kind: Kind) -> Folded {
    match kind {
        Kind::Text => Folded {
            content: "echo: hi there".into(),
            finish: "stop".into(),
            ..Folded::default()
        },
        Kind::Image => Folded {
            content: "echo: what\n[image_url https://example.com/dog.jpeg]".into(),
            finish: "stop".into(),
            ..Folded::default()
        },
        Kind::Tools => Folded {
            tool: Some((
                "get_current_weather".into(),
                r#"{"location":"杭州"}"#.into(),
            )),
            finish: "tool_calls".into(),
            ..Folded::default()
        },
        Kind::Thinking => Folded {
            content: "echo: why".into(),
            reasoning: "thinking about: why".into(),
            finish: "stop".into(),
            ..Folded::default()
        },
    }
}

fn weather_tool() -> Value {
    json!([{"type": "function", "function": {"name": "get_current_weather", "description": "天气",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}])
}

fn openai_body(kind: Kind, model: &str, stream: bool) -> Value {
    let mut body = match kind {
        Kind::Text => ask(model, "hi there"),
        Kind::Image => json!({"model": model, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/dog.jpeg"}}, {"type": "text", "text": "what"}]}]}),
        Kind::Tools => {
            json!({"model": model, "tools": weather_tool(), "messages": [{"role": "user", "content": "杭州"}]})
        }
        Kind::Thinking => {
            json!({"model": model, "enable_thinking": true, "messages": [{"role": "user", "content": "why"}]})
        }
    };
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

fn native_body(kind: Kind, model: &str, incremental: bool) -> (Value, &'static str) {
    let text_api = "/api/v1/services/aigc/text-generation/generation";
    let mut parameters = json!({"result_format": "message", "incremental_output": incremental});
    let (messages, api) = match kind {
        Kind::Text => (json!([{"role": "user", "content": "hi there"}]), text_api),
        Kind::Image => (
            json!([{"role": "user", "content": [{"image": "https://example.com/dog.jpeg"}, {"text": "what"}]}]),
            "/api/v1/services/aigc/multimodal-generation/generation",
        ),
        Kind::Tools => {
            parameters["tools"] = weather_tool();
            (json!([{"role": "user", "content": "杭州"}]), text_api)
        }
        Kind::Thinking => {
            parameters["enable_thinking"] = json!(true);
            (json!([{"role": "user", "content": "why"}]), text_api)
        }
    };
    (
        json!({"model": model, "input": {"messages": messages}, "parameters": parameters}),
        api,
    )
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().filter_map(|i| i["text"].as_str()).collect(),
        _ => String::new(),
    }
}

fn usage_of(u: &Value, prompt: &str, completion: &str) -> Option<(u64, u64, u64)> {
    Some((
        u[prompt].as_u64()?,
        u[completion].as_u64()?,
        u["total_tokens"].as_u64()?,
    ))
}

async fn call_openai(
    gw: &Gateway,
    kind: Kind,
    model: &str,
    stream: bool,
) -> Result<Folded, String> {
    let response = gw
        .chat(&openai_body(kind, model, stream))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != 200 {
        return Err(format!(
            "status {}: {}",
            response.status(),
            response.text().await.unwrap_or_default()
        ));
    }
    let mut f = Folded::default();
    let mut tool = (String::new(), String::new());
    let chunks: Vec<Value> = if stream {
        let events = data_events(response).await;
        if events.last().map(String::as_str) != Some("[DONE]") {
            return Err(format!("no [DONE]: {events:?}"));
        }
        events
            .iter()
            .filter_map(|e| serde_json::from_str(e).ok())
            .collect()
    } else {
        vec![json_of(response).await]
    };
    for chunk in &chunks {
        let choice = &chunk["choices"][0];
        let part = if stream {
            &choice["delta"]
        } else {
            &choice["message"]
        };
        f.content.push_str(part["content"].as_str().unwrap_or(""));
        f.reasoning
            .push_str(part["reasoning_content"].as_str().unwrap_or(""));
        if let Some(call) = part["tool_calls"].get(0) {
            tool.0
                .push_str(call["function"]["name"].as_str().unwrap_or(""));
            tool.1
                .push_str(call["function"]["arguments"].as_str().unwrap_or(""));
        }
        if let Some(finish) = choice["finish_reason"].as_str() {
            f.finish = finish.to_string();
        }
        if chunk["usage"].is_object() {
            f.usage = usage_of(&chunk["usage"], "prompt_tokens", "completion_tokens");
            f.reasoning_tokens =
                chunk["usage"]["completion_tokens_details"]["reasoning_tokens"].as_u64();
        }
    }
    f.tool = (!tool.0.is_empty()).then_some(tool);
    Ok(f)
}

async fn call_native(
    gw: &Gateway,
    kind: Kind,
    model: &str,
    stream: bool,
    incremental: bool,
) -> Result<Folded, String> {
    let (body, api) = native_body(kind, model, incremental);
    let mut request = gw
        .http
        .post(gw.url(api))
        .bearer_auth(CLIENT_KEY)
        .json(&body);
    if stream {
        request = request.header("X-DashScope-SSE", "enable");
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    if response.status() != 200 {
        return Err(format!(
            "status {}: {}",
            response.status(),
            response.text().await.unwrap_or_default()
        ));
    }
    let frames: Vec<Value> = if stream {
        let text = common::plain_ids(&response.text().await.unwrap_or_default());
        let mut frames = Vec::new();
        for (n, frame) in text.split("\n\n").filter(|f| !f.is_empty()).enumerate() {
            let lines: Vec<&str> = frame.lines().collect();
            let shape_ok = lines.len() == 4
                && lines[0] == format!("id:{}", n + 1)
                && lines[1] == "event:result"
                && lines[2] == ":HTTP_STATUS/200";
            if !shape_ok {
                return Err(format!("not a native frame: {frame:?}"));
            }
            frames.push(
                serde_json::from_str(lines[3].trim_start_matches("data:"))
                    .map_err(|e| e.to_string())?,
            );
        }
        frames
    } else {
        vec![json_of(response).await]
    };
    let mut f = Folded::default();
    let mut tool = (String::new(), String::new());
    for (n, frame) in frames.iter().enumerate() {
        let last = n + 1 == frames.len();
        let choice = &frame["output"]["choices"][0];
        let message = &choice["message"];
        let finish = choice["finish_reason"].as_str().unwrap_or("");
        if stream && !last && finish != "null" {
            return Err(format!("finish_reason {finish:?} before the last frame"));
        }
        let (content, reasoning) = (
            text_of(&message["content"]),
            message["reasoning_content"].as_str().unwrap_or(""),
        );
        if stream && !incremental {
            // Each frame carries the whole text so far.
            if !content.starts_with(&f.content) {
                return Err(format!("frame {n} does not extend the text: {content:?}"));
            }
            f.content = content;
            f.reasoning = reasoning.to_string();
        } else {
            f.content.push_str(&content);
            f.reasoning.push_str(reasoning);
        }
        if let Some(call) = message["tool_calls"].get(0) {
            let name = call["function"]["name"].as_str().unwrap_or("");
            let arguments = call["function"]["arguments"].as_str().unwrap_or("");
            if stream && !incremental {
                tool = (name.to_string(), arguments.to_string());
            } else {
                tool.0.push_str(name);
                tool.1.push_str(arguments);
            }
        }
        f.finish = finish.to_string();
        if frame["request_id"].as_str().is_none_or(str::is_empty) {
            return Err("no request_id".into());
        }
        f.usage = usage_of(&frame["usage"], "input_tokens", "output_tokens");
        f.reasoning_tokens = frame["usage"]["output_tokens_details"]["reasoning_tokens"].as_u64();
    }
    f.tool = (!tool.0.is_empty()).then_some(tool);
    Ok(f)
}

/// Checks a folded reply against the expectation; usage must add up and name reasoning.
fn check(kind: Kind, got: Result<Folded, String>) -> Result<(), String> {
    let mut got = got?;
    let (prompt, completion, total) = got.usage.take().ok_or("no usage")?;
    if prompt == 0 || completion == 0 || total != prompt + completion {
        return Err(format!(
            "usage does not add up: {prompt} + {completion} != {total}"
        ));
    }
    if matches!(kind, Kind::Thinking) != got.reasoning_tokens.is_some() {
        return Err(format!("reasoning tokens: {:?}", got.reasoning_tokens));
    }
    got.reasoning_tokens = None;
    let want = expected(kind);
    (got == want)
        .then_some(())
        .ok_or_else(|| format!("got {got:?}, want {want:?}"))
}

async fn matrix_gateway() -> (Sim, Gateway) {
    let sim = Sim::start().await;
    let gw = Gateway::start(&config_for(&sim, "", UPSTREAMS)).await;
    (sim, gw)
}

async fn run_matrix(client: &str, kinds: &[Kind]) {
    let (_sim, gw) = matrix_gateway().await;
    let mut failures = Vec::new();
    let mut cells = 0;
    for &kind in kinds {
        for (model, upstream) in ROUTES {
            let modes: &[(bool, bool)] = if client == "openai" {
                &[(false, true), (true, true)]
            } else {
                &[(false, true), (true, true), (true, false)]
            };
            for &(stream, incremental) in modes {
                cells += 1;
                let got = if client == "openai" {
                    call_openai(&gw, kind, model, stream).await
                } else {
                    call_native(&gw, kind, model, stream, incremental).await
                };
                let mode = match (stream, incremental) {
                    (false, _) => "json",
                    (true, true) => "stream",
                    (true, false) => "stream-cumulative",
                };
                let verdict = check(kind, got);
                println!(
                    "{client:>6} client | {upstream:>10} upstream | {mode:>17} | {kind:?}: {}",
                    if verdict.is_ok() { "ok" } else { "FAILED" }
                );
                if let Err(e) = verdict {
                    failures.push(format!("{client} → {upstream} {mode} {kind:?}: {e}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cells} cells failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn openai_clients_reach_every_upstream_dialect() {
    run_matrix(
        "openai",
        &[Kind::Text, Kind::Image, Kind::Tools, Kind::Thinking],
    )
    .await;
}

#[tokio::test]
async fn native_clients_reach_every_upstream_dialect() {
    run_matrix(
        "native",
        &[Kind::Text, Kind::Image, Kind::Tools, Kind::Thinking],
    )
    .await;
}

/// The same request through a gateway on the fast path and one forced through the canonical
/// round-trip gives the client the same bytes.
#[tokio::test]
async fn fast_path_and_canonical_round_trip_give_the_same_bytes() {
    let sim = Sim::start().await;
    let fast = Gateway::start(&config_for(&sim, "", "")).await;
    let slow = Gateway::start(&config_for(&sim, "", "").replace(
        "max_body_bytes = 65536",
        "max_body_bytes = 65536\nfast_path = false",
    ))
    .await;
    let fixed = |mut body: Value| {
        body["sim"] = json!({"created": 1_700_000_000});
        body
    };
    let mut cases: Vec<(String, reqwest::RequestBuilder, reqwest::RequestBuilder)> = Vec::new();
    for kind in [Kind::Text, Kind::Image, Kind::Tools, Kind::Thinking] {
        for stream in [false, true] {
            let mut body = fixed(openai_body(kind, "qwen-plus", stream));
            cases.push((
                format!("openai {kind:?} stream={stream}"),
                fast.chat(&body),
                slow.chat(&body),
            ));
            if stream {
                body.as_object_mut().map(|b| b.remove("stream_options"));
                cases.push((
                    format!("openai {kind:?} stream without usage"),
                    fast.chat(&body),
                    slow.chat(&body),
                ));
            }
        }
        for (stream, incremental) in [(false, true), (true, true), (true, false)] {
            let (mut body, api) = native_body(kind, "qwen-plus", incremental);
            if matches!(kind, Kind::Text) && !stream {
                body["parameters"]["result_format"] = json!("text");
            }
            let request = |gw: &Gateway| {
                let r = gw
                    .http
                    .post(gw.url(api))
                    .bearer_auth(CLIENT_KEY)
                    .json(&body);
                if stream {
                    r.header("X-DashScope-SSE", "enable")
                } else {
                    r
                }
            };
            cases.push((
                format!("native {kind:?} stream={stream} incremental={incremental}"),
                request(&fast),
                request(&slow),
            ));
        }
    }
    let requests_before = sim.requests();
    for (n, (label, a, b)) in cases
        .iter_mut()
        .map(|(l, a, b)| (l.clone(), a.try_clone(), b.try_clone()))
        .enumerate()
    {
        let (Some(a), Some(b)) = (a, b) else {
            panic!("{label}: request not cloneable")
        };
        // One request id per request, in the body too: both gateways are given the same one.
        let id = format!("case-{n}");
        let (a, b) = (a.header("x-request-id", &id), b.header("x-request-id", &id));
        let a = a.send().await.unwrap_or_else(|e| panic!("{label}: {e}"));
        let b = b.send().await.unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(
            (a.status().as_u16(), b.status().as_u16()),
            (200, 200),
            "{label}"
        );
        let (a, b) = (
            common::plain_ids(&a.text().await.unwrap_or_default()),
            common::plain_ids(&b.text().await.unwrap_or_default()),
        );
        assert!(!a.is_empty(), "{label}");
        assert_eq!(a, b, "{label}: the fast path and the round-trip differ");
    }
    assert_eq!(sim.requests() - requests_before, 2 * cases.len() as u64);
}

#[tokio::test]
async fn native_text_format_and_prompt_input_are_served_from_an_openai_upstream() {
    let (_sim, gw) = matrix_gateway().await;
    let body = json!({"model": "via-openai", "input": {"prompt": "hello"}, "parameters": {"result_format": "text"}});
    let url = gw.url("/api/v1/services/aigc/text-generation/generation");
    let reply = json_of(
        gw.http
            .post(&url)
            .bearer_auth(CLIENT_KEY)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert_eq!(
        reply["output"],
        json!({"finish_reason": "stop", "text": "echo: hello"})
    );
    assert!(
        reply["usage"]["input_tokens"]
            .as_u64()
            .is_some_and(|t| t > 0)
    );
    let stream = gw
        .http
        .post(&url)
        .bearer_auth(CLIENT_KEY)
        .header("X-DashScope-SSE", "enable")
        .json(&body)
        .send()
        .await;
    let text = stream
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    let last = text
        .split("\n\n")
        .filter(|f| !f.is_empty())
        .last()
        .unwrap_or_default();
    assert!(
        last.contains(r#""output":{"finish_reason":"stop","text":"echo: hello"}"#),
        "{text}"
    );
}

#[tokio::test]
async fn native_errors_have_dashscopes_shape_and_name_native_fields() {
    let (_sim, gw) = matrix_gateway().await;
    let url = gw.url("/api/v1/services/aigc/text-generation/generation");
    let post = |key: &str, body: Value| gw.http.post(&url).bearer_auth(key).json(&body).send();
    let cases = [
        (post("sk-wrong", native_body(Kind::Text, "qwen-plus", false).0).await, 401, "InvalidApiKey"),
        (post(CLIENT_KEY, json!({"model": "qwen-plus", "input": {"messages": [{"role": "user", "content": "x"}]}, "parameters": {"temperature": 5}})).await, 400, "InvalidParameter"),
        (post(CLIENT_KEY, json!({"model": "nobody-serves-this", "input": {"prompt": "x"}})).await, 404, "ModelNotFound"),
        (post("sk-limited-test", json!({"model": "qwen-max", "input": {"prompt": "x"}})).await, 403, "Model.AccessDenied"),
        (post(CLIENT_KEY, json!({"model": "qwen-plus", "input": {"prompt": "x"}, "parameters": {"sim": {"fault": "429"}}})).await, 429, "Throttling.RateQuota"),
        (post(CLIENT_KEY, json!({"model": "via-openai", "input": {"prompt": "x"}, "parameters": {"sim": {"fault": "429"}}})).await, 429, "Throttling.RateQuota"),
        (post(CLIENT_KEY, json!({"model": "via-openai", "input": {"prompt": "x"}, "parameters": {"sim": {"fault": "503"}}})).await, 503, "UpstreamOverloaded"),
    ];
    for (response, status, code) in cases {
        let response = response.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status().as_u16(), status, "{code}");
        let body = json_of(response).await;
        assert_eq!(body["code"], code, "{body}");
        assert!(
            body["request_id"].as_str().is_some_and(|id| !id.is_empty()),
            "{body}"
        );
        assert!(body["message"].is_string());
    }
    let named = post(CLIENT_KEY, json!({"model": "qwen-plus", "input": {"messages": [{"role": "user", "content": "x"}]}, "parameters": {"temperature": 5}})).await;
    let body = json_of(named.unwrap_or_else(|e| panic!("{e}"))).await;
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("parameters.temperature")),
        "{body}"
    );
}

#[tokio::test]
async fn a_mid_stream_refusal_reaches_native_clients_as_an_error_frame() {
    let (_sim, gw) = matrix_gateway().await;
    let url = gw.url("/api/v1/services/aigc/text-generation/generation");
    for model in ["qwen-plus", "via-openai"] {
        let body = json!({"model": model, "input": {"prompt": "x"}, "parameters": {"incremental_output": true, "sim": {"fault": "inspection", "after": 2}}});
        let response = gw
            .http
            .post(&url)
            .bearer_auth(CLIENT_KEY)
            .header("X-DashScope-SSE", "enable")
            .json(&body)
            .send()
            .await;
        let text = response
            .unwrap_or_else(|e| panic!("{e}"))
            .text()
            .await
            .unwrap_or_default();
        let last = text
            .split("\n\n")
            .filter(|f| !f.is_empty())
            .last()
            .unwrap_or_default();
        assert!(
            last.contains("event:error") && last.contains("DataInspectionFailed"),
            "{model}: {text}"
        );
    }
}

#[tokio::test]
async fn completions_relay_plain_and_fill_in_the_middle_prompts() {
    let (_sim, gw) = matrix_gateway().await;
    for model in ["qwen-plus", "via-openai"] {
        for path in ["/v1/completions", "/compatible-mode/v1/completions"] {
            let fim = json!({"model": model, "prompt": "<|fim_prefix|>def f():<|fim_suffix|>return 1<|fim_middle|>"});
            let r = gw
                .http
                .post(gw.url(path))
                .bearer_auth(CLIENT_KEY)
                .json(&fim)
                .send()
                .await;
            let reply = json_of(r.unwrap_or_else(|e| panic!("{e}"))).await;
            assert_eq!(
                reply["choices"][0]["text"], "fim prefix=8 suffix=8",
                "{model} {path}"
            );
            assert_eq!(reply["object"], "text_completion");
            let plain = json!({"model": model, "prompt": "hello", "stream": true, "stream_options": {"include_usage": true}});
            let r = gw
                .http
                .post(gw.url(path))
                .bearer_auth(CLIENT_KEY)
                .json(&plain)
                .send()
                .await;
            let events = data_events(r.unwrap_or_else(|e| panic!("{e}"))).await;
            let text: String = events
                .iter()
                .filter_map(|e| serde_json::from_str::<Value>(e).ok())
                .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
                .collect();
            assert_eq!(text, "echo: hello");
            assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        }
    }
    let bad = gw
        .http
        .post(gw.url("/v1/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&json!({"model": "qwen-plus", "prompt": 5}))
        .send()
        .await;
    let bad = bad.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bad.status().as_u16(), 400);
    assert_eq!(error_of(&json_of(bad).await).1, Some("prompt"));
}

/// Every documented parameter survives translation, both ways.
#[tokio::test]
async fn parameters_survive_translation_both_ways() {
    let (_sim, gw) = matrix_gateway().await;
    let assistant_prefix = json!({"role": "assistant", "content": "def f(", "partial": true});
    let shared = json!({
        "enable_search": true,
        "search_options": {"forced_search": true, "search_strategy": "pro"},
        "response_format": {"type": "json_object"},
        "stop": ["\n\n"],
        "seed": 1234,
        "n": 2,
        "translation_options": {"source_lang": "auto", "target_lang": "English"},
        "temperature": 0.3,
        "top_p": 0.9,
        "max_tokens": 500,
        "sim": {"echo_request": true},
    });
    // OpenAI client → native upstream: fields land in `parameters`, messages in `input`.
    let mut body = json!({"model": "via-native", "messages": [{"role": "user", "content": "write f"}, assistant_prefix]});
    if let (Some(b), Some(extra)) = (body.as_object_mut(), shared.as_object()) {
        b.extend(extra.clone());
    }
    let reply = json_of(
        gw.chat(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    let seen: Value = serde_json::from_str(
        reply["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or(""),
    )
    .unwrap_or_default();
    assert_eq!(seen["input"]["messages"][1], assistant_prefix, "{seen}");
    for (key, value) in shared.as_object().into_iter().flatten() {
        assert_eq!(
            &seen["parameters"][key], value,
            "parameters.{key} in {seen}"
        );
    }
    assert_eq!(seen["parameters"]["result_format"], "message");

    // Native client → OpenAI upstream: `parameters` become top-level fields.
    let native = json!({"model": "via-openai", "input": {"messages": [{"role": "user", "content": "write f"}, assistant_prefix]},
        "parameters": shared});
    let url = gw.url("/api/v1/services/aigc/text-generation/generation");
    let reply = json_of(
        gw.http
            .post(&url)
            .bearer_auth(CLIENT_KEY)
            .json(&native)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    let seen: Value =
        serde_json::from_str(reply["output"]["text"].as_str().unwrap_or("")).unwrap_or_default();
    assert_eq!(seen["messages"][1], assistant_prefix, "{seen}");
    for (key, value) in shared.as_object().into_iter().flatten() {
        assert_eq!(&seen[key], value, "{key} in {seen}");
    }
}

/// The round-trip gateway really re-encodes: it asks the upstream for usage on every stream.
#[tokio::test]
async fn the_round_trip_path_re_encodes_and_always_asks_for_usage() {
    let sim = Sim::start().await;
    let slow = Gateway::start(&config_for(&sim, "", "").replace(
        "max_body_bytes = 65536",
        "max_body_bytes = 65536\nfast_path = false",
    ))
    .await;
    let fast = Gateway::start(&config_for(&sim, "", "")).await;
    let mut body = ask("qwen-plus", "x");
    body["stream"] = json!(true);
    body["sim"] = json!({"echo_request": true});
    let seen_by_upstream = |gw: &Gateway| {
        let request = gw.chat(&body);
        async move {
            let events = data_events(request.send().await.unwrap_or_else(|e| panic!("{e}"))).await;
            let text: String = events
                .iter()
                .filter_map(|e| serde_json::from_str::<Value>(e).ok())
                .filter_map(|c| {
                    c["choices"][0]["delta"]["content"]
                        .as_str()
                        .map(str::to_string)
                })
                .collect();
            serde_json::from_str::<Value>(&text).unwrap_or_default()
        }
    };
    assert_eq!(
        seen_by_upstream(&slow).await["stream_options"],
        json!({"include_usage": true})
    );
    // The fast path forwards the body as sent, but for the usage it asks for on the client's
    // behalf (the ledger needs it; the client does not get the usage chunk).
    let mut expected = body.clone();
    expected["stream_options"] = json!({"include_usage": true});
    assert_eq!(seen_by_upstream(&fast).await, expected);
}

/// `n` choices come back whole and streamed, each with its index, whichever upstream answers.
#[tokio::test]
async fn several_choices_reach_native_clients_with_their_index() {
    let (_sim, gw) = matrix_gateway().await;
    let url = gw.url("/api/v1/services/aigc/text-generation/generation");
    for model in ["qwen-plus", "via-openai"] {
        let body = json!({"model": model, "input": {"messages": [{"role": "user", "content": "hi"}]},
            "parameters": {"result_format": "message", "n": 2, "incremental_output": true}});
        let whole = json_of(
            gw.http
                .post(&url)
                .bearer_auth(CLIENT_KEY)
                .json(&body)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .await;
        let choices = whole["output"]["choices"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let seen: Vec<(u64, String)> = choices
            .iter()
            .map(|c| {
                (
                    c["index"].as_u64().unwrap_or(9),
                    text_of(&c["message"]["content"]),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![(0, "echo: hi".to_string()), (1, "echo: hi".to_string())],
            "{model}: {whole}"
        );

        let response = gw
            .http
            .post(&url)
            .bearer_auth(CLIENT_KEY)
            .header("X-DashScope-SSE", "enable")
            .json(&body)
            .send()
            .await;
        let text = response
            .unwrap_or_else(|e| panic!("{e}"))
            .text()
            .await
            .unwrap_or_default();
        let mut per_choice = [String::new(), String::new()];
        for frame in text.split("\n\n").filter(|f| !f.is_empty()) {
            let data: Value = serde_json::from_str(
                frame
                    .lines()
                    .last()
                    .unwrap_or("")
                    .trim_start_matches("data:"),
            )
            .unwrap_or_default();
            let choice = &data["output"]["choices"][0];
            let index = choice["index"].as_u64().unwrap_or(9) as usize;
            assert!(index < 2, "{model}: a frame without its index: {frame}");
            per_choice[index].push_str(&text_of(&choice["message"]["content"]));
        }
        assert_eq!(per_choice, ["echo: hi", "echo: hi"], "{model}");
    }
}
