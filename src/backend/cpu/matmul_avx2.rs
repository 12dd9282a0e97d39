//! Matrix-vector products with AVX2 + FMA, for CPUs without AVX-512 BF16 (and for f32 weights on every x86-64-v3
//! CPU): bf16 weights are widened in registers (a 16-bit shift or mask, exact), never in memory.
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
use super::simd::hsum;
use half::bf16;
use std::arch::x86_64::*;

/// A weight element type the kernel can widen 16 at a time.
pub trait Lanes: Copy {
    /// Whether x must be laid out by `deinterleave` first (the order `load16` returns weights in).
    const DEINTERLEAVED: bool;
    /// Elements per 1 KiB: how far ahead the weight stream is prefetched (measured on the AVX2 box, GPT-B's 49
    /// bf16 products of a decode step, 2 threads, best of 40 interleaved: no prefetch 8.1-8.3 ms, 256 elements
    /// ahead 8.2-8.4, 512 (1 KiB) 7.3-7.5, 1024 7.9-8.2; a plain streaming sum of the same bytes 6.5-6.9).
    const PREFETCH: usize;
    /// Weights `p..p+16` as two vectors of 8 lanes, in the order x must have.
    ///
    /// # Safety
    /// `p..p+16` must be readable; AVX2 must be present.
    unsafe fn load16(p: *const Self) -> (__m256, __m256);
    fn widen(self) -> f32;
}

impl Lanes for f32 {
    const DEINTERLEAVED: bool = false;
    const PREFETCH: usize = 256;
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> (__m256, __m256) {
        (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
    }
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl Lanes for bf16 {
    const DEINTERLEAVED: bool = true;
    const PREFETCH: usize = 512;
    /// One 32-byte load widened by two instructions: a bf16 is the high half of its f32, so masking the low half of
    /// each 32-bit lane gives the odd elements and shifting it up gives the even ones (exact, like any widening).
    #[inline(always)]
    unsafe fn load16(p: *const bf16) -> (__m256, __m256) {
        let v = _mm256_loadu_si256(p as *const __m256i);
        let even = _mm256_slli_epi32::<16>(v);
        let odd = _mm256_and_si256(v, _mm256_set1_epi32(0xffff_0000u32 as i32));
        (_mm256_castsi256_ps(even), _mm256_castsi256_ps(odd))
    }
    #[inline(always)]
    fn widen(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
}

/// x rows of length k in the order `Lanes::load16` of bf16 returns weights: each full block of 16 as its 8 even
/// then its 8 odd elements (the tail of k % 16 as it is). `out` is reused, so a decode step allocates nothing.
pub fn deinterleave(x: &[f32], k: usize, out: &mut Vec<f32>) {
    out.clear();
    out.extend_from_slice(x);
    for (src, dst) in x.chunks(k.max(1)).zip(out.chunks_mut(k.max(1))) {
        for (s, d) in src.chunks_exact(16).zip(dst.chunks_exact_mut(16)) {
            for i in 0..8 {
                d[i] = s[2 * i];
                d[8 + i] = s[2 * i + 1];
            }
        }
    }
}

/// Up to this many x rows share each weight load.
const ROWS: usize = 4;

/// `y[r·n + j] = x[r] · w[j]` for rows `r < m` and weight rows `j` in `n0..n1` (w `[n, k]`, x `[m, k]`, laid out by
/// `deinterleave` when `W::DEINTERLEAVED`).
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
/// arrays below are registers, not memory). The prefetch runs ahead of the hardware prefetcher, which alone keeps
/// too few lines in flight per core to reach the memory's bandwidth.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn rows<W: Lanes, const R: usize>(x: *const f32, w: *const W, k: usize, y: *mut f32, n: usize) {
    let body = k - k % 16;
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    let mut kk = 0;
    while kk < body {
        // A prefetch past the end of w is harmless (it never faults).
        _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(kk + W::PREFETCH) as *const i8);
        let (w0, w1) = W::load16(w.add(kk));
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
