//! `groupnorm_conv`: `conv(groupnorm(x))`, the VQ ResnetBlock's norm (+ swish) feeding a conv, and `norm_out`
//! feeding `conv_out`: x `[n, c_in, h, w]` -> `[n, c_out, oh, ow]` (input 1: the conv's residual, when it has
//! one). Its arithmetic is the `groupnorm` op's then the `conv` op's; fusing them lets the CUDA conv kernels
//! normalise each halo tile of x as it lands in shared memory, so the normalised tensor never reaches memory (on the
//! GPU: one read and one write of each activation fewer per norm; kernels/conv.cu `Halo::normalize`).
use super::conv::{conv2d, Conv};
use super::cost::{Cost, CostAt};
use super::groupnorm::Groupnorm;
use super::{invalid, Io, OpDesc, RefCtx, WeightNeed};
use crate::Result;

#[derive(Clone, Debug, PartialEq)]
pub struct GroupnormConv {
    /// The norm over the conv's input (`n`, `c` = `conv.c_in`, `hw` = `conv.h · conv.w_in`).
    pub norm: Groupnorm,
    pub conv: Conv,
}

impl OpDesc for GroupnormConv {
    const NAME: &'static str = "groupnorm_conv";

    fn validate(&self) -> Result<()> {
        self.norm.validate()?;
        self.conv.validate()?;
        let (nm, cv) = (&self.norm, &self.conv);
        if (nm.n, nm.c, nm.hw) != (cv.n, cv.c_in, cv.h * cv.w_in) {
            let (n, c, h, w) = cv.x_shape();
            return invalid(
                Self::NAME,
                format!("norm over [{}, {}, {}] but conv input [{n}, {c}, {h}, {w}]", nm.n, nm.c, nm.hw),
            );
        }
        Ok(())
    }

    fn io(&self) -> Io {
        self.conv.io()
    }

    fn weights(&self) -> Vec<WeightNeed> {
        let mut w = self.norm.weights();
        w.extend(self.conv.weights());
        w
    }

    /// The conv's traffic (x read once) and both ops' FLOPs.
    fn cost(&self, at: &CostAt) -> Cost {
        let (nm, cv) = (self.norm.cost(at), self.conv.cost(at));
        Cost {
            flops: nm.flops + cv.flops,
            bytes: cv.bytes + 8.0 * self.norm.c as f64,
        }
    }

    /// The normalised input, where a backend stores it (the CPU; CUDA where the conv cannot take the prologue): the
    /// arena slot the unfused pair's intermediate had.
    fn scratch(&self) -> usize {
        self.norm.n * self.norm.c * self.norm.hw
    }

    /// Where x dies here (conv2 of a ResnetBlock, conv_out), the normalised values overwrite it: the CPU normalises
    /// in place, CUDA keeps x and its records apart.
    fn scratch_reuses_input(&self) -> bool {
        true
    }

    fn reference(&self, r: &mut RefCtx<'_>) -> Result<()> {
        let x = r.f32(0)?;
        let (gamma, beta) = (&r.w(self.norm.gamma)?.data, &r.w(self.norm.beta)?.data);
        let normed = self.norm.apply(x, gamma, beta);
        let cv = &self.conv;
        let (w, bias) = (&r.w(cv.w)?.data, &r.w(cv.b)?.data);
        let res = if cv.residual { Some(r.f32(1)?) } else { None };
        let out = conv2d(&normed, cv.x_shape(), w, bias, (cv.c_out, cv.k, cv.stride), cv.pad, cv.out_hw(), res);
        r.put_f32(out)
    }
}
