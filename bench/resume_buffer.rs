//! Memory held per buffered resumable stream: `STREAMS` streams whose client read three events
//! and hung up, each upstream (an in-process stand-in that then stays open, as a model mid-answer
//! does) having sent `EVENTS` events that the hub now holds for a reconnect. Prints, per stream,
//! the events' bytes as the upstream sent them, the hub's own count of bytes buffered (ids
//! included) and the growth of this process's resident memory (buffers, the task reading the
//! upstream, the grace timer). The upstream connection itself is not in it: an open stream has
//! one whether or not it is resumable. Each row runs in a child process, so memory one row freed
//! does not pad the next. Bounded: a few seconds.
//! `cargo run --release --example resume_buffer`; knobs `STREAMS` (1000), `EVENTS` ("40 200").

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashgate::resume::{Hub, ResumeConfig, ResumeMetrics};
use futures_util::StreamExt;

// The gateway's allocator, so resident memory is what `dashgate serve` would show.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const READ_BEFORE_HANGING_UP: usize = 3;

/// One event as a client of that dialect gets it from the gateway (a one-token delta).
fn event(native: bool, seq: usize) -> Bytes {
    let id = "a1b2c3d4-e5f6-4789-8abc-def012345678";
    let text = if native {
        format!(
            "id:{seq}\nevent:result\n:HTTP_STATUS/200\ndata:{{\"output\":{{\"choices\":[{{\"message\":{{\"content\":\" word\",\"role\":\"assistant\"}},\"finish_reason\":\"null\"}}]}},\"usage\":{{\"total_tokens\":{},\"output_tokens\":{seq},\"input_tokens\":24}},\"request_id\":\"{id}\"}}\n\n",
            24 + seq
        )
    } else {
        format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\" word\"}},\"finish_reason\":null,\"index\":0,\"logprobs\":null}}],\"object\":\"chat.completion.chunk\",\"usage\":null,\"created\":1764760000,\"system_fingerprint\":null,\"model\":\"qwen-plus\",\"id\":\"chatcmpl-{id}\"}}\n\n"
        )
    };
    Bytes::from(text)
}

fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .unwrap_or(0);
    kb * 1024
}

/// Opens `streams` resumable streams of `events` events each, hangs up on each after three,
/// and prints one table row once every event is in the hub.
async fn row(native: bool, streams: usize, events: usize) -> Result<(), String> {
    let config = ResumeConfig {
        grace_seconds: 600,
        instance: "bench".into(),
        max_stream_bytes: 16 << 20,
        max_total_bytes: usize::MAX,
        max_streams: streams + 1,
    };
    let hub = Hub::new(config, ResumeMetrics::default())?;
    let stamped = Arc::new(AtomicUsize::new(0));
    let open = |i: usize| {
        let source: Vec<Bytes> = (1..=events).map(|seq| event(native, seq)).collect();
        let source = futures_util::stream::iter(source)
            .chain(futures_util::stream::pending())
            .boxed();
        let stamped = stamped.clone();
        let sent = Box::new(move |_: &[u8]| {
            stamped.fetch_add(1, Ordering::Relaxed);
        });
        let mut owner = [0u8; 32];
        owner[..8].copy_from_slice(&(i as u64).to_le_bytes());
        hub.serve(owner, source, sent)
    };
    // One stream first, so the code and the runtime's first allocations are in the baseline.
    let mut warm = open(usize::MAX);
    let _ = warm.next().await;
    drop(warm);
    while stamped.load(Ordering::Relaxed) < events {
        tokio::task::yield_now().await;
    }
    let (before, buffered_before) = (rss_bytes(), hub.buffered_bytes());
    let started = Instant::now();
    for i in 0..streams {
        let mut client = open(i);
        for _ in 0..READ_BEFORE_HANGING_UP.min(events) {
            let _ = client.next().await;
        }
        drop(client); // the link drops
    }
    let want = events * (streams + 1);
    while stamped.load(Ordering::Relaxed) < want {
        if started.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "{} of {want} events buffered",
                stamped.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rss = rss_bytes().saturating_sub(before) / streams;
    let buffered = (hub.buffered_bytes() - buffered_before) / streams;
    let payload: usize = (1..=events).map(|seq| event(native, seq).len()).sum();
    let dialect = if native { "native" } else { "openai" };
    println!(
        "| {dialect} | {events} | {streams} | {payload} | {buffered} | {rss} | {:.1} MB |",
        (hub.buffered_bytes() as f64) / 1e6,
    );
    if hub.live() != streams + 1 {
        return Err(format!("{} streams held, not {}", hub.live(), streams + 1));
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("row") {
        let native = args.get(2).map(String::as_str) == Some("native");
        let streams = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(1000);
        let events = args.get(4).and_then(|v| v.parse().ok()).unwrap_or(40);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        return Ok(runtime.block_on(row(native, streams, events))?);
    }
    let streams = std::env::var("STREAMS").unwrap_or_else(|_| "1000".into());
    let events = std::env::var("EVENTS").unwrap_or_else(|_| "40 200".into());
    println!(
        "| dialect | events/stream | streams | upstream bytes/stream | hub buffered bytes/stream | RSS growth/stream (bytes) | hub total |"
    );
    println!("|---|---|---|---|---|---|---|");
    let me = std::env::current_exe()?;
    for dialect in ["openai", "native"] {
        for count in events.split_whitespace() {
            let status = std::process::Command::new(&me)
                .args(["row", dialect, &streams, count])
                .status()?;
            if !status.success() {
                return Err(format!("row {dialect} {count}: {status}").into());
            }
        }
    }
    Ok(())
}
