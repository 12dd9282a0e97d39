//! `conv` launchers (kernels/conv.cu), f32 NCHW: [`conv2d`] (torch Conv2d with bias and an optional fused
//! residual; CPU reference `backend::cpu::conv::conv2d` / `conv2d_add`), [`upsample_conv`] (nearest ×2 then 3×3
//! pad-1 conv over four output phases; CPU reference `backend::cpu::conv::upsample_conv3x3`) with its host-side
//! weight fold [`upsample_fold_weights`], and [`conv_transpose2d`] (torch ConvTranspose2d; CPU reference
//! `backend::cpu::conv_transpose::conv_transpose2d`).
//!
//! All three kernels are one implicit GEMM (no im2col buffer, no workspace): 256-thread blocks, each a 64 output
//! channels × 64 output pixels tile, pixels of all images flattened; see the kernel file for the design.
use super::kernels::{self, Conv2dParams, ConvTranspose2dParams, UpsampleConvParams};
use super::launch::{check_len, invalid, to_i32, DevPtr, DevPtrMut, LaunchConfig, Launcher};
use crate::backend::cpu;
use crate::Result;

/// Tile of one block: output channels × output pixels (CONV_BM × CONV_BN in kernels/conv.cu).
pub const TILE_M: usize = 64;
pub const TILE_N: usize = 64;
/// The kernels require exactly this block size (they trap otherwise).
pub const THREADS: u32 = 256;
/// Dynamic shared memory per block: A tile 16 × (64 + 4) floats plus B tile 16 × 64 floats.
pub const SMEM_BYTES: u32 = ((16 * (64 + 4) + 16 * 64) * 4) as u32;

/// Grid (ceil(pixels / 64), ceil(c_out / 64), phases) of 256-thread blocks. 64 × 64 tiles with 4 × 4 outputs
/// per thread: the largest tile that keeps ≥ 2 blocks per SM's worth of work at the decoder's 16×16 (512 ch)
/// stages and small enough that conv_out (c_out = 3) wastes one tile row, not two.
pub fn config(pixels: usize, c_out: usize, phases: u32) -> LaunchConfig {
    LaunchConfig::new(
        [pixels.div_ceil(TILE_N) as u32, c_out.div_ceil(TILE_M) as u32, phases],
        [THREADS, 1, 1],
    )
    .with_shared(SMEM_BYTES)
}

/// Output size (oh, ow) of a Conv2d, pad = [top, bottom, left, right]; `None` if the kernel exceeds the padded
/// input or the stride is 0.
pub fn conv2d_out_size(h: usize, w: usize, kh: usize, kw: usize, stride: usize, pad: [usize; 4]) -> Option<(usize, usize)> {
    if stride == 0 || kh == 0 || kw == 0 {
        return None;
    }
    let ph = (h + pad[0] + pad[1]).checked_sub(kh)?;
    let pw = (w + pad[2] + pad[3]).checked_sub(kw)?;
    Some((ph / stride + 1, pw / stride + 1))
}

/// A pointer the kernel never dereferences (its `has_*` flag is 0).
fn absent<'a>() -> DevPtr<'a, f32> {
    // SAFETY: zero elements; the kernels read bias / residual only when the matching flag is set.
    unsafe { DevPtr::from_raw(0, 0) }
}

fn nonzero(op: &str, what: &[(&str, usize)]) -> Result<()> {
    match what.iter().find(|(_, v)| *v == 0) {
        Some((name, _)) => Err(invalid(op, format!("empty shape: {name} = 0"))),
        None => Ok(()),
    }
}

fn product(op: &str, what: &str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| invalid(op, format!("{what} overflows")))
}

fn grid_y(op: &str, c_out: usize) -> Result<()> {
    if c_out.div_ceil(TILE_M) > 65535 {
        return Err(invalid(op, format!("c_out = {c_out} exceeds the grid ({} channels)", 65535 * TILE_M)));
    }
    Ok(())
}

/// `out = conv2d(x, weight) + bias (+ residual)`, torch Conv2d semantics (cross-correlation, zero padding).
/// x: (n, c_in, h, w); weight: torch (c_out, c_in, kh, kw); bias: (c_out) or none; residual: same shape as out or
/// none; out: (n, c_out, oh, ow) with (oh, ow) = [`conv2d_out_size`]. pad = [top, bottom, left, right]. Any
/// kh, kw ≥ 1 (1×1 and 3×3 have specialised gathers), any stride ≥ 1. Buffers may be longer than needed.
#[allow(clippy::too_many_arguments)]
pub fn conv2d<L: Launcher + ?Sized>(
    l: &L,
    x: DevPtr<'_, f32>,
    weight: DevPtr<'_, f32>,
    bias: Option<DevPtr<'_, f32>>,
    residual: Option<DevPtr<'_, f32>>,
    out: DevPtrMut<'_, f32>,
    (n, c_in, h, w): (usize, usize, usize, usize),
    (c_out, kh, kw): (usize, usize, usize),
    stride: usize,
    pad: [usize; 4],
) -> Result<()> {
    let op = "conv2d";
    nonzero(
        op,
        &[("n", n), ("c_in", c_in), ("h", h), ("w", w), ("c_out", c_out), ("kh", kh), ("kw", kw), ("stride", stride)],
    )?;
    let (oh, ow) = conv2d_out_size(h, w, kh, kw, stride, pad).ok_or_else(|| {
        invalid(op, format!("{kh}x{kw} kernel exceeds the {h}x{w} input padded by {pad:?}"))
    })?;
    let pixels = product(op, "n·oh·ow", &[n, oh, ow])?;
    check_len(op, "x", x.len(), product(op, "x size", &[n, c_in, h, w])?)?;
    check_len(op, "weight", weight.len(), product(op, "weight size", &[c_out, c_in, kh, kw])?)?;
    let out_len = product(op, "out size", &[pixels, c_out])?;
    check_len(op, "out", out.len(), out_len)?;
    if let Some(b) = &bias {
        check_len(op, "bias", b.len(), c_out)?;
    }
    if let Some(r) = &residual {
        check_len(op, "residual", r.len(), out_len)?;
    }
    grid_y(op, c_out)?;
    let p = Conv2dParams {
        n: to_i32(op, "n", n)?,
        c_in: to_i32(op, "c_in", c_in)?,
        h: to_i32(op, "h", h)?,
        w: to_i32(op, "w", w)?,
        c_out: to_i32(op, "c_out", c_out)?,
        kh: to_i32(op, "kh", kh)?,
        kw: to_i32(op, "kw", kw)?,
        stride: to_i32(op, "stride", stride)?,
        pad_top: to_i32(op, "pad top", pad[0])?,
        pad_left: to_i32(op, "pad left", pad[2])?,
        oh: to_i32(op, "oh", oh)?,
        ow: to_i32(op, "ow", ow)?,
        has_bias: bias.is_some() as i32,
        has_residual: residual.is_some() as i32,
    };
    to_i32(op, "n·oh·ow", pixels)?;
    to_i32(op, "c_in·kh·kw", product(op, "c_in·kh·kw", &[c_in, kh, kw])?)?;
    // the kernel's padded coordinates (oy·stride − top + ky) stay in int32
    to_i32(op, "padded input", (h + pad[0] + pad[1]).max(w + pad[2] + pad[3]) * 2)?;
    let (b, r) = (bias.unwrap_or_else(absent), residual.unwrap_or_else(absent));
    kernels::conv2d_f32(l, config(pixels, c_out, 1), x, weight, b, r, out, p)
}

/// Folds a torch 3×3 weight (c_out, c_in, 3, 3) into the four phase weights [`upsample_conv`] reads, layout
/// (phase = a·2 + b, c_out, c_in, dy, dx): phase (a, b) = (Y % 2, X % 2) of the output, and each phase slice is a
/// torch-layout (c_out, c_in, 2, 2) conv weight over the input padded by one pixel. 16·c_out·c_in floats. The
/// sums are `cpu::conv::upsample_phase_weights`' (same values bit for bit, only permuted), so the kernel and the
/// CPU's `upsample_conv3x3` multiply the same numbers. Done once, at weight upload.
pub fn upsample_fold_weights(weight: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    // cpu layout: (a, b, dy, dx, c_out, c_in)
    let cpu_w = cpu::conv::upsample_phase_weights(weight, c_out, c_in);
    let mut g = vec![0f32; cpu_w.len()];
    for phase in 0..4 {
        for tap in 0..4 {
            let src = &cpu_w[(phase * 4 + tap) * c_out * c_in..][..c_out * c_in];
            for (i, &v) in src.iter().enumerate() {
                // i = co·c_in + ci
                g[(phase * c_out * c_in + i) * 4 + tap] = v;
            }
        }
    }
    g
}

/// Nearest ×2 upsample then 3×3 stride-1 pad-1 conv (+ bias): x (n, c_in, h, w) → out (n, c_out, 2h, 2w).
/// `folded` is [`upsample_fold_weights`] of the torch 3×3 weight (16·c_out·c_in floats).
#[allow(clippy::too_many_arguments)]
pub fn upsample_conv<L: Launcher + ?Sized>(
    l: &L,
    x: DevPtr<'_, f32>,
    folded: DevPtr<'_, f32>,
    bias: Option<DevPtr<'_, f32>>,
    out: DevPtrMut<'_, f32>,
    (n, c_in, h, w): (usize, usize, usize, usize),
    c_out: usize,
) -> Result<()> {
    let op = "upsample_conv";
    nonzero(op, &[("n", n), ("c_in", c_in), ("h", h), ("w", w), ("c_out", c_out)])?;
    let pixels = product(op, "n·h·w", &[n, h, w])?;
    check_len(op, "x", x.len(), product(op, "x size", &[pixels, c_in])?)?;
    check_len(op, "folded weight", folded.len(), product(op, "weight size", &[16, c_out, c_in])?)?;
    check_len(op, "out", out.len(), product(op, "out size", &[4, pixels, c_out])?)?;
    if let Some(b) = &bias {
        check_len(op, "bias", b.len(), c_out)?;
    }
    grid_y(op, c_out)?;
    // the kernel indexes output rows and columns of the 2h × 2w image in int32
    to_i32(op, "n·2h·2w", product(op, "n·2h·2w", &[4, pixels])?)?;
    to_i32(op, "c_in·4", product(op, "c_in·4", &[c_in, 4])?)?;
    let p = UpsampleConvParams {
        n: to_i32(op, "n", n)?,
        c_in: to_i32(op, "c_in", c_in)?,
        h: to_i32(op, "h", h)?,
        w: to_i32(op, "w", w)?,
        c_out: to_i32(op, "c_out", c_out)?,
        has_bias: bias.is_some() as i32,
    };
    kernels::upsample_conv_f32(l, config(pixels, c_out, 4), x, folded, bias.unwrap_or_else(absent), out, p)
}

/// torch ConvTranspose2d (dilation 1, groups 1) + bias: x (n, c_in, h, w); weight (c_in, c_out, kh, kw) as PyTorch
/// stores it; out (n, c_out, oh, ow) with oh = (h − 1)·stride − 2·pad + kh + output_padding (likewise ow,
/// `cpu::conv_transpose::out_size`). `pad` and `output_padding` apply to both dimensions; like PyTorch,
/// output_padding must be smaller than the stride.
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose2d<L: Launcher + ?Sized>(
    l: &L,
    x: DevPtr<'_, f32>,
    weight: DevPtr<'_, f32>,
    bias: Option<DevPtr<'_, f32>>,
    out: DevPtrMut<'_, f32>,
    (n, c_in, h, w): (usize, usize, usize, usize),
    (c_out, kh, kw): (usize, usize, usize),
    stride: usize,
    pad: usize,
    output_padding: usize,
) -> Result<()> {
    let op = "conv_transpose2d";
    nonzero(
        op,
        &[("n", n), ("c_in", c_in), ("h", h), ("w", w), ("c_out", c_out), ("kh", kh), ("kw", kw), ("stride", stride)],
    )?;
    if output_padding >= stride {
        return Err(invalid(op, format!("output_padding {output_padding} must be smaller than stride {stride}")));
    }
    let size = |i, k| cpu::conv_transpose::out_size(i, k, stride, pad, output_padding);
    let (oh, ow) = size(h, kh).zip(size(w, kw)).ok_or_else(|| {
        invalid(op, format!("empty output for {h}x{w}, kernel {kh}x{kw}, stride {stride}, padding {pad}"))
    })?;
    let pixels = product(op, "n·oh·ow", &[n, oh, ow])?;
    check_len(op, "x", x.len(), product(op, "x size", &[n, c_in, h, w])?)?;
    check_len(op, "weight", weight.len(), product(op, "weight size", &[c_in, c_out, kh, kw])?)?;
    check_len(op, "out", out.len(), product(op, "out size", &[pixels, c_out])?)?;
    if let Some(b) = &bias {
        check_len(op, "bias", b.len(), c_out)?;
    }
    grid_y(op, c_out)?;
    to_i32(op, "n·oh·ow", pixels)?;
    to_i32(op, "c_in·kh·kw", product(op, "c_in·kh·kw", &[c_in, kh, kw])?)?;
    let p = ConvTranspose2dParams {
        n: to_i32(op, "n", n)?,
        c_in: to_i32(op, "c_in", c_in)?,
        h: to_i32(op, "h", h)?,
        w: to_i32(op, "w", w)?,
        c_out: to_i32(op, "c_out", c_out)?,
        kh: to_i32(op, "kh", kh)?,
        kw: to_i32(op, "kw", kw)?,
        stride: to_i32(op, "stride", stride)?,
        pad: to_i32(op, "pad", pad)?,
        oh: to_i32(op, "oh", oh)?,
        ow: to_i32(op, "ow", ow)?,
        has_bias: bias.is_some() as i32,
    };
    to_i32(op, "oh + pad", oh + pad)?;
    kernels::conv_transpose2d_f32(l, config(pixels, c_out, 1), x, weight, bias.unwrap_or_else(absent), out, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_sizes() {
        assert_eq!(conv2d_out_size(8, 8, 3, 3, 2, [0, 1, 0, 1]), Some((4, 4)));
        assert_eq!(conv2d_out_size(5, 7, 3, 3, 1, [1; 4]), Some((5, 7)));
        assert_eq!(conv2d_out_size(1, 1, 3, 3, 1, [0; 4]), None);
        assert_eq!(conv2d_out_size(4, 4, 1, 1, 0, [0; 4]), None);
    }

    /// The fold is a permutation of the CPU's phase weights, and phase (a, b) tap (dy, dx) holds the sum of the
    /// 3×3 taps it covers (checked on a weight whose taps are distinct powers of two, so each sum names its taps).
    #[test]
    fn fold_layout() {
        let (c_out, c_in) = (2, 3);
        let w: Vec<f32> = (0..c_out * c_in * 9)
            .map(|i| (1u32 << (i % 9)) as f32 * (1 + i / 9) as f32)
            .collect();
        let g = upsample_fold_weights(&w, c_out, c_in);
        assert_eq!(g.len(), 16 * c_out * c_in);
        let fold: [[&[usize]; 2]; 2] = [[&[0], &[1, 2]], [&[0, 1], &[2]]];
        for a in 0..2 {
            for b in 0..2 {
                for co in 0..c_out {
                    for ci in 0..c_in {
                        for dy in 0..2 {
                            for dx in 0..2 {
                                let mut want = 0f32;
                                for &ky in fold[a][dy] {
                                    for &kx in fold[b][dx] {
                                        want += w[(co * c_in + ci) * 9 + ky * 3 + kx];
                                    }
                                }
                                let got = g[((((a * 2 + b) * c_out + co) * c_in + ci) * 2 + dy) * 2 + dx];
                                assert_eq!(got, want, "a={a} b={b} co={co} ci={ci} dy={dy} dx={dx}");
                            }
                        }
                    }
                }
            }
        }
    }
}
