//! The GPU device: the CUDA driver API through cudarc's thin `result` layer, with the driver library loaded at run
//! time (dlopen), so the binary starts — and says why CUDA is unavailable — on machines without a driver.
//!
//! - One context (the device's primary context) and one stream; every operation is queued on that stream.
//! - The modules embedded by build.rs ([`kernels::MODULES`]) are loaded once: the cubin for the device's
//!   architecture (sm_90 for 9.x, sm_80 for 8.x), else the compute_80 PTX, JIT-compiled by the driver. Every kernel
//!   of the table is resolved once into a name → function map; a launch checks the argument codes against the
//!   kernel's signature (from the same header), so a wrong argument list is an error, not a fault.
//! - Graph capture records the launches of one decode step into a CUDA graph, replayed per step: the position and
//!   the RNG counters are read by the kernels from device memory ([`kernels::StepState`]), so nothing is re-recorded.
use super::device::{Device, DeviceBuffer};
use super::kernels;
use super::launch::{signature, KernelArg, LaunchConfig, Launcher};
use crate::{Error, Result};
use cudarc::driver::result as cu;
use cudarc::driver::sys;
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::Mutex;

fn err(what: &str, e: cu::DriverError) -> Error {
    Error::Invalid(format!("CUDA {what}: {e:?}"))
}

/// Whether the CUDA driver library can be loaded (cudarc panics on the first call otherwise).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { sys::is_culib_present() }
}

/// Whether a usable GPU is there: the driver loads, initialises and reports at least one device.
pub fn available() -> bool {
    driver_present() && cu::init().is_ok() && cu::device::get_count().is_ok_and(|n| n > 0)
}

/// The name of GPU `ordinal` as the driver reports it (no context is created).
pub fn device_name(ordinal: usize) -> Result<String> {
    if !driver_present() {
        return Err(Error::Invalid(
            "the CUDA driver library (libcuda.so) was not found".into(),
        ));
    }
    cu::init().map_err(|e| err("init", e))?;
    let dev = cu::device::get(ordinal as i32).map_err(|e| err("device", e))?;
    cu::device::get_name(dev).map_err(|e| err("device name", e))
}

/// Lets `f` take all the dynamic shared memory the device allows a block (`optin` bytes, less its static shared
/// memory) instead of the default 48 KiB; returns that limit. The conv kernels' halo tiles need more than 48 KiB.
/// Where the driver refuses, the function keeps the default (a launch over it is then refused by name) and the
/// device still opens: every other kernel runs.
fn raise_dynamic_shared(name: &str, f: sys::CUfunction, optin: i32) -> u32 {
    use sys::CUfunction_attribute_enum as A;
    const DEFAULT: i32 = 48 * 1024;
    // SAFETY: `f` is a function of a loaded module; the attributes are plain integers.
    let fixed = unsafe { cu::function::get_function_attribute(f, A::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES) };
    let fixed = fixed.unwrap_or(0);
    let (want, default) = ((optin - fixed).max(0), (DEFAULT - fixed).max(0));
    if want <= default {
        return default as u32;
    }
    // SAFETY: as above; `want` is the device's opt-in limit less the function's static shared memory.
    match unsafe { cu::function::set_function_attribute(f, A::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, want) } {
        Ok(()) => want as u32,
        Err(e) => {
            tracing::warn!("kernel `{name}`: dynamic shared memory stays at the default ({e:?})");
            default as u32
        }
    }
}

pub struct GpuDevice {
    ctx: sys::CUcontext,
    stream: sys::CUstream,
    /// name → (function, parameter signature, dynamic shared memory limit in bytes)
    functions: HashMap<&'static str, (sys::CUfunction, &'static str, u32)>,
    modules: Vec<sys::CUmodule>,
    name: String,
    cc: (i32, i32),
    memory: usize,
    graphs: Mutex<Vec<sys::CUgraphExec>>,
}

// SAFETY: the handles are plain driver handles; every use first makes the context current on the calling thread,
// and the driver API is thread-safe. The stream serialises the work.
unsafe impl Send for GpuDevice {}
unsafe impl Sync for GpuDevice {}

impl GpuDevice {
    /// Opens device `ordinal` and loads every kernel module.
    pub fn new(ordinal: usize) -> Result<Self> {
        if !driver_present() {
            return Err(Error::Invalid(
                "--device cuda: the CUDA driver library (libcuda.so) was not found; use --device cpu".into(),
            ));
        }
        if kernels::MODULES.is_empty() {
            return Err(Error::Invalid(format!(
                "--device cuda: this binary was built without GPU kernels ({}); rebuild after scripts/setup.sh",
                kernels::NVCC.error.unwrap_or("nvcc not found")
            )));
        }
        cu::init().map_err(|e| err("init", e))?;
        let count = cu::device::get_count().map_err(|e| err("device count", e))?;
        if ordinal as i32 >= count {
            return Err(Error::Invalid(format!(
                "--device cuda: device {ordinal} requested, {count} present"
            )));
        }
        let dev = cu::device::get(ordinal as i32).map_err(|e| err("device", e))?;
        let name = cu::device::get_name(dev).map_err(|e| err("device name", e))?;
        // SAFETY: `dev` comes from device::get.
        let (cc, memory, ctx, optin) = unsafe {
            let major = cu::device::get_attribute(
                dev,
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
            )
            .map_err(|e| err("attribute", e))?;
            let minor = cu::device::get_attribute(
                dev,
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
            )
            .map_err(|e| err("attribute", e))?;
            let optin = cu::device::get_attribute(
                dev,
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .map_err(|e| err("attribute", e))?;
            let memory = cu::device::total_mem(dev).map_err(|e| err("memory size", e))?;
            let ctx = cu::primary_ctx::retain(dev).map_err(|e| err("context", e))?;
            cu::ctx::set_current(ctx).map_err(|e| err("set context", e))?;
            ((major, minor), memory, ctx, optin)
        };
        let stream = cu::stream::create(cu::stream::StreamKind::NonBlocking).map_err(|e| err("stream", e))?;
        let mut modules = Vec::new();
        let mut functions = HashMap::new();
        for m in kernels::MODULES {
            let image: Vec<u8> = match cc.0 {
                9 => m.cubin_sm_90.to_vec(),
                8 => m.cubin_sm_80.to_vec(),
                _ => {
                    let mut p = m.ptx_compute_80.as_bytes().to_vec();
                    p.push(0);
                    p
                }
            };
            // SAFETY: a cubin or a NUL-terminated PTX image built by nvcc for this table.
            let module = unsafe { cu::module::load_data(image.as_ptr() as *const c_void) }
                .map_err(|e| err(&format!("loading module {}", m.name), e))?;
            modules.push(module);
            for k in kernels::KERNELS.iter().filter(|k| k.module == m.name) {
                let cname = CString::new(k.name).expect("kernel names have no NUL");
                // SAFETY: the module is loaded; the name is a kernel of it.
                let f = unsafe { cu::module::get_function(module, cname) }
                    .map_err(|e| err(&format!("function {}", k.name), e))?;
                let dynamic = raise_dynamic_shared(k.name, f, optin);
                functions.insert(k.name, (f, k.signature, dynamic));
            }
        }
        Ok(GpuDevice {
            ctx,
            stream,
            functions,
            modules,
            name,
            cc,
            memory,
            graphs: Mutex::new(Vec::new()),
        })
    }

    /// Makes this device's context current on the calling thread (the pipeline may call from pool workers).
    fn current(&self) -> Result<()> {
        // SAFETY: the context is retained for the device's lifetime.
        unsafe { cu::ctx::set_current(self.ctx) }.map_err(|e| err("set context", e))
    }

    pub fn compute_capability(&self) -> (i32, i32) {
        self.cc
    }
}

impl Drop for GpuDevice {
    fn drop(&mut self) {
        let _ = self.current();
        // SAFETY: handles created by this device, no longer used.
        unsafe {
            let _ = cu::stream::synchronize(self.stream);
            for g in self.graphs.lock().map(|g| g.clone()).unwrap_or_default() {
                let _ = cu::graph::exec_destroy(g);
            }
            for m in &self.modules {
                let _ = cu::module::unload(*m);
            }
            let _ = cu::stream::destroy(self.stream);
        }
    }
}

impl Launcher for GpuDevice {
    fn launch(&self, name: &str, cfg: LaunchConfig, args: &[&dyn KernelArg]) -> Result<()> {
        let &(f, want, dynamic) = self
            .functions
            .get(name)
            .ok_or_else(|| Error::Invalid(format!("kernel `{name}` is not in the loaded modules")))?;
        if cfg.shared_bytes > dynamic {
            return Err(Error::Invalid(format!(
                "kernel `{name}`: {} bytes of dynamic shared memory, over this device's {dynamic}",
                cfg.shared_bytes
            )));
        }
        let got = signature(args);
        if want != got {
            return Err(Error::Invalid(format!(
                "kernel `{name}`: arguments ({got}) do not match its parameters ({want})"
            )));
        }
        self.current()?;
        let mut ptrs: Vec<*mut c_void> = args
            .iter()
            .map(|a| *a as *const dyn KernelArg as *const c_void as *mut c_void)
            .collect();
        let [gx, gy, gz] = cfg.grid;
        let [bx, by, bz] = cfg.block;
        // SAFETY: the argument bytes match the kernel's parameters (signature checked above); device addresses come
        // from live buffers the caller borrows; cuLaunchKernel copies the argument values before returning.
        unsafe { cu::launch_kernel(f, (gx, gy, gz), (bx, by, bz), cfg.shared_bytes, self.stream, &mut ptrs) }
            .map_err(|e| err(&format!("launch of `{name}` {cfg:?}"), e))
    }
}

pub struct GpuBuffer {
    ptr: sys::CUdeviceptr,
    bytes: usize,
}

// SAFETY: a device address; freed once, in Drop.
unsafe impl Send for GpuBuffer {}

impl DeviceBuffer for GpuBuffer {
    fn addr(&self) -> u64 {
        self.ptr
    }
    fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated by malloc_sync; the device synchronises before its buffers go (the backend drops
        // buffers after its last synchronisation).
        unsafe {
            let _ = cu::free_sync(self.ptr);
        }
    }
}

fn check(what: &str, off: usize, n: usize, have: usize) -> Result<()> {
    if off.checked_add(n).is_none_or(|e| e > have) {
        return Err(Error::Invalid(format!(
            "{what} of {n} bytes at offset {off} outside a buffer of {have} bytes"
        )));
    }
    Ok(())
}

impl Device for GpuDevice {
    type Buf = GpuBuffer;

    fn kind(&self) -> &'static str {
        "cuda"
    }

    fn describe(&self) -> String {
        format!(
            "{} (compute capability {}.{}, {:.1} GiB)",
            self.name,
            self.cc.0,
            self.cc.1,
            self.memory as f64 / (1u64 << 30) as f64
        )
    }

    fn alloc(&self, bytes: usize, label: &str) -> Result<GpuBuffer> {
        self.current()?;
        // SAFETY: a plain allocation (at least 1 byte so every buffer has a distinct address).
        let ptr = unsafe { cu::malloc_sync(bytes.max(1)) }
            .map_err(|e| err(&format!("allocating {bytes} bytes for `{label}`"), e))?;
        Ok(GpuBuffer { ptr, bytes })
    }

    fn write(&self, dst: &GpuBuffer, off: usize, data: &[u8]) -> Result<()> {
        check("write", off, data.len(), dst.bytes)?;
        self.current()?;
        // SAFETY: inside the buffer. From pageable memory the driver stages the data before returning, so `data`
        // may be reused at once; the copy is ordered on the stream after earlier launches.
        unsafe { cu::memcpy_htod_async(dst.ptr + off as u64, data, self.stream) }.map_err(|e| err("write", e))
    }

    fn read(&self, src: &GpuBuffer, off: usize, out: &mut [u8]) -> Result<()> {
        check("read", off, out.len(), src.bytes)?;
        self.current()?;
        // SAFETY: inside the buffer; the stream synchronisation below completes the copy before `out` is used.
        unsafe {
            cu::memcpy_dtoh_async(out, src.ptr + off as u64, self.stream).map_err(|e| err("read", e))?;
        }
        self.synchronize()
    }

    fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        self.current()?;
        // SAFETY: the backend passes ranges inside its own live buffers.
        unsafe { cu::memcpy_dtod_async(dst, src, bytes, self.stream) }.map_err(|e| err("device copy", e))
    }

    fn zero(&self, dst: u64, bytes: usize) -> Result<()> {
        self.current()?;
        // SAFETY: as for `copy`.
        unsafe { cu::memset_d8_async(dst, 0, bytes, self.stream) }.map_err(|e| err("memset", e))
    }

    fn synchronize(&self) -> Result<()> {
        self.current()?;
        // SAFETY: the stream is live.
        unsafe { cu::stream::synchronize(self.stream) }.map_err(|e| err("kernel execution (synchronize)", e))
    }

    fn supports_graphs(&self) -> bool {
        std::env::var("LLAMAGEN_CUDA_GRAPHS").map_or(true, |v| v != "0")
    }

    fn begin_capture(&self) -> Result<()> {
        self.current()?;
        // SAFETY: the stream is live; thread-local mode: other threads' CUDA calls are not captured.
        unsafe {
            cu::stream::begin_capture(
                self.stream,
                sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
        }
        .map_err(|e| err("begin capture", e))
    }

    fn end_capture(&self) -> Result<usize> {
        self.current()?;
        // SAFETY: capture was begun on this stream by this thread; the graph is instantiated, then its template
        // destroyed (the executable graph keeps what it needs).
        let exec = unsafe {
            let g = cu::stream::end_capture(self.stream).map_err(|e| err("end capture", e))?;
            let exec =
                cu::graph::instantiate(g, sys::CUgraphInstantiate_flags(0)).map_err(|e| err("graph instantiate", e))?;
            let _ = cu::graph::destroy(g);
            exec
        };
        let mut graphs = self.graphs.lock().unwrap();
        graphs.push(exec);
        Ok(graphs.len() - 1)
    }

    fn replay(&self, graph: usize) -> Result<()> {
        let exec = *self
            .graphs
            .lock()
            .unwrap()
            .get(graph)
            .ok_or_else(|| Error::Invalid(format!("no captured graph {graph}")))?;
        self.current()?;
        // SAFETY: an instantiated graph of this device, replayed on its stream.
        unsafe { cu::graph::launch(exec, self.stream) }.map_err(|e| err("graph launch", e))
    }
}
