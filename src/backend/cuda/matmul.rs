//! `matmul` on CUDA: `x·Wᵀ (+ residual)` through the GEMM launchers of `gemm.rs` (kernels/gemm.cu), which pick the
//! small-M streaming kernels or the tensor-core tiles by shape.
use super::gemm::gemm;

impl<D: super::device::Device> crate::ops::Exec<crate::ops::matmul::Matmul> for super::CudaBackend<D> {
    fn exec(&mut self, op: &crate::ops::matmul::Matmul, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        // SAFETY: float tensors and the weight are stored as the activation type (checked for the weight); the
        // output is disjoint from the input and the residual.
        super::exec::by_act!(self, T => unsafe {
            let residual = if op.residual { Some(self.t(a.ins[1])?) } else { None };
            let (x, y) = (self.t(a.ins[0])?, self.t_mut(a.out)?);
            gemm::<T, D>(&self.dev, x, self.wptr(op.w, "matmul")?, residual, y, op.m, op.n, op.k)
        })
    }
}
