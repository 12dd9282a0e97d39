//! Winograd F(4x4, 3x3) for the 3x3 stride-1 pad-1 convolutions (AVX-512F).
//!
//! Each 4x4 output tile comes from the 6x6 input patch around it: `Y = A^T [(G g G^T) . (B^T d B)] A`,
//! so the channel sum is 36 independent GEMMs (one per position of the 6x6 transformed tile),
//! `M[pos] = U[pos] (c_out x c_in) * V[pos] (c_in x tiles)`: 36 multiply-adds per 16 outputs instead of
//! 144, 4x fewer. `U = G g G^T` is computed once at load (in f64, rounded once to f32) and packed for
//! `kernel::gemm`. Per block of tiles (16 tiles per 512-bit vector, lanes = tiles), the input transform
//! writes V, the GEMMs write M, and the output transform adds the bias and the epilogue.
//!
//! Where the tiles of a row fill whole vectors (tiles per row a multiple of 16: widths 64, 128, 256...)
//! the transforms load and store contiguous rows and (de)interleave them in registers; otherwise the
//! lanes gather and scatter through the generic path.
//!
//! The decoder's Upsample (nearest x2, then 3x3 pad 1) runs the same way on the low-resolution input:
//! each output phase (Y % 2, X % 2) is a 3x3 conv of the input whose kernel is the folded 2x2 phase
//! kernel placed in a 3x3 frame, so the four phases share one input transform.
use super::kernel::{self, Mode, Seg, MR};
use super::{with_scratch, Epilogue, SendPtr};
use rayon::prelude::*;
use std::arch::x86_64::*;

/// Positions of a transformed 6x6 tile.
pub const POS: usize = 36;

mod weights;
pub(crate) use weights::{filter_tile, torch_kernel, upsample_kernel};
pub use weights::{upsample_weights, weights, weights_len};

#[cfg(test)]
#[path = "winograd_tests.rs"]
mod tests;

// ---------------------------------------------------------------------------------------------
// 1-D transforms on 6 (or 4) vectors, lanes = tiles.

/// `B^T d`:
/// ```text
/// [2 -3 -4  3  2  0]   [0 -2  1  5  2  0]   [0 -2  5 -1 -2  0]
/// [0  2  1 -2 -1  0]   [0  1 -2 -1  2  0]   [0  2 -3 -4  3  2]
/// ```
#[target_feature(enable = "avx512f")]
#[inline]
fn bt(d: [__m512; 6]) -> [__m512; 6] {
    let (two, three, four, five) = (
        _mm512_set1_ps(2.0),
        _mm512_set1_ps(3.0),
        _mm512_set1_ps(4.0),
        _mm512_set1_ps(5.0),
    );
    let d13 = _mm512_sub_ps(d[1], d[3]);
    [
        // 2 (d0 + d4) - 3 (d1 - d3) - 4 d2
        _mm512_fnmadd_ps(
            four,
            d[2],
            _mm512_fnmadd_ps(three, d13, _mm512_mul_ps(two, _mm512_add_ps(d[0], d[4]))),
        ),
        // d2 + 5 d3 + 2 (d4 - d1)
        _mm512_fmadd_ps(two, _mm512_sub_ps(d[4], d[1]), _mm512_fmadd_ps(five, d[3], d[2])),
        // 5 d2 - d3 - 2 (d1 + d4)
        _mm512_fnmadd_ps(two, _mm512_add_ps(d[1], d[4]), _mm512_fmsub_ps(five, d[2], d[3])),
        // 2 (d1 - d3) + d2 - d4
        _mm512_fmadd_ps(two, d13, _mm512_sub_ps(d[2], d[4])),
        // (d1 - d3) + 2 (d4 - d2)
        _mm512_fmadd_ps(two, _mm512_sub_ps(d[4], d[2]), d13),
        // 2 (d1 + d5) + 3 (d4 - d2) - 4 d3
        _mm512_fnmadd_ps(
            four,
            d[3],
            _mm512_fmadd_ps(
                three,
                _mm512_sub_ps(d[4], d[2]),
                _mm512_mul_ps(two, _mm512_add_ps(d[1], d[5])),
            ),
        ),
    ]
}

/// `A^T m`: rows `[1 1 1 1 1 0]`, `[0 1 -1 1/2 -2 0]`, `[0 1 1 1/4 4 0]`, `[0 1 -1 1/8 -8 1]`.
#[target_feature(enable = "avx512f")]
#[inline]
fn at(m: [__m512; 6]) -> [__m512; 4] {
    let s = _mm512_add_ps(m[1], m[2]);
    let d = _mm512_sub_ps(m[1], m[2]);
    [
        _mm512_add_ps(_mm512_add_ps(m[0], s), _mm512_add_ps(m[3], m[4])),
        _mm512_fnmadd_ps(_mm512_set1_ps(2.0), m[4], _mm512_fmadd_ps(_mm512_set1_ps(0.5), m[3], d)),
        _mm512_fmadd_ps(
            _mm512_set1_ps(4.0),
            m[4],
            _mm512_fmadd_ps(_mm512_set1_ps(0.25), m[3], s),
        ),
        _mm512_add_ps(
            _mm512_fnmadd_ps(
                _mm512_set1_ps(8.0),
                m[4],
                _mm512_fmadd_ps(_mm512_set1_ps(0.125), m[3], d),
            ),
            m[5],
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Geometry.

#[derive(Clone, Copy)]
struct Geom {
    h: usize,
    w: usize,
    /// tiles per column and row
    th: usize,
    tw: usize,
    /// whole rows of tiles fill vectors: the contiguous paths apply
    rows_fit: bool,
}

impl Geom {
    fn new(h: usize, w: usize) -> Self {
        let (th, tw) = (h.div_ceil(4), w.div_ceil(4));
        Geom {
            h,
            w,
            th,
            tw,
            rows_fit: tw % 16 == 0,
        }
    }
    fn tiles(&self) -> usize {
        self.th * self.tw
    }
    fn groups(&self) -> usize {
        self.tiles().div_ceil(16)
    }
}

/// Per-group lane data of the generic path: tile origins (y, x of the patch's top-left, may be -1) and
/// the lanes whose patch row `i` / column `j` is inside the image.
struct Lanes {
    base: __m512i,
    row: [__mmask16; 6],
    col: [__mmask16; 6],
    y0: [i32; 16],
    x0: [i32; 16],
    valid: __mmask16,
}

#[target_feature(enable = "avx512f")]
fn lanes(g: &Geom, group: usize) -> Lanes {
    let mut y0 = [0i32; 16];
    let mut x0 = [0i32; 16];
    let mut valid = 0u16;
    let (mut row, mut col) = ([0u16; 6], [0u16; 6]);
    let mut base = [0i32; 16];
    for l in 0..16 {
        let t = group * 16 + l;
        if t >= g.tiles() {
            continue;
        }
        valid |= 1 << l;
        let (ty, tx) = (t / g.tw, t % g.tw);
        y0[l] = 4 * ty as i32 - 1;
        x0[l] = 4 * tx as i32 - 1;
        base[l] = y0[l] * g.w as i32 + x0[l];
        for i in 0..6 {
            let y = y0[l] + i as i32;
            if y >= 0 && (y as usize) < g.h {
                row[i] |= 1 << l;
            }
            let x = x0[l] + i as i32;
            if x >= 0 && (x as usize) < g.w {
                col[i] |= 1 << l;
            }
        }
    }
    // SAFETY: plain load of a local array.
    let base = unsafe { _mm512_loadu_si512(base.as_ptr() as *const _) };
    Lanes {
        base,
        row,
        col,
        y0,
        x0,
        valid,
    }
}

// ---------------------------------------------------------------------------------------------
// Input transform.

/// Stores the 36 transformed vectors of `d` (6x6, rows = patch rows) at `v + pos * pos_stride`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_v(d: &[[__m512; 6]; 6], v: *mut f32, pos_stride: usize) {
    // rows of the patch first (B^T along j), then columns (B^T along i)
    let mut e = [[_mm512_setzero_ps(); 6]; 6];
    for i in 0..6 {
        e[i] = bt(d[i]);
    }
    for j in 0..6 {
        let col = bt([e[0][j], e[1][j], e[2][j], e[3][j], e[4][j], e[5][j]]);
        for (i, c) in col.iter().enumerate() {
            // SAFETY: the caller's V holds POS positions of pos_stride floats from v.
            unsafe { _mm512_storeu_ps(v.add((i * 6 + j) * pos_stride), *c) };
        }
    }
}

/// Deinterleave indices: lanes 0..7 take elements j, j + 4, ... of a 32-float pair, lanes 8..15 j + 1, ...
struct Perms {
    de01: __m512i,
    de23: __m512i,
    in_lo: __m512i,
    in_hi: __m512i,
}

#[target_feature(enable = "avx512f")]
fn perms() -> Perms {
    let de = |j: i32| {
        let mut v = [0i32; 16];
        for l in 0..8 {
            v[l] = 4 * l as i32 + j;
            v[l + 8] = 4 * l as i32 + j + 1;
        }
        // SAFETY: plain load of a local array.
        unsafe { _mm512_loadu_si512(v.as_ptr() as *const _) }
    };
    // interleave: from P = [c0 lanes 0..7 | c1 lanes 0..7] and Q = [c2 0..7 | c3 0..7] (second operand,
    // indices + 16), output e = 4 l + c for l in 0..4 (lo) or 4..8 (hi)
    let inter = |half: i32| {
        let mut v = [0i32; 16];
        for e in 0..16 {
            let (l, c) = (e as i32 / 4 + 4 * half, e as i32 % 4);
            v[e] = match c {
                0 => l,
                1 => 8 + l,
                2 => 16 + l,
                _ => 24 + l,
            };
        }
        // SAFETY: plain load of a local array.
        unsafe { _mm512_loadu_si512(v.as_ptr() as *const _) }
    };
    Perms {
        de01: de(0),
        de23: de(2),
        in_lo: inter(0),
        in_hi: inter(1),
    }
}

/// Lane masks of a 16-float window starting at element `start` of a row of `w` (valid: 0 <= e < w).
#[inline]
fn window_mask(start: isize, w: usize) -> __mmask16 {
    let lo = (-start).clamp(0, 16) as u32;
    let hi = (w as isize - start).clamp(0, 16) as u32;
    let upto = |n: u32| if n >= 16 { 0xffff } else { (1u32 << n) - 1 };
    (upto(hi) & !upto(lo)) as __mmask16
}

/// Prefetches the cache lines of `len` floats from `p` into L2 (any address: prefetches do not fault).
#[target_feature(enable = "avx512f")]
#[inline]
fn prefetch(p: *const f32, len: usize) {
    let mut off = 0;
    while off < len + 16 {
        // a prefetch is a hint and never faults; T1 (to L2) rather than T0, whose L1 miss buffers
        // fill up and stall: measured 15% faster over the whole conv, and 25% faster than none
        _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(off) as *const i8);
        off += 16;
    }
}

/// Contiguous-path data of one group: patch origin and the load masks of its 5 row vectors.
#[derive(Clone, Copy)]
struct RowGroup {
    y0: isize,
    x0: isize,
    masks: [__mmask16; 5],
}

/// V for groups `g0 .. g0 + ng` (16 tiles each), all input channels: `v[pos][ci][gi * 16 + lane]`,
/// `pos_stride` floats between positions, `ci_stride` between channels. Channels run outermost so
/// that one channel's rows are read together, and the next channel's are prefetched meanwhile.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn input_block(
    x: &[f32],
    g: &Geom,
    c_in: usize,
    (g0, ng): (usize, usize),
    pr: &Perms,
    v: *mut f32,
    pos_stride: usize,
    ci_stride: usize,
) {
    let plane = g.h * g.w;
    let mut d = [[_mm512_setzero_ps(); 6]; 6];
    if g.rows_fit {
        // 16 tiles of one row: patch row i of lane l is elements 4 l .. 4 l + 6 of image row y0 + i,
        // counted from column x0 = 4 tx0 - 1
        let rg: Vec<RowGroup> = (g0..g0 + ng)
            .map(|group| {
                let t0 = group * 16;
                let (ty, tx0) = (t0 / g.tw, t0 % g.tw);
                let x0 = 4 * tx0 as isize - 1;
                RowGroup {
                    y0: 4 * ty as isize - 1,
                    x0,
                    masks: std::array::from_fn(|k| {
                        window_mask(x0 + 16 * k as isize, g.w) & if k == 4 { 3 } else { 0xffff }
                    }),
                }
            })
            .collect();
        for ci in 0..c_in {
            let xc = x[ci * plane..].as_ptr();
            for (gi, r) in rg.iter().enumerate() {
                let row_ptr = |c: *const f32, i: usize| c.wrapping_offset((r.y0 + i as isize) * g.w as isize + r.x0);
                for i in 0..6 {
                    prefetch(row_ptr(xc.wrapping_add(plane), i), 66);
                }
                for (i, di) in d.iter_mut().enumerate() {
                    let y = r.y0 + i as isize;
                    if y < 0 || y as usize >= g.h {
                        *di = [_mm512_setzero_ps(); 6];
                        continue;
                    }
                    let p = row_ptr(xc, i);
                    // SAFETY: masked loads touch only elements inside row y of this channel.
                    let rv: [__m512; 5] =
                        std::array::from_fn(|k| unsafe { _mm512_maskz_loadu_ps(r.masks[k], p.wrapping_add(16 * k)) });
                    let a01 = _mm512_permutex2var_ps(rv[0], pr.de01, rv[1]);
                    let a23 = _mm512_permutex2var_ps(rv[0], pr.de23, rv[1]);
                    let b01 = _mm512_permutex2var_ps(rv[2], pr.de01, rv[3]);
                    let b23 = _mm512_permutex2var_ps(rv[2], pr.de23, rv[3]);
                    let d0 = _mm512_shuffle_f32x4::<0x44>(a01, b01);
                    let d1 = _mm512_shuffle_f32x4::<0xEE>(a01, b01);
                    let d2 = _mm512_shuffle_f32x4::<0x44>(a23, b23);
                    let d3 = _mm512_shuffle_f32x4::<0xEE>(a23, b23);
                    // columns 4 and 5: columns 0 and 1 one tile on, the last lane from the fifth load
                    let (r4, d0i, d1i) = (
                        _mm512_castps_si512(rv[4]),
                        _mm512_castps_si512(d0),
                        _mm512_castps_si512(d1),
                    );
                    let d4 = _mm512_castsi512_ps(_mm512_alignr_epi32::<1>(r4, d0i));
                    let r4s = _mm512_alignr_epi32::<1>(r4, r4);
                    let d5 = _mm512_castsi512_ps(_mm512_alignr_epi32::<1>(r4s, d1i));
                    *di = [d0, d1, d2, d3, d4, d5];
                }
                // SAFETY: the caller's V holds this block's columns for c_in channels.
                unsafe { store_v(&d, v.add(ci * ci_stride + gi * 16), pos_stride) };
            }
        }
    } else {
        let ln: Vec<Lanes> = (g0..g0 + ng).map(|group| lanes(g, group)).collect();
        for ci in 0..c_in {
            let xc = x[ci * plane..].as_ptr();
            for (gi, ln) in ln.iter().enumerate() {
                for i in 0..6 {
                    for j in 0..6 {
                        let m = ln.row[i] & ln.col[j] & ln.valid;
                        let idx = _mm512_add_epi32(ln.base, _mm512_set1_epi32((i * g.w + j) as i32));
                        // SAFETY: only lanes whose pixel is inside this channel's plane are read.
                        d[i][j] = unsafe { _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), m, idx, xc) };
                    }
                }
                // SAFETY: as above.
                unsafe { store_v(&d, v.add(ci * ci_stride + gi * 16), pos_stride) };
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Output transform.

/// `A^T m A` of the 36 vectors at `m + pos * pos_stride`: 16 vectors, `y[r * 4 + c]`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn output_tile(m: *const f32, pos_stride: usize) -> [__m512; 16] {
    let mut f = [[_mm512_setzero_ps(); 6]; 4];
    for j in 0..6 {
        // SAFETY: the caller's M holds POS positions.
        let col: [__m512; 6] = std::array::from_fn(|i| unsafe { _mm512_loadu_ps(m.add((i * 6 + j) * pos_stride)) });
        let t = at(col);
        for r in 0..4 {
            f[r][j] = t[r];
        }
    }
    let mut y = [_mm512_setzero_ps(); 16];
    for r in 0..4 {
        let t = at(f[r]);
        y[r * 4..r * 4 + 4].copy_from_slice(&t);
    }
    y
}

/// Where the output transform writes: output phase (a, b) of tile pixel (Y, X) is `out[(Y * s + a) *
/// ow + X * s + b]` with s = 1 (conv) or 2 (upsample).
/// Shared with `winograd_gemm`, whose entry points check their operands the same way.
#[derive(Clone, Copy)]
pub(super) struct Dest<'a> {
    pub(super) out: SendPtr,
    /// elements of one output image and channel plane
    pub(super) img: usize,
    pub(super) plane: usize,
    pub(super) ow: usize,
    pub(super) s: usize,
    pub(super) bias: Option<&'a [f32]>,
    pub(super) ep: Epilogue<'a>,
}

impl<'a> Dest<'a> {
    /// Checks the operands of a 3x3 stride-1 pad-1 conv (`u_len`: the weight length its layout
    /// needs) and aims at `out`; None when there is nothing to write.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv(
        x: &[f32],
        (n, h, w): (usize, usize, usize),
        (u, u_len): (&[f32], usize),
        c_out: usize,
        c_in: usize,
        bias: Option<&'a [f32]>,
        ep: Epilogue<'a>,
        out: &mut [f32],
    ) -> Option<Self> {
        assert_eq!(x.len(), n * c_in * h * w, "winograd conv: input length");
        assert_eq!(out.len(), n * c_out * h * w, "winograd conv: output length");
        assert_eq!(u.len(), u_len, "winograd conv: weight length");
        assert!(bias.is_none_or(|b| b.len() == c_out), "winograd conv: bias length");
        if let Epilogue::Residual(r) = ep {
            assert_eq!(r.len(), out.len(), "winograd conv: residual length");
        }
        (!out.is_empty()).then(|| Dest {
            out: SendPtr(out.as_mut_ptr()),
            img: c_out * h * w,
            plane: h * w,
            ow: w,
            s: 1,
            bias,
            ep,
        })
    }

    /// Checks the operands of a nearest x2 upsample + 3x3 conv and aims at `out` (n, c_out, 2h, 2w).
    pub(super) fn upsample(
        x: &[f32],
        (n, h, w): (usize, usize, usize),
        (u, u_len): (&[f32], usize),
        (c_out, c_in): (usize, usize),
        bias: &'a [f32],
        out: &mut [f32],
    ) -> Option<Self> {
        assert_eq!(x.len(), n * c_in * h * w, "winograd upsample: input length");
        assert_eq!(out.len(), n * c_out * 4 * h * w, "winograd upsample: output length");
        assert_eq!(u.len(), u_len, "winograd upsample: weight length");
        assert_eq!(bias.len(), c_out, "winograd upsample: bias length");
        (!out.is_empty()).then(|| Dest {
            out: SendPtr(out.as_mut_ptr()),
            img: c_out * 4 * h * w,
            plane: 4 * h * w,
            ow: 2 * w,
            s: 2,
            bias: Some(bias),
            ep: Epilogue::Set,
        })
    }
}

#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn epilogue(p: *mut f32, res: *const f32, mask: __mmask16, v: __m512, ep: Epilogue) {
    // SAFETY: the caller checked that the masked lanes lie inside the output (and residual).
    // (Non-temporal stores for the large outputs measured 2x slower here.)
    unsafe {
        let v = match ep {
            Epilogue::Set => v,
            Epilogue::Accumulate => _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, p)),
            Epilogue::Residual(_) => _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, res)),
        };
        _mm512_mask_storeu_ps(p, mask, v);
    }
}

/// Writes the output of one (image, channel, phase, group), and prefetches what the same group
/// of the next channel will read and write.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn write_group(
    y: [__m512; 16],
    d: &Dest,
    g: &Geom,
    img: usize,
    co: usize,
    phase: (usize, usize),
    group: usize,
    pr: &Perms,
) {
    let bias = _mm512_set1_ps(d.bias.map_or(0.0, |b| b[co]));
    let base = img * d.img + co * d.plane;
    let res = match d.ep {
        Epilogue::Residual(r) => r.as_ptr(),
        _ => std::ptr::null(),
    };
    if g.rows_fit {
        let (a, b) = phase;
        let t0 = group * 16;
        let (ty, tx0) = (t0 / g.tw, t0 % g.tw);
        for r in 0..4 {
            let oy = (4 * ty + r) * d.s + a;
            if 4 * ty + r >= g.h {
                break;
            }
            // interleave y[r][0..4] (lanes = tiles) into 64 consecutive pixels of the phase grid
            let p01 = _mm512_shuffle_f32x4::<0x44>(y[r * 4], y[r * 4 + 1]); // c0 lo | c1 lo
            let p23 = _mm512_shuffle_f32x4::<0x44>(y[r * 4 + 2], y[r * 4 + 3]);
            let q01 = _mm512_shuffle_f32x4::<0xEE>(y[r * 4], y[r * 4 + 1]); // c0 hi | c1 hi
            let q23 = _mm512_shuffle_f32x4::<0xEE>(y[r * 4 + 2], y[r * 4 + 3]);
            let o = [
                _mm512_permutex2var_ps(p01, pr.in_lo, p23),
                _mm512_permutex2var_ps(p01, pr.in_hi, p23),
                _mm512_permutex2var_ps(q01, pr.in_lo, q23),
                _mm512_permutex2var_ps(q01, pr.in_hi, q23),
            ];
            let row = base + oy * d.ow;
            let next = row + d.plane;
            prefetch(d.out.get().wrapping_add(next + 4 * tx0 * d.s), 64 * d.s);
            if !res.is_null() {
                prefetch(res.wrapping_add(next + 4 * tx0), 64);
            }
            for (k, &v) in o.iter().enumerate() {
                let x0 = 4 * tx0 + 16 * k;
                if x0 >= g.w {
                    break;
                }
                let v = _mm512_add_ps(v, bias);
                if d.s == 1 {
                    let mask = window_mask(x0 as isize, g.w);
                    let off = row + x0;
                    // SAFETY: row oy < h and the masked columns < w of this image and channel.
                    unsafe { epilogue(d.out.get().add(off), res.wrapping_add(off), mask, v, d.ep) };
                } else {
                    // phase b of output columns 2 x0 .. 2 x0 + 32: every other lane (Set only)
                    let halves = [v, _mm512_shuffle_f32x4::<0xEE>(v, v)];
                    for (hf, &hv) in halves.iter().enumerate() {
                        let start = 2 * x0 + 16 * hf;
                        let mask = window_mask(start as isize, 2 * g.w) & (0x5555 << b);
                        let e = _mm512_maskz_expand_ps(0x5555 << b, hv);
                        // SAFETY: the masked lanes are output columns < 2w of row oy < 2h.
                        unsafe { _mm512_mask_storeu_ps(d.out.get().add(row + start), mask, e) };
                    }
                }
            }
        }
        return;
    }
    // generic: lane by lane
    let ln = lanes(g, group);
    let mut buf = [[0f32; 16]; 16];
    for (k, v) in y.iter().enumerate() {
        // SAFETY: plain store to a local array.
        unsafe { _mm512_storeu_ps(buf[k].as_mut_ptr(), _mm512_add_ps(*v, bias)) };
    }
    let (a, b) = phase;
    for l in 0..16 {
        if ln.valid & (1 << l) == 0 {
            continue;
        }
        let (ty, tx) = ((ln.y0[l] + 1) as usize, (ln.x0[l] + 1) as usize);
        for r in 0..4 {
            if ty + r >= g.h {
                break;
            }
            for c in 0..4 {
                if tx + c >= g.w {
                    break;
                }
                let o = base + ((ty + r) * d.s + a) * d.ow + (tx + c) * d.s + b;
                let v = buf[r * 4 + c][l];
                // SAFETY: inside the output (pixel < h, w of this image and channel).
                unsafe {
                    let p = d.out.get().add(o);
                    *p = match d.ep {
                        Epilogue::Set => v,
                        Epilogue::Accumulate => *p + v,
                        Epilogue::Residual(rr) => rr[o] + v,
                    };
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Driver.

/// Products summed in registers before each addition to M (see `kernel::gemm`): a third of the
/// rounding error of one run at c_in = 512.
const KC: usize = 32;

/// Vectors of 16 tiles per block: one 48-column micro-tile of the GEMM. V (36 x c_in x 48) and M
/// (36 x CO_BLOCK x 48) outgrow L2 at c_in >= 256, but each is written once and read about once
/// per pass, so that costs little next to the GEMM; measured (noisy, shared box) no slower than
/// blocks of 32 or 96 tiles at 128 channels, and 20% faster than 16 for the 256-channel upsample.
const BLOCK_GROUPS: usize = 3;

/// Output channels per GEMM pass (M = 36 x CO_BLOCK x 48 floats, 442 KiB).
const CO_BLOCK: usize = 64;

#[allow(clippy::too_many_arguments)]
fn run(x: &[f32], (n, h, w): (usize, usize, usize), u: &[f32], c_out: usize, c_in: usize, phases: usize, d: Dest) {
    let g = Geom::new(h, w);
    let groups = g.groups();
    let block_groups = env_usize("WINO_GROUPS").unwrap_or(BLOCK_GROUPS).min(groups);
    let blocks = groups.div_ceil(block_groups);
    // split output channels only when blocks alone cannot feed the threads
    let want = 2 * rayon::current_num_threads();
    let co_parts = want.div_ceil(n * blocks).min(c_out.div_ceil(MR)).max(1);
    let co_part = c_out.div_ceil(co_parts).next_multiple_of(MR);
    let co_parts = c_out.div_ceil(co_part);
    let cols = block_groups * 16;
    let cb = env_usize("WINO_CB").unwrap_or(CO_BLOCK).clamp(MR, co_part) / MR * MR;
    let kc = env_usize("WINO_KC").unwrap_or(KC);
    let v_len = POS * c_in * cols;
    let m_len = POS * cb * cols;
    let plen = kernel::packed_len(c_out, c_in);
    (0..n * blocks * co_parts).into_par_iter().for_each(|task| {
        let (img, rest) = (task / (blocks * co_parts), task % (blocks * co_parts));
        let (blk, part) = (rest / co_parts, rest % co_parts);
        let g0 = blk * block_groups;
        let ng = block_groups.min(groups - g0);
        let ncols = ng * 16;
        let co_range = (part * co_part, ((part + 1) * co_part).min(c_out));
        let xi = &x[img * c_in * h * w..][..c_in * h * w];
        with_scratch(v_len + m_len, |buf| {
            let (v, m) = buf.split_at_mut(v_len);
            // SAFETY: AVX-512 is checked by the callers; V is POS x c_in x cols, this group's columns.
            unsafe {
                let pr = perms();
                input_block(xi, &g, c_in, (g0, ng), &pr, v.as_mut_ptr(), c_in * cols, cols);
                let mut cb0 = co_range.0;
                while cb0 < co_range.1 {
                    let rows = cb.min(co_range.1 - cb0);
                    for ph in 0..phases {
                        for pos in 0..POS {
                            let seg = Seg {
                                a: u[(ph * POS + pos) * plen + cb0 * c_in..].as_ptr(),
                                b: v[pos * c_in * cols..].as_ptr(),
                            };
                            let mo = m[pos * cb * cols..].as_mut_ptr();
                            kernel::gemm(rows, ncols, c_in, &[seg], cols, mo, cols, Mode::Set, kc);
                        }
                        let phase = (ph >> 1, ph & 1);
                        for r in 0..rows {
                            for gi in 0..ng {
                                let y = output_tile(m[r * cols + gi * 16..].as_ptr(), cb * cols);
                                write_group(y, &d, &g, img, cb0 + r, phase, g0 + gi, &pr);
                            }
                        }
                    }
                    cb0 += rows;
                }
            }
        });
    });
}

fn env_usize(name: &str) -> Option<usize> {
    if cfg!(test) {
        std::env::var(name).ok().and_then(|v| v.parse().ok())
    } else {
        None
    }
}

/// 3x3 stride-1 pad-1 conv with `weights` (from `weights`). x: (n, c_in, h, w); out: (n, c_out, h, w).
/// Needs `kernel::available()`.
#[allow(clippy::too_many_arguments)]
pub fn conv3x3(
    x: &[f32],
    (n, h, w): (usize, usize, usize),
    u: &[f32],
    c_out: usize,
    c_in: usize,
    bias: Option<&[f32]>,
    ep: Epilogue,
    out: &mut [f32],
) {
    assert!(kernel::available(), "winograd conv needs AVX-512");
    let u_len = weights_len(c_out, c_in, 1);
    if let Some(d) = Dest::conv(x, (n, h, w), (u, u_len), c_out, c_in, bias, ep, out) {
        run(x, (n, h, w), u, c_out, c_in, 1, d);
    }
}

/// Nearest x2 upsample then 3x3 pad-1 conv, with `upsample_weights`. x: (n, c_in, h, w);
/// out: (n, c_out, 2h, 2w). Needs `kernel::available()`.
#[allow(clippy::too_many_arguments)]
pub fn upsample_conv3x3(
    x: &[f32],
    (n, h, w): (usize, usize, usize),
    u: &[f32],
    c_out: usize,
    c_in: usize,
    bias: &[f32],
    out: &mut [f32],
) {
    assert!(kernel::available(), "winograd conv needs AVX-512");
    let u_len = weights_len(c_out, c_in, 4);
    if let Some(d) = Dest::upsample(x, (n, h, w), (u, u_len), (c_out, c_in), bias, out) {
        run(x, (n, h, w), u, c_out, c_in, 4, d);
    }
}
