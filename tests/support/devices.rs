//! The devices the kernel tests run on: one [`TestDevice`] trait over the CUDA emulator ([`EmuDevice`]) and the real
//! GPU ([`GpuTest`], a thin test wrapper over [`GpuDevice`]), so every case of tests/kernels/<op>.rs is written once and
//! runs on both. The emulator runs by default; the `gpu_*` tests (ignored unless asked for, see
//! scripts/gpu-check.sh) run the same sweeps on device 0 and fail — never pass — when no GPU is there.
//!
//! GPU buffers get canaries like the emulator's: each allocation is [`CANARY_BYTES`] of guard, the data, and another
//! guard; the guards hold the emulator's pattern (0x7FA5A5A5 words, NaN in f32 and bf16) and the data is poisoned
//! with 0xFF bytes until written. After every launch [`GpuTest`] synchronises and downloads the guards of every live
//! buffer, so a kernel writing out of bounds fails at that launch with the buffer's name (and an asynchronous fault
//! surfaces at the launch that caused it, not later).
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]
use llamagen::backend::cuda::device::{Device, DeviceBuffer};
use llamagen::backend::cuda::emu::{EmuBuffer, EmuDevice, Sched, CANARY_BYTES};
use llamagen::backend::cuda::gpu::{GpuBuffer, GpuDevice};
use llamagen::backend::cuda::launch::{DevPtr, DevPtrMut, DeviceRepr, KernelArg, LaunchConfig, Launcher};
use llamagen::backend::cuda::CudaBackend;
use llamagen::ops::{Backend, Dtype};
use llamagen::{Error, Result};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

/// A typed device buffer of a test.
pub trait TestBuf<T: DeviceRepr> {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The device address of the first element.
    fn addr(&self) -> u64;
    fn ptr(&self) -> DevPtr<'_, T>;
    fn ptr_mut(&mut self) -> DevPtrMut<'_, T>;
    /// Host → device, the whole buffer.
    fn copy_from(&mut self, src: &[T]);
    /// Device → host, after every queued launch has finished.
    fn to_vec(&self) -> Vec<T>;
    /// Checks this buffer's guard regions.
    fn check_canaries(&self) -> Result<()>;
}

/// What a kernel test needs from a device: typed buffers and a [`Launcher`].
pub trait TestDevice: Launcher + Sized {
    type Buf<T: DeviceRepr>: TestBuf<T>;
    /// `emu` or `gpu`, for messages.
    fn name(&self) -> &'static str;
    /// `len` elements, poisoned (0xFF bytes) until written.
    fn alloc<T: DeviceRepr>(&self, len: usize, label: &str) -> Self::Buf<T>;
    fn upload<T: DeviceRepr>(&self, data: &[T], label: &str) -> Self::Buf<T> {
        let mut b = self.alloc(data.len(), label);
        b.copy_from(data);
        b
    }
    /// The same device (and buffers) launching with schedule `s`; the GPU has one schedule, its own.
    fn with_sched(&self, s: Sched) -> Self;
    /// The schedule, for messages (`gpu` on the GPU).
    fn sched_label(&self) -> String;
}

impl<T: DeviceRepr> TestBuf<T> for EmuBuffer<T> {
    fn len(&self) -> usize {
        EmuBuffer::len(self)
    }
    fn addr(&self) -> u64 {
        EmuBuffer::addr(self)
    }
    fn ptr(&self) -> DevPtr<'_, T> {
        EmuBuffer::ptr(self)
    }
    fn ptr_mut(&mut self) -> DevPtrMut<'_, T> {
        EmuBuffer::ptr_mut(self)
    }
    fn copy_from(&mut self, src: &[T]) {
        EmuBuffer::copy_from(self, src)
    }
    fn to_vec(&self) -> Vec<T> {
        EmuBuffer::to_vec(self)
    }
    fn check_canaries(&self) -> Result<()> {
        EmuBuffer::check_canaries(self)
    }
}

impl TestDevice for EmuDevice {
    type Buf<T: DeviceRepr> = EmuBuffer<T>;
    fn name(&self) -> &'static str {
        "emu"
    }
    fn alloc<T: DeviceRepr>(&self, len: usize, label: &str) -> EmuBuffer<T> {
        EmuDevice::alloc(self, len, label)
    }
    fn upload<T: DeviceRepr>(&self, data: &[T], label: &str) -> EmuBuffer<T> {
        EmuDevice::upload(self, data, label)
    }
    fn with_sched(&self, s: Sched) -> Self {
        EmuDevice::with_sched(self, s)
    }
    fn sched_label(&self) -> String {
        format!("{:?}", self.sched())
    }
}

/// The emulator's canary pattern, as little-endian u32 words (see `backend::cuda::emu`).
const CANARY_WORD: [u8; 4] = [0xA5, 0xA5, 0xA5, 0x7F];
const POISON: u8 = 0xFF;

fn canary_pattern() -> Vec<u8> {
    (0..CANARY_BYTES).map(|i| CANARY_WORD[i % 4]).collect()
}

struct Live {
    buf: Rc<GpuBuffer>,
    data_bytes: usize,
    label: String,
}

struct GpuInner {
    dev: GpuDevice,
    live: RefCell<BTreeMap<u64, Live>>,
    next: Cell<u64>,
}

/// The GPU as a test device: [`GpuDevice`] (device 0) with guarded buffers, checked after every launch. Cloning
/// shares the device and its buffers (as `EmuDevice::with_sched` does).
#[derive(Clone)]
pub struct GpuTest(Rc<GpuInner>);

impl GpuTest {
    /// Device 0, or a panic saying that this test needs a GPU (a `gpu_*` test must fail, not pass, without one).
    pub fn new() -> Self {
        match GpuDevice::new(0) {
            Ok(dev) => {
                eprintln!("GPU tests on {}", dev.describe());
                GpuTest(Rc::new(GpuInner {
                    dev,
                    live: RefCell::new(BTreeMap::new()),
                    next: Cell::new(0),
                }))
            }
            Err(e) => panic!(
                "no GPU: this test runs the kernel cases on a real GPU (scripts/gpu-check.sh on a machine with one); \
                 GpuDevice::new(0) failed: {e}"
            ),
        }
    }

    pub fn device(&self) -> &GpuDevice {
        &self.0.dev
    }

    /// Downloads and compares the guards of every live buffer (waits for queued work first).
    pub fn check_canaries(&self) -> Result<()> {
        for l in self.0.live.borrow().values() {
            guard_damage(&self.0.dev, &l.buf, l.data_bytes)
                .map_err(|m| Error::Invalid(format!("buffer `{}` ({} bytes): {m}", l.label, l.data_bytes)))?;
        }
        Ok(())
    }
}

impl Default for GpuTest {
    fn default() -> Self {
        Self::new()
    }
}

/// `Err(description)` of the first damaged guard byte, as the emulator words it; device errors pass through.
fn guard_damage(dev: &GpuDevice, buf: &GpuBuffer, data_bytes: usize) -> std::result::Result<(), String> {
    let pat = canary_pattern();
    let mut head = vec![0u8; CANARY_BYTES];
    let mut tail = vec![0u8; CANARY_BYTES];
    dev.read(buf, 0, &mut head).map_err(|e| e.to_string())?;
    dev.read(buf, CANARY_BYTES + data_bytes, &mut tail)
        .map_err(|e| e.to_string())?;
    if let Some(i) = (0..CANARY_BYTES).rev().find(|&i| head[i] != pat[i]) {
        return Err(format!("canary damaged {} bytes before the start", CANARY_BYTES - i));
    }
    if let Some(i) = (0..CANARY_BYTES).find(|&i| tail[i] != pat[i]) {
        return Err(format!("canary damaged {} bytes after the end", i + 1));
    }
    Ok(())
}

impl Launcher for GpuTest {
    fn launch(&self, name: &str, cfg: LaunchConfig, args: &[&dyn KernelArg]) -> Result<()> {
        self.0.dev.launch(name, cfg, args)?;
        self.check_canaries()
            .map_err(|e| Error::Invalid(format!("kernel `{name}` on the GPU wrote out of bounds or failed: {e}")))
    }
}

impl TestDevice for GpuTest {
    type Buf<T: DeviceRepr> = GpuTestBuf<T>;
    fn name(&self) -> &'static str {
        "gpu"
    }
    fn alloc<T: DeviceRepr>(&self, len: usize, label: &str) -> GpuTestBuf<T> {
        let data_bytes = len * size_of::<T>();
        let d = &self.0.dev;
        let buf = d
            .alloc(CANARY_BYTES + data_bytes + CANARY_BYTES, label)
            .unwrap_or_else(|e| panic!("GPU allocation of `{label}`: {e}"));
        let pat = canary_pattern();
        d.write(&buf, 0, &pat).unwrap();
        if data_bytes > 0 {
            d.write(&buf, CANARY_BYTES, &vec![POISON; data_bytes]).unwrap();
        }
        d.write(&buf, CANARY_BYTES + data_bytes, &pat).unwrap();
        let buf = Rc::new(buf);
        let id = self.0.next.get();
        self.0.next.set(id + 1);
        self.0.live.borrow_mut().insert(
            id,
            Live {
                buf: buf.clone(),
                data_bytes,
                label: label.to_string(),
            },
        );
        GpuTestBuf {
            dev: self.0.clone(),
            id,
            buf,
            len,
            _t: std::marker::PhantomData,
        }
    }
    fn with_sched(&self, _s: Sched) -> Self {
        self.clone()
    }
    fn sched_label(&self) -> String {
        "gpu".into()
    }
}

/// A guarded GPU buffer of `len` elements of `T`.
pub struct GpuTestBuf<T: DeviceRepr> {
    dev: Rc<GpuInner>,
    id: u64,
    buf: Rc<GpuBuffer>,
    len: usize,
    _t: std::marker::PhantomData<T>,
}

impl<T: DeviceRepr> GpuTestBuf<T> {
    fn bytes(&self) -> usize {
        self.len * size_of::<T>()
    }
}

impl<T: DeviceRepr> TestBuf<T> for GpuTestBuf<T> {
    fn len(&self) -> usize {
        self.len
    }
    fn addr(&self) -> u64 {
        self.buf.addr() + CANARY_BYTES as u64
    }
    fn ptr(&self) -> DevPtr<'_, T> {
        // SAFETY: `len` elements of this live allocation, borrowed for the pointer's lifetime.
        unsafe { DevPtr::from_raw(self.addr(), self.len) }
    }
    fn ptr_mut(&mut self) -> DevPtrMut<'_, T> {
        // SAFETY: as above; the exclusive borrow keeps other pointers away.
        unsafe { DevPtrMut::from_raw(self.addr(), self.len) }
    }
    fn copy_from(&mut self, src: &[T]) {
        assert_eq!(
            src.len(),
            self.len,
            "upload of {} elements into a buffer of {}",
            src.len(),
            self.len
        );
        // SAFETY: plain old data viewed as its bytes.
        let bytes = unsafe { std::slice::from_raw_parts(src.as_ptr() as *const u8, self.bytes()) };
        if !bytes.is_empty() {
            self.dev.dev.write(&self.buf, CANARY_BYTES, bytes).unwrap();
        }
    }
    fn to_vec(&self) -> Vec<T> {
        if self.len == 0 {
            return Vec::new();
        }
        let mut bytes = vec![0u8; self.bytes()];
        self.dev
            .dev
            .read(&self.buf, CANARY_BYTES, &mut bytes)
            .unwrap_or_else(|e| panic!("GPU download: {e}"));
        // SAFETY: DeviceRepr types are plain old data, valid for any bits; read_unaligned as the Vec<u8> is
        // byte-aligned only.
        (0..self.len)
            .map(|i| unsafe { std::ptr::read_unaligned(bytes.as_ptr().add(i * size_of::<T>()) as *const T) })
            .collect()
    }
    fn check_canaries(&self) -> Result<()> {
        guard_damage(&self.dev.dev, &self.buf, self.bytes()).map_err(Error::Invalid)
    }
}

impl<T: DeviceRepr> Drop for GpuTestBuf<T> {
    fn drop(&mut self) {
        // Queued kernels may still use the memory; the Rc in the registry goes here, the allocation with `buf`.
        let _ = self.dev.dev.synchronize();
        self.dev.live.borrow_mut().remove(&self.id);
    }
}

/// The CUDA backend over the emulator (`--device cuda-emu`), activations in bf16 when asked.
pub fn emu_backend(bf16: bool) -> Box<dyn Backend> {
    Box::new(CudaBackend::new(EmuDevice::new(), Dtype::activations(bf16)).unwrap())
}

/// The CUDA backend on GPU 0; a `gpu_*` test without a usable GPU fails here, naming why.
pub fn gpu_backend(bf16: bool) -> Box<dyn Backend> {
    let dev = GpuDevice::new(0).unwrap_or_else(|e| panic!("no usable GPU for a gpu_* test: {e}"));
    Box::new(CudaBackend::new(dev, Dtype::activations(bf16)).unwrap())
}
