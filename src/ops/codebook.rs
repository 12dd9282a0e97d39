//! `codebook`: codes I32 `[n·h·w]` (raster order per image) -> latent `[n, dim, h, w]` from the codebook
//! `[size, dim]` (L2-normalised once at load by `model::vq`). A code outside the codebook is an error.
use super::cost::{activations, Cost, CostAt};
use super::{Io, OpDesc, RefCtx, Scalar, WeightId, WeightNeed};
use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct Codebook {
    pub codebook: WeightId,
    pub n: usize,
    pub dim: usize,
    pub h: usize,
    pub w: usize,
    pub size: usize,
}

impl OpDesc for Codebook {
    const NAME: &'static str = "codebook";

    fn io(&self) -> Io {
        let hw = self.h * self.w;
        Io {
            inputs: vec![(self.n * hw, Scalar::I32)],
            output: (self.n * self.dim * hw, Scalar::F32),
        }
    }

    fn weights(&self) -> Vec<WeightNeed> {
        vec![(self.codebook, vec![Some(self.size), Some(self.dim)])]
    }

    fn cost(&self, _: &CostAt) -> Cost {
        let io = self.io();
        Cost {
            flops: 0.0,
            bytes: activations(&io) + 4.0 * io.output.0 as f64,
        }
    }

    fn reference(&self, r: &mut RefCtx<'_>) -> Result<()> {
        let (codes, cb) = (r.i32(0)?, &r.w(self.codebook)?.data);
        let hw = self.h * self.w;
        let mut out = vec![0f32; self.n * self.dim * hw];
        for (i, &c) in codes.iter().enumerate() {
            if c < 0 || c as usize >= self.size {
                return Err(Error::Invalid(format!(
                    "token id {c} is outside the codebook ({} codes)",
                    self.size
                )));
            }
            let (img, p) = (i / hw, i % hw);
            for d in 0..self.dim {
                out[(img * self.dim + d) * hw + p] = cb[c as usize * self.dim + d];
            }
        }
        r.put_f32(out)
    }
}
