//! Properties of the base64 payload decoder (proptest): whatever the encoder's choices
//! (padding, line wrapping), the bytes come back; whatever the input, an answer and no panic.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use proptest::prelude::*;

use super::*;

/// Base64 of `bytes` as clients write it: padded or not, one line or wrapped at `width`.
fn encoded(bytes: &[u8], padded: bool, width: Option<usize>, crlf: bool) -> String {
    let text = if padded {
        STANDARD.encode(bytes)
    } else {
        STANDARD_NO_PAD.encode(bytes)
    };
    let Some(width) = width else { return text };
    let end = if crlf { "\r\n" } else { "\n" };
    let lines: Vec<&str> = text
        .as_bytes()
        .chunks(width)
        .filter_map(|line| std::str::from_utf8(line).ok())
        .collect();
    lines.join(end)
}

proptest! {
    #[test]
    fn payload_decoding_roundtrips(
        bytes in proptest::collection::vec(any::<u8>(), 1..600),
        padded in any::<bool>(),
        width in proptest::option::of(1usize..100),
        crlf in any::<bool>(),
    ) {
        let text = encoded(&bytes, padded, width, crlf);
        prop_assert_eq!(decode_payload(&text, bytes.len()), Ok(bytes.clone()));
        // One byte under the limit is refused before decoding, naming both sizes.
        prop_assert_eq!(
            decode_payload(&text, bytes.len() - 1),
            Err(MediaError::TooLarge { bytes: bytes.len(), limit: bytes.len() - 1 })
        );
    }

    /// Any text gets bytes or a refusal; accepted text is what a lenient standard decoder
    /// reads once whitespace is gone.
    #[test]
    fn payload_decoding_never_panics(
        text in prop_oneof!["(?s).{0,200}", "[A-Za-z0-9+/ \n]{0,24}={0,3}"],
        max_bytes in 0usize..256,
    ) {
        if let Ok(bytes) = decode_payload(&text, max_bytes) {
            prop_assert!(bytes.len() <= max_bytes);
            let clean: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
            prop_assert_eq!(BASE64.decode(clean).ok(), Some(bytes));
        }
    }

    /// A data URL written by the gateway reads back to its type and bytes.
    #[test]
    fn written_data_urls_read_back(bytes in proptest::collection::vec(any::<u8>(), 1..300)) {
        let url = to_data_url(ImageFormat::Png, &bytes);
        let parsed = parse_data_url(&url).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(parsed.mime, "image/png");
        prop_assert_eq!(decode_payload(parsed.payload, bytes.len()), Ok(bytes));
    }
}
