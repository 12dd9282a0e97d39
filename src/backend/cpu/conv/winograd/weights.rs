//! The Winograd F(4x4, 3x3) filter transform `U = G g G^T` (in f64, rounded once to f32) and its packing, shared by
//! the AVX-512 `winograd` convolution (packed for `kernel::gemm`) and `winograd_gemm` (which reads the per-kernel
//! transforms through `filter_tile`, `torch_kernel` and `upsample_kernel`).
use super::super::kernel::{self, MR};
use super::super::{SendPtr, FOLD};
use super::POS;
use rayon::prelude::*;

/// 1-D filter transform `G g` in f64 (interpolation points 0, 1, -1, 1/2, -2 and infinity; row 3
/// scaled by 16 against row 3 of `B^T`).
fn g_1d(g: [f64; 3]) -> [f64; 6] {
    let [g0, g1, g2] = g;
    [
        g0 / 2.0,
        (g0 + g1 + g2) / 6.0,
        (g0 - g1 + g2) / 6.0,
        (16.0 * g0 + 8.0 * g1 + 4.0 * g2) / 15.0,
        (g0 - 2.0 * g1 + 4.0 * g2) / 30.0,
        g2 / 2.0,
    ]
}

/// `G g G^T` of one 3x3 kernel (row-major), position `i * 6 + j`.
pub(crate) fn filter_tile(g: &[f64; 9]) -> [f64; POS] {
    let rows: [[f64; 6]; 3] = std::array::from_fn(|r| g_1d([g[r * 3], g[r * 3 + 1], g[r * 3 + 2]]));
    let mut u = [0f64; POS];
    for j in 0..6 {
        let col = g_1d([rows[0][j], rows[1][j], rows[2][j]]);
        for i in 0..6 {
            u[i * 6 + j] = col[i];
        }
    }
    u
}

/// Packs per-(co, ci) 3x3 kernels (from `kern(phase, co, ci)`) as `[phase][pos][panels]`: one pass,
/// parallel over panels of output channels (each writes only its own panel of every position).
fn pack(c_out: usize, c_in: usize, phases: usize, kern: impl Fn(usize, usize, usize) -> [f64; 9] + Sync) -> Vec<f32> {
    let len = kernel::packed_len(c_out, c_in);
    let mut out = vec![0f32; phases * POS * len];
    let optr = SendPtr(out.as_mut_ptr());
    (0..phases * c_out.div_ceil(MR)).into_par_iter().for_each(|task| {
        let (ph, p) = (task / c_out.div_ceil(MR), task % c_out.div_ceil(MR));
        for r in 0..MR.min(c_out - p * MR) {
            for ci in 0..c_in {
                let u = filter_tile(&kern(ph, p * MR + r, ci));
                for (pos, &v) in u.iter().enumerate() {
                    let i = (ph * POS + pos) * len + (p * c_in + ci) * MR + r;
                    // SAFETY: i < phases * POS * len, and panel p of every position belongs to
                    // this task alone.
                    unsafe { *optr.get().add(i) = v as f32 };
                }
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

/// Kernel `(co, ci)` of a torch `(c_out, c_in, 3, 3)` weight, in f64.
pub(crate) fn torch_kernel(w: &[f32], c_in: usize, co: usize, ci: usize) -> [f64; 9] {
    std::array::from_fn(|t| w[(co * c_in + ci) * 9 + t] as f64)
}

/// Transformed weights of the 3x3 conv `(c, c, 3, 3)` after a nearest x2 upsample, for `upsample_conv3x3`:
/// phase `(a, b)` is the 3x3 kernel whose tap `(a + dy, b + dx)` is the sum of the original taps that
/// output phase reads through input pixel `(dy, dx)` of its 2x2 window.
pub fn upsample_weights(w: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    assert_eq!(w.len(), c_out * c_in * 9, "winograd upsample weights: length");
    pack(c_out, c_in, 4, |ph, co, ci| upsample_kernel(w, c_in, ph, co, ci))
}

/// Kernel `(co, ci)` of upsample phase `ph = 2a + b` (see `upsample_weights`), in f64.
pub(crate) fn upsample_kernel(w: &[f32], c_in: usize, ph: usize, co: usize, ci: usize) -> [f64; 9] {
    let (a, b) = (ph >> 1, ph & 1);
    let wk = &w[(co * c_in + ci) * 9..][..9];
    let mut k = [0f64; 9];
    for dy in 0..2 {
        for dx in 0..2 {
            k[(a + dy) * 3 + b + dx] = FOLD[a][dy]
                .iter()
                .flat_map(|&ky| FOLD[b][dx].iter().map(move |&kx| wk[ky * 3 + kx] as f64))
                .sum();
        }
    }
    k
}

/// Length of `weights` / `upsample_weights` output.
pub fn weights_len(c_out: usize, c_in: usize, phases: usize) -> usize {
    phases * POS * kernel::packed_len(c_out, c_in)
}
