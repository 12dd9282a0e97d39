//! `swiglu`: silu(a) · b for the FFN, where a = x·W1ᵀ and b = x·W3ᵀ sit side by side in one `[M, 2F]` row
//! (W1 and W3 are fused into one weight so the FFN input is read once).
use super::team::Team;
use super::{round_bf16, simd, KernelFamily, OutPtr};

#[inline]
pub fn silu(a: f32) -> f32 {
    a / (1.0 + (-a).exp())
}

/// One output: `silu(a) · b`, in bf16 mode with the reference's two roundings.
#[inline]
pub fn swiglu_one(a: f32, b: f32, round: bool) -> f32 {
    if round {
        round_bf16(round_bf16(silu(a)) * b)
    } else {
        silu(a) * b
    }
}

/// Elements per task: a decode step's 2 × 2048 (GPT-B, one image with guidance) in 4 tasks.
const GRAIN: usize = 1024;

/// `out[r] = silu(ab[r][..f]) · ab[r][f..]` for every row r; `kernels` at least AVX2: the 8-lane `exp`.
pub fn swiglu(ab: &[f32], f: usize, round: bool, kernels: KernelFamily, out: &mut [f32]) {
    if f == 0 {
        return;
    }
    let rows = out.len() / f;
    let chunks = f.div_ceil(GRAIN);
    let o = OutPtr(out.as_mut_ptr());
    Team::global().run(rows * chunks, &|t| {
        let (r, c) = (t / chunks, t % chunks);
        let span = c * GRAIN..((c + 1) * GRAIN).min(f);
        let (a, b) = (&ab[r * 2 * f..][span.clone()], &ab[r * 2 * f + f..][span.clone()]);
        // SAFETY: task (r, c) writes only its own span of row r.
        let out = unsafe { o.slice(r * f + span.start, span.len()) };
        if kernels >= KernelFamily::Avx2 {
            // SAFETY: the family includes AVX2 + FMA, and the backend checked the CPU has them.
            unsafe {
                if round {
                    simd::silu_mul::<true>(a, b, out)
                } else {
                    simd::silu_mul::<false>(a, b, out)
                }
            }
        } else {
            for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
                *o = swiglu_one(a, b, round);
            }
        }
    });
}

impl crate::ops::Exec<crate::ops::swiglu::Swiglu> for super::CpuBackend {
    fn exec(&mut self, op: &crate::ops::swiglu::Swiglu, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        let v = self.views(a)?;
        swiglu(v.f32(a.ins[0]), op.f, self.round, self.kernels, v.f32_mut(a.out));
        Ok(())
    }
}
