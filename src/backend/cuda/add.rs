//! `add` launcher: y = a + b elementwise (kernels/add.cu; CPU: `Op::Add` in backend::cpu::dispatch).
use super::gelu::config;
use super::kernels::{self, ElementwiseParams};
use super::launch::{check_len, invalid, to_i32, DevPtr, DevPtrMut, Dtype, Elem, Launcher};
use crate::Result;

pub fn add<T: Elem, L: Launcher + ?Sized>(
    l: &L,
    a: DevPtr<'_, T>,
    b: DevPtr<'_, T>,
    y: DevPtrMut<'_, T>,
    n: usize,
) -> Result<()> {
    if n == 0 {
        return Err(invalid("add", "empty input"));
    }
    check_len("add", "a", a.len(), n)?;
    check_len("add", "b", b.len(), n)?;
    check_len("add", "y", y.len(), n)?;
    let p = ElementwiseParams {
        n: to_i32("add", "n", n)?,
    };
    // SAFETY: T::DTYPE names the element type of the chosen kernel.
    unsafe {
        match T::DTYPE {
            Dtype::F32 => kernels::add_f32(l, config(n), a.cast(), b.cast(), y.cast(), p),
            Dtype::Bf16 => kernels::add_bf16(l, config(n), a.cast(), b.cast(), y.cast(), p),
        }
    }
}
