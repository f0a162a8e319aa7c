//! The transform stage: every media part is checked before it goes upstream, and camera frames
//! are made to fit the image policy (`[media]`): metadata stripped, oversized frames downscaled.
//! Heavy work runs on the blocking pool, a few images at a time; text-only requests skip it all.

use std::sync::Arc;

use base64::Engine;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::chat::{Chat, Content, Part};
use crate::config::MediaConfig;
use crate::error::GatewayError;
use crate::fetch::Fetcher;
use crate::media::{self, ImagePolicy};

/// What happened to the images of one request, for the response headers and the usage record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaStats {
    pub images: u32,
    pub original_bytes: u64,
    pub sent_bytes: u64,
    pub tokens_before: u64,
    pub tokens_after: u64,
    /// Images whose metadata (EXIF, GPS, ...) was found and removed.
    pub metadata_stripped: u32,
    /// Images downscaled and re-encoded.
    pub resized: u32,
    /// Images whose declared type was not what their bytes are: sent under the true one.
    pub relabelled: u32,
}

/// Where in a message's part a new URL goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    ImageUrl,
    VideoFrame(usize),
}

#[derive(Debug, Clone)]
pub struct Replacement {
    pub message: usize,
    pub part: usize,
    pub target: Target,
    pub url: String,
}

/// The outcome of the stage for one policy: the new URLs (none: send as it came) and the stats.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    pub replacements: Vec<Replacement>,
    pub stats: MediaStats,
}

/// Audio formats DashScope's omni models take.
const AUDIO_FORMATS: &[&str] = &[
    "wav", "mp3", "aac", "amr", "flac", "m4a", "ogg", "opus", "webm", "pcm",
];

fn bad(at: String, message: impl std::fmt::Display) -> GatewayError {
    let text = format!("`{at}`: {message}");
    GatewayError::param(at, text)
}

fn scheme_ok(url: &str, media: &MediaConfig) -> bool {
    match url.split_once(':') {
        Some(("data", _)) => true,
        Some((scheme, _)) => media
            .url_schemes
            .iter()
            .any(|s| s.eq_ignore_ascii_case(scheme)),
        None => false,
    }
}

fn policy_of(media: &MediaConfig) -> ImagePolicy {
    ImagePolicy {
        max_image_pixels: media.max_image_pixels,
        max_image_bytes: media.max_image_bytes,
        strip_metadata: media.strip_metadata,
        reencode: media.reencode,
        jpeg_quality: media.jpeg_quality,
        max_decode_pixels: media.max_decode_pixels,
    }
}

/// One image to run through the policy.
struct Job {
    message: usize,
    part: usize,
    target: Target,
    at: String,
    /// Shared with the blocking task that checks it: a camera frame is megabytes, copied once.
    url: Arc<str>,
    /// The URL was fetched: the inline copy replaces it whatever the policy does.
    fetched: bool,
}

/// Checks every media part and applies the image policy. `fetcher` is given for upstreams that
/// cannot fetch URLs themselves.
pub async fn prepare(
    chat: &Chat,
    media: &MediaConfig,
    fetcher: Option<&Fetcher>,
    limiter: &Arc<Semaphore>,
) -> Result<Prepared, GatewayError> {
    let mut jobs = Vec::new();
    for (i, message) in chat.messages.iter().enumerate() {
        let Some(Content::Parts(parts)) = &message.content else {
            continue;
        };
        for (j, part) in parts.iter().enumerate() {
            check_part(i, j, part, media, fetcher, &mut jobs).await?;
        }
    }
    let mut policy = policy_of(media);
    if chat.extra.get("vl_high_resolution_images") == Some(&Value::Bool(true)) {
        // The client asked DashScope for its high-resolution budget (16384 patches of 28x28):
        // downscaling to the default one would silently take that away.
        policy.max_image_pixels = policy.max_image_pixels.max(media::HIGH_RES_MAX_PIXELS);
    }
    let policy = Arc::new(policy);
    let mut prepared = Prepared::default();
    for job in jobs {
        // The header is read first, outside the decode pool: an image that needs no decode
        // (the usual camera frame) never queues behind ones that do, and one over the decode
        // ceiling is refused before it costs anything.
        let (policy2, url) = (policy.clone(), job.url.clone());
        let inspected =
            tokio::task::spawn_blocking(move || media::inspect_data_url(&url, &policy2))
                .await
                .map_err(|_| GatewayError::Internal)?
                .map_err(|e| bad(job.at.clone(), e))?;
        // Bounded: at most `limiter`'s permits images are decoded at once.
        let permit = match inspected.needs_decode {
            true => Some(
                limiter
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| GatewayError::Internal)?,
            ),
            false => None,
        };
        let policy = policy.clone();
        let report = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            media::finish(inspected, &policy)
        })
        .await
        .map_err(|_| GatewayError::Internal)?
        .map_err(|e| bad(job.at.clone(), e))?;
        let stats = &mut prepared.stats;
        stats.images += 1;
        stats.original_bytes += report.original_bytes as u64;
        stats.sent_bytes += report.sent_bytes as u64;
        stats.tokens_before += report.tokens_before;
        stats.tokens_after += report.tokens_after;
        stats.metadata_stripped += u32::from(report.stripped);
        stats.resized += u32::from(report.resized);
        stats.relabelled += u32::from(report.relabelled_from.is_some());
        let url = match (report.replacement, job.fetched) {
            (Some(url), _) => url,
            (None, true) => job.url.to_string(),
            (None, false) => continue,
        };
        prepared.replacements.push(Replacement {
            message: job.message,
            part: job.part,
            target: job.target,
            url,
        });
    }
    Ok(prepared)
}

async fn check_part(
    i: usize,
    j: usize,
    part: &Part,
    media: &MediaConfig,
    fetcher: Option<&Fetcher>,
    jobs: &mut Vec<Job>,
) -> Result<(), GatewayError> {
    let at = |field: &str| format!("messages[{i}].content[{j}].{field}");
    let url_of = |name: &str| {
        part.fields
            .get(name)
            .and_then(|v| v.get("url"))
            .and_then(Value::as_str)
    };
    match part.kind.as_str() {
        "image_url" => {
            let url = url_of("image_url").unwrap_or("");
            let at = at("image_url.url");
            if !scheme_ok(url, media) {
                return Err(bad(
                    at,
                    "only data: URLs and the allowed URL schemes are accepted",
                ));
            }
            if url.starts_with("data:") {
                jobs.push(Job {
                    message: i,
                    part: j,
                    target: Target::ImageUrl,
                    at,
                    url: Arc::from(url),
                    fetched: false,
                });
            } else if let Some(fetcher) = fetcher {
                let url = inline(fetcher, url).await.map_err(|e| bad(at.clone(), e))?;
                jobs.push(Job {
                    message: i,
                    part: j,
                    target: Target::ImageUrl,
                    at,
                    url: Arc::from(url),
                    fetched: true,
                });
            }
        }
        "video_url" => {
            let url = url_of("video_url").unwrap_or("");
            if !scheme_ok(url, media) || url.starts_with("data:") {
                return Err(bad(
                    at("video_url.url"),
                    "must be a URL of an allowed scheme",
                ));
            }
        }
        "video" => {
            let frames = part
                .fields
                .get("video")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            if frames.len() > media.max_video_frames {
                let message = format!(
                    "{} frames, over the limit of {}",
                    frames.len(),
                    media.max_video_frames
                );
                return Err(bad(at("video"), message));
            }
            for (k, frame) in frames.iter().enumerate() {
                let url = frame.as_str().unwrap_or("");
                let at = at(&format!("video[{k}]"));
                if !scheme_ok(url, media) {
                    return Err(bad(
                        at,
                        "only data: URLs and the allowed URL schemes are accepted",
                    ));
                }
                if url.starts_with("data:") {
                    let target = Target::VideoFrame(k);
                    jobs.push(Job {
                        message: i,
                        part: j,
                        target,
                        at,
                        url: Arc::from(url),
                        fetched: false,
                    });
                }
            }
        }
        "input_audio" => {
            let audio = part.fields.get("input_audio");
            let data = audio
                .and_then(|a| a.get("data"))
                .and_then(Value::as_str)
                .unwrap_or("");
            if let Some(format) = audio.and_then(|a| a.get("format")).and_then(Value::as_str) {
                if !AUDIO_FORMATS.contains(&format.to_ascii_lowercase().as_str()) {
                    let message = format!(
                        "unsupported audio format `{format}` (use one of {})",
                        AUDIO_FORMATS.join(", ")
                    );
                    return Err(bad(at("input_audio.format"), message));
                }
            }
            check_audio_data(data, media).map_err(|e| bad(at("input_audio.data"), e))?;
        }
        _ => {}
    }
    Ok(())
}

/// Inline audio: a data URL or bare base64, within the size limit; or a URL of an allowed scheme.
fn check_audio_data(data: &str, media: &MediaConfig) -> Result<(), String> {
    let payload = match data.strip_prefix("data:") {
        Some(rest) => match rest.split_once(',') {
            Some((header, payload)) if header.ends_with(";base64") => payload,
            _ => return Err("a data: URL must be base64 (`data:<type>;base64,...`)".into()),
        },
        None if data.contains("://") => {
            return if scheme_ok(data, media) {
                Ok(())
            } else {
                Err("the URL scheme is not allowed".into())
            };
        }
        None => data,
    };
    let size = payload.len() / 4 * 3;
    if size > media.max_audio_bytes {
        return Err(format!(
            "about {size} bytes of audio, over the limit of {}",
            media.max_audio_bytes
        ));
    }
    let valid = payload
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'\r' | b'\n'));
    if payload.is_empty() || !valid {
        return Err("the audio is not valid base64".into());
    }
    Ok(())
}

/// Fetches an image URL and makes it a data URL.
async fn inline(fetcher: &Fetcher, url: &str) -> Result<String, String> {
    let (body, content_type) = fetcher.fetch(url).await.map_err(|e| e.to_string())?;
    let mime = match media::sniff(&body) {
        Some(format) => format.mime().to_string(),
        None => content_type.unwrap_or_default(),
    };
    Ok(format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&body)
    ))
}

/// Applies the new URLs to the canonical request.
pub fn apply_to_chat(chat: &mut Chat, replacements: &[Replacement]) {
    for r in replacements {
        let Some(Content::Parts(parts)) = chat
            .messages
            .get_mut(r.message)
            .and_then(|m| m.content.as_mut())
        else {
            continue;
        };
        let Some(part) = parts.get_mut(r.part) else {
            continue;
        };
        let slot = match r.target {
            Target::ImageUrl => part
                .fields
                .get_mut("image_url")
                .and_then(|v| v.get_mut("url")),
            Target::VideoFrame(k) => part.fields.get_mut("video").and_then(|v| v.get_mut(k)),
        };
        if let Some(slot) = slot {
            *slot = Value::String(r.url.clone());
        }
    }
}

/// Applies the new URLs to a client's own body, so the fast path can still send it: only the
/// replaced strings change. `native` bodies keep messages under `input` and images as `image`.
pub fn apply_to_body(
    body: &[u8],
    replacements: &[Replacement],
    native: bool,
) -> Option<bytes::Bytes> {
    let mut json: Value = serde_json::from_slice(body).ok()?;
    let messages = if native {
        json.get_mut("input")?.get_mut("messages")?
    } else {
        json.get_mut("messages")?
    };
    for r in replacements {
        let part = messages
            .get_mut(r.message)?
            .get_mut("content")?
            .get_mut(r.part)?;
        let slot = match (&r.target, native) {
            (Target::ImageUrl, false) => part.get_mut("image_url")?.get_mut("url")?,
            // A native item `{image}`, or a typed part sent to the native API.
            (Target::ImageUrl, true) if part.get("image").is_some() => part.get_mut("image")?,
            (Target::ImageUrl, true) => part.get_mut("image_url")?.get_mut("url")?,
            (Target::VideoFrame(k), _) => part.get_mut("video")?.get_mut(*k)?,
        };
        *slot = Value::String(r.url.clone());
    }
    serde_json::to_vec(&json).ok().map(bytes::Bytes::from)
}
