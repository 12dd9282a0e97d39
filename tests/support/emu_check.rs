//! Helpers of the kernel tests (tests/emulator.rs and tests/kernels/<op>.rs): deterministic inputs, dtype
//! round trips, and the normalised error every kernel is judged by.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]
use half::bf16;
use llamagen::backend::cpu;
use llamagen::backend::cuda::emu::Sched;

/// splitmix64: deterministic inputs without a dependency.
pub struct Rng(pub u64);
impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

pub const SCHEDS: [Sched; 3] = [Sched::Forward, Sched::Reverse, Sched::Shuffle];

pub fn to_bf16(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

pub fn from_bf16(v: &[bf16]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

pub fn round_all(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x = cpu::round_bf16(*x));
}

/// Σ(a−b)²/Σb² after checking that both sides are finite; also returns max |a−b|.
pub fn nmse(got: &[f32], want: &[f32], what: &str) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(w.is_finite(), "{what}: reference not finite at {i}: {w}");
        assert!(
            g.is_finite(),
            "{what}: kernel output not finite at {i}: {g} (reference {w})"
        );
    }
    let (mut num, mut den, mut max) = (0f64, 0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        let d = g as f64 - w as f64;
        num += d * d;
        den += (w as f64) * (w as f64);
        max = max.max(d.abs());
    }
    (if den > 0.0 { num / den } else { num }, max)
}
