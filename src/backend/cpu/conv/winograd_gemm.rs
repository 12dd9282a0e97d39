//! Winograd F(4x4, 3x3) for CPUs without AVX-512: the same arithmetic as `winograd` (same B, G and A
//! matrices, weights transformed in f64 at load), with the transforms in plain Rust over rows of tiles
//! (auto-vectorised for the crate's x86-64-v3 baseline) and the 36 GEMMs per block through the `gemm`
//! crate, whose AVX2 + FMA kernels are chosen at run time.
//!
//! Napkin math, 3x3 128->128 at 256x256: direct 19.3 GFLOP; Winograd 4.8 GFLOP of GEMM plus the
//! transforms (~0.3 GFLOP of adds). The transformed input and output are 36/16 = 2.25x the size of
//! the tensors they stand for, kept per block of tiles in a thread's scratch (~1-2 MiB), so DRAM
//! sees each tensor about once.
//!
//! Work unit: a block of whole rows of tiles of one image (lanes = tiles along a row) times a part
//! of the output channels. Per block: the input transform writes V[pos][ci][tile], one GEMM per
//! position writes M[pos][co][tile] = U[pos] * V[pos], and the output transform adds bias and
//! epilogue while writing the 4x4 tiles out (at stride 2 and a phase offset for the upsample).
use super::winograd::{filter_tile, torch_kernel, upsample_kernel, Dest, POS};
use super::{mat, sgemm, with_scratch, Epilogue, SendPtr};
use gemm::Parallelism;
use rayon::prelude::*;

/// U laid out as `[phase][pos][c_out][c_in]`: row-major GEMM operands, one per position.
fn pack(c_out: usize, c_in: usize, phases: usize, kern: impl Fn(usize, usize, usize) -> [f64; 9] + Sync) -> Vec<f32> {
    let mat_len = c_out * c_in;
    let mut out = vec![0f32; phases * POS * mat_len];
    let optr = SendPtr(out.as_mut_ptr());
    (0..phases * c_out).into_par_iter().for_each(|task| {
        let (ph, co) = (task / c_out, task % c_out);
        for ci in 0..c_in {
            let u = filter_tile(&kern(ph, co, ci));
            for (pos, &v) in u.iter().enumerate() {
                // SAFETY: in bounds; row co of every position of phase ph belongs to this task alone.
                unsafe { *optr.get().add((ph * POS + pos) * mat_len + co * c_in + ci) = v as f32 };
            }
        }
    });
    out
}

/// Transformed weights of a torch `(c_out, c_in, 3, 3)` weight, for `conv3x3`.
pub fn weights(w: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    assert_eq!(w.len(), c_out * c_in * 9, "winograd weights: length");
    pack(c_out, c_in, 1, |_, co, ci| torch_kernel(w, c_in, co, ci))
}

/// Transformed weights of nearest x2 upsample + 3x3 conv, for `upsample_conv3x3` (the phase kernels of
/// `winograd::upsample_weights`).
pub fn upsample_weights(w: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    assert_eq!(w.len(), c_out * c_in * 9, "winograd upsample weights: length");
    pack(c_out, c_in, 4, |ph, co, ci| upsample_kernel(w, c_in, ph, co, ci))
}

pub fn weights_len(c_out: usize, c_in: usize, phases: usize) -> usize {
    phases * POS * c_out * c_in
}

// ---------------------------------------------------------------------------------------------
// 1-D transforms, elementwise over `n` lanes: `src` and `dst` hold 6 (or 4) rows of `n` each.

/// `dst = B^T src` (the rows of B^T as in `winograd::bt`).
fn bt(src: [&[f32]; 6], dst: &mut [f32], n: usize) {
    let [d0, d1, d2, d3, d4, d5] = src.map(|s| &s[..n]);
    let (o0, rest) = dst[..6 * n].split_at_mut(n);
    let (o1, rest) = rest.split_at_mut(n);
    let (o2, rest) = rest.split_at_mut(n);
    let (o3, rest) = rest.split_at_mut(n);
    let (o4, o5) = rest.split_at_mut(n);
    for x in 0..n {
        let (d0, d1, d2, d3, d4, d5) = (d0[x], d1[x], d2[x], d3[x], d4[x], d5[x]);
        let d13 = d1 - d3;
        o0[x] = 2.0 * (d0 + d4) - 3.0 * d13 - 4.0 * d2;
        o1[x] = d2 + 5.0 * d3 + 2.0 * (d4 - d1);
        o2[x] = 5.0 * d2 - d3 - 2.0 * (d1 + d4);
        o3[x] = 2.0 * d13 + d2 - d4;
        o4[x] = d13 + 2.0 * (d4 - d2);
        o5[x] = 2.0 * (d1 + d5) + 3.0 * (d4 - d2) - 4.0 * d3;
    }
}

/// `dst = A^T src`: rows `[1 1 1 1 1 0]`, `[0 1 -1 1/2 -2 0]`, `[0 1 1 1/4 4 0]`, `[0 1 -1 1/8 -8 1]`.
fn at(src: [&[f32]; 6], dst: &mut [f32], n: usize) {
    let [m0, m1, m2, m3, m4, m5] = src.map(|s| &s[..n]);
    let (o0, rest) = dst[..4 * n].split_at_mut(n);
    let (o1, rest) = rest.split_at_mut(n);
    let (o2, o3) = rest.split_at_mut(n);
    for x in 0..n {
        let (m0, m3, m4, m5) = (m0[x], m3[x], m4[x], m5[x]);
        let (s, d) = (m1[x] + m2[x], m1[x] - m2[x]);
        o0[x] = m0 + s + m3 + m4;
        o1[x] = d + 0.5 * m3 - 2.0 * m4;
        o2[x] = s + 0.25 * m3 + 4.0 * m4;
        o3[x] = d + 0.125 * m3 - 8.0 * m4 + m5;
    }
}

/// Rows `0..k` of a `[k][n]` buffer.
fn rows<const K: usize>(buf: &[f32], n: usize) -> [&[f32]; K] {
    std::array::from_fn(|i| &buf[i * n..(i + 1) * n])
}

// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Geom {
    h: usize,
    w: usize,
    th: usize,
    tw: usize,
}

/// V[pos][ci][t] for tiles `t = (ty - ty0) * tw + tx` of tile rows `ty0..ty0 + nty` of one image.
fn input_block(
    x: &[f32],
    g: &Geom,
    c_in: usize,
    (ty0, nty): (usize, usize),
    v: &mut [f32],
    cols: usize,
    tmp: &mut [f32],
) {
    let (tw, wp) = (g.tw, 4 * g.tw + 2);
    // tmp: 6 padded rows (wp), their B^T transform (6 x wp), 6 deinterleaved column phases of one
    // transformed row (6 x (tw + 1)), and its column transform (6 x tw)
    let (pad, rest) = tmp.split_at_mut(6 * wp);
    let (rowt, rest) = rest.split_at_mut(6 * wp);
    let (ph, rest) = rest.split_at_mut(6 * (tw + 1));
    let colt = &mut rest[..6 * tw];
    for ci in 0..c_in {
        let plane = &x[ci * g.h * g.w..][..g.h * g.w];
        for r in 0..nty {
            let y0 = 4 * (ty0 + r) as isize - 1;
            for (i, prow) in pad.chunks_exact_mut(wp).enumerate() {
                let y = y0 + i as isize;
                prow.fill(0.0);
                if (0..g.h as isize).contains(&y) {
                    prow[1..1 + g.w].copy_from_slice(&plane[y as usize * g.w..][..g.w]);
                }
            }
            bt(rows::<6>(pad, wp), rowt, wp);
            for i in 0..6 {
                let t = &rowt[i * wp..][..wp];
                // column 4 tx + k of the transformed row is phase k mod 4 (and k - 4 at tx + 1)
                for (k, dst) in ph.chunks_exact_mut(tw + 1).take(4).enumerate() {
                    // phases 0 and 1 need tw + 1 columns, 2 and 3 only tw (wp = 4 tw + 2)
                    let len = if k < 2 { tw + 1 } else { tw };
                    for (j, d) in dst[..len].iter_mut().enumerate() {
                        *d = t[4 * j + k];
                    }
                }
                let (p0, p1) = (&ph[..tw + 1], &ph[tw + 1..2 * (tw + 1)]);
                let (p2, p3) = (&ph[2 * (tw + 1)..][..tw], &ph[3 * (tw + 1)..][..tw]);
                bt([&p0[..tw], &p1[..tw], p2, p3, &p0[1..], &p1[1..]], colt, tw);
                for j in 0..6 {
                    let dst = &mut v[((i * 6 + j) * c_in + ci) * cols + r * tw..][..tw];
                    dst.copy_from_slice(&colt[j * tw..][..tw]);
                }
            }
        }
    }
}

/// Writes the tiles of output channel `co` (M rows at `m[pos * pos_stride]`, `cols` tiles) of tile
/// rows `ty0..ty0 + nty`, phase `(a, b)`.
#[allow(clippy::too_many_arguments)]
fn output_block(
    m: &[f32],
    pos_stride: usize,
    d: &Dest,
    g: &Geom,
    img: usize,
    co: usize,
    (ty0, nty): (usize, usize),
    (a, b): (usize, usize),
    tmp: &mut [f32],
) {
    let tw = g.tw;
    // tmp: the column transforms of the 6 rows (6 x 4 x tw), one output column of tiles (4 x tw),
    // and the 4 output rows being interleaved (4 x 4 tw)
    let (colt, rest) = tmp.split_at_mut(24 * tw);
    let (ycol, lines) = rest.split_at_mut(4 * tw);
    let lines = &mut lines[..16 * tw];
    let bias = d.bias.map_or(0.0, |b| b[co]);
    for r in 0..nty {
        for i in 0..6 {
            let src: [&[f32]; 6] = std::array::from_fn(|j| &m[(i * 6 + j) * pos_stride + r * tw..][..tw]);
            at(src, &mut colt[i * 4 * tw..][..4 * tw], tw);
        }
        for k in 0..4 {
            let src: [&[f32]; 6] = std::array::from_fn(|i| &colt[(i * 4 + k) * tw..][..tw]);
            at(src, ycol, tw);
            // ycol[l][tx] is output pixel (4 ty + l, 4 tx + k)
            for (line, y) in lines.chunks_exact_mut(4 * tw).zip(ycol.chunks_exact(tw)) {
                for (tx, &val) in y.iter().enumerate() {
                    line[4 * tx + k] = val;
                }
            }
        }
        for (l, line) in lines.chunks_exact(4 * tw).enumerate() {
            let y = 4 * (ty0 + r) + l;
            if y < g.h {
                write_row(d, g, img, co, d.s * y + a, b, bias, line);
            }
        }
    }
}

/// Output row `oy` of channel `co`: pixels `x < g.w` of `line` to columns `s x + b`.
#[allow(clippy::too_many_arguments)]
fn write_row(d: &Dest, g: &Geom, img: usize, co: usize, oy: usize, b: usize, bias: f32, line: &[f32]) {
    let base = img * d.img + co * d.plane + oy * d.ow;
    let src = &line[..g.w];
    // SAFETY: every (img, co, oy) row and phase column set is written by exactly one task; `base`
    // and the columns lie inside the output (checked by the callers' length asserts).
    unsafe {
        let o = d.out.get().add(base);
        if d.s == 1 {
            let row = std::slice::from_raw_parts_mut(o, g.w);
            match d.ep {
                Epilogue::Set => row.iter_mut().zip(src).for_each(|(o, &v)| *o = v + bias),
                Epilogue::Accumulate => row.iter_mut().zip(src).for_each(|(o, &v)| *o += v + bias),
                Epilogue::Residual(res) => {
                    let res = &res[base..][..g.w];
                    row.iter_mut()
                        .zip(src)
                        .zip(res)
                        .for_each(|((o, &v), &q)| *o = v + bias + q)
                }
            }
        } else {
            debug_assert!(matches!(d.ep, Epilogue::Set));
            for (x, &v) in src.iter().enumerate() {
                *o.add(d.s * x + b) = v + bias;
            }
        }
    }
}

/// Tiles per block: whole tile rows, about `TARGET_COLS` tiles (fewer rows for wide images).
const TARGET_COLS: usize = 64;

#[allow(clippy::too_many_arguments)]
fn run(x: &[f32], (n, h, w): (usize, usize, usize), u: &[f32], c_out: usize, c_in: usize, phases: usize, d: Dest) {
    let g = Geom {
        h,
        w,
        th: h.div_ceil(4),
        tw: w.div_ceil(4),
    };
    let target = env_usize("WINO_COLS").unwrap_or(TARGET_COLS);
    let rows_per_block = (target / g.tw).clamp(1, g.th);
    let blocks = g.th.div_ceil(rows_per_block);
    let cols = rows_per_block * g.tw;
    // split output channels only when blocks alone cannot feed the threads
    let want = 2 * rayon::current_num_threads();
    let co_parts = want.div_ceil(n * blocks).min(c_out.div_ceil(16)).max(1);
    let co_part = c_out.div_ceil(co_parts);
    let co_parts = c_out.div_ceil(co_part);
    let (v_len, m_len) = (POS * c_in * cols, POS * co_part * cols);
    let tmp_len = (12 * (4 * g.tw + 2) + 6 * (g.tw + 1) + 6 * g.tw).max(44 * g.tw);
    let mat_len = c_out * c_in;
    (0..n * blocks * co_parts).into_par_iter().for_each(|task| {
        let (img, rest) = (task / (blocks * co_parts), task % (blocks * co_parts));
        let (blk, part) = (rest / co_parts, rest % co_parts);
        let ty0 = blk * rows_per_block;
        let nty = rows_per_block.min(g.th - ty0);
        let ncols = nty * g.tw;
        let co0 = part * co_part;
        let rows = co_part.min(c_out - co0);
        let xi = &x[img * c_in * h * w..][..c_in * h * w];
        with_scratch(v_len + m_len + tmp_len, |buf| {
            let (v, rest) = buf.split_at_mut(v_len);
            let (m, tmp) = rest.split_at_mut(m_len);
            input_block(xi, &g, c_in, (ty0, nty), v, cols, tmp);
            for ph in 0..phases {
                for pos in 0..POS {
                    let a = &u[(ph * POS + pos) * mat_len + co0 * c_in..][..rows * c_in];
                    let b = &v[pos * c_in * cols..][..c_in * cols];
                    let dst = &mut m[pos * co_part * cols..][..rows * cols];
                    sgemm(
                        (rows, ncols, c_in),
                        dst,
                        cols,
                        false,
                        mat(a, c_in, 1),
                        mat(b, cols, 1),
                        1.0,
                        Parallelism::None,
                    );
                }
                for r in 0..rows {
                    output_block(
                        &m[r * cols..],
                        co_part * cols,
                        &d,
                        &g,
                        img,
                        co0 + r,
                        (ty0, nty),
                        (ph >> 1, ph & 1),
                        tmp,
                    );
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

/// 3x3 stride-1 pad-1 conv with `weights`. x: (n, c_in, h, w); out: (n, c_out, h, w).
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
    let u_len = weights_len(c_out, c_in, 1);
    if let Some(d) = Dest::conv(x, (n, h, w), (u, u_len), c_out, c_in, bias, ep, out) {
        run(x, (n, h, w), u, c_out, c_in, 1, d);
    }
}

/// Nearest x2 upsample then 3x3 pad-1 conv, with `upsample_weights`. x: (n, c_in, h, w);
/// out: (n, c_out, 2h, 2w).
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
    let u_len = weights_len(c_out, c_in, 4);
    if let Some(d) = Dest::upsample(x, (n, h, w), (u, u_len), (c_out, c_in), bias, out) {
        run(x, (n, h, w), u, c_out, c_in, 4, d);
    }
}
