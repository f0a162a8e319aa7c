//! The `dashgate` process and the signals an operator (or systemd, or Kubernetes) sends it:
//! SIGTERM and SIGINT drain the gateway and it exits with status 0.
//!
//! Real processes: `dashgate simulate` as the upstream and `dashgate serve` in front of it, both
//! on port 0, each announcing its address on its first stdout line.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde_json::{Value, json};
use tokio::process::Child;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_dashgate");
const CLIENT_KEY: &str = "sk-glass3-test";
/// A safety net so a wedged process fails the test instead of hanging it; not a behaviour check.
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// Starts the binary (outside the source tree: whatever it keeps beside it stays out) and
/// returns it with the URL it announced.
async fn start(args: &[&str]) -> (Child, String) {
    common::announced(args, &std::env::temp_dir()).await
}

/// A gateway config in `dir` with one key and one `dashscope` upstream at `upstream`, draining
/// for 300 ms on shutdown; returns its path.
fn write_config(dir: &tempfile::TempDir, upstream: &str) -> String {
    // The simulator started without --api-key takes any bearer.
    let toml = format!(
        r#"
[server]
drain_timeout_ms = 300

[store]
url = "sqlite://{dir}/dashgate.db"

[usage]
spill_path = "{dir}/usage.spill"
journal_path = "{dir}/usage.journal"

[[keys]]
name = "glass3"
key = "{CLIENT_KEY}"

[[upstreams]]
name = "sim"
provider = "dashscope"
base_url = "{upstream}"
api_key = "sk-any"
models = ["qwen-plus"]
"#,
        dir = dir.path().display()
    );
    let path = dir.path().join("dashgate.toml");
    std::fs::write(&path, toml).unwrap_or_else(|e| panic!("{e}"));
    path.display().to_string()
}

/// A simulator, and a gateway in front of it that drains for 300 ms on shutdown.
struct Pair {
    _sim: Child,
    gateway: Child,
    url: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Pair {
    async fn start() -> Pair {
        let (sim, sim_url) = start(&["simulate", "--listen", "127.0.0.1:0"]).await;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let config = write_config(&dir, &sim_url);
        let (gateway, url) =
            start(&["serve", "--config", &config, "--listen", "127.0.0.1:0"]).await;
        Pair {
            _sim: sim,
            gateway,
            url,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    /// A streamed OpenAI-dialect chat with these simulator knobs.
    async fn chat_stream(&self, text: &str, sim: Value) -> Events {
        let body = json!({
            "model": "qwen-plus",
            "messages": [{"role": "user", "content": text}],
            "stream": true,
            "sim": sim,
        });
        let response = self
            .http
            .post(format!("{}/compatible-mode/v1/chat/completions", self.url))
            .bearer_auth(CLIENT_KEY)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status().as_u16(), 200);
        Events::of(response)
    }

    /// A streamed native (DashScope) generation with these simulator knobs.
    async fn native_stream(&self, text: &str, sim: Value) -> Events {
        let body = json!({
            "model": "qwen-plus",
            "input": {"messages": [{"role": "user", "content": text}]},
            "parameters": {"result_format": "message", "incremental_output": true, "sim": sim},
        });
        let response = self
            .http
            .post(format!(
                "{}/api/v1/services/aigc/text-generation/generation",
                self.url
            ))
            .bearer_auth(CLIENT_KEY)
            .header("X-DashScope-SSE", "enable")
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status().as_u16(), 200);
        Events::of(response)
    }

    async fn health(&self) -> u16 {
        self.http
            .get(format!("{}/healthz", self.url))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn signal(&self, name: &str) {
        send_signal(&self.gateway, name);
    }

    async fn exit_status(&mut self) -> ExitStatus {
        wait_for_exit(&mut self.gateway).await
    }
}

fn send_signal(child: &Child, name: &str) {
    let pid = child
        .id()
        .unwrap_or_else(|| panic!("the process has already exited"));
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap_or_else(|e| panic!("cannot run kill: {e}"));
    assert!(status.success(), "kill -{name} {pid}: {status}");
}

async fn wait_for_exit(child: &mut Child) -> ExitStatus {
    tokio::time::timeout(EXIT_WAIT, child.wait())
        .await
        .unwrap_or_else(|_| panic!("the process did not exit within {EXIT_WAIT:?}"))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A live SSE body, read event by event; what follows an event stays buffered for the next.
struct Events {
    body: BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: String,
}

impl Events {
    fn of(response: reqwest::Response) -> Events {
        Events {
            body: response.bytes_stream().boxed(),
            buf: String::new(),
        }
    }

    /// The next event (without its blank line, and the gateway's event ids as DashScope
    /// numbers them), or `None` at the end of the body.
    async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let event = common::plain_ids(&self.buf[..end]);
                self.buf.drain(..end + 2);
                return Some(event);
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
                Some(Err(e)) => panic!("the stream broke: {e}"),
                None => {
                    assert!(
                        self.buf.is_empty(),
                        "a partial event at the end: {:?}",
                        self.buf
                    );
                    return None;
                }
            }
        }
    }

    /// The next `count` events; the stream must not end before them.
    async fn take(&mut self, count: usize) -> Vec<String> {
        let mut events = Vec::new();
        while events.len() < count {
            match self.next().await {
                Some(event) => events.push(event),
                None => panic!("the stream ended after {events:?}"),
            }
        }
        events
    }

    /// Every event up to the end of the body.
    async fn rest(&mut self) -> Vec<String> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        events
    }
}

fn assert_exited_0(status: ExitStatus) {
    // A signal that is not handled kills the process: no exit code at all.
    assert_eq!(status.code(), Some(0), "the gateway ended with {status}");
}

#[tokio::test]
async fn sigterm_lets_streams_finish_then_cuts_the_rest_and_exits_0() {
    let mut pair = Pair::start().await;
    let mut finishing = pair
        .chat_stream("a short answer", json!({"chunk_delay_ms": 20, "chunks": 4}))
        .await;
    let mut stuck = pair
        .chat_stream("a stuck answer", json!({"fault": "stall", "after": 2}))
        .await;
    // Both streams are under way: the role chunk of one, both events before the stall of the other.
    let first = finishing.take(1).await;
    assert!(first[0].contains(r#""role":"assistant""#), "{first:?}");
    let before_stall = stuck.take(2).await;
    assert!(
        before_stall.iter().all(|e| e.starts_with("data: {")),
        "{before_stall:?}"
    );

    pair.signal("TERM");

    // The short stream runs to its end within the drain time.
    let finished = finishing.rest().await;
    assert_eq!(
        finished.last().map(String::as_str),
        Some("data: [DONE]"),
        "{finished:?}"
    );
    let content: String = first
        .iter()
        .chain(&finished)
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(content, "echo: a short answer");
    // The stalled one is cut when the drain time is up, with an error event and no [DONE].
    let cut = stuck.rest().await;
    let [last] = cut.as_slice() else {
        panic!("expected exactly one more event, got {cut:?}");
    };
    let error: Value = last
        .strip_prefix("data: ")
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or_else(|| panic!("not a data event: {last:?}"));
    assert_eq!(error["error"]["code"], "gateway_shutting_down", "{error}");
    assert_exited_0(pair.exit_status().await);
}

#[tokio::test]
async fn sigint_cuts_a_native_stream_with_its_own_error_frame_and_exits_0() {
    let mut pair = Pair::start().await;
    let mut stuck = pair
        .native_stream("a stuck answer", json!({"fault": "stall", "after": 2}))
        .await;
    let before_stall = stuck.take(2).await;
    assert!(
        before_stall
            .iter()
            .all(|e| e.contains("event:result\n:HTTP_STATUS/200\n")),
        "{before_stall:?}"
    );

    pair.signal("INT");

    let cut = stuck.rest().await;
    let [last] = cut.as_slice() else {
        panic!("expected exactly one more frame, got {cut:?}");
    };
    assert!(
        last.starts_with("id:3\nevent:error\n:HTTP_STATUS/503\nstatus:503\ndata:"),
        "{last}"
    );
    let data = last.rsplit_once("\ndata:").map_or("", |(_, d)| d);
    let error: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {last}"));
    assert_eq!(error["code"], "GatewayShuttingDown", "{error}");
    assert!(error["request_id"].as_str().is_some_and(|r| !r.is_empty()));
    assert_exited_0(pair.exit_status().await);
}

#[tokio::test]
async fn an_idle_gateway_exits_0_on_sigint_and_on_sigterm() {
    for signal in ["INT", "TERM"] {
        let mut pair = Pair::start().await;
        // One request served: the gateway is up and has been for a round trip (the test below
        // signals sooner).
        assert_eq!(pair.health().await, 200);
        pair.signal(signal);
        let status = pair.exit_status().await;
        assert_eq!(
            status.code(),
            Some(0),
            "SIG{signal}: the gateway ended with {status}"
        );
    }
}

/// A supervisor may signal the gateway as soon as it has announced its address (a deploy rolled
/// back at once, a test harness tearing down): the handlers are in place before the
/// announcement, so even then it drains and exits 0 rather than dying of the default action.
/// The announcement is read with a blocking read, and the signal sent at once, as a shell script
/// or Python's subprocess would.
#[test]
fn a_signal_right_after_the_announcement_still_exits_0() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // Nothing is sent upstream here: any address will do.
    let config = write_config(&dir, "http://127.0.0.1:9");
    for round in 0..10 {
        let signal = if round % 2 == 0 { "INT" } else { "TERM" };
        let mut child = std::process::Command::new(BIN)
            .args(["serve", "--config", &config, "--listen", "127.0.0.1:0"])
            .env_remove("DASHSCOPE_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(line.starts_with("dashgate listening on "), "{line:?}");
        let kill = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill: {e}"));
        assert!(kill.success());
        let status = child.wait().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            status.code(),
            Some(0),
            "round {round}, SIG{signal}: the gateway ended with {status}"
        );
    }
}
