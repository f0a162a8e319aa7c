//! `[media]`: what media parts may be, and what is done to camera frames.

use serde::Deserialize;

/// What media parts may be, and what happens to camera frames before they go upstream.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Pixel budget per image; larger ones are downscaled (default: DashScope's own cap).
    pub max_image_pixels: u64,
    /// Decoded size limit per image.
    pub max_image_bytes: usize,
    /// EXIF, GPS, XMP and comments never leave the gateway.
    pub strip_metadata: bool,
    /// Downscale and re-encode an image over budget (else refuse it).
    pub reencode: bool,
    pub jpeg_quality: u8,
    /// Frames in one `video` frame list.
    pub max_video_frames: usize,
    /// Decoded size limit per inline audio clip.
    pub max_audio_bytes: usize,
    /// URL schemes media parts may use besides `data:`.
    pub url_schemes: Vec<String>,
    /// Fetching image URLs for upstreams that cannot (`fetch_image_urls` on the upstream).
    pub fetch_max_bytes: usize,
    pub fetch_timeout_ms: u64,
    pub fetch_max_redirects: usize,
    /// Hosts or IP addresses fetched even though they are private, loopback or link-local.
    pub fetch_allow: Vec<String>,
    /// The largest image (width x height, from its header) the gateway agrees to decode,
    /// against decompression bombs.
    pub max_decode_pixels: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            max_image_pixels: 1_003_520,
            max_image_bytes: 10 * 1024 * 1024,
            strip_metadata: true,
            reencode: true,
            jpeg_quality: 85,
            max_video_frames: 512,
            max_audio_bytes: 10 * 1024 * 1024,
            url_schemes: vec!["https".into(), "http".into(), "oss".into()],
            fetch_max_bytes: 10 * 1024 * 1024,
            fetch_timeout_ms: 10_000,
            fetch_max_redirects: 3,
            fetch_allow: Vec::new(),
            max_decode_pixels: 25_000_000,
        }
    }
}

/// Per-upstream changes to `[media]`; unset keys keep the global value.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaOverride {
    pub max_image_pixels: Option<u64>,
    pub max_image_bytes: Option<usize>,
    pub strip_metadata: Option<bool>,
    pub reencode: Option<bool>,
    pub jpeg_quality: Option<u8>,
}

impl MediaConfig {
    /// This policy with an upstream's overrides applied.
    pub fn with(&self, over: &MediaOverride) -> MediaConfig {
        let mut out = self.clone();
        if let Some(v) = over.max_image_pixels {
            out.max_image_pixels = v;
        }
        if let Some(v) = over.max_image_bytes {
            out.max_image_bytes = v;
        }
        if let Some(v) = over.strip_metadata {
            out.strip_metadata = v;
        }
        if let Some(v) = over.reencode {
            out.reencode = v;
        }
        if let Some(v) = over.jpeg_quality {
            out.jpeg_quality = v;
        }
        out
    }
}
