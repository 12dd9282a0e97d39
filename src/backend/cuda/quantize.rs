//! `quantize` on CUDA: the nearest-code search of `codebook.rs` (kernels/codebook.cu, with the decode lookup).
use super::codebook::quantize;

impl<D: super::device::Device> crate::ops::Exec<crate::ops::quantize::Quantize> for super::CudaBackend<D> {
    fn exec(&mut self, op: &crate::ops::quantize::Quantize, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        self.f32_only("quantize")?;
        // SAFETY: z f32 (checked above), codes i32.
        unsafe {
            let (z, o) = (self.t(a.ins[0])?, self.t_mut(a.out)?);
            quantize(
                &self.dev,
                z,
                self.wptr(op.codebook, "codebook")?,
                o,
                op.n,
                op.dim,
                op.h,
                op.w,
                op.size,
                None,
            )
        }
    }
}
