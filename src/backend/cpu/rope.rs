//! `rope`: 2D rotary embedding of q and k (interleaved pairs; the first d_h/4 pairs rotate by the token's row, the
//! last d_h/4 by its column), fused with the write of k and v into the KV cache at their absolute positions.
//! Condition positions have all-zero table rows, so their q and k become exact zeros (the official behaviour).
use super::{round_bf16, KvCache};
use crate::backend::Placement;

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

/// qkv `[B', L, 3D]`, row b at positions `pos_b..pos_b+L` of cache row `slot_b` (`place`, checked by the caller) ->
/// rotated q `[B', L, D]`; k (rotated) and v go into `cache`.
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
    q: &mut [f32],
) {
    let d = heads * head_dim;
    // A stack buffer: the decode step allocates nothing (head_dim ≤ 256 covers every LlamaGen size).
    let mut kbuf = [0f32; 256];
    let krot = &mut kbuf[..head_dim];
    for b in 0..batch {
        let (slot, pos) = place.at(b);
        for l in 0..len {
            let p = pos + l;
            let row = &qkv[(b * len + l) * 3 * d..][..3 * d];
            let cs = &table[p * head_dim..][..head_dim];
            for h in 0..heads {
                let hs = h * head_dim;
                rotate(
                    &row[hs..hs + head_dim],
                    cs,
                    &mut q[(b * len + l) * d + hs..][..head_dim],
                    round,
                );
                rotate(&row[d + hs..d + hs + head_dim], cs, krot, round);
                cache.write(layer, 0, slot, h, p, krot);
                cache.write(layer, 1, slot, h, p, &row[2 * d + hs..2 * d + hs + head_dim]);
            }
        }
    }
}
