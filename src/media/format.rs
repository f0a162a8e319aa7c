//! What an image claims to be (its declared mime) and what its bytes say it is (magic numbers).

use std::fmt;

/// An image container format, as sniffed from the first bytes of the decoded payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    Jpeg,
    Png,
    WebP,
    Bmp,
    Gif,
    /// HEIC/HEIF: recognised so it can pass through, never decoded (no decoder is linked in).
    Heic,
}

impl ImageFormat {
    /// The canonical mime type, used when the gateway writes a replacement data URL.
    pub fn mime(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::WebP => "image/webp",
            Self::Bmp => "image/bmp",
            Self::Gif => "image/gif",
            Self::Heic => "image/heic",
        }
    }

    /// Maps a declared mime type (case-insensitive, parameters already removed) to a format.
    ///
    /// Returns `None` for anything we do not handle, image or not; the caller words the error.
    pub fn from_mime(mime: &str) -> Option<Self> {
        let mime = mime.trim().to_ascii_lowercase();
        Some(match mime.as_str() {
            // `image/jpg` is not registered but is what many clients (and our devices) send.
            "image/jpeg" | "image/jpg" | "image/pjpeg" => Self::Jpeg,
            "image/png" => Self::Png,
            "image/webp" => Self::WebP,
            "image/bmp" | "image/x-bmp" | "image/x-ms-bmp" => Self::Bmp,
            "image/gif" => Self::Gif,
            "image/heic" | "image/heif" | "image/heic-sequence" | "image/heif-sequence" => {
                Self::Heic
            }
            _ => return None,
        })
    }

    /// The `image` crate's name for the format, for header reads and decoding (none for HEIC).
    pub(crate) fn codec(self) -> Option<image::ImageFormat> {
        match self {
            Self::Jpeg => Some(image::ImageFormat::Jpeg),
            Self::Png => Some(image::ImageFormat::Png),
            Self::WebP => Some(image::ImageFormat::WebP),
            Self::Bmp => Some(image::ImageFormat::Bmp),
            Self::Gif => Some(image::ImageFormat::Gif),
            Self::Heic => None,
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Jpeg => "JPEG",
            Self::Png => "PNG",
            Self::WebP => "WebP",
            Self::Bmp => "BMP",
            Self::Gif => "GIF",
            Self::Heic => "HEIC",
        })
    }
}

/// HEIF major brands that mean "HEVC-coded still image(s)". `mif1`/`msf1` are generic HEIF
/// brands that AVIF files use too, so they count only when no AVIF brand is listed.
const HEIC_BRANDS: [&[u8; 4]; 8] = [
    b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs",
];
const GENERIC_HEIF_BRANDS: [&[u8; 4]; 2] = [b"mif1", b"msf1"];
const AVIF_BRANDS: [&[u8; 4]; 2] = [b"avif", b"avis"];

/// Identifies an image by its magic bytes. `None` means "not a format we accept".
pub fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Some(ImageFormat::Jpeg);
    }
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Some(ImageFormat::Png);
    }
    if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        return Some(ImageFormat::WebP);
    }
    if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        return Some(ImageFormat::Gif);
    }
    // "BM" alone is weak, so also ask for a plausible DIB header size at offset 14
    // (12 = OS/2 v1, 40 = BITMAPINFOHEADER, ... 124 = v5).
    if bytes.len() >= 18 && bytes.starts_with(b"BM") {
        let dib = u32::from_le_bytes([bytes[14], bytes[15], bytes[16], bytes[17]]);
        if matches!(dib, 12 | 16 | 40 | 52 | 56 | 64 | 108 | 124) {
            return Some(ImageFormat::Bmp);
        }
    }
    if is_heic(bytes) {
        return Some(ImageFormat::Heic);
    }
    None
}

/// ISO-BMFF: the file opens with an `ftyp` box: size (u32 BE), "ftyp", major brand, minor
/// version, then compatible brands up to the box's end.
fn is_heic(bytes: &[u8]) -> bool {
    if bytes.len() < 16 || &bytes[4..8] != b"ftyp" {
        return false;
    }
    let major: &[u8] = &bytes[8..12];
    if HEIC_BRANDS.iter().any(|b| major == *b) {
        return true;
    }
    if !GENERIC_HEIF_BRANDS.iter().any(|b| major == *b) {
        return false;
    }
    let box_len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let end = box_len.clamp(16, bytes.len());
    let compatible = &bytes[16..end];
    !compatible
        .chunks_exact(4)
        .any(|brand| AVIF_BRANDS.iter().any(|b| brand == *b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ftyp(major: &[u8; 4], compatible: &[&[u8; 4]]) -> Vec<u8> {
        let len = 16 + 4 * compatible.len();
        let mut v = (len as u32).to_be_bytes().to_vec();
        v.extend_from_slice(b"ftyp");
        v.extend_from_slice(major);
        v.extend_from_slice(&[0, 0, 0, 0]);
        for c in compatible {
            v.extend_from_slice(*c);
        }
        v.extend_from_slice(b"\0\0\0\x08meta");
        v
    }

    #[test]
    fn sniffs_magic_bytes() {
        assert_eq!(
            sniff(b"\xFF\xD8\xFF\xE0\0\x10JFIF"),
            Some(ImageFormat::Jpeg)
        );
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0"), Some(ImageFormat::Png));
        assert_eq!(sniff(b"RIFF\x10\0\0\0WEBPVP8 "), Some(ImageFormat::WebP));
        assert_eq!(sniff(b"GIF89a\x01\0\x01\0"), Some(ImageFormat::Gif));
        let mut bmp = b"BM".to_vec();
        bmp.extend_from_slice(&[0; 12]);
        bmp.extend_from_slice(&40u32.to_le_bytes());
        assert_eq!(sniff(&bmp), Some(ImageFormat::Bmp));
        assert_eq!(sniff(b"BM hello, this is text"), None);
        assert_eq!(sniff(b"II*\0\x08\0\0\0"), None, "TIFF is not accepted");
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn heic_brands_but_not_avif() {
        assert_eq!(sniff(&ftyp(b"heic", &[b"mif1"])), Some(ImageFormat::Heic));
        assert_eq!(sniff(&ftyp(b"mif1", &[b"heic"])), Some(ImageFormat::Heic));
        assert_eq!(sniff(&ftyp(b"msf1", &[b"hevc"])), Some(ImageFormat::Heic));
        assert_eq!(sniff(&ftyp(b"avif", &[b"mif1"])), None);
        assert_eq!(sniff(&ftyp(b"mif1", &[b"avif"])), None);
        assert_eq!(
            sniff(&ftyp(b"isom", &[b"mp41"])),
            None,
            "an MP4 is not an image"
        );
    }

    #[test]
    fn mime_aliases() {
        assert_eq!(ImageFormat::from_mime("image/jpg"), Some(ImageFormat::Jpeg));
        assert_eq!(
            ImageFormat::from_mime("IMAGE/JPEG"),
            Some(ImageFormat::Jpeg)
        );
        assert_eq!(
            ImageFormat::from_mime("image/heif"),
            Some(ImageFormat::Heic)
        );
        assert_eq!(ImageFormat::from_mime("image/tiff"), None);
        assert_eq!(ImageFormat::from_mime("text/plain"), None);
    }
}
