//! `gelu`: tanh-approximated GELU, elementwise (the t2i caption MLP's activation).
use super::cost::{activations, Cost, CostAt};
use super::{Io, OpDesc, RefCtx};
use crate::Result;

#[derive(Clone, Debug, PartialEq)]
pub struct Gelu {
    pub n: usize,
}

impl OpDesc for Gelu {
    const NAME: &'static str = "gelu";

    fn io(&self) -> Io {
        Io::f32(&[self.n], self.n)
    }

    fn cost(&self, _: &CostAt) -> Cost {
        Cost {
            flops: 8.0 * self.n as f64,
            bytes: activations(&self.io()),
        }
    }

    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, evaluated in f64.
    fn examples() -> Vec<(Self, bool)> {
        vec![(Gelu { n: 2304 }, false), (Gelu { n: 1536 }, true), (Gelu { n: 5 }, false)]
    }

    fn reference(&self, r: &mut RefCtx<'_>) -> Result<()> {
        let c = (2.0 / std::f64::consts::PI).sqrt();
        let y = r
            .f32(0)?
            .iter()
            .map(|&v| {
                let v = v as f64;
                (0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh())) as f32
            })
            .collect();
        r.put_f32(y)
    }
}
