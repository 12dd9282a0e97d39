//! `attention`: q `[rows, len, D]` over the KV cache of `layer` -> `[rows, len, D]`: query l of row b at position
//! p = pos_b + l attends over cached keys 0..=p, scale 1/√d_h, exact softmax.
//!
//! Inputs: q; with `mask = Some(t)` the condition-key mask F32 `[rows, t]` (t2i padding, 1 = visible; a query
//! always sees itself, the official forced diagonal); with `per_row` the row table last, as for
//! [`super::rope::Rope`].
use super::cost::{activations, Cost, CostAt};
use super::{Io, OpDesc, Placement, RefCtx, Scalar};
use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct Attention {
    pub layer: usize,
    pub rows: usize,
    pub len: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Condition length of the key mask input, when there is one.
    pub mask: Option<usize>,
    pub per_row: bool,
}

impl Attention {
    pub fn d(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Input indices of the mask and the row table, when present.
    pub fn extra_inputs(&self) -> (Option<usize>, Option<usize>) {
        let mask = self.mask.map(|_| 1);
        let rows = self.per_row.then_some(1 + usize::from(self.mask.is_some()));
        (mask, rows)
    }
}

impl OpDesc for Attention {
    const NAME: &'static str = "attention";

    fn validate(&self) -> Result<()> {
        if self.head_dim == 0 || self.heads == 0 {
            return super::invalid(Self::NAME, format!("{} heads of {}", self.heads, self.head_dim));
        }
        Ok(())
    }

    fn io(&self) -> Io {
        let n = self.rows * self.len * self.d();
        let mut inputs = vec![(n, Scalar::F32)];
        if let Some(t) = self.mask {
            inputs.push((self.rows * t, Scalar::F32));
        }
        if self.per_row {
            inputs.push((2 * self.rows, Scalar::I32));
        }
        Io {
            inputs,
            output: (n, Scalar::F32),
        }
    }

    fn cost(&self, at: &CostAt) -> Cost {
        // Query l at position pos + l reads keys and values 0..=pos + l.
        let (b, l, d) = (self.rows as f64, self.len as f64, self.d() as f64);
        let keys: f64 = (0..self.len).map(|i| (at.pos + i + 1) as f64).sum();
        Cost {
            flops: 4.0 * b * d * keys,
            bytes: activations(&self.io()) + 2.0 * b * (at.pos as f64 + l) * d * at.wb(),
        }
    }

    fn reference(&self, r: &mut RefCtx<'_>) -> Result<()> {
        let q = r.f32(0)?;
        let (mi, ri) = self.extra_inputs();
        let mask = match mi {
            Some(i) => Some(r.f32(i)?),
            None => None,
        };
        let rows_table = match ri {
            Some(i) => Some(r.i32(i)?),
            None => None,
        };
        let place = Placement::of(rows_table, r.step);
        let (d, hd, t) = (self.d(), self.head_dim, self.mask.unwrap_or(0));
        let kv = r.kv()?;
        if kv.spec.heads != self.heads || kv.spec.head_dim != hd {
            return Err(Error::Invalid(
                "attention: the KV cache has another head geometry".into(),
            ));
        }
        place.check(self.rows, self.len, kv.spec.batch, kv.spec.seq)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut out = vec![0f32; self.rows * self.len * d];
        for b in 0..self.rows {
            let (slot, pos) = place.at(b);
            for l in 0..self.len {
                let p = pos + l;
                for h in 0..self.heads {
                    let qv = &q[(b * self.len + l) * d + h * hd..][..hd];
                    let visible = |k: usize| match mask {
                        Some(m) if k < t && k != p => m[b * t + k] != 0.0,
                        _ => true,
                    };
                    let s: Vec<f64> = (0..=p)
                        .map(|k| {
                            if !visible(k) {
                                return f64::NEG_INFINITY;
                            }
                            let ko = kv.at(self.layer, 0, slot, h, k);
                            let dot: f64 = (0..hd).map(|j| qv[j] as f64 * kv.data[ko + j] as f64).sum();
                            dot * scale
                        })
                        .collect();
                    let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|&x| (x - mx).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    let dst = &mut out[(b * self.len + l) * d + h * hd..][..hd];
                    for (j, o) in dst.iter_mut().enumerate() {
                        let acc: f64 = (0..=p)
                            .map(|k| e[k] * kv.data[kv.at(self.layer, 1, slot, h, k) + j] as f64)
                            .sum();
                        *o = (acc / sum) as f32;
                    }
                }
            }
        }
        r.put_f32(out)
    }
}
