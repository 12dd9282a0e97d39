//! `take_last`: `[batch, len, d]` -> `[batch, d]`, the last position of each row (the LM head runs on one row per
//! sequence).
use super::cost::{Cost, CostAt};
use super::{Io, OpDesc, RefCtx};
use crate::Result;

#[derive(Clone, Debug, PartialEq)]
pub struct TakeLast {
    pub batch: usize,
    pub len: usize,
    pub d: usize,
}

impl OpDesc for TakeLast {
    const NAME: &'static str = "take_last";

    fn io(&self) -> Io {
        Io::f32(&[self.batch * self.len * self.d], self.batch * self.d)
    }

    fn cost(&self, _: &CostAt) -> Cost {
        Cost {
            flops: 0.0,
            bytes: 8.0 * (self.batch * self.d) as f64,
        }
    }

    fn examples() -> Vec<(Self, bool)> {
        vec![(TakeLast { batch: 2, len: 5, d: 24 }, false), (TakeLast { batch: 3, len: 1, d: 16 }, true)]
    }

    fn reference(&self, r: &mut RefCtx<'_>) -> Result<()> {
        let x = r.f32(0)?;
        let (l, d) = (self.len, self.d);
        let o = (0..self.batch)
            .flat_map(|i| x[(i * l + l - 1) * d..][..d].iter().copied())
            .collect();
        r.put_f32(o)
    }
}
