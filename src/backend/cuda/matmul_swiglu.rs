//! `matmul_swiglu` on CUDA. bf16 with f % 4 == 0 (every LlamaGen FFN): the bf16 GEMM with its SwiGLU epilogue
//! ([`gemm_swiglu`]; decode shapes on `gemm_small_bf16`, larger m on the tensor-core tiles, split-K through the
//! same workspace as `matmul`), so the `[m, 2f]` w1|w3 product never reaches memory: at GPT-B batch 64 with CFG
//! (m = 128, f = 2048) 1 MiB written and read back per layer and one launch fewer. Otherwise (f32 activations):
//! the product into a workspace through `matmul`'s kernels, then the `swiglu` kernel.
use super::device::Device;
use super::gemm::{self, gemm_swiglu, GemmPath};
use super::launch::{DevPtr, Dtype};
use super::swiglu::swiglu;
use crate::ops::matmul_swiglu::MatmulSwiglu;
use crate::Result;

impl<D: Device> crate::ops::Exec<MatmulSwiglu> for super::CudaBackend<D> {
    fn exec(&mut self, op: &MatmulSwiglu, a: &crate::ops::Args<'_>) -> Result<()> {
        let (m, k, f) = (op.m, op.k, op.f);
        let n = 2 * f;
        if self.act == Dtype::Bf16 && f % 4 == 0 {
            let path = gemm::auto_path(Dtype::Bf16, m);
            let mut split = None;
            if path == GemmPath::Tiled(None) {
                if let Some(s) = gemm::split_k(m, n, k, gemm::pick_tile(m, n)) {
                    split = Some((s, self.ws::<f32>("gemm split-k", gemm::split_k_workspace_len(m, n, k, s))?));
                }
            }
            // SAFETY: bf16 activations and weight (checked); the output is disjoint from the input; the workspace
            // is this launch's alone.
            return unsafe {
                let (x, y, w) = (self.t(a.ins[0])?, self.t_mut(a.out)?, self.wptr(op.w, "matmul_swiglu")?);
                gemm_swiglu(&self.dev, x, w, y, (m, k, f), path, split)
            };
        }
        let ab = self.workspace::<u32>("matmul_swiglu w1|w3", m * n)?;
        self.linear(op.w, a.ins[0], None, ab, (m, n, k))?;
        // SAFETY: the workspace holds m·2f elements of the activation type; the output is an arena tensor.
        super::exec::by_act!(self, T => unsafe {
            swiglu::<T, D>(&self.dev, DevPtr::<T>::from_raw(ab.0, m * n), self.t_mut(a.out)?, m, f, None)
        })
    }
}
