//! `conv` launchers (kernels/conv.cu), f32 NCHW: [`conv2d`] (torch Conv2d with bias and an optional fused
//! residual; CPU reference `backend::cpu::conv::conv2d` / `conv2d_add`), [`upsample_conv`] (nearest ×2 then 3×3
//! pad-1 conv over four output phases; CPU reference `backend::cpu::conv::upsample_conv3x3`) with its host-side
//! weight fold [`upsample_fold_weights`].
//!
//! Both are one implicit GEMM (no im2col buffer, no workspace): 256-thread blocks, each a 64 × 64 or
//! 128 × 128 tile ([`Tile`]) of output channels × output pixels, pixels of all images flattened; see the kernel
//! file for the design.
use super::kernels::{self, Conv2dParams, UpsampleConvParams};
use super::launch::{check_len, invalid, to_i32, DevPtr, DevPtrMut, LaunchConfig, Launcher};
use crate::backend::common;
use crate::Result;

/// The kernels require exactly this block size (they trap otherwise).
pub const THREADS: u32 = 256;

/// Output tile of one block (output channels × output pixels), one kernel variant each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tile {
    /// 64 × 64, 4 × 4 outputs per thread, K step 16 (`conv2d_f32`, `upsample_conv_f32`).
    T64,
    /// 128 × 128, 8 × 8 outputs per thread, K step 8 (`*_t128_f32`): twice the FMAs per shared-memory load.
    T128,
    /// 128 × 128 on tensor cores, TF32 (`conv2d_tc_f32` / `upsample_conv_tc_f32` with one pass): operands rounded
    /// to 10 mantissa bits, ~1e-4 relative error on the VQ's sums. Opt-in (`--vq-math tf32`), never picked.
    Tf32,
    /// The same with 3xTF32 (big + small halves, three mmas): f32-level error at 3× the tensor work.
    Tf32x3,
    /// 128 × 128 on tensor cores with both operands rounded to bf16 (mma m16n8k16): twice the TF32 rate, ~8× its
    /// error (`--vq-dtype bf16`).
    Bf16,
}

impl Tile {
    pub fn dims(self) -> (usize, usize) {
        match self {
            Tile::T64 => (64, 64),
            Tile::T128 | Tile::Tf32 | Tile::Tf32x3 | Tile::Bf16 => (128, 128),
        }
    }

    /// Whether the tile runs on tensor cores (`conv2d_tc_f32`, `upsample_conv_tc_f32`).
    pub fn tensor_cores(self) -> bool {
        matches!(self, Tile::Tf32 | Tile::Tf32x3 | Tile::Bf16)
    }

    /// The tensor-core kernels' arithmetic (`tc_math`: `CONV_TC_*`), 0 for the SIMT tiles.
    fn tc_math(self) -> i32 {
        match self {
            Tile::Tf32 => kernels::CONV_TC_TF32,
            Tile::Tf32x3 => kernels::CONV_TC_TF32X3,
            Tile::Bf16 => kernels::CONV_TC_BF16,
            Tile::T64 | Tile::T128 => 0,
        }
    }

    /// Dynamic shared memory per block: A tile BK × (BM + 4) floats plus B tile BK × BN floats.
    pub fn shared_bytes(self) -> u32 {
        match self {
            Tile::T64 => 16 * (64 + 4) * 4 + self.b_tile_bytes(),
            Tile::T128 => 8 * (128 + 4) * 4 + self.b_tile_bytes(),
            // three stages of A (128 × 16) and B (16 × 128) f32
            Tile::Tf32 | Tile::Tf32x3 | Tile::Bf16 => 3 * (128 * 16 + 16 * 128) * 4,
        }
    }

    /// One B tile (BK × BN f32) of a SIMT tile (0 for the tensor-core tiles, which read B from the halo).
    pub fn b_tile_bytes(self) -> u32 {
        match self {
            Tile::T64 => 16 * 64 * 4,
            Tile::T128 => 8 * 128 * 4,
            Tile::Tf32 | Tile::Tf32x3 | Tile::Bf16 => 0,
        }
    }

    /// The production choice: T128 where it still gives at least one block per SM of an H100 (132) and wastes
    /// little of the channel dimension (c_out ≥ 96), T64 otherwise (the decoder's 16×16 and 32×32 stages,
    /// conv_out's 3 channels, small test shapes). A guess from occupancy arithmetic, not yet measured.
    pub fn pick(pixels: usize, c_out: usize) -> Tile {
        if c_out >= 96 && pixels.div_ceil(128) * c_out.div_ceil(128) >= 132 {
            Tile::T128
        } else {
            Tile::T64
        }
    }
}

/// Two halo buffers of 16 channels × at most 276 floats (kernels/conv.cu `HALO_BYTES`).
pub const HALO_BYTES: u32 = 2 * 16 * 276 * 4;

/// Where a block's taps come from: gathered one by one from global memory, or staged once per 16 input channels
/// in a halo tile of `rw` columns (3×3 stride-1 pad-1 convs and the upsample's phases; see the kernel file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loader {
    Gather,
    Halo { rw: u32 },
}

/// The halo tile width for an input of `c_in` channels and width `w`, when the halo path applies: every 16-channel
/// chunk whole (c_in % 16 == 0), and the 128-pixel (T64: 64-pixel) tile whole rows (w in {8, 16, 32, 64}) or
/// 32-column pieces of rows (w a larger multiple of 32; kernels/conv.cu says why not wider). The caller checks the
/// conv's geometry (3×3, stride 1, pad 1) and the input's 16-byte alignment.
pub fn halo_width(c_in: usize, w: usize) -> Option<u32> {
    if !c_in.is_multiple_of(16) {
        return None;
    }
    match w {
        8 | 16 | 32 | 64 => Some(w as u32),
        _ if w.is_multiple_of(32) => Some(32),
        _ => None,
    }
}

/// The halo tile width of a conv2d launch, where the halo path applies: 3×3, stride 1, pad 1, a 16-byte aligned
/// input and [`halo_width`]'s channels and widths. The GroupNorm prologue ([`ConvNorm`]) needs it.
pub fn conv2d_halo(
    (c_in, w): (usize, usize),
    (kh, kw, stride): (usize, usize, usize),
    pad: [usize; 4],
    x_addr: u64,
) -> Option<u32> {
    (kh == 3 && kw == 3 && stride == 1 && pad == [1; 4] && x_addr.is_multiple_of(16))
        .then(|| halo_width(c_in, w))
        .flatten()
}

/// A conv2d's GroupNorm (+ swish) prologue: `rec` holds `groupnorm::groupnorm_affine`'s records of x (4 floats
/// per (image, input channel)); the kernel normalises each halo chunk in shared memory as it lands, so the conv
/// reads x once and the normalised tensor never reaches memory. Halo launches only ([`conv2d_halo`]).
#[derive(Clone, Copy)]
pub struct ConvNorm<'a> {
    pub rec: DevPtr<'a, f32>,
    pub silu: bool,
}

/// Grid (blocks over the pixels, ceil(c_out / BM), phases) of 256-thread blocks with [`shared_bytes`]. Halo: one
/// block per BN-pixel rectangle (rows of the flattened n·h grid × `rw` columns). `rows` = n·h.
pub fn config(tile: Tile, loader: Loader, (rows, w): (usize, usize), c_out: usize, phases: u32) -> LaunchConfig {
    let (bm, bn) = tile.dims();
    let blocks = match loader {
        Loader::Gather => (rows * w).div_ceil(bn),
        Loader::Halo { rw } => {
            let rw = rw as usize;
            rows.div_ceil(bn / rw) * (w / rw)
        }
    };
    LaunchConfig::new([blocks as u32, c_out.div_ceil(bm) as u32, phases], [THREADS, 1, 1])
        .with_shared(shared_bytes(tile, loader))
}

/// Dynamic shared memory of a launch: the SIMT tiles get the halo buffers on top of their tile; the tensor-core
/// kernel keeps two stages of its A tile (128 × 16 f32) and reads B from the halo.
pub fn shared_bytes(tile: Tile, loader: Loader) -> u32 {
    match (loader, tile) {
        (Loader::Gather, t) => t.shared_bytes(),
        (Loader::Halo { .. }, t) if t.tensor_cores() => 2 * 128 * 16 * 4 + HALO_BYTES,
        (Loader::Halo { .. }, t) => t.shared_bytes() + HALO_BYTES,
    }
}

/// Dynamic shared memory of an upsample_conv launch: [`shared_bytes`], plus the second B tile of a SIMT halo block
/// (one per column phase).
pub fn upsample_shared_bytes(tile: Tile, loader: Loader) -> u32 {
    match loader {
        Loader::Halo { .. } => shared_bytes(tile, loader) + tile.b_tile_bytes(),
        Loader::Gather => shared_bytes(tile, loader),
    }
}

/// Output size (oh, ow) of a Conv2d, pad = [top, bottom, left, right]; `None` if the kernel exceeds the padded
/// input or the stride is 0.
pub fn conv2d_out_size(
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: [usize; 4],
) -> Option<(usize, usize)> {
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

/// The tile to launch (`tile` overrides [`Tile::pick`]), after checking that the grid fits.
fn tile_for(op: &str, tile: Option<Tile>, pixels: usize, c_out: usize) -> Result<Tile> {
    let t = tile.unwrap_or_else(|| Tile::pick(pixels, c_out));
    let (bm, bn) = t.dims();
    if c_out.div_ceil(bm) > 65535 {
        return Err(invalid(
            op,
            format!("c_out = {c_out} exceeds the grid ({} channels)", 65535 * bm),
        ));
    }
    if pixels.div_ceil(bn) > i32::MAX as usize {
        return Err(invalid(op, format!("{pixels} output pixels exceed the grid")));
    }
    Ok(t)
}

/// The loader to launch: `asked` if given (the halo only where `halo` says it applies), else the halo where it
/// applies.
fn pick_loader(op: &str, asked: Option<Loader>, halo: Option<u32>) -> Result<Loader> {
    match (asked, halo) {
        (Some(Loader::Halo { rw }), Some(h)) if rw == h => Ok(Loader::Halo { rw }),
        (Some(Loader::Halo { rw }), _) => Err(invalid(
            op,
            format!("halo tiles of {rw} columns do not apply to this shape ({halo:?} would)"),
        )),
        (Some(Loader::Gather), _) | (None, None) => Ok(Loader::Gather),
        (None, Some(rw)) => Ok(Loader::Halo { rw }),
    }
}

fn halo_rw(loader: Loader) -> i32 {
    match loader {
        Loader::Gather => 0,
        Loader::Halo { rw } => rw as i32,
    }
}

/// `out = conv2d(x, weight) + bias (+ residual)`, torch Conv2d semantics (cross-correlation, zero padding).
/// x: (n, c_in, h, w); weight: torch (c_out, c_in, kh, kw); bias: (c_out) or none; residual: same shape as out or
/// none; out: (n, c_out, oh, ow) with (oh, ow) = [`conv2d_out_size`]. pad = [top, bottom, left, right]. Any
/// kh, kw ≥ 1 (1×1 and 3×3 have specialised gathers), any stride ≥ 1. Buffers may be longer than needed.
/// `tile` overrides the kernel variant ([`Tile::pick`] when `None`; tests run both).
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
    tile: Option<Tile>,
) -> Result<()> {
    let shape = (n, c_in, h, w);
    conv2d_with(l, x, weight, bias, residual, out, shape, (c_out, kh, kw), stride, pad, tile, None, None)
}

/// [`conv2d`] with the tap loader chosen too (`None`: the halo where [`halo_width`] allows it; forcing
/// `Loader::Halo` where it does not is an error; tests compare the two), and the GroupNorm prologue `norm` (the
/// halo loader only: an error where the launch would gather).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_with<L: Launcher + ?Sized>(
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
    tile: Option<Tile>,
    loader: Option<Loader>,
    norm: Option<ConvNorm<'_>>,
) -> Result<()> {
    let op = "conv2d";
    nonzero(
        op,
        &[
            ("n", n),
            ("c_in", c_in),
            ("h", h),
            ("w", w),
            ("c_out", c_out),
            ("kh", kh),
            ("kw", kw),
            ("stride", stride),
        ],
    )?;
    let (oh, ow) = conv2d_out_size(h, w, kh, kw, stride, pad).ok_or_else(|| {
        invalid(
            op,
            format!("{kh}x{kw} kernel exceeds the {h}x{w} input padded by {pad:?}"),
        )
    })?;
    let pixels = product(op, "n·oh·ow", &[n, oh, ow])?;
    check_len(op, "x", x.len(), product(op, "x size", &[n, c_in, h, w])?)?;
    check_len(
        op,
        "weight",
        weight.len(),
        product(op, "weight size", &[c_out, c_in, kh, kw])?,
    )?;
    let out_len = product(op, "out size", &[pixels, c_out])?;
    check_len(op, "out", out.len(), out_len)?;
    if let Some(b) = &bias {
        check_len(op, "bias", b.len(), c_out)?;
    }
    if let Some(r) = &residual {
        check_len(op, "residual", r.len(), out_len)?;
    }
    let tile = tile_for(op, tile, pixels, c_out)?;
    let halo = conv2d_halo((c_in, w), (kh, kw, stride), pad, x.addr());
    let loader = pick_loader(op, loader, halo)?;
    if let Some(nm) = &norm {
        if loader == Loader::Gather {
            return Err(invalid(
                op,
                "the GroupNorm prologue needs the halo loader (3x3, stride 1, pad 1, c_in % 16 == 0, w in {8, 16, \
                 32} or a multiple of 32, aligned x)",
            ));
        }
        check_len(op, "norm records", nm.rec.len(), 4 * n * c_in)?;
        if !nm.rec.addr().is_multiple_of(16) {
            return Err(invalid(op, "the norm records must be 16-byte aligned"));
        }
    }
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
        tc_math: tile.tc_math(),
        halo_rw: halo_rw(loader),
        norm: match norm {
            None => kernels::CONV_NORM_NONE,
            Some(ConvNorm { silu: false, .. }) => kernels::CONV_NORM_GROUPNORM,
            Some(ConvNorm { silu: true, .. }) => kernels::CONV_NORM_GROUPNORM_SILU,
        },
    };
    to_i32(op, "n·oh·ow", pixels)?;
    to_i32(op, "c_in·kh·kw", product(op, "c_in·kh·kw", &[c_in, kh, kw])?)?;
    // the kernel's padded coordinates (oy·stride − top + ky) stay in int32
    to_i32(op, "padded input", (h + pad[0] + pad[1]).max(w + pad[2] + pad[3]) * 2)?;
    let (b, r) = (bias.unwrap_or_else(absent), residual.unwrap_or_else(absent));
    let nm = norm.map_or_else(absent, |nm| nm.rec);
    let cfg = config(tile, loader, (n * oh, ow), c_out, 1);
    match tile {
        Tile::T64 => kernels::conv2d_f32(l, cfg, x, weight, b, r, nm, out, p),
        Tile::T128 => kernels::conv2d_t128_f32(l, cfg, x, weight, b, r, nm, out, p),
        Tile::Tf32 | Tile::Tf32x3 | Tile::Bf16 => kernels::conv2d_tc_f32(l, cfg, x, weight, b, r, nm, out, p),
    }
}

/// Folds a torch 3×3 weight (c_out, c_in, 3, 3) into the four phase weights [`upsample_conv`] reads, layout
/// (phase = a·2 + b, c_out, c_in, dy, dx): phase (a, b) = (Y % 2, X % 2) of the output, and each phase slice is a
/// torch-layout (c_out, c_in, 2, 2) conv weight over the input padded by one pixel. 16·c_out·c_in floats. The
/// sums are `common::upsample_phase_weights`' (same values bit for bit, only permuted), so the kernel and the
/// CPU's `upsample_conv3x3` multiply the same numbers. Done once, at weight upload.
pub fn upsample_fold_weights(weight: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    // cpu layout: (a, b, dy, dx, c_out, c_in)
    let cpu_w = common::upsample_phase_weights(weight, c_out, c_in);
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
/// `folded` is [`upsample_fold_weights`] of the torch 3×3 weight (16·c_out·c_in floats). `tile` as in
/// [`conv2d`] (picked on the n·h·w pixels of one phase).
#[allow(clippy::too_many_arguments)]
pub fn upsample_conv<L: Launcher + ?Sized>(
    l: &L,
    x: DevPtr<'_, f32>,
    folded: DevPtr<'_, f32>,
    bias: Option<DevPtr<'_, f32>>,
    out: DevPtrMut<'_, f32>,
    (n, c_in, h, w): (usize, usize, usize, usize),
    c_out: usize,
    tile: Option<Tile>,
) -> Result<()> {
    upsample_conv_with(l, x, folded, bias, out, (n, c_in, h, w), c_out, tile, None)
}

/// [`upsample_conv`] with the tap loader chosen too, as in [`conv2d_with`]. Halo blocks (every tile) pair the two
/// column phases of a row phase, so that their stores are contiguous; gather blocks run one phase each.
#[allow(clippy::too_many_arguments)]
pub fn upsample_conv_with<L: Launcher + ?Sized>(
    l: &L,
    x: DevPtr<'_, f32>,
    folded: DevPtr<'_, f32>,
    bias: Option<DevPtr<'_, f32>>,
    out: DevPtrMut<'_, f32>,
    (n, c_in, h, w): (usize, usize, usize, usize),
    c_out: usize,
    tile: Option<Tile>,
    loader: Option<Loader>,
) -> Result<()> {
    let op = "upsample_conv";
    nonzero(op, &[("n", n), ("c_in", c_in), ("h", h), ("w", w), ("c_out", c_out)])?;
    let pixels = product(op, "n·h·w", &[n, h, w])?;
    check_len(op, "x", x.len(), product(op, "x size", &[pixels, c_in])?)?;
    check_len(
        op,
        "folded weight",
        folded.len(),
        product(op, "weight size", &[16, c_out, c_in])?,
    )?;
    check_len(op, "out", out.len(), product(op, "out size", &[4, pixels, c_out])?)?;
    if let Some(b) = &bias {
        check_len(op, "bias", b.len(), c_out)?;
    }
    let tile = tile_for(op, tile, pixels, c_out)?;
    // the kernel indexes output rows and columns of the 2h × 2w image in int32
    to_i32(op, "n·2h·2w", product(op, "n·2h·2w", &[4, pixels])?)?;
    to_i32(op, "c_in·4", product(op, "c_in·4", &[c_in, 4])?)?;
    // a halo block holds both column phases of one row phase for half its tile's channels
    let pair_channels = tile.dims().0 / 2;
    let halo = x.addr().is_multiple_of(16).then(|| halo_width(c_in, w)).flatten();
    let halo = halo.filter(|_| c_out.div_ceil(pair_channels) <= 65535);
    let loader = pick_loader(op, loader, halo)?;
    let p = UpsampleConvParams {
        n: to_i32(op, "n", n)?,
        c_in: to_i32(op, "c_in", c_in)?,
        h: to_i32(op, "h", h)?,
        w: to_i32(op, "w", w)?,
        c_out: to_i32(op, "c_out", c_out)?,
        has_bias: bias.is_some() as i32,
        tc_math: tile.tc_math(),
        halo_rw: halo_rw(loader),
    };
    let mut cfg = config(tile, loader, (n * h, w), c_out, 4);
    if loader != Loader::Gather {
        cfg.grid[1] = c_out.div_ceil(pair_channels) as u32;
        cfg.grid[2] = 2;
    }
    cfg.shared_bytes = upsample_shared_bytes(tile, loader);
    let b = bias.unwrap_or_else(absent);
    match tile {
        Tile::T64 => kernels::upsample_conv_f32(l, cfg, x, folded, b, out, p),
        Tile::T128 => kernels::upsample_conv_t128_f32(l, cfg, x, folded, b, out, p),
        Tile::Tf32 | Tile::Tf32x3 | Tile::Bf16 => kernels::upsample_conv_tc_f32(l, cfg, x, folded, b, out, p),
    }
}

impl<D: super::device::Device> crate::ops::Exec<crate::ops::conv::Conv> for super::CudaBackend<D> {
    fn exec(&mut self, op: &crate::ops::conv::Conv, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        self.f32_only("conv")?;
        let (wt, bias) = (self.wptr(op.w, "conv")?, self.wptr(op.b, "conv bias")?);
        // SAFETY: f32 activations (checked above); the output is disjoint from the input and the residual.
        unsafe {
            let residual = if op.residual { Some(self.t(a.ins[1])?) } else { None };
            let (x, o) = (self.t(a.ins[0])?, self.t_mut(a.out)?);
            let geo = (op.c_out, op.k, op.k);
            conv2d(
                &self.dev,
                x,
                wt,
                Some(bias),
                residual,
                o,
                op.x_shape(),
                geo,
                op.stride,
                op.pad,
                self.conv_tile,
            )
        }
    }
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
