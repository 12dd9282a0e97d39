//! `upsample_conv` on CUDA: the phase-folded implicit GEMM of `conv.rs` (kernels/conv.cu), f32 or TF32 tiles.
use super::conv::upsample_conv;

impl<D: super::device::Device> crate::ops::Exec<crate::ops::upsample_conv::UpsampleConv> for super::CudaBackend<D> {
    fn exec(&mut self, op: &crate::ops::upsample_conv::UpsampleConv, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        self.f32_only("upsample_conv")?;
        let (wt, bias) = (self.wptr(op.w, "upsample conv")?, self.wptr(op.b, "upsample bias")?);
        // SAFETY: f32 activations (checked above); the output is disjoint from the input.
        unsafe {
            let (x, o) = (self.t(a.ins[0])?, self.t_mut(a.out)?);
            upsample_conv(&self.dev, x, wt, Some(bias), o, op.x_shape(), op.c_out, self.conv_tile)
        }
    }
}
