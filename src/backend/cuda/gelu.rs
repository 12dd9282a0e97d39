//! `gelu` launcher: the tanh-approximated GELU of the t2i caption MLP (kernels/gelu.cu; CPU reference
//! `backend::cpu::gelu::gelu_tanh`).
use super::kernels::{self, ElementwiseParams};
use super::launch::{check_len, invalid, to_i32, DevPtr, DevPtrMut, Dtype, Elem, LaunchConfig, Launcher};
use crate::Result;

/// 256 threads per block, enough blocks to cover `n` (capped; the kernel strides over the rest).
pub fn config(n: usize) -> LaunchConfig {
    LaunchConfig::linear(n.div_ceil(256).clamp(1, 4096) as u32, 256)
}

pub fn gelu<T: Elem, L: Launcher + ?Sized>(l: &L, x: DevPtr<'_, T>, y: DevPtrMut<'_, T>, n: usize) -> Result<()> {
    if n == 0 {
        return Err(invalid("gelu", "empty input"));
    }
    check_len("gelu", "x", x.len(), n)?;
    check_len("gelu", "y", y.len(), n)?;
    let p = ElementwiseParams {
        n: to_i32("gelu", "n", n)?,
    };
    // SAFETY: T::DTYPE names the element type of the chosen kernel.
    unsafe {
        match T::DTYPE {
            Dtype::F32 => kernels::gelu_f32(l, config(n), x.cast(), y.cast(), p),
            Dtype::Bf16 => kernels::gelu_bf16(l, config(n), x.cast(), y.cast(), p),
        }
    }
}

impl<D: super::device::Device> crate::ops::Exec<crate::ops::gelu::Gelu> for super::CudaBackend<D> {
    fn exec(&mut self, op: &crate::ops::gelu::Gelu, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        // SAFETY: float tensors are stored as the activation type; the output is disjoint from the input.
        super::exec::by_act!(self, T => unsafe {
            gelu::<T, D>(&self.dev, self.t(a.ins[0])?, self.t_mut(a.out)?, op.n)
        })
    }
}
