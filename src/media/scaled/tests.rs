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

/// What the scaled decoder declines, and what it survives.
mod declined;
