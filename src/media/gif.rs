//! GIF metadata removal: comment extensions and application extensions (XMP rides in one,
//! `XMP DataXMP`, GPS included) are cut out; the looping extensions (`NETSCAPE2.0`,
//! `ANIMEXTS1.0`) stay, as do graphic-control and plain-text blocks, which change what is
//! shown. Bytes after the trailer go too. The walk refuses a GIF whose blocks run past its end.
//!
//! Sizes are read from the blocks before any decode: the logical screen and every frame's
//! descriptor, each checked against the decode ceiling. A 35-byte GIF may declare an
//! 8000×8000 screen, and a frame may declare itself larger than its screen; the decoder would
//! allocate for either.

use super::error::MediaError;
use super::format::ImageFormat;
use super::strip::Plan;

const EXTENSION: u8 = 0x21;
const IMAGE: u8 = 0x2C;
const TRAILER: u8 = 0x3B;
const COMMENT: u8 = 0xFE;
const APPLICATION: u8 = 0xFF;

fn bad(detail: &'static str) -> MediaError {
    MediaError::Malformed {
        format: ImageFormat::Gif,
        detail,
    }
}

/// Size in bytes of a colour table whose flag and size sit in `packed`.
fn table_len(packed: u8) -> usize {
    if packed & 0x80 == 0 {
        0
    } else {
        3 << ((packed & 0x07) + 1)
    }
}

/// The end of the data sub-blocks starting at `pos` (past the zero-length terminator).
fn sub_blocks_end(data: &[u8], mut pos: usize) -> Result<usize, MediaError> {
    loop {
        let len = *data.get(pos).ok_or(bad("a data block runs past the end"))? as usize;
        pos += 1;
        if len == 0 {
            return Ok(pos);
        }
        pos += len;
        if pos > data.len() {
            return Err(bad("a data block runs past the end"));
        }
    }
}

pub(crate) fn plan(data: &[u8]) -> Result<Plan, MediaError> {
    let packed = *data
        .get(10)
        .ok_or(bad("it ends inside the screen descriptor"))?;
    let mut pos = 13 + table_len(packed);
    let mut plan = Plan::default();
    loop {
        match data.get(pos).copied() {
            Some(EXTENSION) => {
                let label = *data.get(pos + 1).ok_or(bad("an extension is cut off"))?;
                let end = sub_blocks_end(data, pos + 2)?;
                let keep_app = data
                    .get(pos + 2..pos + 14)
                    .is_some_and(|id| id == b"\x0bNETSCAPE2.0" || id == b"\x0bANIMEXTS1.0");
                if label == COMMENT || (label == APPLICATION && !keep_app) {
                    plan.delete(pos..end);
                }
                pos = end;
            }
            Some(IMAGE) => {
                let packed = *data
                    .get(pos + 9)
                    .ok_or(bad("an image descriptor is cut off"))?;
                // Descriptor, local colour table, LZW minimum code size, then the data.
                let start = pos + 10 + table_len(packed) + 1;
                if start > data.len() {
                    return Err(bad("an image is cut off"));
                }
                pos = sub_blocks_end(data, start)?;
            }
            Some(TRAILER) => {
                if pos + 1 < data.len() {
                    plan.delete(pos + 1..data.len());
                }
                return Ok(plan);
            }
            Some(_) => return Err(bad("an unknown block")),
            None => return Err(bad("it ends before the trailer")),
        }
    }
}

/// Checks the logical screen and every frame of `data` against `limit` pixels.
pub(crate) fn check_sizes(data: &[u8], limit: u64) -> Result<(), MediaError> {
    let u16_at = |i: usize| -> Option<u32> {
        Some(u32::from(u16::from_le_bytes([
            *data.get(i)?,
            *data.get(i + 1)?,
        ])))
    };
    let over = |width: u32, height: u32| u64::from(width) * u64::from(height) > limit;
    let cut = || MediaError::Decode("the GIF ends inside a block".into());
    let (Some(width), Some(height)) = (u16_at(6), u16_at(8)) else {
        return Err(cut());
    };
    if over(width, height) {
        return Err(MediaError::TooManyPixels {
            width,
            height,
            limit,
        });
    }
    let packed = *data.get(10).ok_or_else(cut)?;
    let mut at = 13;
    if packed & 0x80 != 0 {
        at += 3 << ((packed & 7) + 1);
    }
    // Sub-blocks: a length byte, that many bytes, until a zero length.
    let skip_sub_blocks = |mut at: usize| -> Option<usize> {
        loop {
            let len = usize::from(*data.get(at)?);
            at += 1;
            if len == 0 {
                return Some(at);
            }
            at += len;
        }
    };
    loop {
        match data.get(at) {
            Some(0x3B) | None => return Ok(()),
            Some(0x21) => at = skip_sub_blocks(at + 2).ok_or_else(cut)?,
            Some(0x2C) => {
                let (Some(w), Some(h)) = (u16_at(at + 5), u16_at(at + 7)) else {
                    return Err(cut());
                };
                if over(w, h) {
                    return Err(MediaError::TooManyPixels {
                        width: w,
                        height: h,
                        limit,
                    });
                }
                let frame_packed = *data.get(at + 9).ok_or_else(cut)?;
                at += 10;
                if frame_packed & 0x80 != 0 {
                    at += 3 << ((frame_packed & 7) + 1);
                }
                // The LZW minimum code size, then the image data's sub-blocks.
                at = skip_sub_blocks(at + 1).ok_or_else(cut)?;
            }
            Some(_) => return Err(MediaError::Decode("unknown GIF block".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1x1 GIF with `extra` blocks after the screen descriptor.
    fn gif(extra: &[u8]) -> Vec<u8> {
        let mut v = b"GIF89a\x01\0\x01\0\x80\0\0".to_vec();
        v.extend_from_slice(&[0, 0, 0, 255, 255, 255]); // global colour table, 2 entries
        v.extend_from_slice(extra);
        v.extend_from_slice(b"\x2c\0\0\0\0\x01\0\x01\0\0\x02\x02\x44\x01\0");
        v.push(TRAILER);
        v
    }

    #[test]
    fn comments_and_xmp_go_and_looping_stays() {
        let block = |head: &[u8], body: &[u8]| {
            let mut v = head.to_vec();
            v.push(body.len() as u8);
            v.extend_from_slice(body);
            v.push(0);
            v
        };
        let comment = block(b"\x21\xfe", b"GPS 31.2,121.4");
        let xmp = block(b"\x21\xff\x0bXMP DataXMP", b"<x:gps>31.2</x:gps>");
        let looping = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\0\0\0".to_vec();
        let control = b"\x21\xf9\x04\0\0\0\0\0".to_vec();
        let dirty = gif(&[comment, xmp, looping.clone(), control.clone()].concat());
        let mut with_tail = dirty.clone();
        with_tail.extend_from_slice(b"hidden");
        let out = plan(&with_tail).unwrap().apply(&with_tail);
        assert_eq!(out, gif(&[looping, control].concat()));
        assert!(image::load_from_memory(&out).is_ok());
        assert!(plan(&gif(&[])).unwrap().is_empty());
        let mut cut = dirty;
        cut.truncate(cut.len() - 4);
        assert!(plan(&cut).is_err());
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// A GIF of `screen` with one frame of `frame`, no colour tables, an empty image.
    fn gif(screen: (u16, u16), frame: (u16, u16)) -> Vec<u8> {
        let mut out = b"GIF89a".to_vec();
        out.extend_from_slice(&screen.0.to_le_bytes());
        out.extend_from_slice(&screen.1.to_le_bytes());
        out.extend_from_slice(&[0, 0, 0]);
        out.push(0x2C);
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&frame.0.to_le_bytes());
        out.extend_from_slice(&frame.1.to_le_bytes());
        out.extend_from_slice(&[0, 2, 0, 0x3B]);
        out
    }

    #[test]
    fn a_tiny_gif_declaring_a_huge_screen_or_frame_is_refused_before_decoding() {
        let bomb = gif((8000, 8000), (1, 1));
        assert!(bomb.len() < 40);
        assert!(matches!(
            check_sizes(&bomb, 25_000_000),
            Err(MediaError::TooManyPixels {
                width: 8000,
                height: 8000,
                ..
            })
        ));
        let big_frame = gif((10, 10), (9000, 9000));
        assert!(matches!(
            check_sizes(&big_frame, 25_000_000),
            Err(MediaError::TooManyPixels { width: 9000, .. })
        ));
        assert!(check_sizes(&gif((640, 480), (640, 480)), 25_000_000).is_ok());
        assert!(check_sizes(&bomb[..8], 25_000_000).is_err(), "cut short");
    }
}
