//! Writes a chat request carrying a camera frame as a base64 JPEG, as the glasses send it:
//! `frame WIDTH HEIGHT [QUALITY]` prints the JSON body on stdout. The picture has sensor-like
//! noise, so it compresses like a photo (a 12 MP frame comes to about 4-5 MB).

use std::io::{Cursor, Write};

use base64::Engine;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let (width, height) = match args[..] {
        [w, h, ..] => (w, h),
        _ => return Err("usage: frame WIDTH HEIGHT [QUALITY]".into()),
    };
    let quality = args.get(2).copied().unwrap_or(92) as u8;
    let mut rng = fastrand::Rng::with_seed(7);
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        let base = [(x * 255 / width) as u8, (y * 255 / height) as u8, 128];
        image::Rgb(base.map(|c| c.saturating_add(rng.u8(0..20))))
    });
    let mut jpeg = Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, quality).encode_image(&img)?;
    let url = format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(jpeg.get_ref())
    );
    let body = serde_json::json!({
        "model": "qwen-vl-plus",
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": "这是什么"}]}],
    });
    std::io::stdout().write_all(body.to_string().as_bytes())?;
    eprintln!(
        "frame: {width}x{height} JPEG q{quality}, {} bytes",
        jpeg.get_ref().len()
    );
    Ok(())
}
