//! `[files]`: uploads and the text extraction cage.

use serde::Deserialize;

/// Files uploaded through `/v1/files`, and documents named as `fileid://` in system messages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    /// Where file bytes are kept, when `url` is unset (created when missing).
    pub dir: std::path::PathBuf,
    /// S3-compatible object storage instead (`s3://bucket/prefix`: Alibaba OSS, S3, MinIO);
    /// credentials and endpoint from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_ENDPOINT`, `AWS_REGION`.
    pub url: Option<String>,
    /// Largest upload.
    pub max_file_bytes: usize,
    /// Documents put into the system message for an upstream without a files API may come to
    /// at most this many tokens (estimated); more is a 400.
    pub max_inline_tokens: u64,
    /// Text extraction's cage: bytes a DOCX's text part, or all of a PDF's streams, may
    /// decompress to.
    pub max_extract_bytes: u64,
    /// Address space an extraction worker may add to its own at start, in MiB.
    pub extract_memory_mb: u64,
    /// The program run as the extraction worker (`PROG extract-worker`); unset: this executable.
    pub extract_worker: Option<std::path::PathBuf>,
    /// Characters of text one document may give.
    pub max_text_chars: usize,
    /// How long one extraction may take before the request is refused.
    pub extract_timeout_ms: u64,
    /// Extractions running at once, across all requests (more wait for a slot).
    pub max_extractions: usize,
    /// Pages a PDF may have; counted before any text is extracted, more is a 400.
    pub max_pdf_pages: usize,
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            dir: "dashgate-files".into(),
            url: None,
            max_file_bytes: 64 * 1024 * 1024,
            max_inline_tokens: 120_000,
            max_extract_bytes: 32 * 1024 * 1024,
            extract_memory_mb: 256,
            extract_worker: None,
            max_text_chars: 2_000_000,
            extract_timeout_ms: 10_000,
            max_extractions: 2,
            max_pdf_pages: 500,
        }
    }
}
