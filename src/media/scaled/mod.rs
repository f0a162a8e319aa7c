//! The JPEG over-budget path's decode: a camera frame is decoded at the scale the budget
//! needs, M/8 for M = 1..8, in the DCT domain (each 8x8 block is inverse-transformed straight
//! to MxM), so the full-resolution pixels that the resize would throw away are never made.
//!
//! The decoder is libjpeg-turbo as vendored by `mozjpeg-sys`, built from C by `cc` (no nasm,
//! no cmake, no system library; so no SIMD, which matters little here: entropy decoding, the
//! bulk of a scaled decode, has none). Its entropy decoder is faster than that of the pure-Rust
//! `jpeg-decoder` this replaced, and its scaled inverse DCTs give any eighth, so the decode
//! stops just above the target instead of at the next power of two: a 4032x3024 frame for a
//! 1148x840 target is decoded at 3/8 (1512x1134) in ~58 ms, where `jpeg-decoder` took ~90 at
//! 1/2 (bench/frame_stages.rs). It goes through `mozjpeg-sys` directly: the `mozjpeg` wrapper
//! keeps its `jpeg_decompress_struct` private, so the memory cap and the scan limit (a
//! progress hook) could not be set through it.
//!
//! libjpeg reports an error by calling `error_exit`, which must not return; with the
//! `unwinding` feature (its C compiled with `-fexceptions`) ours unwinds out of the library
//! with `resume_unwind`, which runs no panic hook (nothing printed), and [`decode_scaled`]
//! catches it. Warnings (corrupt entropy data, a premature end: libjpeg would fill in grey and
//! go on) are treated as errors, so a damaged file never becomes a half-garbage picture here.
//! Anything this path does not take (CMYK/YCCK, 12-bit, arithmetic coding, which is not
//! compiled in, a size that disagrees with our header read, any error or warning) goes back to
//! the `image` crate's path, which also gives the client its error message.

use std::os::raw::{c_int, c_long, c_ulong};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::ptr;

use mozjpeg_sys as ffi;

/// Pixels decoded from a JPEG at a reduced scale, stored orientation (Exif not applied).
pub(crate) struct Scaled {
    pub pixels: Vec<u8>,
    pub width: u32,
    pub height: u32,
    /// One channel (grey) or three (RGB).
    pub gray: bool,
}

/// Progressive scans allowed before the decode is abandoned. Every scan visits every block of
/// a component, and an AC band may be sent again and again without even a warning, so a file
/// of many tiny scans costs CPU out of all proportion to its size (a decompression bomb in
/// time). Encoders write about 10; 100 is also the limit of zune-jpeg, the `image` crate's
/// decoder that a file refused here falls back to, so it is refused there too.
const MAX_SCANS: c_int = 100;

/// The smallest scale M/8 (M = 1..8) that keeps both sides at least the target's: the resize
/// that follows only ever shrinks, so no detail the budget allows is lost. libjpeg's output
/// at M/8 is ceil(side * M / 8).
pub(crate) fn eighths(width: u32, height: u32, min_width: u32, min_height: u32) -> u32 {
    let at = |side: u32, m: u32| (u64::from(side) * u64::from(m)).div_ceil(8);
    (1..8)
        .find(|&m| at(width, m) >= u64::from(min_width) && at(height, m) >= u64::from(min_height))
        .unwrap_or(8)
}

/// Decodes `data` at `eighths`/8 of its size. `expected` is the size its frame header gave
/// (already held against the decode ceiling): a file whose decoder reads another size is left
/// to the other path. `max_memory` caps libjpeg's large buffers (the whole-image coefficient
/// arrays of a progressive file). `None` when this decoder cannot or will not decode it.
pub(crate) fn decode_scaled(
    data: &[u8],
    expected: (u32, u32),
    eighths: u32,
    max_memory: u64,
) -> Option<Scaled> {
    decode(data, expected, eighths, max_memory, MAX_SCANS)
}

fn decode(
    data: &[u8],
    expected: (u32, u32),
    eighths: u32,
    max_memory: u64,
    max_scans: c_int,
) -> Option<Scaled> {
    if !(1..=8).contains(&eighths) {
        return None;
    }
    let len = c_ulong::try_from(data.len()).ok()?;
    let max_memory = c_long::try_from(max_memory).unwrap_or(c_long::MAX);
    // Our callbacks unwind with `resume_unwind`; anything else that panics in here (a bug) is
    // caught the same way: this path then declines and the `image` crate's decides.
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: see `Decompress`: the structs libjpeg points into live in one box that
        // outlives every call, `data` outlives the decode, and every row pointer handed to
        // `jpeg_read_scanlines` points to a whole row of `pixels`.
        unsafe { decode_unwinding(data, len, expected, eighths, max_memory, max_scans) }
    }))
    .ok()
    .flatten()
}

/// The libjpeg state of one decode and what it points to. Boxed: libjpeg keeps pointers to
/// `err` and `progress` (and `progress`'s callback finds `max_scans` next to them), so none
/// may move. Dropping it (also while unwinding out of libjpeg) frees libjpeg's memory.
#[repr(C)]
struct Decompress {
    cinfo: ffi::jpeg_decompress_struct,
    err: ffi::jpeg_error_mgr,
    progress: Progress,
    created: bool,
}

/// libjpeg's progress hook, with the limit it checks.
#[repr(C)]
struct Progress {
    /// First, so the pointer libjpeg is given is also a pointer to the whole struct.
    mgr: ffi::jpeg_progress_mgr,
    max_scans: c_int,
}

impl Drop for Decompress {
    fn drop(&mut self) {
        if self.created {
            // SAFETY: created by `jpeg_create_decompress` and not yet destroyed; libjpeg allows
            // destroying after an error exit at any point.
            unsafe { ffi::jpeg_destroy_decompress(&mut self.cinfo) };
        }
    }
}

/// The payload of an unwind out of libjpeg.
struct LibjpegFailed;

extern "C-unwind" fn error_exit(_cinfo: &mut ffi::jpeg_common_struct) {
    // Not `panic!`: `resume_unwind` runs no panic hook, so a bad frame prints nothing.
    resume_unwind(Box::new(LibjpegFailed));
}

extern "C-unwind" fn emit_message(_cinfo: &mut ffi::jpeg_common_struct, level: c_int) {
    // -1 is a warning: corrupt data that libjpeg would paper over. Levels 0 and up are traces.
    if level < 0 {
        resume_unwind(Box::new(LibjpegFailed));
    }
}

extern "C-unwind" fn output_message(_cinfo: &mut ffi::jpeg_common_struct) {}

extern "C-unwind" fn progress_monitor(cinfo: &mut ffi::jpeg_common_struct) {
    if cinfo.is_decompressor == 0 || cinfo.progress.is_null() {
        return;
    }
    // SAFETY: `cinfo` is the `common` head of the `jpeg_decompress_struct` (is_decompressor),
    // and `progress` points to the `mgr` head of our `Progress`.
    let (scans, limit) = unsafe {
        let dinfo = ptr::from_mut(cinfo).cast::<ffi::jpeg_decompress_struct>();
        let progress = cinfo.progress.cast::<Progress>();
        ((*dinfo).input_scan_number, (*progress).max_scans)
    };
    if scans > limit {
        resume_unwind(Box::new(LibjpegFailed));
    }
}

/// The decode; unwinds (with [`LibjpegFailed`]) on any libjpeg error or warning.
///
/// # Safety
/// `len` is `data.len()`. Call only under `catch_unwind`.
unsafe fn decode_unwinding(
    data: &[u8],
    len: c_ulong,
    expected: (u32, u32),
    eighths: u32,
    max_memory: c_long,
    max_scans: c_int,
) -> Option<Scaled> {
    // SAFETY: all-zero is a valid (empty) state of these plain C structs: null pointers, None
    // callbacks, enums whose 0 is a variant; libjpeg initialises them below.
    let mut boxed = Box::new(unsafe {
        Decompress {
            cinfo: std::mem::zeroed(),
            err: std::mem::zeroed(),
            progress: Progress {
                mgr: std::mem::zeroed(),
                max_scans,
            },
            created: false,
        }
    });
    let d = &mut *boxed;
    // SAFETY: the calls in libjpeg's documented order (libjpeg.txt) on the boxed structs.
    unsafe {
        ffi::jpeg_std_error(&mut d.err);
        d.err.error_exit = Some(error_exit);
        d.err.emit_message = Some(emit_message);
        d.err.output_message = Some(output_message);
        d.cinfo.common.err = &mut d.err;
        ffi::jpeg_create_decompress(&mut d.cinfo);
        d.created = true;
        // After creation, which clears everything but `err` and `client_data`.
        d.progress.mgr.progress_monitor = Some(progress_monitor);
        d.cinfo.common.progress = ptr::from_mut(&mut d.progress).cast();
        if let Some(mem) = d.cinfo.common.mem.as_mut() {
            mem.max_memory_to_use = max_memory;
        }
        ffi::jpeg_mem_src(&mut d.cinfo, data.as_ptr(), len);
        // Errors unwind (with require_image, a tables-only stream too); 1 is JPEG_HEADER_OK.
        if ffi::jpeg_read_header(&mut d.cinfo, 1) != 1 {
            return None;
        }
        if (d.cinfo.image_width, d.cinfo.image_height) != expected {
            return None;
        }
        let gray = match d.cinfo.jpeg_color_space {
            ffi::J_COLOR_SPACE::JCS_GRAYSCALE => true,
            ffi::J_COLOR_SPACE::JCS_YCbCr | ffi::J_COLOR_SPACE::JCS_RGB => false,
            // CMYK, YCCK, unknown: converted by the `image` crate's decoder, as before.
            _ => return None,
        };
        d.cinfo.out_color_space = match gray {
            true => ffi::J_COLOR_SPACE::JCS_GRAYSCALE,
            false => ffi::J_COLOR_SPACE::JCS_RGB,
        };
        d.cinfo.scale_num = eighths;
        d.cinfo.scale_denom = 8;
        // For a progressive file this reads every scan (the progress hook counts them).
        if ffi::jpeg_start_decompress(&mut d.cinfo) == 0 {
            return None; // suspended: cannot happen with a memory source
        }
        let channels = if gray { 1 } else { 3 };
        let (width, height) = (d.cinfo.output_width, d.cinfo.output_height);
        if d.cinfo.output_components != channels || width == 0 || height == 0 {
            return None;
        }
        let stride = usize::try_from(width).ok()? * channels as usize;
        let rows = usize::try_from(height).ok()?;
        let mut pixels = vec![0u8; stride.checked_mul(rows)?];
        let base = pixels.as_mut_ptr();
        let mut row_ptrs: Vec<*mut u8> = (0..rows).map(|r| base.add(r * stride)).collect();
        while d.cinfo.output_scanline < height {
            let done = d.cinfo.output_scanline;
            let read = ffi::jpeg_read_scanlines(
                &mut d.cinfo,
                row_ptrs.as_mut_ptr().add(done as usize),
                height - done,
            );
            if read == 0 {
                return None;
            }
        }
        // Reads on to EOI, so damage after the last row is caught too.
        ffi::jpeg_finish_decompress(&mut d.cinfo);
        Some(Scaled {
            pixels,
            width,
            height,
            gray,
        })
    }
}

#[cfg(test)]
mod tests;
