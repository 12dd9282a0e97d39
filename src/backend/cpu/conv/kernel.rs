//! The f32 GEMM microkernel behind the convolutions (AVX-512F, runtime-detected).
//!
//! `C[m x n] (+)= sum over segments s of A_s[m x k] * B_s[k x n]`: A is a weight matrix packed once
//! at load into panels of `MR` rows (`[panel][k][MR]`, rows past `m` zero), B an activation matrix
//! read in place (rows at stride `ldb`, columns contiguous), C row-major. A direct conv passes one
//! segment per tap (the taps' B differ only by an offset), so the accumulators stay in registers
//! over all `taps * c_in` products. Each micro-tile is `MR` rows by up to `NV` 16-float vectors:
//! per k, `NV` vector loads of B and `MR` broadcasts of A feed `MR * NV` FMAs.
use std::arch::x86_64::*;
use std::sync::OnceLock;

/// Rows of A per panel (output channels per micro-tile).
pub const MR: usize = 8;
/// Vectors of 16 columns per micro-tile.
pub const NV: usize = 3;
/// Columns per micro-tile.
pub const NR: usize = 16 * NV;

/// How far ahead (in floats of A) the one-vector kernel prefetches.
const A_PREFETCH: usize = 384;

/// Whether the CPU has AVX-512F (the backend's `KernelFamily` decides whether the kernel is used).
pub fn available() -> bool {
    static AVAIL: OnceLock<bool> = OnceLock::new();
    *AVAIL.get_or_init(|| is_x86_feature_detected!("avx512f"))
}

/// Packed length of an `m x k` matrix.
pub fn packed_len(m: usize, k: usize) -> usize {
    m.div_ceil(MR) * MR * k
}

/// Packs `a(i, j)` for i < m, j < k into panels `[i / MR][j][i % MR]` (rows past m zero).
pub fn pack_a(m: usize, k: usize, a: impl Fn(usize, usize) -> f32, dst: &mut [f32]) {
    assert_eq!(dst.len(), packed_len(m, k), "pack_a: length");
    for (p, panel) in dst.chunks_exact_mut(MR * k).enumerate() {
        for (j, col) in panel.chunks_exact_mut(MR).enumerate() {
            for (r, d) in col.iter_mut().enumerate() {
                let i = p * MR + r;
                *d = if i < m { a(i, j) } else { 0.0 };
            }
        }
    }
}

/// One product term: a packed A (all panels) and the top-left element of its B.
#[derive(Clone, Copy)]
pub struct Seg {
    pub a: *const f32,
    pub b: *const f32,
}

/// Whether C is overwritten or added to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Set,
    Add,
}

/// `C (+)= sum_s A_s * B_s` for `m` rows (`m.div_ceil(MR)` panels of each A) and `n` columns. The
/// products are summed in registers in runs of `kc` (counted over all segments) and each run is added
/// to C: blocked summation, whose rounding error grows like sqrt(kc) + sqrt(k / kc) rather than
/// sqrt(k) (pass `usize::MAX` for one run).
///
/// # Safety
/// AVX-512F must be available; every A holds `m.div_ceil(MR)` panels of `k` rows; every B is
/// readable for rows `0..k` (stride `ldb`) and columns `0..n`; C is writable for rows `0..m`
/// (stride `ldc`) and columns `0..n`, and no other thread touches that region.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(
    m: usize,
    n: usize,
    k: usize,
    segs: &[Seg],
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    mode: Mode,
    kc: usize,
) {
    let panels = m.div_ceil(MR);
    let kc = kc.max(1);
    let mut j = 0;
    while j < n {
        let cols = (n - j).min(NR);
        for p in 0..panels {
            let rows = (m - p * MR).min(MR);
            let cp = unsafe { c.add(p * MR * ldc + j) };
            let t = Tile {
                k,
                off_a: p * MR * k,
                off_b: j,
                ldb,
                c: cp,
                ldc,
                rows,
                cols,
                mode,
                kc,
            };
            unsafe {
                match cols.div_ceil(16) {
                    3 => micro::<3>(segs, &t),
                    2 => micro::<2>(segs, &t),
                    _ => micro::<1>(segs, &t),
                }
            }
        }
        j += cols;
    }
}

struct Tile {
    k: usize,
    off_a: usize,
    off_b: usize,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    mode: Mode,
    kc: usize,
}

/// Mask of the first `n` lanes (n <= 16).
#[inline(always)]
fn lanes(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn micro<const V: usize>(segs: &[Seg], t: &Tile) {
    let last = lanes(t.cols - 16 * (V - 1));
    let mut acc = [[_mm512_setzero_ps(); V]; MR];
    let (mut set, mut steps) = (t.mode == Mode::Set, 0);
    for s in segs {
        let (mut ap, mut bp) = unsafe { (s.a.add(t.off_a), s.b.add(t.off_b)) };
        let mut kk = 0;
        while kk < t.k {
            let len = (t.k - kk).min(t.kc - steps);
            for _ in 0..len {
                if V == 1 {
                    // one vector of B per 8 FMAs: A (the weights) streams faster than the
                    // hardware prefetcher fetches it (Winograd weights of a 512-channel conv at
                    // 16x16 are 38 MB, each float used for 16 tiles only)
                    _mm_prefetch::<_MM_HINT_T0>(ap.wrapping_add(A_PREFETCH) as *const i8);
                }
                let mut bv = [_mm512_setzero_ps(); V];
                for (v, b) in bv.iter_mut().enumerate() {
                    // SAFETY (all loads): inside the caller's A and B; the last vector is masked to
                    // the valid columns.
                    *b = unsafe {
                        if v + 1 < V {
                            _mm512_loadu_ps(bp.add(16 * v))
                        } else {
                            _mm512_maskz_loadu_ps(last, bp.add(16 * v))
                        }
                    };
                }
                for (r, accr) in acc.iter_mut().enumerate() {
                    let a = _mm512_set1_ps(unsafe { *ap.add(r) });
                    for v in 0..V {
                        accr[v] = _mm512_fmadd_ps(a, bv[v], accr[v]);
                    }
                }
                ap = unsafe { ap.add(MR) };
                bp = unsafe { bp.add(t.ldb) };
            }
            kk += len;
            steps += len;
            if steps == t.kc {
                unsafe { flush(&mut acc, t, last, set) };
                (set, steps) = (false, 0);
            }
        }
    }
    if steps > 0 || set {
        unsafe { flush(&mut acc, t, last, set) };
    }
}

/// C = acc (set) or C += acc, then acc = 0.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn flush<const V: usize>(acc: &mut [[__m512; V]; MR], t: &Tile, last: __mmask16, set: bool) {
    for (r, accr) in acc.iter_mut().enumerate().take(t.rows) {
        let cr = unsafe { t.c.add(r * t.ldc) };
        for (v, a) in accr.iter_mut().enumerate() {
            let mask = if v + 1 < V { 0xffff } else { last };
            // SAFETY: row r < rows and the masked columns lie inside the caller's C.
            unsafe {
                let p = cr.add(16 * v);
                let val = if set {
                    *a
                } else {
                    _mm512_add_ps(*a, _mm512_maskz_loadu_ps(mask, p))
                };
                _mm512_mask_storeu_ps(p, mask, val);
            }
            *a = _mm512_setzero_ps();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testutil::rand_vec;

    #[test]
    #[cfg_attr(not(llamagen_cpu_avx512), ignore = "this CPU lacks AVX-512F + BW")]
    fn gemm_matches_naive() {
        for &(m, n, k, nseg, kc) in &[
            (1, 1, 1, 1, 1),
            (8, 48, 5, 1, 2),
            (13, 70, 9, 3, 4),
            (3, 17, 33, 2, 7),
            (24, 100, 16, 1, 99),
        ] {
            let ldb = n + 3;
            let a: Vec<Vec<f32>> = (0..nseg).map(|s| rand_vec(m * k, s as u64)).collect();
            let b = rand_vec(k * ldb + 8 * nseg, 99);
            let packed: Vec<Vec<f32>> = a
                .iter()
                .map(|a| {
                    let mut p = vec![0.0; packed_len(m, k)];
                    pack_a(m, k, |i, j| a[i * k + j], &mut p);
                    p
                })
                .collect();
            let segs: Vec<Seg> = (0..nseg)
                .map(|s| Seg {
                    a: packed[s].as_ptr(),
                    b: b[s * 8..].as_ptr(),
                })
                .collect();
            let ldc = n + 1;
            let mut c = rand_vec(m * ldc, 7);
            let c0 = c.clone();
            unsafe { gemm(m, n, k, &segs, ldb, c.as_mut_ptr(), ldc, Mode::Add, kc) };
            for i in 0..m {
                for j in 0..n {
                    let mut want = c0[i * ldc + j] as f64;
                    for s in 0..nseg {
                        for l in 0..k {
                            want += a[s][i * k + l] as f64 * b[s * 8 + l * ldb + j] as f64;
                        }
                    }
                    assert!((c[i * ldc + j] as f64 - want).abs() < 1e-4, "{m} {n} {k}: ({i}, {j})");
                }
                // the padding column is untouched
                if i * ldc + n < c.len() {
                    assert_eq!(c[i * ldc + n], c0[i * ldc + n]);
                }
            }
        }
    }
}
