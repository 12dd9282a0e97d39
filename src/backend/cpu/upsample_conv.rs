//! `upsample_conv`: nearest ×2 then 3×3, by output phases or Winograd (the arithmetic lives with the other convs in
//! `conv/`, which share the weight preparation).
use crate::ops::{upsample_conv::UpsampleConv, Args, Exec};

impl Exec<UpsampleConv> for super::CpuBackend {
    fn exec(&mut self, op: &UpsampleConv, a: &Args<'_>) -> crate::Result<()> {
        let v = self.views(a)?;
        let wt = self.w(op.w);
        let (w, b) = (
            self.weight_f32(op.w, "upsample conv")?,
            self.weight_f32(op.b, "upsample bias")?,
        );
        super::conv::upsample_prepared(wt.conv, w, v.f32(a.ins[0]), op.x_shape(), op.c_out, b, v.f32_mut(a.out))
            .map_err(|e| crate::Error::tensor(&wt.name, e))
    }
}
