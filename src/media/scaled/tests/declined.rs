//! What the scaled decoder declines (other colour spaces, a header that disagrees, broken
//! files, too many scans, too much memory), and random damage it must survive.

use super::*;

/// The scan data of a baseline file: from after the SOS header to EOI.
fn scan_range(jpeg: &[u8]) -> std::ops::Range<usize> {
    let sos = jpeg.windows(2).rposition(|w| w == [0xFF, 0xDA]).unwrap();
    let len = usize::from(u16::from_be_bytes([jpeg[sos + 2], jpeg[sos + 3]]));
    sos + 2 + len..jpeg.len() - 2
}

#[test]
fn cmyk_and_a_header_that_disagrees_go_to_the_image_path() {
    use jpeg_encoder::ColorType;
    let (width, height) = (640, 480);
    for color in [ColorType::Cmyk, ColorType::Ycck] {
        let data = encoded((width, height), color, |_| {});
        assert!(decode_scaled(&data, (width, height), 2, MEMORY).is_none());
        // What the client gets is the `image` crate's answer, whatever it is.
        let fast = downscale(&data, ImageFormat::Jpeg, 60_000, 85, 25_000_000);
        let pure = downscale_pure(&data, ImageFormat::Jpeg, 60_000, 85, 25_000_000);
        match (fast, pure) {
            (Ok(a), Ok(b)) => assert_eq!(a.bytes, b.bytes),
            (Err(a), Err(b)) => assert_eq!(a, b),
            (a, b) => panic!("{a:?} vs {b:?}"),
        }
    }
    let data = encoded((width, height), ColorType::Rgb, |_| {});
    assert!(decode_scaled(&data, (width, height), 2, MEMORY).is_some());
    // 12-bit samples and arithmetic coding: not in this build of libjpeg.
    let sof = data.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    let mut twelve = data.clone();
    twelve[sof + 4] = 12;
    let mut arithmetic = data.clone();
    arithmetic[sof + 1] = 0xC9;
    for other in [twelve, arithmetic] {
        assert!(decode_scaled(&other, (width, height), 2, MEMORY).is_none());
    }
    for wrong in [(width + 1, height), (width, height - 1), (height, width)] {
        assert!(
            decode_scaled(&data, wrong, 2, MEMORY).is_none(),
            "{wrong:?}"
        );
    }
    assert!(decode_scaled(&data, (width, height), 0, MEMORY).is_none());
    assert!(decode_scaled(&data, (width, height), 9, MEMORY).is_none());
}

#[test]
fn truncated_corrupted_or_garbage_jpegs_are_declined_without_a_panic() {
    use jpeg_encoder::ColorType;
    let size = (320, 240);
    let good = encoded(size, ColorType::Rgb, |_| {});
    assert!(decode_scaled(&good, size, 3, MEMORY).is_some());
    let scan = scan_range(&good);

    let mut broken: Vec<(String, Vec<u8>)> = Vec::new();
    for cut in [
        scan.start + 10,
        (scan.start + scan.end) / 2,
        scan.end - 1,
        good.len() - 2,
    ] {
        broken.push((format!("cut at {cut}"), good[..cut].to_vec()));
    }
    // 0xFF 0x00 is a stuffed 0xFF: a run of one bits, which no Huffman code is. libjpeg
    // warns ("corrupt JPEG data") and would fill the rest of the picture in grey.
    let mut ones = good.clone();
    let mid = (scan.start + scan.end) / 2;
    for pair in ones[mid..mid + 64].chunks_exact_mut(2) {
        pair.copy_from_slice(&[0xFF, 0x00]);
    }
    broken.push(("all-ones entropy data".into(), ones));
    // A marker in the middle of the scan: the rest of the scan is missing.
    let mut marker = good.clone();
    marker[mid..mid + 2].copy_from_slice(&[0xFF, 0xD9]);
    broken.push(("EOI inside the scan".into(), marker));
    let mut rng = fastrand::Rng::with_seed(3);
    let garbage: Vec<u8> = (0..4096).map(|_| rng.u8(..)).collect();
    broken.push((
        "garbage after SOI".into(),
        [&[0xFF, 0xD8][..], &garbage].concat(),
    ));
    broken.push((
        "headers, then garbage".into(),
        [&good[..scan.start], &garbage].concat(),
    ));
    broken.push(("SOI only".into(), vec![0xFF, 0xD8]));
    broken.push(("empty".into(), Vec::new()));
    // Restart markers out of order: libjpeg resynchronises with a warning.
    let restarts = encoded(size, ColorType::Rgb, |e| e.set_restart_interval(2));
    let rst = restarts.windows(2).position(|w| w == [0xFF, 0xD0]).unwrap();
    let mut shuffled = restarts.clone();
    shuffled[rst + 1] = 0xD5;
    broken.push(("restart marker out of order".into(), shuffled));
    // A header with an impossible sampling factor.
    let sof = good.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    let mut sampling = good.clone();
    sampling[sof + 11] = 0x00; // the first component's H/V factors
    broken.push(("zero sampling factor".into(), sampling));

    for (name, data) in broken {
        for m in [1, 3, 8] {
            assert!(
                decode_scaled(&data, size, m, MEMORY).is_none(),
                "{name} at {m}/8"
            );
        }
    }
}

#[test]
fn too_many_progressive_scans_or_too_much_memory_is_declined() {
    use jpeg_encoder::ColorType;
    let size = (800, 600);
    // 10 scans a component, then the last one again 80 times: 110 scans. Resending an
    // AC band is no progression error (libjpeg does not even warn), so only a limit on
    // scans stops a file of many such tiny ones.
    let ten = encoded(size, ColorType::Rgb, |e| e.set_progressive_scans(10));
    assert!(decode_scaled(&ten, size, 2, MEMORY).is_some());
    let last = ten.windows(2).rposition(|w| w == [0xFF, 0xDA]).unwrap();
    let again = &ten[last..ten.len() - 2];
    let mut many = ten[..ten.len() - 2].to_vec();
    (0..80).for_each(|_| many.extend_from_slice(again));
    many.extend_from_slice(&[0xFF, 0xD9]);
    assert!(
        decode(&many, size, 2, MEMORY, 200).is_some(),
        "a valid file"
    );
    assert!(decode_scaled(&many, size, 2, MEMORY).is_none());
    // The `image` crate's decoder has the same limit: the client hears its refusal.
    let err = downscale(&many, ImageFormat::Jpeg, 60_000, 85, 25_000_000).unwrap_err();
    assert!(err.to_string().contains("Too many scans"), "{err}");
    assert!(decode(&ten, size, 2, MEMORY, 30).is_some(), "30 scans");
    assert!(
        decode(&ten, size, 2, MEMORY, 29).is_none(),
        "one scan past the limit"
    );

    // A progressive file keeps every coefficient until the last scan: 800x600 4:4:4 is
    // 2.9 MB of them.
    let progressive = encoded(size, ColorType::Rgb, |e| e.set_progressive(true));
    assert!(decode_scaled(&progressive, size, 2, 4 << 20).is_some());
    assert!(decode_scaled(&progressive, size, 2, 1 << 20).is_none());
    // A baseline file needs no whole-image buffer.
    let baseline = encoded(size, ColorType::Rgb, |_| {});
    assert!(decode_scaled(&baseline, size, 2, 1 << 20).is_some());
}

#[test]
fn random_damage_never_escapes_the_decoder() {
    use jpeg_encoder::{ColorType, SamplingFactor};
    let size = (96, 72);
    let files = [
        encoded(size, ColorType::Rgb, sampling(SamplingFactor::F_2_2)),
        encoded(size, ColorType::Luma, |_| {}),
        encoded(size, ColorType::Rgb, |e| {
            e.set_progressive(true);
            e.set_restart_interval(2);
        }),
    ];
    let cases: usize = std::env::var("DASHGATE_SCALED_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut rng = fastrand::Rng::with_seed(11);
    let mut decoded = 0;
    for _ in 0..cases {
        let mut data = files[rng.usize(..files.len())].clone();
        for _ in 0..rng.usize(1..6) {
            let i = rng.usize(..data.len());
            data[i] = rng.u8(..);
        }
        if rng.bool() {
            data.truncate(rng.usize(..=data.len()));
        }
        if let Some(out) = decode_scaled(&data, size, rng.u32(1..=8), MEMORY) {
            let channels = if out.gray { 1 } else { 3 };
            assert_eq!(
                out.pixels.len(),
                (out.width * out.height) as usize * channels
            );
            decoded += 1;
        }
    }
    assert!(
        decoded > 0 && decoded < cases,
        "{decoded} of {cases} decoded"
    );
}
