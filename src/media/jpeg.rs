//! The JPEG marker walk (ITU T.81 B.1): header segments, entropy-coded scans, EOI.
//!
//! Dropped: APP1 (Exif with GPS, XMP), APP13 (IPTC/Photoshop), COM, APP2 `MPF` (the index of
//! secondary images such as depth or gain maps) and anything after EOI (those secondary images
//! themselves, each with its own Exif, or a phone's appended video). Kept byte for byte:
//! everything else, including APP0 JFIF, APP2 ICC profiles and APP14 Adobe (colour transform).
//!
//! The Exif orientation is the one tag that changes what the picture shows, so when it is not
//! "upright" a minimal Exif segment carrying only that tag takes the old segment's place.

use image::metadata::Orientation;

use super::error::MediaError;
use super::format::ImageFormat;
use super::strip::{Edit, Plan};

const SOS: u8 = 0xDA;
const EOI: u8 = 0xD9;
const APP1: u8 = 0xE1;
const APP2: u8 = 0xE2;
const APP13: u8 = 0xED;
const COM: u8 = 0xFE;
const EXIF_ID: &[u8] = b"Exif\0\0";

fn bad(detail: &'static str) -> MediaError {
    MediaError::Malformed {
        format: ImageFormat::Jpeg,
        detail,
    }
}

/// Walks the whole file (a `memchr` pass over the scan data) and plans the metadata removal.
pub(crate) fn plan(data: &[u8]) -> Result<Plan, MediaError> {
    let mut plan = Plan::default();
    let mut orientation_kept = false;
    let mut pos = 2; // SOI, checked by the sniffer
    loop {
        let (marker, at) = next_marker(data, pos)?;
        if marker == EOI {
            pos = at + 2;
            break;
        }
        // Standalone markers (TEM, RSTn) have no length; they should not appear here, but
        // skipping them costs nothing and some encoders emit stray ones.
        if marker == 0x01 || (0xD0..=0xD7).contains(&marker) {
            pos = at + 2;
            continue;
        }
        let len = data
            .get(at + 2..at + 4)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
            .ok_or(bad("it ends inside a segment header"))?;
        let end = at + 2 + len;
        if len < 2 || end > data.len() {
            return Err(bad("a segment runs past the end"));
        }
        let body = &data[at + 4..end];
        match marker {
            APP1 => {
                let upright = orientation_of(body).unwrap_or(Orientation::NoTransforms);
                if !orientation_kept && upright != Orientation::NoTransforms {
                    orientation_kept = true;
                    plan.0.push(Edit {
                        range: at..end,
                        with: orientation_only_app1(upright),
                    });
                } else {
                    plan.0.push(Edit {
                        range: at..end,
                        with: Vec::new(),
                    });
                }
            }
            APP13 | COM => plan.0.push(Edit {
                range: at..end,
                with: Vec::new(),
            }),
            APP2 if body.starts_with(b"MPF\0") => plan.0.push(Edit {
                range: at..end,
                with: Vec::new(),
            }),
            _ => {}
        }
        pos = if marker == SOS {
            skip_scan(data, end)?
        } else {
            end
        };
    }
    if pos < data.len() {
        plan.0.push(Edit {
            range: pos..data.len(),
            with: Vec::new(),
        });
    }
    Ok(plan)
}

/// Width and height from the first frame header (SOFn), reading header segments only. The
/// image decoder's own header read copies the whole file first: megabytes for a camera frame.
pub(crate) fn dimensions(data: &[u8]) -> Option<(u32, u32)> {
    let mut pos = 2; // SOI
    loop {
        let (marker, at) = next_marker(data, pos).ok()?;
        if marker == SOS || marker == EOI {
            return None; // no frame header before the scan
        }
        if marker == 0x01 || (0xD0..=0xD7).contains(&marker) {
            pos = at + 2;
            continue;
        }
        let len = usize::from(u16::from_be_bytes([*data.get(at + 2)?, *data.get(at + 3)?]));
        // SOF0..SOF15, less DHT (C4), JPG (C8) and DAC (CC): precision, height, width.
        if matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            let header = data.get(at + 4..at + 9)?;
            let height = u16::from_be_bytes([header[1], header[2]]);
            let width = u16::from_be_bytes([header[3], header[4]]);
            return Some((u32::from(width), u32::from(height)));
        }
        pos = at + 2 + len.max(2);
    }
}

/// The Exif orientation of the first APP1 Exif segment before the scan (what the `image`
/// crate's decoder reports); upright when there is none or it cannot be read.
pub(crate) fn orientation(data: &[u8]) -> Orientation {
    let mut pos = 2; // SOI
    while let Ok((marker, at)) = next_marker(data, pos) {
        if marker == SOS || marker == EOI {
            break;
        }
        if marker == 0x01 || (0xD0..=0xD7).contains(&marker) {
            pos = at + 2;
            continue;
        }
        let Some(len) = data
            .get(at + 2..at + 4)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        else {
            break;
        };
        let Some(body) = data.get(at + 4..at + 2 + len.max(2)) else {
            break;
        };
        if marker == APP1 && body.starts_with(EXIF_ID) {
            return orientation_of(body).unwrap_or(Orientation::NoTransforms);
        }
        pos = at + 2 + len.max(2);
    }
    Orientation::NoTransforms
}

/// Finds the next marker at or after `pos`: returns its code and the offset of its 0xFF.
/// Fill bytes (repeated 0xFF) are allowed before a marker; other stray bytes are skipped the
/// way libjpeg does ("extraneous bytes before marker"), and kept in the output.
fn next_marker(data: &[u8], mut pos: usize) -> Result<(u8, usize), MediaError> {
    loop {
        let ff = memchr::memchr(0xFF, data.get(pos..).unwrap_or_default())
            .ok_or(bad("it ends without an end-of-image marker"))?;
        let mut at = pos + ff;
        while data.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        match data.get(at + 1) {
            None => return Err(bad("it ends without an end-of-image marker")),
            Some(0x00) => pos = at + 2,
            Some(&code) => return Ok((code, at)),
        }
    }
}

/// Skips entropy-coded data after an SOS header: up to the first marker that is neither a
/// stuffed 0xFF00 nor a restart marker. Returns the offset of that marker's 0xFF.
fn skip_scan(data: &[u8], mut pos: usize) -> Result<usize, MediaError> {
    loop {
        let (code, at) = next_marker(data, pos)?;
        if (0xD0..=0xD7).contains(&code) {
            pos = at + 2;
        } else {
            return Ok(at);
        }
    }
}

/// The orientation recorded in an APP1 Exif body, if it is one and has the tag.
fn orientation_of(app1_body: &[u8]) -> Option<Orientation> {
    Orientation::from_exif_chunk(app1_body.strip_prefix(EXIF_ID)?)
}

/// APP1 with a big-endian TIFF header and one IFD0 entry: Orientation (0x0112), SHORT, 1.
fn orientation_only_app1(orientation: Orientation) -> Vec<u8> {
    let mut tiff = b"MM\0\x2A\0\0\0\x08".to_vec();
    tiff.extend_from_slice(&1u16.to_be_bytes());
    tiff.extend_from_slice(&[0x01, 0x12, 0x00, 0x03, 0, 0, 0, 1]);
    tiff.extend_from_slice(&[0, orientation.to_exif(), 0, 0]);
    tiff.extend_from_slice(&[0, 0, 0, 0]); // no next IFD
    let len = 2 + EXIF_ID.len() + tiff.len();
    let mut seg = vec![0xFF, APP1];
    seg.extend_from_slice(&(len as u16).to_be_bytes());
    seg.extend_from_slice(EXIF_ID);
    seg.extend_from_slice(&tiff);
    seg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(marker: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![0xFF, marker];
        v.extend_from_slice(&((body.len() + 2) as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    /// Not a decodable image, just the marker structure the walker reads.
    fn skeleton(segments: &[Vec<u8>], scan: &[u8]) -> Vec<u8> {
        let mut v = vec![0xFF, 0xD8];
        for s in segments {
            v.extend_from_slice(s);
        }
        v.extend_from_slice(&segment(SOS, &[1, 1, 0, 0, 63, 0]));
        v.extend_from_slice(scan);
        v.extend_from_slice(&[0xFF, EOI]);
        v
    }

    #[test]
    fn drops_metadata_segments_and_trailer_keeps_the_rest() {
        let jfif = segment(0xE0, b"JFIF\0\x01\x02\0\0\x01\0\x01\0\0");
        let icc = segment(APP2, b"ICC_PROFILE\0\x01\x01profile");
        let adobe = segment(0xEE, b"Adobe\0\x64\0\0\0\0\x01");
        let dqt = segment(0xDB, &[0; 65]);
        // Scan data with a stuffed 0xFF00, a restart marker and fill bytes.
        let scan = [1, 2, 0xFF, 0x00, 3, 0xFF, 0xD0, 4, 0xFF, 0xFF];
        let clean = skeleton(
            &[jfif.clone(), icc.clone(), adobe.clone(), dqt.clone()],
            &scan,
        );
        assert!(plan(&clean).unwrap().is_empty());

        let mut dirty = skeleton(
            &[
                jfif,
                segment(APP1, b"Exif\0\0MM\0\x2A\0\0\0\x08\0\0"),
                segment(APP1, b"http://ns.adobe.com/xap/1.0/\0<x/>"),
                icc,
                segment(APP2, b"MPF\0MM\0\x2A"),
                segment(APP13, b"Photoshop 3.0\0"),
                adobe,
                segment(COM, b"shot on glasses"),
                dqt,
            ],
            &scan,
        );
        dirty.extend_from_slice(b"\xFF\xD8 second image with its own Exif");
        assert_eq!(plan(&dirty).unwrap().apply(&dirty), clean);
    }

    #[test]
    fn keeps_only_the_orientation_tag() {
        let exif = orientation_only_app1(Orientation::Rotate90);
        assert_eq!(
            orientation_of(&exif[4..]),
            Some(Orientation::Rotate90),
            "the minimal segment reads back"
        );
        let mut body = b"Exif\0\0II\x2A\0\x08\0\0\0".to_vec();
        body.extend_from_slice(&2u16.to_le_bytes());
        body.extend_from_slice(&[0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0]); // Orientation = 6
        body.extend_from_slice(&[0x25, 0x88, 4, 0, 1, 0, 0, 0, 0x40, 0, 0, 0]); // GPS IFD
        body.extend_from_slice(&[0, 0, 0, 0]);
        let data = skeleton(&[segment(APP1, &body)], &[1, 2, 3]);
        let out = plan(&data).unwrap().apply(&data);
        assert_eq!(out, skeleton(&[exif], &[1, 2, 3]));
    }

    #[test]
    fn truncation_is_caught() {
        let data = skeleton(&[segment(0xDB, &[0; 65])], &[1, 2, 3, 4]);
        for cut in [3, 10, data.len() - 1] {
            assert!(matches!(
                plan(&data[..cut]),
                Err(MediaError::Malformed { .. })
            ));
        }
    }
}
