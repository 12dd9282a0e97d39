//! `copy_rows` launcher: strided row copies, the data movement of `Op::Concat` and `Op::TakeLast`
//! (kernels/copy_rows.cu). Lengths and strides are in elements of `T`; the kernel moves 16-bit units.
use super::kernels::{self, CopyRowsParams};
use super::launch::{check_len, invalid, to_i32, DevPtr, DevPtrMut, Elem, LaunchConfig, Launcher};
use crate::Result;

/// `dst[r·dst_stride + j] = src[r·src_stride + j]` for `r < rows`, `j < len` (pointers already offset to the first
/// element of row 0).
#[allow(clippy::too_many_arguments)]
pub fn copy_rows<T: Elem, L: Launcher + ?Sized>(
    l: &L,
    src: DevPtr<'_, T>,
    src_stride: usize,
    dst: DevPtrMut<'_, T>,
    dst_stride: usize,
    rows: usize,
    len: usize,
) -> Result<()> {
    let op = "copy_rows";
    if rows == 0 || len == 0 {
        return Err(invalid(op, format!("empty copy rows = {rows}, len = {len}")));
    }
    check_len(op, "src", src.len(), (rows - 1) * src_stride + len)?;
    check_len(op, "dst", dst.len(), (rows - 1) * dst_stride + len)?;
    let u = size_of::<T>() / 2;
    let p = CopyRowsParams {
        rows: to_i32(op, "rows", rows)?,
        len: to_i32(op, "len", len * u)?,
        src_stride: to_i32(op, "src stride", src_stride * u)?,
        dst_stride: to_i32(op, "dst stride", dst_stride * u)?,
    };
    let cfg = LaunchConfig::new(
        [
            (len * u).div_ceil(512).clamp(1, 64) as u32,
            rows.clamp(1, 65535) as u32,
            1,
        ],
        [256, 1, 1],
    );
    // SAFETY: any element type is a whole number of 16-bit units.
    unsafe { kernels::copy_rows(l, cfg, src.cast(), dst.cast(), p) }
}

// `concat` and `take_last` are both strided row copies: one kernel, `copy_rows.cu`, serves the two ops.
impl<D: super::device::Device> crate::ops::Exec<crate::ops::take_last::TakeLast> for super::CudaBackend<D> {
    fn exec(&mut self, op: &crate::ops::take_last::TakeLast, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        let (b, l, d) = (op.batch, op.len, op.d);
        // SAFETY: float tensors are stored as the activation type; the output is disjoint from the input, and the
        // source pointer starts inside it (row l − 1 of sequence 0).
        super::exec::by_act!(self, T => unsafe {
            let x: DevPtr<'_, T> = self.t(a.ins[0])?;
            let src = DevPtr::from_raw(x.addr() + ((l - 1) * d * size_of::<T>()) as u64, x.len() - (l - 1) * d);
            copy_rows::<T, D>(&self.dev, src, l * d, self.t_mut(a.out)?, d, b, d)
        })
    }
}

impl<D: super::device::Device> crate::ops::Exec<crate::ops::concat::Concat> for super::CudaBackend<D> {
    fn exec(&mut self, op: &crate::ops::concat::Concat, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        let (b, la, lb, d) = (op.batch, op.la, op.lb, op.d);
        let row = (la + lb) * d;
        // SAFETY: as for take_last; the two copies write disjoint columns of the output rows.
        super::exec::by_act!(self, T => unsafe {
            let o: DevPtrMut<'_, T> = self.t_mut(a.out)?;
            let (oa, on) = (o.addr(), o.len());
            copy_rows::<T, D>(&self.dev, self.t(a.ins[0])?, la * d, DevPtrMut::from_raw(oa, on), row, b, la * d)?;
            let tail = DevPtrMut::from_raw(oa + (la * d * size_of::<T>()) as u64, on - la * d);
            copy_rows::<T, D>(&self.dev, self.t(a.ins[1])?, lb * d, tail, row, b, lb * d)
        })
    }
}
