//! Matrix-vector products with AVX2 + FMA, for CPUs without AVX-512 BF16 (and for f32 weights on every x86-64-v3
//! CPU): bf16 weights are widened in registers (a 16-bit shift, exact), never in memory.
//!
//! A decode step is bound by one pass over the weights (GPT-B in bf16: 222 MB per step, ~5.8 ms at the 38 GB/s this
//! 2-core box reads). The portable loop it replaces kept 16 f32 partial sums with separate multiplies and adds
//! (two dependent add chains per row), compute bound at ~12 ms per step. Here each 16-wide slice of a weight row is
//! loaded once and fed as two 8-lane FMAs into each of up to 4 x rows (8 independent accumulators), so the loop
//! issues ~1 FMA per load and runs at the memory floor.
//!
//! Every (x row, weight row) pair has its own two accumulators, walked in the same k order whatever the number of
//! rows, and reduced in a fixed order: a row's result never depends on the batch (the same seed gives the same image
//! at any batch size).
use half::bf16;
use std::arch::x86_64::*;

pub fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// A weight element type the kernel can widen 8 at a time.
pub trait Lanes: Copy {
    /// # Safety
    /// `p..p+8` must be readable; AVX2 must be present.
    unsafe fn load8(p: *const Self) -> __m256;
    fn widen(self) -> f32;
}

impl Lanes for f32 {
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl Lanes for bf16 {
    #[inline(always)]
    unsafe fn load8(p: *const bf16) -> __m256 {
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }
    #[inline(always)]
    fn widen(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
}

/// Up to this many x rows share each weight load.
const ROWS: usize = 4;

#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// `y[r·n + j] = x[r] · w[j]` for rows `r < m` and weight rows `j` in `n0..n1` (w `[n, k]`, x `[m, k]`).
///
/// # Safety
/// AVX2 and FMA must be present; x holds m·k, w n·k and y m·n elements; no other thread writes columns n0..n1.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile_rows<W: Lanes>(x: &[f32], m: usize, k: usize, w: &[W], n: usize, n0: usize, n1: usize, y: *mut f32) {
    for j in n0..n1 {
        let wr = w.as_ptr().add(j * k);
        let mut r0 = 0;
        while r0 < m {
            let xr = x.as_ptr().add(r0 * k);
            let yr = y.add(r0 * n + j);
            match m - r0 {
                1 => rows::<W, 1>(xr, wr, k, yr, n),
                2 => rows::<W, 2>(xr, wr, k, yr, n),
                3 => rows::<W, 3>(xr, wr, k, yr, n),
                _ => rows::<W, ROWS>(xr, wr, k, yr, n),
            }
            r0 += ROWS;
        }
    }
}

/// R x rows (at `x`, stride k) against one weight row: 2·R accumulators in registers (R is a constant, so the
/// arrays below are registers, not memory).
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn rows<W: Lanes, const R: usize>(x: *const f32, w: *const W, k: usize, y: *mut f32, n: usize) {
    let body = k - k % 16;
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    let mut kk = 0;
    while kk < body {
        let w0 = W::load8(w.add(kk));
        let w1 = W::load8(w.add(kk + 8));
        for (i, a) in acc.iter_mut().enumerate() {
            let xi = x.add(i * k + kk);
            a[0] = _mm256_fmadd_ps(_mm256_loadu_ps(xi), w0, a[0]);
            a[1] = _mm256_fmadd_ps(_mm256_loadu_ps(xi.add(8)), w1, a[1]);
        }
        kk += 16;
    }
    for (i, a) in acc.iter().enumerate() {
        let mut s = hsum(_mm256_add_ps(a[0], a[1]));
        for t in body..k {
            s += *x.add(i * k + t) * (*w.add(t)).widen();
        }
        *y.add(i * n) = s;
    }
}
