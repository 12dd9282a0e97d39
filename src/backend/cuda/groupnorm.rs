//! `groupnorm` launcher: torch GroupNorm over NCHW f32, optionally fused with swish (kernels/groupnorm.cu; the CPU
//! reference is `backend::cpu::groupnorm`). Two launches: per-chunk statistics into a workspace, then the merge
//! and normalisation.
use super::kernels::{self, GroupnormParams};
use super::launch::{check_len, invalid, to_i32, DevPtr, DevPtrMut, LaunchConfig, Launcher};
use crate::Result;

/// Values per block (both kernels): 256 threads × 32 values. A 262144-value group of the 256×256 decoder stage
/// gets 32 blocks, so one image's 32 groups fill 1024 blocks; small groups get one block each.
pub const CHUNK: usize = 8192;
/// Threads per block.
pub const BLOCK: u32 = 256;

/// `(chunk, chunks)` for groups of `group_len` values: `chunk` overrides [`CHUNK`] (rounded up to a multiple of 4,
/// at least 4; tests use small chunks to exercise the merge).
pub fn chunking(group_len: usize, chunk: Option<usize>) -> (usize, usize) {
    let chunk = chunk.map_or(CHUNK, |c| c.max(1).next_multiple_of(4));
    (chunk, group_len.div_ceil(chunk).max(1))
}

/// f32 elements of the workspace `groupnorm` needs for this shape and chunk override (3 per chunk of each
/// sample's group). Allocate it once for the largest layer.
pub fn groupnorm_workspace_len(n: usize, c: usize, hw: usize, groups: usize, chunk: Option<usize>) -> usize {
    let glen = c.checked_div(groups).unwrap_or(0) * hw;
    3 * n * groups * chunking(glen, chunk).1
}

/// The checked kernel parameters and the grid (chunks, n·groups) of both passes over `x` `[n, c, hw]`.
#[allow(clippy::too_many_arguments)]
fn plan(
    op: &str,
    x: usize,
    (gamma, beta): (usize, usize),
    work: usize,
    (n, c, hw): (usize, usize, usize),
    groups: usize,
    eps: f32,
    silu: bool,
    chunk: Option<usize>,
    block: Option<u32>,
) -> Result<(GroupnormParams, LaunchConfig)> {
    if n == 0 || c == 0 || hw == 0 || groups == 0 {
        return Err(invalid(
            op,
            format!("empty shape n = {n}, c = {c}, hw = {hw}, groups = {groups}"),
        ));
    }
    if !c.is_multiple_of(groups) {
        return Err(invalid(op, format!("{c} channels do not divide into {groups} groups")));
    }
    if let Some(b) = block {
        if !(1..=1024).contains(&b) {
            return Err(invalid(op, format!("block size {b} outside 1..=1024")));
        }
    }
    let numel = n
        .checked_mul(c)
        .and_then(|v| v.checked_mul(hw))
        .ok_or_else(|| invalid(op, "n·c·hw overflows"))?;
    let glen = c / groups * hw;
    let (ck, chunks) = chunking(glen, chunk);
    check_len(op, "x", x, numel)?;
    check_len(op, "gamma", gamma, c)?;
    check_len(op, "beta", beta, c)?;
    check_len(op, "work", work, groupnorm_workspace_len(n, c, hw, groups, chunk))?;
    to_i32(op, "group length", glen)?;
    let p = GroupnormParams {
        n: to_i32(op, "n", n)?,
        c: to_i32(op, "c", c)?,
        hw: to_i32(op, "hw", hw)?,
        groups: to_i32(op, "groups", groups)?,
        chunk: to_i32(op, "chunk", ck)?,
        chunks: to_i32(op, "chunks", chunks)?,
        eps,
        silu: silu as i32,
    };
    let cfg = LaunchConfig::new(
        [chunks.clamp(1, 65535) as u32, (n * groups).clamp(1, 65535) as u32, 1],
        [block.unwrap_or(BLOCK), 1, 1],
    );
    Ok((p, cfg))
}

/// The statistics pass into `work`, and the same workspace as the next kernel's input.
fn stats<'a, L: Launcher + ?Sized>(
    l: &L,
    x: DevPtr<'_, f32>,
    work: DevPtrMut<'a, f32>,
    cfg: LaunchConfig,
    p: GroupnormParams,
) -> Result<DevPtr<'a, f32>> {
    let part = work.len();
    // SAFETY (of the raw re-borrow): `work` is exclusively borrowed by the caller; the stats kernel writes it and the
    // next launch reads it, one after the other (stream order on the GPU, synchronous in the emulator).
    let (w1, w2) = unsafe {
        (
            DevPtrMut::<f32>::from_raw(work.addr(), part),
            DevPtr::<f32>::from_raw(work.addr(), part),
        )
    };
    kernels::groupnorm_stats_f32(l, cfg, x, w1, p)?;
    Ok(w2)
}

/// `y = GroupNorm(groups, c, eps)(x)·gamma + beta` over `x` `[n, c, hw]` f32 (then `y·σ(y)` when `silu`), torch's
/// biased variance. `work` holds at least [`groupnorm_workspace_len`] f32 (contents are scratch). `x` and `y` must
/// not overlap. Grid (chunks, n·groups) for both kernels, capped at 65535 per axis (the kernels stride).
/// `chunk` / `block` override the chunk size and the block size (1..=1024; tests sweep them).
#[allow(clippy::too_many_arguments)]
pub fn groupnorm<L: Launcher + ?Sized>(
    l: &L,
    x: DevPtr<'_, f32>,
    gamma: DevPtr<'_, f32>,
    beta: DevPtr<'_, f32>,
    y: DevPtrMut<'_, f32>,
    work: DevPtrMut<'_, f32>,
    n: usize,
    c: usize,
    hw: usize,
    groups: usize,
    eps: f32,
    silu: bool,
    chunk: Option<usize>,
    block: Option<u32>,
) -> Result<()> {
    let op = "groupnorm";
    let sizes = (gamma.len(), beta.len());
    let (p, cfg) = plan(op, x.len(), sizes, work.len(), (n, c, hw), groups, eps, silu, chunk, block)?;
    check_len(op, "y", y.len(), n * c * hw)?;
    let part = stats(l, x, work, cfg, p)?;
    kernels::groupnorm_f32(l, cfg, x, part, gamma, beta, y, p)
}

/// f32 elements of [`groupnorm_affine`]'s records: 4 per (image, channel).
pub fn groupnorm_affine_len(n: usize, c: usize) -> usize {
    4 * n * c
}

/// The statistics of [`groupnorm`] as records `rec` `[n, c, 4]` = (mean hi, mean lo, rstd·gamma, beta) per (image,
/// channel), for a conv that normalises its input as it loads it (`conv::ConvNorm`): the values it computes from
/// them are bit for bit those `groupnorm` would store. Two launches: the statistics (as `groupnorm`'s), then one
/// thread per record. `work` as in [`groupnorm`]; `rec` holds [`groupnorm_affine_len`] f32, 16-byte aligned.
#[allow(clippy::too_many_arguments)]
pub fn groupnorm_affine<L: Launcher + ?Sized>(
    l: &L,
    x: DevPtr<'_, f32>,
    gamma: DevPtr<'_, f32>,
    beta: DevPtr<'_, f32>,
    rec: DevPtrMut<'_, f32>,
    work: DevPtrMut<'_, f32>,
    (n, c, hw): (usize, usize, usize),
    groups: usize,
    eps: f32,
    chunk: Option<usize>,
) -> Result<()> {
    let op = "groupnorm_affine";
    let sizes = (gamma.len(), beta.len());
    let (p, cfg) = plan(op, x.len(), sizes, work.len(), (n, c, hw), groups, eps, false, chunk, None)?;
    check_len(op, "rec", rec.len(), groupnorm_affine_len(n, c))?;
    if !rec.addr().is_multiple_of(16) {
        return Err(invalid(op, "the records must be 16-byte aligned"));
    }
    let part = stats(l, x, work, cfg, p)?;
    let blocks = (n * c).div_ceil(BLOCK as usize).clamp(1, 65535) as u32;
    let cfg = LaunchConfig::new([blocks, 1, 1], [BLOCK, 1, 1]);
    kernels::groupnorm_affine_f32(l, cfg, part, gamma, beta, rec, p)
}

impl<D: super::device::Device> crate::ops::Exec<crate::ops::groupnorm::Groupnorm> for super::CudaBackend<D> {
    fn exec(&mut self, op: &crate::ops::groupnorm::Groupnorm, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        self.f32_only("groupnorm")?;
        let ws = self.ws::<f32>("groupnorm", groupnorm_workspace_len(op.n, op.c, op.hw, op.groups, None))?;
        let (ga, be) = (self.wptr(op.gamma, "groupnorm")?, self.wptr(op.beta, "groupnorm")?);
        // SAFETY: f32 activations (checked above); the output is disjoint from the input.
        unsafe {
            let (x, y) = (self.t(a.ins[0])?, self.t_mut(a.out)?);
            groupnorm(
                &self.dev, x, ga, be, y, ws, op.n, op.c, op.hw, op.groups, op.eps, op.silu, None, None,
            )
        }
    }
}
