//! Text extraction in a cage: once per file (the text, or the refusal, is kept by file id),
//! at most `files.max_extractions` at a time, each within `files.extract_timeout_ms`, a DOCX
//! within `files.max_extract_bytes` decompressed, a PDF within `files.max_pdf_pages`, any text within `files.max_text_chars`, and
//! a panicking parser (pdf-extract can) turned into a refusal.

use std::io::Read;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::extract::Kind;
use crate::config::FilesConfig;

/// Texts (and refusals) by file id, weighed by their size: about 256 MB of text at most.
fn cache() -> &'static moka::sync::Cache<String, Result<Arc<str>, String>> {
    static CACHE: OnceLock<moka::sync::Cache<String, Result<Arc<str>, String>>> = OnceLock::new();
    CACHE.get_or_init(|| {
        moka::sync::Cache::builder()
            .weigher(|_, v: &Result<Arc<str>, String>| {
                let len = v.as_ref().map_or_else(|e| e.len(), |t| t.len());
                u32::try_from(len).unwrap_or(u32::MAX)
            })
            .max_capacity(256 * 1024 * 1024)
            .build()
    })
}

fn slots(config: &FilesConfig) -> &'static Arc<Semaphore> {
    static SLOTS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    SLOTS.get_or_init(|| Arc::new(Semaphore::new(config.max_extractions.max(1))))
}

/// What extraction gave for file `id` before, if it ran.
pub fn known(id: &str) -> Option<Result<Arc<str>, String>> {
    cache().get(id)
}

/// The text of file `id`, extracted on first use and kept; or why not, naming the limit.
pub async fn text(
    config: &FilesConfig,
    id: &str,
    filename: &str,
    bytes: bytes::Bytes,
) -> Result<Arc<str>, String> {
    if let Some(known) = cache().get(id) {
        return known;
    }
    let permit = slots(config)
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| "its text could not be extracted".to_string())?;
    if let Some(known) = cache().get(id) {
        return known;
    }
    let (limits, filename) = (config.clone(), filename.to_string());
    // The slot is held by the thread, not the request: a parser that runs on past the timeout
    // still counts against the cap until it ends.
    let work = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let run = std::panic::AssertUnwindSafe(|| extract(&limits, &filename, &bytes));
        match std::panic::catch_unwind(run) {
            Ok(result) => result,
            Err(_) => Err("the document could not be parsed".to_string()),
        }
    });
    let timeout = Duration::from_millis(config.extract_timeout_ms);
    let result = match tokio::time::timeout(timeout, work).await {
        Ok(Ok(result)) => result.map(Arc::from),
        Ok(Err(_)) => Err("its text could not be extracted".to_string()),
        Err(_) => Err(format!(
            "its text took longer than files.extract_timeout_ms ({} ms) to extract",
            config.extract_timeout_ms
        )),
    };
    cache().insert(id.to_string(), result.clone());
    result
}

fn extract(limits: &FilesConfig, filename: &str, bytes: &[u8]) -> Result<String, String> {
    let kind = super::extract::kind_of(filename, bytes)?;
    if kind == Kind::Docx {
        check_docx(bytes, limits.max_extract_bytes)?;
    }
    let text = match kind {
        Kind::Pdf => super::extract::pdf_text(bytes, limits.max_pdf_pages)?,
        _ => super::extract::text_of(kind, bytes)?,
    };
    if text.chars().count() > limits.max_text_chars {
        return Err(format!(
            "its text is over files.max_text_chars ({} characters)",
            limits.max_text_chars
        ));
    }
    Ok(text)
}

/// A DOCX whose document part would decompress past `max` bytes (declared, or found while
/// reading) is a zip bomb, refused before it is inflated.
fn check_docx(bytes: &[u8], max: u64) -> Result<(), String> {
    let over = || format!("it decompresses to more than files.max_extract_bytes ({max} bytes)");
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| format!("not a docx: {e}"))?;
    let mut declared: u64 = 0;
    for i in 0..archive.len() {
        let entry = archive
            .by_index_raw(i)
            .map_err(|e| format!("not a docx: {e}"))?;
        declared = declared.saturating_add(entry.size());
    }
    if declared > max {
        return Err(over());
    }
    // Sizes in the headers can lie: the part the text comes from is inflated under the cap.
    let mut part = archive
        .by_name("word/document.xml")
        .map_err(|_| "not a docx: no word/document.xml".to_string())?;
    let read = std::io::copy(&mut (&mut part).take(max + 1), &mut std::io::sink())
        .map_err(|e| format!("not a docx: {e}"))?;
    if read > max {
        return Err(over());
    }
    Ok(())
}
