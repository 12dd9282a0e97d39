//! 2-D convolutions of the VQ tokenizer (NCHW, f32), as implicit GEMMs.
//!
//! Every convolution becomes a stride-1 convolution over polyphase planes: the zero-padded input
//! is split into `s x s` planes (s = stride), so tap `(ky, kx)` reads plane `(ky % s, kx % s)` at
//! offset `(ky / s, kx / s)`. In a plane of row width `wq`, output position `q = row * wq + col`
//! reads element `q + (ky / s) * wq + kx / s`, so each tap is one plain GEMM
//! `acc[co, q] += W_tap[co, ci] * plane[ci, q + off]` with `K = c_in`, and the `wq - ow` junk
//! columns of each row are dropped when the tile is written out. Planes are built per tile of
//! output rows in thread-local scratch (~1 MiB), so neither a padded copy of the image nor a 9x
//! im2col buffer exists. Tiles (and, for small images, blocks of output channels) run in parallel
//! on rayon, each GEMM single-threaded.
//!
//! Measured on the shared 2-core AVX-512 dev box, n = 1, best of several runs (`cargo test
//! --release --lib conv::tests::bench -- --ignored --nocapture`); a plain 512x4608x1024 gemm
//! reaches ~189 GFLOP/s there:
//!   3x3 s1 128->128 at 256x256: 183 GFLOP/s (107 ms); 256 at 64x64: 162; 512 at 16x16: 152;
//!   512 at 32x32: 181; 3x3 s2 (Downsample) 128 at 256x256: 153; 1x1 256->128 at 128x128: 141;
//!   upsample+conv 128 at 128->256: 388 counted as the 3x3 conv it replaces (~172 actual).
//!   conv_in 3->128 and conv_out 128->3 at 256x256: 50 and 66 (K or M of 3 starves the GEMM).
//!
//! On CPUs without AVX-512 (the 2-core AVX2 EPYC box), where `winograd` cannot run, the 3x3 stride-1 convs and
//! the upsample take `winograd_gemm` (same F(4x4, 3x3), GEMMs through the gemm crate). Same command, best of
//! several runs, direct (tap-major gemm crate) -> winograd_gemm: 128->128 at 256x256 130 -> 51 ms; 256 at 64x64
//! 37 -> 15 ms; 512 at 32x32 34 -> 14 ms; 512 at 16x16 11 -> 6 ms; upsample+conv 128 at 128->256 75 -> 55 ms
//! (phase convs -> Winograd phases).
use super::KernelFamily;
use crate::backend::Layout;
use gemm::Parallelism;
use rayon::prelude::*;
use std::cell::RefCell;

pub mod kernel;
pub mod winograd;
pub mod winograd_gemm;

thread_local! {
    // Grows to the largest tile this thread has run, then is reused.
    static SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch { ptr: std::ptr::null_mut(), len: 0 }) };
}

/// A zeroed f32 buffer aligned to 2 MiB and advised to use transparent huge pages: the Winograd
/// blocks stride through ~1.3 MiB of scratch 36 rows at a time, which with 4 KiB pages misses the
/// first-level TLB on nearly every access.
struct Scratch {
    ptr: *mut f32,
    len: usize,
}

const HUGE: usize = 2 << 20;

impl Scratch {
    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align((4 * len).next_multiple_of(HUGE), HUGE).expect("scratch layout")
    }

    fn grow(&mut self, len: usize) {
        self.free();
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut f32;
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        #[cfg(target_os = "linux")]
        {
            extern "C" {
                fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
            }
            const MADV_HUGEPAGE: i32 = 14;
            // SAFETY: the range is this allocation; the advice is a hint (failure is harmless).
            unsafe { madvise(ptr as *mut _, layout.size(), MADV_HUGEPAGE) };
        }
        (self.ptr, self.len) = (ptr, layout.size() / 4);
    }

    fn free(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: allocated in `grow` with this layout.
            unsafe { std::alloc::dealloc(self.ptr as *mut u8, Self::layout(self.len)) };
            (self.ptr, self.len) = (std::ptr::null_mut(), 0);
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.free();
    }
}

fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len < len {
            buf.grow(len);
        }
        // SAFETY: `len` floats of this thread's buffer, initialised (zeroed at allocation), and
        // borrowed mutably through the RefCell for the duration of `f` only.
        f(unsafe { std::slice::from_raw_parts_mut(buf.ptr, len) })
    })
}

/// A strided read-only matrix operand: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

pub(crate) fn mat(data: &[f32], rs: usize, cs: usize) -> Mat<'_> {
    Mat { data, rs, cs }
}

/// Extent in elements of a strided `rows x cols` view.
fn span(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

/// `dst[m x n] = (acc ? dst : 0) + scale * a[m x k] * b[k x n]`, `dst` with row stride `dst_rs`.
/// The views are bounds-checked here, which is what makes the unsafe GEMM call sound.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    acc: bool,
    a: Mat,
    b: Mat,
    scale: f32,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(span(m, n, dst_rs, 1) <= dst.len(), "sgemm: dst out of bounds");
    if k == 0 {
        if !acc {
            (0..m).for_each(|r| dst[r * dst_rs..r * dst_rs + n].fill(0.0));
        }
        return;
    }
    assert!(span(m, k, a.rs, a.cs) <= a.data.len(), "sgemm: lhs out of bounds");
    assert!(span(k, n, b.rs, b.cs) <= b.data.len(), "sgemm: rhs out of bounds");
    let (d, ap, bp) = (dst.as_mut_ptr(), a.data.as_ptr(), b.data.as_ptr());
    let (ars, acs, brs, bcs) = (a.rs as isize, a.cs as isize, b.rs as isize, b.cs as isize);
    // SAFETY: all three views lie inside their slices (checked above); `dst` is a unique borrow.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            d,
            1,
            dst_rs as isize,
            acc,
            ap,
            acs,
            ars,
            bp,
            bcs,
            brs,
            1.0,
            scale,
            false,
            false,
            false,
            par,
        )
    };
}

/// Raw pointer so rayon tasks can write disjoint parts of one slice.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    // a method, so closures capture the whole Sync wrapper rather than its raw-pointer field
    pub fn get(self) -> *mut f32 {
        self.0
    }
}

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
const TILE_COLS: usize = 1024;

/// Work split: `row_tiles` tiles of `rows` output rows per image, times `co_blocks` blocks of
/// output channels. Channels are split only when row tiles alone cannot feed the threads, since
/// every block rebuilds the tile's planes.
#[derive(Clone, Copy, Debug)]
struct Tiling {
    rows: usize,
    row_tiles: usize,
    co_block: usize,
    co_blocks: usize,
}

fn tiling(n: usize, oh: usize, wq: usize, c_out: usize) -> Tiling {
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
struct Tile {
    img: usize,
    oy0: usize,
    rows: usize,
    co0: usize,
    cos: usize,
}

/// Runs `f(tile, output image of that tile, scratch)` over all tiles in parallel; `oh` counts the
/// tiling's rows, `img_out` the elements of one output image.
fn par_tiles(
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

struct Geom {
    c_in: usize,
    h: usize,
    w: usize,
    s: usize,
    top: usize,
    left: usize,
    /// phases per axis that some tap reads
    ny: usize,
    nx: usize,
    /// plane row width: output columns plus what the widest tap reaches beyond them
    wq: usize,
}

/// Fills the polyphase planes for output rows `oy0 ..` of one image, `plane_rows` rows each:
/// `planes[py][px][ci][r][j] = xpad[ci][(oy0 + r) * s + py][j * s + px]`.
fn fill_planes(g: &Geom, x: &[f32], oy0: usize, plane_rows: usize, planes: &mut [f32]) {
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

/// How `prepare` laid a conv weight out for this machine (chosen once, at load).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prep {
    /// torch `(c_out, c_in, kh, kw)`, as given
    Torch,
    /// `packed_weights` (AVX-512)
    Packed,
    /// `winograd::weights` (AVX-512; 3x3 stride 1 pad 1 only)
    Winograd,
    /// `upsample_phase_weights`
    UpsamplePhases,
    /// `winograd::upsample_weights` (AVX-512)
    UpsampleWinograd,
    /// `winograd_gemm::weights` (any x86-64-v3; 3x3 stride 1 pad 1 only)
    WinogradGemm,
    /// `winograd_gemm::upsample_weights`
    UpsampleWinogradGemm,
}

/// Lays out a conv weight of `shape` (c_out, c_in, kh, kw) as its `layout` allows.
pub fn prepare(layout: Layout, shape: &[usize], w: Vec<f32>, kernels: KernelFamily) -> (Prep, Vec<f32>) {
    let (co, ci, kh, kw) = match *shape {
        [co, ci, kh, kw] => (co, ci, kh, kw),
        _ => return (Prep::Torch, w),
    };
    // Winograd where its transformed weight fits `WINOGRAD_MAX_BYTES` and LLAMAGEN_NO_WINOGRAD is not set.
    let fast = kernels >= KernelFamily::Avx512;
    let fits = |phases| {
        let len = if fast {
            winograd::weights_len(co, ci, phases)
        } else {
            winograd_gemm::weights_len(co, ci, phases)
        };
        !no_winograd() && 4 * len <= WINOGRAD_MAX_BYTES
    };
    let k3 = kh == 3 && kw == 3;
    match layout {
        Layout::UpsamplePhases if fast && k3 && fits(4) => {
            (Prep::UpsampleWinograd, winograd::upsample_weights(&w, co, ci))
        }
        Layout::UpsamplePhases if k3 && fits(4) => {
            (Prep::UpsampleWinogradGemm, winograd_gemm::upsample_weights(&w, co, ci))
        }
        Layout::UpsamplePhases => (Prep::UpsamplePhases, upsample_phase_weights(&w, co, ci)),
        Layout::Winograd if fast && k3 && ci >= WINOGRAD_MIN_C_IN && fits(1) => {
            (Prep::Winograd, winograd::weights(&w, co, ci))
        }
        Layout::Winograd if k3 && ci >= WINOGRAD_MIN_C_IN && co >= WINOGRAD_GEMM_MIN_C_OUT && fits(1) => {
            (Prep::WinogradGemm, winograd_gemm::weights(&w, co, ci))
        }
        Layout::Winograd | Layout::Conv if fast => (Prep::Packed, packed_weights(&w, co, ci, kh, kw)),
        _ => (Prep::Torch, w),
    }
}

pub struct Trace(String, std::time::Instant);
impl Trace {
    pub fn new(s: String) -> Self {
        Trace(s, std::time::Instant::now())
    }
}
impl Drop for Trace {
    fn drop(&mut self) {
        if std::env::var_os("CONV_TRACE").is_some() {
            eprintln!("TRACE {:8.2} ms {}", self.1.elapsed().as_secs_f64() * 1e3, self.0);
        }
    }
}

/// Below this many input channels a 3x3 conv stays direct (the transforms outweigh a K this short).
const WINOGRAD_MIN_C_IN: usize = 8;

/// Below this many output channels the GEMM Winograd's output transform and the gemm crate's
/// per-call packing outweigh what it saves (the decoder's conv_out, 128 -> 3).
const WINOGRAD_GEMM_MIN_C_OUT: usize = 16;

/// Largest transformed weight a Winograd conv keeps. Its weights are 36 / 9 = 4x the conv's (16x for the four
/// upsample phases), and the convs whose weights are big are the many-channel, low-resolution ones (VQ-16: 512
/// channels at 16-32 px), where a conv costs a few ms and Winograd saves little (measured on the AVX2 box: 512->512
/// at 16x16 11 -> 6 ms, the 256-channel upsample 69 -> 60 ms, for 28 MB more each). On the AVX2 box the cap took
/// the VQ-16 decode's peak RSS (with GPT-B) from 1.38 GB to 0.89 GB, its time unchanged within noise. The AVX-512
/// path has the same cap: uncapped, its VQ-16 decoder weights were 766 MB and took 0.86 s to prepare (one thread,
/// measured here by calling `prepare` with the AVX-512 family), most of the 1.6 s a one-image `llamagen decode`
/// took on an AVX-512 box.
const WINOGRAD_MAX_BYTES: usize = 16 << 20;

/// `LLAMAGEN_NO_WINOGRAD` set: the direct convolutions everywhere (smaller error; for measuring what Winograd buys).
fn no_winograd() -> bool {
    std::env::var_os("LLAMAGEN_NO_WINOGRAD").is_some()
}

/// `Op::Conv` on a weight from `prepare`: out = conv(x) + bias (+ residual). x: (n, c_in, h, w).
#[allow(clippy::too_many_arguments)]
pub fn conv_prepared(
    prep: Prep,
    w: &[f32],
    x: &[f32],
    (n, c_in, h, wd): (usize, usize, usize, usize),
    (c_out, k, stride, pad): (usize, usize, usize, [usize; 4]),
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    out: &mut [f32],
) -> Result<(), String> {
    let _t = Trace::new(format!("conv {prep:?} {c_in}->{c_out} k{k} s{stride} {h}x{wd}"));
    let ep = residual.map_or(Epilogue::Set, Epilogue::Residual);
    let wt = match prep {
        Prep::Torch => ConvWeights::torch(w, c_out, c_in, k, k),
        Prep::Packed => ConvWeights::packed(w, c_out, c_in, k, k),
        Prep::Winograd => {
            if k != 3 || stride != 1 || pad != [1; 4] {
                return Err(format!(
                    "a Winograd weight needs a 3x3 stride-1 pad-1 conv, not k {k} stride {stride} pad {pad:?}"
                ));
            }
            winograd::conv3x3(x, (n, h, wd), w, c_out, c_in, bias, ep, out);
            return Ok(());
        }
        Prep::WinogradGemm => {
            if k != 3 || stride != 1 || pad != [1; 4] {
                return Err(format!(
                    "a Winograd weight needs a 3x3 stride-1 pad-1 conv, not k {k} stride {stride} pad {pad:?}"
                ));
            }
            winograd_gemm::conv3x3(x, (n, h, wd), w, c_out, c_in, bias, ep, out);
            return Ok(());
        }
        Prep::UpsamplePhases | Prep::UpsampleWinograd | Prep::UpsampleWinogradGemm => {
            return Err("an upsample weight in a plain conv".into())
        }
    };
    if prep == Prep::Packed && k == 1 && stride == 1 && pad == [0; 4] {
        conv1x1_packed(x, (n, h * wd), wt, bias, ep, out);
    } else {
        conv2d_with(x, (n, h, wd), wt, bias, stride, pad, ep, out);
    }
    Ok(())
}

/// 1x1 conv straight from the input (no plane copy): per block of pixels, the output rows start
/// as bias (+ residual) and the GEMM adds `W x` with B = the input rows in place.
fn conv1x1_packed(
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

/// `Op::UpsampleConv` on a weight from `prepare`. x: (n, c_in, h, w); out: (n, c_out, 2h, 2w).
#[allow(clippy::too_many_arguments)]
pub fn upsample_prepared(
    prep: Prep,
    w: &[f32],
    x: &[f32],
    (n, c_in, h, wd): (usize, usize, usize, usize),
    c_out: usize,
    bias: &[f32],
    out: &mut [f32],
) -> Result<(), String> {
    let _t = Trace::new(format!("upsample {prep:?} {c_in}->{c_out} {h}x{wd}"));
    match prep {
        Prep::UpsampleWinograd => winograd::upsample_conv3x3(x, (n, h, wd), w, c_out, c_in, bias, out),
        Prep::UpsampleWinogradGemm => winograd_gemm::upsample_conv3x3(x, (n, h, wd), w, c_out, c_in, bias, out),
        Prep::UpsamplePhases => upsample_conv3x3(x, n, c_in, h, wd, w, bias, c_out, out),
        _ => return Err("an upsample conv needs an UpsamplePhases weight".into()),
    }
    Ok(())
}

// Decoder Upsample = nearest x2 then 3x3 pad-1 conv, folded into four 2x2 convs of the input.
//
// With u(Y, X) = x(Y / 2, X / 2) (integer division) and
// out(Y, X) = sum_{ky,kx} W[ky][kx] u(Y + ky - 1, X + kx - 1), an even output row Y = 2y reads
// u rows 2y-1, 2y, 2y+1 = x rows y-1, y, y: only two distinct input rows, weighted W[0] and
// W[1] + W[2]. An odd row Y = 2y+1 reads u rows 2y, 2y+1, 2y+2 = x rows y, y, y+1, weighted
// W[0] + W[1] and W[2]. The zero padding agrees: u row -1 or 2h is x row -1 or h. Columns fold
// the same way, so output phase (a, b) = (Y % 2, X % 2) is a 2x2 conv of x padded by one pixel
// on every side: tap (dy, dx) reads padded pixel (y + a + dy, x + b + dx) with the sum of the
// 3x3 taps in FOLD[a][dy] x FOLD[b][dx]. 16 MACs per input pixel and channel pair instead of 36.
pub(crate) const FOLD: [[&[usize]; 2]; 2] = [[&[0], &[1, 2]], [&[0, 1], &[2]]];

/// Folds a 3x3 weight (c_out, c_in, 3, 3) into the phase kernels of `upsample_conv3x3`.
/// Layout (a, b, dy, dx, c_out, c_in): 16 contiguous row-major (c_out, c_in) matrices.
pub fn upsample_phase_weights(weight: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    assert_eq!(weight.len(), c_out * c_in * 9, "upsample_phase_weights: weight length");
    let mut pw = vec![0.0f32; 16 * c_out * c_in];
    for (m, dstm) in pw.chunks_exact_mut(c_out * c_in).enumerate() {
        let (a, b, dy, dx) = (m >> 3, (m >> 2) & 1, (m >> 1) & 1, m & 1);
        for (d, wk) in dstm.iter_mut().zip(weight.chunks_exact(9)) {
            let taps = FOLD[a][dy]
                .iter()
                .flat_map(|&ky| FOLD[b][dx].iter().map(move |&kx| (ky, kx)));
            *d = taps.map(|(ky, kx)| wk[ky * 3 + kx]).sum();
        }
    }
    pw
}

/// Nearest-neighbour x2 upsample then a 3x3 stride-1 pad-1 conv, without materialising the
/// upsampled image. x: (n, c_in, h, w); `phase_weights` from `upsample_phase_weights`;
/// out: (n, c_out, 2h, 2w).
#[allow(clippy::too_many_arguments)]
pub fn upsample_conv3x3(
    x: &[f32],
    n: usize,
    c_in: usize,
    h: usize,
    w: usize,
    phase_weights: &[f32],
    bias: &[f32],
    c_out: usize,
    out: &mut [f32],
) {
    let mat_len = c_out * c_in;
    assert_eq!(x.len(), n * c_in * h * w, "upsample_conv3x3: input length");
    assert_eq!(
        phase_weights.len(),
        16 * mat_len,
        "upsample_conv3x3: phase weight length"
    );
    assert_eq!(bias.len(), c_out, "upsample_conv3x3: bias length");
    assert_eq!(out.len(), n * c_out * 4 * h * w, "upsample_conv3x3: output length");
    if out.is_empty() {
        return;
    }
    // the planes are those of a 3x3 pad-1 conv over the low-resolution input
    let g = Geom {
        c_in,
        h,
        w,
        s: 1,
        top: 1,
        left: 1,
        ny: 1,
        nx: 1,
        wq: w + 2,
    };
    let (wq, ow) = (w + 2, 2 * w);
    let t = tiling(n, h, wq, c_out);
    let plane = (t.rows + 2) * wq;
    let (planes_len, acc_rs) = (c_in * plane, t.rows * wq);

    par_tiles(
        t,
        (n, h, c_out),
        out,
        planes_len + t.co_block * acc_rs,
        |tile, oi, buf| {
            let Tile {
                img,
                oy0,
                rows,
                co0,
                cos,
            } = tile;
            let (planes, acc) = buf.split_at_mut(planes_len);
            fill_planes(&g, &x[img * c_in * h * w..][..c_in * h * w], oy0, t.rows + 2, planes);
            let ncols = (rows - 1) * wq + w;
            for (a, b) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                for tap in 0..4 {
                    let (dy, dx) = (tap >> 1, tap & 1);
                    let wm = mat(
                        &phase_weights[((a * 2 + b) * 4 + tap) * mat_len + co0 * c_in..],
                        c_in,
                        1,
                    );
                    let rhs = mat(&planes[(a + dy) * wq + b + dx..], plane, 1);
                    sgemm(
                        (cos, ncols, c_in),
                        acc,
                        acc_rs,
                        tap > 0,
                        wm,
                        rhs,
                        1.0,
                        Parallelism::None,
                    );
                }
                for c in 0..cos {
                    let bias = bias[co0 + c];
                    for ry in 0..rows {
                        let src = &acc[c * acc_rs + ry * wq..][..w];
                        let row = &mut oi[((co0 + c) * 2 * h + 2 * (oy0 + ry) + a) * ow..][..ow];
                        row[b..]
                            .iter_mut()
                            .step_by(2)
                            .zip(src)
                            .for_each(|(d, &v)| *d = v + bias);
                    }
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random values in [-1, 1).
    fn rand_vec(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        (0..len).map(|_| next()).collect()
    }

    fn rel_l2(got: &[f32], want: &[f64]) -> f64 {
        assert_eq!(got.len(), want.len());
        let num: f64 = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).powi(2)).sum();
        let den: f64 = want.iter().map(|w| w * w).sum();
        (num / den.max(1e-300)).sqrt()
    }

    /// One conv problem.
    #[derive(Clone, Copy, Debug)]
    struct Case {
        n: usize,
        ci: usize,
        co: usize,
        h: usize,
        w: usize,
        kh: usize,
        kw: usize,
        s: usize,
        pad: [usize; 4],
    }

    impl Case {
        fn out_hw(&self) -> (usize, usize) {
            let p = self.pad;
            let oh = (self.h + p[0] + p[1] - self.kh) / self.s + 1;
            (oh, (self.w + p[2] + p[3] - self.kw) / self.s + 1)
        }

        /// Direct f64 loops over the definition of torch's Conv2d.
        fn naive(&self, x: &[f32], wt: &[f32], bias: Option<&[f32]>) -> Vec<f64> {
            let Case {
                n,
                ci,
                co,
                h,
                w,
                kh,
                kw,
                s,
                pad,
            } = *self;
            let (oh, ow) = self.out_hw();
            let mut out = vec![0f64; n * co * oh * ow];
            for (idx, o) in out.iter_mut().enumerate() {
                let (b, oc) = (idx / (co * oh * ow), idx / (oh * ow) % co);
                let (oy, ox) = (idx / ow % oh, idx % ow);
                *o = bias.map_or(0.0, |bb| bb[oc] as f64);
                for i in 0..ci {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (oy * s + ky) as isize - pad[0] as isize;
                            let ix = (ox * s + kx) as isize - pad[2] as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            let xv = x[((b * ci + i) * h + iy as usize) * w + ix as usize];
                            *o += xv as f64 * wt[((oc * ci + i) * kh + ky) * kw + kx] as f64;
                        }
                    }
                }
            }
            out
        }
    }

    /// (n, c_in, c_out, h, w)
    const SHAPES: &[(usize, usize, usize, usize, usize)] = &[
        (1, 1, 1, 1, 1),
        (1, 3, 5, 3, 5),
        (3, 5, 3, 6, 10),
        (1, 33, 7, 7, 7),
        (3, 1, 33, 5, 3),
        (2, 16, 16, 9, 4),
        (1, 4, 2, 40, 3),
        (1, 8, 150, 4, 4),
        (1, 128, 160, 24, 20),
    ];

    #[test]
    fn conv2d_matches_naive() {
        conv2d_cases(false);
    }

    /// The AVX-512 packed weight layout (also reached through `prepared_matches_naive`), with every epilogue.
    #[test]
    #[cfg_attr(not(llamagen_cpu_avx512), ignore = "this CPU lacks AVX-512F + BW")]
    fn packed_conv2d_matches_naive() {
        conv2d_cases(true);
    }

    fn conv2d_cases(packed: bool) {
        let kernels = [
            (3, 3, 1, [1, 1, 1, 1]),
            (1, 1, 1, [0; 4]),
            (3, 3, 2, [0, 1, 0, 1]),
            (2, 3, 1, [0, 2, 1, 0]),
            (1, 1, 2, [0; 4]),
            (3, 3, 3, [2, 2, 2, 2]),
        ];
        for (si, &(n, ci, co, h, w)) in SHAPES.iter().enumerate() {
            for (kh, kw, s, pad) in kernels {
                let c = Case {
                    n,
                    ci,
                    co,
                    h,
                    w,
                    kh,
                    kw,
                    s,
                    pad,
                };
                if h + pad[0] + pad[1] < kh || w + pad[2] + pad[3] < kw {
                    continue;
                }
                let seed = 10 * si as u64;
                let x = rand_vec(n * ci * h * w, seed);
                let (wt, b) = (rand_vec(co * ci * kh * kw, seed + 1), rand_vec(co, seed + 2));
                let want = c.naive(&x, &wt, Some(&b));
                let mut out = vec![f32::NAN; want.len()];
                let r = rand_vec(out.len(), seed + 3);
                let want_r: Vec<f64> = want.iter().zip(&r).map(|(&a, &b)| a + b as f64).collect();
                if packed {
                    let pk = packed_weights(&wt, co, ci, kh, kw);
                    let cw = ConvWeights::packed(&pk, co, ci, kh, kw);
                    conv2d_with(&x, (n, h, w), cw, Some(&b), s, pad, Epilogue::Set, &mut out);
                    let e = rel_l2(&out, &want);
                    assert!(e < 1e-6, "packed {c:?}: rel {e}");
                    let mut acc = r.clone();
                    conv2d_with(&x, (n, h, w), cw, Some(&b), s, pad, Epilogue::Accumulate, &mut acc);
                    assert!(rel_l2(&acc, &want_r) < 1e-6, "packed accumulate {c:?}");
                    conv2d_with(&x, (n, h, w), cw, Some(&b), s, pad, Epilogue::Residual(&r), &mut out);
                    assert!(rel_l2(&out, &want_r) < 1e-6, "packed residual {c:?}");
                    continue;
                }
                conv2d(&x, n, ci, h, w, &wt, Some(&b), co, kh, kw, s, pad, &mut out);
                let e = rel_l2(&out, &want);
                assert!(e < 1e-6, "conv2d {c:?}: rel {e}");
                conv2d_add(&x, n, ci, h, w, &wt, Some(&b), co, kh, kw, s, pad, &r, &mut out);
                assert!(rel_l2(&out, &want_r) < 1e-6, "conv2d_add {c:?}");
                let (tm, mut acc) = (tap_major_weights(&wt, co, ci, kh, kw), r.clone());
                let cw = ConvWeights::tap_major(&tm, co, ci, kh, kw);
                conv2d_with(&x, (n, h, w), cw, Some(&b), s, pad, Epilogue::Accumulate, &mut acc);
                assert!(rel_l2(&acc, &want_r) < 1e-6, "accumulate {c:?}");
                conv2d(&x, n, ci, h, w, &wt, None, co, kh, kw, s, pad, &mut out);
                assert!(rel_l2(&out, &c.naive(&x, &wt, None)) < 1e-6, "no bias {c:?}");
            }
        }
    }

    /// Every layout `prepare` can choose for every kernel family this CPU has, through `conv_prepared`, with and
    /// without a residual.
    #[test]
    fn prepared_matches_naive() {
        for family in KernelFamily::all_supported() {
            prepared_cases(family);
        }
    }

    fn prepared_cases(family: KernelFamily) {
        let kernels = [(3, 1, [1; 4]), (1, 1, [0; 4]), (3, 2, [0, 1, 0, 1])];
        for (si, &(n, ci, co, h, w)) in SHAPES
            .iter()
            .chain(&[(2, 24, 40, 7, 100), (1, 16, 8, 3, 64)])
            .enumerate()
        {
            for (k, s, pad) in kernels {
                let c = Case {
                    n,
                    ci,
                    co,
                    h,
                    w,
                    kh: k,
                    kw: k,
                    s,
                    pad,
                };
                if h + pad[0] + pad[1] < k || w + pad[2] + pad[3] < k {
                    continue;
                }
                let seed = 500 + 10 * si as u64;
                let x = rand_vec(n * ci * h * w, seed);
                let (wt, b) = (rand_vec(co * ci * k * k, seed + 1), rand_vec(co, seed + 2));
                let want = c.naive(&x, &wt, Some(&b));
                let r = rand_vec(want.len(), seed + 3);
                let want_r: Vec<f64> = want.iter().zip(&r).map(|(&a, &b)| a + b as f64).collect();
                for layout in [Layout::Plain, Layout::Conv, Layout::Winograd] {
                    if layout == Layout::Winograd && (k, s, pad) != (3, 1, [1; 4]) {
                        continue;
                    }
                    let (prep, pw) = prepare(layout, &[co, ci, k, k], wt.clone(), family);
                    let mut out = vec![f32::NAN; want.len()];
                    let geo = (co, k, s, pad);
                    conv_prepared(prep, &pw, &x, (n, ci, h, w), geo, Some(&b), None, &mut out).unwrap();
                    let e = rel_l2(&out, &want);
                    assert!(e < 2e-6, "{family} {prep:?} {c:?}: rel {e}");
                    conv_prepared(prep, &pw, &x, (n, ci, h, w), geo, Some(&b), Some(&r), &mut out).unwrap();
                    let e = rel_l2(&out, &want_r);
                    assert!(e < 2e-6, "{family} {prep:?} residual {c:?}: rel {e}");
                }
            }
        }
    }

    #[test]
    fn downsample_halves_even_sizes() {
        let c = Case {
            n: 1,
            ci: 2,
            co: 2,
            h: 8,
            w: 6,
            kh: 3,
            kw: 3,
            s: 2,
            pad: [0, 1, 0, 1],
        };
        assert_eq!(c.out_hw(), (4, 3));
        let (x, wt) = (rand_vec(2 * 8 * 6, 7), rand_vec(2 * 2 * 9, 8));
        let mut out = vec![0.0; 2 * 4 * 3];
        conv2d(&x, 1, 2, 8, 6, &wt, None, 2, 3, 3, 2, [0, 1, 0, 1], &mut out);
        assert!(rel_l2(&out, &c.naive(&x, &wt, None)) < 1e-6);
    }

    /// Winograd for the 3x3 convs and upsamples whose transformed weight fits the cap, direct for the rest (and
    /// for `conv_out`'s 3 output channels), with either family's layouts (`prepare` only moves data, so both
    /// families' choices are checked on any CPU).
    #[test]
    fn prepare_picks_winograd_where_it_fits() {
        if std::env::var_os("LLAMAGEN_NO_WINOGRAD").is_some() {
            return;
        }
        let prep =
            |family, layout, co: usize, ci: usize| prepare(layout, &[co, ci, 3, 3], vec![0.5; co * ci * 9], family).0;
        let (avx2, avx512) = (KernelFamily::Avx2, KernelFamily::Avx512);
        assert_eq!(prep(avx2, Layout::Winograd, 128, 128), Prep::WinogradGemm);
        assert_eq!(prep(avx2, Layout::Winograd, 256, 256), Prep::WinogradGemm);
        assert_eq!(prep(avx2, Layout::Winograd, 512, 512), Prep::Torch);
        assert_eq!(prep(avx2, Layout::Winograd, 3, 128), Prep::Torch);
        assert_eq!(prep(avx2, Layout::Winograd, 128, 3), Prep::Torch);
        assert_eq!(prep(avx2, Layout::UpsamplePhases, 128, 128), Prep::UpsampleWinogradGemm);
        assert_eq!(prep(avx2, Layout::UpsamplePhases, 256, 256), Prep::UpsamplePhases);
        assert_eq!(prep(avx512, Layout::Winograd, 128, 128), Prep::Winograd);
        assert_eq!(prep(avx512, Layout::Winograd, 256, 256), Prep::Winograd);
        assert_eq!(prep(avx512, Layout::Winograd, 512, 512), Prep::Packed);
        assert_eq!(prep(avx512, Layout::Winograd, 128, 3), Prep::Packed);
        assert_eq!(prep(avx512, Layout::UpsamplePhases, 128, 128), Prep::UpsampleWinograd);
        assert_eq!(prep(avx512, Layout::UpsamplePhases, 512, 512), Prep::UpsamplePhases);
        let (p, w) = prepare(
            Layout::Winograd,
            &[16, 8, 3, 3],
            (0..16 * 8 * 9).map(|i| i as f32).collect(),
            KernelFamily::Avx2,
        );
        assert_eq!((p, w.len()), (Prep::WinogradGemm, winograd_gemm::weights_len(16, 8, 1)));
    }

    #[test]
    fn tiling_covers_everything() {
        let cases = [
            (1, 256, 258, 128),
            (1, 16, 18, 512),
            (3, 7, 9, 33),
            (1, 1, 3, 1),
            (2, 32, 34, 256),
        ];
        for (n, oh, wq, co) in cases {
            let t = tiling(n, oh, wq, co);
            assert!(t.rows * t.row_tiles >= oh && (t.row_tiles - 1) * t.rows < oh, "{t:?}");
            assert!(
                t.co_block * t.co_blocks >= co && (t.co_blocks - 1) * t.co_block < co,
                "{t:?}"
            );
        }
    }

    #[test]
    fn upsample_conv_matches_naive() {
        for (si, &(n, ci, co, h, w)) in SHAPES.iter().enumerate() {
            let seed = 100 + 10 * si as u64;
            let x = rand_vec(n * ci * h * w, seed);
            let (wt, b) = (rand_vec(co * ci * 9, seed + 1), rand_vec(co, seed + 2));
            let (uh, uw) = (2 * h, 2 * w);
            let up: Vec<f32> = (0..n * ci * uh * uw)
                .map(|i| x[(i / (uh * uw) * h + i / uw % uh / 2) * w + i % uw / 2])
                .collect();
            let c = Case {
                n,
                ci,
                co,
                h: uh,
                w: uw,
                kh: 3,
                kw: 3,
                s: 1,
                pad: [1; 4],
            };
            let want = c.naive(&up, &wt, Some(&b));
            let pw = upsample_phase_weights(&wt, co, ci);
            let mut out = vec![f32::NAN; want.len()];
            upsample_conv3x3(&x, n, ci, h, w, &pw, &b, co, &mut out);
            let e = rel_l2(&out, &want);
            assert!(e < 1e-6, "upsample {c:?}: rel {e}");
        }
    }

    /// Process CPU seconds from /proc: on the shared dev box wall time alone misleads.
    fn cpu_seconds() -> f64 {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let tail = stat.rsplit(')').next().unwrap_or("");
        let f: Vec<f64> = tail.split_whitespace().map(|v| v.parse().unwrap_or(0.0)).collect();
        (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
    }

    /// Prints wall-clock GFLOP/s of `f`, and what its CPU time implies for an idle machine.
    fn bench_one(name: &str, flops: f64, f: &mut dyn FnMut()) {
        f();
        let (t, c) = (std::time::Instant::now(), cpu_seconds());
        let mut reps = 0;
        while reps < 3 || t.elapsed().as_secs_f64() < 1.5 {
            f();
            reps += 1;
        }
        let wall = t.elapsed().as_secs_f64() / reps as f64;
        let cpu = (cpu_seconds() - c) / reps as f64;
        let idle = flops * rayon::current_num_threads() as f64 / cpu.max(1e-9) / 1e9;
        let gf = flops / wall / 1e9;
        println!("{name}: {:.2} ms, {gf:.1} GFLOP/s wall, ~{idle:.1} if idle", wall * 1e3);
    }

    /// Relative L2 error vs f64 of the direct conv and of Winograd F(4,3) at the decoder's shapes, on
    /// uniform [-1, 1) data and on post-swish-like data (x >= -0.28, mean > 0), for 4 output channels.
    /// `cargo test --release --lib conv::tests::winograd_error -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn winograd_error() {
        for (ci, co, hw) in [
            (128, 128, 256),
            (256, 128, 128),
            (256, 256, 64),
            (512, 512, 32),
            (512, 512, 16),
        ] {
            for swishy in [false, true] {
                let mut x = rand_vec(ci * hw * hw, 11);
                if swishy {
                    x.iter_mut().for_each(|v| {
                        let y = 2.0 * *v + 0.5;
                        *v = y / (1.0 + (-y).exp())
                    });
                }
                // torch's default init scale: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
                let s = 1.0 / ((ci * 9) as f32).sqrt();
                let w: Vec<f32> = rand_vec(co * ci * 9, 12).iter().map(|v| v * s).collect();
                let b = rand_vec(co, 13);
                let mut direct = vec![0.0; co * hw * hw];
                let pk = tap_major_weights(&w, co, ci, 3, 3);
                let cw = ConvWeights::tap_major(&pk, co, ci, 3, 3);
                conv2d_with(&x, (1, hw, hw), cw, Some(&b), 1, [1; 4], Epilogue::Set, &mut direct);
                let mut wino = vec![0.0; co * hw * hw];
                if kernel::available() {
                    let u = winograd::weights(&w, co, ci);
                    winograd::conv3x3(&x, (1, hw, hw), &u, co, ci, Some(&b), Epilogue::Set, &mut wino);
                }
                let mut wg = vec![0.0; co * hw * hw];
                let u = winograd_gemm::weights(&w, co, ci);
                winograd_gemm::conv3x3(&x, (1, hw, hw), &u, co, ci, Some(&b), Epilogue::Set, &mut wg);
                let sub = 4;
                let c = Case {
                    n: 1,
                    ci,
                    co: sub,
                    h: hw,
                    w: hw,
                    kh: 3,
                    kw: 3,
                    s: 1,
                    pad: [1; 4],
                };
                let want = c.naive(&x, &w[..sub * ci * 9], Some(&b[..sub]));
                let n = sub * hw * hw;
                println!(
                    "{ci}->{co} at {hw}x{hw} ({}): direct {:.2e}, winograd F(4,3) avx512 {}, gemm crate {:.2e}",
                    if swishy { "swish-like input" } else { "uniform input" },
                    rel_l2(&direct[..n], &want),
                    if kernel::available() {
                        format!("{:.2e}", rel_l2(&wino[..n], &want))
                    } else {
                        "n/a".into()
                    },
                    rel_l2(&wg[..n], &want)
                );
            }
        }
    }

    /// `cargo test --release --lib conv::tests::bench -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn bench() {
        let filter = std::env::var("CONV_BENCH").unwrap_or_default();
        let (m, k, nn) = (512, 4608, 1024);
        let (a, b, mut d) = (rand_vec(m * k, 1), rand_vec(k * nn, 2), vec![0.0; m * nn]);
        let (a, b, par) = (mat(&a, k, 1), mat(&b, nn, 1), Parallelism::Rayon(0));
        let flops = 2.0 * (m * nn * k) as f64;
        if filter.is_empty() {
            bench_one("plain gemm 512x4608x1024", flops, &mut || {
                sgemm((m, nn, k), &mut d, nn, false, a, b, 1.0, par)
            });
        }
        let (p1, p2, p0) = ([1; 4], [0, 1, 0, 1], [0; 4]);
        for (ci, co, hw, k, s, pad, layout) in [
            (128, 128, 256, 3, 1, p1, 2),
            (128, 128, 256, 3, 1, p1, 1),
            (256, 256, 64, 3, 1, p1, 2),
            (256, 256, 64, 3, 1, p1, 1),
            (512, 512, 16, 3, 1, p1, 2),
            (512, 512, 16, 3, 1, p1, 1),
            (512, 512, 32, 3, 1, p1, 2),
            (512, 512, 32, 3, 1, p1, 1),
            (128, 128, 256, 3, 1, p1, 0),
            (3, 128, 256, 3, 1, p1, 2),
            (128, 3, 256, 3, 1, p1, 2),
            (128, 3, 256, 3, 1, p1, 1),
            (128, 128, 256, 3, 2, p2, 2),
            (256, 128, 128, 1, 1, p0, 2),
            (256, 128, 128, 1, 1, p0, 1),
        ] {
            if layout == 2 && !kernel::available() {
                continue;
            }
            let (x, w) = (rand_vec(ci * hw * hw, 1), rand_vec(co * ci * k * k, 2));
            let tm = tap_major_weights(&w, co, ci, k, k);
            let pk = packed_weights(&w, co, ci, k, k);
            let wt = match layout {
                0 => ConvWeights::torch(&w, co, ci, k, k),
                1 => ConvWeights::tap_major(&tm, co, ci, k, k),
                _ => ConvWeights::packed(&pk, co, ci, k, k),
            };
            let bias = rand_vec(co, 3);
            let o = (hw + pad[0] + pad[1] - k) / s + 1;
            let mut out = vec![0.0; co * o * o];
            let layout = ["torch layout", "tap-major gemm crate", "packed avx512"][layout];
            let name = format!("conv{k}x{k}/s{s} {ci}->{co} {hw}x{hw} ({layout})");
            if !name.contains(&filter) {
                continue;
            }
            let flops = 2.0 * (ci * co * k * k * o * o) as f64;
            bench_one(&name, flops, &mut || {
                conv2d_with(&x, (1, hw, hw), wt, Some(&bias), s, pad, Epilogue::Set, &mut out)
            });
            if k == 1 && layout == "packed avx512" {
                bench_one(&format!("{name} in place"), flops, &mut || {
                    let geo = (co, k, s, pad);
                    conv_prepared(Prep::Packed, &pk, &x, (1, ci, hw, hw), geo, Some(&bias), None, &mut out).unwrap()
                });
            }
        }
        for avx512 in [true, false] {
            if avx512 && !kernel::available() {
                continue;
            }
            for (ci, co, hw) in [
                (128, 128, 256),
                (256, 128, 128),
                (128, 128, 128),
                (256, 256, 64),
                (512, 512, 32),
                (512, 256, 32),
                (256, 256, 32),
                (512, 512, 16),
                (256, 512, 16),
            ] {
                let (x, w) = (rand_vec(ci * hw * hw, 1), rand_vec(co * ci * 9, 2));
                let u = if avx512 {
                    winograd::weights(&w, co, ci)
                } else {
                    winograd_gemm::weights(&w, co, ci)
                };
                let (bias, r) = (rand_vec(co, 3), rand_vec(co * hw * hw, 4));
                let mut out = vec![0.0; co * hw * hw];
                let kind = if avx512 { "avx512" } else { "gemm crate" };
                let name =
                    format!("conv3x3/s1 {ci}->{co} {hw}x{hw} (winograd F(4,3) {kind}, residual; as direct flops)");
                if !name.contains(&filter) {
                    continue;
                }
                let flops = 2.0 * (ci * co * 9 * hw * hw) as f64;
                let ep = Epilogue::Residual(&r);
                bench_one(&name, flops, &mut || {
                    if avx512 {
                        winograd::conv3x3(&x, (1, hw, hw), &u, co, ci, Some(&bias), ep, &mut out)
                    } else {
                        winograd_gemm::conv3x3(&x, (1, hw, hw), &u, co, ci, Some(&bias), ep, &mut out)
                    }
                });
            }
        }
        for (c, hw) in [(128, 128), (256, 64), (256, 32), (512, 16)] {
            let (x, b) = (rand_vec(c * hw * hw, 1), rand_vec(c, 3));
            let w = rand_vec(c * c * 9, 2);
            let pw = upsample_phase_weights(&w, c, c);
            let mut out = vec![0.0; c * 4 * hw * hw];
            let name = format!("upsample+conv3x3 {c} {hw}->{} (as 3x3 conv flops)", 2 * hw);
            let flops = 2.0 * (c * c * 9 * 4 * hw * hw) as f64;
            if name.contains(&filter) {
                bench_one(&name, flops, &mut || {
                    upsample_conv3x3(&x, 1, c, hw, hw, &pw, &b, c, &mut out)
                });
            }
            let avx512 = format!("{name} winograd avx512");
            if kernel::available() && avx512.contains(&filter) {
                let u = winograd::upsample_weights(&w, c, c);
                bench_one(&avx512, flops, &mut || {
                    winograd::upsample_conv3x3(&x, (1, hw, hw), &u, c, c, &b, &mut out)
                });
            }
            let gemm = format!("{name} winograd gemm crate");
            if gemm.contains(&filter) {
                let u = winograd_gemm::upsample_weights(&w, c, c);
                bench_one(&gemm, flops, &mut || {
                    winograd_gemm::upsample_conv3x3(&x, (1, hw, hw), &u, c, c, &b, &mut out)
                });
            }
        }
    }
}
