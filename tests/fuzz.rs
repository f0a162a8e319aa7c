//! Fuzzing as ordinary tests (`cargo fuzz` needs a nightly toolchain): each target runs its
//! checked-in corpus (`tests/corpus/<target>/`) and then mutations of it, a fixed number of
//! cases from a fixed seed, so CI spends seconds and a failure replays exactly. A crashing
//! input is written to `target/fuzz-crashes/` and named in the failure. Longer runs:
//! `DASHGATE_FUZZ_CASES=200000 DASHGATE_FUZZ_SEED=7 cargo nextest run --release --test fuzz`.
//! Beyond "no panic", each target checks a property of its parser.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

use base64::Engine;
use common::reading::{checked, readings, upstream_reads};
use common::*;
use dashgate::dialect::sse::{self, EventSplitter};
use dashgate::error::GatewayError;
use dashgate::media::{ImagePolicy, process_data_url, process_image, sniff};
use dashgate::provider::Api;

fn cases(default: usize) -> usize {
    std::env::var("DASHGATE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seed() -> u64 {
    std::env::var("DASHGATE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(14)
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    files.iter().filter_map(|f| std::fs::read(f).ok()).collect()
}

/// Bytes that matter to the parsers under test.
const INTERESTING: &[&[u8]] = &[
    b"\xff\xd8",
    b"\xff\xe1",
    b"\xff\xd9",
    b"\xff\xda",
    b"\xff",
    b"\0",
    b"\n\n",
    b"\r\n",
    b"data:",
    b"event:error\n",
    b":HTTP_STATUS/500\n",
    b"\"",
    b"\\u0000",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\"model\":\"qwen-max\",",
    b"\"image\":\"x\",",
    b"\"parameters\":{\"model\":1},",
    b"=",
    b"==",
    b"\x21\xfe",
    b"\x21\xff\x0bXMP DataXMP",
    b"IEND",
    b"EXIF",
    b"\x7f\xff\xff\xff",
];

/// One mutation of `input`: flips, inserts, deletes, repeats, splices and interesting bytes.
fn mutate(rng: &mut fastrand::Rng, input: &[u8], pool: &[Vec<u8>]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.usize(1..5) {
        let at = rng.usize(..=out.len());
        match rng.u8(..8) {
            0 if !out.is_empty() => {
                let i = rng.usize(..out.len());
                out[i] ^= 1 << rng.u8(..8);
            }
            1 if !out.is_empty() => {
                let i = rng.usize(..out.len());
                out[i] = rng.u8(..);
            }
            2 => {
                let end = (at + rng.usize(..16)).min(out.len());
                out.drain(at..end);
            }
            3 => {
                let end = (at + rng.usize(..32)).min(out.len());
                let copy = out[at..end].to_vec();
                let to = rng.usize(..=out.len());
                out.splice(to..to, copy);
            }
            4 if !pool.is_empty() => {
                let other = &pool[rng.usize(..pool.len())];
                let from = rng.usize(..=other.len());
                let end = (from + rng.usize(..64)).min(other.len());
                out.splice(at..at, other[from..end].iter().copied());
            }
            5 => out.truncate(at),
            _ => {
                let bytes = INTERESTING[rng.usize(..INTERESTING.len())];
                out.splice(at..at, bytes.iter().copied());
            }
        }
    }
    out
}

/// Runs `check` on the corpus, then on `n` mutations; a panic saves the input and fails.
fn fuzz(target: &str, n: usize, mut check: impl FnMut(&[u8])) {
    let pool = corpus(target);
    assert!(!pool.is_empty(), "no corpus for {target}");
    let mut rng = fastrand::Rng::with_seed(seed());
    let mut run = |input: &[u8], i: usize| {
        if catch_unwind(AssertUnwindSafe(|| check(input))).is_err() {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-crashes");
            let _ = std::fs::create_dir_all(&dir);
            let file = dir.join(format!("{target}-{}-{i}.bin", seed()));
            let _ = std::fs::write(&file, input);
            panic!(
                "{target}: case {i} (seed {}) crashed; input in {}",
                seed(),
                file.display()
            );
        }
    };
    for (i, input) in pool.iter().enumerate() {
        run(input, i);
    }
    for i in 0..n {
        let base = &pool[rng.usize(..pool.len())];
        let input = mutate(&mut rng, base, &pool);
        run(&input, pool.len() + i);
    }
    println!("fuzz {target}: {} cases", pool.len() + n);
}

fn split_all(input: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut splitter = EventSplitter::default();
    let mut events = Vec::new();
    let mut at = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        let cut = cut.clamp(at, input.len());
        splitter.push(&input[at..cut]);
        at = cut;
        while let Some(event) = splitter.next_event() {
            events.push(event.to_vec());
        }
    }
    events.extend(splitter.finish().map(|e| e.to_vec()));
    events
}

#[test]
fn sse_splitter_events_do_not_depend_on_how_the_bytes_arrive() {
    let mut rng = fastrand::Rng::with_seed(seed());
    fuzz("sse", cases(4000), |input| {
        let whole = split_all(input, &[]);
        let mut cuts: Vec<usize> = (0..rng.usize(1..8))
            .map(|_| rng.usize(..=input.len()))
            .collect();
        cuts.sort();
        assert_eq!(split_all(input, &cuts), whole);
        // One byte at a time, the worst case for an event end cut in two.
        let bytes: Vec<usize> = (1..input.len()).collect();
        assert_eq!(split_all(input, &bytes), whole);
        for event in &whole {
            let _ = (
                sse::is_done(event),
                sse::error_status(event),
                sse::data_of(event),
            );
        }
    });
}

fn policy() -> ImagePolicy {
    ImagePolicy {
        max_image_pixels: 4096,
        max_image_bytes: 1 << 20,
        strip_metadata: true,
        reencode: true,
        jpeg_quality: 80,
        ..ImagePolicy::default()
    }
}

/// What is sent has nothing left to strip: processing it again changes nothing.
fn sent_is_clean(url: &str) {
    if let Ok(again) = process_data_url(url, &policy()) {
        assert!(!again.stripped, "metadata left in what is sent");
    }
}

#[test]
fn image_walkers_never_send_what_they_would_strip() {
    fuzz("image", cases(1500), |input| {
        let Some(format) = sniff(input) else { return };
        if let Ok(report) = process_image(input, format, &policy()) {
            if let Some(url) = &report.replacement {
                sent_is_clean(url);
            }
        }
    });
}

#[test]
fn data_urls_decode_as_base64_says_or_are_refused() {
    let images = corpus("image");
    let mut rng = fastrand::Rng::with_seed(seed());
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut accepted = 0;
    fuzz("image", cases(1500), |input| {
        let mimes = [
            "image/jpeg",
            "image/png",
            "image/gif",
            "image/webp",
            "image/bmp",
        ];
        // Mostly the type the bytes are, so the decoding goes on past the type check.
        let mime = match sniff(input) {
            Some(format) if rng.u8(..4) != 0 => format.mime(),
            _ => mimes[rng.usize(..mimes.len())],
        };
        let mut payload = b64.encode(input).into_bytes();
        // Line wraps, lost padding, stray characters: the text layer mutated too.
        if rng.bool() {
            payload = mutate(&mut rng, &payload, &images);
        }
        let url = format!("data:{mime};base64,{}", String::from_utf8_lossy(&payload));
        let Ok(report) = process_data_url(&url, &policy()) else {
            return;
        };
        accepted += 1;
        let text: Vec<u8> = url
            .split_once(',')
            .map(|(_, p)| p)
            .unwrap_or("")
            .bytes()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        let lenient = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let reference = lenient.decode(&text);
        assert_eq!(
            reference.map(|b| b.len()).ok(),
            Some(report.original_bytes),
            "{url:.80}"
        );
        if let Some(sent) = &report.replacement {
            sent_is_clean(sent);
        }
    });
    println!("data URLs accepted: {accepted}");
    assert!(accepted > 0);
}

#[test]
fn request_decoders_refuse_or_agree_with_every_reader() {
    fuzz("request", cases(6000), |input| {
        let native = input.windows(7).any(|w| w == b"\"input\"");
        let decoded = if native {
            dashgate::dialect::native::decode(input, false, Api::NativeMultimodal).map(|(c, _)| c)
        } else {
            dashgate::chat::decode(input)
        };
        match decoded {
            Ok(chat) => {
                for reading in readings(input) {
                    assert_eq!(upstream_reads(&reading, native), checked(&chat));
                }
            }
            Err(GatewayError::InvalidParameter { .. } | GatewayError::InvalidJson(_)) => {}
            Err(other) => panic!("not a 400: {other}"),
        }
    });
}

#[tokio::test]
async fn uploads_of_any_shape_get_an_answer_below_500() {
    let sim = Sim::start().await;
    let gw = Gateway::before(&sim).await;
    let pool = corpus("upload");
    let mut rng = fastrand::Rng::with_seed(seed());
    let n = cases(600) / 4;
    for i in 0..pool.len() + n {
        let body = match pool.get(i) {
            Some(seed_body) => seed_body.clone(),
            None => {
                let base = rng.usize(..pool.len());
                mutate(&mut rng, &pool[base], &pool)
            }
        };
        let response = gw
            .http
            .post(gw.url("/v1/files"))
            .bearer_auth(CLIENT_KEY)
            .header("content-type", "multipart/form-data; boundary=XBOUND")
            .body(body.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("case {i}: {e}"));
        let status = response.status().as_u16();
        assert!(
            status < 500,
            "case {i}: {status} for {:?}",
            String::from_utf8_lossy(&body)
        );
    }
    println!("fuzz upload: {} cases", pool.len() + n);
}
