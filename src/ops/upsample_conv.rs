//! `upsample_conv`: nearest ×2 upsample then a 3×3 pad-1 conv with bias (the VQ decoder's Upsample), x
//! `[n, c_in, h, w]` -> `[n, c_out, 2h, 2w]`. Backends may fold the weight into four 2×2 phase kernels
//! (`Layout::UpsamplePhases`); the descriptor and the reference see the official `[c_out, c_in, 3, 3]` weight.
use super::conv::conv2d;
use super::cost::{activations, Cost, CostAt};
use super::{Io, OpDesc, RefCtx, WeightId, WeightNeed};
use crate::Result;

#[derive(Clone, Debug, PartialEq)]
pub struct UpsampleConv {
    pub w: WeightId,
    pub b: WeightId,
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w_in: usize,
    pub c_out: usize,
}

impl UpsampleConv {
    pub fn x_shape(&self) -> (usize, usize, usize, usize) {
        (self.n, self.c_in, self.h, self.w_in)
    }
}

impl OpDesc for UpsampleConv {
    const NAME: &'static str = "upsample_conv";

    fn io(&self) -> Io {
        Io::f32(
            &[self.n * self.c_in * self.h * self.w_in],
            self.n * self.c_out * 4 * self.h * self.w_in,
        )
    }

    fn weights(&self) -> Vec<WeightNeed> {
        vec![
            (self.w, vec![Some(self.c_out), Some(self.c_in), Some(3), Some(3)]),
            (self.b, vec![Some(self.c_out)]),
        ]
    }

    fn cost(&self, _: &CostAt) -> Cost {
        // Per output phase only a 2×2 kernel touches distinct inputs (the folded form).
        let io = self.io();
        let (ci, co) = (self.c_in as f64, self.c_out as f64);
        Cost {
            flops: 2.0 * ci * 4.0 * io.output.0 as f64,
            bytes: activations(&io) + 4.0 * (co * ci * 16.0 + co),
        }
    }

    /// Literally: the upsampled image, then the 3×3 conv.
    fn reference(&self, r: &mut RefCtx<'_>) -> Result<()> {
        let (x, w, bias) = (r.f32(0)?, &r.w(self.w)?.data, &r.w(self.b)?.data);
        let (n, c, h, wd) = self.x_shape();
        let mut up = vec![0f32; n * c * 4 * h * wd];
        for (plane, o) in up.chunks_mut(4 * h * wd).enumerate() {
            for y in 0..2 * h {
                for xx in 0..2 * wd {
                    o[y * 2 * wd + xx] = x[(plane * h + y / 2) * wd + xx / 2];
                }
            }
        }
        let geo = (self.c_out, 3, 1);
        let out = conv2d(&up, (n, c, 2 * h, 2 * wd), w, bias, geo, [1; 4], (2 * h, 2 * wd), None);
        r.put_f32(out)
    }
}
