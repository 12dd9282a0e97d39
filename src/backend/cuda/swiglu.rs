//! `swiglu` launcher: out = silu(a) · b with rows `[2f]` = a | b (kernels/swiglu.cu; the CPU reference is
//! `backend::cpu::swiglu`).
use super::kernels::{self, SwigluParams};
use super::launch::{check_len, invalid, to_i32, DevPtr, DevPtrMut, Dtype, Elem, LaunchConfig, Launcher};
use crate::Result;

/// grid.y over rows (at most 65535, the kernel strides over the rest), grid.x × block over the f columns in
/// 16-byte vectors (256 threads unless overridden).
pub fn config(rows: usize, f: usize, elem_bytes: usize, block: Option<u32>) -> LaunchConfig {
    let threads = block.unwrap_or(256);
    let vec = 16 / elem_bytes;
    let gx = f.div_ceil(vec).div_ceil(threads as usize).clamp(1, 65535) as u32;
    LaunchConfig::new([gx, rows.clamp(1, 65535) as u32, 1], [threads, 1, 1])
}

/// Launches `swiglu_f32` or `swiglu_bf16` by `T`: `ab` is `[rows, 2f]`, `out` is `[rows, f]`.
pub fn swiglu<T: Elem, L: Launcher + ?Sized>(
    l: &L,
    ab: DevPtr<'_, T>,
    out: DevPtrMut<'_, T>,
    rows: usize,
    f: usize,
    block: Option<u32>,
) -> Result<()> {
    let op = "swiglu";
    if rows == 0 || f == 0 {
        return Err(invalid(op, format!("empty shape rows = {rows}, f = {f}")));
    }
    if let Some(b) = block {
        if !(1..=1024).contains(&b) {
            return Err(invalid(op, format!("block size {b} outside 1..=1024")));
        }
    }
    let n = rows.checked_mul(f).ok_or_else(|| invalid(op, "rows·f overflows"))?;
    check_len(op, "ab", ab.len(), 2 * n)?;
    check_len(op, "out", out.len(), n)?;
    let p = SwigluParams {
        rows: to_i32(op, "rows", rows)?,
        f: to_i32(op, "f", to_i32(op, "2f", 2 * f)? as usize / 2)?,
    };
    let cfg = config(rows, f, size_of::<T>(), block);
    // SAFETY: T::DTYPE names the element type the chosen kernel reads and writes.
    unsafe {
        match T::DTYPE {
            Dtype::F32 => kernels::swiglu_f32(l, cfg, ab.cast(), out.cast(), p),
            Dtype::Bf16 => kernels::swiglu_bf16(l, cfg, ab.cast(), out.cast(), p),
        }
    }
}

impl<D: super::device::Device> crate::ops::Exec<crate::ops::swiglu::Swiglu> for super::CudaBackend<D> {
    fn exec(&mut self, op: &crate::ops::swiglu::Swiglu, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        // SAFETY: float tensors are stored as the activation type; the output is disjoint from the input.
        super::exec::by_act!(self, T => unsafe {
            swiglu::<T, D>(&self.dev, self.t(a.ins[0])?, self.t_mut(a.out)?, op.rows, op.f, None)
        })
    }
}
