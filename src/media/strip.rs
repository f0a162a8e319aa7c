//! Lossless metadata removal: a plan of byte-range edits made by walking a container's
//! structure, applied only when it is not empty, so a clean image is never copied or changed.
//!
//! The walkers double as a structural check: a JPEG without its end marker, a PNG without
//! `IEND` or a RIFF size that runs past the data is refused instead of being passed upstream.

use std::ops::Range;

use super::error::MediaError;
use super::format::ImageFormat;
use super::jpeg;

/// Replace `range` of the original with `with` (empty `with` = delete).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Edit {
    pub range: Range<usize>,
    pub with: Vec<u8>,
}

/// Edits in increasing, non-overlapping order. Empty means "nothing to strip".
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Plan(pub Vec<Edit>);

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn apply(&self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len());
        let mut at = 0;
        for edit in &self.0 {
            out.extend_from_slice(&data[at..edit.range.start]);
            out.extend_from_slice(&edit.with);
            at = edit.range.end;
        }
        out.extend_from_slice(&data[at..]);
        out
    }

    pub(crate) fn delete(&mut self, range: Range<usize>) {
        self.0.push(Edit {
            range,
            with: Vec::new(),
        });
    }
}

/// Plans the removal of metadata from `data`, already sniffed as `format`. BMP has no walker
/// (it has no metadata), HEIC cannot be parsed here; GIF's walker is in `gif`.
pub(crate) fn plan(data: &[u8], format: ImageFormat) -> Result<Plan, MediaError> {
    match format {
        ImageFormat::Jpeg => jpeg::plan(data),
        ImageFormat::Png => png(data),
        ImageFormat::WebP => webp(data),
        ImageFormat::Gif => super::gif::plan(data),
        ImageFormat::Bmp | ImageFormat::Heic => Ok(Plan::default()),
    }
}

/// Text (`tEXt`, `zTXt`, `iTXt`: XMP, camera notes, software), `eXIf` and the `tIME` stamp.
/// Colour chunks (`iCCP`, `sRGB`, `gAMA`, `cHRM`) and `pHYs` stay: they change how it looks.
const PNG_METADATA: [&[u8; 4]; 5] = [b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"tIME"];

fn png(data: &[u8]) -> Result<Plan, MediaError> {
    let bad = |detail| MediaError::Malformed {
        format: ImageFormat::Png,
        detail,
    };
    let mut plan = Plan::default();
    let mut pos = 8; // signature, checked by the sniffer
    loop {
        let header = data
            .get(pos..pos + 8)
            .ok_or(bad("it ends before the IEND chunk"))?;
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let kind = &header[4..8];
        let end = pos
            .checked_add(12)
            .and_then(|p| p.checked_add(len))
            .filter(|&end| end <= data.len())
            .ok_or(bad("a chunk runs past the end"))?;
        if PNG_METADATA.iter().any(|m| kind == *m) {
            plan.delete(pos..end);
        }
        pos = end;
        if kind == b"IEND" {
            break;
        }
    }
    if pos < data.len() {
        // Bytes after IEND are invisible to viewers and a classic place to hide things.
        plan.delete(pos..data.len());
    }
    Ok(plan)
}

/// VP8X flag bits (WebP container spec): EXIF present, XMP present.
const VP8X_EXIF: u8 = 0x08;
const VP8X_XMP: u8 = 0x04;

fn webp(data: &[u8]) -> Result<Plan, MediaError> {
    let bad = |detail| MediaError::Malformed {
        format: ImageFormat::WebP,
        detail,
    };
    if data.len() < 12 {
        return Err(bad("it ends inside the RIFF header"));
    }
    let riff_size = u32::from_le_bytes([data[4], data[5], data[6], data[7]]) as usize;
    let riff_end = riff_size
        .checked_add(8)
        .filter(|&e| e <= data.len() && e >= 12)
        .ok_or(bad("the RIFF size runs past the end"))?;
    let mut deletes = Vec::new();
    let mut vp8x_flags = None;
    let mut pos = 12;
    while pos < riff_end {
        let header = data
            .get(pos..pos + 8)
            .filter(|_| pos + 8 <= riff_end)
            .ok_or(bad("a chunk header is cut off"))?;
        let fourcc = &header[..4];
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        // Chunks are padded to an even size; a missing final pad byte is tolerated.
        let end = (pos + 8)
            .checked_add(len)
            .filter(|&e| e <= riff_end)
            .ok_or(bad("a chunk runs past the RIFF end"))?;
        let padded = (end + (len & 1)).min(riff_end);
        match fourcc {
            b"EXIF" | b"XMP " => deletes.push(pos..padded),
            b"VP8X" if len >= 1 => vp8x_flags = Some(pos + 8),
            _ => {}
        }
        pos = padded;
    }
    let trailing = riff_end < data.len();
    if deletes.is_empty() && !trailing {
        return Ok(Plan::default());
    }
    let removed: usize = deletes.iter().map(|r| r.len()).sum();
    let new_size = u32::try_from(riff_size - removed).map_err(|_| bad("oversized RIFF"))?;
    let mut plan = Plan::default();
    plan.0.push(Edit {
        range: 4..8,
        with: new_size.to_le_bytes().to_vec(),
    });
    let mut deletes = deletes.into_iter().peekable();
    // Keep the edits in file order: the VP8X chunk comes first in a valid file, but do not rely on it.
    if let Some(at) = vp8x_flags {
        while let Some(r) = deletes.next_if(|r| r.start < at) {
            plan.delete(r);
        }
        plan.0.push(Edit {
            range: at..at + 1,
            with: vec![data[at] & !(VP8X_EXIF | VP8X_XMP)],
        });
    }
    deletes.for_each(|r| plan.delete(r));
    if trailing {
        plan.delete(riff_end..data.len());
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(fourcc: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut v = fourcc.to_vec();
        v.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v.extend_from_slice(body);
        if body.len() % 2 == 1 {
            v.push(0);
        }
        v
    }

    fn riff(chunks: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = chunks.concat();
        let mut v = b"RIFF".to_vec();
        v.extend_from_slice(&(body.len() as u32 + 4).to_le_bytes());
        v.extend_from_slice(b"WEBP");
        v.extend_from_slice(&body);
        v
    }

    #[test]
    fn webp_drops_exif_and_xmp_and_fixes_the_header() {
        let vp8x = chunk(
            b"VP8X",
            &[VP8X_EXIF | VP8X_XMP | 0x10, 0, 0, 0, 9, 0, 0, 9, 0, 0],
        );
        let image = chunk(b"VP8L", &[1, 2, 3]);
        let with = riff(&[
            vp8x.clone(),
            image.clone(),
            chunk(b"EXIF", b"Exif\0\0II*\0gps"),
            chunk(b"XMP ", b"<x:xmpmeta/>"),
        ]);
        let out = plan(&with, ImageFormat::WebP).unwrap().apply(&with);
        let mut clean_vp8x = vp8x;
        clean_vp8x[8] = 0x10; // alpha flag kept, EXIF and XMP cleared
        assert_eq!(out, riff(&[clean_vp8x, image.clone()]));

        let clean = riff(&[chunk(b"VP8L", &[1, 2, 3])]);
        assert!(plan(&clean, ImageFormat::WebP).unwrap().is_empty());
        let mut cut = clean.clone();
        cut.truncate(cut.len() - 2);
        assert!(plan(&cut, ImageFormat::WebP).is_err());
    }

    #[test]
    fn png_without_iend_is_malformed() {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend_from_slice(&[0, 0, 0, 0]);
        png.extend_from_slice(b"tIME");
        png.extend_from_slice(&[0; 4]);
        assert!(matches!(
            plan(&png, ImageFormat::Png),
            Err(MediaError::Malformed { .. })
        ));
    }
}
