//! `groupnorm_conv` on the CPU: `groupnorm` into the node's scratch tensor (in place where the planner gave it x's
//! bytes: x dies here), then `conv` from it. The two passes are what the unfused pair did (bit-identical results, and
//! no more arena than the pair's);
//! the Winograd / packed conv reads its input tile by tile, and the norm's two reads and one write are a small share
//! of a 3×3 conv's time here.
use super::groupnorm::{groupnorm, groupnorm_in_place};
use crate::Error;

impl crate::ops::Exec<crate::ops::groupnorm_conv::GroupnormConv> for super::CpuBackend {
    fn exec(&mut self, op: &crate::ops::groupnorm_conv::GroupnormConv, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        let v = self.views(a)?;
        let (nm, cv) = (&op.norm, &op.conv);
        let scratch = a
            .scratch
            .filter(|s| s.numel >= nm.n * nm.c * nm.hw)
            .ok_or_else(|| Error::Invalid("groupnorm_conv: no scratch tensor for the normalised input".into()))?;
        let (g, b) = (
            self.weight_f32(nm.gamma, "groupnorm_conv")?,
            self.weight_f32(nm.beta, "groupnorm_conv")?,
        );
        let (fam, normed) = (self.kernels, v.f32_mut(scratch));
        if scratch == a.ins[0] {
            groupnorm_in_place(normed, nm.n, nm.c, nm.hw, nm.groups, nm.eps, g, b, nm.silu, fam);
        } else {
            groupnorm(v.f32(a.ins[0]), nm.n, nm.c, nm.hw, nm.groups, nm.eps, g, b, nm.silu, fam, normed);
        }
        self.conv_node(cv, &v, a, normed)
    }
}
