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
