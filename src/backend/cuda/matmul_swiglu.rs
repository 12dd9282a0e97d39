//! `matmul_swiglu` on CUDA. Where f % 4 == 0 (every LlamaGen FFN): the GEMM with its SwiGLU epilogue
//! ([`gemm_swiglu`]; bf16 on every path, small-m decode kernel, tensor-core tiles and split-K through the same
//! workspace as `matmul`; f32 on the small-m kernel), so the `[m, 2f]` w1|w3 product never reaches memory: at GPT-B
//! batch 64 with CFG (m = 128, f = 2048) 2 MiB of traffic and one launch less per layer. Otherwise (f32 prefill,
//! f % 4 != 0): the product into a workspace through `matmul`'s kernels, then the `swiglu` kernel.
use super::device::Device;
use super::gemm::{self, gemm_swiglu, GemmPath, SMALL_M_MAX};
use super::launch::{DevPtr, Dtype};
use super::swiglu::swiglu;
use crate::ops::matmul_swiglu::MatmulSwiglu;
use crate::Result;

impl<D: Device> crate::ops::Exec<MatmulSwiglu> for super::CudaBackend<D> {
    fn exec(&mut self, op: &MatmulSwiglu, a: &crate::ops::Args<'_>) -> Result<()> {
        let (m, k, f) = (op.m, op.k, op.f);
        let n = 2 * f;
        if f % 4 == 0 && (self.act == Dtype::Bf16 || m <= SMALL_M_MAX) {
            let path = gemm::auto_path(self.act, m);
            let mut split = None;
            if self.act == Dtype::Bf16 && path == GemmPath::Tiled(None) {
                if let Some(s) = gemm::split_k(m, n, k, gemm::pick_tile(m, n)) {
                    split = Some((s, self.ws::<f32>("gemm split-k", gemm::split_k_workspace_len(m, n, k, s))?));
                }
            }
            // SAFETY: float tensors and the weight are stored as the activation type (checked for the weight); the
            // output is disjoint from the input; the workspace is this launch's alone.
            return super::exec::by_act!(self, T => unsafe {
                let (x, y, w) = (self.t::<T>(a.ins[0])?, self.t_mut::<T>(a.out)?, self.wptr::<T>(op.w, "matmul_swiglu")?);
                gemm_swiglu(&self.dev, x, w, y, (m, k, f), path, split)
            });
        }
        let ab = self.workspace::<u32>("matmul_swiglu w1|w3", m * n)?;
        self.linear(op.w, a.ins[0], None, ab, (m, n, k))?;
        // SAFETY: the workspace holds m·2f elements of the activation type; the output is an arena tensor.
        super::exec::by_act!(self, T => unsafe {
            swiglu::<T, D>(&self.dev, DevPtr::<T>::from_raw(ab.0, m * n), self.t_mut(a.out)?, m, f, None)
        })
    }
}
