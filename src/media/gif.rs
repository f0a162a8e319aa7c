//! GIF sizes read from the blocks before any decode: the logical screen and every frame's
//! descriptor, each checked against the decode ceiling. A 35-byte GIF may declare an
//! 8000×8000 screen, and a frame may declare itself larger than its screen; the decoder would
//! allocate for either.

use super::error::MediaError;

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
