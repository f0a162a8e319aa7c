//! End-to-end tests of `process_data_url` on real images (made in `images`).

use image::{ExtendedColorType, ImageEncoder};

use super::*;

mod images;
use images::*;

#[test]
fn jpeg_exif_with_gps_is_stripped_losslessly() {
    let clean = jpeg(640, 480);
    assert!(
        contains(&clean[..20], b"JFIF"),
        "the encoder writes APP0 JFIF first"
    );
    let dirty = splice_after_soi(&clean, &exif_app1(None));
    let report = process_data_url(&url("image/jpeg", &dirty), &policy()).unwrap();
    assert!(report.stripped && !report.resized);
    let sent = bytes_of(report.replacement.as_deref().unwrap());
    assert!(!contains(&sent, b"Exif\0\0"));
    assert_eq!(
        sent, clean,
        "everything but the Exif segment is kept byte for byte"
    );
    assert_eq!(report.original_bytes, dirty.len());
    assert_eq!(report.sent_bytes, clean.len());
    assert_eq!((report.width, report.height), (640, 480));
    assert_eq!((report.sent_width, report.sent_height), (640, 480));
    assert_eq!(report.tokens_after, 23 * 17 + 2);
    assert_eq!(report.tokens_before, report.tokens_after);
    let decoded = image::load_from_memory(&sent).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (640, 480));
}

#[test]
fn jpeg_orientation_survives_stripping_but_gps_does_not() {
    let dirty = splice_after_soi(&jpeg(64, 48), &exif_app1(Some(6)));
    let report = process_data_url(&url("image/jpg", &dirty), &policy()).unwrap();
    let sent = bytes_of(report.replacement.as_deref().unwrap());
    assert!(!contains(&sent, &[0x25, 0x88]), "no GPS IFD pointer");
    assert!(!contains(&sent, &2413u32.to_le_bytes()), "no latitude");
    let mut decoder = image::ImageReader::new(std::io::Cursor::new(&sent))
        .with_guessed_format()
        .unwrap()
        .into_decoder()
        .unwrap();
    use image::ImageDecoder as _;
    assert_eq!(
        decoder.orientation().unwrap(),
        image::metadata::Orientation::Rotate90
    );
}

#[test]
fn rotated_jpeg_over_budget_is_turned_upright() {
    let dirty = splice_after_soi(&jpeg(400, 300), &exif_app1(Some(6)));
    let small = ImagePolicy {
        max_image_pixels: 50_000,
        ..policy()
    };
    let report = process_data_url(&url("image/jpeg", &dirty), &small).unwrap();
    assert!(report.resized && report.stripped);
    assert!(
        report.sent_height > report.sent_width,
        "landscape stored, portrait shown"
    );
    let sent = bytes_of(report.replacement.as_deref().unwrap());
    assert!(!contains(&sent, b"Exif\0\0"));
}

#[test]
fn big_png_over_budget_is_downscaled_to_patch_multiples() {
    let big = png(4000, 3000, ExtendedColorType::Rgb8);
    let report = process_data_url(&url("image/png", &big), &policy()).unwrap();
    assert!(report.resized && !report.stripped);
    let (w, h) = (report.sent_width, report.sent_height);
    assert_eq!((w % 28, h % 28), (0, 0));
    assert!(w >= 28 && h >= 28);
    assert!(u64::from(w) * u64::from(h) <= DEFAULT_MAX_PIXELS);
    assert!(
        (f64::from(h) - f64::from(w) * 0.75).abs() <= 28.0,
        "{w}x{h}"
    );
    let url = report.replacement.as_deref().unwrap();
    assert!(url.starts_with("data:image/jpeg;base64,"), "opaque → JPEG");
    let decoded = image::load_from_memory(&bytes_of(url)).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (w, h));
    assert_eq!(
        report.tokens_before,
        estimate_tokens(4000, 3000, HIGH_RES_MAX_PIXELS)
    );
    assert_eq!(report.tokens_after, u64::from(w / 28 * (h / 28)) + 2);
    assert!(report.tokens_after <= 1282);
}

#[test]
fn transparent_png_over_budget_stays_png() {
    let small = ImagePolicy {
        max_image_pixels: 20_000,
        ..policy()
    };
    let report = process_data_url(
        &url("image/png", &png(300, 200, ExtendedColorType::Rgba8)),
        &small,
    )
    .unwrap();
    let url = report.replacement.unwrap();
    assert!(url.starts_with("data:image/png;base64,"));
    assert!(
        image::load_from_memory(&bytes_of(&url))
            .unwrap()
            .color()
            .has_alpha()
    );
}

#[test]
fn small_clean_jpeg_passes_byte_identical() {
    let report = process_data_url(&url("image/jpeg", &jpeg(320, 240)), &policy()).unwrap();
    assert_eq!(report.replacement, None);
    assert!(!report.stripped && !report.resized);
    assert_eq!(report.sent_bytes, report.original_bytes);
    assert_eq!((report.sent_width, report.sent_height), (320, 240));
}

#[test]
fn metadata_is_kept_when_stripping_is_off() {
    let dirty = splice_after_soi(&jpeg(64, 48), &exif_app1(None));
    let keep = ImagePolicy {
        strip_metadata: false,
        ..policy()
    };
    let report = process_data_url(&url("image/jpeg", &dirty), &keep).unwrap();
    assert_eq!(report.replacement, None);
    assert!(!report.stripped);
}

#[test]
fn png_text_chunk_is_stripped_losslessly() {
    let clean = png(64, 48, ExtendedColorType::Rgb8);
    // tEXt goes right after IHDR (8 signature + 25 IHDR); the CRC is not checked by us.
    let body = b"Comment\0taken at 48.8567 N, 2.3508 E";
    let mut text = (body.len() as u32).to_be_bytes().to_vec();
    text.extend_from_slice(b"tEXt");
    text.extend_from_slice(body);
    text.extend_from_slice(&[0; 4]);
    let dirty = [&clean[..33], &text, &clean[33..]].concat();
    let report = process_data_url(&url("image/png", &dirty), &policy()).unwrap();
    assert!(report.stripped);
    let sent = bytes_of(&report.replacement.unwrap());
    assert_eq!(sent, clean);
    assert!(!contains(&sent, b"tEXt"));
    assert_eq!(image::load_from_memory(&sent).unwrap().width(), 64);
}

#[test]
fn webp_exif_chunk_is_stripped() {
    let mut clean = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut clean)
        .write_image(&rgb(32, 16), 32, 16, ExtendedColorType::Rgb8)
        .unwrap();
    let mut dirty = clean.clone();
    dirty.extend_from_slice(b"EXIF\x07\0\0\0Exif\0\0G\0");
    let size = (dirty.len() - 8) as u32;
    dirty[4..8].copy_from_slice(&size.to_le_bytes());
    let report = process_data_url(&url("image/webp", &dirty), &policy()).unwrap();
    assert!(report.stripped);
    assert_eq!(bytes_of(&report.replacement.unwrap()), clean);
}

#[test]
fn gif_over_budget_becomes_jpeg_and_bmp_within_passes() {
    let mut gif = Vec::new();
    image::codecs::gif::GifEncoder::new(&mut gif)
        .encode(&rgb(200, 100), 200, 100, ExtendedColorType::Rgb8)
        .unwrap();
    let small = ImagePolicy {
        max_image_pixels: 5_000,
        ..policy()
    };
    let report = process_data_url(&url("image/gif", &gif), &small).unwrap();
    assert!(report.resized);
    assert!(report.replacement.unwrap().starts_with("data:image/jpeg;"));

    let mut bmp = Vec::new();
    image::codecs::bmp::BmpEncoder::new(&mut bmp)
        .encode(&rgb(20, 10), 20, 10, ExtendedColorType::Rgb8)
        .unwrap();
    let report = process_data_url(&url("image/bmp", &bmp), &policy()).unwrap();
    assert_eq!(report.replacement, None);
    assert_eq!((report.width, report.height), (20, 10));
}

#[test]
fn heic_is_refused_while_stripping_and_passes_otherwise() {
    let mut heic = 24u32.to_be_bytes().to_vec();
    heic.extend_from_slice(b"ftypheic\0\0\0\0mif1heic");
    heic.extend_from_slice(&[0; 64]);
    // Its GPS cannot be removed here, so it does not leave while stripping is on.
    let err = process_data_url(&url("image/heif", &heic), &policy()).unwrap_err();
    assert!(
        matches!(err, MediaError::CannotStrip(ImageFormat::Heic)),
        "{err}"
    );
    let keep = ImagePolicy {
        strip_metadata: false,
        ..policy()
    };
    let report = process_data_url(&url("image/heif", &heic), &keep).unwrap();
    assert_eq!(report.format, ImageFormat::Heic);
    assert_eq!(report.replacement, None);
    assert_eq!(
        (report.width, report.tokens_before, report.tokens_after),
        (0, 0, 0)
    );
}

#[test]
fn refusals_name_the_problem() {
    let p = policy();
    let small_png = png(8, 8, ExtendedColorType::Rgb8);
    // A wrong label on a valid image is corrected, not refused (DashScope reads the bytes).
    let relabelled = process_data_url(&url("image/jpeg", &small_png), &p).unwrap();
    assert_eq!(relabelled.format, ImageFormat::Png);
    assert_eq!(relabelled.relabelled_from.as_deref(), Some("image/jpeg"));
    assert_eq!(
        relabelled.replacement,
        Some(url("image/png", &small_png)),
        "the same bytes under their true label"
    );

    let mut truncated = url("image/png", &small_png);
    truncated.truncate(truncated.len() - 3);
    let err = process_data_url(&truncated, &p).unwrap_err();
    assert!(matches!(err, MediaError::InvalidBase64(_)), "{err}");

    let cut = url("image/png", &small_png[..small_png.len() - 12]); // IEND gone
    let err = process_data_url(&cut, &p).unwrap_err();
    assert!(matches!(err, MediaError::Malformed { .. }), "{err}");

    let tiny = ImagePolicy {
        max_image_bytes: 50,
        ..policy()
    };
    let err = process_data_url(&url("image/png", &small_png), &tiny).unwrap_err();
    assert!(
        matches!(err, MediaError::TooLarge { limit: 50, .. }),
        "{err}"
    );

    let strict = ImagePolicy {
        reencode: false,
        max_image_pixels: 50,
        ..policy()
    };
    let err = process_data_url(&url("image/png", &small_png), &strict).unwrap_err();
    assert_eq!(
        err.to_string(),
        "image is 8x8 = 0.0 MP, over the 0.0 MP budget and reencode is off"
    );

    let bomb = ImagePolicy {
        max_image_pixels: 10,
        max_decode_pixels: 50,
        ..policy()
    };
    let err = process_data_url(&url("image/png", &small_png), &bomb).unwrap_err();
    assert!(matches!(err, MediaError::TooManyPixels { .. }), "{err}");

    assert_eq!(
        process_data_url("https://example.com/cat.jpg", &p),
        Err(MediaError::NotDataUrl)
    );
    assert_eq!(
        process_data_url("data:text/plain;base64,aGVsbG8=", &p)
            .unwrap_err()
            .to_string(),
        "the data URL is text/plain, not an image"
    );
    assert_eq!(
        process_data_url("data:image/tiff;base64,SUkqAA==", &p)
            .unwrap_err()
            .to_string(),
        "unsupported image type image/tiff"
    );
    let err = process_data_url("data:image/png;base64,aGVsbG8gd29ybGQ=", &p).unwrap_err();
    assert_eq!(
        err.to_string(),
        "declared image/png but the bytes are not a supported image"
    );
}

#[test]
fn cut_or_corrupted_files_are_refused_or_passed_never_panic() {
    let mut exif_jpeg = splice_after_soi(&jpeg(64, 48), &exif_app1(Some(3)));
    exif_jpeg.extend_from_slice(b"trailer");
    let mut webp = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut webp)
        .write_image(&rgb(16, 8), 16, 8, ExtendedColorType::Rgb8)
        .unwrap();
    let files = [exif_jpeg, png(40, 30, ExtendedColorType::Rgba8), webp];
    // A tiny budget sends every readable header on to the decoders as well.
    let decode_all = ImagePolicy {
        max_image_pixels: 784,
        ..policy()
    };
    for file in &files {
        for cut in 0..file.len() {
            let Some(format) = sniff(&file[..cut]) else {
                continue;
            };
            let _ = process_image(&file[..cut], format, &policy());
            let _ = process_image(&file[..cut], format, &decode_all);
        }
        for i in (0..file.len()).step_by(7) {
            let mut bad = file.clone();
            bad[i] ^= 0x5A;
            if let Some(format) = sniff(&bad) {
                let _ = process_image(&bad, format, &decode_all);
            }
        }
    }
}

#[test]
fn jpeg_dimensions_from_the_frame_header_match_the_decoder() {
    for (width, height) in [(1, 1), (17, 5), (640, 480), (301, 1203)] {
        let file = jpeg(width, height);
        assert_eq!(super::jpeg::dimensions(&file), Some((width, height)));
        let decoded = image::ImageReader::with_format(Cursor::new(&file), image::ImageFormat::Jpeg)
            .into_dimensions()
            .unwrap();
        assert_eq!(decoded, (width, height));
    }
    // No frame header before the scan, or cut inside it: the decoder has the last word.
    let file = jpeg(8, 8);
    let sof = file.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    assert_eq!(super::jpeg::dimensions(&file[..sof + 6]), None);
    assert_eq!(
        super::jpeg::dimensions(&[0xFF, 0xD8, 0xFF, 0xDA, 0, 2]),
        None
    );
}

#[test]
fn gif_comments_and_xmp_do_not_leave() {
    let mut gif = b"GIF89a\x01\0\x01\0\x80\0\0\0\0\0\xff\xff\xff".to_vec();
    gif.extend_from_slice(b"\x21\xfe\x0eGPS 31.2,121.4\0");
    gif.extend_from_slice(b"\x21\xff\x0bXMP DataXMP\x13<x:gps>31.2</x:gps>\0");
    gif.extend_from_slice(b"\x2c\0\0\0\0\x01\0\x01\0\0\x02\x02\x44\x01\0\x3b");
    let report = process_data_url(&url("image/gif", &gif), &policy()).unwrap();
    assert!(report.stripped);
    let out = bytes_of(&report.replacement.unwrap());
    assert!(
        !out.windows(3).any(|w| w == b"GPS" || w == b"gps"),
        "{out:?}"
    );
    assert!(image::load_from_memory(&out).is_ok());
}

#[test]
fn a_broken_jpeg_over_budget_gets_the_image_paths_answer() {
    let good = jpeg(1600, 1200);
    let p = policy();
    assert!(
        u64::from(1600u32 * 1200) > p.max_image_pixels,
        "over budget"
    );
    let find = |marker: u8| good.windows(2).position(|w| w == [0xFF, marker]).unwrap();
    let (sof, dqt, sos) = (find(0xC0), find(0xDB), find(0xDA));
    let mut sampling = good.clone();
    sampling[sof + 11] = 0x00; // the first component's H/V sampling factors
    let dqt_len = usize::from(u16::from_be_bytes([good[dqt + 2], good[dqt + 3]]));
    let no_tables = [&good[..dqt], &good[dqt + 2 + dqt_len..]].concat();
    let mut huffman = good.clone();
    huffman[sos + 6] = 0x33; // the first component's DC/AC tables: 3, never defined
    // The marker walk passes them all (the markers are intact); both decoders refuse them, and
    // the client hears the `image` crate's reason, as before libjpeg.
    for (name, file) in [
        ("sampling", sampling),
        ("no DQT", no_tables),
        ("huffman", huffman),
    ] {
        let err = process_data_url(&url("image/jpeg", &file), &p).unwrap_err();
        let pure = super::resize::downscale_pure(
            &file,
            ImageFormat::Jpeg,
            p.max_image_pixels,
            p.jpeg_quality,
            p.max_decode_pixels,
        )
        .unwrap_err();
        assert!(matches!(err, MediaError::Decode(_)), "{name}: {err}");
        assert!(err.is_client_error(), "{name}");
        assert_eq!(err, pure, "{name}");
    }
    // Entropy data damaged mid-scan: libjpeg warns and this path declines; the `image`
    // crate's decoder is lenient and its picture is what is sent.
    let mut damaged = good.clone();
    let mid = (sos + good.len()) / 2;
    for pair in damaged[mid..mid + 64].chunks_exact_mut(2) {
        pair.copy_from_slice(&[0xFF, 0x00]);
    }
    let report = process_data_url(&url("image/jpeg", &damaged), &p).unwrap();
    let pure = super::resize::downscale_pure(
        &damaged,
        ImageFormat::Jpeg,
        p.max_image_pixels,
        p.jpeg_quality,
        p.max_decode_pixels,
    )
    .unwrap();
    assert_eq!(bytes_of(&report.replacement.unwrap()), pure.bytes);
}

#[test]
fn a_jpeg_just_over_budget_is_decoded_by_the_image_crate_not_at_full_size_by_libjpeg() {
    // 1200x1000 against 1 MP: the target (about 1095x912) is above 7/8 of the frame, so no
    // DCT-domain reduction applies and the `image` path decodes it, byte for byte the same.
    let mut rng = fastrand::Rng::with_seed(5);
    let rgb: Vec<u8> = (0..1200 * 1000 * 3).map(|_| rng.u8(60..200)).collect();
    let mut data = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut data, 90)
        .write_image(&rgb, 1200, 1000, ExtendedColorType::Rgb8)
        .unwrap();
    let via = resize::downscale(&data, ImageFormat::Jpeg, 1_000_000, 85, 25_000_000).unwrap();
    let pure = resize::downscale_pure(&data, ImageFormat::Jpeg, 1_000_000, 85, 25_000_000).unwrap();
    assert_eq!((via.width, via.height), (pure.width, pure.height));
    assert!(via.bytes == pure.bytes, "the image crate's decode");
}
