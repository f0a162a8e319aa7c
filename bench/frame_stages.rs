//! The camera-frame path one stage at a time, in-process: `frame_stages [WIDTH HEIGHT [RUNS]]`
//! (default a 12 MP 4032x3024 frame, 7 runs) prints the median and the fastest run of each
//! stage in ms, then the whole of `dashgate::media::process_data_url` under the default policy
//! and for a frame that needs no resize. The frame is made as `frame` makes it (sensor-like
//! noise, q92), so it costs what a photo costs to entropy-decode. The gateway's own decode is
//! libjpeg-turbo at the M/8 scale the target needs (src/media/scaled/, through mozjpeg-sys);
//! here it is timed through the `mozjpeg` wrapper of the same C library, next to jpeg-decoder
//! (the decoder it replaced) and zune-jpeg (the `image` crate's). Wall clock on one thread:
//! run it on an idle core (`taskset -c 1`) and read the medians.

use std::hint::black_box;
use std::io::Cursor;
use std::time::Instant;

use base64::Engine;
use dashgate::media::{ImagePolicy, fit_to_budget, process_data_url};
use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn frame(width: u32, height: u32) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let mut rng = fastrand::Rng::with_seed(7);
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        let base = [(x * 255 / width) as u8, (y * 255 / height) as u8, 128];
        image::Rgb(base.map(|c| c.saturating_add(rng.u8(0..20))))
    });
    let mut jpeg = Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 92).encode_image(&img)?;
    Ok(jpeg.into_inner())
}

/// Runs `f` `runs` times; prints and returns the median ms.
fn time<T>(name: &str, runs: usize, mut f: impl FnMut() -> T) -> f64 {
    let mut ms: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            black_box(f());
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let median = ms[ms.len() / 2];
    println!("| {name} | {median:.2} | {:.2} |", ms[0]);
    median
}

fn jpeg_decoder(data: &[u8], scale: Option<(u16, u16)>) -> Vec<u8> {
    let mut d = jpeg_decoder::Decoder::new(data);
    d.read_info().unwrap();
    if let Some((w, h)) = scale {
        d.scale(w, h).unwrap();
    }
    d.decode().unwrap()
}

/// libjpeg-turbo at `eighths`/8 (8: full size), RGB.
fn libjpeg(data: &[u8], eighths: u8) -> Vec<u8> {
    let mut d = mozjpeg::Decompress::new_mem(data).unwrap();
    d.scale(eighths);
    let mut started = d.rgb().unwrap();
    let pixels = started.read_scanlines::<u8>().unwrap();
    started.finish().unwrap();
    pixels
}

/// The smallest M/8 whose output (ceil(side * M / 8)) covers the target, as the gateway picks.
fn eighths((width, height): (u32, u32), (tw, th): (u32, u32)) -> u32 {
    (1..8)
        .find(|m| (width * m).div_ceil(8) >= tw && (height * m).div_ceil(8) >= th)
        .unwrap_or(8)
}

fn zune(data: &[u8]) -> Vec<u8> {
    let options = zune_core::options::DecoderOptions::default()
        .jpeg_set_out_colorspace(zune_core::colorspace::ColorSpace::RGB);
    zune_jpeg::JpegDecoder::new_with_options(zune_core::bytestream::ZCursor::new(data), options)
        .decode()
        .unwrap()
}

fn resize(pixels: &[u8], (w, h): (u32, u32), (tw, th): (u32, u32), alg: ResizeAlg) -> Vec<u8> {
    let src = Image::from_vec_u8(w, h, pixels.to_vec(), PixelType::U8x3).unwrap();
    let mut dst = Image::new(tw, th, PixelType::U8x3);
    Resizer::new()
        .resize(&src, &mut dst, &ResizeOptions::new().resize_alg(alg))
        .unwrap();
    dst.into_vec()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let (width, height) = match args[..] {
        [w, h, ..] => (w as u32, h as u32),
        _ => (4032, 3024),
    };
    let runs = args.get(2).copied().unwrap_or(7);
    let jpeg = frame(width, height)?;
    let b64 = B64.encode(&jpeg);
    let target = fit_to_budget(width, height, ImagePolicy::default().max_image_pixels);
    let half = (width.div_ceil(2), height.div_ceil(2));
    let m = eighths((width, height), target);
    let scaled = ((width * m).div_ceil(8), (height * m).div_ceil(8));
    println!(
        "{width}x{height} JPEG q92, {} bytes ({} as base64); target {}x{}; {m}/8 is {}x{}; \
         {runs} runs",
        jpeg.len(),
        b64.len(),
        target.0,
        target.1,
        scaled.0,
        scaled.1
    );
    println!();
    println!("| stage | median ms | fastest ms |");
    println!("| --- | ---: | ---: |");
    time("base64 decode", runs, || B64.decode(&b64).unwrap());
    time("jpeg-decoder, full", runs, || jpeg_decoder(&jpeg, None));
    time("jpeg-decoder, 1/2 in the DCT domain", runs, || {
        jpeg_decoder(&jpeg, Some((half.0 as u16, half.1 as u16)))
    });
    time("libjpeg-turbo (no SIMD), full", runs, || libjpeg(&jpeg, 8));
    time(
        &format!("libjpeg-turbo (no SIMD), {m}/8 in the DCT domain"),
        runs,
        || libjpeg(&jpeg, m as u8),
    );
    // At 1/8 only each block's DC coefficient is transformed: about what entropy decoding,
    // which no scale avoids, costs on its own.
    time(
        "libjpeg-turbo (no SIMD), 1/8 (about the entropy decode alone)",
        runs,
        || libjpeg(&jpeg, 1),
    );
    time("zune-jpeg, full", runs, || zune(&jpeg));
    let full = zune(&jpeg);
    let halved = jpeg_decoder(&jpeg, Some((half.0 as u16, half.1 as u16)));
    let lanczos = ResizeAlg::Convolution(FilterType::Lanczos3);
    time("resize full -> target, Lanczos3", runs, || {
        resize(&full, (width, height), target, lanczos)
    });
    time("resize full -> target, 2x box then Lanczos3", runs, || {
        let h = resize(
            &full,
            (width, height),
            half,
            ResizeAlg::Convolution(FilterType::Box),
        );
        resize(&h, half, target, lanczos)
    });
    time("resize 1/2 -> target, Lanczos3", runs, || {
        resize(&halved, half, target, lanczos)
    });
    let eighths_decoded = libjpeg(&jpeg, m as u8);
    assert_eq!(eighths_decoded.len(), (scaled.0 * scaled.1 * 3) as usize);
    time(&format!("resize {m}/8 -> target, Lanczos3"), runs, || {
        resize(&eighths_decoded, scaled, target, lanczos)
    });
    let small = resize(&halved, half, target, lanczos);
    time("encode target, jpeg-encoder q85", runs, || {
        let mut out = Vec::new();
        jpeg_encoder::Encoder::new(&mut out, 85)
            .encode(
                &small,
                target.0 as u16,
                target.1 as u16,
                jpeg_encoder::ColorType::Rgb,
            )
            .unwrap();
        out
    });
    let mut encoded = Vec::new();
    jpeg_encoder::Encoder::new(&mut encoded, 85).encode(
        &small,
        target.0 as u16,
        target.1 as u16,
        jpeg_encoder::ColorType::Rgb,
    )?;
    time("base64 encode of the result", runs, || B64.encode(&encoded));

    let url = format!("data:image/jpeg;base64,{b64}");
    let policy = ImagePolicy {
        max_image_bytes: 32 << 20,
        ..ImagePolicy::default()
    };
    time("process_data_url, default policy (downscale)", runs, || {
        process_data_url(&url, &policy).unwrap()
    });
    let check = ImagePolicy {
        max_image_pixels: u64::from(width) * u64::from(height),
        ..policy
    };
    time(
        "process_data_url, no resize (validation only)",
        runs,
        || process_data_url(&url, &check).unwrap(),
    );
    Ok(())
}
