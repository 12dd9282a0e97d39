//! The CPU backend: the engine for users without a GPU, checked like every kernel against the plain references of
//! `crate::ops`. One file per op (named like the op), with its `Exec` impl; this file owns memory (weights, KV cache,
//! arena) and the arena views the impls take.
pub mod buf;
pub mod family;
pub mod kv_cache;
pub mod matmul_avx2;
pub mod matmul_avx512;
pub mod simd;
pub mod team;

/// One module per op, named like it (the list is `ops::op_set!`): the CPU implementation and its `Exec` impl.
macro_rules! op_modules {
    ($($m:ident),+) => { $(pub mod $m;)+ };
}
crate::ops::each_op_module!(op_modules);
#[cfg(test)]
pub(crate) mod testutil;

use crate::ops::{Backend, Dtype, KvSpec, Layout, TensorRef, Weight, WeightId};
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
    /// The w1|w3 outputs of `matmul_swiglu`, before the product.
    ffn: Vec<f32>,
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
            ffn: Vec::new(),
            mm: Default::default(),
            sampling: Default::default(),
            round: round_bf16,
            kernels,
        }
    }

    fn w(&self, id: WeightId) -> &CpuWeight {
        &self.weights[id.0 as usize]
    }
}

/// Arena views for one node. The planner guarantees that a node's output (and its scratch) never shares bytes with a
/// tensor that is live at the same node (its inputs included), which is what makes handing out `&mut` next to `&`
/// sound (`CpuBackend::views` checks it again); the
/// executor checked each tensor's element type.
pub(crate) struct Views {
    base: *mut u8,
}

impl Views {
    fn ptr<T: bytemuck::Pod>(&self, t: TensorRef) -> *mut T {
        const { assert!(std::mem::size_of::<T>() == 4) };
        // SAFETY: `CpuBackend::views` checked that the node's tensors lie inside the arena at 4-byte aligned offsets
        // (the arena itself is 64-byte aligned).
        unsafe { self.base.add(t.offset) as *mut T }
    }
    pub(crate) fn f32<'a>(&self, t: TensorRef) -> &'a [f32] {
        // SAFETY: see `ptr` and the struct comment.
        unsafe { std::slice::from_raw_parts(self.ptr(t), t.numel) }
    }
    pub(crate) fn i32<'a>(&self, t: TensorRef) -> &'a [i32] {
        // SAFETY: see `ptr` and the struct comment.
        unsafe { std::slice::from_raw_parts(self.ptr(t), t.numel) }
    }
    #[allow(clippy::mut_from_ref)]
    pub(crate) fn f32_mut<'a>(&self, t: TensorRef) -> &'a mut [f32] {
        // SAFETY: see the struct comment: the output is disjoint from every other live view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(t), t.numel) }
    }
    #[allow(clippy::mut_from_ref)]
    pub(crate) fn i32_mut<'a>(&self, t: TensorRef) -> &'a mut [i32] {
        // SAFETY: as `f32_mut`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(t), t.numel) }
    }
}

impl CpuBackend {
    /// The arena views of one node, after checking what makes them sound: every tensor inside the arena at a
    /// 4-byte aligned offset, and the output disjoint from every input (the planner's promise, checked here because
    /// `Exec` is public).
    pub(crate) fn views(&mut self, a: &crate::ops::Args<'_>) -> Result<Views> {
        let len = self.arena.len() * 64;
        let span = |t: &TensorRef| {
            let end = t.numel.checked_mul(4).and_then(|b| b.checked_add(t.offset));
            match end {
                Some(end) if end <= len && t.offset % 4 == 0 => Ok(t.offset..end),
                _ => Err(Error::Invalid(format!(
                    "cpu backend: tensor {t:?} outside the arena ({len} bytes)"
                ))),
            }
        };
        let out = span(&a.out)?;
        let overlap = |a: &std::ops::Range<usize>, b: &std::ops::Range<usize>| {
            a.start < b.end && b.start < a.end && !a.is_empty() && !b.is_empty()
        };
        for t in a.ins {
            if overlap(&span(t)?, &out) {
                return Err(Error::Invalid(
                    "cpu backend: a node's output overlaps one of its inputs".into(),
                ));
            }
        }
        if let Some(st) = &a.scratch {
            let s = span(st)?;
            // the planner may give the scratch input 0's exact bytes (`OpDesc::scratch_reuses_input`)
            let clash = |(k, t): (usize, &TensorRef)| !(k == 0 && t == st) && span(t).is_ok_and(|r| overlap(&s, &r));
            if overlap(&s, &out) || a.ins.iter().enumerate().any(clash) {
                return Err(Error::Invalid(
                    "cpu backend: a node's scratch overlaps its input or output".into(),
                ));
            }
        }
        Ok(Views {
            base: self.arena.as_mut_ptr() as *mut u8,
        })
    }

    fn bytes(&mut self, t: TensorRef) -> Result<&mut [u8]> {
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut self.arena);
        bytes
            .get_mut(t.offset..t.offset + 4 * t.numel)
            .ok_or_else(|| Error::Invalid("cpu backend: tensor outside the arena".into()))
    }

    /// An f32-stored weight (norms, biases, conv weights, tables of f32 models).
    fn weight_f32(&self, id: WeightId, what: &str) -> Result<&[f32]> {
        weight_f32(self.w(id), what)
    }
}

fn weight_f32<'a>(w: &'a CpuWeight, what: &str) -> Result<&'a [f32]> {
    let v = w.f32();
    if v.is_empty() && w.shape.iter().product::<usize>() > 0 {
        return Err(Error::tensor(&w.name, format!("{what} needs f32 storage")));
    }
    Ok(v)
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

    fn write_f32(&mut self, t: TensorRef, data: &[f32]) -> Result<()> {
        self.bytes(t)?.copy_from_slice(bytemuck::cast_slice(data));
        Ok(())
    }

    fn write_i32(&mut self, t: TensorRef, data: &[i32]) -> Result<()> {
        self.bytes(t)?.copy_from_slice(bytemuck::cast_slice(data));
        Ok(())
    }

    fn read_f32(&self, t: TensorRef) -> Result<Vec<f32>> {
        let bytes: &[u8] = bytemuck::cast_slice(&self.arena);
        Ok(bytemuck::pod_collect_to_vec(&bytes[t.offset..t.offset + 4 * t.numel]))
    }

    fn read_i32(&self, t: TensorRef) -> Result<Vec<i32>> {
        let bytes: &[u8] = bytemuck::cast_slice(&self.arena);
        Ok(bytemuck::pod_collect_to_vec(&bytes[t.offset..t.offset + 4 * t.numel]))
    }

    fn copy(&mut self, src: TensorRef, dst: TensorRef) -> Result<()> {
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut self.arena);
        bytes.copy_within(src.offset..src.offset + 4 * src.numel, dst.offset);
        Ok(())
    }
}
