//! Backends: every op of the runtime, implemented per device.
pub mod cpu;
