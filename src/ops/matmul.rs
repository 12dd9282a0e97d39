//! `matmul`: `x [m, k] · Wᵀ` with W `[n, k]` -> `[m, n]` (kernel: `gemm.cu`); with `residual`, input 1 `[m, n]` is
//! added in the epilogue (the fused `h + wo(..)` and `h + w2(..)` of every block). In bf16 the product is rounded
//! before the residual add, which is rounded again (the official module output, then the add).
use super::cost::{activations, Cost, CostAt};
use super::reference::dot64;
use super::{Io, OpDesc, RefCtx, WeightId, WeightNeed};
use crate::Result;

#[derive(Clone, Debug, PartialEq)]
pub struct Matmul {
    pub w: WeightId,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub residual: bool,
}

impl OpDesc for Matmul {
    const NAME: &'static str = "matmul";

    fn io(&self) -> Io {
        let mn = self.m * self.n;
        if self.residual {
            Io::f32(&[self.m * self.k, mn], mn)
        } else {
            Io::f32(&[self.m * self.k], mn)
        }
    }

    fn weights(&self) -> Vec<WeightNeed> {
        vec![(self.w, vec![Some(self.n), Some(self.k)])]
    }

    fn cost(&self, at: &CostAt) -> Cost {
        let (m, k, n) = (self.m as f64, self.k as f64, self.n as f64);
        Cost {
            flops: 2.0 * m * k * n,
            bytes: n * k * at.wb() + activations(&self.io()),
        }
    }

    fn reference(&self, r: &mut RefCtx<'_>) -> Result<()> {
        let (x, w) = (r.f32(0)?, &r.w(self.w)?.data);
        let res = if self.residual { Some(r.f32(1)?) } else { None };
        let (k, n) = (self.k, self.n);
        let mut y = vec![0f32; self.m * n];
        for (i, yr) in y.chunks_mut(n).enumerate() {
            for (j, o) in yr.iter_mut().enumerate() {
                let v = r.r(dot64(&x[i * k..][..k], &w[j * k..][..k]));
                *o = match res {
                    Some(res) => v + res[i * n + j],
                    None => v,
                };
            }
        }
        r.put_f32(y)
    }
}
