//! The `dashgate` command as an operator runs it: exit codes, one-line errors, announced ports.

use std::process::{Command, Output, Stdio};

use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_dashgate");

fn run(args: &[&str], dir: &std::path::Path, env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("DASHSCOPE_API_KEY")
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"))
}

fn write_config(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("dashgate.toml");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    path.display().to_string()
}

const VALID: &str = r#"
[server]
listen = "127.0.0.1:0"

[[keys]]
name = "glass3-fleet"
key = "sk-glass3-demo"
models = ["qwen-plus", "qwen-vl-plus"]

[[upstreams]]
name = "bailian-beijing"
provider = "dashscope"
base_url = "https://dashscope.aliyuncs.com"
api_key = "${DASHSCOPE_API_KEY}"
models = ["*"]
weight = 1
"#;

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn check_accepts_the_interface_example() {
    let dir = tempdir();
    let config = write_config(&dir, VALID);
    let out = run(
        &["check", "--config", &config],
        dir.path(),
        &[("DASHSCOPE_API_KEY", "sk-x")],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .starts_with("config ok: 1 upstream(s), 1 static key(s)")
    );
}

#[test]
fn an_unset_variable_exits_2_naming_it() {
    let dir = tempdir();
    let config = write_config(&dir, VALID);
    let out = run(&["check", "--config", &config], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        "dashgate: config error: upstreams[0].api_key: environment variable DASHSCOPE_API_KEY is not set"
    );
}

#[test]
fn config_errors_exit_2_with_one_line_naming_the_key() {
    let dir = tempdir();
    let cases = [
        (
            VALID.replace("weight = 1", "weight = 0"),
            "upstreams[0].weight",
        ),
        (
            VALID.replace("weight = 1", "wieght = 1"),
            "upstreams[0].wieght",
        ),
        (
            VALID.replace("provider = \"dashscope\"", "provider = \"azure\""),
            "upstreams[0].provider",
        ),
        (
            VALID.replace("listen = \"127.0.0.1:0\"", "listen = 8080"),
            "server.listen",
        ),
        (
            VALID.replace("[server]", "[server]\nmax_body_bytes = -1"),
            "server.max_body_bytes",
        ),
        (VALID.replace("name = \"glass3-fleet\"\n", ""), "keys[0]"),
    ];
    for (text, key) in cases {
        let config = write_config(&dir, &text);
        let out = run(
            &["check", "--config", &config],
            dir.path(),
            &[("DASHSCOPE_API_KEY", "sk-x")],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(key), "{key}: {stderr}");
    }
    let missing = run(&["check", "--config", "nowhere.toml"], dir.path(), &[]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nowhere.toml"));
}

#[test]
fn every_config_problem_is_reported_at_once_one_line_each() {
    let dir = tempdir();
    let text = VALID
        .replace("weight = 1", "weight = 0")
        .replace("[server]", "[retry]\nattempts = 0\n\n[server]");
    let config = write_config(&dir, &text);
    let out = run(
        &["check", "--config", &config],
        dir.path(),
        &[("DASHSCOPE_API_KEY", "sk-x")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.trim().lines().collect();
    assert_eq!(
        lines,
        [
            "dashgate: config error: retry.attempts: must be at least 1 (1 means no retry)",
            "dashgate: config error: upstreams[0].weight: must be at least 1",
        ],
        "{stderr}"
    );
}

#[test]
fn bad_flags_exit_2() {
    let dir = tempdir();
    for args in [
        &["serve", "--listen", "nowhere"][..],
        &["frobnicate"][..],
        &["simulate", "--latency-ms", "-1"][..],
    ] {
        let out = run(args, dir.path(), &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

/// Starts the binary and returns it with the URL it announced on its first stdout line.
async fn start(
    args: &[&str],
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("DASHSCOPE_API_KEY")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let url = line.trim().rsplit(' ').next().unwrap_or("").to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    (child, url)
}

#[tokio::test]
async fn serve_runs_on_environment_alone_and_relays_to_the_simulator() {
    let dir = tempdir();
    let (_sim, sim_url) = start(&["simulate", "--listen", "127.0.0.1:0"], dir.path(), &[]).await;
    let env = [
        ("DASHGATE_LISTEN", "127.0.0.1:0"),
        ("DASHSCOPE_BASE_URL", sim_url.as_str()),
        ("DASHSCOPE_API_KEY", "sk-from-env"),
        ("DASHGATE_AUTH_MODE", "passthrough"),
    ];
    let (_gateway, url) = start(&["serve"], dir.path(), &env).await;
    let http = reqwest::Client::new();
    let health = http
        .get(format!("{url}/healthz"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .ok();
    assert_eq!(health, Some(200));
    let chat = http
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth("sk-caller")
        .json(&serde_json::json!({"model": "qwen-plus", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(chat.status().as_u16(), 200);
    let body: serde_json::Value = chat.json().await.unwrap_or_default();
    assert_eq!(body["choices"][0]["message"]["content"], "echo: hi");
}

#[tokio::test]
async fn serve_reads_dashgate_toml_from_the_working_directory() {
    let dir = tempdir();
    write_config(&dir, VALID);
    let (_gateway, url) = start(&["serve"], dir.path(), &[("DASHSCOPE_API_KEY", "sk-x")]).await;
    let ready: serde_json::Value = reqwest::get(format!("{url}/readyz"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_default();
    assert_eq!(ready["upstreams"][0]["name"], "bailian-beijing");
}
