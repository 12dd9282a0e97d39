//! `conv`: Conv2d with bias, x `[n, c_in, h, w]` -> `[n, c_out, oh, ow]`, square kernel `k`, `stride`, zero padding
//! `pad` = [top, bottom, left, right] (the VQ encoder's downsampling pads only bottom and right); with `residual`,
//! input 1 `[n, c_out, oh, ow]` is added in the epilogue.
use super::cost::{activations, Cost, CostAt};
use super::{Io, OpDesc, RefCtx, WeightId, WeightNeed};
use crate::Result;

#[derive(Clone, Debug, PartialEq)]
pub struct Conv {
    pub w: WeightId,
    pub b: WeightId,
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w_in: usize,
    pub c_out: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: [usize; 4],
    pub residual: bool,
}

impl Conv {
    /// Output height and width.
    pub fn out_hw(&self) -> (usize, usize) {
        let [t, b, l, r] = self.pad;
        (
            (self.h + t + b - self.k) / self.stride + 1,
            (self.w_in + l + r - self.k) / self.stride + 1,
        )
    }

    /// The input as the backends' conv functions take it.
    pub fn x_shape(&self) -> (usize, usize, usize, usize) {
        (self.n, self.c_in, self.h, self.w_in)
    }
}

impl OpDesc for Conv {
    const NAME: &'static str = "conv";

    fn validate(&self) -> Result<()> {
        let [t, b, l, r] = self.pad;
        if self.k == 0 || self.stride == 0 || self.h + t + b < self.k || self.w_in + l + r < self.k {
            let (k, s, h, w, pad) = (self.k, self.stride, self.h, self.w_in, self.pad);
            return super::invalid(Self::NAME, format!("kernel {k}, stride {s} on {h}x{w} padded {pad:?}"));
        }
        Ok(())
    }

    fn io(&self) -> Io {
        let (oh, ow) = self.out_hw();
        let out = self.n * self.c_out * oh * ow;
        let x = self.n * self.c_in * self.h * self.w_in;
        if self.residual {
            Io::f32(&[x, out], out)
        } else {
            Io::f32(&[x], out)
        }
    }

    fn weights(&self) -> Vec<WeightNeed> {
        let k = Some(self.k);
        vec![
            (self.w, vec![Some(self.c_out), Some(self.c_in), k, k]),
            (self.b, vec![Some(self.c_out)]),
        ]
    }

    fn cost(&self, _: &CostAt) -> Cost {
        let io = self.io();
        let (ci, co, kk) = (self.c_in as f64, self.c_out as f64, (self.k * self.k) as f64);
        Cost {
            flops: 2.0 * ci * kk * io.output.0 as f64,
            bytes: activations(&io) + 4.0 * (co * ci * kk + co),
        }
    }

    fn reference(&self, r: &mut RefCtx<'_>) -> Result<()> {
        let (x, w, bias) = (r.f32(0)?, &r.w(self.w)?.data, &r.w(self.b)?.data);
        let res = if self.residual { Some(r.f32(1)?) } else { None };
        let geo = (self.c_out, self.k, self.stride);
        let out = conv2d(x, self.x_shape(), w, bias, geo, self.pad, self.out_hw(), res);
        r.put_f32(out)
    }
}

/// Direct convolution with f64 accumulation: out = conv(x, w) + bias (+ residual), output `[n, co, oh, ow]`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    x: &[f32],
    (n, ci, h, wd): (usize, usize, usize, usize),
    w: &[f32],
    bias: &[f32],
    (co, k, stride): (usize, usize, usize),
    [pt, _, pl, _]: [usize; 4],
    (oh, ow): (usize, usize),
    residual: Option<&[f32]>,
) -> Vec<f32> {
    let mut out = vec![0f32; n * co * oh * ow];
    for img in 0..n {
        for o in 0..co {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias[o] as f64;
                    for c in 0..ci {
                        for ky in 0..k {
                            let iy = (oy * stride + ky) as isize - pt as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for kx in 0..k {
                                let ix = (ox * stride + kx) as isize - pl as isize;
                                if ix < 0 || ix >= wd as isize {
                                    continue;
                                }
                                let xv = x[((img * ci + c) * h + iy as usize) * wd + ix as usize];
                                acc += xv as f64 * w[((o * ci + c) * k + ky) * k + kx] as f64;
                            }
                        }
                    }
                    let at = ((img * co + o) * oh + oy) * ow + ox;
                    out[at] = acc as f32 + residual.map_or(0.0, |r| r[at]);
                }
            }
        }
    }
    out
}
