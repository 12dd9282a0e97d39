//! The CUDA backend's graph capture and replay, off the GPU. A decode step's first run executes eagerly (it grows
//! the workspaces), the second is captured and then replayed, every later one only replays, with the step state
//! written before each replay. Here a device that records launches, copies and zeroing the way a CUDA stream under
//! capture does (and refuses host reads and writes meanwhile, which a capture would bake in), running them on the
//! emulator at replay, drives a whole generation: its tokens must be the CPU backend's, with exactly those counts.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod support;

use llamagen::backend::cuda::device::Device;
use llamagen::backend::cuda::emu::{EmuBuffer, EmuDevice};
use llamagen::backend::cuda::launch::{ArgCode, KernelArg, LaunchConfig, Launcher};
use llamagen::backend::cuda::CudaBackend;
use llamagen::model::gpt::Condition;
use llamagen::model::Dtype;
use llamagen::{Error, Result};
use std::sync::{Arc, Mutex};
use support::golden::*;

/// One recorded kernel argument: its bytes first (the launcher hands the kernel a pointer to the argument), then
/// what it is.
#[repr(C)]
struct RawArg {
    bytes: [u8; 256],
    code: ArgCode,
}

// SAFETY: the first bytes of a RawArg are a copy of the original argument's bytes, of the size its code says.
unsafe impl KernelArg for RawArg {
    fn code(&self) -> ArgCode {
        self.code
    }
}

fn raw(a: &dyn KernelArg) -> RawArg {
    let n = match a.code() {
        ArgCode::Ptr => 8,
        ArgCode::I32 | ArgCode::U32 | ArgCode::F32 => 4,
        ArgCode::Struct(n) => n,
    };
    assert!(n <= 256, "a {n}-byte kernel argument");
    let mut bytes = [0u8; 256];
    // SAFETY: a kernel argument's first n bytes are its value (the KernelArg contract).
    bytes[..n].copy_from_slice(unsafe { std::slice::from_raw_parts(a as *const dyn KernelArg as *const u8, n) });
    RawArg { bytes, code: a.code() }
}

enum Rec {
    Launch(String, LaunchConfig, Vec<RawArg>),
    Copy(u64, u64, usize),
    Zero(u64, usize),
}

#[derive(Default)]
struct Counts {
    eager_launches: usize,
    captures: usize,
    replays: usize,
}

#[derive(Default)]
struct State {
    recording: Option<Vec<Rec>>,
    graphs: Vec<Vec<Rec>>,
    counts: Counts,
}

/// The emulator with CUDA-graph capture.
struct Capturing {
    inner: EmuDevice,
    st: Arc<Mutex<State>>,
}

impl Capturing {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refuse_while_recording(&self, what: &str) -> Result<()> {
        match self.state().recording {
            Some(_) => Err(Error::Invalid(format!("a host {what} during a graph capture"))),
            None => Ok(()),
        }
    }
}

impl Launcher for Capturing {
    fn launch(&self, name: &str, cfg: LaunchConfig, args: &[&dyn KernelArg]) -> Result<()> {
        let mut st = self.state();
        if let Some(rec) = st.recording.as_mut() {
            rec.push(Rec::Launch(name.into(), cfg, args.iter().map(|&a| raw(a)).collect()));
            return Ok(());
        }
        st.counts.eager_launches += 1;
        drop(st);
        self.inner.launch(name, cfg, args)
    }
}

impl Device for Capturing {
    type Buf = EmuBuffer<u8>;
    fn kind(&self) -> &'static str {
        "cuda-emu"
    }
    fn describe(&self) -> String {
        format!("{} with graph capture", Device::describe(&self.inner))
    }
    fn alloc(&self, bytes: usize, label: &str) -> Result<Self::Buf> {
        self.refuse_while_recording("allocation")?;
        Device::alloc(&self.inner, bytes, label)
    }
    fn write(&self, dst: &Self::Buf, off: usize, data: &[u8]) -> Result<()> {
        self.refuse_while_recording("write")?;
        Device::write(&self.inner, dst, off, data)
    }
    fn read(&self, src: &Self::Buf, off: usize, out: &mut [u8]) -> Result<()> {
        self.refuse_while_recording("read")?;
        Device::read(&self.inner, src, off, out)
    }
    fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        match self.state().recording.as_mut() {
            Some(rec) => {
                rec.push(Rec::Copy(dst, src, bytes));
                Ok(())
            }
            None => Device::copy(&self.inner, dst, src, bytes),
        }
    }
    fn zero(&self, dst: u64, bytes: usize) -> Result<()> {
        match self.state().recording.as_mut() {
            Some(rec) => {
                rec.push(Rec::Zero(dst, bytes));
                Ok(())
            }
            None => Device::zero(&self.inner, dst, bytes),
        }
    }
    fn synchronize(&self) -> Result<()> {
        self.refuse_while_recording("synchronisation")?;
        Device::synchronize(&self.inner)
    }
    fn supports_graphs(&self) -> bool {
        true
    }
    fn begin_capture(&self) -> Result<()> {
        let mut st = self.state();
        if st.recording.is_some() {
            return Err(Error::Invalid("capture begun twice".into()));
        }
        st.recording = Some(Vec::new());
        Ok(())
    }
    fn end_capture(&self) -> Result<usize> {
        let mut st = self.state();
        let rec = st
            .recording
            .take()
            .ok_or_else(|| Error::Invalid("no capture to end".into()))?;
        st.graphs.push(rec);
        st.counts.captures += 1;
        Ok(st.graphs.len() - 1)
    }
    fn replay(&self, graph: usize) -> Result<()> {
        let mut st = self.state();
        st.counts.replays += 1;
        let g = st
            .graphs
            .get(graph)
            .ok_or_else(|| Error::Invalid(format!("no graph {graph}")))?;
        for r in g {
            match r {
                Rec::Launch(name, cfg, args) => {
                    let args: Vec<&dyn KernelArg> = args.iter().map(|a| a as &dyn KernelArg).collect();
                    self.inner.launch(name, *cfg, &args)?
                }
                Rec::Copy(d, s, n) => Device::copy(&self.inner, *d, *s, *n)?,
                Rec::Zero(d, n) => Device::zero(&self.inner, *d, *n)?,
            }
        }
        Ok(())
    }
}

#[test]
fn decode_steps_are_captured_once_then_replayed_with_the_same_tokens() {
    let (cfg, load) = demo_gpt();
    let images = 2;
    let cond = Condition::Classes((0..images).map(|i| i % cfg.num_classes).collect());
    let index: Vec<u64> = (0..images as u64).collect();
    // The CPU's tokens: the emulated kernels draw the same ones (tests/golden_cuda.rs), and the CPU shares none of
    // the CUDA backend's run logic.
    let want = runner(&cfg, load(), images, 2.0, 0, Dtype::F32)
        .generate(&cond, &index, 7, |_| {})
        .unwrap();

    let st = Arc::new(Mutex::new(State::default()));
    let dev = Capturing {
        inner: EmuDevice::new(),
        st: st.clone(),
    };
    let backend = Box::new(CudaBackend::new(dev, Dtype::F32).unwrap());
    let mut r = runner_on(&cfg, load(), images, 2.0, 0, Dtype::F32, backend);
    let got = r.generate(&cond, &index, 7, |_| {}).unwrap();
    assert_eq!(
        got, want,
        "tokens through captured and replayed decode steps differ from the CPU's"
    );
    let steps = cfg.block_size - 1;
    let st = st.lock().unwrap();
    // Step 1 runs eagerly, step 2 is captured and replayed, steps 3.. replay.
    assert_eq!(st.counts.captures, 1, "decode graph captures");
    assert_eq!(st.counts.replays, steps - 1, "replays of {steps} decode steps");
    assert!(
        st.graphs[0].len() > 10,
        "the captured step holds {} operations",
        st.graphs[0].len()
    );
    assert!(st.counts.eager_launches > 0);
    drop(st);

    // A second generation with the same graphs replays from its first decode step.
    let again = r.generate(&cond, &index, 7, |_| {}).unwrap();
    assert_eq!(again, want);
}
