//! bf16 matrix-vector products with AVX-512 BF16 (`vdpbf16ps`): 32 multiply-adds per instruction, products exact
//! in f32, accumulation in f32. In bf16 mode every activation that feeds a linear layer is already a bf16 value
//! (the reference's bf16 tensors), so converting x to bf16 loses nothing.
//!
//! Register blocking: up to 4 rows of x × 2 weight rows = 8 accumulators, so each 64-byte weight load feeds 4
//! instructions and each x load 2. Every (x row, weight row) pair has its own accumulator and the same k order
//! whatever the batch, so results do not depend on batch composition.
use super::team::Team;
use super::OutPtr;
use half::bf16;
use std::arch::x86_64::*;

/// y[M, N] = x[M, K] · Wᵀ with W `[N, K]` bf16. The caller's kernel family is `avx512bf16`. `xb` is the caller's reusable
/// buffer for x rounded to bf16 (so a decode step allocates nothing once warm).
#[allow(clippy::too_many_arguments)]
pub fn matvec(x: &[f32], m: usize, k: usize, w: &[bf16], n: usize, tile: usize, xb: &mut Vec<u16>, y: &mut [f32]) {
    xb.clear();
    xb.extend(x.iter().map(|&v| bf16::from_f32(v).to_bits()));
    let xb: &[u16] = xb;
    let out = OutPtr(y.as_mut_ptr());
    let wbits: &[u16] = bytemuck::cast_slice(w);
    Team::global().run(n.div_ceil(tile), &|t| {
        let out = out;
        let (n0, n1) = (t * tile, ((t + 1) * tile).min(n));
        // SAFETY: the caller's family is `avx512bf16`, which `KernelFamily::checked` verified on this CPU; indices stay inside x (m·k), w (n·k) and y (m·n), and
        // this task writes only columns n0..n1.
        unsafe { tile_rows(xb, m, k, wbits, n, n0, n1, out.0) };
    });
}

#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_rows(xb: &[u16], m: usize, k: usize, w: &[u16], n: usize, n0: usize, n1: usize, y: *mut f32) {
    let mut j = n0;
    while j < n1 {
        let c = (n1 - j).min(2);
        let mut r0 = 0;
        while r0 < m {
            let r = (m - r0).min(4);
            macro_rules! call {
                ($r:literal, $c:literal) => {
                    kernel::<$r, $c>(xb, r0, k, w, j, n, y)
                };
            }
            unsafe {
                match (r, c) {
                    (4, 2) => call!(4, 2),
                    (3, 2) => call!(3, 2),
                    (2, 2) => call!(2, 2),
                    (1, 2) => call!(1, 2),
                    (4, _) => call!(4, 1),
                    (3, _) => call!(3, 1),
                    (2, _) => call!(2, 1),
                    _ => call!(1, 1),
                }
            }
            r0 += r;
        }
        j += c;
    }
}

#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
#[inline]
unsafe fn load_bh(p: *const u16, mask: __mmask32) -> __m512bh {
    // SAFETY: the mask covers only elements inside the row.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_maskz_loadu_epi16(mask, p as *const i16)) }
}

/// R rows of x (from `r0`) × C weight rows (from `j`), full k.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
unsafe fn kernel<const R: usize, const C: usize>(
    xb: &[u16],
    r0: usize,
    k: usize,
    w: &[u16],
    j: usize,
    n: usize,
    y: *mut f32,
) {
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let xp = xb.as_ptr();
    let wp = w.as_ptr();
    let mut kk = 0;
    while kk < k {
        let left = k - kk;
        let mask: __mmask32 = if left >= 32 { u32::MAX } else { (1u32 << left) - 1 };
        let mut wv = [unsafe { load_bh(wp, 0) }; C];
        for (c, v) in wv.iter_mut().enumerate() {
            // 1 KiB ahead, as in the AVX2 kernel (where it bought 10 %; not measured on an AVX-512 BF16 CPU). A
            // prefetch past the end never faults.
            _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add((j + c) * k + kk + 512) as *const i8);
            *v = unsafe { load_bh(wp.add((j + c) * k + kk), mask) };
        }
        for (r, accr) in acc.iter_mut().enumerate() {
            let xv = unsafe { load_bh(xp.add((r0 + r) * k + kk), mask) };
            for c in 0..C {
                accr[c] = _mm512_dpbf16_ps(accr[c], xv, wv[c]);
            }
        }
        kk += 32;
    }
    for (r, accr) in acc.iter().enumerate() {
        for (c, a) in accr.iter().enumerate() {
            // SAFETY: r0 + r < m and j + c < n.
            unsafe { *y.add((r0 + r) * n + j + c) = _mm512_reduce_add_ps(*a) };
        }
    }
}
