//! `attention` launcher: causal attention of `len` queries per sequence over the KV cache, the position read from
//! device memory (kernels/attention.cu; the CPU reference is `backend::cpu::attention`, the cache layout
//! `backend::cpu::kv_cache`).
//!
//! Two schedules: decode (flash-decoding, split-KV with a combine launch when the (query, head) pairs cannot fill
//! the GPU) for a few queries per sequence, and a tiled kernel for the prefill and the full recompute: in bf16 the
//! tensor-core flash attention (`attention_flash_bf16`: cp.async K/V double buffer, ldmatrix, mma for Q·Kᵀ and
//! P·V), otherwise (f32, head_dim not a multiple of 8, offset pointers) the SIMT `attention_tiled_*`. Neither launch configuration depends on the position: grids are sized for the whole cache.
use super::kernels::{self, AttentionParams, StepState};
use super::launch::{check_len, invalid, to_i32, DevPtr, DevPtrMut, Dtype, Elem, LaunchConfig, Launcher};
use crate::ops::KvSpec;
use crate::Result;

/// Largest query count per sequence that [`AttentionPath::Auto`] sends to the decode kernels (each query is its own
/// block there and re-reads the keys; the tiled kernel shares a key tile among 16 queries).
pub const DECODE_MAX_LEN: usize = 8;
/// Blocks the decode grid aims for before it stops splitting: two per SM of an H100 SXM (132 SMs).
pub const TARGET_BLOCKS: usize = 2 * 132;
/// Fewest keys per split in the automatic policy: below this a block's fixed cost (loading q, the merges, the
/// partial's write and read) outweighs its share of the key reads.
pub const MIN_SPLIT_KEYS: usize = 64;
/// Largest supported head dimension (the tiled kernel keeps 4 features per lane; the decode kernel 32 chunks of 4).
pub const MAX_HEAD_DIM: usize = 128;
/// Default threads per block, both schedules.
pub const DEFAULT_BLOCK: u32 = 128;
/// Keys per tile and queries per warp of `attention_tiled` (ATTN_TILE_K, ATTN_TILE_QW in the kernel).
const TILE_K: usize = 32;
const TILE_QW: usize = 4;
/// Queries per block and threads of `attention_flash_bf16` (FLASH_BQ, FLASH_THREADS).
const FLASH_BQ: usize = 64;
pub const FLASH_THREADS: u32 = 128;
/// Static + dynamic shared memory a block may use without the opt-in attribute.
const MAX_SHARED: usize = 48 << 10;

/// Which kernels run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttentionPath {
    /// Decode for `len <= DECODE_MAX_LEN`, tiled above.
    #[default]
    Auto,
    Decode,
    Tiled,
}

/// Launch choices; the default is what production uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttentionOptions {
    pub path: AttentionPath,
    /// Decode: keys per split (`None`: the policy of [`attention_plan`]). A value of `seq` or more means no split.
    pub split_keys: Option<usize>,
    /// Threads per block, a multiple of 32 in 32..=1024 (`None`: 128). The tiled kernel also needs its shared
    /// memory, (4·warps·d_h + 32·(2·d_h + 1))·4 bytes, to stay within 48 KiB.
    pub block: Option<u32>,
}

/// What [`attention`] launches for a shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionPlan {
    /// `attention_tiled_*` (one launch) instead of `attention_decode_*` (+ `attention_combine_*` when split).
    pub tiled: bool,
    /// Tiled in bf16 with head_dim a multiple of 8: `attention_flash_bf16` (tensor cores, 128 threads, whatever
    /// `block` says) when q and the cache are 16-byte aligned, which they are unless a caller offsets them.
    pub flash: bool,
    /// Decode: keys per split and the number of splits, `splits·split_keys >= seq` (1 and seq when not split).
    pub split_keys: usize,
    pub splits: usize,
    pub threads: u32,
}

/// The launch plan for `batch` sequences of `len` queries over the cache of `spec`.
///
/// Split policy (decode, `split_keys = None`): pairs = batch·len·heads blocks without splitting; when pairs <
/// [`TARGET_BLOCKS`], split each pair into min(⌈TARGET_BLOCKS / pairs⌉, ⌊seq / MIN_SPLIT_KEYS⌋) splits (at least 1)
/// of ⌈seq / splits⌉ keys rounded up to a multiple of 16. It depends only on the shapes, never on the position.
pub fn attention_plan(spec: &KvSpec, batch: usize, len: usize, opts: AttentionOptions) -> AttentionPlan {
    let seq = spec.seq.max(1);
    let tiled = match opts.path {
        AttentionPath::Auto => len > DECODE_MAX_LEN,
        AttentionPath::Decode => false,
        AttentionPath::Tiled => true,
    };
    let threads = opts.block.unwrap_or(DEFAULT_BLOCK);
    if tiled {
        let flash = spec.storage == Dtype::Bf16 && spec.head_dim % 8 == 0 && spec.head_dim <= MAX_HEAD_DIM;
        return AttentionPlan {
            tiled,
            flash,
            threads,
            split_keys: seq,
            splits: 1,
        };
    }
    let split_keys = match opts.split_keys {
        Some(k) => k.clamp(1, seq),
        None => {
            let pairs = (batch * len * spec.heads).max(1);
            let want = TARGET_BLOCKS.div_ceil(pairs);
            let splits = want.min(seq / MIN_SPLIT_KEYS).max(1);
            if splits == 1 {
                seq
            } else {
                seq.div_ceil(splits).next_multiple_of(16).min(seq)
            }
        }
    };
    AttentionPlan {
        tiled,
        flash: false,
        split_keys,
        splits: seq.div_ceil(split_keys),
        threads,
    }
}

/// f32 elements of workspace [`attention`] needs: batch·len·heads·splits·(head_dim + 2) when the decode path splits
/// (per partial: the unnormalised accumulator of head_dim values, then in a second region its max and sum), else 0.
pub fn attention_workspace_len(spec: &KvSpec, batch: usize, len: usize, opts: AttentionOptions) -> usize {
    let plan = attention_plan(spec, batch, len, opts);
    if plan.tiled || plan.splits == 1 {
        0
    } else {
        batch * len * spec.heads * plan.splits * (spec.head_dim + 2)
    }
}

/// Q tile plus two stages of K and V tiles, head_dim padded to 64 (64-key tiles) or 128 (32-key tiles).
pub fn flash_shared_bytes(d: usize) -> usize {
    let (dp, bkv) = if d <= 64 { (64, 64) } else { (128, 32) };
    (FLASH_BQ + 4 * bkv) * dp * 2
}

/// The decode kernel's per-warp accumulators, maxima and sums, merged across warps.
pub fn decode_shared_bytes(warps: usize, d: usize) -> usize {
    warps * (d + 2) * 4
}

fn tiled_shared_bytes(warps: usize, d: usize) -> usize {
    (TILE_QW * warps * d + TILE_K * (d + 1) + TILE_K * d) * 4
}

/// Launches the attention of `q` `[batch, len, heads·head_dim]` (heads, head_dim, seq from `spec`) at positions
/// `step.pos..step.pos + len` over layer `layer` of the cache `kv` (`spec.elems()` elements of `T`, the layout of
/// [`KvSpec`]), writing `out` `[batch, len, heads·head_dim]`. `mask` is `([batch, t], t)` with 1 = visible for the
/// condition keys `0..t`, or `None`. `step` is one [`StepState`] in device memory; only its `pos` is read. A `pos`
/// outside `0..=seq − len` yields NaN outputs (the kernels cannot report errors from a graph replay). `workspace`
/// holds at least [`attention_workspace_len`] f32 (may be empty when that is 0). `batch <= spec.batch`; the cache's
/// sequence b serves q's sequence b, unless `rows` (continuous batching, I32 `[batch, 2]`) places sequence b at cache
/// row `rows[2b]` and positions `rows[2b + 1]..` (the caller checks them; a bad one yields NaN rows).
#[allow(clippy::too_many_arguments)]
pub fn attention<T: Elem, L: Launcher + ?Sized>(
    l: &L,
    q: DevPtr<'_, T>,
    kv: DevPtr<'_, T>,
    spec: &KvSpec,
    layer: usize,
    mask: Option<(DevPtr<'_, T>, usize)>,
    step: DevPtr<'_, StepState>,
    rows_table: Option<DevPtr<'_, i32>>,
    out: DevPtrMut<'_, T>,
    workspace: DevPtrMut<'_, f32>,
    batch: usize,
    len: usize,
    opts: AttentionOptions,
) -> Result<()> {
    let op = "attention";
    let (heads, d, seq) = (spec.heads, spec.head_dim, spec.seq);
    if batch == 0 || len == 0 || heads == 0 || d == 0 || seq == 0 {
        return Err(invalid(
            op,
            format!("empty shape batch = {batch}, len = {len}, heads = {heads}, head_dim = {d}, seq = {seq}"),
        ));
    }
    if d % 4 != 0 || d > MAX_HEAD_DIM {
        return Err(invalid(
            op,
            format!("head_dim = {d} must be a multiple of 4 up to {MAX_HEAD_DIM}"),
        ));
    }
    let storage_ok = T::DTYPE == spec.storage;
    if !storage_ok {
        return Err(invalid(
            op,
            format!("cache storage {:?} does not match {}", spec.storage, T::NAME),
        ));
    }
    if batch > spec.batch {
        return Err(invalid(
            op,
            format!("batch = {batch} exceeds the cache batch {}", spec.batch),
        ));
    }
    if len > seq {
        return Err(invalid(op, format!("len = {len} exceeds the cache length {seq}")));
    }
    if layer >= spec.layers {
        return Err(invalid(
            op,
            format!("layer = {layer} but the cache has {} layers", spec.layers),
        ));
    }
    if let Some(b) = opts.block {
        if !(32..=1024).contains(&b) || b % 32 != 0 {
            return Err(invalid(
                op,
                format!("block size {b} is not a multiple of 32 in 32..=1024"),
            ));
        }
    }
    if opts.split_keys == Some(0) {
        return Err(invalid(op, "split_keys = 0"));
    }
    let dm = heads
        .checked_mul(d)
        .ok_or_else(|| invalid(op, "heads·head_dim overflows"))?;
    let n = batch
        .checked_mul(len)
        .and_then(|r| r.checked_mul(dm))
        .ok_or_else(|| invalid(op, "batch·len·D overflows"))?;
    check_len(op, "q", q.len(), n)?;
    check_len(op, "out", out.len(), n)?;
    check_len(op, "kv", kv.len(), spec.elems())?;
    check_len(op, "step", step.len(), 1)?;
    if let Some(t) = &rows_table {
        check_len(op, "rows", t.len(), 2 * batch)?;
    }
    let mask_len = match &mask {
        None => 0,
        Some((m, t)) => {
            if *t == 0 || *t > seq {
                return Err(invalid(op, format!("mask length t = {t} outside 1..={seq}")));
            }
            check_len(op, "mask", m.len(), batch * t)?;
            *t
        }
    };
    let plan = attention_plan(spec, batch, len, opts);
    let ws_need = attention_workspace_len(spec, batch, len, opts);
    check_len(op, "workspace", workspace.len(), ws_need)?;
    let warps = plan.threads as usize / 32;
    let rows = batch * len;

    let p = AttentionParams {
        batch: to_i32(op, "batch", batch)?,
        len: to_i32(op, "len", len)?,
        heads: to_i32(op, "heads", heads)?,
        head_dim: to_i32(op, "head_dim", d)?,
        seq: to_i32(op, "seq", seq)?,
        cache_batch: to_i32(op, "cache batch", spec.batch)?,
        layer: to_i32(op, "layer", layer)?,
        mask_len: to_i32(op, "mask length", mask_len)?,
        split_keys: to_i32(op, "split_keys", plan.split_keys)?,
        splits: to_i32(op, "splits", plan.splits)?,
        scale: 1.0 / (d as f32).sqrt(),
        per_row: i32::from(rows_table.is_some()),
    };
    to_i32(op, "batch·len·D", n)?;
    if heads > 65535 {
        return Err(invalid(op, format!("heads = {heads} exceeds the grid's 65535")));
    }
    // Without a mask the kernels never read it; q is a valid pointer of the right type to pass in its place.
    let mask_ptr = mask.map(|(m, _)| m).unwrap_or(q);
    // Likewise the row table without per_row.
    // SAFETY: a pointer value the kernels never dereference when per_row = 0.
    let rows_ptr = rows_table.unwrap_or(unsafe { step.cast() });

    let aligned = (q.addr() | kv.addr()) % 16 == 0;
    if plan.flash && aligned {
        if batch > 65535 {
            return Err(invalid(op, format!("batch = {batch} exceeds the grid's 65535")));
        }
        let gx = len.div_ceil(FLASH_BQ) as u32;
        let shared = flash_shared_bytes(d) as u32;
        let cfg = LaunchConfig::new([gx, heads as u32, batch as u32], [FLASH_THREADS, 1, 1]).with_shared(shared);
        // SAFETY: plan.flash implies bf16 storage, and T::DTYPE == storage was checked above.
        return unsafe {
            kernels::attention_flash_bf16(
                l,
                cfg,
                q.cast(),
                kv.cast(),
                mask_ptr.cast(),
                step,
                rows_ptr,
                out.cast(),
                p,
            )
        };
    }
    if plan.tiled {
        let shared = tiled_shared_bytes(warps, d);
        if shared > MAX_SHARED {
            return Err(invalid(
                op,
                format!("tiled: {warps} warps at head_dim {d} need {shared} bytes of shared memory (> 48 KiB)"),
            ));
        }
        if batch > 65535 {
            return Err(invalid(op, format!("batch = {batch} exceeds the grid's 65535")));
        }
        let gx = len.div_ceil(TILE_QW * warps) as u32;
        let cfg = LaunchConfig::new([gx, heads as u32, batch as u32], [plan.threads, 1, 1]).with_shared(shared as u32);
        // SAFETY: T::DTYPE names the element type the chosen kernel reads and writes.
        return unsafe {
            match T::DTYPE {
                Dtype::F32 => kernels::attention_tiled_f32(
                    l,
                    cfg,
                    q.cast(),
                    kv.cast(),
                    mask_ptr.cast(),
                    step,
                    rows_ptr,
                    out.cast(),
                    p,
                ),
                Dtype::Bf16 => kernels::attention_tiled_bf16(
                    l,
                    cfg,
                    q.cast(),
                    kv.cast(),
                    mask_ptr.cast(),
                    step,
                    rows_ptr,
                    out.cast(),
                    p,
                ),
            }
        };
    }

    if rows > 65535 {
        return Err(invalid(op, format!("batch·len = {rows} exceeds the grid's 65535")));
    }
    let shared = decode_shared_bytes(warps, d) as u32;
    let cfg =
        LaunchConfig::new([plan.splits as u32, heads as u32, rows as u32], [plan.threads, 1, 1]).with_shared(shared);
    // The decode and combine launches both need `out` and the workspace; they run one after the other on the stream.
    // SAFETY: same addresses and lengths as the borrowed pointers, used by sequential launches only.
    let (out2, ws_read) = unsafe {
        (
            DevPtrMut::<T>::from_raw(out.addr(), out.len()),
            DevPtr::<f32>::from_raw(workspace.addr(), workspace.len()),
        )
    };
    // SAFETY: T::DTYPE names the element type the chosen kernel reads and writes.
    unsafe {
        match T::DTYPE {
            Dtype::F32 => kernels::attention_decode_f32(
                l,
                cfg,
                q.cast(),
                kv.cast(),
                mask_ptr.cast(),
                step,
                rows_ptr,
                out.cast(),
                workspace,
                p,
            )?,
            Dtype::Bf16 => kernels::attention_decode_bf16(
                l,
                cfg,
                q.cast(),
                kv.cast(),
                mask_ptr.cast(),
                step,
                rows_ptr,
                out.cast(),
                workspace,
                p,
            )?,
        }
    }
    if plan.splits == 1 {
        return Ok(());
    }
    let pairs = rows * heads;
    let ccfg = LaunchConfig::linear(pairs.min(65535) as u32, d.next_multiple_of(32) as u32);
    // SAFETY: as above.
    unsafe {
        match T::DTYPE {
            Dtype::F32 => kernels::attention_combine_f32(l, ccfg, ws_read, step, rows_ptr, out2.cast(), p),
            Dtype::Bf16 => kernels::attention_combine_bf16(l, ccfg, ws_read, step, rows_ptr, out2.cast(), p),
        }
    }
}

impl<D: super::device::Device> crate::ops::Exec<crate::ops::attention::Attention> for super::CudaBackend<D> {
    fn exec(&mut self, op: &crate::ops::attention::Attention, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        let (b, l) = (op.rows, op.len);
        let opts = AttentionOptions::default();
        let (mi, ri) = op.extra_inputs();
        // SAFETY: q, out, the mask and the cache in the activation type, the row table i32; out is disjoint from q.
        super::exec::by_act!(self, T => unsafe {
            let spec = self.kv_ptr::<T>("attention")?.1;
            if (spec.heads, spec.head_dim) != (op.heads, op.head_dim) {
                return Err(crate::Error::Invalid("attention: the KV cache has another head geometry".into()));
            }
            let ws = self.ws::<f32>("attention", attention_workspace_len(&spec, b, l, opts))?;
            let (kv, _) = self.kv_ptr::<T>("attention")?;
            let kv = DevPtr::from_raw(kv.addr(), kv.len());
            let mask = match mi {
                Some(i) => Some((self.t(a.ins[i])?, op.mask.unwrap_or(0))),
                None => None,
            };
            let rows = match ri {
                Some(i) => Some(self.t::<i32>(a.ins[i])?),
                None => None,
            };
            let (q, o) = (self.t(a.ins[0])?, self.t_mut(a.out)?);
            attention::<T, D>(&self.dev, q, kv, &spec, op.layer, mask, self.step_ptr(), rows, o, ws, b, l, opts)
        })
    }
}
