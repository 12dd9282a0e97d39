//! `concat`: `[batch, la, d]` ++ `[batch, lb, d]` -> `[batch, la + lb, d]` along the sequence axis (the condition
//! embedding before the first image tokens).
use super::cost::{Cost, CostAt};
use super::{Io, OpDesc, RefCtx};
use crate::Result;

#[derive(Clone, Debug, PartialEq)]
pub struct Concat {
    pub batch: usize,
    pub la: usize,
    pub lb: usize,
    pub d: usize,
}

impl OpDesc for Concat {
    const NAME: &'static str = "concat";

    fn io(&self) -> Io {
        let (b, d) = (self.batch, self.d);
        Io::f32(&[b * self.la * d, b * self.lb * d], b * (self.la + self.lb) * d)
    }

    fn cost(&self, _: &CostAt) -> Cost {
        Cost {
            flops: 0.0,
            bytes: 8.0 * self.io().output.0 as f64,
        }
    }

    fn examples() -> Vec<(Self, bool)> {
        vec![(Concat { batch: 2, la: 1, lb: 3, d: 40 }, false), (Concat { batch: 3, la: 2, lb: 1, d: 8 }, true)]
    }

    fn reference(&self, r: &mut RefCtx<'_>) -> Result<()> {
        let (x, y) = (r.f32(0)?, r.f32(1)?);
        let (a, b) = (self.la * self.d, self.lb * self.d);
        let mut o = Vec::with_capacity(self.io().output.0);
        for i in 0..self.batch {
            o.extend_from_slice(&x[i * a..][..a]);
            o.extend_from_slice(&y[i * b..][..b]);
        }
        r.put_f32(o)
    }
}
