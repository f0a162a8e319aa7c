//! The console and the first run: the bootstrap admin token (printed once, hash stored, gone
//! once replaced or once a token is configured), cookie sessions with CSRF, `serve --simulate`.
//! The console's usage API is in `console_usage.rs`.

mod common;

use std::path::Path;
use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_dashgate");

/// `dashgate serve` as a process in `dir`, its stdout read line by line, its stderr in a file.
struct Serve {
    child: tokio::process::Child,
    stdout: BufReader<tokio::process::ChildStdout>,
    url: String,
    stderr: std::path::PathBuf,
}

impl Serve {
    async fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Serve {
        let stderr = dir.join(format!("stderr-{}.log", uuid::Uuid::new_v4().simple()));
        let file = std::fs::File::create(&stderr).unwrap_or_else(|e| panic!("{e}"));
        let mut command = tokio::process::Command::new(BIN);
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .current_dir(dir)
            .env_remove("DASHSCOPE_API_KEY")
            .env_remove("DASHGATE_ADMIN_TOKEN")
            .env_remove("DASHGATE_STORE_URL")
            .env_remove("DASHGATE_LISTEN")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(file)
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap_or_else(|e| panic!("{BIN}: {e}"));
        let mut stdout = BufReader::new(child.stdout.take().unwrap_or_else(|| panic!("stdout")));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let url = line.trim().rsplit(' ').next().unwrap_or("").to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "first line: {line:?}");
        Serve {
            child,
            stdout,
            url,
            stderr,
        }
    }

    /// The token of the `admin token: ...` line, which follows the address line at once.
    async fn bootstrap_token(&mut self) -> String {
        for _ in 0..3 {
            let mut line = String::new();
            self.stdout
                .read_line(&mut line)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            if let Some(token) = line.trim().strip_prefix("admin token: ") {
                return token.to_string();
            }
        }
        panic!("no `admin token:` line");
    }

    /// Stops the process; returns the rest of its stdout and its whole stderr.
    async fn stop(mut self) -> (String, String) {
        let _ = self.child.kill().await;
        let mut rest = String::new();
        let _ = self.stdout.read_to_string(&mut rest).await;
        let log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        (rest, log)
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

async fn status_of(request: reqwest::RequestBuilder) -> u16 {
    request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .status()
        .as_u16()
}

/// Signs in; returns the session cookie (`name=value`), the whole Set-Cookie and the CSRF token.
async fn sign_in(url: &str, token: &str, tls: bool) -> (String, String, String) {
    let mut request = http()
        .post(format!("{url}/admin/session"))
        .json(&json!({"token": token}));
    if tls {
        request = request.header("x-forwarded-proto", "https");
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 200);
    let set = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body: Value = response.json().await.unwrap_or_else(|e| panic!("{e}"));
    let cookie = set.split(';').next().unwrap_or_default().to_string();
    (
        cookie,
        set,
        body["csrf"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test]
async fn a_first_run_prints_a_bootstrap_token_that_lasts_until_replaced_or_configured() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut serve = Serve::start(dir.path(), &[], &[]).await;
    let token = serve.bootstrap_token().await;
    let url = serve.url.clone();
    assert!(token.len() >= 32, "{token}");

    // The console page, then sign-in: a wrong token is refused; the cookie is locked down.
    let page = http()
        .get(format!("{url}/admin"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/html")
    );
    let wrong = http()
        .post(format!("{url}/admin/session"))
        .json(&json!({"token": "dga-wrong"}));
    assert_eq!(status_of(wrong).await, 401);
    let (cookie, set, csrf) = sign_in(&url, &token, false).await;
    for part in ["HttpOnly", "SameSite=Strict", "Path=/admin"] {
        assert!(set.contains(part), "{set}");
    }
    assert!(!set.contains("Secure"), "{set}");
    let (_, set_tls, _) = sign_in(&url, &token, true).await;
    assert!(set_tls.contains("; Secure"), "{set_tls}");

    // Reads need the cookie; changes need the cookie and the CSRF token.
    let keys = format!("{url}/admin/api/keys");
    assert_eq!(status_of(http().get(&keys)).await, 401);
    assert_eq!(
        status_of(http().get(&keys).header("cookie", &cookie)).await,
        200
    );
    let create = || {
        http()
            .post(&keys)
            .header("cookie", &cookie)
            .json(&json!({"name": "glass3-first"}))
    };
    assert_eq!(status_of(create()).await, 401);
    assert_eq!(
        status_of(create().header("x-dashgate-csrf", "forged")).await,
        401
    );
    assert_eq!(
        status_of(create().header("x-dashgate-csrf", &csrf)).await,
        201
    );

    // A restart with a key in the store prints no new token; the old one still works.
    let (rest, log) = serve.stop().await;
    assert!(log.contains("no upstream key is set"), "{log}");
    assert!(
        log.contains("DASHSCOPE_API_KEY") && log.contains("/admin"),
        "{log}"
    );
    assert!(!log.contains(&token), "the token is printed on stdout only");
    assert!(!rest.contains("admin token:"), "{rest}");
    let serve = Serve::start(dir.path(), &[], &[]).await;
    let url = serve.url.clone();
    let keys = format!("{url}/admin/api/keys");
    assert_eq!(status_of(http().get(&keys).bearer_auth(&token)).await, 200);
    let (rest, _) = serve.stop().await;
    assert!(!rest.contains("admin token:"), "{rest}");

    // Replaced through the console: the old token and its sessions stop working.
    let serve = Serve::start(dir.path(), &[], &[]).await;
    let url = serve.url.clone();
    let keys = format!("{url}/admin/api/keys");
    let (cookie, _, csrf) = sign_in(&url, &token, false).await;
    let replaced: Value = http()
        .post(format!("{url}/admin/api/admin-token"))
        .header("cookie", &cookie)
        .header("x-dashgate-csrf", &csrf)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let new_token = replaced["admin_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(new_token.len() >= 32 && new_token != token, "{replaced}");
    assert_eq!(status_of(http().get(&keys).bearer_auth(&token)).await, 401);
    assert_eq!(
        status_of(http().get(&keys).header("cookie", &cookie)).await,
        401
    );
    assert_eq!(
        status_of(http().get(&keys).bearer_auth(&new_token)).await,
        200
    );
    serve.stop().await;

    // A configured token ends the gateway-made one, and cannot be replaced from the console.
    let configured = "configured-admin-token-0123456789";
    let serve = Serve::start(dir.path(), &[], &[("DASHGATE_ADMIN_TOKEN", configured)]).await;
    let url = serve.url.clone();
    let keys = format!("{url}/admin/api/keys");
    assert_eq!(
        status_of(http().get(&keys).bearer_auth(&new_token)).await,
        401
    );
    assert_eq!(
        status_of(http().get(&keys).bearer_auth(configured)).await,
        200
    );
    let replace = http()
        .post(format!("{url}/admin/api/admin-token"))
        .bearer_auth(configured);
    assert_eq!(status_of(replace).await, 400);
    serve.stop().await;
    let serve = Serve::start(dir.path(), &[], &[]).await;
    let keys = format!("{}/admin/api/keys", serve.url);
    assert_eq!(
        status_of(http().get(&keys).bearer_auth(&new_token)).await,
        404
    );
    serve.stop().await;
}

#[tokio::test]
async fn no_bootstrap_token_when_keys_are_configured() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("dashgate.toml");
    std::fs::write(
        &config,
        "[[keys]]\nname = \"glass3\"\nkey = \"sk-glass3-demo\"\n\
         [[upstreams]]\nname = \"d\"\nprovider = \"dashscope\"\nbase_url = \"http://127.0.0.1:9\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let serve = Serve::start(dir.path(), &[], &[]).await;
    let admin = format!("{}/admin", serve.url);
    assert_eq!(status_of(http().get(&admin)).await, 404);
    let (rest, _) = serve.stop().await;
    assert!(!rest.contains("admin token:"), "{rest}");
}

#[tokio::test]
async fn serve_simulate_answers_from_the_simulator_and_says_so_on_every_response() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut serve = Serve::start(dir.path(), &["--simulate"], &[]).await;
    let token = serve.bootstrap_token().await;
    let url = serve.url.clone();
    let made: Value = http()
        .post(format!("{url}/admin/api/keys"))
        .bearer_auth(&token)
        .json(&json!({"name": "glass3"}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let key = made["key"].as_str().unwrap_or_default();
    let chat = http()
        .post(format!("{url}/compatible-mode/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "qwen-vl-plus", "messages": [{"role": "user", "content": "你好"}]}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(chat.status(), 200);
    let marked = |r: &reqwest::Response| {
        r.headers()
            .get("x-dashgate-upstream")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(marked(&chat).as_deref(), Some("simulator"));
    let body: Value = chat.json().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        body["choices"][0]["message"]["content"].is_string(),
        "{body}"
    );
    for request in [
        http().get(format!("{url}/healthz")),
        http().get(format!("{url}/admin")),
        http()
            .post(format!("{url}/compatible-mode/v1/chat/completions"))
            .bearer_auth("sk-unknown"),
    ] {
        let response = request.send().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(marked(&response).as_deref(), Some("simulator"));
    }
    let (_, log) = serve.stop().await;
    assert!(log.contains("SIMULATED"), "{log}");
    assert!(!log.contains("no upstream key is set"), "{log}");

    // Without --simulate, nothing says so.
    let serve = Serve::start(dir.path(), &[], &[]).await;
    let response = http()
        .get(format!("{}/healthz", serve.url))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(response.headers().get("x-dashgate-upstream").is_none());
    serve.stop().await;
}
