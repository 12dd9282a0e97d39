//! The 2D rotary table of the GPT (spec §3.3): computed from the config, never loaded, and uploaded as a weight.
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
