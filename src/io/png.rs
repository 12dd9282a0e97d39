//! Images: the spec §10 pixel conversions, PNG writing, image reading and the encoder's input preprocessing.
use std::path::Path;

use crate::{Error, Result};

/// Decoder output `(N, 3, H, W)` f32 (NCHW, nominally in [-1, 1]) -> `N` images, HWC u8, concatenated.
///
/// `u = trunc(clamp(127.5·x + 128, 0, 255))`, computed in f32 as a separate multiply and add (no FMA) like the
/// official FID sampler (`torch.clamp(127.5 * samples + 128.0, 0, 255).to(torch.uint8)`), so bytes match it
/// exactly. NaN maps to 0 (torch's NaN -> uint8 cast is undefined; 0 at least makes a broken decode visible).
///
/// # Panics
/// If `x.len() != n * 3 * h * w`.
pub fn to_u8_hwc(x: &[f32], n: usize, h: usize, w: usize) -> Vec<u8> {
    assert_eq!(
        x.len(),
        n * 3 * h * w,
        "to_u8_hwc: expected {n}x3x{h}x{w} values, got {}",
        x.len()
    );
    let plane = h * w;
    let mut out = vec![0u8; n * plane * 3];
    if plane == 0 {
        return out; // `chunks_exact(0)` would panic
    }
    for (img, dst) in x.chunks_exact(3 * plane).zip(out.chunks_exact_mut(3 * plane)) {
        for c in 0..3 {
            for (p, &v) in img[c * plane..(c + 1) * plane].iter().enumerate() {
                dst[p * 3 + c] = f32_to_u8(v);
            }
        }
    }
    out
}

#[inline]
fn f32_to_u8(v: f32) -> u8 {
    let u = 127.5f32 * v + 128.0;
    if u.is_nan() {
        0
    } else {
        u.clamp(0.0, 255.0) as u8
    }
}

/// PyTorch `F.interpolate(x, size=(oh, ow), mode='bicubic', align_corners=False)` on an NCHW f32 batch: cubic
/// coefficient -0.75, half-pixel centres, no antialiasing, edge samples clamped. The FID sampler applies this
/// to 384-pixel samples before [`to_u8_hwc`] when evaluating at 256 (spec §10).
///
/// # Panics
/// If `x.len() != nc * h * w` (`nc` = batch × channels), or a size is zero.
pub fn resize_bicubic_nchw(x: &[f32], nc: usize, h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    assert_eq!(
        x.len(),
        nc * h * w,
        "resize_bicubic_nchw: expected {nc}x{h}x{w} values, got {}",
        x.len()
    );
    assert!(
        h > 0 && w > 0 && oh > 0 && ow > 0,
        "resize_bicubic_nchw: zero-sized image"
    );
    let taps_y = torch_cubic_taps(h, oh);
    let taps_x = torch_cubic_taps(w, ow);
    let mut out = vec![0f32; nc * oh * ow];
    for (src, dst) in x.chunks_exact(h * w).zip(out.chunks_exact_mut(oh * ow)) {
        for (oy, (iy, wy)) in taps_y.iter().enumerate() {
            for (ox, (ix, wx)) in taps_x.iter().enumerate() {
                // Same accumulation order as torch's CPU kernel: rows weighted after each row's sum.
                let mut acc = 0f32;
                for j in 0..4 {
                    let row = &src[iy[j] * w..];
                    let mut t = 0f32;
                    for i in 0..4 {
                        t += row[ix[i]] * wx[i];
                    }
                    acc += t * wy[j];
                }
                dst[oy * ow + ox] = acc;
            }
        }
    }
    out
}

/// Per output index: the four clamped source indices and their weights.
fn torch_cubic_taps(input: usize, output: usize) -> Vec<([usize; 4], [f32; 4])> {
    const A: f32 = -0.75;
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|o| {
            // Cubic mode does not clamp the source coordinate at 0, unlike linear.
            let src = scale * (o as f32 + 0.5) - 0.5;
            let base = src.floor();
            let t = src - base;
            let weights = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
            let idx = std::array::from_fn(|k| (base as i64 - 1 + k as i64).clamp(0, input as i64 - 1) as usize);
            (idx, weights)
        })
        .collect()
}

/// Encode HWC RGB u8 as PNG and write it atomically.
pub fn write_png_rgb(path: &Path, hwc: &[u8], h: usize, w: usize) -> Result<()> {
    let buf = encode_png_rgb(hwc, h, w).map_err(|e| Error::format(path, e))?;
    super::write_atomic(path, &buf)
}

/// Encode HWC RGB u8 as PNG bytes (the same bytes `write_png_rgb` writes).
pub fn encode_png_rgb(hwc: &[u8], h: usize, w: usize) -> std::result::Result<Vec<u8>, String> {
    use image::ImageEncoder;
    if hwc.len() != h * w * 3 || h == 0 || w == 0 {
        return Err(format!("cannot write a {h}x{w} RGB image from {} bytes", hwc.len()));
    }
    let (Ok(wu), Ok(hu)) = (u32::try_from(w), u32::try_from(h)) else {
        return Err(format!("image {h}x{w} too large for PNG"));
    };
    let mut buf = Vec::new();
    image::codecs::png::PngEncoder::new(&mut buf)
        .write_image(hwc, wu, hu, image::ExtendedColorType::Rgb8)
        .map_err(|e| format!("PNG encoding failed: {e}"))?;
    Ok(buf)
}

/// Padding between and around grid cells, in pixels, and its value: black, as torchvision's `make_grid`
/// (`padding=2, pad_value=0`) used by the official demo's `save_image`.
pub const GRID_PAD: usize = 2;

/// Tile equally sized HWC RGB images into one, row-major with `cols` per row (fewer if there are fewer
/// images), separated and surrounded by [`GRID_PAD`] black pixels. Returns `(bytes, H, W)` with
/// `H = rows·(h+2)+2`, `W = cols·(w+2)+2`. Like `make_grid`, a single image is returned unpadded, and no images
/// give an empty 0x0 result.
///
/// # Panics
/// If an image does not hold `h * w * 3` bytes.
pub fn grid(images: &[&[u8]], h: usize, w: usize, cols: usize) -> (Vec<u8>, usize, usize) {
    for (i, img) in images.iter().enumerate() {
        assert_eq!(
            img.len(),
            h * w * 3,
            "grid: image {i} has {} bytes, expected {h}x{w}x3",
            img.len()
        );
    }
    match images.len() {
        0 => return (Vec::new(), 0, 0),
        1 => return (images[0].to_vec(), h, w),
        _ => {}
    }
    let cols = cols.clamp(1, images.len());
    let rows = images.len().div_ceil(cols);
    let (gh, gw) = (rows * (h + GRID_PAD) + GRID_PAD, cols * (w + GRID_PAD) + GRID_PAD);
    let mut out = vec![0u8; gh * gw * 3];
    for (k, img) in images.iter().enumerate() {
        let (y0, x0) = (
            (k / cols) * (h + GRID_PAD) + GRID_PAD,
            (k % cols) * (w + GRID_PAD) + GRID_PAD,
        );
        for y in 0..h {
            let dst = ((y0 + y) * gw + x0) * 3;
            out[dst..dst + w * 3].copy_from_slice(&img[y * w * 3..(y + 1) * w * 3]);
        }
    }
    (out, gh, gw)
}

/// Read an image file (PNG or JPEG; format from the content, not the extension) as HWC RGB u8, returning
/// `(bytes, h, w)`. Grey images are replicated to three channels and alpha is dropped without compositing,
/// as PIL's `convert("RGB")` does.
pub fn read_rgb(path: &Path) -> Result<(Vec<u8>, usize, usize)> {
    let bytes = super::read_file(path)?;
    let img = image::load_from_memory(&bytes)
        .map_err(|e| Error::format(path, format!("cannot decode image: {e}")))?
        .to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return Err(Error::format(path, "image has zero width or height"));
    }
    Ok((img.into_raw(), h, w))
}

/// Encoder input from an HWC RGB u8 image: ADM's `center_crop_arr` to `size`x`size` (while the short side is
/// at least `2·size`, halve both sides (floor) with a box filter; then bicubic-resize so the short side is
/// `size`, the long side `round_half_even(side·size/short)`; then take the centre, offset `(side-size)/2`),
/// followed by `x = 2·(u/255) − 1` as f32 CHW (`ToTensor` + `Normalize(0.5, 0.5)`, which rounds identically).
///
/// The resizes reproduce Pillow's 8-bit resampler (separable, horizontal pass first, antialiased support,
/// 22-bit fixed-point weights, rounding to u8 after each pass), so codes extracted from the same file match
/// the official tools.
///
/// # Panics
/// If `rgb.len() != h * w * 3` or any of `h`, `w`, `size` is zero.
pub fn preprocess_for_encoder(rgb: &[u8], h: usize, w: usize, size: usize) -> Vec<f32> {
    assert_eq!(
        rgb.len(),
        h * w * 3,
        "preprocess_for_encoder: expected {h}x{w}x3 bytes, got {}",
        rgb.len()
    );
    assert!(
        h > 0 && w > 0 && size > 0,
        "preprocess_for_encoder: zero-sized image or target"
    );
    let mut img = Rgb {
        data: rgb.to_vec(),
        h,
        w,
    };
    while img.h.min(img.w) >= 2 * size {
        img = pil_resize(&img, img.h / 2, img.w / 2, Filter::Box);
    }
    let scale = size as f64 / img.h.min(img.w) as f64;
    let (nh, nw) = (
        (img.h as f64 * scale).round_ties_even() as usize,
        (img.w as f64 * scale).round_ties_even() as usize,
    );
    img = pil_resize(&img, nh, nw, Filter::Bicubic);
    let (y0, x0) = ((img.h - size) / 2, (img.w - size) / 2);
    let mut out = vec![0f32; 3 * size * size];
    for c in 0..3 {
        for y in 0..size {
            for x in 0..size {
                let u = img.data[((y0 + y) * img.w + x0 + x) * 3 + c];
                out[(c * size + y) * size + x] = 2.0 * (u as f32 / 255.0) - 1.0;
            }
        }
    }
    out
}

struct Rgb {
    data: Vec<u8>,
    h: usize,
    w: usize,
}

#[derive(Clone, Copy)]
enum Filter {
    Box,
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Box => 0.5,
            Filter::Bicubic => 2.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        match self {
            Filter::Box => (x > -0.5 && x <= 0.5) as u8 as f64,
            Filter::Bicubic => {
                // Pillow uses a = -0.5 (Keys), not PyTorch's -0.75.
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Pillow's fixed-point precision for 8-bit images: leaves two bits of headroom for negative lobes and
/// overshoot in an i32 accumulator.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// One output sample's source window and integer weights.
struct Taps {
    start: usize,
    weights: Vec<i32>,
}

fn pil_taps(input: usize, output: usize, filter: Filter) -> Vec<Taps> {
    let scale = input as f64 / output as f64;
    // Downscaling widens the kernel (antialiasing); upscaling keeps it at its natural width.
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    // Multiplying by the reciprocal (not dividing) keeps Pillow's rounding of the filter argument.
    let inv = 1.0 / filterscale;
    (0..output)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            // C's `(int)` truncation, then clamping to the image.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(input as i64).max(lo as i64) as usize;
            let raw: Vec<f64> = (lo..hi).map(|x| filter.eval((x as f64 - center + 0.5) * inv)).collect();
            let total: f64 = raw.iter().sum();
            let one = (1i64 << PRECISION_BITS) as f64;
            let weights = raw
                .iter()
                .map(|&k| {
                    let k = if total != 0.0 { k / total } else { k };
                    // Round half away from zero, as Pillow's normalisation does.
                    if k < 0.0 {
                        (k * one - 0.5) as i32
                    } else {
                        (k * one + 0.5) as i32
                    }
                })
                .collect();
            Taps { start: lo, weights }
        })
        .collect()
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `Image.resize` for an RGB image: horizontal pass, then vertical, each skipped when that side
/// keeps its size, each rounding to u8.
fn pil_resize(img: &Rgb, oh: usize, ow: usize, filter: Filter) -> Rgb {
    let mut cur = Rgb {
        data: img.data.clone(),
        h: img.h,
        w: img.w,
    };
    if ow != cur.w {
        let taps = pil_taps(cur.w, ow, filter);
        let mut data = vec![0u8; cur.h * ow * 3];
        for y in 0..cur.h {
            let row = &cur.data[y * cur.w * 3..(y + 1) * cur.w * 3];
            for (x, t) in taps.iter().enumerate() {
                for c in 0..3 {
                    let mut acc: i32 = 1 << (PRECISION_BITS - 1);
                    for (k, &wt) in t.weights.iter().enumerate() {
                        acc = acc.wrapping_add(row[(t.start + k) * 3 + c] as i32 * wt);
                    }
                    data[(y * ow + x) * 3 + c] = clip8(acc);
                }
            }
        }
        cur = Rgb { data, h: cur.h, w: ow };
    }
    if oh != cur.h {
        let taps = pil_taps(cur.h, oh, filter);
        let stride = cur.w * 3;
        let mut data = vec![0u8; oh * stride];
        for (y, t) in taps.iter().enumerate() {
            for i in 0..stride {
                let mut acc: i32 = 1 << (PRECISION_BITS - 1);
                for (k, &wt) in t.weights.iter().enumerate() {
                    acc = acc.wrapping_add(cur.data[(t.start + k) * stride + i] as i32 * wt);
                }
                data[y * stride + i] = clip8(acc);
            }
        }
        cur = Rgb { data, h: oh, w: cur.w };
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pil_box_halving_rounds_half_up() {
        // Box 2->1 averages with +0.5 rounding: (1 + 2) / 2 = 1.5 -> 2.
        let img = Rgb {
            data: vec![1, 1, 1, 2, 2, 2],
            h: 1,
            w: 2,
        };
        let out = pil_resize(&img, 1, 1, Filter::Box);
        assert_eq!(out.data, vec![2, 2, 2]);
    }

    #[test]
    fn pil_bicubic_weights_sum_to_one() {
        for (i, o) in [(10, 7), (7, 10), (512, 256), (300, 256)] {
            for t in pil_taps(i, o, Filter::Bicubic) {
                let s: i64 = t.weights.iter().map(|&w| w as i64).sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= t.weights.len() as i64,
                    "{i}->{o}: {s}"
                );
            }
        }
    }

    #[test]
    fn torch_bicubic_identity_and_constant() {
        let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
        assert_eq!(resize_bicubic_nchw(&x, 1, 3, 4, 3, 4), x);
        let c = vec![0.25f32; 2 * 6 * 6];
        for v in resize_bicubic_nchw(&c, 2, 6, 6, 4, 4) {
            assert!((v - 0.25).abs() < 1e-6);
        }
    }
}
