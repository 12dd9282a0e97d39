//! `rope` launcher: 2-D rotary embedding of q and k fused with the KV-cache write (kernels/rope.cu; the CPU
//! reference is `backend::cpu::rope::rope`, the cache layout `backend::cpu::kv_cache`).
use super::kernels::{self, RopeParams, StepState};
use super::launch::{check_len, invalid, to_i32, DevPtr, DevPtrMut, Dtype, Elem, LaunchConfig, Launcher};
use crate::ops::KvSpec;
use crate::Result;

/// Threads per block: one thread per 4 features; 128 splits a token's 3·D/4 items (960 at GPT-XL, 576 at GPT-B)
/// over several blocks, so a decode step of 16 tokens still fills ~100 SMs.
pub const BLOCK: u32 = 128;

/// Grid (items of a token / block, tokens), both capped at 65535 (the kernel strides over the rest). Depends only
/// on shapes, never on the position, so a captured graph replays for every step.
pub fn config(rows: usize, heads: usize, head_dim: usize, block: Option<u32>) -> LaunchConfig {
    let threads = block.unwrap_or(BLOCK);
    let items = 3 * heads * head_dim / 4;
    let gx = items.div_ceil(threads as usize).clamp(1, 65535) as u32;
    LaunchConfig::new([gx, rows.clamp(1, 65535) as u32, 1], [threads, 1, 1])
}

/// Launches `rope_f32` or `rope_bf16` by `T`.
///
/// - `qkv`: `[batch, len, 3·D]` rows q | k | v, D = `kv.heads·kv.head_dim`, head h at features `h·head_dim..`;
/// - `table`: the rotary table of `model::rope_table::rope_table`, `[rows, head_dim/2, 2]` (cos, sin) with
///   rows = `table.len() / head_dim`, row index = absolute position;
/// - `step`: device `StepState`; row l of every sequence is at absolute position `step.pos + l`;
/// - `rows_table`: None, or (continuous batching) I32 `[batch, 2]`: sequence b goes to cache row `rows[2b]` at
///   positions `rows[2b + 1] + l` (checked by the caller; a row outside the cache is skipped);
/// - `q`: `[batch, len, D]`, the rotated q;
/// - `cache`: the whole KV cache of geometry `kv` (`[layers][k|v][kv.batch][heads][seq][head_dim]`, dtype `T`): the
///   rotated k and the unrotated v of sequence b go to `[layer][0|1][b][h][pos + l]`; nothing else is written.
///
/// The position is only known on the device: the caller checks `pos + len ≤ min(kv.seq, table rows)` on the host
/// when it writes `StepState`; rows beyond that bound are skipped by the kernel (nothing written, q left as is).
/// `block` overrides the block size (any 1..=1024; tests sweep it).
#[allow(clippy::too_many_arguments)]
pub fn rope<T: Elem, L: Launcher + ?Sized>(
    l: &L,
    qkv: DevPtr<'_, T>,
    table: DevPtr<'_, f32>,
    step: DevPtr<'_, StepState>,
    rows_table: Option<DevPtr<'_, i32>>,
    q: DevPtrMut<'_, T>,
    cache: DevPtrMut<'_, T>,
    batch: usize,
    len: usize,
    kv: &KvSpec,
    layer: usize,
    block: Option<u32>,
) -> Result<()> {
    let op = "rope";
    let (heads, hd) = (kv.heads, kv.head_dim);
    if batch == 0 || len == 0 || heads == 0 || hd == 0 {
        return Err(invalid(
            op,
            format!("empty shape batch = {batch}, len = {len}, heads = {heads}, head_dim = {hd}"),
        ));
    }
    if !hd.is_multiple_of(4) {
        return Err(invalid(op, format!("head_dim = {hd} is not a multiple of 4")));
    }
    let storage_ok = T::DTYPE == kv.storage;
    if !storage_ok {
        return Err(invalid(
            op,
            format!(
                "KV cache storage {:?} does not match the activation dtype {}",
                kv.storage,
                T::NAME
            ),
        ));
    }
    if batch > kv.batch || len > kv.seq || layer >= kv.layers {
        return Err(invalid(
            op,
            format!(
                "batch {batch}, len {len}, layer {layer} do not fit the KV cache (batch {}, seq {}, layers {})",
                kv.batch, kv.seq, kv.layers
            ),
        ));
    }
    if let Some(b) = block {
        if !(1..=1024).contains(&b) {
            return Err(invalid(op, format!("block size {b} outside 1..=1024")));
        }
    }
    let d = heads
        .checked_mul(hd)
        .ok_or_else(|| invalid(op, "heads·head_dim overflows"))?;
    let rows = batch
        .checked_mul(len)
        .ok_or_else(|| invalid(op, "batch·len overflows"))?;
    let n_qkv = rows
        .checked_mul(3 * d)
        .ok_or_else(|| invalid(op, "qkv size overflows"))?;
    let table_rows = table.len() / hd;
    if table_rows < len {
        return Err(invalid(
            op,
            format!("table has {table_rows} rows, fewer than len = {len}"),
        ));
    }
    check_len(op, "qkv", qkv.len(), n_qkv)?;
    check_len(op, "q", q.len(), rows * d)?;
    check_len(op, "cache", cache.len(), kv.elems())?;
    check_len(op, "step", step.len(), 1)?;
    if let Some(t) = &rows_table {
        check_len(op, "rows", t.len(), 2 * batch)?;
    }
    to_i32(op, "qkv elements", n_qkv)?;
    let p = RopeParams {
        batch: to_i32(op, "batch", batch)?,
        len: to_i32(op, "len", len)?,
        heads: to_i32(op, "heads", heads)?,
        head_dim: to_i32(op, "head_dim", hd)?,
        kv_batch: to_i32(op, "kv batch", kv.batch)?,
        seq: to_i32(op, "seq", kv.seq)?,
        layer: to_i32(op, "layer", layer)?,
        table_rows: to_i32(op, "table rows", table_rows)?,
        per_row: i32::from(rows_table.is_some()),
    };
    // SAFETY: without per_row the kernel never dereferences `rows`: any pointer value will do.
    let rows_ptr = rows_table.unwrap_or(unsafe { step.cast() });
    let cfg = config(rows, heads, hd, block);
    // SAFETY: T::DTYPE names the element type the chosen kernel reads and writes.
    unsafe {
        match T::DTYPE {
            Dtype::F32 => kernels::rope_f32(l, cfg, qkv.cast(), table, step, rows_ptr, q.cast(), cache.cast(), p),
            Dtype::Bf16 => kernels::rope_bf16(l, cfg, qkv.cast(), table, step, rows_ptr, q.cast(), cache.cast(), p),
        }
    }
}

impl<D: super::device::Device> crate::ops::Exec<crate::ops::rope::Rope> for super::CudaBackend<D> {
    fn exec(&mut self, op: &crate::ops::rope::Rope, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        let tab = self.wptr::<f32>(op.table, "rope table")?;
        // SAFETY: qkv, q and the cache in the activation type, the row table i32; q is disjoint from qkv.
        super::exec::by_act!(self, T => unsafe {
            let (cache, spec) = self.kv_ptr::<T>("rope")?;
            if (spec.heads, spec.head_dim) != (op.heads, op.head_dim) {
                return Err(crate::Error::Invalid("rope: the KV cache has another head geometry".into()));
            }
            let (qkv, q) = (self.t(a.ins[0])?, self.t_mut(a.out)?);
            let rows = if op.per_row { Some(self.t::<i32>(a.ins[1])?) } else { None };
            let step = self.step_ptr();
            rope::<T, D>(&self.dev, qkv, tab, step, rows, q, cache, op.rows, op.len, &spec, op.layer, None)
        })
    }
}
