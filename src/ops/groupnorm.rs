//! `groupnorm`: torch `GroupNorm(groups, c, eps, affine)` on x `[n, c, hw]`, then swish when `silu`: mean and
//! biased variance per sample and group over (c / groups)·hw values.
use super::cost::{activations, Cost, CostAt};
use super::{Io, OpDesc, RefCtx, WeightId, WeightNeed};
use crate::Result;

#[derive(Clone, Debug, PartialEq)]
pub struct Groupnorm {
    pub gamma: WeightId,
    pub beta: WeightId,
    pub n: usize,
    pub c: usize,
    pub hw: usize,
    pub groups: usize,
    pub eps: f32,
    pub silu: bool,
}

impl OpDesc for Groupnorm {
    const NAME: &'static str = "groupnorm";

    fn validate(&self) -> Result<()> {
        if self.groups == 0 || !self.c.is_multiple_of(self.groups) {
            return super::invalid(Self::NAME, format!("{} channels in {} groups", self.c, self.groups));
        }
        Ok(())
    }

    fn io(&self) -> Io {
        let x = self.n * self.c * self.hw;
        Io::f32(&[x], x)
    }

    fn weights(&self) -> Vec<WeightNeed> {
        vec![(self.gamma, vec![Some(self.c)]), (self.beta, vec![Some(self.c)])]
    }

    fn cost(&self, _: &CostAt) -> Cost {
        Cost {
            flops: 8.0 * (self.n * self.c * self.hw) as f64,
            bytes: activations(&self.io()),
        }
    }

    fn examples() -> Vec<(Self, bool)> {
        let (gamma, beta) = (WeightId(0), WeightId(1));
        let gn = |c, hw, silu| Groupnorm { gamma, beta, n: 1, c, hw, groups: 32, eps: 1e-6, silu };
        vec![(gn(64, 25, true), false), (gn(32, 9, false), false)]
    }

    fn reference(&self, r: &mut RefCtx<'_>) -> Result<()> {
        let (x, gamma, beta) = (r.f32(0)?, &r.w(self.gamma)?.data, &r.w(self.beta)?.data);
        r.put_f32(self.apply(x, gamma, beta))
    }
}

impl Groupnorm {
    /// The reference's values: f64 statistics and normalisation, rounded to f32 once.
    pub fn apply(&self, x: &[f32], gamma: &[f32], beta: &[f32]) -> Vec<f32> {
        let (c, hw) = (self.c, self.hw);
        let cg = c / self.groups.max(1);
        let mut out = vec![0f32; x.len()];
        for img in 0..self.n {
            for g in 0..self.groups {
                let span = (img * c + g * cg) * hw..(img * c + (g + 1) * cg) * hw;
                let vals = &x[span.clone()];
                let mean = vals.iter().map(|&v| v as f64).sum::<f64>() / vals.len() as f64;
                let var = vals.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / vals.len() as f64;
                let rstd = 1.0 / (var + self.eps as f64).sqrt();
                for (i, o) in out[span.clone()].iter_mut().enumerate() {
                    let ch = g * cg + i / hw;
                    let y = (x[span.start + i] as f64 - mean) * rstd * gamma[ch] as f64 + beta[ch] as f64;
                    *o = if self.silu { y / (1.0 + (-y).exp()) } else { y } as f32;
                }
            }
        }
        out
    }
}
