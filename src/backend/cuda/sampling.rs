//! `sampling` launcher: CFG mix, temperature, top-k, top-p and the categorical draw, one token per image from its own
//! Philox stream (kernels/sampling.cu; the CPU reference is `backend::cpu::sampling`, which it reproduces draw for
//! draw).
use super::kernels::{self, StepState};
use super::launch::{check_len, invalid, to_i32, DevPtr, DevPtrMut, Dtype, Elem, LaunchConfig, Launcher};
use crate::sample::sampler::SamplingParams;
use crate::Result;

/// Largest vocabulary: the per-block sums of 64 survivors live in dynamic shared memory (32 KiB at this size, under
/// the 48 KiB that needs no opt-in attribute, with the ~2 KiB of static shared memory).
pub const MAX_VOCAB: usize = 1 << 19;

fn sort_len(vocab: usize) -> usize {
    vocab.next_power_of_two()
}

/// Workspace in u32 words for `images` images of `vocab` entries: per image z, survivor values, survivor ids and
/// top-p values (`vocab` words each) and the top-p sort keys (`2 · next_power_of_two(vocab)` words). The kernel
/// overwrites it on every launch; it holds nothing between launches. V = 16384: 96 Ki words (384 KiB) per image.
pub fn sampling_workspace_len(images: usize, vocab: usize) -> usize {
    images * (4 * vocab + 2 * sort_len(vocab))
}

/// One block per image (the kernel strides over images past 65535). Default block: one thread per 16 vocabulary
/// entries rounded up to a warp, 32..=1024 (1024 at V = 16384): the parallel passes are short at that width and
/// the sequential parts (sums over blocks of 64 survivors) do not depend on it. Dynamic shared memory: one f32 per
/// 64 survivors.
pub fn config(images: usize, vocab: usize, block: Option<u32>) -> LaunchConfig {
    let threads = block.unwrap_or_else(|| (vocab.div_ceil(16).div_ceil(32) * 32).clamp(32, 1024) as u32);
    LaunchConfig::linear(images.clamp(1, 65535) as u32, threads).with_shared((vocab.div_ceil(64) * 4) as u32)
}

/// Launches `sampling_f32` or `sampling_bf16` by `T`.
///
/// - `logits`: `[rows, vocab]`, rows = `2 · images` with CFG (cond rows first, then uncond) or `images`;
/// - `image_index`: `[images]`, the global index of each batch row's image (its RNG stream);
/// - `step`: one [`StepState`] in device memory; the kernel reads `step`, `cfg_active`, `seed_lo`/`seed_hi`
///   (the guidance mix happens only when rows = 2·images and `cfg_active` ≠ 0; otherwise the cond row alone);
/// - `tokens`: `[rows]`; image i's token goes to row i and, with CFG rows, to row images + i;
/// - `workspace`: at least [`sampling_workspace_len`]`(images, vocab)` words, 8-byte aligned (it holds u64 sort
///   keys), exclusively this launch's;
/// - `cfg_scale`, `params`: as `backend::cpu::sampling` (params are validated).
///
/// `block` overrides the block size (32..=1024; tests sweep it).
#[allow(clippy::too_many_arguments)]
pub fn sampling<T: Elem, L: Launcher + ?Sized>(
    l: &L,
    logits: DevPtr<'_, T>,
    image_index: DevPtr<'_, i32>,
    step: DevPtr<'_, StepState>,
    tokens: DevPtrMut<'_, i32>,
    workspace: DevPtrMut<'_, u32>,
    images: usize,
    rows: usize,
    vocab: usize,
    cfg_scale: f32,
    params: &SamplingParams,
    block: Option<u32>,
) -> Result<()> {
    let op = "sampling";
    if images == 0 || vocab == 0 {
        return Err(invalid(op, format!("empty shape images = {images}, vocab = {vocab}")));
    }
    if rows != images && Some(rows) != images.checked_mul(2) {
        return Err(invalid(
            op,
            format!("rows = {rows} must be images ({images}) or 2·images with CFG"),
        ));
    }
    if vocab > MAX_VOCAB {
        return Err(invalid(op, format!("vocab = {vocab} above {MAX_VOCAB}")));
    }
    if let Some(b) = block {
        if !(32..=1024).contains(&b) {
            return Err(invalid(op, format!("block size {b} outside 32..=1024")));
        }
    }
    params.validate()?;
    let n = rows
        .checked_mul(vocab)
        .ok_or_else(|| invalid(op, "rows·vocab overflows"))?;
    to_i32(op, "rows·vocab", n)?;
    check_len(op, "logits", logits.len(), n)?;
    check_len(op, "image_index", image_index.len(), images)?;
    check_len(op, "step", step.len(), 1)?;
    check_len(op, "tokens", tokens.len(), rows)?;
    check_len(op, "workspace", workspace.len(), sampling_workspace_len(images, vocab))?;
    if !workspace.addr().is_multiple_of(8) {
        return Err(invalid(
            op,
            format!("workspace address {:#x} is not 8-byte aligned", workspace.addr()),
        ));
    }
    let p = kernels::SamplingParams {
        images: to_i32(op, "images", images)?,
        vocab: to_i32(op, "vocab", vocab)?,
        rows: to_i32(op, "rows", rows)?,
        cfg_scale,
        temperature: params.temperature,
        // k >= V keeps everything, like k = 0.
        top_k: to_i32(op, "top_k", params.top_k.min(vocab))?,
        top_p: params.top_p,
    };
    let cfg = config(images, vocab, block);
    // SAFETY: T::DTYPE names the element type the chosen kernel reads.
    unsafe {
        match T::DTYPE {
            Dtype::F32 => kernels::sampling_f32(l, cfg, logits.cast(), image_index, step, tokens, workspace, p),
            Dtype::Bf16 => kernels::sampling_bf16(l, cfg, logits.cast(), image_index, step, tokens, workspace, p),
        }
    }
}

/// Runs `sampling_uniform`: for each of `n` images the Philox4x32-10 words of its stream at `step` (`words`, 4 per
/// image) and the uniform the sampler draws with (`u`), as `sample::rng::philox4x32_10` / `rng::uniform`.
pub fn sampling_uniform<L: Launcher + ?Sized>(
    l: &L,
    image_index: DevPtr<'_, i32>,
    step: DevPtr<'_, StepState>,
    words: DevPtrMut<'_, u32>,
    u: DevPtrMut<'_, f32>,
    n: usize,
) -> Result<()> {
    let op = "sampling_uniform";
    if n == 0 {
        return Err(invalid(op, "no images"));
    }
    check_len(op, "image_index", image_index.len(), n)?;
    check_len(op, "step", step.len(), 1)?;
    check_len(op, "words", words.len(), 4 * n)?;
    check_len(op, "u", u.len(), n)?;
    let cfg = LaunchConfig::linear(n.div_ceil(128).clamp(1, 65535) as u32, 128);
    kernels::sampling_uniform(l, cfg, image_index, step, words, u, to_i32(op, "n", n)?)
}

impl<D: super::device::Device> crate::ops::Exec<crate::ops::sampling::Sampling> for super::CudaBackend<D> {
    fn exec(&mut self, op: &crate::ops::sampling::Sampling, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        let ws = self.ws::<u32>("sampling", sampling_workspace_len(op.images, op.vocab))?;
        // SAFETY: logits in the activation type, the image index and tokens i32.
        super::exec::by_act!(self, T => unsafe {
            let (logits, idx, toks) = (self.t(a.ins[0])?, self.t(a.ins[1])?, self.t_mut(a.out)?);
            let (images, rows, vocab) = (op.images, op.rows, op.vocab);
            let step = self.step_ptr();
            sampling::<T, D>(&self.dev, logits, idx, step, toks, ws, images, rows, vocab, op.cfg_scale, &op.params, None)
        })
    }
}
