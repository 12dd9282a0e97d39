//! `rope`: qkv `[rows, len, 3D]` -> rotated q `[rows, len, D]`; rotated k and v are written into the KV cache of
//! `layer`. 2D rotary embedding over interleaved pairs with the table `[positions, d_h/2, 2]` (cos, sin) of
//! `model::rope_table`; condition positions have zero table rows, so their q and k are exact zeros (the official
//! behaviour).
//!
//! Inputs: qkv, then with `per_row` the row table I32 `[rows, 2]` of (cache slot, first position) (continuous
//! batching, [`Placement::PerRow`]); without it, row b is cache row b at positions `step.pos..`.
use super::cost::{activations, Cost, CostAt};
use super::{Io, OpDesc, Placement, RefCtx, Scalar, WeightId, WeightNeed};
use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    pub layer: usize,
    pub table: WeightId,
    pub rows: usize,
    pub len: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub per_row: bool,
}

impl Rope {
    pub fn d(&self) -> usize {
        self.heads * self.head_dim
    }
}

impl OpDesc for Rope {
    const NAME: &'static str = "rope";

    /// The 2D rotation splits a head into two halves of interleaved pairs.
    fn validate(&self) -> Result<()> {
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(4) {
            return super::invalid(Self::NAME, format!("head dim {} is not a multiple of 4", self.head_dim));
        }
        Ok(())
    }

    fn io(&self) -> Io {
        let rl = self.rows * self.len;
        let mut inputs = vec![(rl * 3 * self.d(), Scalar::F32)];
        if self.per_row {
            inputs.push((2 * self.rows, Scalar::I32));
        }
        Io {
            inputs,
            output: (rl * self.d(), Scalar::F32),
        }
    }

    fn weights(&self) -> Vec<WeightNeed> {
        vec![(self.table, vec![None])]
    }

    fn cost(&self, at: &CostAt) -> Cost {
        // qkv in, rotated q out, rotated k and v written to the cache.
        let out = (self.rows * self.len * self.d()) as f64;
        Cost {
            flops: 6.0 * out,
            bytes: activations(&self.io()) + 2.0 * out * at.wb(),
        }
    }

    fn reference(&self, r: &mut RefCtx<'_>) -> Result<()> {
        let (qkv, table) = (r.f32(0)?, &r.w(self.table)?.data);
        let rows_table = if self.per_row { Some(r.i32(1)?) } else { None };
        let place = Placement::of(rows_table, r.step);
        let (d, hd) = (self.d(), self.head_dim);
        let round = r.round;
        let rnd = |x: f32| if round { super::round_bf16(x) } else { x };
        let kv = r.kv()?;
        if kv.spec.heads != self.heads || kv.spec.head_dim != hd {
            return Err(Error::Invalid("rope: the KV cache has another head geometry".into()));
        }
        place.check(
            self.rows,
            self.len,
            kv.spec.batch,
            kv.spec.seq.min(table.len() / hd.max(1)),
        )?;
        let rotate = |x: &[f32], cs: &[f32]| -> Vec<f32> {
            let mut y = vec![0f32; x.len()];
            for j in 0..x.len() / 2 {
                let (x0, x1, c, s) = (
                    x[2 * j] as f64,
                    x[2 * j + 1] as f64,
                    cs[2 * j] as f64,
                    cs[2 * j + 1] as f64,
                );
                y[2 * j] = (x0 * c - x1 * s) as f32;
                y[2 * j + 1] = (x1 * c + x0 * s) as f32;
            }
            y
        };
        let mut q = vec![0f32; self.rows * self.len * d];
        for b in 0..self.rows {
            let (slot, pos) = place.at(b);
            for l in 0..self.len {
                let p = pos + l;
                let row = &qkv[(b * self.len + l) * 3 * d..][..3 * d];
                let cs = &table[p * hd..][..hd];
                for h in 0..self.heads {
                    let hs = h * hd;
                    q[(b * self.len + l) * d + hs..][..hd].copy_from_slice(&rotate(&row[hs..hs + hd], cs));
                    let k = rotate(&row[d + hs..d + hs + hd], cs);
                    let (ko, vo) = (kv.at(self.layer, 0, slot, h, p), kv.at(self.layer, 1, slot, h, p));
                    for j in 0..hd {
                        kv.data[ko + j] = rnd(k[j]);
                        kv.data[vo + j] = rnd(row[2 * d + hs + j]);
                    }
                }
            }
        }
        r.put_f32(q)
    }
}
