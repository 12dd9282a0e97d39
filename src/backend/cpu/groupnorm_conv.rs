//! `groupnorm_conv` on the CPU: `groupnorm` into the backend's `normed` scratch, then `conv` from it. The two
//! passes are what the unfused pair did (bit-identical results); the Winograd / packed conv reads its input tile
//! by tile, and the norm's two reads and one write are a small share of a 3×3 conv's time here.
use super::conv::conv_prepared;
use super::groupnorm::groupnorm;

impl crate::ops::Exec<crate::ops::groupnorm_conv::GroupnormConv> for super::CpuBackend {
    fn exec(&mut self, op: &crate::ops::groupnorm_conv::GroupnormConv, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        let mut normed = std::mem::take(&mut self.normed);
        let v = self.views(a)?;
        let (nm, cv) = (&op.norm, &op.conv);
        let (g, b) = (
            self.weight_f32(nm.gamma, "groupnorm_conv")?,
            self.weight_f32(nm.beta, "groupnorm_conv")?,
        );
        let x = v.f32(a.ins[0]);
        normed.resize(x.len(), 0.0);
        groupnorm(x, nm.n, nm.c, nm.hw, nm.groups, nm.eps, g, b, nm.silu, self.kernels, &mut normed);
        let wt = self.w(cv.w);
        let (w, bias) = (self.weight_f32(cv.w, "conv")?, self.weight_f32(cv.b, "conv bias")?);
        let residual = cv.residual.then(|| v.f32(a.ins[1]));
        let geo = (cv.c_out, cv.k, cv.stride, cv.pad);
        let out = v.f32_mut(a.out);
        let done = conv_prepared(wt.conv, w, &normed, cv.x_shape(), geo, Some(bias), residual, out)
            .map_err(|e| crate::Error::tensor(&wt.name, e));
        self.normed = normed;
        done
    }
}
