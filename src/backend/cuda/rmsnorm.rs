//! `rmsnorm` launcher: y = x / sqrt(mean(x²) + eps) ⊙ w over `rows` rows of `d` (kernels/rmsnorm.cu; the CPU
//! reference is `backend::cpu::rmsnorm`).
use super::kernels::{self, RmsnormParams};
use super::launch::{check_len, invalid, to_i32, DevPtr, DevPtrMut, Dtype, Elem, LaunchConfig, Launcher};
use crate::Result;

/// One block per row, capped at 65535 blocks (the kernel strides over the rest). Default block: one thread per
/// 16-byte vector of the row, rounded up to a warp, between 32 and 1024 threads.
pub fn config(rows: usize, d: usize, elem_bytes: usize, block: Option<u32>) -> LaunchConfig {
    let vec = 16 / elem_bytes;
    let threads = block.unwrap_or_else(|| (d.div_ceil(vec).div_ceil(32) * 32).clamp(32, 1024) as u32);
    LaunchConfig::linear(rows.clamp(1, 65535) as u32, threads)
}

/// Launches `rmsnorm_f32` or `rmsnorm_bf16` by `T`. `w` is f32 holding values of the model precision. `block`
/// overrides the block size (any 1..=1024; tests sweep it).
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm<T: Elem, L: Launcher + ?Sized>(
    l: &L,
    x: DevPtr<'_, T>,
    w: DevPtr<'_, f32>,
    y: DevPtrMut<'_, T>,
    rows: usize,
    d: usize,
    eps: f32,
    block: Option<u32>,
) -> Result<()> {
    let op = "rmsnorm";
    if rows == 0 || d == 0 {
        return Err(invalid(op, format!("empty shape rows = {rows}, d = {d}")));
    }
    if let Some(b) = block {
        if !(1..=1024).contains(&b) {
            return Err(invalid(op, format!("block size {b} outside 1..=1024")));
        }
    }
    let n = rows.checked_mul(d).ok_or_else(|| invalid(op, "rows·d overflows"))?;
    check_len(op, "x", x.len(), n)?;
    check_len(op, "w", w.len(), d)?;
    check_len(op, "y", y.len(), n)?;
    let p = RmsnormParams {
        rows: to_i32(op, "rows", rows)?,
        d: to_i32(op, "d", d)?,
        eps,
    };
    let cfg = config(rows, d, size_of::<T>(), block);
    // SAFETY: T::DTYPE names the element type the chosen kernel reads and writes.
    unsafe {
        match T::DTYPE {
            Dtype::F32 => kernels::rmsnorm_f32(l, cfg, x.cast(), w, y.cast(), p),
            Dtype::Bf16 => kernels::rmsnorm_bf16(l, cfg, x.cast(), w, y.cast(), p),
        }
    }
}

impl<D: super::device::Device> crate::ops::Exec<crate::ops::rmsnorm::Rmsnorm> for super::CudaBackend<D> {
    fn exec(&mut self, op: &crate::ops::rmsnorm::Rmsnorm, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        let wt = self.wptr::<f32>(op.w, "rmsnorm")?;
        // SAFETY: float tensors are stored as the activation type; the output is disjoint from the input.
        super::exec::by_act!(self, T => unsafe {
            rmsnorm::<T, D>(&self.dev, self.t(a.ins[0])?, wt, self.t_mut(a.out)?, op.rows, op.d, op.eps, None)
        })
    }
}
