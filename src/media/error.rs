//! Everything that can go wrong with an image part. Each message is written to be shown to
//! the client as-is (the caller prefixes the message/part index).

use super::format::ImageFormat;

/// Why an image was refused (or, for the last two variants, why the gateway failed on it).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MediaError {
    #[error(
        "{0} images cannot be stripped of their metadata (GPS included) by the gateway; send JPEG, PNG or WebP"
    )]
    CannotStrip(ImageFormat),
    #[error("not a data URL")]
    NotDataUrl,
    #[error("only base64 data URLs are supported")]
    NotBase64,
    #[error("the data URL is {0}, not an image")]
    NotImage(String),
    #[error("unsupported image type {0}")]
    UnsupportedType(String),
    #[error("the image is not valid base64: {0}")]
    InvalidBase64(String),
    #[error(
        "decoded image is {} MiB, over the {} MiB limit",
        mib(*bytes as u64),
        mib(*limit as u64)
    )]
    TooLarge { bytes: usize, limit: usize },
    #[error("declared {declared} but the bytes are not a supported image")]
    Unrecognized { declared: String },
    #[error("declared {declared} but the bytes are a {actual}")]
    TypeMismatch {
        declared: String,
        actual: ImageFormat,
    },
    #[error("the {format} is truncated or malformed: {detail}")]
    Malformed {
        format: ImageFormat,
        detail: &'static str,
    },
    #[error(
        "image is {width}x{height} = {}, over the {} budget and reencode is off",
        mp(*width as u64 * *height as u64),
        mp(*max_pixels)
    )]
    OverBudget {
        width: u32,
        height: u32,
        max_pixels: u64,
    },
    #[error(
        "image is {width}x{height} = {}, over the {} the gateway will decode (max_decode_pixels)",
        mp(*width as u64 * *height as u64),
        mp(*limit)
    )]
    TooManyPixels { width: u32, height: u32, limit: u64 },
    #[error("the image could not be decoded: {0}")]
    Decode(String),
    /// Resizing or re-encoding a decoded image failed: our fault, not the client's.
    #[error("the resized image could not be produced: {0}")]
    Encode(String),
}

impl MediaError {
    /// False only for failures of the gateway itself (a 500, not a 400).
    pub fn is_client_error(&self) -> bool {
        !matches!(self, Self::Encode(_))
    }
}

/// Megapixels the way people say them: "48 MP", "1.0 MP", "0.3 MP".
fn mp(pixels: u64) -> String {
    let mp = pixels as f64 / 1_000_000.0;
    if mp >= 10.0 {
        format!("{mp:.0} MP")
    } else {
        format!("{mp:.1} MP")
    }
}

/// Mebibytes with one decimal, dropping a ".0" so the default reads "10 MiB".
fn mib(bytes: u64) -> String {
    let s = format!("{:.1}", bytes as f64 / (1024.0 * 1024.0));
    s.strip_suffix(".0").map(str::to_owned).unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_well() {
        let e = MediaError::OverBudget {
            width: 8000,
            height: 6000,
            max_pixels: 1_003_520,
        };
        assert_eq!(
            e.to_string(),
            "image is 8000x6000 = 48 MP, over the 1.0 MP budget and reencode is off"
        );
        let e = MediaError::TooLarge {
            bytes: 12_900_000,
            limit: 10 * 1024 * 1024,
        };
        assert_eq!(
            e.to_string(),
            "decoded image is 12.3 MiB, over the 10 MiB limit"
        );
        let e = MediaError::TypeMismatch {
            declared: "image/png".into(),
            actual: ImageFormat::Jpeg,
        };
        assert_eq!(e.to_string(), "declared image/png but the bytes are a JPEG");
    }
}
