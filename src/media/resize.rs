//! The over-budget path: decode, turn upright, downscale, re-encode. Re-encoding writes only
//! pixels, so no metadata survives it. JPEGs are decoded by libjpeg-turbo at a reduced scale
//! in the DCT domain (see `scaled`); other formats, and JPEGs it does not take, through the
//! `image` crate.

use std::io::Cursor;

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::codecs::png::PngEncoder;
use image::metadata::Orientation;
use image::{DynamicImage, ExtendedColorType, ImageDecoder, ImageEncoder, ImageReader};

use super::error::MediaError;
use super::format::ImageFormat;
use super::tokens::fit_to_budget;
use super::{jpeg, scaled};

/// A re-encoded image and its size.
#[derive(Debug)]
pub(crate) struct Resized {
    pub bytes: Vec<u8>,
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
}

/// Decodes `data`, applies its Exif orientation (the orientation tag does not survive
/// re-encoding, so the pixels must be turned now or the model sees the frame sideways),
/// downscales to `fit_to_budget` and encodes JPEG at `quality`, or PNG when the result has
/// any transparent pixel.
pub(crate) fn downscale(
    data: &[u8],
    format: ImageFormat,
    max_pixels: u64,
    quality: u8,
    max_decode_pixels: u64,
) -> Result<Resized, MediaError> {
    if format == ImageFormat::Jpeg {
        if let Some(out) = downscale_jpeg(data, max_pixels, quality, max_decode_pixels)? {
            return Ok(out);
        }
    }
    downscale_pure(data, format, max_pixels, quality, max_decode_pixels)
}

/// [`downscale`] with the `image` crate's decoders: every format, full-resolution decode.
pub(crate) fn downscale_pure(
    data: &[u8],
    format: ImageFormat,
    max_pixels: u64,
    quality: u8,
    max_decode_pixels: u64,
) -> Result<Resized, MediaError> {
    let codec = format
        .codec()
        .ok_or_else(|| MediaError::Decode(format!("no {format} decoder")))?;
    let decode_err = |e: image::ImageError| MediaError::Decode(e.to_string());
    let mut reader = ImageReader::with_format(Cursor::new(data), codec);
    // The decoder's own ceiling, in case a container declares one size and decodes another:
    // the pixels allowed at four bytes each, plus room for the decoder's buffers.
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_alloc(max_decode_pixels));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(decode_err)?;
    // A broken orientation tag is not worth refusing the image over.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(decode_err)?;
    img.apply_orientation(orientation);

    let (width, height) = (img.width(), img.height());
    let (tw, th) = fit_to_budget(width, height, max_pixels);
    let (pixels, pixel_type) = if img.color().has_alpha() {
        (img.into_rgba8().into_raw(), PixelType::U8x4)
    } else if matches!(
        img,
        DynamicImage::ImageLuma8(_) | DynamicImage::ImageLuma16(_)
    ) {
        (img.into_luma8().into_raw(), PixelType::U8)
    } else {
        (img.into_rgb8().into_raw(), PixelType::U8x3)
    };
    resize_and_encode(width, height, pixels, pixel_type, (tw, th), quality)
}

/// What a decoder may allocate for an image of up to `max_decode_pixels`: four bytes a pixel,
/// plus room for its buffers.
fn max_alloc(max_decode_pixels: u64) -> u64 {
    max_decode_pixels.saturating_mul(4).saturating_add(64 << 20)
}

/// JPEG: decoded by libjpeg-turbo at the smallest DCT-domain scale M/8 that stays above the
/// target, turned upright, resized the rest of the way. `None`: not one the scaled decoder
/// takes, for the `image` crate's path.
fn downscale_jpeg(
    data: &[u8],
    max_pixels: u64,
    quality: u8,
    max_decode_pixels: u64,
) -> Result<Option<Resized>, MediaError> {
    let Some((width, height)) = jpeg::dimensions(data) else {
        return Ok(None);
    };
    let orientation = jpeg::orientation(data);
    let turned = matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    );
    // The target is of the upright picture, as on the pure-Rust path; the decode is of the
    // stored one.
    let upright = if turned {
        (height, width)
    } else {
        (width, height)
    };
    let target = fit_to_budget(upright.0, upright.1, max_pixels);
    let stored_target = if turned { (target.1, target.0) } else { target };
    let eighths = scaled::eighths(width, height, stored_target.0, stored_target.1);
    // No eighth to save (a frame just over budget): without SIMD, libjpeg's full-size decode
    // is slower than the `image` crate's (zune-jpeg; bench/frame_stages.rs at 12 MP: 138
    // against 88 ms), and the pixels are the same.
    if eighths == 8 {
        return Ok(None);
    }
    let max_memory = max_alloc(max_decode_pixels);
    let Some(scaled) = scaled::decode_scaled(data, (width, height), eighths, max_memory) else {
        return Ok(None);
    };
    let (w, h) = (scaled.width, scaled.height);
    let mut img = match scaled.gray {
        true => image::GrayImage::from_raw(w, h, scaled.pixels).map(DynamicImage::ImageLuma8),
        false => image::RgbImage::from_raw(w, h, scaled.pixels).map(DynamicImage::ImageRgb8),
    }
    .ok_or_else(|| MediaError::Decode("the decoded JPEG has the wrong size".into()))?;
    img.apply_orientation(orientation);
    let (w, h) = (img.width(), img.height());
    let pixel_type = match scaled.gray {
        true => PixelType::U8,
        false => PixelType::U8x3,
    };
    resize_and_encode(w, h, img.into_bytes(), pixel_type, target, quality).map(Some)
}

/// Lanczos3 down to `(tw, th)` (nothing to do at that size already), then JPEG, or PNG when
/// a pixel is transparent.
fn resize_and_encode(
    width: u32,
    height: u32,
    pixels: Vec<u8>,
    pixel_type: PixelType,
    (tw, th): (u32, u32),
    quality: u8,
) -> Result<Resized, MediaError> {
    let enc_err = |e: &dyn std::fmt::Display| MediaError::Encode(e.to_string());
    let src = Image::from_vec_u8(width, height, pixels, pixel_type).map_err(|e| enc_err(&e))?;
    let mut dst = Image::new(tw, th, pixel_type);
    // Lanczos3: the sharpest of the usual filters for a large reduction; text in a frame
    // (signs, screens, labels) is often what the user asks about.
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(|e| enc_err(&e))?;
    drop(src);

    let mut buf = dst.into_vec();
    let mut color = match pixel_type {
        PixelType::U8x4 => ExtendedColorType::Rgba8,
        PixelType::U8 => ExtendedColorType::L8,
        _ => ExtendedColorType::Rgb8,
    };
    // An alpha channel that is opaque everywhere (common in screenshots) is dropped so the
    // result can be a JPEG, typically several times smaller than the PNG.
    if color == ExtendedColorType::Rgba8 && buf.chunks_exact(4).all(|p| p[3] == u8::MAX) {
        buf = buf
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect();
        color = ExtendedColorType::Rgb8;
    }
    let mut bytes = Vec::new();
    let out_format = if color == ExtendedColorType::Rgba8 {
        PngEncoder::new(&mut bytes)
            .write_image(&buf, tw, th, color)
            .map_err(|e| enc_err(&e))?;
        ImageFormat::Png
    } else {
        encode_jpeg(
            &mut bytes,
            &buf,
            (tw, th),
            color == ExtendedColorType::L8,
            quality,
        )?;
        ImageFormat::Jpeg
    };
    Ok(Resized {
        bytes,
        format: out_format,
        width: tw,
        height: th,
    })
}

/// Baseline JPEG with `jpeg-encoder`: chroma at half resolution (4:2:0, libjpeg's default)
/// below quality 90, full from 90 up. JPEG sides are 16-bit: a larger target cannot be written.
fn encode_jpeg(
    out: &mut Vec<u8>,
    pixels: &[u8],
    (width, height): (u32, u32),
    gray: bool,
    quality: u8,
) -> Result<(), MediaError> {
    let side = |n: u32| {
        u16::try_from(n)
            .map_err(|_| MediaError::Encode(format!("{width}x{height} is too large for JPEG")))
    };
    let color = match gray {
        true => jpeg_encoder::ColorType::Luma,
        false => jpeg_encoder::ColorType::Rgb,
    };
    // A frame downscaled to ~1 MP compresses to tens of KB: room for most without regrowing.
    out.reserve(pixels.len() / 8);
    jpeg_encoder::Encoder::new(&mut *out, quality.clamp(1, 100))
        .encode(pixels, side(width)?, side(height)?, color)
        .map_err(|e| MediaError::Encode(e.to_string()))
}
