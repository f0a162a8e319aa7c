//! The shared harness: a simulator and a gateway, in process, on ephemeral loopback ports,
//! talking real HTTP.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub mod batches;
pub mod echo;
pub mod reading;
pub mod resumable;
pub mod sessions;

use dashgate::config;
use dashgate::server;
use dashgate::sim::{self, Stats};
use futures_util::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub const UPSTREAM_KEY: &str = "sk-upstream-test";
pub const CLIENT_KEY: &str = "sk-glass3-test";

pub struct Sim {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
}

impl Sim {
    pub async fn start() -> Sim {
        Self::with(sim::Options {
            api_key: Some(UPSTREAM_KEY.into()),
            ..Default::default()
        })
        .await
    }

    pub async fn with(options: sim::Options) -> Sim {
        let (addr, stats) = sim::spawn(options)
            .await
            .unwrap_or_else(|e| panic!("simulator: {e}"));
        Sim { addr, stats }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> u64 {
        self.stats.requests.load(Ordering::Relaxed)
    }
}

pub struct Gateway {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    _shutdown: tokio_util::sync::DropGuard,
    /// Holds the gateway's SQLite store and spill file, when the config names none.
    pub dir: tempfile::TempDir,
}

/// A config with one static key and one `dashscope` upstream at `sim`; `extra` is appended
/// (more keys, more upstreams) and `{SIM}` in it is replaced by the simulator's URL.
pub fn config_for(sim: &Sim, upstream_extra: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_body_bytes = 65536

[[keys]]
name = "glass3"
key = "{CLIENT_KEY}"

[[keys]]
name = "limited"
key = "sk-limited-test"
models = ["qwen-plus"]

[[upstreams]]
name = "sim"
provider = "dashscope"
base_url = "{sim}"
api_key = "{UPSTREAM_KEY}"
models = ["qwen-plus", "qwen-vl-plus", "qwen-max"]
{upstream_extra}

{extra}
"#,
        sim = sim.url(),
        extra = extra.replace("{SIM}", &sim.url()),
    )
}

/// Points what `config` leaves at its defaults (paths relative to the working directory: the
/// store, the usage spill and journal, the files) into `dir`, so a test never writes into the
/// checkout.
pub fn keep_in(config: &mut config::Config, dir: &std::path::Path) {
    let defaults = config::Config::default();
    if config.store.url == defaults.store.url {
        config.store.url = format!("sqlite://{}/dashgate.db", dir.display());
    }
    if config.usage.spill_path == defaults.usage.spill_path {
        config.usage.spill_path = dir.join("usage.spill");
    }
    if config.usage.journal_path == defaults.usage.journal_path {
        config.usage.journal_path = dir.join("usage.journal");
    }
    if config.files.dir == defaults.files.dir {
        config.files.dir = dir.join("files");
    }
    // In process, this executable is the test: the worker is the dashgate binary.
    if config.files.extract_worker.is_none() {
        config.files.extract_worker = Some(env!("CARGO_BIN_EXE_dashgate").into());
    }
}

impl Gateway {
    pub async fn start(toml: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut config =
            config::parse(toml, "test.toml", &|_| None).unwrap_or_else(|e| panic!("config: {e}"));
        keep_in(&mut config, dir.path());
        config::validate(&config).unwrap_or_else(|e| panic!("config: {e}"));
        let shutdown = CancellationToken::new();
        let addr = server::spawn(config, shutdown.clone())
            .await
            .unwrap_or_else(|e| panic!("gateway: {e}"));
        Gateway {
            addr,
            http: reqwest::Client::new(),
            _shutdown: shutdown.drop_guard(),
            dir,
        }
    }

    /// A gateway in front of `sim` with the default test config.
    pub async fn before(sim: &Sim) -> Gateway {
        Self::start(&config_for(sim, "", "")).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn chat(&self, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .post(self.url("/compatible-mode/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .json(body)
    }
}

/// A plain request for `model` with one user message.
pub fn ask(model: &str, text: &str) -> Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// The JSON of a response body (panics with the text if it is not JSON).
pub async fn json_of(response: reqwest::Response) -> Value {
    let text = response.text().await.unwrap_or_default();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Reads a whole SSE body and returns its events' `data:` payloads in order.
pub async fn data_events(response: reqwest::Response) -> Vec<String> {
    let text = response.text().await.unwrap_or_default();
    text.split("\n\n")
        .filter_map(|event| event.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(str::to_string)
        .collect()
}

/// Reads exactly `count` SSE events from a live stream, without waiting for its end.
pub async fn first_events(
    response: reqwest::Response,
    count: usize,
) -> (
    Vec<String>,
    futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
) {
    let mut stream = response.bytes_stream().boxed();
    let mut buf = String::new();
    let mut events = Vec::new();
    while events.len() < count {
        match stream.next().await {
            Some(Ok(chunk)) => buf.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!(
                "stream ended early: {:?}",
                other.map(|r| r.map(|b| b.len()))
            ),
        }
        while let Some(end) = buf.find("\n\n") {
            events.push(buf[..end].to_string());
            buf.drain(..end + 2);
        }
    }
    (events, stream)
}

/// The error object of an OpenAI-dialect error body.
pub fn error_of(body: &Value) -> (&str, Option<&str>, &str) {
    let e = &body["error"];
    (
        e["code"].as_str().unwrap_or(""),
        e["param"].as_str(),
        e["type"].as_str().unwrap_or(""),
    )
}

/// Which database a store test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A store URL of its own for one test: a SQLite file in `dir`, or a fresh PostgreSQL
/// database on the server that `DASHGATE_TEST_POSTGRES_URL` names (`scripts/test.sh` starts
/// one on loopback).
pub async fn fresh_store(backend: Backend, dir: &std::path::Path) -> String {
    match backend {
        Backend::Sqlite => format!("sqlite://{}/dashgate.db", dir.display()),
        Backend::Postgres => {
            use sqlx::Connection;
            let admin = std::env::var("DASHGATE_TEST_POSTGRES_URL").unwrap_or_else(|_| {
                panic!("DASHGATE_TEST_POSTGRES_URL is not set: run the tests with scripts/test.sh")
            });
            let name = format!("t_{}", uuid::Uuid::new_v4().simple());
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .unwrap_or_else(|e| panic!("postgres at {admin}: {e}"));
            sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
                .await
                .unwrap_or_else(|e| panic!("create database: {e}"));
            let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
            format!("{base}/{name}")
        }
    }
}

/// Opens the same store the gateway uses, to read what it wrote.
pub async fn open_store(url: &str) -> dashgate::store::Store {
    dashgate::store::Store::open(url)
        .await
        .unwrap_or_else(|e| panic!("store {url}: {e}"))
}

/// Waits until the store holds `count` usage records matching `filter` and returns them,
/// newest first. The writer is asynchronous by design; the deadline only keeps a broken
/// writer from hanging the test.
pub async fn records(
    store: &dashgate::store::Store,
    filter: &dashgate::store::UsageFilter,
    count: usize,
) -> Vec<dashgate::usage::UsageRecord> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut ticker = tokio::time::interval(std::time::Duration::from_millis(20));
    loop {
        ticker.tick().await;
        let found = store
            .usage_records(filter, 10_000)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if found.len() >= count || tokio::time::Instant::now() > deadline {
            assert_eq!(found.len(), count, "usage records: {found:#?}");
            return found;
        }
    }
}

/// Runs the `dashgate` binary with `args` in `cwd` and returns it with the URL it announced on
/// its first stdout line (port 0 picks a free port; the announcement says which).
pub async fn announced(args: &[&str], cwd: &std::path::Path) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    const BIN: &str = env!("CARGO_BIN_EXE_dashgate");
    let mut child = tokio::process::Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env_remove("DASHSCOPE_API_KEY")
        .env_remove("DASHGATE_LISTEN")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let mut line = String::new();
    tokio::io::BufReader::new(stdout)
        .read_line(&mut line)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let url = line.trim().rsplit(' ').next().unwrap_or("").to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{args:?}: {line:?}");
    (child, url)
}

/// Three upstreams on one simulator, one per wire: `via-compat` (DashScope spoken in compatible
/// mode), `via-native` (DashScope's native API) and `via-openai` (an OpenAI-compatible server),
/// for the dialect matrix; `{SIM}` is the simulator's URL (see `config_for`).
pub const UPSTREAMS: &str = r#"
[[upstreams]]
name = "compat"
provider = "dashscope"
dialect = "compatible"
base_url = "{SIM}"
api_key = "sk-upstream-test"
models = ["via-compat"]

[[upstreams]]
name = "native"
provider = "dashscope"
dialect = "native"
base_url = "{SIM}"
api_key = "sk-upstream-test"
models = ["via-native"]

[[upstreams]]
name = "openai"
provider = "openai"
base_url = "{SIM}/v1"
api_key = "sk-upstream-test"
models = ["via-openai"]
"#;

/// An SSE text with the gateway's event ids taken back out (docs/fleet.md, "Resuming a
/// stream"): an OpenAI event's `id:` line goes, a native frame's `id:` keeps its number only,
/// as DashScope's own frames have it.
pub fn plain_ids(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if line.starts_with("id: ") {
            continue;
        }
        match line
            .strip_prefix("id:")
            .and_then(|id| id.trim_end().rsplit_once('.'))
        {
            Some((_, seq)) => {
                out.push_str("id:");
                out.push_str(seq);
                out.push_str(&line[line.trim_end().len()..]);
            }
            None => out.push_str(line),
        }
    }
    out
}
