use image::codecs::jpeg::JpegEncoder;
use image::{ExtendedColorType, ImageEncoder};

use super::super::resize::{downscale, downscale_pure};
use super::super::{ImageFormat, fit_to_budget};
use super::*;

/// A picture with a different gradient on each axis, so a wrong turn or flip shows.
fn picture(width: u32, height: u32, color: ExtendedColorType) -> Vec<u8> {
    let mut rgb = Vec::new();
    for y in 0..height {
        for x in 0..width {
            let (r, g) = ((x * 255 / width) as u8, (y * 255 / height) as u8);
            match color {
                ExtendedColorType::L8 => rgb.push(r / 2 + g / 2),
                _ => rgb.extend_from_slice(&[r, g, 255 - r]),
            }
        }
    }
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, 90)
        .write_image(&rgb, width, height, color)
        .unwrap();
    out
}

/// APP1 Exif, big-endian, IFD0 = {Orientation, a GPS IFD pointer}, right after SOI.
fn with_exif(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0\x2A\0\0\0\x08\0\x02".to_vec();
    tiff.extend_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1]);
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[
        0, 0, 0x88, 0x25, 0, 4, 0, 0, 0, 1, 0, 0, 0, 0x26, 0, 0, 0, 0,
    ]);
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // an empty GPS IFD
    let mut seg = vec![0xFF, 0xE1];
    seg.extend_from_slice(&((2 + 6 + tiff.len()) as u16).to_be_bytes());
    seg.extend_from_slice(b"Exif\0\0");
    seg.extend_from_slice(&tiff);
    [&jpeg[..2], &seg[..], &jpeg[2..]].concat()
}

/// A `max_memory` no test image comes near.
const MEMORY: u64 = 256 << 20;

/// libjpeg's output size at M/8: jdiv_round_up(side * M, 8).
fn at_eighths((width, height): (u32, u32), m: u32) -> (u32, u32) {
    ((width * m).div_ceil(8), (height * m).div_ceil(8))
}

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let sum: u64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    sum as f64 / a.len() as f64
}

/// Gradients with a set of bars, so a wrong turn, shift or colour shows.
fn pixels(width: u32, height: u32, channels: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for y in 0..height {
        for x in 0..width {
            let (r, g) = ((x * 255 / width) as u8, (y * 255 / height) as u8);
            let bar = if (x / 64) % 2 == 0 { 40 } else { 0 };
            let rgb = [r, g.saturating_add(bar), 255 - r];
            match channels {
                1 => out.push((r / 2 + g / 2).saturating_add(bar)),
                3 => out.extend_from_slice(&rgb),
                _ => out.extend_from_slice(&[rgb[0], rgb[1], rgb[2], 255 - bar]),
            }
        }
    }
    out
}

/// `jpeg-encoder` at q85 with `setup` applied (sampling, progressive, restarts).
fn encoded(
    (width, height): (u32, u32),
    color: jpeg_encoder::ColorType,
    setup: impl FnOnce(&mut jpeg_encoder::Encoder<&mut Vec<u8>>),
) -> Vec<u8> {
    let channels = match color {
        jpeg_encoder::ColorType::Luma => 1,
        jpeg_encoder::ColorType::Rgb => 3,
        _ => 4,
    };
    let mut out = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, 85);
    setup(&mut encoder);
    encoder
        .encode(
            &pixels(width, height, channels),
            width as u16,
            height as u16,
            color,
        )
        .unwrap();
    out
}

fn sampling(
    factor: jpeg_encoder::SamplingFactor,
) -> impl FnOnce(&mut jpeg_encoder::Encoder<&mut Vec<u8>>) {
    move |e| e.set_sampling_factor(factor)
}

/// The scan data of a baseline file: from after the SOS header to EOI.
fn scan_range(jpeg: &[u8]) -> std::ops::Range<usize> {
    let sos = jpeg.windows(2).rposition(|w| w == [0xFF, 0xDA]).unwrap();
    let len = usize::from(u16::from_be_bytes([jpeg[sos + 2], jpeg[sos + 3]]));
    sos + 2 + len..jpeg.len() - 2
}

#[test]
fn the_reduction_stays_above_the_target() {
    assert_eq!(eighths(4032, 3024, 1148, 868), 3, "1512x1134");
    assert_eq!(eighths(4032, 3024, 1148, 840), 3);
    assert_eq!(eighths(4032, 3024, 504, 378), 1);
    assert_eq!(eighths(4032, 3024, 505, 378), 2);
    assert_eq!(eighths(4032, 3024, 1008, 756), 2);
    assert_eq!(eighths(4032, 3024, 1009, 756), 3);
    assert_eq!(
        eighths(4032, 3024, 2016, 1513),
        5,
        "1512 < 1513 at 4/8: 2520x1890"
    );
    assert_eq!(eighths(1000, 1000, 600, 600), 5, "625");
    assert_eq!(eighths(1000, 1000, 876, 876), 8, "875 at 7/8 is one short");
    // libjpeg rounds up: 1203 * 3 / 8 = 451.1 -> 452.
    assert_eq!(eighths(1203, 901, 452, 338), 3);
    assert_eq!(eighths(1203, 901, 453, 338), 4);
    assert_eq!(eighths(65535, 65535, 65535, 1), 8);
}

#[test]
fn scaled_decode_gives_the_full_decodes_picture_upright_without_metadata() {
    let budget = 60_000;
    for (width, height, orientation, color) in [
        (1600, 1200, 1, ExtendedColorType::Rgb8),
        (1600, 1200, 6, ExtendedColorType::Rgb8),
        (1203, 901, 3, ExtendedColorType::Rgb8),
        (1200, 1600, 8, ExtendedColorType::L8),
    ] {
        let data = with_exif(&picture(width, height, color), orientation);
        let turned = orientation >= 5;
        let upright = if turned {
            (height, width)
        } else {
            (width, height)
        };
        let target = fit_to_budget(upright.0, upright.1, budget);
        let stored = if turned { (target.1, target.0) } else { target };
        let m = eighths(width, height, stored.0, stored.1);
        assert!(m < 8, "a scaled decode");
        let decoded = decode_scaled(&data, (width, height), m, MEMORY).unwrap();
        assert_eq!(
            (decoded.width, decoded.height),
            at_eighths((width, height), m),
            "decoded in the DCT domain at {m}/8"
        );
        assert_eq!(decoded.gray, color == ExtendedColorType::L8);

        let fast = downscale(&data, ImageFormat::Jpeg, budget, 90, 25_000_000).unwrap();
        let pure = downscale_pure(&data, ImageFormat::Jpeg, budget, 90, 25_000_000).unwrap();
        assert_eq!(
            (fast.width, fast.height),
            target,
            "{width}x{height} o{orientation}"
        );
        assert_eq!((pure.width, pure.height), target);
        assert_eq!(fast.format, ImageFormat::Jpeg);
        for needle in [&b"Exif"[..], &[0x88, 0x25]] {
            assert!(!fast.bytes.windows(needle.len()).any(|w| w == needle));
        }
        let a = image::load_from_memory(&fast.bytes).unwrap();
        let b = image::load_from_memory(&pure.bytes).unwrap();
        assert_eq!((a.width(), a.height()), target);
        assert_eq!(a.color(), b.color(), "grey stays grey");
        let diff = mean_abs_diff(a.as_bytes(), b.as_bytes());
        assert!(
            diff < 4.0,
            "the same picture, same way up: mean diff {diff}"
        );
    }
}

#[test]
fn subsampled_grey_progressive_and_restart_jpegs_decode_scaled_like_a_full_decode() {
    use jpeg_encoder::{ColorType, SamplingFactor};
    type Setup = Box<dyn FnOnce(&mut jpeg_encoder::Encoder<&mut Vec<u8>>)>;
    let cases: Vec<(&str, (u32, u32), ColorType, Setup)> = vec![
        (
            "4:2:0",
            (1600, 1200),
            ColorType::Rgb,
            Box::new(sampling(SamplingFactor::F_2_2)),
        ),
        (
            "4:2:2, odd size",
            (1203, 901),
            ColorType::Rgb,
            Box::new(sampling(SamplingFactor::F_2_1)),
        ),
        (
            "4:4:4",
            (1200, 1600),
            ColorType::Rgb,
            Box::new(sampling(SamplingFactor::F_1_1)),
        ),
        ("grey", (1600, 1200), ColorType::Luma, Box::new(|_| {})),
        (
            "progressive 4:2:0",
            (1600, 1200),
            ColorType::Rgb,
            Box::new(|e| {
                e.set_sampling_factor(SamplingFactor::F_2_2);
                e.set_progressive(true);
            }),
        ),
        (
            "restart every 3 MCUs",
            (1203, 901),
            ColorType::Rgb,
            Box::new(|e| e.set_restart_interval(3)),
        ),
        (
            "progressive with restarts",
            (1600, 1200),
            ColorType::Rgb,
            Box::new(|e| {
                e.set_progressive(true);
                e.set_restart_interval(7);
            }),
        ),
    ];
    let mut scales = Vec::new();
    for (name, (width, height), color, setup) in cases {
        let data = encoded((width, height), color, setup);
        // 60_000 pixels: 2/8; 200_000: 3/8 (or 4/8), whose 3x3 IDCT (6x6 for 4:2:0
        // chroma) is not a power-of-two reduction.
        for budget in [60_000, 200_000] {
            let target = fit_to_budget(width, height, budget);
            let m = eighths(width, height, target.0, target.1);
            scales.push(m);
            let decoded = decode_scaled(&data, (width, height), m, MEMORY)
                .unwrap_or_else(|| panic!("{name}: decoded scaled"));
            assert_eq!(
                (decoded.width, decoded.height),
                at_eighths((width, height), m),
                "{name}"
            );
            assert_eq!(decoded.gray, color == ColorType::Luma, "{name}");
            let channels = if decoded.gray { 1 } else { 3 };
            assert_eq!(
                decoded.pixels.len(),
                (decoded.width * decoded.height) as usize * channels
            );

            let fast = downscale(&data, ImageFormat::Jpeg, budget, 90, 25_000_000).unwrap();
            let pure = downscale_pure(&data, ImageFormat::Jpeg, budget, 90, 25_000_000).unwrap();
            assert_eq!((fast.width, fast.height), target, "{name}");
            assert_eq!((pure.width, pure.height), target, "{name}");
            let a = image::load_from_memory(&fast.bytes).unwrap();
            let b = image::load_from_memory(&pure.bytes).unwrap();
            assert_eq!(a.color(), b.color(), "{name}: grey stays grey");
            let diff = mean_abs_diff(a.as_bytes(), b.as_bytes());
            assert!(diff < 2.5, "{name} at {m}/8: mean diff {diff}");
        }
    }
    assert!(scales.contains(&2) && scales.contains(&3), "{scales:?}");
}

#[test]
fn cmyk_and_a_header_that_disagrees_go_to_the_image_path() {
    use jpeg_encoder::ColorType;
    let (width, height) = (640, 480);
    for color in [ColorType::Cmyk, ColorType::Ycck] {
        let data = encoded((width, height), color, |_| {});
        assert!(decode_scaled(&data, (width, height), 2, MEMORY).is_none());
        // What the client gets is the `image` crate's answer, whatever it is.
        let fast = downscale(&data, ImageFormat::Jpeg, 60_000, 85, 25_000_000);
        let pure = downscale_pure(&data, ImageFormat::Jpeg, 60_000, 85, 25_000_000);
        match (fast, pure) {
            (Ok(a), Ok(b)) => assert_eq!(a.bytes, b.bytes),
            (Err(a), Err(b)) => assert_eq!(a, b),
            (a, b) => panic!("{a:?} vs {b:?}"),
        }
    }
    let data = encoded((width, height), ColorType::Rgb, |_| {});
    assert!(decode_scaled(&data, (width, height), 2, MEMORY).is_some());
    // 12-bit samples and arithmetic coding: not in this build of libjpeg.
    let sof = data.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    let mut twelve = data.clone();
    twelve[sof + 4] = 12;
    let mut arithmetic = data.clone();
    arithmetic[sof + 1] = 0xC9;
    for other in [twelve, arithmetic] {
        assert!(decode_scaled(&other, (width, height), 2, MEMORY).is_none());
    }
    for wrong in [(width + 1, height), (width, height - 1), (height, width)] {
        assert!(
            decode_scaled(&data, wrong, 2, MEMORY).is_none(),
            "{wrong:?}"
        );
    }
    assert!(decode_scaled(&data, (width, height), 0, MEMORY).is_none());
    assert!(decode_scaled(&data, (width, height), 9, MEMORY).is_none());
}

#[test]
fn truncated_corrupted_or_garbage_jpegs_are_declined_without_a_panic() {
    use jpeg_encoder::ColorType;
    let size = (320, 240);
    let good = encoded(size, ColorType::Rgb, |_| {});
    assert!(decode_scaled(&good, size, 3, MEMORY).is_some());
    let scan = scan_range(&good);

    let mut broken: Vec<(String, Vec<u8>)> = Vec::new();
    for cut in [
        scan.start + 10,
        (scan.start + scan.end) / 2,
        scan.end - 1,
        good.len() - 2,
    ] {
        broken.push((format!("cut at {cut}"), good[..cut].to_vec()));
    }
    // 0xFF 0x00 is a stuffed 0xFF: a run of one bits, which no Huffman code is. libjpeg
    // warns ("corrupt JPEG data") and would fill the rest of the picture in grey.
    let mut ones = good.clone();
    let mid = (scan.start + scan.end) / 2;
    for pair in ones[mid..mid + 64].chunks_exact_mut(2) {
        pair.copy_from_slice(&[0xFF, 0x00]);
    }
    broken.push(("all-ones entropy data".into(), ones));
    // A marker in the middle of the scan: the rest of the scan is missing.
    let mut marker = good.clone();
    marker[mid..mid + 2].copy_from_slice(&[0xFF, 0xD9]);
    broken.push(("EOI inside the scan".into(), marker));
    let mut rng = fastrand::Rng::with_seed(3);
    let garbage: Vec<u8> = (0..4096).map(|_| rng.u8(..)).collect();
    broken.push((
        "garbage after SOI".into(),
        [&[0xFF, 0xD8][..], &garbage].concat(),
    ));
    broken.push((
        "headers, then garbage".into(),
        [&good[..scan.start], &garbage].concat(),
    ));
    broken.push(("SOI only".into(), vec![0xFF, 0xD8]));
    broken.push(("empty".into(), Vec::new()));
    // Restart markers out of order: libjpeg resynchronises with a warning.
    let restarts = encoded(size, ColorType::Rgb, |e| e.set_restart_interval(2));
    let rst = restarts.windows(2).position(|w| w == [0xFF, 0xD0]).unwrap();
    let mut shuffled = restarts.clone();
    shuffled[rst + 1] = 0xD5;
    broken.push(("restart marker out of order".into(), shuffled));
    // A header with an impossible sampling factor.
    let sof = good.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    let mut sampling = good.clone();
    sampling[sof + 11] = 0x00; // the first component's H/V factors
    broken.push(("zero sampling factor".into(), sampling));

    for (name, data) in broken {
        for m in [1, 3, 8] {
            assert!(
                decode_scaled(&data, size, m, MEMORY).is_none(),
                "{name} at {m}/8"
            );
        }
    }
}

#[test]
fn too_many_progressive_scans_or_too_much_memory_is_declined() {
    use jpeg_encoder::ColorType;
    let size = (800, 600);
    // 10 scans a component, then the last one again 80 times: 110 scans. Resending an
    // AC band is no progression error (libjpeg does not even warn), so only a limit on
    // scans stops a file of many such tiny ones.
    let ten = encoded(size, ColorType::Rgb, |e| e.set_progressive_scans(10));
    assert!(decode_scaled(&ten, size, 2, MEMORY).is_some());
    let last = ten.windows(2).rposition(|w| w == [0xFF, 0xDA]).unwrap();
    let again = &ten[last..ten.len() - 2];
    let mut many = ten[..ten.len() - 2].to_vec();
    (0..80).for_each(|_| many.extend_from_slice(again));
    many.extend_from_slice(&[0xFF, 0xD9]);
    assert!(
        decode(&many, size, 2, MEMORY, 200).is_some(),
        "a valid file"
    );
    assert!(decode_scaled(&many, size, 2, MEMORY).is_none());
    // The `image` crate's decoder has the same limit: the client hears its refusal.
    let err = downscale(&many, ImageFormat::Jpeg, 60_000, 85, 25_000_000).unwrap_err();
    assert!(err.to_string().contains("Too many scans"), "{err}");
    assert!(decode(&ten, size, 2, MEMORY, 30).is_some(), "30 scans");
    assert!(
        decode(&ten, size, 2, MEMORY, 29).is_none(),
        "one scan past the limit"
    );

    // A progressive file keeps every coefficient until the last scan: 800x600 4:4:4 is
    // 2.9 MB of them.
    let progressive = encoded(size, ColorType::Rgb, |e| e.set_progressive(true));
    assert!(decode_scaled(&progressive, size, 2, 4 << 20).is_some());
    assert!(decode_scaled(&progressive, size, 2, 1 << 20).is_none());
    // A baseline file needs no whole-image buffer.
    let baseline = encoded(size, ColorType::Rgb, |_| {});
    assert!(decode_scaled(&baseline, size, 2, 1 << 20).is_some());
}

#[test]
fn random_damage_never_escapes_the_decoder() {
    use jpeg_encoder::{ColorType, SamplingFactor};
    let size = (96, 72);
    let files = [
        encoded(size, ColorType::Rgb, sampling(SamplingFactor::F_2_2)),
        encoded(size, ColorType::Luma, |_| {}),
        encoded(size, ColorType::Rgb, |e| {
            e.set_progressive(true);
            e.set_restart_interval(2);
        }),
    ];
    let cases: usize = std::env::var("DASHGATE_SCALED_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut rng = fastrand::Rng::with_seed(11);
    let mut decoded = 0;
    for _ in 0..cases {
        let mut data = files[rng.usize(..files.len())].clone();
        for _ in 0..rng.usize(1..6) {
            let i = rng.usize(..data.len());
            data[i] = rng.u8(..);
        }
        if rng.bool() {
            data.truncate(rng.usize(..=data.len()));
        }
        if let Some(out) = decode_scaled(&data, size, rng.u32(1..=8), MEMORY) {
            let channels = if out.gray { 1 } else { 3 };
            assert_eq!(
                out.pixels.len(),
                (out.width * out.height) as usize * channels
            );
            decoded += 1;
        }
    }
    assert!(
        decoded > 0 && decoded < cases,
        "{decoded} of {cases} decoded"
    );
}
