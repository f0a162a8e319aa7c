//! A small load generator for dashgate benchmarks (`bench/run.sh`, `bench/compare.sh`).
//!
//! `--concurrency` workers share one pooled HTTP client; each sends a request, reads the whole
//! body, records the latency, and sends the next, until `--requests` have been sent or
//! `--max-seconds` have passed. With `--rate R` the run is open-loop instead: request `i` is
//! due at `i / R` seconds, and its latency counts from that moment, so a server that falls
//! behind is charged for the queue it builds (no coordinated omission); `--concurrency` then
//! caps the requests in flight. `--warmup` requests run first and are excluded from the stats.
//! With `--stream` it also records the time to the first SSE `data:` event (TTFB) and counts a
//! stream that ends without `data: [DONE]` as an error.
//!
//! Output: one JSON line on stdout (see `Report`), a human summary on stderr.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::time::Instant;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "loadgen",
    about = "Closed-loop HTTP load generator for dashgate"
)]
struct Args {
    /// Full URL to POST to, e.g. http://127.0.0.1:8080/compatible-mode/v1/chat/completions.
    #[arg(long)]
    url: String,
    /// Bearer token.
    #[arg(long, default_value = "sk-bench")]
    key: String,
    /// Concurrent workers (each keeps exactly one request in flight).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Measured requests in total (after the warm-up).
    #[arg(long, default_value_t = 10_000)]
    requests: u64,
    /// Hard stop for the measured phase; in-flight requests are abandoned at the deadline.
    #[arg(long, default_value_t = 20.0)]
    max_seconds: f64,
    /// Ask for a stream and measure time to the first `data:` event as well.
    #[arg(long)]
    stream: bool,
    /// Request body (JSON); default a small qwen-plus chat request. With --stream,
    /// `"stream": true` is set in it.
    #[arg(long)]
    body: Option<std::path::PathBuf>,
    /// Free-form name echoed in the report.
    #[arg(long, default_value = "")]
    label: String,
    /// Requests sent (same concurrency) before measuring; not in the stats.
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Fixed arrival rate in requests per second (open loop); 0 is closed loop.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Runtime worker threads (default: the CPUs this process may run on).
    #[arg(long)]
    threads: Option<usize>,
    /// An extra request header, `name: value` (repeatable), e.g. `x-dashgate-cache: on`.
    #[arg(long)]
    header: Vec<String>,
}

/// 74 characters: the simulator's reply `echo: <text>` is 80, so `--chunks 20` gives 20 deltas.
const DEFAULT_PROMPT: &str =
    "Benchmark prompt: please answer with a short friendly greeting, thank you.";

fn build_body(args: &Args) -> Result<Bytes, String> {
    let mut body: Value = match &args.body {
        Some(path) => {
            let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => json!({
            "model": "qwen-plus",
            "messages": [{"role": "user", "content": DEFAULT_PROMPT}],
        }),
    };
    if args.stream {
        match body.as_object_mut() {
            Some(object) => {
                object.insert("stream".into(), Value::Bool(true));
            }
            None => return Err("the request body must be a JSON object".into()),
        }
    }
    serde_json::to_vec(&body)
        .map(Bytes::from)
        .map_err(|e| e.to_string())
}

/// What one worker measured.
#[derive(Default)]
struct Samples {
    latency: Vec<Duration>,
    ttfb: Vec<Duration>,
    errors: u64,
    aborted: u64,
    first_error: Option<String>,
}

impl Samples {
    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what);
        }
    }

    fn merge(&mut self, other: Samples) {
        self.latency.extend(other.latency);
        self.ttfb.extend(other.ttfb);
        self.errors += other.errors;
        self.aborted += other.aborted;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

enum Outcome {
    Ok {
        latency: Duration,
        ttfb: Option<Duration>,
    },
    Error(String),
}

struct Shared {
    client: reqwest::Client,
    url: reqwest::Url,
    auth: String,
    body: Bytes,
    stream: bool,
    /// Seconds between scheduled requests in the open-loop mode.
    interval: Option<f64>,
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// One request, from `start` (now, or when it was due) to the end of its body.
async fn one(shared: &Shared, start: Instant) -> Outcome {
    let sent = shared
        .client
        .post(shared.url.clone())
        .header("content-type", "application/json")
        .header("authorization", &shared.auth)
        .body(shared.body.clone())
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(e) => return Outcome::Error(format!("transport: {e}")),
    };
    let status = response.status();
    if !status.is_success() {
        // Drain the body so the connection can go back to the pool.
        let _ = response.bytes().await;
        return Outcome::Error(format!("status {}", status.as_u16()));
    }
    if !shared.stream {
        return match response.bytes().await {
            Ok(_) => Outcome::Ok {
                latency: start.elapsed(),
                ttfb: None,
            },
            Err(e) => Outcome::Error(format!("body: {e}")),
        };
    }
    let mut body = response.bytes_stream();
    let mut ttfb = None;
    let mut done = false;
    // The last bytes seen, so markers split across chunks are still found.
    let mut window: Vec<u8> = Vec::with_capacity(512);
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => return Outcome::Error(format!("stream: {e}")),
        };
        let keep = window.len().saturating_sub(16);
        window.drain(..keep);
        window.extend_from_slice(&chunk);
        if ttfb.is_none() && contains(&window, b"data:") {
            ttfb = Some(start.elapsed());
        }
        if contains(&window, b"data: [DONE]") {
            done = true;
        }
    }
    let latency = start.elapsed();
    match (ttfb, done) {
        (Some(_), true) => Outcome::Ok { latency, ttfb },
        (None, _) => Outcome::Error("stream: no data event".into()),
        (_, false) => Outcome::Error("stream: ended without [DONE]".into()),
    }
}

/// Takes tickets from `next` until `total` are gone or the deadline passes.
async fn worker(
    shared: Arc<Shared>,
    next: Arc<AtomicU64>,
    total: u64,
    started: Instant,
    deadline: Instant,
    capacity: usize,
) -> Samples {
    let mut samples = Samples {
        latency: Vec::with_capacity(capacity),
        ttfb: Vec::with_capacity(if shared.stream { capacity } else { 0 }),
        ..Samples::default()
    };
    loop {
        let ticket = next.fetch_add(1, Ordering::Relaxed);
        if Instant::now() >= deadline || ticket >= total {
            break;
        }
        let start = match shared.interval {
            Some(interval) => {
                let due = started + Duration::from_secs_f64(ticket as f64 * interval);
                if due >= deadline {
                    break;
                }
                tokio::time::sleep_until(due).await;
                due
            }
            None => Instant::now(),
        };
        match tokio::time::timeout_at(deadline, one(&shared, start)).await {
            Err(_) => {
                samples.aborted += 1;
                break;
            }
            Ok(Outcome::Ok { latency, ttfb }) => {
                samples.latency.push(latency);
                if let Some(ttfb) = ttfb {
                    samples.ttfb.push(ttfb);
                }
            }
            Ok(Outcome::Error(what)) => samples.error(what),
        }
    }
    samples
}

/// Runs `total` requests with `concurrency` workers; returns the samples and the wall time.
async fn phase(
    shared: &Arc<Shared>,
    concurrency: usize,
    total: u64,
    max: Duration,
) -> (Samples, Duration) {
    let start = Instant::now();
    let deadline = start + max;
    let next = Arc::new(AtomicU64::new(0));
    let capacity = (total as usize / concurrency.max(1) + 16).min(1 << 20);
    let handles: Vec<_> = (0..concurrency)
        .map(|_| {
            tokio::spawn(worker(
                shared.clone(),
                next.clone(),
                total,
                start,
                deadline,
                capacity,
            ))
        })
        .collect();
    let mut all = Samples::default();
    for handle in handles {
        match handle.await {
            Ok(samples) => all.merge(samples),
            Err(e) => all.error(format!("worker: {e}")),
        }
    }
    (all, start.elapsed())
}

/// Nearest-rank percentile in milliseconds; `None` without samples.
fn percentile_ms(sorted: &[Duration], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1].as_secs_f64() * 1000.0)
}

fn ms(value: Option<f64>) -> Value {
    match value {
        Some(v) => json!((v * 1000.0).round() / 1000.0),
        None => Value::Null,
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let body = match build_body(&args) {
        Ok(body) => body,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let url = match reqwest::Url::parse(&args.url) {
        Ok(url) => url,
        Err(e) => {
            eprintln!("loadgen: --url: {e}");
            return ExitCode::from(2);
        }
    };
    let max = match Duration::try_from_secs_f64(args.max_seconds) {
        Ok(max) if !max.is_zero() && args.concurrency > 0 && args.rate >= 0.0 => max,
        _ => {
            eprintln!(
                "loadgen: --concurrency and --max-seconds must be positive, --rate not negative"
            );
            return ExitCode::from(2);
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = args.threads {
        builder.worker_threads(threads.max(1));
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("loadgen: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args, url, body, max))
}

async fn run(args: Args, url: reqwest::Url, body: Bytes, max: Duration) -> ExitCode {
    let mut headers = reqwest::header::HeaderMap::new();
    for header in &args.header {
        let parsed = header.split_once(':').and_then(|(name, value)| {
            let name = reqwest::header::HeaderName::from_bytes(name.trim().as_bytes()).ok()?;
            Some((
                name,
                reqwest::header::HeaderValue::from_str(value.trim()).ok()?,
            ))
        });
        match parsed {
            Some((name, value)) => {
                headers.insert(name, value);
            }
            None => {
                eprintln!("loadgen: --header {header:?}: expected `name: value`");
                return ExitCode::FAILURE;
            }
        }
    }
    let client = match reqwest::Client::builder()
        .default_headers(headers)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            eprintln!("loadgen: client: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shared = Arc::new(Shared {
        client,
        url,
        auth: format!("Bearer {}", args.key),
        body,
        stream: args.stream,
        interval: (args.rate > 0.0).then(|| 1.0 / args.rate),
    });

    if args.warmup > 0 {
        let (warm, _) = phase(&shared, args.concurrency, args.warmup, max).await;
        if warm.errors > 0 {
            eprintln!(
                "loadgen: {} warm-up error(s), first: {}",
                warm.errors,
                warm.first_error.as_deref().unwrap_or("?")
            );
        }
    }

    let (mut samples, elapsed) = phase(&shared, args.concurrency, args.requests, max).await;
    samples.latency.sort_unstable();
    samples.ttfb.sort_unstable();
    let completed = samples.latency.len() as u64;
    let secs = elapsed.as_secs_f64();
    let rps = if secs > 0.0 {
        completed as f64 / secs
    } else {
        0.0
    };
    let report = json!({
        "label": args.label,
        "mode": if args.stream { "stream" } else { "json" },
        "concurrency": args.concurrency,
        "rate": args.rate,
        "completed": completed,
        "errors": samples.errors,
        "aborted": samples.aborted,
        "elapsed_s": (secs * 1000.0).round() / 1000.0,
        "rps": (rps * 10.0).round() / 10.0,
        "p50_ms": ms(percentile_ms(&samples.latency, 0.50)),
        "p99_ms": ms(percentile_ms(&samples.latency, 0.99)),
        "ttfb_p50_ms": ms(percentile_ms(&samples.ttfb, 0.50)),
        "ttfb_p99_ms": ms(percentile_ms(&samples.ttfb, 0.99)),
        "first_error": samples.first_error,
    });
    println!("{report}");
    eprintln!(
        "loadgen {}: {} ok, {} errors, {} aborted in {:.2}s = {:.0} req/s",
        args.label, completed, samples.errors, samples.aborted, secs, rps
    );
    ExitCode::SUCCESS
}
