//! libjpeg-turbo for the JPEG over-budget path: a camera frame is decoded at the scale the
//! budget needs, in the DCT domain (1/2, 1/4 or 1/8: each 8x8 block is inverse-transformed
//! straight to 4x4, 2x2 or 1x1), so the full-resolution pixels that the resize would throw
//! away are never made; and the result is encoded with its SIMD encoder (about a tenth of the
//! pure-Rust encoder's time). Anything it cannot take (CMYK, an odd sampling, a file it
//! refuses) goes back to the pure-Rust path, which also gives the error message.
//!
//! The Debian library (2.1) is the one linked: `turbojpeg` 0.5 is the last release of the
//! crate that binds the 2.x API, where the scale is chosen by the output size passed to
//! `tjDecompress2` (the largest scaling factor whose result fits in it).

use turbojpeg::{Colorspace, Compressor, Decompressor, Image, PixelFormat, Subsamp};

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
/// (already held against the decode ceiling): a file that says otherwise to libjpeg-turbo is
/// left to the other path. `None` when libjpeg-turbo cannot or will not decode it.
pub(crate) fn decode_scaled(data: &[u8], expected: (u32, u32), denom: u32) -> Option<Scaled> {
    let mut decompressor = Decompressor::new().ok()?;
    let header = decompressor.read_header(data).ok()?;
    if (header.width, header.height) != (expected.0 as usize, expected.1 as usize) {
        return None;
    }
    let gray = match header.colorspace {
        Colorspace::Gray => true,
        Colorspace::YCbCr | Colorspace::RGB => false,
        // CMYK and YCCK: converted by the pure-Rust decoder, as before.
        _ => return None,
    };
    let d = denom as usize;
    // TJSCALED: the scaled size rounds up.
    let (width, height) = (header.width.div_ceil(d), header.height.div_ceil(d));
    let (channels, format) = match gray {
        true => (1, PixelFormat::GRAY),
        false => (3, PixelFormat::RGB),
    };
    let mut pixels = vec![0u8; width.checked_mul(height)?.checked_mul(channels)?];
    let image = Image {
        pixels: &mut pixels[..],
        width,
        pitch: width * channels,
        height,
        format,
    };
    decompressor.decompress(data, image).ok()?;
    Some(Scaled {
        pixels,
        width: u32::try_from(width).ok()?,
        height: u32::try_from(height).ok()?,
        gray,
    })
}

/// Encodes RGB (or grey) pixels as a baseline JPEG, 4:2:0 like a camera's. `None` on failure
/// (the caller then uses the pure-Rust encoder).
pub(crate) fn encode(pixels: &[u8], width: u32, height: u32, gray: bool, quality: u8) -> Option<Vec<u8>> {
    let mut compressor = Compressor::new().ok()?;
    compressor.set_quality(i32::from(quality.clamp(1, 100)));
    let (channels, format, subsamp) = match gray {
        true => (1, PixelFormat::GRAY, Subsamp::Gray),
        false => (3, PixelFormat::RGB, Subsamp::Sub2x2),
    };
    compressor.set_subsamp(subsamp);
    let (width, height) = (width as usize, height as usize);
    if pixels.len() != width * height * channels {
        return None;
    }
    compressor
        .compress_to_vec(Image {
            pixels,
            width,
            pitch: width * channels,
            height,
            format,
        })
        .ok()
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
        tiff.extend_from_slice(&[0, 0, 0x88, 0x25, 0, 4, 0, 0, 0, 1, 0, 0, 0, 0x26, 0, 0, 0, 0]);
        tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // an empty GPS IFD
        let mut seg = vec![0xFF, 0xE1];
        seg.extend_from_slice(&((2 + 6 + tiff.len()) as u16).to_be_bytes());
        seg.extend_from_slice(b"Exif\0\0");
        seg.extend_from_slice(&tiff);
        [&jpeg[..2], &seg[..], &jpeg[2..]].concat()
    }

    fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
        assert_eq!(a.len(), b.len());
        let sum: u64 = a.iter().zip(b).map(|(x, y)| u64::from(x.abs_diff(*y))).sum();
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
            let upright = if turned { (height, width) } else { (width, height) };
            let target = fit_to_budget(upright.0, upright.1, budget);
            let stored = if turned { (target.1, target.0) } else { target };
            assert!(denominator(width, height, stored.0, stored.1) > 1, "a scaled decode");

            let fast = downscale(&data, ImageFormat::Jpeg, budget, 90, 25_000_000).unwrap();
            let pure = downscale_pure(&data, ImageFormat::Jpeg, budget, 90, 25_000_000).unwrap();
            assert_eq!((fast.width, fast.height), target, "{width}x{height} o{orientation}");
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
            assert!(diff < 4.0, "the same picture, same way up: mean diff {diff}");
        }
    }
}
