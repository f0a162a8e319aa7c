//! `dashgate extract-worker`: one document's text, in a process of its own. The document
//! comes on stdin; the text goes to stdout (exit 0), or a refusal as JSON (exit 3). The
//! worker first limits its own address space (`RLIMIT_AS`: what it has at start plus
//! `--memory-mb`) and CPU time (`RLIMIT_CPU`), so a parser that runs away dies alone; the
//! gateway kills it at the wall-time limit.

use std::io::{Read, Write};
use std::process::ExitCode;

use serde::{Deserialize, Serialize};

use super::extract::Kind;

/// The exit status of a worker that refused the document (its stdout says why).
pub const REFUSED: u8 = 3;

/// Why a document's text is not given: the limit (a metric label), the status the client
/// gets, and a message naming the config key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    pub reason: String,
    pub status: u16,
    pub message: String,
}

impl Refusal {
    pub fn new(reason: &str, status: u16, message: impl Into<String>) -> Refusal {
        Refusal {
            reason: reason.to_string(),
            status,
            message: message.into(),
        }
    }

    fn unreadable(message: impl Into<String>) -> Refusal {
        Refusal::new("unreadable", 400, message)
    }
}

/// What the gateway passes the worker: the file name and the caps.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    #[arg(long)]
    pub filename: String,
    #[arg(long)]
    pub max_extract_bytes: u64,
    #[arg(long)]
    pub max_text_chars: usize,
    #[arg(long)]
    pub max_pdf_pages: usize,
    #[arg(long)]
    pub memory_mb: u64,
    #[arg(long)]
    pub cpu_seconds: u64,
}

impl WorkerArgs {
    /// The arguments for `config`'s caps.
    pub fn for_config(config: &crate::config::FilesConfig, filename: &str) -> Vec<String> {
        vec![
            "extract-worker".into(),
            format!("--filename={filename}"),
            format!("--max-extract-bytes={}", config.max_extract_bytes),
            format!("--max-text-chars={}", config.max_text_chars),
            format!("--max-pdf-pages={}", config.max_pdf_pages),
            format!("--memory-mb={}", config.extract_memory_mb),
            format!(
                "--cpu-seconds={}",
                config.extract_timeout_ms.div_ceil(1000) + 1
            ),
        ]
    }
}

/// The worker's `main`.
pub fn main(args: WorkerArgs) -> ExitCode {
    if let Err(e) = limit_self(args.memory_mb, args.cpu_seconds) {
        eprintln!("extract-worker: cannot set limits: {e}");
        return ExitCode::FAILURE;
    }
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut bytes) {
        eprintln!("extract-worker: stdin: {e}");
        return ExitCode::FAILURE;
    }
    // A parser that panics (pdf-extract can) gives a refusal, not a crash.
    let run = std::panic::AssertUnwindSafe(|| extract(&args, &bytes));
    let result = std::panic::catch_unwind(run)
        .unwrap_or_else(|_| Err(Refusal::unreadable("the document could not be parsed")));
    let mut out = std::io::stdout().lock();
    let (written, code) = match result {
        Ok(text) => (out.write_all(text.as_bytes()), ExitCode::SUCCESS),
        Err(refusal) => (
            serde_json::to_writer(&mut out, &refusal).map_err(std::io::Error::other),
            ExitCode::from(REFUSED),
        ),
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) => code,
        Err(_) => ExitCode::FAILURE,
    }
}

/// `RLIMIT_AS` at what the process maps now plus `memory_mb`, `RLIMIT_CPU` at `cpu_seconds`
/// (SIGXCPU then, SIGKILL a second later).
fn limit_self(memory_mb: u64, cpu_seconds: u64) -> std::io::Result<()> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| std::io::Error::other("unreadable /proc/self/statm"))?;
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let address_space = pages * page + memory_mb * 1024 * 1024;
    set(libc::RLIMIT_AS, address_space, address_space)?;
    set(libc::RLIMIT_CPU, cpu_seconds, cpu_seconds + 1)
}

fn set(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `limit` is a valid rlimit that outlives the call.
    if unsafe { libc::setrlimit(resource, &limit) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The document's text within the caps, or the refusal naming the cap.
pub fn extract(args: &WorkerArgs, bytes: &[u8]) -> Result<String, Refusal> {
    let kind = super::extract::kind_of(&args.filename, bytes).map_err(Refusal::unreadable)?;
    let inflated_over = || {
        Refusal::new(
            "decompressed_bytes",
            413,
            format!(
                "it decompresses to more than files.max_extract_bytes ({} bytes)",
                args.max_extract_bytes
            ),
        )
    };
    let text = match kind {
        Kind::Docx => {
            if check_docx(bytes, args.max_extract_bytes)? {
                return Err(inflated_over());
            }
            super::extract::text_of(kind, bytes).map_err(Refusal::unreadable)?
        }
        Kind::Pdf => {
            if super::extract::pdf_inflates_over(bytes, args.max_extract_bytes) {
                return Err(inflated_over());
            }
            super::extract::pdf_text(bytes, args.max_pdf_pages).map_err(|e| {
                let reason = if e.contains("files.max_pdf_pages") {
                    "pages"
                } else {
                    "unreadable"
                };
                Refusal::new(reason, 400, e)
            })?
        }
        _ => super::extract::text_of(kind, bytes).map_err(Refusal::unreadable)?,
    };
    if text.chars().count() > args.max_text_chars {
        return Err(Refusal::new(
            "text_chars",
            400,
            format!(
                "its text is over files.max_text_chars ({} characters)",
                args.max_text_chars
            ),
        ));
    }
    Ok(text)
}

/// Whether a DOCX's parts would decompress past `max` bytes (declared, or found while
/// reading the part the text comes from): a zip bomb, refused before it is inflated.
fn check_docx(bytes: &[u8], max: u64) -> Result<bool, Refusal> {
    let not_docx = |e: String| Refusal::unreadable(format!("not a docx: {e}"));
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| not_docx(e.to_string()))?;
    let mut declared: u64 = 0;
    for i in 0..archive.len() {
        let entry = archive
            .by_index_raw(i)
            .map_err(|e| not_docx(e.to_string()))?;
        declared = declared.saturating_add(entry.size());
    }
    if declared > max {
        return Ok(true);
    }
    // Sizes in the headers can lie: the part the text comes from is inflated under the cap.
    let mut part = archive
        .by_name("word/document.xml")
        .map_err(|_| not_docx("no word/document.xml".into()))?;
    let read = std::io::copy(&mut (&mut part).take(max + 1), &mut std::io::sink())
        .map_err(|e| not_docx(e.to_string()))?;
    Ok(read > max)
}
