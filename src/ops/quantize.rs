//! `quantize`: z `[n, dim, h, w]` -> I32 `[n·h·w]`, the nearest code of the L2-normalised codebook `[size, dim]`
//! to each normalised position vector (`|z|² + |e|² − 2 z·e`, lowest index on ties; spec §9).
use super::cost::{activations, Cost, CostAt};
use super::{Io, OpDesc, RefCtx, Scalar, WeightId, WeightNeed};
use crate::Result;

#[derive(Clone, Debug, PartialEq)]
pub struct Quantize {
    pub codebook: WeightId,
    pub n: usize,
    pub dim: usize,
    pub h: usize,
    pub w: usize,
    pub size: usize,
}

impl OpDesc for Quantize {
    const NAME: &'static str = "quantize";

    fn io(&self) -> Io {
        let hw = self.h * self.w;
        Io {
            inputs: vec![(self.n * self.dim * hw, Scalar::F32)],
            output: (self.n * hw, Scalar::I32),
        }
    }

    fn weights(&self) -> Vec<WeightNeed> {
        vec![(self.codebook, vec![Some(self.size), Some(self.dim)])]
    }

    fn cost(&self, _: &CostAt) -> Cost {
        // Every position against every code: 2·dim FLOPs per (position, code).
        let (positions, codes, dim) = ((self.n * self.h * self.w) as f64, self.size as f64, self.dim as f64);
        Cost {
            flops: 2.0 * positions * codes * dim,
            bytes: activations(&self.io()) + 4.0 * codes * dim,
        }
    }

    fn reference(&self, r: &mut RefCtx<'_>) -> Result<()> {
        let (z, cb) = (r.f32(0)?, &r.w(self.codebook)?.data);
        let (hw, dim) = (self.h * self.w, self.dim);
        let mut out = Vec::with_capacity(self.n * hw);
        for img in 0..self.n {
            for p in 0..hw {
                let v: Vec<f64> = (0..dim).map(|d| z[(img * dim + d) * hw + p] as f64).collect();
                let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
                let v: Vec<f64> = v.iter().map(|x| x / norm).collect();
                let mut best = (f64::INFINITY, 0usize);
                for (j, e) in cb.chunks(dim).enumerate() {
                    let dist: f64 = v.iter().zip(e).map(|(a, &b)| (a - b as f64).powi(2)).sum();
                    if dist < best.0 {
                        best = (dist, j);
                    }
                }
                out.push(best.1 as i32);
            }
        }
        r.put_i32(out)
    }
}
