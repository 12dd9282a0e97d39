//! `swiglu`: `[rows, 2f]` (the w1|w3 outputs side by side) -> `silu(a) · b`, `[rows, f]`. In bf16 silu(a) is rounded
//! before the product (the official `F.silu(w1(x)) * w3(x)`).
use super::cost::{activations, Cost, CostAt};
use super::{Io, OpDesc, RefCtx};
use crate::Result;

#[derive(Clone, Debug, PartialEq)]
pub struct Swiglu {
    pub rows: usize,
    pub f: usize,
}

impl OpDesc for Swiglu {
    const NAME: &'static str = "swiglu";

    fn io(&self) -> Io {
        Io::f32(&[self.rows * 2 * self.f], self.rows * self.f)
    }

    fn cost(&self, _: &CostAt) -> Cost {
        Cost {
            flops: 8.0 * (self.rows * self.f) as f64,
            bytes: activations(&self.io()),
        }
    }

    fn examples() -> Vec<(Self, bool)> {
        vec![(Swiglu { rows: 3, f: 40 }, false), (Swiglu { rows: 4, f: 24 }, true)]
    }

    fn reference(&self, r: &mut RefCtx<'_>) -> Result<()> {
        let ab = r.f32(0)?;
        let f = self.f;
        let mut y = Vec::with_capacity(self.rows * f);
        for row in ab.chunks(2 * f) {
            for j in 0..f {
                let a = row[j] as f64;
                let silu = (a / (1.0 + (-a).exp())) as f32;
                y.push(r.r(silu) * row[f + j]);
            }
        }
        r.put_f32(y)
    }
}
