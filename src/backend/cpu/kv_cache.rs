//! The static KV cache, `[layer][k|v][batch][head][seq][head_dim]`, allocated once and written in place.
use super::matmul::dot_bf16;
use super::Buf;
use crate::ops::{Dtype, KvSpec};
use half::bf16;

pub enum KvData {
    F32(Buf<f32>),
    Bf16(Buf<bf16>),
}

pub struct KvCache {
    pub spec: KvSpec,
    pub data: KvData,
}

/// The cached rows `[seq][head_dim]` of one (layer, k|v, batch row, head).
#[derive(Clone, Copy)]
pub enum Head<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
}

impl<'a> Head<'a> {
    /// Position `p`'s vector of `hd` elements.
    #[inline]
    pub fn row(self, p: usize, hd: usize) -> Row<'a> {
        match self {
            Head::F32(d) => Row::F32(&d[p * hd..(p + 1) * hd]),
            Head::Bf16(d) => Row::Bf16(&d[p * hd..(p + 1) * hd]),
        }
    }
}

/// One cached head vector.
pub enum Row<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
}

impl Row<'_> {
    #[inline]
    pub fn dot(&self, x: &[f32]) -> f32 {
        match self {
            Row::F32(r) => r.iter().zip(x).map(|(a, b)| a * b).sum(),
            Row::Bf16(r) => dot_bf16(x, r),
        }
    }

    /// dst += alpha · row
    #[inline]
    pub fn axpy(&self, alpha: f32, dst: &mut [f32]) {
        match self {
            Row::F32(r) => dst.iter_mut().zip(r.iter()).for_each(|(d, v)| *d += alpha * v),
            Row::Bf16(r) => dst.iter_mut().zip(r.iter()).for_each(|(d, v)| *d += alpha * v.to_f32()),
        }
    }
}

impl KvCache {
    pub fn new(spec: KvSpec) -> Self {
        let n = spec.elems();
        let data = match spec.storage {
            Dtype::F32 => KvData::F32(Buf::zeroed(n)),
            Dtype::Bf16 => KvData::Bf16(Buf::zeroed(n)),
        };
        KvCache { spec, data }
    }

    #[inline]
    fn index(&self, layer: usize, kv: usize, b: usize, h: usize, p: usize) -> usize {
        let s = &self.spec;
        ((((layer * 2 + kv) * s.batch + b) * s.heads + h) * s.seq + p) * s.head_dim
    }

    #[inline]
    pub fn write(&mut self, layer: usize, kv: usize, b: usize, h: usize, p: usize, v: &[f32]) {
        let i = self.index(layer, kv, b, h, p);
        let hd = self.spec.head_dim;
        match &mut self.data {
            KvData::F32(d) => d[i..i + hd].copy_from_slice(v),
            KvData::Bf16(d) => d[i..i + hd]
                .iter_mut()
                .zip(v)
                .for_each(|(o, &x)| *o = bf16::from_f32(x)),
        }
    }

    /// A handle through which parallel tasks write disjoint rows of the cache (see `KvWriter::write`).
    pub fn writer(&mut self) -> KvWriter<'_> {
        let ptr = match &mut self.data {
            KvData::F32(d) => KvPtr::F32(d.as_mut_ptr()),
            KvData::Bf16(d) => KvPtr::Bf16(d.as_mut_ptr()),
        };
        KvWriter {
            cache: std::marker::PhantomData,
            spec: self.spec,
            ptr,
        }
    }

    /// Every position of one (layer, k|v, batch row, head).
    #[inline]
    pub fn head(&self, layer: usize, kv: usize, b: usize, h: usize) -> Head<'_> {
        let i = self.index(layer, kv, b, h, 0);
        let len = self.spec.seq * self.spec.head_dim;
        match &self.data {
            KvData::F32(d) => Head::F32(&d[i..i + len]),
            KvData::Bf16(d) => Head::Bf16(&d[i..i + len]),
        }
    }
}

enum KvPtr {
    F32(*mut f32),
    Bf16(*mut bf16),
}

/// Shared write access to a cache for tasks that each own a disjoint set of (layer, k|v, row, head, position) rows.
pub struct KvWriter<'a> {
    cache: std::marker::PhantomData<&'a mut KvCache>,
    spec: KvSpec,
    ptr: KvPtr,
}

// SAFETY: `write` is unsafe and requires that no two tasks write the same row; the pointer outlives the writer.
unsafe impl Send for KvWriter<'_> {}
unsafe impl Sync for KvWriter<'_> {}

impl KvWriter<'_> {
    /// `KvCache::write` from a parallel task.
    ///
    /// # Safety
    /// The indices lie inside the cache, and no other task writes or reads that row meanwhile.
    #[inline]
    pub unsafe fn write(&self, layer: usize, kv: usize, b: usize, h: usize, p: usize, v: &[f32]) {
        let s = &self.spec;
        let i = ((((layer * 2 + kv) * s.batch + b) * s.heads + h) * s.seq + p) * s.head_dim;
        let hd = s.head_dim;
        debug_assert!(i + hd <= s.elems() && v.len() == hd);
        // SAFETY: the caller's guarantees.
        unsafe {
            match self.ptr {
                KvPtr::F32(d) => std::slice::from_raw_parts_mut(d.add(i), hd).copy_from_slice(v),
                KvPtr::Bf16(d) => std::slice::from_raw_parts_mut(d.add(i), hd)
                    .iter_mut()
                    .zip(v)
                    .for_each(|(o, &x)| *o = bf16::from_f32(x)),
            }
        }
    }
}
