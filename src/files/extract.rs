//! What a file is, checked from its bytes, and its text for upstreams that have no files API:
//! plain text (txt, md, csv, json, jsonl), HTML, PDF and DOCX.

use std::io::Read;

/// A file type the gateway accepts, by extension and confirmed by content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// UTF-8 text: txt, md, csv, json, jsonl.
    Text,
    Html,
    Pdf,
    Docx,
    /// Accepted for DashScope, which reads them itself (xlsx, epub, mobi, images); no text
    /// is extracted here.
    Opaque,
}

const TEXT: &[&str] = &["txt", "md", "markdown", "csv", "json", "jsonl"];
const OPAQUE: &[&str] = &["xlsx", "epub", "mobi", "bmp", "png", "jpg", "jpeg", "gif"];

fn extension(filename: &str) -> String {
    filename
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .unwrap_or_default()
}

/// The kind of an upload, or why it is refused.
pub fn kind_of(filename: &str, bytes: &[u8]) -> Result<Kind, String> {
    let ext = extension(filename);
    let zip = bytes.starts_with(b"PK\x03\x04");
    let kind = match ext.as_str() {
        e if TEXT.contains(&e) => Kind::Text,
        "html" | "htm" => Kind::Html,
        "pdf" => Kind::Pdf,
        "docx" => Kind::Docx,
        e if OPAQUE.contains(&e) => Kind::Opaque,
        "" => return Err("the file name has no extension".into()),
        other => {
            return Err(format!(
                "`.{other}` files are not accepted (txt, md, csv, json, jsonl, html, pdf, docx, \
                 xlsx, epub, mobi and images are)"
            ));
        }
    };
    let fits = match kind {
        Kind::Text | Kind::Html => std::str::from_utf8(bytes).is_ok(),
        Kind::Pdf => bytes.starts_with(b"%PDF-"),
        Kind::Docx => zip,
        Kind::Opaque => !bytes.is_empty(),
    };
    if !fits {
        return Err(format!("the content is not what a `.{ext}` file holds"));
    }
    Ok(kind)
}

/// The text of a file. Slow for large PDFs: call it on the blocking pool.
pub fn text_of(kind: Kind, bytes: &[u8]) -> Result<String, String> {
    match kind {
        Kind::Text => std::str::from_utf8(bytes)
            .map(|t| t.trim_start_matches('\u{feff}').to_string())
            .map_err(|_| "not UTF-8 text".into()),
        Kind::Html => html2text::from_read(bytes, usize::MAX / 4).map_err(|e| e.to_string()),
        Kind::Pdf => pdf_extract::extract_text_from_mem(bytes).map_err(|e| e.to_string()),
        Kind::Docx => docx_text(bytes),
        Kind::Opaque => Err("the gateway cannot read text from this kind of file".into()),
    }
}

/// The text of a PDF of at most `max_pages` pages. The document is parsed once: its page tree
/// is counted before any content stream is read, so a huge PDF is refused cheaply.
pub fn pdf_text(bytes: &[u8], max_pages: usize) -> Result<String, String> {
    let mut doc = lopdf::Document::load_mem(bytes).map_err(|e| format!("not a pdf: {e}"))?;
    let pages = doc.get_pages().len();
    if pages > max_pages {
        return Err(format!(
            "it has {pages} pages, over files.max_pdf_pages ({max_pages})"
        ));
    }
    // As pdf-extract does itself: an owner-password-only PDF opens with the empty password.
    if doc.is_encrypted() {
        doc.decrypt("")
            .map_err(|e| format!("the pdf is encrypted: {e}"))?;
    }
    let mut text = String::new();
    let mut out = pdf_extract::PlainTextOutput::new(&mut text);
    pdf_extract::output_doc(&doc, &mut out).map_err(|e| e.to_string())?;
    Ok(text)
}

/// Whether the flate streams of a PDF inflate to more than `max` bytes in all. The raw bytes
/// are scanned, not the parsed document: parsing already inflates object streams. Each
/// `stream` keyword starts a zlib decoder (and, as lopdf retries a broken header, a raw
/// deflate one) that stops at the end of its data or at the first byte past the budget.
pub fn pdf_inflates_over(bytes: &[u8], max: u64) -> bool {
    let mut left = max;
    for at in memchr::memmem::find_iter(bytes, b"stream") {
        if at >= 3 && &bytes[at - 3..at] == b"end" {
            continue;
        }
        let rest = &bytes[at + 6..];
        let data = match rest {
            [b'\r', b'\n', data @ ..] | [b'\n', data @ ..] | [b'\r', data @ ..] => data,
            _ => continue,
        };
        let mut inflated = inflated_len(flate2::read::ZlibDecoder::new(data), left);
        if inflated == 0 && data.len() > 2 {
            inflated = inflated_len(flate2::read::DeflateDecoder::new(&data[2..]), left);
        }
        if inflated > left {
            return true;
        }
        left -= inflated;
    }
    false
}

/// Bytes `decoder` gives up to `budget + 1` (what it gave before an error counts).
fn inflated_len(decoder: impl Read, budget: u64) -> u64 {
    let mut counted = Counted(0);
    let _ = std::io::copy(&mut decoder.take(budget.saturating_add(1)), &mut counted);
    counted.0
}

struct Counted(u64);

impl std::io::Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The paragraphs of `word/document.xml`, one per line.
fn docx_text(bytes: &[u8]) -> Result<String, String> {
    use quick_xml::events::Event;
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| format!("not a docx: {e}"))?;
    let mut xml = String::new();
    archive
        .by_name("word/document.xml")
        .map_err(|_| "not a docx: no word/document.xml".to_string())?
        .take(256 * 1024 * 1024)
        .read_to_string(&mut xml)
        .map_err(|e| format!("not a docx: {e}"))?;
    let mut reader = quick_xml::Reader::from_str(&xml);
    let mut out = String::new();
    let mut in_text = false;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) if e.name().as_ref() == b"w:t" => in_text = true,
            Ok(Event::End(e)) => match e.name().as_ref() {
                b"w:t" => in_text = false,
                b"w:p" => out.push('\n'),
                _ => {}
            },
            Ok(Event::Empty(e)) => match e.name().as_ref() {
                b"w:tab" => out.push('\t'),
                b"w:br" => out.push('\n'),
                _ => {}
            },
            Ok(Event::Text(t)) if in_text => {
                let text = t.decode().map_err(|e| format!("not a docx: {e}"))?;
                let text =
                    quick_xml::escape::unescape(&text).map_err(|e| format!("not a docx: {e}"))?;
                out.push_str(&text);
            }
            Ok(Event::GeneralRef(r)) if in_text => {
                // &amp; and friends arrive as references of their own.
                let name = r.decode().map_err(|e| format!("not a docx: {e}"))?;
                if let Some(c) = quick_xml::escape::resolve_predefined_entity(&name) {
                    out.push_str(c);
                }
            }
            Ok(Event::Eof) => break,
            Err(e) => return Err(format!("not a docx: {e}")),
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_checked_against_the_content() {
        assert_eq!(kind_of("a.md", b"# hi"), Ok(Kind::Text));
        assert_eq!(kind_of("A.PDF", b"%PDF-1.7 ..."), Ok(Kind::Pdf));
        assert!(kind_of("a.pdf", b"hello").is_err());
        assert!(kind_of("a.docx", b"%PDF-").is_err());
        assert!(kind_of("a.txt", &[0xff, 0xfe, 0x00]).is_err());
        assert!(kind_of("a.exe", b"MZ").is_err());
        assert!(kind_of("noext", b"x").is_err());
    }

    #[test]
    fn html_becomes_text() {
        let text = text_of(
            Kind::Html,
            b"<html><body><h1>Phones</h1><p>Qwen &amp; co</p></body></html>",
        );
        assert!(
            text.as_deref()
                .is_ok_and(|t| t.contains("Phones") && t.contains("Qwen & co")),
            "{text:?}"
        );
    }
}
