//! The JPEG over-budget path's decode: a camera frame is decoded at the scale the budget
//! needs, in the DCT domain (1/2, 1/4 or 1/8: each 8x8 block is inverse-transformed straight
//! to 4x4, 2x2 or 1x1), so the full-resolution pixels that the resize would throw away are
//! never made. Pure Rust (`jpeg-decoder`), so the gateway builds without a system library.
//! Anything it does not take (CMYK, 16-bit, a size that disagrees with the header) goes back
//! to the `image` crate's path, which also gives the error message.

use jpeg_decoder::{Decoder, PixelFormat};

/// Pixels decoded from a JPEG at a reduced scale, stored orientation (Exif not applied).
pub(crate) struct Scaled {
    pub pixels: Vec<u8>,
    pub width: u32,
    pub height: u32,
    /// One channel (grey) or three (RGB).
    pub gray: bool,
}

/// The largest reduction 1/8, 1/4, 1/2 (or none) that keeps both sides at least the target's:
/// the resize that follows only ever shrinks, so no detail the budget allows is lost.
pub(crate) fn denominator(width: u32, height: u32, min_width: u32, min_height: u32) -> u32 {
    [8, 4, 2]
        .into_iter()
        .find(|d| width.div_ceil(*d) >= min_width && height.div_ceil(*d) >= min_height)
        .unwrap_or(1)
}

/// Decodes `data` at 1/`denom` of its size. `expected` is the size its frame header gave
/// (already held against the decode ceiling): a file whose decoder reads another size is left
/// to the other path. `None` when this decoder cannot or will not decode it.
pub(crate) fn decode_scaled(data: &[u8], expected: (u32, u32), denom: u32) -> Option<Scaled> {
    let mut decoder = Decoder::new(data);
    decoder.read_info().ok()?;
    let info = decoder.info()?;
    if (u32::from(info.width), u32::from(info.height)) != expected {
        return None;
    }
    let gray = match info.pixel_format {
        PixelFormat::L8 => true,
        PixelFormat::RGB24 => false,
        // 16-bit and CMYK: converted by the `image` crate's decoder, as before.
        _ => return None,
    };
    // The smallest DCT scale whose output is at least this size.
    let want = |side: u16| u16::try_from(u32::from(side).div_ceil(denom)).ok();
    let (width, height) = decoder.scale(want(info.width)?, want(info.height)?).ok()?;
    let channels = if gray { 1 } else { 3 };
    let pixels = decoder.decode().ok()?;
    if pixels.len() != usize::from(width) * usize::from(height) * channels {
        return None;
    }
    Some(Scaled {
        pixels,
        width: u32::from(width),
        height: u32::from(height),
        gray,
    })
}

#[cfg(test)]
mod tests {
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

    fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
        assert_eq!(a.len(), b.len());
        let sum: u64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| u64::from(x.abs_diff(*y)))
            .sum();
        sum as f64 / a.len() as f64
    }

    #[test]
    fn the_reduction_stays_above_the_target() {
        assert_eq!(denominator(4032, 3024, 1148, 868), 2);
        assert_eq!(denominator(4032, 3024, 504, 378), 8);
        assert_eq!(denominator(4032, 3024, 1008, 756), 4);
        assert_eq!(denominator(4032, 3024, 1009, 756), 2);
        assert_eq!(denominator(1000, 1000, 600, 600), 1);
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
            assert!(
                denominator(width, height, stored.0, stored.1) > 1,
                "a scaled decode"
            );

            let denom = denominator(width, height, stored.0, stored.1);
            let decoded = decode_scaled(&data, (width, height), denom).unwrap();
            assert_eq!(
                (decoded.width, decoded.height),
                (width.div_ceil(denom), height.div_ceil(denom)),
                "decoded in the DCT domain at 1/{denom}"
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
}
