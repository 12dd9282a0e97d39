//! `attention`: each query at position p attends over the cached keys 0..=p with scale 1/√d_h and an exact softmax.
//! t2i: condition keys whose mask is 0 are invisible to every query, except that a query always sees itself
//! (the reference's forced diagonal). Unwritten cache slots are never read.
use super::{round_bf16, KvCache};
use rayon::prelude::*;

/// q `[B', L, D]` at positions `pos..pos+L`; `mask` `[B', T]` (1 = visible) or None; out `[B', L, D]`.
/// `scores` is caller-owned scratch of at least B'·H·seq floats, so a decode step allocates nothing.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    batch: usize,
    len: usize,
    heads: usize,
    head_dim: usize,
    pos: usize,
    mask: Option<(&[f32], usize)>,
    cache: &KvCache,
    layer: usize,
    round: bool,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let d = heads * head_dim;
    let seq = cache.spec.seq;
    let scale = 1.0 / (head_dim as f32).sqrt();
    struct Out(*mut f32);
    // SAFETY: task (b, h) writes only out[(b·L + l)·D + h·d_h ..][..d_h] for its own b and h.
    unsafe impl Sync for Out {}
    let o = Out(out.as_mut_ptr());
    scores[..batch * heads * seq]
        .par_chunks_mut(seq)
        .enumerate()
        .for_each(|(bh, sc)| {
            let (b, h) = (bh / heads, bh % heads);
            let o = &o;
            for l in 0..len {
                let p = pos + l;
                let qv = &q[(b * len + l) * d + h * head_dim..][..head_dim];
                let mut mx = f32::NEG_INFINITY;
                for (k, s) in sc[..=p].iter_mut().enumerate() {
                    let visible = match mask {
                        Some((m, t)) if k < t && k != p => m[b * t + k] != 0.0,
                        _ => true,
                    };
                    *s = if visible {
                        let kv = cache.row(layer, 0, b, h, k);
                        kv.dot(qv) * scale
                    } else {
                        f32::NEG_INFINITY
                    };
                    mx = mx.max(*s);
                }
                let mut sum = 0f32;
                for s in sc[..=p].iter_mut() {
                    *s = if *s == f32::NEG_INFINITY { 0.0 } else { (*s - mx).exp() };
                    sum += *s;
                }
                let inv = 1.0 / sum;
                // SAFETY: see `Out`.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(o.0.add((b * len + l) * d + h * head_dim), head_dim) };
                dst.iter_mut().for_each(|v| *v = 0.0);
                for (k, &w) in sc[..=p].iter().enumerate() {
                    if w != 0.0 {
                        cache.row(layer, 1, b, h, k).axpy(w * inv, dst);
                    }
                }
                if round {
                    dst.iter_mut().for_each(|v| *v = round_bf16(*v));
                }
            }
        });
}
