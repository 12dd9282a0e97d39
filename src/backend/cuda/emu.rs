//! The CUDA emulator device: runs the kernels of `kernels/*.cu`, compiled for the CPU (see
//! `kernels/emu/runtime.cpp` and docs/cuda-emulation-notes.md), through the same [`Launcher`] interface as the GPU.
//!
//! Device memory is host memory: each [`EmuBuffer`] is one allocation aligned to 256 bytes like `cudaMalloc`, its
//! data poisoned with 0xFF bytes (NaN in f32 and bf16) until written, between two 4 KiB canary regions. After every
//! launch the device checks the canaries of all its live buffers, so a kernel writing out of bounds fails the launch
//! with the buffer's name and the offset, on the first run.
//!
//! Kernel bugs that the emulator itself detects (a barrier reached by part of a block, a deadlock, a warp collective
//! called by part of a warp) print a message naming the kernel, block and thread, then abort the process, as a GPU
//! fault ends a CUDA context.
use super::kernels::{CuemuLaunchOptions, CuemuStats};
use super::launch::{signature, DevPtr, DevPtrMut, DeviceRepr, KernelArg, LaunchConfig, Launcher};
use crate::{Error, Result};
use std::alloc::{self, Layout};
use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

mod ffi {
    use super::*;
    unsafe extern "C" {
        pub fn cuemu_launch_ex(
            name: *const c_char,
            grid: *const u32,
            block: *const u32,
            shared_bytes: u32,
            args: *mut *mut c_void,
            opts: *const CuemuLaunchOptions,
        ) -> c_int;
        pub fn cuemu_last_error() -> *const c_char;
        pub fn cuemu_kernel_signature(name: *const c_char, buf: *mut c_char, len: u32) -> c_int;
        pub fn cuemu_kernel_count() -> c_int;
        pub fn cuemu_kernel_name(i: c_int) -> *const c_char;
        pub fn cuemu_stats_enable(on: c_int);
        pub fn cuemu_stats_read(out: *mut CuemuStats);
        pub fn cuemu_stats_read_kernel(index: u32, name: *mut c_char, len: u32, out: *mut CuemuStats) -> c_int;
    }
}

static STATS_SCOPE: Mutex<()> = Mutex::new(());

/// The kernel lab's counters (kernels/emu/stats.cpp) over the launches `f` makes: mma counts, ldmatrix and
/// shared-memory bank conflicts, global sectors against the ideal. One counting scope at a time in the process (the
/// counters are global); launches by other threads meanwhile would count too.
pub fn count<R>(f: impl FnOnce() -> R) -> (R, CuemuStats) {
    counting(f, || {
        let mut out = CuemuStats::default();
        // SAFETY: `out` is a valid CuemuStats.
        unsafe { ffi::cuemu_stats_read(&mut out) };
        out
    })
}

/// [`count`], split by kernel: each kernel `f` launched (in order of its first launch) with its own counters.
pub fn count_kernels<R>(f: impl FnOnce() -> R) -> (R, Vec<(String, CuemuStats)>) {
    counting(f, read_kernels)
}

/// Runs `f` with the counters on (zeroed first), then `read` while no other scope can start.
fn counting<R, T>(f: impl FnOnce() -> R, read: impl FnOnce() -> T) -> (R, T) {
    let _g = STATS_SCOPE.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: plain C calls on the emulator's global counters.
    unsafe { ffi::cuemu_stats_enable(1) };
    let r = f();
    unsafe { ffi::cuemu_stats_enable(0) };
    (r, read())
}

fn read_kernels() -> Vec<(String, CuemuStats)> {
    let mut out = Vec::new();
    for i in 0u32.. {
        let mut name = [0 as c_char; 96];
        let mut st = CuemuStats::default();
        // SAFETY: `name` holds `len` bytes (the callee NUL-terminates within them); `st` is a valid CuemuStats.
        if unsafe { ffi::cuemu_stats_read_kernel(i, name.as_mut_ptr(), name.len() as u32, &mut st) } == 0 {
            break;
        }
        // SAFETY: NUL-terminated by snprintf above.
        let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        out.push((name, st));
    }
    out
}

/// Bytes of canary before and after every buffer (a multiple of 256, so the data stays 256-byte aligned).
pub const CANARY_BYTES: usize = 4096;
const ALIGN: usize = 256;
/// The canary pattern, as little-endian u32 words: 0x7FA5A5A5 is a NaN in f32 (and 0x7FA5 a NaN in bf16), so a
/// kernel reading past a buffer sees NaN.
const CANARY_WORD: [u8; 4] = [0xA5, 0xA5, 0xA5, 0x7F];
const POISON: u8 = 0xFF;

/// The fiber order between sync points (`CUEMU_SCHED`); kernels with a missing barrier give different results
/// under different orders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sched {
    /// `CUEMU_SCHED` from the environment (forward when unset).
    Env,
    Forward,
    Reverse,
    /// A fresh permutation each scheduler pass, seeded by the block index and [`EmuDevice::with_seed`].
    Shuffle,
}

impl Sched {
    fn code(self) -> i32 {
        match self {
            Sched::Env => -1,
            Sched::Forward => 0,
            Sched::Reverse => 1,
            Sched::Shuffle => 2,
        }
    }
}

struct Record {
    base: usize,
    data_bytes: usize,
    label: String,
}

#[derive(Default)]
struct Registry {
    live: Mutex<BTreeMap<u64, Record>>,
    next: AtomicU64,
}

/// The emulated device: an allocator with canaries and a [`Launcher`].
#[derive(Clone)]
pub struct EmuDevice {
    reg: Arc<Registry>,
    sched: Sched,
    seed: u32,
}

impl Default for EmuDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl EmuDevice {
    pub fn new() -> Self {
        EmuDevice {
            reg: Arc::new(Registry::default()),
            sched: Sched::Env,
            seed: 0,
        }
    }

    /// The same device (and buffers) launching with another schedule.
    pub fn with_sched(&self, sched: Sched) -> Self {
        EmuDevice { sched, ..self.clone() }
    }

    /// Seed mixed into the shuffled schedule.
    pub fn with_seed(&self, seed: u32) -> Self {
        EmuDevice { seed, ..self.clone() }
    }

    pub fn sched(&self) -> Sched {
        self.sched
    }

    /// A buffer of `len` elements, poisoned (0xFF bytes) until written.
    pub fn alloc<T: DeviceRepr>(&self, len: usize, label: &str) -> EmuBuffer<T> {
        let data_bytes = len * size_of::<T>();
        let total = CANARY_BYTES + data_bytes + CANARY_BYTES;
        let layout = Layout::from_size_align(total, ALIGN).expect("buffer size overflows");
        // SAFETY: total > 0 (two canaries).
        let base = unsafe { alloc::alloc(layout) };
        if base.is_null() {
            alloc::handle_alloc_error(layout);
        }
        // SAFETY: base..base+total is the fresh allocation.
        unsafe {
            fill_canary(base, CANARY_BYTES);
            std::ptr::write_bytes(base.add(CANARY_BYTES), POISON, data_bytes);
            fill_canary(base.add(CANARY_BYTES + data_bytes), CANARY_BYTES);
        }
        let id = self.reg.next.fetch_add(1, Ordering::Relaxed);
        self.reg.live.lock().unwrap().insert(
            id,
            Record {
                base: base as usize,
                data_bytes,
                label: label.to_string(),
            },
        );
        EmuBuffer {
            reg: self.reg.clone(),
            id,
            base,
            len,
            layout,
            _t: std::marker::PhantomData,
        }
    }

    /// A buffer holding a copy of `data`.
    pub fn upload<T: DeviceRepr>(&self, data: &[T], label: &str) -> EmuBuffer<T> {
        let mut b = self.alloc(data.len(), label);
        b.copy_from(data);
        b
    }

    /// Checks the canaries of every live buffer of this device.
    pub fn check_canaries(&self) -> Result<()> {
        let live = self.reg.live.lock().unwrap();
        for r in live.values() {
            // SAFETY: the record is removed before its buffer is freed, under this lock.
            if let Some(msg) = unsafe { canary_damage(r.base as *const u8, r.data_bytes) } {
                return Err(Error::Invalid(format!(
                    "buffer `{}` ({} bytes): {msg}",
                    r.label, r.data_bytes
                )));
            }
        }
        Ok(())
    }
}

/// Kernel names the emulator registry knows.
pub fn kernel_names() -> Vec<String> {
    // SAFETY: plain FFI queries returning static NUL-terminated names.
    let n = unsafe { ffi::cuemu_kernel_count() };
    (0..n)
        .filter_map(|i| {
            let p = unsafe { ffi::cuemu_kernel_name(i) };
            (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        })
        .collect()
}

/// The registry's argument signature of `name` ("P,P,P,S12"), derived from the kernel's C++ parameter types.
pub fn kernel_signature(name: &str) -> Result<String> {
    let c = CString::new(name).map_err(|_| Error::Invalid(format!("kernel name {name:?} contains NUL")))?;
    let mut buf = [0 as c_char; 256];
    // SAFETY: buf is writable for its length; the function NUL-terminates.
    let rc = unsafe { ffi::cuemu_kernel_signature(c.as_ptr(), buf.as_mut_ptr(), buf.len() as u32) };
    if rc != 0 {
        return Err(Error::Invalid(last_error()));
    }
    // SAFETY: NUL-terminated by the callee.
    Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}

fn last_error() -> String {
    // SAFETY: a thread-local NUL-terminated string owned by the runtime.
    unsafe { CStr::from_ptr(ffi::cuemu_last_error()) }
        .to_string_lossy()
        .into_owned()
}

impl Launcher for EmuDevice {
    fn launch(&self, name: &str, cfg: LaunchConfig, args: &[&dyn KernelArg]) -> Result<()> {
        let want = kernel_signature(name)?;
        let got = signature(args);
        if want != got {
            return Err(Error::Invalid(format!(
                "kernel `{name}`: arguments ({got}) do not match its parameters ({want})"
            )));
        }
        let c = CString::new(name).map_err(|_| Error::Invalid(format!("kernel name {name:?} contains NUL")))?;
        let mut ptrs: Vec<*mut c_void> = args
            .iter()
            .map(|a| *a as *const dyn KernelArg as *const c_void as *mut c_void)
            .collect();
        let opts = CuemuLaunchOptions {
            sched: self.sched.code(),
            seed: self.seed,
        };
        // SAFETY: every pointer in `ptrs` points at a live argument whose bytes match the kernel's parameter (checked
        // above via the signatures); device addresses come from live buffers (DevPtr/DevPtrMut borrow them), and the
        // launch is synchronous, so nothing is freed or aliased mutably while it runs.
        let rc = unsafe {
            ffi::cuemu_launch_ex(
                c.as_ptr(),
                cfg.grid.as_ptr(),
                cfg.block.as_ptr(),
                cfg.shared_bytes,
                ptrs.as_mut_ptr(),
                &opts,
            )
        };
        if rc != 0 {
            return Err(Error::Invalid(last_error()));
        }
        self.check_canaries()
            .map_err(|e| Error::Invalid(format!("kernel `{name}` wrote out of bounds: {e}")))
    }
}

/// A device buffer of the emulator (see the module docs).
pub struct EmuBuffer<T: DeviceRepr> {
    reg: Arc<Registry>,
    id: u64,
    base: *mut u8,
    len: usize,
    layout: Layout,
    _t: std::marker::PhantomData<T>,
}

// SAFETY: the buffer owns its allocation; access follows Rust borrows (launches borrow through DevPtr/DevPtrMut).
unsafe impl<T: DeviceRepr> Send for EmuBuffer<T> {}
unsafe impl<T: DeviceRepr> Sync for EmuBuffer<T> {}

impl<T: DeviceRepr> EmuBuffer<T> {
    fn data(&self) -> *mut T {
        // SAFETY: inside the allocation; aligned to 256 bytes.
        unsafe { self.base.add(CANARY_BYTES) as *mut T }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device address (a host address here).
    pub fn addr(&self) -> u64 {
        self.data() as u64
    }

    pub fn ptr(&self) -> DevPtr<'_, T> {
        // SAFETY: the buffer outlives the borrow; shared borrows only read.
        unsafe { DevPtr::from_raw(self.addr(), self.len) }
    }

    pub fn ptr_mut(&mut self) -> DevPtrMut<'_, T> {
        // SAFETY: the exclusive borrow guarantees no other access while the pointer lives.
        unsafe { DevPtrMut::from_raw(self.addr(), self.len) }
    }

    pub fn as_slice(&self) -> &[T] {
        // SAFETY: len initialised-or-poisoned elements of plain old data.
        unsafe { std::slice::from_raw_parts(self.data(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as above, exclusively borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.data(), self.len) }
    }

    pub fn copy_from(&mut self, src: &[T]) {
        assert_eq!(
            src.len(),
            self.len,
            "upload of {} elements into a buffer of {}",
            src.len(),
            self.len
        );
        self.as_mut_slice().copy_from_slice(src);
    }

    pub fn to_vec(&self) -> Vec<T> {
        self.as_slice().to_vec()
    }

    /// Checks this buffer's canaries.
    pub fn check_canaries(&self) -> Result<()> {
        // SAFETY: the allocation is live.
        match unsafe { canary_damage(self.base, self.len * size_of::<T>()) } {
            None => Ok(()),
            Some(m) => Err(Error::Invalid(m)),
        }
    }
}

impl<T: DeviceRepr> Drop for EmuBuffer<T> {
    fn drop(&mut self) {
        let mut live = self.reg.live.lock().unwrap();
        live.remove(&self.id);
        // SAFETY: allocated in EmuDevice::alloc with this layout; no longer registered.
        unsafe { alloc::dealloc(self.base, self.layout) };
    }
}

/// # Safety
/// `p..p+n` must be writable.
unsafe fn fill_canary(p: *mut u8, n: usize) {
    for i in 0..n {
        *p.add(i) = CANARY_WORD[i % 4];
    }
}

/// Describes the first damaged canary byte, if any.
///
/// # Safety
/// `base` must be a live buffer allocation with `data_bytes` of data.
unsafe fn canary_damage(base: *const u8, data_bytes: usize) -> Option<String> {
    let head = std::slice::from_raw_parts(base, CANARY_BYTES);
    let tail = std::slice::from_raw_parts(base.add(CANARY_BYTES + data_bytes), CANARY_BYTES);
    // Each region's pattern starts at the region's first byte (fill_canary).
    if let Some(i) = (0..CANARY_BYTES).rev().find(|&i| head[i] != CANARY_WORD[i % 4]) {
        return Some(format!("canary damaged {} bytes before the start", CANARY_BYTES - i));
    }
    if let Some(i) = (0..CANARY_BYTES).find(|&i| tail[i] != CANARY_WORD[i % 4]) {
        return Some(format!("canary damaged {} bytes after the end", i + 1));
    }
    None
}

impl super::device::DeviceBuffer for EmuBuffer<u8> {
    fn addr(&self) -> u64 {
        EmuBuffer::addr(self)
    }
    fn bytes(&self) -> usize {
        self.len
    }
}

/// Checks that `off..off + n` lies inside a buffer of `have` bytes.
fn in_bounds(what: &str, label: &str, off: usize, n: usize, have: usize) -> Result<()> {
    if off.checked_add(n).is_none_or(|end| end > have) {
        return Err(Error::Invalid(format!(
            "{what} of {n} bytes at offset {off} outside device buffer `{label}` ({have} bytes)"
        )));
    }
    Ok(())
}

impl super::device::Device for EmuDevice {
    type Buf = EmuBuffer<u8>;

    fn kind(&self) -> &'static str {
        "cuda-emu"
    }

    fn describe(&self) -> String {
        format!(
            "CUDA emulator on the CPU ({} kernels registered, schedule {:?})",
            kernel_names().len(),
            self.sched
        )
    }

    fn alloc(&self, bytes: usize, label: &str) -> Result<EmuBuffer<u8>> {
        Ok(EmuDevice::alloc(self, bytes, label))
    }

    fn write(&self, dst: &EmuBuffer<u8>, off: usize, data: &[u8]) -> Result<()> {
        in_bounds("write", "", off, data.len(), dst.len)?;
        // SAFETY: inside the buffer (checked); launches are synchronous, so no kernel is reading it now.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst.data().add(off), data.len()) };
        Ok(())
    }

    fn read(&self, src: &EmuBuffer<u8>, off: usize, out: &mut [u8]) -> Result<()> {
        in_bounds("read", "", off, out.len(), src.len)?;
        out.copy_from_slice(&src.as_slice()[off..off + out.len()]);
        Ok(())
    }

    fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        self.check_range(dst, bytes, "copy destination")?;
        self.check_range(src, bytes, "copy source")?;
        // SAFETY: both ranges lie inside live buffers of this device (checked); the caller guarantees no overlap.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, bytes) };
        Ok(())
    }

    fn zero(&self, dst: u64, bytes: usize) -> Result<()> {
        self.check_range(dst, bytes, "zero")?;
        // SAFETY: inside a live buffer (checked).
        unsafe { std::ptr::write_bytes(dst as *mut u8, 0, bytes) };
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}

impl EmuDevice {
    /// Checks that `addr..addr + bytes` lies inside one live buffer (a raw device address from the backend).
    fn check_range(&self, addr: u64, bytes: usize, what: &str) -> Result<()> {
        let live = self.reg.live.lock().unwrap();
        let a = addr as usize;
        let ok = live.values().any(|r| {
            let start = r.base + CANARY_BYTES;
            a >= start && a + bytes <= start + r.data_bytes
        });
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "{what}: {bytes} bytes at {addr:#x} are outside every device buffer"
            )))
        }
    }
}
