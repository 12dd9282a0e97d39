//! `matmul_swiglu`: the FFN's first half, `silu(x·W1ᵀ) · (x·W3ᵀ)`, with W1 | W3 stacked in one weight `[2f, k]`:
//! `x [m, k]` -> `[m, f]`. Its arithmetic is `matmul` (n = 2f) then `swiglu`, roundings included (bf16: each
//! linear output rounded, then silu(a), then the product); fusing them lets the CUDA bf16 GEMM kernels form the
//! product in their epilogue, so the `[m, 2f]` intermediate never reaches memory (kernels/gemm.cu, `swiglu_row`).
use super::cost::{activations, Cost, CostAt};
use super::reference::dot64;
use super::{invalid, Io, OpDesc, RefCtx, WeightId, WeightNeed};
use crate::Result;

#[derive(Clone, Debug, PartialEq)]
pub struct MatmulSwiglu {
    pub w: WeightId,
    pub m: usize,
    pub k: usize,
    /// The FFN width: the output's columns, half the weight's rows.
    pub f: usize,
}

impl OpDesc for MatmulSwiglu {
    const NAME: &'static str = "matmul_swiglu";

    fn validate(&self) -> Result<()> {
        if self.f.checked_mul(2).is_none() {
            return invalid(Self::NAME, format!("f = {} overflows 2f", self.f));
        }
        Ok(())
    }

    fn io(&self) -> Io {
        Io::f32(&[self.m * self.k], self.m * self.f)
    }

    fn weights(&self) -> Vec<WeightNeed> {
        vec![(self.w, vec![Some(2 * self.f), Some(self.k)])]
    }

    fn cost(&self, at: &CostAt) -> Cost {
        let (m, k, f) = (self.m as f64, self.k as f64, self.f as f64);
        Cost {
            flops: 4.0 * m * k * f + 8.0 * m * f,
            bytes: 2.0 * f * k * at.wb() + activations(&self.io()),
        }
    }

    fn reference(&self, r: &mut RefCtx<'_>) -> Result<()> {
        let (x, w) = (r.f32(0)?, &r.w(self.w)?.data);
        let (k, f) = (self.k, self.f);
        let mut y = Vec::with_capacity(self.m * f);
        for i in 0..self.m {
            let xr = &x[i * k..][..k];
            for j in 0..f {
                let a = r.r(dot64(xr, &w[j * k..][..k])) as f64;
                let b = r.r(dot64(xr, &w[(f + j) * k..][..k]));
                let silu = (a / (1.0 + (-a).exp())) as f32;
                y.push(r.r(silu) * b); // put_f32 rounds the product
            }
        }
        r.put_f32(y)
    }
}
