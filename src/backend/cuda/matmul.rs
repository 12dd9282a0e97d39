//! `matmul` on CUDA: `x·Wᵀ (+ residual)` through the GEMM launchers of `gemm.rs` (kernels/gemm.cu), which pick the
//! small-M streaming kernels or the tensor-core tiles by shape.
//! Where the tiled bf16 path would leave SMs idle ([`gemm::split_k`]), k is split across blocks through a
//! workspace.
use super::gemm::{self, gemm, GemmPath};
use super::launch::Dtype;

impl<D: super::device::Device> crate::ops::Exec<crate::ops::matmul::Matmul> for super::CudaBackend<D> {
    fn exec(&mut self, op: &crate::ops::matmul::Matmul, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        let (m, n, k) = (op.m, op.n, op.k);
        if self.act == Dtype::Bf16 && gemm::auto_path(Dtype::Bf16, m) == GemmPath::Tiled(None) {
            let tile = gemm::pick_tile(m, n);
            if let Some(splits) = gemm::split_k(m, n, k, tile) {
                let part = self.ws::<f32>("gemm split-k", gemm::split_k_workspace_len(m, n, k, splits))?;
                // SAFETY: bf16 activations and weight (checked); the output is disjoint from the input and the
                // residual; the workspace is this launch's alone.
                return unsafe {
                    let residual = if op.residual { Some(self.t(a.ins[1])?) } else { None };
                    let (x, y, w) = (self.t(a.ins[0])?, self.t_mut(a.out)?, self.wptr(op.w, "matmul")?);
                    gemm::gemm_split_k(&self.dev, x, w, residual, y, (m, n, k), Some(tile), splits, part)
                };
            }
        }
        // SAFETY: float tensors and the weight are stored as the activation type (checked for the weight); the
        // output is disjoint from the input and the residual.
        super::exec::by_act!(self, T => unsafe {
            let residual = if op.residual { Some(self.t(a.ins[1])?) } else { None };
            let (x, y) = (self.t(a.ins[0])?, self.t_mut(a.out)?);
            gemm::<T, D>(&self.dev, x, self.wptr(op.w, "matmul")?, residual, y, op.m, op.n, op.k)
        })
    }
}
