//! Real images made here for the media tests: gradients encoded as JPEG and PNG, an Exif
//! segment with GPS tags, and the small byte helpers the tests share.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};

use super::super::{ImagePolicy, parse_data_url};

pub(super) fn url(mime: &str, bytes: &[u8]) -> String {
    format!("data:{mime};base64,{}", STANDARD.encode(bytes))
}

/// Decodes a replacement data URL back to bytes.
pub(super) fn bytes_of(url: &str) -> Vec<u8> {
    let parsed = parse_data_url(url).unwrap();
    STANDARD.decode(parsed.payload).unwrap()
}

/// Smooth gradients: a real picture for the codecs, cheap to make, and it compresses well
/// (a 4000x3000 PNG of it stays well under the 10 MiB limit).
pub(super) fn rgb(width: u32, height: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            let (r, g) = (x * 255 / width, y * 255 / height);
            v.extend_from_slice(&[r as u8, g as u8, ((r + g) / 2) as u8]);
        }
    }
    v
}

pub(super) fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, 80)
        .write_image(&rgb(width, height), width, height, ExtendedColorType::Rgb8)
        .unwrap();
    out
}

pub(super) fn png(width: u32, height: u32, color: ExtendedColorType) -> Vec<u8> {
    let pixels = match color {
        ExtendedColorType::Rgba8 => rgb(width, height)
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], p[0] / 2])
            .collect(),
        _ => rgb(width, height),
    };
    let mut out = Vec::new();
    PngEncoder::new(&mut out)
        .write_image(&pixels, width, height, color)
        .unwrap();
    out
}

/// An APP1 Exif segment: little-endian TIFF, IFD0 = {Orientation?, GPS IFD pointer}, and a GPS
/// IFD with GPSLatitudeRef "N" and GPSLatitude 48/1 51/1 2413/100.
pub(super) fn exif_app1(orientation: Option<u16>) -> Vec<u8> {
    let mut ifd0: Vec<[u8; 12]> = Vec::new();
    if let Some(o) = orientation {
        let mut e = [0x12, 0x01, 3, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        e[8..10].copy_from_slice(&o.to_le_bytes());
        ifd0.push(e);
    }
    let gps_ifd = 8 + 2 + 12 * (ifd0.len() as u32 + 1) + 4;
    let mut e = [0x25, 0x88, 4, 0, 1, 0, 0, 0, 0, 0, 0, 0];
    e[8..12].copy_from_slice(&gps_ifd.to_le_bytes());
    ifd0.push(e);
    let rationals = gps_ifd + 2 + 12 * 2 + 4;
    let mut tiff = b"II\x2A\0\x08\0\0\0".to_vec();
    tiff.extend_from_slice(&(ifd0.len() as u16).to_le_bytes());
    ifd0.iter().for_each(|e| tiff.extend_from_slice(e));
    tiff.extend_from_slice(&[0; 4]);
    tiff.extend_from_slice(&2u16.to_le_bytes());
    tiff.extend_from_slice(&[1, 0, 2, 0, 2, 0, 0, 0, b'N', 0, 0, 0]);
    tiff.extend_from_slice(&[2, 0, 5, 0, 3, 0, 0, 0]);
    tiff.extend_from_slice(&rationals.to_le_bytes());
    tiff.extend_from_slice(&[0; 4]);
    for (n, d) in [(48u32, 1u32), (51, 1), (2413, 100)] {
        tiff.extend_from_slice(&n.to_le_bytes());
        tiff.extend_from_slice(&d.to_le_bytes());
    }
    let mut seg = vec![0xFF, 0xE1];
    seg.extend_from_slice(&((2 + 6 + tiff.len()) as u16).to_be_bytes());
    seg.extend_from_slice(b"Exif\0\0");
    seg.extend_from_slice(&tiff);
    seg
}

pub(super) fn splice_after_soi(jpeg: &[u8], segment: &[u8]) -> Vec<u8> {
    [&jpeg[..2], segment, &jpeg[2..]].concat()
}

pub(super) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

pub(super) fn policy() -> ImagePolicy {
    ImagePolicy::default()
}
