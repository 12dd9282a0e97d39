//! `rope`: 2D rotary embedding of q and k (interleaved pairs; the first d_h/4 pairs rotate by the token's row, the
//! last d_h/4 by its column), fused with the write of k and v into the KV cache at their absolute positions.
//! Condition positions have all-zero table rows, so their q and k become exact zeros (the official behaviour).
use super::simd::round_bf16_8;
use super::team::Team;
use super::{round_bf16, KernelFamily, KvCache, OutPtr};
use crate::ops::Placement;
use std::arch::x86_64::*;

/// Interleaved pairs of `x` rotated by the (cos, sin) pairs of `cs`: `y0 = x0·c − x1·s`, `y1 = x1·c + x0·s`, two
/// products and one sum each, never fused (the CUDA kernel's `__fmul_rn`/`__fadd_rn`), so every path is bit-exact.
#[inline]
fn rotate(x: &[f32], cs: &[f32], out: &mut [f32], round: bool) {
    for j in 0..x.len() / 2 {
        let (x0, x1) = (x[2 * j], x[2 * j + 1]);
        let (c, s) = (cs[2 * j], cs[2 * j + 1]);
        let (y0, y1) = (x0 * c - x1 * s, x1 * c + x0 * s);
        out[2 * j] = if round { round_bf16(y0) } else { y0 };
        out[2 * j + 1] = if round { round_bf16(y1) } else { y1 };
    }
}

/// `rotate`, 4 pairs at a time: `addsub(x·c, swap(x)·s)` forms the same products and sums (x.len() % 8 == 0).
///
/// # Safety
/// AVX2 must be present.
#[target_feature(enable = "avx2,fma")]
unsafe fn rotate_avx2(x: &[f32], cs: &[f32], out: &mut [f32], round: bool) {
    for ((x, cs), o) in x.chunks_exact(8).zip(cs.chunks_exact(8)).zip(out.chunks_exact_mut(8)) {
        let xv = _mm256_loadu_ps(x.as_ptr());
        let csv = _mm256_loadu_ps(cs.as_ptr());
        let (c, s) = (_mm256_moveldup_ps(csv), _mm256_movehdup_ps(csv));
        let swapped = _mm256_permute_ps::<0b10_11_00_01>(xv);
        let mut y = _mm256_addsub_ps(_mm256_mul_ps(xv, c), _mm256_mul_ps(swapped, s));
        if round {
            y = round_bf16_8(y);
        }
        _mm256_storeu_ps(o.as_mut_ptr(), y);
    }
}

/// qkv `[B', L, 3D]`, row b at positions `pos_b..pos_b+L` of cache row `slot_b` (`place`, checked by the caller) ->
/// rotated q `[B', L, D]`; k (rotated) and v go into `cache`. One task per head (its q columns and cache rows are
/// its own whatever the placement); with a family of at least AVX2, 8 lanes at a time.
#[allow(clippy::too_many_arguments)]
pub fn rope(
    qkv: &[f32],
    batch: usize,
    len: usize,
    heads: usize,
    head_dim: usize,
    place: Placement,
    table: &[f32],
    cache: &mut KvCache,
    layer: usize,
    round: bool,
    kernels: KernelFamily,
    q: &mut [f32],
) {
    let d = heads * head_dim;
    let simd = kernels >= KernelFamily::Avx2 && head_dim.is_multiple_of(8);
    let qo = OutPtr(q.as_mut_ptr());
    let kv = cache.writer();
    Team::global().run(heads, &|h| {
        // A stack buffer: the decode step allocates nothing (head_dim ≤ 256 covers every LlamaGen size).
        let mut kbuf = [0f32; 256];
        let krot = &mut kbuf[..head_dim];
        let hs = h * head_dim;
        for b in 0..batch {
            let (slot, pos) = place.at(b);
            for l in 0..len {
                let p = pos + l;
                let row = &qkv[(b * len + l) * 3 * d..][..3 * d];
                let cs = &table[p * head_dim..][..head_dim];
                // SAFETY: head h of output row (b, l) belongs to this task only.
                let qd = unsafe { qo.slice((b * len + l) * d + hs, head_dim) };
                let (xq, xk) = (&row[hs..hs + head_dim], &row[d + hs..d + hs + head_dim]);
                if simd {
                    // SAFETY: the family includes AVX2 (checked against the CPU by the backend); head_dim % 8 == 0.
                    unsafe {
                        rotate_avx2(xq, cs, qd, round);
                        rotate_avx2(xk, cs, krot, round);
                    }
                } else {
                    rotate(xq, cs, qd, round);
                    rotate(xk, cs, krot, round);
                }
                // SAFETY: head h's cache rows belong to this task only; the caller checked slot and position.
                unsafe {
                    kv.write(layer, 0, slot, h, p, krot);
                    kv.write(layer, 1, slot, h, p, &row[2 * d + hs..2 * d + hs + head_dim]);
                }
            }
        }
    });
}

impl crate::ops::Exec<crate::ops::rope::Rope> for super::CpuBackend {
    fn exec(&mut self, op: &crate::ops::rope::Rope, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        let v = self.views(a)?;
        let place = crate::ops::Placement::of(op.per_row.then(|| v.i32(a.ins[1])), a.step);
        let (round, kernels) = (self.round, self.kernels);
        let tab = super::weight_f32(&self.weights[op.table.0 as usize], "rope table")?;
        let kv = self
            .kv
            .as_mut()
            .ok_or_else(|| crate::Error::Invalid("rope: no KV cache allocated".into()))?;
        let (h, hd) = (kv.spec.heads, kv.spec.head_dim);
        if (h, hd) != (op.heads, op.head_dim) {
            return Err(crate::Error::Invalid(
                "rope: the KV cache has another head geometry".into(),
            ));
        }
        place.check(op.rows, op.len, kv.spec.batch, kv.spec.seq.min(tab.len() / hd.max(1)))?;
        let q = v.f32_mut(a.out);
        rope(
            v.f32(a.ins[0]),
            op.rows,
            op.len,
            h,
            hd,
            place,
            tab,
            kv,
            op.layer,
            round,
            kernels,
            q,
        );
        Ok(())
    }
}
