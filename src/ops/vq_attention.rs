//! `vq_attention`: the VQ AttnBlock after its GroupNorm. Inputs x and normed `[n, c, hw]`; q, k, v = 1×1 convs
//! (with bias) of normed, A = softmax_j(q_i·k_j / √c), o[:, i] = Σ_j A[i, j]·v[:, j], out = x + proj_out(o).
use super::cost::{activations, Cost, CostAt};
use super::{Io, OpDesc, RefCtx, WeightId, WeightNeed};
use crate::Result;

#[derive(Clone, Debug, PartialEq)]
pub struct VqAttention {
    /// (weight `[c, c, 1, 1]`, bias `[c]`) of q, k, v and proj_out.
    pub q: [WeightId; 2],
    pub k: [WeightId; 2],
    pub v: [WeightId; 2],
    pub proj: [WeightId; 2],
    pub n: usize,
    pub c: usize,
    pub hw: usize,
}

impl OpDesc for VqAttention {
    const NAME: &'static str = "vq_attention";

    fn io(&self) -> Io {
        let x = self.n * self.c * self.hw;
        Io::f32(&[x, x], x)
    }

    fn weights(&self) -> Vec<WeightNeed> {
        let c = Some(self.c);
        [self.q, self.k, self.v, self.proj]
            .iter()
            .flat_map(|[w, b]| [(*w, vec![c, c, Some(1), Some(1)]), (*b, vec![c])])
            .collect()
    }

    fn cost(&self, _: &CostAt) -> Cost {
        let (n, c, hw) = (self.n as f64, self.c as f64, self.hw as f64);
        Cost {
            // q, k, v and proj 1×1 convs, then q·k and A·v.
            flops: n * (8.0 * c * c * hw + 4.0 * hw * hw * c),
            bytes: activations(&self.io()) + 4.0 * (4.0 * c * c + 4.0 * c),
        }
    }

    fn examples() -> Vec<(Self, bool)> {
        let w = |i: u32| [WeightId(2 * i), WeightId(2 * i + 1)];
        vec![(VqAttention { q: w(0), k: w(1), v: w(2), proj: w(3), n: 1, c: 32, hw: 16 }, false)]
    }

    fn reference(&self, r: &mut RefCtx<'_>) -> Result<()> {
        let (x, normed) = (r.f32(0)?, r.f32(1)?);
        let (c, hw) = (self.c, self.hw);
        let lin = |ids: [WeightId; 2], src: &[f64]| -> Result<Vec<f64>> {
            let (w, b) = (&r.w(ids[0])?.data, &r.w(ids[1])?.data);
            let mut o = vec![0f64; c * hw];
            for co in 0..c {
                for p in 0..hw {
                    o[co * hw + p] =
                        b[co] as f64 + (0..c).map(|ci| w[co * c + ci] as f64 * src[ci * hw + p]).sum::<f64>();
                }
            }
            Ok(o)
        };
        let mut out = Vec::with_capacity(x.len());
        let scale = (c as f64).powf(-0.5);
        for img in 0..self.n {
            let nm: Vec<f64> = normed[img * c * hw..][..c * hw].iter().map(|&v| v as f64).collect();
            let (q, k, v) = (lin(self.q, &nm)?, lin(self.k, &nm)?, lin(self.v, &nm)?);
            let mut o = vec![0f64; c * hw];
            for i in 0..hw {
                let s: Vec<f64> = (0..hw)
                    .map(|j| (0..c).map(|ch| q[ch * hw + i] * k[ch * hw + j]).sum::<f64>() * scale)
                    .collect();
                let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|&v| (v - mx).exp()).collect();
                let sum: f64 = e.iter().sum();
                for ch in 0..c {
                    o[ch * hw + i] = (0..hw).map(|j| e[j] * v[ch * hw + j]).sum::<f64>() / sum;
                }
            }
            let p = lin(self.proj, &o)?;
            out.extend(
                p.iter()
                    .zip(&x[img * c * hw..][..c * hw])
                    .map(|(&p, &xv)| (xv as f64 + p) as f32),
            );
        }
        r.put_f32(out)
    }
}
