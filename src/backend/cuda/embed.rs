//! `embed` launcher: ids -> rows of an embedding table (kernels/embed.cu; the CPU reference is
//! `backend::cpu::embed`). Also the decoder of the error word that `embed` and `codebook` share.
use super::kernels::{self, EmbedParams};
use super::launch::{check_len, invalid, to_i32, DevPtr, DevPtrMut, Dtype, Elem, LaunchConfig, Launcher};
use crate::Result;

/// The bad index recorded in an error word of `embed_*` / `codebook_f32`, read back after the run: `None` when
/// every index was valid, else the offending id (with several: the largest as u32, i.e. negative ids first). The
/// word must be zeroed before the launch (at allocation, and again after an error has been reported).
pub fn bad_index(word: i32) -> Option<i32> {
    (word != 0).then_some(word)
}

/// Grid (column blocks, rows), rows capped at 65535 (the kernel strides over the rest). Block: one thread per
/// 16-byte vector of a row (d/4 f32, d/8 bf16), rounded up to a warp, 32..=256; columns split over blocks beyond.
pub fn config(rows: usize, d: usize, elem_bytes: usize, block: Option<u32>) -> LaunchConfig {
    let vec = 16 / elem_bytes;
    let units = if d.is_multiple_of(vec) { d / vec } else { d };
    let threads = block.unwrap_or_else(|| (units.div_ceil(32) * 32).clamp(32, 256) as u32);
    let gx = units.div_ceil(threads as usize).clamp(1, 65535) as u32;
    LaunchConfig::new([gx, rows.clamp(1, 65535) as u32, 1], [threads, 1, 1])
}

/// Launches `embed_f32` or `embed_bf16` by `T`: `out[r] = table[ids[r]]` for `rows` ids into a table of `n` rows
/// of `d`. An id outside `0..n` gets a zero row and is recorded in `err` (one i32, zeroed by the caller; decode it
/// with [`bad_index`] and report `id X is outside <table>`): the launch itself returns Ok. `block` overrides the
/// block size (any 1..=1024; tests sweep it).
#[allow(clippy::too_many_arguments)]
pub fn embed<T: Elem, L: Launcher + ?Sized>(
    l: &L,
    ids: DevPtr<'_, i32>,
    table: DevPtr<'_, T>,
    out: DevPtrMut<'_, T>,
    err: DevPtrMut<'_, i32>,
    rows: usize,
    n: usize,
    d: usize,
    block: Option<u32>,
) -> Result<()> {
    let op = "embed";
    if rows == 0 || n == 0 || d == 0 {
        return Err(invalid(op, format!("empty shape rows = {rows}, n = {n}, d = {d}")));
    }
    if let Some(b) = block {
        if !(1..=1024).contains(&b) {
            return Err(invalid(op, format!("block size {b} outside 1..=1024")));
        }
    }
    let n_out = rows.checked_mul(d).ok_or_else(|| invalid(op, "rows·d overflows"))?;
    let n_tab = n.checked_mul(d).ok_or_else(|| invalid(op, "n·d overflows"))?;
    check_len(op, "ids", ids.len(), rows)?;
    check_len(op, "table", table.len(), n_tab)?;
    check_len(op, "out", out.len(), n_out)?;
    check_len(op, "err", err.len(), 1)?;
    let p = EmbedParams {
        rows: to_i32(op, "rows", rows)?,
        n: to_i32(op, "n", n)?,
        d: to_i32(op, "d", d)?,
    };
    let cfg = config(rows, d, size_of::<T>(), block);
    // SAFETY: T::DTYPE names the element type the chosen kernel reads and writes.
    unsafe {
        match T::DTYPE {
            Dtype::F32 => kernels::embed_f32(l, cfg, ids, table.cast(), out.cast(), err, p),
            Dtype::Bf16 => kernels::embed_bf16(l, cfg, ids, table.cast(), out.cast(), err, p),
        }
    }
}

impl<D: super::device::Device> crate::ops::Exec<crate::ops::embed::Embed> for super::CudaBackend<D> {
    fn exec(&mut self, op: &crate::ops::embed::Embed, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        let n = self.w(op.table).shape[0];
        let err = self.err_word(super::exec::ERR_EMBED, op.table);
        // SAFETY: ids are i32, the output the activation type; the table is stored as the activation type (checked).
        super::exec::by_act!(self, T => unsafe {
            let (ids, o) = (self.t(a.ins[0])?, self.t_mut(a.out)?);
            embed::<T, D>(&self.dev, ids, self.wptr(op.table, "embed")?, o, err, op.rows, n, op.d, None)
        })
    }
}
