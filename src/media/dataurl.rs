//! `data:` URLs (RFC 2397), base64 only: the form OpenAI-style image parts carry inline images in.

use std::borrow::Cow;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use super::error::MediaError;
use super::format::ImageFormat;

/// A parsed base64 data URL, borrowing from the original string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataUrl<'a> {
    /// The declared media type without parameters, as written (e.g. `image/jpeg`); may be empty.
    pub mime: &'a str,
    /// The base64 text after the comma, untouched (it may still contain whitespace).
    pub payload: &'a str,
}

/// Standard alphabet; padding optional because clients differ (browsers pad, some SDKs do not).
/// Trailing bits stay strict: non-zero stray bits in the last symbol almost always mean the
/// payload was cut off, and that is better said here than by a decoder further on.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Splits `data:<mime>[;param=value]*;base64,<payload>`.
///
/// The scheme and the `base64` marker are matched case-insensitively, as RFC 2397 allows;
/// parameters such as `name=frame.jpg` are ignored. A data URL that is not base64 is refused:
/// percent-encoded binary images do not occur in practice and would only widen the surface.
pub fn parse_data_url(url: &str) -> Result<DataUrl<'_>, MediaError> {
    let rest = match url.get(..5) {
        Some(scheme) if scheme.eq_ignore_ascii_case("data:") => &url[5..],
        _ => return Err(MediaError::NotDataUrl),
    };
    let (header, payload) = rest.split_once(',').ok_or(MediaError::NotDataUrl)?;
    let (mime, params) = header.split_once(';').unwrap_or((header, ""));
    let is_base64 = params
        .rsplit(';')
        .next()
        .is_some_and(|last| last.trim().eq_ignore_ascii_case("base64"));
    if !is_base64 {
        return Err(MediaError::NotBase64);
    }
    Ok(DataUrl {
        mime: mime.trim(),
        payload,
    })
}

/// Decodes a base64 payload, refusing it before decoding if the result would exceed `max_bytes`.
///
/// ASCII whitespace anywhere in the payload is skipped: MIME-style line-wrapped base64
/// (76 columns) is common from some SDKs and costs us nothing to accept, while upstream
/// decoders vary. The copy without whitespace is made only when there is whitespace.
pub(crate) fn decode_payload(payload: &str, max_bytes: usize) -> Result<Vec<u8>, MediaError> {
    let raw = payload.as_bytes();
    // Nearly every payload is one unbroken run of base64: the SIMD decoder refuses whitespace,
    // so trying it first checks and decodes in one pass, where a whitespace scan alone took
    // about as long as the decoding. Anything it refuses takes the careful path below.
    let padding = raw.iter().rev().take_while(|&&b| b == b'=').count();
    let symbols = raw.len() - padding;
    if symbols > 0 && decoded_len(symbols) <= max_bytes && padded_right(raw.len(), symbols, padding)
    {
        if let Ok(bytes) = base64_simd::STANDARD_NO_PAD.decode_to_vec(&raw[..symbols]) {
            return Ok(bytes);
        }
    }
    let text: Cow<'_, [u8]> = if raw.iter().any(u8::is_ascii_whitespace) {
        Cow::Owned(
            raw.iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect(),
        )
    } else {
        Cow::Borrowed(raw)
    };
    let padding = text.iter().rev().take_while(|&&b| b == b'=').count();
    let symbols = text.len() - padding;
    let decoded_len = decoded_len(symbols);
    if decoded_len > max_bytes {
        return Err(MediaError::TooLarge {
            bytes: decoded_len,
            limit: max_bytes,
        });
    }
    if symbols == 0 {
        return Err(MediaError::InvalidBase64("the payload is empty".into()));
    }
    // Line-wrapped base64 gets the SIMD decoder once its whitespace is gone (unwrapped
    // payloads already had their try above). Anything it refuses is decoded again by the
    // scalar one, for a message that says where.
    if matches!(text, Cow::Owned(_)) && padded_right(text.len(), symbols, padding) {
        if let Ok(bytes) = base64_simd::STANDARD_NO_PAD.decode_to_vec(&text[..symbols]) {
            return Ok(bytes);
        }
    }
    BASE64.decode(&text).map_err(|e| {
        use base64::DecodeError as E;
        MediaError::InvalidBase64(match e {
            E::InvalidByte(offset, b'=') => {
                format!("padding '=' in the middle, at offset {offset}")
            }
            E::InvalidByte(offset, byte) => {
                format!(
                    "unexpected character {:?} at offset {offset}",
                    char::from(byte)
                )
            }
            E::InvalidLength(_) | E::InvalidLastSymbol { .. } => {
                "it ends mid-group (truncated?)".into()
            }
            E::InvalidPadding => "bad padding".into(),
        })
    })
}

/// The bytes that `symbols` base64 symbols (padding not counted) decode to.
fn decoded_len(symbols: usize) -> usize {
    symbols / 4 * 3 + (symbols % 4).saturating_sub(1)
}

/// Padding may be present or not; when it is, it must be complete.
fn padded_right(len: usize, symbols: usize, padding: usize) -> bool {
    padding == 0 || (len.is_multiple_of(4) && padding == (4 - symbols % 4) % 4)
}

/// Writes `data:<mime>;base64,<payload>` with the padded standard alphabet.
pub(crate) fn to_data_url(format: ImageFormat, bytes: &[u8]) -> String {
    let mime = format.mime();
    let mut url = String::with_capacity(13 + mime.len() + bytes.len().div_ceil(3) * 4);
    url.push_str("data:");
    url.push_str(mime);
    url.push_str(";base64,");
    base64::engine::general_purpose::STANDARD.encode_string(bytes, &mut url);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_base64_data_urls() {
        let u = parse_data_url("data:image/jpeg;base64,/9j/").unwrap();
        assert_eq!(
            u,
            DataUrl {
                mime: "image/jpeg",
                payload: "/9j/"
            }
        );
        let u = parse_data_url("DATA:image/png;name=a.png;BASE64,iVBO").unwrap();
        assert_eq!(
            u,
            DataUrl {
                mime: "image/png",
                payload: "iVBO"
            }
        );
        let u = parse_data_url("data:;base64,AAAA").unwrap();
        assert_eq!(u.mime, "");
    }

    #[test]
    fn refuses_what_is_not_a_base64_data_url() {
        assert_eq!(
            parse_data_url("https://example.com/a.jpg"),
            Err(MediaError::NotDataUrl)
        );
        assert_eq!(
            parse_data_url("data:image/png"),
            Err(MediaError::NotDataUrl)
        );
        assert_eq!(parse_data_url("dat"), Err(MediaError::NotDataUrl));
        assert_eq!(
            parse_data_url("data:image/svg+xml,%3Csvg%3E"),
            Err(MediaError::NotBase64)
        );
        assert_eq!(
            parse_data_url("data:image/png;base64x,AAAA"),
            Err(MediaError::NotBase64)
        );
    }

    #[test]
    fn decodes_with_or_without_padding_and_whitespace() {
        assert_eq!(decode_payload("aGVsbG8=", 100).unwrap(), b"hello");
        assert_eq!(decode_payload("aGVsbG8", 100).unwrap(), b"hello");
        assert_eq!(decode_payload("aGVs\r\nbG8=\n", 100).unwrap(), b"hello");
    }

    #[test]
    fn refuses_broken_base64() {
        for bad in ["aGVsbG8=x", "aGVsbG", "aGVs*G8=", "a", "", "===="] {
            assert!(
                matches!(decode_payload(bad, 100), Err(MediaError::InvalidBase64(_))),
                "{bad:?} should be refused"
            );
        }
        // URL-safe alphabet is not the standard one.
        assert!(decode_payload("-_-_", 100).is_err());
    }

    #[test]
    fn refuses_oversize_before_decoding() {
        let err = decode_payload("aGVsbG8=", 4).unwrap_err();
        assert_eq!(err, MediaError::TooLarge { bytes: 5, limit: 4 });
        assert!(decode_payload("aGVsbG8=", 5).is_ok());
    }
}

#[cfg(test)]
mod props;
