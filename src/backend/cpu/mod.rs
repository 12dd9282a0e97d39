//! The CPU backend: the reference every kernel is checked against, and the engine for users without a GPU.
//! One file per op (same names as the kernels); this file owns memory (weights, KV cache, arena) and dispatch.
pub mod attention;
pub mod buf;
pub mod codebook;
pub mod conv;
pub mod conv_transpose;
pub mod embed;
pub mod family;
pub mod gelu;
pub mod groupnorm;
pub mod kv_cache;
pub mod matmul;
pub mod matmul_avx2;
pub mod matmul_avx512;
pub mod rmsnorm;
pub mod rope;
pub mod sampling;
pub mod simd;
pub mod swiglu;
pub mod team;
#[cfg(test)]
pub(crate) mod testutil;
pub mod vq_attention;

use crate::backend::{Backend, Dtype, KvSpec, Layout, Weight};
use crate::runtime::{Graph, Plan, StepParams, TensorId};
use crate::{Error, Result};
pub use buf::Buf;
pub use family::KernelFamily;
use half::bf16;
pub use kv_cache::KvCache;
use matmul::WeightRef;

#[inline]
pub fn round_bf16(x: f32) -> f32 {
    bf16::from_f32(x).to_f32()
}

pub enum WeightData {
    F32(Buf<f32>),
    Bf16(Buf<bf16>),
}

pub struct CpuWeight {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: WeightData,
    /// How a conv weight's data is laid out (`Torch` for every other weight).
    pub conv: conv::Prep,
}

impl CpuWeight {
    fn as_ref(&self) -> WeightRef<'_> {
        match &self.data {
            WeightData::F32(v) => WeightRef::F32(v),
            WeightData::Bf16(v) => WeightRef::Bf16(v),
        }
    }

    /// f32 view; only small f32-stored weights (norms, biases, conv weights) are read this way.
    fn f32(&self) -> &[f32] {
        match &self.data {
            WeightData::F32(v) => v,
            WeightData::Bf16(_) => &[],
        }
    }

    pub fn copy_row(&self, r: usize, out: &mut [f32]) {
        let d = out.len();
        match &self.data {
            WeightData::F32(v) => out.copy_from_slice(&v[r * d..(r + 1) * d]),
            WeightData::Bf16(v) => out
                .iter_mut()
                .zip(&v[r * d..(r + 1) * d])
                .for_each(|(o, x)| *o = x.to_f32()),
        }
    }
}

/// Shares an output pointer across parallel tasks that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub *mut f32);
// SAFETY: users guarantee that no two tasks write the same element (each documents its partition).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The `len` floats at `off` of the shared buffer.
    ///
    /// # Safety
    /// They lie inside the buffer, and no other task reads or writes them while the slice lives.
    pub(crate) unsafe fn slice<'a>(&self, off: usize, len: usize) -> &'a mut [f32] {
        // SAFETY: the caller's guarantees.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(off), len) }
    }
}

/// 64-byte aligned arena blocks.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct Line([u8; 64]);

pub struct CpuBackend {
    weights: Vec<CpuWeight>,
    kv: Option<KvCache>,
    arena: Vec<Line>,
    scores: Vec<f32>,
    /// The products' x in the layout their kernel reads.
    mm: matmul::Scratch,
    sampling: sampling::SamplingScratch,
    /// Activations rounded to bf16 where the reference stores bf16 (the `--dtype bf16` GPT).
    round: bool,
    /// The SIMD paths this backend takes (`family.rs`).
    kernels: KernelFamily,
}

/// Plain weights of at least this many bytes (in f32) go into the packed huge-page buffers of `load_weights`.
const STREAMED_MIN_BYTES: usize = 1 << 20;

/// Rounds to bf16 in parallel blocks.
fn to_bf16(v: &[f32]) -> Buf<bf16> {
    Buf::from_fill(v.len(), |off, d| {
        d.iter_mut().zip(&v[off..]).for_each(|(d, &s)| *d = bf16::from_f32(s))
    })
}

impl CpuBackend {
    /// A backend with the family `LLAMAGEN_CPU_KERNELS` names, else the best this CPU has. A bad value of the
    /// variable falls back to the detected family with a warning: the CLI checks it first and refuses it
    /// (`KernelFamily::from_env`); use `with_kernels` to choose one in code.
    pub fn new(round_bf16: bool) -> Self {
        let kernels = KernelFamily::from_env().unwrap_or_else(|e| {
            tracing::warn!("{e}; using `{}`", KernelFamily::detected());
            KernelFamily::detected()
        });
        Self::build(round_bf16, kernels)
    }

    /// A backend that takes the SIMD paths of `kernels`; an error if this CPU cannot run them.
    pub fn with_kernels(round_bf16: bool, kernels: KernelFamily) -> Result<Self> {
        Ok(Self::build(round_bf16, KernelFamily::checked(kernels)?))
    }

    fn build(round_bf16: bool, kernels: KernelFamily) -> Self {
        CpuBackend {
            weights: Vec::new(),
            kv: None,
            arena: Vec::new(),
            scores: Vec::new(),
            mm: Default::default(),
            sampling: Default::default(),
            round: round_bf16,
            kernels,
        }
    }

    fn w(&self, id: crate::runtime::WeightId) -> &CpuWeight {
        &self.weights[id.0 as usize]
    }
}

fn slot(g: &Graph, plan: &Plan, t: TensorId) -> (usize, usize) {
    (plan.offsets[t.0 as usize], g.info(t).numel())
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn load_weights(&mut self, mut weights: Vec<Weight>) -> Result<()> {
        use rayon::prelude::*;
        use std::sync::Mutex;
        let kernels = self.kernels;
        // The linear layers' weights, streamed every decode step, go into one huge-page buffer per dtype: f32 ones
        // copied there, bf16 ones rounded there, each source freed as soon as it is copied (so the peak stays near
        // one copy of the weights).
        let is_streamed: Vec<bool> = weights
            .iter()
            .map(|w| w.layout == Layout::Plain && 4 * w.data.len() >= STREAMED_MIN_BYTES)
            .collect();
        let mut take = |storage| -> (Vec<usize>, Vec<Mutex<Vec<f32>>>) {
            let picked = weights
                .iter_mut()
                .zip(&is_streamed)
                .filter(|(w, &s)| s && w.storage == storage);
            picked
                .map(|(w, _)| (w.data.len(), Mutex::new(std::mem::take(&mut w.data))))
                .unzip()
        };
        let (f32_lens, f32_src) = take(Dtype::F32);
        let (bf16_lens, bf16_src) = take(Dtype::Bf16);
        let source =
            |src: &[Mutex<Vec<f32>>], i: usize| std::mem::take(&mut *src[i].lock().unwrap_or_else(|p| p.into_inner()));
        let mut f32_bufs = Buf::packed(&f32_lens, |i, d| d.copy_from_slice(&source(&f32_src, i))).into_iter();
        let mut bf16_bufs = Buf::packed(&bf16_lens, |i, d| {
            d.iter_mut()
                .zip(&source(&bf16_src, i))
                .for_each(|(d, &s)| *d = bf16::from_f32(s))
        })
        .into_iter();
        let mut data: Vec<Option<WeightData>> = weights
            .iter()
            .zip(&is_streamed)
            .map(|(w, &packed)| match (packed, w.storage) {
                (true, Dtype::F32) => f32_bufs.next().map(WeightData::F32),
                (true, Dtype::Bf16) => bf16_bufs.next().map(WeightData::Bf16),
                _ => None,
            })
            .collect();
        // The rest (norms, biases, embeddings of small models, convolutions) in parallel: a VQ decoder's
        // convolutions are prepared (Winograd transforms, packing) one per task.
        self.weights = weights
            .into_par_iter()
            .zip(data.par_iter_mut())
            .map(|(w, packed)| {
                let (data, prep) = match (packed.take(), w.layout, w.storage) {
                    (Some(d), _, _) => (d, conv::Prep::Torch),
                    (None, Layout::UpsamplePhases | Layout::Conv | Layout::Winograd, _) => {
                        let (prep, data) = conv::prepare(w.layout, &w.shape, w.data, kernels);
                        (WeightData::F32(Buf::vec(data)), prep)
                    }
                    (None, Layout::Plain, Dtype::F32) => (WeightData::F32(Buf::vec(w.data)), conv::Prep::Torch),
                    (None, Layout::Plain, Dtype::Bf16) => (WeightData::Bf16(to_bf16(&w.data)), conv::Prep::Torch),
                };
                CpuWeight {
                    name: w.name,
                    shape: w.shape,
                    data,
                    conv: prep,
                }
            })
            .collect();
        Ok(())
    }

    fn alloc_kv(&mut self, spec: KvSpec) -> Result<()> {
        self.scores = vec![0.0; spec.batch * spec.heads * spec.seq];
        self.kv = Some(KvCache::new(spec));
        Ok(())
    }

    fn reserve_arena(&mut self, bytes: usize) -> Result<()> {
        let lines = bytes.div_ceil(64);
        if self.arena.len() < lines {
            self.arena = vec![Line([0; 64]); lines];
        }
        Ok(())
    }

    fn write_f32(&mut self, g: &Graph, plan: &Plan, t: TensorId, data: &[f32]) -> Result<()> {
        let (off, n) = slot(g, plan, t);
        check_len(g, t, data.len())?;
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut self.arena);
        bytes[off..off + 4 * n].copy_from_slice(bytemuck::cast_slice(data));
        Ok(())
    }

    fn write_i32(&mut self, g: &Graph, plan: &Plan, t: TensorId, data: &[i32]) -> Result<()> {
        let (off, n) = slot(g, plan, t);
        check_len(g, t, data.len())?;
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut self.arena);
        bytes[off..off + 4 * n].copy_from_slice(bytemuck::cast_slice(data));
        Ok(())
    }

    fn read_f32(&self, g: &Graph, plan: &Plan, t: TensorId) -> Result<Vec<f32>> {
        let (off, n) = slot(g, plan, t);
        let bytes: &[u8] = bytemuck::cast_slice(&self.arena);
        Ok(bytemuck::pod_collect_to_vec(&bytes[off..off + 4 * n]))
    }

    fn read_i32(&self, g: &Graph, plan: &Plan, t: TensorId) -> Result<Vec<i32>> {
        let (off, n) = slot(g, plan, t);
        let bytes: &[u8] = bytemuck::cast_slice(&self.arena);
        Ok(bytemuck::pod_collect_to_vec(&bytes[off..off + 4 * n]))
    }

    fn copy(&mut self, gs: &Graph, ps: &Plan, src: TensorId, gd: &Graph, pd: &Plan, dst: TensorId) -> Result<()> {
        let (so, n) = slot(gs, ps, src);
        let (d_o, m) = slot(gd, pd, dst);
        if n != m {
            return Err(Error::Invalid(format!(
                "copy {} -> {}: {n} vs {m} elements",
                gs.info(src).name,
                gd.info(dst).name
            )));
        }
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut self.arena);
        bytes.copy_within(so..so + 4 * n, d_o);
        Ok(())
    }

    fn run(&mut self, g: &Graph, plan: &Plan, step: &StepParams) -> Result<()> {
        for node in &g.nodes {
            self.exec(g, plan, node, step)?;
        }
        Ok(())
    }

    fn run_node(&mut self, g: &Graph, plan: &Plan, node: &crate::runtime::Node, step: &StepParams) -> Result<()> {
        self.exec(g, plan, node, step)
    }
}

fn check_len(g: &Graph, t: TensorId, len: usize) -> Result<()> {
    let info = g.info(t);
    if info.numel() != len {
        return Err(Error::Invalid(format!(
            "tensor `{}` {:?} needs {} values, got {len}",
            info.name,
            info.shape,
            info.numel()
        )));
    }
    Ok(())
}

mod dispatch;
