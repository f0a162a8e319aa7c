//! Text extraction in a cage: once per file, at upload (or at first use for a file uploaded
//! before texts were kept), the text or the refusal kept with the file in the store. Each
//! extraction is a worker process (`dashgate extract-worker`, see `worker`) under an address
//! space and CPU limit, killed at `files.extract_timeout_ms`, at most `files.max_extractions`
//! at a time; its death becomes a refusal naming the limit.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use super::Files;
use super::metrics::ExtractMetrics;
use super::worker::{REFUSED, Refusal, WorkerArgs};
use crate::config::FilesConfig;
use crate::store::{FileRecord, Store, StoredText};

/// What came of an extraction.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The document is over a cap or unreadable: kept for the file, told to the client.
    Refused(Refusal),
    /// The worker could not run (the gateway's problem): not kept, tried again next time.
    Broken(String),
}

/// The worker program, the slots and the metrics.
pub struct Cage {
    program: PathBuf,
    slots: Arc<Semaphore>,
    pub metrics: ExtractMetrics,
    /// A lock per file being extracted: a second first use waits, then reads what was kept.
    extracting: std::sync::Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl Cage {
    pub fn new(config: &FilesConfig, metrics: ExtractMetrics) -> Result<Cage, String> {
        let program = match &config.extract_worker {
            Some(path) if path.is_file() => path.clone(),
            Some(path) => {
                return Err(format!(
                    "files.extract_worker: no program at {}",
                    path.display()
                ));
            }
            None => std::env::current_exe()
                .map_err(|e| format!("files.extract_worker: this executable's path: {e}"))?,
        };
        Ok(Cage {
            program,
            slots: Arc::new(Semaphore::new(config.max_extractions.max(1))),
            metrics,
            extracting: Default::default(),
        })
    }

    fn file_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.extracting.lock().unwrap_or_else(|p| p.into_inner());
        locks.retain(|_, lock| lock.strong_count() > 0);
        if let Some(lock) = locks.get(id).and_then(Weak::upgrade) {
            return lock;
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(id.to_string(), Arc::downgrade(&lock));
        lock
    }

    /// Runs a worker on `bytes` in a task of its own, so a client that goes away leaves it
    /// to end (and be reaped) under its limits.
    pub async fn run(
        self: &Arc<Self>,
        config: &FilesConfig,
        filename: &str,
        bytes: bytes::Bytes,
    ) -> Result<String, Failure> {
        let (cage, config, filename) = (self.clone(), config.clone(), filename.to_string());
        tokio::spawn(async move { cage.run_here(&config, &filename, bytes).await })
            .await
            .unwrap_or_else(|e| Err(Failure::Broken(format!("extraction task: {e}"))))
    }

    async fn run_here(
        &self,
        config: &FilesConfig,
        filename: &str,
        bytes: bytes::Bytes,
    ) -> Result<String, Failure> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| Failure::Broken("no extraction slot".into()))?;
        let mut child = tokio::process::Command::new(&self.program)
            .args(WorkerArgs::for_config(config, filename))
            .env_clear()
            // mimalloc would reserve a 1 GiB arena at start, inside the address space the
            // limit is measured from: the worker allocates from the OS as it goes instead.
            .env("MIMALLOC_ARENA_RESERVE", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Failure::Broken(format!("{}: {e}", self.program.display())))?;
        let _alive = self.metrics.worker();
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(Failure::Broken("the worker's pipes are missing".into()));
        };
        // Text is at most 4 bytes a character; anything past that is over the cap anyway.
        let out_cap = config.max_text_chars.saturating_mul(4).saturating_add(1);
        let work = async {
            let feed = async move {
                // A worker that stops reading (it refused early, or died) closes the pipe.
                let _ = stdin.write_all(&bytes).await;
            };
            let (_, out, err, status) = tokio::join!(
                feed,
                bounded(stdout, out_cap),
                bounded(stderr, 8 * 1024),
                child.wait()
            );
            (out, err, status)
        };
        let limit = Duration::from_millis(config.extract_timeout_ms);
        let waited = tokio::time::timeout(limit, work).await;
        let (out, err, status) = match waited {
            Ok(done) => done,
            Err(_) => {
                // Killed and reaped here: nothing keeps running past the limit.
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(Failure::Refused(timed_out(config)));
            }
        };
        let status = status.map_err(|e| Failure::Broken(format!("worker: {e}")))?;
        let (out, over) = out;
        outcome(config, status, out, over, &err.0)
    }
}

fn timed_out(config: &FilesConfig) -> Refusal {
    Refusal::new(
        "timeout",
        400,
        format!(
            "its text took longer than files.extract_timeout_ms ({} ms) to extract",
            config.extract_timeout_ms
        ),
    )
}

/// What a worker's exit means.
fn outcome(
    config: &FilesConfig,
    status: std::process::ExitStatus,
    out: Vec<u8>,
    over: bool,
    err: &[u8],
) -> Result<String, Failure> {
    use std::os::unix::process::ExitStatusExt;
    let err = String::from_utf8_lossy(err);
    let memory = || {
        Refusal::new(
            "memory",
            413,
            format!(
                "extracting its text needs more memory than files.extract_memory_mb ({} MiB)",
                config.extract_memory_mb
            ),
        )
    };
    match (status.code(), status.signal()) {
        (Some(0), _) if over => Err(Failure::Refused(Refusal::new(
            "text_chars",
            400,
            format!(
                "its text is over files.max_text_chars ({} characters)",
                config.max_text_chars
            ),
        ))),
        (Some(0), _) => String::from_utf8(out).map_err(|_| {
            Failure::Refused(Refusal::new("unreadable", 400, "its text is not UTF-8"))
        }),
        (Some(code), _) if code == i32::from(REFUSED) => serde_json::from_slice(&out)
            .map(Failure::Refused)
            .map_err(|e| Failure::Broken(format!("the worker's answer: {e}")))
            .and_then(Err),
        // The allocator aborts when the address space is used up.
        _ if err.contains("memory allocation") => Err(Failure::Refused(memory())),
        (_, Some(libc::SIGABRT)) => Err(Failure::Refused(memory())),
        (_, Some(libc::SIGXCPU | libc::SIGKILL)) => Err(Failure::Refused(timed_out(config))),
        (_, Some(_)) | (Some(101), _) => Err(Failure::Refused(Refusal::new(
            "unreadable",
            400,
            "the document could not be parsed",
        ))),
        _ => Err(Failure::Broken(format!(
            "the worker failed ({status}): {}",
            err.trim()
        ))),
    }
}

/// Everything `reader` gives, keeping the first `cap` bytes; and whether there was more.
async fn bounded(mut reader: impl AsyncRead + Unpin, cap: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut over = false;
    while let Ok(n @ 1..) = reader.read(&mut buf).await {
        let room = cap.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
        over |= n > room;
    }
    (kept, over)
}

/// The text of `file`: kept in the store, or extracted now (and kept).
pub async fn text(files: &Files, store: &Store, file: &FileRecord) -> Result<String, Failure> {
    if let Some(kept) = kept(store, &file.id).await {
        return kept;
    }
    let cage = &files.cage;
    let lock = cage.file_lock(&file.id);
    let _extracting = lock.lock().await;
    if let Some(kept) = kept(store, &file.id).await {
        return kept;
    }
    let bytes = files
        .get(&file.id)
        .await
        .map_err(|e| Failure::Broken(format!("its bytes cannot be read: {e}")))?;
    let result = cage.run(&files.config, &file.filename, bytes).await;
    let stored = match &result {
        Ok(text) => {
            cage.metrics.extracted("text");
            // PostgreSQL text holds no NUL; a NUL means nothing to a model either.
            StoredText::Text(text.replace('\0', ""))
        }
        Err(Failure::Refused(refusal)) => {
            cage.metrics.extracted("refused");
            cage.metrics.refused(&refusal.reason);
            StoredText::Refused(serde_json::to_string(refusal).unwrap_or_default())
        }
        Err(Failure::Broken(why)) => {
            cage.metrics.extracted("failed");
            tracing::warn!(file = %file.id, error = %why, "text extraction could not run");
            return result;
        }
    };
    if let Err(e) = store.set_file_text(&file.id, &stored).await {
        tracing::warn!(error = %e, file = %file.id, "file text not kept; extracted again next time");
    }
    match stored {
        StoredText::Text(text) => Ok(text),
        StoredText::Refused(_) => result,
    }
}

/// What the store keeps for file `id`, if anything.
async fn kept(store: &Store, id: &str) -> Option<Result<String, Failure>> {
    let found = match store.file_text(id).await {
        Ok(found) => found?,
        Err(e) => {
            tracing::warn!(error = %e, file = %id, "file text unreadable from the store");
            return None;
        }
    };
    Some(match found {
        StoredText::Text(text) => Ok(text),
        StoredText::Refused(json) => Err(Failure::Refused(
            serde_json::from_str(&json).unwrap_or_else(|_| {
                Refusal::new("unreadable", 400, "its text could not be extracted")
            }),
        )),
    })
}
