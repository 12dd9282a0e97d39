//! `sampling`: logits F32 `[rows, vocab]` (+ image index I32 `[images]`) -> tokens I32 `[rows]`. With rows =
//! 2·images the second half is the unconditional half: when `step.cfg_active`, `uncond + scale·(cond − uncond)`;
//! then temperature, top-k (ties kept), top-p (shift-right rule), softmax, and the draw with the uniform of the
//! image's own counter RNG stream (seed, image index, step). Both CFG halves receive the same token.
use super::cost::{activations, Cost, CostAt};
use super::{Io, OpDesc, RefCtx, Scalar};
use crate::sample::rng;
use crate::sample::sampler::SamplingParams;
use crate::Result;

#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    pub rows: usize,
    pub vocab: usize,
    pub images: usize,
    pub cfg_scale: f32,
    pub params: SamplingParams,
}

impl OpDesc for Sampling {
    const NAME: &'static str = "sampling";

    fn validate(&self) -> Result<()> {
        if self.vocab == 0 || (self.rows != self.images && self.rows != 2 * self.images) {
            let (r, i, v) = (self.rows, self.images, self.vocab);
            return super::invalid(
                Self::NAME,
                format!("{r} rows for {i} images (1 or 2 each), vocabulary {v}"),
            );
        }
        Ok(())
    }

    fn io(&self) -> Io {
        Io {
            inputs: vec![(self.rows * self.vocab, Scalar::F32), (self.images, Scalar::I32)],
            output: (self.rows, Scalar::I32),
        }
    }

    fn cost(&self, _: &CostAt) -> Cost {
        // One pass over the logits: CFG mix, then the top-k threshold and the softmax on the same rows.
        Cost {
            flops: 4.0 * (self.rows * self.vocab + self.images) as f64,
            bytes: activations(&self.io()),
        }
    }

    fn reference(&self, r: &mut RefCtx<'_>) -> Result<()> {
        let (logits, index) = (r.f32(0)?, r.i32(1)?);
        let (v, b) = (self.vocab, self.images);
        let cfg = self.rows == 2 * b && r.step.cfg_active;
        let mut tokens = vec![0i32; self.rows];
        for i in 0..b {
            let cond = &logits[i * v..][..v];
            let row: Vec<f32> = if cfg {
                let unc = &logits[(b + i) * v..][..v];
                cond.iter()
                    .zip(unc)
                    .map(|(&c, &u)| u + self.cfg_scale * (c - u))
                    .collect()
            } else {
                cond.to_vec()
            };
            let u = rng::uniform(r.step.seed, index[i] as u64, r.step.step);
            let t = draw(&row, &self.params, u) as i32;
            tokens[i] = t;
            if self.rows == 2 * b {
                tokens[b + i] = t;
            }
        }
        r.put_i32(tokens)
    }
}

/// The official filtering and draw on one row, by sorting: the plain form of `sample::sampler::sample`.
pub fn draw(logits: &[f32], p: &SamplingParams, u: f32) -> usize {
    let tau = p.temperature.max(1e-5);
    let z: Vec<f32> = logits.iter().map(|&l| if tau == 1.0 { l } else { l / tau }).collect();
    let v = z.len();
    let mut keep = vec![true; v];
    if p.top_k > 0 && p.top_k < v {
        let mut sorted = z.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let thr = sorted[p.top_k - 1];
        keep.iter_mut().zip(&z).for_each(|(k, &x)| *k = x >= thr);
    }
    if p.top_p < 1.0 {
        // Descending by value, lower id first on ties; keep the shortest prefix whose inclusive cumulative
        // probability exceeds top_p.
        let mut order: Vec<usize> = (0..v).filter(|&i| keep[i]).collect();
        order.sort_by(|&a, &b| z[b].total_cmp(&z[a]).then(a.cmp(&b)));
        let top = z[order[0]] as f64;
        let sum: f64 = order.iter().map(|&i| (z[i] as f64 - top).exp()).sum();
        let mut cum = 0.0;
        let mut cut = order.len();
        for (j, &i) in order.iter().enumerate() {
            cum += (z[i] as f64 - top).exp() / sum;
            if cum as f32 > p.top_p {
                cut = j + 1;
                break;
            }
        }
        keep.iter_mut().for_each(|k| *k = false);
        order[..cut].iter().for_each(|&i| keep[i] = true);
    }
    let mx = (0..v)
        .filter(|&i| keep[i])
        .map(|i| z[i] as f64)
        .fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = (0..v)
        .map(|i| if keep[i] { (z[i] as f64 - mx).exp() } else { 0.0 })
        .collect();
    let target = u as f64 * w.iter().sum::<f64>();
    let mut cum = 0.0;
    for (i, &x) in w.iter().enumerate() {
        cum += x;
        if x > 0.0 && target < cum {
            return i;
        }
    }
    w.iter().rposition(|&x| x > 0.0).unwrap_or(0)
}
