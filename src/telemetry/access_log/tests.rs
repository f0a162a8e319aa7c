use super::*;

#[test]
fn a_json_line_has_every_field_in_order_and_nulls_for_what_is_unknown() {
    let log = RequestLog::start(
        None,
        &Method::POST,
        "/v1/chat/completions",
        &HeaderMap::new(),
        &Arc::from("r-7"),
        "chat",
    );
    // Without a sink or a trace there is no log to write.
    assert!(log.is_none());
    let log = RequestLog {
        span: tracing::Span::none(),
        sink: None,
        request_id: Arc::from("r-7"),
        trace_id: None,
        method: Method::POST,
        path: "/v1/chat/completions".into(),
        route: "chat",
        started: Instant::now(),
        fields: Mutex::new(Fields::default()),
    };
    let fields = Fields {
        status: 200,
        head_ms: Some(1.23456),
        model: Some("qwen-plus".into()),
        ..Fields::default()
    };
    let line = log.line(LogFormat::Json, &fields);
    assert!(line.ends_with('\n'));
    let value: serde_json::Value = serde_json::from_str(&line).unwrap();
    let keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        keys,
        [
            "ts",
            "request_id",
            "trace_id",
            "method",
            "path",
            "route",
            "key",
            "model",
            "upstream",
            "status",
            "stream",
            "error",
            "bytes_in",
            "bytes_out",
            "input_tokens",
            "output_tokens",
            "total_tokens",
            "tokens_estimated",
            "latency_ms",
            "ttfb_ms",
            "ttft_ms",
        ]
    );
    assert_eq!(value["request_id"], "r-7");
    assert_eq!(value["model"], "qwen-plus");
    assert_eq!(value["status"], 200);
    assert_eq!(value["ttfb_ms"], 1.235);
    assert!(value["key"].is_null() && value["stream"].is_null());
    let text = log.line(LogFormat::Text, &fields);
    assert!(text.starts_with("ts="), "{text}");
    assert!(text.ends_with(" ttfb_ms=1.235\n"), "{text}");
    let quoted = Fields {
        model: Some("glass 3 \"pro\"".into()),
        head_ms: Some(2.0),
        ..Fields::default()
    };
    let quoted = log.line(LogFormat::Text, &quoted);
    assert!(
        quoted.contains(r#" model="glass 3 \"pro\"" status=0 "#),
        "{quoted}"
    );
    assert!(quoted.ends_with(" ttfb_ms=2.0\n"), "{quoted}");
    assert!(text.contains(" request_id=r-7 method=POST path=/v1/chat/completions route=chat model=qwen-plus status=200 "), "{text}");
    assert!(!text.contains("key="), "{text}");
}
