//! The direct convolution: weights tap-major (gemm crate) or packed (AVX-512 microkernel), polyphase planes
//! per tile of output rows, one GEMM per tap; the 1x1 conv straight from the input.
use super::*;

/// Copies a torch `(c_out, c_in, kh, kw)` weight to tap-major `(kh * kw, c_out, c_in)` order
/// (once, at load): every tap is then a contiguous row-major matrix that the GEMM streams as it
/// is, instead of repacking a strided one on every call.
pub fn tap_major_weights(w: &[f32], c_out: usize, c_in: usize, kh: usize, kw: usize) -> Vec<f32> {
    let taps = kh * kw;
    assert_eq!(w.len(), c_out * c_in * taps, "tap_major_weights: weight length");
    let mut t = vec![0.0f32; w.len()];
    let ptr = SendPtr(t.as_mut_ptr());
    (0..c_out).into_par_iter().for_each(|co| {
        for ci in 0..c_in {
            for (tap, &v) in w[(co * c_in + ci) * taps..][..taps].iter().enumerate() {
                // SAFETY: in bounds (< taps * c_out * c_in); each index is written by one task.
                unsafe { *ptr.get().add((tap * c_out + co) * c_in + ci) = v };
            }
        }
    });
    t
}

/// Tap-major weights packed for `kernel::gemm` (once, at load): tap `t` is the packed
/// `(c_out x c_in)` matrix at `t * kernel::packed_len(c_out, c_in)`.
pub fn packed_weights(w: &[f32], c_out: usize, c_in: usize, kh: usize, kw: usize) -> Vec<f32> {
    let taps = kh * kw;
    assert_eq!(w.len(), c_out * c_in * taps, "packed_weights: weight length");
    let len = kernel::packed_len(c_out, c_in);
    let mut p = vec![0.0f32; taps * len];
    p.par_chunks_mut(len)
        .enumerate()
        .for_each(|(tap, dst)| kernel::pack_a(c_out, c_in, |co, ci| w[(co * c_in + ci) * taps + tap], dst));
    p
}

#[derive(Clone, Copy)]
enum WeightKind {
    /// tap `t` is the (c_out x c_in) matrix at `data[t * tap_stride..]`, strides `rs`, `cs`
    Strided { tap_stride: usize, rs: usize, cs: usize },
    /// from `packed_weights`
    Packed,
}

/// A conv weight as the GEMM reads it.
#[derive(Clone, Copy)]
pub struct ConvWeights<'a> {
    data: &'a [f32],
    kind: WeightKind,
    pub c_out: usize,
    pub c_in: usize,
    pub kh: usize,
    pub kw: usize,
}

impl<'a> ConvWeights<'a> {
    /// The torch `(c_out, c_in, kh, kw)` layout in place. Its taps are strided, so every GEMM
    /// call repacks them: measured 0-5% slower than `tap_major`.
    pub fn torch(data: &'a [f32], c_out: usize, c_in: usize, kh: usize, kw: usize) -> Self {
        let taps = kh * kw;
        assert_eq!(data.len(), c_out * c_in * taps, "conv weight length");
        let kind = WeightKind::Strided {
            tap_stride: 1,
            rs: c_in * taps,
            cs: taps,
        };
        ConvWeights {
            data,
            kind,
            c_out,
            c_in,
            kh,
            kw,
        }
    }

    /// Data from `tap_major_weights`.
    pub fn tap_major(data: &'a [f32], c_out: usize, c_in: usize, kh: usize, kw: usize) -> Self {
        assert_eq!(data.len(), c_out * c_in * kh * kw, "conv weight length");
        let kind = WeightKind::Strided {
            tap_stride: c_out * c_in,
            rs: c_in,
            cs: 1,
        };
        ConvWeights {
            data,
            kind,
            c_out,
            c_in,
            kh,
            kw,
        }
    }

    /// Data from `packed_weights`; only valid where `kernel::available()`.
    pub fn packed(data: &'a [f32], c_out: usize, c_in: usize, kh: usize, kw: usize) -> Self {
        assert!(kernel::available(), "packed conv weights need AVX-512");
        assert_eq!(
            data.len(),
            kh * kw * kernel::packed_len(c_out, c_in),
            "packed conv weight length"
        );
        ConvWeights {
            data,
            kind: WeightKind::Packed,
            c_out,
            c_in,
            kh,
            kw,
        }
    }

    /// Rows `co0 ..` of tap `tap` as a GEMM operand (strided kinds only).
    fn tap(&self, tap: usize, co0: usize) -> Mat<'a> {
        match self.kind {
            WeightKind::Strided { tap_stride, rs, cs } => mat(&self.data[tap * tap_stride + co0 * rs..], rs, cs),
            WeightKind::Packed => unreachable!("packed weights go through the kernel"),
        }
    }

    /// Panels of tap `tap` from output channel `co0` (a multiple of `kernel::MR`; packed only).
    fn packed_tap(&self, tap: usize, co0: usize) -> &'a [f32] {
        let len = kernel::packed_len(self.c_out, self.c_in);
        &self.data[tap * len + co0 * self.c_in..(tap + 1) * len]
    }
}

/// What a conv adds to its raw result when writing `out`.
#[derive(Clone, Copy)]
pub enum Epilogue<'a> {
    /// out = conv + bias
    Set,
    /// out = conv + bias + residual (same shape as out)
    Residual(&'a [f32]),
    /// out += conv + bias
    Accumulate,
}

// GEMM columns per tile: enough to amortise the microkernel's edges, few enough that the planes
// and accumulator of a 128-channel tile stay within one core's 1 MiB L2.
pub(crate) const TILE_COLS: usize = 1024;

/// Work split: `row_tiles` tiles of `rows` output rows per image, times `co_blocks` blocks of
/// output channels. Channels are split only when row tiles alone cannot feed the threads, since
/// every block rebuilds the tile's planes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tiling {
    pub(crate) rows: usize,
    pub(crate) row_tiles: usize,
    pub(crate) co_block: usize,
    pub(crate) co_blocks: usize,
}

pub(crate) fn tiling(n: usize, oh: usize, wq: usize, c_out: usize) -> Tiling {
    let want = 2 * rayon::current_num_threads();
    let mut row_tiles = oh.div_ceil((TILE_COLS / wq.max(1)).max(1));
    let co_blocks = want.div_ceil(n * row_tiles).min((c_out / 64).max(1));
    let co_block = c_out.div_ceil(co_blocks).next_multiple_of(16).min(c_out);
    let co_blocks = c_out.div_ceil(co_block);
    if n * row_tiles * co_blocks < want {
        row_tiles = want.div_ceil(n * co_blocks).min(oh);
    }
    let rows = oh.div_ceil(row_tiles);
    Tiling {
        rows,
        row_tiles: oh.div_ceil(rows),
        co_block,
        co_blocks,
    }
}

/// One unit of parallel work: output rows `oy0 .. oy0 + rows`, channels `co0 .. co0 + cos`.
#[derive(Clone, Copy)]
pub(crate) struct Tile {
    pub(crate) img: usize,
    pub(crate) oy0: usize,
    pub(crate) rows: usize,
    pub(crate) co0: usize,
    pub(crate) cos: usize,
}

/// Runs `f(tile, output image of that tile, scratch)` over all tiles in parallel; `oh` counts the
/// tiling's rows, `img_out` the elements of one output image.
pub(crate) fn par_tiles(
    t: Tiling,
    (n, oh, c_out): (usize, usize, usize),
    out: &mut [f32],
    scratch: usize,
    f: impl Fn(Tile, &mut [f32], &mut [f32]) + Sync,
) {
    let img_out = out.len() / n;
    let (out_ptr, out_len) = (SendPtr(out.as_mut_ptr()), out.len());
    let per_img = t.row_tiles * t.co_blocks;
    (0..n * per_img).into_par_iter().for_each(|item| {
        let (img, rest) = (item / per_img, item % per_img);
        let (oy0, co0) = ((rest / t.co_blocks) * t.rows, (rest % t.co_blocks) * t.co_block);
        let (rows, cos) = (t.rows.min(oh - oy0), t.co_block.min(c_out - co0));
        // SAFETY: `out` stays mutably borrowed for the whole loop, and the callers write only
        // the rows and channels of their own tile, which no other task touches.
        let all = unsafe { std::slice::from_raw_parts_mut(out_ptr.get(), out_len) };
        let oi = &mut all[img * img_out..][..img_out];
        with_scratch(scratch, |buf| {
            f(
                Tile {
                    img,
                    oy0,
                    rows,
                    co0,
                    cos,
                },
                oi,
                buf,
            )
        });
    });
}

pub(crate) struct Geom {
    pub(crate) c_in: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) s: usize,
    pub(crate) top: usize,
    pub(crate) left: usize,
    /// phases per axis that some tap reads
    pub(crate) ny: usize,
    pub(crate) nx: usize,
    /// plane row width: output columns plus what the widest tap reaches beyond them
    pub(crate) wq: usize,
}

/// Fills the polyphase planes for output rows `oy0 ..` of one image, `plane_rows` rows each:
/// `planes[py][px][ci][r][j] = xpad[ci][(oy0 + r) * s + py][j * s + px]`.
pub(crate) fn fill_planes(g: &Geom, x: &[f32], oy0: usize, plane_rows: usize, planes: &mut [f32]) {
    let (s, wq) = (g.s, g.wq);
    let plane = plane_rows * wq;
    for py in 0..g.ny {
        for px in 0..g.nx {
            // plane columns [j0, j1) land inside the unpadded image
            let first_in = |edge: usize| if px >= edge { 0 } else { (edge - px).div_ceil(s) };
            let j0 = first_in(g.left).min(wq);
            let j1 = first_in(g.left + g.w).clamp(j0, wq);
            let base = (py * g.nx + px) * g.c_in * plane;
            for ci in 0..g.c_in {
                let xc = &x[ci * g.h * g.w..][..g.h * g.w];
                for r in 0..plane_rows {
                    let row = &mut planes[base + ci * plane + r * wq..][..wq];
                    let yy = (oy0 + r) * s + py;
                    if yy < g.top || yy - g.top >= g.h || j0 == j1 {
                        row.fill(0.0);
                        continue;
                    }
                    let src = &xc[(yy - g.top) * g.w..][..g.w];
                    row[..j0].fill(0.0);
                    row[j1..].fill(0.0);
                    let x0 = j0 * s + px - g.left;
                    if s == 1 {
                        row[j0..j1].copy_from_slice(&src[x0..x0 + (j1 - j0)]);
                    } else {
                        let src = src[x0..].iter().step_by(s);
                        row[j0..j1].iter_mut().zip(src).for_each(|(d, &v)| *d = v);
                    }
                }
            }
        }
    }
}

/// Convolution with prepared weights and an explicit epilogue; the entry point behind `conv2d*`.
/// x: (n, c_in, h, w); pad = [top, bottom, left, right]; out: (n, c_out, oh, ow).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_with(
    x: &[f32],
    (n, h, w): (usize, usize, usize),
    wt: ConvWeights,
    bias: Option<&[f32]>,
    stride: usize,
    pad: [usize; 4],
    ep: Epilogue,
    out: &mut [f32],
) {
    let ConvWeights {
        c_out, c_in, kh, kw, ..
    } = wt;
    let ([top, bottom, left, right], s) = (pad, stride);
    assert!(s >= 1 && kh >= 1 && kw >= 1, "conv2d: zero kernel or stride");
    assert!(
        h + top + bottom >= kh && w + left + right >= kw,
        "conv2d: kernel exceeds input"
    );
    let oh = (h + top + bottom - kh) / s + 1;
    let ow = (w + left + right - kw) / s + 1;
    assert_eq!(x.len(), n * c_in * h * w, "conv2d: input length");
    assert_eq!(out.len(), n * c_out * oh * ow, "conv2d: output length");
    assert!(bias.is_none_or(|b| b.len() == c_out), "conv2d: bias length");
    if let Epilogue::Residual(r) = ep {
        assert_eq!(r.len(), out.len(), "conv2d: residual length");
    }
    if out.is_empty() {
        return;
    }
    let (ny, nx, wq) = (s.min(kh), s.min(kw), ow + (kw - 1) / s);
    let g = Geom {
        c_in,
        h,
        w,
        s,
        top,
        left,
        ny,
        nx,
        wq,
    };
    let t = tiling(n, oh, wq, c_out);
    let plane_rows = t.rows + (kh - 1) / s;
    let plane = plane_rows * wq;
    let planes_len = ny * nx * c_in * plane;
    let (acc_rs, img_in, img_out) = (t.rows * wq, c_in * h * w, c_out * oh * ow);
    let scratch = planes_len + t.co_block * acc_rs;

    par_tiles(t, (n, oh, c_out), out, scratch, |tile, oi, buf| {
        let Tile {
            img,
            oy0,
            rows,
            co0,
            cos,
        } = tile;
        let (planes, acc) = buf.split_at_mut(planes_len);
        fill_planes(&g, &x[img * img_in..][..img_in], oy0, plane_rows, planes);
        let ncols = (rows - 1) * wq + ow;
        let tap_off = |tap: usize| {
            let (ky, kx) = (tap / kw, tap % kw);
            ((ky % s) * nx + kx % s) * c_in * plane + (ky / s) * wq + kx / s
        };
        if let WeightKind::Packed = wt.kind {
            let segs: Vec<kernel::Seg> = (0..kh * kw)
                .map(|tap| kernel::Seg {
                    a: wt.packed_tap(tap, co0).as_ptr(),
                    b: planes[tap_off(tap)..].as_ptr(),
                })
                .collect();
            // SAFETY: packed weights exist only where AVX-512 is available; each A holds the
            // panels from co0 on (co0 is a multiple of MR), each B lies inside the planes for
            // c_in rows of `plane` and ncols columns, and acc holds cos rows of acc_rs >= ncols.
            unsafe {
                kernel::gemm(
                    cos,
                    ncols,
                    c_in,
                    &segs,
                    plane,
                    acc.as_mut_ptr(),
                    acc_rs,
                    kernel::Mode::Set,
                    usize::MAX,
                )
            };
        } else {
            for tap in 0..kh * kw {
                let b = mat(&planes[tap_off(tap)..], plane, 1);
                let (a, first) = (wt.tap(tap, co0), tap == 0);
                sgemm((cos, ncols, c_in), acc, acc_rs, !first, a, b, 1.0, Parallelism::None);
            }
        }
        for c in 0..cos {
            let b = bias.map_or(0.0, |b| b[co0 + c]);
            for ry in 0..rows {
                let src = &acc[c * acc_rs + ry * wq..][..ow];
                let o = (co0 + c) * oh * ow + (oy0 + ry) * ow;
                let dst = oi[o..o + ow].iter_mut().zip(src);
                match ep {
                    Epilogue::Set => dst.for_each(|(d, &v)| *d = v + b),
                    Epilogue::Accumulate => dst.for_each(|(d, &v)| *d += v + b),
                    Epilogue::Residual(r) => {
                        let r = &r[img * img_out + o..][..ow];
                        dst.zip(r).for_each(|((d, &v), &r)| *d = v + b + r)
                    }
                }
            }
        }
    });
}

/// Cross-correlation like `torch.nn.Conv2d`. x: (n, c_in, h, w); weight: (c_out, c_in, kh, kw);
/// bias: (c_out). pad = [top, bottom, left, right] zeros. Output (n, c_out, oh, ow) with
/// oh = (h + top + bottom - kh) / stride + 1. Reads the torch-layout weight in place; repeated
/// layers are faster with `tap_major_weights` prepared once, through `conv2d_with`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    x: &[f32],
    n: usize,
    c_in: usize,
    h: usize,
    w: usize,
    weight: &[f32],
    bias: Option<&[f32]>,
    c_out: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: [usize; 4],
    out: &mut [f32],
) {
    let wt = ConvWeights::torch(weight, c_out, c_in, kh, kw);
    conv2d_with(x, (n, h, w), wt, bias, stride, pad, Epilogue::Set, out);
}

/// `out = conv2d(x) + residual`: the ResnetBlock's skip connection fused into its second conv.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_add(
    x: &[f32],
    n: usize,
    c_in: usize,
    h: usize,
    w: usize,
    weight: &[f32],
    bias: Option<&[f32]>,
    c_out: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: [usize; 4],
    residual: &[f32],
    out: &mut [f32],
) {
    let (wt, ep) = (
        ConvWeights::torch(weight, c_out, c_in, kh, kw),
        Epilogue::Residual(residual),
    );
    conv2d_with(x, (n, h, w), wt, bias, stride, pad, ep, out);
}

/// 1x1 conv straight from the input (no plane copy): per block of pixels, the output rows start
/// as bias (+ residual) and the GEMM adds `W x` with B = the input rows in place.
pub(crate) fn conv1x1_packed(
    x: &[f32],
    (n, hw): (usize, usize),
    wt: ConvWeights,
    bias: Option<&[f32]>,
    ep: Epilogue,
    out: &mut [f32],
) {
    let (c_out, c_in) = (wt.c_out, wt.c_in);
    assert!(matches!(wt.kind, WeightKind::Packed) && wt.kh == 1 && wt.kw == 1);
    assert_eq!(x.len(), n * c_in * hw, "conv1x1: input length");
    assert_eq!(out.len(), n * c_out * hw, "conv1x1: output length");
    if let Epilogue::Residual(r) = ep {
        assert_eq!(r.len(), out.len(), "conv1x1: residual length");
    }
    if out.is_empty() {
        return;
    }
    let want = 2 * rayon::current_num_threads();
    let col_blocks = hw.div_ceil(TILE_COLS.next_multiple_of(kernel::NR));
    let co_blocks = want.div_ceil(n * col_blocks).min(c_out.div_ceil(kernel::MR)).max(1);
    let co_block = c_out.div_ceil(co_blocks).next_multiple_of(kernel::MR);
    let co_blocks = c_out.div_ceil(co_block);
    let cols = hw.div_ceil(col_blocks).next_multiple_of(kernel::NR).min(hw);
    let col_blocks = hw.div_ceil(cols);
    let optr = SendPtr(out.as_mut_ptr());
    (0..n * col_blocks * co_blocks).into_par_iter().for_each(|task| {
        let (img, rest) = (task / (col_blocks * co_blocks), task % (col_blocks * co_blocks));
        let (cb, co_b) = (rest / co_blocks, rest % co_blocks);
        let (j0, co0) = (cb * cols, co_b * co_block);
        let (ncols, rows) = (cols.min(hw - j0), co_block.min(c_out - co0));
        let base = img * c_out * hw + co0 * hw + j0;
        // B in panels of NR columns copied contiguous (read in place, every k of a micro-tile would
        // be a row and a page of its own), C into a contiguous block, then bias and epilogue
        let xi = &x[img * c_in * hw..][..c_in * hw];
        let nr = kernel::NR;
        with_scratch(c_in * nr + rows * nr, |buf| {
            let (panel, acc) = buf.split_at_mut(c_in * nr);
            for js in (0..ncols).step_by(nr) {
                let w = nr.min(ncols - js);
                for (ci, dst) in panel.chunks_exact_mut(nr).enumerate() {
                    dst[..w].copy_from_slice(&xi[ci * hw + j0 + js..][..w]);
                }
                let seg = kernel::Seg {
                    a: wt.packed_tap(0, co0).as_ptr(),
                    b: panel.as_ptr(),
                };
                // SAFETY: packed weights imply AVX-512; the panel holds c_in rows of nr >= w
                // columns and acc rows x nr floats.
                unsafe {
                    kernel::gemm(
                        rows,
                        w,
                        c_in,
                        &[seg],
                        nr,
                        acc.as_mut_ptr(),
                        nr,
                        kernel::Mode::Set,
                        usize::MAX,
                    )
                };
                for (r, src) in acc.chunks_exact(nr).enumerate() {
                    let o = base + r * hw + js;
                    // SAFETY: this task alone writes rows co0.. and columns j0.. of this image.
                    let row = unsafe { std::slice::from_raw_parts_mut(optr.get().add(o), w) };
                    let b = bias.map_or(0.0, |b| b[co0 + r]);
                    let src = &src[..w];
                    match ep {
                        Epilogue::Set => row.iter_mut().zip(src).for_each(|(d, &v)| *d = v + b),
                        Epilogue::Accumulate => row.iter_mut().zip(src).for_each(|(d, &v)| *d += v + b),
                        Epilogue::Residual(res) => {
                            let res = &res[o..][..w];
                            row.iter_mut()
                                .zip(src)
                                .zip(res)
                                .for_each(|((d, &v), &q)| *d = v + b + q)
                        }
                    }
                }
            }
        });
    });
}
