//! `Buf<T>`: the storage of the GPT's weights and KV cache, which a decode step streams from memory.
//!
//! Buffers of 2 MiB and more are 2 MiB-aligned and advised `MADV_HUGEPAGE` before their first touch, so the kernel
//! backs them with huge pages where transparent huge pages are enabled (`always` or, the common default, `madvise`).
//! Streaming GPT-B's 49 bf16 weight matrices of a decode step (195 MB, 2 threads, best of 40 interleaved,
//! `tests::huge_pages_stream_faster` measures it) took 7.8 ms from 4 KiB pages and 6.3 ms from huge pages on the
//! AVX2 box: every 4 KiB page costs a TLB miss and restarts the hardware prefetcher's stream. Smaller buffers are
//! plain `Vec`s.
use bytemuck::Pod;
use rayon::prelude::*;
use std::alloc::Layout;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::Arc;

const HUGE: usize = 2 << 20;

pub struct Buf<T: Pod> {
    inner: Inner<T>,
}

enum Inner<T: Pod> {
    Vec(Vec<T>),
    /// `bytes` of an anonymous mapping of its own, so dropping it returns the memory to the system at once (from
    /// the global allocator, a freed 2 MiB-aligned block could stay resident in the heap).
    Huge {
        ptr: NonNull<T>,
        len: usize,
        bytes: usize,
    },
    /// `len` elements at `off` of a shared buffer (`Buf::packed`).
    View {
        owner: Arc<Buf<T>>,
        off: usize,
        len: usize,
    },
}

// SAFETY: a `Buf` owns its memory like a `Vec`.
unsafe impl<T: Pod + Send> Send for Buf<T> {}
// SAFETY: shared access is read-only, like a `Vec`.
unsafe impl<T: Pod + Sync> Sync for Buf<T> {}

impl<T: Pod + Send + Sync> Buf<T> {
    /// `len` elements, each block `[off, off + n)` written by `fill(off, block)` (in parallel; `fill` must write
    /// every element of its block).
    pub fn from_fill(len: usize, fill: impl Fn(usize, &mut [T]) + Sync) -> Self {
        const BLOCK: usize = 1 << 16;
        let mut b = Self::uninit(len);
        b.par_chunks_mut(BLOCK)
            .enumerate()
            .for_each(|(i, block)| fill(i * BLOCK, block));
        b
    }

    pub fn zeroed(len: usize) -> Self {
        Self::from_fill(len, |_, b| b.fill(T::zeroed()))
    }

    /// `v` as it is, whatever its size (weights that are not streamed, like the convolutions').
    pub fn vec(v: Vec<T>) -> Self {
        Buf { inner: Inner::Vec(v) }
    }

    /// Memory the caller must fill completely before reading (`from_fill` does). Zero-filled when small: a `Vec`
    /// cannot hold uninitialised values, and zeroing a small buffer costs nothing.
    fn uninit(len: usize) -> Self {
        let bytes = len * std::mem::size_of::<T>();
        if bytes < HUGE {
            return Buf {
                inner: Inner::Vec(vec![T::zeroed(); len]),
            };
        }
        let size = bytes.next_multiple_of(HUGE);
        let ptr = map_aligned(size).unwrap_or_else(|| {
            std::alloc::handle_alloc_error(Layout::from_size_align(size, HUGE).expect("buffer size"))
        });
        Buf {
            inner: Inner::Huge {
                ptr: ptr.cast(),
                len,
                bytes: size,
            },
        }
    }

    /// One buffer per entry of `lens`, all carved out of one allocation (each starting on a 64-byte boundary), the
    /// `i`th filled by `fill(i, part)`, the parts in parallel. Giving each weight of a model its own huge-page
    /// buffer would round every one up to 2 MiB: ~100 MB more resident for GPT-B in f32.
    pub fn packed(lens: &[usize], fill: impl Fn(usize, &mut [T]) + Sync) -> Vec<Self> {
        let align = (64 / std::mem::size_of::<T>()).max(1);
        let offs: Vec<usize> = lens
            .iter()
            .scan(0, |at, &l| {
                let o = *at;
                *at += l.next_multiple_of(align);
                Some(o)
            })
            .collect();
        let total = offs.last().map_or(0, |o| o + lens[lens.len() - 1]);
        let mut arena = Self::uninit(total);
        let mut parts: Vec<&mut [T]> = Vec::with_capacity(lens.len());
        let mut rest: &mut [T] = &mut arena;
        let mut at = 0;
        for (&o, &l) in offs.iter().zip(lens) {
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(o - at);
            let (part, tail) = tail.split_at_mut(l);
            parts.push(part);
            (rest, at) = (tail, o + l);
        }
        parts.into_par_iter().enumerate().for_each(|(i, p)| fill(i, p));
        let owner = Arc::new(arena);
        offs.iter()
            .zip(lens)
            .map(|(&off, &len)| Buf {
                inner: Inner::View {
                    owner: owner.clone(),
                    off,
                    len,
                },
            })
            .collect()
    }

    /// Whether the buffer lives in memory advised for huge pages.
    pub fn is_huge(&self) -> bool {
        match &self.inner {
            Inner::Vec(_) => false,
            Inner::Huge { .. } => true,
            Inner::View { owner, .. } => owner.is_huge(),
        }
    }
}

impl<T: Pod> Deref for Buf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match &self.inner {
            Inner::Vec(v) => v,
            // SAFETY: `len` elements live at `ptr` for the buffer's lifetime (every constructor fills them: `Pod`
            // makes any bit pattern a valid value in the meantime).
            Inner::Huge { ptr, len, .. } => unsafe { std::slice::from_raw_parts(ptr.as_ptr(), *len) },
            Inner::View { owner, off, len } => &owner[*off..*off + *len],
        }
    }
}

impl<T: Pod> DerefMut for Buf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match &mut self.inner {
            Inner::Vec(v) => v,
            // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
            Inner::Huge { ptr, len, .. } => unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), *len) },
            // Views are made only by `packed`, whose parts are never written after it returns.
            Inner::View { .. } => panic!("a packed buffer is read-only"),
        }
    }
}

impl<T: Pod> Drop for Buf<T> {
    fn drop(&mut self) {
        if let Inner::Huge { ptr, bytes, .. } = self.inner {
            // SAFETY: `bytes` mapped at `ptr` by `map_aligned`, unmapped once, here.
            unsafe { libc::munmap(ptr.as_ptr() as *mut libc::c_void, bytes) };
        }
    }
}

/// `size` bytes (a multiple of 2 MiB) of fresh anonymous memory at a 2 MiB boundary, advised `MADV_HUGEPAGE` before
/// any page is touched; `None` if the system refuses the mapping. A kernel without transparent huge pages refuses
/// the advice, and 4 KiB pages serve.
fn map_aligned(size: usize) -> Option<NonNull<u8>> {
    let over = size + HUGE;
    // SAFETY: a private anonymous mapping of `over` bytes; nothing else refers to it yet.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            over,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return None;
    }
    let start = raw as usize;
    let aligned = start.next_multiple_of(HUGE);
    // SAFETY: the head `start..aligned` and the tail `aligned + size..start + over` lie inside the mapping and are
    // not used; trimming them leaves exactly `size` bytes at `aligned`.
    unsafe {
        if aligned > start {
            libc::munmap(raw, aligned - start);
        }
        let tail = start + over - (aligned + size);
        if tail > 0 {
            libc::munmap((aligned + size) as *mut libc::c_void, tail);
        }
        libc::madvise(aligned as *mut libc::c_void, size, libc::MADV_HUGEPAGE);
    }
    NonNull::new(aligned as *mut u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::matmul::{matmul, Scratch, WeightRef};
    use crate::backend::cpu::KernelFamily;
    use half::bf16;

    #[test]
    fn small_and_large_buffers_hold_what_was_written() {
        for len in [0usize, 5, (HUGE / 4) - 1, HUGE / 4 + 12_345, 3 * HUGE] {
            let b = Buf::<f32>::from_fill(len, |off, blk| {
                blk.iter_mut().enumerate().for_each(|(i, v)| *v = (off + i) as f32)
            });
            assert_eq!(b.len(), len);
            assert_eq!(b.is_huge(), len * 4 >= HUGE);
            assert!(b.iter().enumerate().all(|(i, &v)| v == i as f32), "len {len}");
            let z = Buf::<bf16>::zeroed(len);
            assert!(z.iter().all(|v| v.to_bits() == 0));
        }
    }

    #[test]
    fn packed_parts_are_disjoint_and_aligned() {
        let lens = [3usize, 0, 1 << 20, 17, (3 << 20) + 5];
        let parts = Buf::<f32>::packed(&lens, |i, p| {
            p.iter_mut()
                .enumerate()
                .for_each(|(j, v)| *v = (i * 10_000_000 + j) as f32)
        });
        for (i, (p, &l)) in parts.iter().zip(&lens).enumerate() {
            assert_eq!(p.len(), l);
            assert_eq!(p.as_ptr() as usize % 64, 0, "part {i}");
            assert!(
                p.iter().enumerate().all(|(j, &v)| v == (i * 10_000_000 + j) as f32),
                "part {i}"
            );
            assert!(p.is_huge());
        }
    }

    /// GPT-B's 49 bf16 products of one decode step at batch 1 with guidance, from `Vec`s and from `Buf`s.
    /// `cargo test --release --lib buf::tests::huge_pages_stream_faster -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn huge_pages_stream_faster() {
        let (d, f, v) = (768usize, 2048usize, 16384usize);
        let mut shapes: Vec<(usize, usize)> = (0..12).flat_map(|_| [(d, 3 * d), (d, d), (d, 2 * f), (f, d)]).collect();
        shapes.push((d, v));
        let value = |i: usize| bf16::from_f32((i % 7) as f32 * 0.01);
        let small: Vec<Vec<bf16>> = shapes.iter().map(|&(k, n)| (0..n * k).map(value).collect()).collect();
        let huge: Vec<Buf<bf16>> = shapes
            .iter()
            .map(|&(k, n)| {
                Buf::from_fill(n * k, |o, b| {
                    b.iter_mut().enumerate().for_each(|(i, x)| *x = value(o + i))
                })
            })
            .collect();
        let bytes: usize = shapes.iter().map(|&(k, n)| 2 * k * n).sum();
        let (m, fam) = (2, KernelFamily::detected());
        let x: Vec<f32> = (0..m * f).map(|i| (i % 13) as f32 * 0.01).collect();
        let (mut y, mut sc) = (vec![0f32; m * v], Scratch::default());
        let mut best = [f64::INFINITY; 2];
        for _ in 0..40 {
            for (which, b) in best.iter_mut().enumerate() {
                let t = std::time::Instant::now();
                for (i, &(k, n)) in shapes.iter().enumerate() {
                    let w: &[bf16] = if which == 0 { &small[i] } else { &huge[i] };
                    matmul(
                        fam,
                        &x[..m * k],
                        m,
                        k,
                        WeightRef::Bf16(w),
                        n,
                        None,
                        false,
                        &mut sc,
                        &mut y[..m * n],
                    );
                }
                *b = b.min(t.elapsed().as_secs_f64());
            }
        }
        for (name, b) in ["Vec (4 KiB pages)", "Buf (huge pages)"].iter().zip(best) {
            println!("{name}: {:.3} ms per step, {:.1} GB/s", b * 1e3, bytes as f64 / b / 1e9);
        }
    }
}
