//! `matmul` on CUDA: `x·Wᵀ (+ residual)` through the GEMM launchers of `gemm.rs` (kernels/gemm.cu), which pick the
//! small-M streaming kernels or the tensor-core tiles by shape.
//! Where the tiled bf16 path would leave SMs idle ([`gemm::split_k`]), k is split across blocks through a
//! workspace.
use super::device::Device;
use super::gemm::{self, gemm, GemmPath};
use super::launch::{DevPtrMut, Dtype};
use crate::ops::{TensorRef, WeightId};
use crate::Result;

impl<D: Device> super::CudaBackend<D> {
    /// `y = x·Wᵀ (+ residual)` in the activation type, `(m, n, k)`; `y` by address and element count: an arena
    /// tensor or a workspace, disjoint from `x` and the residual (`matmul_swiglu` writes its w1|w3 product to one).
    pub(super) fn linear(
        &mut self,
        w: WeightId,
        x: TensorRef,
        residual: Option<TensorRef>,
        (y, y_len): (u64, usize),
        (m, n, k): (usize, usize, usize),
    ) -> Result<()> {
        if self.act == Dtype::Bf16 && gemm::auto_path(Dtype::Bf16, m) == GemmPath::Tiled(None) {
            let tile = gemm::pick_tile(m, n);
            if let Some(splits) = gemm::split_k(m, n, k, tile) {
                let part = self.ws::<f32>("gemm split-k", gemm::split_k_workspace_len(m, n, k, splits))?;
                // SAFETY: bf16 activations and weight (checked); the caller keeps y disjoint from x and the
                // residual; the workspace is this launch's alone.
                return unsafe {
                    let residual = residual.map(|r| self.t(r)).transpose()?;
                    let (x, y, w) = (self.t(x)?, DevPtrMut::from_raw(y, y_len), self.wptr(w, "matmul")?);
                    gemm::gemm_split_k(&self.dev, x, w, residual, y, (m, n, k), Some(tile), splits, part)
                };
            }
        }
        // SAFETY: float tensors and the weight are stored as the activation type (checked for the weight); the
        // caller keeps y disjoint from x and the residual.
        super::exec::by_act!(self, T => unsafe {
            let residual = residual.map(|r| self.t(r)).transpose()?;
            let (x, y) = (self.t(x)?, DevPtrMut::from_raw(y, y_len));
            gemm::<T, D>(&self.dev, x, self.wptr(w, "matmul")?, residual, y, m, n, k)
        })
    }
}

impl<D: Device> crate::ops::Exec<crate::ops::matmul::Matmul> for super::CudaBackend<D> {
    fn exec(&mut self, op: &crate::ops::matmul::Matmul, a: &crate::ops::Args<'_>) -> Result<()> {
        let residual = op.residual.then(|| a.ins[1]);
        let y = self.slot(a.out)?;
        self.linear(op.w, a.ins[0], residual, y, (op.m, op.n, op.k))
    }
}
