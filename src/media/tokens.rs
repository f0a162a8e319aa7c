//! How many vision tokens Qwen-VL will charge for an image, and the size that fits a budget.
//!
//! DashScope resizes every image before the vision encoder (`smart_resize` in Qwen's
//! `qwen_vl_utils`): both sides become multiples of 28 (one 28x28 patch = one token), the
//! pixel count is brought into `[min_pixels, max_pixels]`, and the image costs
//! `(w/28)*(h/28)` tokens plus 2 for the vision start/end markers. The defaults are
//! `min_pixels = 4*28*28` and `max_pixels = 1280*28*28`; with `vl_high_resolution_images`
//! the cap is `16384*28*28`.

/// The side of one vision patch (14 px ViT patches merged 2x2).
pub const PATCH: u32 = 28;
/// DashScope's default pixel cap for Qwen-VL: 1280 tokens.
pub const DEFAULT_MAX_PIXELS: u64 = 1280 * 28 * 28;
/// The cap with `vl_high_resolution_images`: what a raw frame can cost at most.
pub const HIGH_RES_MAX_PIXELS: u64 = 16384 * 28 * 28;
/// The floor DashScope scales small images up to.
pub const MIN_PIXELS: u64 = 4 * 28 * 28;

/// Estimated tokens for a `width` x `height` image under a `max_pixels` cap, mirroring
/// `smart_resize` (including Python's round-half-to-even). Zero for an unknown (0) size.
pub fn estimate_tokens(width: u32, height: u32, max_pixels: u64) -> u64 {
    if width == 0 || height == 0 {
        return 0;
    }
    let (w, h) = smart_resize(width, height, max_pixels);
    (w / u64::from(PATCH)) * (h / u64::from(PATCH)) + 2
}

fn smart_resize(width: u32, height: u32, max_pixels: u64) -> (u64, u64) {
    let f = f64::from(PATCH);
    let (w, h) = (f64::from(width), f64::from(height));
    let round = |x: f64| ((x / f).round_ties_even() * f).max(f);
    let floor = |x: f64| ((x / f).floor() * f).max(f);
    let ceil = |x: f64| (x / f).ceil() * f;
    let (mut wb, mut hb) = (round(w), round(h));
    if wb * hb > max_pixels as f64 {
        let beta = (w * h / max_pixels as f64).sqrt();
        (wb, hb) = (floor(w / beta), floor(h / beta));
    } else if wb * hb < MIN_PIXELS as f64 {
        let beta = (MIN_PIXELS as f64 / (w * h)).sqrt();
        (wb, hb) = (ceil(w * beta), ceil(h * beta));
    }
    (wb as u64, hb as u64)
}

/// The size to downscale an over-budget image to: aspect ratio kept, both sides multiples of
/// 28 and at least 28, `w*h <= max_pixels`, so DashScope will not resize it again. An image
/// already within budget is returned unchanged. (`max_pixels` below 28*28 cannot be met; the
/// result is then 28x28.)
pub fn fit_to_budget(width: u32, height: u32, max_pixels: u64) -> (u32, u32) {
    let pixels = u64::from(width) * u64::from(height);
    if pixels <= max_pixels || width == 0 || height == 0 {
        return (width, height);
    }
    let p = u64::from(PATCH);
    let beta = (pixels as f64 / max_pixels as f64).sqrt();
    let floor = |x: f64| ((x / p as f64).floor() as u64 * p).max(p);
    let (mut w, mut h) = (
        floor(f64::from(width) / beta),
        floor(f64::from(height) / beta),
    );
    // The 28 px floor can push a very thin image over budget; give the long side what is left.
    if w * h > max_pixels {
        if w >= h {
            w = (max_pixels / h / p * p).max(p);
        } else {
            h = (max_pixels / w / p * p).max(p);
        }
    }
    // Guards float rounding at the boundary: shave a patch off the long side until it fits.
    while w * h > max_pixels && (w > p || h > p) {
        if w >= h {
            w -= p;
        } else {
            h -= p;
        }
    }
    // Both are at most the original sides here (beta > 1), so they fit in u32.
    (
        u32::try_from(w).unwrap_or(u32::MAX),
        u32::try_from(h).unwrap_or(u32::MAX),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twelve_megapixel_frame_fits_the_default_budget() {
        let (w, h) = fit_to_budget(4032, 3024, DEFAULT_MAX_PIXELS);
        assert_eq!((w % 28, h % 28), (0, 0));
        assert!(u64::from(w) * u64::from(h) <= DEFAULT_MAX_PIXELS);
        // 4:3 kept to within one patch.
        let expected_h = f64::from(w) * 3024.0 / 4032.0;
        assert!((f64::from(h) - expected_h).abs() <= 28.0, "{w}x{h}");
        assert_eq!((w, h), (1148, 840));
        // What we send costs exactly what it would if DashScope had resized it itself.
        assert_eq!(estimate_tokens(w, h, DEFAULT_MAX_PIXELS), 41 * 30 + 2);
        assert_eq!(
            estimate_tokens(4032, 3024, DEFAULT_MAX_PIXELS),
            estimate_tokens(w, h, DEFAULT_MAX_PIXELS)
        );
    }

    #[test]
    fn small_images_are_untouched() {
        assert_eq!(fit_to_budget(640, 480, DEFAULT_MAX_PIXELS), (640, 480));
        assert_eq!(fit_to_budget(1, 1, DEFAULT_MAX_PIXELS), (1, 1));
    }

    #[test]
    fn fit_holds_for_awkward_shapes() {
        for (w, h) in [
            (4032, 3024),
            (3024, 4032),
            (8000, 6000),
            (1_000_000, 20),
            (20, 1_000_000),
            (65535, 65535),
            (1281, 784),
            (100_000, 100),
        ] {
            for max in [DEFAULT_MAX_PIXELS, 784, 50_000, HIGH_RES_MAX_PIXELS] {
                let (fw, fh) = fit_to_budget(w, h, max);
                let fits = u64::from(w) * u64::from(h) <= max;
                if fits {
                    assert_eq!((fw, fh), (w, h));
                    continue;
                }
                assert!(fw >= 28 && fh >= 28 && fw % 28 == 0 && fh % 28 == 0);
                assert!(
                    u64::from(fw) * u64::from(fh) <= max,
                    "{w}x{h} @ {max}: {fw}x{fh}"
                );
            }
        }
    }

    #[test]
    fn token_estimates_match_smart_resize() {
        // 28x28 is below min_pixels (3136): scaled up to 56x56 = 4 tokens, plus 2.
        assert_eq!(estimate_tokens(28, 28, DEFAULT_MAX_PIXELS), 6);
        // 640x480 → rounds to 644x476 = 23*17.
        assert_eq!(estimate_tokens(640, 480, DEFAULT_MAX_PIXELS), 23 * 17 + 2);
        // A 12 MP frame at the high-resolution cap: rounded to 4032x3024 = 144*108 patches.
        assert_eq!(
            estimate_tokens(4032, 3024, HIGH_RES_MAX_PIXELS),
            144 * 108 + 2
        );
        assert!(estimate_tokens(8000, 6000, HIGH_RES_MAX_PIXELS) <= 16384 + 2);
        assert_eq!(estimate_tokens(0, 100, DEFAULT_MAX_PIXELS), 0);
        // Python rounds half to even: 42/28 = 1.5 → 2 patches, 70/28 = 2.5 → 2 patches.
        assert_eq!(estimate_tokens(42, 70 * 2, DEFAULT_MAX_PIXELS), 2 * 5 + 2);
        assert_eq!(estimate_tokens(70, 140, DEFAULT_MAX_PIXELS), 2 * 5 + 2);
    }
}
