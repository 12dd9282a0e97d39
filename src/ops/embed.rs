//! `embed`: ids (I32 `[rows]`) -> rows of a table `[table_rows, d]` (token and class embeddings).
use super::cost::{Cost, CostAt};
use super::{Io, OpDesc, RefCtx, Scalar, WeightId, WeightNeed};
use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct Embed {
    pub table: WeightId,
    pub rows: usize,
    pub d: usize,
}

impl OpDesc for Embed {
    const NAME: &'static str = "embed";

    fn io(&self) -> Io {
        Io {
            inputs: vec![(self.rows, Scalar::I32)],
            output: (self.rows * self.d, Scalar::F32),
        }
    }

    fn weights(&self) -> Vec<WeightNeed> {
        vec![(self.table, vec![None, Some(self.d)])]
    }

    fn cost(&self, at: &CostAt) -> Cost {
        let out = (self.rows * self.d) as f64;
        Cost {
            flops: 0.0,
            bytes: out * (at.wb() + 4.0) + 4.0 * self.rows as f64,
        }
    }

    /// An id outside the table is an error naming the table.
    fn reference(&self, r: &mut RefCtx<'_>) -> Result<()> {
        let (ids, t) = (r.i32(0)?, r.w(self.table)?);
        let n = t.shape[0];
        let mut out = Vec::with_capacity(self.rows * self.d);
        for &id in ids {
            if id < 0 || id as usize >= n {
                return Err(Error::Invalid(format!("id {id} is outside `{}` ({n} rows)", t.name)));
            }
            out.extend_from_slice(&t.data[id as usize * self.d..][..self.d]);
        }
        r.put_f32(out)
    }
}
