//! `rmsnorm`: `x / sqrt(mean(x²) + eps) ⊙ w` per row of `d`. In bf16 the normalised value is rounded before the
//! weight multiply (the official `self._norm(x.float()).type_as(x) * self.weight`).
use super::cost::{activations, Cost, CostAt};
use super::{Io, OpDesc, RefCtx, WeightId, WeightNeed};
use crate::Result;

#[derive(Clone, Debug, PartialEq)]
pub struct Rmsnorm {
    pub w: WeightId,
    pub rows: usize,
    pub d: usize,
    pub eps: f32,
}

impl OpDesc for Rmsnorm {
    const NAME: &'static str = "rmsnorm";

    fn io(&self) -> Io {
        Io::f32(&[self.rows * self.d], self.rows * self.d)
    }

    fn weights(&self) -> Vec<WeightNeed> {
        vec![(self.w, vec![Some(self.d)])]
    }

    fn cost(&self, _: &CostAt) -> Cost {
        Cost {
            flops: 4.0 * (self.rows * self.d) as f64,
            bytes: activations(&self.io()) + 4.0 * self.d as f64,
        }
    }

    fn examples() -> Vec<(Self, bool)> {
        let w = WeightId(0);
        vec![(Rmsnorm { w, rows: 5, d: 72, eps: 1e-5 }, false), (Rmsnorm { w, rows: 3, d: 96, eps: 1e-6 }, true)]
    }

    fn reference(&self, r: &mut RefCtx<'_>) -> Result<()> {
        let (x, w) = (r.f32(0)?, &r.w(self.w)?.data);
        let mut y = Vec::with_capacity(x.len());
        for row in x.chunks(self.d) {
            let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / self.d as f64;
            let inv = 1.0 / (ms + self.eps as f64).sqrt();
            y.extend(row.iter().zip(w).map(|(&v, &g)| r.r((v as f64 * inv) as f32) * g));
        }
        r.put_f32(y)
    }
}
