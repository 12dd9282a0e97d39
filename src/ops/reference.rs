//! The plain references as a backend: [`RefBackend`] runs any graph through the descriptors' `reference`
//! functions (f32 storage, f64 accumulation where it matters, no SIMD, no threads), so a whole model or a single op
//! can be compared between the reference, the CPU backend under every kernel family and the CUDA kernels.
//!
//! With `round` (the `--dtype bf16` GPT) it stores what the official code stores in bf16 rounded to bf16: every float
//! op output, the KV cache, and weights whose storage is bf16; ops round their inner bf16 tensors themselves (e.g.
//! rmsnorm's normalised value), as their descriptors document.
use super::backend::{Backend, KvSpec, Weight};
use super::{round_bf16, Args, Dtype, Exec, OpDesc, Scalar, StepParams, TensorRef, WeightId};
use crate::{Error, Result};

/// A tensor's values in the reference.
#[derive(Clone, Debug, PartialEq)]
pub enum RefData {
    F32(Vec<f32>),
    I32(Vec<i32>),
}

/// The KV cache of the reference: `[layer][k|v][batch][head][seq][head_dim]` in f32 (rounded values in bf16 mode).
pub struct RefKv {
    pub spec: KvSpec,
    pub data: Vec<f32>,
}

impl RefKv {
    /// Offset of (layer, k|v, cache row, head, position).
    pub fn at(&self, layer: usize, kv: usize, b: usize, h: usize, p: usize) -> usize {
        let s = &self.spec;
        ((((layer * 2 + kv) * s.batch + b) * s.heads + h) * s.seq + p) * s.head_dim
    }
}

/// One weight of the reference: name (for messages), shape, values (bf16-rounded when stored as bf16).
pub struct RefWeight {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// What a descriptor's `reference` sees: the node's inputs, the weight table, the KV cache, the step, and where its
/// output goes.
pub struct RefCtx<'a> {
    pub ins: &'a [RefData],
    pub weights: &'a [RefWeight],
    pub kv: Option<&'a mut RefKv>,
    pub step: &'a StepParams,
    /// Round bf16 tensors (the activations and cache of a `--dtype bf16` GPT).
    pub round: bool,
    out_numel: usize,
    out: Option<RefData>,
}

impl<'a> RefCtx<'a> {
    pub fn new(
        ins: &'a [RefData],
        weights: &'a [RefWeight],
        kv: Option<&'a mut RefKv>,
        step: &'a StepParams,
        round: bool,
        out_numel: usize,
    ) -> Self {
        RefCtx {
            ins,
            weights,
            kv,
            step,
            round,
            out_numel,
            out: None,
        }
    }

    pub fn f32(&self, i: usize) -> Result<&'a [f32]> {
        match self.ins.get(i) {
            Some(RefData::F32(v)) => Ok(v),
            _ => Err(Error::Invalid(format!("reference: input {i} is not an f32 tensor"))),
        }
    }

    pub fn i32(&self, i: usize) -> Result<&'a [i32]> {
        match self.ins.get(i) {
            Some(RefData::I32(v)) => Ok(v),
            _ => Err(Error::Invalid(format!("reference: input {i} is not an i32 tensor"))),
        }
    }

    pub fn w(&self, id: WeightId) -> Result<&'a RefWeight> {
        self.weights
            .get(id.0 as usize)
            .ok_or_else(|| Error::Invalid(format!("reference: no weight {}", id.0)))
    }

    pub fn kv(&mut self) -> Result<&mut RefKv> {
        self.kv
            .as_deref_mut()
            .ok_or_else(|| Error::Invalid("reference: no KV cache allocated".into()))
    }

    /// `x` rounded to bf16 in bf16 mode, unchanged otherwise.
    pub fn r(&self, x: f32) -> f32 {
        if self.round {
            round_bf16(x)
        } else {
            x
        }
    }

    /// The op's float output (rounded to bf16 in bf16 mode).
    pub fn put_f32(&mut self, mut v: Vec<f32>) -> Result<()> {
        self.check_len(v.len())?;
        if self.round {
            v.iter_mut().for_each(|x| *x = round_bf16(*x));
        }
        self.out = Some(RefData::F32(v));
        Ok(())
    }

    pub fn put_i32(&mut self, v: Vec<i32>) -> Result<()> {
        self.check_len(v.len())?;
        self.out = Some(RefData::I32(v));
        Ok(())
    }

    fn check_len(&self, n: usize) -> Result<()> {
        if n != self.out_numel {
            return Err(Error::Invalid(format!(
                "reference: {n} output values for a tensor of {}",
                self.out_numel
            )));
        }
        Ok(())
    }

    pub fn take_out(self) -> Option<RefData> {
        self.out
    }
}

/// The reference backend (`--device ref` is not offered: it exists for tests and for studying the ops).
pub struct RefBackend {
    weights: Vec<RefWeight>,
    kv: Option<RefKv>,
    /// One 4-byte slot per element, like the arena of the other backends: f32 or i32 bits.
    arena: Vec<u32>,
    round: bool,
}

impl RefBackend {
    pub fn new(round_bf16: bool) -> Self {
        RefBackend {
            weights: Vec::new(),
            kv: None,
            arena: Vec::new(),
            round: round_bf16,
        }
    }

    fn slot(&self, t: TensorRef) -> Result<std::ops::Range<usize>> {
        let (a, n) = (t.offset / 4, t.numel);
        if a + n > self.arena.len() {
            return Err(Error::Invalid("reference: tensor outside the arena".into()));
        }
        Ok(a..a + n)
    }

    fn load(&self, t: TensorRef) -> Result<RefData> {
        let s = &self.arena[self.slot(t)?];
        Ok(match t.scalar {
            Scalar::F32 => RefData::F32(s.iter().map(|&b| f32::from_bits(b)).collect()),
            Scalar::I32 => RefData::I32(s.iter().map(|&b| b as i32).collect()),
        })
    }
}

impl<O: OpDesc> Exec<O> for RefBackend {
    fn exec(&mut self, op: &O, a: &Args<'_>) -> Result<()> {
        let ins = a.ins.iter().map(|&t| self.load(t)).collect::<Result<Vec<_>>>()?;
        let mut ctx = RefCtx::new(&ins, &self.weights, self.kv.as_mut(), a.step, self.round, a.out.numel);
        op.reference(&mut ctx)?;
        let out = ctx
            .take_out()
            .ok_or_else(|| Error::Invalid(format!("reference `{}` wrote no output", O::NAME)))?;
        let r = self.slot(a.out)?;
        match out {
            RefData::F32(v) => self.arena[r].iter_mut().zip(v).for_each(|(d, x)| *d = x.to_bits()),
            RefData::I32(v) => self.arena[r].iter_mut().zip(v).for_each(|(d, x)| *d = x as u32),
        }
        Ok(())
    }
}

impl Backend for RefBackend {
    fn name(&self) -> &'static str {
        "reference"
    }

    fn load_weights(&mut self, weights: Vec<Weight>) -> Result<()> {
        self.weights = weights
            .into_iter()
            .map(|w| {
                let mut data = w.data;
                if w.storage == Dtype::Bf16 {
                    data.iter_mut().for_each(|x| *x = round_bf16(*x));
                }
                RefWeight {
                    name: w.name,
                    shape: w.shape,
                    data,
                }
            })
            .collect();
        Ok(())
    }

    fn alloc_kv(&mut self, spec: KvSpec) -> Result<()> {
        self.kv = Some(RefKv {
            spec,
            data: vec![0.0; spec.elems()],
        });
        Ok(())
    }

    fn reserve_arena(&mut self, bytes: usize) -> Result<()> {
        let n = bytes.div_ceil(4);
        if self.arena.len() < n {
            self.arena.resize(n, 0);
        }
        Ok(())
    }

    fn write_f32(&mut self, t: TensorRef, data: &[f32]) -> Result<()> {
        let round = self.round;
        let r = self.slot(t)?;
        for (d, &x) in self.arena[r].iter_mut().zip(data) {
            *d = if round { round_bf16(x) } else { x }.to_bits();
        }
        Ok(())
    }

    fn write_i32(&mut self, t: TensorRef, data: &[i32]) -> Result<()> {
        let r = self.slot(t)?;
        self.arena[r].iter_mut().zip(data).for_each(|(d, &x)| *d = x as u32);
        Ok(())
    }

    fn read_f32(&self, t: TensorRef) -> Result<Vec<f32>> {
        Ok(self.arena[self.slot(t)?].iter().map(|&b| f32::from_bits(b)).collect())
    }

    fn read_i32(&self, t: TensorRef) -> Result<Vec<i32>> {
        Ok(self.arena[self.slot(t)?].iter().map(|&b| b as i32).collect())
    }

    fn copy(&mut self, src: TensorRef, dst: TensorRef) -> Result<()> {
        let (s, d) = (self.slot(src)?, self.slot(dst)?);
        self.arena.copy_within(s, d.start);
        Ok(())
    }
}

/// `Σ a·b` accumulated in f64 and rounded once.
pub fn dot64(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum::<f64>() as f32
}
