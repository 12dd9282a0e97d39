//! Per-thread scratch in huge pages, strided matrix views and the checked call into the `gemm` crate, shared by
//! the direct and the Winograd convolutions.
use super::*;

thread_local! {
    // Grows to the largest tile this thread has run, then is reused.
    static SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch { ptr: std::ptr::null_mut(), len: 0 }) };
}

/// A zeroed f32 buffer aligned to 2 MiB and advised to use transparent huge pages: the Winograd
/// blocks stride through ~1.3 MiB of scratch 36 rows at a time, which with 4 KiB pages misses the
/// first-level TLB on nearly every access.
pub(crate) struct Scratch {
    ptr: *mut f32,
    len: usize,
}

pub(crate) const HUGE: usize = 2 << 20;

impl Scratch {
    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align((4 * len).next_multiple_of(HUGE), HUGE).expect("scratch layout")
    }

    fn grow(&mut self, len: usize) {
        self.free();
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut f32;
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        #[cfg(target_os = "linux")]
        {
            extern "C" {
                fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
            }
            const MADV_HUGEPAGE: i32 = 14;
            // SAFETY: the range is this allocation; the advice is a hint (failure is harmless).
            unsafe { madvise(ptr as *mut _, layout.size(), MADV_HUGEPAGE) };
        }
        (self.ptr, self.len) = (ptr, layout.size() / 4);
    }

    fn free(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: allocated in `grow` with this layout.
            unsafe { std::alloc::dealloc(self.ptr as *mut u8, Self::layout(self.len)) };
            (self.ptr, self.len) = (std::ptr::null_mut(), 0);
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.free();
    }
}

pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len < len {
            buf.grow(len);
        }
        // SAFETY: `len` floats of this thread's buffer, initialised (zeroed at allocation), and
        // borrowed mutably through the RefCell for the duration of `f` only.
        f(unsafe { std::slice::from_raw_parts_mut(buf.ptr, len) })
    })
}

/// A strided read-only matrix operand: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

pub(crate) fn mat(data: &[f32], rs: usize, cs: usize) -> Mat<'_> {
    Mat { data, rs, cs }
}

/// Extent in elements of a strided `rows x cols` view.
pub(crate) fn span(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

/// `dst[m x n] = (acc ? dst : 0) + scale * a[m x k] * b[k x n]`, `dst` with row stride `dst_rs`.
/// The views are bounds-checked here, which is what makes the unsafe GEMM call sound.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    acc: bool,
    a: Mat,
    b: Mat,
    scale: f32,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(span(m, n, dst_rs, 1) <= dst.len(), "sgemm: dst out of bounds");
    if k == 0 {
        if !acc {
            (0..m).for_each(|r| dst[r * dst_rs..r * dst_rs + n].fill(0.0));
        }
        return;
    }
    assert!(span(m, k, a.rs, a.cs) <= a.data.len(), "sgemm: lhs out of bounds");
    assert!(span(k, n, b.rs, b.cs) <= b.data.len(), "sgemm: rhs out of bounds");
    let (d, ap, bp) = (dst.as_mut_ptr(), a.data.as_ptr(), b.data.as_ptr());
    let (ars, acs, brs, bcs) = (a.rs as isize, a.cs as isize, b.rs as isize, b.cs as isize);
    // SAFETY: all three views lie inside their slices (checked above); `dst` is a unique borrow.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            d,
            1,
            dst_rs as isize,
            acc,
            ap,
            acs,
            ars,
            bp,
            bcs,
            brs,
            1.0,
            scale,
            false,
            false,
            false,
            par,
        )
    };
}

/// Raw pointer so rayon tasks can write disjoint parts of one slice.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    // a method, so closures capture the whole Sync wrapper rather than its raw-pointer field
    pub fn get(self) -> *mut f32 {
        self.0
    }
}
