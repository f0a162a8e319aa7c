//! Text extraction in a cage: a PDF whose content streams are flate bombs refused before it
//! is parsed, a worker past the wall time killed (none left running), and a text extracted
//! once at upload and kept in the store across a restart (SQLite and PostgreSQL); a file with
//! no kept text (uploaded before texts were kept) extracted at first use, once.

mod common;

use std::io::Write;

use common::*;
use serde_json::{Value, json};

/// A one-page PDF written by hand, its page's content the `streams` in order, each with
/// `/Filter /FlateDecode` when `deflated`.
fn pdf_with(streams: &[&[u8]], deflated: bool) -> Vec<u8> {
    let first = 5;
    let contents: Vec<String> = (0..streams.len())
        .map(|i| format!("{} 0 R", first + i))
        .collect();
    let mut objects: Vec<Vec<u8>> = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 4 0 R >> >> /Contents [{}] >>",
            contents.join(" ")
        )
        .into_bytes(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Courier >>".to_vec(),
    ];
    let filter = if deflated {
        " /Filter /FlateDecode"
    } else {
        ""
    };
    for stream in streams {
        let mut object = format!("<< /Length {}{filter} >>\nstream\n", stream.len()).into_bytes();
        object.extend_from_slice(stream);
        object.extend_from_slice(b"\nendstream");
        objects.push(object);
    }
    let mut out = b"%PDF-1.5\n".to_vec();
    let mut offsets = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend_from_slice(object);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for offset in offsets {
        out.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}

fn text_pdf(text: &str) -> Vec<u8> {
    let content = format!("BT /F1 24 Tf 100 600 Td ({text}) Tj ET");
    pdf_with(&[content.as_bytes()], false)
}

/// A PDF of about 1 MB whose page content inflates to 1 GiB of spaces: 64 streams of the
/// same 16 MiB deflated once.
fn pdf_bomb() -> Vec<u8> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let spaces = vec![b' '; 1 << 20];
    for _ in 0..16 {
        encoder.write_all(&spaces).unwrap_or_else(|e| panic!("{e}"));
    }
    let one = encoder.finish().unwrap_or_else(|e| panic!("{e}"));
    let streams: Vec<&[u8]> = (0..64).map(|_| one.as_slice()).collect();
    pdf_with(&streams, true)
}

fn files_config(sim: &Sim, files: &str, store: &str) -> String {
    let extra = format!(
        r#"
[files]
max_file_bytes = 4000000
{files}

{store}

[[upstreams]]
name = "plain"
provider = "openai"
base_url = "{{SIM}}/v1"
api_key = "{UPSTREAM_KEY}"
models = ["local-long"]
"#
    );
    config_for(sim, "", &extra)
}

async fn upload(gw: &Gateway, name: &str, bytes: Vec<u8>) -> String {
    let form = reqwest::multipart::Form::new()
        .text("purpose", "file-extract")
        .part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()),
        );
    let response = gw
        .http
        .post(gw.url("/v1/files"))
        .bearer_auth(CLIENT_KEY)
        .multipart(form)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 200);
    let file = json_of(response).await;
    file["id"].as_str().unwrap_or_default().to_string()
}

/// Asks about file `id` through the upstream that reads files inline; the simulator echoes
/// what it was sent.
async fn ask_about(gw: &Gateway, id: &str) -> (u16, Value) {
    let body = json!({
        "model": "local-long",
        "messages": [
            {"role": "system", "content": format!("fileid://{id}")},
            {"role": "user", "content": "what does it say?"}
        ],
        "sim": {"echo_request": true}
    });
    let response = gw
        .http
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = response.status().as_u16();
    (status, json_of(response).await)
}

/// A metric's value in a gateway's `/metrics` (0 when absent).
async fn metric(gw: &Gateway, line_start: &str) -> f64 {
    let text = gw
        .http
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// This process's children that are extraction workers (from /proc).
fn live_workers() -> Vec<u32> {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The parent pid is the second field after the parenthesised name.
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_string));
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            parent.as_deref() == Some(me.as_str())
                && memchr::memmem::find(&cmdline, b"extract-worker").is_some()
        })
        .collect()
}

#[tokio::test]
async fn a_pdf_of_flate_bombs_is_refused_naming_the_limit_and_the_gateway_serves_on() {
    let sim = Sim::start().await;
    let gw = Gateway::start(&files_config(&sim, "", "")).await;
    let bomb = pdf_bomb();
    assert!(bomb.len() < 2_000_000, "{}", bomb.len());
    let id = upload(&gw, "bomb.pdf", bomb).await;
    let (status, reply) = ask_about(&gw, &id).await;
    assert_eq!(status, 413, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("files.max_extract_bytes"), "{reply}");
    assert_eq!(reply["error"]["code"], "request_too_large", "{reply}");
    assert_eq!(reply["error"]["param"], "messages[0].content", "{reply}");
    let refused = "dashgate_file_extract_refusals_total{reason=\"decompressed_bytes\"} ";
    assert_eq!(metric(&gw, refused).await, 1.0);
    // The refusal was kept: asking again extracts nothing.
    let (status, _) = ask_about(&gw, &id).await;
    assert_eq!(status, 413);
    let runs = "dashgate_file_extractions_total{outcome=\"refused\"} ";
    assert_eq!(metric(&gw, runs).await, 1.0);

    // And a normal document and a normal chat are served after.
    let fine = upload(&gw, "fine.pdf", text_pdf("Quarterly figures")).await;
    let (status, reply) = ask_about(&gw, &fine).await;
    assert_eq!(status, 200, "{reply}");
    assert!(reply.to_string().contains("Quarterly figures"), "{reply}");
    let response = gw
        .chat(&ask("qwen-plus", "hello"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_bomb_the_scan_lets_through_dies_at_the_workers_memory_limit() {
    let sim = Sim::start().await;
    // The decompressed cap out of the way: only the worker's address space is left.
    let files =
        "max_extract_bytes = 4000000000\nextract_memory_mb = 16\nextract_timeout_ms = 120000";
    let gw = Gateway::start(&files_config(&sim, files, "")).await;
    let id = upload(&gw, "bomb.pdf", pdf_bomb()).await;
    let (status, reply) = ask_about(&gw, &id).await;
    assert_eq!(status, 413, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("files.extract_memory_mb"), "{reply}");
    let refused = "dashgate_file_extract_refusals_total{reason=\"memory\"} ";
    assert_eq!(metric(&gw, refused).await, 1.0);
    assert_eq!(metric(&gw, "dashgate_file_extract_workers ").await, 0.0);
    let fine = upload(&gw, "fine.pdf", text_pdf("Still served")).await;
    let (status, reply) = ask_about(&gw, &fine).await;
    assert_eq!(status, 200, "{reply}");
}

#[tokio::test]
async fn an_extraction_past_the_wall_time_leaves_no_worker_running() {
    let sim = Sim::start().await;
    // A worker cannot even start its binary in a millisecond.
    let gw = Gateway::start(&files_config(&sim, "extract_timeout_ms = 1", "")).await;
    let id = upload(&gw, "slow.pdf", text_pdf("never read")).await;
    let (status, reply) = ask_about(&gw, &id).await;
    assert_eq!(status, 400, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("files.extract_timeout_ms"), "{reply}");
    let timeouts = "dashgate_file_extract_refusals_total{reason=\"timeout\"} ";
    assert_eq!(metric(&gw, timeouts).await, 1.0);
    // The worker was killed and reaped before the refusal was kept.
    assert_eq!(metric(&gw, "dashgate_file_extract_workers ").await, 0.0);
    assert_eq!(live_workers(), Vec::<u32>::new());
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await
            }
            #[tokio::test]
            async fn postgres() {
                super::$name(super::Backend::Postgres).await
            }
        }
    )*};
}

on_both_stores!(a_text_is_extracted_once_and_kept_across_a_restart);

async fn a_text_is_extracted_once_and_kept_across_a_restart(backend: Backend) {
    let sim = Sim::start().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store_url = fresh_store(backend, dir.path()).await;
    let files_dir = dir.path().join("files");
    let toml = files_config(
        &sim,
        &format!("dir = \"{}\"", files_dir.display()),
        &format!("[store]\nurl = \"{store_url}\""),
    );
    let texts = "dashgate_file_extractions_total{outcome=\"text\"} ";
    let (kept, older) = {
        let gw = Gateway::start(&toml).await;
        let kept = upload(&gw, "kept.pdf", text_pdf("Extracted at upload")).await;
        let older = upload(&gw, "older.pdf", text_pdf("Extracted at first use")).await;
        assert_eq!(metric(&gw, texts).await, 2.0, "both extracted at upload");
        (kept, older)
    };
    // `older` as a file uploaded before texts were kept: no text in the store.
    let store = open_store(&store_url).await;
    drop(store);
    let pool = sqlx::AnyPool::connect(&store_url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    sqlx::query("DELETE FROM file_texts WHERE file_id = $1")
        .bind(&older)
        .execute(&pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    pool.close().await;

    let gw = Gateway::start(&toml).await;
    for _ in 0..2 {
        let (status, reply) = ask_about(&gw, &kept).await;
        assert_eq!(status, 200, "{reply}");
        assert!(reply.to_string().contains("Extracted at upload"), "{reply}");
    }
    assert_eq!(metric(&gw, texts).await, 0.0, "no second extraction");
    // Several first uses at once: one extracts, the others read what it kept.
    let asks = (0..4).map(|_| ask_about(&gw, &older));
    for (status, reply) in futures_util::future::join_all(asks).await {
        assert_eq!(status, 200, "{reply}");
        assert!(
            reply.to_string().contains("Extracted at first use"),
            "{reply}"
        );
    }
    let (status, _) = ask_about(&gw, &older).await;
    assert_eq!(status, 200);
    assert_eq!(
        metric(&gw, texts).await,
        1.0,
        "extracted at first use, once"
    );
}
