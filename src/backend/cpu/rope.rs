//! `rope`: 2D rotary embedding of q and k (interleaved pairs; the first d_h/4 pairs rotate by the token's row, the
//! last d_h/4 by its column), fused with the write of k and v into the KV cache at their absolute positions.
//! Condition positions have all-zero table rows, so their q and k become exact zeros (the official behaviour).
use super::{round_bf16, KvCache};

/// The rotary table `[T + g², d_h/2, 2]` (cos, sin), built in f32 exactly as the reference does.
pub fn rope_table(cls_token_num: usize, grid: usize, head_dim: usize, base: f64) -> Vec<f32> {
    let half = head_dim / 2;
    let quarter = head_dim / 4;
    // freqs = 1 / base^(2k/half) in f32, like `1.0 / (base ** (arange(0, half, 2) / half))`.
    let freqs: Vec<f32> = (0..quarter)
        .map(|k| 1.0f32 / (base as f32).powf((2 * k) as f32 / half as f32))
        .collect();
    let mut t = vec![0f32; (cls_token_num + grid * grid) * half * 2];
    for r in 0..grid {
        for c in 0..grid {
            let row = &mut t[(cls_token_num + r * grid + c) * half * 2..][..half * 2];
            for j in 0..half {
                let angle = if j < quarter {
                    r as f32 * freqs[j]
                } else {
                    c as f32 * freqs[j - quarter]
                };
                row[2 * j] = angle.cos();
                row[2 * j + 1] = angle.sin();
            }
        }
    }
    t
}

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

/// qkv `[B', L, 3D]` at positions `pos..pos+L` -> rotated q `[B', L, D]`; k (rotated) and v go into `cache`.
#[allow(clippy::too_many_arguments)]
pub fn rope(
    qkv: &[f32],
    batch: usize,
    len: usize,
    heads: usize,
    head_dim: usize,
    pos: usize,
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
                cache.write(layer, 0, b, h, p, krot);
                cache.write(layer, 1, b, h, p, &row[2 * d + hs..2 * d + hs + head_dim]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_the_spec_check_values() {
        // d_h = 64, g = 16, T = 1: token 17 is at (1, 1); token 2 at (0, 2).
        let t = rope_table(1, 16, 64, 10000.0);
        let angle = |i: usize, j: usize| {
            let row = &t[(1 + i) * 64 + 2 * j..];
            row[1].atan2(row[0])
        };
        assert!((angle(17, 0) - 1.0).abs() < 1e-6);
        assert!((angle(17, 1) - 0.562341).abs() < 1e-6);
        assert!((angle(17, 16) - 1.0).abs() < 1e-6);
        assert!(angle(2, 0).abs() < 1e-7);
        assert!((angle(2, 16) - 2.0).abs() < 1e-6);
        assert!((angle(2, 17) - 1.124683).abs() < 1e-6);
        // The condition row is all zeros (cos = sin = 0), not the identity rotation.
        assert!(t[..64].iter().all(|&v| v == 0.0));
    }
}
