//! What the CUDA backend needs from a device: memory, copies, kernel launches by name, a synchronisation point, and
//! (optionally) CUDA-graph capture of a recorded launch sequence. Two implementations: the GPU ([`super::gpu`],
//! through the driver API loaded at run time) and the CPU emulator ([`super::emu`]), so the backend's Rust code —
//! launch configurations, argument packing, buffers, the graph walk — is the same on both.
use super::launch::Launcher;
use crate::Result;

/// A device allocation: the backend keeps it alive and addresses it by its device address.
pub trait DeviceBuffer: Send {
    fn addr(&self) -> u64;
    fn bytes(&self) -> usize;
}

pub trait Device: Launcher + Send + 'static {
    type Buf: DeviceBuffer;

    /// `cuda` or `cuda-emu`.
    fn kind(&self) -> &'static str;
    /// A human-readable description (device name, compute capability, memory).
    fn describe(&self) -> String;
    /// `bytes` of device memory (contents unspecified until written; the emulator poisons them).
    fn alloc(&self, bytes: usize, label: &str) -> Result<Self::Buf>;
    /// Host → device, into `dst` at byte offset `off`, ordered after every launch queued before it.
    fn write(&self, dst: &Self::Buf, off: usize, data: &[u8]) -> Result<()>;
    /// Device → host, from `src` at byte offset `off`; waits for every queued launch first.
    fn read(&self, src: &Self::Buf, off: usize, out: &mut [u8]) -> Result<()>;
    /// Device → device (ranges may lie in one buffer but must not overlap), queued in order.
    fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<()>;
    /// Sets `bytes` bytes at `dst` to zero, queued in order.
    fn zero(&self, dst: u64, bytes: usize) -> Result<()>;
    /// Waits until every queued operation has finished, and reports an asynchronous kernel fault.
    fn synchronize(&self) -> Result<()>;

    /// Whether [`Device::begin_capture`] can record launches into a replayable graph.
    fn supports_graphs(&self) -> bool {
        false
    }
    /// Starts recording: launches and copies until `end_capture` are recorded, not run.
    fn begin_capture(&self) -> Result<()> {
        Err(crate::Error::Invalid(format!("{}: no graph capture", self.kind())))
    }
    /// Ends recording and returns the handle of an instantiated graph.
    fn end_capture(&self) -> Result<usize> {
        Err(crate::Error::Invalid(format!("{}: no graph capture", self.kind())))
    }
    /// Replays an instantiated graph on the device's stream.
    fn replay(&self, graph: usize) -> Result<()> {
        let _ = graph;
        Err(crate::Error::Invalid(format!("{}: no graph capture", self.kind())))
    }
}
