//! `matmul_swiglu` on the CPU: the w1|w3 product into the backend's `ffn` scratch, then `swiglu`. The CPU matmul
//! is bound by the weight stream, and the `[m, 2f]` intermediate of a decode step (2 × 2f floats) stays in L2, so
//! fusing the product into the dot loops would save no memory pass worth its complexity.
use super::matmul::matmul;
use super::swiglu::swiglu;

impl crate::ops::Exec<crate::ops::matmul_swiglu::MatmulSwiglu> for super::CpuBackend {
    fn exec(&mut self, op: &crate::ops::matmul_swiglu::MatmulSwiglu, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        let v = self.views(a)?;
        let n = 2 * op.f;
        self.ffn.resize(op.m * n, 0.0);
        let wt = &self.weights[op.w.0 as usize];
        let round = self.round;
        matmul(self.kernels, v.f32(a.ins[0]), op.m, op.k, wt.as_ref(), n, None, round, &mut self.mm, &mut self.ffn);
        swiglu(&self.ffn, op.f, round, self.kernels, v.f32_mut(a.out));
        Ok(())
    }
}
