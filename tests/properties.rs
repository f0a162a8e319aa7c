//! Properties of the two parsers every streamed or image-carrying request goes through, checked
//! with proptest on generated inputs (shrunk to a minimal case on failure): the SSE splitter
//! (upstream bytes → whole events) and the `data:` URL parser and image pipeline.
//! The base64 decoding roundtrip lives beside the decoder (`src/media/dataurl/props.rs`), which
//! is crate-private.

use dashgate::dialect::sse::EventSplitter;
use dashgate::media::{ImagePolicy, MediaError, parse_data_url, process_data_url};
use proptest::prelude::*;

/// The events of `input` fed to one splitter in pieces cut at `cuts`: those found as the bytes
/// arrived, and the one `finish` made of what was left.
fn split(input: &[u8], cuts: &[usize]) -> (Vec<Vec<u8>>, Option<Vec<u8>>) {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.sort_unstable();
    let mut splitter = EventSplitter::default();
    let mut events = Vec::new();
    let mut at = 0;
    for cut in cuts.into_iter().chain(std::iter::once(input.len())) {
        splitter.push(&input[at..cut]);
        at = cut;
        while let Some(event) = splitter.next_event() {
            events.push(event.to_vec());
        }
    }
    (events, splitter.finish().map(|e| e.to_vec()))
}

/// Bytes shaped like an upstream stream: SSE fields, comments and blank lines, with every kind
/// of line end the spec allows (the cases where an event end can be cut in two), and now and
/// then arbitrary bytes.
fn sse_stream() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"data: {\"choices\":[]}".to_vec()),
        Just(b"data:[DONE]".to_vec()),
        Just(b"id:1".to_vec()),
        Just(b"event:result".to_vec()),
        Just(b":HTTP_STATUS/200".to_vec()),
        Just(b": keep-alive".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\r".to_vec()),
        "[ -~]{0,12}".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..8),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
}

proptest! {
    /// However the bytes are chunked, the splitter finds the same events.
    #[test]
    fn sse_events_do_not_depend_on_chunking(
        input in sse_stream(),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let whole = split(&input, &[]);
        prop_assert_eq!(&split(&input, &cuts), &whole);
        let bytewise: Vec<usize> = (1..input.len()).collect();
        prop_assert_eq!(&split(&input, &bytewise), &whole);
    }

    /// Events are the input cut, nothing lost or invented: each ends at a line break, together
    /// they are a prefix of the input, and `finish` completes the rest unless it is blank.
    #[test]
    fn sse_events_are_the_input_cut_at_event_ends(input in sse_stream()) {
        let (events, last) = split(&input, &[]);
        let joined = events.concat();
        prop_assert!(input.starts_with(&joined));
        for event in &events {
            prop_assert!(matches!(event.last(), Some(b'\n' | b'\r')));
        }
        let rest = &input[joined.len()..];
        if rest.iter().all(u8::is_ascii_whitespace) {
            prop_assert_eq!(last, None);
        } else {
            let body_len = rest.len() - rest.iter().rev().take_while(|b| matches!(b, b'\n' | b'\r')).count();
            let mut expected = rest[..body_len].to_vec();
            expected.extend_from_slice(b"\n\n");
            prop_assert_eq!(last, Some(expected));
        }
    }

    /// The parser never panics, and what it accepts it took from the URL as written.
    #[test]
    fn data_url_parser_never_panics(url in "(?s)(data:|DATA:|dat)?.{0,64}") {
        if let Ok(parsed) = parse_data_url(&url) {
            prop_assert!(url.len() >= 5 && url[..5].eq_ignore_ascii_case("data:"));
            prop_assert!(url.ends_with(parsed.payload));
            let header = &url[5..url.len() - parsed.payload.len() - 1];
            prop_assert!(header.contains(parsed.mime));
        }
    }

    /// A well-formed base64 data URL parses back to the type and payload it was written with,
    /// whatever its parameters and the case of its markers.
    #[test]
    fn data_url_parse_roundtrips(
        mime in "[a-z]{1,8}/[a-z0-9.+-]{1,12}",
        params in proptest::collection::vec("[a-z]{1,6}=[a-z0-9.]{1,8}", 0..3),
        scheme in prop_oneof![Just("data:"), Just("DATA:"), Just("Data:")],
        marker in prop_oneof![Just("base64"), Just("BASE64"), Just("Base64")],
        payload in "[A-Za-z0-9+/=\r\n]{0,40}",
    ) {
        let params: String = params.iter().map(|p| format!(";{p}")).collect();
        let url = format!("{scheme}{mime}{params};{marker},{payload}");
        let parsed = parse_data_url(&url).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(parsed.mime, mime.as_str());
        prop_assert_eq!(parsed.payload, payload.as_str());
    }

    /// The whole image step (parse, decode, sniff, inspect) refuses arbitrary input with an
    /// error rather than a panic, and never takes a non-base64 URL for an image.
    #[test]
    fn image_data_urls_of_any_text_are_refused_or_read(
        mime in prop_oneof![Just("image/png"), Just("image/jpeg"), Just("text/plain"), Just("")],
        payload in "(?s).{0,96}",
    ) {
        let policy = ImagePolicy { max_image_bytes: 4096, max_decode_pixels: 4096, ..ImagePolicy::default() };
        let url = format!("data:{mime};base64,{payload}");
        let _ = process_data_url(&url, &policy);
        let plain = format!("data:{mime},{payload}");
        prop_assert_eq!(process_data_url(&plain, &policy).err(), Some(MediaError::NotBase64));
    }
}
