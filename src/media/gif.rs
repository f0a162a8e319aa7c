//! GIF metadata removal: comment extensions and application extensions (XMP rides in one,
//! `XMP DataXMP`, GPS included) are cut out; the looping extensions (`NETSCAPE2.0`,
//! `ANIMEXTS1.0`) stay, as do graphic-control and plain-text blocks, which change what is
//! shown. Bytes after the trailer go too. The walk refuses a GIF whose blocks run past its end.

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
