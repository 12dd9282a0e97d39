//! AVX2 + FMA building blocks for the decode step's small ops (attention, swiglu): an 8-lane `exp`, and loads that
//! widen a KV-cache row (f32 or bf16) 8 elements at a time. Callers reach them only through a kernel family that
//! includes AVX2 + FMA.
use half::bf16;
use std::arch::x86_64::*;

/// `exp` of 8 lanes: the Cephes single-precision scheme (exponent by rounding x·log2 e, a two-part ln 2 reduction,
/// a degree-6 polynomial on [-ln2/2, ln2/2]). Measured against f64 over [-87, 88] (`exp8_is_within_two_ulp`):
/// ≤ 2 ulp, where libm's `expf` is correctly rounded; below -87.3 it returns ~1e-38 instead of a denormal or 0
/// (softmax weights and silu there are 0 to f32 precision either way). NaN stays NaN.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub unsafe fn exp8(x: __m256) -> __m256 {
    // min/max return their second operand when one is NaN: x last, so NaN goes through.
    let x = _mm256_max_ps(_mm256_set1_ps(-87.336_54), _mm256_min_ps(_mm256_set1_ps(88.722_83), x));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let y = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0));
    // 2^n for n in [-126, 128]: at n = 128 (x near 88.72) the product below is still finite.
    let n = _mm256_cvtps_epi32(n);
    let half = _mm256_srai_epi32::<1>(n);
    let pow = |e: __m256i| _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(e, _mm256_set1_epi32(127))));
    _mm256_mul_ps(_mm256_mul_ps(y, pow(half)), pow(_mm256_sub_epi32(n, half)))
}

/// A KV-cache element type, widened 8 at a time.
pub trait Widen8: Copy {
    /// # Safety
    /// `p..p+8` readable; AVX2 present.
    unsafe fn load8(p: *const Self) -> __m256;
}

impl Widen8 for f32 {
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
}

impl Widen8 for bf16 {
    #[inline(always)]
    unsafe fn load8(p: *const bf16) -> __m256 {
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }
}

#[target_feature(enable = "avx2,fma")]
#[inline]
pub unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// `round_bf16` of 8 lanes: round to nearest even on the upper 16 bits, NaN kept (made quiet), like `half`.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub unsafe fn round_bf16_8(x: __m256) -> __m256 {
    let bits = _mm256_castps_si256(x);
    let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(bits), _mm256_set1_epi32(1));
    let up = _mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7fff)), lsb);
    let hi = _mm256_set1_epi32(0xffff_0000u32 as i32);
    let rounded = _mm256_and_si256(up, hi);
    let quiet = _mm256_and_si256(_mm256_or_si256(bits, _mm256_set1_epi32(0x0040_0000)), hi);
    let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(x, x));
    _mm256_castsi256_ps(_mm256_blendv_epi8(rounded, quiet, nan))
}

/// `silu(a) · b` over slices (`a / (1 + exp(-a)) · b`, the reference's expression), 8 lanes at a time; with
/// `ROUND`, bf16 mode's two roundings (`round(round(silu(a)) · b)`).
///
/// # Safety
/// AVX2 + FMA present.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn silu_mul<const ROUND: bool>(a: &[f32], b: &[f32], out: &mut [f32]) {
    let n = out.len().min(a.len()).min(b.len());
    let body = n - n % 8;
    let one = _mm256_set1_ps(1.0);
    let mut i = 0;
    while i < body {
        let av = _mm256_loadu_ps(a.as_ptr().add(i));
        let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), av));
        let mut s = _mm256_div_ps(av, _mm256_add_ps(one, e));
        if ROUND {
            s = round_bf16_8(s);
        }
        let mut y = _mm256_mul_ps(s, _mm256_loadu_ps(b.as_ptr().add(i)));
        if ROUND {
            y = round_bf16_8(y);
        }
        _mm256_storeu_ps(out.as_mut_ptr().add(i), y);
        i += 8;
    }
    for j in body..n {
        out[j] = super::swiglu::swiglu_one(a[j], b[j], ROUND);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(not(llamagen_cpu_avx2), ignore = "this CPU lacks AVX2 + FMA")]
    fn exp8_is_within_two_ulp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.5 {
            let xs: [f32; 8] = std::array::from_fn(|i| x + i as f32 * 1.37e-3);
            let mut got = [0f32; 8];
            // SAFETY: the cfg above.
            unsafe { _mm256_storeu_ps(got.as_mut_ptr(), exp8(_mm256_loadu_ps(xs.as_ptr()))) };
            for (g, &xi) in got.iter().zip(&xs) {
                let want = (xi as f64).exp();
                let ulp = (want as f32).to_bits();
                let ulp = (f32::from_bits(ulp + 1) - f32::from_bits(ulp)) as f64;
                worst = worst.max((*g as f64 - want).abs() / ulp);
            }
            x += 0.0123;
        }
        assert!(worst <= 2.0, "exp8: {worst} ulp");
        let special = [
            f32::NAN,
            f32::NEG_INFINITY,
            -1000.0,
            0.0,
            -0.0,
            1000.0,
            f32::INFINITY,
            88.72,
        ];
        let mut got = [0f32; 8];
        // SAFETY: the cfg above.
        unsafe { _mm256_storeu_ps(got.as_mut_ptr(), exp8(_mm256_loadu_ps(special.as_ptr()))) };
        assert!(got[0].is_nan());
        assert!(got[1] < 1e-37 && got[2] < 1e-37 && got[1] >= 0.0);
        assert_eq!((got[3], got[4]), (1.0, 1.0));
        assert!(got[5] > 3e38 && got[6] > 3e38 && got[5].is_finite());
        assert!((got[7] as f64 / (88.72f32 as f64).exp() - 1.0).abs() < 1e-6);
    }

    #[test]
    #[cfg_attr(not(llamagen_cpu_avx2), ignore = "this CPU lacks AVX2 + FMA")]
    fn silu_mul_matches_the_scalar_expression() {
        let a: Vec<f32> = (0..203).map(|i| (i as f32 - 100.0) * 0.37).collect();
        let b: Vec<f32> = (0..203).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
        let mut out = vec![0f32; 203];
        // SAFETY: the cfg above.
        unsafe { silu_mul::<false>(&a, &b, &mut out) };
        for i in 0..203 {
            let want = (a[i] as f64 / (1.0 + (-a[i] as f64).exp())) * b[i] as f64;
            assert!(
                (out[i] as f64 - want).abs() <= 4e-7 * want.abs().max(1e-30),
                "{i}: {} vs {want}",
                out[i]
            );
        }
        // bf16 mode: equal to the scalar expression with the same roundings, up to a bf16 step where exp's last
        // bit moves a value across a rounding boundary.
        let mut rounded = vec![0f32; 203];
        // SAFETY: the cfg above.
        unsafe { silu_mul::<true>(&a, &b, &mut rounded) };
        for i in 0..203 {
            let want = super::super::swiglu::swiglu_one(a[i], b[i], true);
            assert!(
                (rounded[i] - want).abs() <= want.abs() / 128.0,
                "{i}: {} vs {want}",
                rounded[i]
            );
            assert_eq!(rounded[i], super::super::round_bf16(rounded[i]));
        }
    }

    #[test]
    #[cfg_attr(not(llamagen_cpu_avx2), ignore = "this CPU lacks AVX2 + FMA")]
    fn round_bf16_8_matches_half() {
        let mut xs: Vec<f32> = (0..4000).map(|i| f32::from_bits(0x3f80_0000 + i * 0x1_0001)).collect();
        xs.extend([
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            -0.0,
            1e-40,
            3.4e38,
        ]);
        xs.extend((0..64).map(|i| f32::from_bits(0x4000_8000 + (i << 16)))); // exact ties
        for c in xs.chunks(8) {
            let mut v = [0f32; 8];
            v[..c.len()].copy_from_slice(c);
            let mut got = [0f32; 8];
            // SAFETY: the cfg above.
            unsafe { _mm256_storeu_ps(got.as_mut_ptr(), round_bf16_8(_mm256_loadu_ps(v.as_ptr()))) };
            for (g, x) in got.iter().zip(v) {
                let want = super::super::round_bf16(x);
                assert!(
                    g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                    "{x:e}: {g:e} vs {want:e}"
                );
            }
        }
    }
}
