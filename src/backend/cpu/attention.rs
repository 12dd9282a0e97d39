//! `attention`: each query at position p attends over the cached keys 0..=p with scale 1/√d_h and an exact softmax.
//! t2i: condition keys whose mask is 0 are invisible to every query, except that a query always sees itself
//! (the reference's forced diagonal). Unwritten cache slots are never read.
//!
//! One task per (row, head). With a kernel family of at least AVX2 (and d_h a multiple of 8, as in every LlamaGen
//! model) the scores, the softmax (through `simd::exp8`) and the weighted sum of values run 8 lanes at a time; the
//! portable loops are the reference they are tested against.
use super::kv_cache::Head;
use super::simd::{self, Widen8};
use super::team::Team;
use super::{round_bf16, KernelFamily, KvCache, OutPtr};
use crate::ops::Placement;
use std::arch::x86_64::*;

/// q `[B', L, D]`, row b at positions `pos_b..pos_b+L` over cache row `slot_b` (`place`, checked by the caller); `mask` `[B', T]` (1 = visible) or None; out `[B', L, D]`.
/// `scores` is caller-owned scratch of at least B'·H·seq floats, so a decode step allocates nothing.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    batch: usize,
    len: usize,
    heads: usize,
    head_dim: usize,
    place: Placement,
    mask: Option<(&[f32], usize)>,
    cache: &KvCache,
    layer: usize,
    round: bool,
    kernels: KernelFamily,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let d = heads * head_dim;
    let seq = cache.spec.seq;
    let scale = 1.0 / (head_dim as f32).sqrt();
    assert!(
        scores.len() >= batch * heads * seq,
        "attention: scores scratch too short"
    );
    let simd = kernels >= KernelFamily::Avx2 && head_dim.is_multiple_of(8);
    // Task (b, h) writes only out[(b·L + l)·D + h·d_h ..][..d_h] and scores[bh·seq..][..seq] for its own b and h.
    let (o, s) = (OutPtr(out.as_mut_ptr()), OutPtr(scores.as_mut_ptr()));
    Team::global().run(batch * heads, &|bh| {
        let (b, h) = (bh / heads, bh % heads);
        // SAFETY: this task's row of scores (see above).
        let sc = unsafe { s.slice(bh * seq, seq) };
        let (slot, pos) = place.at(b);
        let (keys, values) = (cache.head(layer, 0, slot, h), cache.head(layer, 1, slot, h));
        for l in 0..len {
            let p = pos + l;
            let visible = |k: usize| match mask {
                Some((m, t)) if k < t && k != p => m[b * t + k] != 0.0,
                _ => true,
            };
            let qv = &q[(b * len + l) * d + h * head_dim..][..head_dim];
            // SAFETY: this task's head of output row (b, l) (see above).
            let dst = unsafe { o.slice((b * len + l) * d + h * head_dim, head_dim) };
            let sc = &mut sc[..=p];
            match (keys, values, simd) {
                // SAFETY: the family includes AVX2 + FMA (checked against the CPU by the backend); d_h % 8 == 0.
                (Head::F32(k), Head::F32(v), true) => unsafe { attend_avx2(qv, k, v, &visible, scale, sc, dst) },
                (Head::Bf16(k), Head::Bf16(v), true) => unsafe { attend_avx2(qv, k, v, &visible, scale, sc, dst) },
                _ => attend(qv, keys, values, &visible, scale, sc, dst),
            }
            if round {
                dst.iter_mut().for_each(|v| *v = round_bf16(*v));
            }
        }
    });
}

/// One query over keys and values `0..sc.len()` (rows of `dst.len()` in `keys` / `values`): plain loops.
fn attend(
    q: &[f32],
    keys: Head,
    values: Head,
    visible: &dyn Fn(usize) -> bool,
    scale: f32,
    sc: &mut [f32],
    dst: &mut [f32],
) {
    let hd = dst.len();
    let mut mx = f32::NEG_INFINITY;
    for (k, s) in sc.iter_mut().enumerate() {
        *s = if visible(k) {
            keys.row(k, hd).dot(q) * scale
        } else {
            f32::NEG_INFINITY
        };
        mx = mx.max(*s);
    }
    let mut sum = 0f32;
    for s in sc.iter_mut() {
        *s = if *s == f32::NEG_INFINITY { 0.0 } else { (*s - mx).exp() };
        sum += *s;
    }
    let inv = 1.0 / sum;
    dst.iter_mut().for_each(|v| *v = 0.0);
    for (k, &w) in sc.iter().enumerate() {
        if w != 0.0 {
            values.row(k, hd).axpy(w * inv, dst);
        }
    }
}

/// `attend` 8 lanes at a time: per key one dot product in two accumulators, the softmax's `exp` by `exp8`, the
/// weighted sum of values in 64-wide blocks of `dst` held in registers.
///
/// # Safety
/// AVX2 + FMA present; `dst.len()` a multiple of 8; keys and values hold `sc.len()` rows of `dst.len()`.
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2<T: Widen8>(
    q: &[f32],
    keys: &[T],
    values: &[T],
    visible: &dyn Fn(usize) -> bool,
    scale: f32,
    sc: &mut [f32],
    dst: &mut [f32],
) {
    let (hd, n) = (dst.len(), sc.len());
    assert!(keys.len() >= n * hd && values.len() >= n * hd && q.len() >= hd);
    let (kp, vp, qp) = (keys.as_ptr(), values.as_ptr(), q.as_ptr());
    let mut mx = f32::NEG_INFINITY;
    for (k, s) in sc.iter_mut().enumerate() {
        *s = if visible(k) {
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let row = kp.add(k * hd);
            let mut i = 0;
            while i + 16 <= hd {
                a0 = _mm256_fmadd_ps(T::load8(row.add(i)), _mm256_loadu_ps(qp.add(i)), a0);
                a1 = _mm256_fmadd_ps(T::load8(row.add(i + 8)), _mm256_loadu_ps(qp.add(i + 8)), a1);
                i += 16;
            }
            if i < hd {
                a0 = _mm256_fmadd_ps(T::load8(row.add(i)), _mm256_loadu_ps(qp.add(i)), a0);
            }
            simd::hsum(_mm256_add_ps(a0, a1)) * scale
        } else {
            f32::NEG_INFINITY
        };
        mx = mx.max(*s);
    }
    // exp(s - max), 0 for hidden keys; the tail through a padded copy so every weight comes from `exp8`.
    let (mxv, ninf) = (_mm256_set1_ps(mx), _mm256_set1_ps(f32::NEG_INFINITY));
    let mut sum = _mm256_setzero_ps();
    let mut k = 0;
    while k < n {
        let mut buf = [f32::NEG_INFINITY; 8];
        let m = (n - k).min(8);
        buf[..m].copy_from_slice(&sc[k..k + m]);
        let s = _mm256_loadu_ps(buf.as_ptr());
        let e = simd::exp8(_mm256_sub_ps(s, mxv));
        let e = _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(s, ninf), e);
        _mm256_storeu_ps(buf.as_mut_ptr(), e);
        sc[k..k + m].copy_from_slice(&buf[..m]);
        sum = _mm256_add_ps(sum, e);
        k += 8;
    }
    let inv = 1.0 / simd::hsum(sum);
    let dp = dst.as_mut_ptr();
    for b0 in (0..hd).step_by(64) {
        let nv = ((hd - b0) / 8).min(8);
        let mut acc = [_mm256_setzero_ps(); 8];
        for (k, &w) in sc.iter().enumerate() {
            if w != 0.0 {
                let wv = _mm256_set1_ps(w * inv);
                let row = vp.add(k * hd + b0);
                for (j, a) in acc[..nv].iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(T::load8(row.add(8 * j)), wv, *a);
                }
            }
        }
        for (j, a) in acc[..nv].iter().enumerate() {
            _mm256_storeu_ps(dp.add(b0 + 8 * j), *a);
        }
    }
}

impl crate::ops::Exec<crate::ops::attention::Attention> for super::CpuBackend {
    fn exec(&mut self, op: &crate::ops::attention::Attention, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        let v = self.views(a)?;
        let (mi, ri) = op.extra_inputs();
        let place = crate::ops::Placement::of(ri.map(|i| v.i32(a.ins[i])), a.step);
        let mask = mi.map(|i| (v.f32(a.ins[i]), op.mask.unwrap_or(0)));
        let kv = self
            .kv
            .as_ref()
            .ok_or_else(|| crate::Error::Invalid("attention: no KV cache allocated".into()))?;
        let (h, hd) = (kv.spec.heads, kv.spec.head_dim);
        if (h, hd) != (op.heads, op.head_dim) {
            return Err(crate::Error::Invalid(
                "attention: the KV cache has another head geometry".into(),
            ));
        }
        place.check(op.rows, op.len, kv.spec.batch, kv.spec.seq)?;
        let (q, out) = (v.f32(a.ins[0]), v.f32_mut(a.out));
        attention(
            q,
            op.rows,
            op.len,
            h,
            hd,
            place,
            mask,
            kv,
            op.layer,
            self.round,
            self.kernels,
            &mut self.scores,
            out,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Dtype, KvSpec, Placement};

    /// The AVX2 path against the portable loops: decode (one query) and prefill (several), with and without the
    /// t2i mask, f32 and bf16 caches, head dims 8 to 128, sequence lengths across the 8-lane tails.
    #[test]
    #[cfg_attr(not(llamagen_cpu_avx2), ignore = "this CPU lacks AVX2 + FMA")]
    fn avx2_matches_portable() {
        let mut seed = 1u64;
        let mut rnd = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        for (batch, heads, hd, seq, pos, len, masked) in [
            (2, 3, 64, 40, 0, 1, false),
            (2, 3, 64, 40, 17, 1, false),
            (1, 2, 8, 20, 0, 20, false),
            (3, 1, 128, 70, 5, 9, true),
            (2, 2, 24, 33, 32, 1, true),
            (1, 4, 64, 264, 263, 1, false),
        ] {
            for storage in [Dtype::F32, Dtype::Bf16] {
                let spec = KvSpec {
                    layers: 1,
                    batch,
                    heads,
                    seq,
                    head_dim: hd,
                    storage,
                };
                let mut cache = KvCache::new(spec);
                for b in 0..batch {
                    for h in 0..heads {
                        for p in 0..pos + len {
                            for kv in 0..2 {
                                let v: Vec<f32> = (0..hd).map(|_| 3.0 * rnd()).collect();
                                cache.write(0, kv, b, h, p, &v);
                            }
                        }
                    }
                }
                let q: Vec<f32> = (0..batch * len * heads * hd).map(|_| rnd()).collect();
                let t = 4.min(pos + len);
                let mask: Vec<f32> = (0..batch * t).map(|i| ((i * 7) % 3 != 0) as u8 as f32).collect();
                let mask = masked.then_some((&mask[..], t));
                let bf16 = storage == Dtype::Bf16;
                let mut scores = vec![0f32; batch * heads * seq];
                let run = |family, scores: &mut [f32]| {
                    let mut out = vec![f32::NAN; q.len()];
                    attention(
                        &q,
                        batch,
                        len,
                        heads,
                        hd,
                        Placement::Uniform { pos },
                        mask,
                        &cache,
                        0,
                        bf16,
                        family,
                        scores,
                        &mut out,
                    );
                    out
                };
                let want = run(KernelFamily::Portable, &mut scores);
                let got = run(KernelFamily::Avx2, &mut scores);
                let (mut num, mut den) = (0f64, 0f64);
                for (g, w) in got.iter().zip(&want) {
                    num += ((g - w) as f64).powi(2);
                    den += (*w as f64).powi(2);
                }
                let err = (num / den).sqrt();
                // f32: summation order only. bf16: outputs rounded to bf16, where an order difference can move
                // a value one bf16 step (2^-8 relative).
                let bound = if bf16 { 4e-3 } else { 1e-6 };
                assert!(
                    err <= bound,
                    "b{batch} h{heads} d{hd} pos {pos} len {len} mask {masked} {storage:?}: {err:e}"
                );
            }
        }
    }
}
