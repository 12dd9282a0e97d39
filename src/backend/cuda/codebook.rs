//! `codebook` launchers: the VQ decode lookup and the encoder's nearest-code search (kernels/codebook.cu; the CPU
//! references are `backend::cpu::codebook::{codebook_lookup, quantize}`).
//!
//! Both take the **L2-normalised** codebook `[size, dim]` f32: the host prepares it once at load with
//! `model::vq::l2_normalize_rows` (model::vq already does, so the uploaded `quantize.embedding.weight` is the
//! normalised one); nothing is normalised per call on the device.
use super::kernels::{self, CodebookParams};
use super::launch::{check_len, invalid, to_i32, DevPtr, DevPtrMut, LaunchConfig, Launcher};
use crate::Result;

/// Positions per `quantize_f32` block (the kernel's QP).
pub const QUANTIZE_POSITIONS: usize = 4;
/// Threads of a `quantize_f32` block: they stride over the codes (16384 in LlamaGen: 64 each).
pub const QUANTIZE_BLOCK: u32 = 256;

fn params(op: &str, n: usize, dim: usize, h: usize, w: usize, size: usize) -> Result<(CodebookParams, usize)> {
    if n == 0 || dim == 0 || h == 0 || w == 0 || size == 0 {
        return Err(invalid(
            op,
            format!("empty shape n = {n}, dim = {dim}, h = {h}, w = {w}, codebook size = {size}"),
        ));
    }
    let hw = h.checked_mul(w).ok_or_else(|| invalid(op, "h·w overflows"))?;
    let latent = n
        .checked_mul(dim)
        .and_then(|v| v.checked_mul(hw))
        .ok_or_else(|| invalid(op, "n·dim·h·w overflows"))?;
    to_i32(op, "n·dim·h·w", latent)?;
    to_i32(
        op,
        "size·dim",
        size.checked_mul(dim).ok_or_else(|| invalid(op, "size·dim overflows"))?,
    )?;
    let p = CodebookParams {
        n: to_i32(op, "n", n)?,
        dim: to_i32(op, "dim", dim)?,
        hw: to_i32(op, "h·w", hw)?,
        size: to_i32(op, "codebook size", size)?,
    };
    Ok((p, latent))
}

fn check_block(op: &str, block: Option<u32>) -> Result<()> {
    match block {
        Some(b) if !(1..=1024).contains(&b) => Err(invalid(op, format!("block size {b} outside 1..=1024"))),
        _ => Ok(()),
    }
}

/// Decode lookup (`codebook_f32`): `codes` `[n·h·w]` (raster order per image) -> `out` `[n, dim, h, w]`,
/// `out[i, c, y, x] = codebook[codes[i·h·w + y·w + x], c]`. A code outside `0..size` writes zeros and is recorded in
/// `err` (one i32, zeroed by the caller; decode with `embed::bad_index`, report `token id X is outside the
/// codebook`); the launch returns Ok. One thread per output element, 256 per block, at most 65535 blocks (the
/// kernel strides). `block` overrides the block size (1..=1024).
#[allow(clippy::too_many_arguments)]
pub fn codebook<L: Launcher + ?Sized>(
    l: &L,
    codes: DevPtr<'_, i32>,
    codebook: DevPtr<'_, f32>,
    out: DevPtrMut<'_, f32>,
    err: DevPtrMut<'_, i32>,
    n: usize,
    dim: usize,
    h: usize,
    w: usize,
    size: usize,
    block: Option<u32>,
) -> Result<()> {
    let op = "codebook";
    check_block(op, block)?;
    let (p, latent) = params(op, n, dim, h, w, size)?;
    check_len(op, "codes", codes.len(), n * h * w)?;
    check_len(op, "codebook", codebook.len(), size * dim)?;
    check_len(op, "out", out.len(), latent)?;
    check_len(op, "err", err.len(), 1)?;
    let threads = block.unwrap_or(256);
    let cfg = LaunchConfig::linear(latent.div_ceil(threads as usize).clamp(1, 65535) as u32, threads);
    kernels::codebook_f32(l, cfg, codes, codebook, out, err, p)
}

/// Encode (`quantize_f32`): `z` `[n, dim, h, w]` -> `codes` `[n·h·w]`, the index of the nearest normalised code to
/// each normalised latent vector, `d = ‖ẑ‖² + ‖ê‖² − 2ẑ·ê` as the reference computes it, lowest index on exact ties
/// (a vector with no finite distance, e.g. NaN, gets 0 like the reference). Bit-exact with
/// `cpu::codebook::quantize`'s indices. One block per [`QUANTIZE_POSITIONS`] positions (at most 65535 blocks, the
/// kernel strides), [`QUANTIZE_BLOCK`] threads over the codes, `(QP·dim + QP)·4` bytes of dynamic shared memory.
/// `block` overrides the block size (1..=1024).
#[allow(clippy::too_many_arguments)]
pub fn quantize<L: Launcher + ?Sized>(
    l: &L,
    z: DevPtr<'_, f32>,
    codebook: DevPtr<'_, f32>,
    codes: DevPtrMut<'_, i32>,
    n: usize,
    dim: usize,
    h: usize,
    w: usize,
    size: usize,
    block: Option<u32>,
) -> Result<()> {
    let op = "quantize";
    check_block(op, block)?;
    let (p, latent) = params(op, n, dim, h, w, size)?;
    let shared = (QUANTIZE_POSITIONS * dim + QUANTIZE_POSITIONS) * 4;
    if shared > 48 << 10 {
        return Err(invalid(
            op,
            format!("dim = {dim} needs {shared} bytes of shared memory (48 KiB at most)"),
        ));
    }
    check_len(op, "z", z.len(), latent)?;
    check_len(op, "codebook", codebook.len(), size * dim)?;
    check_len(op, "codes", codes.len(), n * h * w)?;
    let blocks = (n * h * w).div_ceil(QUANTIZE_POSITIONS).clamp(1, 65535) as u32;
    let cfg = LaunchConfig::linear(blocks, block.unwrap_or(QUANTIZE_BLOCK)).with_shared(shared as u32);
    kernels::quantize_f32(l, cfg, z, codebook, codes, p)
}

impl<D: super::device::Device> crate::ops::Exec<crate::ops::codebook::Codebook> for super::CudaBackend<D> {
    fn exec(&mut self, op: &crate::ops::codebook::Codebook, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        self.f32_only("codebook")?;
        let err = self.err_word(super::exec::ERR_CODEBOOK, op.codebook);
        // SAFETY: codes i32, the latent f32 (checked above).
        unsafe {
            let (codes, o) = (self.t(a.ins[0])?, self.t_mut(a.out)?);
            let cb = self.wptr(op.codebook, "codebook")?;
            codebook(&self.dev, codes, cb, o, err, op.n, op.dim, op.h, op.w, op.size, None)
        }
    }
}
