//! What translation between the dialects must keep: logprobs, `search_info`, reasoning beside
//! tool calls, `input_audio` formats, usage on every native frame, and Qwen-Omni audio output
//! (relayed, translated both ways and metered).

mod common;

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};

const MODELS: [&str; 4] = ["qwen-plus", "via-compat", "via-native", "via-openai"];
const TEXT_API: &str = "/api/v1/services/aigc/text-generation/generation";

async fn matrix() -> (Sim, Gateway) {
    let sim = Sim::start().await;
    let gw = Gateway::start(&config_for(&sim, "", UPSTREAMS)).await;
    (sim, gw)
}

fn with(mut body: Value, fields: &Value) -> Value {
    if let (Some(b), Some(f)) = (body.as_object_mut(), fields.as_object()) {
        b.extend(f.clone());
    }
    body
}

/// The OpenAI client's JSON reply, or its stream's chunks.
async fn openai(gw: &Gateway, body: &Value) -> Vec<Value> {
    let response = gw.chat(body).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 200);
    if body["stream"] == true {
        data_events(response)
            .await
            .iter()
            .filter_map(|e| serde_json::from_str(e).ok())
            .collect()
    } else {
        vec![json_of(response).await]
    }
}

/// The native client's reply, or its stream's frames' data.
async fn native(gw: &Gateway, body: &Value, stream: bool, api: &str) -> Vec<Value> {
    let mut request = gw.http.post(gw.url(api)).bearer_auth(CLIENT_KEY).json(body);
    if stream {
        request = request.header("X-DashScope-SSE", "enable");
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 200);
    if !stream {
        return vec![json_of(response).await];
    }
    let text = response.text().await.unwrap_or_default();
    text.split("\n\n")
        .filter(|f| !f.is_empty())
        .map(|f| {
            let data = f.lines().last().unwrap_or("").trim_start_matches("data:");
            serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {f}"))
        })
        .collect()
}

#[tokio::test]
async fn logprobs_survive_translation_both_ways() {
    let (_sim, gw) = matrix().await;
    let ask_for = json!({"logprobs": true, "top_logprobs": 2});
    for model in MODELS {
        for stream in [false, true] {
            let mut body = with(ask(model, "hi"), &ask_for);
            body["stream"] = json!(stream);
            let entries: Vec<Value> = openai(&gw, &body)
                .await
                .iter()
                .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array().cloned())
                .flatten()
                .collect();
            assert!(
                !entries.is_empty(),
                "openai → {model} stream={stream}: no logprobs"
            );
            let tokens: String = entries.iter().filter_map(|e| e["token"].as_str()).collect();
            assert_eq!(tokens, "echo: hi", "openai → {model} stream={stream}");
            assert!(
                entries
                    .iter()
                    .all(|e| e["top_logprobs"].as_array().map(Vec::len) == Some(2))
            );
            let native_body = json!({"model": model, "input": {"messages": [{"role": "user", "content": "hi"}]},
                "parameters": with(json!({"result_format": "message", "incremental_output": true}), &ask_for)});
            let entries: Vec<Value> = native(&gw, &native_body, stream, TEXT_API)
                .await
                .iter()
                .filter_map(|f| {
                    f["output"]["choices"][0]["logprobs"]["content"]
                        .as_array()
                        .cloned()
                })
                .flatten()
                .collect();
            let tokens: String = entries.iter().filter_map(|e| e["token"].as_str()).collect();
            assert_eq!(tokens, "echo: hi", "native → {model} stream={stream}");
        }
    }
}

#[tokio::test]
async fn search_info_reaches_openai_clients_of_a_native_upstream() {
    let (_sim, gw) = matrix().await;
    let search = json!({"enable_search": true, "search_options": {"enable_source": true}});
    for stream in [false, true] {
        let mut body = with(ask("via-native", "news"), &search);
        body["stream"] = json!(stream);
        let chunks = openai(&gw, &body).await;
        let info: Vec<&Value> = chunks
            .iter()
            .map(|c| &c["search_info"])
            .filter(|i| i.is_object())
            .collect();
        assert_eq!(info.len(), 1, "stream={stream}: {chunks:?}");
        assert_eq!(
            info[0]["search_results"][0]["url"],
            "https://example.com/search/1"
        );
    }
    // And natively, through the round trip (a native upstream, re-encoded).
    let body = json!({"model": "via-native", "input": {"prompt": "news"},
        "parameters": with(json!({"result_format": "message"}), &search)});
    let sim = Sim::start().await;
    let slow = Gateway::start(&config_for(&sim, "", UPSTREAMS).replace(
        "max_body_bytes = 65536",
        "max_body_bytes = 65536\nfast_path = false",
    ))
    .await;
    for stream in [false, true] {
        let frames = native(&slow, &body, stream, TEXT_API).await;
        assert!(
            frames
                .iter()
                .any(|f| f["output"]["search_info"]["search_results"].is_array()),
            "stream={stream}: {frames:?}"
        );
    }
}

#[tokio::test]
async fn reasoning_stays_beside_tool_calls() {
    let (_sim, gw) = matrix().await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]);
    for model in MODELS {
        let body = json!({"model": model, "enable_thinking": true, "tools": tools,
            "messages": [{"role": "user", "content": "杭州"}]});
        let reply = &openai(&gw, &body).await[0];
        let message = &reply["choices"][0]["message"];
        assert_eq!(
            message["tool_calls"][0]["function"]["name"], "get_weather",
            "{model}: {reply}"
        );
        assert_eq!(
            message["reasoning_content"], "thinking about: 杭州",
            "{model}: {reply}"
        );
        let native_body = json!({"model": model, "input": {"messages": [{"role": "user", "content": "杭州"}]},
            "parameters": {"result_format": "message", "enable_thinking": true, "tools": tools}});
        let reply = &native(&gw, &native_body, false, TEXT_API).await[0];
        let message = &reply["output"]["choices"][0]["message"];
        assert_eq!(
            message["reasoning_content"], "thinking about: 杭州",
            "native {model}: {reply}"
        );
        assert_eq!(message["tool_calls"][0]["function"]["name"], "get_weather");
    }
}

#[tokio::test]
async fn native_audio_items_reach_a_compatible_upstream_with_their_format() {
    let (_sim, gw) = matrix().await;
    for (audio, format) in [
        ("https://example.com/a.wav", "wav"),
        ("https://example.com/q.mp3?sig=1", "mp3"),
        ("data:audio/mpeg;base64,SUQz", "mp3"),
    ] {
        let body = json!({"model": "via-compat", "input": {"messages": [{"role": "user",
            "content": [{"audio": audio}, {"text": "what"}]}]},
            "parameters": {"result_format": "message", "sim": {"echo_request": true}}});
        let api = "/api/v1/services/aigc/multimodal-generation/generation";
        let reply = &native(&gw, &body, false, api).await[0];
        let content = &reply["output"]["choices"][0]["message"]["content"];
        let text: String = content
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["text"].as_str())
            .collect();
        let seen: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {reply}"));
        let part = &seen["messages"][0]["content"][0];
        assert_eq!(part["type"], "input_audio", "{seen}");
        assert_eq!(
            part["input_audio"],
            json!({"data": audio, "format": format}),
            "{seen}"
        );
    }
}

#[tokio::test]
async fn every_native_frame_carries_usage_whatever_the_upstream() {
    let (_sim, gw) = matrix().await;
    for model in MODELS {
        for incremental in [true, false] {
            let body = json!({"model": model, "input": {"prompt": "hello there"},
                "parameters": {"result_format": "message", "incremental_output": incremental}});
            let frames = native(&gw, &body, true, TEXT_API).await;
            assert!(frames.len() > 2, "{model}");
            for frame in &frames {
                let usage = &frame["usage"];
                assert!(
                    usage["output_tokens"].is_u64() && usage["total_tokens"].is_u64(),
                    "{model} incremental={incremental}: a frame without usage: {frame}"
                );
            }
            let last = &frames[frames.len() - 1]["usage"];
            assert!(
                last["input_tokens"].as_u64().is_some_and(|t| t > 0),
                "{model}: {last}"
            );
        }
    }
}

/// Qwen-Omni: `modalities: ["text", "audio"]` with `audio: {voice, format}` streams the reply's
/// transcript and base64 audio; both reach the client whatever the upstream speaks, and the
/// ledger meters the audio tokens.
#[tokio::test]
async fn omni_audio_output_is_relayed_translated_and_metered() {
    let (_sim, gw) = matrix().await;
    let omni = json!({"modalities": ["text", "audio"], "audio": {"voice": "Chelsie", "format": "wav"},
        "stream": true, "stream_options": {"include_usage": true}});
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut expected_audio: Option<Vec<u8>> = None;
    for model in MODELS {
        let chunks = openai(&gw, &with(ask(model, "hi"), &omni)).await;
        let (mut audio, mut transcript) = (Vec::new(), String::new());
        for chunk in &chunks {
            let delta = &chunk["choices"][0]["delta"]["audio"];
            if let Some(data) = delta["data"].as_str() {
                audio.extend(b64.decode(data).unwrap_or_else(|e| panic!("{model}: {e}")));
            }
            transcript.push_str(delta["transcript"].as_str().unwrap_or(""));
        }
        assert!(
            !audio.is_empty(),
            "openai → {model}: no audio in {chunks:?}"
        );
        assert_eq!(transcript, "echo: hi", "openai → {model}");
        // Every route gives the same sound for the same text.
        assert_eq!(
            expected_audio.get_or_insert_with(|| audio.clone()),
            &audio,
            "{model}"
        );
        let usage = &chunks
            .iter()
            .rev()
            .find(|c| c["usage"].is_object())
            .unwrap_or(&Value::Null)["usage"];
        assert!(
            usage["completion_tokens_details"]["audio_tokens"]
                .as_u64()
                .is_some_and(|t| t > 0),
            "openai → {model}: {usage}"
        );

        let native_body = json!({"model": model, "input": {"messages": [{"role": "user", "content": "hi"}]},
            "parameters": {"result_format": "message", "incremental_output": true,
                "modalities": ["text", "audio"], "audio": {"voice": "Chelsie", "format": "wav"}}});
        let frames = native(&gw, &native_body, true, TEXT_API).await;
        let mut audio = Vec::new();
        for frame in &frames {
            let data = &frame["output"]["choices"][0]["message"]["audio"]["data"];
            if let Some(data) = data.as_str() {
                audio.extend(b64.decode(data).unwrap_or_else(|e| panic!("{model}: {e}")));
            }
        }
        assert_eq!(expected_audio.as_ref(), Some(&audio), "native → {model}");
        let usage = &frames[frames.len() - 1]["usage"];
        assert!(
            usage["output_tokens_details"]["audio_tokens"]
                .as_u64()
                .is_some_and(|t| t > 0),
            "native → {model}: {usage}"
        );
    }
    let store = open_store(&format!("sqlite://{}/dashgate.db", gw.dir.path().display())).await;
    let found = records(&store, &Default::default(), 2 * MODELS.len()).await;
    assert!(
        found.iter().all(|r| r.audio_tokens.is_some_and(|t| t > 0)),
        "{found:#?}"
    );
}

/// Chunks in their full shape (seed of a DashScope deployment: `function_call`, `refusal`,
/// `role`, `tool_calls` present as `null`, `service_tier`) translate like the short ones.
#[tokio::test]
async fn full_shape_chunks_with_null_fields_translate_to_the_same_reply() {
    let (sim, gw) = matrix().await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]);
    // The simulator writes the full shape when asked.
    let direct = reqwest::Client::new()
        .post(format!("{}/compatible-mode/v1/chat/completions", sim.url()))
        .bearer_auth(UPSTREAM_KEY)
        .json(
            &json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}],
            "sim": {"full_shape": true}}),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let first = data_events(direct).await.remove(0);
    assert!(
        first.starts_with(r#"{"id":"chatcmpl-"#)
            && first.contains(r#""delta":{"content":"","function_call":null,"refusal":null,"role":"assistant","tool_calls":null}"#)
            && first.contains(r#""service_tier":null"#),
        "{first}"
    );
    for model in ["via-compat", "via-openai"] {
        for stream in [false, true] {
            let body = json!({"model": model, "input": {"messages": [{"role": "user", "content": "hi"}]},
                "parameters": {"result_format": "message", "incremental_output": true, "sim": {"full_shape": true}}});
            let frames = native(&gw, &body, stream, TEXT_API).await;
            let text: String = frames
                .iter()
                .filter_map(|f| f["output"]["choices"][0]["message"]["content"].as_str())
                .collect();
            assert_eq!(text, "echo: hi", "{model} stream={stream}: {frames:?}");
            let body = json!({"model": model, "input": {"messages": [{"role": "user", "content": "杭州"}]},
                "parameters": {"result_format": "message", "incremental_output": true, "tools": tools,
                    "sim": {"full_shape": true}}});
            let frames = native(&gw, &body, stream, TEXT_API).await;
            let (mut name, mut arguments) = (String::new(), String::new());
            for frame in &frames {
                let call = &frame["output"]["choices"][0]["message"]["tool_calls"][0]["function"];
                name.push_str(call["name"].as_str().unwrap_or(""));
                arguments.push_str(call["arguments"].as_str().unwrap_or(""));
            }
            assert_eq!(
                (name.as_str(), arguments.as_str()),
                ("get_weather", r#"{"location":"杭州"}"#),
                "{model} stream={stream}"
            );
            assert_eq!(
                frames[frames.len() - 1]["output"]["choices"][0]["finish_reason"],
                "tool_calls"
            );
        }
    }
}
