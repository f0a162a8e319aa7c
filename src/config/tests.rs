use super::load::from_env;
use super::*;

fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |name| {
        pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

const MINIMAL: &str = r#"
[[upstreams]]
name = "a"
provider = "dashscope"
base_url = "http://127.0.0.1:1"
api_key = "${UP_KEY}"
"#;

#[test]
fn interpolates_variables_in_strings() {
    let config =
        parse(MINIMAL, "t.toml", &env_of(&[("UP_KEY", "sk-up")])).map_err(|e| e.to_string());
    let config = config.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.upstreams[0].api_key.as_ref().map(Secret::expose),
        Some("sk-up")
    );
    assert_eq!(config.upstreams[0].models, vec!["*".to_string()]);
}

#[test]
fn unset_variable_is_an_error_naming_it_and_the_key() {
    let err = parse(MINIMAL, "t.toml", &env_of(&[]))
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some("upstreams[0].api_key: environment variable UP_KEY is not set")
    );
}

#[test]
fn fallback_is_used_for_unset_variable() {
    let text = MINIMAL.replace("${UP_KEY}", "${UP_KEY:-none}");
    let config = parse(&text, "t.toml", &env_of(&[])).map_err(|e| e.to_string());
    assert_eq!(
        config
            .ok()
            .and_then(|c| c.upstreams[0].api_key.clone())
            .map(|s| s.0),
        Some("none".into())
    );
}

#[test]
fn unknown_key_is_named() {
    let text = format!("{MINIMAL}\nweigth = 2\n");
    let err = parse(&text, "t.toml", &env_of(&[("UP_KEY", "k")]))
        .err()
        .map(|e| e.to_string());
    let err = err.unwrap_or_default();
    assert!(
        err.starts_with("upstreams[0].weigth: unknown field `weigth`"),
        "{err}"
    );
}

#[test]
fn bad_listen_address_is_named() {
    let text = format!("[server]\nlisten = \"nowhere\"\n{MINIMAL}");
    let err = parse(&text, "t.toml", &env_of(&[("UP_KEY", "k")]))
        .err()
        .map(|e| e.key);
    assert_eq!(err.as_deref(), Some("server.listen"));
}

#[test]
fn validation_names_the_field() {
    let text = MINIMAL.replace("http://127.0.0.1:1", "ftp://x");
    let config = parse(&text, "t.toml", &env_of(&[("UP_KEY", "k")])).map_err(|e| e.to_string());
    let err = config
        .ok()
        .and_then(|c| validate(&c).err())
        .map(|e| e[0].key.clone());
    assert_eq!(err.as_deref(), Some("upstreams[0].base_url"));
}

#[test]
fn zero_decode_and_pdf_page_caps_are_refused() {
    for (section, key) in [
        (
            "[media]\nmax_decode_pixels = 0",
            "upstreams[0].media.max_decode_pixels",
        ),
        ("[files]\nmax_pdf_pages = 0", "files.max_pdf_pages"),
        ("[batch]\nworkers = 0", "batch"),
        ("[batch]\nmax_lines = 0", "batch"),
    ] {
        let text = format!("{section}\n{MINIMAL}");
        let config = parse(&text, "t.toml", &env_of(&[("UP_KEY", "k")]));
        let err = config
            .ok()
            .and_then(|c| validate(&c).err())
            .map(|e| e[0].key.clone());
        assert_eq!(err.as_deref(), Some(key));
    }
}

#[test]
fn syntax_error_names_the_line() {
    let err = parse("[server]\nlisten = \n", "t.toml", &env_of(&[]))
        .err()
        .map(|e| e.key);
    assert_eq!(err.as_deref(), Some("t.toml line 2"));
}

#[test]
fn environment_only_mode_makes_one_dashscope_upstream() {
    let config = from_env(&env_of(&[
        ("DASHSCOPE_API_KEY", "sk-x"),
        ("DASHGATE_LISTEN", "127.0.0.1:9999"),
    ]));
    assert_eq!(config.server.listen.port(), 9999);
    assert_eq!(config.upstreams.len(), 1);
    assert_eq!(config.upstreams[0].provider, ProviderKind::Dashscope);
    assert_eq!(
        config.upstreams[0].base_url,
        "https://dashscope.aliyuncs.com"
    );
    assert!(validate(&config).is_ok());
}

#[test]
fn secrets_do_not_show_in_debug_output() {
    let config = parse(MINIMAL, "t.toml", &env_of(&[("UP_KEY", "sk-very-secret")]))
        .map_err(|e| e.to_string());
    assert!(!format!("{config:?}").contains("sk-very-secret"));
}

#[test]
fn every_problem_is_reported_at_once_each_naming_its_key() {
    let text = format!(
        "[retry]\nattempts = 0\n[circuit]\nfailure_threshold = 0\n{}",
        MINIMAL.replace("http://127.0.0.1:1", "ftp://x")
    );
    let config = parse(&text, "t.toml", &env_of(&[("UP_KEY", "k")]));
    let keys: Vec<String> = config
        .ok()
        .and_then(|c| validate(&c).err())
        .map(|problems| problems.iter().map(|p| p.key.clone()).collect())
        .unwrap_or_default();
    assert_eq!(
        keys,
        [
            "retry.attempts",
            "circuit.failure_threshold",
            "upstreams[0].base_url"
        ]
    );
}
