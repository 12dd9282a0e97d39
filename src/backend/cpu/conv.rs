//! 2-D convolutions of the VQ tokenizer (NCHW, f32), as implicit GEMMs.
//!
//! Every convolution becomes a stride-1 convolution over polyphase planes: the zero-padded input
//! is split into `s x s` planes (s = stride), so tap `(ky, kx)` reads plane `(ky % s, kx % s)` at
//! offset `(ky / s, kx / s)`. In a plane of row width `wq`, output position `q = row * wq + col`
//! reads element `q + (ky / s) * wq + kx / s`, so each tap is one plain GEMM
//! `acc[co, q] += W_tap[co, ci] * plane[ci, q + off]` with `K = c_in`, and the `wq - ow` junk
//! columns of each row are dropped when the tile is written out. Planes are built per tile of
//! output rows in thread-local scratch (~1 MiB), so neither a padded copy of the image nor a 9x
//! im2col buffer exists. Tiles (and, for small images, blocks of output channels) run in parallel
//! on rayon, each GEMM single-threaded.
//!
//! Measured on the shared 2-core AVX-512 dev box, n = 1, best of several runs (`cargo test
//! --release --lib conv::tests::bench -- --ignored --nocapture`); a plain 512x4608x1024 gemm
//! reaches ~189 GFLOP/s there:
//!   3x3 s1 128->128 at 256x256: 183 GFLOP/s (107 ms); 256 at 64x64: 162; 512 at 16x16: 152;
//!   512 at 32x32: 181; 3x3 s2 (Downsample) 128 at 256x256: 153; 1x1 256->128 at 128x128: 141;
//!   upsample+conv 128 at 128->256: 388 counted as the 3x3 conv it replaces (~172 actual).
//!   conv_in 3->128 and conv_out 128->3 at 256x256: 50 and 66 (K or M of 3 starves the GEMM).
//!
//! On CPUs without AVX-512 (the 2-core AVX2 EPYC box), where `winograd` cannot run, the 3x3 stride-1 convs and
//! the upsample take `winograd_gemm` (same F(4x4, 3x3), GEMMs through the gemm crate). Same command, best of
//! several runs, direct (tap-major gemm crate) -> winograd_gemm: 128->128 at 256x256 130 -> 51 ms; 256 at 64x64
//! 37 -> 15 ms; 512 at 32x32 34 -> 14 ms; 512 at 16x16 11 -> 6 ms; upsample+conv 128 at 128->256 75 -> 55 ms
//! (phase convs -> Winograd phases).
use super::KernelFamily;
use crate::ops::Layout;
use gemm::Parallelism;
use rayon::prelude::*;
use std::cell::RefCell;

mod direct;
pub mod kernel;
mod scratch;
#[cfg(test)]
mod tests;
mod upsample;
pub mod winograd;
pub mod winograd_gemm;

pub use direct::*;
pub(crate) use scratch::*;
pub use upsample::*;

/// How `prepare` laid a conv weight out for this machine (chosen once, at load).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prep {
    /// torch `(c_out, c_in, kh, kw)`, as given
    Torch,
    /// `packed_weights` (AVX-512)
    Packed,
    /// `winograd::weights` (AVX-512; 3x3 stride 1 pad 1 only)
    Winograd,
    /// `upsample_phase_weights`
    UpsamplePhases,
    /// `winograd::upsample_weights` (AVX-512)
    UpsampleWinograd,
    /// `winograd_gemm::weights` (any x86-64-v3; 3x3 stride 1 pad 1 only)
    WinogradGemm,
    /// `winograd_gemm::upsample_weights`
    UpsampleWinogradGemm,
}

/// Lays out a conv weight of `shape` (c_out, c_in, kh, kw) as its `layout` allows.
pub fn prepare(layout: Layout, shape: &[usize], w: Vec<f32>, kernels: KernelFamily) -> (Prep, Vec<f32>) {
    let (co, ci, kh, kw) = match *shape {
        [co, ci, kh, kw] => (co, ci, kh, kw),
        _ => return (Prep::Torch, w),
    };
    // Winograd where its transformed weight fits `WINOGRAD_MAX_BYTES` and LLAMAGEN_NO_WINOGRAD is not set.
    let fast = kernels >= KernelFamily::Avx512;
    let fits = |phases| {
        let len = if fast {
            winograd::weights_len(co, ci, phases)
        } else {
            winograd_gemm::weights_len(co, ci, phases)
        };
        !no_winograd() && 4 * len <= WINOGRAD_MAX_BYTES
    };
    let k3 = kh == 3 && kw == 3;
    match layout {
        Layout::UpsamplePhases if fast && k3 && fits(4) => {
            (Prep::UpsampleWinograd, winograd::upsample_weights(&w, co, ci))
        }
        Layout::UpsamplePhases if k3 && fits(4) => {
            (Prep::UpsampleWinogradGemm, winograd_gemm::upsample_weights(&w, co, ci))
        }
        Layout::UpsamplePhases => (Prep::UpsamplePhases, upsample_phase_weights(&w, co, ci)),
        Layout::Winograd if fast && k3 && ci >= WINOGRAD_MIN_C_IN && fits(1) => {
            (Prep::Winograd, winograd::weights(&w, co, ci))
        }
        Layout::Winograd if k3 && ci >= WINOGRAD_MIN_C_IN && co >= WINOGRAD_GEMM_MIN_C_OUT && fits(1) => {
            (Prep::WinogradGemm, winograd_gemm::weights(&w, co, ci))
        }
        Layout::Winograd | Layout::Conv if fast => (Prep::Packed, packed_weights(&w, co, ci, kh, kw)),
        _ => (Prep::Torch, w),
    }
}

pub struct Trace(String, std::time::Instant);
impl Trace {
    pub fn new(s: String) -> Self {
        Trace(s, std::time::Instant::now())
    }
}
impl Drop for Trace {
    fn drop(&mut self) {
        if std::env::var_os("CONV_TRACE").is_some() {
            eprintln!("TRACE {:8.2} ms {}", self.1.elapsed().as_secs_f64() * 1e3, self.0);
        }
    }
}

/// Below this many input channels a 3x3 conv stays direct (the transforms outweigh a K this short).
const WINOGRAD_MIN_C_IN: usize = 8;

/// Below this many output channels the GEMM Winograd's output transform and the gemm crate's
/// per-call packing outweigh what it saves (the decoder's conv_out, 128 -> 3).
const WINOGRAD_GEMM_MIN_C_OUT: usize = 16;

/// Largest transformed weight a Winograd conv keeps. Its weights are 36 / 9 = 4x the conv's (16x for the four
/// upsample phases), and the convs whose weights are big are the many-channel, low-resolution ones (VQ-16: 512
/// channels at 16-32 px), where a conv costs a few ms and Winograd saves little (measured on the AVX2 box: 512->512
/// at 16x16 11 -> 6 ms, the 256-channel upsample 69 -> 60 ms, for 28 MB more each). On the AVX2 box the cap took
/// the VQ-16 decode's peak RSS (with GPT-B) from 1.38 GB to 0.89 GB, its time unchanged within noise. The AVX-512
/// path has the same cap: uncapped, its VQ-16 decoder weights were 766 MB and took 0.86 s to prepare (one thread,
/// measured here by calling `prepare` with the AVX-512 family), most of the 1.6 s a one-image `llamagen decode`
/// took on an AVX-512 box.
const WINOGRAD_MAX_BYTES: usize = 16 << 20;

/// `LLAMAGEN_NO_WINOGRAD` set: the direct convolutions everywhere (smaller error; for measuring what Winograd buys).
fn no_winograd() -> bool {
    std::env::var_os("LLAMAGEN_NO_WINOGRAD").is_some()
}

/// `Op::Conv` on a weight from `prepare`: out = conv(x) + bias (+ residual). x: (n, c_in, h, w).
#[allow(clippy::too_many_arguments)]
pub fn conv_prepared(
    prep: Prep,
    w: &[f32],
    x: &[f32],
    (n, c_in, h, wd): (usize, usize, usize, usize),
    (c_out, k, stride, pad): (usize, usize, usize, [usize; 4]),
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    out: &mut [f32],
) -> Result<(), String> {
    let _t = Trace::new(format!("conv {prep:?} {c_in}->{c_out} k{k} s{stride} {h}x{wd}"));
    let ep = residual.map_or(Epilogue::Set, Epilogue::Residual);
    let wt = match prep {
        Prep::Torch => ConvWeights::torch(w, c_out, c_in, k, k),
        Prep::Packed => ConvWeights::packed(w, c_out, c_in, k, k),
        Prep::Winograd => {
            if k != 3 || stride != 1 || pad != [1; 4] {
                return Err(format!(
                    "a Winograd weight needs a 3x3 stride-1 pad-1 conv, not k {k} stride {stride} pad {pad:?}"
                ));
            }
            winograd::conv3x3(x, (n, h, wd), w, c_out, c_in, bias, ep, out);
            return Ok(());
        }
        Prep::WinogradGemm => {
            if k != 3 || stride != 1 || pad != [1; 4] {
                return Err(format!(
                    "a Winograd weight needs a 3x3 stride-1 pad-1 conv, not k {k} stride {stride} pad {pad:?}"
                ));
            }
            winograd_gemm::conv3x3(x, (n, h, wd), w, c_out, c_in, bias, ep, out);
            return Ok(());
        }
        Prep::UpsamplePhases | Prep::UpsampleWinograd | Prep::UpsampleWinogradGemm => {
            return Err("an upsample weight in a plain conv".into())
        }
    };
    if prep == Prep::Packed && k == 1 && stride == 1 && pad == [0; 4] {
        conv1x1_packed(x, (n, h * wd), wt, bias, ep, out);
    } else {
        conv2d_with(x, (n, h, wd), wt, bias, stride, pad, ep, out);
    }
    Ok(())
}

/// `Op::UpsampleConv` on a weight from `prepare`. x: (n, c_in, h, w); out: (n, c_out, 2h, 2w).
#[allow(clippy::too_many_arguments)]
pub fn upsample_prepared(
    prep: Prep,
    w: &[f32],
    x: &[f32],
    (n, c_in, h, wd): (usize, usize, usize, usize),
    c_out: usize,
    bias: &[f32],
    out: &mut [f32],
) -> Result<(), String> {
    let _t = Trace::new(format!("upsample {prep:?} {c_in}->{c_out} {h}x{wd}"));
    match prep {
        Prep::UpsampleWinograd => winograd::upsample_conv3x3(x, (n, h, wd), w, c_out, c_in, bias, out),
        Prep::UpsampleWinogradGemm => winograd_gemm::upsample_conv3x3(x, (n, h, wd), w, c_out, c_in, bias, out),
        Prep::UpsamplePhases => upsample_conv3x3(x, n, c_in, h, wd, w, bias, c_out, out),
        _ => return Err("an upsample conv needs an UpsamplePhases weight".into()),
    }
    Ok(())
}

impl crate::ops::Exec<crate::ops::conv::Conv> for super::CpuBackend {
    fn exec(&mut self, op: &crate::ops::conv::Conv, a: &crate::ops::Args<'_>) -> crate::Result<()> {
        let v = self.views(a)?;
        self.conv_node(op, &v, a, v.f32(a.ins[0]))
    }
}

impl super::CpuBackend {
    /// Node `a`'s conv `op` of `x` (its input 0, or `groupnorm_conv`'s normalised copy of it) into its output, with
    /// input 1 as the residual when `op` has one.
    pub(super) fn conv_node(
        &self,
        op: &crate::ops::conv::Conv,
        v: &super::Views,
        a: &crate::ops::Args<'_>,
        x: &[f32],
    ) -> crate::Result<()> {
        let wt = self.w(op.w);
        let (w, b) = (self.weight_f32(op.w, "conv")?, self.weight_f32(op.b, "conv bias")?);
        let residual = op.residual.then(|| v.f32(a.ins[1]));
        let geo = (op.c_out, op.k, op.stride, op.pad);
        conv_prepared(wt.conv, w, x, op.x_shape(), geo, Some(b), residual, v.f32_mut(a.out))
            .map_err(|e| crate::Error::tensor(&wt.name, e))
    }
}
