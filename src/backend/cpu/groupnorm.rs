//! GroupNorm, optionally fused with swish, over NCHW f32: `torch.nn.GroupNorm` then `x * sigmoid(x)`.
//!
//! Statistics are one pass with f64 accumulators over `d = x - p`, p the group's first value:
//! var = E[d^2] - E[d]^2 only cancels by the factor (std^2 + (mean - p)^2) / std^2, a few digits of
//! f64's 16 even for outlying pivots (a single-pass f32 E[x^2] - E[x]^2 instead loses the variance
//! whenever |mean| >> std; one group of the 256x256 decoder stage holds 4 * 65536 values).
//! The normalisation (and swish) runs 16 lanes wide with AVX-512 where the CPU has it.
//!
//! 128 channels x 256x256 on the 2-core dev box (x86-64-v3 build, AVX-512 at run time), under a
//! load of ~3.5 from other jobs: 3.9 ms, 5.6 ms with swish (were 5.7 and 10.8 two-pass, AVX2);
//! `cargo test --release --lib groupnorm::tests::bench -- --ignored --nocapture`.
use super::KernelFamily;
use rayon::prelude::*;

/// `(sum d, sum d^2)` over `d = x - p` in f64, with independent accumulators so the adds pipeline
/// (and vectorise).
fn shifted_sums(v: &[f32], p: f64, avx512: bool) -> (f64, f64) {
    if avx512 {
        // SAFETY: AVX-512F is present.
        return unsafe { shifted_sums_avx512(v, p) };
    }
    // two passes here: measured faster than one with AVX2 (the compiler vectorises these)
    let s1 = sum_f64(v, |x| x as f64 - p);
    let m = s1 / v.len().max(1) as f64;
    let s2 = sum_f64(v, |x| (x as f64 - p - m) * (x as f64 - p - m));
    // E[d^2] = var + m^2 of the shifted data
    (s1, s2 + m * m * v.len() as f64)
}

/// Sum of a slice in f64, with independent accumulators so the adds pipeline (and vectorise).
fn sum_f64(v: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = v.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&x| f(x)).sum();
    for ch in chunks {
        for (a, &x) in acc.iter_mut().zip(ch) {
            *a += f(x);
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// `shifted_sums` with 8-lane f64 vectors, four chains per sum.
#[target_feature(enable = "avx512f")]
unsafe fn shifted_sums_avx512(v: &[f32], p: f64) -> (f64, f64) {
    use std::arch::x86_64::*;
    let vp = _mm512_set1_pd(p);
    let (mut s1, mut s2) = ([_mm512_setzero_pd(); 4], [_mm512_setzero_pd(); 4]);
    let chunks = v.chunks_exact(32);
    let tail = chunks.remainder();
    for ch in chunks {
        for j in 0..4 {
            // SAFETY: 8 floats at 8 j inside this 32-float chunk.
            let x = unsafe { _mm256_loadu_ps(ch.as_ptr().add(8 * j)) };
            let d = _mm512_sub_pd(_mm512_cvtps_pd(x), vp);
            s1[j] = _mm512_add_pd(s1[j], d);
            s2[j] = _mm512_fmadd_pd(d, d, s2[j]);
        }
    }
    let (mut t1, mut t2) = (0f64, 0f64);
    for &x in tail {
        let d = x as f64 - p;
        t1 += d;
        t2 += d * d;
    }
    let sum =
        |a: [__m512d; 4]| _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(a[0], a[1]), _mm512_add_pd(a[2], a[3])));
    (sum(s1) + t1, sum(s2) + t2)
}

/// Per (sample, group): mean split into f32 high and low parts, and 1 / sqrt(var + eps) with
/// torch's biased var. The low part matters when |mean| >> std: an f32 mean alone is off by up to
/// |mean| * 6e-8, a visible shift then.
fn group_stats(x: &[f32], group_len: usize, eps: f32, avx512: bool) -> Vec<(f32, f32, f32)> {
    x.par_chunks(group_len.max(1))
        .map(|g| {
            let len = g.len() as f64;
            let p = g[0] as f64;
            let (s1, s2) = shifted_sums(g, p, avx512);
            let (m1, m2) = (s1 / len, s2 / len);
            let mean = p + m1;
            let var = (m2 - m1 * m1).max(0.0);
            let hi = mean as f32;
            (hi, (mean - hi as f64) as f32, (1.0 / (var + eps as f64).sqrt()) as f32)
        })
        .collect()
}

/// e^x for f32 within ~2 ulp, branch-free so that loops over it vectorise (libm's expf does not,
/// and swish over a 128x256x256 activation was 4x slower than the normalisation itself with it).
/// Range reduction x = k ln2 + r, |r| <= ln2 / 2, with ln2 split in two so k ln2 is exact enough;
/// e^r by a degree-7 polynomial (Cephes-style minimax coefficients); 2^k assembled in the exponent
/// bits. Inputs are clamped to the finite range, so large x gives ~3.4e38 instead of inf and very
/// negative x gives ~1e-38 instead of 0.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    // 1.5 * 2^23: adding it rounds to an integer, kept in the low mantissa bits
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let k = t - ROUND;
    let r = x - k * 0.693_359_4 - k * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // t's low mantissa bits hold k (two's complement); (k + 127) in the exponent field is 2^k
    let scale = f32::from_bits((t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127)) << 23);
    er * scale
}

/// `y * sigmoid(y)`, as a division so that a huge e^-y yields ~0 rather than NaN.
#[inline(always)]
pub fn swish(y: f32) -> f32 {
    y / (1.0 + fast_exp(-y))
}

/// torch `GroupNorm(groups, c, eps, affine=True)` on x: (n, c, hw), then swish when `silu`.
/// Mean and biased variance are taken per sample and group over (c / groups) * hw values;
/// y = (x - mean) / sqrt(var + eps) * gamma + beta.
#[allow(clippy::too_many_arguments)]
pub fn groupnorm(
    x: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    groups: usize,
    eps: f32,
    gamma: &[f32],
    beta: &[f32],
    silu: bool,
    kernels: KernelFamily,
    out: &mut [f32],
) {
    assert_eq!(out.len(), x.len(), "groupnorm: output length");
    normalize(Some(x), n, c, hw, groups, eps, gamma, beta, silu, kernels, out);
}

/// [`groupnorm`] overwriting its input (`groupnorm_conv`'s scratch takes the bytes of an input that dies there): the
/// same values bit for bit.
#[allow(clippy::too_many_arguments)]
pub fn groupnorm_in_place(
    x: &mut [f32],
    n: usize,
    c: usize,
    hw: usize,
    groups: usize,
    eps: f32,
    gamma: &[f32],
    beta: &[f32],
    silu: bool,
    kernels: KernelFamily,
) {
    normalize(None, n, c, hw, groups, eps, gamma, beta, silu, kernels, x);
}

/// GroupNorm of `x`, or of `out` itself when `x` is `None`, into `out`.
#[allow(clippy::too_many_arguments)]
fn normalize(
    x: Option<&[f32]>,
    n: usize,
    c: usize,
    hw: usize,
    groups: usize,
    eps: f32,
    gamma: &[f32],
    beta: &[f32],
    silu: bool,
    kernels: KernelFamily,
    out: &mut [f32],
) {
    assert!(
        groups > 0 && c.is_multiple_of(groups),
        "groupnorm: {c} channels not divisible into {groups} groups"
    );
    assert_eq!(out.len(), n * c * hw, "groupnorm: input length");
    assert!(
        gamma.len() == c && beta.len() == c,
        "groupnorm: affine parameter length"
    );
    if out.is_empty() {
        return;
    }
    let _t = super::conv::Trace::new(format!("groupnorm {c} {hw} silu {silu}"));
    let cg = c / groups;
    let avx512 = kernels >= KernelFamily::Avx512;
    let stats = group_stats(x.unwrap_or(out), cg * hw, eps, avx512);
    out.par_chunks_mut(hw).enumerate().for_each(|(plane, o)| {
        let xs = x.map(|x| &x[plane * hw..][..o.len()]);
        let ch = plane % c;
        let (hi, lo, rstd) = stats[(plane / c) * groups + ch / cg];
        let scale = rstd * gamma[ch];
        let b = beta[ch];
        // centre first (v - hi is exact near the mean): folding the mean into the shift would
        // cancel when |mean| >> std
        if avx512 {
            // SAFETY: AVX-512F is present; xs (if any) has o's length.
            unsafe { normalize_avx512(xs, o, [hi, lo, scale, b], silu) };
        } else if kernels >= KernelFamily::Avx2 {
            // SAFETY: the family includes AVX2 + FMA, checked against the CPU by the backend.
            unsafe { normalize_avx2(xs, o, [hi, lo, scale, b], silu) };
        } else {
            let f = |v: f32| {
                let y = ((v - hi) - lo) * scale + b;
                if silu {
                    swish(y)
                } else {
                    y
                }
            };
            match xs {
                Some(xs) => o.iter_mut().zip(xs).for_each(|(o, &v)| *o = f(v)),
                None => o.iter_mut().for_each(|o| *o = f(*o)),
            }
        }
    });
}

/// `o = ((x - hi) - lo) * scale + b`, then swish when `silu` (through `simd::exp8`): the scalar expressions above,
/// 8 lanes at a time (the same operations; no fused multiply-add, so the affine part rounds as they do).
#[target_feature(enable = "avx2,fma")]
unsafe fn normalize_avx2(xs: Option<&[f32]>, o: &mut [f32], [hi, lo, scale, b]: [f32; 4], silu: bool) {
    use std::arch::x86_64::*;
    let (vhi, vlo, vs, vb, one) = (
        _mm256_set1_ps(hi),
        _mm256_set1_ps(lo),
        _mm256_set1_ps(scale),
        _mm256_set1_ps(b),
        _mm256_set1_ps(1.0),
    );
    // reads from xs, or from o itself (in place: every element is read before it is written, by the same lane)
    let n = xs.map_or(o.len(), |x| x.len().min(o.len()));
    let po = o.as_mut_ptr();
    let ps = xs.map_or(po as *const f32, |x| x.as_ptr());
    let body = n - n % 8;
    let mut i = 0;
    while i < body {
        // SAFETY: i + 8 <= n, inside both slices.
        let v = unsafe { _mm256_loadu_ps(ps.add(i)) };
        let y = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_sub_ps(v, vhi), vlo), vs), vb);
        let y = if silu {
            let e = super::simd::exp8(_mm256_sub_ps(_mm256_setzero_ps(), y));
            _mm256_div_ps(y, _mm256_add_ps(one, e))
        } else {
            y
        };
        // SAFETY: as above.
        unsafe { _mm256_storeu_ps(po.add(i), y) };
        i += 8;
    }
    for i in body..n {
        // SAFETY: i < n, inside both slices.
        let y = ((unsafe { *ps.add(i) } - hi) - lo) * scale + b;
        unsafe { *po.add(i) = if silu { swish(y) } else { y } };
    }
}

/// `o = ((x - hi) - lo) * scale + b`, then swish when `silu`: the scalar expressions above, 16 lanes
/// at a time (same operations, same rounding).
#[target_feature(enable = "avx512f")]
unsafe fn normalize_avx512(xs: Option<&[f32]>, o: &mut [f32], [hi, lo, scale, b]: [f32; 4], silu: bool) {
    use std::arch::x86_64::*;
    let (vhi, vlo, vs, vb) = (
        _mm512_set1_ps(hi),
        _mm512_set1_ps(lo),
        _mm512_set1_ps(scale),
        _mm512_set1_ps(b),
    );
    let one = _mm512_set1_ps(1.0);
    let exp = |x: __m512| {
        const ROUND: f32 = 12_582_912.0;
        let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0)), _mm512_set1_ps(88.0));
        let t = _mm512_add_ps(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
            _mm512_set1_ps(ROUND),
        );
        let k = _mm512_sub_ps(t, _mm512_set1_ps(ROUND));
        let r = _mm512_sub_ps(x, _mm512_mul_ps(k, _mm512_set1_ps(0.693_359_4)));
        let r = _mm512_sub_ps(r, _mm512_mul_ps(k, _mm512_set1_ps(-2.121_944_4e-4)));
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
            p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(c));
        }
        let er = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(p, r), r), r), one);
        let bits = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(ROUND.to_bits() as i32));
        let sc = _mm512_slli_epi32::<23>(_mm512_add_epi32(bits, _mm512_set1_epi32(127)));
        _mm512_mul_ps(er, _mm512_castsi512_ps(sc))
    };
    // reads from xs, or from o itself (in place, as in normalize_avx2)
    let n = xs.map_or(o.len(), |x| x.len().min(o.len()));
    let po = o.as_mut_ptr();
    let ps = xs.map_or(po as *const f32, |x| x.as_ptr());
    let mut i = 0;
    while i < n {
        let m: __mmask16 = if n - i >= 16 {
            0xffff
        } else {
            ((1u32 << (n - i)) - 1) as __mmask16
        };
        // SAFETY: the masked lanes are inside both slices.
        let v = unsafe { _mm512_maskz_loadu_ps(m, ps.add(i)) };
        let y = _mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_sub_ps(v, vhi), vlo), vs), vb);
        let y = if silu {
            let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), y));
            _mm512_div_ps(y, _mm512_add_ps(one, e))
        } else {
            y
        };
        // SAFETY: as above.
        unsafe { _mm512_mask_storeu_ps(po.add(i), m, y) };
        i += 16;
    }
}

impl crate::ops::Exec<crate::ops::groupnorm::Groupnorm> for super::CpuBackend {
    fn exec(&mut self, op: &crate::ops::groupnorm::Groupnorm, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        let v = self.views(a)?;
        let (g, b) = (
            self.weight_f32(op.gamma, "groupnorm")?,
            self.weight_f32(op.beta, "groupnorm")?,
        );
        let (x, y) = (v.f32(a.ins[0]), v.f32_mut(a.out));
        groupnorm(x, op.n, op.c, op.hw, op.groups, op.eps, g, b, op.silu, self.kernels, y);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testutil::{rand_vec, rel_l2};

    /// Direct f64 evaluation of the torch definition.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        x: &[f32],
        n: usize,
        c: usize,
        hw: usize,
        groups: usize,
        eps: f32,
        g: &[f32],
        b: &[f32],
        silu: bool,
    ) -> Vec<f64> {
        let cg = c / groups;
        let mut out = vec![0f64; x.len()];
        for s in 0..n {
            for gr in 0..groups {
                let idx = |i: usize| s * c * hw + gr * cg * hw + i;
                let len = (cg * hw) as f64;
                let mean = (0..cg * hw).map(|i| x[idx(i)] as f64).sum::<f64>() / len;
                let sq = |i: usize| (x[idx(i)] as f64 - mean).powi(2);
                let var = (0..cg * hw).map(sq).sum::<f64>() / len;
                for i in 0..cg * hw {
                    let ch = gr * cg + i / hw;
                    let norm = (x[idx(i)] as f64 - mean) / (var + eps as f64).sqrt();
                    let y = norm * g[ch] as f64 + b[ch] as f64;
                    out[idx(i)] = if silu { y / (1.0 + (-y).exp()) } else { y };
                }
            }
        }
        out
    }

    #[test]
    fn matches_naive() {
        let shapes: &[(usize, usize, usize, usize)] = &[
            // (n, c, hw, groups)
            (1, 1, 1, 1),
            (1, 3, 15, 1),
            (1, 3, 15, 3),
            (3, 5, 60, 5),
            (1, 33, 49, 11),
            (3, 33, 7, 3),
            (2, 64, 30, 32),
            (1, 128, 64, 32),
        ];
        for (i, &(n, c, hw, groups)) in shapes.iter().enumerate() {
            let x = rand_vec(n * c * hw, i as u64);
            let x: Vec<f32> = x.iter().map(|v| 3.0 * v + 0.5).collect();
            let (g, b) = (rand_vec(c, 50 + i as u64), rand_vec(c, 100 + i as u64));
            for silu in [false, true] {
                let want = naive(&x, n, c, hw, groups, 1e-6, &g, &b, silu);
                for family in KernelFamily::all_supported() {
                    let mut out = vec![f32::NAN; x.len()];
                    groupnorm(&x, n, c, hw, groups, 1e-6, &g, &b, silu, family, &mut out);
                    let e = rel_l2(&out, &want);
                    assert!(
                        e < 1e-6,
                        "{family} groupnorm n{n} c{c} hw{hw} g{groups} silu {silu}: rel {e}"
                    );
                    // in place: the same values bit for bit
                    let mut buf = x.clone();
                    groupnorm_in_place(&mut buf, n, c, hw, groups, 1e-6, &g, &b, silu, family);
                    assert!(
                        buf.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{family} in place n{n} c{c} hw{hw} g{groups} silu {silu}"
                    );
                }
            }
        }
    }

    #[test]
    fn constant_group_and_eps() {
        // zero variance: the result is beta (then swish), and eps keeps it finite
        let x = vec![2.5f32; 2 * 4 * 3];
        let (g, b) = (vec![1.5; 4], vec![0.25, -1.0, 0.0, 3.0]);
        let mut out = vec![0.0; x.len()];
        for family in KernelFamily::all_supported() {
            groupnorm(&x, 2, 4, 3, 2, 1e-6, &g, &b, false, family, &mut out);
            for (i, &o) in out.iter().enumerate() {
                assert_eq!(o, b[(i / 3) % 4], "{family}");
            }
            groupnorm(&x, 2, 4, 3, 2, 1e-6, &g, &b, true, family, &mut out);
            assert!(out.iter().all(|v| v.is_finite()), "{family}");
        }
    }

    #[test]
    fn large_offset_is_accurate() {
        // |mean| / std = 1000 over a 4 * 4096-value group: a naive single-pass f32 variance fails
        // here
        let (n, c, hw, groups) = (1, 8, 4096, 2);
        let x: Vec<f32> = rand_vec(n * c * hw, 9).iter().map(|v| 1000.0 + v).collect();
        let (g, b) = (rand_vec(c, 1), rand_vec(c, 2));
        let want = naive(&x, n, c, hw, groups, 1e-6, &g, &b, true);
        for family in KernelFamily::all_supported() {
            let mut out = vec![0.0; x.len()];
            groupnorm(&x, n, c, hw, groups, 1e-6, &g, &b, true, family, &mut out);
            let e = rel_l2(&out, &want);
            assert!(e < 1e-6, "{family}: rel {e}");
        }
    }

    #[test]
    fn fast_exp_accuracy() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let want = (x as f64).exp();
            worst = worst.max(((fast_exp(x) as f64 - want) / want).abs());
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(fast_exp(0.0), 1.0);
        assert!(fast_exp(1e6).is_finite() && fast_exp(-1e6) >= 0.0);
        assert!(fast_exp(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn swish_extremes() {
        assert_eq!(swish(0.0), 0.0);
        assert!(swish(-200.0).abs() < 1e-30);
        assert_eq!(swish(200.0), 200.0);
        assert!((swish(1.0) - 0.731_058_6).abs() < 1e-6);
    }

    /// `cargo test --release --lib groupnorm::tests::bench -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn bench() {
        let (n, c, hw) = (1, 128, 256 * 256);
        let x = rand_vec(n * c * hw, 1);
        let (g, b) = (rand_vec(c, 2), rand_vec(c, 3));
        let mut out = vec![0.0; x.len()];
        for family in KernelFamily::all_supported() {
            for silu in [false, true] {
                groupnorm(&x, n, c, hw, 32, 1e-6, &g, &b, silu, family, &mut out);
                let mut best = f64::INFINITY;
                for _ in 0..10 {
                    let t = std::time::Instant::now();
                    groupnorm(&x, n, c, hw, 32, 1e-6, &g, &b, silu, family, &mut out);
                    best = best.min(t.elapsed().as_secs_f64());
                }
                println!(
                    "{family}: groupnorm 128x256x256 silu {silu}: best of 10 {:.2} ms",
                    best * 1e3
                );
            }
        }
    }
}
