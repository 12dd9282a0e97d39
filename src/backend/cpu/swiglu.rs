//! `swiglu`: silu(a) · b for the FFN, where a = x·W1ᵀ and b = x·W3ᵀ sit side by side in one `[M, 2F]` row
//! (W1 and W3 are fused into one weight so the FFN input is read once).
use super::round_bf16;

#[inline]
pub fn silu(a: f32) -> f32 {
    a / (1.0 + (-a).exp())
}

pub fn swiglu(ab: &[f32], f: usize, round: bool, out: &mut [f32]) {
    for (row, o) in ab.chunks(2 * f).zip(out.chunks_mut(f)) {
        let (a, b) = row.split_at(f);
        for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
            *o = if round {
                round_bf16(round_bf16(silu(a)) * b)
            } else {
                silu(a) * b
            };
        }
    }
}

/// `gelu` (tanh approximation), the activation of the t2i caption MLP.
pub fn gelu_tanh(x: &[f32], round: bool, out: &mut [f32]) {
    const BETA: f32 = 0.797_884_6; // sqrt(2/pi)
    const KAPPA: f32 = 0.044715;
    for (o, &v) in out.iter_mut().zip(x) {
        let y = 0.5 * v * (1.0 + (BETA * (v + KAPPA * v * v * v)).tanh());
        *o = if round { round_bf16(y) } else { y };
    }
}
