//! Images from devices, checked and made fit to send: the image/media core of the gateway.
//!
//! Smart glasses send camera frames inline as base64 `data:` URLs: several MB, 12 MP, with
//! Exif GPS. [`process_data_url`] validates one such URL and applies an [`ImagePolicy`]:
//!
//! 1. [`parse_data_url`]: `data:image/<type>[;params];base64,<payload>`, nothing else.
//! 2. What [`sniff`] finds in the bytes decides the type, as at DashScope: a declared type
//!    that does not match (`image/png` on JPEG bytes, from a device's fixed template) is
//!    corrected in what is sent and reported ([`ImageReport::relabelled_from`]); only bytes
//!    that are no supported image are refused.
//! 3. The payload is decoded (ASCII whitespace skipped, padding optional) unless its decoded
//!    size already exceeds `max_image_bytes`.
//! 4. JPEG, PNG, WebP and GIF are walked structurally (truncated files are refused) and their
//!    metadata located; dimensions come from the header, without decoding pixels.
//! 5. Over the pixel budget: decode, turn upright per Exif, downscale with
//!    [`fit_to_budget`] (sides multiples of 28, the Qwen-VL patch), re-encode as JPEG (PNG if
//!    transparent). Within budget: strip metadata losslessly if any, else send the original
//!    bytes untouched ([`ImageReport::replacement`] is `None`).
//!
//! HEIC is recognised but not decoded: with `strip_metadata` on it is refused (its metadata,
//! GPS included, cannot be removed without a HEIF writer); with it off it passes through
//! unchanged, size unknown. BMP has no metadata to strip; GIF loses its comment and
//! application (XMP) blocks. Over budget both are decoded (GIF: first frame) and re-encoded.
//!
//! Everything here is synchronous and CPU-bound (a 12 MP decode and resize takes tens of ms):
//! callers run it on the blocking pool.

mod dataurl;
mod error;
mod format;
mod gif;
mod jpeg;
mod resize;
mod scaled;
mod strip;
mod tokens;

#[cfg(test)]
mod tests;

pub use dataurl::{DataUrl, parse_data_url};
pub use error::MediaError;
pub use format::{ImageFormat, sniff};
pub use tokens::{
    DEFAULT_MAX_PIXELS, HIGH_RES_MAX_PIXELS, MIN_PIXELS, PATCH, estimate_tokens, fit_to_budget,
};

use std::io::Cursor;

/// What the gateway does to images before they go upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePolicy {
    /// Pixel budget of what is sent. Default 1_003_520 = 1280*28*28, DashScope's own default
    /// cap for Qwen-VL, so a downscaled image is never resized again upstream.
    pub max_image_pixels: u64,
    /// Limit on the decoded (not base64) size of one image. Default 10 MiB.
    pub max_image_bytes: usize,
    /// Remove Exif (GPS), XMP, IPTC, comments and trailers so they never leave the gateway.
    /// Default true.
    pub strip_metadata: bool,
    /// Over budget: downscale and re-encode (true, default) or refuse the image (false).
    pub reencode: bool,
    /// JPEG quality of re-encoded images, 1-100. Default 85.
    pub jpeg_quality: u8,
    /// The largest image the gateway agrees to decode, against decompression bombs (a small
    /// PNG can claim 50000x50000). Decoding costs ~3 bytes per pixel, twice while the
    /// orientation is applied. Default 25 MP (`[media] max_decode_pixels`).
    pub max_decode_pixels: u64,
}

impl Default for ImagePolicy {
    fn default() -> Self {
        Self {
            max_image_pixels: DEFAULT_MAX_PIXELS,
            max_image_bytes: 10 * 1024 * 1024,
            strip_metadata: true,
            reencode: true,
            jpeg_quality: 85,
            max_decode_pixels: 25_000_000,
        }
    }
}

/// What [`process_data_url`] found and did, for the caller's logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReport {
    /// The format of the original bytes.
    pub format: ImageFormat,
    /// Decoded size received.
    pub original_bytes: usize,
    /// Decoded size sent (equal to `original_bytes` when nothing changed).
    pub sent_bytes: usize,
    /// Size as stored in the file (before Exif orientation); 0 when unknown (HEIC).
    pub width: u32,
    pub height: u32,
    /// Size of what is sent, as stored in it (a re-encoded image is stored upright); 0 when
    /// unknown (HEIC).
    pub sent_width: u32,
    pub sent_height: u32,
    /// Tokens the original could cost: Qwen-VL's estimate at the high-resolution cap
    /// (16384*28*28 pixels, as with `vl_high_resolution_images`), i.e. what a client sending
    /// the raw frame could be billed. 0 when the size is unknown.
    pub tokens_before: u64,
    /// Tokens for what is sent, estimated under `max_image_pixels` (which the caller sets to
    /// the cap that applies upstream). 0 when the size is unknown.
    pub tokens_after: u64,
    /// Metadata was found and is not in what is sent (removed losslessly or by re-encoding).
    pub stripped: bool,
    /// The image was downscaled and re-encoded.
    pub resized: bool,
    /// Some(new data URL) when the image changed; None means send the original bytes unchanged.
    pub replacement: Option<String>,
    /// The declared type, when it was not what the bytes are (the image is sent relabelled).
    pub relabelled_from: Option<String>,
}

/// Validates and applies the policy to a base64 image data URL. CPU-heavy (the caller runs it
/// on the blocking pool). Every error is the client's fault except [`MediaError::Encode`]
/// (see [`MediaError::is_client_error`]).
pub fn process_data_url(url: &str, policy: &ImagePolicy) -> Result<ImageReport, MediaError> {
    finish(inspect_data_url(url, policy)?, policy)
}

/// An image read as far as its header: what it costs to finish is known.
pub struct Inspected<'a> {
    bytes: std::borrow::Cow<'a, [u8]>,
    format: ImageFormat,
    plan: strip::Plan,
    report: ImageReport,
    /// It must be decoded (to be resized): the expensive part, run under the decode pool.
    pub needs_decode: bool,
}

/// The cheap part: the data URL decoded and checked, the dimensions read from the header and
/// held against the decode ceiling, the metadata edits planned. No pixel is decoded.
pub fn inspect_data_url(url: &str, policy: &ImagePolicy) -> Result<Inspected<'static>, MediaError> {
    let parsed = parse_data_url(url)?;
    let declared = declared_format(parsed.mime);
    let bytes = dataurl::decode_payload(parsed.payload, policy.max_image_bytes)?;
    // The bytes decide, as they do at DashScope: devices label every frame `image/png` from a
    // fixed template whatever the camera made. Only bytes that are no image of ours are refused.
    let Some(actual) = sniff(&bytes) else {
        return Err(match declared {
            Err(e @ (MediaError::NotImage(_) | MediaError::UnsupportedType(_))) => e,
            _ => MediaError::Unrecognized {
                declared: parsed.mime.to_ascii_lowercase(),
            },
        });
    };
    let relabelled = declared.ok() != Some(actual);
    let mut inspected = inspect_image(std::borrow::Cow::Owned(bytes), actual, policy)?;
    if relabelled {
        inspected.report.relabelled_from = Some(parsed.mime.to_ascii_lowercase());
    }
    Ok(inspected)
}

/// The declared mime must be `image/*` and one of ours.
fn declared_format(mime: &str) -> Result<ImageFormat, MediaError> {
    let lower = mime.to_ascii_lowercase();
    if !lower.starts_with("image/") {
        // RFC 2397: an empty type means text/plain.
        let shown = if lower.is_empty() {
            "text/plain"
        } else {
            &lower
        };
        return Err(MediaError::NotImage(shown.to_owned()));
    }
    ImageFormat::from_mime(&lower).ok_or(MediaError::UnsupportedType(lower))
}

/// Applies the policy to decoded image bytes already sniffed as `format` (for callers that
/// receive images other than as data URLs). `max_image_bytes` is the caller's to check.
pub fn process_image(
    bytes: &[u8],
    format: ImageFormat,
    policy: &ImagePolicy,
) -> Result<ImageReport, MediaError> {
    finish(
        inspect_image(std::borrow::Cow::Borrowed(bytes), format, policy)?,
        policy,
    )
}

fn inspect_image<'a>(
    bytes: std::borrow::Cow<'a, [u8]>,
    format: ImageFormat,
    policy: &ImagePolicy,
) -> Result<Inspected<'a>, MediaError> {
    let mut report = ImageReport {
        format,
        original_bytes: bytes.len(),
        sent_bytes: bytes.len(),
        width: 0,
        height: 0,
        sent_width: 0,
        sent_height: 0,
        tokens_before: 0,
        tokens_after: 0,
        stripped: false,
        resized: false,
        replacement: None,
        relabelled_from: None,
    };
    let Some(codec) = format.codec() else {
        // HEIC cannot be decoded or rewritten here. iPhones put GPS in it, so with stripping on
        // it is refused rather than sent with its metadata; with stripping off it passes.
        if policy.strip_metadata {
            return Err(MediaError::CannotStrip(format));
        }
        return Ok(Inspected {
            bytes,
            format,
            plan: strip::Plan::default(),
            report,
            needs_decode: false,
        });
    };
    if format == ImageFormat::Gif {
        gif::check_sizes(&bytes, policy.max_decode_pixels)?;
    }
    // Walk first: it refuses truncated files that a header read would let through.
    let plan = strip::plan(&bytes, format)?;
    let header = match format {
        ImageFormat::Jpeg => jpeg::dimensions(&bytes),
        _ => None,
    };
    let (width, height) = match header {
        Some(size) => size,
        None => image::ImageReader::with_format(Cursor::new(&*bytes), codec)
            .into_dimensions()
            .map_err(|e| MediaError::Decode(e.to_string()))?,
    };
    if width == 0 || height == 0 {
        return Err(MediaError::Decode("the image has no pixels".into()));
    }
    report.width = width;
    report.height = height;
    report.tokens_before = estimate_tokens(width, height, HIGH_RES_MAX_PIXELS);

    let pixels = u64::from(width) * u64::from(height);
    if pixels > policy.max_decode_pixels {
        return Err(MediaError::TooManyPixels {
            width,
            height,
            limit: policy.max_decode_pixels,
        });
    }
    if pixels > policy.max_image_pixels && !policy.reencode {
        return Err(MediaError::OverBudget {
            width,
            height,
            max_pixels: policy.max_image_pixels,
        });
    }
    Ok(Inspected {
        bytes,
        format,
        plan,
        report,
        needs_decode: pixels > policy.max_image_pixels,
    })
}

/// The rest: a resize (decode, scale, encode) when the image is over the budget, else the
/// metadata edits.
pub fn finish(inspected: Inspected<'_>, policy: &ImagePolicy) -> Result<ImageReport, MediaError> {
    let Inspected {
        bytes,
        format,
        plan,
        mut report,
        needs_decode,
    } = inspected;
    let (width, height) = (report.width, report.height);
    if format.codec().is_none() {
        return Ok(report);
    }
    if needs_decode {
        let out = resize::downscale(
            &bytes,
            format,
            policy.max_image_pixels,
            policy.jpeg_quality,
            policy.max_decode_pixels,
        )?;
        report.sent_bytes = out.bytes.len();
        report.sent_width = out.width;
        report.sent_height = out.height;
        report.tokens_after = estimate_tokens(out.width, out.height, policy.max_image_pixels);
        report.stripped = !plan.is_empty();
        report.resized = true;
        report.replacement = Some(dataurl::to_data_url(out.format, &out.bytes));
        return Ok(report);
    }

    report.sent_width = width;
    report.sent_height = height;
    report.tokens_after = estimate_tokens(width, height, policy.max_image_pixels);
    if policy.strip_metadata && !plan.is_empty() {
        let out = plan.apply(&bytes);
        report.sent_bytes = out.len();
        report.stripped = true;
        report.replacement = Some(dataurl::to_data_url(format, &out));
    }
    if report.relabelled_from.is_some() && report.replacement.is_none() {
        // Same bytes, the true label, so the upstream is not told a lie either.
        report.replacement = Some(dataurl::to_data_url(format, &bytes));
    }
    Ok(report)
}
